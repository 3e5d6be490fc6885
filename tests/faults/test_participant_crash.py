"""A participant or the commit point fails at each step of a two-phase commit.

The session commits 12 accounts, which land on all 4 shards: ``s0`` is the
commit point (the first writer by name: it does not prepare, its own commit
records the decision), ``s1``-``s3`` are prepared.  At a precise step one of
them is hurt for real: its worker process is killed (SIGKILL), its PostgreSQL
backend is terminated, or its whole server stops (``pg_ctl stop -m immediate``,
like a crash) and comes back.  The step is found by watching the worker
connections' ``send`` / ``recv`` in this process (they run unchanged).

Whatever ``commit()`` then does must match the step:

* before the decision, ``commit()`` raises :class:`~shardsession.exc.TwoPhaseError`
  and nothing is committed;
* after it (the commit point's COMMIT returned), ``commit()`` returns, and a
  prepared participant it could not reach is named by a
  :class:`~shardsession.exc.TwoPhaseCommitPendingWarning` and left to recovery.

Recovery then leaves the transaction committed on all its shards or on none, no
prepared transaction behind, no row locked, and the session works again after
``rollback()``.  When the error says every shard was rolled back, recovery
finds nothing to do.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from shardsession.coordinator import dbapi

import shardsession as ss
from shardsession.embedded import LocalCluster
from shardsession.exc import TwoPhaseCommitPendingWarning, TwoPhaseError
from shardsession.testing import rollback_prepared
from shardsession.twophase import COMMIT_LOG, participant_gid
from tests.faults import support
from tests.faults.models import Account, Base

IDS = range(1, 13)
PARTICIPANTS = ["s1", "s2", "s3"]

# (step, victim) -> whether the transaction ends up committed.  The steps:
#   before_prepare      before the first PREPARE is sent
#   after_prepare_some  the first PREPARE's reply was read, the others not yet
#   after_prepare       every PREPARE acknowledged, the decision not sent
#   after_decision      the commit point's COMMIT returned, no COMMIT PREPARED sent
#   after_commit_some   one COMMIT PREPARED done, the next not sent
# The participant hurt is one the step has not finished with: not yet asked to
# PREPARE (before_prepare), prepared and acknowledged (after_prepare_some,
# after_prepare), not yet sent its COMMIT PREPARED (the later steps).
CASES = {
    ("before_prepare", "participant"): False,
    ("before_prepare", "commit_point"): False,
    ("after_prepare_some", "participant"): True,
    ("after_prepare_some", "commit_point"): False,
    ("after_prepare", "participant"): True,
    ("after_prepare", "commit_point"): False,
    ("after_decision", "participant"): True,
    ("after_decision", "commit_point"): True,
    ("after_commit_some", "participant"): True,
}

Hurt = Callable[[dbapi.Connection], None]


class _Injector:
    """Calls ``hurt(victim)`` once, when the commit reaches ``step``.

    It wraps the worker connections' ``send`` and ``recv`` (which run unchanged)
    to see where the commit is: which requests went out, which replies came back.
    """

    def __init__(self, step: str, victim: str, hurt: Hurt, dsns: dict[str, str]) -> None:
        self.step, self.victim, self.hurt, self.dsns = step, victim, hurt, dsns
        self.sent: dict[str, list[dbapi.Connection]] = {}
        self.last_sent: dict[int, str] = {}  # connection -> the request its reply answers
        self.prepare_replies = 0
        self.fired = False
        self.hurt_shard: str | None = None
        self.problem: BaseException | None = None  # raised inside the commit: kept here

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        send, recv = dbapi.Connection.send, dbapi.Connection.recv

        def watched_send(conn: dbapi.Connection, request: Any) -> None:
            kind = type(request).__name__
            self._before_send(conn, kind)
            send(conn, request)
            self.sent.setdefault(kind, []).append(conn)
            self.last_sent[id(conn)] = kind

        def watched_recv(conn: dbapi.Connection) -> Any:
            value = recv(conn)
            if self.last_sent.pop(id(conn), None) == "Prepare":
                self.prepare_replies += 1
                if self.step == "after_prepare_some" and self.prepare_replies == 1:
                    self._fire(conn.tpc, first_acked=conn)
            return value

        monkeypatch.setattr(dbapi.Connection, "send", watched_send)
        monkeypatch.setattr(dbapi.Connection, "recv", watched_recv)

    def _before_send(self, conn: dbapi.Connection, kind: str) -> None:
        done = len(self.sent.get(kind, []))
        if (self.step, kind, done) in (
            ("before_prepare", "Prepare", 0),
            ("after_prepare", "Decide", 0),
            ("after_decision", "FinishPrepared", 0),
        ):
            self._fire(conn.tpc)
        elif (self.step, kind, done) == ("after_commit_some", "FinishPrepared", 1):
            first = self.sent[kind][0]
            gid = participant_gid(conn.tpc.global_id, first.shard)
            self._fire(conn.tpc, wait_until_gone=(first.shard, gid))

    def _fire(
        self,
        coordinator: Any,
        first_acked: dbapi.Connection | None = None,
        wait_until_gone: tuple[str, str] | None = None,
    ) -> None:
        if self.fired:
            return
        self.fired = True
        try:
            if wait_until_gone is not None:  # a COMMIT PREPARED was sent: wait until done
                shard, gid = wait_until_gone
                support.wait_for(
                    lambda: gid not in support.prepared(self.dsns).get(shard, []),
                    10,
                    f"the first COMMIT PREPARED ({gid}) to be done",
                )
            self._hurt(coordinator, first_acked)
        except BaseException as err:  # the commit may swallow it: the test must not
            self.problem = err
            raise

    def _hurt(self, coordinator: Any, first_acked: dbapi.Connection | None) -> None:
        assert coordinator is not None, "the commit is not run by a two-phase coordinator"
        writers = sorted(c.shard for c in coordinator.writers)
        assert writers == ["s0", *PARTICIPANTS], f"the 12 rows should reach every shard: {writers}"
        assert coordinator.commit_point.shard == "s0"
        if self.victim == "commit_point":
            conn = coordinator.commit_point
        elif first_acked is not None:
            conn = first_acked
        elif self.step == "before_prepare":
            conn = max(
                (c for c in coordinator.writers if c is not coordinator.commit_point),
                key=lambda c: c.shard,
            )
        else:
            conn = coordinator.prepared[-1]  # the last to be sent COMMIT PREPARED
        self.hurt_shard = conn.shard
        self.hurt(conn)


def _commit_with_fault(
    session: ss.Session,
    monkeypatch: pytest.MonkeyPatch,
    dsns: dict[str, str],
    step: str,
    victim: str,
    hurt: Hurt,
) -> tuple[BaseException | None, list[str], str]:
    """Commit 12 accounts on the 4 shards, hurting ``victim`` at ``step``.

    :returns: the error ``commit()`` raised (or None), the messages of the pending
        warnings, and the shard hurt.
    """
    session.add_all([Account(id=i, owner="x", balance=1) for i in IDS])
    session.flush()
    injector = _Injector(step, victim, hurt, dsns)
    error: BaseException | None = None
    with monkeypatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TwoPhaseCommitPendingWarning)
        injector.install(patch)
        try:
            session.commit()
        except Exception as err:
            error = err
    if injector.problem is not None:
        raise injector.problem
    assert injector.hurt_shard is not None, f"the commit never reached {step}"
    pending = [
        str(w.message) for w in caught if issubclass(w.category, TwoPhaseCommitPendingWarning)
    ]
    return error, pending, injector.hurt_shard


def _check_outcome(
    error: BaseException | None, pending: list[str], committed: bool, unreached: list[str]
) -> None:
    """What ``commit()`` did: returned (naming the shards left to recovery) or raised."""
    if committed:
        assert error is None, f"commit() raised after the decision: {error!r}"
        assert len(pending) == (1 if unreached else 0), pending
        if unreached:
            assert repr(unreached) in pending[0], pending[0]
    else:
        assert isinstance(error, TwoPhaseError), f"commit() should raise TwoPhaseError: {error!r}"
        assert not pending, pending


def _recover(
    dsns: dict[str, str], to_commit: list[str], to_roll_back: list[str]
) -> ss.RecoveryReport:
    """Recover; it must settle exactly the shards named (committed, rolled back)."""
    left = support.prepared(dsns)
    assert support.shards_of([g for gs in left.values() for g in gs]) == sorted(
        to_commit + to_roll_back
    ), f"prepared before recovery: {left}; expected on {sorted(to_commit + to_roll_back)}"
    report = ss.recover(dsns, older_than=0)
    assert not report.errors and not report.waiting and not report.skipped_shards, report
    assert support.shards_of(report.committed) == sorted(to_commit), report
    assert support.shards_of(report.rolled_back) == sorted(to_roll_back), report
    return report


def _check_settled(session: ss.Session, dsns: dict[str, str], committed: bool) -> None:
    """All or nothing, nothing prepared, nothing locked, and the session works again."""
    count = support.total(dsns, "SELECT count(*) FROM fault_account WHERE id BETWEEN 1 AND 12")
    assert count == (12 if committed else 0), f"{count} of the 12 rows are committed"
    assert support.prepared(dsns) == {}
    support.assert_unlocked(dsns, "fault_account")
    session.rollback()
    session.add_all([Account(id=100 + i, owner="y") for i in IDS])  # every shard again
    session.commit()
    assert support.total(dsns, "SELECT count(*) FROM fault_account WHERE id > 100") == 12


# -- a worker killed, a backend terminated (the test databases) ------------------------


def _kill_worker(dsns: dict[str, str]) -> Hurt:
    def hurt(conn: dbapi.Connection) -> None:
        backend = conn.info.backend_pid
        os.kill(conn.pid, signal.SIGKILL)
        support.wait_for(lambda: support.gone(conn.pid), 10, f"worker {conn.pid} to die")
        # its backend finishes what it was running, then sees the client gone
        support.wait_for(
            lambda: _backend_gone(dsns[conn.shard], backend), 10, "the dead worker's backend"
        )

    return hurt


def _terminate_backend(dsns: dict[str, str]) -> Hurt:
    def hurt(conn: dbapi.Connection) -> None:
        backend = conn.info.backend_pid
        assert support.one(dsns[conn.shard], "SELECT pg_terminate_backend(%s)", (backend,))
        support.wait_for(
            lambda: _backend_gone(dsns[conn.shard], backend), 10, "the terminated backend"
        )
        _wait_worker_exit(conn)

    return hurt


def _wait_worker_exit(conn: dbapi.Connection) -> None:
    """A worker whose server connection is gone exits by itself, at once."""
    support.wait_for(
        lambda: support.gone(conn.pid), 10, f"worker {conn.pid} to exit after losing its server"
    )


def _backend_gone(dsn: str, backend_pid: int) -> bool:
    query = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
    return not support.one(dsn, query, (backend_pid,))


@pytest.mark.parametrize("fault", ["kill_worker", "terminate_backend"])
@pytest.mark.parametrize(("step", "victim"), list(CASES))
def test_participant_connection_lost_during_commit(
    fault_shards: ss.ShardSet,
    clean_shards: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    victim: str,
    fault: str,
) -> None:
    dsns = clean_shards
    hurt = _kill_worker(dsns) if fault == "kill_worker" else _terminate_backend(dsns)
    committed = CASES[step, victim]
    with ss.Session(fault_shards) as session:
        with support.recovery_paused(dsns):
            error, pending, _shard = _commit_with_fault(
                session, monkeypatch, dsns, step, victim, hurt
            )
            # a prepared participant whose worker is lost after the decision is finished
            # by commit() over a connection of its own (its server is up); before the
            # decision, TwoPhaseError means every shard was rolled back: nothing is left
            unreached: list[str] = []
            _check_outcome(error, pending, committed, unreached)
        _recover(dsns, to_commit=unreached, to_roll_back=[])
        _check_settled(session, dsns, committed)


def test_participant_lost_after_its_prepare_leaves_nothing_prepared(
    fault_shards: ss.ShardSet, clean_shards: dict[str, str]
) -> None:
    """A participant's PREPARE succeeds, but its worker dies before the reply is read.

    A deferred trigger makes PREPARE TRANSACTION on ``s3`` sleep; its worker is
    stopped (SIGSTOP) while PostgreSQL runs that PREPARE, and killed once the
    transaction is prepared.  The coordinator never learns the PREPARE succeeded:
    the commit fails before the decision, and :class:`TwoPhaseError` says every
    shard was rolled back -- so the transaction prepared on ``s3`` must be rolled
    back too, not left holding its rows' locks until recovery's grace period.
    """
    dsns = clean_shards
    with psycopg.connect(dsns["s3"], autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION fault_slow_once() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF current_setting('fault.slept', true) IS DISTINCT FROM '1' THEN "
            "PERFORM set_config('fault.slept', '1', true); PERFORM pg_sleep(1); END IF; "
            "RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER fault_slow_prepare AFTER INSERT ON fault_account "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_slow_once()"
        )
    try:
        with support.recovery_paused(dsns), ss.Session(fault_shards) as session:
            session.add_all([Account(id=i, owner="x", balance=1) for i in IDS])
            session.flush()
            with (
                support.reply_lost(
                    session, dsns, "s3", "the PREPARE on s3 to run its trigger",
                    lambda: "s3" in support.prepared(dsns), "s3 to be prepared",
                ),
                pytest.raises(TwoPhaseError, match="rolled back"),
            ):  # fmt: skip
                session.commit()
            left = support.prepared(dsns)
            assert left == {}, f"TwoPhaseError said every shard was rolled back: {left}"
    finally:
        ss.recover(dsns, older_than=0)  # what a failed check left prepared (and locked)
        with psycopg.connect(dsns["s3"], autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute("DROP TRIGGER IF EXISTS fault_slow_prepare ON fault_account")
    count = support.total(dsns, "SELECT count(*) FROM fault_account")
    assert count == 0, f"{count} of the 12 rows are committed"


# -- a whole shard server stops (one server per shard) -------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    path = Path(tempfile.mkdtemp(prefix="ss-test-"))
    path.chmod(0o755)  # reachable by the server user when tests run as root
    # A long WAL writer delay: a commit that is not flushed when it returns (with
    # synchronous_commit off) stays in memory, and a crash loses it.
    cluster = LocalCluster(
        shards=4,
        path=path / "c",
        instances=4,
        durable=False,
        settings={"wal_writer_delay": "'10s'"},
    )
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
                statement = psycopg.sql.SQL("ALTER DATABASE {} RESET synchronous_commit")
                conn.execute(statement.format(db))
            else:
                statement = psycopg.sql.SQL("ALTER DATABASE {} SET synchronous_commit = {}")
                conn.execute(statement.format(db, psycopg.sql.Literal(value)))


@pytest.fixture
def cluster_session(
    request: pytest.FixtureRequest, cluster: LocalCluster
) -> Iterator[tuple[ss.Session, dict[str, str]]]:
    """A fresh ShardSet and session over the module's cluster, its tables empty.

    Indirect parameter: the ``synchronous_commit`` of the shard databases (for
    the workers these shards start); the cluster's own setting when absent.
    The pools ping a worker before handing it out: a server that stopped and
    came back ended the workers it served.
    """
    dsns = cluster.start()  # brings back a server a failed test left stopped
    for dsn in dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            rollback_prepared(conn)
    synchronous_commit = getattr(request, "param", None)
    _set_synchronous_commit(cluster, synchronous_commit)
    shards = ss.create_shards(
        dsns, pool_size=1, max_overflow=4, pool_pre_ping=True, recovery_interval=None
    )
    session = ss.Session(shards)
    try:
        ss.create_all(Base.metadata, shards)
        for dsn in dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"TRUNCATE fault_account, {COMMIT_LOG}")
                conn.execute("CHECKPOINT")  # what the server crash must not lose
        yield session, dsns
    finally:
        session.close()
        shards.close()
        if synchronous_commit is not None:
            cluster.start()
            _set_synchronous_commit(cluster, None)


def _stop_server(cluster: LocalCluster) -> Hurt:
    def hurt(conn: dbapi.Connection) -> None:
        cluster.stop_server(conn.shard, mode="immediate")
        _wait_worker_exit(conn)

    return hurt


@pytest.mark.parametrize(("step", "victim"), list(CASES))
def test_participant_server_stops_during_commit(
    cluster: LocalCluster,
    cluster_session: tuple[ss.Session, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    victim: str,
) -> None:
    session, dsns = cluster_session
    committed = CASES[step, victim]
    try:
        error, pending, shard = _commit_with_fault(
            session, monkeypatch, dsns, step, victim, _stop_server(cluster)
        )
    finally:
        assert cluster.start() == dsns
    # decided: commit() returns, naming the participant recovery has to finish.
    # Undecided: TwoPhaseError.  If the commit point is down, the outcome cannot be
    # fenced, so the prepared participants wait for recovery.
    unreached = [shard] if committed and victim == "participant" else []
    _check_outcome(error, pending, committed, unreached)
    undecided = PARTICIPANTS if not committed and victim == "commit_point" else []
    _recover(dsns, to_commit=unreached, to_roll_back=undecided)
    _check_settled(session, dsns, committed)


@pytest.mark.parametrize("cluster_session", ["off"], indirect=True)
def test_decision_survives_a_commit_point_crash_even_with_async_commit(
    cluster: LocalCluster,
    cluster_session: tuple[ss.Session, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``synchronous_commit = off`` must not apply to the decision: commit() returning
    means the decision is durable, even if the commit point crashes at once."""
    session, dsns = cluster_session
    try:
        error, pending, _ = _commit_with_fault(
            session, monkeypatch, dsns, "after_decision", "commit_point", _stop_server(cluster)
        )
    finally:
        assert cluster.start() == dsns
    assert error is None and not pending, (error, pending)
    _recover(dsns, to_commit=[], to_roll_back=[])
    _check_settled(session, dsns, committed=True)
