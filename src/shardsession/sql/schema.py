"""Schema objects: :class:`MetaData`, :class:`Table` and :class:`Column`.

A :class:`Column` can be built before it knows its name or table (the ORM's
``mapped_column`` does so): set :attr:`Column.name` once the attribute name is
known, then attach it with :meth:`Column._set_parent` (which :class:`Table` calls
for every column it is given).  Everything here is also a SQL expression: tables
are FROM clauses and columns have the column operators.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from shardsession.exc import ArgumentError, InvalidRequestError
from shardsession.sql import types as sqltypes
from shardsession.sql.columns import ColumnClause, ColumnCollection
from shardsession.sql.constraints import (
    CheckConstraint,
    Constraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    PrimaryKeyConstraint,
    UniqueConstraint,
)
from shardsession.sql.selectable import FromClause
from shardsession.sql.textual import TextClause

__all__ = [
    "CheckConstraint",
    "Column",
    "ColumnDefault",
    "Constraint",
    "ForeignKey",
    "ForeignKeyConstraint",
    "Index",
    "MetaData",
    "PrimaryKeyConstraint",
    "Table",
    "UniqueConstraint",
]

_NOT_SET: Any = object()


class ColumnDefault:
    """A client-side default of a column: a scalar, or a callable run per row.

    A callable may take no argument or one: a context whose ``current_parameters``
    is the dict of values of the row being written.

    :ivar arg: the scalar or the callable as given.
    :ivar is_callable: whether :attr:`arg` is called.
    """

    def __init__(self, arg: Any) -> None:
        self.arg = arg
        self.is_callable = callable(arg)
        self._takes_context = False
        if self.is_callable:
            try:
                params = [
                    p
                    for p in inspect.signature(arg).parameters.values()
                    if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                ]
                self._takes_context = len(params) >= 1
            except (TypeError, ValueError):
                self._takes_context = False

    @property
    def is_scalar(self) -> bool:
        """True when the default is a plain value."""
        return not self.is_callable

    def get(self, current_parameters: dict[str, Any] | None = None) -> Any:
        """Return the default value (calling the callable if it is one)."""
        if not self.is_callable:
            return self.arg
        if self._takes_context:
            return self.arg(_DefaultContext(current_parameters or {}))
        return self.arg()

    def __repr__(self) -> str:
        return f"ColumnDefault({self.arg!r})"


class _DefaultContext:
    def __init__(self, params: dict[str, Any]) -> None:
        self.current_parameters = params

    def get_current_parameters(self) -> dict[str, Any]:
        return self.current_parameters


class Column(ColumnClause):
    """A table column.

    ``Column(name=None, type_=None, *args, primary_key=False, nullable=..., default=None,
    server_default=None, index=False, unique=False, autoincrement="auto", key=None)``;
    *args* may hold :class:`ForeignKey` and :class:`CheckConstraint` objects.  The name
    and type may also be passed positionally, as ``Column("id", Integer, ForeignKey(...))``,
    and the type may be a class or an instance.  A column whose type is not given but
    that has a foreign key takes the type of the column it references.

    :ivar name: the SQL name (may be set later, before the column is attached to a table).
    :ivar key: the key under ``table.c``; defaults to the name.
    :ivar table: the :class:`Table` once attached, else None.
    :ivar primary_key: part of the primary key.
    :ivar nullable: NULL allowed (default: not for primary key columns).
    :ivar default: a :class:`ColumnDefault` or None (client-side default on INSERT).
    :ivar onupdate: a :class:`ColumnDefault` or None (client-side value on UPDATE).
    :ivar server_default: the DDL default: a string (quoted as a literal) or :func:`text`.
    :ivar foreign_keys: the :class:`ForeignKey` objects of this column (a list).
    :ivar autoincrement: ``"auto"``, True or False (see :attr:`Table.autoincrement_column`).
    """

    __visit_name__ = "column"

    def __init__(
        self,
        *args: Any,
        name: str | None = None,
        type_: Any = None,
        primary_key: bool = False,
        nullable: Any = _NOT_SET,
        default: Any = None,
        server_default: Any = None,
        onupdate: Any = None,
        index: bool | None = None,
        unique: bool | None = None,
        autoincrement: bool | str = "auto",
        key: str | None = None,
        comment: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        rest = list(args)
        if rest and isinstance(rest[0], str):
            if name is not None:
                raise ArgumentError("Column name given both positionally and as name=")
            name = rest.pop(0)
        if rest and _is_type(rest[0]):
            if type_ is not None:
                raise ArgumentError("Column type given both positionally and as type_=")
            type_ = rest.pop(0)
        super().__init__(name, type_)
        self._key_name = key
        self.primary_key = bool(primary_key)
        self._user_nullable = nullable
        self.default = _coerce_default(default)
        self.onupdate = _coerce_default(onupdate)
        if server_default is not None and not isinstance(server_default, str | TextClause):
            raise ArgumentError("server_default must be a string or text()")
        self.server_default = server_default
        self.index = index
        self.unique = unique
        if autoincrement not in ("auto", True, False):
            raise ArgumentError("autoincrement must be 'auto', True or False")
        self.autoincrement = autoincrement
        self.comment = comment
        self.info = dict(info or {})
        self.foreign_keys: list[ForeignKey] = []
        self.constraints: list[Constraint] = []
        for a in rest:
            if isinstance(a, ForeignKey):
                a._set_parent_column(self)
            elif isinstance(a, CheckConstraint):
                self.constraints.append(a)
            else:
                raise ArgumentError(f"unexpected Column argument {a!r}")

    @property
    def nullable(self) -> bool:
        """Whether NULL is allowed (default: True unless the column is in the primary key)."""
        if self._user_nullable is _NOT_SET:
            return not self.primary_key
        return bool(self._user_nullable)

    @nullable.setter
    def nullable(self, value: bool) -> None:
        self._user_nullable = value

    @property
    def type(self) -> sqltypes.TypeEngine:  # type: ignore[override]
        """The column type; a column with no type and a foreign key takes its target's."""
        t = self._type
        if isinstance(t, sqltypes.NullType) and self.foreign_keys:
            try:
                return self.foreign_keys[0].column.type
            except InvalidRequestError:
                return t
        return t

    @type.setter
    def type(self, value: Any) -> None:
        self._type = sqltypes.to_type(value)

    def _set_parent(self, table: Table) -> None:
        """Attach this column to *table* (called by :class:`Table`; the name must be set)."""
        if self._name is None:
            raise ArgumentError("a Column must have a name before it is added to a table")
        if self.table is not None and self.table is not table:
            raise ArgumentError(
                f"column {self.name!r} already belongs to table {self.table.name!r}; "
                "use Column._copy() to reuse its definition"
            )
        self.table = table

    def _copy(self) -> Column:
        """Return an unattached copy of this column (same name, type, flags and keys)."""
        c = Column(
            name=self._name,
            type_=self._type,
            primary_key=self.primary_key,
            nullable=self._user_nullable,
            default=self.default.arg if self.default else None,
            server_default=self.server_default,
            onupdate=self.onupdate.arg if self.onupdate else None,
            index=self.index,
            unique=self.unique,
            autoincrement=self.autoincrement,
            key=self._key_name,
            comment=self.comment,
            info=self.info,
        )
        for fk in self.foreign_keys:
            fk._copy()._set_parent_column(c)
        c.constraints = list(self.constraints)
        return c

    def references(self, other: Column) -> bool:
        """Return True if this column has a foreign key to *other*."""
        return any(fk.column is other for fk in self.foreign_keys)

    def __repr__(self) -> str:
        tname = self.table.name if self.table is not None else None
        return f"Column({tname + '.' if tname else ''}{self._name}, {self._type!r})"


