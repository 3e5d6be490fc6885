"""A small user suite run through pytester: per-xdist-worker databases, teardown."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

pytest_plugins = ["pytester"]

SAMPLE_SUITE = """
import os
import time

import os
import subprocess
from pathlib import Path

import psycopg
import pytest


@pytest.mark.parametrize("n", range(8))
def test_isolated(shard_dsns, n):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    for shard, dsn in shard_dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS seen (worker text)")
            conn.execute("INSERT INTO seen VALUES (%s)", (worker,))
            seen = {row[0] for row in conn.execute("SELECT worker FROM seen")}
            assert seen == {worker}, f"{shard} is shared between workers: {seen}"
            dbname = conn.execute("SELECT current_database()").fetchone()[0]
        with open(os.environ["SEEN_FILE"], "a") as out:
            out.write(f"{worker} {shard} {dbname} {dsn}\\n")
    time.sleep(0.1)


def test_leaves_a_prepared_transaction(shard_dsns):
    with psycopg.connect(shard_dsns["s0"]) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pending (id int)")
        conn.execute("INSERT INTO pending VALUES (1)")
        conn.execute(f"PREPARE TRANSACTION 'left_by_{os.getpid()}'")
"""


@pytest.mark.parametrize("args", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_each_worker_gets_its_own_databases(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    seen_file = pytester.path / "seen.txt"
    monkeypatch.setenv("SEEN_FILE", str(seen_file))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(test_sample=SAMPLE_SUITE)
    result = pytester.runpytest_subprocess(*args, "--shardsession-shards", "2", timeout=240)
    result.assert_outcomes(passed=9)
    records = [line.split(" ", 3) for line in seen_file.read_text().splitlines()]
    by_worker: dict[str, set[str]] = {}
    for worker, shard, dbname, _ in records:
        assert dbname == f"shardsession_{shard}_{worker}"
        by_worker.setdefault(worker, set()).add(dbname)
    expected = {"gw0", "gw1"} if args[0] == "-n" else {"main"}
    assert set(by_worker) == expected
    if len(by_worker) == 2:
        assert not by_worker["gw0"] & by_worker["gw1"]
    # The run's server was stopped after the last worker finished.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(records[0][3], connect_timeout=3)


def test_clusters_of_killed_runs_are_reaped(tmp_path) -> None:
    import tempfile

    from shardsession.embedded import LocalCluster
    from shardsession.pytest_plugin import _OWNER, _RUN_PREFIX, _reap_abandoned_runs

    folder = tempfile.mkdtemp(prefix=_RUN_PREFIX)
    os.chmod(folder, 0o755)
    cluster = LocalCluster(shards=1, path=folder, durable=False)
    dsn = cluster.start()["s0"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    (Path(folder) / _OWNER).write_text(str(dead.pid))  # its controller is gone
    _reap_abandoned_runs()
    assert not Path(folder).exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)


UNREACHABLE_SUITE = """
import pytest

@pytest.mark.parametrize("n", range(6))
def test_needs_shards(shard_dsns, n):
    assert shard_dsns
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_shards_that_cannot_be_set_up_fail_once_and_stop_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(test_unreachable=UNREACHABLE_SUITE)
    result = pytester.runpytest_subprocess(
        *workers, "--shardsession-dsn", "postgresql://nobody@127.0.0.1:1/app_{shard}",
        timeout=120,
    )  # fmt: skip
    out = result.stdout.str()
    assert result.ret != 0
    said = out.count("shardsession: the test shards cannot be set up: ")
    errors = out.count("ERROR at setup")
    # once per test process, then the run stops (not once per test)
    assert 1 <= errors <= max(1, len(workers) and 2) and said >= errors, out
    assert "Interrupted" in out and "Traceback" not in out and "psycopg/connection.py" not in out
