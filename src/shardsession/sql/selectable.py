"""FROM clauses: tables, aliases, joins and subqueries, and ON clause inference."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shardsession.exc import ArgumentError, InvalidRequestError
from shardsession.sql.columns import ColumnClause, ColumnCollection
from shardsession.sql.elements import (
    ClauseElement,
    ColumnElement,
    KeyContext,
    coerce_where,
)
from shardsession.sql.expressions import and_

if TYPE_CHECKING:
    from shardsession.sql.selects import Select, TextualSelect

__all__ = [
    "Alias",
    "FromClause",
    "Join",
    "Subquery",
    "TableClause",
    "join",
    "outerjoin",
    "table",
]


def _memo_key(ctx: KeyContext, obj: Any, build: Any) -> tuple[Any, ...]:
    return ctx.memo(obj, build)


class FromClause(ClauseElement):
    """Something that can appear in FROM: it has columns (:attr:`c`)."""

    __visit_name__ = "fromclause"
    _columns: ColumnCollection
    name: str | None = None

    @property
    def c(self) -> ColumnCollection:
        """The columns, by key."""
        return self._columns

    @property
    def columns(self) -> ColumnCollection:
        """The columns, by key (same as :attr:`c`)."""
        return self._columns

    def _from_objects(self) -> list[Any]:
        return [self]

    def _tables(self) -> list[FromClause]:
        """The table-like FROM elements inside (for ON clause inference)."""
        return [self]

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("from", ctx.ref(self))

    def alias(self, name: str | None = None) -> Alias:
        """Return this FROM clause under another name (``table AS name``)."""
        return Alias(self, name)

    def join(
        self, right: Any, onclause: Any = None, isouter: bool = False, full: bool = False
    ) -> Join:
        """Return ``self JOIN right ON onclause`` (inferred from foreign keys when omitted)."""
        return Join(self, right, onclause, isouter, full)

    def outerjoin(self, right: Any, onclause: Any = None, full: bool = False) -> Join:
        """Return ``self LEFT OUTER JOIN right ON onclause``."""
        return Join(self, right, onclause, True, full)

    def select(self) -> Select:
        """Return ``SELECT * FROM self`` (all columns)."""
        from shardsession.sql.selects import Select

        return Select(self)

    def corresponding_column(self, column: ColumnElement) -> ColumnElement | None:
        """Return the column of this FROM clause that stands for *column*, or None."""
        if not isinstance(column, ColumnClause):
            return None
        base = column._base()
        for c in self._columns:
            if isinstance(c, ColumnClause) and c._base() is base:
                return c
        return None

    def _base_table(self) -> FromClause:
        return self


class TableClause(FromClause):
    """A lightweight table known only by name and column names (see :func:`table`)."""

    __visit_name__ = "table"

    def __init__(self, name: str, *columns: ColumnClause, schema: str | None = None) -> None:
        self.name = name
        self.schema = schema
        self._columns = ColumnCollection()
        for c in columns:
            if c.table is not None:
                raise ArgumentError(f"column {c!r} already belongs to a table")
            c.table = self
            self._columns.add(c, c.key)

    @property
    def fullname(self) -> str:
        """``schema.name`` or ``name``."""
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def primary_key(self) -> tuple[Any, ...]:
        """A lightweight table declares no primary key."""
        return ()


def table(name: str, *columns: ColumnClause, schema: str | None = None) -> TableClause:
    """Return a lightweight table of :func:`~shardsession.sql.elements.column` objects."""
    return TableClause(name, *columns, schema=schema)


class Alias(FromClause):
    """``element AS name``: a table (or lightweight table) under another name.

    Without a name, a unique ``anon_N`` name is chosen when the statement is compiled.
    """

    __visit_name__ = "alias"

    def __init__(self, element: FromClause, name: str | None = None) -> None:
        if isinstance(element, Alias):
            element = element.element
        self.element = element
        self.name = name
        self._columns = ColumnCollection()
        for c in element.columns:
            proxy = ColumnClause(c.name, c.type, table=self, proxied=c)  # type: ignore[attr-defined]
            proxy.key = c.key  # type: ignore[attr-defined]
            self._columns.add(proxy, proxy.key)

    @property
    def primary_key(self) -> tuple[Any, ...]:
        """The alias columns standing for the aliased table's primary key."""
        return tuple(self.corresponding_column(c) for c in getattr(self.element, "primary_key", ()))

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return _memo_key(ctx, self, lambda: ("alias", self.name, self.element._key(ctx)))

    def _base_table(self) -> FromClause:
        return self.element._base_table()


def _coerce_from(obj: Any) -> FromClause:
    from shardsession.sql.selects import Select

    if isinstance(obj, FromClause):
        return obj
    if (
        isinstance(obj, type)
        and hasattr(obj, "__table__")
        and not hasattr(obj, "__clause_element__")
    ):
        return obj.__table__
    if hasattr(obj, "__clause_element__"):
        el = obj.__clause_element__()
        if isinstance(el, FromClause):
            return el
        if isinstance(el, Select):
            return el.subquery()
    if hasattr(obj, "__table__"):
        return obj.__table__
    if isinstance(obj, Select):
        return obj.subquery()
    raise ArgumentError(f"{obj!r} cannot be used in FROM / JOIN")


