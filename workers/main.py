"""The main loop of a worker process.

A worker is started by :func:`shardsession.process.start_worker` through an
explicit ``forkserver`` or ``spawn`` context.  It opens its PostgreSQL connection,
announces itself, then answers requests one at a time, exactly one reply each,
until it is told to shut down or its application goes away: the pipe closing
(the application exited) or a watchdog that sees the parent process gone
(killed with -9 while this worker was busy) both end the worker, so no orphan
is left behind.  A worker whose PostgreSQL connection breaks replies with the
error and exits: the application's pool replaces it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from typing import Any

from shardsession import protocol as p

__all__ = ["CONNECTION_LOST", "worker_main"]

#: exit status of a worker whose PostgreSQL connection went away
CONNECTION_LOST = 4


def _watch_parent(pid: int, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:
            pass
        if os.getppid() == 1:
            os._exit(3)


def worker_main(pipe: Any, shard: str, connect_kwargs: dict[str, Any], parent_pid: int) -> None:
    """Run a worker: connect with ``connect_kwargs``, then serve requests from ``pipe``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the application
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    from shardsession.workers.connection import WorkerConnection

    try:
        worker = WorkerConnection(shard, connect_kwargs)
    except Exception as err:  # report the failed start, then exit
        with contextlib.suppress(OSError):
            p.send_message(pipe, p.Failure(_picklable(err), 0, True))
        return
    p.send_message(pipe, p.Ok(worker.handle(p.Ping()), worker.status))
    try:
        _serve(pipe, worker)
    finally:
        with contextlib.suppress(Exception):
            worker.close()


def _picklable(err: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _serve(pipe: Any, worker: Any) -> None:
    socket_fd = worker.conn.fileno()
    pipe_fd = pipe.fileno()
    # Between requests also watch the server socket: a server that drops the
    # connection ends this worker at once, so the pool's next checkout sees a dead
    # worker and replaces it.  One poll object for the worker's life.
    poller = select.poll()
    events = select.POLLIN | select.POLLERR | select.POLLHUP
    poller.register(pipe_fd, events)
    poller.register(socket_fd, events)
    handle = worker.handle
    send, recv = p.send_message, p.recv_message
    while True:
        ready = [fd for fd, _ in poller.poll()]
        if pipe_fd not in ready:
            if not worker.connection_alive():
                raise SystemExit(CONNECTION_LOST)
            continue
        try:
            request = recv(pipe)
        except (EOFError, OSError):
            return  # the application went away
        if type(request) is p.Shutdown:
            with contextlib.suppress(OSError):
                send(pipe, p.Ok(None, 0))
            return
        try:
            reply: p.Ok | p.Failure = p.Ok(handle(request), worker.status)
        except Exception as err:
            broken = worker.broken
            reply = p.Failure(_picklable(worker.name_shard(err)), worker.status, broken)
            if broken:
                with contextlib.suppress(OSError):
                    send(pipe, reply)
                raise SystemExit(CONNECTION_LOST) from None
        try:
            send(pipe, reply)
        except (OSError, EOFError):
            return
