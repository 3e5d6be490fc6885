"""shardsession: the SQLAlchemy 2.x ORM ``Session`` API over many PostgreSQL shards."""

from __future__ import annotations

from shardsession import event as event
from shardsession import exc as exc
from shardsession.coordinator.execute_state import ORMExecuteState as ORMExecuteState
from shardsession.coordinator.options import set_shard_id as set_shard_id
from shardsession.coordinator.session import Session as Session
from shardsession.coordinator.session import close_all_sessions as close_all_sessions
from shardsession.coordinator.session import make_transient as make_transient
from shardsession.coordinator.session import (
    make_transient_to_detached as make_transient_to_detached,
)
from shardsession.coordinator.session import object_session as object_session
from shardsession.coordinator.session import sessionmaker as sessionmaker
from shardsession.coordinator.transaction import SessionTransaction as SessionTransaction
from shardsession.coordinator.transaction import (
    SessionTransactionOrigin as SessionTransactionOrigin,
)
from shardsession.exc import *  # noqa: F403
from shardsession.orm import *  # noqa: F403
from shardsession.recovery import RecoveryReport as RecoveryReport
from shardsession.recovery import recover as recover
from shardsession.sql import *  # noqa: F403
from shardsession.workers.pool import WorkerPool as WorkerPool
from shardsession.workers.pool import create_pool as create_pool

__version__ = "0.1.0"
