"""Workloads 3 and 4 -- cross-shard queries, checked against one unsharded table.

* ``top100``: the 100 accounts with the highest ids, as objects
  (``ORDER BY id DESC LIMIT 100``).  shardsession merges the shards' sorted streams;
  a ``ShardedSession`` concatenates the shards' answers, so its user re-sorts them in
  Python and keeps 100; psycopg merges the shards' rows in Python.
* ``aggregate``: ``count(*)`` and ``sum(balance)`` grouped by ``tenant_id % 10``.
  shardsession combines the shards' groups itself; a ``ShardedSession`` returns every
  shard's groups, so its user adds them up in Python, as does the psycopg side.

Both ORM sides run the very same ``select()`` of the same model.  Each query runs in a
fresh session (``with Session(...) as s``), as a request would.
The answer of the last query of every repetition must equal the reference answer
computed by PostgreSQL over ``account_all``, which holds every row in one table.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from .common import Trial, WorkloadResult, expect, measure
from .context import Context
from .model import REFERENCE, TABLE, Account, ShardConnections

TOP = 100
TOP100_TITLE = f"Cross-shard top-{TOP} by id (ORDER BY id DESC LIMIT {TOP}) as objects"
AGGREGATE_TITLE = "Cross-shard count(*) and sum(balance) grouped by tenant_id % 10"
_TOP_SQL = "SELECT id, tenant_id, owner, balance FROM {t} ORDER BY id DESC LIMIT {n}"
_AGG_SQL = "SELECT tenant_id % 10 AS g, count(*), sum(balance) FROM {t} GROUP BY g ORDER BY g"


def _combine(groups: Any) -> list[tuple[int, int, int]]:
    """Add up per-shard ``(g, count, sum)`` rows into one row per group, sorted by g."""
    totals: dict[int, list[int]] = {}
    for g, count, total in groups:
        acc = totals.setdefault(int(g), [0, 0])
        acc[0] += int(count)
        acc[1] += int(total)
    return [(g, c, s) for g, (c, s) in sorted(totals.items())]


def _queries(ctx: Context) -> int:
    return max(1, ctx.params.ops // 10)


def _measure(
    ctx: Context,
    name: str,
    title: str,
    sides: dict[str, Callable[[], Any]],
    normalize: dict[str, Callable[[Any], list[tuple[Any, ...]]]],
    reference: list[tuple[Any, ...]],
) -> WorkloadResult:
    """Time ``queries`` runs of each side's query, check its last answer, build the result."""
    q = _queries(ctx)
    last: dict[str, Any] = {}

    def repeat(side: str) -> Callable[[], int]:
        fn = sides[side]

        def run() -> int:
            answer = None
            for _ in range(q):
                answer = fn()
            last[side] = answer
            return q

        return run

    def check(side: str) -> Callable[[int], None]:
        def after(count: int) -> None:
            got = normalize[side](last.pop(side))
            expect(
                got == reference,
                f"{name}, {side}: the answer differs from the unsharded table's: "
                f"got {got[:5]}... ({len(got)} rows), expected {reference[:5]}... "
                f"({len(reference)} rows)",
            )

        return after

    trials = {side: Trial(repeat(side), after=check(side)) for side in sides}
    best = measure(trials, ctx.params.repeat)
    result = WorkloadResult.throughput(name, title, "queries/s", best)
    result.aim("shardsession / SQLAlchemy ShardedSession", "sqlalchemy", 2.0)
    result.checks.append(
        "every side, every repetition: the answer equals PostgreSQL's over one unsharded "
        f"table ({REFERENCE}, {len(reference)} rows)"
    )
    return result


def _objects(objs: Any) -> list[tuple[Any, ...]]:
    return [(o.id, o.tenant_id, o.owner, o.balance) for o in objs]


