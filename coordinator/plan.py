"""Planning one SELECT for several shards: what each shard runs, how rows merge.

The result must equal what one database holding every shard's rows would return:

* plain SELECT: every shard runs it; rows are concatenated;
* ORDER BY: every shard sorts; the coordinator k-way merges on the ORDER BY
  values, which travel as hidden columns (``_ss_o0``, ...) dropped afterwards;
* LIMIT / OFFSET: each shard returns ``offset + limit`` rows, no OFFSET; the
  coordinator skips and cuts once, after merging;
* DISTINCT / DISTINCT ON: de-duplicated again after merging, before LIMIT;
* ``count``/``sum``/``min``/``max``/``avg``, whole-table or with GROUP BY: each
  shard returns partial aggregates per group (``avg`` as a hidden sum and
  count); the coordinator combines them per group, applies HAVING (moved off
  the shards when it tests aggregates), sorts, de-duplicates, cuts.

What cannot be combined exactly raises :class:`~shardsession.exc.CrossShardError`
naming the fix: ``count``/``sum``/``avg`` of DISTINCT, other aggregates
(``array_agg``, ``string_agg``, ``stddev`` ...), aggregates inside expressions
(``count(*) + 1``), window functions, aggregates over whole entities, and
ORDER BY on text under a collation other than ``C`` (Python compares text as
``C`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardsession.coordinator import merge as m
from shardsession.coordinator import selectparts as parts
from sqlalchemy import func, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.orm import Mapper
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    CollationClause,
    Label,
    Over,
    UnaryExpression,
)
from sqlalchemy.sql.functions import FunctionElement

from shardsession.exc import CrossShardError

__all__ = ["Plan", "plan_select"]

Row = tuple[Any, ...]

_COMBINABLE = frozenset({"count", "sum", "min", "max", "avg"})
_OTHER_AGGREGATES = frozenset(
    "array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg xmlagg "
    "bool_and bool_or every bit_and bit_or bit_xor stddev stddev_pop stddev_samp variance "
    "var_pop var_samp corr covar_pop covar_samp regr_avgx regr_avgy regr_count "
    "regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy mode percentile_cont "
    "percentile_disc range_agg range_intersect_agg".split()
)
_ONE_SHARD = "run it on one shard (bind_arguments={'shard_id': ...})"
# collations that order text by code point, as Python compares str
_C_COLLATIONS = frozenset({"C", "POSIX", "ucs_basic", "C.UTF-8", "C.utf8"})


@dataclass
class Plan:
    """How one SELECT runs on several shards.

    Column references are label names (``_ss_*``) or result positions; they are
    turned into positions in the shards' rows once the shards answer
    (:meth:`positions`).
    """

    statement: Any  # what every shard runs
    width: int  # columns of the original statement's rows
    entities: bool  # rows hold ORM entities: each shard's rows are built on its own
    order: list[tuple[Any, bool, bool]] = field(default_factory=list)  # (ref, desc, nulls 1st)
    text_order: bool = False
    offset: int | None = None
    limit: int | None = None
    distinct: list[Any] | None = None  # refs of the DISTINCT [ON] key, None: no DISTINCT
    aggregate: bool = False
    specs: list[tuple[Any, ...]] = field(default_factory=list)  # per shard-row column
    group: list[Any] = field(default_factory=list)
    having: Callable[[Row], bool] | None = None
    #: after merging rows of entities: (shard, position in that shard's rows) in the
    #: final order, or None when the shards' rows are simply concatenated
    merged_order: list[tuple[Any, int]] | None = None

    @property
    def concatenates(self) -> bool:
        """Whether the result is just every shard's rows one after the other."""
        return not (self.aggregate or self.order or self.distinct is not None
                    or self.offset or self.limit is not None)  # fmt: skip

    def positions(self, names: Sequence[str]) -> Callable[[Any], int]:
        """A resolver from column references to positions in rows with these names."""
        index = {n: i for i, n in enumerate(names)}

        def at(ref: Any) -> int:
            if isinstance(ref, int):
                return ref
            if ref not in index:
                raise CrossShardError(
                    "this SELECT's rows cannot be merged across shards (SQLAlchemy moved "
                    f"the helper column {ref!r} into a subquery, as it does for joined eager "
                    "loading of collections with LIMIT); use selectinload() instead of "
                    f"joinedload(), or {_ONE_SHARD}"
                )
            return index[ref]

        return at


def _unlabel(el: Any) -> Any:
    while isinstance(el, Label):
        el = el.element
    return el


