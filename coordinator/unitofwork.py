"""The unit of work: turning the session's changes into INSERT/UPDATE/DELETE per shard.

A flush collects the new, changed and deleted objects, follows the
``save-update`` and ``delete`` cascades, copies primary keys into foreign keys
along relationships, and writes table by table in foreign-key dependency order
(deletes in reverse order).  Statements are collected per shard and go out as
one message per shard, all shards in parallel; a message leaves early only when
a later statement needs what an earlier one generates (``RETURNING`` values that
become keys of children).  Rows of one table with the same columns form one
batched ``executemany``, or one ``COPY`` when they are many and nothing comes
back.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from shardsession import protocol as p
from shardsession.exc import InvalidRequestError
from shardsession.orm.attributes import instance_state
from shardsession.orm.base import NO_VALUE, PASSIVE_NO_INITIALIZE, PassiveFlag
from shardsession.orm.relationships import MANYTOONE, ONETOMANY, check_same_shard
from shardsession.orm.state import InstanceState
from shardsession.sql import bindparam, compile_statement, delete, insert, update

if TYPE_CHECKING:
    from shardsession.coordinator.session import Session

__all__ = [
    "UOWTransaction",
    "cascade_targets",
    "flush",
    "linked_states",
    "mapper_facts",
    "pk_where",
]

_REL_PASSIVE = PASSIVE_NO_INITIALIZE | PassiveFlag.INCLUDE_PENDING_MUTATIONS


class UOWTransaction:
    """What one flush works on (handed to ``before_flush`` / ``after_flush`` listeners).

    :ivar session: the flushing session.
    :ivar new: states to INSERT.
    :ivar dirty: states with changes to UPDATE.
    :ivar deleted: states to DELETE.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.new: list[InstanceState] = []
        self.dirty: list[InstanceState] = []
        self.deleted: list[InstanceState] = []
        self.shard_of: dict[int, str] = {}


class _MapperFacts:
    """What the flush asks of a mapper for every object, worked out once per mapper."""

    __slots__ = ("columns", "has_relationships", "manytoone", "onetomany", "pk_keys", "source")

    def __init__(self, mapper: Any) -> None:
        table = mapper.local_table
        self.source = mapper.relationships  # a new object whenever a property is added
        #: (column key, attribute key) of every column, in table order
        self.columns = [(c.key, mapper.attribute_key_for_column(c)) for c in table.columns]
        self.pk_keys = [mapper.attribute_key_for_column(c) for c in table.primary_key]
        rels = list(mapper.relationships.values())
        self.has_relationships = bool(rels)
        self.manytoone = [r for r in rels if r.direction is MANYTOONE]
        self.onetomany = [r for r in rels if r.direction is ONETOMANY]


def mapper_facts(mapper: Any) -> _MapperFacts:
    """The flush's cached :class:`_MapperFacts` of ``mapper`` (rebuilt if it gains a property)."""
    attrs = mapper.__dict__
    facts = attrs.get("_ss_flush_facts")
    # the mapper's cached relationships object is replaced when a property is added
    if facts is None or facts.source is not attrs.get("_relationships"):
        facts = mapper._ss_flush_facts = _MapperFacts(mapper)
    return facts


def _linked(state: InstanceState, prop: Any) -> list[Any]:
    hist = state.get_history(prop.key, _REL_PASSIVE)
    return [o for o in (*hist.added, *hist.unchanged) if o is not None]


def linked_states(state: InstanceState, prop: Any) -> list[InstanceState]:
    """States of the objects ``state`` currently links to through ``prop`` (no loading)."""
    return [instance_state(o) for o in _linked(state, prop)]


def cascade_targets(session: Session, roots: Iterable[InstanceState]) -> list[InstanceState]:
    """Every transient object reachable by ``save-update`` cascade from ``roots``."""
    seen: set[int] = set()
    found: list[InstanceState] = []
    stack = list(roots)
    while stack:
        state = stack.pop()
        mapper = state.mapper
        if not mapper_facts(mapper).has_relationships:
            continue
        for prop in mapper.relationships.values():
            if not prop.cascade.save_update:
                continue
            for obj in _linked(state, prop):
                child = instance_state(obj)
                if id(child) in seen:
                    continue
                seen.add(id(child))
                if child.session_id is None and child.key is None:
                    found.append(child)
                if child.session_id == id(session) or child.key is None:
                    stack.append(child)
    return found


