"""Merging the row streams of several shards into one result.

Each function takes iterators of row tuples (one per shard, or one already merged)
and returns an iterator, so a merge never holds more than it must: concatenation,
the k-way merge of sorted streams, OFFSET/LIMIT and column stripping hold one row per
shard at most; de-duplication holds the keys seen so far; combining aggregate groups
holds one state per group (that is what grouping means).  :func:`having_test` builds
the HAVING filter the coordinator applies to combined groups.

Ordering follows PostgreSQL: NULLs sort as larger than every value (last in ascending
order, first in descending order) unless ``NULLS FIRST`` / ``NULLS LAST`` says
otherwise, and a float NaN sorts above every other number.  Values are compared with
Python's operators, which agree with PostgreSQL for numbers, dates, times, booleans,
``bytea``, UUIDs and -- under the ``"C"`` collation -- text.
"""

from __future__ import annotations

import decimal
import heapq
import itertools
import operator
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    False_,
    Grouping,
    Label,
    Null,
    True_,
    UnaryExpression,
)

from shardsession.exc import CrossShardError

__all__ = [
    "AggregateSpec",
    "OrderKey",
    "combine_groups",
    "concat",
    "hashable",
    "having_test",
    "merge_sorted",
    "numeric_div",
    "offset_limit",
    "sort_key",
    "sort_rows",
    "unique_rows",
]

Row = tuple[Any, ...]

#: ``(column index, descending, nulls_first)``; *nulls_first* None means PostgreSQL's
#: default (NULLs sort as the largest value).
OrderKey = tuple[int, bool, bool | None]

#: How one column of a combined group row is made from the shards' rows:
#: ``("key", i)`` / ``("any", i)`` -- the value of column *i* (the same on every shard
#: for that group); ``("count", i)``, ``("sum", i)``, ``("min", i)``, ``("max", i)`` --
#: the partial aggregates of column *i* combined; ``("avg", i, j)`` -- the sum in
#: column *i* divided by the count in column *j*.
AggregateSpec = tuple[Any, ...]

# PostgreSQL's numeric type holds up to 131072 digits before the point and 16383
# after; sums of partial results must not be rounded to Python's default 28 digits.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


