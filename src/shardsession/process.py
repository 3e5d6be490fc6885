"""Starting worker processes.

Workers start through an explicit ``forkserver`` context (``spawn`` where there
is no forkserver), never ``fork``: a forked worker would inherit the
application's connections, locks and threads.  The forkserver preloads psycopg
and the worker modules once, so each new worker costs a fork of a small
process, not an interpreter start.

Neither method re-imports the application's ``__main__`` in a worker: workers
need nothing from it, and a script without ``if __name__ == "__main__"`` would
otherwise run again in every worker.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import multiprocess
import multiprocess.spawn

__all__ = ["WORKER_PREFIX", "context", "start_worker"]

#: the name of every worker process starts with this
WORKER_PREFIX = "shardsession-"
_PRELOAD = ["psycopg", "shardsession.protocol", "shardsession.workers.main",
            "shardsession.workers.connection"]  # fmt: skip
_contexts: dict[str, Any] = {}
_lock = threading.Lock()


def _install_main_guard() -> None:
    """Drop the main-module entries from the preparation data of our workers only."""
    original = multiprocess.spawn.get_preparation_data
    if getattr(original, "_shardsession", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if name.startswith(WORKER_PREFIX):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._shardsession = True  # type: ignore[attr-defined]
    multiprocess.spawn.get_preparation_data = get_preparation_data


def context(start_method: str | None = None) -> Any:
    """The ``multiprocess`` context workers start from (``forkserver`` by default).

    :raises ValueError: for ``fork`` or an unknown method.
    """
    method = start_method or ("forkserver" if os.name == "posix" else "spawn")
    if method not in ("spawn", "forkserver"):
        raise ValueError(
            f"start_method={method!r} is not allowed: use 'forkserver' or 'spawn' (a forked "
            "worker would inherit the application's connections and threads)"
        )
    with _lock:
        ctx = _contexts.get(method)
        if ctx is None:
            _install_main_guard()
            ctx = multiprocess.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(_PRELOAD)
            _contexts[method] = ctx
        return ctx


def _run_worker(pipe: Any, shard: str, connect_kwargs: dict[str, Any], parent_pid: int) -> None:
    # Imported here, in the worker: the application side never imports worker code.
    from shardsession.workers.main import worker_main

    worker_main(pipe, shard, connect_kwargs, parent_pid)


_names = iter(range(1, 1 << 62))


def start_worker(shard: str, connect_kwargs: dict[str, Any], start_method: str | None = None
                 ) -> tuple[Any, Any]:  # fmt: skip
    """Start one worker process for ``shard``; return ``(process, pipe)``.

    The worker connects by itself and then sends one announcement message, which
    the caller reads from ``pipe``.
    """
    ctx = context(start_method)
    parent_end, child_end = ctx.Pipe(duplex=True)
    process = ctx.Process(
        target=_run_worker,
        args=(child_end, shard, connect_kwargs, os.getpid()),
        name=f"{WORKER_PREFIX}{shard}-{next(_names)}",
        daemon=True,
    )
    process.start()
    child_end.close()
    return process, parent_end
