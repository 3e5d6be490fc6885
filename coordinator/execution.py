"""How the session runs statements: ``execute``, ``get``, ``merge`` and bulk operations.

``execute`` builds the :class:`~shardsession.coordinator.execute_state.ORMExecuteState`,
runs the ``do_orm_execute`` listeners, asks the router for the target shards,
compiles the statement once, sends it to every target shard before awaiting any
reply, merges the rows (see :mod:`shardsession.coordinator.scatter`) and turns
entity columns into objects through the identity map.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from shardsession.coordinator.execute_state import ORMExecuteState, run_execute_listeners
from shardsession.coordinator.gcpause import paused_gc
from shardsession.coordinator.loading import result_keys_for, row_processor_for, selectin_load
from shardsession.coordinator.result import Result
from shardsession.coordinator.scatter import check_textual_scatter, execute_plan, plan_select
from shardsession.coordinator.unitofwork import pk_where

from shardsession import event
from shardsession import protocol as p
from shardsession.exc import InvalidRequestError, ObjectDeletedError, ShardNotFoundError
from shardsession.orm.attributes import instance_state, set_committed_value
from shardsession.orm.inspection import inspect
from shardsession.protocol import gather
from shardsession.sql import bindparam, compile_statement, select
from shardsession.sql import insert as sql_insert
from shardsession.sql import update as sql_update

if TYPE_CHECKING:
    from shardsession.coordinator.session import Session

__all__ = ["CANDIDATE_SHARDS", "ShardConnection", "execute", "get", "merge"]

#: execution option set by ``get()``: the shards the identity chooser allows
CANDIDATE_SHARDS = "_ss_candidate_shards"


def _is_select(statement: Any) -> bool:
    return getattr(statement, "__visit_name__", None) == "select" or (
        getattr(statement, "__visit_name__", None) == "textual_select"
    )


def execute(
    session: Session,
    statement: Any,
    params: Any,
    execution_options: dict[str, Any],
    bind_arguments: dict[str, Any],
) -> Result:
    """Run ``statement`` for ``session`` (see :meth:`Session.execute`)."""
    if hasattr(statement, "__clause_element__") and not hasattr(statement, "__visit_name__"):
        statement = statement.__clause_element__()
    state = ORMExecuteState(
        session,
        statement,
        params,
        execution_options,
        bind_arguments,
        invoke=_invoke,
    )
    listeners = event.listeners_for(session, "do_orm_execute")
    return run_execute_listeners(state, listeners, _execute_state)


def _invoke(
    state: ORMExecuteState,
    statement: Any,
    params: Any,
    execution_options: dict[str, Any],
    bind_arguments: dict[str, Any],
) -> Result:
    new = ORMExecuteState(
        state.session, statement, params, execution_options, bind_arguments, invoke=_invoke
    )
    return run_execute_listeners(new, state.remaining_listeners(), _execute_state)


def _execute_state(state: ORMExecuteState) -> Result:
    session: Session = state.session
    statement = state.statement
    options = state.execution_options
    wants_flush = state.is_select or state.is_update or state.is_delete
    if session.autoflush and options.get("autoflush") is not False and wants_flush:
        session._autoflush()
    trans = session._autobegin()
    trans._assert_active()
    shards = options.get(CANDIDATE_SHARDS) or session._router.shards_for_execute(state)
    if not shards:
        return Result([], iter(()))
    params = state.parameters
    if isinstance(params, Sequence) and not isinstance(params, Mapping) and params:
        return _execute_many(session, statement, list(params), shards)
    params = dict(params or {})
    compiled = compile_statement(statement, column_keys=params.keys() if params else None)
    handles = {shard: trans._handle(shard) for shard in shards}
    if compiled.returns_rows and compiled.is_select:
        return _select(session, statement, compiled, params, handles, options)
    if compiled.is_text and len(handles) > 1:
        check_textual_scatter(compiled.sql)  # before any shard runs it
    if compiled.is_dml or compiled.is_text:
        trans._mark_written(shards)
    return _run_everywhere(session, statement, compiled, params, handles, options)


def _select(
    session: Session,
    statement: Any,
    compiled: Any,
    params: dict[str, Any],
    handles: dict[str, Any],
    options: Mapping[str, Any],
) -> Result:
    processor = row_processor_for(
        session, statement, compiled, populate_existing=bool(options.get("populate_existing"))
    )
    keys = result_keys_for(statement, compiled)
    chunk = options.get("yield_per") or (options.get("stream_results") and 1000) or None
    plan = plan_select(statement, compiled, params, single_shard=len(handles) == 1)
    raw = execute_plan(plan, handles, stream_chunk=chunk, tag_shard=processor is not None)
    if processor is None:
        return raw

    def objects() -> Iterator[tuple[Any, ...]]:
        rows = iter(raw)
        while True:
            # Build a whole chunk (or everything) before yielding to the caller.
            with paused_gc():
                part = islice(rows, chunk) if chunk else raw.all()
                batch = [processor(row, row[-1]) for row in part]  # row ends with its shard
            if not batch:
                return
            selectin_load(session, batch)
            yield from batch
            if not chunk:
                return

    return Result(keys, objects(), on_close=raw.close)


def _run_everywhere(
    session: Session,
    statement: Any,
    compiled: Any,
    params: dict[str, Any],
    handles: dict[str, Any],
    options: Mapping[str, Any],
) -> Result:
    mapper = _target_mapper(statement) if (compiled.is_update or compiled.is_delete) else None
    sync_keys = mapper is not None and not compiled.returning
    run = compiled
    if sync_keys:
        # learn which rows matched, to expire (UPDATE) or delete (DELETE) their objects
        returning = statement.returning(*mapper.local_table.primary_key)
        run = compile_statement(returning, column_keys=params.keys() if params else None)
    args = run.construct_params(params)
    fetch = "all" if run.returns_rows or run.is_text else "none"
    shards = list(handles)
    if compiled.is_insert and len(shards) > 1:
        raise InvalidRequestError(
            f"an INSERT would go to {len(shards)} shards {shards}; route it to one with "
            "bind_arguments={'shard_id': ...} or execution_options(shard_id=...), or add the "
            "objects with session.add() so each row goes to its own shard"
        )
    replies = gather([(handles[s], p.Execute(run.sql, args, fetch=fetch)) for s in shards])
    rows: list[tuple[Any, ...]] = []
    matched: list[tuple[Any, ...]] = []
    rowcount = 0
    for shard, reply in zip(shards, replies, strict=True):
        rowcount += max(reply.rowcount, 0)
        if sync_keys:
            matched.extend((mapper.class_, tuple(r), shard) for r in reply.rows)
        else:
            rows.extend(compiled.process_row(r) for r in reply.rows)
    if mapper is not None:
        _synchronize_after_bulk(session, compiled, matched if sync_keys else None)
    if compiled.is_update or compiled.is_delete:
        name = "after_bulk_update" if compiled.is_update else "after_bulk_delete"
        event.dispatch(session, name, _BulkContext(session, statement, rowcount))
    keys = list(compiled.result_keys) or list(replies[0].columns if replies else ())
    return Result(keys, iter(rows), rowcount=rowcount)


class _BulkContext:
    """What ``after_bulk_update`` / ``after_bulk_delete`` listeners receive."""

    def __init__(self, session: Session, statement: Any, rowcount: int) -> None:
        self.session = session
        self.statement = statement
        self.rowcount = rowcount


def _synchronize_after_bulk(
    session: Session, compiled: Any, matched: list[tuple[Any, ...]] | None
) -> None:
    """Bring the session's objects in line with an ORM UPDATE or DELETE.

    With the matched identity keys (from RETURNING), updated objects are expired
    and deleted ones leave the session, as SQLAlchemy's
    ``synchronize_session="fetch"`` does; without them (the statement has its own
    RETURNING) every object of the table is expired.
    """
    if matched is None:
        for obj in session.identity_map.values():
            state = instance_state(obj)
            if state.mapper.local_table.name == compiled.table:
                state._expire(None)
        return
    for key in matched:
        obj = session.identity_map.get(key)
        if obj is None:
            continue
        state = instance_state(obj)
        if compiled.is_delete:
            session._register_deleted(state)
        else:
            state._expire(None)


def _execute_many(
    session: Session, statement: Any, rows: list[Mapping[str, Any]], shards: list[str]
) -> Result:
    trans = session._autobegin()
    compiled = compile_statement(statement, column_keys=rows[0].keys())
    if compiled.is_insert and len(shards) > 1:
        mapper = _target_mapper(statement)
        if mapper is None:
            raise InvalidRequestError(
                "an executemany INSERT into a table with no mapped class cannot be split over "
                "shards; route it with bind_arguments={'shard_id': ...}"
            )
        by_shard = session._router.split_insert_rows(mapper, [dict(r) for r in rows])
    else:
        by_shard = {shard: list(rows) for shard in shards}
    trans._mark_written(by_shard)
    calls = [
        (
            trans._handle(shard),
            p.ExecuteMany(compiled.sql, [compiled.construct_params(r) for r in part]),
        )
        for shard, part in by_shard.items()
    ]
    replies = gather(calls)
    return Result([], iter(()), rowcount=sum(max(r.rowcount, 0) for r in replies))


def _target_mapper(statement: Any) -> Any:
    for item in getattr(statement, "_entities", ()) or ():
        if getattr(item, "entity", None) is not None:
            return inspect(item.entity)
    entity = getattr(statement, "entity", None)  # insert(Model) / update(Model) / delete(Model)
    return inspect(entity) if entity is not None else None


# -- get -----------------------------------------------------------------------


def _normalize_ident(mapper: Any, ident: Any) -> tuple[Any, ...]:
    pk_cols = list(mapper.local_table.primary_key)
    if isinstance(ident, Mapping):
        try:
            return tuple(ident[mapper.attribute_key_for_column(c)] for c in pk_cols)
        except KeyError as err:
            raise InvalidRequestError(
                f"Incorrect names of values in identifier for {mapper.class_.__name__}: "
                f"missing {err}; give every primary-key attribute"
            ) from None
    values = tuple(ident) if isinstance(ident, list | tuple) else (ident,)
    if len(values) != len(pk_cols):
        raise InvalidRequestError(
            f"Incorrect number of values in identifier for {mapper.class_.__name__}: "
            f"expected {len(pk_cols)}, got {len(values)}"
        )
    return values


def get(
    session: Session,
    entity: Any,
    ident: Any,
    *,
    options: Sequence[Any] | None,
    populate_existing: bool,
    with_for_update: Any,
    identity_token: Any,
    execution_options: dict[str, Any],
    bind_arguments: dict[str, Any],
) -> Any:
    """See :meth:`Session.get`."""
    mapper = inspect(entity)
    pk = _normalize_ident(mapper, ident)
    if any(v is None for v in pk):
        return None
    token = identity_token or bind_arguments.get("shard_id") or execution_options.get("shard_id")
    shards = session._router.shards_for_identity(
        mapper,
        pk,
        lazy_loaded_from=None,
        execution_options=execution_options,
        bind_arguments=bind_arguments,
        identity_token=token,
    )
    if not populate_existing and not with_for_update:
        for shard in shards:
            obj = session.identity_map.get((mapper.class_, pk, shard))
            if obj is not None:
                state = instance_state(obj)
                if state.expired_attributes:
                    try:
                        state._load(set(state.expired_attributes))
                    except ObjectDeletedError:
                        return None  # deleted on its shard meanwhile
                return obj
    session._autoflush()
    stmt, params = _get_statement(mapper, pk)
    if options:
        stmt = stmt.options(*options)
    if with_for_update:
        kw = with_for_update if isinstance(with_for_update, dict) else {}
        stmt = stmt.with_for_update(**kw)
    opts = dict(execution_options)
    if populate_existing:
        opts["populate_existing"] = True
    if len(shards) == 1:
        return (
            session.execute(
                stmt,
                params,
                execution_options=opts,
                bind_arguments={**bind_arguments, "shard_id": shards[0]},
            )
            .scalars()
            .first()
        )
    # every candidate shard is asked in parallel, in one round trip
    opts[CANDIDATE_SHARDS] = list(shards)
    return session.execute(stmt, params, execution_options=opts).scalars().first()


def _get_statement(mapper: Any, pk: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    """``SELECT`` of one row by primary key: built once per mapper, values as parameters."""
    stmt = mapper.__dict__.get("_ss_get_statement")
    if stmt is None:
        stmt = select(mapper.class_)
        for n, column in enumerate(mapper.local_table.primary_key):
            stmt = stmt.where(column == bindparam(f"ss_pk_{n}", type_=column.type))
        mapper._ss_get_statement = stmt
    return stmt, {f"ss_pk_{n}": value for n, value in enumerate(pk)}


# -- merge -----------------------------------------------------------------------


def merge(session: Session, instance: Any, *, load: bool, memo: dict[int, Any]) -> Any:
    """See :meth:`Session.merge`."""
    if id(instance) in memo:
        return memo[id(instance)]
    state = instance_state(instance)
    mapper = state.mapper
    if state.session_id == id(session):
        return instance
    key = state.key
    target = None
    if key is None:
        pk = tuple(
            state.dict.get(mapper.attribute_key_for_column(c))
            for c in mapper.local_table.primary_key
        )
        if all(v is not None for v in pk):
            if load:
                target = session.get(mapper.class_, pk)
            else:
                raise InvalidRequestError("merge(load=False) needs a persistent or detached object")
    else:
        target = session.identity_map.get(key)
        if target is None and load:
            target = session.get(mapper.class_, key[1], identity_token=key[2])
    if target is None:
        if not load and key is not None:
            target = mapper.class_manager.new_instance()
            tstate = instance_state(target)
            for name in mapper.column_attrs.keys():
                if name in state.dict:
                    tstate.dict[name] = state.dict[name]
            session._register_loaded(tstate, key)
            memo[id(instance)] = target
            return target
        target = mapper.class_manager.new_instance()
        session.add(target)
    memo[id(instance)] = target
    for name in mapper.column_attrs.keys():
        if name in state.dict:
            if load:
                setattr(target, name, state.dict[name])
            else:
                set_committed_value(target, name, state.dict[name])
    for name, prop in mapper.relationships.items():
        if not prop.cascade.merge or name not in state.dict:
            continue
        value = state.dict[name]
        if prop.uselist:
            merged = [merge(session, v, load=load, memo=memo) for v in value or []]
            setattr(target, name, merged)
        else:
            setattr(
                target, name, None if value is None else merge(session, value, load=load, memo=memo)
            )
    return target


# -- connection ---------------------------------------------------------------


class ShardConnection:
    """Raw SQL on one shard, inside the session's transaction (``Session.connection()``)."""

    def __init__(self, session: Session, shard: str) -> None:
        if shard not in session.pool.shards:
            from shardsession.exc import ShardNotFoundError

            raise ShardNotFoundError(
                f"no shard named {shard!r}; shards: {sorted(session.pool.shards)}"
            )
        self.session = session
        self.shard = shard

    def execute(self, statement: Any, params: Any = None) -> Result:
        """Run a statement (or ``text()``) on this shard; return its ``Result``."""
        if isinstance(statement, str):
            raise InvalidRequestError("wrap raw SQL in shardsession.text(...)")
        return self.session.execute(statement, params, bind_arguments={"shard_id": self.shard})

    def exec_driver_sql(self, sql: str, params: Any = None) -> Result:
        """Run psycopg-style SQL text (``%s`` placeholders) on this shard."""
        trans = self.session._autobegin()
        handle = trans._handle(self.shard)
        trans._mark_written([self.shard])
        rows = handle.request(p.Execute(sql, params))
        return Result(list(rows.columns), iter(rows.rows), rowcount=rows.rowcount)


