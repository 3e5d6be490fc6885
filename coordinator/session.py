"""The coordinating Session: SQLAlchemy 2.x's ORM ``Session`` API over a pool of shard workers.

The session owns the application's objects (their states, the identity map
keyed ``(class, primary key, shard)``, the unit of work); statements run in
worker processes, one per shard touched, checked out of the
:class:`~shardsession.workers.pool.WorkerPool` for the length of a transaction.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from shardsession.coordinator.gcpause import paused_gc
from shardsession.coordinator.identity import IdentityMap
from shardsession.coordinator.loading import load_attributes
from shardsession.coordinator.transaction import SessionTransaction, SessionTransactionOrigin
from shardsession.coordinator.unitofwork import (
    UOWTransaction,
    cascade_targets,
    flush,
    linked_states,
    mapper_facts,
)

from shardsession import event
from shardsession import protocol as p
from shardsession.exc import (
    InvalidRequestError,
    NoResultFound,
    PendingRollbackError,
    UnmappedInstanceError,
)
from shardsession.orm.attributes import instance_state
from shardsession.orm.base import PASSIVE_NO_INITIALIZE
from shardsession.orm.inspection import inspect
from shardsession.orm.relationships import ONETOMANY
from shardsession.orm.state import InstanceState
from shardsession.protocol import gather

__all__ = ["Session", "close_all_sessions", "object_session", "sessionmaker"]

_sessions: weakref.WeakValueDictionary[int, Session] = weakref.WeakValueDictionary()


def _state_of(obj: Any) -> InstanceState:
    try:
        state = instance_state(obj)
    except (AttributeError, TypeError, UnmappedInstanceError):
        state = None
    if state is None:
        raise UnmappedInstanceError(
            f"Class {type(obj).__module__}.{type(obj).__name__} is not mapped; only instances "
            "of classes derived from a DeclarativeBase can be added to a Session."
        )
    return state


class Session:
    """Manages persistence of ORM objects over the shards of a worker pool.

    :param pool: the :class:`~shardsession.workers.pool.WorkerPool` (``bind``).
    :param shard_chooser: ``(mapper, instance, clause=None) -> shard id`` for new objects.
    :param identity_chooser: ``(mapper, primary_key, *, lazy_loaded_from,
        execution_options, bind_arguments, **kw) -> shard ids`` for ``get()``.
    :param execute_chooser: ``(orm_execute_state) -> shard ids`` for statements.
    :param autoflush: flush before queries and ``get()`` misses.
    :param expire_on_commit: expire every object after commit.
    :param autobegin: begin a transaction on first use.
    :param info: a user dictionary, :attr:`info`.
    :param bind: another name for ``pool``, as in SQLAlchemy.
    :param shards: accepted for compatibility; the pool defines the shards.
    :param query_cls: accepted for compatibility; there is no legacy ``Query``.
    :param twophase: accepted for compatibility; a commit that wrote to two or more
        shards is always two-phase.
    :param join_transaction_mode: accepted for compatibility; no effect.
    :param close_resets_only: accepted for compatibility; :meth:`close` and
        :meth:`reset` do the same.
    :raises InvalidRequestError: when no worker pool is given.

    .. attribute:: bind

        The worker pool (also available as ``pool``).

    .. attribute:: identity_map

        The live objects of this session by identity key ``(class, primary key
        tuple, shard id)``, held weakly.

    .. attribute:: autoflush

        Whether queries and ``get()`` flush pending changes first; see
        :attr:`no_autoflush`.

    .. attribute:: expire_on_commit

        Whether every object is expired after a commit, so that its attributes
        are loaded again on next access.
    """

    def __init__(
        self,
        pool: Any = None,
        *,
        shard_chooser: Callable[..., Any] | None = None,
        identity_chooser: Callable[..., Any] | None = None,
        execute_chooser: Callable[..., Any] | None = None,
        autoflush: bool = True,
        expire_on_commit: bool = True,
        autobegin: bool = True,
        info: dict[Any, Any] | None = None,
        bind: Any = None,
        shards: Any = None,
        query_cls: Any = None,
        twophase: bool = True,
        join_transaction_mode: str | None = None,
        close_resets_only: bool = True,
    ) -> None:
        from shardsession.coordinator.routing import Router

        pool = pool if pool is not None else bind
        if pool is None or not hasattr(pool, "checkout"):
            raise InvalidRequestError(
                "Session needs a worker pool: Session(shardsession.create_pool({'s0': dsn, ...}))"
            )
        self.pool = pool
        self.bind = pool
        self.autoflush = autoflush
        self.expire_on_commit = expire_on_commit
        self.autobegin = autobegin
        self._info = info
        self._router = Router(
            sorted(pool.shards),
            shard_chooser=shard_chooser,
            identity_chooser=identity_chooser,
            execute_chooser=execute_chooser,
        )
        self.shard_chooser = shard_chooser
        self.identity_chooser = identity_chooser
        self.execute_chooser = execute_chooser
        self.hash_key = id(self)
        self._maker: Any = None
        self.identity_map = IdentityMap()
        self._new: dict[int, InstanceState] = {}
        self._deleted: dict[int, InstanceState] = {}
        self._shard_of: dict[int, str] = {}
        self._transaction: SessionTransaction | None = None
        self._flushing = False
        _sessions[id(self)] = self

    # -- info and state --------------------------------------------------------

    @property
    def info(self) -> dict[Any, Any]:
        """A user dictionary attached to this session."""
        if self._info is None:
            self._info = {}
        return self._info

    @property
    def is_active(self) -> bool:
        """False only while a failed transaction waits for ``rollback()``."""
        trans = self._transaction
        return trans is None or trans.is_active or trans._state.value == "prepared"

    def in_transaction(self) -> bool:
        """True while a transaction is begun (explicitly or by autobegin)."""
        return self._transaction is not None

    def in_nested_transaction(self) -> bool:
        """True while a SAVEPOINT (``begin_nested()``) is open."""
        return self.get_nested_transaction() is not None

    def get_transaction(self) -> SessionTransaction | None:
        """The root transaction, or None."""
        trans = self._transaction
        while trans is not None and trans._parent is not None:
            trans = trans._parent
        return trans

    def get_nested_transaction(self) -> SessionTransaction | None:
        """The innermost SAVEPOINT transaction, or None."""
        trans = self._transaction
        while trans is not None:
            if trans.nested:
                return trans
            trans = trans._parent
        return None

    # -- transactions ----------------------------------------------------------

    def _autobegin(self) -> SessionTransaction:
        if self._transaction is None:
            if not self.autobegin:
                raise InvalidRequestError(
                    "Autobegin is disabled on this Session; call session.begin() first"
                )
            self._transaction = SessionTransaction(self, SessionTransactionOrigin.AUTOBEGIN)
        return self._transaction

    def begin(self) -> SessionTransaction:
        """Begin the root transaction explicitly; use as ``with session.begin(): ...``."""
        if self._transaction is not None:
            raise InvalidRequestError(
                "A transaction is already begun on this Session; commit or roll it back first"
            )
        self._transaction = SessionTransaction(self, SessionTransactionOrigin.BEGIN)
        return self._transaction

    def begin_nested(self) -> SessionTransaction:
        """Begin a SAVEPOINT on every shard touched (and on shards touched later in it)."""
        parent = self._autobegin()
        self._flush_if_needed()
        self._transaction = SessionTransaction(self, SessionTransactionOrigin.BEGIN_NESTED, parent)
        return self._transaction

    def _pop_transaction(self, trans: SessionTransaction) -> None:
        if self._transaction is trans:
            self._transaction = trans._parent

    def commit(self) -> None:
        """Flush and commit the transaction on every shard (two-phase when several wrote)."""
        trans = self._transaction
        if trans is None:
            if not self.autobegin:
                raise InvalidRequestError("No transaction is begun")
            trans = self._autobegin()
        root = self.get_transaction()
        assert root is not None
        while self._transaction is not None and self._transaction is not root:
            self._transaction.commit()
        root.commit()

    def rollback(self) -> None:
        """Roll back the whole transaction on every shard (no-op with none)."""
        root = self.get_transaction()
        if root is None:
            return
        self._end_nested_levels(root)
        root.rollback()

    def _end_nested_levels(self, root: SessionTransaction) -> None:
        """Close the levels above ``root`` (the root's rollback undoes their work)."""
        while self._transaction is not None and self._transaction is not root:
            level = self._transaction
            level._state = level._state.__class__.CLOSED
            self._transaction = level._parent
            event.dispatch(self, "after_transaction_end", self, level)

    def prepare(self) -> None:
        """Run the first phase of two-phase commit now; ``commit()`` completes it."""
        self._autobegin()
        trans = self.get_transaction()
        assert trans is not None
        trans.prepare()

    def close(self) -> None:
        """End the transaction (rolling back) and expunge every object."""
        self._close_impl()

    def reset(self) -> None:
        """Like :meth:`close`: end the transaction and expunge every object."""
        self._close_impl()

    def _close_impl(self) -> None:
        # Expunge before rolling back, so the detached objects keep their loaded values.
        self.expunge_all()
        trans = self.get_transaction()
        if trans is not None:
            self._end_nested_levels(trans)
            trans.close()
        self._transaction = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def close_all(cls) -> None:
        """Close every session of this process."""
        close_all_sessions()

    @classmethod
    def identity_key(
        cls,
        class_: type | None = None,
        ident: Any = None,
        *,
        instance: Any = None,
        row: Any = None,
        identity_token: Any = None,
    ) -> tuple[Any, ...]:
        """The identity key ``(class, primary key tuple, shard)`` of an object or a key."""
        if instance is not None:
            state = _state_of(instance)
            if state.key is not None:
                return state.key
            return inspect(type(instance)).identity_key_from_instance(instance)
        if class_ is None:
            raise InvalidRequestError("identity_key() needs a class with ident, or instance=")
        mapper = inspect(class_)
        if row is not None:
            return mapper.identity_key_from_row(row, identity_token)
        pk = ident if isinstance(ident, tuple) else (ident,)
        return mapper.identity_key_from_primary_key(pk, identity_token)

    @classmethod
    def object_session(cls, instance: Any) -> Session | None:
        """The session ``instance`` belongs to, or None."""
        return object_session(instance)

    # -- adding, deleting, expunging ----------------------------------------

    def _attach(self, state: InstanceState) -> None:
        if state.session_id is not None and state.session_id != id(self):
            raise InvalidRequestError(
                f"Object {state.obj()!r} is already attached to session {state.session_id} "
                f"(this is {id(self)}); expunge it there first or merge() it here."
            )
        event.dispatch(self, "before_attach", self, state.obj())
        state._attach(self, loader=self._loader, on_modified=self._on_modified)
        event.dispatch(self, "after_attach", self, state.obj())

    def _loader(self, state: InstanceState, keys: set[str]) -> None:
        self._check_usable_for_load()
        with self.no_autoflush:
            load_attributes(self, state, keys)

    def _check_usable_for_load(self) -> None:
        trans = self._transaction
        if trans is not None and not trans.is_active and trans._state.value == "deactive":
            raise PendingRollbackError(
                "This Session's transaction has been rolled back due to a previous exception "
                "during flush. To begin a new transaction with this Session, first issue "
                "Session.rollback()."
            )

    def _on_modified(self, state: InstanceState) -> None:
        trans = self._transaction
        if trans is not None:
            trans._dirty[id(state)] = state

    def add(self, instance: Any, _warn: bool = True) -> None:
        """Place ``instance`` in the session: pending if new, persistent if detached."""
        state = _state_of(instance)
        self._autobegin()
        self._save_or_update(state)
        for child in cascade_targets(self, [state]):
            self._save_or_update(child)

    def _save_or_update(self, state: InstanceState) -> None:
        if state.session_id == id(self):
            if id(state) in self._deleted and state.key is None:
                pass
            return
        if state.key is None:
            self._attach(state)
            self._new[id(state)] = state
            if self._transaction is not None:
                self._transaction._added[id(state)] = state
            state._strong_obj = state.obj()
            event.dispatch(self, "transient_to_pending", self, state.obj())
            return
        if state.key[2] is None:  # from make_transient_to_detached(): resolve the shard now
            shard = self._router.shard_for_instance(state.mapper, state.obj())
            state.key = (state.key[0], state.key[1], shard)
        existing = self.identity_map.get(state.key)
        if existing is not None and existing is not state.obj():
            raise InvalidRequestError(
                f"Can't attach instance {state.obj()!r}; another instance with key {state.key} "
                "is already present in this session. Use merge() instead."
            )
        self._attach(state)
        self.identity_map.add(state.key, state.obj())
        self._shard_of[id(state)] = state.key[2]
        event.dispatch(self, "detached_to_persistent", self, state.obj())

    def add_all(self, instances: Iterable[Any]) -> None:
        """Add every object of ``instances``."""
        with paused_gc():
            for instance in instances:
                self.add(instance)

    def delete(self, instance: Any) -> None:
        """Mark a persistent object for DELETE at the next flush (with ``delete`` cascade)."""
        state = _state_of(instance)
        if state.key is None:
            raise InvalidRequestError(f"Instance {instance!r} is not persisted")
        self._autobegin()
        if state.session_id != id(self):
            self._save_or_update(state)
        self._delete_cascade(state, set())

    def _delete_cascade(self, state: InstanceState, seen: set[int]) -> None:
        if id(state) in seen:
            return
        seen.add(id(state))
        if id(state) in self._new:
            self.expunge(state.obj())
            return
        self._deleted[id(state)] = state
        if self._transaction is not None:
            self._transaction._marked[id(state)] = state
        state._strong_obj = state.obj()
        for prop in state.mapper.relationships.values():
            if not prop.cascade.delete:
                continue
            value = getattr(state.obj(), prop.key)
            children = value if prop.uselist else [value]
            for child in list(children or ()):
                if child is not None:
                    self._delete_cascade(_state_of(child), seen)

    def expunge(self, instance: Any) -> None:
        """Remove ``instance`` from the session (it becomes detached or transient)."""
        state = _state_of(instance)
        if state.session_id != id(self):
            raise InvalidRequestError(f"Instance {instance!r} is not present in this Session")
        self._expunge_state(state)
        for prop in state.mapper.relationships.values():
            if prop.cascade.expunge:
                hist = state.get_history(prop.key, PASSIVE_NO_INITIALIZE)
                for child in (*hist.added, *hist.unchanged):
                    if child is not None and instance_state(child).session_id == id(self):
                        self.expunge(child)

    def _expunge_state(self, state: InstanceState) -> None:
        self._new.pop(id(state), None)
        self._deleted.pop(id(state), None)
        self._shard_of.pop(id(state), None)
        if state.key is not None:
            self.identity_map.discard(state.key, state.obj())
            state._detach()
            event.dispatch(self, "persistent_to_detached", self, state.obj())
        else:
            state._detach()

    def expunge_all(self) -> None:
        """Remove every object from the session."""
        for state in list(self._new.values()):
            state._detach()
        for obj in self.identity_map.values():
            state = instance_state(obj)
            state._detach()
            event.dispatch(self, "persistent_to_detached", self, obj)
        self.identity_map.clear()
        self._new.clear()
        self._deleted.clear()
        self._shard_of.clear()

    def __contains__(self, instance: Any) -> bool:
        state = _state_of(instance)
        return state.session_id == id(self) and (
            id(state) in self._new or (state.key is not None and state.key in self.identity_map)
        )

    def __iter__(self) -> Iterator[Any]:
        return iter([s.obj() for s in self._new.values()] + self.identity_map.values())

    @property
    def new(self) -> list[Any]:
        """Objects added and not yet flushed."""
        return [s.obj() for s in self._new.values()]

    @property
    def deleted(self) -> list[Any]:
        """Objects marked for deletion and not yet flushed."""
        return [s.obj() for s in self._deleted.values()]

    @property
    def dirty(self) -> list[Any]:
        """Persistent objects with attribute changes (possibly no net change)."""
        return list(self._dirty_objects())

    def _dirty_objects(self) -> Iterator[Any]:
        deleted = self._deleted
        for obj in self.identity_map.iter_values():
            state = instance_state(obj)
            if state.modified and id(state) not in deleted:
                yield obj

    def is_modified(self, instance: Any, include_collections: bool = True) -> bool:
        """Whether ``instance`` has net changes in its attributes."""
        state = _state_of(instance)
        for key in state.mapper.attrs.keys():
            if not include_collections and key in state.mapper.relationships:
                continue
            hist = state.get_history(key, PASSIVE_NO_INITIALIZE)
            if hist.added or hist.deleted:
                return True
        return False

    # -- flush -------------------------------------------------------------------

    @property
    @contextlib.contextmanager
    def no_autoflush(self) -> Iterator[Session]:
        """Context manager that turns autoflush off inside it."""
        saved = self.autoflush
        self.autoflush = False
        try:
            yield self
        finally:
            self.autoflush = saved

    def _autoflush(self) -> None:
        if self.autoflush and not self._flushing:
            self._flush_if_needed()

    def _flush_if_needed(self) -> None:
        # stops at the first modified object
        if self._new or self._deleted or next(self._dirty_objects(), None) is not None:
            self.flush()

    def flush(self, objects: Sequence[Any] | None = None) -> None:
        """Write pending changes to their shards (inside the current transaction)."""
        if self._flushing:
            raise InvalidRequestError("Session is already flushing")
        if not (self._new or self._deleted or self.dirty):
            return
        self._flushing = True
        try:
            with paused_gc():
                self._flush(objects)
        finally:
            self._flushing = False

    def _flush(self, objects: Sequence[Any] | None) -> None:
        trans = self._autobegin()
        trans._assert_active()
        uow = UOWTransaction(self)
        event.dispatch(self, "before_flush", self, uow, objects)
        for child in cascade_targets(self, [*self._new.values(), *self.identity_map.states()]):
            self._save_or_update(child)
        only = None if objects is None else {id(_state_of(o)) for o in objects}
        for state in list(self._new.values()):
            if only is None or id(state) in only:
                uow.new.append(state)
        for obj in self.dirty:
            state = instance_state(obj)
            if only is None or id(state) in only:
                uow.dirty.append(state)
        for state in list(self._deleted.values()):
            if only is None or id(state) in only:
                uow.deleted.append(state)
        self._orphans(uow)
        doomed = {id(st) for st in uow.deleted}
        uow.dirty = [st for st in uow.dirty if id(st) not in doomed]
        self._check_shard_keys_kept(uow.dirty)
        holders: dict[int, InstanceState] = {}
        for state in [*uow.new, *uow.dirty]:
            for prop in state.mapper.relationships.values():
                if prop.direction is ONETOMANY:
                    for child in linked_states(state, prop):
                        holders.setdefault(id(child), state)
        for state in uow.new:
            self._shard_of[id(state)] = self._choose_shard(state, holders)
        uow.shard_of = self._shard_of
        try:
            flush(self, uow, self._send_batches)
        except BaseException:
            trans._fail()
            raise
        event.dispatch(self, "after_flush", self, uow)
        # Only now do new/dirty/deleted lose what was flushed (listeners of
        # after_flush still see the state before the flush, as in SQLAlchemy).
        for state in uow.new:
            self._new.pop(id(state), None)
        for state in uow.deleted:
            self._deleted.pop(id(state), None)
        for state in uow.dirty:
            if not state.deleted:
                state._commit_all()
        event.dispatch(self, "after_flush_postexec", self, uow)

    def _check_shard_keys_kept(self, states: Iterable[InstanceState]) -> None:
        """Refuse a shard key change that would leave a row on the wrong shard.

        An UPDATE runs on the shard the row is on and cannot move it; when the
        session routes by ``__shard_key__`` (no ``shard_chooser``), a new value that
        hashes to another shard would leave the row where later lookups by key never
        look.  Runs before anything is sent, so the session stays usable.
        """
        if self.shard_chooser is not None:
            return
        for state in states:
            mapper = state.mapper
            key = mapper.shard_key
            if key is None or state.key is None or key not in state.changed_keys:
                continue
            value = state.dict.get(key)
            old_shard = state.key[2]
            if value is not None:
                new_shard = self._router.shard_for_value(value, mapper.shard_key_column)
                if new_shard == old_shard:
                    continue
                where = f"to shard {new_shard!r}"
            else:
                where = "to no shard (None cannot be routed)"
            cls = mapper.class_.__name__
            raise InvalidRequestError(
                f"{cls} object {state.obj()!r} is on shard {old_shard!r}, and its shard key "
                f"{cls}.{key} was changed to {value!r}, which routes {where}; an UPDATE "
                "cannot move a row between shards. To move it, delete the object and add a "
                f"copy with the new key (session.delete(obj); session.add({cls}(..., "
                f"{key}={value!r})))."
            )

    def _orphans(self, uow: UOWTransaction) -> None:
        for state in [*uow.new, *uow.dirty]:
            for prop in state.mapper.relationships.values():
                if not prop.cascade.delete_orphan:
                    continue
                hist = state.get_history(prop.key, PASSIVE_NO_INITIALIZE)
                for child in hist.deleted:
                    if child is None:
                        continue
                    cstate = instance_state(child)
                    if cstate.key is not None and id(cstate) not in self._deleted:
                        self._deleted[id(cstate)] = cstate
                        uow.deleted.append(cstate)
                    elif cstate.key is None and id(cstate) in self._new:
                        self._expunge_state(cstate)
                        if cstate in uow.new:
                            uow.new.remove(cstate)

    def _choose_shard(
        self, state: InstanceState, holders: Mapping[int, InstanceState] | None = None
    ) -> str:
        """The shard a new object goes to.

        Without a ``shard_chooser`` or a ``__shard_key__``, an object follows the
        objects it is linked to: those it refers to, or the one whose collection
        holds it (``holders``: child state id -> parent state), directly or through
        other new objects.
        """
        if state.key is not None:
            return state.key[2]
        known = self._shard_of.get(id(state))
        if known is not None:
            return known
        mapper = state.mapper
        if self.shard_chooser is None and mapper.shard_key is None:
            shard = self._linked_shard(state, holders or {})
            if shard is not None:
                return shard
        return self._router.shard_for_instance(mapper, state.obj())

    def _linked_shard(
        self, start: InstanceState, holders: Mapping[int, InstanceState]
    ) -> str | None:
        """The shard of the nearest object ``start`` is linked to, or None.

        Walks the links breadth-first, through pending objects that have no shard
        of their own yet, whatever their order in ``_new``; a pending object with a
        ``__shard_key__`` answers with the shard its key routes to.
        """
        seen = {id(start)}
        level = [start]
        while level:
            following: list[InstanceState] = []
            for state in level:
                linked = []
                for prop in state.mapper.relationships.values():
                    hist = state.get_history(prop.key, PASSIVE_NO_INITIALIZE)
                    linked += [instance_state(o) for o in (*hist.added, *hist.unchanged) if o]
                holder = holders.get(id(state))
                if holder is not None:
                    linked.append(holder)
                for other in linked:
                    if id(other) in seen:
                        continue
                    seen.add(id(other))
                    shard = self._shard_of.get(id(other)) or (other.key[2] if other.key else None)
                    if shard is not None:
                        return shard
                    if id(other) not in self._new:
                        continue  # transient, not flushed with this object
                    if other.mapper.shard_key is not None:
                        return self._router.shard_for_instance(other.mapper, other.obj())
                    following.append(other)
            level = following
        return None

    def _send_batches(
        self, calls: Mapping[str, list[p.Statement]], *, final: bool = False
    ) -> dict[str, list[Any]]:
        trans = self._autobegin()
        shards = list(calls)
        trans._mark_written(shards)
        handles = [trans._handle(s) for s in shards]
        # The commit's last batch may end with the COMMIT (a lone writer) or the
        # PREPAREs (several writers): one round trip fewer.
        ends = trans._finish_flush_with(shards) if final else {}
        batches = []
        for h, s in zip(handles, shards, strict=True):
            end = ends.get(s)
            batch = p.FlushBatch(
                tuple(calls[s]),
                commit=end if isinstance(end, p.Commit) else None,
                prepare=end if isinstance(end, p.Prepare) else None,
            )
            batches.append((h, batch))
        results = gather(batches)
        return dict(zip(shards, results, strict=True))

    def _register_persistent(self, state: InstanceState, shard: str) -> None:
        mapper = state.mapper
        dict_ = state.dict
        pk = tuple(dict_.get(k) for k in mapper_facts(mapper).pk_keys)
        key = (mapper.class_, pk, shard)
        obj = state.obj()  # keep it alive: marking persistent drops the session's strong ref
        state._mark_persistent(key, self, loader=self._loader, on_modified=self._on_modified)
        self.identity_map.add(key, obj)
        self._shard_of[id(state)] = shard
        trans = self._transaction
        if trans is not None:
            trans._new[id(state)] = state
        event.dispatch(self, "pending_to_persistent", self, obj)

    def _register_deleted(self, state: InstanceState) -> None:
        state._mark_deleted()
        if state.key is not None:
            self.identity_map.discard(state.key, state.obj())
        trans = self._transaction
        if trans is not None:
            trans._deleted[id(state)] = state
        event.dispatch(self, "persistent_to_deleted", self, state.obj())

    def _register_loaded(self, state: InstanceState, key: tuple[Any, ...]) -> None:
        state._mark_persistent(key, self, loader=self._loader, on_modified=self._on_modified)
        obj = state.obj()
        self.identity_map.add(key, obj)
        self._shard_of[id(state)] = key[2]
        event.dispatch(self, "loaded_as_persistent", self, obj)

    # -- after commit / rollback -------------------------------------------------

    def _after_root_commit(self, trans: SessionTransaction) -> None:
        for state in trans._deleted.values():
            state._detach()
            self._shard_of.pop(id(state), None)
            obj = state.obj()
            if obj is not None:
                event.dispatch(self, "deleted_to_detached", self, obj)
        for obj in self.identity_map.values():
            state = instance_state(obj)
            if self.expire_on_commit:
                state._expire(None)
            state._strong_obj = None

    def _restore_after_rollback(self, trans: SessionTransaction) -> None:
        # objects garbage-collected meanwhile need no restoring
        for state in list(trans._new.values()):
            obj = state.obj()
            if state.key is not None and obj is not None:
                self.identity_map.discard(state.key, obj)
            self._shard_of.pop(id(state), None)
            state._make_transient()
            if obj is not None:
                event.dispatch(self, "persistent_to_transient", self, obj)
        for state in list(trans._deleted.values()):
            obj = state.obj()
            if obj is None:
                continue
            state._deleted = False
            if state.key is not None:
                self.identity_map.add(state.key, obj)
            self._attach(state)
            event.dispatch(self, "deleted_to_persistent", self, obj)
        if trans._parent is None:
            for state in list(self._new.values()):
                self._expunge_state(state)
                state._make_transient()
            self._deleted.clear()
            for obj in self.identity_map.values():
                instance_state(obj)._expire(None)
        else:
            for state in trans._added.values():  # added inside the savepoint, not flushed
                if id(state) in self._new:
                    self._expunge_state(state)
            for state in trans._marked.values():  # deleted inside it, not flushed
                self._deleted.pop(id(state), None)
            for state in list(trans._dirty.values()) + list(trans._deleted.values()):
                if state.key is not None and state.session_id == id(self):
                    state._expire(None)

    # -- expiry and refresh -----------------------------------------------------

    def expire(self, instance: Any, attribute_names: Iterable[str] | None = None) -> None:
        """Expire attributes of ``instance`` (all when ``attribute_names`` is None)."""
        state = _state_of(instance)
        if state.key is None or state.session_id != id(self):
            raise InvalidRequestError(
                f"Instance {instance!r} is not persistent within this Session"
            )
        state._expire(None if attribute_names is None else list(attribute_names))

    def expire_all(self) -> None:
        """Expire every persistent object of the session."""
        for obj in self.identity_map.values():
            instance_state(obj)._expire(None)

    def refresh(
        self,
        instance: Any,
        attribute_names: Iterable[str] | None = None,
        with_for_update: Any = None,
    ) -> None:
        """Reload attributes of ``instance`` from its shard now."""
        state = _state_of(instance)
        if state.key is None or state.session_id != id(self):
            raise InvalidRequestError(
                f"Instance {instance!r} is not persistent within this Session"
            )
        names = list(attribute_names) if attribute_names is not None else None
        state._expire(names)
        if names is not None and not with_for_update:
            # only the named attributes: other local changes are kept
            self._autoflush()
            with self.no_autoflush:
                load_attributes(self, state, set(names))
            return
        cls, pk, shard = state.key
        from shardsession.sql import select

        stmt = select(cls)
        for column, value in zip(state.mapper.local_table.primary_key, pk, strict=True):
            stmt = stmt.where(column == value)
        if with_for_update:
            stmt = stmt.with_for_update(
                **(with_for_update if isinstance(with_for_update, dict) else {})
            )
        rows = self._run_select_on(shard, stmt, entities=True, populate_existing=True).all()
        if not rows:
            from shardsession.exc import InvalidRequestError as _IRE

            raise _IRE(
                f"Could not refresh instance {instance!r}: its row is gone from shard {shard!r}"
            )

    # -- statements -------------------------------------------------------------

    def _run_select_on(
        self,
        shard: str | None,
        stmt: Any,
        *,
        entities: bool = False,
        populate_existing: bool = False,
        load_kind: str | None = None,
        loaded_from: InstanceState | None = None,
    ) -> Any:
        from shardsession.coordinator.execute_state import LAZY_LOADED_FROM, LOAD_KIND

        opts: dict[str, Any] = {"populate_existing": True} if populate_existing else {}
        if load_kind is not None:
            opts[LOAD_KIND] = load_kind
        if loaded_from is not None:
            opts[LAZY_LOADED_FROM] = loaded_from
        bind = {"shard_id": shard} if shard is not None else {}
        return self.execute(stmt, execution_options=opts, bind_arguments=bind)

    def execute(
        self,
        statement: Any,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
        bind_arguments: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Any:
        """Run ``statement`` on the shards routing chooses; return a merged ``Result``."""
        from shardsession.coordinator.execution import execute

        return execute(
            self, statement, params, dict(execution_options or {}), dict(bind_arguments or {})
        )

    def scalars(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        """Execute and return the first column of each row as a ``ScalarResult``."""
        return self.execute(statement, params, **kw).scalars()

    def scalar(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        """Execute and return the first column of the first row (or None)."""
        return self.execute(statement, params, **kw).scalar()

    def get(
        self,
        entity: Any,
        ident: Any,
        *,
        options: Sequence[Any] | None = None,
        populate_existing: bool = False,
        with_for_update: Any = None,
        identity_token: Any = None,
        execution_options: Mapping[str, Any] | None = None,
        bind_arguments: Mapping[str, Any] | None = None,
    ) -> Any:
        """The object with primary key ``ident``, from the identity map or its shard(s).

        An object already in the identity map is returned without a message to any
        worker (its expired attributes are loaded first), unless
        ``populate_existing`` or ``with_for_update`` is given.  Otherwise the shards
        that may hold the row (``identity_token``, the ``identity_chooser``, or the
        shard key when it is part of the primary key; else every shard, asked in
        parallel) are queried by primary key.

        :param entity: the mapped class.
        :param ident: the primary key: a value, a tuple in primary key order, or a
            dict of attribute names to values.
        :param identity_token: the shard to look on.
        :param populate_existing: overwrite the loaded values of an object already
            in the identity map.
        :param with_for_update: lock the row (``True`` or the arguments of
            ``Select.with_for_update()`` as a dict).
        :returns: the object, or ``None`` when no shard has the row.
        """
        from shardsession.coordinator.execution import get

        return get(
            self,
            entity,
            ident,
            options=options,
            populate_existing=populate_existing,
            with_for_update=with_for_update,
            identity_token=identity_token,
            execution_options=dict(execution_options or {}),
            bind_arguments=dict(bind_arguments or {}),
        )

    def get_one(self, entity: Any, ident: Any, **kw: Any) -> Any:
        """Like :meth:`get`, but raise :class:`NoResultFound` when there is no such row."""
        obj = self.get(entity, ident, **kw)
        if obj is None:
            raise NoResultFound("No row was found when one was required")
        return obj

    def merge(self, instance: Any, *, load: bool = True, options: Any = None) -> Any:
        """Copy the state of ``instance`` onto the session's object with the same identity."""
        from shardsession.coordinator.execution import merge

        return merge(self, instance, load=load, memo={})

    def connection(
        self,
        bind_arguments: Mapping[str, Any] | None = None,
        execution_options: Any = None,
        **kw: Any,
    ) -> Any:
        """A per-shard handle running raw SQL in this session's transaction on that shard."""
        from shardsession.coordinator.execution import ShardConnection

        args = dict(bind_arguments or {})
        args.update(kw)
        shard = args.get("shard_id")
        if shard is None:
            raise InvalidRequestError(
                "connection() needs the shard: "
                "session.connection(bind_arguments={'shard_id': 's0'})"
            )
        return ShardConnection(self, shard)

    def get_bind(self, mapper: Any = None, *, shard_id: Any = None, **kw: Any) -> Any:
        """The pool (or, with ``shard_id``, that shard's DSN holder) statements run on."""
        if shard_id is None:
            return self.pool
        if shard_id not in self.pool.shards:
            from shardsession.exc import ShardNotFoundError

            raise ShardNotFoundError(
                f"no shard named {shard_id!r}; shards: {sorted(self.pool.shards)}"
            )
        return self.pool.shards[shard_id]

    def enable_relationship_loading(self, obj: Any) -> None:
        """Let a transient/pending object lazy-load its many-to-one relationships here."""
        state = _state_of(obj)
        state.load_pending = True
        state._attach(self, loader=self._loader, on_modified=self._on_modified)

    def bulk_save_objects(
        self, objects: Iterable[Any], return_defaults: bool = False, **kw: Any
    ) -> None:
        """Insert or update many objects in batches, without making them session members."""
        from shardsession.coordinator.execution import bulk_save_objects

        bulk_save_objects(self, list(objects), return_defaults)

    def bulk_insert_mappings(
        self, mapper: Any, mappings: Iterable[Mapping[str, Any]], **kw: Any
    ) -> None:
        """INSERT rows given as dicts of attribute values, routed to their shards."""
        from shardsession.coordinator.execution import bulk_mappings

        bulk_mappings(self, mapper, list(mappings), insert=True)

    def bulk_update_mappings(self, mapper: Any, mappings: Iterable[Mapping[str, Any]]) -> None:
        """UPDATE rows given as dicts holding the primary key and new values."""
        from shardsession.coordinator.execution import bulk_mappings

        bulk_mappings(self, mapper, list(mappings), insert=False)


def close_all_sessions() -> None:
    """Close every :class:`Session` of this process."""
    for session in list(_sessions.values()):
        session.close()


def object_session(instance: Any) -> Session | None:
    """The :class:`Session` that ``instance`` belongs to, or None."""
    state = _state_of(instance)
    if state.session_id is None:
        return None
    return _sessions.get(state.session_id)


class sessionmaker:
    """A factory of :class:`Session` objects with fixed options.

    ``Session = sessionmaker(pool, expire_on_commit=False)`` then ``Session()``.
    """

    def __init__(self, bind: Any = None, *, class_: type[Session] = Session, **kw: Any) -> None:
        self.kw = dict(kw)
        self.kw["bind"] = bind
        self.class_ = class_

    def __call__(self, **local_kw: Any) -> Session:
        """A new session; ``local_kw`` override the factory's options."""
        kw = {**self.kw, **local_kw}
        if "info" in self.kw and "info" in local_kw:
            kw["info"] = {**self.kw["info"], **local_kw["info"]}
        bind = kw.pop("bind", None)
        session = self.class_(bind, **kw)
        session._maker = self
        return session

    def begin(self) -> contextlib.AbstractContextManager[Session]:
        """A context manager giving a new session in a transaction, committed at the end."""

        @contextlib.contextmanager
        def scope() -> Iterator[Session]:
            with self() as session, session.begin():
                yield session

        return scope()

    def configure(self, **new_kw: Any) -> None:
        """Change the options of sessions made from now on."""
        self.kw.update(new_kw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(class_={self.class_.__name__!r}, {self.kw!r})"


def make_transient(instance: Any) -> None:
    """Make ``instance`` transient: no session, no identity (its loaded values stay).

    Expired attributes are left unloaded rather than loaded.
    """
    state = _state_of(instance)
    session = object_session(instance)
    if session is not None:
        session._expunge_state(state)
    for key in list(state.expired_attributes):
        state.dict.pop(key, None)
    state._make_transient()


def make_transient_to_detached(instance: Any) -> None:
    """Give a transient ``instance`` the identity its primary key implies: it becomes detached.

    Its shard is resolved when it is added to a session (from the shard key or the
    session's ``shard_chooser``), so unlike SQLAlchemy's sharded session this works
    for sharded models; ``session.add()`` then makes it persistent without loading.
    """
    state = _state_of(instance)
    if state.key is not None or state.session_id is not None:
        raise InvalidRequestError(f"Given object {instance!r} must be transient")
    mapper = state.mapper
    pk = tuple(
        state.dict.get(mapper.attribute_key_for_column(c)) for c in mapper.local_table.primary_key
    )
    if any(v is None for v in pk):
        raise InvalidRequestError(
            f"{instance!r} has no complete primary key; set it before make_transient_to_detached()"
        )
    state._mark_persistent((mapper.class_, pk, None), None, commit=True)
    unloaded = [k for k in mapper.column_attrs.keys() if k not in state.dict]
    if unloaded:
        state._expire(unloaded)
