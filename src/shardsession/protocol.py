"""The wire protocol between the coordinator and the worker processes.

Messages are plain frozen dataclasses pickled with the standard :mod:`pickle`
(protocol 5) and sent over a ``multiprocess`` connection with
``send_bytes``/``recv_bytes``.  Large ``bytes`` payloads travel out of band
(:class:`pickle.PickleBuffer`), so they are not copied into the pickle stream.

Every request gets exactly one reply: :class:`Ok` with a value, or :class:`Failure`
carrying the PostgreSQL SQLSTATE, the message, the shard and the name of the
:mod:`shardsession.exc` class the coordinator raises (:meth:`Failure.to_exception`).

This module is the only place the two sides share: the coordinator never
imports worker internals and the reverse.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Literal, Protocol

from shardsession import exc

__all__ = [
    "Begin",
    "CloseCursor",
    "Commit",
    "CommitPrepared",
    "CopyRows",
    "Execute",
    "ExecuteMany",
    "Failure",
    "FetchMore",
    "FlushBatch",
    "IdentityClear",
    "IdentityExpire",
    "IdentityGet",
    "IdentitySpec",
    "Ok",
    "Ping",
    "Prepare",
    "RecoverScan",
    "ReleaseSavepoint",
    "Reply",
    "Request",
    "Rollback",
    "RollbackPrepared",
    "RollbackToSavepoint",
    "Rows",
    "Savepoint",
    "Shutdown",
    "Statement",
    "decode",
    "encode",
    "gather",
    "recv_message",
    "send_message",
]

Params = dict[str, Any] | Sequence[Any] | None


# -- requests --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    """Tells a worker how to key the rows of a result in its identity map.

    :ivar table: the mapped table the rows belong to.
    :ivar pk: positions of the primary-key columns in each row.
    """

    table: str
    pk: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Execute:
    """Run one statement.

    :ivar sql: PostgreSQL text with psycopg placeholders.
    :ivar params: its parameters.
    :ivar fetch: ``"all"`` returns every row; ``"none"`` only the rowcount;
        ``"stream"`` opens a server-side cursor and returns the first ``chunk`` rows
        (then :class:`FetchMore`).
    :ivar identity: when given, rows are keyed in the shard-side identity map and
        rows the coordinator already holds unchanged come back as keys only.
    """

    sql: str
    params: Params = None
    fetch: Literal["all", "none", "stream"] = "all"
    chunk: int = 1000
    identity: IdentitySpec | None = None


@dataclass(frozen=True, slots=True)
class ExecuteMany:
    """Run one statement once per parameter set (pipelined); optionally collect RETURNING rows."""

    sql: str
    params: Sequence[Params]
    returning: bool = False
    #: when set, a different total row count fails the request with ``stale_message``
    #: (``{rowcount}`` is replaced), before anything after it in the batch runs
    expect_rowcount: int | None = None
    stale_message: str = ""


@dataclass(frozen=True, slots=True)
class CopyRows:
    """Load rows with ``COPY table (columns) FROM STDIN``."""

    table: str
    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]
    schema: str | None = None
    #: the compiled ``"table" ("col", ...)`` target (identifiers already quoted by
    #: the compiler); used instead of ``table``/``columns``/``schema`` when given
    target_sql: str | None = None


Statement = Execute | ExecuteMany | CopyRows


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """Several statements in order, in one round trip; stops at the first error.

    The reply's value is a list with one entry per statement (a :class:`Rows`,
    or a list of them for an :class:`ExecuteMany` with ``returning``).
    """

    statements: tuple[Statement, ...]
    #: commit the transaction after the last statement (saves a round trip when a
    #: single shard wrote and the session is committing)
    commit: Commit | None = None
    #: PREPARE TRANSACTION after the last statement (the first phase of a two-phase
    #: commit, in the same round trip as the commit's final flush)
    prepare: Prepare | None = None


@dataclass(frozen=True, slots=True)
class FetchMore:
    """Fetch up to ``size`` more rows from a streaming result."""

    cursor: int
    size: int = 1000


@dataclass(frozen=True, slots=True)
class CloseCursor:
    """Close a streaming result before it is exhausted."""

    cursor: int


@dataclass(frozen=True, slots=True)
class Begin:
    """Start a transaction (a worker also begins implicitly on the first statement)."""

    isolation_level: str | None = None
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class Savepoint:
    """``SAVEPOINT name``."""

    name: str


@dataclass(frozen=True, slots=True)
class ReleaseSavepoint:
    """``RELEASE SAVEPOINT name``."""

    name: str


@dataclass(frozen=True, slots=True)
class RollbackToSavepoint:
    """``ROLLBACK TO SAVEPOINT name``."""

    name: str


@dataclass(frozen=True, slots=True)
class Prepare:
    """``PREPARE TRANSACTION gid`` (first phase of a two-phase commit)."""

    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared:
    """``COMMIT PREPARED gid``."""

    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    """``ROLLBACK PREPARED gid``."""

    gid: str


@dataclass(frozen=True, slots=True)
class Commit:
    """``COMMIT``; ``expire`` drops the shard-side identity map afterwards."""

    expire: bool = True


@dataclass(frozen=True, slots=True)
class Rollback:
    """``ROLLBACK`` (a no-op outside a transaction); clears the identity map."""


@dataclass(frozen=True, slots=True)
class RecoverScan:
    """List the prepared transactions of this shard's database whose gid starts with ``prefix``."""

    prefix: str = ""


@dataclass(frozen=True, slots=True)
class IdentityGet:
    """Rows of ``table`` held in the shard-side identity map, by primary key.

    The reply's value maps each key found to its row; keys not held are absent.
    """

    table: str
    keys: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class IdentityExpire:
    """Forget rows (all of ``table`` when ``keys`` is None) so they are sent in full again."""

    table: str
    keys: tuple[tuple[Any, ...], ...] | None = None


