"""The pool of worker processes, per shard, like a connection pool.

A :class:`WorkerPool` starts ``workers_per_shard`` processes for each shard
(all in parallel), lends them out with :meth:`WorkerPool.checkout` for the length
of a transaction and takes them back with :meth:`WorkerPool.checkin`.  When every
worker of a shard is out it starts up to ``max_overflow`` more, and past that a
checkout waits up to ``checkout_timeout`` seconds, then raises
:class:`~shardsession.exc.PoolTimeoutError`.  Many threads may share one pool.

A monitor thread replaces workers that died while idle and retires overflow
workers idle longer than ``max_idle``.  :meth:`WorkerPool.close`, garbage
collection of the pool and interpreter exit all stop every worker; workers also
exit by themselves when the application process dies.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

import multiprocess
import multiprocess.spawn
from shardsession.workers.handle import WorkerHandle, gather
from shardsession.workers.main import worker_main

from shardsession import protocol as p
from shardsession.exc import (
    ArgumentError,
    IntegrityError,
    InvalidRequestError,
    PoolTimeoutError,
    ShardNotFoundError,
    WorkerLostError,
)
from shardsession.preflight import check_shard_dsns
from shardsession.recovery import RecoveryReport, recover
from shardsession.twophase import COMMIT_LOG_DDL, MAX_SHARD_NAME

__all__ = ["WorkerPool", "create_pool"]

_PRELOAD = ["shardsession.workers.main", "shardsession.workers.shard", "psycopg"]
_pool_ids = itertools.count(1)


_WORKER_PREFIX = "shardsession-"


def _install_main_guard() -> None:
    """Keep worker processes from re-running the application's ``__main__``.

    ``spawn`` and ``forkserver`` children normally import the parent's main
    module, which would make every application guard its entry point with
    ``if __name__ == "__main__"``.  Workers need nothing from it (their code lives
    in shardsession), so for processes named by this pool only, the main-module
    entries are dropped from the preparation data; other processes are untouched.
    """
    original = multiprocess.spawn.get_preparation_data
    if getattr(original, "_shardsession", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if not name.startswith(_WORKER_PREFIX):
            return data
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    get_preparation_data._shardsession = True  # type: ignore[attr-defined]
    multiprocess.spawn.get_preparation_data = get_preparation_data


def _context(start_method: str | None) -> Any:
    method = start_method or ("forkserver" if os.name == "posix" else "spawn")
    if method not in ("spawn", "forkserver"):
        raise ArgumentError(
            f"start_method={method!r} is not allowed: use 'spawn' or 'forkserver' (a forked "
            "worker would inherit the application's connections and threads)."
        )
    _install_main_guard()
    ctx = multiprocess.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


class _ShardSlots:
    """The workers of one shard: idle ones, and how many exist in all."""

    def __init__(self) -> None:
        self.idle: deque[WorkerHandle] = deque()
        self.total = 0
        self.starting = 0


def _shutdown(handles: dict[int, WorkerHandle]) -> None:
    """Stop every worker in ``handles`` (used by close, GC and exit alike)."""
    items = list(handles.values())
    handles.clear()
    for handle in items:  # ask all first, so they exit in parallel
        if handle.process.is_alive() and not handle.lost:
            try:
                p.send_message(handle.pipe, p.Shutdown())
            except Exception:
                handle.lost = True
    for handle in items:
        handle.stop(timeout=2.0)


class WorkerPool:
    """Worker processes for a set of shards.

    :param shards: shard name -> PostgreSQL DSN.
    :param workers_per_shard: workers kept for each shard.
    :param max_overflow: extra workers a shard may start when all are checked out.
    :param start_method: ``"forkserver"`` (default on POSIX) or ``"spawn"``; never
        ``fork``, which would copy the application's connections and threads.
    :param connect_timeout: seconds a worker waits for its connection.
    :param statement_timeout: seconds after which PostgreSQL cancels a statement.
    :param max_idle: seconds an overflow worker may stay idle before it is stopped.
    :param checkout_timeout: seconds a checkout waits for a free worker.
    :param monitor_interval: seconds between health checks of idle workers.
    :param check_two_phase: check ``max_prepared_transactions > 0`` on every shard first.
    :param pre_ping: check each worker's connection at checkout (one round trip);
        without it, only the idle workers of a shard that just lost a connection
        (say, its server restarted) are checked.
    :param recovery_interval: seconds between background recovery runs (the first
        runs at start); ``None`` turns background recovery off.
    :param recovery_grace: seconds an undecided prepared transaction must have
        existed before background recovery presumes it aborted.

    .. attribute:: shards

        Shard name -> DSN, as given.

    .. attribute:: start_method

        The ``multiprocess`` start method the workers were started with.

    .. attribute:: last_recovery

        The :class:`~shardsession.recovery.RecoveryReport` of the last background
        recovery run, or ``None`` before the first one.
    """

    def __init__(
        self,
        shards: Mapping[str, str],
        workers_per_shard: int = 1,
        *,
        max_overflow: int = 0,
        start_method: str | None = None,
        connect_timeout: float | None = 10.0,
        statement_timeout: float | None = None,
        max_idle: float = 60.0,
        checkout_timeout: float = 30.0,
        monitor_interval: float = 1.0,
        check_two_phase: bool = True,
        recovery_interval: float | None = 30.0,
        recovery_grace: float = 30.0,
        pre_ping: bool = False,
    ) -> None:
        if not shards:
            raise ArgumentError("a pool needs at least one shard: create_pool({'s0': dsn, ...})")
        too_long = [name for name in shards if len(name.encode()) > MAX_SHARD_NAME]
        if too_long:
            raise ArgumentError(
                f"shard names {too_long} are longer than {MAX_SHARD_NAME} bytes; two-phase "
                "commit names each prepared transaction after its shard and PostgreSQL allows "
                "200 characters. Use shorter shard names."
            )
        if workers_per_shard < 1:
            raise ArgumentError(f"workers_per_shard must be at least 1, not {workers_per_shard}")
        self.shards = dict(shards)
        self.workers_per_shard = workers_per_shard
        self.max_overflow = max_overflow
        self.max_idle = max_idle
        self.checkout_timeout = checkout_timeout
        self.monitor_interval = monitor_interval
        self.recovery_interval = recovery_interval
        self.pre_ping = pre_ping
        self._suspect: set[int] = set()  # pids of idle workers to check before lending
        self.recovery_grace = recovery_grace
        self.last_recovery: RecoveryReport | None = None
        self._next_recovery = time.monotonic()
        self.options = {"connect_timeout": connect_timeout, "statement_timeout": statement_timeout}
        self.id = next(_pool_ids)
        self._ctx = _context(start_method)
        self.start_method = self._ctx.get_start_method()
        self._lock = threading.Condition()
        self._slots = {shard: _ShardSlots() for shard in self.shards}
        self._handles: dict[int, WorkerHandle] = {}
        self._names = itertools.count(1)
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._handles)
        if check_two_phase:
            check_shard_dsns(self.shards)
        started = time.perf_counter()
        self._start_workers([s for s in self.shards for _ in range(workers_per_shard)])
        self.startup_seconds = time.perf_counter() - started
        self._ensure_commit_log()
        self._monitor = threading.Thread(
            target=_monitor_loop,
            args=(weakref.ref(self), monitor_interval),
            name=f"shardsession-pool-{self.id}-monitor",
            daemon=True,
        )
        self._monitor.start()

    # -- starting workers ----------------------------------------------------

    def _start_workers(self, shards: list[str]) -> list[WorkerHandle]:
        """Start one worker per entry of ``shards`` in parallel; return them idle-ready."""
        with self._lock:
            for shard in shards:
                self._slots[shard].total += 1
        launched: list[tuple[str, WorkerHandle]] = []
        try:
            for shard in shards:
                name = f"{_WORKER_PREFIX}{shard}-w{next(self._names)}"
                parent_end, child_end = self._ctx.Pipe(duplex=True)
                process = self._ctx.Process(
                    target=worker_main,
                    args=(child_end, shard, self.shards[shard], name, os.getpid(), self.options),
                    name=name,
                    daemon=True,
                )
                process.start()
                child_end.close()
                handle = WorkerHandle(shard, name, process, parent_end)
                handle.pending = 1  # the worker announces itself once connected
                launched.append((shard, handle))
            ready: list[WorkerHandle] = []
            error: BaseException | None = None
            for _, handle in launched:
                try:
                    info = handle.recv()
                    handle.backend_pid = info["backend_pid"]
                    ready.append(handle)
                except Exception as err:
                    handle.stop(0.5)
                    error = error or err
            if error is not None:
                for handle in ready:
                    handle.stop(0.5)
                raise error
        except BaseException:
            with self._lock:
                for shard in shards:
                    self._slots[shard].total -= 1
                self._lock.notify_all()
            for _, handle in launched:
                handle.stop(0.5)
            raise
        with self._lock:
            for handle in ready:
                self._handles[handle.pid] = handle
                self._slots[handle.shard].idle.append(handle)
            self._lock.notify_all()
        return ready

    # -- checkout / checkin --------------------------------------------------

    def checkout(self, shard: str, timeout: float | None = None) -> WorkerHandle:
        """Take a worker of ``shard`` for the length of a transaction.

        :param timeout: seconds to wait for a free worker (``checkout_timeout`` by default).
        :raises ShardNotFoundError: ``shard`` is not a shard of this pool.
        :raises PoolTimeoutError: no worker became free in time.
        """
        if shard not in self._slots:
            raise ShardNotFoundError(
                f"no shard named {shard!r} in this pool; its shards are {sorted(self.shards)}"
            )
        timeout = self.checkout_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        slots = self._slots[shard]
        while True:
            with self._lock:
                if self._closed:
                    raise InvalidRequestError("this worker pool is closed")
                start_one = False
                while not slots.idle:
                    if slots.total < self.workers_per_shard + self.max_overflow:
                        start_one = True
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolTimeoutError(
                            f"no worker of shard {shard!r} became free within {timeout:g} s "
                            f"({slots.total} worker(s), all checked out). Return workers sooner "
                            "(close or commit sessions), or raise workers_per_shard / "
                            "max_overflow / checkout_timeout."
                        )
                    self._lock.wait(remaining)
                if not start_one:
                    handle = slots.idle.pop()
                    if not handle.alive():
                        self._forget(handle)
                        continue
                    check = self.pre_ping or handle.pid in self._suspect
                    self._suspect.discard(handle.pid)
                    if not check:
                        return handle
            if start_one:
                self._start_workers([shard])
                continue
            if self._connection_ok(handle):
                return handle
            with self._lock:
                self._forget(handle)
            handle.stop(0.5)

    def _connection_ok(self, handle: WorkerHandle) -> bool:
        try:
            handle.request(p.Ping(check_connection=True))
        except Exception:
            return False
        return True

    def checkin(self, handle: WorkerHandle) -> None:
        """Give a worker back.  A lost worker is dropped (and replaced by the monitor)."""
        if handle.pending:
            handle.drain()
        with self._lock:
            if self._closed or not handle.alive():
                if not self._closed:
                    # its connection may have died with the server: check its siblings
                    self._suspect.update(h.pid for h in self._slots[handle.shard].idle)
                self._forget(handle)
                closed = self._closed
            else:
                handle.idle_since = time.monotonic()
                self._slots[handle.shard].idle.append(handle)
                closed = False
            self._lock.notify_all()
        if closed:
            handle.stop(1.0)

    def _forget(self, handle: WorkerHandle) -> None:
        # caller holds the lock
        if self._handles.pop(handle.pid, None) is not None:
            self._slots[handle.shard].total -= 1
        handle.lost = True
        handle.process.join(0)  # reap it: never leave a zombie
        self._lock.notify_all()

    # -- health --------------------------------------------------------------

    def _background_recovery(self) -> None:
        if self.recovery_interval is None or time.monotonic() < self._next_recovery:
            return
        self._next_recovery = time.monotonic() + self.recovery_interval
        try:
            self.last_recovery = recover(self.shards, older_than=self.recovery_grace)
        except Exception:
            pass  # a shard may be down; the next round tries again

    def _check(self) -> None:
        """One monitor round: drop dead idle workers, refill, retire idle overflow."""
        retire: list[WorkerHandle] = []
        refill: list[str] = []
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            for shard, slots in self._slots.items():
                for handle in list(slots.idle):
                    if not handle.alive():
                        slots.idle.remove(handle)
                        self._forget(handle)
                while (
                    slots.total > self.workers_per_shard
                    and slots.idle
                    and now - slots.idle[0].idle_since > self.max_idle
                ):
                    handle = slots.idle.popleft()
                    self._forget(handle)
                    retire.append(handle)
                refill += [shard] * (self.workers_per_shard - slots.total)
        for handle in retire:
            handle.stop(1.0)
        if refill:
            try:
                self._start_workers(refill)
            except Exception:
                pass  # the shard may be down; the next round (or a checkout) tries again

    # -- whole pool ----------------------------------------------------------

    def ping(self) -> dict[str, list[dict[str, Any]]]:
        """Ping every idle worker (checking its connection); return their status by shard."""
        with self._lock:
            idle = [h for slots in self._slots.values() for h in slots.idle]
            for slots in self._slots.values():
                slots.idle.clear()
        try:
            results = gather([(h, p.Ping(check_connection=True)) for h in idle])
        finally:
            for handle in idle:
                self.checkin(handle)
        out: dict[str, list[dict[str, Any]]] = {shard: [] for shard in self.shards}
        for status in results:
            out[status["shard"]].append(status)
        return out

    def _ensure_commit_log(self) -> None:
        """Create the two-phase commit log table on the shards that lack it.

        :data:`~shardsession.twophase.COMMIT_LOG_DDL` looks the table up with
        ``to_regclass`` first, so a role without the CREATE privilege can use shards
        where the table already exists.
        """
        for attempt in range(3):
            try:
                self._run_ddl([COMMIT_LOG_DDL])
                return
            except IntegrityError:
                if attempt == 2:  # two pools creating it at once; the other one won
                    raise

    def _run_ddl(self, statements: list[str]) -> None:
        """Run DDL on every shard, each shard in one transaction, all shards in parallel.

        This is what ``metadata.create_all(pool)`` / ``drop_all(pool)`` call.
        """
        handles = [self.checkout(shard) for shard in self.shards]
        try:
            batch = p.FlushBatch(tuple(p.Execute(sql, None, fetch="none") for sql in statements))
            try:
                gather([(h, batch) for h in handles])
                gather([(h, p.Commit()) for h in handles])
            except Exception:
                for handle in handles:
                    if handle.alive():
                        with contextlib.suppress(Exception):
                            handle.request(p.Rollback())
                raise
        finally:
            for handle in handles:
                self.checkin(handle)

    def recover(self, *, older_than: float = 10.0, dry_run: bool = False) -> RecoveryReport:
        """Settle in-doubt two-phase commits on this pool's shards.

        See :func:`shardsession.recovery.recover`.
        """
        return recover(self.shards, older_than=older_than, dry_run=dry_run)

    def worker_pids(self) -> dict[str, list[int]]:
        """The process ids of the live workers, by shard."""
        with self._lock:
            out: dict[str, list[int]] = {shard: [] for shard in self.shards}
            for handle in self._handles.values():
                out[handle.shard].append(handle.pid)
            return out

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop every worker (rolling back what they hold).  Safe to call twice."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._finalizer()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<WorkerPool {self.id} shards={sorted(self.shards)} "
            f"workers_per_shard={self.workers_per_shard} {self.start_method}>"
        )


def _monitor_loop(pool_ref: weakref.ref[WorkerPool], interval: float) -> None:
    while True:
        time.sleep(interval)
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        try:
            pool._check()
            pool._background_recovery()
        except WorkerLostError:
            pass
        del pool


def create_pool(
    shards: Mapping[str, str],
    workers_per_shard: int = 1,
    start_method: str | None = None,
    connect_timeout: float | None = 10.0,
    statement_timeout: float | None = None,
    max_idle: float = 60.0,
    **options: Any,
) -> WorkerPool:
    """Start worker processes for ``shards`` and return the :class:`WorkerPool`.

    ``create_pool({"s0": dsn0, "s1": dsn1}, workers_per_shard=2)``.  Further
    keyword arguments (``max_overflow``, ``checkout_timeout``, ``monitor_interval``,
    ``check_two_phase``, ``recovery_interval``, ``recovery_grace``, ``pre_ping``) are
    passed to :class:`WorkerPool`, which describes every argument.
    """
    return WorkerPool(
        shards,
        workers_per_shard,
        start_method=start_method,
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
        max_idle=max_idle,
        **options,
    )
