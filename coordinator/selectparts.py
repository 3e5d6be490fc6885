"""The parts of a SQLAlchemy ``Select`` (and ``Result``) that have no public getter.

Merging the rows of several shards needs a SELECT's ORDER BY, LIMIT, OFFSET,
GROUP BY, HAVING and DISTINCT [ON], which SQLAlchemy keeps in private
attributes.  Every such read (and the one write, dropping HAVING from the
statement the shards run) lives here and nowhere else;
``tests/coordinator/test_selectparts.py`` fails when a SQLAlchemy release
changes one of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import FrozenResult, IteratorResult, Result
from sqlalchemy.engine.result import SimpleResultMetaData, tuplegetter
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from shardsession.exc import CrossShardError

__all__ = [
    "distinct",
    "distinct_on",
    "for_update",
    "frozen_rows",
    "group_by",
    "having",
    "limit_offset",
    "order_by",
    "rebuilt_result",
    "without_having",
]


def for_update(stmt: Any) -> dict[str, bool] | None:
    """A locking SELECT's ``with_for_update()`` arguments (``read``, ``key_share``,
    ``nowait``, ``skip_locked``); None for any other statement."""
    arg = getattr(stmt, "_for_update_arg", None)
    if arg is None:
        return None
    return {"read": arg.read, "key_share": arg.key_share, "nowait": arg.nowait,
            "skip_locked": arg.skip_locked}  # fmt: skip


def order_by(stmt: Select[Any]) -> tuple[ColumnElement[Any], ...]:
    """The ORDER BY clauses, as given (with ``desc()`` / ``nulls_first()`` wrappers)."""
    return tuple(stmt._order_by_clauses)


def group_by(stmt: Select[Any]) -> tuple[ColumnElement[Any], ...]:
    """The GROUP BY clauses."""
    return tuple(stmt._group_by_clauses)


def having(stmt: Select[Any]) -> tuple[ColumnElement[Any], ...]:
    """The HAVING criteria (AND-ed)."""
    return tuple(stmt._having_criteria)


def distinct(stmt: Select[Any]) -> bool:
    """Whether the SELECT is DISTINCT."""
    return bool(stmt._distinct)


def distinct_on(stmt: Select[Any]) -> tuple[ColumnElement[Any], ...]:
    """The DISTINCT ON expressions (PostgreSQL): ``select(...).distinct(x)`` (SQLAlchemy
    2.0) and ``select(...).ext(postgresql.distinct_on(x))`` (2.1).

    :raises CrossShardError: for another extension before the columns, which could
        change the rows in a way the merge would not see.
    """
    found = list(getattr(stmt, "_distinct_on", ()))
    pre = getattr(stmt, "_pre_columns_clause", None)
    if pre is not None:
        inner = getattr(pre, "_distinct_on", None)
        if inner is None:
            raise CrossShardError(
                f"{type(pre).__name__} before the selected columns cannot be merged across "
                "shards; run the statement on one shard (bind_arguments={'shard_id': ...})"
            )
        found.extend(inner)
    return tuple(found)


def limit_offset(stmt: Select[Any]) -> tuple[int | None, int | None]:
    """LIMIT and OFFSET as integers (None when absent).

    :raises sqlalchemy.exc.CompileError: when one is an expression, not an integer.
    """
    return stmt._limit, stmt._offset


def without_having(stmt: Select[Any]) -> Select[Any]:
    """A copy of ``stmt`` without its HAVING criteria."""
    copy = stmt._generate()
    copy._having_criteria = ()
    return copy


def frozen_rows(frozen: FrozenResult[Any]) -> list[Any]:
    """The rows a :class:`~sqlalchemy.engine.FrozenResult` holds (as stored: single
    objects, not tuples, for a result of one ORM entity)."""
    return list(frozen.data)


def rebuilt_result(
    template: Result[Any], width: int, rows: Iterable[Any], *, single_entity: bool,
    has_entities: bool, objects: bool = False,
) -> Result[Any]:  # fmt: skip
    """A result of ``rows`` (rows of ``template``) showing their first ``width`` columns.

    ``template`` is a shard's result of the statement with hidden helper columns;
    the new result looks like the result of the statement without them: for one
    ORM entity it yields the objects themselves (``scalars()`` and legacy
    ``Query`` read ``is_single_entity``), and ``filtered`` tells legacy ``Query``
    to de-duplicate entity rows as it does.  ``objects``: the rows are already the
    objects (a frozen result of one entity stores them so).
    """
    md = template._metadata
    keys = list(md._keys)
    if single_entity:
        metadata = md._reduce([0])
        metadata._tuplefilter = None  # the rows are the objects, not tuples
        data: Iterable[Any] = rows if objects else (row[0] for row in rows)
    else:
        if len(set(keys[:width])) == width:
            metadata = md._reduce(list(range(width)))
        else:  # _reduce finds positions through names: wrong for repeated names
            metadata = SimpleResultMetaData(keys[:width], _tuplefilter=tuplegetter(*range(width)))
        data = rows
    result: Result[Any] = IteratorResult(metadata, iter(data))
    result._source_supports_scalars = single_entity
    result._attributes = template._attributes.union(
        {"is_single_entity": single_entity, "filtered": has_entities}
    )
    return result
