"""Workload 1 -- bulk insert: ``rows`` new objects with given ids, ``add_all`` + ``commit``.

Consecutive ids belong to consecutive tenants, so consecutive objects go to
different shards.  Each repetition starts from empty tables; the timed part builds
the objects (or tuples), hands them over and commits.  Afterwards every shard must
hold exactly its rows (count, sum of ids, sum of balances).
"""

from __future__ import annotations

from typing import Any

from .common import Trial, WorkloadResult, expect, measure
from .context import Context
from .model import TABLE, Account, ShardConnections, row_of

NAME = "insert"
TITLE = "Bulk insert of new objects (add_all + commit)"


def run(ctx: Context) -> WorkloadResult:
    """Measure every side; raise :class:`~bench.common.WrongResult` on a wrong result."""
    ctx.ensure_tables()
    layout = ctx.layout
    n = ctx.params.rows
    rows = [row_of(i) for i in range(1, n + 1)]
    expected = layout.expected_fingerprints(n)
    sharded = ctx.sharded_factory(twophase=True)
    ctx.shards  # noqa: B018 -- start the workers before any timing

    def shardsession_side() -> int:
        with ctx.session() as session:
            session.add_all([Account(id=i, tenant_id=t, owner=o, balance=b) for i, t, o, b in rows])
            session.commit()
        return n

    def sqlalchemy_side() -> int:
        with sharded() as session:
            session.add_all([Account(id=i, tenant_id=t, owner=o, balance=b) for i, t, o, b in rows])
            session.commit()
        return n

    def psycopg_side() -> int:
        by_shard: dict[str, list[tuple[int, int, str, int]]] = {s: [] for s in layout.shard_ids}
        for r in rows:
            by_shard[layout.shard_of_tenant(r[1])].append(r)

        def copy(shard: str, conn: Any) -> None:
            with conn.cursor() as cur:
                sql = f"COPY {TABLE} (id, tenant_id, owner, balance) FROM STDIN"
                with cur.copy(sql) as copy:
                    for r in by_shard[shard]:
                        copy.write_row(r)
            conn.commit()

        raw.each(copy)
        return n

    def check(side: str) -> Any:
        def after(count: int) -> None:
            got = layout.fingerprints()
            expect(
                got == expected,
                f"insert, {side}: shards hold (count, sum id, sum balance) {got}, "
                f"expected {expected}",
            )

        return after

    with ShardConnections(layout) as raw:
        trials = {
            "shardsession": Trial(shardsession_side, layout.truncate, check("shardsession")),
            "sqlalchemy": Trial(sqlalchemy_side, layout.truncate, check("sqlalchemy")),
            "psycopg": Trial(psycopg_side, layout.truncate, check("psycopg")),
        }
        best = measure(trials, ctx.params.repeat)
    ctx.data_changed()
    result = WorkloadResult.throughput(NAME, TITLE, "rows/s", best)
    result.aim("shardsession / SQLAlchemy ShardedSession", "sqlalchemy", 3.0)
    result.checks.append(
        "every side: each shard holds exactly its rows (count, sum of ids, sum of balances)"
    )
    result.notes.append(
        "each repetition starts from empty tables; the timed part builds the objects "
        "(tuples for psycopg), adds them and commits. Both ORM sides commit the four "
        "shards two-phase (ShardedSession(twophase=True)); psycopg COPYs each shard's rows "
        "in its own thread and commits each shard on its own."
    )
    return result
