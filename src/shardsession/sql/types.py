"""Column types: what a column is in PostgreSQL and how its values cross psycopg.

Every type is a :class:`TypeEngine`.  A type can be given wherever a type is
expected either as a class (``Integer``) or as an instance (``String(30)``);
:func:`to_type` turns either into an instance.

A type knows three things:

* :meth:`TypeEngine.ddl` -- its PostgreSQL spelling in ``CREATE TABLE``;
* :attr:`TypeEngine.python_type` -- the Python type its values have;
* how a Python value is handed to psycopg (:meth:`TypeEngine.bind_processor_tag`)
  and how a fetched value is turned back (:meth:`TypeEngine.result_processor`).
  Bind conversion is named by a short string tag so that a compiled statement
  stays a plain, picklable value; :func:`process_bind` applies a tag.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from psycopg.types.json import Json, Jsonb

from shardsession.exc import ArgumentError

__all__ = [
    "JSON",
    "JSONB",
    "BigInteger",
    "Boolean",
    "Date",
    "DateTime",
    "Enum",
    "Float",
    "Integer",
    "Interval",
    "LargeBinary",
    "NullType",
    "Numeric",
    "SmallInteger",
    "String",
    "Text",
    "Time",
    "TypeEngine",
    "Uuid",
    "process_bind",
    "to_type",
    "type_for_python",
]


class TypeEngine:
    """Base class of every column type.

    Subclasses set :attr:`python_type` and implement :meth:`ddl`.  Instances are
    immutable value objects: two types with the same class and arguments are
    interchangeable, which :meth:`type_key` expresses for the statement cache.
    """

    python_type: type = object
    #: True for the integer types that can back an identity (auto-increment) column.
    is_integer: bool = False

    def ddl(self) -> str:
        """Return the PostgreSQL type name used in ``CREATE TABLE``.

        :raises CompileError: for :class:`NullType`, which has no spelling.
        """
        raise NotImplementedError

    def type_key(self) -> tuple[Any, ...]:
        """Return a hashable value identifying this type for the statement cache."""
        return (type(self).__name__,)

    def bind_processor_tag(self) -> str | None:
        """Return the tag of the conversion applied to Python values before binding.

        ``None`` means the value is passed to psycopg unchanged.  See
        :func:`process_bind` for the tags.
        """
        return None

    def result_processor(self) -> Callable[[Any], Any] | None:
        """Return a function turning a fetched value into the Python value, or ``None``."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypeEngine) and self.type_key() == other.type_key()

    def __hash__(self) -> int:
        return hash(self.type_key())


class NullType(TypeEngine):
    """The type of an expression whose type is not known (e.g. a bare ``None``)."""

    def ddl(self) -> str:
        """Raise: an unknown type cannot appear in DDL."""
        from shardsession.exc import CompileError

        raise CompileError("a column without a type cannot be created; give it a type")


class Integer(TypeEngine):
    """``INTEGER``: a 32-bit signed integer."""

    python_type = int
    is_integer = True

    def ddl(self) -> str:
        """Return ``INTEGER``."""
        return "INTEGER"


class BigInteger(Integer):
    """``BIGINT``: a 64-bit signed integer."""

    def ddl(self) -> str:
        """Return ``BIGINT``."""
        return "BIGINT"


class SmallInteger(Integer):
    """``SMALLINT``: a 16-bit signed integer."""

    def ddl(self) -> str:
        """Return ``SMALLINT``."""
        return "SMALLINT"


class String(TypeEngine):
    """``VARCHAR(length)``, or ``VARCHAR`` without a limit when *length* is None.

    :param length: the maximum number of characters, or None for no limit.
    """

    python_type = str

    def __init__(self, length: int | None = None) -> None:
        if length is not None and (not isinstance(length, int) or length <= 0):
            raise ArgumentError(f"String length must be a positive int, got {length!r}")
        self.length = length

    def ddl(self) -> str:
        """Return ``VARCHAR(n)`` or ``VARCHAR``."""
        return f"VARCHAR({self.length})" if self.length else "VARCHAR"

    def type_key(self) -> tuple[Any, ...]:
        """Include the length in the cache identity."""
        return (type(self).__name__, self.length)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.length!r})" if self.length else super().__repr__()


class Text(String):
    """``TEXT``: a string of any length."""

    def __init__(self) -> None:
        super().__init__(None)

    def ddl(self) -> str:
        """Return ``TEXT``."""
        return "TEXT"


class Boolean(TypeEngine):
    """``BOOLEAN``."""

    python_type = bool

    def ddl(self) -> str:
        """Return ``BOOLEAN``."""
        return "BOOLEAN"


class Float(TypeEngine):
    """``DOUBLE PRECISION``: an 8-byte binary floating point number."""

    python_type = float

    def ddl(self) -> str:
        """Return ``DOUBLE PRECISION``."""
        return "DOUBLE PRECISION"


