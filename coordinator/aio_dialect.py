"""The asyncio variant of the ``postgresql+shardsession`` dialect.

SQLAlchemy's :func:`~sqlalchemy.ext.asyncio.create_async_engine` asks a
dialect for its asyncio variant (``get_async_dialect_cls``); for
``postgresql+shardsession://`` it is :class:`PGDialectAsync_shardsession`, also
reachable by name as ``postgresql+shardsession_async://``.  It is the
synchronous dialect (the same compiling, pooling, pre-ping, two-phase hooks and
per-engine set-up) with three differences:

* ``is_async``: SQLAlchemy's :class:`~sqlalchemy.ext.asyncio.AsyncEngine`
  accepts it, and its engines' pools are SQLAlchemy's
  :class:`~sqlalchemy.pool.AsyncAdaptedQueuePool`, where a coroutine waiting for
  a worker awaits instead of blocking the loop;
* its DBAPI is :mod:`shardsession.coordinator.aio`, whose connections await
  their workers' replies on the event loop when run from asyncio code, and block
  otherwise (so recovery, ``create_all`` and synchronous sessions still work on
  the same engines);
* ``do_terminate`` kills a worker without waiting, for the connections the
  asyncio pool cannot close cleanly.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from shardsession.coordinator.dialect import PGDialect_shardsession

__all__ = ["PGDialectAsync_shardsession"]


class PGDialectAsync_shardsession(PGDialect_shardsession):
    """PostgreSQL through shardsession's worker processes, for asyncio engines."""

    is_async = True
    has_terminate = True
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> ModuleType:
        """The DBAPI module: :mod:`shardsession.coordinator.aio`.

        :raises ImportError: when ``greenlet`` (the ``asyncio`` extra) is missing.
        """
        from shardsession.coordinator import aio

        aio.require_greenlet()
        return aio

    @classmethod
    def get_async_dialect_cls(cls, url: Any) -> type[PGDialectAsync_shardsession]:
        """This dialect itself."""
        return cls

    def do_terminate(self, dbapi_connection: Any) -> None:
        """Kill the worker without waiting for it."""
        dbapi_connection.terminate()


dialect = PGDialectAsync_shardsession
