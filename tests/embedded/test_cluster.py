"""LocalCluster: binaries, start, reuse across processes, several servers, errors."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import psycopg
import pytest

from shardsession.embedded import LocalCluster
from shardsession.exc import ClusterError, PostgresNotFoundError, TwoPhaseNotEnabledError
from shardsession.pgbin import _bundled_bindir, find_pg_bindir
from shardsession.preflight import check_shard_dsns


def test_no_binaries_anywhere_names_both_ways_to_get_them() -> None:
    with pytest.raises(PostgresNotFoundError) as info:
        find_pg_bindir({"PATH": ""}, include_system=False, include_bundled=False)
    message = str(info.value)
    assert 'pip install "shardsession[embedded]"' in message
    assert "apt-get install postgresql" in message
    assert "SHARDSESSION_PG_BIN" in message


def test_search_order_prefers_the_environment_variable(tmp_path: Path) -> None:
    system = find_pg_bindir({"PATH": ""})
    assert (system / "initdb").exists()
    assert find_pg_bindir({"SHARDSESSION_PG_BIN": str(system), "PATH": ""}) == system


def _start(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    cluster = LocalCluster(shards=2, path=path, durable=False)
    queue.put((cluster.start(), cluster.status()["instances"][0]["pid"]))


def test_concurrent_starts_share_one_server(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_start, args=(str(tmp_path / "c"), queue)) for _ in range(3)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    cluster = LocalCluster(shards=2, path=tmp_path / "c")
    try:
        assert all(result == results[0] for result in results)
        with psycopg.connect(results[0][0]["s1"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "shardsession_s1"
    finally:
        assert cluster.stop(remove=True)


def test_one_server_per_shard_can_stop_alone(tmp_path: Path) -> None:
    cluster = LocalCluster(shards=2, path=tmp_path / "c", instances=2, durable=False)
    dsns = cluster.start()
    try:
        servers = cluster.status()["instances"]
        assert len({s["port"] for s in servers}) == 2
        assert [s["shards"][0]["shard"] for s in servers] == ["s0", "s1"]
        cluster.stop_server("s1", mode="immediate")
        with psycopg.connect(dsns["s0"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsns["s1"], connect_timeout=3)
        assert cluster.start() == dsns  # restarts the stopped server on its port
        with psycopg.connect(dsns["s1"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.stop(remove=True)


def test_instances_must_match_a_running_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(shards=2, path=tmp_path / "c", durable=False)
    cluster.start()
    try:
        with pytest.raises(ClusterError, match="runs 1 server"):
            LocalCluster(shards=2, path=tmp_path / "c", instances=2).start()
        assert (
            LocalCluster(shards=3, path=tmp_path / "c")
            .start()["s2"]
            .endswith("dbname=shardsession_s2")
        )
    finally:
        cluster.stop(remove=True)


def test_temporary_cluster_removes_itself(tmp_path: Path) -> None:
    with LocalCluster(shards=1, temporary=True, durable=False) as cluster:
        path = cluster.path
        assert check_shard_dsns(cluster.dsns) == {"s0": 128}
    assert not path.exists()


def test_two_phase_check_names_the_setting(tmp_path: Path) -> None:
    cluster = LocalCluster(
        shards=1, path=tmp_path / "c", durable=False, settings={"max_prepared_transactions": 0}
    )
    try:
        dsns = cluster.start()
        with pytest.raises(TwoPhaseNotEnabledError, match=r"'s0'.*max_prepared_transactions = 0"):
            check_shard_dsns(dsns)
    finally:
        cluster.stop(remove=True)


@pytest.mark.skipif(_bundled_bindir() is None, reason="the embedded extra is not installed")
def test_bundled_server_of_the_embedded_extra(tmp_path: Path) -> None:
    bindir = _bundled_bindir()
    assert find_pg_bindir({"PATH": ""}, include_system=False) == bindir
    cluster = LocalCluster(shards=1, path=tmp_path / "c", bindir=bindir, durable=False)
    try:
        dsn = cluster.start()["s0"]
        with psycopg.connect(dsn) as conn:
            assert int(conn.execute("SHOW max_prepared_transactions").fetchone()[0]) >= 64
            assert conn.execute("SHOW server_version").fetchone()[0].split(".")[0] != "15"
    finally:
        cluster.stop(remove=True)
