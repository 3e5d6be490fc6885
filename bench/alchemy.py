"""The SQLAlchemy side: engines on SQLAlchemy's own psycopg dialect, and a
``ShardedSession`` routing :class:`bench.model.Account` exactly as shardsession does.

The three choosers use :meth:`bench.model.Layout.shard_of_tenant` -- shardsession's
own rendezvous hash of the ``tenant_id`` -- so both libraries put every row on the
same shard.  The ``execute_chooser`` narrows a statement to the shards of the
``tenant_id`` values its WHERE clause compares with ``==`` or ``IN``, and otherwise
sends it to every shard; the ``identity_chooser`` knows nothing from a bare primary
key and answers every shard (a lazy load stays on its parent's shard).

Needs the ``bench`` extra (``pip install "shardsession[bench]"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.ext.horizontal_shard import ShardedSession
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter

from .model import TABLE, Layout

__all__ = ["engines", "plain_session_factory", "sharded_session_factory"]


def engines(layout: Layout, *, pool_size: int = 2, max_overflow: int = 10) -> dict[str, Engine]:
    """One engine per shard, each connecting with the very DSN the other sides use.

    :param pool_size: connections each engine's pool keeps.
    :param max_overflow: extra connections each may open when all are in use.
    """
    out: dict[str, Engine] = {}
    for shard in layout.shard_ids:
        dsn = layout.dsns[shard]
        out[shard] = create_engine(
            "postgresql+psycopg://",
            creator=lambda dsn=dsn: psycopg.connect(dsn),
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
    return out


def _tenant_values(statement: Any) -> list[Any]:
    """The ``tenant_id`` values a statement's WHERE clause pins with ``==`` or ``IN``."""
    where = getattr(statement, "whereclause", None)
    if where is None:
        return []
    values: list[Any] = []
    for element in visitors.iterate(where):
        if not isinstance(element, BinaryExpression):
            continue
        left, right = element.left, element.right
        if getattr(left, "key", None) != "tenant_id" or not isinstance(right, BindParameter):
            continue
        if getattr(getattr(left, "table", None), "name", None) != TABLE:
            continue
        if element.operator is operators.eq:
            values.append(right.effective_value)
        elif element.operator is operators.in_op:
            values.extend(right.effective_value or ())
    return values


def sharded_session_factory(
    layout: Layout, shard_engines: dict[str, Engine], *, twophase: bool = False
) -> Callable[[], ShardedSession]:
    """A factory of ``ShardedSession`` objects routing by shardsession's hash.

    :param layout: the shards and their routing.
    :param shard_engines: from :func:`engines`.
    :param twophase: commit with two-phase commit when several shards were used.
    """
    all_shards = list(layout.shard_ids)

    def shard_chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
        if instance is None:
            raise ValueError("the benchmark routes only objects; pass bind_arguments shard_id")
        return layout.shard_of_tenant(instance.tenant_id)

    def identity_chooser(
        mapper: Any, primary_key: Any, *, lazy_loaded_from: Any, **kw: Any
    ) -> Iterable[str]:
        if lazy_loaded_from is not None and lazy_loaded_from.identity_token is not None:
            return [lazy_loaded_from.identity_token]
        return all_shards

    def execute_chooser(orm_context: Any) -> Iterable[str]:
        parent = orm_context.lazy_loaded_from
        if parent is not None and parent.identity_token is not None:
            return [parent.identity_token]
        values = _tenant_values(orm_context.statement)
        if not values:
            return all_shards
        chosen = {layout.shard_of_tenant(v) for v in values}
        return [s for s in all_shards if s in chosen]

    def make() -> ShardedSession:
        return ShardedSession(
            shards=shard_engines,
            shard_chooser=shard_chooser,
            identity_chooser=identity_chooser,
            execute_chooser=execute_chooser,
            twophase=twophase,
        )

    return make


def plain_session_factory(engine: Engine) -> Callable[[], Session]:
    """A factory of plain (unsharded) SQLAlchemy sessions on one shard's database."""

    def make() -> Session:
        return Session(engine)

    return make
