"""Where rows live: the default choosers of :class:`~shardsession.Session`.

A mapped class names the attribute that places its rows with ``__shard_key__``::

    class Account(Base):
        __tablename__ = "account"
        __shard_key__ = "tenant_id"

Its rows go to the shard that wins a rendezvous hash of the key's value over the
shard names: adding a shard moves only the rows the new shard wins.  The value is
first made what PostgreSQL would store in the key's column (``7.0`` for an
integer key is ``7``; ``7.5`` is refused, since PostgreSQL would round it), so
the same row is always found on the same shard.

A class without ``__shard_key__`` keeps its rows with the object they belong to:
a new object goes to the shard of an object it is linked to through a
relationship (its many-to-one parent, or the parent whose collection holds it),
and an object linked to nothing goes to the first shard.

Statements go where their WHERE clause pins the shard key (``key == value``,
``key IN (...)``, combined with AND / OR), and to every shard otherwise.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shardsession.coordinator import identity, reference
from sqlalchemy import inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.orm import Mapper, RelationshipDirection
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    Grouping,
)
from sqlalchemy.sql.schema import Column

from shardsession.exc import ArgumentError, ShardNotFoundError

__all__ = ["ShardKey", "normalize_key", "shard_for_key", "shard_key_for", "statement_shards"]


@functools.lru_cache(maxsize=65536)
def _rendezvous(shards: tuple[str, ...], value: Any) -> str:
    token = repr(value).encode()
    best, best_score = shards[0], b""
    for shard in shards:
        score = hashlib.blake2b(shard.encode() + b"\x00" + token, digest_size=8).digest()
        if score > best_score:
            best, best_score = shard, score
    return best


def shard_for_key(shards: Sequence[str], value: Any) -> str:
    """The shard that holds rows whose (normalized) shard key is ``value``.

    Rendezvous hashing: every shard scores the value, the highest score wins, so
    a shard added later takes over only the values it wins.
    """
    return _rendezvous(tuple(shards), value)


def normalize_key(value: Any, type_: Any, where: str) -> Any:
    """``value`` as PostgreSQL would store it in a column of ``type_``, for hashing.

    :raises ArgumentError: the value cannot be stored exactly (``7.5`` for an
        integer key), or is None.
    """
    if value is None:
        raise ArgumentError(f"{where} is None; a shard key must have a value to place the row")
    if isinstance(type_, sqltypes.Integer) and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, (float, decimal.Decimal)) and value == int(value):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ArgumentError(
            f"{where} = {value!r} is not an integer; PostgreSQL would round it when storing, "
            "so the row could not be found by the value given. Pass an integer."
        )
    if isinstance(type_, sqltypes.String) and not isinstance(value, str):
        if isinstance(value, (numbers.Number, decimal.Decimal)):
            return str(value)
        raise ArgumentError(f"{where} = {value!r} is not a string; pass the text to store")
    if isinstance(type_, sqltypes.Uuid) and isinstance(value, str):
        import uuid

        return uuid.UUID(value)
    return value


class ShardKey:
    """The shard key of one mapped class: its attribute, column and type."""

    __slots__ = ("attr", "class_name", "column", "type")

    def __init__(self, mapper: Mapper[Any], attr: str) -> None:
        prop = mapper.attrs.get(attr)
        columns = getattr(prop, "columns", None)
        if not columns or not isinstance(columns[0], Column):
            raise ArgumentError(
                f"{mapper.class_.__name__}.__shard_key__ = {attr!r} is not a mapped column "
                "attribute; name the attribute that holds the key"
            )
        self.attr = attr
        self.column = columns[0]
        self.type = self.column.type
        self.class_name = mapper.class_.__name__

    def normalize(self, value: Any) -> Any:
        """``value`` as this key's column stores it (see :func:`normalize_key`)."""
        return normalize_key(value, self.type, f"{self.class_name}.{self.attr}")

    def value_of(self, instance: Any) -> Any:
        """The instance's key value, normalized."""
        return self.normalize(getattr(instance, self.attr, None))


