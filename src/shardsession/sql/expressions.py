"""Expression classes: bound values, operators, boolean logic, labels, casts, CASE."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shardsession.exc import ArgumentError
from shardsession.sql import types as sqltypes
from shardsession.sql.columns import ColumnClause
from shardsession.sql.elements import (
    ClauseElement,
    ColumnElement,
    KeyContext,
    _from_list,
    coerce_expression,
    coerce_where,
)

__all__ = [
    "Between",
    "BinaryExpression",
    "BindParameter",
    "BooleanClauseList",
    "Case",
    "Cast",
    "ClauseList",
    "False_",
    "Grouping",
    "InList",
    "Label",
    "Null",
    "True_",
    "Tuple",
    "UnaryExpression",
    "and_",
    "asc",
    "bindparam",
    "case",
    "cast",
    "desc",
    "distinct",
    "false",
    "literal",
    "not_",
    "null",
    "nulls_first",
    "nulls_last",
    "or_",
    "true",
    "tuple_",
]


class BindParameter(ColumnElement):
    """A value sent to PostgreSQL as a bound parameter, never spliced into the SQL.

    :param key: the parameter name the caller may supply a value under; None for an
        anonymous literal (its value is always the one given here).
    :param value: the value (for a named parameter: the default if none is supplied).
    :param type_: the type used to convert the value for psycopg.
    :param expanding: the value is a list bound as one PostgreSQL array.
    """

    __visit_name__ = "bindparam"

    def __init__(
        self,
        key: str | None,
        value: Any = None,
        type_: Any = None,
        *,
        expanding: bool = False,
        required: bool | None = None,
        _has_value: bool = True,
    ) -> None:
        self.key = key
        self.value = value
        t = sqltypes.to_type(type_) if type_ is not None else None
        if (t is None or isinstance(t, sqltypes.NullType)) and not expanding:
            t = sqltypes.infer_literal_type(value)
        self.type = t or sqltypes.NullType()
        self.expanding = expanding
        self._has_value = _has_value
        self.required = (not _has_value) if required is None else required

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        if self._has_value:
            seen = ctx.bind_index.get(id(self))
            if seen is not None:
                # The same object appearing again shares its value; the key must say so,
                # or a statement with two distinct values could reuse this plan.
                return ("bindref", seen)
            ctx.bind_index[id(self)] = len(ctx.values)
            ctx.values.append(self.value)
        return ("bind", self.key, self.type.type_key(), self.expanding, self._has_value)

    @property
    def _result_name(self) -> str | None:
        return self.key

    def __repr__(self) -> str:
        return f"BindParameter({self.key!r}, {self.value!r})"


def bindparam(
    key: str, value: Any = None, type_: Any = None, *, expanding: bool = False, **kw: Any
) -> BindParameter:
    """Return a named bound parameter; its value is given at execution (``params[key]``).

    When *value* is given it is used if the execution supplies none.  An *expanding*
    parameter takes a list (for ``col.in_(bindparam("ids", expanding=True))``).
    """
    has_value = "value" in kw or value is not None
    if "callable_" in kw:
        raise ArgumentError("bindparam(callable_=...) is not supported")
    return BindParameter(
        key,
        value,
        type_,
        expanding=expanding,
        required=kw.get("required"),
        _has_value=has_value,
    )


def literal(value: Any, type_: Any = None) -> BindParameter:
    """Return a Python value as a bound-parameter expression (``select(literal(1))``)."""
    return BindParameter(None, value, type_)


class _Constant(ColumnElement):
    _sql = ""

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (self._sql,)

    __visit_name__ = "constant"


class Null(_Constant):
    """SQL ``NULL``."""

    _sql = "NULL"


class True_(_Constant):
    """SQL ``true``."""

    _sql = "true"
    type = sqltypes.Boolean()


class False_(_Constant):
    """SQL ``false``."""

    _sql = "false"
    type = sqltypes.Boolean()


def null() -> Null:
    """Return SQL ``NULL``."""
    return Null()


def true() -> True_:
    """Return SQL ``true``."""
    return True_()


def false() -> False_:
    """Return SQL ``false``."""
    return False_()


_PREC = {
    "OR": 1,
    "AND": 2,
    "NOT": 3,
    "=": 4,
    "<>": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "IS": 4,
    "IS NOT": 4,
    "LIKE": 4,
    "NOT LIKE": 4,
    "ILIKE": 4,
    "NOT ILIKE": 4,
    "IN": 4,
    "NOT IN": 4,
    "||": 6,
    "+": 7,
    "-": 7,
    "*": 8,
    "/": 8,
    "%": 8,
}


class BinaryExpression(ColumnElement):
    """``left operator right``."""

    __visit_name__ = "binary"

    def __init__(
        self,
        left: ColumnElement,
        right: ColumnElement,
        operator: str,
        type_: Any = None,
        precedence: int | None = None,
        escape: str | None = None,
    ) -> None:
        self.left = left
        self.right = right
        self.operator = operator
        self.type = sqltypes.to_type(type_) if type_ is not None else left.type
        self._precedence = precedence if precedence is not None else _PREC.get(operator, 5)
        self.escape = escape

    def __bool__(self) -> bool:
        # Lets `col in [c1, c2]` and `c1 == c2` in plain Python compare identities.
        if self.operator == "=":
            return self.left is self.right
        if self.operator == "<>":
            return self.left is not self.right
        return super().__bool__()

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "binary",
            self.operator,
            self.left._key(ctx),
            self.right._key(ctx),
            self.escape,
            self._precedence,
        )

    def _from_objects(self) -> list[Any]:
        return _from_list([self.left, self.right])


class InList(ColumnElement):
    """``expr = ANY(array)`` / ``expr <> ALL(array)``: IN with a list bound as one array."""

    __visit_name__ = "in_list"
    _precedence = 4
    type = sqltypes.Boolean()

    def __init__(self, left: ColumnElement, right: BindParameter, negate: bool) -> None:
        self.left = left
        self.right = right
        self.negate = negate

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("in_list", self.negate, self.left._key(ctx), self.right._key(ctx))

    def _from_objects(self) -> list[Any]:
        return self.left._from_objects()


class Between(ColumnElement):
    """``expr BETWEEN lower AND upper``."""

    __visit_name__ = "between"
    _precedence = 4
    type = sqltypes.Boolean()

    def __init__(self, expr: ColumnElement, lower: Any, upper: Any, symmetric: bool) -> None:
        self.expr, self.lower, self.upper, self.symmetric = expr, lower, upper, symmetric

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "between",
            self.symmetric,
            self.expr._key(ctx),
            self.lower._key(ctx),
            self.upper._key(ctx),
        )

    def _from_objects(self) -> list[Any]:
        return _from_list([self.expr, self.lower, self.upper])


class UnaryExpression(ColumnElement):
    """A prefix operator (``NOT x``, ``-x``, ``DISTINCT x``) and/or ORDER BY modifiers."""

    __visit_name__ = "unary"

    def __init__(
        self,
        element: ColumnElement,
        operator: str | None = None,
        modifier: str | None = None,
        nulls: str | None = None,
        type_: Any = None,
    ) -> None:
        self.element = element
        self.operator = operator
        self.modifier = modifier  # "ASC" / "DESC"
        self.nulls = nulls  # "FIRST" / "LAST"
        self.type = sqltypes.to_type(type_) if type_ is not None else element.type
        self._precedence = {"NOT": 3, "-": 9}.get(operator or "", 100)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("unary", self.operator, self.modifier, self.nulls, self.element._key(ctx))

    def _from_objects(self) -> list[Any]:
        return self.element._from_objects()

    @property
    def _result_name(self) -> str | None:
        return self.element._result_name if self.operator in (None, "DISTINCT") else None


def _order(el: Any, modifier: str | None = None, nulls: str | None = None) -> UnaryExpression:
    # A string names a result column (a label): ORDER BY "name" refers to it.
    e = ColumnClause(el) if isinstance(el, str) else coerce_expression(el)
    if isinstance(e, UnaryExpression) and e.operator is None:
        return UnaryExpression(e.element, None, modifier or e.modifier, nulls or e.nulls)
    return UnaryExpression(e, None, modifier, nulls)


def asc(column: Any) -> UnaryExpression:
    """Return *column* as an ascending ORDER BY key."""
    return _order(column, "ASC")


def desc(column: Any) -> UnaryExpression:
    """Return *column* as a descending ORDER BY key."""
    return _order(column, "DESC")


def nulls_first(column: Any) -> UnaryExpression:
    """Return *column* as an ORDER BY key sorting NULLs first."""
    return _order(column, nulls="FIRST")


def nulls_last(column: Any) -> UnaryExpression:
    """Return *column* as an ORDER BY key sorting NULLs last."""
    return _order(column, nulls="LAST")


def distinct(expr: Any) -> UnaryExpression:
    """Return ``DISTINCT expr`` (e.g. ``func.count(distinct(t.c.x))``)."""
    e = coerce_expression(expr)
    return UnaryExpression(e, "DISTINCT", type_=e.type)


class ClauseList(ClauseElement):
    """A comma-separated list of expressions."""

    __visit_name__ = "clause_list"

    def __init__(self, clauses: Iterable[ClauseElement]) -> None:
        self.clauses = list(clauses)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("list", *(c._key(ctx) for c in self.clauses))

    def _from_objects(self) -> list[Any]:
        return _from_list(self.clauses)


class Tuple(ColumnElement):
    """A row value ``(a, b, ...)``, e.g. for ``tuple_(a, b).in_([(1, 2)])``."""

    __visit_name__ = "tuple"

    def __init__(self, *clauses: Any) -> None:
        self.clauses = [coerce_expression(c) for c in clauses]

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("tuple", *(c._key(ctx) for c in self.clauses))

    def _from_objects(self) -> list[Any]:
        return _from_list(self.clauses)


def tuple_(*clauses: Any) -> Tuple:
    """Return the row value ``(a, b, ...)``."""
    return Tuple(*clauses)


class Grouping(ColumnElement):
    """An element in parentheses."""

    __visit_name__ = "grouping"

    def __init__(self, element: ClauseElement) -> None:
        self.element = element
        self.type = getattr(element, "type", sqltypes.NullType())

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("group", self.element._key(ctx))

    def _from_objects(self) -> list[Any]:
        return self.element._from_objects()


class BooleanClauseList(ColumnElement):
    """Conditions joined by ``AND`` or ``OR``."""

    __visit_name__ = "boolean_list"
    type = sqltypes.Boolean()

    def __init__(self, operator: str, clauses: list[ClauseElement]) -> None:
        self.operator = operator
        self.clauses = clauses
        self._precedence = _PREC[operator]

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("bool", self.operator, *(c._key(ctx) for c in self.clauses))

    def _from_objects(self) -> list[Any]:
        return _from_list(self.clauses)


def _boolean(op: str, clauses: tuple[Any, ...]) -> ColumnElement:
    flat: list[ClauseElement] = []
    for c in clauses:
        if c is None:
            continue
        el = coerce_where(c)
        if isinstance(el, BooleanClauseList) and el.operator == op:
            flat.extend(el.clauses)
        else:
            flat.append(el)
    if not flat:
        return True_() if op == "AND" else False_()
    if len(flat) == 1 and isinstance(flat[0], ColumnElement):
        return flat[0]
    return BooleanClauseList(op, flat)


def and_(*clauses: Any) -> ColumnElement:
    """Return the conjunction of *clauses* (``true`` when there are none)."""
    return _boolean("AND", clauses)


def or_(*clauses: Any) -> ColumnElement:
    """Return the disjunction of *clauses* (``false`` when there are none)."""
    return _boolean("OR", clauses)


def not_(clause: Any) -> ColumnElement:
    """Return ``NOT clause``."""
    el = coerce_where(clause)
    if isinstance(el, True_):
        return False_()
    if isinstance(el, False_):
        return True_()
    return UnaryExpression(el, "NOT", type_=sqltypes.Boolean())  # type: ignore[arg-type]


class Label(ColumnElement):
    """``expr AS name``."""

    __visit_name__ = "label"

    def __init__(self, name: str, element: Any) -> None:
        self.name = name
        self.element = coerce_expression(element)
        self.type = self.element.type

    @property
    def _result_name(self) -> str | None:
        return self.name

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("label", self.name, self.element._key(ctx))

    def _from_objects(self) -> list[Any]:
        return self.element._from_objects()


class Cast(ColumnElement):
    """``CAST(expr AS type)``."""

    __visit_name__ = "cast"

    def __init__(self, expr: Any, type_: Any) -> None:
        self.type = sqltypes.to_type(type_)
        self.element = coerce_expression(expr, self.type)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("cast", self.type.type_key(), self.element._key(ctx))

    def _from_objects(self) -> list[Any]:
        return self.element._from_objects()

    @property
    def _result_name(self) -> str | None:
        return self.element._result_name


def cast(expr: Any, type_: Any) -> Cast:
    """Return ``CAST(expr AS type)``."""
    return Cast(expr, type_)


class Case(ColumnElement):
    """``CASE WHEN cond THEN value ... ELSE else_ END``."""

    __visit_name__ = "case"

    def __init__(self, *whens: Any, value: Any = None, else_: Any = None) -> None:
        pairs: list[tuple[Any, Any]]
        if len(whens) == 1 and isinstance(whens[0], dict):
            pairs = list(whens[0].items())
        else:
            pairs = list(whens)
        if not pairs:
            raise ArgumentError("case() needs at least one (condition, value) pair")
        self.value = coerce_expression(value) if value is not None else None
        self.whens = [
            (
                coerce_expression(c, self.value.type)
                if self.value is not None
                else coerce_where(c),
                coerce_expression(r),
            )
            for c, r in pairs
        ]
        self.else_ = coerce_expression(else_) if else_ is not None else None
        results = [r for _, r in self.whens] + ([self.else_] if self.else_ is not None else [])
        self.type = sqltypes.coerce_types(r.type for r in results)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "case",
            self.value._key(ctx) if self.value is not None else None,
            tuple((c._key(ctx), r._key(ctx)) for c, r in self.whens),
            self.else_._key(ctx) if self.else_ is not None else None,
        )

    def _from_objects(self) -> list[Any]:
        items: list[Any] = [self.value, self.else_]
        for c, r in self.whens:
            items += [c, r]
        return _from_list(items)


def case(*whens: Any, value: Any = None, else_: Any = None) -> Case:
    """Return a ``CASE`` expression.

    ``case((cond, result), ..., else_=x)`` is the searched form; with *value*,
    ``case({v1: r1, v2: r2}, value=expr)`` compares *expr* to each key.
    """
    return Case(*whens, value=value, else_=else_)
