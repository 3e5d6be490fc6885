"""The benchmark's data: one ``account`` table, sharded by ``tenant_id``, on every side.

Every side (shardsession, SQLAlchemy's ``ShardedSession`` and plain ``Session``, raw
psycopg) works on the same tables, created here with plain DDL, and routes a row with
the same function: shardsession's own rendezvous hash of the ``tenant_id`` over the
shard names (:func:`shardsession.shard_for_key`).  Both ORM sides map the table with
the same plain SQLAlchemy declarative class, :class:`Account`: its ``__shard_key__``
routes it in a shardsession ``Session`` and means nothing to SQLAlchemy's sessions.

The rows are given ids ``1..N``; their other values are functions of the id, so every
check can compute the expected answer, and an unsharded copy (``account_all`` in the
first shard's database) gives the reference answer of the cross-shard queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg import sql

import shardsession as ss
from shardsession import shard_for_key

__all__ = [
    "GID_PREFIX",
    "REFERENCE",
    "TABLE",
    "TENANTS",
    "Account",
    "Base",
    "Layout",
    "ShardConnections",
    "balance_of",
    "owner_of",
    "row_of",
    "tenant_of",
]

TABLE = "account"
#: the unsharded copy of every row, in the first shard's database: the reference answer
REFERENCE = "account_all"
#: distinct tenant ids; consecutive ids belong to consecutive tenants, so consecutive
#: objects go to different shards (what defeats ShardedSession's batching)
TENANTS = 1000

_DDL = "CREATE TABLE {name} (id bigint PRIMARY KEY, tenant_id int NOT NULL, owner text NOT NULL, balance bigint NOT NULL)"  # noqa: E501

T = TypeVar("T")

#: the prepared-transaction ids of the raw psycopg side start with this; what a crashed
#: run left prepared is rolled back when the tables are next created or dropped
GID_PREFIX = "shardsession-bench-"


def _rollback_leftovers(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
        "AND starts_with(gid, %s)",
        (GID_PREFIX,),
    ).fetchall()
    for (gid,) in rows:
        conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def tenant_of(id_: int) -> int:
    """The tenant of account ``id_``."""
    return id_ % TENANTS


def balance_of(id_: int) -> int:
    """The initial balance of account ``id_``."""
    return id_ * 37 % 10_000


def owner_of(id_: int) -> str:
    """The owner of account ``id_``."""
    return f"owner-{id_}"


def row_of(id_: int) -> tuple[int, int, str, int]:
    """The row ``(id, tenant_id, owner, balance)`` of account ``id_``."""
    return (id_, tenant_of(id_), owner_of(id_), balance_of(id_))


class Base(ss.DeclarativeBase):
    """The declarative base of the benchmark's model (SQLAlchemy's own)."""


class Account(Base):
    """The table, mapped once for every ORM side.

    A shardsession ``Session`` routes it by its ``__shard_key__``; the
    ``ShardedSession`` of :mod:`bench.alchemy` by its choosers, with the same hash.
    """

    __tablename__ = TABLE
    __shard_key__ = "tenant_id"

    id: ss.Mapped[int] = ss.mapped_column(ss.BigInteger, primary_key=True, autoincrement=False)
    tenant_id: ss.Mapped[int] = ss.mapped_column(ss.Integer)
    owner: ss.Mapped[str] = ss.mapped_column(ss.Text)
    balance: ss.Mapped[int] = ss.mapped_column(ss.BigInteger)


class Layout:
    """The shards of one run and where each tenant's rows live.

    :param dsns: shard name -> libpq DSN.
    """

    def __init__(self, dsns: Mapping[str, str]) -> None:
        self.dsns = dict(dsns)
        self.shard_ids: list[str] = sorted(self.dsns)
        self._tenant_shard = [shard_for_key(self.shard_ids, t) for t in range(TENANTS)]
        #: the database holding the unsharded reference table
        self.reference_dsn = self.dsns[self.shard_ids[0]]

    def shard_of_tenant(self, tenant_id: int) -> str:
        """The shard of ``tenant_id`` (shardsession's routing)."""
        if 0 <= tenant_id < TENANTS:
            return self._tenant_shard[tenant_id]
        return shard_for_key(self.shard_ids, tenant_id)

    def shard_of(self, id_: int) -> str:
        """The shard holding account ``id_``."""
        return self._tenant_shard[tenant_of(id_)]

    def tenants_on(self, shard: str) -> list[int]:
        """The tenant ids routed to ``shard``."""
        return [t for t, s in enumerate(self._tenant_shard) if s == shard]

    def ids_on(self, shard: str, ids: Iterable[int]) -> list[int]:
        """The ids among ``ids`` that live on ``shard``."""
        return [i for i in ids if self.shard_of(i) == shard]

    # -- tables ------------------------------------------------------------------

    def create_tables(self) -> None:
        """(Re)create ``account`` on every shard and the reference table, empty."""
        for shard, dsn in self.dsns.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                _rollback_leftovers(conn)
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
                conn.execute(_DDL.format(name=TABLE))
                if shard == self.shard_ids[0]:
                    conn.execute(f"DROP TABLE IF EXISTS {REFERENCE}")
                    conn.execute(_DDL.format(name=REFERENCE))

    def drop_tables(self) -> None:
        """Drop the benchmark's tables from every shard."""
        for shard, dsn in self.dsns.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                _rollback_leftovers(conn)
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
                if shard == self.shard_ids[0]:
                    conn.execute(f"DROP TABLE IF EXISTS {REFERENCE}")

    def truncate(self) -> None:
        """Empty ``account`` on every shard."""
        for dsn in self.dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"TRUNCATE {TABLE}")

    def fill(self, rows: int, *, reference: bool = True) -> None:
        """Give every shard exactly its accounts among ids ``1..rows`` (and the reference
        table all of them), generated by the server, then VACUUM ANALYZE so no side
        pays for hint bits or statistics the one before it left.
        """
        select = (
            f"SELECT g, g %% {TENANTS}, 'owner-' || g, g * 37 %% 10000 "
            "FROM generate_series(1, %(n)s) AS g"
        )
        for shard, dsn in self.dsns.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"TRUNCATE {TABLE}")
                conn.execute(
                    f"INSERT INTO {TABLE} {select} WHERE g %% {TENANTS} = ANY(%(tenants)s)",
                    {"n": rows, "tenants": self.tenants_on(shard)},
                )
                conn.execute(f"VACUUM ANALYZE {TABLE}")
                if reference and shard == self.shard_ids[0]:
                    conn.execute(f"TRUNCATE {REFERENCE}")
                    conn.execute(f"INSERT INTO {REFERENCE} {select}", {"n": rows})
                    conn.execute(f"VACUUM ANALYZE {REFERENCE}")

    def reference(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` (naming the table ``account_all``) on the unsharded reference table."""
        with psycopg.connect(self.reference_dsn) as conn:
            return conn.execute(sql, params).fetchall()

    def fingerprints(self) -> dict[str, tuple[int, int, int]]:
        """Per shard: ``(count, sum of ids, sum of balances)`` of ``account``."""
        out = {}
        for shard, dsn in self.dsns.items():
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    f"SELECT count(*), coalesce(sum(id), 0), coalesce(sum(balance), 0) FROM {TABLE}"
                ).fetchone()
                assert row is not None
                out[shard] = (int(row[0]), int(row[1]), int(row[2]))
        return out

    def expected_fingerprints(self, rows: int) -> dict[str, tuple[int, int, int]]:
        """What :meth:`fingerprints` must say after ids ``1..rows`` were written."""
        out = {s: [0, 0, 0] for s in self.shard_ids}
        for i in range(1, rows + 1):
            f = out[self.shard_of(i)]
            f[0] += 1
            f[1] += i
            f[2] += balance_of(i)
        return {s: (f[0], f[1], f[2]) for s, f in out.items()}

    def balances(self, ids: Iterable[int]) -> dict[int, int]:
        """The current balance of each account of ``ids``, read from its shard."""
        wanted: dict[str, list[int]] = {}
        for i in ids:
            wanted.setdefault(self.shard_of(i), []).append(i)
        out: dict[int, int] = {}
        for shard, part in wanted.items():
            with psycopg.connect(self.dsns[shard]) as conn:
                cur = conn.execute(f"SELECT id, balance FROM {TABLE} WHERE id = ANY(%s)", (part,))
                out.update((int(i), int(b)) for i, b in cur)
        return out


class ShardConnections:
    """The raw psycopg side: one connection per shard and one thread per shard.

    :param layout: the shards.
    :param autocommit: open the connections in autocommit mode.
    """

    def __init__(self, layout: Layout, *, autocommit: bool = False) -> None:
        self.layout = layout
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        try:
            for shard in layout.shard_ids:
                self.conns[shard] = psycopg.connect(layout.dsns[shard], autocommit=autocommit)
        except BaseException:
            self.close()
            raise
        self.executor = ThreadPoolExecutor(
            max_workers=len(self.conns), thread_name_prefix="bench-psycopg"
        )

    def each(
        self, fn: Callable[[str, psycopg.Connection[Any]], T], shards: Iterable[str] | None = None
    ) -> dict[str, T]:
        """Run ``fn(shard, conn)`` on every shard (or ``shards``) at once; their results."""
        chosen = list(self.conns) if shards is None else list(shards)
        futures = {s: self.executor.submit(fn, s, self.conns[s]) for s in chosen}
        return {s: f.result() for s, f in futures.items()}

    def close(self) -> None:
        """Close the connections and stop the threads."""
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown(wait=True)
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def __enter__(self) -> ShardConnections:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
