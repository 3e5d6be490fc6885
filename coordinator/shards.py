"""The shards of an application: one SQLAlchemy Engine per shard.

:func:`create_shards` turns ``{"s0": dsn, ...}`` into a :class:`ShardSet`, a
mapping of shard name to :class:`~sqlalchemy.engine.Engine` on the
``postgresql+shardsession`` dialect: each engine's pool holds worker processes,
one PostgreSQL connection each, with SQLAlchemy's own pool semantics
(``pool_size``, ``max_overflow``, ``pool_timeout``, ``pool_pre_ping``,
``pool_recycle``, return on garbage collection, ``dispose()``).

A :class:`ShardSet` is also what ``Base.metadata.create_all(shards)`` takes: the
DDL runs on every shard.  :func:`create_pool` is the first edition's spelling of
the same thing and stays supported.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from shardsession.coordinator.detector import DeadlockDetector
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.sql.schema import MetaData

from shardsession.exc import ArgumentError, ConfigurationError
from shardsession.preflight import check_shard_name, shard_conninfo
from shardsession.recovery import RecoveryReport, recover

_Member = TypeVar("_Member")

__all__ = ["ShardSet", "create_all", "create_pool", "create_shards", "drop_all"]

_DRIVER = "postgresql+shardsession://"
_LIBPQ_KEYWORDS = frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def _conninfo(dsn: str, shard: str = "?") -> str:
    """A psycopg conninfo for shard ``shard``'s ``dsn`` (libpq keywords or a
    postgresql:// URL); a malformed one raises an ArgumentError naming the shard."""
    return shard_conninfo(shard, dsn)


def _asyncio_engine(url: str, **kwargs: Any) -> Engine:
    """The synchronous side of ``create_async_engine(url, **kwargs)``."""
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(url, **kwargs).sync_engine


