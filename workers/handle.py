"""The application-side handle of one worker process."""

from __future__ import annotations

import contextlib
import select
import time
from typing import Any

from shardsession.workers.main import CONNECTION_LOST

from shardsession import protocol as p
from shardsession.exc import WorkerLostError
from shardsession.protocol import gather

__all__ = ["WorkerHandle", "gather"]

# ``gather`` lives in the protocol module (both sides use it); re-exported here.


class WorkerHandle:
    """One worker process as the application sees it: a pipe and a process.

    A handle is used by one thread at a time (the session that checked it out);
    :meth:`send` and :meth:`recv` may be split so that a statement goes to every
    shard before any reply is awaited.

    :ivar shard: the shard this worker serves.
    :ivar name: the worker's name (also its ``application_name`` in PostgreSQL).
    :ivar pid: the worker's process id.
    :ivar backend_pid: the PostgreSQL backend process id of its connection.
    """

    def __init__(self, shard: str, name: str, process: Any, pipe: Any) -> None:
        self.shard = shard
        self.name = name
        self.process = process
        self.pipe = pipe
        self.pid: int = process.pid
        self.backend_pid: int | None = None
        self.lost = False
        self.pending = 0  # requests sent whose reply was not read yet
        self.unread = 0  # replies nobody waits for, skipped by the next recv()
        self.idle_since = time.monotonic()
        # The process sentinel becomes readable when the process ends: polling it is
        # far cheaper than Process.is_alive(), which builds a selector every call.
        self._sentinel = select.poll()
        self._sentinel.register(process.sentinel, select.POLLIN)

    def __repr__(self) -> str:
        state = "lost" if self.lost else "alive"
        return f"<WorkerHandle {self.name} pid={self.pid} {state}>"

    def alive(self) -> bool:
        """Whether the process is still running (and was not marked lost)."""
        return not self.lost and not self._sentinel.poll(0)

    def _lost(self, doing: str) -> WorkerLostError:
        self.lost = True
        code = self.process.exitcode
        if code is None:
            self.process.join(0.2)  # it may be exiting right now
            code = self.process.exitcode
        if code == CONNECTION_LOST:
            how = "it lost its connection to PostgreSQL"
        else:
            how = f"exit code {code}" if code is not None else "its pipe closed"
        return WorkerLostError(
            f"worker {self.name} (pid {self.pid}) of shard {self.shard!r} died while {doing} "
            f"({how}); the transaction it held on that shard is gone (committed data is "
            "intact). Roll back and retry the transaction."
        )

    def send(self, request: p.Request) -> None:
        """Send one request without waiting for its reply."""
        if self.lost:
            raise self._lost("idle")
        try:
            p.send_message(self.pipe, request)
        except (OSError, EOFError, ValueError) as err:
            raise self._lost(f"receiving {type(request).__name__}") from err
        self.pending += 1

    def send_and_forget(self, request: p.Request) -> None:
        """Send ``request`` whose reply nobody will wait for (a ROLLBACK, a read-only COMMIT).

        The worker runs requests in order, so whatever is sent next runs after it;
        its reply is read and dropped by the next :meth:`recv`.  Saves a round trip
        where the outcome cannot matter.
        """
        self.send(request)
        self.pending -= 1
        self.unread += 1

    def recv(self) -> Any:
        """Wait for the reply to the oldest request sent; return its value or raise its error."""
        try:
            while self.unread:
                p.recv_message(self.pipe)
                self.unread -= 1
            reply = p.recv_message(self.pipe)
        except (OSError, EOFError, ValueError) as err:
            self.pending = self.unread = 0
            raise self._lost("running a request") from err
        self.pending -= 1
        if isinstance(reply, p.Failure):
            raise reply.to_exception()
        return reply.value

    def request(self, request: p.Request) -> Any:
        """Send ``request`` and return its reply's value (raising its error)."""
        self.send(request)
        return self.recv()

    def drain(self) -> None:
        """Read and drop replies still pending (after another shard's error)."""
        while self.pending and not self.lost:
            with contextlib.suppress(Exception):
                self.recv()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout``."""
        if self.process.is_alive() and not self.lost:
            with contextlib.suppress(Exception):
                p.send_message(self.pipe, p.Shutdown())
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.lost = True
        with contextlib.suppress(Exception):
            self.pipe.close()
