"""Global ids: primary keys unique across shards that say which shard made them.

A ``serial`` or identity column counts on each shard by itself, so the same id
appears on every shard.  :class:`ShardedIdentity` is a server default for a
``BIGINT`` primary key that does not repeat::

    class Order(Base):
        __tablename__ = "orders"
        __shard_key__ = "customer_id"

        id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
        customer_id: Mapped[int]

An id is ``shard_number << 48 | n``: ``n`` comes from a sequence of the table on
the shard that inserts the row, and ``shard_number`` is that shard's own number,
stored in the shard's database (the view ``shardsession_shard``).  Numbers are
given once, to the shards that have none, by the first session that needs them
(:func:`shard_numbers`), and never change afterwards, so adding shards later
leaves every existing id meaningful.  ``session.get(Order, id)`` reads the number
out of the id and asks that shard first (:func:`get`).

What the database holds, on each shard:

* ``shardsession_shard``, a view of one row: ``number``, ``name`` (the shard's
  name when the number was given) and ``claimed_at``.  It is a view, not a table,
  so that emptying every table (as test fixtures do) cannot lose the number that
  existing ids are made of, and so that schema tools that compare tables
  (Alembic's autogenerate) leave it alone;
* ``shardsession_next_id(regclass)``, the function of the column default;
* one sequence per column, ``<table>_<column>_gid``, owned by the column: dropped
  with the table and restarted by ``TRUNCATE ... RESTART IDENTITY``.
"""

from __future__ import annotations

import datetime
import hashlib
import inspect as pyinspect
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from shardsession.coordinator import reference
from sqlalchemy import BigInteger, Integer, event, func, inspect, literal_column
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapper
from sqlalchemy.schema import Column, DefaultClause, FetchedValue, Table
from sqlalchemy.types import TypeDecorator

from shardsession.exc import ArgumentError, ShardedIdentityWarning, ShardNumberError

__all__ = [
    "MAX_SHARD_NUMBER",
    "SEQUENCE_BITS",
    "ShardedIdentity",
    "get",
    "shard_for_id",
    "shard_number_of",
    "shard_numbers",
]

#: Bits of an id that hold the per-shard sequence; the shard number is above them.
SEQUENCE_BITS = 48
#: The highest shard number: ids are positive 64-bit integers (``BIGINT``).
MAX_SHARD_NUMBER = (1 << (63 - SEQUENCE_BITS)) - 1
_SEQUENCE_MAX = (1 << SEQUENCE_BITS) - 1
_REGISTRY = "shardsession_shard"
_FUNCTION = "shardsession_next_id"
#: execution option of a get() that already asked one shard (read by the session's
#: default execute chooser, which leaves that shard out)
ASKED = "shardsession_asked_shard"


def _run(connection: Connection, sql: str) -> Any:
    """Run ``sql`` as written: no parameters, so ``%`` is not a placeholder."""
    return connection.exec_driver_sql(sql, execution_options={"no_parameters": True})


_PREPARER = postgresql.dialect().identifier_preparer