# -- bulk -----------------------------------------------------------------------


def _shard_for_values(
    session: Session, mapper: Any, values: Mapping[str, Any], *, insert: bool, index: int = 0
) -> list[str]:
    """The shards a bulk row goes to: one for an INSERT, every candidate for an UPDATE.

    :param index: the row's position, for the error message.
    :raises ShardNotFoundError: for an INSERT row whose shard cannot be determined
        (a row is never inserted on several shards).
    """
    probe = mapper.class_manager.new_instance()
    instance_state(probe).dict.update(values)
    if session.shard_chooser is not None or (
        mapper.shard_key is not None and values.get(mapper.shard_key) is not None
    ):
        return [session._router.shard_for_instance(mapper, probe)]
    if insert:
        cls = mapper.class_.__name__
        key = mapper.shard_key
        if key is None:
            why = (
                f"{cls} declares no __shard_key__ and the session has no shard_chooser; add "
                f"__shard_key__ = '<attribute>' to {cls}, pass shard_chooser= to the Session, "
                "or add the objects with session.add() so they follow the objects they link to"
            )
        else:
            why = f"it has no value for the shard key {cls}.{key}; include {key!r} in every row"
        raise ShardNotFoundError(f"cannot route row {index} inserted into {cls}: {why}")
    pk = tuple(
        values.get(mapper.attribute_key_for_column(c)) for c in mapper.local_table.primary_key
    )
    return list(session._router.shards_for_identity(mapper, pk))


