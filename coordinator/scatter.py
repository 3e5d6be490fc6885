"""Running statements on their shards: one shard directly, several in parallel.

:func:`execute_hook` is the sharded Session's ``do_orm_execute`` listener.  It
finds the shards of a statement (SQLAlchemy's precedence: ``bind_arguments``,
``set_shard_id``, the identity token of what is loaded, then the execute
chooser).  One shard: the statement is invoked there, with that shard as the
identity token.  Several shards:

1. the statement (rewritten by :mod:`.plan` for a SELECT) is invoked for the
   first shard with a broadcast hook set; when SQLAlchemy's cursor executes it,
   the hook sends the exact SQL and parameters to every shard before reading
   any reply;
2. the rows are merged (:mod:`.plan`); rows holding ORM entities are served
   back to each shard's connection and the statement is invoked once more per
   shard, without a round trip, so SQLAlchemy builds every object with its own
   shard as identity token; other rows are all served to the first shard;
3. the shards' results are put together in the merged order.

UPDATE and DELETE go to every shard the same way; the result's ``rowcount`` is
the total.  A statement over reference tables only (:mod:`.reference`) runs on
the first shard, and the dialect replicates a write to the others.  A bulk
INSERT with a list of parameter sets is split by shard key.  Streaming
(``yield_per``, ``stream_results``) over several shards opens a server-side
cursor per shard and merges lazily.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from shardsession.coordinator import dbapi, plan, reference, routing
from shardsession.coordinator import merge as m
from shardsession.coordinator import selectparts as parts
from sqlalchemy import select, tuple_
from sqlalchemy.ext.horizontal_shard import set_shard_id
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.sql import CompoundSelect, Select

from shardsession.exc import CrossShardError, ShardNotFoundError
from shardsession.protocol import Execute, Result

__all__ = ["check_textual_scatter", "execute_hook"]

_ONE_SHARD = "run it on one shard (bind_arguments={'shard_id': ...})"
_TEXT_NEEDS_MERGE = re.compile(
    r"\b(?:order\s+by|group\s+by|having|limit|offset|fetch\s+(?:first|next)|over)\b"
    r"|\bdistinct\b(?!\s+from\b)"
    r"|\b(?:count|sum|min|max|avg|array_agg|string_agg|json_agg|jsonb_agg|bool_and|bool_or"
    r"|stddev|variance|every)\s*\(",
    re.IGNORECASE,
)
_TEXT_QUOTED = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$([A-Za-z_]\w*|)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/",
    re.DOTALL,
)


def check_textual_scatter(sql: str) -> None:
    """Refuse a textual SELECT for several shards whose rows would need merging.

    Concatenating the shards' rows is exact only for a plain SELECT; ORDER BY,
    LIMIT, GROUP BY, DISTINCT, aggregates and window functions written as text
    cannot be merged (the coordinator cannot see them), so they raise.

    :raises CrossShardError: naming the fix.
    """
    found = _TEXT_NEEDS_MERGE.search(_TEXT_QUOTED.sub(" ", sql))
    if found:
        raise CrossShardError(
            f"a textual SELECT using {found.group(0).strip()!r} would run on several shards "
            "and its rows could only be concatenated, not merged; write it with select() so "
            f"the shards' rows are merged exactly, or {_ONE_SHARD}"
        )


def _orm_options(orm_context: Any) -> Any:
    """The statement's ORM options object (load options for a SELECT), or None."""
    if orm_context.is_select:
        return orm_context.load_options
    if orm_context.is_update or orm_context.is_delete:
        return orm_context.update_delete_options
    return None


def _explicit_shard(orm_context: Any) -> Any:
    for option in orm_context._non_compile_orm_options:  # SQLAlchemy's sharding reads it too
        if isinstance(option, set_shard_id):
            return option.shard_id
    token = getattr(_orm_options(orm_context), "_identity_token", None)
    if token is not None:
        return token
    parent = orm_context.lazy_loaded_from if orm_context.is_select else None
    # a lazy load goes to its parent's shard (a reference object's to where its rows are)
    if parent is not None and parent.key is not None and parent.key[2] is not None:
        if not reference.is_reference_mapper(parent.mapper):
            return parent.key[2]
    eo = orm_context.execution_options
    if eo.get("_sa_shard_id") is not None:
        return eo["_sa_shard_id"]
    if "shard_id" in orm_context.bind_arguments:
        return orm_context.bind_arguments["shard_id"]
    # selectin / subquery eager loads carry the parent's shard here
    token = eo.get("identity_token")
    if token is not None and reference.loads_for_reference_parent(orm_context):
        return None
    return token


