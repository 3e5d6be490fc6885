"""The main loop of a worker process.

A worker is started by :class:`~shardsession.workers.pool.WorkerPool` through an
explicit ``spawn`` or ``forkserver`` context.  It opens its own connection after
it starts, then answers requests one at a time, exactly one reply each, until
it is told to shut down or its parent goes away: the pipe closing (the parent
exited) or a watchdog that sees the parent process gone (killed with -9 while
this worker was busy) both end the worker, so no orphan is ever left behind.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from typing import Any

from shardsession.workers.errors import failure_from

from shardsession import protocol as p

__all__ = ["CONNECTION_LOST", "worker_main"]

#: exit status of a worker whose PostgreSQL connection went away while it was idle
CONNECTION_LOST = 4


def _parent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(pid: int, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        if not _parent_alive(pid) or os.getppid() == 1:
            os._exit(3)


def worker_main(
    pipe: Any,
    shard: str,
    dsn: str,
    name: str,
    parent_pid: int,
    options: dict[str, Any],
) -> None:
    """Run a worker: connect to ``dsn``, then serve requests from ``pipe``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the application
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    from shardsession.workers.shard import ShardConnection

    try:
        shard_conn = ShardConnection(
            shard,
            dsn,
            name=name,
            connect_timeout=options.get("connect_timeout"),
            statement_timeout=options.get("statement_timeout"),
        )
    except Exception as err:  # report the failed start, then exit
        with contextlib.suppress(OSError):
            p.send_message(pipe, failure_from(err, shard, None, False))
        return
    p.send_message(
        pipe, p.Ok({"pid": os.getpid(), "backend_pid": shard_conn.conn.info.backend_pid})
    )
    try:
        _serve(pipe, shard_conn)
    finally:
        with contextlib.suppress(Exception):
            shard_conn.close()


def _serve(pipe: Any, shard_conn: Any) -> None:
    socket_fd = shard_conn.conn.fileno()
    pipe_fd = pipe.fileno()
    # Between requests, also watch the server socket: a server that restarts or
    # drops the connection ends this worker at once, so the pool never lends a
    # worker whose connection is dead (it starts a fresh one instead).  One poll
    # object for the worker's life: building a selector per request cost more
    # than the rest of an empty request's handling.
    poller = select.poll()
    events = select.POLLIN | select.POLLERR | select.POLLHUP
    poller.register(pipe_fd, events)
    poller.register(socket_fd, events)
    while True:
        ready = [fd for fd, _ in poller.poll()]
        if pipe_fd not in ready:
            if not shard_conn.connection_alive():
                raise SystemExit(CONNECTION_LOST)
            continue
        try:
            request = p.recv_message(pipe)
        except (EOFError, OSError):
            return  # the application went away
        if isinstance(request, p.Shutdown):
            with contextlib.suppress(OSError):
                p.send_message(pipe, p.Ok(None))
            return
        try:
            reply: p.Reply = p.Ok(shard_conn.handle(request))
        except Exception as err:
            statement = getattr(request, "sql", None)
            reply = failure_from(err, shard_conn.shard, statement, shard_conn.in_transaction)
            if shard_conn.conn.closed or shard_conn.conn.broken:
                reply = p.Failure(
                    kind="WorkerLostError",
                    message=(
                        f"worker {shard_conn.name} of shard {shard_conn.shard!r} lost its "
                        f"connection to PostgreSQL ({str(err).strip()}); the transaction it held "
                        "on that shard is gone (committed data is intact). Roll back and retry."
                    ),
                    shard=shard_conn.shard,
                    sqlstate=getattr(err, "sqlstate", None),
                )
                with contextlib.suppress(OSError):
                    p.send_message(pipe, reply)
                return  # the connection is gone: this worker is done, the pool replaces it
        try:
            p.send_message(pipe, reply)
        except (OSError, EOFError):
            return
