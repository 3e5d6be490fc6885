"""The sharded :class:`Session` and :func:`sessionmaker`.

:class:`Session` is SQLAlchemy's :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`
with what it lacks:

* default choosers: a model's ``__shard_key__`` places its rows by rendezvous
  hashing, objects without one follow the object they are linked to, and a
  WHERE that pins the shard key picks the shards (:mod:`.routing`);
* every statement for several shards is sent to all of them before any reply
  is read, and SELECT results are merged exactly (:mod:`.scatter`);
* ``commit()`` of a transaction that wrote to several shards is a two-phase
  commit with a durable decision (:mod:`.twophase`); ``twophase`` is on by
  default;
* no event listener is registered per session: the listeners are the class's,
  so a sharded point transaction costs what a plain Session does plus the
  worker hop.

Routing follows SQLAlchemy's precedence: ``bind_arguments={"shard_id": ...}``,
the :class:`~sqlalchemy.ext.horizontal_shard.set_shard_id` option, the
``identity_token`` of the object being loaded or refreshed, then the choosers.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardsession.coordinator import identity, reference, routing
from shardsession.coordinator.scatter import execute_hook
from shardsession.coordinator.shards import ShardSet
from shardsession.coordinator.twophase import CommitCoordinator
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.ext.horizontal_shard import ShardedQuery, ShardedSession
from sqlalchemy.orm import Mapper, RelationshipDirection
from sqlalchemy.orm import Session as _SASession
from sqlalchemy.orm import sessionmaker as _SASessionmaker

from shardsession.deadlock import new_tag
from shardsession.exc import ArgumentError, CrossShardError, ShardNotFoundError

__all__ = ["Session", "sessionmaker"]


class Session(ShardedSession):
    """A SQLAlchemy ORM session over several shards.

    ``Session(shards)`` or ``Session(shards=shards)``, where ``shards`` is a
    :class:`~shardsession.ShardSet` (from :func:`~shardsession.create_shards`) or a
    mapping of shard name to ``postgresql+shardsession`` Engine.  The choosers
    are :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`'s, each optional
    here; other keyword arguments are :class:`sqlalchemy.orm.Session`'s.

    :param twophase: commit a transaction that wrote to several shards with the
        two-phase protocol (default True).  With False, each shard commits on its
        own, as SQLAlchemy's ShardedSession does.
    :param previous_shards: while ``shardsession rebalance`` moves rows to ``shards``,
        the shard names before the change (or name -> Engine, e.g. the old ShardSet,
        which must hold the shards that are leaving): rows not moved yet are found
        where they were (:func:`~shardsession.coordinator.rebalance.follow_rebalance`).
    """

    def __init__(
        self,
        bind: Any = None,
        *,
        shards: Mapping[str, Any] | None = None,
        shard_chooser: Callable[..., Any] | None = None,
        identity_chooser: Callable[..., Any] | None = None,
        execute_chooser: Callable[..., Any] | None = None,
        twophase: bool = True,
        query_cls: Any = ShardedQuery,
        previous_shards: Mapping[str, Any] | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        shards = shards_argument(bind, shards, "Session(shards={'s0': engine, ...})")
        if not shards:
            raise ArgumentError("Session needs shards: Session(create_shards({'s0': dsn, ...}))")
        # ShardedSession.__init__ registers a do_orm_execute listener on every
        # instance; ours are registered once on the class, so it is skipped.
        _SASession.__init__(self, twophase=twophase, query_cls=query_cls, **kwargs)
        self._shards: dict[str, Any] = dict(shards)
        self._shard_names: tuple[str, ...] = tuple(self._shards)
        self._dsns: dict[str, str] = (
            shards.dsns if isinstance(shards, ShardSet) else ShardSet(self._shards).dsns
        )
        self.shard_chooser = shard_chooser or self._default_shard_chooser
        self.identity_chooser = identity_chooser or self._default_identity_chooser
        self.execute_chooser = execute_chooser or self._default_execute_chooser
        self._custom_shard_chooser = shard_chooser is not None
        self._commit: CommitCoordinator | None = None
        self._tag: str | None = None  # the root transaction's tag (shardsession.deadlock)
        # (innermost transaction, shard -> its connection), see connection_callable
        self._flush_connections: tuple[Any, dict[Any, Any]] = (None, {})
        self._group_shard: Any = None  # the shard of a bulk statement's group being run
        # one object per reference row, whichever shard it is read through
        self.identity_map = reference.IdentityMap(self._shard_names[0])
        self._ref = weakref.ref(self)  # the owner of its worker connections' transactions
        if previous_shards is not None:  # a rebalance is moving rows to these shards
            from shardsession.coordinator.rebalance import follow_rebalance

            follow_rebalance(self, previous_shards)

    # -- binds ---------------------------------------------------------------------

    @property
    def shards(self) -> dict[str, Any]:
        """Shard name -> Engine."""
        return self._shards

    def bind_shard(self, shard_id: Any, bind: Engine) -> None:
        """Add (or replace) the engine of shard ``shard_id``."""
        self._shards[shard_id] = bind
        self._shard_names = tuple(self._shards)

    def get_bind(  # type: ignore[override]
        self,
        mapper: Any = None,
        *,
        shard_id: Any = None,
        instance: Any = None,
        clause: Any = None,
        **kw: Any,
    ) -> Any:
        """The engine of ``shard_id``, or of the shard chosen for the instance / clause."""
        if shard_id is None:
            if instance is None and self._group_shard is not None:
                shard_id = self._group_shard
            else:
                shard_id = self._choose_shard_and_assign(mapper, instance, clause=clause)
        try:
            return self._shards[shard_id]
        except KeyError:
            raise routing.unknown_shard(shard_id, self._shards) from None

    def connection_callable(  # type: ignore[override]
        self, mapper: Any = None, instance: Any = None, shard_id: Any = None, **kw: Any
    ) -> Any:
        """The connection the unit of work flushes ``instance`` with.

        It comes from the innermost transaction, so a flush inside
        :meth:`begin_nested` runs under that shard's SAVEPOINT.  (SQLAlchemy's
        ShardedSession takes the root transaction's connection here, so a failed
        flush inside ``begin_nested()`` could not be rolled back to the savepoint
        and the outer work was lost with it.)
        """
        if shard_id is None:
            shard_id = self._choose_shard_and_assign(mapper, instance)
        transaction = self._autobegin_t()
        # A flush asks once per object: the transaction's connection to each shard is
        # kept for as long as that transaction is the innermost one and active.
        held, connections = self._flush_connections
        if held is not transaction or not transaction.is_active:
            connections = {}
            self._flush_connections = (transaction, connections)
        connection = connections.get(shard_id)
        if connection is None:
            connection = connections[shard_id] = transaction.connection(mapper, shard_id=shard_id)
        return connection

    def _choose_shard_and_assign(self, mapper: Any, instance: Any, **kw: Any) -> Any:
        if instance is not None:
            state = inspect(instance)
            # make_transient_to_detached() leaves no token in the key: choose again
            if state.key is not None and state.key[2] is not None:
                return state.key[2]
            if state.identity_token is not None:
                return state.identity_token
        if reference.is_reference_mapper(state.mapper if instance is not None else mapper):
            shard = self._shard_names[0]  # the token of every reference object
        else:
            shard = self.shard_chooser(mapper, instance, **kw)
        if instance is not None:
            state.identity_token = shard
        return shard

    def expunge_all(self) -> None:
        """Remove every object from this session (SQLAlchemy's
        :meth:`~sqlalchemy.orm.Session.expunge_all`)."""
        super().expunge_all()
        self.identity_map = reference.IdentityMap(self._shard_names[0])

    def get(self, entity: Any, ident: Any, **kw: Any) -> Any:
        """The instance of ``entity`` with primary key ``ident``, or None.

        SQLAlchemy's :meth:`sqlalchemy.orm.Session.get`, with its keyword arguments
        (``options``, ``populate_existing``, ``with_for_update``, ``identity_token``,
        ``execution_options``, ``bind_arguments``).  An id made by
        :class:`~shardsession.ShardedIdentity` is looked for on the shard it names
        first, and on the other shards only if the row is not there.
        """
        return identity.get(self, super().get, entity, ident, **kw)

    # -- default choosers ------------------------------------------------------------

    def _default_shard_chooser(self, mapper: Any, instance: Any, clause: Any = None, **kw: Any
                               ) -> Any:  # fmt: skip
        if instance is not None:
            state = inspect(instance)
            if state.identity_token is None:
                routing.place_new_objects([state], self._shard_names)
            return state.identity_token
        if len(self._shard_names) == 1:
            return self._shard_names[0]
        if clause is not None:
            pinned = routing.statement_shards(clause, None, self._shard_names)
            if pinned is not None and len(pinned) == 1:
                return pinned[0]
            insert = getattr(clause, "is_insert", False)
            if insert and isinstance(mapper, Mapper) and identity.spreads(mapper):
                return identity.next_shard(mapper, self._shard_names)
        what = f"for {mapper.class_.__name__}" if isinstance(mapper, Mapper) else "here"
        raise ShardNotFoundError(
            f"no shard can be chosen {what}: this session has shards {list(self._shard_names)}. "
            "Name one with bind_arguments={'shard_id': ...} (e.g. "
            "session.connection(bind_arguments={'shard_id': 's0'}))"
        )

    def _default_identity_chooser(
        self, mapper: Mapper[Any], primary_key: Any, *, lazy_loaded_from: Any = None, **kw: Any
    ) -> list[Any]:
        if reference.is_reference_mapper(mapper):
            return [self._shard_names[0]]
        if lazy_loaded_from is not None:
            token = lazy_loaded_from.key[2] if lazy_loaded_from.key else None
            if token is not None:
                return [token]
        key = routing.shard_key_for(mapper)
        if key is not None:
            pk_columns = mapper.primary_key
            for i, column in enumerate(pk_columns):
                if column is key.column:
                    value = (
                        primary_key[i] if isinstance(primary_key, (tuple, list)) else primary_key
                    )
                    return [routing.shard_for_key(self._shard_names, key.normalize(value))]
        return list(self._shard_names)

    def _default_execute_chooser(self, orm_context: Any) -> list[Any]:
        pinned = routing.statement_shards(
            orm_context.statement, orm_context.parameters, self._shard_names
        )
        if pinned is None:  # every shard, but one a get() has asked already (identity.get)
            asked = orm_context.execution_options.get(identity.ASKED)
            return [shard for shard in self._shard_names if shard != asked]
        return pinned or [self._shard_names[0]]  # key IN (): no row anywhere, ask one shard

    # -- two-phase ---------------------------------------------------------------------

    def _coordinator(self) -> CommitCoordinator:
        if self._commit is None:
            self._commit = CommitCoordinator(self._dsns)
        return self._commit


def shards_argument(bind: Any, shards: Any, example: str) -> Any:
    """The shards a sharded session was given: ``shards=``, or a mapping passed as
    its first argument (``Session(shards)``).

    :raises ArgumentError: for one bind instead of shards (``example`` shows how).
    """
    if isinstance(bind, Mapping) and shards is None:
        return bind
    if bind is not None:
        cls = example.partition("(")[0]
        raise ArgumentError(
            f"a sharded {cls} takes its shards, not one bind: {cls}(shards) or {example}"
        )
    return shards


def _after_begin(session: Any, transaction: Any, connection: Any) -> None:
    if not isinstance(session, Session):
        return
    dbapi_connection = connection.connection.dbapi_connection
    if not hasattr(dbapi_connection, "tpc"):
        return  # not a shardsession worker
    # Every shard's backend of this transaction carries one tag (deadlock detection),
    # set with BEGIN, outside any savepoint (a savepoint's rollback would undo it).
    if session._tag is None:
        session._tag = new_tag()
    dbapi_connection.tag = session._tag
    dbapi_connection.owner = session._ref
    if session.twophase:
        session._coordinator().register(dbapi_connection)


def _after_transaction_end(session: Any, transaction: Any) -> None:
    if transaction.parent is None and isinstance(session, Session):
        session._commit = None
        session._tag = None
        session._flush_connections = (None, {})


def _before_flush(session: Any, flush_context: Any, instances: Any) -> None:
    if not isinstance(session, Session):
        return
    new = [inspect(obj) for obj in session.new]
    if new and not session._custom_shard_chooser:
        routing.place_new_objects(new, session._shard_names)
    for state in new:
        _check_links(state)
    if len(new) > 1:
        _group_inserts_by_shard(session, new)
    for obj in session.dirty:
        state = inspect(obj)
        _check_key_change(session, state)
        _check_links(state)


def _group_inserts_by_shard(session: Session, new: list[Any]) -> None:
    """Make each shard's new objects consecutive in the flush, keeping their order.

    SQLAlchemy batches INSERTs of consecutive objects that go to the same
    connection; objects added in key order alternate between shards, which made
    nearly one statement per row.  Objects are flushed in ``insert_order``: the
    same numbers are handed out again, shard by shard.
    """
    index = {name: i for i, name in enumerate(session._shard_names)}
    order = sorted(state.insert_order for state in new)
    regrouped = sorted(new, key=lambda st: (index.get(_token(st), -1), st.insert_order))
    for state, position in zip(regrouped, order):
        state.insert_order = position


def _token(state: Any) -> Any:
    if state.key is not None and state.key[2] is not None:
        return state.key[2]
    return state.identity_token


def _check_links(state: Any) -> None:
    """Refuse a many-to-one link to an object on another shard (a cross-shard foreign key)."""
    mine = _token(state)
    if mine is None:
        return
    if reference.is_reference_mapper(state.mapper):
        reference.check_links(state)
        return
    for rel in state.mapper.relationships:
        if rel.direction is not RelationshipDirection.MANYTOONE or rel.secondary is not None:
            continue
        target = state.dict.get(rel.key)
        if target is None:
            continue
        target_state = inspect(target)
        if reference.is_reference_mapper(target_state.mapper):
            continue  # a reference row has a copy on every shard
        theirs = _token(target_state)
        if theirs is not None and theirs != mine:
            cls = state.class_.__name__
            raise CrossShardError(
                f"{cls}.{rel.key} links a {cls} on shard {mine!r} to a "
                f"{type(target).__name__} on shard {theirs!r}: a foreign key cannot cross "
                f"shards. Keep them together: give {cls} the same shard key value as its "
                f"{type(target).__name__} (or no __shard_key__, so that it follows it), or "
                "drop the foreign key and link them by value."
            )


def _check_key_change(session: Session, state: Any) -> None:
    """Refuse changing a persistent object's shard key to a value of another shard."""
    if state.key is None or session._custom_shard_chooser:
        return
    key = routing.shard_key_for(state.mapper)
    if key is None or key.attr not in state.committed_state:
        return
    now = routing.shard_for_key(session._shard_names, key.value_of(state.obj()))
    if now != state.key[2]:
        raise CrossShardError(
            f"{key.class_name}.{key.attr} of {state.obj()!r} changed to a value that belongs "
            f"on shard {now!r}, but the row is on {state.key[2]!r}; rows do not move by "
            "themselves. Delete the object and add a new one with the new key."
        )


event.listen(Session, "do_orm_execute", execute_hook, retval=True)
event.listen(Session, "after_begin", _after_begin)
event.listen(Session, "after_transaction_end", _after_transaction_end)
event.listen(Session, "before_flush", _before_flush)
identity.install(Session)  # shard numbers before the first sharded-identity INSERT


class sessionmaker(_SASessionmaker[Session]):
    """SQLAlchemy's :class:`~sqlalchemy.orm.sessionmaker` making sharded sessions.

    ``sessionmaker(shards)`` or ``sessionmaker(shards=shards, **session_kwargs)``;
    ``class_`` defaults to :class:`Session`.
    """

    def __init__(self, bind: Any = None, *, class_: type[Session] = Session, **kw: Any) -> None:
        if isinstance(bind, Mapping):
            kw.setdefault("shards", bind)
            bind = None
        super().__init__(bind, class_=class_, **kw)
