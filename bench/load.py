"""Workload 2 -- load every row as ORM objects: ``session.scalars(select(Account)).all()``.

Each repetition opens a fresh session (an empty identity map), loads all ``rows``
accounts from the four shards and closes the session.  The raw psycopg side
fetches plain tuples, one thread per shard.  Every side must return each id once,
with its values.
"""

from __future__ import annotations

from typing import Any

from .common import Trial, WorkloadResult, expect, measure
from .context import Context
from .model import TABLE, Account, ShardConnections, balance_of

NAME = "load"
TITLE = "Load every row as ORM objects (select(Account), all())"


def _checker(side: str, rows: int, holder: dict[str, Any]) -> Any:
    want_ids = rows * (rows + 1) // 2
    want_balance = sum(balance_of(i) for i in range(1, rows + 1))

    def after(count: int) -> None:
        loaded = holder.pop("rows")
        if side == "psycopg":
            got = [(r[0], r[3]) for r in loaded]
        else:
            got = [(o.id, o.balance) for o in loaded]
        ids = {i for i, _ in got}
        expect(
            len(got) == rows and len(ids) == rows,
            f"load, {side}: {len(got)} rows ({len(ids)} distinct ids), expected {rows}",
        )
        expect(
            sum(ids) == want_ids and sum(b for _, b in got) == want_balance,
            f"load, {side}: the ids or balances loaded differ from the table's",
        )

    return after


def run(ctx: Context) -> WorkloadResult:
    """Measure every side; raise :class:`~bench.common.WrongResult` on a wrong result."""
    from shardsession import select

    n = ctx.params.rows
    ctx.ensure_data(n)
    sharded = ctx.sharded_factory()
    ctx.shards  # noqa: B018 -- start the workers before any timing
    got: dict[str, dict[str, Any]] = {s: {} for s in ("shardsession", "sqlalchemy", "psycopg")}

    def shardsession_side() -> int:
        with ctx.session() as session:
            objs = session.scalars(select(Account)).all()
        got["shardsession"]["rows"] = objs
        return len(objs)

    def sqlalchemy_side() -> int:
        with sharded() as session:
            objs = session.scalars(select(Account)).all()
        got["sqlalchemy"]["rows"] = objs
        return len(objs)

    def psycopg_side() -> int:
        def fetch(shard: str, conn: Any) -> list[tuple[Any, ...]]:
            return conn.execute(f"SELECT id, tenant_id, owner, balance FROM {TABLE}").fetchall()

        parts = raw.each(fetch)
        rows = [r for part in parts.values() for r in part]
        got["psycopg"]["rows"] = rows
        return len(rows)

    with ShardConnections(ctx.layout, autocommit=True) as raw:
        sides = {
            "shardsession": shardsession_side,
            "sqlalchemy": sqlalchemy_side,
            "psycopg": psycopg_side,
        }
        trials = {s: Trial(fn, after=_checker(s, n, got[s])) for s, fn in sides.items()}
        best = measure(trials, ctx.params.repeat)
    result = WorkloadResult.throughput(NAME, TITLE, "rows/s", best)
    result.aim("shardsession / SQLAlchemy ShardedSession", "sqlalchemy", 1.0)
    result.checks.append("every side: each id once, sums of ids and balances as in the table")
    result.notes.append(
        "a fresh session per repetition; the timed part includes opening and closing it. "
        "psycopg: one autocommit connection and one thread per shard, fetchall() of plain "
        "tuples, concatenated."
    )
    return result
