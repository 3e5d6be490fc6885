"""Exceptions raised by shardsession.

Database errors reach the application exactly as SQLAlchemy wraps them
(:class:`sqlalchemy.exc.IntegrityError`, :class:`sqlalchemy.exc.OperationalError`,
...), with the shard named in the message; every SQLAlchemy exception class is
importable from here under its own name, so ``except ss.exc.IntegrityError``
and ``except sqlalchemy.exc.IntegrityError`` catch the same errors.

Errors that exist only because the data lives on several shards or in worker
processes have classes of their own, each a subclass of the SQLAlchemy class
with the same meaning: :class:`ShardNotFoundError`, :class:`CrossShardError`,
:class:`TwoPhaseError`, :class:`WorkerLostError`.  Every message names the
shard, the object and what to do.
"""

from __future__ import annotations

from sqlalchemy.exc import *  # noqa: F403
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InvalidRequestError,
    OperationalError,
    SAWarning,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = [
    "ArgumentError",
    "ClusterError",
    "ConfigurationError",
    "CrossShardError",
    "DBAPIError",
    "InvalidRequestError",
    "OperationalError",
    "PoolTimeoutError",
    "PortInUseError",
    "PostgresNotFoundError",
    "ReferenceDivergedError",
    "SQLAlchemyError",
    "ShardNotFoundError",
    "ShardNumberError",
    "ShardSessionError",
    "ShardUnreachableError",
    "ShardedIdentityWarning",
    "TwoPhaseCommitPendingWarning",
    "TwoPhaseError",
    "TwoPhaseNotEnabledError",
    "WorkerLostError",
]


class ShardSessionError(SQLAlchemyError):
    """Base class of the errors that only shardsession raises."""


class ShardNotFoundError(ShardSessionError, InvalidRequestError):
    """A statement or object names a shard the session does not have, or none can be chosen."""


class CrossShardError(ShardSessionError, InvalidRequestError):
    """What was asked needs rows of several shards together (a foreign key across shards,
    a merge that cannot be exact); the message names the fix."""


class ReferenceDivergedError(ShardSessionError, InvalidRequestError):
    """The copies of a reference table differ between shards: a write changed a different
    number of rows (or returned different rows) on some of them.  The message names the
    shards that differ; nothing of the write is kept once the transaction rolls back."""


class ConfigurationError(ShardSessionError, ArgumentError):
    """The shards or the pool are configured in a way that cannot work."""


class ShardNumberError(ConfigurationError):
    """Shards' stable numbers (the high bits of :class:`~shardsession.ShardedIdentity` ids)
    clash or are unreadable: two shards hold the same number, or a shard's
    ``shardsession_shard`` view is malformed; the message says how to fix it."""


class ShardedIdentityWarning(SAWarning):
    """A class placed by ``__shard_key__`` has an autoincrement integer primary key that
    does not hold the key, so its ids repeat across shards; the message names the fixes
    (:class:`~shardsession.ShardedIdentity`, the key in the primary key, or
    ``autoincrement=False``).  Emitted once per such column, when mappers are configured."""


class TwoPhaseNotEnabledError(ConfigurationError):
    """A shard's server has ``max_prepared_transactions = 0``: two-phase commit cannot run."""


class ShardUnreachableError(ShardSessionError):
    """A shard's server could not be reached (checks and recovery name the shard)."""


class TwoPhaseError(ShardSessionError, InvalidRequestError):
    """A two-phase commit failed before its decision: every shard was rolled back."""


class TwoPhaseCommitPendingWarning(UserWarning):
    """The decision to commit was recorded, but a participant was not reached to finish it;
    recovery completes it."""


class WorkerLostError(ShardSessionError):
    """A worker process died or its reply was lost; the transaction it held is gone."""


class ClusterError(ShardSessionError):
    """The embedded PostgreSQL cluster could not be set up, started or stopped."""


class PostgresNotFoundError(ClusterError):
    """No PostgreSQL server binaries were found."""


class PortInUseError(ClusterError):
    """The requested port is taken by another program."""
