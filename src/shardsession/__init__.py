"""shardsession: the SQLAlchemy 2.x ORM ``Session`` API over many PostgreSQL shards."""

from __future__ import annotations

from shardsession import exc as exc
from shardsession.exc import *  # noqa: F403
from shardsession.orm import *  # noqa: F403
from shardsession.sql import *  # noqa: F403
from shardsession.workers.pool import WorkerPool as WorkerPool
from shardsession.workers.pool import create_pool as create_pool

__version__ = "0.1.0"