@dataclass(frozen=True, slots=True)
class IdentityClear:
    """Forget every row of the shard-side identity map."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Check the worker and its connection; the reply is the worker's status dict."""

    check_connection: bool = False


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Close the connection (rolling back any transaction) and exit."""


Request = (
    Execute
    | ExecuteMany
    | CopyRows
    | FlushBatch
    | FetchMore
    | CloseCursor
    | Begin
    | Savepoint
    | ReleaseSavepoint
    | RollbackToSavepoint
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | Commit
    | Rollback
    | RecoverScan
    | IdentityGet
    | IdentityExpire
    | IdentityClear
    | Ping
    | Shutdown
)


# -- replies -----------------------------------------------------------------


@dataclass(slots=True)
class Rows:
    """A statement's result in compact form.

    :ivar columns: result column names (empty for statements without rows).
    :ivar rows: row tuples; with an :class:`IdentitySpec`, ``None`` stands for a
        row the coordinator was sent before in this transaction and that has not
        changed since (its key is in ``keys``).
    :ivar keys: primary keys of the rows, when an identity spec was given.
    :ivar rowcount: rows matched by an UPDATE/DELETE (or returned by a SELECT).
    :ivar cursor: id of the open streaming cursor when more rows remain.
    """

    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...] | None] = field(default_factory=list)
    keys: list[tuple[Any, ...]] | None = None
    rowcount: int = -1
    cursor: int | None = None


@dataclass(frozen=True, slots=True)
class Ok:
    """A request succeeded; ``value`` is its result."""

    value: Any = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A request failed.

    :ivar kind: name of the :mod:`shardsession.exc` class to raise.
    :ivar message: what went wrong, naming the shard.
    :ivar sqlstate: PostgreSQL's SQLSTATE, when the error came from the server.
    :ivar in_transaction: whether the worker still holds an (aborted) transaction.
    """

    kind: str
    message: str
    shard: str | None = None
    sqlstate: str | None = None
    statement: str | None = None
    in_transaction: bool = False

    def to_exception(self) -> exc.ShardSessionError:
        """Build the exception the coordinator raises for this failure."""
        cls = getattr(exc, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, exc.ShardSessionError)):
            cls = exc.DBAPIError
        if issubclass(cls, exc.DBAPIError):
            return cls(
                self.message, sqlstate=self.sqlstate, shard=self.shard, statement=self.statement
            )
        return cls(self.message)


Reply = Ok | Failure


def _pickle_by_fields(cls: type) -> None:
    """Pickle ``cls`` as its constructor and field values.

    The default for slotted dataclasses looks its fields up on every pickle,
    which was a third of a small request's cost.
    """
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
    IdentitySpec, Execute, ExecuteMany, CopyRows, FlushBatch, FetchMore, CloseCursor,
    Begin, Savepoint, ReleaseSavepoint, RollbackToSavepoint, Prepare, CommitPrepared,
    RollbackPrepared, Commit, Rollback, RecoverScan, IdentityGet, IdentityExpire,
    IdentityClear, Ping, Shutdown, Rows, Ok, Failure,
):  # fmt: skip
    _pickle_by_fields(_message)


# -- framing -----------------------------------------------------------------

_HEADER = struct.Struct("!I")
OUT_OF_BAND_MIN = 64 * 1024  # bytes payloads at least this large travel out of band


class _Connection(Protocol):
    def send_bytes(self, buf: Any) -> None: ...
    def recv_bytes(self) -> bytes: ...


def encode(message: object) -> list[bytes | memoryview]:
    """Pickle ``message`` into frames: a header with the pickle, then out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    frames: list[bytes | memoryview] = [_HEADER.pack(len(buffers)) + payload]
    frames.extend(buf.raw() for buf in buffers)
    return frames


def decode(frames: Sequence[bytes]) -> Any:
    """Inverse of :func:`encode`."""
    (count,) = _HEADER.unpack_from(frames[0])
    return pickle.loads(memoryview(frames[0])[_HEADER.size :], buffers=frames[1 : 1 + count])


def send_message(conn: _Connection, message: object) -> None:
    """Send ``message`` over a ``multiprocess`` connection."""
    for frame in encode(message):
        conn.send_bytes(frame)


def recv_message(conn: _Connection) -> Any:
    """Receive one message sent with :func:`send_message` (blocks)."""
    head = conn.recv_bytes()
    (count,) = _HEADER.unpack_from(head)
    frames = [head] + [conn.recv_bytes() for _ in range(count)]
    return decode(frames)


def large_bytes(value: bytes) -> bytes | pickle.PickleBuffer:
    """Wrap a big ``bytes`` value so that it is sent out of band."""
    return pickle.PickleBuffer(value) if len(value) >= OUT_OF_BAND_MIN else value


def gather(calls: Sequence[tuple[Any, Request]]) -> list[Any]:
    """Send every request first, then collect the replies in order.

    ``calls`` pairs a worker handle (anything with ``send``, ``recv`` and
    ``drain``) with its request: a statement for several shards goes to all of
    them before any reply is awaited.

    If any reply is an error, every other reply is still read (so no worker is
    left with an unread reply) and the first error is raised.
    """
    sent: list[Any] = []
    try:
        for handle, request in calls:
            handle.send(request)
            sent.append(handle)
    except Exception:
        for handle in sent:
            handle.drain()
        raise
    results: list[Any] = []
    first_error: BaseException | None = None
    for handle, _ in calls:
        try:
            results.append(handle.recv())
        except Exception as err:
            results.append(err)
            if first_error is None:
                first_error = err
    if first_error is not None:
        raise first_error
    return results
