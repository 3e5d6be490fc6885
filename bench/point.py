"""Workload 6 -- single-shard point transactions: ``get()`` one account, change it,
``commit()``.

Every transaction touches one account of the first shard, in a fresh session.  The
reference is a plain SQLAlchemy ``Session`` on that shard's own database (no
sharding at all); the ``ShardedSession`` figure is reported too.  A bare primary key
does not say which shard holds the row (the shard key, ``tenant_id``, is not part of
it): without help both sharded sessions would ask every shard, so both are given the
shard the application knows from the tenant, ``get(Account, id, identity_token=shard)``.
"""

from __future__ import annotations

import itertools
from collections import Counter

from .common import WorkloadResult, measure
from .context import Context
from .model import TABLE, Account
from .transfer import balance_trials

NAME = "point"
TITLE = "Single-shard point transactions (get, change, commit)"


def run(ctx: Context) -> WorkloadResult:
    """Measure every side; raise :class:`~bench.common.WrongResult` on a wrong result."""
    import psycopg

    from .alchemy import plain_session_factory

    layout = ctx.layout
    ctx.ensure_data(ctx.params.rows)
    shard = layout.shard_ids[0]
    on_shard = layout.ids_on(shard, range(1, ctx.params.rows + 1))
    ids = list(itertools.islice(itertools.cycle(on_shard), max(1, ctx.params.ops)))
    deltas: Counter[int] = Counter(ids)
    sharded = ctx.sharded_factory()
    plain = plain_session_factory(ctx.sa_engines[shard])
    ctx.shards  # noqa: B018 -- start the workers before any timing

    def shardsession_side() -> int:
        for i in ids:
            with ctx.session() as session:
                obj = session.get(Account, i, identity_token=shard)
                obj.balance += 1
                session.commit()
        return len(ids)

    def sqlalchemy_side() -> int:
        for i in ids:
            with sharded() as session:
                obj = session.get(Account, i, identity_token=shard)
                assert obj is not None
                obj.balance += 1
                session.commit()
        return len(ids)

    def plain_side() -> int:
        for i in ids:
            with plain() as session:
                obj = session.get(Account, i)
                assert obj is not None
                obj.balance += 1
                session.commit()
        return len(ids)

    def psycopg_side() -> int:
        for i in ids:
            row = conn.execute(f"SELECT balance FROM {TABLE} WHERE id = %s", (i,)).fetchone()
            assert row is not None
            conn.execute(f"UPDATE {TABLE} SET balance = %s WHERE id = %s", (row[0] + 1, i))
            conn.commit()
        return len(ids)

    sides = {
        "shardsession": shardsession_side,
        "sqlalchemy-plain": plain_side,
        "sqlalchemy": sqlalchemy_side,
        "psycopg": psycopg_side,
    }
    trials = balance_trials(layout, NAME, sides, deltas)
    with psycopg.connect(layout.dsns[shard]) as conn:
        best = measure(trials, ctx.params.repeat)
    ctx.data_changed()
    result = WorkloadResult.throughput(NAME, TITLE, "tx/s", best)
    result.aim("shardsession / plain SQLAlchemy Session on that shard", "sqlalchemy-plain", 0.9)
    result.aim("shardsession / SQLAlchemy ShardedSession", "sqlalchemy", 2.0)
    result.checks.append(
        "every side, every repetition: each account's balance grew by exactly its number "
        "of transactions (read back from the shard)"
    )
    result.notes.append(
        f"{len(ids)} transactions per repetition on shard {shard}, each in a fresh session; "
        "get(Account, id, identity_token=shard) on both sharded sessions (a pk-only get() "
        "would ask every shard: tenant_id is not in the primary key); the plain Session "
        "needs no routing."
    )
    return result
