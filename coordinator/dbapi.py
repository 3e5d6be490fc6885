"""A PEP 249 DBAPI module whose connections are worker processes.

``connect(**psycopg_kwargs)`` starts a worker process that opens the psycopg
connection, and returns a :class:`Connection` that behaves as psycopg's does for
SQLAlchemy: cursors with ``execute``/``executemany``/``fetch*``/``description``/
``rowcount``, named (server-side) cursors, ``autocommit``, ``isolation_level``,
``read_only``, ``deferrable``, ``info.transaction_status`` and the two-phase
``tpc_*`` methods.  Errors are psycopg's own exception classes, with the shard
named, so SQLAlchemy wraps them as it wraps psycopg's.

Beyond PEP 249, for the coordinator:

* :meth:`Connection.send` / :meth:`Connection.recv` are split, so a statement can
  be sent to every shard before any reply is read;
* :meth:`Connection.serve` hands the next matching ``cursor.execute`` a result
  computed elsewhere (merged rows of several shards), without a round trip;
* :data:`broadcast` lets the scatter layer see the exact SQL and parameters that
  SQLAlchemy produced, at the moment it executes them;
* every reply carries the transaction status and whether the transaction wrote.

A reply that is interrupted (``KeyboardInterrupt``, a signal handler raising) can
never be read as the answer to a later request: the worker is killed and the
connection reports itself broken, so SQLAlchemy's pool replaces it.
"""

from __future__ import annotations

import contextlib
import contextvars
import select
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    IsolationLevel,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
    adapters,
)
from psycopg.pq import TransactionStatus

from shardsession import protocol as p
from shardsession.process import start_worker

__all__ = [
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "IsolationLevel",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Warning",
    "adapters",
    "apilevel",
    "broadcast",
    "connect",
    "connect_arguments",
    "exchange",
    "paramstyle",
    "threadsafety",
]

__version__ = psycopg.__version__
apilevel = "2.0"
threadsafety = 1
paramstyle = "pyformat"

#: Set by the scatter layer around one statement: called as ``hook(connection, sql,
#: params)`` when a cursor executes; a :class:`~shardsession.protocol.Result` it
#: returns is used instead of a round trip.
broadcast: contextvars.ContextVar[Callable[[Connection, str, Any], p.Result | None] | None] = (
    contextvars.ContextVar("shardsession_broadcast", default=None)
)

_IDLE = int(TransactionStatus.IDLE)
_cursor_names = iter(range(1, 1 << 62))


def connect(*args: Any, **kwargs: Any) -> Connection:
    """Start a worker connected with psycopg's ``connect(conninfo, **kwargs)``.

    ``shardsession_shard`` (the shard's name, for messages) and
    ``shardsession_start_method`` are taken out of ``kwargs``; psycopg's
    ``context`` (an adapters map) stays in this process.
    """
    return Connection(*connect_arguments(args, kwargs))


def connect_arguments(args: Sequence[Any], kwargs: dict[str, Any]
                      ) -> tuple[str, dict[str, Any], str | None]:  # fmt: skip
    """``connect()``'s arguments as ``(shard, psycopg kwargs, start method)``."""
    kwargs.pop("context", None)
    shard = kwargs.pop("shardsession_shard", None) or kwargs.get("dbname") or "?"
    start_method = kwargs.pop("shardsession_start_method", None)
    conninfo = kwargs.pop("conninfo", "") or (args[0] if args else "")
    if conninfo:
        kwargs["conninfo"] = conninfo
    return str(shard), kwargs, start_method


#: seconds a new worker may take beyond psycopg's connect timeout: its process start,
#: its first query and its announcement
_START_GRACE = 5.0


