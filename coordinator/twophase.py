"""The commit-point two-phase commit of a session's transaction.

SQLAlchemy drives it: with ``Session(twophase=True)`` (shardsession's default),
``commit()`` flushes, calls ``prepare`` on every shard's connection, then
``commit`` on every one, through the dialect's ``do_*_twophase`` and the DBAPI's
``tpc_*`` methods.  Those calls come in no particular order, so a
:class:`CommitCoordinator` (one per root transaction, registered on every worker
connection the transaction uses) acts on counts:

* prepare calls: with two or more shards written, every writer but the commit
  point is sent ``PREPARE TRANSACTION`` without waiting; the last call reads the
  replies.  A failure rolls everything back and raises
  :class:`~shardsession.exc.TwoPhaseError`.  With at most one writer nothing is
  sent: the commit is one-phase.
* the first commit call: the commit point inserts its decision row
  ``(gid, 'commit', participants)`` and commits, in one round trip: that commit
  is the decision.  Then ``COMMIT PREPARED`` goes to the prepared shards and
  ``COMMIT`` to the shards that only read, all in parallel.  A prepared
  participant whose worker died is finished over a connection of its own (its
  locks are not left to wait for recovery); one that cannot be reached at all is
  left to recovery (a warning says so).  The transaction is committed.
* if the decision's reply is lost (the commit point's worker died), the outcome
  is settled as recovery would: read or fence the decision on the commit point,
  then commit or roll back the prepared shards accordingly.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import psycopg
from psycopg import sql
from shardsession.coordinator.dbapi import exchange

from shardsession import protocol as p
from shardsession.exc import TwoPhaseCommitPendingWarning, TwoPhaseError
from shardsession.recovery import settle_decision
from shardsession.twophase import DECISION_SQL, new_global_id, participant_gid

__all__ = ["CommitCoordinator"]


class CommitCoordinator:
    """The two-phase state of one root session transaction.

    :param dsns: shard name -> conninfo, to settle a lost decision reply.
    """

    def __init__(self, dsns: dict[str, str]) -> None:
        self.dsns = dsns
        self.parts: list[Any] = []  # worker connections, in order of first use
        self.state = "active"
        self.writers: list[Any] = []
        self.commit_point: Any = None
        self.global_id = ""
        self.prepared: list[Any] = []  # PREPARE sent (a lost reply: outcome unknown)
        self._failures: list[tuple[Any, BaseException]] = []
        self._prepare_calls = 0

    def register(self, conn: Any) -> None:
        """Take part ``conn`` (a worker DBAPI connection) in this transaction."""
        if conn not in self.parts:
            self.parts.append(conn)
            conn.tpc = self

    # -- phase one ----------------------------------------------------------------

    def prepare(self, conn: Any) -> None:
        """One participant's ``tpc_prepare``; the last one reads the replies."""
        if self._prepare_calls == 0:
            self.writers = sorted((c for c in self.parts if c.wrote), key=lambda c: c.shard)
            if len(self.writers) > 1:
                self.commit_point = self.writers[0]
                self.global_id = new_global_id(self.commit_point.shard)
        self._prepare_calls += 1
        if self.commit_point is not None and conn.wrote and conn is not self.commit_point:
            try:
                conn.send(p.Prepare(participant_gid(self.global_id, conn.shard)))
                self.prepared.append(conn)
            except Exception as err:  # the worker is gone: nothing was prepared there
                self._failures.append((conn, err))
        if self._prepare_calls < len(self.parts):
            return
        failures = self._failures
        for part in list(self.prepared):
            try:
                part.recv()
            except Exception as err:
                failures.append((part, err))
                if not part.closed:  # PREPARE failed: nothing is prepared there
                    self.prepared.remove(part)
        if failures:
            self._abort()
            part, err = failures[0]
            raise TwoPhaseError(
                f"PREPARE TRANSACTION failed on shard {part.shard!r} ({_first_line(err)}); "
                "every shard of the transaction was rolled back and nothing was committed. "
                + _prepare_hint(err)
            ) from err
        self.state = "prepared"

    # -- phase two ----------------------------------------------------------------

    def commit(self, conn: Any) -> None:
        """One participant's ``tpc_commit``; the first one commits everything."""
        if self.state == "committed":
            return
        if self.state != "prepared":
            raise TwoPhaseError(f"two-phase commit called in state {self.state!r}")
        if self.commit_point is None:
            self._one_phase()
            return
        cp = self.commit_point
        participants = [c.shard for c in self.writers]
        try:
            cp.request(p.Decide(DECISION_SQL, (self.global_id, participants)))
        except Exception as err:
            if cp.broken:
                self._settle_lost_decision(err)
                return
            self._abort(commit_point_done=True)
            raise TwoPhaseError(
                f"the commit point {cp.shard!r} could not commit ({_first_line(err)}); every "
                "shard of the transaction was rolled back and nothing was committed"
            ) from err
        self._finish(commit=True)

    def _one_phase(self) -> None:
        outcomes = exchange([(part, p.Commit()) for part in self.parts])
        self._done("committed")
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome

    def _finish(self, *, commit: bool) -> None:
        """Phase two after the decision: finish the prepared shards, commit the readers."""
        readers = [c for c in self.parts if c not in self.writers]
        calls = [(c, p.FinishPrepared(participant_gid(self.global_id, c.shard), commit))
                 for c in self.prepared]  # fmt: skip
        calls += [(c, p.Commit() if commit else p.Rollback()) for c in readers]
        outcomes = exchange(calls)
        missed = []
        for (part, request), outcome in zip(calls, outcomes):
            if not isinstance(outcome, Exception):
                continue
            # A prepared shard whose worker died holds its locks until it is finished:
            # finish it now over a connection of its own rather than wait for recovery.
            if isinstance(request, p.FinishPrepared) and part.closed:
                with contextlib.suppress(Exception):
                    backend = int(part.worker_info.get("backend_pid", 0))
                    _finish_prepared(self.dsns[part.shard], request.gid, backend, commit=commit)
                    continue
            missed.append(part.shard)
        self._done("committed" if commit else "aborted")
        if missed and commit:
            warnings.warn(
                f"transaction {self.global_id} is committed (its decision is recorded on "
                f"{self.commit_point.shard!r}), but shards {sorted(missed)} were not "
                "reached to finish it; recovery completes them (ShardSet.recover() or "
                "`shardsession recover`)",
                TwoPhaseCommitPendingWarning,
                stacklevel=4,
            )

    def _settle_lost_decision(self, err: BaseException) -> None:
        cp = self.commit_point
        try:
            outcome = settle_decision(
                self.dsns[cp.shard], self.global_id, presume_abort=True, dry_run=False
            )
        except Exception:
            outcome = None
        if outcome == "commit":
            self._finish(commit=True)
            return
        if outcome == "abort":
            self._finish(commit=False)
            raise TwoPhaseError(
                f"the commit point {cp.shard!r} was lost before its decision committed "
                f"({_first_line(err)}); the transaction was rolled back on every shard"
            ) from err
        self._done("aborted")
        raise TwoPhaseError(
            f"the outcome of transaction {self.global_id} is not known yet: its commit point "
            f"{cp.shard!r} was lost ({_first_line(err)}) and could not be reached; recovery "
            "will settle it (committed everywhere or nowhere)"
        ) from err

    # -- rolling back ----------------------------------------------------------------

    def rollback(self, conn: Any) -> None:
        """One participant's ``tpc_rollback``: the first one rolls back everything."""
        if self.state in ("committed", "aborted"):
            conn.tpc = None
            return
        self._abort()

    def _abort(self, *, commit_point_done: bool = False) -> None:
        for part in self.parts:
            part.drain()
        calls: list[tuple[Any, p.Request]] = []
        in_doubt = [part for part in self.prepared if part.closed]
        for part in self.parts:
            if part in self.prepared:
                if not part.closed:
                    gid = participant_gid(self.global_id, part.shard)
                    calls.append((part, p.FinishPrepared(gid, False)))
            elif not (commit_point_done and part is self.commit_point):
                calls.append((part, p.Rollback()))
        exchange(calls)  # a failure here leaves a prepared part to recovery
        if in_doubt:
            self._roll_back_in_doubt(in_doubt)
        self._done("aborted")

    def _roll_back_in_doubt(self, parts: list[Any]) -> None:
        """Roll back participants whose worker died with PREPARE's reply unread.

        Their PREPARE may have succeeded, or may still be running in the old
        backend.  The abort decision is recorded first (so recovery rolls them
        back at once, without a grace period, if this fails), then each is rolled
        back over a connection of its own once its old backend is gone.
        """
        with contextlib.suppress(Exception):
            settle_decision(self.dsns[self.commit_point.shard], self.global_id,
                            presume_abort=True, dry_run=False)  # fmt: skip
        for part in parts:
            with contextlib.suppress(Exception):
                _finish_prepared(
                    self.dsns[part.shard], participant_gid(self.global_id, part.shard),
                    int(part.worker_info.get("backend_pid", 0)), commit=False,
                )  # fmt: skip

    def _done(self, state: str) -> None:
        self.state = state
        for part in self.parts:
            part.tpc = None