class _Reversed:
    """Wraps a sort key so that it orders in reverse (for DESC keys in a mixed ORDER BY)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.v < self.v)

    def __gt__(self, other: _Reversed) -> bool:
        return bool(other.v > self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.v == other.v)

    def __hash__(self) -> int:
        return hash(self.v)


def _column_key(index: int, desc: bool, nulls_first: bool | None) -> Callable[[Row], Any]:
    first = desc if nulls_first is None else nulls_first
    # Rank NULL below every value when it must come first in ascending order, or
    # last in descending order; the DESC wrapper then reverses the whole tuple.
    null = (-1, 0) if first != desc else (2, 0)
    nan = (1, 0)

    def key(row: Row) -> Any:
        v = row[index]
        if v is None:
            k: Any = null
        elif v != v:  # NaN: PostgreSQL sorts it above every number
            k = nan
        else:
            k = (0, v)
        return _Reversed(k) if desc else k

    return key


def sort_key(order: Sequence[OrderKey]) -> Callable[[Row], tuple[Any, ...]]:
    """Return a key function ordering rows as PostgreSQL's ``ORDER BY`` would.

    :param order: the ORDER BY keys, each ``(column index, descending, nulls_first)``.
    """
    parts = [_column_key(i, d, n) for i, d, n in order]
    if len(parts) == 1:
        only = parts[0]
        return lambda row: (only(row),)
    return lambda row: tuple(p(row) for p in parts)


def concat(streams: Iterable[Iterable[Row]]) -> Iterator[Row]:
    """Yield every row of every stream, one stream after the other."""
    return itertools.chain.from_iterable(streams)


def merge_sorted(streams: Iterable[Iterable[Row]], order: Sequence[OrderKey]) -> Iterator[Row]:
    """k-way merge of streams that are each sorted by *order*; the output is sorted too.

    Holds one row per stream.  Rows that compare equal keep the order of the streams.
    """
    return heapq.merge(*streams, key=sort_key(order))


def sort_rows(rows: Iterable[Row], order: Sequence[OrderKey]) -> list[Row]:
    """Return *rows* sorted by *order* (stable); used on combined aggregate groups."""
    return sorted(rows, key=sort_key(order))


def offset_limit(rows: Iterable[Row], offset: int | None, limit: int | None) -> Iterator[Row]:
    """Skip *offset* rows, then yield at most *limit* (None: no bound)."""
    start = offset or 0
    if start == 0 and limit is None:
        return iter(rows)
    return itertools.islice(rows, start, None if limit is None else start + limit)


def hashable(value: Any) -> Hashable:
    """Return *value* itself when hashable, else an equal-comparing hashable stand-in.

    JSON and array columns come back as lists and dicts; they are turned into tuples
    (tagged by type, so a list never equals a dict) for de-duplication and grouping.
    """
    try:
        hash(value)
        return value  # type: ignore[no-any-return]
    except TypeError:
        pass
    if isinstance(value, dict):
        return ("__dict__", tuple(sorted((k, hashable(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("__list__", tuple(hashable(v) for v in value))
    if isinstance(value, set):
        return ("__set__", frozenset(hashable(v) for v in value))
    return ("__repr__", type(value).__name__, repr(value))


def _row_key(row: Row, indexes: Sequence[int] | None) -> Hashable:
    values = row if indexes is None else tuple(row[i] for i in indexes)
    try:
        hash(values)
        return values
    except TypeError:
        return tuple(hashable(v) for v in values)


def unique_rows(rows: Iterable[Row], indexes: Sequence[int] | None = None) -> Iterator[Row]:
    """Yield each row whose key was not seen before (the first one wins).

    :param indexes: the columns forming the key (DISTINCT ON); None means the whole row.
    """
    seen: set[Hashable] = set()
    for row in rows:
        k = _row_key(row, indexes)
        if k not in seen:
            seen.add(k)
            yield row


def _nbase_weight_and_digit(v: Decimal) -> tuple[int, int]:
    # The weight (power of 10000) and value of the first non-zero base-10000 digit,
    # as PostgreSQL's numeric stores it.
    if not v:
        return 0, 0
    a = abs(v)
    weight = a.adjusted() // 4
    digit = int(a.scaleb(-4 * weight, _EXACT)) % 10000
    return weight, digit


def _dscale(v: Decimal) -> int:
    exp = v.as_tuple().exponent
    return -exp if isinstance(exp, int) and exp < 0 else 0


def numeric_div(total: int | Decimal, count: int) -> Decimal:
    """Divide like PostgreSQL's ``numeric`` division, as ``avg()`` of integers/numerics does.

    The result scale is PostgreSQL's: enough for at least 16 significant digits, never
    less than either operand's scale, rounded half away from zero -- so the combined
    average of several shards equals the one a single database would return.
    """
    num = Decimal(total)
    den = Decimal(count)
    w1, d1 = _nbase_weight_and_digit(num)
    w2, d2 = _nbase_weight_and_digit(den)
    qweight = w1 - w2 - (1 if d1 <= d2 else 0)
    rscale = max(16 - qweight * 4, _dscale(num), _dscale(den), 0)
    rscale = min(rscale, 1000)
    sign, digits, exp = num.as_tuple()
    mantissa = int("".join(map(str, digits)) or "0")
    assert isinstance(exp, int)
    shift = exp + rscale
    if shift >= 0:
        n, d = mantissa * 10**shift, count
    else:
        n, d = mantissa, count * 10**-shift
    q, r = divmod(n, d)
    if 2 * r >= d:
        q += 1
    return Decimal((sign, tuple(int(c) for c in str(q)), -rscale))


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return _EXACT.add(Decimal(a), Decimal(b))
    return a + b


def _avg(total: Any, count: Any) -> Any:
    if not count or total is None:
        return None
    if isinstance(total, int | Decimal) and not isinstance(total, bool):
        return numeric_div(total, int(count))
    return total / count


def combine_groups(
    rows: Iterable[Row], group: Sequence[int], specs: Sequence[AggregateSpec]
) -> Iterator[Row]:
    """Combine the shards' partial aggregate rows into one row per group.

    :param rows: every shard's rows (in any order).
    :param group: the columns holding the GROUP BY key; empty for a whole-table
        aggregate, whose shards each return exactly one row.
    :param specs: one :data:`AggregateSpec` per output column.
    :returns: one row per group, in first-seen order, with ``len(specs)`` columns.
    """
    states: dict[Hashable, list[Any]] = {}
    for row in rows:
        k = _row_key(row, group)
        st = states.get(k)
        if st is None:
            states[k] = [_first(spec, row) for spec in specs]
            continue
        for n, spec in enumerate(specs):
            kind = spec[0]
            if kind in ("key", "any"):
                continue
            v = row[spec[1]]
            cur = st[n]
            if kind in ("count", "sum"):
                st[n] = _add(cur, v)
            elif kind == "min":
                if v is not None and (cur is None or v < cur):
                    st[n] = v
            elif kind == "max":
                if v is not None and (cur is None or v > cur):
                    st[n] = v
            else:  # avg: (sum, count)
                st[n] = (_add(cur[0], v), cur[1] + (row[spec[2]] or 0))
    for st in states.values():
        yield tuple(_avg(*st[n]) if spec[0] == "avg" else st[n] for n, spec in enumerate(specs))


def _first(spec: AggregateSpec, row: Row) -> Any:
    if spec[0] == "avg":
        return (row[spec[1]], row[spec[2]] or 0)
    if spec[0] == "count":
        return row[spec[1]] or 0
    return row[spec[1]]


# -- HAVING on combined groups ----------------------------------------

_BINARY: dict[Any, Callable[[Any, Any], Any]] = {
    operators.eq: operator.eq,
    operators.ne: operator.ne,
    operators.lt: operator.lt,
    operators.le: operator.le,
    operators.gt: operator.gt,
    operators.ge: operator.ge,
    operators.add: operator.add,
    operators.sub: operator.sub,
    operators.mul: operator.mul,
}


def having_test(
    clauses: Sequence[Any], params: Mapping[str, Any] | None, leaf: Callable[[Any], int]
) -> Callable[[Row], bool]:
    """Build the test of HAVING *clauses* (AND-ed) on combined group rows.

    Evaluated in SQL's three-valued logic: a group is kept only when the condition is
    true (not false, not NULL).  Comparisons, ``AND`` / ``OR`` / ``NOT``,
    ``IS [NOT] NULL`` and ``+ - *`` are understood.

    :param params: the user's parameters (for named bind parameters).
    :param leaf: maps any other sub-expression (an aggregate, a GROUP BY expression) to
        the column of the combined row holding its value; it raises for what the
        coordinator cannot compute.
    :raises CrossShardError: for an operator that cannot be evaluated here.
    """

    def build(el: Any) -> Callable[[Row], Any]:
        if isinstance(el, Grouping | Label):
            return build(el.element)
        if isinstance(el, BindParameter):
            value = params[el.key] if params and el.key in params else el.effective_value
            return lambda row: value
        if isinstance(el, Null):
            return lambda row: None
        if isinstance(el, True_ | False_):
            const = isinstance(el, True_)
            return lambda row: const
        if isinstance(el, BooleanClauseList) and el.operator in (operators.and_, operators.or_):
            return _bool_list([build(c) for c in el.clauses], el.operator is operators.and_)
        if isinstance(el, UnaryExpression) and el.operator in (operators.inv, operators.neg):
            f = build(el.element)
            neg = operator.not_ if el.operator is operators.inv else operator.neg
            return lambda row: None if (v := f(row)) is None else neg(v)
        if isinstance(el, BinaryExpression):
            op = el.operator
            left = build(el.left)
            if op in (operators.is_, operators.is_not) and isinstance(el.right, Null):
                is_null = op is operators.is_
                return lambda row: (left(row) is None) == is_null
            fn = _BINARY.get(op)
            if fn is None:
                raise CrossShardError(
                    f"HAVING: the operator {getattr(op, '__name__', op)} cannot be evaluated "
                    "by the coordinator after combining the shards' groups; run the query on "
                    "one shard (bind_arguments={'shard_id': ...}) or filter the rows in Python"
                )
            right = build(el.right)
            return lambda row: (
                None if (a := left(row)) is None or (b := right(row)) is None else fn(a, b)
            )
        index = leaf(el)
        return lambda row: row[index]

    tests = [build(c) for c in clauses]
    return lambda row: all(t(row) is True for t in tests)


def _bool_list(parts: list[Callable[[Row], Any]], is_and: bool) -> Callable[[Row], Any]:
    def run(row: Row) -> Any:
        unknown = False
        for p in parts:
            v = p(row)
            if v is None:
                unknown = True
            elif bool(v) is not is_and:
                return not is_and
        return None if unknown else is_and

    return run
