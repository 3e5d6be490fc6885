"""The application process dies at each point of a two-phase commit (os._exit,
no cleanup); recovery then leaves every transaction committed on all its
shards or on none, no prepared transaction behind, and no row locked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import psycopg
import pytest

from shardsession import recover
from shardsession.twophase import COMMIT_LOG, parse_gid

APP = textwrap.dedent(
    """
    import json, os, sys
    import shardsession as ss
    from shardsession.coordinator import transaction
    from tests.coordinator.models import Account

    dsns, point, first_id = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    pool = ss.create_pool(dsns, workers_per_shard=1, recovery_interval=None)
    print(json.dumps([p for ps in pool.worker_pids().values() for p in ps]), flush=True)

    def crash(name):
        if name == point:
            os._exit(9)

    transaction.crash_hook = crash
    with ss.Session(pool) as s:
        s.add_all([Account(id=first_id + i, tenant_id=first_id + i, owner="x", balance=1)
                   for i in range(12)])
        s.commit()
    print("committed", flush=True)
    """
)

POINTS = {
    "after_flush": False,
    "after_prepare_some": False,
    "after_prepare": False,
    "after_decision": True,
    "after_commit_some": True,
}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _count(dsns: dict[str, str], sql: str, args: tuple = ()) -> dict[str, int]:
    out = {}
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            out[shard] = conn.execute(sql, args).fetchone()[0]
    return out


@pytest.fixture
def accounts_table(shard_pool, clean_shards):
    from tests.coordinator.models import Base

    Base.metadata.create_all(shard_pool)
    yield clean_shards


@pytest.mark.parametrize("point", list(POINTS))
def test_application_killed_during_commit(accounts_table, shard_pool, point: str) -> None:
    dsns = accounts_table
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    app = subprocess.run(
        [sys.executable, "-c", APP, json.dumps(dsns), point, "1000"],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert app.returncode == 9, app.stderr
    workers = json.loads(app.stdout.splitlines()[0])
    _wait(lambda: all(_gone(p) for p in workers), 15, "the workers to exit")
    prepared = _count(
        dsns, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
    )
    report = recover(dsns, older_than=0)
    assert not report.errors
    rows = _count(dsns, "SELECT count(*) FROM acct WHERE id >= 1000")
    total = sum(rows.values())
    assert total == (12 if POINTS[point] else 0), (point, rows, report)
    if POINTS[point] and point != "after_decision":
        # The crash left participants prepared with a commit decision; the rows
        # counted above show they were committed (by this recovery, or by the test
        # pool's background round if that ran first).
        background = shard_pool.last_recovery
        assert sum(prepared.values()) > 0 or (background is not None and background.committed), (
            "the crash should leave participants prepared"
        )
    left = _count(
        dsns, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
    )
    assert sum(left.values()) == 0
    for dsn in dsns.values():  # nothing stays locked
        with psycopg.connect(dsn) as conn:
            conn.execute("SET lock_timeout = '2s'")
            conn.execute("UPDATE acct SET balance = balance WHERE id >= 1000")
            conn.rollback()
    # once everything is settled the decision records are pruned
    time.sleep(0.05)
    recover(dsns, older_than=0)
    assert sum(_count(dsns, f"SELECT count(*) FROM {COMMIT_LOG}").values()) == 0


def test_recovery_waits_for_the_grace_period_and_dry_run_changes_nothing(
    accounts_table,
) -> None:
    dsns = accounts_table
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    app = subprocess.run(
        [sys.executable, "-c", APP, json.dumps(dsns), "after_prepare", "2000"],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert app.returncode == 9, app.stderr
    workers = json.loads(app.stdout.splitlines()[0])
    _wait(lambda: all(_gone(p) for p in workers), 15, "the workers to exit")
    young = recover(dsns, older_than=3600)
    assert young.waiting and not young.rolled_back and not young.committed
    dry = recover(dsns, older_than=0, dry_run=True)
    assert sorted(dry.rolled_back) == sorted(young.waiting)
    assert sum(_count(dsns, f"SELECT count(*) FROM {COMMIT_LOG}").values()) == 0
    # two recoverers at once: each transaction is settled exactly once
    reports = []
    threads = [
        threading.Thread(target=lambda: reports.append(recover(dsns, older_than=0)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    settled = [g for r in reports for g in r.rolled_back]
    assert sorted(set(settled)) == sorted(young.waiting)
    left = _count(
        dsns, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
    )
    assert sum(left.values()) == 0
    assert all(parse_gid(g) is not None for g in settled)


def test_committed_transactions_leave_no_decision_behind(session, shard_pool) -> None:
    from tests.coordinator.models import Account, Base

    Base.metadata.create_all(shard_pool)
    session.add_all([Account(id=i, tenant_id=i, owner="y") for i in range(1, 13)])
    session.commit()
    dsns = shard_pool.shards
    assert sum(_count(dsns, f"SELECT count(*) FROM {COMMIT_LOG}").values()) == 1
    time.sleep(0.05)
    report = shard_pool.recover(older_than=0)
    assert report.pruned == 1 and not report.committed and not report.rolled_back