def _finish_prepared(
    dsn: str, gid: str, old_backend: int, *, commit: bool, wait: float = 10.0
) -> bool:
    """``COMMIT``/``ROLLBACK PREPARED gid`` from a new connection; waits (bounded) for
    the backend that was preparing it to end.  False when there was nothing to finish."""
    command = sql.SQL("COMMIT PREPARED {}" if commit else "ROLLBACK PREPARED {}")
    statement = command.format(sql.Literal(gid))
    deadline = time.monotonic() + wait
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        while True:
            try:
                conn.execute(statement)
                return True
            except (psycopg.errors.UndefinedObject, psycopg.errors.ObjectInUse):
                # not there (yet), or its old backend is still finishing it
                running = conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (old_backend,)
                ).fetchone()
                if running is None or time.monotonic() > deadline:
                    # gone: its PREPARE either happened (seen now) or never will
                    try:
                        conn.execute(statement)
                    except psycopg.errors.UndefinedObject:
                        return False
                    return True
                time.sleep(0.02)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _prepare_hint(err: BaseException) -> str:
    if "max_prepared_transactions" in str(err) or "prepared transactions are disabled" in str(err):
        return (
            "The server allows no (more) prepared transactions: raise "
            "max_prepared_transactions in postgresql.conf and restart it."
        )
    if getattr(err, "sqlstate", None) in ("40001", "40P01") or "connection" in str(err).lower():
        return "Retry the transaction."
    return ""