def _invoke(orm_context: Any, shard: Any, **kw: Any) -> Any:
    bind_arguments = dict(orm_context.bind_arguments)
    bind_arguments["shard_id"] = shard
    orm_context.update_execution_options(identity_token=shard)
    if orm_context.is_insert or (
        orm_context.is_update and isinstance(orm_context.parameters, list)
    ):  # fmt: skip
        with _bulk_on(orm_context.session, shard):
            return orm_context.invoke_statement(bind_arguments=bind_arguments, **kw)
    return orm_context.invoke_statement(bind_arguments=bind_arguments, **kw)


@contextlib.contextmanager
def _bulk_on(session: Any, shard: Any) -> Iterator[None]:
    """Run an ORM bulk INSERT / UPDATE on one shard.

    SQLAlchemy refuses bulk statements in a session with a per-instance connection
    chooser (``connection_callable``), and asks for the mapper's connection
    without a shard: for the length of the statement, the chooser is hidden and
    the shard is the one given.
    """
    session.connection_callable = None
    session._group_shard = shard
    try:
        yield
    finally:
        del session.connection_callable
        session._group_shard = None


def execute_hook(orm_context: Any) -> Any:
    """The sharded Session's ``do_orm_execute`` listener (see the module docs)."""
    session = orm_context.session
    shards = getattr(session, "_shards", None)
    if shards is None:
        return None
    shard = _explicit_shard(orm_context)
    if shard is not None:
        if shard not in shards:
            raise routing.unknown_shard(shard, shards)
        return _invoke(orm_context, shard)
    if reference.is_reference_statement(orm_context.statement):
        # reference rows only: read from one shard; a write is replicated by the dialect
        result = _invoke(orm_context, session._shard_names[0])
        if orm_context.is_select:
            reference.check_loaded(result)
        return result
    if orm_context.is_insert:
        return _insert(orm_context)
    if orm_context.is_update and isinstance(orm_context.parameters, list):
        return _bulk_update(orm_context)
    chosen = list(session.execute_chooser(orm_context))
    if not chosen:
        raise ShardNotFoundError("the execute chooser returned no shard for this statement")
    if len(chosen) == 1:
        return _invoke(orm_context, chosen[0])
    _autoflush(orm_context)
    eo = orm_context.execution_options
    if orm_context.is_select and (eo.get("yield_per") or eo.get("stream_results")):
        return _stream(orm_context, chosen)
    return _scatter(orm_context, chosen)


# -- several shards ------------------------------------------------------------------


def _autoflush(orm_context: Any) -> None:
    """Autoflush before the broadcast, as SQLAlchemy would before the statement.

    SQLAlchemy autoflushes inside the statement's own execution, which here is
    the first shard's invocation: its flush statements would meet the broadcast
    hook.  So it is done first, under SQLAlchemy's own conditions (the session's
    ``autoflush``, not while flushing, the statement's ``autoflush`` option).
    """
    if getattr(_orm_options(orm_context), "_autoflush", True):
        orm_context.session._autoflush()


class _Broadcast:
    """The hook that sends the first shard's statement to every shard (step 1)."""

    def __init__(self, conns: dict[Any, Any], first: Any, textual: bool) -> None:
        self.conns = conns
        self.first = conns[first]
        self.textual = textual
        self.fired = False
        self.sql = ""
        self.params: Any = None
        self.results: dict[Any, Result] = {}

    def __call__(self, conn: Any, sql: str, params: Any) -> Result | None:
        if self.fired or conn is not self.first:
            return None
        self.fired = True
        if self.textual and sql.lstrip()[:6].upper() in ("SELECT", "WITH", "TABLE", "VALUES"):
            check_textual_scatter(sql)
        self.sql, self.params = sql, params
        request = Execute(sql, params, tag=conn.tag)  # one session: one tag on every shard
        outcomes = dbapi.exchange([(c, request) for c in self.conns.values()])
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        self.results = dict(zip(self.conns, outcomes))
        return None  # the caller decides what the first shard's cursor gets


def _connections(session: Any, shards: Sequence[Any]) -> dict[Any, Any]:
    conns = {}
    for shard in shards:
        conn = session.connection(bind_arguments={"shard_id": shard})
        conns[shard] = conn.connection.dbapi_connection
    if not all(isinstance(c, dbapi.Connection) for c in conns.values()):
        raise CrossShardError(
            "statements for several shards need postgresql+shardsession engines; create the "
            "shards with shardsession.create_shards()"
        )
    return conns