def _pull_parent_keys(state: InstanceState) -> None:
    """Copy the keys of the objects this one refers to (many-to-one) into its foreign keys.

    Runs when the object's table is written, so parents inserted earlier in the
    same flush already have their generated keys.
    """
    mapper = state.mapper
    for prop in mapper_facts(mapper).manytoone:
        hist = state.get_history(prop.key, _REL_PASSIVE)
        if not hist.added and not hist.deleted:
            continue
        target = hist.added[0] if hist.added else None
        for source_col, dest_col in prop.synchronize_pairs:
            key = mapper.attribute_key_for_column(dest_col)
            value = None
            if target is not None:
                tstate = instance_state(target)
                value = _current(tstate, tstate.mapper.attribute_key_for_column(source_col))
            if state.dict.get(key, NO_VALUE) != value:
                setattr(state.obj(), key, value)


def _push_keys_to_children(state: InstanceState, *, removed: bool) -> list[InstanceState]:
    """Copy this object's key into its children's foreign keys (one-to-many).

    Runs after the object's table is written (its generated key is known).
    With ``removed``, children taken out of the collection get NULL instead
    (unless delete-orphan deletes them); the flush runs that pass first, so a
    child moved to another parent ends with the new parent's key.
    :returns: the children whose foreign keys changed.
    """
    mapper = state.mapper
    changed: list[InstanceState] = []
    for prop in mapper_facts(mapper).onetomany:
        hist = state.get_history(prop.key, _REL_PASSIVE)
        for child_obj in () if removed else (*hist.added, *hist.unchanged):
            if child_obj is None:
                continue
            child = instance_state(child_obj)
            for source_col, dest_col in prop.synchronize_pairs:
                value = _current(state, mapper.attribute_key_for_column(source_col))
                key = child.mapper.attribute_key_for_column(dest_col)
                if child.dict.get(key, NO_VALUE) != value:
                    setattr(child_obj, key, value)
                    changed.append(child)
        for child_obj in hist.deleted if removed else ():
            if child_obj is None:
                continue
            child = instance_state(child_obj)
            if child.deleted or (child.key is None and child.session_id is None):
                continue
            if prop.cascade.delete_orphan:
                continue
            for _, dest_col in prop.synchronize_pairs:
                key = child.mapper.attribute_key_for_column(dest_col)
                if key in child.dict and child.dict[key] is not None:
                    setattr(child_obj, key, None)
                    changed.append(child)
    return changed


def _current(state: InstanceState, key: str) -> Any:
    """The attribute's value, loading it if it was expired (e.g. a key after commit)."""
    if key in state.dict:
        return state.dict[key]
    if state.key is not None and state.obj() is not None:
        return getattr(state.obj(), key)
    return None


def _table_order(states: Iterable[InstanceState]) -> list[Any]:
    """Every table of the states' metadata, in foreign-key dependency order.

    All of them, not only those with changes: a parent's write can give a child
    table a foreign-key update of its own.
    """
    tables = {id(s.mapper.local_table): s.mapper.local_table for s in states}
    if not tables:
        return []
    ordered = list(next(iter(tables.values())).metadata.sorted_tables)
    return ordered + [t for t in tables.values() if t not in ordered]


def _column_values(state: InstanceState, only: Iterable[str] | None = None) -> dict[str, Any]:
    dict_ = state.dict
    if only is None:
        return {ck: dict_[ak] for ck, ak in mapper_facts(state.mapper).columns if ak in dict_}
    return {
        ck: dict_[ak] for ck, ak in mapper_facts(state.mapper).columns if ak in only and ak in dict_
    }


class _Outbox:
    """Statements waiting to be sent, per shard, with what to do with each reply."""

    def __init__(self, send: Callable[..., Any]) -> None:
        self._send = send
        self.calls: dict[str, list[p.Statement]] = defaultdict(list)
        self.handlers: dict[str, list[Callable[[Any], None]]] = defaultdict(list)

    def add(self, shard: str, statement: p.Statement, on_reply: Callable[[Any], None]) -> None:
        self.calls[shard].append(statement)
        self.handlers[shard].append(on_reply)

    def send(self, *, final: bool = False) -> None:
        """Send what is waiting (one message per shard) and run the reply handlers."""
        if not self.calls:
            return
        calls, handlers = dict(self.calls), self.handlers
        self.calls, self.handlers = defaultdict(list), defaultdict(list)
        replies = self._send(calls, final=final)
        for shard, results in replies.items():
            for on_reply, reply in zip(handlers[shard], results, strict=True):
                on_reply(reply)


