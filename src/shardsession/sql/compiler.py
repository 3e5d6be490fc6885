"""Compiling statements to PostgreSQL text for psycopg, with a structural cache.

:func:`compile_statement` computes a statement's structural key (its shape with the
literal values taken out, see :class:`~shardsession.sql.elements.KeyContext`), looks
it up in an LRU cache and compiles only on a miss.  The result is a
:class:`~shardsession.sql.compiled.CompiledStatement` carrying the statement's own
literal values.  Identifiers are always quoted; values are always parameters.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from shardsession.exc import ArgumentError, CompileError
from shardsession.sql import types as sqltypes
from shardsession.sql.columns import ColumnClause
from shardsession.sql.compiled import CompiledStatement
from shardsession.sql.dmlcompiler import DMLCompilerMixin
from shardsession.sql.elements import ClauseElement, ColumnElement, KeyContext
from shardsession.sql.expressions import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    InList,
    Label,
    UnaryExpression,
)
from shardsession.sql.functions import Function
from shardsession.sql.quoting import quote_ident, quote_literal, quote_qualified
from shardsession.sql.routing import RoutingMixin
from shardsession.sql.selectable import Alias, Join, Subquery, _covered
from shardsession.sql.selects import Select, TextualSelect
from shardsession.sql.textual import TextClause

__all__ = ["cache_info", "clear_cache", "compile_statement"]

_CACHE_SIZE = 2000
_cache: OrderedDict[Any, tuple[CompiledStatement, list[Any]]] = OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def cache_info() -> dict[str, int]:
    """Return ``{"hits", "misses", "size"}`` of the compiled-statement cache."""
    with _lock:
        return {**_stats, "size": len(_cache)}


def clear_cache() -> None:
    """Empty the compiled-statement cache and reset its counters."""
    with _lock:
        _cache.clear()
        _stats["hits"] = _stats["misses"] = 0


def compile_statement(stmt: Any, column_keys: Iterable[str] | None = None) -> CompiledStatement:
    """Compile *stmt* (cached by structure) and return it with its literal values.

    :param stmt: a SELECT / INSERT / UPDATE / DELETE / ``text()`` statement, or an
        object with ``__clause_element__()`` returning one.
    :param column_keys: the keys of the execution parameters; they choose the columns
        of an INSERT or UPDATE without ``values()`` (and are ignored otherwise).
    """
    if not isinstance(stmt, ClauseElement) and hasattr(stmt, "__clause_element__"):
        stmt = stmt.__clause_element__()
    if not isinstance(stmt, ClauseElement):
        raise ArgumentError(f"cannot compile {stmt!r}: not a SQL statement")
    ctx = KeyContext()
    key: Any = stmt._key(ctx)
    needs_keys = (
        getattr(stmt, "__visit_name__", None) in ("insert", "update")
        and not getattr(stmt, "_values", None)
        and not getattr(stmt, "_multi_values", None)
        and getattr(stmt, "_from_select", None) is None
    )
    if needs_keys:
        key = (key, tuple(sorted(column_keys or ())))
    with _lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            _stats["hits"] += 1
    if entry is None:
        template = _Compiler(ctx.bind_index).compile_top(
            stmt, tuple(column_keys or ()) if needs_keys else ()
        )
        with _lock:
            _stats["misses"] += 1
            _cache[key] = (template, ctx.refs)
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        entry = (template, ctx.refs)
    return entry[0]._with_values(tuple(ctx.values))


def sql_text(el: ClauseElement) -> str:
    """Return the SQL of a statement or of an expression fragment (for display)."""
    if isinstance(el, Select | TextualSelect | TextClause) or el.__visit_name__ in (
        "insert",
        "update",
        "delete",
    ):
        return compile_statement(el).sql
    ctx = KeyContext()
    el._key(ctx)
    return _Compiler(ctx.bind_index).process(el, enclosing=set())


def _esc(s: str) -> str:
    return s.replace("%", "%%")


def _array_type(t: sqltypes.TypeEngine) -> str | None:
    if isinstance(t, sqltypes.Integer):
        return "BIGINT[]"
    if isinstance(t, sqltypes.String):
        return "TEXT[]"
    if isinstance(t, sqltypes.JSON) and not isinstance(t, sqltypes.JSONB):
        return None
    if isinstance(t, sqltypes.Numeric):
        return "NUMERIC[]"
    if isinstance(t, sqltypes.NullType):
        return None
    return t.ddl() + "[]"


class _Compiler(RoutingMixin, DMLCompilerMixin):
    def __init__(self, bind_index: dict[int, int]) -> None:
        self.bind_index = bind_index
        self.sources: list[tuple[Any, ...]] = []
        self.anon: dict[int, str] = {}
        self.callables: list[Any] = []
        self.tables: dict[str, None] = {}
        self.dml_target: Any = None

    # -- entry point --------------------------------------------------------

    def compile_top(self, stmt: ClauseElement, column_keys: tuple[str, ...]) -> CompiledStatement:
        info: dict[str, Any] = {
            "result_keys": (),
            "result_names": (),
            "returning": (),
            "table": None,
            "entity": None,
            "entities": (),
            "equality_refs": (),
            "order_by": (),
            "aggregates": (),
            "group_by": (),
            "limit_ref": None,
            "offset_ref": None,
            "distinct": False,
            "for_update": False,
            "rows": 0,
            "insert_refs": (),
            "_result_processors": None,
        }
        if isinstance(stmt, Select):
            sql = self.visit_select(stmt, enclosing=set(), top=info)
            kind = "select"
        elif isinstance(stmt, TextualSelect):
            sql = self.process(stmt.element)
            kind = "select"
            self._result_info(stmt, info)
        elif isinstance(stmt, TextClause):
            sql = self.process(stmt)
            kind = "text"
        elif stmt.__visit_name__ in ("insert", "update", "delete"):
            kind = stmt.__visit_name__
            sql = getattr(self, f"visit_{kind}")(stmt, column_keys, info)
        else:
            raise CompileError(f"{type(stmt).__name__} is not an executable statement")
        return CompiledStatement(
            sql=sql,
            kind=kind,
            param_sources=tuple(self.sources),
            literal_values=(),
            tables=tuple(self.tables),
            _callables=self.callables,
            **info,
        )

    def process(self, el: ClauseElement, **kw: Any) -> str:
        return getattr(self, "visit_" + el.__visit_name__)(el, **kw)  # type: ignore[no-any-return]

    def operand(self, el: ClauseElement, prec: int, **kw: Any) -> str:
        s = self.process(el, **kw)
        return f"({s})" if el._precedence <= prec else s

    # -- binds --------------------------------------------------------------

    def bind_ref(self, bp: BindParameter, expanding: bool = False) -> tuple[Any, ...]:
        idx = self.bind_index.get(id(bp), -1) if bp._has_value else -1
        tag = bp.type.bind_processor_tag()
        exp = expanding or bp.expanding
        if bp.key is None:
            if idx < 0:
                raise CompileError("internal error: a literal value was not collected")
            return ("l", idx, tag, exp)
        return ("k", bp.key, idx, tag, exp)

    def visit_bindparam(self, bp: BindParameter, **kw: Any) -> str:
        self.sources.append(self.bind_ref(bp))
        return "%s"

    # -- simple elements ----------------------------------------------------

    def visit_constant(self, el: Any, **kw: Any) -> str:
        return el._sql  # type: ignore[no-any-return]

    def from_name(self, f: Any) -> str:
        if isinstance(f, Alias | Subquery):
            name = f.name
            if name is None:
                name = self.anon.get(id(f))
                if name is None:
                    name = self.anon[id(f)] = f"anon_{len(self.anon) + 1}"
            return quote_ident(name)
        return _esc(quote_qualified(f.name, getattr(f, "schema", None)))

    def visit_column(self, col: ColumnClause, **kw: Any) -> str:
        name = _esc(quote_ident(col.name))
        if col.table is None or (self.dml_target is not None and col.table is self.dml_target):
            return name
        return f"{self.from_name(col.table)}.{name}"

    def visit_literal_column(self, col: ColumnClause, **kw: Any) -> str:
        return _esc(col.name)

    def visit_text(self, t: TextClause, **kw: Any) -> str:
        return "".join(_esc(p) if isinstance(p, str) else self.visit_bindparam(p) for p in t._parts)

    def visit_binary(self, b: BinaryExpression, **kw: Any) -> str:
        left = self.operand(b.left, b._precedence, **kw)
        right = self.operand(b.right, b._precedence, **kw)
        s = f"{left} {_esc(b.operator)} {right}"
        if b.escape is not None:
            s += " ESCAPE " + _esc(quote_literal(b.escape))
        return s

    def visit_in_list(self, el: InList, **kw: Any) -> str:
        left = self.operand(el.left, 4, **kw)
        self.sources.append(self.bind_ref(el.right, expanding=True))
        arr = _array_type(el.left.type)
        param = f"%s::{arr}" if arr else "%s"
        return f"{left} <> ALL({param})" if el.negate else f"{left} = ANY({param})"

    def visit_between(self, el: Any, **kw: Any) -> str:
        sym = "SYMMETRIC " if el.symmetric else ""
        return (
            f"{self.operand(el.expr, 4, **kw)} BETWEEN {sym}{self.operand(el.lower, 4, **kw)} "
            f"AND {self.operand(el.upper, 4, **kw)}"
        )

    def visit_unary(self, el: UnaryExpression, **kw: Any) -> str:
        if el.operator == "NOT":
            s = f"NOT {self.operand(el.element, 3, **kw)}"
        elif el.operator == "-":
            s = f"-{self.operand(el.element, 9, **kw)}"
        elif el.operator == "DISTINCT":
            s = f"DISTINCT {self.operand(el.element, 4, **kw)}"
        else:
            s = (
                self.operand(el.element, 4, **kw)
                if el.modifier or el.nulls
                else self.process(el.element, **kw)
            )
        if el.modifier:
            s += f" {el.modifier}"
        if el.nulls:
            s += f" NULLS {el.nulls}"
        return s

    def visit_boolean_list(self, el: BooleanClauseList, **kw: Any) -> str:
        return f" {el.operator} ".join(self.operand(c, el._precedence, **kw) for c in el.clauses)

    def visit_clause_list(self, el: Any, **kw: Any) -> str:
        return ", ".join(self.process(c, **kw) for c in el.clauses)

    def visit_tuple(self, el: Any, **kw: Any) -> str:
        return "(" + ", ".join(self.process(c, **kw) for c in el.clauses) + ")"

    def visit_grouping(self, el: Any, **kw: Any) -> str:
        return f"({self.process(el.element, **kw)})"

    def visit_label(self, el: Label, **kw: Any) -> str:
        return self.process(el.element, **kw)

    def visit_cast(self, el: Any, **kw: Any) -> str:
        return f"CAST({self.process(el.element, **kw)} AS {el.type.ddl()})"

    def visit_case(self, el: Any, **kw: Any) -> str:
        parts = ["CASE"]
        if el.value is not None:
            parts.append(self.process(el.value, **kw))
        for cond, result in el.whens:
            parts.append(f"WHEN {self.process(cond, **kw)} THEN {self.process(result, **kw)}")
        if el.else_ is not None:
            parts.append(f"ELSE {self.process(el.else_, **kw)}")
        parts.append("END")
        return " ".join(parts)

    def visit_function(self, fn: Function, **kw: Any) -> str:
        name = ".".join((*fn.packages, fn.name))
        if not fn.clauses and fn.name.lower() == "count":
            return f"{name}(*)"
        return f"{name}({', '.join(self.process(c, **kw) for c in fn.clauses)})"

    def visit_scalar_select(self, el: Any, enclosing: set[int] | None = None, **kw: Any) -> str:
        return f"({self.visit_select(el.element, enclosing=enclosing or set())})"

    def visit_exists(self, el: Any, enclosing: set[int] | None = None, **kw: Any) -> str:
        return f"EXISTS ({self.visit_select(el.element, enclosing=enclosing or set())})"

    def visit_textual_select(self, el: TextualSelect, **kw: Any) -> str:
        return self.process(el.element)

    # -- FROM ---------------------------------------------------------------

    def visit_table(self, t: Any, asfrom: bool = False, **kw: Any) -> str:
        self.tables[t.fullname] = None
        return self.from_name(t)

    def visit_alias(self, a: Alias, **kw: Any) -> str:
        inner = self.process(a.element, asfrom=True)
        return f"{inner} AS {self.from_name(a)}"

    def visit_subquery(self, sq: Subquery, **kw: Any) -> str:
        el = sq.element
        inner = (
            self.visit_select(el, enclosing=set()) if isinstance(el, Select) else self.process(el)
        )
        return f"({inner}) AS {self.from_name(sq)}"

    def visit_join(self, j: Join, asfrom: bool = True, **kw: Any) -> str:
        left = self.process(j.left, asfrom=True, **kw)
        right = self.process(j.right, asfrom=True, **kw)
        if isinstance(j.right, Join):
            right = f"({right})"
        kind = "FULL OUTER JOIN" if j.full else "LEFT OUTER JOIN" if j.isouter else "JOIN"
        return f"{left} {kind} {right} ON {self.process(j.onclause, **kw)}"

    # -- SELECT -------------------------------------------------------------

    def _order_key(self, sel: Any, el: ColumnElement, **kw: Any) -> str:
        unary = isinstance(el, UnaryExpression) and el.operator is None
        target = el.element if unary else el  # type: ignore[attr-defined]
        names = sel._output_names()
        for col, name in zip(sel._result_columns, names):
            if col is target and isinstance(target, Label):
                s = _esc(quote_ident(name))
                break
        else:
            return self.process(el, **kw)
        if unary:
            s += f" {el.modifier}" if el.modifier else ""  # type: ignore[attr-defined]
            s += f" NULLS {el.nulls}" if el.nulls else ""  # type: ignore[attr-defined]
        return s

    def visit_select(
        self,
        sel: Select,
        enclosing: set[int] | None = None,
        top: dict[str, Any] | None = None,
        **kw: Any,
    ) -> str:
        froms = sel._get_froms(enclosing)
        inner = set(enclosing or ()) | _covered(froms)
        kw = {"enclosing": inner}
        if not sel._result_columns:
            raise CompileError("a SELECT needs at least one column")
        cols = []
        for col, name in zip(sel._result_columns, sel._output_names()):
            s = self.process(col, **kw)
            plain = isinstance(col, ColumnClause) and (col._is_literal or col.name == name)
            if not plain:
                s += " AS " + _esc(quote_ident(name))
            cols.append(s)
        sql = "SELECT "
        if sel._distinct:
            sql += "DISTINCT "
            if sel._distinct_on:
                sql += "ON (" + ", ".join(self.process(d, **kw) for d in sel._distinct_on) + ") "
        sql += ", ".join(cols)
        if froms:
            sql += " FROM " + ", ".join(self.process(f, asfrom=True, **kw) for f in froms)
        if sel._where:
            sql += " WHERE " + self._conj(sel._where, **kw)
        if sel._group_by:
            sql += " GROUP BY " + ", ".join(self._order_key(sel, g, **kw) for g in sel._group_by)
        if sel._having:
            sql += " HAVING " + self._conj(sel._having, **kw)
        if sel._order_by:
            sql += " ORDER BY " + ", ".join(self._order_key(sel, o, **kw) for o in sel._order_by)
        if sel._limit is not None:
            sql += " LIMIT " + self.visit_bindparam(sel._limit)
        if sel._offset is not None:
            sql += " OFFSET " + self.visit_bindparam(sel._offset)
        if sel._for_update is not None:
            read, nowait, skip_locked, key_share, ofs = sel._for_update
            sql += " FOR " + (
                "KEY SHARE"
                if read and key_share
                else "SHARE"
                if read
                else "NO KEY UPDATE"
                if key_share
                else "UPDATE"
            )
            if ofs:
                sql += " OF " + ", ".join(
                    self.from_name(f)
                    if isinstance(f, Alias | Subquery)
                    else _esc(quote_ident(f.name))
                    for f in ofs
                )
            if nowait:
                sql += " NOWAIT"
            if skip_locked:
                sql += " SKIP LOCKED"
        if top is not None:
            self._select_info(sel, froms, top)
        return sql

    def _conj(self, clauses: list[ClauseElement], **kw: Any) -> str:
        if len(clauses) == 1:
            return self.process(clauses[0], **kw)
        return " AND ".join(self.operand(c, 2, **kw) for c in clauses)
