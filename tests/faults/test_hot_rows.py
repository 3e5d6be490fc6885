"""Bank transfers over a few hot rows on several shards: distributed deadlocks.

8 threads move money between 10 accounts spread over 3 shards, each transfer
locking its two accounts (``with_for_update``) in the order the transfer names
them, so lock cycles across shards keep forming.  Each server sees only lock
waits; the deadlock detector must break every cycle, the victim retries, and
meanwhile a killer SIGKILLs a random worker now and then (whatever it is doing:
holding locks, waiting for one, preparing, committing).

Checked: throughput never stalls longer than the detector's interval plus one
second (in the soak; the short run, sharing the machine with the whole suite,
allows three); the total balance holds; afterwards nothing is prepared or locked.
The default run lasts 8 s; ``--shardsession-soak SECONDS`` runs it longer
(the issue's soak: 60).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time

import psycopg
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

import shardsession as ss
from shardsession.exc import TwoPhaseError
from tests.faults import support
from tests.faults.models import Account, Base

THREADS = 8
HOT_ROWS = 10
START = 1000
INTERVAL = 1.0  # the detector's default
SEED = 20261201


class Transfers:
    """Shared counters of the workload threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[float] = []
        self.deadlocks = 0
        self.lost_workers = 0
        self.other: list[str] = []

    def committed(self) -> None:
        with self.lock:
            self.done.append(time.monotonic())


def _transfer_loop(shards: ss.ShardSet, seed: int, stop: threading.Event, out: Transfers) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        src, dst = rng.sample(range(1, HOT_ROWS + 1), 2)
        amount = rng.randint(1, 20)
        with ss.Session(shards) as s:
            try:
                a = s.get(Account, src, with_for_update=True)
                b = s.get(Account, dst, with_for_update=True)
                a.balance -= amount
                b.balance += amount
                s.commit()
                out.committed()
            except OperationalError as err:
                s.rollback()
                with out.lock:
                    if isinstance(err.orig, psycopg.errors.DeadlockDetected):
                        out.deadlocks += 1
                    elif "worker process" in str(err) or "terminating connection" in str(err):
                        out.lost_workers += 1
                    else:
                        out.other.append(str(err).splitlines()[0])
            except TwoPhaseError as err:
                s.rollback()
                with out.lock:
                    out.lost_workers += 1
                    if "not known yet" in str(err):
                        out.other.append(str(err).splitlines()[0])


def _killer(pids: set[int], seed: int, stop: threading.Event, kills: list[int]) -> None:
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(0.5, 1.5)):
        alive = sorted(pid for pid in tuple(pids) if not support.gone(pid))
        if alive:
            victim = rng.choice(alive)
            try:
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)
            except ProcessLookupError:
                pass


def _longest_stall(done: list[float], start: float, end: float) -> float:
    marks = [start, *sorted(done), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def test_hot_row_transfers_never_stall_on_a_distributed_deadlock(
    clean_shards: dict[str, str], soak_seconds: float
) -> None:
    dsns = {name: clean_shards[name] for name in list(clean_shards)[:3]}
    duration = soak_seconds or 8.0
    shards = ss.create_shards(
        dsns, pool_size=THREADS, max_overflow=THREADS, pool_timeout=30,
        deadlock_interval=INTERVAL, recovery_interval=2.0, recovery_grace=3.0,
        statement_timeout=60,  # a missed deadlock fails the test, it does not hang it
    )  # fmt: skip
    pids: set[int] = set()
    for engine in shards.values():
        event.listen(engine, "connect", lambda conn, _rec: pids.add(conn.pid))
    try:
        ss.create_all(Base.metadata, shards, tables=[Account.__table__])
        with ss.Session(shards) as s:
            s.add_all([Account(id=i, balance=START) for i in range(1, HOT_ROWS + 1)])
            s.commit()
        assert len({ss.shard_for_key(list(dsns), i) for i in range(1, HOT_ROWS + 1)}) == 3

        out, kills, stop = Transfers(), [], threading.Event()
        threads = [threading.Thread(target=_transfer_loop, args=(shards, SEED + i, stop, out))
                   for i in range(THREADS)]  # fmt: skip
        threads.append(threading.Thread(target=_killer, args=(pids, SEED, stop, kills)))
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(duration)
        stop.set()
        for t in threads:
            t.join(90)
            assert not t.is_alive(), "a transfer thread is stuck"
        end = time.monotonic()

        stall = _longest_stall([t for t in out.done if t <= start + duration], start,
                               start + duration)  # fmt: skip
        assert shards.deadlocks is not None
        print(
            f"\nhot rows: {len(out.done)} transfers in {end - start:.1f}s, "
            f"{out.deadlocks} deadlock victims ({shards.deadlocks.detected} cycles detected), "
            f"{len(kills)} workers killed ({out.lost_workers} transfers lost a worker), "
            f"longest stall {stall:.2f}s"
        )
        assert out.other == [], out.other[:5]
        assert out.deadlocks > 0, "no distributed deadlock formed: the workload proves nothing"
        assert len(kills) > 0
        # The soak holds the bound the detector promises (its interval plus one
        # second); the short run shares two cores with the rest of the suite and is
        # allowed more before it calls a stall (a missed deadlock stalls for 60 s).
        bound = INTERVAL + (1.0 if soak_seconds else 3.0)
        assert stall <= bound, f"throughput stalled for {stall:.2f}s"

        # Whatever the kills left prepared is settled by recovery; then the books balance.
        shards.recover(older_than=0)
        with ss.Session(shards) as s:
            assert s.scalar(select(func.sum(Account.balance))) == START * HOT_ROWS
        assert support.prepared(dsns) == {}
        support.assert_unlocked(dsns, Account.__tablename__)
    finally:
        shards.close()
