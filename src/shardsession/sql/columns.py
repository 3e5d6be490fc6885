"""Named columns (:class:`ColumnClause`) and ordered column collections."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from shardsession.exc import ArgumentError
from shardsession.sql import types as sqltypes
from shardsession.sql.elements import ColumnElement, KeyContext

__all__ = ["ColumnClause", "ColumnCollection", "LiteralColumn", "column", "literal_column"]


class ColumnClause(ColumnElement):
    """A named column, optionally belonging to a FROM clause (a table, alias, subquery).

    This is the base of :class:`~shardsession.sql.schema.Column`; on its own it is what
    :func:`column` builds and what aliases and subqueries expose as their columns.
    """

    __visit_name__ = "column"
    _is_literal = False

    def __init__(
        self, name: str | None, type_: Any = None, table: Any = None, proxied: Any = None
    ) -> None:
        self._name = name
        self._key_name: str | None = None
        self.type = sqltypes.to_type(type_)
        self.table = table
        #: the column this one stands for (the table column behind an alias column).
        self.proxied = proxied

    @property
    def name(self) -> str:
        """The column's name in SQL."""
        if self._name is None:
            raise ArgumentError("this column has no name yet")
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def key(self) -> str:
        """The column's key in collections (``table.c[key]``) and results; defaults to name."""
        return self._key_name if self._key_name is not None else self.name

    @key.setter
    def key(self, value: str | None) -> None:
        self._key_name = value

    @property
    def _result_name(self) -> str | None:
        return self.key

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        if self.table is None:
            return ("colname", self._name, self._is_literal, self.type.type_key())
        if self.proxied is not None:
            # A column of an alias or subquery: keyed by its FROM's structure, so that
            # a fresh alias of the same shape reuses the compiled statement.
            return ("pcol", self.table._key(ctx), self._name)
        return ("col", ctx.ref(self))

    def _from_objects(self) -> list[Any]:
        return [self.table] if self.table is not None else []

    def _base(self) -> ColumnClause:
        """Return the innermost proxied column (the table column behind aliases)."""
        col = self
        while col.proxied is not None:
            col = col.proxied
        return col

    def __repr__(self) -> str:
        tname = getattr(self.table, "name", None)
        return f"<column {tname}.{self._name}>" if tname else f"<column {self._name}>"


def column(name: str, type_: Any = None) -> ColumnClause:
    """Return a free-standing column reference by name (quoted as an identifier)."""
    return ColumnClause(name, type_)


class LiteralColumn(ColumnClause):
    """A SQL fragment used as a column, written into the statement verbatim."""

    __visit_name__ = "literal_column"
    _is_literal = True

    @property
    def _result_name(self) -> str | None:
        return None


def literal_column(text_: str, type_: Any = None) -> LiteralColumn:
    """Return a column whose SQL is *text_* verbatim (never pass user input here)."""
    return LiteralColumn(text_, type_)


class ColumnCollection:
    """An ordered collection of columns reachable by key, by attribute and by position."""

    __slots__ = ("_by_key", "_cols")

    def __init__(self, columns: Iterable[ColumnElement] = ()) -> None:
        self._cols: list[ColumnElement] = []
        self._by_key: dict[str, ColumnElement] = {}
        for c in columns:
            self.add(c)

    def add(self, col: ColumnElement, key: str | None = None) -> None:
        """Append *col* under *key* (default: its key).

        When the key is already taken (two selected columns named ``id``), the column
        is still appended (reachable by position) and the key keeps naming the first.
        """
        k = key if key is not None else col._result_name
        self._cols.append(col)
        if k is not None:
            self._by_key.setdefault(k, col)

    def __getattr__(self, key: str) -> ColumnElement:
        try:
            return self._by_key[key]
        except KeyError:
            raise AttributeError(key) from None

    def __getitem__(self, key: str | int) -> ColumnElement:
        if isinstance(key, int):
            return self._cols[key]
        return self._by_key[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Return the column under *key*, or *default*."""
        return self._by_key.get(key, default)

    def __contains__(self, item: Any) -> bool:
        if isinstance(item, str):
            return item in self._by_key
        return any(c is item for c in self._cols)

    def __iter__(self) -> Iterator[ColumnElement]:
        return iter(self._cols)

    def __len__(self) -> int:
        return len(self._cols)

    def keys(self) -> list[str]:
        """Return the keys in order."""
        return list(self._by_key)

    def values(self) -> list[ColumnElement]:
        """Return the columns in order."""
        return list(self._cols)

    def items(self) -> list[tuple[str, ColumnElement]]:
        """Return ``(key, column)`` pairs."""
        return list(self._by_key.items())

    def __repr__(self) -> str:
        return f"ColumnCollection({', '.join(self._by_key)})"