def _quote(identifier: str) -> str:
    """``identifier`` as PostgreSQL shows it: quoted only when it has to be."""
    return str(_PREPARER.quote(identifier))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ShardedIdentity(DefaultClause):
    """A server default that makes primary keys unique across shards.

    Give it to the primary key column, positionally::

        id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)

    or as ``Column("id", BigInteger, ss.ShardedIdentity(), primary_key=True)``.
    ``CREATE TABLE`` (``Base.metadata.create_all(shards)``, ``Table.create()``, or
    Alembic's ``op.create_table``) creates what each shard needs: the column's
    sequence and the ``shardsession_next_id`` function.  An ``INSERT`` leaves the
    column out and the database fills it in; SQLAlchemy reads it back with
    ``RETURNING``, as for any server-generated primary key, in batches.

    The value is ``shard_number << 48 | n``
    (:data:`~shardsession.coordinator.identity.SEQUENCE_BITS`), where ``n`` counts
    the table's rows on that shard from 1 and ``shard_number`` is the shard's own
    stable number (:func:`~shardsession.shard_numbers`).  So ids never repeat across
    shards, and :meth:`shardsession.Session.get` knows which shard to ask.  Ids
    of shards numbered 0 to 31 stay below 2\\ :sup:`53` and survive a trip
    through JSON numbers.

    The column is a ``BIGINT``: an ``Integer`` or ``SmallInteger`` type (the one
    ``Mapped[int]`` gives) becomes :class:`~sqlalchemy.types.BigInteger`.

    :raises ArgumentError: when the column is attached to its table, if its type
        is not an integer type.
    """

    def __init__(self) -> None:
        # DefaultClause's argument is built from the column, once it has one
        FetchedValue.__init__(self, for_update=False)
        self.reflected = False

    @property
    def arg(self) -> Any:  # type: ignore[override]
        """The default's SQL: ``shardsession_next_id('<sequence>'::regclass)``."""
        column = getattr(self, "column", None)
        name = sequence_name(column) if column is not None else "?"
        regclass: Any = literal_column(_literal(name) + "::regclass")
        try:  # SQLAlchemy 2.1: values that grow in row order let the ORM batch INSERTs
            return func.shardsession_next_id(regclass, monotonic=True)
        except TypeError:  # pragma: no cover - SQLAlchemy 2.0
            return func.shardsession_next_id(regclass)

    def _set_parent(self, parent: Any, **kw: Any) -> None:
        super()._set_parent(parent, **kw)
        event.listen(parent, "after_parent_attach", _column_attached)

    def __repr__(self) -> str:
        return "ShardedIdentity()"


def _column_attached(column: Column[Any], table: Any) -> None:
    if not isinstance(table, Table):
        return
    type_ = column.type
    impl = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
    if not isinstance(impl, Integer):
        raise ArgumentError(
            f"{table.name}.{column.name} has ShardedIdentity() but type {type_!r}; a sharded "
            "identity is a BIGINT: use Mapped[int] or BigInteger"
        )
    if not isinstance(impl, BigInteger):
        if isinstance(type_, TypeDecorator):
            raise ArgumentError(
                f"{table.name}.{column.name} has ShardedIdentity() but {type_!r} stores "
                f"{impl!r}, too small for ids above 2**48; base the type on BigInteger"
            )
        column.type = BigInteger()
    event.listen(table, "before_create", _before_create)
    event.listen(table, "after_create", _after_create)


def sequence_name(column: Column[Any]) -> str:
    """The schema-qualified, quoted name of ``column``'s sequence on every shard."""
    table = column.table
    name = f"{table.name}_{column.name}_gid"
    if len(name.encode()) > 63:  # PostgreSQL would cut it; keep it unique instead
        digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        name = name.encode()[:54].decode(errors="ignore") + "_" + digest
    schema = getattr(table, "schema", None)
    return f"{_quote(schema)}.{_quote(name)}" if schema else _quote(name)


def _identity_columns(table: Table) -> list[Column[Any]]:
    return [c for c in table.columns if isinstance(c.server_default, ShardedIdentity)]


def _before_create(table: Table, connection: Connection, **kw: Any) -> None:
    """Create the id function (once per schema) and the table's sequences."""
    _create_function(connection)
    for column in _identity_columns(table):
        _run(
            connection,
            f"CREATE SEQUENCE IF NOT EXISTS {sequence_name(column)} AS bigint "
            f"MINVALUE 1 MAXVALUE {_SEQUENCE_MAX}",
        )


def _after_create(table: Table, connection: Connection, **kw: Any) -> None:
    """Tie each sequence to its column: dropped with the table, restarted by TRUNCATE."""
    preparer = connection.dialect.identifier_preparer
    for column in _identity_columns(table):
        _run(
            connection,
            f"ALTER SEQUENCE {sequence_name(column)} OWNED BY "
            f"{preparer.format_table(table)}.{preparer.format_column(column)}",
        )