def _announcement_timeout(kwargs: dict[str, Any]) -> float:
    """Seconds to wait for a new worker's announcement: psycopg's connect timeout
    (130 s when none is set) for each host it may try, plus :data:`_START_GRACE`."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(kwargs.get("conninfo") or "")
    except psycopg.Error:
        params = {}  # the worker reports the malformed DSN itself
    params.update({k: kwargs[k] for k in ("host", "hostaddr", "connect_timeout") if k in kwargs})
    try:
        per_host = float(psycopg.conninfo.timeout_from_conninfo(params))
    except (AttributeError, psycopg.Error):  # psycopg < 3.2, or a value the worker rejects
        per_host = 130.0
    hosts = str(params.get("host") or params.get("hostaddr") or "").count(",") + 1
    return per_host * hosts + _START_GRACE


def exchange(calls: Sequence[tuple[Connection, p.Request]]) -> list[Any]:
    """Send every request, then read every reply: one value or exception per call.

    Everything is sent before anything is read, so the workers run in parallel;
    every reply owed is read even when some fail, so no connection is left with
    a reply nobody will read.  Never raises: failures are returned in place.
    """
    sent: list[bool] = []
    outcomes: list[Any] = []
    for conn, request in calls:
        try:
            conn.send(request)
        except Exception as err:
            sent.append(False)
            outcomes.append(err)
        else:
            sent.append(True)
            outcomes.append(None)
    for i, (conn, _) in enumerate(calls):
        if sent[i]:
            try:
                outcomes[i] = conn.recv()
            except Exception as err:
                outcomes[i] = err
    return outcomes


class _Info:
    """The part of psycopg's ``ConnectionInfo`` that SQLAlchemy reads."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def transaction_status(self) -> TransactionStatus:
        """The transaction status as of the last reply."""
        if self._conn.closed:
            return TransactionStatus.UNKNOWN
        return TransactionStatus(self._conn.status & p.STATUS_TX)

    @property
    def server_version(self) -> int:
        """The server's version number (e.g. 150004)."""
        return int(self._conn.worker_info.get("server_version", 0))

    @property
    def backend_pid(self) -> int:
        """The PostgreSQL backend process serving the worker."""
        return int(self._conn.worker_info.get("backend_pid", 0))