def _scatter(orm_context: Any, shards: list[Any]) -> Any:
    stmt = orm_context.statement
    select_plan = None
    if isinstance(stmt, Select):
        select_plan = plan.plan_select(stmt, orm_context.parameters)
    elif isinstance(stmt, CompoundSelect):
        raise CrossShardError(
            "UNION / INTERSECT / EXCEPT over several shards cannot be combined exactly "
            f"(each shard sees only its rows); run each SELECT on its own, or {_ONE_SHARD}"
        )
    conns = _connections(orm_context.session, shards)
    if select_plan is not None:
        plan.needs_c_collation(
            select_plan, [c.worker_info.get("collation", "C") for c in conns.values()]
        )
    first = shards[0]
    hook = _Broadcast(conns, first, textual=select_plan is None)
    served: dict[Any, Result] = {}

    def first_hook(conn: Any, sql: str, params: Any) -> Result | None:
        if hook.fired or conn is not hook.first:
            return None
        hook(conn, sql, params)
        served.update(_serve(select_plan, hook.results, first))
        for shard, result in served.items():
            if shard != first:
                conns[shard].serve(hook.sql, hook.params, result)
        return served[first]

    statement = select_plan.statement if select_plan is not None else stmt
    token = dbapi.broadcast.set(first_hook)
    try:
        results = {first: _invoke(orm_context, first, statement=statement)}
    finally:
        dbapi.broadcast.reset(token)
    if not hook.fired:
        raise CrossShardError("the statement for several shards never reached their workers")
    if select_plan is not None:
        reference.check_scattered(results[first])
    for shard in shards[1:]:
        if shard in served:
            results[shard] = _invoke(orm_context, shard, statement=statement)
    if select_plan is None:
        return _combine_dml(results, hook.results)
    return _combine_select(select_plan, results, served, first)


def _serve(select_plan: plan.Plan | None, results: dict[Any, Result], first: Any
           ) -> dict[Any, Result]:  # fmt: skip
    """What each shard's cursor is given: its own rows, or the merged rows."""
    if select_plan is None:
        return dict(results)  # UPDATE / DELETE / textual: each shard its own result
    description = results[first].description or ()
    names = [d[0] for d in description]
    if select_plan.aggregate:
        rows = [r for res in results.values() for r in res.rows]
        merged = plan.combine_aggregates(select_plan, names, rows)
        return {first: Result(description, merged, len(merged))}
    if select_plan.concatenates:  # nothing to merge: each shard keeps its rows, in order
        if not select_plan.entities:
            rows = [row for res in results.values() for row in res.rows]
            return {first: Result(description, rows, len(rows))}
        select_plan.merged_order = None
        return {shard: res for shard, res in results.items() if res.rows or shard == first}
    streams = [[(*row, shard) for row in res.rows] for shard, res in results.items()]
    merged = plan.merge_rows(select_plan, names, streams)
    if not select_plan.entities:
        rows = [row[:-1] for row in merged]
        return {first: Result(description, rows, len(rows))}
    kept: dict[Any, list[tuple[Any, ...]]] = {}
    order: list[tuple[Any, int]] = []
    for row in merged:
        shard = row[-1]
        mine = kept.setdefault(shard, [])
        order.append((shard, len(mine)))
        mine.append(row[:-1])
    select_plan.merged_order = order
    out = {shard: Result(results[shard].description, rows, len(rows))
           for shard, rows in kept.items()}  # fmt: skip
    out.setdefault(first, Result(description, [], 0))
    return out


def _combine_select(select_plan: plan.Plan, results: dict[Any, Any], served: dict[Any, Result],
                    first: Any) -> Any:  # fmt: skip
    if select_plan.concatenates:  # no helper columns: SQLAlchemy's own merged result
        ordered = [results[first], *(r for s, r in results.items() if s != first)]
        return ordered[0].merge(*ordered[1:]) if len(ordered) > 1 else ordered[0]
    if select_plan.entities:
        # one result row per shard row, duplicates included (joined eager loading of
        # collections repeats its entity): the caller's unique() applies to the merge
        results = {s: r.unique(_every_row) for s, r in results.items()}
    rows = {s: parts.frozen_rows(r.freeze()) for s, r in results.items()}
    if select_plan.entities:
        merged = [rows[s][i] for s, i in select_plan.merged_order or ()]
    else:
        merged = rows[first]
    objects = bool(results[first]._source_supports_scalars)
    return _rebuilt(select_plan, results[first], merged, objects)


def _every_row(row: Any) -> object:
    return object()


def _rebuilt(select_plan: plan.Plan, template: Any, rows: Any, objects: bool = False) -> Any:
    return parts.rebuilt_result(
        template, select_plan.width, rows,
        single_entity=select_plan.entities and select_plan.width == 1,
        has_entities=select_plan.entities, objects=objects,
    )  # fmt: skip


def _combine_dml(results: dict[Any, Any], raw: dict[Any, Result]) -> Any:
    ordered = list(results.values())
    total = sum(max(r.rowcount, 0) for r in raw.values())
    if len(ordered) == 1:
        return ordered[0]
    merged = ordered[0].merge(*ordered[1:])
    merged.rowcount = total
    return merged


# -- bulk INSERT -------------------------------------------------------------------


