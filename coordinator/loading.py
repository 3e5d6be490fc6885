"""Turning rows from shards into objects, through the session's identity map.

A row of an entity becomes the object already in the identity map under
``(class, primary key, shard)`` when there is one (its loaded values are kept
unless ``populate_existing`` is asked for or they were expired), or a new
persistent object otherwise.  The same module loads expired attributes and lazy
relationships on access, always on the object's own shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shardsession.exc import ObjectDeletedError
from shardsession.orm.attributes import instance_state, set_committed_value
from shardsession.orm.inspection import inspect
from shardsession.orm.relationships import MANYTOONE
from shardsession.orm.state import InstanceState
from shardsession.sql import select

if TYPE_CHECKING:
    from shardsession.coordinator.session import Session

__all__ = ["EntityLoader", "load_attributes", "row_processor_for"]


class EntityLoader:
    """Builds objects of one mapped class from a slice of result rows.

    :param session: the session whose identity map is used.
    :param cls: the mapped class.
    :param start: index of the entity's first column in the row.
    :param keys: attribute keys of the entity's columns, in row order.
    :param pk_positions: row indexes of the primary-key columns.
    """

    def __init__(
        self,
        session: Session,
        cls: type,
        start: int,
        keys: Sequence[str],
        pk_positions: Sequence[int],
        *,
        populate_existing: bool = False,
    ) -> None:
        self.session = session
        self.cls = cls
        self.mapper = inspect(cls)
        self.start = start
        self.keys = tuple(keys)
        self.pk_positions = tuple(pk_positions)
        self.populate_existing = populate_existing
        self._stop = start + len(self.keys)
        self._new_instance = self.mapper.class_manager.new_instance

    def __call__(self, row: Sequence[Any], shard: str) -> Any:
        """Return the object for ``row`` (fetched from ``shard``; extra trailing items ignored)."""
        positions = self.pk_positions
        if len(positions) == 1:
            pk: tuple[Any, ...] = (row[positions[0]],)
            if pk[0] is None:
                return None  # an outer join that matched nothing
        else:
            pk = tuple(row[i] for i in positions)
            if all(v is None for v in pk):
                return None
        key = (self.cls, pk, shard)
        session = self.session
        obj = session.identity_map.get(key)
        values = row[self.start : self._stop]
        if obj is not None:
            state = instance_state(obj)
            if self.populate_existing:
                state._expire(None)
                for name, value in zip(self.keys, values, strict=True):
                    set_committed_value(obj, name, value)
            elif state.expired_attributes:
                for name, value in zip(self.keys, values, strict=True):
                    if name in state.expired_attributes and name not in state.committed_state:
                        set_committed_value(obj, name, value)
            return obj
        obj = self._new_instance()
        obj.__dict__.update(zip(self.keys, values, strict=True))
        session._register_loaded(instance_state(obj), key)
        return obj


def row_processor_for(
    session: Session, stmt: Any, compiled: Any, *, populate_existing: bool = False
) -> Callable[[Sequence[Any], str], tuple[Any, ...]] | None:
    """A function turning a raw row (and its shard) into the result row, or None.

    Entity columns are replaced by one object per entity; other columns pass
    through.  ``None`` when the statement selects no ORM entity.
    """
    specs = compiled.derived.get("entity_specs")
    if specs is None:
        # the same for every statement of this structure: worked out once
        entities = [item for item in getattr(stmt, "_entities", ()) if item.is_entity]
        specs = []
        if entities and compiled.entities:
            for item, info in zip(entities, compiled.entities, strict=False):
                _, _, start, stop, pk_positions = info
                mapper = inspect(item.entity)
                keys = [mapper.attribute_key_for_column(col) for col in item.columns]
                specs.append((start, stop, mapper.class_, keys, pk_positions))
        compiled.derived["entity_specs"] = specs
    if not specs:
        return None
    loaders: list[tuple[int, int, EntityLoader]] = [
        (
            start,
            stop,
            EntityLoader(
                session, cls, start, keys, pk_positions, populate_existing=populate_existing
            ),
        )
        for start, stop, cls, keys, pk_positions in specs
    ]
    width = len(compiled.result_keys)
    if len(loaders) == 1 and loaders[0][0] == 0 and loaders[0][1] == width:
        only = loaders[0][2]
        return lambda row, shard: (only(row, shard),)  # the common select(Model)

    def process(row: Sequence[Any], shard: str) -> tuple[Any, ...]:
        out: list[Any] = []
        pos = 0
        for start, stop, loader in loaders:
            out.extend(row[pos:start])
            out.append(loader(row, shard))
            pos = stop
        out.extend(row[pos:width])
        return tuple(out)

    return process


def result_keys_for(stmt: Any, compiled: Any) -> list[str]:
    """The keys of the result rows: an entity's class name stands for its columns."""
    entities = [item for item in getattr(stmt, "_entities", ()) if item.is_entity]
    if not entities or not compiled.entities:
        return list(compiled.result_keys)
    keys: list[str] = []
    pos = 0
    for item, info in zip(entities, compiled.entities, strict=False):
        _, _, start, stop, _ = info
        keys.extend(compiled.result_keys[pos:start])
        keys.append(item.entity.__name__)
        pos = stop
    keys.extend(compiled.result_keys[pos:])
    return keys


