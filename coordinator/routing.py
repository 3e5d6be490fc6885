"""Choosing the shards an object, an identity or a statement goes to.

A :class:`Router` answers the three questions the session asks, with the semantics
and chooser signatures of SQLAlchemy's ``horizontal_shard.ShardedSession``:

* :meth:`Router.shard_for_instance` -- the one shard a new object is inserted into;
* :meth:`Router.shards_for_identity` -- the shards that may hold a primary key
  (``Session.get()`` and what uses it: ``merge()``, ``bulk_update_mappings()``);
* :meth:`Router.shards_for_execute` -- the shards a statement runs on.

Without user choosers a model's ``__shard_key__`` attribute routes it: its value is
hashed to a shard with rendezvous hashing (see :func:`shard_for_key`).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from shardsession.coordinator.options import find_shard_id_option

from shardsession.exc import ArgumentError, ShardNotFoundError
from shardsession.orm.util import object_state
from shardsession.sql.compiled import CompiledStatement, ParamRef

__all__ = [
    "ExecuteChooser",
    "IdentityChooser",
    "Router",
    "ShardChooser",
    "encode_shard_key",
    "shard_for_key",
]

#: ``shard_chooser(mapper, instance, clause=None) -> shard id``
ShardChooser = Callable[..., Any]
#: ``identity_chooser(mapper, primary_key, *, lazy_loaded_from, execution_options,
#: bind_arguments, **kw) -> iterable of shard ids``
IdentityChooser = Callable[..., Iterable[Any]]
#: ``execute_chooser(orm_execute_state) -> iterable of shard ids``
ExecuteChooser = Callable[[Any], Iterable[Any]]

# Execution option keys naming one shard, in precedence order.  ``_sa_shard_id`` is
# what SQLAlchemy's legacy ``Query.set_shard()`` sets; it is accepted for porting.
_MEMO_SIZE = 65536  # shard key values remembered per router
_SHARD_OPTION_KEYS = ("identity_token", "shard_id", "_sa_shard_id")


# -- the stable hash -------------------------------------------------------------------


def _put(out: bytearray, tag: bytes, payload: bytes) -> None:
    # Tag + length prefix: no two different values (nor tuples of them) share bytes.
    out += tag
    out += str(len(payload)).encode("ascii")
    out += b":"
    out += payload


def _put_number(out: bytearray, value: decimal.Decimal | int) -> None:
    if isinstance(value, int):
        _put(out, b"i", str(value).encode("ascii"))
        return
    if not value.is_finite():
        _put(out, b"n", str(value).encode("ascii"))
    elif value == value.to_integral_value():
        _put(out, b"i", str(int(value)).encode("ascii"))
    else:
        _put(out, b"d", str(value.normalize()).encode("ascii"))


def _encode(value: Any, out: bytearray) -> None:
    if value is None:
        raise TypeError("None cannot be a shard key value")
    if isinstance(value, enum.Enum):
        # Enum columns store the member's name; int enums are stored as ints.
        if isinstance(value, int):
            _put_number(out, int(value))
        else:
            _put(out, b"s", value.name.encode("utf-8"))
    elif isinstance(value, bool):
        _put(out, b"b", b"1" if value else b"0")
    elif isinstance(value, int):
        _put_number(out, value)
    elif isinstance(value, float):
        if math.isfinite(value):
            _put_number(out, decimal.Decimal(repr(value)))
        else:
            _put(out, b"n", repr(value).encode("ascii"))
    elif isinstance(value, decimal.Decimal):
        _put_number(out, value)
    elif isinstance(value, str):
        _put(out, b"s", value.encode("utf-8"))
    elif isinstance(value, uuid.UUID):
        _put(out, b"u", value.bytes)
    elif isinstance(value, bytes | bytearray | memoryview):
        _put(out, b"y", bytes(value))
    elif isinstance(value, datetime.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            utc = value.astimezone(datetime.UTC).replace(tzinfo=None)
            _put(out, b"Z", utc.isoformat().encode("ascii"))
        else:
            _put(out, b"T", value.isoformat().encode("ascii"))
    elif isinstance(value, datetime.date):
        _put(out, b"D", value.isoformat().encode("ascii"))
    elif isinstance(value, datetime.time):
        _put(out, b"H", value.isoformat().encode("ascii"))
    elif isinstance(value, tuple | list):
        inner = bytearray()
        for item in value:
            _encode(item, inner)
        _put(out, b"t", bytes(inner))
    else:
        raise TypeError(
            f"a shard key value of type {type(value).__name__} cannot be hashed; use an "
            "int, str, UUID, bytes, Decimal, float, bool, date/datetime/time, an Enum "
            "member or a tuple of these"
        )


def encode_shard_key(value: Any) -> bytes:
    """Return the canonical bytes of a shard key value, which the hash is taken over.

    Equal values of the same SQL meaning encode equally: ``5``, ``5.0`` and
    ``Decimal("5.00")`` give the same bytes, as do an aware datetime and the same
    instant in another time zone; an ``Enum`` member encodes as its name (how Enum
    columns store it), an ``IntEnum`` member as its int.  ``True`` and ``1`` differ.

    :raises TypeError: for None or a value of another type.
    """
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _shard_hashers(shard_ids: Sequence[str]) -> list[tuple[str, Any]]:
    hashers = []
    for sid in shard_ids:
        h = hashlib.blake2b(digest_size=8)
        h.update(encode_shard_key(sid))
        hashers.append((sid, h))
    return hashers


_TABLES: dict[tuple[str, ...], tuple[list[tuple[str, Any]], dict[tuple[type, Any], str]]] = {}
_TABLES_LOCK = threading.Lock()


def _routing_tables(
    ids: tuple[str, ...],
) -> tuple[list[tuple[str, Any]], dict[tuple[type, Any], str]]:
    """The hashers of ``ids`` and the memo of values already routed over them."""
    tables = _TABLES.get(ids)
    if tables is None:
        with _TABLES_LOCK:
            tables = _TABLES.setdefault(ids, (_shard_hashers(ids), {}))
    return tables


def _rendezvous(key: bytes, hashers: Sequence[tuple[str, Any]]) -> str:
    best_sid, best_w = "", -1
    for sid, base in hashers:
        h = base.copy()
        h.update(key)
        w = int.from_bytes(h.digest(), "big")
        # Ties (2**-64 likely) go to the smaller name so the result never depends on order.
        if w > best_w or (w == best_w and sid < best_sid):
            best_sid, best_w = sid, w
    return best_sid


def shard_for_key(value: Any, shard_ids: Sequence[str]) -> str:
    """Return the shard a shard key value belongs to: rendezvous hashing over names.

    Every shard gets a weight ``blake2b(name ‖ key)`` (64-bit digest of the shard
    name's and the value's canonical encodings, :func:`encode_shard_key`); the shard
    with the highest weight wins.  The answer depends only on the value and the *set*
    of shard names -- not their order, the process or ``PYTHONHASHSEED`` -- and
    adding a shard moves only the keys the new shard now wins (about 1/N of them,
    all onto the new shard); removing one moves only that shard's keys.

    :param value: the shard key value (see :func:`encode_shard_key` for types).
    :param shard_ids: the shard names; at least one.
    :raises TypeError: when *value* cannot be encoded.
    :raises ArgumentError: when *shard_ids* is empty.
    """
    if not shard_ids:
        raise ArgumentError("shard_for_key() needs at least one shard name")
    return _rendezvous(encode_shard_key(value), _shard_hashers(shard_ids))


def _coerce_for_column(value: Any, column: Any) -> Any:
    # A string compared with an int/UUID/numeric column matches by PostgreSQL's cast,
    # so it has to land where the typed value does.
    if not isinstance(value, str) or column is None:
        return value
    py = getattr(getattr(column, "type", None), "python_type", object)
    try:
        if py is int:
            return int(value)
        if py is uuid.UUID:
            return uuid.UUID(value)
        if py is decimal.Decimal:
            return decimal.Decimal(value)
    except (ValueError, decimal.InvalidOperation):
        return value
    return value


def _class_name(mapper: Any) -> str:
    return getattr(getattr(mapper, "class_", None), "__name__", None) or str(mapper)


# -- the router ------------------------------------------------------------------------


class Router:
    """Routes objects, identities and statements to the shards of one pool.

    :param shard_ids: the names of the shards, in the pool's order (results that name
        several shards list them in this order).
    :param shard_chooser: ``shard_chooser(mapper, instance, clause=None) -> shard id``
        for new objects; SQLAlchemy's ``ShardedSession`` signature.
    :param identity_chooser: ``identity_chooser(mapper, primary_key, *,
        lazy_loaded_from, execution_options, bind_arguments, **kw) -> shard ids``
        for primary key lookups.
    :param execute_chooser: ``execute_chooser(orm_execute_state) -> shard ids`` for
        statements not pinned explicitly.
    :raises ArgumentError: for no shards, duplicates, or names that are not strings.
    """

    def __init__(
        self,
        shard_ids: Sequence[str],
        shard_chooser: ShardChooser | None = None,
        identity_chooser: IdentityChooser | None = None,
        execute_chooser: ExecuteChooser | None = None,
    ) -> None:
        ids = list(shard_ids)
        if not ids:
            raise ArgumentError("a Router needs at least one shard")
        bad = [s for s in ids if not isinstance(s, str) or not s]
        if bad:
            raise ArgumentError(f"shard names must be non-empty strings, got {bad!r}")
        if len(set(ids)) != len(ids):
            raise ArgumentError(f"shard names must be unique, got {ids!r}")
        for name, fn in (
            ("shard_chooser", shard_chooser),
            ("identity_chooser", identity_chooser),
            ("execute_chooser", execute_chooser),
        ):
            if fn is not None and not callable(fn):
                raise ArgumentError(f"{name} must be callable, got {fn!r}")
        self.shard_ids: tuple[str, ...] = tuple(ids)
        self.shard_chooser = shard_chooser
        self.identity_chooser = identity_chooser
        self.execute_chooser = execute_chooser
        self._known = frozenset(ids)
        self._order = {sid: i for i, sid in enumerate(ids)}
        # A session makes its router: share the hashers and the memo of every router
        # over the same shard names (routing depends on nothing else).
        self._hashers, self._memo = _routing_tables(tuple(ids))

    def __repr__(self) -> str:
        return f"Router({list(self.shard_ids)!r})"

    # -- helpers -------------------------------------------------------------------

    def _check(self, shard_id: Any, source: str) -> str:
        if shard_id not in self._known:
            raise ShardNotFoundError(
                f"{source} named shard {shard_id!r}, which is not a shard of this session "
                f"(shards: {', '.join(self.shard_ids)}); use one of those names"
            )
        return shard_id  # type: ignore[no-any-return]

    def _check_many(self, shard_ids: Any, source: str) -> list[str]:
        if isinstance(shard_ids, str | bytes) or not isinstance(shard_ids, Iterable):
            raise ArgumentError(
                f"{source} must return an iterable of shard ids, got {shard_ids!r}; "
                f"return [{shard_ids!r}] for a single shard"
            )
        out: list[str] = []
        for sid in shard_ids:
            self._check(sid, source)
            if sid not in out:
                out.append(sid)
        return out

    def _ordered(self, shard_ids: Iterable[str]) -> list[str]:
        return sorted(set(shard_ids), key=self._order.__getitem__)

    def shard_for_value(self, value: Any, column: Any = None) -> str:
        """Return the shard a shard key value hashes to (:func:`shard_for_key`).

        :param value: the value of a model's ``__shard_key__`` attribute.
        :param column: the shard key column, if known: a string given for an integer,
            UUID or numeric column is converted first, since PostgreSQL compares it
            as that type.
        :raises ShardNotFoundError: for None or a value of a type that cannot be hashed.
        """
        value = _coerce_for_column(value, column)
        # Routing a bulk insert hashes the same few tenant values again and again.
        try:
            memo_key = (type(value), value)
            found = self._memo.get(memo_key)
        except TypeError:  # an unhashable value: let encode_shard_key name the problem
            memo_key, found = None, None
        if found is not None:
            return found
        try:
            key = encode_shard_key(value)
        except TypeError as e:
            raise ShardNotFoundError(f"cannot route shard key value {value!r}: {e}") from None
        shard = _rendezvous(key, self._hashers)
        if memo_key is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[memo_key] = shard
        return shard

    # -- objects -------------------------------------------------------------------

    def shard_for_instance(self, mapper: Any, instance: Any, clause: Any = None) -> str:
        """Return the shard *instance* belongs to (where a new object is INSERTed).

        In order: the object's identity token (it was loaded from or flushed to that
        shard); else the ``shard_chooser``; else the value of the model's
        ``__shard_key__`` attribute hashed to a shard (:meth:`shard_for_value`).

        :param mapper: the object's mapper (None: taken from *instance*).
        :param instance: the mapped object; None only with a ``shard_chooser``.
        :param clause: passed on to the ``shard_chooser`` (keyword ``clause``) when
            given.
        :raises ShardNotFoundError: when the chooser names an unknown shard, the model
            declares no ``__shard_key__`` and there is no chooser, or the shard key
            attribute of the object is not set.
        """
        state = object_state(instance) if instance is not None else None
        if state is not None:
            token = state.identity_token
            if token is not None:
                return self._check(token, f"the identity token of {state.class_.__name__}")
            if mapper is None:
                mapper = state.mapper
        if self.shard_chooser is not None:
            if clause is None:
                sid = self.shard_chooser(mapper, instance)
            else:
                sid = self.shard_chooser(mapper, instance, clause=clause)
            return self._check(sid, f"shard_chooser for {_class_name(mapper)} object {instance!r}")
        if mapper is None or instance is None:
            raise ShardNotFoundError(
                "cannot choose a shard without an object: pass shard_id in bind_arguments "
                "or configure a shard_chooser"
            )
        key = mapper.shard_key
        cls = _class_name(mapper)
        if key is None:
            raise ShardNotFoundError(
                f"cannot choose a shard for {cls} object {instance!r}: {cls} declares no "
                "__shard_key__ and the session has no shard_chooser; add "
                f"__shard_key__ = '<attribute>' to {cls} or pass shard_chooser= to the Session"
            )
        assert state is not None
        value = state.dict.get(key)
        if value is None:
            raise ShardNotFoundError(
                f"cannot choose a shard for {cls} object {instance!r}: its shard key "
                f"attribute {cls}.{key} is not set (column defaults are applied only at "
                f"INSERT, after routing); set {cls}.{key} before adding it to the session"
            )
        return self.shard_for_value(value, mapper.shard_key_column)

    # -- identities ----------------------------------------------------------------

    def shards_for_identity(
        self,
        mapper: Any,
        primary_key: Any,
        *,
        lazy_loaded_from: Any = None,
        execution_options: Mapping[str, Any] | None = None,
        bind_arguments: Mapping[str, Any] | None = None,
        identity_token: Any = None,
    ) -> list[str]:
        """Return the shards that may hold the row of *primary_key*, to ask in order.

        In order: *identity_token* when given; else the ``identity_chooser`` (called
        with SQLAlchemy's arguments); else, when the model's shard key column is part
        of its primary key, the one shard that value hashes to; else every shard (the
        session asks them in parallel and takes the one that has the row).

        :param mapper: the mapper of the class looked up.
        :param primary_key: a scalar, a tuple in primary key column order, or a dict
            of attribute names to values.
        :param lazy_loaded_from: passed on to the ``identity_chooser`` unchanged; the
            session always passes None.  Lazy loads of relationships never come here:
            relationships do not cross shards, so they run on the shard of the object
            they are loaded from.
        :param execution_options: the execution options of the lookup.
        :param bind_arguments: the bind arguments of the lookup.
        :param identity_token: the shard the caller already knows.
        :raises ShardNotFoundError: when a shard id is unknown.
        :raises ArgumentError: when the chooser returns a string instead of a list.
        """
        if identity_token is not None:
            return [self._check(identity_token, "identity_token")]
        if self.identity_chooser is not None:
            ids = self.identity_chooser(
                mapper,
                primary_key,
                lazy_loaded_from=lazy_loaded_from,
                execution_options=dict(execution_options or {}),
                bind_arguments=dict(bind_arguments or {}),
            )
            return self._check_many(ids, f"identity_chooser for {_class_name(mapper)}")
        column = getattr(mapper, "shard_key_column", None)
        if column is not None:
            value = self._pk_component(mapper, primary_key, column)
            if value is not None:
                return [self.shard_for_value(value, column)]
        return list(self.shard_ids)

    @staticmethod
    def _pk_component(mapper: Any, primary_key: Any, column: Any) -> Any:
        pk_cols = list(mapper.primary_key)
        pos = next((i for i, c in enumerate(pk_cols) if c is column), None)
        if pos is None:
            return None
        if isinstance(primary_key, Mapping):
            return primary_key.get(mapper.shard_key)
        if not isinstance(primary_key, tuple | list):
            primary_key = (primary_key,)
        if len(primary_key) != len(pk_cols):
            return None
        return primary_key[pos]

    # -- statements ----------------------------------------------------------------

    def explicit_shard(self, orm_execute_state: Any) -> str | None:
        """Return the shard a statement is pinned to explicitly, or None.

        In order: a :class:`~shardsession.coordinator.options.set_shard_id` option on
        the statement; the ``identity_token`` execution option; the ``shard_id`` (or
        SQLAlchemy's ``_sa_shard_id``) execution option; ``bind_arguments["shard_id"]``.

        :raises ShardNotFoundError: when the shard named is unknown.
        """
        st = orm_execute_state
        opt = find_shard_id_option(st.statement)
        if opt is not None:
            return self._check(opt.shard_id, "set_shard_id()")
        opts = st.execution_options
        for key in _SHARD_OPTION_KEYS:
            sid = opts.get(key)
            if sid is not None:
                return self._check(sid, f"execution option {key}")
        sid = (st.bind_arguments or {}).get("shard_id")
        if sid is not None:
            return self._check(sid, 'bind_arguments["shard_id"]')
        return None

    def shards_for_execute(
        self, orm_execute_state: Any, compiled: CompiledStatement | None = None
    ) -> list[str]:
        """Return the shards a statement runs on, in pool order.

        Precedence, each level overriding the ones after it:

        1. a ``set_shard_id(...)`` option on the statement;
        2. ``execution_options(identity_token=...)``;
        3. ``execution_options(shard_id=...)`` (or ``_sa_shard_id``);
        4. ``bind_arguments["shard_id"]``;
        5. the ``execute_chooser`` (it must return at least one shard);
        6. the default router (:meth:`default_shards_for_execute`).

        :param orm_execute_state: the
            :class:`~shardsession.coordinator.execute_state.ORMExecuteState`.
        :param compiled: the statement compiled already, to avoid compiling it here.
        :raises ShardNotFoundError: for unknown shard ids, an empty chooser answer, or
            an INSERT whose rows cannot be routed.
        """
        sid = self.explicit_shard(orm_execute_state)
        if sid is not None:
            return [sid]
        if self.execute_chooser is not None:
            ids = self._check_many(self.execute_chooser(orm_execute_state), "execute_chooser")
            if not ids:
                raise ShardNotFoundError(
                    "execute_chooser returned no shard for the statement; return at least "
                    f"one of {', '.join(self.shard_ids)}"
                )
            return self._ordered(ids)
        return self.default_shards_for_execute(orm_execute_state, compiled)

    def default_shards_for_execute(
        self, orm_execute_state: Any, compiled: CompiledStatement | None = None
    ) -> list[str]:
        """Route a statement by its target's shard key when no choice was made for it.

        * a lazy load from an object goes to that object's shard (relationships never
          cross shards);
        * an INSERT goes to the shards its rows' shard key values hash to
          (:meth:`split_insert_rows`); ``INSERT ... FROM SELECT`` runs on every shard
          (each copies its own rows);
        * a SELECT / UPDATE / DELETE whose WHERE clause pins the shard key of an
          entity it involves with ``==`` or ``IN`` (AND-ed at the top level, values
          literal or parameters given at execution) goes to the shards those values
          hash to; when the pinned values are all NULL or the IN list is empty, no
          row can match and one shard answers;
        * anything else (including ``text()``) runs on every shard.
        """
        st = orm_execute_state
        lazy = getattr(st, "lazy_loaded_from", None)
        if lazy is not None and getattr(lazy, "identity_token", None) is not None:
            return [self._check(lazy.identity_token, "the identity token of the parent object")]
        stmt = st.statement
        visit = getattr(stmt, "__visit_name__", None)
        if visit not in ("select", "insert", "update", "delete"):
            return list(self.shard_ids)
        param_sets = _param_sets(st.parameters)
        if compiled is None:
            from shardsession.sql.compiler import compile_statement

            compiled = compile_statement(stmt, param_sets[0].keys() if param_sets[0] else None)
        if compiled.is_insert:
            return self._insert_shards(st, stmt, compiled, param_sets)
        return self._pinned_shards(st, compiled, param_sets)

    def _insert_shards(
        self, st: Any, stmt: Any, compiled: CompiledStatement, param_sets: list[Any]
    ) -> list[str]:
        if getattr(stmt, "_from_select", None) is not None:
            return list(self.shard_ids)
        mapper = st.bind_mapper
        table = compiled.table
        if mapper is None:
            raise ShardNotFoundError(
                f"cannot route an INSERT into table {table!r}: no mapped class targets it; "
                "pass bind_arguments={'shard_id': ...} or execution_options(shard_id=...)"
            )
        rows: list[dict[str, Any]] = []
        for p in param_sets:
            rows.extend(compiled.insert_rows(p))
        return list(self.split_insert_rows(mapper, rows))

    def _pinned_shards(
        self, st: Any, compiled: CompiledStatement, param_sets: list[Any]
    ) -> list[str]:
        candidates = []
        for m in [st.bind_mapper, *st.all_mappers]:
            if m is not None and m.shard_key is not None and m not in candidates:
                candidates.append(m)
        filters = [compiled.equality_filters_for(p, qualified=True) for p in param_sets]
        pinned: list[set[str]] = []
        for m in candidates:
            column = m.shard_key_column
            qkey = (m.local_table.fullname, column.key)
            values: list[Any] = []
            for f in filters:
                vals = f.get(qkey)
                if vals is None or any(isinstance(v, ParamRef) for v in vals):
                    values = []
                    break
                values.extend(vals)
            else:
                pinned.append({self.shard_for_value(v, column) for v in values if v is not None})
        if not pinned:
            return list(self.shard_ids)
        common = set.intersection(*pinned)
        # An empty answer means no row can match: one shard says so cheaply and
        # aggregates (count = 0, sum = NULL) stay right.
        chosen = common or pinned[0] or {self.shard_ids[0]}
        return self._ordered(chosen)

    def split_insert_rows(
        self, mapper: Any, rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Group the rows of a multi-row INSERT by the shard each belongs to.

        Each row is routed by its shard key value, looked up under the shard key
        attribute name, then the column key.  A model without ``__shard_key__`` sends
        every row where ``shard_chooser(mapper, None)`` says (SQLAlchemy calls it the
        same way for rows that are not objects).

        :param mapper: the mapper of the class inserted into.
        :param rows: the rows, as dicts of attribute / column key to value.
        :return: shard id → its rows (new dicts), shards in pool order, rows in input
            order.
        :raises ShardNotFoundError: when a row has no shard key value (or only a
            parameter not given), or the model cannot be routed at all.
        """
        cls = _class_name(mapper)
        out: dict[str, list[dict[str, Any]]] = {}
        key = getattr(mapper, "shard_key", None)
        if key is None:
            if self.shard_chooser is None:
                raise ShardNotFoundError(
                    f"cannot route rows inserted into {cls}: it declares no __shard_key__ "
                    "and the session has no shard_chooser; add __shard_key__ to the class "
                    "or pass bind_arguments={'shard_id': ...}"
                )
            sid = self._check(self.shard_chooser(mapper, None), f"shard_chooser for {cls}")
            return {sid: [dict(r) for r in rows]} if rows else {}
        column = mapper.shard_key_column
        for i, row in enumerate(rows):
            value = row.get(key)
            if value is None and column.key != key:
                value = row.get(column.key)
            if value is None or isinstance(value, ParamRef):
                raise ShardNotFoundError(
                    f"cannot route row {i} inserted into {cls}: it has no value for the "
                    f"shard key {cls}.{key}; include {key!r} in every row"
                )
            out.setdefault(self.shard_for_value(value, column), []).append(dict(row))
        return {sid: out[sid] for sid in self.shard_ids if sid in out}


def _param_sets(parameters: Any) -> list[Any]:
    if parameters is None:
        return [None]
    if isinstance(parameters, Mapping):
        return [parameters]
    sets = list(parameters)
    return sets or [None]
