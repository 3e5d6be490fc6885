"""What the workloads of one run share: the shards, the sizes, the shardsession pool
and the SQLAlchemy engines (each started once, on first use, and closed at the end).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import shardsession as ss

from .common import Params
from .model import Layout

__all__ = ["Context"]


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
    def pool(self) -> ss.WorkerPool:
        """shardsession's worker pool: one worker per shard (the clients are sequential)."""
        return ss.create_pool(self.layout.dsns, workers_per_shard=1)

    def session(self, **kw: Any) -> ss.Session:
        """A new shardsession :class:`~shardsession.Session` over :attr:`pool`."""
        return ss.Session(self.pool, **kw)

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
        """Stop the pool, dispose of the engines and drop the tables."""
        if "pool" in self.__dict__:
            self.__dict__.pop("pool").close()
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
