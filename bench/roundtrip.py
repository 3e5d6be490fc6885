"""Workload 8 -- worker round trip: an empty request and a 1-row query through a
worker process, against the same over a direct psycopg connection, in the same run.

The worker is the DBAPI connection of one shard's engine, checked out of its pool
with ``engine.raw_connection()``; requests go straight to it
(``dbapi_connection.request(protocol.Ping())``), without SQLAlchemy.  The empty
request is answered by the worker alone; psycopg's counterpart is an empty query
(one server round trip, no statement).

This is the floor under every other figure: each statement the coordinator sends
costs one such round trip (pickle, pipe, the worker's psycopg call, pipe, unpickle)
where an in-process driver pays only its own.
"""

from __future__ import annotations

import psycopg
from shardsession.coordinator import dbapi

from shardsession import protocol as p

from .common import Figure, Trial, WorkloadResult, expect, measure
from .context import Context

NAME = "roundtrip"
TITLE = "Worker round trip: empty request and 1-row query vs a direct psycopg connection"
QUERY = "SELECT id, owner FROM bench_roundtrip WHERE id = %s"
EMPTY, ONE_ROW = "empty request", "1-row query"


def run(ctx: Context) -> WorkloadResult:
    """Measure; return microseconds per operation and the ratio to psycopg."""
    n = max(10, 2 * ctx.params.ops)
    shard = ctx.layout.shard_ids[0]
    dsn = ctx.layout.dsns[shard]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_roundtrip")
        conn.execute("CREATE TABLE bench_roundtrip (id int PRIMARY KEY, owner text)")
        conn.execute("INSERT INTO bench_roundtrip VALUES (1, 'alice')")
    engine = ctx.shards[shard]
    direct = psycopg.connect(dsn, autocommit=True)
    direct.prepare_threshold = 2
    checked_out = engine.raw_connection()
    worker = checked_out.dbapi_connection
    try:
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

        if not isinstance(worker, dbapi.Connection):
            raise TypeError(f"shard {shard}'s engine gave {worker!r}, not a worker connection")
        reply = worker.request(query)  # warm up prepared statements on both sides
        expect(
            [tuple(r) for r in reply.rows] == [(1, "alice")],
            f"roundtrip: the worker answered {reply.rows!r}, expected [(1, 'alice')]",
        )
        expect(
            direct_query() == n and direct.execute(QUERY, (1,)).fetchall() == [(1, "alice")],
            "roundtrip: psycopg did not answer (1, 'alice')",
        )
        trials = {
            f"shardsession|{EMPTY}": Trial(worker_empty),
            f"psycopg|{EMPTY}": Trial(direct_empty),
            f"shardsession|{ONE_ROW}": Trial(worker_query),
            f"psycopg|{ONE_ROW}": Trial(direct_query),
        }
        best = measure(trials, ctx.params.repeat)
    finally:
        checked_out.close()  # back to the pool, which rolls the worker's transaction back
        direct.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_roundtrip")
    result = WorkloadResult(NAME, TITLE, unit="us", higher_is_better=False)
    for key, (seconds, count) in best.items():
        side, variant = key.split("|")
        result.figures.append(Figure(side, seconds / count * 1e6, seconds, count, variant))
    result.checks.append("the worker and psycopg both answer the query with (1, 'alice')")
    result.notes.append(
        f"{n} requests per repetition on shard {shard}'s worker, checked out of its engine's "
        "pool (engine.raw_connection()) and sent protocol messages directly; "
        "psycopg: one autocommit connection, prepared statements from the 2nd execution. "
        "No target: this is the cost every other figure is built from."
    )
    return result