def _insert(orm_context: Any) -> Any:
    session = orm_context.session
    params = orm_context.parameters
    mapper = orm_context.bind_mapper
    key = routing.shard_key_for(mapper) if mapper is not None else None
    if isinstance(params, list) and params and key is not None:
        groups: dict[str, list[Any]] = {}
        for p in params:
            if key.attr not in p:
                raise ShardNotFoundError(
                    f"a bulk INSERT of {key.class_name} has a row without {key.attr!r}, its "
                    "shard key: give every row its key, or pass bind_arguments={'shard_id': ...}"
                )
            value = key.normalize(p[key.attr])
            groups.setdefault(routing.shard_for_key(session._shard_names, value), []).append(p)
        results = [_execute_group(orm_context, shard, rows) for shard, rows in groups.items()]
        if len(results) == 1:
            return results[0]
        merged = results[0].merge(*results[1:])
        merged.rowcount = sum(max(getattr(r, "rowcount", 0), 0) for r in results)
        return merged
    if isinstance(params, dict) and key is not None and key.attr in params:
        value = key.normalize(params[key.attr])
        return _invoke(orm_context, routing.shard_for_key(session._shard_names, value))
    return _invoke(orm_context, session.shard_chooser(mapper, None, clause=orm_context.statement))


def _execute_group(orm_context: Any, shard: Any, rows: list[dict[str, Any]]) -> Any:
    """Execute the statement with some of its parameter sets, on ``shard``."""
    bind_arguments = dict(orm_context.bind_arguments)
    bind_arguments["shard_id"] = shard
    return orm_context.session.execute(
        orm_context.statement, rows, bind_arguments=bind_arguments,
        execution_options=orm_context.local_execution_options,
    )  # fmt: skip


def _bulk_update(orm_context: Any) -> Any:
    """ORM bulk UPDATE by primary key: each parameter set goes to its row's shard."""
    session = orm_context.session
    mapper = orm_context.bind_mapper
    params: list[dict[str, Any]] = orm_context.parameters
    key = routing.shard_key_for(mapper) if mapper is not None else None
    pk_attrs = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    groups: dict[Any, list[dict[str, Any]]] = {}
    if key is not None and all(key.attr in p for p in params):
        for p in params:
            value = key.normalize(p[key.attr])
            groups.setdefault(routing.shard_for_key(session._shard_names, value), []).append(p)
    else:  # find each row's shard: one parallel SELECT of the keys on every shard
        wanted = {tuple(p[a] for a in pk_attrs): p for p in params}
        columns = [getattr(mapper.class_, a) for a in pk_attrs]
        for shard in session._shard_names:
            rows = session.execute(
                select(*columns).where(tuple_(*columns).in_(list(wanted))),
                bind_arguments={"shard_id": shard},
            ).all()
            for row in rows:
                groups.setdefault(shard, []).append(wanted[tuple(row)])
    results = [_execute_group(orm_context, shard, rows) for shard, rows in groups.items()]
    if len(results) == 1:
        return results[0]
    if not results:
        raise orm_exc.StaleDataError(
            f"bulk UPDATE of {mapper.class_.__name__}: no shard holds any of the rows given"
        )
    merged = results[0].merge(*results[1:])
    merged.rowcount = sum(max(getattr(r, "rowcount", 0), 0) for r in results)
    return merged


# -- streaming ---------------------------------------------------------------------


def _stream(orm_context: Any, shards: list[Any]) -> Any:
    stmt = orm_context.statement
    select_plan = plan.plan_select(stmt, orm_context.parameters)
    if select_plan.aggregate:
        orm_context.update_execution_options(yield_per=None, stream_results=False)
        return _scatter(orm_context, shards)
    results = {s: _invoke(orm_context, s, statement=select_plan.statement) for s in shards}
    first = results[shards[0]]
    names = list(first.keys())
    width = select_plan.width

    def tagged(result: Any, shard: Any) -> Iterator[list[Any]]:
        for row in result:
            yield [*row, shard]

    def rows() -> Iterator[tuple[Any, ...]]:
        streams = [tagged(r, shard) for shard, r in results.items()]
        at = select_plan.positions([*names, "_ss_shard"])
        order = [(at(ref), desc, nf) for ref, desc, nf in select_plan.order]
        merged = m.merge_sorted(streams, order) if order else m.concat(streams)
        if select_plan.distinct is not None:
            keys = list(range(width)) if select_plan.distinct == ["*"] else [
                at(ref) for ref in select_plan.distinct
            ]  # fmt: skip
            merged = m.unique_rows(merged, keys)
        yield from m.offset_limit(merged, select_plan.offset, select_plan.limit)

    out = _rebuilt(select_plan, first, rows())
    yield_per = orm_context.execution_options.get("yield_per")
    if yield_per:
        out = out.yield_per(yield_per)
    return out