class Numeric(TypeEngine):
    """``NUMERIC(precision, scale)``: an exact decimal, fetched as :class:`decimal.Decimal`.

    :param precision: total number of digits, or None for PostgreSQL's unbounded numeric.
    :param scale: digits after the decimal point (needs *precision*).
    """

    python_type = decimal.Decimal

    def __init__(self, precision: int | None = None, scale: int | None = None) -> None:
        if scale is not None and precision is None:
            raise ArgumentError("Numeric(scale=...) needs a precision as well")
        self.precision = precision
        self.scale = scale

    def ddl(self) -> str:
        """Return ``NUMERIC``, ``NUMERIC(p)`` or ``NUMERIC(p, s)``."""
        if self.precision is None:
            return "NUMERIC"
        if self.scale is None:
            return f"NUMERIC({self.precision})"
        return f"NUMERIC({self.precision}, {self.scale})"

    def type_key(self) -> tuple[Any, ...]:
        """Include precision and scale in the cache identity."""
        return (type(self).__name__, self.precision, self.scale)


class DateTime(TypeEngine):
    """``TIMESTAMP`` or, with *timezone*, ``TIMESTAMP WITH TIME ZONE``.

    :param timezone: store an absolute instant (``timestamptz``) instead of a wall time.
    """

    python_type = datetime.datetime

    def __init__(self, timezone: bool = False) -> None:
        self.timezone = bool(timezone)

    def ddl(self) -> str:
        """Return ``TIMESTAMP WITHOUT TIME ZONE`` or ``TIMESTAMP WITH TIME ZONE``."""
        return "TIMESTAMP WITH TIME ZONE" if self.timezone else "TIMESTAMP WITHOUT TIME ZONE"

    def type_key(self) -> tuple[Any, ...]:
        """Include the time zone flag in the cache identity."""
        return (type(self).__name__, self.timezone)


class Date(TypeEngine):
    """``DATE``."""

    python_type = datetime.date

    def ddl(self) -> str:
        """Return ``DATE``."""
        return "DATE"


class Time(TypeEngine):
    """``TIME WITHOUT TIME ZONE``."""

    python_type = datetime.time

    def ddl(self) -> str:
        """Return ``TIME WITHOUT TIME ZONE``."""
        return "TIME WITHOUT TIME ZONE"


class Interval(TypeEngine):
    """``INTERVAL``, fetched as :class:`datetime.timedelta`."""

    python_type = datetime.timedelta

    def ddl(self) -> str:
        """Return ``INTERVAL``."""
        return "INTERVAL"


class Uuid(TypeEngine):
    """``UUID``, fetched as :class:`uuid.UUID`."""

    python_type = uuid.UUID

    def ddl(self) -> str:
        """Return ``UUID``."""
        return "UUID"


class JSON(TypeEngine):
    """``JSON``: any JSON-serialisable value; bound through :class:`psycopg.types.json.Json`.

    ``None`` is stored as SQL NULL, not as the JSON ``null``.
    """

    python_type = dict

    def ddl(self) -> str:
        """Return ``JSON``."""
        return "JSON"

    def bind_processor_tag(self) -> str | None:
        """Return ``"json"``."""
        return "json"


class JSONB(JSON):
    """``JSONB``: binary JSON; bound through :class:`psycopg.types.json.Jsonb`."""

    def ddl(self) -> str:
        """Return ``JSONB``."""
        return "JSONB"

    def bind_processor_tag(self) -> str | None:
        """Return ``"jsonb"``."""
        return "jsonb"


class LargeBinary(TypeEngine):
    """``BYTEA``: a byte string, fetched as :class:`bytes`."""

    python_type = bytes

    def ddl(self) -> str:
        """Return ``BYTEA``."""
        return "BYTEA"

    def result_processor(self) -> Callable[[Any], Any] | None:
        """Turn the ``memoryview`` psycopg may return into :class:`bytes`."""
        return _to_bytes


