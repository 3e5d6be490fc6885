"""Keys and indexes of tables: foreign keys, primary key, unique, check, indexes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shardsession.exc import ArgumentError, InvalidRequestError
from shardsession.sql.columns import ColumnClause
from shardsession.sql.textual import TextClause

if TYPE_CHECKING:
    from shardsession.sql.schema import Column, Table

__all__ = [
    "CheckConstraint",
    "Constraint",
    "ForeignKey",
    "ForeignKeyConstraint",
    "Index",
    "PrimaryKeyConstraint",
    "UniqueConstraint",
]

_FK_ACTIONS = {"CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"}


def _check_action(action: str | None) -> str | None:
    if action is None:
        return None
    if action.upper() not in _FK_ACTIONS:
        raise ArgumentError(f"invalid foreign key action {action!r}; use one of {_FK_ACTIONS}")
    return action.upper()


class ForeignKey:
    """A reference from a column to a column of another (or the same) table.

    :param column: ``"table.column"`` (or ``"schema.table.column"``) or a :class:`Column`.
        A string is resolved against the parent table's :class:`MetaData` when first needed.
    :param ondelete: ``CASCADE``, ``SET NULL``, ``SET DEFAULT``, ``RESTRICT`` or ``NO ACTION``.
    :param onupdate: likewise for updates of the referenced key.
    :param name: an optional constraint name.
    """

    def __init__(
        self,
        column: str | Column,
        *,
        ondelete: str | None = None,
        onupdate: str | None = None,
        name: str | None = None,
        _constraint: ForeignKeyConstraint | None = None,
    ) -> None:
        if isinstance(column, str):
            if "." not in column:
                raise ArgumentError(f"ForeignKey({column!r}): expected 'table.column'")
            self._colspec: str | Column = column
        elif hasattr(column, "__clause_element__") and not isinstance(column, ColumnClause):
            self._colspec = column.__clause_element__()
        else:
            self._colspec = column
        self.ondelete = _check_action(ondelete)
        self.onupdate = _check_action(onupdate)
        self.name = name
        #: the column that holds this key (set when given to a Column).
        self.parent: Column | None = None
        self.constraint = _constraint

    def _copy(self) -> ForeignKey:
        return ForeignKey(
            self._colspec, ondelete=self.ondelete, onupdate=self.onupdate, name=self.name
        )

    def _set_parent_column(self, column: Column) -> None:
        self.parent = column
        column.foreign_keys.append(self)

    @property
    def target_fullname(self) -> str:
        """``"table.column"`` of the referenced column."""
        if isinstance(self._colspec, str):
            return self._colspec
        return f"{self._colspec.table.fullname}.{self._colspec.name}"

    @property
    def column(self) -> Column:
        """The referenced :class:`Column`.

        :raises InvalidRequestError: if a string target names no known table or column.
        """
        if not isinstance(self._colspec, str):
            return self._colspec  # type: ignore[return-value]
        table_name, _, col_name = self._colspec.rpartition(".")
        parent_table = self.parent.table if self.parent is not None else None
        if parent_table is None or parent_table.metadata is None:
            raise InvalidRequestError(
                f"ForeignKey({self._colspec!r}) cannot be resolved before its column is "
                "part of a table in a MetaData"
            )
        md = parent_table.metadata
        target = md.tables.get(table_name)
        if target is None and "." not in table_name and parent_table.schema:
            target = md.tables.get(f"{parent_table.schema}.{table_name}")
        if target is None:
            raise InvalidRequestError(
                f"ForeignKey({self._colspec!r}) on table {parent_table.name!r}: no table "
                f"{table_name!r} in the MetaData; define that table first or fix the name"
            )
        for c in target.columns:
            if c.name == col_name:
                self._colspec = c
                return c
        raise InvalidRequestError(
            f"ForeignKey({self._colspec!r}): table {table_name!r} has no column {col_name!r}"
        )

    def references(self, table: Any) -> bool:
        """Return True if this key references a column of *table*."""
        return self.column.table is table

    def __repr__(self) -> str:
        return f"ForeignKey({self.target_fullname!r})"


class Constraint:
    """Base class of table constraints."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.table: Table | None = None

    def _set_parent(self, table: Table) -> None:
        self.table = table


