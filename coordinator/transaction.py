"""SessionTransaction: the session's transaction across shards, with its explicit states.

A root transaction checks a worker out of the pool for every shard it touches,
on first use, and gives them back when it ends.  Nested transactions are
SAVEPOINTs on every shard the transaction has touched, and on shards first
touched inside the savepoint.  Commit is one-phase when at most one shard was
written, two-phase otherwise (PREPARE on every writer in parallel, then COMMIT
PREPARED on every writer in parallel).

States: ``ACTIVE`` -> (``PREPARED``) -> ``COMMITTED`` | ``DEACTIVE`` (failed,
needs rollback) -> ``CLOSED``.
"""

from __future__ import annotations

import enum
import itertools
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.sql

from shardsession import event
from shardsession import protocol as p
from shardsession.exc import (
    InvalidRequestError,
    PendingRollbackError,
    TwoPhaseCommitPendingWarning,
    TwoPhaseError,
    WorkerLostError,
)
from shardsession.protocol import gather
from shardsession.recovery import settle_decision
from shardsession.twophase import COMMIT_LOG, new_global_id, participant_gid

if TYPE_CHECKING:
    from shardsession.coordinator.session import Session

    from shardsession.orm.state import InstanceState

__all__ = ["SessionTransaction", "SessionTransactionOrigin"]

_sequence = itertools.count(1)
_COMMIT_RETRIES = 3

#: Internal test hook (not a public feature): when set, it is called with the
#: name of each crash point of the commit path -- ``"after_flush"``,
#: ``"after_prepare_some"``, ``"after_prepare"``, ``"after_decision"``,
#: ``"after_commit_some"`` -- so fault-injection tests can kill the process at
#: exactly that point.
crash_hook: Callable[[str], None] | None = None


def _crash_point(name: str) -> None:
    if crash_hook is not None:
        crash_hook(name)


class SessionTransactionOrigin(enum.Enum):
    """How a :class:`SessionTransaction` began."""

    AUTOBEGIN = 0
    BEGIN = 1
    BEGIN_NESTED = 2
    SUBTRANSACTION = 3


class _State(enum.Enum):
    ACTIVE = "active"
    PREPARED = "prepared"
    COMMITTED = "committed"
    DEACTIVE = "deactive"
    CLOSED = "closed"