def run_top100(ctx: Context) -> WorkloadResult:
    """Workload ``top100``; raises :class:`~bench.common.WrongResult` on a wrong answer."""
    from shardsession import select

    ctx.ensure_data(ctx.params.rows)
    reference = ctx.layout.reference(_TOP_SQL.format(t=REFERENCE, n=TOP))
    sharded = ctx.sharded_factory()
    ctx.shards  # noqa: B018 -- start the workers before any timing
    stmt = select(Account).order_by(Account.id.desc()).limit(TOP)
    shard_sql = _TOP_SQL.format(t=TABLE, n=TOP)

    def shardsession_side() -> Any:
        with ctx.session() as session:
            return session.scalars(stmt).all()

    def sqlalchemy_side() -> Any:
        with sharded() as session:
            objs = session.scalars(stmt).all()
        return sorted(objs, key=lambda o: o.id, reverse=True)[:TOP]

    def psycopg_side() -> Any:
        def fetch(shard: str, conn: Any) -> list[tuple[Any, ...]]:
            return conn.execute(shard_sql).fetchall()

        parts = raw.each(fetch).values()
        merged = heapq.merge(*parts, key=lambda r: r[0], reverse=True)
        return [r for _, r in zip(range(TOP), merged)]

    with ShardConnections(ctx.layout, autocommit=True) as raw:
        result = _measure(
            ctx,
            "top100",
            TOP100_TITLE,
            {
                "shardsession": shardsession_side,
                "sqlalchemy": sqlalchemy_side,
                "psycopg": psycopg_side,
            },
            {"shardsession": _objects, "sqlalchemy": _objects, "psycopg": list},
            [tuple(r) for r in reference],
        )
    result.notes.append(
        f"{_queries(ctx)} queries per repetition, each in a fresh session. ShardedSession "
        f"runs ORDER BY id DESC LIMIT {TOP} on each shard and the user re-sorts the "
        f"{4 * TOP} objects in Python; psycopg (autocommit, a thread per shard) merges the "
        "sorted shard rows (heapq)."
    )
    return result


def run_aggregate(ctx: Context) -> WorkloadResult:
    """Workload ``aggregate``; raises :class:`~bench.common.WrongResult` on a wrong answer."""
    from shardsession import func, select

    ctx.ensure_data(ctx.params.rows)
    reference = _combine(ctx.layout.reference(_AGG_SQL.format(t=REFERENCE)))
    sharded = ctx.sharded_factory()
    ctx.shards  # noqa: B018 -- start the workers before any timing
    g = (Account.tenant_id % 10).label("g")
    stmt = select(g, func.count(), func.sum(Account.balance)).group_by(g).order_by(g)
    shard_sql = _AGG_SQL.format(t=TABLE)

    def shardsession_side() -> Any:
        with ctx.session() as session:
            return session.execute(stmt).all()

    def sqlalchemy_side() -> Any:
        with sharded() as session:
            return _combine(session.execute(stmt).all())

    def psycopg_side() -> Any:
        def fetch(shard: str, conn: Any) -> list[tuple[Any, ...]]:
            return conn.execute(shard_sql).fetchall()

        return _combine(r for part in raw.each(fetch).values() for r in part)

    def exact(rows: Any) -> list[tuple[Any, ...]]:
        # no re-combining here: shardsession's own answer is compared as it came
        return [(int(g), int(c), int(s)) for g, c, s in rows]

    with ShardConnections(ctx.layout, autocommit=True) as raw:
        result = _measure(
            ctx,
            "aggregate",
            AGGREGATE_TITLE,
            {
                "shardsession": shardsession_side,
                "sqlalchemy": sqlalchemy_side,
                "psycopg": psycopg_side,
            },
            {"shardsession": exact, "sqlalchemy": exact, "psycopg": exact},
            reference,
        )
    result.notes.append(
        f"{_queries(ctx)} queries per repetition, each in a fresh session. ShardedSession "
        "returns every shard's groups and the user adds them up in Python, as psycopg does. "
        "Both ORM sides run the same statement, select(g, count(), sum(balance)) grouped and "
        "ordered by g = (tenant_id % 10).label('g')."
    )
    return result
