"""The plugin's fixtures, used the way a user suite would use them."""

from __future__ import annotations

import os

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict


def test_shard_dsns_are_this_workers_databases(shard_dsns: dict[str, str]) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    assert sorted(shard_dsns) == ["s0", "s1", "s2", "s3"]
    names = set()
    for shard, dsn in shard_dsns.items():
        with psycopg.connect(dsn) as conn:
            dbname = conn.execute("SELECT current_database()").fetchone()[0]
            prepared = conn.execute("SHOW max_prepared_transactions").fetchone()[0]
        assert dbname == conninfo_to_dict(dsn)["dbname"] == f"shardsession_{shard}_{worker}"
        assert int(prepared) >= 64
        names.add(dbname)
    assert len(names) == 4


def test_clean_shards_empties_tables_and_restarts_ids(
    shard_dsns: dict[str, str], request: pytest.FixtureRequest
) -> None:
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS item (id serial PRIMARY KEY, v text)")
            conn.execute("INSERT INTO item (v) VALUES ('a'), ('b')")
    cleaned = request.getfixturevalue("clean_shards")
    assert cleaned == shard_dsns
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM item").fetchone()[0] == 0
            new_id = conn.execute("INSERT INTO item (v) VALUES ('c') RETURNING id").fetchone()[0]
            assert new_id == 1
            conn.execute("DROP TABLE item")


def test_clean_shards_rolls_back_leftover_prepared_transactions(
    shard_dsns: dict[str, str], request: pytest.FixtureRequest
) -> None:
    dsn = shard_dsns["s1"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS locked (id int PRIMARY KEY)")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO locked VALUES (1)")
        conn.execute("PREPARE TRANSACTION 'leftover_plugin_test'")
    request.getfixturevalue("clean_shards")
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
        ).fetchone()[0]
        assert left == 0
        assert conn.execute("SELECT count(*) FROM locked").fetchone()[0] == 0
        conn.execute("DROP TABLE locked")


def test_external_template_with_shard_number(shard_dsns: dict[str, str]) -> None:
    from shardsession.exc import ConfigurationError
    from shardsession.testing import TestDatabases

    # one server here, so {n} goes into the database name; with compose/ it picks the port
    server = conninfo_to_dict(shard_dsns["s0"])
    template = " ".join(f"{k}={v}" for k, v in server.items() if k != "dbname")
    suffix = f"n{os.getpid()}"
    dbs = TestDatabases(suffix, shards=2, dsn_template=template + " dbname=numbered{n}")
    try:
        dsns = dbs.create()
        names = {s: conninfo_to_dict(d)["dbname"] for s, d in dsns.items()}
        assert names == {"s0": f"numbered0_{suffix}", "s1": f"numbered1_{suffix}"}
        for dsn in dsns.values():
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT current_database()").fetchone()[0] in names.values()
    finally:
        dbs.drop()
    with pytest.raises(ConfigurationError, match=r"\{n\}"):
        TestDatabases(suffix, shards=2, dsn_template=template + " dbname=plain").create()
