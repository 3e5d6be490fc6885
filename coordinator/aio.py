"""The worker DBAPI for asyncio: replies are awaited on the event loop.

This module is the DBAPI of the ``postgresql+shardsession`` dialect's asyncio
variant (:mod:`.aio_dialect`).  Its connections are the worker connections of
:mod:`shardsession.coordinator.dbapi` in every respect but one: waiting.

SQLAlchemy's asyncio extension runs the synchronous ORM, engine and pool inside a
greenlet, and lets code there wait for a coroutine with
:func:`sqlalchemy.util.await_only`.  When a worker connection must wait for its
worker's reply (or for a new worker's announcement) inside such a greenlet, it
awaits the readiness of the pipe's file descriptor on the running loop (the
loop's ``add_reader``; a thread of the loop's executor where the loop has none,
as on Windows' proactor loop) instead of blocking; meanwhile the loop runs every
other coroutine.  Once the first byte of a reply is there, the rest of it is
being written by the worker and is read at once.

Outside such a greenlet (a script, a thread, recovery, ``create_all`` run as
synchronous code) the same connections block as the synchronous ones do, so one
set of worker pools serves both kinds of code.

Everything else a DBAPI module offers (exceptions, ``paramstyle``, ``adapters``,
``exchange``) is the synchronous module's.
A coroutine cancelled while it awaits a reply (``asyncio.wait_for``, a task's
``cancel()``, a web server dropping a request) interrupts the read: as for any
interrupted read, the worker is killed, so no late reply is ever taken for the
answer to a later request, and the pool replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from shardsession.coordinator import dbapi
from shardsession.coordinator.dbapi import (
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
    apilevel,
    broadcast,
    exchange,
    paramstyle,
    threadsafety,
)
from sqlalchemy.util import concurrency as _concurrency

__all__ = [
    "AsyncConnection",
    "AsyncCursor",
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
    "exchange",
    "greenlet_installed",
    "paramstyle",
    "require_greenlet",
    "threadsafety",
    "wait_readable",
]

__version__ = dbapi.__version__

_MISSING_GREENLET = (
    "shardsession's asyncio support (AsyncSession, async_sessionmaker, "
    "create_async_shards) runs SQLAlchemy's asyncio extension, which needs the "
    "greenlet package: pip install 'shardsession[asyncio]'"
)


def greenlet_installed() -> bool:
    """Whether ``greenlet`` (the ``asyncio`` extra) can be imported."""
    try:
        import greenlet  # noqa: F401
    except ImportError:
        return False
    return True


def require_greenlet() -> None:
    """Check that the ``greenlet`` package SQLAlchemy's asyncio extension runs on
    is installed.

    :raises ImportError: naming ``pip install 'shardsession[asyncio]'``.
    """
    try:
        import greenlet  # noqa: F401
    except ImportError as err:
        raise ImportError(_MISSING_GREENLET) from err


# SQLAlchemy 2.1 names it await_ (await_only stays as its old name)
_await: Any = getattr(_concurrency, "await_", None) or _concurrency.await_only


def _in_greenlet() -> bool:
    """Whether this code runs in a greenlet of SQLAlchemy's asyncio extension (and so
    may await).  False when greenlet is not installed: nothing can await then."""
    try:
        return bool(_concurrency.in_greenlet())
    except (ImportError, ValueError):
        return False


async def wait_readable(pipe: Any, timeout: float | None = None) -> bool:
    """Wait on the running loop until ``pipe`` has something to read.

    :param pipe: a ``multiprocess`` connection (anything with ``fileno()`` and
        ``poll(timeout)``).
    :param timeout: seconds to wait at most; None waits as long as it takes.
    :returns: whether there is something to read (False: the timeout passed).
    """
    if pipe.poll(0):
        # already there: still let the loop run once (fairness to other coroutines,
        # and SQLAlchemy's asyncio Core methods expect each statement to await)
        await asyncio.sleep(0)
        return True
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(True)

    fd = pipe.fileno()
    try:
        loop.add_reader(fd, on_readable)
    except NotImplementedError:
        # a loop that cannot watch this descriptor (Windows' proactor loop): one of
        # its executor's threads blocks on it instead of the loop
        return bool(await loop.run_in_executor(None, pipe.poll, timeout))
    try:
        if timeout is None:
            return await ready
        try:
            return await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return False
    finally:
        loop.remove_reader(fd)


class _LoopPipe:
    """A worker's pipe whose waits, inside SQLAlchemy's asyncio greenlet, await the
    loop instead of blocking it."""

    __slots__ = ("_pipe",)

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def fileno(self) -> int:
        return int(self._pipe.fileno())

    def send_bytes(self, buf: Any) -> None:
        # the worker reads every request as it comes: a send never waits for long
        self._pipe.send_bytes(buf)

    def recv_bytes(self) -> bytes:
        pipe = self._pipe
        if _in_greenlet():
            _await(wait_readable(pipe))
        return pipe.recv_bytes()  # type: ignore[no-any-return]

    def poll(self, timeout: float | None = 0.0) -> bool:
        pipe = self._pipe
        if not _in_greenlet():
            return bool(pipe.poll(timeout))
        return bool(_await(wait_readable(pipe, timeout)))

    def close(self) -> None:
        self._pipe.close()


class AsyncCursor(dbapi.Cursor):
    """A worker cursor, as SQLAlchemy's asyncio extension expects one."""

    async def _async_soft_close(self) -> None:
        # SQLAlchemy's asyncio results (2.0.44 and later) call this on a buffered
        # result's cursor so that an asyncio driver can release its cursor early.
        # A worker cursor's rows are already in this process and it holds nothing in
        # the worker (a server-side cursor is never buffered), so there is nothing
        # to release; closing would drop the rows not yet fetched.
        return None


class AsyncConnection(dbapi.Connection):
    """A worker connection whose waits for the worker await the event loop when it
    runs in SQLAlchemy's asyncio greenlet, and block otherwise.

    It is a :class:`~shardsession.coordinator.dbapi.Connection` (the scatter
    layer and the two-phase commit coordinator drive it as they drive any), plus
    :meth:`terminate`, which the asyncio pool uses where it cannot wait.
    """

    def _await_announcement(self, timeout: float) -> None:
        # every wait for this worker goes through the loop-aware pipe, starting with
        # the wait for the new worker's announcement (which may take a connect timeout)
        self._pipe = _LoopPipe(self._pipe)
        super()._await_announcement(timeout)

    def cursor(self, name: str | None = None, /, **kwargs: Any) -> AsyncCursor:
        """A cursor; with ``name``, a server-side cursor (streaming results)."""
        return AsyncCursor(self, name)

    def terminate(self) -> None:
        """Kill the worker at once, without waiting for anything it owes (what
        SQLAlchemy's asyncio pool does with a connection it cannot close cleanly,
        e.g. one of a session nobody closed, found by the garbage collector)."""
        if not self.closed:
            with contextlib.suppress(Exception):
                self._kill()


def connect(*args: Any, **kwargs: Any) -> AsyncConnection:
    """Start a worker as :func:`shardsession.coordinator.dbapi.connect` does; the
    wait for it to connect is awaited on the loop when run from asyncio code."""
    return AsyncConnection(*dbapi.connect_arguments(args, kwargs))