class _ColumnsConstraint(Constraint):
    def __init__(self, *columns: str | Column, name: str | None = None) -> None:
        super().__init__(name)
        self._colspecs = [
            c.__clause_element__() if hasattr(c, "__clause_element__") else c for c in columns
        ]
        self.columns: list[Column] = []

    def _set_parent(self, table: Table) -> None:
        super()._set_parent(table)
        cols = []
        for spec in self._colspecs:
            if isinstance(spec, str):
                if spec not in table.c:
                    raise ArgumentError(
                        f"{type(self).__name__} on table {table.name!r}: no column {spec!r}"
                    )
                cols.append(table.c[spec])
            else:
                if spec.table is not table:
                    raise ArgumentError(
                        f"{type(self).__name__} on table {table.name!r}: column {spec!r} "
                        "belongs to another table"
                    )
                cols.append(spec)
        self.columns = cols


class PrimaryKeyConstraint(_ColumnsConstraint):
    """``PRIMARY KEY (cols...)``; given to a :class:`Table`, it defines the whole key."""


class UniqueConstraint(_ColumnsConstraint):
    """``UNIQUE (cols...)``."""


class CheckConstraint(Constraint):
    """``CHECK (sqltext)``: *sqltext* is SQL written by the developer (never user input)."""

    def __init__(self, sqltext: str | TextClause, name: str | None = None) -> None:
        super().__init__(name)
        self.sqltext = sqltext.text if isinstance(sqltext, TextClause) else sqltext


class ForeignKeyConstraint(Constraint):
    """A (possibly multi-column) foreign key: ``FOREIGN KEY (cols) REFERENCES t (refcols)``.

    :param columns: local columns (names or :class:`Column` objects).
    :param refcolumns: referenced columns (``"table.col"`` strings or columns), same length.
    """

    def __init__(
        self,
        columns: Iterable[str | Column],
        refcolumns: Iterable[str | Column],
        name: str | None = None,
        ondelete: str | None = None,
        onupdate: str | None = None,
    ) -> None:
        super().__init__(name)
        self._colspecs = list(columns)
        self._refspecs = list(refcolumns)
        if len(self._colspecs) != len(self._refspecs) or not self._colspecs:
            raise ArgumentError("ForeignKeyConstraint needs as many refcolumns as columns")
        self.ondelete = _check_action(ondelete)
        self.onupdate = _check_action(onupdate)
        self.elements: list[ForeignKey] = []

    @property
    def columns(self) -> list[Column]:
        """The local columns, in order."""
        return [fk.parent for fk in self.elements if fk.parent is not None]

    @property
    def referred_table(self) -> Table:
        """The referenced table."""
        return self.elements[0].column.table  # type: ignore[return-value]

    def _set_parent(self, table: Table) -> None:
        super()._set_parent(table)
        if self.elements:
            return
        for spec, ref in zip(self._colspecs, self._refspecs):
            col = table.c[spec] if isinstance(spec, str) else spec
            fk = ForeignKey(ref, ondelete=self.ondelete, onupdate=self.onupdate, _constraint=self)
            fk._set_parent_column(col)  # type: ignore[arg-type]
            self.elements.append(fk)


class Index:
    """``CREATE [UNIQUE] INDEX name ON table (cols...)``.

    Given columns that already belong to a table, the index attaches itself to it.
    """

    def __init__(self, name: str | None, *columns: str | Column, unique: bool = False) -> None:
        self.name = name
        self.unique = unique
        self._colspecs = [
            c.__clause_element__() if hasattr(c, "__clause_element__") else c for c in columns
        ]
        self.columns: list[Column] = []
        self.table: Table | None = None
        first = next((c for c in self._colspecs if not isinstance(c, str)), None)
        if first is not None and first.table is not None:
            first.table.append_constraint(self)

    def _set_parent(self, table: Table) -> None:
        self.table = table
        self.columns = [table.c[c] if isinstance(c, str) else c for c in self._colspecs]  # type: ignore[misc]
        if self.name is None:
            self.name = "ix_" + "_".join([table.name] + [c.name for c in self.columns])