def bulk_mappings(
    session: Session,
    mapper: Any,
    mappings: list[Mapping[str, Any]],
    *,
    insert: bool,
    return_defaults: bool = False,
) -> list[tuple[Any, ...]]:
    """INSERT (or UPDATE by primary key) rows given as attribute dicts, batched per shard.

    :returns: with ``return_defaults``, the primary key of each inserted row, in order.
    """
    mapper = inspect(mapper)
    table = mapper.local_table
    trans = session._autobegin()
    trans._assert_active()
    column_for = {mapper.attribute_key_for_column(c): c for c in table.columns}
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for index, values in enumerate(mappings):
        unknown = set(values) - set(column_for)
        if unknown:
            raise InvalidRequestError(
                f"{mapper.class_.__name__} has no column attribute(s) {sorted(unknown)}"
            )
        row = {column_for[k].key: v for k, v in values.items()}
        for shard in _shard_for_values(session, mapper, values, insert=insert, index=index):
            groups[(shard, tuple(sorted(row)))].append((index, row))
    pk_cols = list(table.primary_key)
    calls: dict[str, list[tuple[Any, list[int]]]] = defaultdict(list)
    for (shard, keys), members in groups.items():
        if insert:
            stmt = sql_insert(table)
            if return_defaults:
                stmt = stmt.returning(*pk_cols)
            compiled = compile_statement(stmt, column_keys=keys)
            request = p.ExecuteMany(
                compiled.sql,
                [compiled.construct_params(r) for _, r in members],
                returning=return_defaults,
            )
        else:
            missing = [c.key for c in pk_cols if c.key not in keys]
            if missing:
                raise InvalidRequestError(
                    f"bulk_update_mappings needs the primary key {missing} of "
                    f"{mapper.class_.__name__} in every mapping"
                )
            stmt = pk_where(sql_update(table), table)
            set_keys = [k for k in keys if k not in {c.key for c in pk_cols}]
            if not set_keys:
                continue
            compiled = compile_statement(
                stmt, column_keys=[*set_keys, *("pk_" + c.key for c in pk_cols)]
            )
            request = p.ExecuteMany(
                compiled.sql,
                [
                    compiled.construct_params(
                        {
                            **{k: r[k] for k in set_keys},
                            **{"pk_" + c.key: r[c.key] for c in pk_cols},
                        }
                    )
                    for _, r in members
                ],
            )
        calls[shard].append((request, [i for i, _ in members]))
    trans._mark_written(calls)
    shards = list(calls)
    replies = gather(
        [(trans._handle(s), p.FlushBatch(tuple(req for req, _ in calls[s]))) for s in shards]
    )
    keys_out: list[tuple[Any, ...]] = [()] * len(mappings)
    if insert and return_defaults:
        for shard, reply in zip(shards, replies, strict=True):
            for (_, indexes), results in zip(calls[shard], reply, strict=True):
                for index, rows in zip(indexes, results, strict=True):
                    keys_out[index] = tuple(rows.rows[0])
    return keys_out


