"""The SELECT statement, its entities, and SELECTs used as expressions (scalar, EXISTS)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from shardsession.exc import ArgumentError, InvalidRequestError
from shardsession.sql import types as sqltypes
from shardsession.sql.columns import ColumnClause, ColumnCollection
from shardsession.sql.elements import (
    ClauseElement,
    ColumnElement,
    KeyContext,
    _from_list,
    coerce_expression,
    coerce_where,
)
from shardsession.sql.expressions import BindParameter, UnaryExpression
from shardsession.sql.selectable import (
    FromClause,
    Join,
    Subquery,
    _coerce_from,
    _covered,
)
from shardsession.sql.textual import TextClause

__all__ = [
    "Exists",
    "ScalarSelect",
    "Select",
    "SelectEntity",
    "TextualSelect",
    "exists",
    "select",
]


class SelectEntity:
    """One item of a SELECT's list, as given: an ORM entity / table, or a column expression.

    :ivar entity: the mapped class (or aliased entity) for ORM entities, else None.
    :ivar expr: the object as it was passed to :func:`select`.
    :ivar from_: the FROM clause of an entity or table item, else None.
    :ivar columns: the result columns the item expands to.
    :ivar start: index of the item's first result column.
    """

    __slots__ = ("columns", "entity", "expr", "from_", "start")

    def __init__(
        self,
        expr: Any,
        entity: Any,
        from_: FromClause | None,
        columns: list[ColumnElement],
        start: int,
    ) -> None:
        self.expr, self.entity, self.from_, self.columns, self.start = (
            expr,
            entity,
            from_,
            columns,
            start,
        )

    @property
    def is_entity(self) -> bool:
        """True for an ORM entity (a class with ``__table__`` / ``__mapper__``)."""
        return self.entity is not None

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        if self.from_ is not None:
            ent = ctx.ref(self.entity) if self.entity is not None else None
            return ("ent", ent, self.from_._key(ctx))
        return ("c", self.columns[0]._key(ctx))


def _coerce_select_item(obj: Any, start: int) -> SelectEntity:
    if isinstance(obj, ColumnElement):
        return SelectEntity(obj, None, None, [obj], start)
    if isinstance(obj, FromClause):
        return SelectEntity(obj, None, obj, list(obj.columns), start)
    entity = obj if (hasattr(obj, "__mapper__") or hasattr(obj, "__table__")) else None
    if hasattr(obj, "__clause_element__"):
        el = obj.__clause_element__()
        if isinstance(el, FromClause):
            return SelectEntity(obj, entity, el, list(el.columns), start)
        if isinstance(el, ColumnElement):
            return SelectEntity(obj, None, None, [el], start)
        if isinstance(el, Select):
            sq = el.scalar_subquery()
            return SelectEntity(obj, None, None, [sq], start)
    if entity is not None and isinstance(getattr(obj, "__table__", None), FromClause):
        t = obj.__table__
        return SelectEntity(obj, obj, t, list(t.columns), start)
    if isinstance(obj, Select):
        sq = obj.scalar_subquery()
        return SelectEntity(obj, None, None, [sq], start)
    raise ArgumentError(f"{obj!r} cannot be selected: expected a column, table or mapped class")


class _Generative:
    _execution_options: dict[str, Any]

    def _generate(self) -> Any:
        new = copy.copy(self)
        for k, v in self.__dict__.items():
            if isinstance(v, list | dict):
                new.__dict__[k] = copy.copy(v)
        return new

    def execution_options(self, **kw: Any) -> Any:
        """Return a copy with execution options set (read by the session)."""
        new = self._generate()
        new._execution_options.update(kw)
        return new

    def get_execution_options(self) -> dict[str, Any]:
        """Return the execution options set on this statement."""
        return dict(self._execution_options)


class Select(_Generative, ClauseElement):
    """``SELECT``: build with :func:`select`; every method returns a new statement."""

    __visit_name__ = "select"
    is_select = True

    def __init__(self, *entities: Any) -> None:
        self._entities: list[SelectEntity] = []
        self._result_columns: list[ColumnElement] = []
        self._where: list[ClauseElement] = []
        self._having: list[ClauseElement] = []
        self._order_by: list[ColumnElement] = []
        self._group_by: list[ColumnElement] = []
        self._froms: list[FromClause] = []
        self._limit: BindParameter | None = None
        self._offset: BindParameter | None = None
        self._distinct = False
        self._distinct_on: list[ColumnElement] = []
        self._for_update: tuple[Any, ...] | None = None
        self._with_options: tuple[Any, ...] = ()
        self._execution_options: dict[str, Any] = {}
        self._correlate: tuple[Any, ...] | None = None
        self._add(entities)

    def _add(self, entities: Iterable[Any]) -> None:
        for e in entities:
            item = _coerce_select_item(e, len(self._result_columns))
            self._entities.append(item)
            self._result_columns.extend(item.columns)

    # -- inspection ---------------------------------------------------------

    @property
    def selected_columns(self) -> ColumnCollection:
        """The result columns, by key."""
        return ColumnCollection(self._result_columns)

    @property
    def column_descriptions(self) -> list[dict[str, Any]]:
        """One dict per selected item: ``name``, ``type``, ``expr``, ``entity``."""
        out = []
        for item in self._entities:
            if item.from_ is not None:
                name = getattr(item.entity, "__name__", None) or getattr(item.from_, "name", None)
                out.append(
                    {
                        "name": name,
                        "type": item.entity or item.from_,
                        "expr": item.expr,
                        "entity": item.entity,
                        "aliased": False,
                    }
                )
            else:
                col = item.columns[0]
                out.append(
                    {
                        "name": col._result_name,
                        "type": col.type,
                        "expr": item.expr,
                        "entity": getattr(item.expr, "class_", None),
                        "aliased": False,
                    }
                )
        return out

    def _output_names(self) -> list[str]:
        """Unique SQL names of the result columns (used for AS and subquery columns)."""
        names: list[str] = []
        used: set[str] = set()
        for i, col in enumerate(self._result_columns):
            base = col._result_name or f"anon_{i + 1}"
            name, n = base, 1
            while name in used:
                name = f"{base}_{n}"
                n += 1
            used.add(name)
            names.append(name)
        return names

    def _last_target(self) -> Any:
        """The entity or FROM clause that :meth:`filter_by` names refer to."""
        for f in reversed(self._froms):
            if isinstance(f, Join):
                return getattr(f, "_entity", None) or f.right
            return f
        for item in self._entities:
            if item.from_ is not None:
                return item.entity if item.entity is not None else item.from_
        froms = _from_list(self._result_columns)
        if froms:
            return froms[0]
        raise InvalidRequestError("filter_by() needs an entity or table in the statement")

    def _get_froms(self, enclosing: set[int] | None = None) -> list[FromClause]:
        explicit = list(self._froms)
        covered = _covered(explicit)
        derived = [
            f
            for f in _from_list([*self._result_columns, *self._where, *self._having])
            if id(f) not in covered
        ]
        if enclosing and self._correlate != ():
            if self._correlate is None:
                kept = [f for f in derived if id(f) not in enclosing]
            else:
                corr = _covered(self._correlate)
                kept = [f for f in derived if not (id(f) in corr and id(f) in enclosing)]
            if kept or explicit:
                derived = kept
        return explicit + derived

    # -- generative methods -------------------------------------------------

    def where(self, *clauses: Any) -> Select:
        """Return a copy with the conditions added (AND)."""
        new = self._generate()
        new._where.extend(coerce_where(c) for c in clauses)
        return new

    filter = where

    def filter_by(self, **kw: Any) -> Select:
        """Return a copy with ``name == value`` conditions on the last entity / table."""
        return self.where(*_filter_by_clauses(self._last_target(), kw))

    def having(self, *clauses: Any) -> Select:
        """Return a copy with HAVING conditions added (AND)."""
        new = self._generate()
        new._having.extend(coerce_where(c) for c in clauses)
        return new

    def _resolve_name(self, obj: Any) -> ColumnElement:
        if isinstance(obj, str):
            for col, name in zip(self._result_columns, self._output_names()):
                if name == obj or col._result_name == obj:
                    return col
            raise ArgumentError(f"no result column named {obj!r} to order or group by")
        el = coerce_expression(obj)
        if (
            isinstance(el, UnaryExpression)
            and el.operator is None
            and isinstance(el.element, ColumnClause)
            and el.element.table is None
            and not el.element._is_literal
        ):
            # desc("name"): point the key at the result column it names.
            return UnaryExpression(self._resolve_name(el.element.name), None, el.modifier, el.nulls)
        return el

    def order_by(self, *clauses: Any) -> Select:
        """Return a copy with ORDER BY keys added; ``order_by(None)`` removes them."""
        new = self._generate()
        if len(clauses) == 1 and clauses[0] is None:
            new._order_by = []
        else:
            new._order_by.extend(self._resolve_name(c) for c in clauses)
        return new

    def group_by(self, *clauses: Any) -> Select:
        """Return a copy with GROUP BY expressions added; ``group_by(None)`` removes them."""
        new = self._generate()
        if len(clauses) == 1 and clauses[0] is None:
            new._group_by = []
        else:
            new._group_by.extend(self._resolve_name(c) for c in clauses)
        return new

    def _int_bind(self, value: Any, what: str) -> BindParameter | None:
        if value is None:
            return None
        if isinstance(value, BindParameter):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ArgumentError(f"{what} must be a non-negative int, got {value!r}")
        return BindParameter(None, value, sqltypes.BigInteger())

    def limit(self, limit: int | None) -> Select:
        """Return a copy with ``LIMIT`` (None removes it)."""
        new = self._generate()
        new._limit = self._int_bind(limit, "limit")
        return new

    def offset(self, offset: int | None) -> Select:
        """Return a copy with ``OFFSET`` (None removes it)."""
        new = self._generate()
        new._offset = self._int_bind(offset, "offset")
        return new

    def slice(self, start: int, stop: int) -> Select:
        """Return a copy limited to rows ``start`` (inclusive) to ``stop`` (exclusive)."""
        return self.offset(start or None).limit(max(stop - start, 0))

    def distinct(self, *expr: Any) -> Select:
        """Return a copy with ``SELECT DISTINCT`` (with *expr*: ``DISTINCT ON (expr...)``)."""
        new = self._generate()
        new._distinct = True
        new._distinct_on.extend(coerce_expression(e) for e in expr)
        return new

    def with_for_update(
        self,
        *,
        nowait: bool = False,
        read: bool = False,
        of: Any = None,
        skip_locked: bool = False,
        key_share: bool = False,
    ) -> Select:
        """Return a copy locking the selected rows (``FOR UPDATE`` / ``FOR SHARE`` ...)."""
        if nowait and skip_locked:
            raise ArgumentError("with_for_update(): nowait and skip_locked exclude each other")
        new = self._generate()
        ofs: tuple[FromClause, ...] = ()
        if of is not None:
            items = of if isinstance(of, list | tuple) else [of]
            ofs = tuple(i.table if isinstance(i, ColumnClause) else _coerce_from(i) for i in items)
        new._for_update = (read, nowait, skip_locked, key_share, ofs)
        return new

    def options(self, *opts: Any) -> Select:
        """Return a copy carrying ORM loader options (stored for the ORM, not compiled)."""
        new = self._generate()
        new._with_options = self._with_options + opts
        return new

    def select_from(self, *froms: Any) -> Select:
        """Return a copy with explicit FROM clauses (tables, joins, entities)."""
        new = self._generate()
        for f in froms:
            fc = _coerce_from(f)
            if all(x is not fc for x in new._froms):
                new._froms.append(fc)
        return new

    def join(
        self, target: Any, onclause: Any = None, *, isouter: bool = False, full: bool = False
    ) -> Select:
        """Return a copy joining *target* to the statement's FROM.

        The join starts at the existing explicit join (or the first FROM of the
        statement); without *onclause* it is inferred from foreign keys.
        """
        new = self._generate()
        if new._froms:
            left = new._froms[-1]
        else:
            froms = self._get_froms()
            if not froms:
                raise InvalidRequestError("join() needs something to join from")
            left = froms[0]
        j = Join(left, target, onclause, isouter, full)
        j._entity = target if hasattr(target, "__table__") else None  # type: ignore[attr-defined]
        if new._froms:
            new._froms[-1] = j
        else:
            new._froms.append(j)
        return new

    def outerjoin(self, target: Any, onclause: Any = None, *, full: bool = False) -> Select:
        """Return a copy with a ``LEFT OUTER JOIN`` to *target*."""
        return self.join(target, onclause, isouter=True, full=full)

    def join_from(
        self, from_: Any, target: Any, onclause: Any = None, *, isouter: bool = False
    ) -> Select:
        """Return a copy joining *from_* to *target* explicitly."""
        new = self._generate()
        j = Join(from_, target, onclause, isouter)
        new._froms.append(j)
        return new

    def correlate(self, *froms: Any) -> Select:
        """Control correlation as a subquery: only *froms* are taken from the enclosing query.

        ``correlate(None)`` turns correlation off.
        """
        new = self._generate()
        if len(froms) == 1 and froms[0] is None:
            new._correlate = ()
        else:
            new._correlate = tuple(_coerce_from(f) for f in froms)
        return new

    def add_columns(self, *entities: Any) -> Select:
        """Return a copy with more result columns or entities."""
        new = self._generate()
        new._add(entities)
        return new

    def with_only_columns(self, *entities: Any, maintain_column_froms: bool = False) -> Select:
        """Return a copy selecting only *entities*; WHERE, joins and the rest are kept.

        As in SQLAlchemy 2, the FROM tables implied by the old columns are dropped
        unless *maintain_column_froms* is true (explicit FROMs and joins always stay).
        """
        new = self._generate()
        if maintain_column_froms:
            covered = _covered(new._froms)
            new._froms.extend(f for f in _from_list(self._result_columns) if id(f) not in covered)
        new._entities = []
        new._result_columns = []
        new._add(entities)
        return new

    # -- derived expressions ------------------------------------------------

    def subquery(self, name: str | None = None) -> Subquery:
        """Return this SELECT as a FROM clause (``(SELECT ...) AS name``)."""
        return Subquery(self, name)

    def alias(self, name: str | None = None) -> Subquery:
        """Same as :meth:`subquery`."""
        return Subquery(self, name)

    def scalar_subquery(self) -> ScalarSelect:
        """Return this SELECT as a single value expression (``(SELECT ...)``)."""
        return ScalarSelect(self)

    def label(self, name: str) -> ColumnElement:
        """Return this SELECT as a scalar subquery named *name*."""
        return self.scalar_subquery().label(name)

    def exists(self) -> Exists:
        """Return ``EXISTS (this SELECT)``."""
        return Exists(self)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        fu = self._for_update
        return (
            "select",
            tuple(e._key(ctx) for e in self._entities),
            tuple(w._key(ctx) for w in self._where),
            tuple(f._key(ctx) for f in self._froms),
            tuple(h._key(ctx) for h in self._having),
            tuple(o._key(ctx) for o in self._order_by),
            tuple(g._key(ctx) for g in self._group_by),
            self._limit._key(ctx) if self._limit is not None else None,
            self._offset._key(ctx) if self._offset is not None else None,
            self._distinct,
            tuple(d._key(ctx) for d in self._distinct_on),
            (*fu[:4], tuple(f._key(ctx) for f in fu[4])) if fu else None,
            None if self._correlate is None else tuple(ctx.ref(c) for c in self._correlate),
        )


def _filter_by_clauses(target: Any, kw: dict[str, Any]) -> list[ColumnElement]:
    out = []
    for name, value in kw.items():
        attr: Any = None
        if not isinstance(target, FromClause) and hasattr(target, name):
            attr = getattr(target, name)
            if hasattr(attr, "__clause_element__"):
                attr = attr.__clause_element__()
            if not isinstance(attr, ColumnElement):
                attr = None
        if attr is None:
            fc = target if isinstance(target, FromClause) else _coerce_from(target)
            attr = fc.c.get(name)
        if attr is None:
            raise InvalidRequestError(f"filter_by(): {_desc_target(target)} has no column {name!r}")
        out.append(attr == value)
    return out


def _desc_target(target: Any) -> str:
    return getattr(target, "__name__", None) or repr(getattr(target, "name", target))


def select(*entities: Any) -> Select:
    """Return ``SELECT`` of columns, expressions, tables or ORM entities (mapped classes)."""
    return Select(*entities)


class ScalarSelect(ColumnElement):
    """A SELECT returning one value, used as an expression: ``(SELECT ...)``."""

    __visit_name__ = "scalar_select"

    def __init__(self, element: Select) -> None:
        self.element = element
        cols = element._result_columns
        self.type = cols[0].type if len(cols) == 1 else sqltypes.NullType()

    def where(self, *clauses: Any) -> ScalarSelect:
        """Return a copy whose SELECT has the conditions added."""
        return ScalarSelect(self.element.where(*clauses))

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("scalar", self.element._key(ctx))


class Exists(ColumnElement):
    """``EXISTS (SELECT ...)``."""

    __visit_name__ = "exists"
    type = sqltypes.Boolean()

    def __init__(self, element: Select) -> None:
        self.element = element

    def where(self, *clauses: Any) -> Exists:
        """Return a copy whose SELECT has the conditions added."""
        return Exists(self.element.where(*clauses))

    def select_from(self, *froms: Any) -> Exists:
        """Return a copy whose SELECT has explicit FROM clauses."""
        return Exists(self.element.select_from(*froms))

    def correlate(self, *froms: Any) -> Exists:
        """Return a copy whose SELECT correlates only *froms*."""
        return Exists(self.element.correlate(*froms))

    def select(self) -> Select:
        """Return ``SELECT EXISTS (...)``."""
        return Select(self)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("exists", self.element._key(ctx))


def exists(*args: Any) -> Exists:
    """Return ``EXISTS (subquery)``.

    ``exists(select_stmt)`` wraps a SELECT; ``exists()`` / ``exists(col, ...)`` starts a
    ``SELECT *`` / ``SELECT col`` to be completed with ``.where(...)``.
    """
    if len(args) == 1 and isinstance(args[0], Select):
        return Exists(args[0])
    from shardsession.sql.elements import literal_column

    return Exists(Select(*args) if args else Select(literal_column("*")))


class TextualSelect(_Generative, ClauseElement):
    """A :func:`~shardsession.sql.elements.text` statement with declared result columns."""

    __visit_name__ = "textual_select"
    is_select = True

    def __init__(self, text_: TextClause, columns: list[ColumnElement]) -> None:
        self.element = text_
        self._result_columns = columns
        self._entities = [SelectEntity(c, None, None, [c], i) for i, c in enumerate(columns)]
        self._execution_options: dict[str, Any] = dict(text_._execution_options)
        self._with_options: tuple[Any, ...] = ()

    @property
    def selected_columns(self) -> ColumnCollection:
        """The declared result columns."""
        return ColumnCollection(self._result_columns)

    def _output_names(self) -> list[str]:
        return [c._result_name or f"anon_{i + 1}" for i, c in enumerate(self._result_columns)]

    def bindparams(self, *binds: Any, **values: Any) -> TextualSelect:
        """Return a copy with parameter values set (see :meth:`TextClause.bindparams`)."""
        new = self._generate()
        new.element = self.element.bindparams(*binds, **values)
        return new

    def subquery(self, name: str | None = None) -> Subquery:
        """Return this statement as a FROM clause."""
        return Subquery(self, name)  # type: ignore[arg-type]

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "textual",
            self.element._key(ctx),
            tuple(c._key(ctx) for c in self._result_columns),
        )
