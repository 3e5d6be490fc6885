"""Workload 5 -- two-shard transfers: read two accounts on different shards, move one
unit from the first to the second, commit (two-phase on every side).

Each transaction runs in a fresh session: ``get()`` both accounts (with
``identity_token=`` their shard, which the application knows from the tenant, on
both ORM sides), change both balances, ``commit()``.  shardsession commits two-phase
by itself when two shards were written; the ``ShardedSession`` is made with
``twophase=True``; psycopg runs each shard's SELECT + UPDATE + PREPARE TRANSACTION in
that shard's thread, then COMMIT PREPARED on both.  After every repetition each
account's balance must have moved by exactly what its transfers moved.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from .common import Trial, WorkloadResult, expect, measure
from .context import Context
from .model import GID_PREFIX, TABLE, Account, Layout, ShardConnections

NAME = "transfer"
TITLE = "Two-shard transfer transactions (get two, update both, two-phase commit)"


def pairs(layout: Layout, rows: int, count: int, seed: int = 5) -> list[tuple[int, int]]:
    """``count`` pairs of distinct account ids on different shards (seeded)."""
    rng = random.Random(seed)
    out: list[tuple[int, int]] = []
    while len(out) < count:
        a, b = rng.randint(1, rows), rng.randint(1, rows)
        if layout.shard_of(a) != layout.shard_of(b):
            out.append((a, b))
    return out


def balance_trials(
    layout: Layout,
    name: str,
    sides: Mapping[str, Any],
    deltas: Counter[int],
    wrap: Callable[[Any], Callable[[], int]] | None = None,
) -> dict[str, Trial]:
    """One :class:`~bench.common.Trial` per side, each checking with
    :func:`balance_checker` that every balance moved by exactly ``deltas``;
    a side is timed as it is, or as ``wrap`` makes it (e.g. run in threads)."""
    trials: dict[str, Trial] = {}
    for side, body in sides.items():
        before, after = balance_checker(layout, name, side, deltas)
        trials[side] = Trial(wrap(body) if wrap else body, before, after)
    return trials


def balance_checker(
    layout: Layout, name: str, side: str, deltas: Counter[int]
) -> tuple[Callable[[], None], Callable[[int], None]]:
    """``before`` / ``after`` hooks checking every balance moved by exactly ``deltas``."""
    snapshot: dict[int, int] = {}

    def before() -> None:
        snapshot.clear()
        snapshot.update(layout.balances(deltas))

    def after(count: int) -> None:
        now = layout.balances(deltas)
        wrong = {
            i: (snapshot[i], now.get(i), d)
            for i, d in deltas.items()
            if now.get(i) != snapshot[i] + d
        }
        expect(
            not wrong,
            f"{name}, {side}: {len(wrong)} balances did not move as committed, e.g. "
            f"(before, after, expected change) {dict(itertools.islice(wrong.items(), 3))}",
        )

    return before, after


def run(ctx: Context) -> WorkloadResult:
    """Measure every side; raise :class:`~bench.common.WrongResult` on a wrong result."""
    layout = ctx.layout
    ctx.ensure_data(ctx.params.rows)
    todo = [
        (a, b, layout.shard_of(a), layout.shard_of(b))
        for a, b in pairs(layout, ctx.params.rows, max(1, ctx.params.ops // 2))
    ]
    deltas: Counter[int] = Counter()
    for a, b, _, _ in todo:
        deltas[a] -= 1
        deltas[b] += 1
    sharded = ctx.sharded_factory(twophase=True)
    ctx.shards  # noqa: B018 -- start the workers before any timing
    gids = itertools.count(1)

    def shardsession_side() -> int:
        for a_id, b_id, sa, sb in todo:
            with ctx.session() as session:
                a = session.get(Account, a_id, identity_token=sa)
                b = session.get(Account, b_id, identity_token=sb)
                a.balance -= 1
                b.balance += 1
                session.commit()
        return len(todo)

    def sqlalchemy_side() -> int:
        for a_id, b_id, sa, sb in todo:
            with sharded() as session:
                a = session.get(Account, a_id, identity_token=sa)
                b = session.get(Account, b_id, identity_token=sb)
                assert a is not None and b is not None
                a.balance -= 1
                b.balance += 1
                session.commit()
        return len(todo)

    def psycopg_side() -> int:
        def first_phase(shard: str, conn: Any, account: int, change: int, gid: str) -> None:
            conn.tpc_begin(gid)
            row = conn.execute(f"SELECT balance FROM {TABLE} WHERE id = %s", (account,)).fetchone()
            conn.execute(
                f"UPDATE {TABLE} SET balance = %s WHERE id = %s", (row[0] + change, account)
            )
            conn.tpc_prepare()

        conns = raw.conns
        pool = raw.executor
        for a_id, b_id, sa, sb in todo:
            n = next(gids)
            futures = [
                pool.submit(first_phase, sa, conns[sa], a_id, -1, f"{GID_PREFIX}{n}-{sa}"),
                pool.submit(first_phase, sb, conns[sb], b_id, +1, f"{GID_PREFIX}{n}-{sb}"),
            ]
            for f in futures:
                f.result()
            commits = [pool.submit(conns[s].tpc_commit) for s in (sa, sb)]
            for f in commits:
                f.result()
        return len(todo)

    with ShardConnections(layout) as raw:
        sides = {
            "shardsession": shardsession_side,
            "sqlalchemy": sqlalchemy_side,
            "psycopg": psycopg_side,
        }
        trials = balance_trials(layout, NAME, sides, deltas)
        best = measure(trials, ctx.params.repeat)
    ctx.data_changed()
    result = WorkloadResult.throughput(NAME, TITLE, "tx/s", best)
    result.aim("shardsession / SQLAlchemy ShardedSession(twophase=True)", "sqlalchemy", 1.5)
    result.checks.append(
        "every side, every repetition: each account's balance moved by exactly the sum of "
        "its transfers (read back from its shard)"
    )
    result.notes.append(
        f"{len(todo)} transactions per repetition, each in a fresh session; get(..., "
        "identity_token=shard) on both ORM sides (the shard computed from the tenant); "
        "two-phase commit on every side (shardsession also records its durable commit "
        "decision, which the others do not)."
    )
    return result
