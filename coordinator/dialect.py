"""The SQLAlchemy dialect ``postgresql+shardsession``.

It is SQLAlchemy's psycopg dialect (:class:`PGDialect_psycopg`) with a different
DBAPI module: :mod:`shardsession.coordinator.dbapi`, whose connections are worker
processes.  Everything SQLAlchemy does with a connection -- compiling, type
processing, pooling, pre-ping, invalidation on disconnect, isolation levels,
two-phase commit -- works as with psycopg.  The URL is psycopg's::

    create_engine("postgresql+shardsession://user:pw@host/db")

and two extra connect arguments are understood: ``shardsession_shard`` (the
shard's name, used in messages) and ``shardsession_start_method``
(``"forkserver"`` or ``"spawn"``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from shardsession.coordinator import reference
from sqlalchemy import event
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.exc import DisconnectionError

__all__ = ["PGDialect_shardsession"]


class PGDialect_shardsession(PGDialect_psycopg):
    """PostgreSQL through shardsession's worker processes."""

    driver = "shardsession"
    supports_statement_cache = True
    supports_server_side_cursors = True

    def __init__(self, **kwargs: Any) -> None:
        # hstore's OID lookup needs psycopg's own connection object, in this process
        kwargs.setdefault("use_native_hstore", False)
        super().__init__(**kwargs)

    @classmethod
    def import_dbapi(cls) -> ModuleType:
        """The DBAPI module: :mod:`shardsession.coordinator.dbapi`."""
        from shardsession.coordinator import dbapi

        return dbapi

    @classmethod
    def get_async_dialect_cls(cls, url: Any) -> type[PGDialect_shardsession]:
        """The asyncio variant, what ``create_async_engine`` uses
        (:mod:`shardsession.coordinator.aio_dialect`)."""
        from shardsession.coordinator.aio_dialect import PGDialectAsync_shardsession

        return PGDialectAsync_shardsession

    def _type_info_fetch(self, connection: Any, name: str) -> None:
        return None

    # A write to a reference table on a connection of a sharded Session's transaction
    # goes to every shard of that transaction (shardsession.coordinator.reference).
    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None
                   ) -> None:  # fmt: skip
        """``cursor.execute``; a write to a reference table runs on every shard."""
        if not _replicated(cursor, statement, parameters, context, many=False):
            cursor.execute(statement, parameters)

    def do_executemany(self, cursor: Any, statement: str, parameters: Any, context: Any = None
                       ) -> None:  # fmt: skip
        """``cursor.executemany``; a write to a reference table runs on every shard."""
        if not _replicated(cursor, statement, parameters, context, many=True):
            cursor.executemany(statement, parameters)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        """``cursor.execute``; a write to a reference table runs on every shard."""
        if not _replicated(cursor, statement, None, context, many=False):
            cursor.execute(statement)

    @classmethod
    def engine_created(cls, engine: Any) -> None:
        """Set up every ``postgresql+shardsession`` engine: its pool never lends a
        worker that died while it was out (it is replaced at checkout), and each
        shard has the two-phase commit log and the deadlock detector's victim
        notes before its first transaction."""
        event.listen(engine, "checkout", _refuse_dead_worker)
        event.listen(engine, "first_connect", _create_commit_log)

    def do_ping(self, dbapi_connection: Any) -> bool:
        """One round trip through the worker to its server."""
        dbapi_connection.ping(True)
        return True

    # Two-phase commit goes through the DBAPI's tpc_* methods, where the session's
    # commit coordinator (when there is one) decides what each shard is sent.
    def do_begin_twophase(self, connection: Any, xid: Any) -> None:
        """``tpc_begin`` on the worker connection."""
        connection.connection.dbapi_connection.tpc_begin(xid)

    def do_prepare_twophase(self, connection: Any, xid: Any) -> None:
        """``tpc_prepare`` on the worker connection."""
        connection.connection.dbapi_connection.tpc_prepare()

    def do_rollback_twophase(
        self, connection: Any, xid: Any, is_prepared: bool = True, recover: bool = False
    ) -> None:
        """``tpc_rollback`` on the worker connection."""
        dbapi_connection = connection.connection.dbapi_connection
        dbapi_connection.tpc_rollback(xid if recover else None)

    def do_commit_twophase(
        self, connection: Any, xid: Any, is_prepared: bool = True, recover: bool = False
    ) -> None:
        """``tpc_commit`` on the worker connection."""
        dbapi_connection = connection.connection.dbapi_connection
        dbapi_connection.tpc_commit(xid if recover else None)


def _replicated(cursor: Any, statement: str, parameters: Any, context: Any, *, many: bool
                ) -> bool:  # fmt: skip
    """Whether the statement was a reference-table write, run on every shard already."""
    return (
        context is not None
        and context.is_crud
        and cursor.connection.owner is not None
        and reference.replicate(cursor, statement, parameters, context, many=many)
    )


def _refuse_dead_worker(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    # A worker killed while its connection was checked out (say, inside a two-phase
    # commit), or one that exited in the pool when its server ended its connection
    # (an administrator's pg_terminate_backend, a server restart): the pool replaces it.
    if dbapi_connection.worker_exited():
        raise DisconnectionError(f"the worker of shard {dbapi_connection.shard!r} is gone")


def _create_commit_log(dbapi_connection: Any, record: Any) -> None:
    from shardsession.deadlock import VICTIMS_DDL
    from shardsession.twophase import COMMIT_LOG_DDL

    cursor = dbapi_connection.cursor()
    cursor.execute(COMMIT_LOG_DDL)
    cursor.execute(VICTIMS_DDL)  # the deadlock detector's notes to its victims
    dbapi_connection.commit()


dialect = PGDialect_shardsession

registry.register("postgresql.shardsession", "shardsession.coordinator.dialect", "dialect")
registry.register(
    "postgresql.shardsession_async", "shardsession.coordinator.aio_dialect", "dialect"
)
