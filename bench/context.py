"""What the workloads of one run share: the shards, the sizes, shardsession's engines
and SQLAlchemy's (each started once, on first use, and closed at the end).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import shardsession as ss

from .common import Params
from .model import Layout

__all__ = ["Context", "fill_pool", "start_shards"]


def start_shards(dsns: Mapping[str, str], workers: int = 1) -> ss.ShardSet:
    """shardsession's engines over ``dsns``: a pool of ``workers`` workers per shard
    (one for sequential clients, one per thread for threaded ones), no overflow (a
    connection beyond them would be a leak the benchmark should not hide), every
    worker started before this returns, so no timing pays for a start.
    """
    shards = ss.create_shards(dsns, pool_size=workers, max_overflow=0)
    try:
        shards.run_on_all(lambda shard, engine: fill_pool(engine, workers))
    except BaseException:
        shards.close()
        raise
    return shards


def fill_pool(engine: Any, size: int) -> None:
    """Open ``size`` connections of ``engine`` at once and return them to its pool,
    which keeps them (its ``pool_size`` is at least ``size``).
    """
    conns = []
    try:
        for _ in range(size):
            conns.append(engine.connect())
    finally:
        for conn in conns:
            conn.close()


class Context:
    """The shards, sizes and connections of one benchmark run.

    :param dsns: shard name -> DSN.
    :param params: the sizes of the run.
    """

    def __init__(self, dsns: Mapping[str, str], params: Params | None = None) -> None:
        self.layout = Layout(dsns)
        self.params = params or Params()
        self._tables = False
        self._data: tuple[int, bool] | None = None

    def ensure_data(self, rows: int, *, reference: bool = True) -> None:
        """Make the tables hold exactly accounts ``1..rows`` (and the reference copy),
        unless they already do.
        """
        self.ensure_tables()
        if self._data == (rows, True) or self._data == (rows, reference):
            return
        self.layout.fill(rows, reference=reference)
        self._data = (rows, reference)

    def data_changed(self) -> None:
        """Note that a workload changed the rows: the next :meth:`ensure_data` refills."""
        self._data = None

    def ensure_tables(self) -> None:
        """Create the benchmark's tables once per run (dropped again by :meth:`close`)."""
        if not self._tables:
            self.layout.create_tables()
            self._tables = True

    @cached_property
    def shards(self) -> ss.ShardSet:
        """shardsession's engines, one per shard, each pool holding one worker process
        (the clients are sequential), started here so no timing pays for it.
        """
        return start_shards(self.layout.dsns)

    def session(self, **kw: Any) -> ss.Session:
        """A new shardsession :class:`~shardsession.Session` over :attr:`shards`."""
        return ss.Session(self.shards, **kw)

    @cached_property
    def sa_engines(self) -> dict[str, Any]:
        """SQLAlchemy engines, one per shard."""
        from .alchemy import engines

        return engines(self.layout)

    def sharded_factory(self, *, twophase: bool = False) -> Any:
        """A factory of SQLAlchemy ``ShardedSession`` objects with shardsession's routing."""
        from .alchemy import sharded_session_factory

        return sharded_session_factory(self.layout, self.sa_engines, twophase=twophase)

    def close(self, *, drop: bool = True) -> None:
        """Stop the workers, dispose of the engines and drop the tables."""
        if "shards" in self.__dict__:
            self.__dict__.pop("shards").close()
        if "sa_engines" in self.__dict__:
            for engine in self.__dict__.pop("sa_engines").values():
                engine.dispose()
        if drop and self._tables:
            self.layout.drop_tables()
            self._tables = False

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
