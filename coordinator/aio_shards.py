"""The shards of an asyncio application: one :class:`~sqlalchemy.ext.asyncio.AsyncEngine`
per shard, over one set of worker pools.

:func:`create_async_shards` takes what :func:`~shardsession.create_shards` takes
and returns an :class:`AsyncShardSet`, shard name -> ``AsyncEngine``.  Each
``AsyncEngine`` wraps the engine of the same shard in :attr:`AsyncShardSet.sync`,
a :class:`~shardsession.ShardSet`: the pool, and so the worker processes, are
that engine's.  ``sync`` is what background recovery, the deadlock detector,
``ss.create_all`` and synchronous sessions use; asyncio code uses the
``AsyncEngine`` objects, :class:`~shardsession.AsyncSession` and
:class:`~shardsession.async_sessionmaker`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from shardsession.coordinator.aio import require_greenlet
from shardsession.coordinator.shards import ByShard, ShardSet, create_shards
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shardsession.exc import ArgumentError
from shardsession.recovery import RecoveryReport

__all__ = ["AsyncShardConnections", "AsyncShardSet", "create_async_shards"]


def asyncio_capable(engine: Engine) -> bool:
    """Whether ``engine`` is a shardsession engine asyncio code can use (made by
    :func:`create_async_shards` or ``create_async_engine("postgresql+shardsession://")``)."""
    return engine.dialect.driver == "shardsession" and bool(engine.dialect.is_async)


def not_asyncio_capable(name: str) -> ArgumentError:
    """The error for shard ``name`` given as an engine asyncio code cannot use."""
    return ArgumentError(
        f"shard {name!r} is not an asyncio shardsession engine: asyncio sessions need the "
        "shards made by shardsession.create_async_shards(dsns, ...) (it takes the arguments "
        "of create_shards); the shards made by create_shards() serve synchronous code only"
    )


class AsyncShardSet(ByShard[AsyncEngine]):
    """Shard name -> :class:`~sqlalchemy.ext.asyncio.AsyncEngine`, over the engines
    (and worker pools) of one :class:`~shardsession.ShardSet`.

    ``AsyncShardSet(shard_set)`` wraps a ShardSet whose engines asyncio code can use
    (one made by :func:`create_async_shards`, or by
    ``create_shards(..., for_asyncio=True)``).

    :ivar sync: the :class:`~shardsession.ShardSet` of the same engines: recovery,
        the deadlock detector, ``ss.create_all(metadata, shards.sync)`` and
        synchronous sessions use it.
    """

    def __init__(self, shards: ShardSet) -> None:
        if not isinstance(shards, ShardSet):
            raise ArgumentError(
                f"AsyncShardSet wraps a ShardSet, not a {type(shards).__name__}: use "
                "shardsession.create_async_shards(dsns, ...)"
            )
        for name, engine in shards.items():
            if not asyncio_capable(engine):
                raise not_asyncio_capable(name)
        self.sync = shards
        self._members = {name: AsyncEngine(engine) for name, engine in shards.items()}

    @property
    def dsns(self) -> dict[str, str]:
        """Shard name -> the conninfo recovery connects with (``sync.dsns``)."""
        return self.sync.dsns

    @property
    def last_recovery(self) -> RecoveryReport | None:
        """The report of the last background recovery run."""
        return self.sync.last_recovery

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncShardConnections]:
        """A connection to every shard, each in its own transaction, committed when the
        block ends (rolled back if it raises)::

            async with shards.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
        """
        async with contextlib.AsyncExitStack() as stack:
            conns = {}
            for name, engine in self._members.items():
                conns[name] = await stack.enter_async_context(engine.begin())
            yield AsyncShardConnections(conns)

    async def recover(self, *, older_than: float = 10.0, dry_run: bool = False
                      ) -> RecoveryReport:  # fmt: skip
        """:meth:`ShardSet.recover`, run in a thread of the loop's executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: self.sync.recover(older_than=older_than, dry_run=dry_run)
        )

    async def dispose(self) -> None:
        """Close every idle worker of every shard (the engines stay usable)."""
        await asyncio.gather(*(engine.dispose() for engine in self._members.values()))

    async def close(self) -> None:
        """Close every idle worker, stop background recovery and the deadlock detector.
        Safe to call twice."""
        await self.dispose()
        self.sync.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.sync.closed

    async def __aenter__(self) -> AsyncShardSet:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncShardConnections(ByShard[AsyncConnection]):
    """Shard name -> :class:`~sqlalchemy.ext.asyncio.AsyncConnection`, one per shard,
    from :meth:`AsyncShardSet.begin`."""

    def __init__(self, connections: Mapping[str, AsyncConnection]) -> None:
        self._members = dict(connections)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any
                       ) -> dict[str, Any]:  # fmt: skip
        """Call ``fn(sync_connection, *args, **kwargs)`` on every shard at once, as
        :meth:`AsyncConnection.run_sync` does on one; return shard -> its result.

        :raises: the first error, once every call has finished.
        """
        names = list(self._members)
        outcomes = await asyncio.gather(
            *(self._members[n].run_sync(fn, *args, **kwargs) for n in names),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return dict(zip(names, outcomes))


def create_async_shards(
    shards: Mapping[str, str | Engine | AsyncEngine], **kwargs: Any
) -> AsyncShardSet:
    """Create one engine per shard for asyncio code; return an :class:`AsyncShardSet`.

    It takes :func:`~shardsession.create_shards`' arguments (``pool_size``,
    ``max_overflow``, timeouts, ``recovery_interval``, ``deadlock_interval`` and
    SQLAlchemy's engine arguments) and makes the same engines, on the dialect's
    asyncio variant (:mod:`shardsession.coordinator.aio_dialect`) with SQLAlchemy's
    asyncio pool, where a coroutine waiting for a free worker awaits.

    :param shards: shard name -> DSN, or an engine made by
        ``create_async_engine("postgresql+shardsession://...")`` (or its
        ``sync_engine``).
    :raises ImportError: when ``greenlet`` is missing (``pip install 'shardsession[asyncio]'``).
    """
    require_greenlet()
    if isinstance(shards, Mapping):
        given: dict[str, Any] = {}
        for name, target in shards.items():
            if isinstance(target, AsyncEngine):
                target = target.sync_engine
            if isinstance(target, Engine) and not asyncio_capable(target):
                raise not_asyncio_capable(name)
            given[name] = target
        shards = given
    return AsyncShardSet(create_shards(shards, for_asyncio=True, **kwargs))