class Connection:
    """A DBAPI connection served by one worker process.

    :ivar shard: the shard's name.
    :ivar pid: the worker's process id.
    :ivar status: the last reply's status (transaction status and the
        :data:`~shardsession.protocol.STATUS_WROTE` bit).
    :ivar tpc: the two-phase participant hooks of the session's commit
        coordinator, while the connection takes part in a two-phase commit.
    :ivar tag: the tag of the session transaction using the connection; the
        worker sets it as its backend's ``application_name`` when it begins the
        transaction, so the deadlock detector can see waits across shards.
        Cleared when the transaction ends.
    :ivar owner: a weak reference to the sharded Session whose transaction holds
        the connection (writes to reference tables reach every shard of it, see
        :func:`shardsession.coordinator.reference.replicate`), or None.  Cleared
        when the transaction ends.
    """

    tag: str | None = None
    owner: Any = None

    def __init__(self, shard: str, kwargs: dict[str, Any], start_method: str | None) -> None:
        self.shard = shard
        self.closed = False
        self.broken = False
        self.status = _IDLE
        self.tpc: Any = None
        self._inflight = 0  # replies owed by the worker, read in order
        self._unread = 0  # of those, replies nobody waits for (dropped when read)
        self._served: deque[tuple[str, Any, p.Result]] = deque()
        self._autocommit = False
        self._isolation_level: Any = None
        self._read_only: bool | None = None
        self._deferrable: bool | None = None
        self._xid: Any = None
        self._prepared = False
        self._process, self._pipe = start_worker(shard, kwargs, start_method)
        self.pid: int = self._process.pid
        self._inflight = 1  # the worker announces itself once connected
        try:
            self._await_announcement(_announcement_timeout(kwargs))
            self.worker_info: dict[str, Any] = self.recv()
        except BaseException:
            self._kill()
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<shardsession worker connection shard={self.shard!r} pid={self.pid} {state}>"

    def _await_announcement(self, timeout: float) -> None:
        # psycopg's connect_timeout does not cover everything a new worker may wait
        # for (a host name lookup, the first query on a server that accepted the
        # connection and then stalls): the application never waits past ``timeout``.
        if not self._pipe.poll(timeout):
            raise psycopg.errors.ConnectionTimeout(
                f"[shard {self.shard!r}] the worker (pid {self.pid}) did not connect to "
                f"PostgreSQL within {timeout:g} s: the server (or the lookup of its host name) "
                "does not answer. Check that it is running and reachable, or raise "
                "connect_timeout."
            )

    # -- transport -------------------------------------------------------------------

    def _lost(self, doing: str) -> OperationalError:
        self._kill()
        code = self._process.exitcode
        how = "it lost its connection to PostgreSQL" if code == 4 else f"exit code {code}"
        return OperationalError(
            f"[shard {self.shard!r}] the worker process (pid {self.pid}) died while {doing} "
            f"({how}); the transaction it held on this shard is gone, committed data is "
            "intact. Roll back and retry the transaction."
        )

    def _kill(self) -> None:
        self.closed = self.broken = True
        self._inflight = self._unread = 0
        self._served.clear()
        with contextlib.suppress(Exception):
            self._pipe.close()
        if self._process.is_alive():
            self._process.kill()
        with contextlib.suppress(Exception):
            self._process.join(1.0)

    def send(self, request: p.Request) -> None:
        """Send one request without waiting for its reply."""
        if self.closed:
            raise OperationalError(
                f"[shard {self.shard!r}] this worker connection is closed"
                + (" (its worker was discarded)" if self.broken else "")
            )
        try:
            p.send_message(self._pipe, request)
        except (OSError, EOFError, ValueError):
            raise self._lost(f"receiving {type(request).__name__}") from None
        self._inflight += 1

    def send_and_forget(self, request: p.Request) -> None:
        """Send a request whose reply nobody waits for; the next :meth:`recv` drops it."""
        self.send(request)
        self._unread += 1

    def recv(self) -> Any:
        """Read the reply to the oldest request sent; return its value or raise its error.

        If anything interrupts the read (``KeyboardInterrupt``, an exception from a
        signal handler), the worker is killed: a late reply must never be taken for
        the answer to a later request.
        """
        if self._inflight <= self._unread:
            raise InterfaceError(f"[shard {self.shard!r}] no reply is awaited")
        completed = False
        try:
            pipe = self._pipe
            while self._unread:
                p.recv_message(pipe)
                self._inflight -= 1
                self._unread -= 1
            reply = p.recv_message(pipe)
            completed = True
        except (OSError, EOFError):
            completed = True  # a dead worker, not an interrupted read
            raise self._lost("running a request") from None
        finally:
            if not completed:
                self._kill()
        self._inflight -= 1
        self.status = reply.status
        if type(reply) is p.Ok:
            return reply.value
        if reply.broken:
            self._kill()
        raise reply.error

    def request(self, request: p.Request) -> Any:
        """Send ``request`` and return its reply's value (raising its error)."""
        if self._served:
            self._served.clear()
        self.send(request)
        return self.recv()

    def drain(self) -> None:
        """Read and drop every reply still owed (after another shard's error)."""
        while self._inflight > self._unread and not self.closed:
            with contextlib.suppress(Error):
                self.recv()

    def serve(self, sql: str, params: Any, result: p.Result) -> None:
        """Answer the next ``cursor.execute(sql, params)`` with ``result``, no round trip."""
        self._served.append((sql, params, result))

    @property
    def wrote(self) -> bool:
        """Whether the open transaction has written (as of the last reply)."""
        return bool(self.status & p.STATUS_WROTE)

    def worker_exited(self) -> bool:
        """Whether the worker process is gone (say, it exited when PostgreSQL ended
        its connection while it was idle in the pool).  One system call."""
        if self.closed:
            return True
        poller = select.poll()  # not select(): file descriptors may be above 1024
        poller.register(self._process.sentinel, select.POLLIN)
        return bool(poller.poll(0))

    @property
    def idle(self) -> bool:
        """No transaction open and no reply owed."""
        return (self.status & p.STATUS_TX) == _IDLE and self._inflight == self._unread

    # -- PEP 249 ---------------------------------------------------------------------

    def cursor(self, name: str | None = None, /, **kwargs: Any) -> Cursor:
        """A cursor; with ``name``, a server-side cursor (streaming results)."""
        return Cursor(self, name)

    def commit(self) -> None:
        """Commit the open transaction (no round trip when none is open)."""
        self._served.clear()
        self.tag = self.owner = None
        if self.idle or self.closed:
            return
        self.request(p.Commit())

    def rollback(self) -> None:
        """Roll back the open transaction.

        No round trip when none is open (SQLAlchemy's reset-on-return of an idle
        connection costs nothing); otherwise the ROLLBACK is sent without waiting:
        the worker runs requests in order, so whatever comes next runs after it.
        """
        self._served.clear()
        self.tag = self.owner = None
        if self.closed or self.idle:
            return
        self.send_and_forget(p.Rollback())
        self.status = _IDLE

    def close(self) -> None:
        """Stop the worker (rolling back what it holds).  Safe to call twice."""
        if self.closed:
            return
        try:
            self.drain()
            self.send(p.Shutdown())
            self.recv()
        except BaseException:
            pass
        self.closed = True
        with contextlib.suppress(Exception):
            self._pipe.close()
        self._process.join(2.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(1.0)

    def ping(self, check_connection: bool = True) -> None:
        """One round trip to the worker (and its server, with ``check_connection``)."""
        self.request(p.Ping(check_connection))

    # -- psycopg's connection attributes that SQLAlchemy uses ------------------------

    @property
    def info(self) -> _Info:
        """Connection information, as psycopg's ``Connection.info``."""
        return _Info(self)

    def add_notice_handler(self, handler: Callable[..., Any]) -> None:
        """Accepted for psycopg compatibility; notices stay in the worker."""

    def _set_option(self, name: str, value: Any) -> None:
        self.request(p.SetOption(name, value))
        setattr(self, "_" + name, value)

    @property
    def autocommit(self) -> bool:
        """Autocommit mode, as psycopg's."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        if bool(value) != self._autocommit:
            self._set_option("autocommit", bool(value))

    def set_autocommit(self, value: bool) -> None:
        """Set :attr:`autocommit`."""
        self.autocommit = value

    @property
    def isolation_level(self) -> Any:
        """The isolation level of transactions begun from now on (None: the server's)."""
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        if value != self._isolation_level:
            self._set_option("isolation_level", None if value is None else IsolationLevel(value))

    @property
    def read_only(self) -> bool | None:
        """Whether transactions begun from now on are read-only (None: the server's)."""
        return self._read_only

    @read_only.setter
    def read_only(self, value: bool | None) -> None:
        if value != self._read_only:
            self._set_option("read_only", value)

    @property
    def deferrable(self) -> bool | None:
        """Whether transactions begun from now on are deferrable (None: the server's)."""
        return self._deferrable

    @deferrable.setter
    def deferrable(self, value: bool | None) -> None:
        if value != self._deferrable:
            self._set_option("deferrable", value)

    # -- two-phase commit (PEP 249's optional extension) -------------------------------

    def tpc_begin(self, xid: Any) -> None:
        """Start a two-phase transaction named ``xid``."""
        self._xid = xid
        self._prepared = False

    def tpc_prepare(self) -> None:
        """The first phase; under a session's coordinator it decides what is sent."""
        if self.tpc is not None:
            self.tpc.prepare(self)
            return
        self.request(p.Prepare(str(self._xid)))
        self._prepared = True

    def tpc_commit(self, xid: Any = None) -> None:
        """The second phase (or a one-phase commit when nothing was prepared)."""
        if self.tpc is not None:
            self.tpc.commit(self)
        else:
            self._tpc_finish(xid, commit=True)

    def tpc_rollback(self, xid: Any = None) -> None:
        """Roll back the two-phase transaction, prepared or not."""
        if self.tpc is not None:
            self.tpc.rollback(self)
        else:
            self._tpc_finish(xid, commit=False)

    def _tpc_finish(self, xid: Any, *, commit: bool) -> None:
        # With an xid (recovery) or after PREPARE: COMMIT/ROLLBACK PREPARED; else one phase.
        if xid is not None or self._prepared:
            self.request(p.FinishPrepared(str(xid or self._xid), commit))
        elif commit:
            self.commit()
        else:
            self.rollback()
        self._xid, self._prepared = None, False

    def tpc_recover(self) -> list[str]:
        """The prepared transactions of this shard's database."""
        cur = self.cursor()
        cur.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
        gids = [row[0] for row in cur.fetchall()]
        self.rollback()
        return gids


class Cursor:
    """A DBAPI cursor over a worker connection.

    An unnamed cursor receives every row in the reply to its ``execute``; a named
    one opens a server-side cursor in the worker and fetches on demand.
    """

    arraysize = 1

    def __init__(self, connection: Connection, name: str | None = None) -> None:
        self.connection = connection
        self.name = name
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0
        self._server: str | None = None  # open server-side cursor
        self.closed = False

    def set_result(self, result: p.Result) -> None:
        """Take ``result`` as the outcome of the statement just run elsewhere (the
        coordinator sent it to several shards at once), without a round trip."""
        self._set(result)

    def _set(self, result: p.Result) -> None:
        self.description = result.description
        self._rows = result.rows
        self.rowcount = result.rowcount
        self._pos = 0

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Cursor:
        """Run ``query`` with ``params`` on the worker."""
        conn = self.connection
        sql = query if isinstance(query, str) else str(query)
        if self.name is not None:
            self._close_server()
            name = f"{self.name}_{next(_cursor_names)}"
            self._set(conn.request(p.Execute(sql, params, cursor=name, tag=conn.tag)))
            self._server = name
            return self
        if conn._served:
            s_sql, s_params, result = conn._served.popleft()
            if s_sql == sql and s_params == params:
                self._set(result)
                return self
            conn._served.clear()
        hook = broadcast.get()
        if hook is not None:
            result = hook(conn, sql, params)
            if result is not None:
                self._set(result)
                return self
        self._set(conn.request(p.Execute(sql, params, None, kwargs.get("prepare"), conn.tag)))
        return self

    def executemany(self, query: Any, params_seq: Sequence[Any], **kwargs: Any) -> None:
        """Run ``query`` once per parameter set, pipelined by psycopg in the worker."""
        sql = query if isinstance(query, str) else str(query)
        returning = bool(kwargs.get("returning"))
        conn = self.connection
        self._set(conn.request(p.ExecuteMany(sql, list(params_seq), returning, conn.tag)))

    def copy_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """``COPY ... FROM STDIN`` (``sql`` is the COPY statement) with ``rows``."""
        result = self.connection.request(p.Copy(sql, list(rows), self.connection.tag))
        self.rowcount = result.rowcount
        return int(result.rowcount)

    def _need_rows(self) -> None:
        if self.description is None:
            raise ProgrammingError("the last operation didn't produce a result")

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None."""
        self._need_rows()
        if self._server is not None and self._pos >= len(self._rows):
            self._rows = self.connection.request(p.Fetch(self._server, max(self.arraysize, 100)))
            self._pos = 0
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` more rows (``arraysize`` by default)."""
        self._need_rows()
        size = size or self.arraysize
        out = self._rows[self._pos : self._pos + size]
        self._pos += len(out)
        if self._server is not None and len(out) < size:
            out += self.connection.request(p.Fetch(self._server, size - len(out)))
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every remaining row."""
        self._need_rows()
        out = self._rows[self._pos :] if self._pos else self._rows
        self._rows, self._pos = [], 0
        if self._server is not None:
            out = out + self.connection.request(p.Fetch(self._server, -1))
        return out

    def _close_server(self) -> None:
        if self._server is not None:
            name, self._server = self._server, None
            conn = self.connection
            if not conn.closed and not conn.idle:
                conn.send_and_forget(p.Close(name))

    def close(self) -> None:
        """Release the rows (and the server-side cursor)."""
        self._close_server()
        self._rows = []
        self.closed = True

    def setinputsizes(self, sizes: Any) -> None:
        """Accepted and ignored (PEP 249)."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """Accepted and ignored (PEP 249)."""

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