def flush(session: Session, uow: UOWTransaction, send: Callable[..., Any]) -> None:
    """Write ``uow``'s changes; ``send(calls_by_shard, final=)`` runs one batch per shard.

    ``send`` takes ``{shard: [protocol statement, ...]}`` and returns
    ``{shard: [reply value, ...]}``; it raises the first error after every shard
    answered.  ``final`` is true for the flush's last batch.
    """
    outbox = _Outbox(send)

    def shard_of(st: InstanceState) -> str | None:
        return uow.shard_of.get(id(st)) or (st.key[2] if st.key is not None else None)

    for state in uow.new + uow.dirty:
        if not mapper_facts(state.mapper).has_relationships:
            continue
        for prop in state.mapper.relationships.values():
            for obj in _linked(state, prop):
                check_same_shard(state, instance_state(obj), shard_of, prop)

    new_by_table: dict[int, list[InstanceState]] = defaultdict(list)
    for state in uow.new:
        new_by_table[id(state.mapper.local_table)].append(state)
    dirty_by_table: dict[int, list[InstanceState]] = defaultdict(list)
    for state in uow.dirty:
        dirty_by_table[id(state.mapper.local_table)].append(state)
    flushing = {id(st) for st in uow.new + uow.dirty + uow.deleted}

    # parents before children: each table pulls its parents' keys, is written,
    # then pushes its own (possibly generated) keys into its children
    for table in _table_order(uow.new + uow.dirty):
        new = new_by_table.get(id(table), [])
        dirty = dirty_by_table.get(id(table), [])
        facts = [mapper_facts(m) for m in {st.mapper for st in new + dirty}]
        if any(f.manytoone for f in facts):
            for state in new + dirty:
                _pull_parent_keys(state)
        _write_inserts(table, new, uow, outbox)
        _write_updates(table, dirty, uow, outbox)
        pushed = []
        if any(f.onetomany for f in facts):
            pushed = [c for st in new + dirty for c in _push_keys_to_children(st, removed=True)]
            pushed += [c for st in new + dirty for c in _push_keys_to_children(st, removed=False)]
        for child in pushed:
            if id(child) not in flushing and child.key is not None:
                # a persistent child whose only change is its new foreign key
                flushing.add(id(child))
                uow.dirty.append(child)
                dirty_by_table[id(child.mapper.local_table)].append(child)
    for table in reversed(_table_order(uow.deleted)):
        doomed = [s for s in uow.deleted if s.mapper.local_table is table]
        if doomed:
            _write_deletes(table, doomed, uow, outbox)
    outbox.send(final=True)


def _write_inserts(
    table: Any, states: list[InstanceState], uow: UOWTransaction, outbox: _Outbox
) -> None:
    if not states:
        return
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[InstanceState, dict[str, Any]]]] = (
        defaultdict(list)
    )
    for state in states:
        values = _column_values(state)
        for column in table.primary_key:
            if values.get(column.key) is None and _generated(column):
                values.pop(column.key, None)
        groups[(uow.shard_of[id(state)], tuple(sorted(values)))].append((state, values))
    needs_reply = False
    for (shard, keys), members in groups.items():
        returned = [c for c in table.columns if c.key not in keys]
        stmt = insert(table)
        if returned:
            stmt = stmt.returning(*returned)
        compiled = compile_statement(stmt, column_keys=keys)
        params = [compiled.construct_params(values) for _, values in members]
        copy_target = None if returned else _copy_target(compiled.sql, len(members))
        statement: p.Statement
        if copy_target is not None:
            statement = p.CopyRows(table.name, (), params, target_sql=copy_target)
        else:
            statement = p.ExecuteMany(compiled.sql, params, returning=bool(returned))
        outbox.add(shard, statement, _inserted(uow, table, shard, compiled, members, returned))
        needs_reply = needs_reply or bool(returned)
    if needs_reply:
        # generated keys are needed before children (and later tables) are written
        outbox.send()


_COPY_MIN_ROWS = 16  # below this an executemany costs no more than a COPY
_PLAIN_INSERT = re.compile(r"INSERT INTO (.+?) VALUES \((%s(?:, %s)*)\)", re.DOTALL)


def _copy_target(sql: str, rows: int) -> str | None:
    """The ``"table" ("col", ...)`` part of a plain INSERT, when COPY can load its rows.

    Only an INSERT whose every value is one parameter qualifies (no SQL
    expressions, no RETURNING): then each parameter tuple is exactly a row.
    """
    if rows < _COPY_MIN_ROWS:
        return None
    match = _PLAIN_INSERT.fullmatch(sql)
    return match.group(1) if match else None