_NO_KEY = object()
_keys: dict[Mapper[Any], Any] = {}


def shard_key_for(mapper: Mapper[Any]) -> ShardKey | None:
    """The :class:`ShardKey` of ``mapper``'s class, or None when it has none."""
    found = _keys.get(mapper, _NO_KEY)
    if found is _NO_KEY:
        attr = getattr(mapper.class_, "__shard_key__", None)
        found = ShardKey(mapper, attr) if isinstance(attr, str) else None
        _keys[mapper] = found
        identity.check_mapper(mapper)  # ids that would repeat across shards: warn
    return found  # type: ignore[no-any-return]


# -- placing new objects -------------------------------------------------------------


def place_new_objects(states: Iterable[Any], shards: Sequence[str]) -> None:
    """Give every new object (``InstanceState``) in ``states`` its shard.

    Keyed objects are placed by their key; the others follow a linked object
    that has a shard (breadth-first, so the result does not depend on the
    order objects were added), and what is linked to nothing goes to the
    first shard, or is spread over the shards when its class has a sharded
    identity (``identity.place_unlinked``).  The shard is stored as the
    state's identity token, which SQLAlchemy's sharded session reads when it
    flushes the object.
    """
    pending = []
    for state in states:
        if _token_of(state) is not None:
            continue
        if reference.is_reference_mapper(state.mapper):
            state.identity_token = shards[0]  # written on every shard, read from the first
            continue
        key = shard_key_for(state.mapper)
        if key is not None:
            state.identity_token = shard_for_key(shards, key.value_of(state.obj()))
        else:
            pending.append(state)
    held: dict[int, list[Any]] = {}  # who holds whom, worked out once
    while pending:
        progressed = False
        rest = []
        for state in pending:
            shard = _linked_shard(state, held)
            if shard is None:
                rest.append(state)
            else:
                state.identity_token = shard
                progressed = True
        if not progressed:
            identity.place_unlinked(rest, shards)
            return
        pending = rest


def _token_of(state: Any) -> Any:
    if state.key is not None and state.key[2] is not None:
        return state.key[2]
    return state.identity_token


def _linked_shard(state: Any, held: dict[int, list[Any]] | None = None) -> Any:
    """The shard of an object linked to ``state`` through a relationship, or None.

    ``held`` is :func:`_holders`' index, built once per placement.
    """
    dict_ = state.dict
    for rel in state.mapper.relationships:
        value = dict_.get(rel.key)
        if value is None:
            continue
        for target in _members(rel, value):
            target_state = inspect(target)
            if reference.is_reference_mapper(target_state.mapper):
                continue  # on every shard: it places nothing
            token = _token_of(target_state)
            if token is not None:
                return token
    # A parent holding this object in a collection without a back-reference.
    for parent_state, _rel in _holders(state, held):
        if reference.is_reference_mapper(parent_state.mapper):
            continue
        token = _token_of(parent_state)
        if token is not None:
            return token
    return None


def _members(rel: Any, value: Any) -> list[Any]:
    """The objects a relationship attribute holds (any collection class)."""
    if not rel.uselist:
        return [value]
    if isinstance(value, dict):
        return list(value.values())
    return list(value)


def _holders(state: Any, held: dict[int, list[Any]] | None = None) -> Iterable[tuple[Any, Any]]:
    """The (parent state, relationship) pairs whose collection holds ``state``'s object.

    The session's new and changed objects are indexed once into ``held`` (empty
    at first), so placing n objects costs O(n), not O(n^2).
    """
    session = state.session
    if session is None:
        return ()
    if held is None:
        held = {}
    if not held:
        held[0] = []  # built: an index of no holders stays built
        # new parents, and persistent ones whose collections changed
        for other in map(inspect, [*session.new, *session.dirty]):
            for rel in other.mapper.relationships:
                if rel.direction is RelationshipDirection.MANYTOONE:
                    continue
                value = other.dict.get(rel.key)
                if value is not None:
                    for member in {id(v): v for v in _members(rel, value)}:
                        held.setdefault(member, []).append((other, rel))
    return held.get(id(state.obj()), ())


