"""Compiling INSERT, UPDATE and DELETE (including client-side column defaults)."""

from __future__ import annotations

from typing import Any

from shardsession.exc import CompileError
from shardsession.sql.columns import ColumnClause
from shardsession.sql.elements import ClauseElement
from shardsession.sql.expressions import BindParameter
from shardsession.sql.quoting import quote_ident, quote_qualified
from shardsession.sql.selectable import _covered
from shardsession.sql.textual import TextClause

__all__ = ["DMLCompilerMixin"]


def _esc(s: str) -> str:
    return s.replace("%", "%%")


class DMLCompilerMixin:
    """Compiler methods for INSERT / UPDATE / DELETE and RETURNING."""

    sources: list[tuple[Any, ...]]
    callables: list[Any]
    tables: dict[str, None]
    dml_target: Any
    process: Any
    bind_ref: Any
    visit_select: Any
    visit_table: Any
    _conj: Any
    _result_info: Any
    _equality_refs: Any

    def _returning(self, stmt: Any, info: dict[str, Any]) -> str:
        info["table"] = stmt.table.fullname
        self.tables[stmt.table.fullname] = None
        if stmt.entity is not None:
            name = getattr(stmt.entity, "__name__", None) or type(stmt.entity).__name__
            info["entity"] = name
        if not stmt._returning_columns:
            return ""
        self._result_info(stmt, info)
        info["returning"] = info["result_keys"]
        if not info["entities"] and stmt.entity is not None:
            info["entities"] = ()
        self.dml_target = stmt.table
        try:
            cols = []
            for col, name in zip(stmt._returning_columns, stmt._output_names()):
                s = self.process(col, enclosing=set())
                plain = isinstance(col, ColumnClause) and not col._is_literal and col.name == name
                cols.append(s if plain else s + " AS " + _esc(quote_ident(name)))
        finally:
            self.dml_target = None
        return " RETURNING " + ", ".join(cols)

    def _default_ref(self, col: Any, key: str | None, row: int = 0) -> tuple[Any, ...] | None:
        d = getattr(col, "default", None)
        if d is None:
            return None
        tag = col.type.bind_processor_tag()
        if d.is_callable:
            self.callables.append(d)
            return ("d", len(self.callables) - 1, key, row, tag, False)
        return ("v", d.arg, tag, False)

    def visit_insert(self, stmt: Any, column_keys: tuple[str, ...], info: dict[str, Any]) -> str:
        """Return ``INSERT`` SQL; record the VALUES rows' references in *info*."""
        table = stmt.table
        target = _esc(quote_qualified(table.name, getattr(table, "schema", None)))
        sql = f"INSERT INTO {target} "
        tcols = list(table.columns)
        if stmt._from_select is not None:
            names, sel = stmt._from_select
            sql += f"({', '.join(_esc(quote_ident(c.name)) for c in names)}) "
            sql += self.visit_select(sel, enclosing=set())
            return sql + self._returning(stmt, info)
        rows: list[dict[Any, Any]]
        if stmt._multi_values:
            rows = stmt._multi_values
        elif stmt._values is not None:
            rows = [stmt._values]
        else:
            by_key = {c.key: c for c in tcols}
            unknown = [k for k in column_keys if k not in by_key]
            if unknown:
                raise CompileError(
                    f"INSERT into {table.name!r}: parameters {unknown} name no column of the table"
                )
            rows = [
                {
                    by_key[k]: BindParameter(k, None, by_key[k].type, _has_value=False)
                    for k in column_keys
                }
            ]
        used = [
            c for c in tcols if any(c in r for r in rows) or getattr(c, "default", None) is not None
        ]
        if not used:
            info["rows"] = 1
            info["insert_refs"] = ((),)
            return sql + "DEFAULT VALUES" + self._returning(stmt, info)
        sql += f"({', '.join(_esc(quote_ident(c.name)) for c in used)}) VALUES "
        groups = []
        refs = []
        multi = len(rows) > 1 or bool(stmt._multi_values)
        for r in rows:
            parts = []
            row_refs = []
            for c in used:
                v = r.get(c)
                if v is None:
                    ref = self._default_ref(c, None if multi else c.key, len(refs))
                    if ref is None:
                        parts.append("DEFAULT")
                        continue
                    self.sources.append(ref)
                    parts.append("%s")
                    row_refs.append((c.key, ref))
                    continue
                if isinstance(v, BindParameter):
                    ref = self.bind_ref(v)
                    self.sources.append(ref)
                    parts.append("%s")
                    row_refs.append((c.key, ref))
                else:
                    parts.append(self.process(v, enclosing=set()))
            groups.append("(" + ", ".join(parts) + ")")
            refs.append(tuple(row_refs))
        info["rows"] = len(rows)
        info["insert_refs"] = tuple(refs)
        return sql + ", ".join(groups) + self._returning(stmt, info)

    def _extra_froms(self, stmt: Any) -> list[Any]:
        from shardsession.sql.elements import _from_list

        return [f for f in _from_list(stmt._where) if f is not stmt.table]

    def visit_update(self, stmt: Any, column_keys: tuple[str, ...], info: dict[str, Any]) -> str:
        """Return ``UPDATE`` SQL (SET from values, parameter keys and ``onupdate``)."""
        table = stmt.table
        sql = f"UPDATE {self.visit_table(table)} SET "
        values: dict[Any, Any] = dict(stmt._values)
        if not values:
            where_keys = set()
            for w in stmt._where:
                where_keys |= _bind_keys(w)
            for c in table.columns:
                if c.key in column_keys and c.key not in where_keys:
                    values[c] = BindParameter(c.key, None, c.type, _has_value=False)
            unknown = set(column_keys) - where_keys - {c.key for c in table.columns}
            if unknown:
                raise CompileError(
                    f"UPDATE of {table.name!r}: parameters {sorted(unknown)} name no column "
                    "of the table and no bind parameter of the statement"
                )
        for c in table.columns:
            if c not in values and getattr(c, "onupdate", None) is not None:
                values[c] = c.onupdate
        if not values:
            raise CompileError(f"UPDATE of {table.name!r} has no values to set")
        sets = []
        for c in table.columns:
            if c not in values:
                continue
            v = values[c]
            if isinstance(v, ClauseElement):
                s = self.process(v, enclosing=set())
            else:  # a ColumnDefault from onupdate
                tag = c.type.bind_processor_tag()
                if v.is_callable:
                    self.callables.append(v)
                    self.sources.append(("d", len(self.callables) - 1, c.key, 0, tag, False))
                else:
                    self.sources.append(("v", v.arg, tag, False))
                s = "%s"
            sets.append(f"{_esc(quote_ident(c.name))} = {s}")
        sql += ", ".join(sets)
        extra = self._extra_froms(stmt)
        if extra:
            sql += " FROM " + ", ".join(self.process(f, asfrom=True) for f in extra)
        if stmt._where:
            sql += " WHERE " + self._conj(stmt._where, enclosing=_covered([table, *extra]))
        info["equality_refs"] = self._equality_refs(stmt._where, table)
        return sql + self._returning(stmt, info)

    def visit_delete(self, stmt: Any, column_keys: tuple[str, ...], info: dict[str, Any]) -> str:
        """Return ``DELETE`` SQL (other tables in the WHERE become ``USING``)."""
        table = stmt.table
        sql = f"DELETE FROM {self.visit_table(table)}"
        extra = self._extra_froms(stmt)
        if extra:
            sql += " USING " + ", ".join(self.process(f, asfrom=True) for f in extra)
        if stmt._where:
            sql += " WHERE " + self._conj(stmt._where, enclosing=_covered([table, *extra]))
        info["equality_refs"] = self._equality_refs(stmt._where, table)
        return sql + self._returning(stmt, info)


def _bind_keys(el: Any) -> set[str]:
    """Names of the named bind parameters inside *el* (a shallow walk of known shapes)."""
    out: set[str] = set()
    stack = [el]
    while stack:
        e = stack.pop()
        if isinstance(e, BindParameter):
            if e.key:
                out.add(e.key)
            continue
        for attr in ("left", "right", "element", "expr", "lower", "upper"):
            v = getattr(e, attr, None)
            if isinstance(v, ClauseElement):
                stack.append(v)
        for v in getattr(e, "clauses", ()) or ():
            stack.append(v)
        if isinstance(e, TextClause):
            stack.extend(p for p in e._parts if isinstance(p, BindParameter))
    return out