def _inserted(
    uow: UOWTransaction,
    table: Any,
    shard: str,
    compiled: Any,
    members: list[tuple[InstanceState, dict[str, Any]]],
    returned: list[Any],
) -> Callable[[Any], None]:
    def on_reply(reply: Any) -> None:
        if returned:
            names = compiled.returning
            for (state, _), rows in zip(members, reply, strict=True):
                row = compiled.process_row(rows.rows[0])
                for name, value in zip(names, row, strict=True):
                    column = table.c[name]
                    state.dict[state.mapper.attribute_key_for_column(column)] = value
        for state, _ in members:
            uow.session._register_persistent(state, shard)

    return on_reply


def _generated(column: Any) -> bool:
    auto = getattr(column, "autoincrement", "auto")
    return auto is True or (auto == "auto" and getattr(column, "_is_autoincrement", True))


def _pk_params(state: InstanceState, prefix: str = "pk_") -> dict[str, Any]:
    table = state.mapper.local_table
    committed = state.committed_state
    out = {}
    for column in table.primary_key:
        key = state.mapper.attribute_key_for_column(column)
        value = committed.get(key, NO_VALUE)
        if value in (NO_VALUE,) or value is None:
            value = state.dict.get(key)
        if state.key is not None:
            value = state.key[1][list(table.primary_key).index(column)]
        out[prefix + column.key] = value
    return out


def pk_where(stmt: Any, table: Any) -> Any:
    """``stmt`` restricted to one row by primary key, as parameters ``pk_<column key>``."""
    for column in table.primary_key:
        stmt = stmt.where(column == bindparam("pk_" + column.key))
    return stmt


def _write_updates(
    table: Any, states: list[InstanceState], uow: UOWTransaction, outbox: _Outbox
) -> None:
    groups: dict[tuple[str, tuple[str, ...]], list[InstanceState]] = defaultdict(list)
    for state in states:
        changed = {
            state.mapper.local_table.c[c.key].key
            for c in table.columns
            if state.mapper.attribute_key_for_column(c) in state.changed_keys
        }
        if changed:
            groups[(uow.shard_of[id(state)], tuple(sorted(changed)))].append(state)
    if not groups:
        return
    for (shard, keys), members in groups.items():
        compiled = _update_by_pk(table, keys, tuple(_pk_params(members[0])))
        params = []
        for state in members:
            values = _column_values(state, {state.mapper.attribute_key_for_column(
                table.c[k]) for k in keys})  # fmt: skip
            params.append(compiled.construct_params({**values, **_pk_params(state)}))
        # The worker checks the count before anything after it runs (it may commit next).
        message = (
            f"UPDATE of {table.name!r} on shard {shard!r} matched {{rowcount}} row(s), "
            f"expected {len(members)}: a row was deleted or its key changed by another "
            "transaction."
        )
        outbox.add(
            shard,
            p.ExecuteMany(
                compiled.sql, params, expect_rowcount=len(members), stale_message=message
            ),
            _ignore,
        )


def _update_by_pk(table: Any, keys: tuple[str, ...], pk_names: tuple[str, ...]) -> Any:
    """The compiled ``UPDATE table SET keys... WHERE pk = ...``, built once per table and keys."""
    cache = table.__dict__.setdefault("_ss_update_by_pk", {})
    compiled = cache.get((keys, pk_names))
    if compiled is None:
        stmt = pk_where(update(table), table)
        compiled = cache[(keys, pk_names)] = compile_statement(stmt, column_keys=[*keys, *pk_names])
    return compiled


def _ignore(reply: Any) -> None:
    """Nothing to do with the reply: the worker already checked it."""


def _write_deletes(
    table: Any, states: list[InstanceState], uow: UOWTransaction, outbox: _Outbox
) -> None:
    groups: dict[str, list[InstanceState]] = defaultdict(list)
    for state in states:
        groups[uow.shard_of[id(state)]].append(state)
    if not groups:
        return
    compiled = compile_statement(pk_where(delete(table), table))
    for shard, members in groups.items():
        message = (
            f"DELETE from {table.name!r} on shard {shard!r} matched {{rowcount}} row(s), "
            f"expected {len(members)}: a row was already deleted by another transaction."
        )
        params = [compiled.construct_params(_pk_params(s)) for s in members]
        outbox.add(
            shard,
            p.ExecuteMany(
                compiled.sql, params, expect_rowcount=len(members), stale_message=message
            ),
            _deleted(uow, members),
        )


def _deleted(uow: UOWTransaction, members: list[InstanceState]) -> Callable[[Any], None]:
    def on_reply(reply: Any) -> None:
        for state in members:
            uow.session._register_deleted(state)

    return on_reply


def check_flushable(state: InstanceState) -> None:
    """Raise a clear error for an object the flush cannot write."""
    if not state.mapper.local_table.primary_key:
        raise InvalidRequestError(
            f"{state.class_.__name__} has no primary key; every mapped table needs one"
        )