def _to_bytes(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


class Enum(String):
    """A string column restricted to a fixed set of values.

    Stored as ``VARCHAR(n)`` (n = the longest value) with a ``CHECK (col IN (...))``
    constraint added by the DDL, not as a native PostgreSQL enum type: a native type
    would have to be created and dropped on every shard in step with the tables.

    Give either the allowed strings (``Enum("new", "done")``) or one
    :class:`enum.Enum` subclass (``Enum(Status)``).  With an enum class, the member
    *names* are stored (as SQLAlchemy does), members are accepted on bind and fetched
    values are turned back into members.

    :param name: an optional name for the CHECK constraint.
    """

    def __init__(self, *values: Any, name: str | None = None) -> None:
        self.enum_class: type[enum.Enum] | None = None
        if len(values) == 1 and isinstance(values[0], type) and issubclass(values[0], enum.Enum):
            self.enum_class = values[0]
            strings = tuple(m.name for m in self.enum_class)
            self.python_type = self.enum_class  # type: ignore[misc]
        else:
            if not values or not all(isinstance(v, str) for v in values):
                raise ArgumentError(
                    f"Enum() takes one enum.Enum subclass or one or more strings, got {values!r}"
                )
            strings = tuple(values)
        self.enums: tuple[str, ...] = strings
        self.name = name
        super().__init__(max(len(s) for s in strings))

    def type_key(self) -> tuple[Any, ...]:
        """Include the allowed values and the enum class in the cache identity."""
        return ("Enum", self.enums, id(self.enum_class) if self.enum_class else None)

    def bind_processor_tag(self) -> str | None:
        """Return ``"enum"``: members are bound as their names."""
        return "enum"

    def result_processor(self) -> Callable[[Any], Any] | None:
        """Return a function mapping stored names back to members (enum classes only)."""
        cls = self.enum_class
        if cls is None:
            return None

        def process(value: Any) -> Any:
            return None if value is None else cls[value]

        return process

    def __repr__(self) -> str:
        if self.enum_class is not None:
            return f"Enum({self.enum_class.__name__})"
        return "Enum({})".format(", ".join(map(repr, self.enums)))


def process_bind(tag: str | None, value: Any) -> Any:
    """Convert *value* for psycopg according to a bind processor *tag*.

    Tags: ``None`` (unchanged), ``"json"`` / ``"jsonb"`` (wrap in
    :class:`~psycopg.types.json.Json` / :class:`~psycopg.types.json.Jsonb`, keeping
    ``None`` as SQL NULL), ``"enum"`` (an :class:`enum.Enum` member becomes its name).
    Lists and tuples (the operand of ``IN``) are converted element by element.
    """
    if tag is None or value is None:
        return value
    if tag == "enum":
        if isinstance(value, enum.Enum):
            return value.name
        if isinstance(value, list | tuple):
            return [v.name if isinstance(v, enum.Enum) else v for v in value]
        return value
    if tag == "json":
        return value if isinstance(value, Json) else Json(value)
    if tag == "jsonb":
        return value if isinstance(value, Jsonb) else Jsonb(value)
    raise ArgumentError(f"unknown bind processor tag {tag!r}")


_BY_PYTHON: dict[type, type[TypeEngine]] = {
    bool: Boolean,
    int: Integer,
    float: Float,
    str: String,
    decimal.Decimal: Numeric,
    datetime.datetime: DateTime,
    datetime.date: Date,
    datetime.time: Time,
    datetime.timedelta: Interval,
    uuid.UUID: Uuid,
    bytes: LargeBinary,
    bytearray: LargeBinary,
    dict: JSON,
    list: JSON,
}


def type_for_python(py_type: Any) -> TypeEngine:
    """Return the column type used for Python type *py_type* (as in ``Mapped[int]``).

    ``int`` → :class:`Integer`, ``str`` → :class:`String`, ``bool`` → :class:`Boolean`,
    ``float`` → :class:`Float`, ``Decimal`` → :class:`Numeric`, ``datetime`` →
    :class:`DateTime`, ``date`` → :class:`Date`, ``time`` → :class:`Time`,
    ``timedelta`` → :class:`Interval`, ``UUID`` → :class:`Uuid`, ``bytes`` →
    :class:`LargeBinary`, ``dict`` / ``list`` → :class:`JSON`, an :class:`enum.Enum`
    subclass → :class:`Enum` of it.

    :raises ArgumentError: for any other type.
    """
    if isinstance(py_type, type):
        if issubclass(py_type, enum.Enum):
            return Enum(py_type)
        # Walk the MRO so that subclasses (e.g. a str subclass) map like their base;
        # bool precedes int in _BY_PYTHON lookups because bool's MRO starts with bool.
        for base in py_type.__mro__:
            found = _BY_PYTHON.get(base)
            if found is not None:
                return found()
    origin = getattr(py_type, "__origin__", None)
    if origin in (dict, list):
        return JSON()
    raise ArgumentError(
        f"no column type is known for Python type {py_type!r}; give the type explicitly"
    )


def to_type(type_: Any) -> TypeEngine:
    """Return a :class:`TypeEngine` instance for a type class or instance (None → NullType).

    :raises ArgumentError: if *type_* is neither.
    """
    if type_ is None:
        return NullType()
    if isinstance(type_, TypeEngine):
        return type_
    if isinstance(type_, type) and issubclass(type_, TypeEngine):
        return type_()
    raise ArgumentError(f"expected a column type (e.g. Integer or String(30)), got {type_!r}")


def infer_literal_type(value: Any) -> TypeEngine:
    """Return the type of a Python literal, or :class:`NullType` when it has no obvious one."""
    if value is None:
        return NullType()
    if isinstance(value, enum.Enum):
        return Enum(type(value))
    try:
        return type_for_python(type(value))
    except ArgumentError:
        return NullType()


def coerce_types(types: Iterable[TypeEngine]) -> TypeEngine:
    """Return the first known type among *types* (NullType if none is known)."""
    for t in types:
        if not isinstance(t, NullType):
            return t
    return NullType()
