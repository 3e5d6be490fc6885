"""The compiled form of a statement: SQL text plus everything needed to run and route it.

A :class:`CompiledStatement` holds only strings, numbers and tuples (plus the
statement's literal values), so it pickles cheaply to a worker process.  One
compiled *template* is shared by every statement of the same structure; each
:func:`~shardsession.sql.compiler.compile_statement` call returns a copy of it
carrying that statement's own literal values.

Parameters are positional (``%s``): :meth:`CompiledStatement.construct_params`
returns the tuple to pass to psycopg.  Always pass that tuple, even when it is
empty -- the SQL text escapes ``%`` as ``%%``, which psycopg only reads back when
parameters are given.

A parameter *reference* (in :attr:`CompiledStatement.param_sources`) is one of:

* ``("l", index, tag, expanding)`` -- the statement's literal value ``index``;
* ``("k", name, default_index, tag, expanding)`` -- the user parameter ``name``
  (falling back to literal ``default_index`` when it is ``>= 0``);
* ``("v", value, tag, expanding)`` -- a constant (a column's scalar default);
* ``("d", callable_index, key, row, tag, expanding)`` -- a column's callable default,
  called per row (with the row's other values as ``current_parameters``) unless the
  parameters hold ``key``.

``tag`` names the bind conversion (see :func:`~shardsession.sql.types.process_bind`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from shardsession.exc import InvalidRequestError
from shardsession.sql.types import process_bind

__all__ = ["CompiledStatement", "ParamRef"]

_MISSING: Any = object()


class ParamRef(NamedTuple):
    """A routing value that is a user parameter, known only once parameters are given."""

    name: str


def _value(
    ref: tuple[Any, ...],
    literals: tuple[Any, ...],
    params: Mapping[str, Any] | None,
    callables: tuple[Any, ...],
    process: bool,
    row: dict[str, Any] | None = None,
) -> Any:
    kind = ref[0]
    if kind == "l":
        v = literals[ref[1]]
    elif kind == "k":
        name = ref[1]
        if params is not None and name in params:
            v = params[name]
        elif ref[2] >= 0:
            v = literals[ref[2]]
        else:
            raise InvalidRequestError(
                f"a value is required for bind parameter {name!r}; pass it in the "
                "execution parameters"
            )
    elif kind == "v":
        v = ref[1]
    else:  # "d": callable default
        key = ref[2]
        if params is not None and key is not None and key in params:
            v = params[key]
        else:
            if not callables:
                raise InvalidRequestError(
                    "this compiled statement needs a callable column default, which is "
                    "not available after pickling; construct its parameters in the "
                    "process that compiled it"
                )
            v = callables[ref[1]].get(row if row is not None else dict(params or {}))
    if not process:
        return v
    tag, expanding = ref[-2], ref[-1]
    if tag is None:
        return list(v) if expanding and isinstance(v, tuple | set | frozenset) else v
    if expanding:
        return [process_bind(tag, x) for x in v]
    return process_bind(tag, v)


class CompiledStatement:
    """A statement compiled to PostgreSQL text, with its routing information.

    :ivar sql: the SQL text, positional ``%s`` placeholders, ``%`` escaped as ``%%``.
    :ivar kind: ``"select"``, ``"insert"``, ``"update"``, ``"delete"`` or ``"text"``.
    :ivar param_sources: one parameter reference per placeholder, in order.
    :ivar literal_values: the literal values of the statement this copy was made for.
    :ivar result_keys: key of each result column (column key, label, function name).
    :ivar result_names: the SQL output name of each result column (unique).
    :ivar returning: keys of the RETURNING columns (DML), else ``()``.
    :ivar table: name of the main table (the DML target, or the first selected entity's /
        FROM table of a SELECT), or None.
    :ivar tables: every table name the statement reads or writes.
    :ivar entity: name of the first ORM entity selected / targeted, or None.
    :ivar entities: per ORM entity selected (or returned):
        ``(entity name, table name, first result index, stop index, primary key indexes)``
        -- the result indexes of the table's primary key columns, in key order.
    :ivar order_by: ``(result index or None, descending, nulls_first)`` per ORDER BY key;
        *nulls_first* is None when PostgreSQL's default applies (NULLs sort as largest).
    :ivar aggregates: ``(result index, function name)`` of count/sum/min/max/avg result
        columns; over DISTINCT the name ends in ``"_distinct"``.
    :ivar group_by: result index (or None) of each GROUP BY expression.
    :ivar distinct: SELECT DISTINCT (or DISTINCT ON).
    :ivar for_update: the SELECT locks rows.
    :ivar rows: number of VALUES rows of an INSERT (0 otherwise).
    :ivar derived: a memo shared by every copy of one compiled structure, for what
        users of the statement work out from its structure once (the coordinator keeps
        its scatter plan's shape there).
    """

    _fields = (
        "sql",
        "kind",
        "param_sources",
        "literal_values",
        "result_keys",
        "result_names",
        "returning",
        "table",
        "tables",
        "entity",
        "entities",
        "equality_refs",
        "order_by",
        "aggregates",
        "group_by",
        "limit_ref",
        "offset_ref",
        "distinct",
        "for_update",
        "rows",
        "insert_refs",
    )

    def __init__(self, **kw: Any) -> None:
        callables = kw.pop("_callables", ())
        procs = kw.pop("_result_processors", None)
        for f in self._fields:
            self.__dict__[f] = kw.pop(f)
        if kw:
            raise TypeError(f"unexpected fields {sorted(kw)}")
        self.__dict__["_callables"] = tuple(callables)
        self.__dict__["_result_processors"] = procs
        self.__dict__["derived"] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("CompiledStatement is immutable")

    def __getstate__(self) -> dict[str, Any]:
        return {f: self.__dict__[f] for f in self._fields}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_callables"] = ()
        self.__dict__["_result_processors"] = None
        self.__dict__["derived"] = {}

    def _with_values(self, values: tuple[Any, ...]) -> CompiledStatement:
        new = object.__new__(CompiledStatement)
        new.__dict__.update(self.__dict__)
        new.__dict__["literal_values"] = values
        return new

    # -- kind ---------------------------------------------------------------

    @property
    def is_select(self) -> bool:
        """True for SELECT (including ``text().columns()``)."""
        return self.kind == "select"

    @property
    def is_insert(self) -> bool:
        """True for INSERT."""
        return self.kind == "insert"

    @property
    def is_update(self) -> bool:
        """True for UPDATE."""
        return self.kind == "update"

    @property
    def is_delete(self) -> bool:
        """True for DELETE."""
        return self.kind == "delete"

    @property
    def is_text(self) -> bool:
        """True for a plain :func:`~shardsession.sql.elements.text` statement."""
        return self.kind == "text"

    @property
    def is_dml(self) -> bool:
        """True for INSERT, UPDATE and DELETE."""
        return self.kind in ("insert", "update", "delete")

    @property
    def returns_rows(self) -> bool:
        """True when executing gives rows (SELECT, or DML with RETURNING)."""
        return self.kind == "select" or bool(self.returning)

    # -- parameters ---------------------------------------------------------

    def construct_params(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        limit: Any = _MISSING,
        offset: Any = _MISSING,
    ) -> tuple[Any, ...]:
        """Return the positional parameters for psycopg.

        :param params: user parameters (bindparam / ``text()`` names, INSERT/UPDATE
            column keys when the statement has no ``values()``).
        :param limit: replace the LIMIT value (the coordinator asks each shard for
            ``limit + offset`` rows); only when the statement has a LIMIT.
        :param offset: replace the OFFSET value (e.g. 0); only when it has an OFFSET.
        :raises InvalidRequestError: when a required parameter is missing.
        """
        lits, cbs = self.literal_values, self._callables
        sources = self.param_sources
        out = [None if ref[0] == "d" else _value(ref, lits, params, cbs, True) for ref in sources]
        if any(ref[0] == "d" for ref in sources):
            rows = self._row_contexts(params)
            for i, ref in enumerate(sources):
                if ref[0] == "d":
                    row = rows[ref[3]] if ref[3] < len(rows) else None
                    out[i] = _value(ref, lits, params, cbs, True, row)
        if limit is not _MISSING:
            self._override(out, self.limit_ref, limit, "limit")
        if offset is not _MISSING:
            self._override(out, self.offset_ref, offset, "offset")
        return tuple(out)

    def _row_contexts(self, params: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        # The values of each row, as a callable default's context sees them.
        rows = []
        for row_refs in self.insert_refs or ((),):
            d = dict(params or {})
            for key, ref in row_refs:
                if ref[0] != "d":
                    d[key] = _value(ref, self.literal_values, params, (), False)
            rows.append(d)
        return rows

    def _override(self, out: list[Any], ref: Any, value: Any, what: str) -> None:
        if ref is None:
            raise InvalidRequestError(f"the statement has no {what.upper()} to replace")
        for i, src in enumerate(self.param_sources):
            if src == ref:
                out[i] = value

    def _resolve(self, ref: Any, params: Mapping[str, Any] | None) -> Any:
        if ref[0] == "k" and (params is None or ref[1] not in params) and ref[2] < 0:
            return ParamRef(ref[1])
        return _value(ref, self.literal_values, params, self._callables, False)

    @property
    def limit(self) -> Any:
        """The LIMIT value (a :class:`ParamRef` if it is a user parameter), or None."""
        return None if self.limit_ref is None else self._resolve(self.limit_ref, None)

    @property
    def offset(self) -> Any:
        """The OFFSET value, or None."""
        return None if self.offset_ref is None else self._resolve(self.offset_ref, None)

    def limit_offset(self, params: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        """Return ``(limit, offset)`` resolved against *params* (None when absent)."""
        return (
            None if self.limit_ref is None else self._resolve(self.limit_ref, params),
            None if self.offset_ref is None else self._resolve(self.offset_ref, params),
        )

    # -- routing ------------------------------------------------------------

    def equality_filters_for(
        self, params: Mapping[str, Any] | None = None, *, qualified: bool = False
    ) -> dict[Any, tuple[Any, ...]]:
        """Return the guaranteed ``column == value`` / ``column IN (...)`` conditions.

        Only conditions AND-ed at the top of the WHERE clause count (none under OR or
        NOT).  Keys are column keys of the main :attr:`table`; with *qualified*, keys
        are ``(table name, column key)`` for every table.  Values are tuples of the
        possible values; user parameters missing from *params* are :class:`ParamRef`.
        """
        out: dict[Any, tuple[Any, ...]] = {}
        for key, qkey, refs in self.equality_refs:
            if not qualified and key is None:
                continue
            values: list[Any] = []
            for ref, is_list in refs:
                v = self._resolve(ref, params)
                if is_list and not isinstance(v, ParamRef):
                    values.extend(v)
                else:
                    values.append(v)
            k = qkey if qualified else key
            if k in out:
                try:
                    values = [v for v in out[k] if v in values]
                except TypeError:
                    continue
            out[k] = tuple(values)
        return out

    @property
    def equality_filters(self) -> dict[str, tuple[Any, ...]]:
        """:meth:`equality_filters_for` without parameters (main table, by column key)."""
        return self.equality_filters_for(None)

    def insert_rows(self, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """For an INSERT: the value of each column key of each VALUES row, as far as known.

        Defaults computed by a callable are not included (they are made per execution).
        """
        rows = []
        for row in self.insert_refs:
            d = {}
            for key, ref in row:
                if ref[0] == "d":
                    if params is not None and key in params:
                        d[key] = params[key]
                    continue
                d[key] = self._resolve(ref, params)
            rows.append(d)
        return rows

    # -- results ------------------------------------------------------------

    @property
    def result_processors(self) -> tuple[Any, ...] | None:
        """Per result column, a function converting a fetched value, or None.

        Only available in the process that compiled the statement (not pickled);
        None when no column needs conversion.
        """
        return self._result_processors

    def process_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """Return *row* with the result processors applied (e.g. enum names → members)."""
        procs = self._result_processors
        if not procs:
            return tuple(row)
        return tuple(p(v) if p is not None else v for p, v in zip(procs, row))

    def __repr__(self) -> str:
        return f"<CompiledStatement {self.kind} {self.sql!r}>"