def load_attributes(session: Session, state: InstanceState, keys: set[str]) -> None:
    """Load expired columns or a lazy relationship of ``state`` from its own shard."""
    mapper = state.mapper
    if state.key is None:
        # enable_relationship_loading(): relationships only, from the foreign keys,
        # on the shards routing picks for the target
        for key in keys:
            if key in mapper.relationships:
                value = _load_relationship(session, state, mapper.relationships[key], None)
                set_committed_value(state.obj(), key, value)
        return
    cls, pk, shard = state.key
    relationships = mapper.relationships
    rel_keys = [k for k in keys if k in relationships]
    col_keys = [k for k in keys if k not in relationships]
    obj = state.obj()
    if col_keys:
        table = mapper.local_table
        stmt = select(*[getattr(cls, k) for k in col_keys])
        for column, value in zip(table.primary_key, pk, strict=True):
            stmt = stmt.where(column == value)
        rows = session._run_select_on(shard, stmt, load_kind="column", loaded_from=state).all()
        if not rows:
            raise ObjectDeletedError(
                f"Instance {cls.__name__} {pk} has been deleted on shard {shard!r}, or its "
                "row is otherwise not present."
            )
        for name, value in zip(col_keys, rows[0], strict=True):
            set_committed_value(obj, name, value)
    for key in rel_keys:
        prop = relationships[key]
        set_committed_value(obj, key, _load_relationship(session, state, prop, shard))


def _load_relationship(session: Session, state: InstanceState, prop: Any, shard: str | None) -> Any:
    target = prop.mapper.class_
    local_mapper = state.mapper
    if prop.direction is MANYTOONE:
        values = []
        for source_col, dest_col in prop.synchronize_pairs:
            values.append(
                (source_col, getattr(state.obj(), local_mapper.attribute_key_for_column(dest_col)))
            )
        if any(v is None for _, v in values):
            return None
        tmapper = inspect(target)
        if shard is not None and [c for c, _ in values] == list(tmapper.local_table.primary_key):
            found = session.identity_map.get((target, tuple(v for _, v in values), shard))
            if found is not None:
                return found
        stmt = select(target)
        for column, value in values:
            stmt = stmt.where(column == value)
        objs = (
            session._run_select_on(
                shard, stmt, entities=True, load_kind="relationship", loaded_from=state
            )
            .scalars()
            .all()
        )
        return objs[0] if objs else None
    stmt = select(target)
    for source_col, dest_col in prop.synchronize_pairs:
        stmt = stmt.where(
            dest_col == getattr(state.obj(), local_mapper.attribute_key_for_column(source_col))
        )
    if prop.order_by:
        stmt = stmt.order_by(*prop.order_by)
    objs = (
        session._run_select_on(
            shard, stmt, entities=True, load_kind="relationship", loaded_from=state
        )
        .scalars()
        .all()
    )
    return list(objs) if prop.uselist else (objs[0] if objs else None)


def selectin_load(session: Session, rows: Sequence[Sequence[Any]]) -> None:
    """Load ``lazy="selectin"`` relationships of the objects in ``rows``.

    One ``IN`` query per relationship and shard (children live on their parent's
    shard), all shards of one relationship queried in parallel by the session.
    Objects whose relationship is already loaded are skipped; children loaded
    this way get their own selectin relationships loaded in turn.
    """
    if not rows:
        return
    first = rows[0]
    if None not in first and not any(_has_selectin(value) for value in first):
        return  # every row holds the same entities (an outer join's None aside)
    by_class: dict[type, list[InstanceState]] = {}
    seen: set[int] = set()
    for row in rows:
        for value in row:
            state = getattr(value, "_sa_instance_state", None)
            if isinstance(state, InstanceState) and state.key is not None and id(state) not in seen:
                seen.add(id(state))
                by_class.setdefault(state.class_, []).append(state)
    for states in by_class.values():
        mapper = states[0].mapper
        for prop in mapper.relationships.values():
            if prop.lazy != "selectin":
                continue
            todo = [s for s in states if prop.key not in s.dict]
            if todo:
                _selectin_one(session, prop, todo)


def _has_selectin(value: Any) -> bool:
    state = getattr(value, "_sa_instance_state", None)
    if not isinstance(state, InstanceState):
        return False
    return any(prop.lazy == "selectin" for prop in state.mapper.relationships.values())


def _selectin_one(session: Session, prop: Any, states: list[InstanceState]) -> None:
    local = states[0].mapper
    target = prop.mapper.class_
    pairs = prop.synchronize_pairs  # (source on the "one" side, FK on the "many" side)
    by_shard: dict[str, list[InstanceState]] = {}
    for state in states:
        by_shard.setdefault(state.key[2], []).append(state)  # type: ignore[index]
    if prop.direction is MANYTOONE:
        source_col, dest_col = pairs[0]
        local_key = local.attribute_key_for_column(dest_col)
        remote_col = source_col
    else:
        source_col, dest_col = pairs[0]
        local_key = local.attribute_key_for_column(source_col)
        remote_col = dest_col
    if len(pairs) != 1:
        for state in states:  # composite keys: fall back to one lazy load each
            getattr(state.obj(), prop.key)
        return
    loaded: list[Any] = []
    for shard, members in by_shard.items():
        values = sorted({v for s in members if (v := s.dict.get(local_key)) is not None}, key=repr)
        children: list[Any] = []
        if values:
            stmt = select(target).where(remote_col.in_(values))
            if prop.order_by and prop.direction is not MANYTOONE:
                stmt = stmt.order_by(*prop.order_by)
            children = (
                session._run_select_on(shard, stmt, entities=True, load_kind="relationship")
                .scalars()
                .all()
            )
        loaded.extend(children)
        tmapper = inspect(target)
        remote_key = tmapper.attribute_key_for_column(remote_col)
        groups: dict[Any, list[Any]] = {}
        for child in children:
            groups.setdefault(instance_state(child).dict.get(remote_key), []).append(child)
        for state in members:
            found = groups.get(state.dict.get(local_key), [])
            if prop.uselist:
                set_committed_value(state.obj(), prop.key, list(found))
            else:
                set_committed_value(state.obj(), prop.key, found[0] if found else None)