def _engine_conninfo(engine: Engine) -> str:
    """The conninfo an engine's connections are made with (for recovery)."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    params = {k: v for k, v in cparams.items() if k != "context"}
    base = params.pop("conninfo", "") or (cargs[0] if cargs else "")
    return make_conninfo(base, **{k: v for k, v in params.items() if isinstance(v, (str, int))})


class ByShard(Mapping[str, _Member]):
    """A read-only mapping of shard name -> one thing per shard (``_members``), the
    base of :class:`ShardSet` and of its asyncio counterparts."""

    _members: dict[str, _Member]

    def __getitem__(self, name: str) -> _Member:
        return self._members[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {list(self._members)}>"


class ShardSet(ByShard[Engine]):
    """Shard name -> :class:`~sqlalchemy.engine.Engine`, with what applies to all of them.

    :ivar dsns: shard name -> the psycopg conninfo its connections use (recovery
        connects with it directly).
    :ivar recovery_interval: seconds between background recovery runs, or None.
    :ivar last_recovery: the report of the last background recovery run.
    :ivar deadlocks: the distributed deadlock detector, or None when
        ``deadlock_interval`` is None.
    """

    def __init__(
        self,
        engines: Mapping[str, Engine],
        *,
        recovery_interval: float | None = None,
        recovery_grace: float = 30.0,
        deadlock_interval: float | None = None,
        dsns: Mapping[str, str] | None = None,
    ) -> None:
        if not engines:
            raise ArgumentError("no shards given: create_shards({'s0': dsn, ...})")
        for name in engines:
            check_shard_name(name)
        self._members = dict(engines)
        known = dict(dsns or {})
        self.dsns = {name: known.get(name) or _engine_conninfo(e)
                     for name, e in self._members.items()}  # fmt: skip
        self.recovery_grace = recovery_grace
        self.recovery_interval = recovery_interval
        self.last_recovery: RecoveryReport | None = None
        self._closed = threading.Event()
        if recovery_interval is not None:
            threading.Thread(
                target=_recovery_loop,
                args=(weakref.ref(self), recovery_interval, self._closed),
                name="shardsession-recovery",
                daemon=True,
            ).start()
        #: shard -> how many workers its pool may lend at once (pools made by
        #: create_shards); a full pool makes the detector collect dropped sessions
        self.capacity: dict[str, int] = {}
        self.deadlocks: DeadlockDetector | None = None
        if deadlock_interval is not None:
            if not deadlock_interval > 0:
                raise ArgumentError(
                    f"deadlock_interval must be a positive number of seconds (or None to "
                    f"turn the detector off), not {deadlock_interval!r}"
                )
            self.deadlocks = DeadlockDetector(self, deadlock_interval, self._closed)

    def recover(self, *, older_than: float = 10.0, dry_run: bool = False) -> RecoveryReport:
        """Settle in-doubt two-phase commits on these shards
        (:func:`shardsession.recovery.recover`)."""
        return recover(self.dsns, older_than=older_than, dry_run=dry_run)

    def dispose(self) -> None:
        """Close every idle worker of every shard (their engines stay usable)."""
        for engine in self._members.values():
            engine.dispose()

    def close(self) -> None:
        """Stop background recovery and every worker.  Safe to call twice."""
        self._closed.set()
        self.dispose()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_on_all(self, fn: Any) -> dict[str, Any]:
        """Call ``fn(shard, engine)`` for every shard in parallel; return the results.

        :raises: the first error (after every call has finished).
        """
        with ThreadPoolExecutor(max_workers=len(self._members)) as pool:
            futures = {s: pool.submit(fn, s, e) for s, e in self._members.items()}
        return {s: f.result() for s, f in futures.items()}

    # MetaData.create_all(bind) / drop_all(bind) call this on their bind: run the
    # schema visitor on every shard, each in its own transaction.
    def _run_ddl_visitor(self, visitorcallable: Any, element: Any, **kwargs: Any) -> None:
        self.run_on_all(lambda s, e: e._run_ddl_visitor(visitorcallable, element, **kwargs))


def _recovery_loop(ref: Any, interval: float, closed: threading.Event) -> None:
    while not closed.wait(interval):
        shards = ref()
        if shards is None:
            return
        with contextlib.suppress(Exception):  # a shard may be down: next round
            shards.last_recovery = shards.recover(older_than=shards.recovery_grace)
        del shards


def create_shards(
    shards: Mapping[str, str | Engine],
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    start_method: str | None = None,
    connect_timeout: float | None = None,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
    recovery_interval: float | None = 30.0,
    recovery_grace: float = 30.0,
    deadlock_interval: float | None = 1.0,
    for_asyncio: bool = False,
    **engine_kwargs: Any,
) -> ShardSet:
    """Create one engine per shard and return them as a :class:`ShardSet`.

    :param shards: shard name -> DSN (libpq ``"host=... dbname=..."`` or a
        ``postgresql://`` URL), or an existing ``postgresql+shardsession`` Engine.
    :param pool_size: workers each shard's pool keeps (SQLAlchemy's ``pool_size``).
    :param max_overflow: extra workers a shard may start when all are in use.
    :param start_method: ``"forkserver"`` (default) or ``"spawn"``.
    :param connect_timeout: seconds a worker waits for its PostgreSQL connection.
    :param statement_timeout: seconds after which PostgreSQL cancels a statement.
    :param lock_timeout: seconds after which PostgreSQL cancels a statement waiting
        for a lock.  Both are sent as ``-c`` settings in the connection's
        ``options``, after the DSN's own options and before those of
        ``connect_args={"options": ...}``; see :ref:`timeouts` for a policy.
    :param recovery_interval: seconds between background recovery runs (None: off);
        recovery settles what a crash left prepared and prunes settled decisions.
    :param recovery_grace: age in seconds after which an undecided prepared
        transaction is presumed aborted by background recovery.
    :param deadlock_interval: seconds between two looks of the distributed
        deadlock detector (None: off); a lock cycle across shards is broken within
        about this time (:mod:`shardsession.coordinator.detector`).
    :param for_asyncio: make each engine as ``create_async_engine`` does (the
        dialect's asyncio variant and pool) so that asyncio code can use it too;
        :func:`shardsession.create_async_shards` sets it and wraps the result.
    :param engine_kwargs: passed to :func:`sqlalchemy.create_engine`
        (``pool_timeout``, ``pool_pre_ping``, ``pool_recycle``, ``echo``, ...).
    """
    if not isinstance(shards, Mapping):
        raise ArgumentError(
            "create_shards takes a mapping of shard name -> DSN such as "
            f"{{'s0': 'postgresql://...'}}, not a {type(shards).__name__}"
        )
    for name, target in shards.items():  # every name and DSN, before any engine exists
        check_shard_name(name)
        if isinstance(target, str):
            _conninfo(target, name)
    if connect_timeout is not None and (
        isinstance(connect_timeout, bool)
        or not isinstance(connect_timeout, (int, float))
        or connect_timeout < 0
    ):
        raise ArgumentError(
            f"connect_timeout must be a number of seconds (or None), not {connect_timeout!r}"
        )
    engines: dict[str, Engine] = {}
    dsns: dict[str, str] = {}
    direct: dict[str, str] = {}
    extra_connect_args = engine_kwargs.pop("connect_args", {})
    for name, target in shards.items():
        if isinstance(target, Engine):
            if target.dialect.driver != "shardsession":
                raise ConfigurationError(
                    f"shard {name!r}: engine {target.url!r} uses the {target.dialect.driver!r} "
                    "driver; use a postgresql+shardsession:// URL (or pass the DSN)"
                )
            engines[name] = target
            continue
        if not isinstance(target, str):
            raise ArgumentError(
                f"shard {name!r}: expected a DSN string or an Engine, not {target!r}"
            )
        dsns[name] = _conninfo(target)
        connect_args: dict[str, Any] = {"conninfo": dsns[name], "shardsession_shard": name}
        if start_method:
            connect_args["shardsession_start_method"] = start_method
        if connect_timeout:
            connect_args["connect_timeout"] = max(1, round(connect_timeout))
        # options in the DSN, ours, then the caller's: none replaces another
        settings = [conninfo_to_dict(dsns[name]).get("options") or ""]
        for setting, seconds in (("statement_timeout", statement_timeout),
                                 ("lock_timeout", lock_timeout)):  # fmt: skip
            if seconds:
                settings.append(f"-c {setting}={int(seconds * 1000)}")
        settings.append(extra_connect_args.get("options") or "")
        if any(settings):
            connect_args["options"] = " ".join(filter(None, settings))
        engine = (_asyncio_engine if for_asyncio else create_engine)(
            _DRIVER,
            connect_args={**extra_connect_args, **connect_args},
            pool_size=pool_size,
            max_overflow=max_overflow,
            **engine_kwargs,
        )
        engines[name] = engine
        # recovery and the deadlock detector connect as the workers do (a password,
        # sslmode or search_path may come in connect_args)
        libpq = {key: value for key, value in {**extra_connect_args, **connect_args}.items()
                 if key in _LIBPQ_KEYWORDS}  # fmt: skip
        if libpq:
            direct[name] = make_conninfo(dsns[name], **libpq)
    shard_set = ShardSet(
        engines,
        recovery_interval=recovery_interval,
        recovery_grace=recovery_grace,
        deadlock_interval=deadlock_interval,
        dsns={**dsns, **direct},
    )
    if max_overflow >= 0 and "poolclass" not in engine_kwargs:
        shard_set.capacity = {name: pool_size + max_overflow for name in dsns}
    return shard_set


def create_pool(
    shards: Mapping[str, str],
    workers_per_shard: int = 2,
    *,
    max_overflow: int = 10,
    checkout_timeout: float = 30.0,
    pre_ping: bool = False,
    recovery_interval: float | None = 30.0,
    **options: Any,
) -> ShardSet:
    """The first edition's :func:`create_shards`: ``workers_per_shard`` is the pool size.

    ``checkout_timeout`` is SQLAlchemy's ``pool_timeout`` and ``pre_ping`` its
    ``pool_pre_ping``; background recovery runs every ``recovery_interval``
    seconds.  Other arguments are :func:`create_shards`'.
    """
    if isinstance(workers_per_shard, bool) or not isinstance(workers_per_shard, int):
        raise ArgumentError(
            f"workers_per_shard is how many workers each shard keeps (an int such as 2), "
            f"not {workers_per_shard!r}"
        )
    if workers_per_shard < 1:
        raise ArgumentError(f"workers_per_shard must be at least 1, not {workers_per_shard}")
    options.pop("check_two_phase", None)
    options.pop("max_idle", None)
    options.pop("monitor_interval", None)
    return create_shards(
        shards,
        pool_size=workers_per_shard,
        max_overflow=max_overflow,
        pool_timeout=checkout_timeout,
        pool_pre_ping=pre_ping,
        recovery_interval=recovery_interval,
        **options,
    )


def _on_every_shard(method: str, metadata: MetaData, shards: Mapping[str, Engine],
                    kwargs: dict[str, Any]) -> None:  # fmt: skip
    with ThreadPoolExecutor(max_workers=max(1, len(shards))) as pool:
        futures = [pool.submit(getattr(metadata, method), e, **kwargs) for e in shards.values()]
    for future in futures:
        future.result()


def create_all(metadata: MetaData, shards: Mapping[str, Engine], **kwargs: Any) -> None:
    """``metadata.create_all`` on every shard, in parallel."""
    _on_every_shard("create_all", metadata, shards, kwargs)


def drop_all(metadata: MetaData, shards: Mapping[str, Engine], **kwargs: Any) -> None:
    """``metadata.drop_all`` on every shard, in parallel."""
    _on_every_shard("drop_all", metadata, shards, kwargs)
