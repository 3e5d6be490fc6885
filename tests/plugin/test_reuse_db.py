"""--shardsession-reuse-db and --shardsession-create-db, run through pytester.

A small suite records, once per test process, what it finds in its databases at
the start (a table an earlier run made? rows in it? prepared transactions?) and
then leaves a table, rows and a prepared transaction behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shardsession.embedded import LocalCluster
from shardsession.pytest_plugin import kept_folder
from shardsession.testing import rollback_prepared

pytest_plugins = ["pytester"]

RECORDING_CONFTEST = """
import json
import os

import psycopg
import pytest


@pytest.fixture(scope="session")
def found(shard_dsns):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    state = {}
    for shard, dsn in shard_dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            kept = conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM kept").fetchone()[0] if kept else None
            prepared = conn.execute(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            ).fetchone()[0]
            conn.execute("CREATE TABLE IF NOT EXISTS kept (id serial PRIMARY KEY)")
            first_id = conn.execute("INSERT INTO kept DEFAULT VALUES RETURNING id").fetchone()[0]
            conn.execute("INSERT INTO kept DEFAULT VALUES")
        state[shard] = {"kept": kept, "rows": rows, "prepared": prepared,
                        "first_id": first_id, "dsn": dsn}
    with psycopg.connect(shard_dsns["s0"]) as conn:  # holds a lock on kept until rolled back
        conn.execute("INSERT INTO kept DEFAULT VALUES")
        conn.execute(f"PREPARE TRANSACTION 'left_by_{worker}'")
    with open(os.environ["FOUND_FILE"], "a") as out:
        out.write(json.dumps({"worker": worker, "shards": state}) + "\\n")
    return state
"""

RECORDING_SUITE = """
import pytest


@pytest.mark.parametrize("n", range(2))
def test_uses_the_shards(found, n):
    assert found
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The recording suite in ``pytester.path``; yields the file it writes its records to."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    found_file = pytester.path / "found.jsonl"
    monkeypatch.setenv("FOUND_FILE", str(found_file))
    pytester.makeconftest(RECORDING_CONFTEST)
    pytester.makepyfile(test_recording=RECORDING_SUITE)
    yield found_file


@pytest.fixture
def kept(pytester: pytest.Pytester) -> Iterator[Path]:
    """The folder the inner runs keep their embedded server in; removed afterwards."""
    folder = kept_folder(pytester.path)
    yield folder
    LocalCluster(shards=1, path=folder / "cluster").stop(remove=True)
    shutil.rmtree(folder, ignore_errors=True)


def _run(pytester: pytest.Pytester, found_file: Path, *args: str) -> dict[str, Any]:
    """Run the suite with ``args``; return worker -> what it found, per shard."""
    found_file.unlink(missing_ok=True)
    result = pytester.runpytest_subprocess("--shardsession-shards", "2", *args, timeout=240)
    passed = 4 if "each" in args else 2
    result.assert_outcomes(passed=passed)
    records = [json.loads(line) for line in found_file.read_text().splitlines()]
    by_worker = {record["worker"]: record["shards"] for record in records}
    assert len(by_worker) == len(records), records
    by_worker["output"] = result.stdout.str()
    return by_worker


def _fresh(found: dict[str, Any]) -> bool:
    return not any(shard["kept"] for shard in found.values())


def _reused(found: dict[str, Any]) -> bool:
    """Every database was kept, emptied (ids start at 1 again), and holds no prepared
    transaction of the run before."""
    return all(
        shard["kept"] and shard["rows"] == 0 and shard["first_id"] == 1 and not shard["prepared"]
        for shard in found.values()
    )