def _create_function(connection: Connection) -> None:
    schema = _run(
        connection,
        "SELECT current_schema(), to_regprocedure(quote_ident(current_schema()) || "
        f"'.{_FUNCTION}(regclass)') IS NOT NULL",
    ).one()
    if schema[1]:
        return
    if schema[0] is None:
        raise ArgumentError(
            "the connection has no current schema (search_path is empty), so the "
            "ShardedIdentity function has nowhere to go; set a search_path"
        )
    registry = f"{_quote(schema[0])}.{_REGISTRY}"
    _run(
        connection,
        f"""CREATE FUNCTION {_quote(schema[0])}.{_FUNCTION}(seq regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $shardsession$
DECLARE
    shard_number integer;
BEGIN
    IF to_regclass({_literal(registry)}) IS NOT NULL THEN
        SELECT number INTO shard_number FROM {registry};
    END IF;
    IF shard_number IS NULL THEN
        RAISE EXCEPTION 'this database has no shard number yet, so % cannot make an id', seq
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Number the shards first: open a shardsession Session over all '
                         'of them, or call shardsession.shard_numbers(shards).';
    END IF;
    RETURN (shard_number::bigint << {SEQUENCE_BITS}) | nextval(seq);
END
$shardsession$""",
    )
    _run(
        connection,
        f"COMMENT ON FUNCTION {_quote(schema[0])}.{_FUNCTION}(regclass) IS "
        f"{_literal('shardsession: the next ShardedIdentity id, shard_number << 48 | nextval')}",
    )


# -- shard numbers ----------------------------------------------------------------------

_known: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


def shard_numbers(shards: Mapping[str, Engine]) -> dict[str, int]:
    """Shard name -> the shard's stable number, numbering the shards that have none.

    Each shard's number is stored in its own database (the view
    ``shardsession_shard``) and read once per process.  Shards without one get the
    smallest numbers no shard of ``shards`` holds, in the order of their names, so
    a shard added later never takes a number in use and the existing ones keep
    theirs.  Sessions call this when they first need the numbers (a flush or
    ``insert()`` of a model with a :class:`ShardedIdentity`, a ``get()`` by such
    an id); call it yourself to number new shards at deployment.

    :raises ShardNumberError: two shards hold the same number (two databases copied
        from one, or numbered at the same time by processes with different sets of
        shards), or a shard's ``shardsession_shard`` view is not one row with a
        number from 0 to :data:`~shardsession.coordinator.identity.MAX_SHARD_NUMBER`.
    """
    try:  # read before in this process: no round trip
        numbers = {name: _known[engine] for name, engine in shards.items()}
    except KeyError:
        numbers = _number(shards)
    _check_unique(numbers)
    return numbers


def _number(shards: Mapping[str, Engine]) -> dict[str, int]:
    # No lock: numbering is idempotent (a second claim of a shard reads the first
    # one's number back), and a lock held across I/O would stall an event loop whose
    # coroutines share the thread.  One shard after the other, in this thread, so
    # that asyncio engines run inside the caller's greenlet; it happens once per
    # process.
    missing = {name: engine for name, engine in shards.items() if engine not in _known}
    for name, engine in missing.items():
        number = _read_number(name, engine)
        if number is not None:
            _known[engine] = number
    numbers = {name: _known.get(engine) for name, engine in shards.items()}
    _check_unique(numbers)
    taken = {n for n in numbers.values() if n is not None}
    free = (n for n in itertools.count() if n not in taken)
    plan = {name: next(free) for name in sorted(n for n, v in numbers.items() if v is None)}
    if plan and max(plan.values()) > MAX_SHARD_NUMBER:
        raise ShardNumberError(
            f"no shard numbers left for {sorted(plan)}: ids hold numbers up to {MAX_SHARD_NUMBER}"
        )
    for name, number in plan.items():
        _known[shards[name]] = _claim(name, shards[name], number)
    return {name: _known[engine] for name, engine in shards.items()}