# -- statements ----------------------------------------------------------------------


def _pinned(
    clause: Any, keys: Mapping[Column[Any], ShardKey], params: Mapping[str, Any]
) -> set[Any] | None:
    """Shard-key values ``clause`` restricts rows to, or None when it does not."""
    if isinstance(clause, Grouping):
        return _pinned(clause.element, keys, params)
    if isinstance(clause, BooleanClauseList):
        parts = [_pinned(c, keys, params) for c in clause.clauses]
        if clause.operator is operators.and_:
            known = [p for p in parts if p is not None]
            if not known:
                return None
            return set.intersection(*known)
        if clause.operator is operators.or_:
            if any(p is None for p in parts):
                return None
            return set().union(*parts)  # type: ignore[arg-type]
        return None
    if not isinstance(clause, BinaryExpression):
        return None
    left, right = clause.left, clause.right
    if isinstance(left, BindParameter) and isinstance(right, Column):
        left, right = right, left
    key = keys.get(left) if isinstance(left, Column) else None
    if key is None or not isinstance(right, BindParameter):
        return None
    value = params[right.key] if right.key in params else right.effective_value
    if clause.operator is operators.eq:
        return {key.normalize(value)}
    if clause.operator is operators.in_op and isinstance(value, (list, tuple, set, frozenset)):
        return {key.normalize(v) for v in value}
    return None


def statement_shards(statement: Any, params: Mapping[str, Any] | None, shards: Sequence[str]
                     ) -> list[str] | None:  # fmt: skip
    """The shards a statement's WHERE clause pins it to, or None (all of them).

    Only statements about one keyed class are pinned: for a join of several
    classes, the shard key of the first keyed one must be pinned.
    """
    where = getattr(statement, "whereclause", None)
    if where is None:
        return None
    keys: dict[Column[Any], ShardKey] = {}
    for desc in _entities(statement):
        mapper = desc
        key = shard_key_for(mapper)
        if key is not None:
            keys[key.column] = key
    if not keys:
        return None
    values = _pinned(where, keys, params or {})
    if values is None:
        return None
    return sorted({shard_for_key(shards, v) for v in values}, key=list(shards).index)


def _entities(statement: Any) -> list[Mapper[Any]]:
    out: list[Mapper[Any]] = []
    for desc in getattr(statement, "column_descriptions", None) or ():
        entity = desc.get("entity")
        if entity is not None:
            mapper = inspect(entity, raiseerr=False)
            mapper = getattr(mapper, "mapper", None)
            if mapper is not None and mapper not in out:
                out.append(mapper)
    table = getattr(statement, "table", None)  # UPDATE / DELETE
    if table is not None:
        entity = getattr(table, "entity_namespace", None)
        mapper = getattr(inspect(entity, raiseerr=False), "mapper", None) if entity else None
        if mapper is not None and mapper not in out:
            out.append(mapper)
    return out


def pinned_keys(statement: Any, params: Mapping[str, Any] | None
                ) -> list[tuple[ShardKey, set[Any]]]:  # fmt: skip
    """Each keyed class of ``statement`` whose key its WHERE clause pins, with the
    (normalized) values: what a session following a rebalance locks where it was."""
    where = getattr(statement, "whereclause", None)
    out: list[tuple[ShardKey, set[Any]]] = []
    for mapper in _entities(statement) if where is not None else ():
        key = shard_key_for(mapper)
        values = _pinned(where, {key.column: key}, params or {}) if key is not None else None
        if key is not None and values:
            out.append((key, values))
    return out


def unknown_shard(shard: Any, shards: Iterable[str]) -> ShardNotFoundError:
    """The error for a shard name the session does not have."""
    return ShardNotFoundError(
        f"no shard named {shard!r}; this session's shards are {sorted(map(str, shards))}"
    )
