"""Routing information extracted while a SELECT / DML statement is compiled.

The coordinator routes a statement and merges the shards' results with what this
module records in the :class:`~shardsession.sql.compiled.CompiledStatement`: the
guaranteed equality conditions of the WHERE clause, the ORDER BY keys, aggregates,
GROUP BY, LIMIT / OFFSET and the entities selected.
"""

from __future__ import annotations

from typing import Any

from shardsession.sql.columns import ColumnClause
from shardsession.sql.elements import ClauseElement, ColumnElement
from shardsession.sql.expressions import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    InList,
    Label,
    UnaryExpression,
)
from shardsession.sql.functions import Function
from shardsession.sql.selectable import Alias, FromClause, Join

__all__ = ["RoutingMixin"]


def _unwrap_label(col: ColumnElement) -> ColumnElement:
    while isinstance(col, Label):
        col = col.element
    return col


def _table_name(f: Any) -> str | None:
    if f is None:
        return None
    base = f._base_table() if isinstance(f, FromClause) else f
    return getattr(base, "fullname", None)


class RoutingMixin:
    """Compiler methods filling the routing fields of a compiled statement."""

    bind_ref: Any
    anon: dict[int, str]

    def _result_info(self, sel: Any, info: dict[str, Any]) -> None:
        cols = sel._result_columns
        info["result_keys"] = tuple(c._result_name or f"anon_{i + 1}" for i, c in enumerate(cols))
        info["result_names"] = tuple(sel._output_names())
        procs = [c.type.result_processor() for c in cols]
        info["_result_processors"] = tuple(procs) if any(procs) else None
        ents = []
        for item in getattr(sel, "_entities", None) or getattr(sel, "_returning", ()):
            if item.entity is not None:
                name = getattr(item.entity, "__name__", None) or type(item.entity).__name__
                pk = []
                for pcol in getattr(item.from_, "primary_key", ()):
                    pos = next((i for i, c in enumerate(item.columns) if c is pcol), None)
                    pk.append(None if pos is None else item.start + pos)
                ents.append(
                    (
                        name,
                        _table_name(item.from_),
                        item.start,
                        item.start + len(item.columns),
                        tuple(pk),
                    )
                )
        info["entities"] = tuple(ents)
        info["entity"] = ents[0][0] if ents else None

    def _index_of(self, cols: list[ColumnElement], el: ColumnElement) -> int | None:
        for i, c in enumerate(cols):
            if c is el or _unwrap_label(c) is el:
                return i
        if isinstance(el, ColumnClause) and el.table is not None:
            for i, c in enumerate(cols):
                u = _unwrap_label(c)
                if isinstance(u, ColumnClause) and u.table is el.table and u.name == el.name:
                    return i
        return None

    def _select_info(self, sel: Any, froms: list[FromClause], info: dict[str, Any]) -> None:
        self._result_info(sel, info)
        cols = sel._result_columns
        main = next((e.from_ for e in sel._entities if e.from_ is not None), None)
        if main is None and froms:
            main = froms[0]
            while isinstance(main, Join):
                main = main.left
        info["table"] = _table_name(main)
        order = []
        for o in sel._order_by:
            el, desc, nulls = o, False, None
            if isinstance(o, UnaryExpression) and o.operator is None:
                el, desc = o.element, o.modifier == "DESC"
                nulls = {"FIRST": True, "LAST": False}.get(o.nulls or "")
            order.append((self._index_of(cols, el), desc, nulls))
        info["order_by"] = tuple(order)
        info["group_by"] = tuple(self._index_of(cols, g) for g in sel._group_by)
        aggs = []
        for i, c in enumerate(cols):
            u = _unwrap_label(c)
            if isinstance(u, Function) and u.is_aggregate:
                distinct = any(
                    isinstance(a, UnaryExpression) and a.operator == "DISTINCT" for a in u.clauses
                )
                aggs.append((i, u.name.lower() + ("_distinct" if distinct else "")))
        info["aggregates"] = tuple(aggs)
        info["distinct"] = sel._distinct
        info["for_update"] = sel._for_update is not None
        info["limit_ref"] = self.bind_ref(sel._limit) if sel._limit is not None else None
        info["offset_ref"] = self.bind_ref(sel._offset) if sel._offset is not None else None
        info["equality_refs"] = self._equality_refs(sel._where, main)

    def _equality_refs(self, where: list[ClauseElement], main: Any) -> tuple[Any, ...]:
        out = []
        stack = list(where)
        while stack:
            c = stack.pop(0)
            if isinstance(c, BooleanClauseList) and c.operator == "AND":
                stack[:0] = c.clauses
                continue
            col: Any = None
            ref: Any = None
            is_list = False
            if isinstance(c, BinaryExpression) and c.operator == "=":
                for a, b in ((c.left, c.right), (c.right, c.left)):
                    if (
                        isinstance(a, ColumnClause)
                        and a.table is not None
                        and isinstance(b, BindParameter)
                    ):
                        col, ref = a, self.bind_ref(b)
                        break
            elif isinstance(c, InList) and not c.negate and isinstance(c.left, ColumnClause):
                if c.left.table is not None:
                    col, ref, is_list = c.left, self.bind_ref(c.right, True), True
            if col is None:
                continue
            tbl = col.table
            if isinstance(tbl, Alias):
                qname = tbl.name or self.anon.get(id(tbl)) or "anon"
            elif hasattr(tbl, "fullname"):
                qname = tbl.fullname
            else:
                # A subquery's or join's column says nothing certain about a table row.
                continue
            base = col._base()
            # Only conditions on the main FROM itself count for it (not on an alias of
            # the same table in a self-join).
            key = base.key if tbl is main else None
            out.append((key, (qname, base.key), ((ref, is_list),)))
        return tuple(out)
