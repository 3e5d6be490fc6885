"""Exceptions raised by shardsession.

The names follow SQLAlchemy's where the meaning is the same
(:class:`InvalidRequestError`, :class:`IntegrityError`, ...), so code that catches
``sqlalchemy.exc`` errors can catch these after changing its imports.  Errors that
only exist because the data lives on several shards or in worker processes have
names of their own (:class:`ShardNotFoundError`, :class:`WorkerLostError`,
:class:`TwoPhaseError`, ...).  Every message names what went wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ClusterError",
    "CompileError",
    "ConfigurationError",
    "DBAPIError",
    "DataError",
    "DetachedInstanceError",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "InvalidRequestError",
    "MultipleResultsFound",
    "NoResultFound",
    "NotSupportedError",
    "ObjectDeletedError",
    "OperationalError",
    "PendingRollbackError",
    "PoolTimeoutError",
    "PortInUseError",
    "PostgresNotFoundError",
    "ProgrammingError",
    "ShardNotFoundError",
    "ShardSessionError",
    "StaleDataError",
    "TwoPhaseCommitPendingWarning",
    "TwoPhaseError",
    "TwoPhaseNotEnabledError",
    "UnmappedClassError",
    "UnmappedInstanceError",
    "WorkerLostError",
]


class ShardSessionError(Exception):
    """Base class of every error shardsession raises on purpose."""


class ArgumentError(ShardSessionError):
    """A function or constructor was given an argument it cannot use."""


class InvalidRequestError(ShardSessionError):
    """The request cannot be carried out in the current state (SQLAlchemy's meaning)."""


class CompileError(ShardSessionError):
    """A SQL expression could not be compiled to PostgreSQL text."""


class NoResultFound(InvalidRequestError):
    """A result that must hold exactly one row (``one()``, ``get_one()``) held none."""


class MultipleResultsFound(InvalidRequestError):
    """A result that must hold at most one row held more."""


class PendingRollbackError(InvalidRequestError):
    """A transaction failed earlier and ``rollback()`` must be called before going on."""


class DetachedInstanceError(InvalidRequestError):
    """An attribute of an object that belongs to no session could not be loaded."""


class ObjectDeletedError(InvalidRequestError):
    """An expired object's row no longer exists on its shard."""


class StaleDataError(InvalidRequestError):
    """An UPDATE or DELETE matched a different number of rows than the flush expected."""


class UnmappedInstanceError(InvalidRequestError):
    """An object that is not an instance of a mapped class was handed to the ORM."""


class UnmappedClassError(InvalidRequestError):
    """A class that is not mapped was handed to the ORM."""


class ShardNotFoundError(InvalidRequestError):
    """A shard id names no shard of the pool, or an object's shard cannot be determined."""


class ConfigurationError(ShardSessionError):
    """The environment or a server is not set up the way shardsession needs."""


class TwoPhaseNotEnabledError(ConfigurationError):
    """A PostgreSQL server has ``max_prepared_transactions = 0`` (two-phase commit off)."""


class ClusterError(ShardSessionError):
    """The embedded PostgreSQL cluster could not be created, started or stopped."""


class PostgresNotFoundError(ClusterError):
    """No PostgreSQL server binaries were found on this machine."""


class PortInUseError(ClusterError):
    """The TCP port asked for is already taken by another program."""


class WorkerLostError(ShardSessionError):
    """A worker process died; the transaction it held is gone (committed data is intact)."""


class PoolTimeoutError(ShardSessionError, TimeoutError):
    """No worker of a shard became free within the pool's checkout timeout."""


class TwoPhaseError(ShardSessionError):
    """A two-phase commit could not be completed as asked."""


class TwoPhaseCommitPendingWarning(UserWarning):
    """A decided commit could not yet finish on some shards; recovery will finish it."""


class DBAPIError(ShardSessionError):
    """An error raised by PostgreSQL (through psycopg) while running a statement.

    :ivar sqlstate: the five-character SQLSTATE code PostgreSQL reported, if any.
    :ivar shard: the name of the shard the statement ran on, if known.
    :ivar statement: the SQL text that failed, if known.
    :ivar orig: the original psycopg exception, when it is available in this process.
    """

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        shard: str | None = None,
        statement: str | None = None,
        orig: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.shard = shard
        self.statement = statement
        self.orig = orig


class InterfaceError(DBAPIError):
    """The connection to PostgreSQL itself failed (psycopg's ``InterfaceError``)."""


class OperationalError(DBAPIError):
    """PostgreSQL could not run the statement for operational reasons (connection, timeout)."""


class IntegrityError(DBAPIError):
    """A constraint was violated (unique, foreign key, not null, check)."""


class DataError(DBAPIError):
    """A value was invalid for its type or out of range."""


class ProgrammingError(DBAPIError):
    """The SQL was wrong: unknown table or column, syntax error, wrong parameters."""


class InternalError(DBAPIError):
    """PostgreSQL reported an internal error."""


class NotSupportedError(DBAPIError):
    """PostgreSQL does not support what was asked."""
