"""Reference tables: small tables kept whole on every shard.

A catalogue, a price plan or a list of countries is read by rows of every shard
and joined with them.  Marked as a reference table, it lives on every shard
(``create_all`` creates every table everywhere), so each shard can join it
locally.  A class is marked with ``__shard_key__ = REPLICATED``; a table with
``info={"shardsession": "reference"}`` (also through ``__table_args__``)::

    class Country(Base):
        __tablename__ = "country"
        __shard_key__ = ss.REPLICATED

        code: Mapped[str] = mapped_column(String(2), primary_key=True)
        name: Mapped[str]

What the sharded :class:`~shardsession.Session` does with them:

* **writes** (a flushed object, an ORM bulk statement, a Core ``insert`` /
  ``update`` / ``delete``) run on one shard's connection, where the dialect hands
  the same SQL and parameters to every other shard's connection of the session's
  transaction before any reply is read (:func:`replicate`).  Every shard must
  report the same row count (and return the same rows); otherwise the copies
  have diverged and :class:`~shardsession.exc.ReferenceDivergedError` names the
  shards.  Every shard being written, the commit is one two-phase commit;
* **reads** of reference tables only go to one shard, the session's first
  (:func:`is_reference_statement`); a SELECT joining sharded rows with reference
  rows is scattered as usual and each shard joins locally;
* **identity**: a reference row is one object in a session, whichever shard it
  was read through: its identity token is always the session's first shard
  (:class:`IdentityMap`);
* **placement**: a sharded object may refer to a reference object (a foreign key
  to a reference table holds on every shard), and is never placed by it.

What cannot be answered exactly raises :class:`~shardsession.exc.CrossShardError`:
a SELECT whose rows come from reference tables while it reads sharded rows (a
LEFT OUTER JOIN from a reference table to a sharded one, a sharded table in a
subquery), a write to a reference table that reads sharded rows, a reference
object linked to a sharded object, and reference writes in a session with
``twophase=False``.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Final

from shardsession.coordinator.dbapi import exchange
from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper, RelationshipDirection
from sqlalchemy.orm import identity as sa_identity
from sqlalchemy.sql import CompoundSelect, Select, visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.selectable import Join, TableClause

from shardsession import protocol as p
from shardsession.exc import ArgumentError, CrossShardError, ReferenceDivergedError

__all__ = [
    "REPLICATED",
    "IdentityMap",
    "check_links",
    "check_loaded",
    "is_reference_mapper",
    "is_reference_statement",
    "is_reference_table",
    "loads_for_reference_parent",
    "replicate",
]

# the ``info`` key and value that mark a Table as a reference table
_INFO_KEY: Final = "shardsession"
_INFO_VALUE: Final = "reference"


class _Replicated:
    """The value of ``__shard_key__`` that makes a class a reference table."""

    _instance: _Replicated | None = None

    def __new__(cls) -> _Replicated:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "shardsession.REPLICATED"

    def __reduce__(self) -> str:
        return "REPLICATED"


#: ``__shard_key__ = REPLICATED`` marks a mapped class as a reference table: its rows
#: are kept whole on every shard, written on all of them and read from one.
REPLICATED: Final = _Replicated()


# -- which tables and classes ---------------------------------------------------------


# (metadata, full name) -> flag: the ORM's annotated copies of a Table share both
_tables: dict[tuple[Any, str], bool] = {}
_mappers: dict[Any, bool] = {}
_classes: dict[type, bool] = {}


def _table_key(table: Any) -> tuple[Any, str]:
    return (getattr(table, "metadata", None), getattr(table, "fullname", table.name))


def is_reference_table(table: Any) -> bool:
    """Whether ``table`` (a :class:`~sqlalchemy.schema.Table`, or the ORM's annotated
    copy of one) is a reference table: marked ``info={"shardsession": "reference"}``, or
    mapped by a class whose ``__shard_key__`` is :data:`REPLICATED`."""
    key = _table_key(table)
    flag = _tables.get(key)
    if flag is None:
        info = getattr(table, "info", None) or {}
        flag = _tables[key] = info.get(_INFO_KEY) == _INFO_VALUE
    return flag


def is_reference_mapper(mapper: Any) -> bool:
    """Whether ``mapper``'s class is a reference table (see :func:`is_reference_table`).

    Worked out once per mapper.

    :raises ArgumentError: the class says otherwise than its tables or its base
        class (a ``__shard_key__`` on a reference table, a reference subclass of a
        sharded class).
    """
    flag = _mappers.get(mapper)
    if flag is None:
        if not isinstance(mapper, Mapper):
            return False
        flag = _mappers[mapper] = _mapper_flag(mapper)
    return flag


def _mapper_flag(mapper: Mapper[Any]) -> bool:
    cls = mapper.class_.__name__
    key = getattr(mapper.class_, "__shard_key__", None)
    marked = [t for t in mapper.tables if is_reference_table(t)]
    if key is not REPLICATED and not marked:
        return False
    if key is not REPLICATED and key is not None:
        raise ArgumentError(
            f"{cls} has __shard_key__ = {key!r}, but its table {marked[0].name!r} is marked "
            f"as a reference table (info={{'shardsession': 'reference'}}): a reference table "
            "is kept whole on every shard and has no shard key. Remove one of the two."
        )
    parent = mapper.inherits
    if parent is not None and not is_reference_mapper(parent):
        raise ArgumentError(
            f"{cls} is a reference table (__shard_key__ = ss.REPLICATED), but it inherits "
            f"from {parent.class_.__name__}, which is sharded: the rows they share cannot "
            "be both. Make the whole hierarchy a reference table, or none of it."
        )
    for table in mapper.tables:
        _tables[_table_key(table)] = True
    for prop in mapper.column_attrs:
        for expression in prop.columns:
            sharded = sorted({t.name for t in _tables_of(expression) if not is_reference_table(t)})
            if sharded:
                raise ArgumentError(
                    f"{cls}.{prop.key} reads sharded table(s) {sharded}, but {cls} is a "
                    "reference table, read from one shard: the value would count only that "
                    "shard's rows. Compute it with a query of its own (which runs on every "
                    "shard and merges), not as a column of the reference class."
                )
    return True


def _on_mapper(mapper: Mapper[Any], class_: type) -> None:
    # Core statements on the table of a REPLICATED class must know it before the
    # class is first used by a session (which checks the rest of the class).
    if getattr(class_, "__shard_key__", None) is REPLICATED:
        for table in mapper.tables:
            _tables[_table_key(table)] = True


event.listen(Mapper, "after_mapper_constructed", _on_mapper)


def _is_reference_class(cls: type) -> bool:
    flag = _classes.get(cls)
    if flag is None:
        flag = _classes[cls] = is_reference_mapper(inspect(cls, raiseerr=False))
    return flag


# -- statements -----------------------------------------------------------------------

_kinds: dict[Any, bool] = {}
_KINDS_MAX = 4096


def is_reference_statement(statement: Any) -> bool:
    """Whether ``statement`` reads or writes reference tables only, and so runs on one
    shard (a write is then replicated by the dialect, see :func:`replicate`).

    False for statements about sharded rows, including those joining reference
    tables: they are routed as usual.  Worked out once per statement structure
    (SQLAlchemy's cache key, which SQLAlchemy computes for the statement anyway).

    :raises CrossShardError: the statement's rows come from reference tables while
        it reads sharded rows (each shard would answer for its own rows only), or
        it writes a reference table from sharded rows (the copies would differ).
    """
    generate = getattr(statement, "_generate_cache_key", None)
    cache_key = generate() if generate is not None else None
    if cache_key is None:
        return _classify(statement)
    found = _kinds.get(cache_key.key)
    if found is None:
        found = _classify(statement)
        if len(_kinds) >= _KINDS_MAX:
            _kinds.clear()
        _kinds[cache_key.key] = found
    return found


def _classify(statement: Any) -> bool:
    tables = _tables_of(statement)
    reference = sorted({t.name for t in tables if is_reference_table(t)})
    if not reference:
        return False
    sharded = sorted({t.name for t in tables if not is_reference_table(t)})
    if isinstance(statement, UpdateBase):
        target = getattr(statement, "table", None)
        if target is None or not is_reference_table(target):
            return False
        if sharded:
            raise CrossShardError(
                f"this {_verb(statement)} writes reference table {target.name!r} from sharded "
                f"table(s) {sharded}: each shard would write its copy from its own rows, and "
                "the copies would differ. Read the sharded rows first and write the values "
                "they give (the write then runs on every shard alike)."
            )
        return True
    if not sharded:
        return True
    if _anchored(statement):
        return False
    raise CrossShardError(
        f"this SELECT returns rows of reference table(s) {reference} while reading sharded "
        f"table(s) {sharded} in a way that does not tie each row to one sharded row: a LEFT "
        "OUTER JOIN from a reference table to a sharded one (a joinedload() of sharded "
        "objects from a reference object makes one), or a sharded table in a subquery. "
        "Every shard would answer with its own part of the sharded rows, and the reference "
        "rows would repeat or go missing. Load relationships to sharded objects with "
        "selectinload() or lazily, join sharded tables with an inner join "
        "(select(Reference).join(Sharded).distinct()), or read the sharded rows first and "
        "filter the reference rows with the values they give."
    )


def _verb(statement: Any) -> str:
    return type(statement).__name__.replace("Annotated", "").upper()


def _tables_of(statement: Any) -> list[Any]:
    """Every table the statement reads or writes, subqueries and ORM joins included."""
    found: dict[tuple[Any, str], Any] = {}
    seen: set[int] = set()
    _collect(statement, found, seen)
    return list(found.values())


def _collect(element: Any, found: dict[tuple[Any, str], Any], seen: set[int]) -> None:
    if id(element) in seen:
        return
    seen.add(id(element))
    for part in visitors.iterate(element):
        if isinstance(part, TableClause):
            found.setdefault(_table_key(part), part)
        elif isinstance(part, Select) and part is not element:
            _collect(part, found, seen)
    if isinstance(element, Select):
        # joins along relationships (select(A).join(A.b)) exist only as final FROMs
        for frm in element.get_final_froms():
            for table, inner in _from_parts(frm):
                if table is not None:
                    found.setdefault(_table_key(table), table)
                if inner is not None:
                    _collect(inner, found, seen)


def _from_parts(frm: Any) -> Iterator[tuple[Any, Any]]:
    """(table, None) and (None, inner select) of one FROM element."""
    if isinstance(frm, Join):
        yield from _from_parts(frm.left)
        yield from _from_parts(frm.right)
    elif isinstance(frm, TableClause):
        yield frm, None
    else:
        inner = getattr(frm, "element", None)
        if isinstance(inner, (TableClause, Join)):
            yield from _from_parts(inner)
        elif isinstance(inner, (Select, CompoundSelect)):
            yield None, inner


def _anchored(statement: Any) -> bool:
    """Whether every row of ``statement`` comes with a row of a sharded table, so each
    row is found on exactly one shard."""
    if isinstance(statement, CompoundSelect):
        return all(_anchored(s) for s in statement.selects)
    if not isinstance(statement, Select):
        return False
    return any(_from_anchored(frm) for frm in statement.get_final_froms())


def _from_anchored(frm: Any) -> bool:
    if isinstance(frm, Join):
        left, right = _from_anchored(frm.left), _from_anchored(frm.right)
        if frm.full:
            return left and right
        if frm.isouter:
            return left
        return left or right
    if isinstance(frm, TableClause):
        return not is_reference_table(frm)
    inner = getattr(frm, "element", None)
    if isinstance(inner, (TableClause, Join)):
        return _from_anchored(inner)
    if isinstance(inner, (Select, CompoundSelect)):
        return _anchored(inner)
    return False


_loaded: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def _compiled(result: Any) -> Any:
    """The compiled statement behind an (ORM) result, or None."""
    cursor_result = getattr(result, "raw", None) or result
    return getattr(getattr(cursor_result, "context", None), "compiled", None)


def _statement_run(compiled: Any) -> Any:
    """What SQLAlchemy really ran: the ORM's statement with its eager joins."""
    ran = getattr(getattr(compiled, "compile_state", None), "statement", None)
    return compiled.statement if ran is None else ran


def check_loaded(result: Any) -> None:
    """Refuse the result of a SELECT routed to one shard as reading reference tables
    only, when what SQLAlchemy ran also read sharded tables (an ORM option such as
    ``with_expression()`` added them while compiling).

    :raises CrossShardError: naming the sharded tables and the fix.
    """
    compiled = _compiled(result)
    if compiled is None:
        return
    sharded = _loaded.get(compiled)
    if sharded is None:
        tables = _tables_of(_statement_run(compiled))
        sharded = _loaded[compiled] = sorted({t.name for t in tables
                                              if not is_reference_table(t)})  # fmt: skip
    if sharded:
        result.close()
        raise CrossShardError(
            f"loading reference rows also read sharded table(s) {sharded}, on one shard "
            "only (an expression such as with_expression() reading sharded rows?): each "
            "shard holds only its part of them. Compute such values with a query of their "
            "own, which runs on every shard and merges."
        )


_fanouts: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def check_scattered(result: Any) -> None:
    """Refuse the result of a SELECT run on several shards when what SQLAlchemy ran
    pairs sharded rows through a reference row: a ``joinedload()`` of a reference
    object's collection of sharded objects (say
    ``joinedload(Customer.country).joinedload(Country.customers)``), or a join of
    two sharded tables on a reference table's columns.  Each shard pairs only its
    own rows (and would fill the one reference object's collection with its own
    part, the last shard's part winning).

    :raises CrossShardError: naming the tables and the fix.
    """
    compiled = _compiled(result)
    if compiled is None:
        return
    found = _fanouts.get(compiled)
    if found is None:
        ran = _statement_run(compiled)
        found = []
        if isinstance(ran, Select):
            for frm in ran.get_final_froms():
                found += _fanout_joins(frm)
        _fanouts[compiled] = found
    if found:
        result.close()
        raise CrossShardError(
            f"this SELECT runs on several shards and joins sharded table(s) {sorted(found)} "
            "to other sharded rows through reference rows (a joinedload() of a reference "
            "object's collection of sharded objects makes such a join): each shard would "
            "pair only its own rows, and fill the reference object's collection with its "
            "own part only. Load that collection with selectinload() or lazily, which reads "
            "every shard; join the sharded tables on their shard key instead."
        )


def _fanout_joins(frm: Any) -> list[str]:
    """Sharded tables joined on the right of ``frm``, whose left side already holds
    sharded rows, by reference columns only: pairs of sharded rows that meet through
    a reference row, which each shard finds among its own rows only."""
    if not isinstance(frm, Join):
        inner = getattr(frm, "element", None)
        return _fanout_joins(inner) if isinstance(inner, Join) else []
    out = _fanout_joins(frm.left) + _fanout_joins(frm.right)
    left = {_from_key(x) for x in _leaves(frm.left)}
    sharded_right = sorted({_base(x).name for x in _leaves(frm.right) if _sharded(x)})
    if not sharded_right or frm.onclause is None or not any(map(_sharded, _leaves(frm.left))):
        return out
    on_left = [c.table for c in visitors.iterate(frm.onclause)
               if isinstance(c, ColumnClause) and getattr(c, "table", None) is not None
               and _from_key(c.table) in left]  # fmt: skip
    if on_left and all(is_reference_table(_base(t)) for t in on_left):
        out += sharded_right
    return out


def _sharded(frm: Any) -> bool:
    base = _base(frm)
    return isinstance(base, TableClause) and not is_reference_table(base)


def _leaves(frm: Any) -> Iterator[Any]:
    """The tables and aliases a join tree joins, as they appear in it."""
    if isinstance(frm, Join):
        yield from _leaves(frm.left)
        yield from _leaves(frm.right)
    else:
        yield frm


def _from_key(frm: Any) -> tuple[Any, str]:
    if isinstance(frm, TableClause):
        return _table_key(frm)
    return ("alias", str(getattr(frm, "name", id(frm))))


def _base(frm: Any) -> Any:
    while not isinstance(frm, TableClause) and getattr(frm, "element", None) is not None:
        frm = frm.element
    return frm


def loads_for_reference_parent(orm_context: Any) -> bool:
    """Whether ``orm_context`` (an :class:`~sqlalchemy.orm.ORMExecuteState`) loads a
    relationship of a reference object: it is not routed to the parent's shard, since
    related sharded rows live on every shard."""
    parent = orm_context.lazy_loaded_from if orm_context.is_select else None
    if parent is not None:
        return is_reference_mapper(parent.mapper)
    if not orm_context.is_relationship_load:
        return False
    path = orm_context.loader_strategy_path
    elements = getattr(path, "path", ())
    prop = elements[-1] if elements else None
    return is_reference_mapper(getattr(prop, "parent", None))


def check_links(state: Any) -> None:
    """Refuse a reference object (``InstanceState``) linked many-to-one to a sharded
    object: its foreign key would need the sharded row on every shard.

    :raises CrossShardError: naming both objects and the relationship.
    """
    for rel in state.mapper.relationships:
        if rel.direction is not RelationshipDirection.MANYTOONE or rel.secondary is not None:
            continue
        target = state.dict.get(rel.key)
        if target is not None and not is_reference_mapper(inspect(target).mapper):
            cls = state.class_.__name__
            raise CrossShardError(
                f"{cls}.{rel.key} links a {cls}, a reference table kept on every shard, to "
                f"a {type(target).__name__}, which lives on one shard: its foreign key would "
                f"fail on the other shards. Link the {type(target).__name__} to the {cls} "
                "instead (a sharded row may refer to a reference row), or make "
                f"{type(target).__name__} a reference table too."
            )


# -- identity -------------------------------------------------------------------------

# SQLAlchemy's identity map class (renamed with an underscore in 2.1)
_WeakInstanceDict: Any = getattr(sa_identity, "_WeakInstanceDict", None) or getattr(
    sa_identity, "WeakInstanceDict", None
)


class IdentityMap(_WeakInstanceDict):  # type: ignore[misc]
    """The sharded Session's identity map: one object per reference row.

    SQLAlchemy keys the identity map by ``(class, primary key, identity token)``,
    the token being the shard a row was read from.  A reference row has a copy on
    every shard; read through several shards (a scattered join, lazy loads from
    objects of several shards), it would become several objects with diverging
    state.  Keys of reference classes are therefore made with one token, the
    session's first shard (``token``), whichever shard the row came from.

    :param token: the identity token of every reference object.
    """

    def __init__(self, token: Any) -> None:
        super().__init__()
        self.token = token

    def _canonical(self, key: Any) -> Any:
        cls = key[0]
        flag = _classes.get(cls)
        if flag is None:
            flag = _is_reference_class(cls)
        if flag and key[2] != self.token:
            return (cls, key[1], self.token)
        return key

    def _own(self, state: Any) -> None:
        key = state.key
        if key is not None:
            canonical = self._canonical(key)
            if canonical is not key:
                state.key = canonical
                state.identity_token = self.token

    def get(self, key: Any, default: Any = None) -> Any:
        """The object under ``key`` (its reference token made the session's)."""
        if _classes.get(key[0]) is False:  # the usual case, once per row loaded: no call
            return _map_get(self, key, default)
        return _map_get(self, self._canonical(key), default)

    def fast_get_state(self, key: Any) -> Any:
        """The state under ``key``, or None."""
        if _classes.get(key[0]) is False:
            return _map_fast_get_state(self, key)
        return _map_fast_get_state(self, self._canonical(key))

    def __contains__(self, key: Any) -> bool:
        if _classes.get(key[0]) is False:
            return bool(_map_contains(self, key))
        return bool(_map_contains(self, self._canonical(key)))

    def __getitem__(self, key: Any) -> Any:
        if _classes.get(key[0]) is False:
            return _map_getitem(self, key)
        return _map_getitem(self, self._canonical(key))

    def _add_unpresent(self, state: Any, key: Any) -> None:
        if _classes.get(key[0]) is False:
            _map_add_unpresent(self, state, key)
            return
        canonical = self._canonical(key)
        if canonical is not key:
            state.key = canonical
            state.identity_token = self.token
        super()._add_unpresent(state, canonical)

    def add(self, state: Any) -> bool:
        """Add ``state`` under its key (a reference object's under the session's token)."""
        self._own(state)
        return bool(super().add(state))

    def replace(self, state: Any) -> Any:
        """Put ``state`` under its key, returning the state it replaces."""
        self._own(state)
        return super().replace(state)


# SQLAlchemy's own methods, called directly on the fast path (rows of sharded classes)
_map_get = _WeakInstanceDict.get
_map_add_unpresent = _WeakInstanceDict._add_unpresent
_map_fast_get_state = _WeakInstanceDict.fast_get_state
_map_contains = _WeakInstanceDict.__contains__
_map_getitem = _WeakInstanceDict.__getitem__


# -- writes -----------------------------------------------------------------------------


def replicate(cursor: Any, statement: str, parameters: Any, context: Any, *, many: bool
              ) -> bool:  # fmt: skip
    """Run a write to a reference table on every shard of the session's transaction.

    Called by the ``postgresql+shardsession`` dialect for every INSERT, UPDATE and
    DELETE executed on a connection that a sharded Session's transaction holds.
    Returns False, having done nothing, unless the statement's table is a
    reference table.  Otherwise the same SQL and parameters are sent to every
    shard's connection of the transaction (joining the shards it did not use yet,
    under the same savepoints) before any reply is read; the cursor gets the
    reply of its own shard, once every shard has answered alike.

    :raises ReferenceDivergedError: the shards changed different numbers of rows,
        or returned different rows: their copies differ.
    :raises CrossShardError: the session commits shard by shard (``twophase=False``),
        so the copies could end up different.
    """
    table = getattr(context.compiled.compile_state, "dml_table", None)
    if table is None or not is_reference_table(table):
        return False
    conn = cursor.connection
    session = conn.owner()
    if session is None:
        raise CrossShardError(
            f"a write to reference table {table.name!r} ran on a connection whose session "
            "is gone, so it cannot reach every shard; run it through a live session"
        )
    is_reference_statement(context.compiled.statement)  # reads no sharded table
    if not (session.twophase or getattr(session, "_shards_end_together", False)):
        raise CrossShardError(
            f"a write to reference table {table.name!r} must reach every shard in one "
            "transaction, and this session commits each shard on its own (twophase=False). "
            "Write reference tables with a Session(twophase=True), the default."
        )
    conns = {
        shard: session.connection(bind_arguments={"shard_id": shard}).connection.dbapi_connection
        for shard in session.shards
    }
    own = next((shard for shard, c in conns.items() if c is conn), None)
    if own is None:
        raise CrossShardError(
            f"a write to reference table {table.name!r} ran on a connection that is not "
            "one of its session's transaction, so it cannot reach every shard; run it "
            "through the session (session.execute(), or session.connection())"
        )
    if len(conns) == 1:
        return False
    order = [own, *(shard for shard in conns if shard != own)]

    def request(c: Any) -> p.Request:
        if many:
            return p.ExecuteMany(statement, list(parameters), False, c.tag)
        return p.Execute(statement, parameters, None, None, c.tag)

    outcomes = dict(zip(order, exchange([(conns[s], request(conns[s])) for s in order])))
    failed = [s for s in order if isinstance(outcomes[s], BaseException)]
    if failed:
        raise outcomes[failed[0]]
    _check_alike(table.name, statement, outcomes)
    cursor.set_result(outcomes[own])
    return True


def _check_alike(table: str, statement: str, outcomes: dict[str, p.Result]) -> None:
    verb = statement.lstrip().split(None, 1)[0].upper()
    counts = {shard: result.rowcount for shard, result in outcomes.items()}
    if len(set(counts.values())) > 1:
        changed = "; ".join(f"{n} row(s) on {shards}" for n, shards in _groups(counts))
        raise ReferenceDivergedError(
            f"the copies of reference table {table!r} differ between shards: this {verb} "
            f"changed {changed}, so {_odd(counts)}. {_REPAIR}"
        )
    rows = {shard: _multiset(result.rows) for shard, result in outcomes.items()}
    if len({repr(r) for r in rows.values()}) > 1:
        raise ReferenceDivergedError(
            f"the copies of reference table {table!r} differ between shards: this {verb} "
            f"returned different rows, so {_odd(rows)} (a server_default or a sequence "
            "gave each shard its own value?). Give reference rows values computed in "
            f"Python (default= rather than server_default=). {_REPAIR}"
        )


_REPAIR = (
    "Roll the transaction back (it undoes the write on every shard), make the copies "
    "equal again (copy the table's rows from a shard that is right to the others), "
    "then retry."
)


def _multiset(rows: Iterable[Any]) -> list[tuple[str, int]]:
    return sorted(Counter(repr(tuple(r)) for r in rows).items())


def _groups(values: dict[str, Any]) -> list[tuple[Any, list[str]]]:
    """(value, shards) groups, the largest first."""
    groups: dict[str, tuple[Any, list[str]]] = {}
    for shard, value in values.items():
        groups.setdefault(repr(value), (value, []))[1].append(shard)
    return sorted(groups.values(), key=lambda g: -len(g[1]))


def _odd(values: dict[str, Any]) -> str:
    """Which shards differ: those outside the largest group, if there is one."""
    ranked = _groups(values)
    if len(ranked[0][1]) > len(ranked[1][1]):
        return f"shard(s) {sorted(s for _, g in ranked[1:] for s in g)} differ from the others"
    return f"the shards differ: {[sorted(g) for _, g in ranked]}"
