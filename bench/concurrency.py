"""Workload 9 -- concurrency: point transactions from many application threads at once
(16 by default), over the four shards.

Every thread runs its share of the transactions one after the other; each transaction
``get()``s one account, changes it and commits, in a fresh session.  A thread's
accounts alternate over the shards, and no two threads share an account, so no
transaction waits for another's row lock (seeded, the same plan on every side).

The reference is plain SQLAlchemy as an application would run it without sharding
support: an engine per shard whose pool keeps a connection per thread, and a plain
``Session`` per transaction bound to the engine of the account's shard.  shardsession
runs the same threads on one :class:`~shardsession.ShardSet` of its own whose pools
keep a worker per thread on every shard (``create_shards(..., pool_size=threads)``),
not the run's shared one of a worker per shard.  A ``ShardedSession`` over the plain
side's engines and raw psycopg (a connection per thread and shard) are shown too.
Every pool is filled before any timing.

With SQLAlchemy's own engines psycopg runs in the application process, under the GIL
its threads share; with shardsession it runs in the worker processes.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from typing import Any

from .common import WorkloadResult, measure
from .context import Context, fill_pool, start_shards
from .model import TABLE, Account, Layout
from .transfer import balance_trials

NAME = "concurrency"
TITLE = "Point transactions from concurrent threads over 4 shards (get, change, commit)"

#: one thread's transactions: (account id, its shard), in order
Work = list[tuple[int, str]]


def plan(layout: Layout, rows: int, threads: int, ops: int, seed: int = 9) -> list[Work]:
    """Each thread's transactions: ``ops // threads`` (at least one) on accounts of its
    own, taken in turn from every shard (thread ``k`` starts on shard ``k``).

    :raises ValueError: when a shard holds fewer accounts than there are threads.
    """
    ids = list(range(1, rows + 1))
    random.Random(seed).shuffle(ids)
    shards = layout.shard_ids
    by_shard = {s: layout.ids_on(s, ids) for s in shards}
    short = {s: len(v) for s, v in by_shard.items() if len(v) < threads}
    if short:
        raise ValueError(
            f"concurrency: every thread needs accounts of its own on every shard, but "
            f"{rows} rows put only {short} on some shards for {threads} threads; "
            "raise --rows or lower --threads"
        )
    per_thread = max(1, ops // threads)
    out: list[Work] = []
    for k in range(threads):
        own = {s: by_shard[s][k::threads] for s in shards}
        work: Work = []
        for n in range(per_thread):
            shard = shards[(k + n) % len(shards)]
            accounts = own[shard]
            work.append((accounts[(n // len(shards)) % len(accounts)], shard))
        out.append(work)
    return out


def run(ctx: Context) -> WorkloadResult:
    """Measure every side; raise :class:`~bench.common.WrongResult` on a wrong result."""
    import psycopg

    from shardsession import Session

    from .alchemy import engines, sharded_session_factory

    layout = ctx.layout
    threads = ctx.params.threads
    ctx.ensure_data(ctx.params.rows)
    work = plan(layout, ctx.params.rows, threads, ctx.params.ops)
    total = sum(len(w) for w in work)
    deltas: Counter[int] = Counter(i for w in work for i, _ in w)

    with ExitStack() as stack:
        executor = stack.enter_context(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-concurrency")
        )
        _start_threads(executor, threads)
        threaded = start_shards(layout.dsns, workers=threads)
        stack.callback(threaded.close)
        sa_engines = engines(layout, pool_size=threads, max_overflow=0)
        for engine in sa_engines.values():
            stack.callback(engine.dispose)
        wait([executor.submit(fill_pool, e, threads) for e in sa_engines.values()])
        sharded = sharded_session_factory(layout, sa_engines)
        conns: list[dict[str, Any]] = []
        stack.callback(_close, conns)
        for _ in range(threads):
            mine: dict[str, Any] = {}
            conns.append(mine)
            for s in layout.shard_ids:
                mine[s] = psycopg.connect(layout.dsns[s])

        def shardsession_side(k: int, todo: Work) -> None:
            for i, shard in todo:
                with Session(threaded) as session:
                    obj = session.get(Account, i, identity_token=shard)
                    obj.balance += 1
                    session.commit()

        def plain_side(k: int, todo: Work) -> None:
            from sqlalchemy.orm import Session as PlainSession

            for i, shard in todo:
                with PlainSession(sa_engines[shard]) as session:
                    obj = session.get(Account, i)
                    assert obj is not None
                    obj.balance += 1
                    session.commit()

        def sqlalchemy_side(k: int, todo: Work) -> None:
            for i, shard in todo:
                with sharded() as session:
                    obj = session.get(Account, i, identity_token=shard)
                    assert obj is not None
                    obj.balance += 1
                    session.commit()

        def psycopg_side(k: int, todo: Work) -> None:
            mine = conns[k]
            for i, shard in todo:
                conn = mine[shard]
                row = conn.execute(f"SELECT balance FROM {TABLE} WHERE id = %s", (i,)).fetchone()
                assert row is not None
                conn.execute(f"UPDATE {TABLE} SET balance = %s WHERE id = %s", (row[0] + 1, i))
                conn.commit()

        def in_threads(body: Callable[[int, Work], None]) -> Callable[[], int]:
            def run() -> int:
                futures = [executor.submit(body, k, todo) for k, todo in enumerate(work)]
                wait(futures)  # every thread done before a failure is raised
                for f in futures:
                    f.result()
                return total

            return run

        sides = {
            "shardsession": shardsession_side,
            "sqlalchemy-engines": plain_side,
            "sqlalchemy": sqlalchemy_side,
            "psycopg": psycopg_side,
        }
        trials = balance_trials(layout, NAME, sides, deltas, in_threads)
        best = measure(trials, ctx.params.repeat)
    ctx.data_changed()
    result = WorkloadResult.throughput(NAME, TITLE, "tx/s", best)
    result.aim(
        f"shardsession / SQLAlchemy Session on each shard's engine, {threads} threads",
        "sqlalchemy-engines",
        1.0,
    )
    result.checks.append(
        "every side, every repetition: each account's balance grew by exactly its number "
        "of transactions (read back from its shard)"
    )
    result.notes.append(
        f"{threads} threads x {len(work[0])} transactions per repetition ({total} in all), "
        f"each in a fresh session; a thread's accounts are its own and alternate over the "
        f"{len(layout.shard_ids)} shards. shardsession: a ShardSet of its own with "
        f"{threads} workers per shard (create_shards(..., pool_size={threads})); "
        f"SQLAlchemy: an engine per shard with pool_size={threads} and a plain Session per "
        "transaction bound to the account's shard's engine; the ShardedSession uses the "
        "same engines; both sharded sessions get(Account, id, identity_token=shard); "
        "psycopg: a connection per thread and shard."
    )
    return result


def _start_threads(executor: ThreadPoolExecutor, threads: int) -> None:
    """Make ``executor`` start all of its threads now, not in the first timing."""
    barrier = threading.Barrier(threads)
    wait([executor.submit(barrier.wait, 60) for _ in range(threads)])


def _close(conns: Sequence[dict[str, Any]]) -> None:
    for mine in conns:
        for conn in mine.values():
            conn.close()
