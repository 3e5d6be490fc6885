"""The base of the expression language: :class:`ClauseElement` and the column operators.

Every piece of a statement is a :class:`ClauseElement`.  Elements are immutable
once built; operators on :class:`ColumnElement` build new elements.  Each element
can state its *structure* as a hashable cache key (:meth:`ClauseElement._key`) while
pushing the Python values it carries into a separate list, so that statements that
differ only in their values share one compiled form (see :mod:`.compiler`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shardsession.exc import ArgumentError
from shardsession.sql import types as sqltypes

__all__ = [
    "ClauseElement",
    "ColumnElement",
    "KeyContext",
    "coerce_expression",
    "coerce_where",
]


class KeyContext:
    """Collects the values of a statement while its structural cache key is built.

    :ivar values: the Python values of the statement's bound parameters, in key order.
    :ivar bind_index: ``id(BindParameter)`` → index into :attr:`values`.
    :ivar refs: objects referenced by ``id()`` in the key; kept alive with the cache entry
        so that an id can never be reused by another object while the entry exists.
    """

    __slots__ = ("bind_index", "ordinals", "refs", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.bind_index: dict[int, int] = {}
        self.refs: list[Any] = []
        self.ordinals: dict[int, int] = {}

    def memo(self, obj: Any, build: Any) -> tuple[Any, ...]:
        """Key an object that may appear several times (an alias, a subquery).

        The first appearance gives its full key, later ones a back-reference to the
        ordinal of the first, so the key says which appearances are the same object.
        """
        i = self.ordinals.get(id(obj))
        if i is not None:
            return ("ref", i)
        i = self.ordinals[id(obj)] = len(self.ordinals)
        self.refs.append(obj)
        return ("def", i, build())

    def ref(self, obj: Any) -> int:
        """Return ``id(obj)`` and remember *obj* so that the id stays unique."""
        self.refs.append(obj)
        return id(obj)


class ClauseElement:
    """Base class of every SQL expression and statement."""

    __visit_name__ = "clause"
    #: precedence when this element is an operand; atoms bind tightest.
    _precedence = 100

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        """Return the structural cache key of this element, pushing values into *ctx*."""
        raise NotImplementedError(f"{type(self).__name__} has no cache key")

    def _from_objects(self) -> list[Any]:
        """Return the FROM clauses (tables, aliases, subqueries) this element refers to."""
        return []

    def __bool__(self) -> bool:
        raise TypeError(
            "the truth value of a SQL expression is not defined; "
            "combine conditions with and_() / or_() or & / |"
        )

    def __clause_element__(self) -> ClauseElement:
        return self

    def compile(self) -> Any:
        """Compile this element to a :class:`~shardsession.sql.compiler.CompiledStatement`."""
        from shardsession.sql.compiler import compile_statement

        return compile_statement(self)

    def __str__(self) -> str:
        from shardsession.sql.compiler import sql_text

        return sql_text(self)


def _from_list(elements: Iterable[ClauseElement | None]) -> list[Any]:
    seen: dict[int, Any] = {}
    for el in elements:
        if el is not None:
            for f in el._from_objects():
                seen.setdefault(id(f), f)
    return list(seen.values())


# ---------------------------------------------------------------------------
# coercion


def coerce_expression(obj: Any, type_hint: sqltypes.TypeEngine | None = None) -> ColumnElement:
    """Return *obj* as a :class:`ColumnElement`; plain Python values become bound values.

    Objects with ``__clause_element__()`` (ORM attributes) are unwrapped first.
    """
    if isinstance(obj, ColumnElement):
        return obj
    if obj is None:
        return Null()
    if hasattr(obj, "__clause_element__"):
        el = obj.__clause_element__()
        if isinstance(el, ColumnElement):
            return el
        from shardsession.sql.selects import Select

        if isinstance(el, Select):
            return el.scalar_subquery()
        raise ArgumentError(f"{obj!r} is not a column expression")
    from shardsession.sql.selects import Select

    if isinstance(obj, Select):
        return obj.scalar_subquery()
    if isinstance(obj, ClauseElement):
        raise ArgumentError(f"{obj!r} cannot be used as a column expression")
    return BindParameter(None, obj, type_hint)


def coerce_where(obj: Any) -> ClauseElement:
    """Return *obj* as a condition for WHERE / HAVING / ON (text and columns allowed)."""
    if isinstance(obj, TextClause):
        return obj
    if isinstance(obj, bool):
        return True_() if obj else False_()
    el = coerce_expression(obj)
    if isinstance(el, BindParameter):
        raise ArgumentError(f"{obj!r} is not a SQL condition")
    return el


# ---------------------------------------------------------------------------
# column elements and their operators


class ColumnElement(ClauseElement):
    """An expression with a value and a :attr:`type`: it offers the column operators."""

    __visit_name__ = "column_element"
    type: sqltypes.TypeEngine = sqltypes.NullType()

    __hash__ = ClauseElement.__hash__

    @property
    def _result_name(self) -> str | None:
        """The name a result column of this expression gets (None: anonymous)."""
        return None

    def _bind(self, other: Any) -> ColumnElement:
        return coerce_expression(other, self.type)

    def _compare(self, op: str, other: Any) -> ColumnElement:
        if other is None or isinstance(other, Null):
            if op == "=":
                return BinaryExpression(self, Null(), "IS", sqltypes.Boolean())
            if op == "<>":
                return BinaryExpression(self, Null(), "IS NOT", sqltypes.Boolean())
        return BinaryExpression(self, self._bind(other), op, sqltypes.Boolean())

    def __eq__(self, other: Any) -> ColumnElement:  # type: ignore[override]
        return self._compare("=", other)

    def __ne__(self, other: Any) -> ColumnElement:  # type: ignore[override]
        return self._compare("<>", other)

    def __lt__(self, other: Any) -> ColumnElement:
        return self._compare("<", other)

    def __le__(self, other: Any) -> ColumnElement:
        return self._compare("<=", other)

    def __gt__(self, other: Any) -> ColumnElement:
        return self._compare(">", other)

    def __ge__(self, other: Any) -> ColumnElement:
        return self._compare(">=", other)

    def _arith(self, op: str, other: Any, reverse: bool = False) -> ColumnElement:
        other_el = self._bind(other)
        if op == "+" and isinstance(self.type, sqltypes.String):
            op = "||"
        left, right = (other_el, self) if reverse else (self, other_el)
        return BinaryExpression(left, right, op, self.type)

    def __add__(self, other: Any) -> ColumnElement:
        return self._arith("+", other)

    def __radd__(self, other: Any) -> ColumnElement:
        return self._arith("+", other, True)

    def __sub__(self, other: Any) -> ColumnElement:
        return self._arith("-", other)

    def __rsub__(self, other: Any) -> ColumnElement:
        return self._arith("-", other, True)

    def __mul__(self, other: Any) -> ColumnElement:
        return self._arith("*", other)

    def __rmul__(self, other: Any) -> ColumnElement:
        return self._arith("*", other, True)

    def __truediv__(self, other: Any) -> ColumnElement:
        return self._arith("/", other)

    def __rtruediv__(self, other: Any) -> ColumnElement:
        return self._arith("/", other, True)

    def __mod__(self, other: Any) -> ColumnElement:
        return self._arith("%", other)

    def __rmod__(self, other: Any) -> ColumnElement:
        return self._arith("%", other, True)

    def __neg__(self) -> ColumnElement:
        return UnaryExpression(self, operator="-", type_=self.type)

    def __and__(self, other: Any) -> ColumnElement:
        return and_(self, other)

    def __rand__(self, other: Any) -> ColumnElement:
        return and_(other, self)

    def __or__(self, other: Any) -> ColumnElement:
        return or_(self, other)

    def __ror__(self, other: Any) -> ColumnElement:
        return or_(other, self)

    def __invert__(self) -> ColumnElement:
        return not_(self)

    def op(self, opstring: str, precedence: int = 5, is_comparison: bool = False) -> Any:
        """Return a function applying the custom binary operator *opstring*.

        ``col.op("->>")("key")`` renders ``col ->> %s``.
        """
        if not opstring or any(c in opstring for c in ";'\"") or "--" in opstring:
            raise ArgumentError(f"invalid SQL operator {opstring!r}")

        def apply(other: Any) -> ColumnElement:
            t = sqltypes.Boolean() if is_comparison else self.type
            return BinaryExpression(self, self._bind(other), opstring, t, precedence)

        return apply

    def in_(self, other: Any) -> ColumnElement:
        """``col IN (...)``: *other* is a list of values, a subquery or a bindparam of a list.

        A list of plain values is bound as one array (``col = ANY(%s)``), so lists of any
        length share one compiled statement; an empty list is always false.
        """
        return _in(self, other, negate=False)

    def not_in(self, other: Any) -> ColumnElement:
        """``col NOT IN (...)``; the negation of :meth:`in_` (an empty list is always true)."""
        return _in(self, other, negate=True)

    notin_ = not_in

    def like(self, other: Any, escape: str | None = None) -> ColumnElement:
        """``col LIKE pattern``."""
        return _like(self, "LIKE", other, escape)

    def ilike(self, other: Any, escape: str | None = None) -> ColumnElement:
        """``col ILIKE pattern`` (case-insensitive)."""
        return _like(self, "ILIKE", other, escape)

    def not_like(self, other: Any, escape: str | None = None) -> ColumnElement:
        """``col NOT LIKE pattern``."""
        return _like(self, "NOT LIKE", other, escape)

    def not_ilike(self, other: Any, escape: str | None = None) -> ColumnElement:
        """``col NOT ILIKE pattern``."""
        return _like(self, "NOT ILIKE", other, escape)

    def _affix(self, other: Any, before: bool, after: bool, autoescape: bool) -> ColumnElement:
        escape = None
        if autoescape:
            if not isinstance(other, str):
                raise ArgumentError("autoescape=True needs a plain string value")
            other = other.replace("/", "//").replace("%", "/%").replace("_", "/_")
            escape = "/"
        pattern: ColumnElement = coerce_expression(other, sqltypes.String())
        pct = literal_column("'%'", sqltypes.String())
        if before:
            pattern = BinaryExpression(pct, pattern, "||", sqltypes.String())
        if after:
            pattern = BinaryExpression(pattern, pct, "||", sqltypes.String())
        return _like(self, "LIKE", pattern, escape)

    def startswith(self, other: Any, autoescape: bool = False) -> ColumnElement:
        """``col LIKE other || '%'``; *autoescape* makes ``%`` and ``_`` in *other* literal."""
        return self._affix(other, False, True, autoescape)

    def endswith(self, other: Any, autoescape: bool = False) -> ColumnElement:
        """``col LIKE '%' || other``."""
        return self._affix(other, True, False, autoescape)

    def contains(self, other: Any, autoescape: bool = False) -> ColumnElement:
        """``col LIKE '%' || other || '%'``."""
        return self._affix(other, True, True, autoescape)

    def is_(self, other: Any) -> ColumnElement:
        """``col IS other`` (``None`` → ``IS NULL``)."""
        return BinaryExpression(self, _is_operand(other), "IS", sqltypes.Boolean())

    def is_not(self, other: Any) -> ColumnElement:
        """``col IS NOT other``."""
        return BinaryExpression(self, _is_operand(other), "IS NOT", sqltypes.Boolean())

    isnot = is_not

    def between(self, lower: Any, upper: Any, symmetric: bool = False) -> ColumnElement:
        """``col BETWEEN lower AND upper``."""
        return Between(self, self._bind(lower), self._bind(upper), symmetric)

    def label(self, name: str) -> Label:
        """Return this expression named *name* in a result (``expr AS name``)."""
        return Label(name, self)

    def desc(self) -> UnaryExpression:
        """Return this expression as a descending ORDER BY key."""
        return desc(self)

    def asc(self) -> UnaryExpression:
        """Return this expression as an ascending ORDER BY key."""
        return asc(self)

    def nulls_first(self) -> UnaryExpression:
        """Return this ORDER BY key with ``NULLS FIRST``."""
        return nulls_first(self)

    def nulls_last(self) -> UnaryExpression:
        """Return this ORDER BY key with ``NULLS LAST``."""
        return nulls_last(self)

    def distinct(self) -> UnaryExpression:
        """Return ``DISTINCT expr`` (for use inside aggregates)."""
        return distinct(self)

    def concat(self, other: Any) -> ColumnElement:
        """``expr || other``."""
        return BinaryExpression(self, self._bind(other), "||", sqltypes.String())

    def cast(self, type_: Any) -> Cast:
        """``CAST(expr AS type)``."""
        return Cast(self, type_)


def _is_operand(other: Any) -> ColumnElement:
    # IS takes the keywords NULL / TRUE / FALSE, never a parameter.
    if other is None:
        return Null()
    if other is True:
        return True_()
    if other is False:
        return False_()
    return coerce_expression(other)


def _in(left: ColumnElement, other: Any, negate: bool) -> ColumnElement:
    from shardsession.sql.selectable import Subquery
    from shardsession.sql.selects import Select

    if hasattr(other, "__clause_element__") and not isinstance(other, ClauseElement):
        other = other.__clause_element__()
    if isinstance(other, Subquery):
        other = other.element
    if isinstance(other, Select):
        return BinaryExpression(
            left, Grouping(other), "NOT IN" if negate else "IN", sqltypes.Boolean()
        )
    if isinstance(other, BindParameter):
        return InList(left, other, negate)
    if isinstance(other, str | bytes) or not isinstance(other, Iterable):
        raise ArgumentError(f"in_() takes a list of values or a subquery, got {other!r}")
    items = list(other)
    if isinstance(left, Tuple) or any(isinstance(i, ClauseElement) for i in items):
        elems = [
            (
                i
                if isinstance(i, ClauseElement)
                else Tuple(*[coerce_expression(v, c.type) for v, c in zip(i, left.clauses)])
                if isinstance(left, Tuple)
                else left._bind(i)
            )
            for i in items
        ]
        if not elems:
            return False_() if not negate else True_()
        return BinaryExpression(
            left, Grouping(ClauseList(elems)), "NOT IN" if negate else "IN", sqltypes.Boolean()
        )
    return InList(left, BindParameter(None, items, left.type, expanding=True), negate)


def _like(left: ColumnElement, op: str, other: Any, escape: str | None) -> ColumnElement:
    right = coerce_expression(other, sqltypes.String())
    return BinaryExpression(left, right, op, sqltypes.Boolean(), escape=escape)


# The expression classes subclass ColumnElement, so they live in modules imported
# after it is defined; the operators above look them up at call time.  The package
# __init__ imports this module first, which keeps the cycle in this order.
from shardsession.sql.columns import literal_column  # noqa: E402
from shardsession.sql.expressions import (  # noqa: E402
    Between,
    BinaryExpression,
    BindParameter,
    Cast,
    ClauseList,
    False_,
    Grouping,
    InList,
    Label,
    Null,
    True_,
    Tuple,
    UnaryExpression,
    and_,
    asc,
    desc,
    distinct,
    not_,
    nulls_first,
    nulls_last,
    or_,
)
from shardsession.sql.textual import TextClause  # noqa: E402
