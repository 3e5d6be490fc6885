"""The wire protocol between the application and its worker processes.

A worker is a DBAPI connection living in another process: the application side
(:mod:`shardsession.coordinator.dbapi`) sends one request message at a time and
reads exactly one reply per request, in order, so several requests (and several
workers) can be in flight before any reply is read.

Messages are small frozen dataclasses pickled with protocol 5 over a
``multiprocess`` pipe.  Every reply carries the worker connection's transaction
status and whether the open transaction wrote anything, so the application
knows without asking whether a rollback or a two-phase PREPARE is needed.

A failed request is answered by :class:`Failure` holding psycopg's own exception
(psycopg errors pickle with their SQLSTATE and diagnostics), so SQLAlchemy wraps
it exactly as it wraps psycopg's.  This module is the only one both sides import.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Protocol

__all__ = [
    "STATUS_WROTE",
    "Close",
    "Commit",
    "Copy",
    "Decide",
    "Execute",
    "ExecuteMany",
    "Failure",
    "Fetch",
    "FinishPrepared",
    "Ok",
    "Ping",
    "Prepare",
    "Request",
    "Result",
    "Rollback",
    "SetOption",
    "Shutdown",
    "recv_message",
    "send_message",
]

#: bit set in a reply's ``status`` when the open transaction has written
STATUS_WROTE = 0x10
#: mask of a reply's ``status`` that is psycopg's ``TransactionStatus``
STATUS_TX = 0x0F


# -- requests ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Execute:
    """Run one statement.

    :ivar sql: the statement, with psycopg placeholders.
    :ivar params: its parameters (a mapping, a sequence or None).
    :ivar cursor: the name of a server-side cursor to open for it (streaming), or
        None to run it and return every row.
    :ivar prepare: psycopg's ``prepare`` argument (None: its default policy).
    :ivar tag: the session transaction's tag, set as the backend's
        ``application_name`` if this statement begins a transaction
        (:mod:`shardsession.deadlock`).
    """

    sql: str
    params: Any = None
    cursor: str | None = None
    prepare: bool | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ExecuteMany:
    """Run one statement once per parameter set (psycopg pipelines them).

    :ivar returning: collect the rows every execution returns.
    :ivar tag: as for :class:`Execute`.
    """

    sql: str
    params: Sequence[Any]
    returning: bool = False
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """``COPY ... FROM STDIN`` with ``rows`` (``sql`` is the whole COPY statement).

    :ivar tag: as for :class:`Execute`.
    """

    sql: str
    rows: Sequence[Sequence[Any]]
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """Fetch up to ``size`` more rows of the server-side cursor ``cursor`` (-1: all)."""

    cursor: str
    size: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close the server-side cursor ``cursor``."""

    cursor: str


@dataclass(frozen=True, slots=True)
class Commit:
    """``COMMIT`` the open transaction (nothing when none is open)."""


@dataclass(frozen=True, slots=True)
class Rollback:
    """``ROLLBACK`` the open transaction (nothing when none is open)."""


@dataclass(frozen=True, slots=True)
class SetOption:
    """Set a psycopg connection attribute: ``autocommit``, ``isolation_level``,
    ``read_only`` or ``deferrable``."""

    name: str
    value: Any


@dataclass(frozen=True, slots=True)
class Prepare:
    """``PREPARE TRANSACTION gid``: the first phase of a two-phase commit."""

    gid: str


@dataclass(frozen=True, slots=True)
class Decide:
    """Record a two-phase commit's decision and commit, in one server round trip.

    ``sql``/``params`` insert the decision row; the transaction that holds the
    commit point's own writes then commits, and that commit is the decision.
    """

    sql: str
    params: Any


@dataclass(frozen=True, slots=True)
class FinishPrepared:
    """``COMMIT PREPARED gid`` (``commit``) or ``ROLLBACK PREPARED gid``.

    The reply's value is False when no such prepared transaction exists (it was
    settled already).
    """

    gid: str
    commit: bool


@dataclass(frozen=True, slots=True)
class Ping:
    """Check the worker; with ``check_connection`` also its PostgreSQL connection.

    The reply's value is a dict: ``pid``, ``backend_pid``, ``server_version``.
    """

    check_connection: bool = False


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Roll back, close the connection and exit."""


Request = (
    Execute
    | ExecuteMany
    | Copy
    | Fetch
    | Close
    | Commit
    | Rollback
    | SetOption
    | Prepare
    | Decide
    | FinishPrepared
    | Ping
    | Shutdown
)


# -- replies -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """What a statement returned.

    :ivar description: psycopg-style column descriptions ``(name, type_code, ...)``
        as 7-tuples, or None for a statement without rows.
    :ivar rows: the rows (every row, or the first chunk of a server-side cursor:
        then empty, rows come with :class:`Fetch`).
    :ivar rowcount: rows affected or returned, -1 when unknown.
    """

    description: tuple[tuple[Any, ...], ...] | None
    rows: list[tuple[Any, ...]]
    rowcount: int


@dataclass(frozen=True, slots=True)
class Ok:
    """A request succeeded: its ``value``, and the connection's ``status`` after it."""

    value: Any
    status: int


@dataclass(frozen=True, slots=True)
class Failure:
    """A request failed.

    :ivar error: the exception (psycopg's own classes for database errors).
    :ivar status: the connection's status after the failure.
    :ivar broken: the worker's connection is gone; the worker exits after replying.
    """

    error: BaseException
    status: int
    broken: bool = False


def _pickle_by_fields(cls: type) -> None:
    """Pickle ``cls`` as its constructor and field values: much cheaper than the
    default for slotted dataclasses, which looks the fields up on every call."""
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if not names:
        cls.__reduce__ = lambda self: (cls, ())  # type: ignore[method-assign]
        return
    get = attrgetter(*names)
    if len(names) == 1:
        cls.__reduce__ = lambda self: (cls, (get(self),))  # type: ignore[method-assign]
    else:
        cls.__reduce__ = lambda self: (cls, get(self))  # type: ignore[method-assign]


for _message in (
    Execute, ExecuteMany, Copy, Fetch, Close, Commit, Rollback, SetOption, Prepare, Decide,
    FinishPrepared, Ping, Shutdown, Result, Ok, Failure,
):  # fmt: skip
    _pickle_by_fields(_message)


class _Pipe(Protocol):
    def send_bytes(self, buf: Any) -> None: ...
    def recv_bytes(self) -> bytes: ...


_dumps = pickle.dumps
_loads = pickle.loads


def send_message(pipe: _Pipe, message: object) -> None:
    """Send one message over a ``multiprocess`` pipe."""
    pipe.send_bytes(_dumps(message, 5))


def recv_message(pipe: _Pipe) -> Any:
    """Receive one message sent with :func:`send_message` (blocks)."""
    return _loads(pipe.recv_bytes())