def _check_unique(numbers: Mapping[str, int | None]) -> None:
    holders: dict[int, list[str]] = {}
    for name, number in numbers.items():
        if number is not None:
            holders.setdefault(number, []).append(name)
    clashes = {n: sorted(names) for n, names in holders.items() if len(names) > 1}
    if not clashes:
        return
    number, names = min(clashes.items())
    taken = set(holders)
    free = (n for n in itertools.count() if n not in taken)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    fixes = "; ".join(f"on {name!r}: {_view_sql(next(free), name, now)}" for name in names[1:])
    raise ShardNumberError(
        f"shards {names} all hold shard number {number}, so their ids would repeat (one "
        "database was copied from another, or processes with different shards numbered "
        "them at the same time). Give all but one of them a free number, on the shards "
        f"that made no ids yet; for example {fixes}. Then restart the application's "
        "processes: they keep the numbers they have read"
    )


def _view_sql(number: int, name: str, when: str) -> str:
    """The statement that stores ``number`` as the shard's number."""
    return (
        f"CREATE OR REPLACE VIEW {_REGISTRY} AS SELECT {int(number)}::integer AS number, "
        f"{_literal(name)}::text AS name, {_literal(when)}::timestamptz AS claimed_at"
    )


def _registry_of(connection: Connection) -> str | None:
    """The qualified name of the shard's number view, or None when it has none yet."""
    name = _run(
        connection, f"SELECT to_regclass(quote_ident(current_schema()) || '.{_REGISTRY}')::text"
    ).scalar()
    return str(name) if name is not None else None


def _read_number(shard: str, engine: Engine) -> int | None:
    with engine.connect() as connection:
        registry = _registry_of(connection)
        if registry is None:
            return None
        rows = _run(connection, f"SELECT number FROM {registry}").all()
    if (
        len(rows) != 1
        or not isinstance(rows[0][0], int)
        or not (0 <= rows[0][0] <= MAX_SHARD_NUMBER)
    ):
        raise ShardNumberError(
            f"shard {shard!r}: view {registry} should hold one row with a shard number from "
            f"0 to {MAX_SHARD_NUMBER}, but holds {[tuple(r) for r in rows]!r}; fix it with "
            f"CREATE OR REPLACE VIEW {_REGISTRY} AS SELECT <number>::integer AS number, ..."
        )
    return int(rows[0][0])


def _claim(shard: str, engine: Engine, number: int) -> int:
    """Store ``number`` as the shard's number; the number it holds if another came first."""
    now = datetime.datetime.now(datetime.UTC).isoformat()
    try:
        with engine.begin() as connection:
            if _registry_of(connection) is None:
                # CREATE, not OR REPLACE: of two processes, the second one fails
                _run(connection, _view_sql(number, shard, now).replace(" OR REPLACE", "", 1))
                _run(
                    connection,
                    f"COMMENT ON VIEW {_REGISTRY} IS "
                    + _literal(
                        "shardsession: this database's shard number, the high bits of its "
                        "ShardedIdentity ids; never change it once ids exist"
                    ),
                )
    except (sa_exc.ProgrammingError, sa_exc.IntegrityError) as err:
        # another process created it between our look and our CREATE VIEW
        if getattr(err.orig, "sqlstate", None) not in ("42P07", "23505"):
            raise
    found = _read_number(shard, engine)
    assert found is not None  # created above, or by the process that came first
    return found


def shard_number_of(value: int) -> int:
    """The shard number held by an id made by :class:`ShardedIdentity`."""
    return int(value) >> SEQUENCE_BITS