def _describe(el: Any) -> str:
    try:
        return str(el)
    except Exception:
        return type(el).__name__


def _walk(el: Any) -> Any:
    yield el
    for child in el.get_children():
        yield from _walk(child)


def _function_name(el: Any) -> str | None:
    return el.name.lower() if isinstance(el, FunctionElement) and hasattr(el, "name") else None


def _contains_aggregate(el: Any) -> bool:
    for node in _walk(el):
        if isinstance(node, Over):
            raise CrossShardError(
                f"{_describe(el)}: window functions see only one shard's rows; {_ONE_SHARD}"
            )
        name = _function_name(node)
        if name in _COMBINABLE or name in _OTHER_AGGREGATES:
            return True
    return False


def _aggregate_kind(el: Any) -> str | None:
    """The combinable aggregate ``el`` is (``count``, ...), None if it holds none.

    :raises CrossShardError: for an aggregate that cannot be combined exactly.
    """
    u = _unlabel(el)
    name = _function_name(u)
    if name in _COMBINABLE:
        for arg in u.clauses:
            distinct_arg = operators.distinct_op in (arg.operator, arg.modifier) if isinstance(
                arg, UnaryExpression
            ) else False  # fmt: skip
            if distinct_arg:
                if name in ("count", "sum", "avg"):
                    raise CrossShardError(
                        f"{_describe(u)}: {name}(DISTINCT ...) over several shards cannot be "
                        "combined from per-shard results (a value may be on several shards); "
                        f"select the distinct values and count them in Python, or {_ONE_SHARD}"
                    )
        return name
    if name in _OTHER_AGGREGATES:
        raise CrossShardError(
            f"{_describe(u)}: {name}() cannot be combined from per-shard results; {_ONE_SHARD}"
        )
    if _contains_aggregate(u):
        raise CrossShardError(
            f"{_describe(u)}: an aggregate inside an expression cannot be combined across "
            f"shards; select the aggregate itself and compute the expression in Python, or "
            f"{_ONE_SHARD}"
        )
    return None


def _order_parts(clause: Any) -> tuple[Any, bool, bool]:
    """``(expression, descending, nulls_first)`` of one ORDER BY clause (PostgreSQL's
    defaults: NULLS LAST ascending, NULLS FIRST descending)."""
    desc, nulls_first = False, None
    el = clause
    while isinstance(el, UnaryExpression) and el.modifier in (
        operators.desc_op, operators.asc_op, operators.nulls_first_op, operators.nulls_last_op,
    ):  # fmt: skip
        if el.modifier is operators.desc_op:
            desc = True
        elif el.modifier is operators.nulls_first_op:
            nulls_first = True
        elif el.modifier is operators.nulls_last_op:
            nulls_first = False
        el = el.element
    return el, desc, desc if nulls_first is None else nulls_first


def _resolved_order(stmt: Any, clause: Any) -> tuple[Any, bool, bool]:
    el, desc, nulls_first = _order_parts(_resolve(stmt, clause))
    return _resolve(stmt, el), desc, nulls_first


def _resolve(stmt: Any, el: Any) -> Any:
    """The expression an ORDER BY / GROUP BY item stands for (labels and names resolved)."""
    inner = getattr(el, "element", None)
    kind = type(el).__name__
    if kind == "_label_reference":
        return _resolve(stmt, inner)
    if kind == "_textual_label_reference":
        for col in stmt.selected_columns:
            if getattr(col, "key", None) == inner or getattr(col, "name", None) == inner:
                return col
        raise CrossShardError(f"ORDER BY {inner!r}: no selected column has that name")
    return el


def _is_text(el: Any) -> bool:
    if isinstance(el, BinaryExpression) and el.operator is operators.collate:
        right = el.right
        if isinstance(right, CollationClause) and right.collation.strip('"') in _C_COLLATIONS:
            return False
    return isinstance(getattr(el, "type", None), sqltypes.String | sqltypes.Enum)


def _has_entities(stmt: Any) -> bool:
    for desc in getattr(stmt, "column_descriptions", ()) or ():
        insp = inspect(desc.get("expr"), raiseerr=False)
        if isinstance(insp, Mapper) or type(insp).__name__ == "AliasedInsp":
            return True
    return False