def _server_stopped(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.OperationalError:
        return True
    return False


def test_embedded_databases_are_kept_and_reused_per_xdist_worker(
    pytester: pytest.Pytester, suite: Path, kept: Path
) -> None:
    xdist = ["-n", "2", "--dist", "each", "--shardsession-reuse-db"]
    first = _run(pytester, suite, *xdist)
    assert {"gw0", "gw1"} <= set(first)
    assert _fresh(first["gw0"]) and _fresh(first["gw1"])
    assert (
        f"kept the test databases for the next --shardsession-reuse-db run in {kept}"
        in (first["output"])
    )
    # kept, with the server stopped
    assert (kept / "cluster" / "cluster.json").is_file()
    assert _server_stopped(first["gw0"]["s0"]["dsn"])

    second = _run(pytester, suite, *xdist)
    assert _reused(second["gw0"]) and _reused(second["gw1"]), second
    assert _server_stopped(second["gw0"]["s0"]["dsn"])

    third = _run(pytester, suite, "-p", "no:xdist", "--shardsession-reuse-db",
                 "--shardsession-create-db")  # fmt: skip
    assert _fresh(third["main"])
    # created afresh: the databases of the earlier runs went with the old server
    cluster = LocalCluster(shards=2, path=kept / "cluster")
    cluster.start()
    try:
        with psycopg.connect(cluster.admin_dsn(), autocommit=True) as conn:
            names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    finally:
        cluster.stop()
    assert {"shardsession_s0_main", "shardsession_s1_main"} <= names
    assert not {name for name in names if name.endswith(("_gw0", "_gw1"))}, names


def test_external_databases_are_kept_and_reused(
    pytester: pytest.Pytester, suite: Path, shard_dsns: dict[str, str]
) -> None:
    server = conninfo_to_dict(shard_dsns["s0"])
    base = f"reuse{os.getpid()}"
    template = " ".join(f"{k}={v}" for k, v in server.items() if k != "dbname")
    template += f" dbname={base}_{{shard}}"
    names = [f"{base}_s0_main", f"{base}_s1_main"]
    admin = make_conninfo(shard_dsns["s0"], dbname="postgres")

    def existing() -> set[str]:
        with psycopg.connect(admin, autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                (base + "%",))  # fmt: skip
            return {row[0] for row in rows}

    external = ["-p", "no:xdist", "--shardsession-dsn", template]
    try:
        first = _run(pytester, suite, *external, "--shardsession-reuse-db")
        assert _fresh(first["main"])
        assert "on the servers of --shardsession-dsn" in first["output"]
        assert existing() == set(names)  # not dropped
        second = _run(pytester, suite, *external, "--shardsession-reuse-db")
        assert _reused(second["main"]), second
        third = _run(pytester, suite, *external)  # without the option: created afresh
        assert _fresh(third["main"])
        assert existing() == set()  # and dropped
    finally:
        for name in existing():  # a failed run may have left them, with prepared transactions
            with psycopg.connect(make_conninfo(admin, dbname=name), autocommit=True) as conn:
                rollback_prepared(conn)
            with psycopg.connect(admin, autocommit=True) as conn:
                drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
                conn.execute(drop)


HOLDING_SUITE = """
import os
import time
from pathlib import Path


def test_holds_the_run():
    Path(os.environ["STARTED"]).write_text("started")
    deadline = time.monotonic() + 120
    while not Path(os.environ["RELEASE"]).exists():
        assert time.monotonic() < deadline, "the outer test never released this run"
        time.sleep(0.05)
"""


def test_a_second_run_on_the_kept_databases_is_refused(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, kept: Path
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    started, release = pytester.path / "started", pytester.path / "release"
    monkeypatch.setenv("STARTED", str(started))
    monkeypatch.setenv("RELEASE", str(release))
    pytester.makepyfile(test_holding=HOLDING_SUITE)
    args = ["-p", "no:xdist", "-p", "no:cacheprovider", "--shardsession-reuse-db"]
    holder = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args], cwd=pytester.path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert holder.poll() is None, holder.communicate()[0]
            assert time.monotonic() < deadline, "the first run did not start its test"
            time.sleep(0.05)
        second = pytester.runpytest_subprocess(*args, timeout=120)
        assert second.ret == pytest.ExitCode.USAGE_ERROR
        said = second.stderr.str()
        assert f"another pytest run (pid {holder.pid}) is using the kept test databases" in said
        assert str(kept / "cluster") in said
    finally:
        release.write_text("go")
        out = holder.communicate(timeout=120)[0]
    assert holder.returncode == 0, out
