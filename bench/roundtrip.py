"""Worker round trip: an empty request and a 1-row query through a worker,
against the same query over a direct psycopg connection, in the same run."""

from __future__ import annotations

from typing import Any

import psycopg

from .common import best_of, per_op_us
from shardsession import create_pool
from shardsession import protocol as p

QUERY = "SELECT id, owner FROM bench_roundtrip WHERE id = %s"


def run(dsns: dict[str, str], n: int = 2000, repeat: int = 5) -> list[dict[str, Any]]:
    """Measure; return one row per operation with microseconds and ratios."""
    dsn = dsns["s0"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_roundtrip")
        conn.execute("CREATE TABLE bench_roundtrip (id int PRIMARY KEY, owner text)")
        conn.execute("INSERT INTO bench_roundtrip VALUES (1, 'alice')")
    pool = create_pool({"s0": dsn}, workers_per_shard=1)
    direct = psycopg.connect(dsn, autocommit=True)
    direct.prepare_threshold = 2
    try:
        worker = pool.checkout("s0")
        ping = p.Ping()
        query = p.Execute(QUERY, (1,))

        def worker_empty() -> int:
            for _ in range(n):
                worker.request(ping)
            return n

        def worker_query() -> int:
            for _ in range(n):
                worker.request(query)
            return n

        def direct_empty() -> int:
            for _ in range(n):
                direct.execute("")
            return n

        def direct_query() -> int:
            for _ in range(n):
                direct.execute(QUERY, (1,)).fetchall()
            return n

        worker_query()  # warm up prepared statements on both sides
        direct_query()
        results = {
            name: per_op_us(*best_of(fn, repeat))
            for name, fn in [
                ("worker empty request", worker_empty),
                ("worker 1-row query", worker_query),
                ("psycopg empty statement", direct_empty),
                ("psycopg 1-row query", direct_query),
            ]
        }
        worker.request(p.Rollback())
        pool.checkin(worker)
    finally:
        direct.close()
        pool.close()
    base_query = results["psycopg 1-row query"]
    return [
        {"operation": name, "us_per_op": us, "vs_psycopg_1row": us / base_query}
        for name, us in results.items()
    ]
