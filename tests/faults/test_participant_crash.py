"""A participant fails at each point of a two-phase commit: its worker is
killed (-9), its PostgreSQL backend is terminated, or its whole server stops
(immediate, like a crash) and comes back.  Whatever ``commit()`` then does,
recovery leaves every transaction committed on all its shards or on none, no
prepared transaction behind, no row locked, and the session usable after
``rollback()``.

Which participant fails is chosen so the outcome is deterministic:

* ``after_flush``: a writer not yet asked to PREPARE -> the PREPARE fails, abort.
* ``after_prepare_some``: ``participant`` is the writer whose PREPARE was
  already acknowledged (its prepared transaction survives, the commit goes on);
  ``commit_point`` is the shard that must record the decision -> abort.
* ``after_prepare``: likewise, every other writer is prepared.
* ``after_decision`` / ``after_commit_some``: a prepared writer whose COMMIT
  PREPARED was not sent yet -> committed (now or by recovery).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from shardsession.coordinator import transaction

import shardsession
from shardsession.embedded import LocalCluster
from shardsession.exc import TwoPhaseCommitPendingWarning, TwoPhaseError

IDS = range(1, 13)

# (point, victim) -> whether the transaction ends up committed
CASES = {
    ("after_flush", "participant"): False,
    ("after_prepare_some", "participant"): True,
    ("after_prepare_some", "commit_point"): False,
    ("after_prepare", "participant"): True,
    ("after_prepare", "commit_point"): False,
    ("after_decision", "participant"): True,
    ("after_commit_some", "participant"): True,
}


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def _one(dsn: str, query: str, args: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(query, args).fetchone()[0]


def _sum(dsns: dict[str, str], query: str, args: tuple[Any, ...] = ()) -> int:
    return sum(_one(dsn, query, args) for dsn in dsns.values())


def _backend_gone(dsn: str, backend_pid: int) -> bool:
    return not _one(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend_pid,))


def _victim(session: shardsession.Session, point: str, victim: str) -> str:
    """The shard to hurt at ``point`` (see the module docstring)."""
    trans = session.get_transaction()
    assert trans is not None
    writers = sorted(trans._writers & set(trans._handles))
    assert len(writers) == 4, f"the 12 rows should reach every shard, not only {writers}"
    if victim == "commit_point":
        return writers[0]
    if point == "after_prepare_some":
        return writers[1]  # the first writer asked to PREPARE; its reply was read
    return writers[-1]


def _kill_worker(session: shardsession.Session, shard: str, dsn: str) -> None:
    handle = session.get_transaction()._handles[shard]
    os.kill(handle.pid, signal.SIGKILL)
    handle.process.join(10)
    assert not handle.process.is_alive(), f"worker {handle.pid} survived SIGKILL for 10 s"
    # its backend finishes what it was running, then sees the client gone
    _wait(lambda: _backend_gone(dsn, handle.backend_pid), 10, "the dead worker's backend to exit")


def _terminate_backend(session: shardsession.Session, shard: str, dsn: str) -> None:
    handle = session.get_transaction()._handles[shard]
    assert _one(dsn, "SELECT pg_terminate_backend(%s)", (handle.backend_pid,)) is True
    _wait(lambda: _backend_gone(dsn, handle.backend_pid), 10, "the terminated backend to exit")


def _commit_with_fault(
    session: shardsession.Session, point: str, victim: str, inject: Callable[[str], None]
) -> tuple[BaseException | None, list[warnings.WarningMessage], list[str]]:
    """Commit 12 rows on 4 shards, calling ``inject(shard)`` at ``point``."""
    from tests.coordinator.models import Account

    session.add_all(
        [Account(id=i, tenant_id=i, owner="x", balance=1) for i in IDS],
    )
    session.flush()
    hurt: list[str] = []

    def hook(name: str) -> None:
        if name == point and not hurt:
            hurt.append(_victim(session, point, victim))
            inject(hurt[0])

    error: BaseException | None = None
    transaction.crash_hook = hook
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TwoPhaseCommitPendingWarning)
            try:
                session.commit()
            except Exception as err:
                error = err
    finally:
        transaction.crash_hook = None
    assert hurt, f"the commit never reached {point}"
    pending = [w for w in caught if issubclass(w.category, TwoPhaseCommitPendingWarning)]
    return error, pending, hurt


def _check_settled(session: shardsession.Session, dsns: dict[str, str], committed: bool) -> None:
    """All or nothing, nothing prepared, nothing locked, and the session works again."""
    from tests.coordinator.models import Account

    rows = _sum(dsns, "SELECT count(*) FROM acct WHERE id BETWEEN 1 AND 12")
    assert rows == (12 if committed else 0), f"{rows} of the 12 rows are committed"
    left = _sum(dsns, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
    assert left == 0, f"{left} prepared transaction(s) left behind"
    for dsn in dsns.values():
        with psycopg.connect(dsn) as conn:
            conn.execute("SET lock_timeout = '2s'")
            conn.execute("UPDATE acct SET balance = balance + 1 WHERE id BETWEEN 1 AND 12")
            conn.rollback()
    session.rollback()
    session.add_all([Account(id=100 + i, tenant_id=i, owner="y") for i in IDS])  # every shard
    session.commit()
    assert _sum(dsns, "SELECT count(*) FROM acct WHERE id > 100") == 12


def _recover(dsns: dict[str, str]) -> shardsession.RecoveryReport:
    report = shardsession.recover(dsns, older_than=0)
    assert not report.errors, report.errors
    assert not report.waiting, report.waiting
    return report


def _check_outcome(
    error: BaseException | None, pending: list[warnings.WarningMessage], committed: bool
) -> None:
    if committed:
        assert error is None, f"commit() raised after the decision: {error!r}"
    else:
        assert isinstance(error, TwoPhaseError), f"commit() should have failed: {error!r}"
        assert not pending


# -- a worker killed, a backend terminated (the shared test databases) ----------------


@pytest.fixture
def accounts(session: shardsession.Session, clean_shards: dict[str, str]) -> dict[str, str]:
    from tests.coordinator.models import Base

    Base.metadata.create_all(session.pool)
    return clean_shards


@pytest.mark.parametrize("fault", ["kill_worker", "terminate_backend"])
@pytest.mark.parametrize(("point", "victim"), list(CASES))
def test_participant_connection_lost_during_commit(
    session: shardsession.Session, accounts: dict[str, str], point: str, victim: str, fault: str
) -> None:
    dsns = accounts
    hurt_fn = _kill_worker if fault == "kill_worker" else _terminate_backend
    error, pending, _ = _commit_with_fault(
        session, point, victim, lambda shard: hurt_fn(session, shard, dsns[shard])
    )
    committed = CASES[point, victim]
    _check_outcome(error, pending, committed)
    # the prepared transaction outlives its worker: the coordinator finishes it
    # itself over a direct connection, so nothing is left pending
    assert not pending, [str(w.message) for w in pending]
    report = _recover(dsns)
    assert not report.committed and not report.rolled_back, report
    _check_settled(session, dsns, committed)


# -- a whole shard server stops (one server per shard) -------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    path = Path(tempfile.mkdtemp(prefix="ss-test-"))
    path.chmod(0o755)  # reachable by the server user when tests run as root
    cluster = LocalCluster(shards=4, path=path / "c", instances=4, durable=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(remove=True)
        shutil.rmtree(path, ignore_errors=True)


def _set_synchronous_commit(cluster: LocalCluster, value: str | None) -> None:
    for shard in cluster.shard_names:
        db = psycopg.sql.Identifier(cluster.database_name(shard))
        with psycopg.connect(cluster.admin_dsn(shard), autocommit=True) as conn:
            if value is None:
                conn.execute(
                    psycopg.sql.SQL("ALTER DATABASE {} RESET synchronous_commit").format(db)
                )
            else:
                conn.execute(
                    psycopg.sql.SQL("ALTER DATABASE {} SET synchronous_commit = {}").format(
                        db, psycopg.sql.Literal(value)
                    )
                )


@pytest.fixture
def cluster_session(
    request: pytest.FixtureRequest, cluster: LocalCluster
) -> Iterator[tuple[shardsession.Session, dict]]:
    """A fresh pool and session over the module's cluster, its tables empty.

    Indirect parameter: the ``synchronous_commit`` of the shard databases (for
    the workers this pool starts); the cluster's own setting when absent.
    """
    from tests.coordinator.models import Base

    dsns = cluster.start()  # brings back a server a failed test left stopped
    shardsession.recover(dsns, older_than=0)
    synchronous_commit = getattr(request, "param", None)
    _set_synchronous_commit(cluster, synchronous_commit)
    # no monitor rounds: it would start fresh workers at random moments, and which
    # worker a checkout gets would depend on timing
    pool = shardsession.create_pool(
        dsns, workers_per_shard=2, recovery_interval=None, monitor_interval=3600
    )
    session = shardsession.Session(pool)
    try:
        Base.metadata.create_all(pool)
        for dsn in dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM acct")
                conn.execute("CHECKPOINT")  # what the server crash must not lose
        yield session, dsns
    finally:
        session.close()
        pool.close()
        if synchronous_commit is not None:
            cluster.start()
            _set_synchronous_commit(cluster, None)


SERVER_CASES = {**CASES, ("after_decision", "commit_point"): True}


@pytest.mark.parametrize(("point", "victim"), list(SERVER_CASES))
def test_participant_server_stops_during_commit(
    cluster: LocalCluster,
    cluster_session: tuple[shardsession.Session, dict[str, str]],
    point: str,
    victim: str,
) -> None:
    session, dsns = cluster_session
    try:
        error, pending, hurt = _commit_with_fault(
            session, point, victim, lambda shard: cluster.stop_server(shard, mode="immediate")
        )
    finally:
        assert cluster.start() == dsns
    committed = SERVER_CASES[point, victim]
    _check_outcome(error, pending, committed)
    # decided: commit() returns, naming the shard whose prepared transaction
    # recovery has to finish (none when the lost server is the commit point,
    # which does not prepare)
    to_finish = hurt if committed and victim == "participant" else []
    assert len(pending) == len(to_finish), [str(w.message) for w in pending]
    if to_finish:
        assert repr(to_finish) in str(pending[0].message)
    report = _recover(dsns)
    assert [g.rsplit("_", 1)[1] for g in report.committed] == to_finish, report
    _check_settled(session, dsns, committed)


@pytest.mark.parametrize("cluster_session", ["off"], indirect=True)
def test_decision_survives_a_commit_point_crash_even_with_async_commit(
    cluster: LocalCluster, cluster_session: tuple[shardsession.Session, dict[str, str]]
) -> None:
    session, dsns = cluster_session
    try:
        error, pending, _ = _commit_with_fault(
            session,
            "after_decision",
            "commit_point",
            lambda shard: cluster.stop_server(shard, mode="immediate"),
        )
    finally:
        assert cluster.start() == dsns
    assert error is None and not pending
    _recover(dsns)
    _check_settled(session, dsns, committed=True)
