"""Planning and running one SELECT on several shards, and merging what they return.

:func:`plan_select` decides the statement every shard runs and how the coordinator
merges the shards' rows so that the result equals the one a single database holding
all the rows would give:

* plain SELECT -- every shard runs it; the rows are concatenated;
* ORDER BY -- every shard sorts; the coordinator k-way merges (ORDER BY keys that are
  not result columns travel as extra, hidden columns and are dropped after merging);
* LIMIT / OFFSET -- every shard is asked for ``LIMIT offset + limit`` rows without
  OFFSET; the coordinator skips and cuts once, after merging;
* DISTINCT / DISTINCT ON -- de-duplicated again after merging, before LIMIT;
* aggregates (``count``, ``sum``, ``min``, ``max``, ``avg``; whole-table or GROUP BY) --
  every shard returns partial aggregates per group (without ORDER BY / LIMIT, and with
  a sum and a count in hidden columns for each ``avg``); the coordinator combines them
  per group, then sorts, de-duplicates and applies OFFSET / LIMIT.

``HAVING`` conditions on aggregates cannot run on the shards (each sees only part of
every group): they are removed from the shards' statement and evaluated by the
coordinator on the combined groups.  They may use comparisons, ``AND`` / ``OR`` /
``NOT``, ``IS [NOT] NULL``, ``BETWEEN`` and ``+ - *`` over aggregates, GROUP BY
expressions and values; anything else raises.  A HAVING on GROUP BY keys alone stays
on the shards, where it is exact.

What cannot be combined raises :class:`~shardsession.exc.InvalidRequestError` instead
of returning a wrong answer: ``count`` / ``sum`` / ``avg`` over ``DISTINCT``, other
aggregate functions (``array_agg``, ``string_agg``, ``stddev`` ...), aggregates nested
in expressions of the select list or ORDER BY (``count(*) + 1``), and textual SELECTs
(``text()``, with or without ``.columns()``) that order, limit, offset, group,
de-duplicate or aggregate (:func:`check_textual_scatter`); other textual SELECTs are
concatenated.

:func:`execute_plan` sends the plan to every shard before awaiting any reply and
returns a lazy :class:`~shardsession.coordinator.result.Result`; with *stream_chunk*
the shards stream through server-side cursors, so memory stays bounded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from shardsession.coordinator import merge as m
from shardsession.coordinator.result import Result

from shardsession.exc import InvalidRequestError
from shardsession.protocol import CloseCursor, Execute, FetchMore, gather
from shardsession.sql.columns import ColumnClause
from shardsession.sql.compiled import CompiledStatement, ParamRef
from shardsession.sql.compiler import compile_statement
from shardsession.sql.elements import ClauseElement, ColumnElement
from shardsession.sql.expressions import Label, UnaryExpression
from shardsession.sql.functions import Function, func
from shardsession.sql.selects import Exists, ScalarSelect, Select

__all__ = ["ScatterPlan", "check_textual_scatter", "execute_plan", "plan_select"]

Row = tuple[Any, ...]

_COMBINABLE = frozenset({"count", "sum", "min", "max", "avg"})
# PostgreSQL aggregates whose per-shard results cannot be combined by this module.
_OTHER_AGGREGATES = frozenset(
    "array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg xmlagg "
    "bool_and bool_or every bit_and bit_or bit_xor stddev stddev_pop stddev_samp variance "
    "var_pop var_samp corr covar_pop covar_samp regr_avgx regr_avgy regr_count "
    "regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy mode percentile_cont "
    "percentile_disc range_agg range_intersect_agg".split()
)
_ONE_SHARD = "run it on one shard (bind_arguments={'shard_id': ...})"
# What a textual SELECT cannot do correctly when its rows are only concatenated.
_TEXT_NEEDS_MERGE = re.compile(
    r"\b(?:order\s+by|group\s+by|having|limit|offset|fetch\s+(?:first|next))\b"
    r"|\bdistinct\b(?!\s+from\b)"  # not IS [NOT] DISTINCT FROM
    r"|\b(?:" + "|".join(sorted(_COMBINABLE | _OTHER_AGGREGATES)) + r")\s*\(",
    re.IGNORECASE,
)
# String literals, quoted identifiers and comments: the words in them are not SQL.
_TEXT_QUOTED = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$([A-Za-z_]\w*|)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/",
    re.DOTALL,
)
_TEXT_FIRST_WORD = re.compile(r"[\s(]*(\w+)")
_TEXT_WORD = re.compile(r"[()]|\b(?:select|values|table|insert|update|delete|merge)\b", re.I)


class ScatterPlan:
    """What every shard runs for one SELECT, and how their rows are merged.

    The shard part (:attr:`sql`, :attr:`params`) is plain text and a tuple, cheap to
    pickle; the same statement goes to every shard.

    :ivar sql: the statement each shard runs.
    :ivar params: its positional parameters.
    :ivar compiled: the user's compiled statement (its result keys and processors).
    :ivar shard_compiled: the compiled statement the shards run (may carry hidden
        columns after the user's).
    :ivar keys: the result keys the merged rows have.
    :ivar kind: ``"concat"``, ``"merge"`` (k-way by ORDER BY) or ``"aggregate"``.
    :ivar order: ORDER BY keys ``(column index, descending, nulls_first)`` over the
        merged (or combined) rows.
    :ivar offset: rows the coordinator skips after merging (None: none).
    :ivar limit: rows the coordinator keeps after that (None: all).
    :ivar distinct: None, or the column indexes de-duplicated on (DISTINCT: every
        result column; DISTINCT ON: its expressions).
    :ivar group: for ``"aggregate"``: the shard-row columns of the GROUP BY key.
    :ivar specs: for ``"aggregate"``: how each combined column is computed
        (see :data:`~shardsession.coordinator.merge.AggregateSpec`).
    :ivar having: for ``"aggregate"``: the HAVING test run on each combined group, or None.
    """

    def __init__(
        self,
        *,
        compiled: CompiledStatement,
        shard_compiled: CompiledStatement,
        params: tuple[Any, ...],
        kind: str,
        order: Sequence[m.OrderKey] = (),
        offset: int | None = None,
        limit: int | None = None,
        distinct: Sequence[int] | None = None,
        group: Sequence[int] = (),
        specs: Sequence[m.AggregateSpec] = (),
        having: Callable[[Row], bool] | None = None,
    ) -> None:
        self.compiled = compiled
        self.shard_compiled = shard_compiled
        self.sql = shard_compiled.sql
        self.params = params
        self.keys: tuple[str, ...] = tuple(compiled.result_keys)
        self.kind = kind
        self.order = tuple(order)
        self.offset = offset
        self.limit = limit
        self.distinct = None if distinct is None else tuple(distinct)
        self.group = tuple(group)
        self.specs = tuple(specs)
        self.having = having

    @property
    def width(self) -> int:
        """Number of result columns the user sees (hidden columns excluded)."""
        return len(self.keys)

    def __repr__(self) -> str:
        return (
            f"<ScatterPlan {self.kind} order={self.order} offset={self.offset} "
            f"limit={self.limit} distinct={self.distinct} sql={self.sql!r}>"
        )

    def request(self, *, stream_chunk: int | None = None) -> Execute:
        """Return the :class:`~shardsession.protocol.Execute` each shard is sent."""
        if stream_chunk:
            return Execute(self.sql, self.params, fetch="stream", chunk=stream_chunk)
        return Execute(self.sql, self.params)

    def merge(self, streams: Sequence[Iterable[Row]], *, tagged: bool = False) -> Iterator[Row]:
        """Merge the shards' row streams (one per shard) into the result's rows.

        Lazy for ``"concat"`` and ``"merge"`` plans: rows are pulled from the shards
        only as the returned iterator is consumed.

        :param tagged: each row carries one more value after all its columns (e.g. its
            shard id); it is kept, as the last value of every merged row (for combined
            groups: the tag of the group's first row).
        """
        rows: Iterable[Row]
        specs = self.specs
        if self.kind == "aggregate":
            if tagged:
                specs = (*specs, ("any", len(self.shard_compiled.result_keys)))
            rows = m.combine_groups(m.concat(streams), self.group, specs)
            if self.having is not None:
                rows = filter(self.having, rows)
            if self.order:
                rows = m.sort_rows(rows, self.order)
        elif self.kind == "merge":
            rows = m.merge_sorted(streams, self.order)
        else:
            rows = m.concat(streams)
        if self.distinct is not None:
            rows = m.unique_rows(rows, self.distinct)
        rows = m.offset_limit(rows, self.offset, self.limit)
        width = self.width
        if tagged:
            if self.kind == "aggregate" or len(self.shard_compiled.result_keys) != width:
                rows = ((*r[:width], r[-1]) for r in rows)  # drop hidden columns
            # else: every row is already its columns and the tag
        elif self.kind == "aggregate" or len(self.shard_compiled.result_keys) != width:
            rows = m.project(rows, width)
        return iter(rows)


# -- expression inspection ---------------------------------------------------------


def _children(el: Any) -> Iterator[Any]:
    # Subqueries are evaluated within each shard's query: their aggregates are whole.
    if isinstance(el, ScalarSelect | Exists | Select):
        return
    for attr in ("element", "left", "right", "expr", "lower", "upper", "value", "else_"):
        c = getattr(el, attr, None)
        if isinstance(c, ClauseElement):
            yield c
    for c in getattr(el, "clauses", None) or ():
        if isinstance(c, ClauseElement):
            yield c
    for pair in getattr(el, "whens", None) or ():
        yield from pair


def _is_aggregate_call(el: Any) -> bool:
    return (
        isinstance(el, Function)
        and not el.packages
        and el.name.lower() in (_COMBINABLE | _OTHER_AGGREGATES)
    )


def _contains_aggregate(el: Any) -> bool:
    if _is_aggregate_call(el):
        return True
    return any(_contains_aggregate(c) for c in _children(el))


def _unlabel(el: Any) -> Any:
    while isinstance(el, Label):
        el = el.element
    return el


def _describe(el: Any) -> str:
    try:
        return str(el)
    except Exception:  # pragma: no cover - display only
        return repr(el)


def _aggregate_kind(el: Any) -> str | None:
    """Return the combinable aggregate *el* computes (``"count"``, ``"sum"``, ...) or None.

    :raises InvalidRequestError: for an aggregate that cannot be combined.
    """
    u = _unlabel(el)
    if _is_aggregate_call(u):
        name = u.name.lower()
        if name in _OTHER_AGGREGATES:
            raise InvalidRequestError(
                f"{_describe(u)}: the aggregate {name}() cannot be combined across shards "
                f"(only count, sum, min, max and avg can); {_ONE_SHARD}, or select the rows "
                "and aggregate them in Python"
            )
        if any(isinstance(a, UnaryExpression) and a.operator == "DISTINCT" for a in u.clauses):
            if name in ("min", "max"):
                return name
            raise InvalidRequestError(
                f"{_describe(u)}: {name}(DISTINCT ...) cannot be combined across shards -- "
                "a value present on several shards would be counted once per shard. "
                f"Select the distinct values instead (select(col).distinct()) and "
                f"{'count' if name == 'count' else 'aggregate'} them in Python, or {_ONE_SHARD}"
            )
        if any(_contains_aggregate(c) for c in u.clauses):
            raise InvalidRequestError(f"{_describe(u)}: nested aggregates are not supported")
        return name
    if _contains_aggregate(u):
        raise InvalidRequestError(
            f"{_describe(el)}: an expression over aggregate results cannot be combined across "
            "shards; select the aggregates themselves and compute the expression in Python, "
            f"or {_ONE_SHARD}"
        )
    return None


def _same_column(a: Any, b: Any) -> bool:
    a, b = _unlabel(a), _unlabel(b)
    if a is b:
        return True
    return (
        isinstance(a, ColumnClause)
        and isinstance(b, ColumnClause)
        and a.table is not None
        and a.table is b.table
        and a.name == b.name
    )


def _find(cols: Sequence[Any], el: Any) -> int | None:
    for i, c in enumerate(cols):
        if _same_column(c, el):
            return i
    return None


def _order_element(o: Any) -> Any:
    if isinstance(o, UnaryExpression) and o.operator is None:
        return o.element
    return o


def _hidden(exprs: Sequence[ColumnElement]) -> list[ColumnElement]:
    return [e.label(f"_ss_hidden_{k}") for k, e in enumerate(exprs)]


def _int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, ParamRef):
        raise InvalidRequestError(
            f"a value is required for the {what.upper()} parameter {value.name!r}; "
            "pass it in the execution parameters"
        )
    return int(value)


# -- planning ----------------------------------------------------------------------


def _textual_query_verb(sql: str) -> str | None:
    """The statement keyword of a query written as text, or None for anything else.

    ``sql`` has its literals and comments blanked.  A ``WITH`` query's keyword is the
    one after its common table expressions (outside their parentheses).
    """
    first = _TEXT_FIRST_WORD.match(sql)
    verb = first.group(1).lower() if first else None
    if verb in ("select", "values", "table"):
        return verb
    if first is None or verb != "with":
        return None
    depth = 0
    for found in _TEXT_WORD.finditer(sql, first.end()):
        word = found.group(0).lower()
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0:
            return word if word in ("select", "values", "table") else None
    return None


def check_textual_scatter(sql: str, *, known_query: bool = False) -> None:
    """Refuse a textual query whose rows would be wrong if only concatenated across shards.

    A ``text()`` statement cannot be rewritten, so rows of several shards are only
    concatenated; that is right for a plain SELECT, and wrong as soon as the query
    orders, limits, offsets, groups, de-duplicates or aggregates.  Words inside
    string literals, quoted identifiers and comments do not count.  Statements that
    are not queries (INSERT, UPDATE, DDL ...) are not checked unless *known_query*.

    :param sql: the statement's SQL.
    :param known_query: the statement is a query (``text().columns()``).
    :raises InvalidRequestError: when it would need merging across shards.
    """
    bare = _TEXT_QUOTED.sub(" ", sql)
    if not known_query and _textual_query_verb(bare) is None:
        return
    match = _TEXT_NEEDS_MERGE.search(bare)
    if match:
        found = " ".join(match.group(0).rstrip("( ").split()).upper()
        raise InvalidRequestError(
            f"a textual SELECT with {found!r} cannot be run on several shards: shardsession "
            "cannot merge a textual statement's ordering, limit, offset, grouping, DISTINCT "
            "or aggregates across shards, its rows would only be concatenated. Build it with "
            f"select() so the coordinator can merge it, or {_ONE_SHARD}"
        )


def plan_select(
    stmt: Any,
    compiled: CompiledStatement,
    params: Mapping[str, Any] | None = None,
    *,
    single_shard: bool = False,
) -> ScatterPlan:
    """Plan *stmt* for running on several shards.

    :param stmt: the SELECT (a :class:`~shardsession.sql.selects.Select`; other
        row-returning statements, e.g. ``text().columns()``, are concatenated).
    :param compiled: ``compile_statement(stmt)``.
    :param params: the user's execution parameters.
    :param single_shard: only one shard runs it, so a textual SELECT needs no
        merging and is not checked (:func:`check_textual_scatter`).
    :raises InvalidRequestError: when the shards' results cannot be combined exactly
        (see the module documentation for what and what to do instead).
    """
    if not isinstance(stmt, Select):
        if not single_shard:
            check_textual_scatter(compiled.sql, known_query=True)
        return ScatterPlan(
            compiled=compiled,
            shard_compiled=compiled,
            params=compiled.construct_params(params),
            kind="concat",
        )
    # The shape depends on the statement's structure only, which a compiled
    # statement (cached by structure) stands for: work it out once per compiled.
    shape = compiled.derived.get("scatter_shape")
    if shape is None:
        kinds = [_aggregate_kind(c) for c in stmt._result_columns]
        order_kinds = [_aggregate_kind(_order_element(o)) for o in stmt._order_by]
        having_aggs = any(_contains_aggregate(h) for h in stmt._having)
        grouped = bool(stmt._group_by or any(kinds) or any(order_kinds) or having_aggs)
        shape = compiled.derived["scatter_shape"] = (kinds, grouped)
    kinds, grouped = shape
    if grouped:
        return _plan_aggregate(stmt, compiled, params, kinds)
    return _plan_rows(stmt, compiled, params)


def _plan_rows(
    stmt: Select, compiled: CompiledStatement, params: Mapping[str, Any] | None
) -> ScatterPlan:
    n = len(compiled.result_keys)
    extra: list[ColumnElement] = []
    order: list[m.OrderKey] = []
    for (idx, desc, nulls_first), o in zip(compiled.order_by, stmt._order_by):
        if idx is None:
            el = _order_element(o)
            if stmt._distinct and not stmt._distinct_on:
                raise InvalidRequestError(
                    f"ORDER BY {_describe(el)}: for SELECT DISTINCT, ORDER BY expressions "
                    "must appear in the select list (PostgreSQL's rule); add the column"
                )
            idx = n + len(extra)
            extra.append(el)
        order.append((idx, desc, nulls_first))
    distinct: list[int] | None = None
    if stmt._distinct_on:
        distinct = []
        for d in stmt._distinct_on:
            i = _find(stmt._result_columns, d)
            if i is None:
                i = _find(extra, d)
                i = n + (i if i is not None else len(extra))
                if i == n + len(extra):
                    extra.append(d)
            distinct.append(i)
    elif stmt._distinct:
        distinct = list(range(n))
    shard_stmt = stmt.add_columns(*_hidden(extra)) if extra else stmt
    shard_compiled = compile_statement(shard_stmt) if extra else compiled
    limit, offset = (_int(v, w) for v, w in zip(compiled.limit_offset(params), ("limit", "offset")))
    overrides: dict[str, Any] = {}
    if limit is not None:
        overrides["limit"] = limit + (offset or 0)
    if compiled.offset_ref is not None:
        overrides["offset"] = 0
    return ScatterPlan(
        compiled=compiled,
        shard_compiled=shard_compiled,
        params=shard_compiled.construct_params(params, **overrides),
        kind="merge" if order else "concat",
        order=order,
        offset=offset or None,
        limit=limit,
        distinct=distinct,
    )


def _plan_aggregate(
    stmt: Select,
    compiled: CompiledStatement,
    params: Mapping[str, Any] | None,
    kinds: list[str | None],
) -> ScatterPlan:
    cols = stmt._result_columns
    n = len(cols)
    extra: list[ColumnElement] = []
    specs: list[m.AggregateSpec] = []

    def add(el: ColumnElement) -> int:
        extra.append(el)
        return n + len(extra) - 1

    def spec_for(el: Any, kind: str | None, at: int | None, is_key: bool) -> m.AggregateSpec:
        # *at*: the shard-row column already holding *el*, or None to add it.
        if kind == "avg":
            fn = _unlabel(el)
            if len(fn.clauses) != 1:
                raise InvalidRequestError(f"{_describe(fn)}: avg() takes one argument")
            arg = fn.clauses[0]
            return ("avg", add(func.sum(arg)), add(func.count(arg)))
        src = at if at is not None else add(el)
        if kind is not None:
            return (kind, src)
        return ("key" if is_key else "any", src)

    group_src: list[int] = []
    for g_idx in compiled.group_by:
        group_src.append(g_idx if g_idx is not None else -1)
    for i, (col, kind) in enumerate(zip(cols, kinds)):
        specs.append(spec_for(col, kind, i, i in group_src))
    # GROUP BY expressions that are not result columns still key the groups.
    for k, g in enumerate(stmt._group_by):
        if group_src[k] == -1:
            group_src[k] = add(g)
            specs.append(("key", group_src[k]))
    order: list[m.OrderKey] = []
    for (idx, desc, nulls_first), o in zip(compiled.order_by, stmt._order_by):
        if idx is None:
            el = _order_element(o)
            at = next(
                (
                    out
                    for out, sp in enumerate(specs)
                    if sp[0] == "key" and _same_column(_shard_expr(stmt, extra, sp[1]), el)
                ),
                None,
            )
            if at is None:
                specs.append(spec_for(el, _aggregate_kind(el), None, False))
                at = len(specs) - 1
            idx = at
        order.append((idx, desc, nulls_first))
    having = None
    kept_having = [h for h in stmt._having if not _contains_aggregate(h)]
    if len(kept_having) != len(stmt._having):

        def leaf(el: Any) -> int:
            if _contains_aggregate(el) and not _is_aggregate_call(el):
                raise InvalidRequestError(
                    f"HAVING {_describe(el)}: this expression over aggregates cannot be "
                    f"evaluated by the coordinator; {_ONE_SHARD}"
                )
            specs.append(spec_for(el, _aggregate_kind(el), None, False))
            return len(specs) - 1

        moved = [h for h in stmt._having if _contains_aggregate(h)]
        having = m.having_test(moved, params, leaf)
    distinct: list[int] | None = None
    if stmt._distinct_on:
        distinct = []
        for d in stmt._distinct_on:
            i = _find(cols, d)
            if i is None:
                raise InvalidRequestError(
                    f"DISTINCT ON ({_describe(d)}) with aggregates: select the DISTINCT ON "
                    "expressions as result columns"
                )
            distinct.append(i)
    elif stmt._distinct:
        distinct = list(range(n))
    shard_stmt = stmt.add_columns(*_hidden(extra)) if extra else stmt
    shard_stmt = shard_stmt.order_by(None).limit(None).offset(None)
    if having is not None:
        shard_stmt = shard_stmt._generate()
        shard_stmt._having = kept_having
    shard_compiled = compile_statement(shard_stmt)
    limit, offset = (_int(v, w) for v, w in zip(compiled.limit_offset(params), ("limit", "offset")))
    return ScatterPlan(
        compiled=compiled,
        shard_compiled=shard_compiled,
        params=shard_compiled.construct_params(params),
        kind="aggregate",
        order=order,
        offset=offset or None,
        limit=limit,
        distinct=distinct,
        group=group_src,
        specs=specs,
        having=having,
    )


def _shard_expr(stmt: Select, extra: list[ColumnElement], index: int) -> Any:
    cols = stmt._result_columns
    return cols[index] if index < len(cols) else extra[index - len(cols)]


# -- running -----------------------------------------------------------------------


class _ShardStreams:
    """The open server-side cursors of one streamed plan, closed if the result stops early."""

    def __init__(self, handles: Sequence[Any], chunk: int) -> None:
        self.handles = handles
        self.chunk = chunk
        self.cursors: dict[int, int] = {}  # position of the handle -> open cursor id

    def stream(self, pos: int, first: Any) -> Iterator[Row]:
        reply = first
        while True:
            if reply.cursor is not None:
                self.cursors[pos] = reply.cursor
            else:
                self.cursors.pop(pos, None)
            yield from reply.rows
            if reply.cursor is None:
                return
            reply = self.handles[pos].request(FetchMore(reply.cursor, self.chunk))

    def close(self) -> None:
        calls = [(self.handles[pos], CloseCursor(cur)) for pos, cur in self.cursors.items()]
        self.cursors.clear()
        if calls:
            gather(calls)


def execute_plan(
    plan: ScatterPlan,
    handles: Mapping[str, Any],
    *,
    stream_chunk: int | None = None,
    tag_shard: bool = False,
    row_processor: Callable[[Row], Any] | None = None,
    on_close: Callable[[], None] | None = None,
) -> Result:
    """Run *plan* on every shard of *handles* and return the merged, lazy result.

    The statement is sent to every shard before any reply is awaited.  With
    *stream_chunk*, each shard opens a server-side cursor and sends *stream_chunk* rows
    at a time (:class:`~shardsession.protocol.FetchMore` as the merge needs more);
    closing the result early closes the cursors still open.  Without it every shard
    returns all its rows at once.

    :param plan: from :func:`plan_select`.
    :param handles: shard id -> checked-out worker handle (one per target shard).
    :param stream_chunk: rows per fetch when streaming; None fetches everything.
    :param tag_shard: append the id of the shard each row came from as the last
        value of every row (result key ``"__shard__"``), for building identity keys.
    :param row_processor: converts each merged row (with its tag, if any); the
        default applies the statement's result processors
        (:meth:`~shardsession.sql.compiled.CompiledStatement.process_row`) to the
        result columns, if it has any.
    :param on_close: called once when the result is closed, exhausted or fails
        (after the open cursors are closed), e.g. to check the handles back in.
    """
    shards = list(handles)
    shard_handles = [handles[s] for s in shards]
    request = plan.request(stream_chunk=stream_chunk)
    replies = gather([(h, request) for h in shard_handles])
    compiled = plan.compiled
    if row_processor is None and compiled.result_processors:
        if tag_shard:

            def row_processor(row: Row) -> Row:
                return (*compiled.process_row(row[:-1]), row[-1])

        else:
            row_processor = compiled.process_row
    keys = (*plan.keys, "__shard__") if tag_shard else plan.keys

    def tag(rows: Iterable[Row], shard: str) -> Iterator[Row]:
        for r in rows:
            yield (*r, shard)

    if not stream_chunk:
        plain = plan.kind == "concat" and plan.limit is None and plan.distinct is None
        rowcount = sum(r.rowcount for r in replies) if plain else -1
        streams: list[Iterable[Row]] = [r.rows for r in replies]
        if tag_shard:
            # every row is here already: tag them in one pass per shard
            streams = [[(*r, s) for r in rows] for rows, s in zip(streams, shards)]
        merged = plan.merge(streams, tagged=tag_shard)
        return Result(
            keys, merged, rowcount=rowcount, row_processor=row_processor, on_close=on_close
        )
    cursors = _ShardStreams(shard_handles, stream_chunk)
    streams = [cursors.stream(pos, reply) for pos, reply in enumerate(replies)]
    if tag_shard:
        streams = [tag(rows, s) for rows, s in zip(streams, shards)]
    for pos, reply in enumerate(replies):
        if reply.cursor is not None:
            cursors.cursors[pos] = reply.cursor

    def close() -> None:
        try:
            cursors.close()
        finally:
            if on_close is not None:
                on_close()

    merged = plan.merge(streams, tagged=tag_shard)
    return Result(keys, merged, row_processor=row_processor, on_close=close)
