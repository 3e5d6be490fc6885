"""The sharded :class:`AsyncSession` and :class:`async_sessionmaker`.

They are SQLAlchemy's :class:`~sqlalchemy.ext.asyncio.AsyncSession` and
:class:`~sqlalchemy.ext.asyncio.async_sessionmaker` whose synchronous session
(``sync_session_class``) is the sharded :class:`~shardsession.Session`.
SQLAlchemy runs that session in a greenlet for every awaited call, so routing,
scatter-gather with exact merging and the two-phase commit are the synchronous
session's own; what differs is waiting: the worker connections await their
replies on the event loop (:mod:`.aio`), so other coroutines run meanwhile, and a
statement sent to several shards still waits for all of them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shardsession.coordinator.aio import require_greenlet
from shardsession.coordinator.aio_shards import (
    AsyncShardSet,
    asyncio_capable,
    not_asyncio_capable,
)
from shardsession.coordinator.session import Session, shards_argument
from shardsession.coordinator.shards import ShardSet
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession as _SAAsyncSession
from sqlalchemy.ext.asyncio import async_sessionmaker as _SAAsyncSessionmaker
from sqlalchemy.orm import Session as _SASession

from shardsession.exc import ArgumentError

__all__ = ["AsyncSession", "async_sessionmaker"]


def _sync_shards(shards: Any) -> Mapping[str, Engine]:
    """The synchronous engines of ``shards`` (the ShardSet itself when there is one,
    so that the session's commit coordinator knows its recovery DSNs)."""
    if isinstance(shards, AsyncShardSet):
        return shards.sync
    if not isinstance(shards, Mapping) or not shards:
        raise ArgumentError(
            "AsyncSession needs shards: AsyncSession(create_async_shards({'s0': dsn, ...}))"
        )
    engines: dict[str, Engine] = {}
    for name, engine in shards.items():
        if isinstance(engine, AsyncEngine):
            engine = engine.sync_engine
        if not isinstance(engine, Engine) or not asyncio_capable(engine):
            raise not_asyncio_capable(name)
        engines[name] = engine
    return shards if isinstance(shards, ShardSet) else engines


class AsyncSession(_SAAsyncSession):
    """SQLAlchemy's asyncio session over several shards.

    ``AsyncSession(shards)`` or ``AsyncSession(shards=shards)``, where ``shards`` is an
    :class:`~shardsession.AsyncShardSet` (from :func:`~shardsession.create_async_shards`),
    its ``sync`` :class:`~shardsession.ShardSet`, or a mapping of shard name to
    asyncio shardsession engine.  Other keyword arguments are those of
    :class:`~shardsession.Session` (the choosers, ``twophase``) and of SQLAlchemy's
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`.

    ``sync_session_class`` is :class:`~shardsession.Session` (a subclass of it may
    be given); :attr:`sync_session` is that sharded session.
    """

    sync_session_class: type[_SASession] = Session

    def __init__(
        self,
        bind: Any = None,
        *,
        shards: Any = None,
        sync_session_class: type[_SASession] | None = None,
        **kw: Any,
    ) -> None:
        require_greenlet()
        shards = shards_argument(
            bind, shards, "AsyncSession(shards=create_async_shards({'s0': dsn, ...}))"
        )
        cls = sync_session_class or self.sync_session_class
        if not (isinstance(cls, type) and issubclass(cls, Session)):
            raise ArgumentError(
                f"sync_session_class must be shardsession.Session or a subclass, not {cls!r}"
            )
        super().__init__(sync_session_class=cls, shards=_sync_shards(shards), **kw)

    @property
    def shards(self) -> dict[str, Any]:
        """Shard name -> the synchronous Engine the sharded session uses."""
        return self.sync_session.shards  # type: ignore[no-any-return,attr-defined]


class async_sessionmaker(_SAAsyncSessionmaker[AsyncSession]):
    """SQLAlchemy's :class:`~sqlalchemy.ext.asyncio.async_sessionmaker` making sharded
    asyncio sessions.

    ``async_sessionmaker(shards)`` or ``async_sessionmaker(shards=shards,
    **session_kwargs)``; ``class_`` defaults to :class:`AsyncSession`::

        shards = ss.create_async_shards({"s0": dsn0, "s1": dsn1})
        Session = ss.async_sessionmaker(shards, expire_on_commit=False)
        async with Session() as session:
            ...
    """

    def __init__(
        self, bind: Any = None, *, class_: type[AsyncSession] = AsyncSession, **kw: Any
    ) -> None:
        if isinstance(bind, Mapping):
            kw.setdefault("shards", bind)
            bind = None
        super().__init__(bind, class_=class_, **kw)