def shard_for_id(shards: Mapping[str, Engine], value: Any) -> str | None:
    """The name of the shard of ``shards`` that made id ``value``, or None.

    None when ``value`` is not a positive integer or no shard of ``shards`` holds
    its number.  Numbers the shards if needed (:func:`shard_numbers`).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    number = shard_number_of(value)
    for name, held in shard_numbers(shards).items():
        if held == number:
            return name
    return None


# -- mappers ------------------------------------------------------------------------------

_NONE = object()
_columns: weakref.WeakKeyDictionary[Mapper[Any], Any] = weakref.WeakKeyDictionary()


def identity_column(mapper: Mapper[Any]) -> Column[Any] | None:
    """The primary key column of ``mapper`` that has a :class:`ShardedIdentity`, or None."""
    found = _columns.get(mapper, _NONE)
    if found is _NONE:
        found = next(
            (c for c in mapper.primary_key if isinstance(c.server_default, ShardedIdentity)),
            None,
        )
        _columns[mapper] = found
    return found  # type: ignore[no-any-return]


def spreads(mapper: Mapper[Any]) -> bool:
    """Whether new objects of ``mapper`` that nothing places are spread over the shards:
    it has a :class:`ShardedIdentity` and no ``__shard_key__``."""
    return (
        identity_column(mapper) is not None
        and getattr(mapper.class_, "__shard_key__", None) is None
    )


_turns: weakref.WeakKeyDictionary[Mapper[Any], Iterable[int]] = weakref.WeakKeyDictionary()


def next_shard(mapper: Mapper[Any], shards: Sequence[str]) -> str:
    """The shard of the next new object of ``mapper`` that nothing else places.

    Round robin, per class hierarchy and process: the ``k``-th such object goes to
    ``shards[k % len(shards)]``.
    """
    turns = _turns.get(mapper.base_mapper)
    if turns is None:
        turns = _turns.setdefault(mapper.base_mapper, itertools.count())
    return shards[next(turns) % len(shards)]  # type: ignore[call-overload]


def _linked(state: Any) -> Iterable[Any]:
    for rel in state.mapper.relationships:
        value = state.dict.get(rel.key)
        if value is None:
            continue
        if not rel.uselist:
            yield inspect(value)
        else:
            yield from map(inspect, value.values() if isinstance(value, dict) else value)


def place_unlinked(states: Sequence[Any], shards: Sequence[str]) -> None:
    """Place new objects (``InstanceState``) that are linked to no placed object.

    Objects linked to each other stay together.  A group holding an object whose
    class :func:`spreads` goes to :func:`next_shard` of its first such object (in
    the order they were added); any other group goes to the first shard.
    """
    group = {id(state): id(state) for state in states}

    def root(key: int) -> int:
        while group[key] != key:
            group[key] = group[group[key]]
            key = group[key]
        return key

    for state in states:
        for other in _linked(state):
            if id(other) in group:
                group[root(id(other))] = root(id(state))
    members: dict[int, list[Any]] = {}
    for state in sorted(states, key=lambda st: st.insert_order):
        members.setdefault(root(id(state)), []).append(state)
    for together in members.values():
        leader = next((st for st in together if spreads(st.mapper)), None)
        shard = next_shard(leader.mapper, shards) if leader is not None else shards[0]
        for state in together:
            state.identity_token = shard


# -- get() ----------------------------------------------------------------------------------


def _shard_of(session: Any, entity: Any, ident: Any) -> str | None:
    mapper = inspect(entity, raiseerr=False)
    if not isinstance(mapper, Mapper):
        return None
    column = identity_column(mapper)
    if column is None:
        return None
    pk = mapper.primary_key
    position = next(i for i, c in enumerate(pk) if c is column)
    if isinstance(ident, dict):
        value = ident.get(mapper.get_property_by_column(column).key)
    elif isinstance(ident, (tuple, list)):
        value = ident[position] if len(ident) == len(pk) else None
    else:
        value = ident if len(pk) == 1 else None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return shard_for_id(session.shards, value)


def get(session: Any, load: Callable[..., Any], entity: Any, ident: Any, **kw: Any) -> Any:
    """``session.get(entity, ident, **kw)``, asking the shard the id names first.

    When ``entity``'s primary key has a :class:`ShardedIdentity`, no shard is named
    (``identity_token``, ``bind_arguments={"shard_id": ...}``) and the session
    routes statements itself (no ``execute_chooser`` of the application's), the
    shard whose number the id holds is asked alone.  Only if the row is not there
    (it was moved to another shard, or does not exist) are the other shards asked,
    together.  ``load`` is SQLAlchemy's ``Session.get``.
    """
    bind_arguments = kw.get("bind_arguments") or {}
    if (
        kw.get("identity_token") is None
        and "shard_id" not in bind_arguments
        and session.execute_chooser == session._default_execute_chooser
    ):
        shard = _shard_of(session, entity, ident)
        if shard is not None:
            found = load(entity, ident, **{**kw, "identity_token": shard})
            if found is not None or len(session.shards) == 1:
                return found
            kw["execution_options"] = {**(kw.get("execution_options") or {}), ASKED: shard}
    return load(entity, ident, **kw)


# -- numbering before inserts -----------------------------------------------------------------

_tables: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _makes_ids(table: Any) -> bool:
    if table is None:
        return False
    found = _tables.get(table)
    if found is None:
        columns = getattr(table, "columns", ())
        found = any(
            isinstance(getattr(c, "server_default", None), ShardedIdentity) for c in columns
        )
        _tables[table] = found
    return found


def _before_flush(session: Any, flush_context: Any, instances: Any) -> None:
    mappers = {inspect(obj).mapper for obj in session.new}
    making = [mapper for mapper in mappers if identity_column(mapper) is not None]
    if making:
        for mapper in making:
            _refuse_on_reference(mapper.local_table)
        shard_numbers(session.shards)


def _before_insert(orm_context: Any) -> None:
    if not orm_context.is_insert:
        return
    table = getattr(orm_context.statement, "table", None)
    if _makes_ids(table):
        _refuse_on_reference(table)
        shard_numbers(orm_context.session.shards)


def _refuse_on_reference(table: Any) -> None:
    if reference.is_reference_table(table):
        raise ArgumentError(
            f"{table.name} is a reference table (a copy on every shard) with a "
            "ShardedIdentity() primary key: each shard would give its copy of a row another "
            "id. Give reference rows a key that is the same everywhere: assign the ids "
            "yourself (autoincrement=False), or use a natural key such as a code"
        )


def install(session_class: type[Any]) -> None:
    """Number the shards before a session of ``session_class`` inserts the first row
    of a model with a :class:`ShardedIdentity` (a flush or an ``insert()``)."""
    event.listen(session_class, "before_flush", _before_flush)
    event.listen(session_class, "do_orm_execute", _before_insert, insert=True)


# -- the mapping-time warning ---------------------------------------------------------------

_warned: weakref.WeakSet[Column[Any]] = weakref.WeakSet()


def check_mapper(mapper: Mapper[Any]) -> None:
    """Warn (:class:`~shardsession.exc.ShardedIdentityWarning`, once per column) when a
    class placed by ``__shard_key__`` has an autoincrement integer primary key that
    does not hold the key: its ids would repeat across shards.

    Classes without ``__shard_key__`` are not checked: they live on the first shard
    or with the object they are linked to, and are reached through it.
    """
    attr = getattr(mapper.class_, "__shard_key__", None)
    if not isinstance(attr, str):
        return
    key_column = mapper.columns.get(attr)
    pk = mapper.primary_key
    if key_column is None or any(c is key_column for c in pk):
        return
    for column in pk:
        table = column.table
        if (
            isinstance(table, Table)
            and table.autoincrement_column is column
            and not isinstance(column.server_default, ShardedIdentity)
            and column not in _warned
        ):
            _warned.add(column)
            cls = mapper.class_.__name__
            _warn_at(
                mapper.class_,
                f"{cls}.{column.key} is an autoincrement integer primary key, and {cls} "
                f"is placed by __shard_key__ = {attr!r}: each shard counts its own ids, so "
                f"the same {cls}.{column.key} values will repeat on several shards. Use "
                f"mapped_column(ss.ShardedIdentity(), primary_key=True) for ids unique "
                f"across shards, make {attr!r} part of the primary key, or assign the ids "
                "yourself (autoincrement=False)",
            )


def _warn_at(class_: type[Any], message: str) -> None:
    """Warn with the place where ``class_`` is defined (the warning is raised from
    inside SQLAlchemy's mapper configuration, far from the application's code)."""
    try:
        filename = pyinspect.getsourcefile(class_)
        lineno = pyinspect.getsourcelines(class_)[1]
    except (OSError, TypeError):
        filename = None
    if filename is None:
        warnings.warn(message, ShardedIdentityWarning, stacklevel=3)
        return
    warnings.warn_explicit(message, ShardedIdentityWarning, filename, lineno,
                           module=class_.__module__)  # fmt: skip


event.listen(Mapper, "mapper_configured", lambda mapper, class_: check_mapper(mapper))
