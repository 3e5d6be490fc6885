"""Workload 7 -- scatter-gather latency: a query on four shards, each taking 50 ms.

``select(func.pg_sleep(0.05))`` runs on every shard (it names no shard key), in a
fresh session per query.  A side that asks the shards at once answers in about one
shard's time; one that asks them in turn (SQLAlchemy's ``ShardedSession``) in four.
The figure is the best mean latency; the target compares each side's four-shard
latency with its own latency for the same query pinned to one shard
(``bind_arguments={"shard_id": ...}``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .common import Figure, Trial, WorkloadResult, expect, measure
from .context import Context
from .model import ShardConnections

NAME = "scatter"
TITLE = "Scatter-gather latency: one query on 4 shards, each sleeping 50 ms"
ALL, ONE = "4 shards", "1 shard"


def run(ctx: Context) -> WorkloadResult:
    """Measure every side; raise :class:`~bench.common.WrongResult` on a wrong result."""
    from shardsession import func, select

    ctx.ensure_tables()
    layout = ctx.layout
    first = layout.shard_ids[0]
    sleep = ctx.params.sleep
    queries = max(2, ctx.params.ops // 100)
    stmt = select(func.pg_sleep(sleep))
    sharded = ctx.sharded_factory()
    ctx.shards  # noqa: B018 -- start the workers before any timing

    def shardsession_side(bind: dict[str, Any]) -> Callable[[], int]:
        def run() -> int:
            for _ in range(queries):
                with ctx.session() as session:
                    answered(len(session.execute(stmt, bind_arguments=bind).all()), want(bind))
            return queries

        return run

    def sqlalchemy_side(bind: dict[str, Any]) -> Callable[[], int]:
        def run() -> int:
            for _ in range(queries):
                with sharded() as session:
                    answered(len(session.execute(stmt, bind_arguments=bind).all()), want(bind))
            return queries

        return run

    def psycopg_all() -> int:
        def one(shard: str, conn: Any) -> int:
            return len(conn.execute("SELECT pg_sleep(%s)", (sleep,)).fetchall())

        for _ in range(queries):
            answered(sum(raw.each(one).values()), len(layout.shard_ids))
        return queries

    def psycopg_one() -> int:
        conn = raw.conns[first]
        for _ in range(queries):
            answered(len(conn.execute("SELECT pg_sleep(%s)", (sleep,)).fetchall()), 1)
        return queries

    def want(bind: dict[str, Any]) -> int:
        return 1 if bind else len(layout.shard_ids)

    def answered(rows: int, expected: int) -> None:
        expect(rows == expected, f"scatter: {rows} rows came back, expected {expected}")

    pin = {"shard_id": first}
    with ShardConnections(layout, autocommit=True) as raw:
        trials = {
            ("shardsession", ALL): Trial(shardsession_side({})),
            ("shardsession", ONE): Trial(shardsession_side(pin)),
            ("sqlalchemy", ALL): Trial(sqlalchemy_side({})),
            ("sqlalchemy", ONE): Trial(sqlalchemy_side(pin)),
            ("psycopg", ALL): Trial(psycopg_all),
            ("psycopg", ONE): Trial(psycopg_one),
        }
        best = measure({f"{s}|{v}": t for (s, v), t in trials.items()}, ctx.params.repeat)
    result = WorkloadResult(NAME, TITLE, unit="ms", higher_is_better=False)
    for key, (seconds, count) in best.items():
        side, variant = key.split("|")
        result.figures.append(Figure(side, seconds / count * 1000, seconds, count, variant))
    ratios = {}
    for side in ("shardsession", "sqlalchemy", "psycopg"):
        four, one = result.figure(side, ALL), result.figure(side, ONE)
        assert four is not None and one is not None
        ratios[side] = four.value / one.value
    result.at_most("shardsession: 4-shard / 1-shard latency", ratios["shardsession"], 1.2)
    result.checks.append("every query: one row from every shard it ran on")
    result.notes.append(
        f"{queries} queries per repetition, each in a fresh session; 4-shard / 1-shard "
        f"latency: shardsession {ratios['shardsession']:.2f}x, SQLAlchemy ShardedSession "
        f"{ratios['sqlalchemy']:.2f}x (it asks the shards in turn), psycopg "
        f"{ratios['psycopg']:.2f}x (one thread per shard)."
    )
    return result