def plan_select(stmt: Any, params: Mapping[str, Any] | None) -> Plan:
    """Plan ``stmt`` (a :class:`~sqlalchemy.sql.Select`) for several shards.

    :raises CrossShardError: when the shards' rows cannot be combined exactly.
    """
    columns = list(stmt.selected_columns)
    order_by = parts.order_by(stmt)
    having = parts.having(stmt)
    entities = _has_entities(stmt)
    kinds = [] if entities else [_aggregate_kind(c) for c in columns]
    order_items = [_resolved_order(stmt, o) for o in order_by]
    grouped = bool(parts.group_by(stmt)) or any(kinds) or any(
        _contains_aggregate(h) for h in having
    ) or any(_contains_aggregate(e) for e, _, _ in order_items)  # fmt: skip
    width = len(stmt.column_descriptions)
    if grouped and entities:
        mixed = [*columns, *having, *(e for e, _, _ in order_items)]
        if any(_contains_aggregate(x) for x in mixed):
            raise CrossShardError(
                "aggregates grouped with whole ORM entities cannot be combined across shards; "
                "select the entity's columns (e.g. select(User.id, User.name, func.count(...)))"
                f" or {_ONE_SHARD}"
            )
        grouped = False  # grouping whole entities by their key: rows are already unique
    limit, offset = parts.limit_offset(stmt)
    if grouped:
        return _plan_aggregate(stmt, columns, kinds, order_items, having, params, limit, offset,
                               width)  # fmt: skip
    hidden: list[Any] = []
    order = []
    text_order = False
    for i, (el, desc, nulls_first) in enumerate(order_items):
        name = f"_ss_o{i}"
        hidden.append(el.label(name))
        order.append((name, desc, nulls_first))
        text_order = text_order or _is_text(el)
    distinct: list[Any] | None = None
    on = parts.distinct_on(stmt)
    if on:
        distinct = []
        for i, el in enumerate(on):
            name = f"_ss_d{i}"
            hidden.append(_resolve(stmt, el).label(name))
            distinct.append(name)
    elif parts.distinct(stmt):
        distinct = list(range(width)) if not entities else ["*"]
    shard_stmt = stmt.add_columns(*hidden) if hidden else stmt
    if limit is not None or offset:
        shard_stmt = shard_stmt.limit(None if limit is None else limit + (offset or 0))
        shard_stmt = shard_stmt.offset(None)
    return Plan(
        statement=shard_stmt, width=width, entities=entities, order=order,
        text_order=text_order, offset=offset or None, limit=limit, distinct=distinct,
    )  # fmt: skip


def _plan_aggregate(
    stmt: Any,
    columns: list[Any],
    kinds: list[str | None],
    order_items: list[tuple[Any, bool, bool]],
    having: tuple[Any, ...],
    params: Mapping[str, Any] | None,
    limit: int | None,
    offset: int | None,
    width: int,
) -> Plan:
    hidden: list[Any] = []
    specs: list[tuple[Any, ...]] = []  # one per column of the shards' rows, in order

    def add(expr: Any, spec_kind: str) -> int:
        # rows without entities hold the selected columns, then the hidden ones
        at = len(columns) + len(hidden)
        hidden.append(expr.label(f"_ss_a{len(hidden)}"))
        hidden_specs.append((spec_kind, at))
        return at

    hidden_specs: list[tuple[Any, ...]] = []
    group_exprs = [_resolve(stmt, g) for g in parts.group_by(stmt)]

    def is_key(el: Any) -> bool:
        u = _unlabel(el)
        return any(u.compare(_unlabel(g)) for g in group_exprs)

    def spec_for(el: Any, kind: str | None, at: Any) -> tuple[Any, ...]:
        if kind == "avg":
            fn = _unlabel(el)
            args = list(fn.clauses)
            if len(args) != 1:
                raise CrossShardError(f"{_describe(fn)}: avg() takes one argument")
            return ("avg", add(func.sum(args[0]), "sum"), add(func.count(args[0]), "count"))
        if kind is not None:
            return (kind, at)
        return ("key" if is_key(el) else "any", at)

    for i, (col, kind) in enumerate(zip(columns, kinds)):
        specs.append(spec_for(col, kind, i))
    group: list[Any] = []
    for g in group_exprs:
        at = next((i for i, c in enumerate(columns) if _unlabel(c).compare(_unlabel(g))), None)
        group.append(at if at is not None else add(g, "key"))
    order = []
    text_order = False
    for el, desc, nulls_first in order_items:
        at = next((i for i, c in enumerate(columns) if _unlabel(c).compare(_unlabel(el))), None)
        if at is None:
            kind = _aggregate_kind(el)
            if kind == "avg":
                order.append((("avg-of", spec_for(el, kind, None)), desc, nulls_first))
                continue
            at = add(el, kind or "key")
        order.append((at, desc, nulls_first))
        text_order = text_order or _is_text(el)
    having_test = None
    moved = [h for h in having if _contains_aggregate(h)]
    if moved:

        def leaf(el: Any) -> int:
            kind = _aggregate_kind(el)
            at = next((i for i, c in enumerate(columns) if _unlabel(c).compare(_unlabel(el))),
                      None)  # fmt: skip
            if at is not None:
                return at
            if kind == "avg":
                raise CrossShardError(
                    f"HAVING {_describe(el)}: select the avg() as a column to filter on it "
                    f"across shards, or {_ONE_SHARD}"
                )
            return add(el, kind or "key")

        having_test = m.having_test(moved, params, leaf)
    distinct: list[Any] | None = None
    on = parts.distinct_on(stmt)
    if on:
        distinct = []
        for el in on:
            at = next((i for i, c in enumerate(columns) if _unlabel(c).compare(_unlabel(el))),
                      None)  # fmt: skip
            if at is None:
                raise CrossShardError(
                    f"DISTINCT ON ({_describe(el)}) with aggregates: select the DISTINCT ON "
                    "expressions as columns"
                )
            distinct.append(at)
    elif parts.distinct(stmt):
        distinct = list(range(width))
    shard_stmt = stmt.add_columns(*hidden) if hidden else stmt
    shard_stmt = shard_stmt.order_by(None).limit(None).offset(None)
    if moved:
        shard_stmt = parts.without_having(shard_stmt)
    return Plan(
        statement=shard_stmt, width=width, entities=False, order=order, text_order=text_order,
        offset=offset or None, limit=limit, distinct=distinct, aggregate=True,
        specs=specs + hidden_specs, group=group, having=having_test,
    )  # fmt: skip