def _is_type(obj: Any) -> bool:
    return isinstance(obj, sqltypes.TypeEngine) or (
        isinstance(obj, type) and issubclass(obj, sqltypes.TypeEngine)
    )


def _coerce_default(arg: Any) -> ColumnDefault | None:
    if arg is None:
        return None
    if isinstance(arg, ColumnDefault):
        return arg
    return ColumnDefault(arg)


class Table(FromClause):
    """A database table: ``Table(name, metadata, *columns_and_constraints, schema=None)``.

    :ivar name: the table name.
    :ivar schema: the PostgreSQL schema, or None for the search path.
    :ivar metadata: the :class:`MetaData` the table belongs to.
    :ivar c: the columns by key (also :attr:`columns`).
    :ivar constraints: the table's constraints (primary key, unique, check, foreign keys).
    :ivar indexes: the table's :class:`Index` objects.
    """

    __visit_name__ = "table"

    def __init__(
        self, name: str, metadata: MetaData, *args: Any, schema: str | None = None, **kw: Any
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ArgumentError("Table name must be a non-empty string")
        if not isinstance(metadata, MetaData):
            raise ArgumentError("Table() second argument must be a MetaData")
        unknown = set(kw) - {"comment", "info"}
        if unknown:
            raise ArgumentError(f"unexpected Table arguments: {sorted(unknown)}")
        self.name = name
        self.schema = schema if schema is not None else metadata.schema
        self.metadata = metadata
        self.comment = kw.get("comment")
        self.info = dict(kw.get("info") or {})
        self._columns = ColumnCollection()
        self.constraints: list[Constraint] = []
        self.indexes: list[Index] = []
        self._pk_constraint: PrimaryKeyConstraint | None = None
        pending: list[Any] = []
        for a in args:
            if hasattr(a, "__clause_element__") and not isinstance(a, Column):
                a = a.__clause_element__()
            if isinstance(a, Column):
                self.append_column(a)
            else:
                pending.append(a)
        for a in pending:
            self.append_constraint(a)
        metadata._add_table(self)

    @property
    def fullname(self) -> str:
        """``schema.name`` or ``name``."""
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def c(self) -> ColumnCollection:
        """The columns, by key."""
        return self._columns

    @property
    def columns(self) -> ColumnCollection:
        """The columns, by key (same as :attr:`c`)."""
        return self._columns

    def append_column(self, column: Column) -> None:
        """Add *column* (named, unattached) to the table."""
        if column.key in self._columns:
            raise ArgumentError(f"table {self.name!r} already has a column {column.key!r}")
        column._set_parent(self)
        self._columns.add(column, column.key)
        for fk in column.foreign_keys:
            if fk.constraint is None:
                fkc = ForeignKeyConstraint.__new__(ForeignKeyConstraint)
                Constraint.__init__(fkc, fk.name)
                fkc.ondelete, fkc.onupdate = fk.ondelete, fk.onupdate
                fkc.elements = [fk]
                fkc.table = self
                fk.constraint = fkc
                self.constraints.append(fkc)
        for cc in column.constraints:
            cc._set_parent(self)
            self.constraints.append(cc)
        if column.unique:
            uc = UniqueConstraint(column)
            uc._set_parent(self)
            self.constraints.append(uc)
        if column.index:
            ix = Index(None, column.name)
            ix._set_parent(self)
            self.indexes.append(ix)

    def append_constraint(self, constraint: Constraint | Index) -> None:
        """Add a constraint or index to the table."""
        if isinstance(constraint, Index):
            if constraint.table is self:
                return
            constraint._set_parent(self)
            self.indexes.append(constraint)
            return
        if not isinstance(constraint, Constraint):
            raise ArgumentError(f"unexpected Table argument {constraint!r}")
        constraint._set_parent(self)
        if isinstance(constraint, PrimaryKeyConstraint):
            self._pk_constraint = constraint
            for col in self._columns:
                col.primary_key = False  # type: ignore[attr-defined]
            for col in constraint.columns:
                col.primary_key = True
        self.constraints.append(constraint)

    @property
    def primary_key(self) -> tuple[Column, ...]:
        """The primary key columns, in key order (table order unless a constraint says)."""
        if self._pk_constraint is not None:
            return tuple(self._pk_constraint.columns)
        return tuple(c for c in self._columns if c.primary_key)  # type: ignore[attr-defined]

    @property
    def foreign_keys(self) -> list[ForeignKey]:
        """Every :class:`ForeignKey` of every column."""
        return [fk for c in self._columns for fk in c.foreign_keys]  # type: ignore[attr-defined]

    @property
    def foreign_key_constraints(self) -> list[ForeignKeyConstraint]:
        """The foreign key constraints."""
        return [c for c in self.constraints if isinstance(c, ForeignKeyConstraint)]

    @property
    def autoincrement_column(self) -> Column | None:
        """The column generated by the database (an identity column), if any.

        That is the sole primary key column when it has an integer type, no foreign key,
        no client or server default, and ``autoincrement`` is ``"auto"`` or True.
        """
        pk = self.primary_key
        if len(pk) != 1:
            return None
        col = pk[0]
        if col.autoincrement is False or not col.type.is_integer:
            return None
        if col.autoincrement == "auto" and (
            col.foreign_keys or col.default is not None or col.server_default is not None
        ):
            return None
        return col

    def _tables(self) -> list[Table]:
        return [self]

    def insert(self) -> Any:
        """Return ``insert(self)``."""
        from shardsession.sql.dml import insert

        return insert(self)

    def update(self) -> Any:
        """Return ``update(self)``."""
        from shardsession.sql.dml import update

        return update(self)

    def delete(self) -> Any:
        """Return ``delete(self)``."""
        from shardsession.sql.dml import delete

        return delete(self)

    def __repr__(self) -> str:
        return f"Table({self.fullname!r})"


class MetaData:
    """A collection of :class:`Table` objects, created and dropped together.

    :param schema: default PostgreSQL schema of the tables created in it.
    :ivar tables: dict of table name (``schema.name`` when a schema is set) → :class:`Table`.
    """

    def __init__(self, schema: str | None = None) -> None:
        self.schema = schema
        self.tables: dict[str, Table] = {}

    def _add_table(self, table: Table) -> None:
        if table.fullname in self.tables:
            raise InvalidRequestError(
                f"table {table.fullname!r} is already defined in this MetaData"
            )
        self.tables[table.fullname] = table

    def remove(self, table: Table) -> None:
        """Remove *table* from this collection."""
        self.tables.pop(table.fullname, None)

    def clear(self) -> None:
        """Remove every table."""
        self.tables.clear()

    @property
    def sorted_tables(self) -> list[Table]:
        """The tables ordered so that a referenced table precedes the tables referencing it.

        Cycles are broken by name order (self-references are ignored).
        """
        from shardsession.sql.ddl import sort_tables

        return sort_tables(self.tables.values())

    def create_all(
        self, bind: Any, tables: Iterable[Table] | None = None, checkfirst: bool = True
    ) -> None:
        """Create the tables (and their indexes) that do not exist yet.

        :param bind: a psycopg connection, or an object with ``_run_ddl(statements)``
            (a worker pool runs them on every shard).
        :param tables: a subset to create (default: all).
        :param checkfirst: skip tables that already exist.
        """
        from shardsession.sql.ddl import create_all

        create_all(self, bind, tables=tables, checkfirst=checkfirst)

    def drop_all(
        self, bind: Any, tables: Iterable[Table] | None = None, checkfirst: bool = True
    ) -> None:
        """Drop the tables (referencing tables first); see :meth:`create_all`."""
        from shardsession.sql.ddl import drop_all

        drop_all(self, bind, tables=tables, checkfirst=checkfirst)

    def __repr__(self) -> str:
        return f"MetaData(tables={sorted(self.tables)})"