def bulk_save_objects(session: Session, objects: list[Any], return_defaults: bool) -> None:
    """INSERT new and UPDATE changed objects in batches, without adding them to the session.

    With ``return_defaults`` the generated primary keys are set on the new objects.
    """
    by_mapper_new: dict[Any, list[Any]] = defaultdict(list)
    by_mapper_old: dict[Any, list[Any]] = defaultdict(list)
    for obj in objects:
        state = instance_state(obj)
        (by_mapper_new if state.key is None else by_mapper_old)[state.mapper].append(obj)
    for mapper, new in by_mapper_new.items():
        columns = set(mapper.column_attrs.keys())
        rows = [
            {k: v for k, v in instance_state(o).dict.items() if k in columns and v is not None}
            for o in new
        ]
        keys = bulk_mappings(session, mapper, rows, insert=True, return_defaults=return_defaults)
        if return_defaults:
            pk_keys = [mapper.attribute_key_for_column(c) for c in mapper.local_table.primary_key]
            for obj, pk in zip(new, keys, strict=True):
                for name, value in zip(pk_keys, pk, strict=True):
                    set_committed_value(obj, name, value)
    for mapper, old in by_mapper_old.items():
        pk_keys = [mapper.attribute_key_for_column(c) for c in mapper.local_table.primary_key]
        rows = []
        for obj in old:
            state = instance_state(obj)
            changed = {k: state.dict[k] for k in state.changed_keys if k in mapper.column_attrs}
            if changed:
                rows.append({**changed, **{k: state.dict[k] for k in pk_keys}})
        if rows:
            bulk_mappings(session, mapper, rows, insert=False)
            for obj in old:
                instance_state(obj)._commit_all()