def merge_rows(plan: Plan, names: Sequence[str], streams: Sequence[list[Row]]) -> list[Row]:
    """Merge the shards' rows of ``plan`` (non-aggregate) into the final order.

    Each row must carry, as its last element, a tag the caller uses to tell the
    shards apart; tags are kept.
    """
    at = plan.positions(names)
    order = [(at(ref), desc, nulls_first) for ref, desc, nulls_first in plan.order]
    if order:
        rows = m.merge_sorted(streams, order)
    else:
        rows = m.concat(streams)
    if plan.distinct is not None:
        if plan.distinct == ["*"]:
            keys = [i for i, n in enumerate(names) if not n.startswith("_ss_")]
        else:
            keys = [at(ref) for ref in plan.distinct]
        rows = m.unique_rows(rows, keys)
    return list(m.offset_limit(rows, plan.offset, plan.limit))


def combine_aggregates(plan: Plan, names: Sequence[str], rows: list[Row]) -> list[Row]:
    """Combine the shards' partial aggregate rows of ``plan`` into the final rows
    (shaped like the shards' rows)."""
    at = plan.positions(names)

    def fix(spec: tuple[Any, ...]) -> tuple[Any, ...]:
        return (spec[0], *(at(ref) for ref in spec[1:]))

    specs = [fix(s) for s in plan.specs]
    group = [at(ref) for ref in plan.group]
    combined = list(m.combine_groups(rows, group, specs))
    if plan.having is not None:
        combined = [r for r in combined if plan.having(r)]
    order = []
    extra = 0
    for ref, desc, nulls_first in plan.order:
        if isinstance(ref, tuple) and ref[0] == "avg-of":
            _, s_at, c_at = fix(ref[1])
            combined = [(*r, m._avg(r[s_at], r[c_at])) for r in combined]
            order.append((len(specs) + extra, desc, nulls_first))
            extra += 1
        else:
            order.append((at(ref), desc, nulls_first))
    if order:
        combined = m.sort_rows(combined, order)
    if extra:
        combined = [r[: len(specs)] for r in combined]
    if plan.distinct is not None:
        combined = list(m.unique_rows(combined, plan.distinct))
    return list(m.offset_limit(combined, plan.offset, plan.limit))


def needs_c_collation(plan: Plan, collations: Sequence[str]) -> None:
    """Raise when ``plan`` orders text and a shard's collation is not ``C``."""
    if not plan.text_order:
        return
    bad = sorted({c for c in collations if c not in _C_COLLATIONS})
    if bad:
        raise CrossShardError(
            f"ORDER BY on text across shards whose collation is {bad[0]!r}: the coordinator "
            "merges text in byte order (collation C) and would return a different order "
            "than PostgreSQL. Order by expr.collate('C'), use databases created with "
            f"LC_COLLATE 'C', or {_ONE_SHARD}"
        )