class SessionTransaction:
    """One level of a session's transaction (the root, or a SAVEPOINT).

    Obtained from :meth:`Session.begin`, :meth:`Session.begin_nested` or
    :meth:`Session.get_transaction`; usable as a context manager (commit on
    success, rollback on error).
    """

    def __init__(
        self,
        session: Session,
        origin: SessionTransactionOrigin,
        parent: SessionTransaction | None = None,
    ) -> None:
        self.session = session
        self.origin = origin
        self._parent = parent
        self.nested = origin is SessionTransactionOrigin.BEGIN_NESTED
        self._state = _State.ACTIVE
        self._root: SessionTransaction = parent._root if parent is not None else self
        # root only: the checked-out workers and which shards were written
        self._handles: dict[str, Any] = {}
        self._writers: set[str] = set()
        #: set while the root commits; the flush may then commit a lone writer itself
        self._committing = False
        #: shards whose worker already committed at the end of the commit's flush
        self._committed_early: set[str] = set()
        #: shards whose worker already PREPAREd at the end of the commit's flush
        self._prepared_early: set[str] = set()
        self._gid: str | None = None
        self._commit_point = ""
        self._prepared: list[str] = []
        self._ended = False
        # per level: what changed in it, to restore on rollback
        self._new: dict[int, InstanceState] = {}
        self._deleted: dict[int, InstanceState] = {}
        self._dirty: dict[int, InstanceState] = {}
        self._added: dict[int, InstanceState] = {}  # session.add() while this level was current
        self._marked: dict[int, InstanceState] = {}  # session.delete() likewise
        self._savepoint: str | None = None
        self._savepoint_shards: set[str] = set()
        if self.nested:
            self._savepoint = f"sa_savepoint_{next(_sequence)}"
            for shard, handle in list(self._root._handles.items()):
                handle.request(p.Savepoint(self._savepoint))
                self._savepoint_shards.add(shard)
        event.dispatch(session, "after_transaction_create", session, self)

    # -- public attributes --------------------------------------------------

    @property
    def parent(self) -> SessionTransaction | None:
        """The enclosing transaction, or None for the root."""
        return self._parent

    @property
    def is_active(self) -> bool:
        """True while the transaction can run statements (not failed, not ended)."""
        return self._state is _State.ACTIVE

    def __repr__(self) -> str:
        return f"<SessionTransaction {self.origin.name} {self._state.value}>"

    # -- workers ---------------------------------------------------------------

    def _handle(self, shard: str) -> Any:
        """The worker for ``shard`` in this transaction (checked out on first use)."""
        self._assert_active()
        root = self._root
        handle = root._handles.get(shard)
        if handle is not None:
            return handle
        handle = self.session.pool.checkout(shard)
        root._handles[shard] = handle
        try:
            event.dispatch(self.session, "after_begin", self.session, self, handle)
            # a shard first touched inside savepoints gets them too
            level: SessionTransaction | None = self
            chain = []
            while level is not None:
                if level._savepoint is not None and level._state is _State.ACTIVE:
                    chain.append(level)
                level = level._parent
            for sp in reversed(chain):
                handle.request(p.Savepoint(sp._savepoint or ""))
                sp._savepoint_shards.add(shard)
        except WorkerLostError:
            self._fail()
            raise
        return handle

    def _mark_written(self, shards: Any) -> None:
        self._root._writers.update(shards)

    def _finish_flush_with(self, shards: list[str]) -> dict[str, p.Commit | p.Prepare]:
        """What the commit's last flush batch may end with on each of ``shards``.

        With one writer in the whole transaction: its COMMIT.  With several: the
        PREPARE of every writer of this batch but the commit point, so the first
        phase costs no round trip of its own (the commit point's decision still
        waits until every other writer is prepared).  Nothing while flush listeners
        could change objects after the flush.
        """
        root = self._root
        if not (
            root._committing
            and self.session._transaction is root
            and not event.any_listeners("after_flush", "after_flush_postexec")
        ):
            return {}
        if len(root._writers) == 1:
            root._committed_early.update(shards)
            return {s: p.Commit(expire=self.session.expire_on_commit) for s in shards}
        root._choose_commit_point()
        early = [s for s in shards if s != root._commit_point]
        root._prepared_early.update(early)
        return {s: p.Prepare(root.gid_for(s)) for s in early}

    def _fail(self) -> None:
        level: SessionTransaction | None = self
        while level is not None:
            if level._state is _State.ACTIVE:
                level._state = _State.DEACTIVE
            level = level._parent

    def _assert_active(self) -> None:
        if self._state is _State.DEACTIVE:
            raise PendingRollbackError(
                "This Session's transaction has been rolled back due to a previous exception "
                "during flush or a lost worker. To begin a new transaction with this Session, "
                "first issue Session.rollback()."
            )
        if self._state is _State.PREPARED:
            raise InvalidRequestError(
                "This session is in 'prepared' state; no further SQL can be emitted within "
                "this transaction. Call commit() or rollback()."
            )
        if self._state is not _State.ACTIVE:
            raise InvalidRequestError(f"This transaction is {self._state.value}")

    # -- commit ---------------------------------------------------------------

    def prepare(self) -> None:
        """Flush, then run the first phase of two-phase commit on every shard written."""
        if self._parent is not None:
            raise InvalidRequestError("Only the root transaction can be prepared")
        if self._state is _State.PREPARED:
            raise InvalidRequestError("This transaction is already prepared")
        self._assert_active()
        event.dispatch(self.session, "before_commit", self.session)
        self.session._flush_if_needed()
        self._prepare_writers()

    def _prepare_writers(self, *, include_commit_point: bool = True) -> None:
        """PREPARE the writers (all, or all but the commit point) in parallel.

        Readers commit straight away.  Any failure rolls back every participant.
        """
        root = self._root
        writers = self._choose_commit_point()
        to_prepare = writers if include_commit_point else writers[1:]
        readers = [s for s in root._handles if s not in writers]
        calls = [
            (root._handles[s], p.Prepare(self.gid_for(s)))
            for s in to_prepare
            if s not in root._prepared_early
        ]
        calls += [(root._handles[s], p.Commit()) for s in readers]
        if not calls and root._prepared_early:
            _crash_point("after_prepare_some")  # they were prepared by the flush
        sent = []
        try:
            for handle, request in calls:
                handle.send(request)
                sent.append(handle)
            error: BaseException | None = None
            for n, handle in enumerate(sent):
                try:
                    handle.recv()
                except Exception as err:
                    error = error or err
                if n == 0:
                    _crash_point("after_prepare_some")
            if error is not None:
                raise error
        except Exception as err:
            for handle in sent:
                handle.drain()
            self._abort_prepared(writers)
            self._fail()
            raise TwoPhaseError(
                f"PREPARE failed on shards {to_prepare}; the transaction was rolled back on every "
                f"shard: {err}"
            ) from err
        self._prepared = to_prepare
        self._state = _State.PREPARED
        _crash_point("after_prepare")

    def _choose_commit_point(self) -> list[str]:
        """Fix the commit point (the lowest-sorted writer) and the global id, once.

        :returns: the writers, sorted.
        """
        writers = sorted(self._writers & set(self._handles))
        if self._gid is None:
            self._commit_point = writers[0]
            self._gid = new_global_id(self._commit_point)
        return writers

    def gid_for(self, shard: str) -> str:
        """The prepared-transaction id of this transaction on ``shard``."""
        return participant_gid(self._gid or "", shard)

    def _decide(self) -> None:
        """Make the commit decision durable on the commit-point shard.

        Normally the commit point's own transaction records the decision and
        commits in one phase: that commit is the decision.  After an explicit
        ``prepare()`` every writer is prepared, so the record is written in a new
        transaction on that shard instead.
        """
        root = self._root
        handle = root._handles[self._commit_point]
        others = [s for s in self._prepared if s != self._commit_point]
        record = p.Execute(
            f"INSERT INTO {COMMIT_LOG} (gid, outcome, participants) VALUES (%s, 'commit', %s)",
            (self._gid, others),
            fetch="none",
        )
        # the decision must survive a crash even where synchronous_commit is off
        durable = p.Execute("SET LOCAL synchronous_commit TO on", fetch="none")
        try:
            # record and commit in one round trip
            handle.request(
                p.FlushBatch((durable, record), p.Commit(expire=self.session.expire_on_commit))
            )
        except Exception as err:
            # The record may have failed (nothing committed), or the COMMIT may have
            # happened although its reply was lost: settle the outcome as recovery
            # does, never guess.
            try:
                outcome = settle_decision(
                    self.session.pool.shards[self._commit_point],
                    self._gid or "",
                    presume_abort=True,
                    dry_run=False,
                )
            except Exception:
                outcome = None
            if outcome is None:
                self._fail()
                raise TwoPhaseError(
                    f"the outcome of transaction {self._gid} is unknown: its commit point "
                    f"{self._commit_point!r} cannot be reached ({err}). The prepared shards "
                    f"{others} stay prepared until recovery settles them "
                    "(pool.recover() or `shardsession recover`)."
                ) from err
            if outcome != "commit":
                self._give_up(handle, err, "the commit of the decision failed")
        _crash_point("after_decision")

    def _abort_prepared(self, writers: list[str]) -> None:
        root = self._root
        for shard in writers:
            handle = root._handles.get(shard)
            if handle is None or not handle.alive():
                continue
            try:
                if not handle.request(p.RollbackPrepared(self.gid_for(shard))):
                    handle.request(p.Rollback())
            except Exception:
                try:
                    handle.request(p.Rollback())
                except Exception:
                    pass

    def commit(self) -> None:
        """Commit this level: RELEASE its savepoint, or commit the root on every shard."""
        session = self.session
        if self._state is _State.PREPARED:
            self._decide()
            self._commit_prepared()
            self._finish_commit()
            return
        self._assert_active()
        if self._parent is not None and not self.nested:
            self._state = _State.COMMITTED  # subtransaction: the parent commits
            session._pop_transaction(self)
            return
        if self.nested:
            session._flush_if_needed()
            root = self._root
            for shard in self._savepoint_shards:
                root._handles[shard].request(p.ReleaseSavepoint(self._savepoint or ""))
            parent = self._parent
            assert parent is not None
            parent._new.update(self._new)
            parent._deleted.update(self._deleted)
            parent._dirty.update(self._dirty)
            parent._added.update(self._added)
            parent._marked.update(self._marked)
            self._state = _State.COMMITTED
            session._pop_transaction(self)
            event.dispatch(session, "after_transaction_end", session, self)
            return
        event.dispatch(session, "before_commit", session)
        root = self._root
        root._committing = True
        try:
            session._flush_if_needed()
        except BaseException:
            if root._prepared_early:
                # the flush failed elsewhere after some writers were prepared
                self._abort_prepared(sorted(root._prepared_early))
                root._prepared_early.clear()
            raise
        finally:
            root._committing = False
        if len(root._writers & set(root._handles)) <= 1:
            try:
                # A shard that only read has nothing to make durable: its COMMIT is
                # sent without waiting for the reply.
                for shard, h in root._handles.items():
                    if shard not in root._writers:
                        h.send_and_forget(p.Commit(expire=session.expire_on_commit))
                gather(
                    [
                        (h, p.Commit(expire=session.expire_on_commit))
                        for shard, h in root._handles.items()
                        if shard in root._writers and shard not in root._committed_early
                    ]
                )
            except Exception:
                self._fail()
                raise
        else:
            _crash_point("after_flush")
            self._prepare_writers(include_commit_point=False)
            self._decide()
            self._commit_prepared()
        self._finish_commit()

    def _give_up(self, handle: Any, err: BaseException, what: str) -> None:
        """Roll back the commit point and every prepared participant, then raise."""
        if handle.alive():
            try:
                handle.request(p.Rollback())
            except Exception:
                pass
        self._abort_prepared(self._prepared)
        self._fail()
        raise TwoPhaseError(
            f"{what} on shard {self._commit_point!r}; the transaction was rolled back on "
            f"every shard: {err}"
        ) from err

    def _commit_prepared(self) -> None:
        """COMMIT PREPARED everywhere, retrying; what still fails is left to recovery.

        The outcome is already decided, so ``commit()`` succeeds and warns, naming
        the shards whose prepared transaction recovery will commit.
        """
        root = self._root
        pending = list(self._prepared)
        for attempt in range(_COMMIT_RETRIES):
            failed = []
            for n, shard in enumerate(pending):
                try:
                    self._commit_one(shard, root._handles.get(shard))
                except Exception:
                    failed.append(shard)
                if n == 0 and attempt == 0:
                    _crash_point("after_commit_some")
            pending = failed
            if not pending:
                return
            time.sleep(0.1 * (attempt + 1))
        warnings.warn(
            f"transaction {self._gid} is committed, but COMMIT PREPARED did not yet succeed on "
            f"shards {pending}; recovery (pool.recover(), or the pool's background recovery) "
            "will finish it",
            TwoPhaseCommitPendingWarning,
            stacklevel=4,
        )

    def _commit_one(self, shard: str, handle: Any | None) -> None:
        gid = self.gid_for(shard)
        if handle is not None and handle.alive():
            try:
                handle.request(p.CommitPrepared(gid))
                return
            except WorkerLostError:
                pass
        # the worker is gone: a direct connection can finish it (from that database)
        with psycopg.connect(self.session.pool.shards[shard], autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("COMMIT PREPARED {}").format(psycopg.sql.Literal(gid)))

    def _finish_commit(self) -> None:
        session = self.session
        self._state = _State.COMMITTED
        session._after_root_commit(self)
        event.dispatch(session, "after_commit", session)
        self._close()

    # -- rollback --------------------------------------------------------------

    def rollback(self) -> None:
        """Roll back this level (to its SAVEPOINT, or the whole transaction on every shard)."""
        session = self.session
        if self._state in (_State.CLOSED, _State.COMMITTED):
            return
        if self._parent is not None and not self.nested:
            self._state = _State.DEACTIVE
            self._parent.rollback()
            return
        if self.nested:
            root = self._root
            lost = False
            for shard in self._savepoint_shards:
                handle = root._handles.get(shard)
                try:
                    if handle is not None:
                        handle.request(p.RollbackToSavepoint(self._savepoint or ""))
                except WorkerLostError:
                    lost = True
            session._restore_after_rollback(self)
            self._state = _State.CLOSED
            session._pop_transaction(self)
            event.dispatch(session, "after_soft_rollback", session, self)
            event.dispatch(session, "after_transaction_end", session, self)
            if lost and self._parent is not None:
                self._parent._fail()
            return
        root = self._root
        if self._state is _State.PREPARED:
            self._abort_prepared(list(self._prepared))
        for handle in list(root._handles.values()):
            if handle.alive():
                try:
                    # nobody waits for a ROLLBACK: whatever the worker runs next follows it
                    handle.send_and_forget(p.Rollback())
                except Exception:
                    pass
        session._restore_after_rollback(self)
        self._state = _State.CLOSED
        event.dispatch(session, "after_rollback", session)
        self._close()
        event.dispatch(session, "after_soft_rollback", session, self)

    def close(self) -> None:
        """Roll back what is not committed and end the transaction."""
        if self._state not in (_State.CLOSED, _State.COMMITTED):
            self.rollback()
        self._close()

    def _close(self) -> None:
        if self._parent is None and not self._ended:
            self._ended = True
            for handle in self._handles.values():
                self.session.pool.checkin(handle)
            self._handles.clear()
            if self._state is not _State.COMMITTED:
                self._state = _State.CLOSED
            self.session._pop_transaction(self)
            event.dispatch(self.session, "after_transaction_end", self.session, self)

    # -- context manager ------------------------------------------------------

    def __enter__(self) -> SessionTransaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self._state is _State.ACTIVE:
            try:
                self.commit()
            except BaseException:
                self.rollback()
                raise
        elif self._state in (_State.ACTIVE, _State.DEACTIVE, _State.PREPARED):
            self.rollback()