def _join_target(obj: Any) -> tuple[FromClause, Any]:
    # ORM relationship attributes offer __join_info__() -> (target, onclause).
    if hasattr(obj, "__join_info__"):
        target, onclause = obj.__join_info__()
        return _coerce_from(target), onclause
    return _coerce_from(obj), None


def _infer_onclause(left: FromClause, right: FromClause) -> ColumnElement:
    """Build the ON clause from the foreign keys between *left*'s tables and *right*."""
    found: list[tuple[FromClause, list[tuple[Any, Any]]]] = []
    for lt in left._tables():
        pairs = _fk_pairs(lt, right) or _fk_pairs(right, lt)
        if pairs:
            found.append((lt, pairs))
    if not found:
        raise InvalidRequestError(
            f"cannot find a foreign key between {_desc(left)} and {_desc(right)}; "
            "give the ON clause explicitly: .join(target, onclause)"
        )
    if len(found) > 1:
        # Prefer the most recently joined table, as a chain of joins expects.
        found = found[-1:]
    pairs = found[0][1]
    return and_(*[a == b for a, b in pairs])


def _fk_pairs(child: FromClause, parent: FromClause) -> list[tuple[Any, Any]]:
    """(child column, parent column) pairs for foreign keys from *child* to *parent*."""
    parent_base = parent._base_table()
    by_constraint: dict[int, list[tuple[Any, Any]]] = {}
    for col in child.columns:
        base = col._base() if isinstance(col, ColumnClause) else None
        for fk in getattr(base, "foreign_keys", ()):
            try:
                target = fk.column
            except InvalidRequestError:
                continue
            if target.table is not parent_base:
                continue
            pcol = parent.corresponding_column(target)
            if pcol is None:
                continue
            key = id(fk.constraint) if fk.constraint is not None else id(fk)
            by_constraint.setdefault(key, []).append((col, pcol))
    if len(by_constraint) > 1:
        raise InvalidRequestError(
            f"more than one foreign key links {_desc(child)} and {_desc(parent)}; "
            "give the ON clause explicitly"
        )
    return next(iter(by_constraint.values()), [])


def _desc(f: FromClause) -> str:
    return repr(getattr(f, "name", None) or f)


class Join(FromClause):
    """``left [LEFT OUTER | FULL OUTER] JOIN right ON onclause``."""

    __visit_name__ = "join"

    def __init__(
        self,
        left: Any,
        right: Any,
        onclause: Any = None,
        isouter: bool = False,
        full: bool = False,
    ) -> None:
        self.left = _coerce_from(left)
        self.right, rel_on = _join_target(right)
        if onclause is None:
            onclause = rel_on
        if onclause is None:
            onclause = _infer_onclause(self.left, self.right)
        self.onclause = coerce_where(onclause)
        self.isouter = isouter or full
        self.full = full
        self._columns = ColumnCollection()
        for f in (self.left, self.right):
            for c in f.columns:
                self._columns.add(c, f"{getattr(f, 'name', None)}_{c._result_name}")

    def _tables(self) -> list[FromClause]:
        return self.left._tables() + self.right._tables()

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "join",
            self.isouter,
            self.full,
            self.left._key(ctx),
            self.right._key(ctx),
            self.onclause._key(ctx),
        )

    def _all_froms(self) -> list[FromClause]:
        out: list[FromClause] = [self]
        for side in (self.left, self.right):
            if isinstance(side, Join):
                out.extend(side._all_froms())
            else:
                out.append(side)
        return out


def join(
    left: Any, right: Any, onclause: Any = None, isouter: bool = False, full: bool = False
) -> Join:
    """Return ``left JOIN right ON onclause``."""
    return Join(left, right, onclause, isouter, full)


def outerjoin(left: Any, right: Any, onclause: Any = None, full: bool = False) -> Join:
    """Return ``left LEFT OUTER JOIN right ON onclause``."""
    return Join(left, right, onclause, True, full)


def _covered(froms: Iterable[FromClause]) -> set[int]:
    ids: set[int] = set()
    for f in froms:
        if isinstance(f, Join):
            ids.update(id(x) for x in f._all_froms())
        else:
            ids.add(id(f))
    return ids


class Subquery(FromClause):
    """``(SELECT ...) AS name``: a SELECT used as a FROM clause."""

    __visit_name__ = "subquery"

    def __init__(self, element: Select | TextualSelect, name: str | None = None) -> None:
        self.element = element
        self.name = name
        self._columns = ColumnCollection()
        for col, out in zip(element._result_columns, element._output_names()):
            proxy = ColumnClause(out, col.type, table=self, proxied=col)
            self._columns.add(proxy, out)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return _memo_key(ctx, self, lambda: ("subquery", self.name, self.element._key(ctx)))
