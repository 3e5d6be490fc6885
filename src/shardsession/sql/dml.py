"""INSERT, UPDATE and DELETE statements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shardsession.exc import ArgumentError
from shardsession.sql.columns import ColumnClause
from shardsession.sql.elements import (
    ClauseElement,
    ColumnElement,
    KeyContext,
    coerce_expression,
    coerce_where,
)
from shardsession.sql.expressions import BindParameter
from shardsession.sql.selectable import FromClause, _coerce_from
from shardsession.sql.selects import (
    Select,
    SelectEntity,
    _coerce_select_item,
    _filter_by_clauses,
    _Generative,
)

__all__ = ["Delete", "Insert", "Update", "delete", "insert", "update"]


class _DML(_Generative, ClauseElement):
    is_select = False

    def __init__(self, table: Any) -> None:
        self.entity = table if hasattr(table, "__table__") or hasattr(table, "__mapper__") else None
        t = _coerce_from(table)
        if not hasattr(t, "fullname"):
            raise ArgumentError(f"{type(self).__name__.lower()}() needs a table, got {table!r}")
        self.table: FromClause = t
        self._returning: list[SelectEntity] = []
        self._returning_columns: list[ColumnElement] = []
        self._execution_options: dict[str, Any] = {}

    def returning(self, *cols: Any) -> Any:
        """Return a copy with ``RETURNING cols`` (columns, tables or ORM entities)."""
        new = self._generate()
        for c in cols:
            item = _coerce_select_item(c, len(new._returning_columns))
            new._returning.append(item)
            new._returning_columns.extend(item.columns)
        return new

    @property
    def _result_columns(self) -> list[ColumnElement]:
        return self._returning_columns

    def _output_names(self) -> list[str]:
        return Select._output_names(self)  # type: ignore[arg-type]

    def _column(self, key: Any) -> ColumnClause:
        if isinstance(key, str):
            col = self.table.c.get(key)
            if col is None:
                raise ArgumentError(f"table {self.table.name!r} has no column {key!r}")
            return col  # type: ignore[no-any-return]
        if hasattr(key, "__clause_element__") and not isinstance(key, ClauseElement):
            key = key.__clause_element__()
        if isinstance(key, ColumnClause) and key.table is self.table:
            return key
        raise ArgumentError(f"{key!r} is not a column of table {self.table.name!r}")

    def _value_dict(self, values: Mapping[Any, Any]) -> dict[ColumnClause, ColumnElement]:
        out: dict[ColumnClause, ColumnElement] = {}
        for k, v in values.items():
            col = self._column(k)
            # None is bound like any value so that rows with and without NULLs share a plan.
            out[col] = (
                BindParameter(None, None, col.type) if v is None else coerce_expression(v, col.type)
            )
        return out

    def _returning_key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return tuple(e._key(ctx) for e in self._returning)

    def _entity_key(self, ctx: KeyContext) -> Any:
        return ctx.ref(self.entity) if self.entity is not None else None


class _Where:
    _where: list[ClauseElement]

    def where(self, *clauses: Any) -> Any:
        """Return a copy with the conditions added (AND)."""
        new = self._generate()  # type: ignore[attr-defined]
        new._where.extend(coerce_where(c) for c in clauses)
        return new

    filter = where

    def filter_by(self, **kw: Any) -> Any:
        """Return a copy with ``column == value`` conditions on the target table."""
        target = self.entity if self.entity is not None else self.table  # type: ignore[attr-defined]
        return self.where(*_filter_by_clauses(target, kw))


class Insert(_DML):
    """``INSERT INTO table (...) VALUES (...)``: build with :func:`insert`.

    Without :meth:`values`, the columns come from the keys of the parameters given
    at execution (one dict, or a list of dicts for executemany).  Columns left out get
    their client-side :attr:`~shardsession.sql.schema.Column.default`.
    """

    __visit_name__ = "insert"
    is_insert = True

    def __init__(self, table: Any) -> None:
        super().__init__(table)
        self._values: dict[ColumnClause, ColumnElement] | None = None
        self._multi_values: list[dict[ColumnClause, ColumnElement]] = []
        self._from_select: tuple[list[ColumnClause], Select] | None = None

    def values(self, *args: Any, **kw: Any) -> Insert:
        """Return a copy with values: a dict, keyword arguments, or a list of dicts (multi-row)."""
        if self._from_select is not None:
            raise ArgumentError("values() cannot be combined with from_select()")
        new = self._generate()
        if args and isinstance(args[0], list | tuple) and len(args) == 1 and not kw:
            rows = args[0]
            if rows and all(isinstance(r, Mapping) for r in rows):
                if new._values:
                    raise ArgumentError("cannot mix single-row and multi-row values()")
                new._multi_values.extend(new._value_dict(r) for r in rows)
                return new
            # a tuple of values in table column order
            args = (dict(zip(list(new.table.c), rows)),)
        if new._multi_values:
            raise ArgumentError("cannot mix single-row and multi-row values()")
        merged: dict[ColumnClause, ColumnElement] = dict(new._values or {})
        for a in args:
            if not isinstance(a, Mapping):
                raise ArgumentError(f"values() takes dicts or keyword arguments, got {a!r}")
            merged.update(new._value_dict(a))
        merged.update(new._value_dict(kw))
        new._values = merged
        return new

    def from_select(self, names: Iterable[Any], select: Select) -> Insert:
        """Return ``INSERT INTO table (names) SELECT ...``."""
        new = self._generate()
        new._from_select = ([new._column(n) for n in names], select)
        return new

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        def vals(d: dict[ColumnClause, ColumnElement]) -> tuple[Any, ...]:
            return tuple((ctx.ref(c), v._key(ctx)) for c, v in d.items())

        fs = self._from_select
        return (
            "insert",
            ctx.ref(self.table),
            self._entity_key(ctx),
            vals(self._values) if self._values is not None else None,
            tuple(vals(r) for r in self._multi_values),
            (tuple(ctx.ref(c) for c in fs[0]), fs[1]._key(ctx)) if fs else None,
            self._returning_key(ctx),
        )


class Update(_Where, _DML):
    """``UPDATE table SET ... WHERE ...``: build with :func:`update`.

    Without :meth:`values`, the SET columns come from the execution parameters' keys
    that name columns (keys used by :func:`bindparam` in the WHERE clause excepted).
    """

    __visit_name__ = "update"
    is_update = True

    def __init__(self, table: Any) -> None:
        super().__init__(table)
        self._values: dict[ColumnClause, ColumnElement] = {}
        self._where: list[ClauseElement] = []

    def values(self, *args: Any, **kw: Any) -> Update:
        """Return a copy with SET values from a dict and/or keyword arguments."""
        new = self._generate()
        for a in args:
            if not isinstance(a, Mapping):
                raise ArgumentError(f"values() takes dicts or keyword arguments, got {a!r}")
            new._values.update(new._value_dict(a))
        new._values.update(new._value_dict(kw))
        return new

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "update",
            ctx.ref(self.table),
            self._entity_key(ctx),
            tuple((ctx.ref(c), v._key(ctx)) for c, v in self._values.items()),
            tuple(w._key(ctx) for w in self._where),
            self._returning_key(ctx),
        )


class Delete(_Where, _DML):
    """``DELETE FROM table WHERE ...``: build with :func:`delete`."""

    __visit_name__ = "delete"
    is_delete = True

    def __init__(self, table: Any) -> None:
        super().__init__(table)
        self._where: list[ClauseElement] = []

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "delete",
            ctx.ref(self.table),
            self._entity_key(ctx),
            tuple(w._key(ctx) for w in self._where),
            self._returning_key(ctx),
        )


def insert(table: Any) -> Insert:
    """Return an INSERT into *table* (a Table or a mapped class)."""
    return Insert(table)


def update(table: Any) -> Update:
    """Return an UPDATE of *table* (a Table or a mapped class)."""
    return Update(table)


def delete(table: Any) -> Delete:
    """Return a DELETE from *table* (a Table or a mapped class)."""
    return Delete(table)
