"""shardsession: SQLAlchemy 2.x sessions over many PostgreSQL shards.

Every name of SQLAlchemy's Session API is offered here (they are SQLAlchemy's
own objects), with the sharded :class:`Session` and :func:`sessionmaker`,
:func:`create_shards`, and the names programs commonly import next to them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    asc,
    delete,
    desc,
    event,
    func,
    insert,
    inspect,
    literal,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.horizontal_shard import set_shard_id
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    ORMExecuteState,
    SessionTransaction,
    aliased,
    backref,
    close_all_sessions,
    declared_attr,
    joinedload,
    make_transient,
    make_transient_to_detached,
    mapped_column,
    object_session,
    relationship,
    selectinload,
)
from sqlalchemy.orm.attributes import (
    History,
    del_attribute,
    flag_dirty,
    flag_modified,
    get_attribute,
    get_history,
    init_collection,
    instance_state,
    set_attribute,
    set_committed_value,
)
from sqlalchemy.orm.instrumentation import is_instrumented
from sqlalchemy.orm.util import object_state, was_deleted

from shardsession import exc as exc
from shardsession.coordinator import aio as _aio
from shardsession.coordinator import dialect as _dialect  # registers postgresql+shardsession
from shardsession.coordinator.identity import ShardedIdentity, shard_for_id, shard_numbers
from shardsession.coordinator.rebalance import RebalanceReport, rebalance
from shardsession.coordinator.reference import REPLICATED
from shardsession.coordinator.routing import shard_for_key
from shardsession.coordinator.session import Session, sessionmaker
from shardsession.coordinator.shards import (
    ShardSet,
    create_all,
    create_pool,
    create_shards,
    drop_all,
)
from shardsession.recovery import RecoveryReport, recover

__all__ = [
    "REPLICATED",
    "BigInteger",
    "Boolean",
    "Column",
    "Date",
    "DateTime",
    "DeclarativeBase",
    "Float",
    "ForeignKey",
    "History",
    "Index",
    "Integer",
    "LargeBinary",
    "Mapped",
    "MetaData",
    "Numeric",
    "ORMExecuteState",
    "RebalanceReport",
    "RecoveryReport",
    "Session",
    "SessionTransaction",
    "ShardSet",
    "ShardedIdentity",
    "String",
    "Table",
    "Text",
    "UniqueConstraint",
    "aliased",
    "and_",
    "asc",
    "backref",
    "close_all_sessions",
    "create_all",
    "create_pool",
    "create_shards",
    "declared_attr",
    "del_attribute",
    "delete",
    "desc",
    "drop_all",
    "event",
    "exc",
    "flag_dirty",
    "flag_modified",
    "func",
    "get_attribute",
    "get_history",
    "init_collection",
    "insert",
    "inspect",
    "instance_state",
    "is_instrumented",
    "joinedload",
    "literal",
    "make_transient",
    "make_transient_to_detached",
    "mapped_column",
    "not_",
    "object_session",
    "object_state",
    "or_",
    "rebalance",
    "recover",
    "relationship",
    "select",
    "selectinload",
    "sessionmaker",
    "set_attribute",
    "set_committed_value",
    "set_shard_id",
    "shard_for_id",
    "shard_for_key",
    "shard_numbers",
    "text",
    "update",
    "was_deleted",
]  # fmt: skip

del _dialect

# asyncio (AsyncSession, async_sessionmaker, AsyncShardSet, create_async_shards) runs
# on SQLAlchemy's asyncio extension, which needs greenlet (the asyncio extra): those
# names are imported on first use, and raise an ImportError naming the extra without it.
_ASYNCIO_NAMES = {"AsyncSession": "aio_session", "async_sessionmaker": "aio_session",
                  "AsyncShardSet": "aio_shards", "create_async_shards": "aio_shards"}  # fmt: skip
if TYPE_CHECKING:
    from shardsession.coordinator.aio_session import AsyncSession as AsyncSession
    from shardsession.coordinator.aio_session import async_sessionmaker as async_sessionmaker
    from shardsession.coordinator.aio_shards import AsyncShardSet as AsyncShardSet
    from shardsession.coordinator.aio_shards import create_async_shards as create_async_shards
if _aio.greenlet_installed():
    __all__ += list(_ASYNCIO_NAMES)


def __getattr__(name: str) -> Any:
    module = _ASYNCIO_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'shardsession' has no attribute {name!r}")
    _aio.require_greenlet()
    value = getattr(importlib.import_module(f"shardsession.coordinator.{module}"), name)
    globals()[name] = value
    return value


__version__ = "0.2.0"
