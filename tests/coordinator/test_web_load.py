"""Web-style load: request threads whose failing handlers drop their sessions unclosed.

Twelve threads serve short request transactions for 30 seconds against pools that
hold fewer workers per shard than there are threads.  Each request is a handler that
makes a Session, reads and locks one counter row (or two on different shards: a
two-phase commit), increments it and commits.  Two percent of the handlers raise in
the middle of their transaction and never call ``close()`` or ``rollback()``: the
session is dropped with the handler's frame, as a web framework drops a failed
handler's locals, and only SQLAlchemy's return-on-garbage-collection gives its
workers back (rolled back) to the pools and releases its row locks.  More sessions
are dropped than the pools have workers, so the service keeps serving only if that
return works while the load runs.
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text

import shardsession as ss

from .models import Account

THREADS = 12
#: 30 s is the requirement; the variable only shortens a local run.
SECONDS = float(os.environ.get("SHARDSESSION_WEB_LOAD_SECONDS", "30"))
SEED = 13
KEYS = 240
DROP_RATE = 0.02
TWO_SHARD_RATE = 0.25
# Per shard: 3 pooled workers + 2 overflow = 5, for 12 threads.
POOL_SIZE, MAX_OVERFLOW, POOL_TIMEOUT = 3, 2, 5.0
#: Longest time without a single completed request that still counts as serving.
MAX_GAP = 3.0
# The timeout policy of docs/deploying.rst (lock_timeout shorter than statement_timeout).
OPTIONS = "-c statement_timeout=30s -c lock_timeout=5s"


class HandlerCrash(Exception):
    """A request handler's bug: raised mid-transaction, the session is left unclosed."""


@dataclass
class Load:
    """What the request threads record (appends from several threads: the GIL orders them)."""

    start: float
    deadline: float
    completed: list[float] = field(default_factory=list)  # times of committed requests
    committed: Counter[int] = field(default_factory=Counter)  # key -> increments committed
    lock: threading.Lock = field(default_factory=threading.Lock)
    two_shard: int = 0
    dropped: int = 0
    # seconds from drop to garbage collection, of the sessions collected during the run
    reclaimed_in_run: list[float] = field(default_factory=list)
    reclaimed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        """Dropped sessions not garbage collected yet (their workers still checked out)."""
        return self.dropped - self.reclaimed


@pytest.fixture
def web_shards(
    shard_dsns: dict[str, str], shards: ss.ShardSet, clean_shards: dict[str, str]
) -> Iterator[ss.ShardSet]:
    """The shards (tables from ``shards``) behind pools smaller than the request threads."""
    shard_set = ss.create_shards(
        shard_dsns,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        pool_timeout=POOL_TIMEOUT,
        connect_args={"options": OPTIONS},
    )
    yield shard_set
    gc.collect()  # a failed run's dropped sessions: give their workers and locks back
    shard_set.close()


def _handle(session_factory: Any, load: Load, rng: random.Random, keys: list[int]) -> None:
    """One request: read and lock the keys' rows, increment them, commit."""
    drop = rng.random() < DROP_RATE
    crash_after_flush = rng.random() < 0.5
    session = session_factory()
    rows = [session.get(Account, key, with_for_update=True) for key in keys]
    for row in rows:
        row.balance += 1
    if drop:
        if crash_after_flush:
            session.flush()  # the UPDATEs are on the shards: every row written, still locked
        dropped_at = time.monotonic()

        def reclaimed() -> None:  # runs in a collection: one at a time, takes no lock
            load.reclaimed += 1
            if time.monotonic() < load.deadline:
                load.reclaimed_in_run.append(time.monotonic() - dropped_at)

        weakref.finalize(session, reclaimed)
        with load.lock:
            load.dropped += 1
        raise HandlerCrash("handler bug")  # no close(), no rollback(): `session` is dropped
    session.commit()
    session.close()
    with load.lock:
        load.committed.update(keys)
        load.completed.append(time.monotonic())
        load.two_shard += len(keys) > 1


def _serve(session_factory: Any, load: Load, index: int, pick: Any) -> None:
    """A request thread: handlers until the deadline; a handler's crash is its own."""
    rng = random.Random(SEED * 1000 + index)
    while time.monotonic() < load.deadline:
        keys = pick(rng)
        try:
            _handle(session_factory, load, rng, keys)
        except HandlerCrash:
            continue  # the framework logs it and serves the next request
        except Exception as err:
            load.errors.append(
                f"thread {index} at {time.monotonic() - load.start:.1f}s "
                f"({load.pending} dropped sessions not yet collected): "
                f"{type(err).__module__}.{type(err).__name__}: {str(err).splitlines()[0]}"
            )


def _note_backend(pids: set[int], dbapi_connection: Any, record: Any) -> None:
    pids.add(dbapi_connection.info.backend_pid)


def _rows(
    dsns: dict[str, str], sql: str, pids: dict[str, set[int]] | None = None
) -> dict[str, list[Any]]:
    """``sql`` on every shard, over a connection of its own (``%(pids)s``: the backends
    of that shard's workers)."""
    out = {}
    for name, dsn in dsns.items():
        params = {"pids": sorted(pids[name])} if pids else {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            out[name] = [tuple(r) for r in conn.execute(sql, params)]
    return out


def _wait_for_no_rows(
    dsns: dict[str, str], sql: str, pids: dict[str, set[int]], timeout: float = 5.0
) -> dict[str, Any]:
    """Poll until ``sql`` returns no row on any shard; the rows still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = {name: rows for name, rows in _rows(dsns, sql, pids).items() if rows}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_dropped_sessions_do_not_stop_the_service(
    web_shards: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    names = list(web_shards)
    shard_of = {key: ss.shard_for_key(names, key) for key in range(KEYS)}
    capacity = (POOL_SIZE + MAX_OVERFLOW) * len(names)
    # The PostgreSQL backends of every worker the pools start (application_name
    # cannot tell them: workers set it to their transaction's tag).
    backends: dict[str, set[int]] = {name: set() for name in names}
    for name, engine in web_shards.items():
        event.listen(engine, "connect", functools.partial(_note_backend, backends[name]))
    Session = ss.sessionmaker(web_shards)
    with Session() as session:
        session.add_all([Account(id=key, balance=0) for key in range(KEYS)])
        session.commit()
        setting = text("SELECT current_setting('lock_timeout')")
        assert session.execute(setting, bind_arguments={"shard_id": names[0]}).scalar() == "5s"

    def pick(rng: random.Random) -> list[int]:
        first = rng.randrange(KEYS)
        if rng.random() >= TWO_SHARD_RATE:
            return [first]
        second = rng.choice([k for k in range(KEYS) if shard_of[k] != shard_of[first]])
        # Shards in name order, so that two-shard requests never wait for each other's
        # workers crosswise (that pool deadlock would end in pool_timeout).
        return sorted((first, second), key=lambda k: (shard_of[k], k))

    start = time.monotonic()
    load = Load(start=start, deadline=start + SECONDS)
    threads = [
        threading.Thread(target=_serve, args=(Session, load, i, pick), name=f"request-{i}")
        for i in range(THREADS)
    ]
    samples: list[tuple[float, int, int]] = []  # (time, workers checked out, pending drops)
    for thread in threads:
        thread.start()
    # Every request ends within the deadline plus one pool or lock timeout (or fails).
    while any(t.is_alive() for t in threads) and time.monotonic() < load.deadline + 30:
        checked_out = sum(engine.pool.checkedout() for engine in web_shards.values())
        samples.append((time.monotonic() - start, checked_out, load.pending))
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=1)
    wall = time.monotonic() - start
    assert not any(t.is_alive() for t in threads), "request threads still running"

    # The service kept serving: no gap in completions, no error (no pool TimeoutError).
    times = [start, *sorted(load.completed), load.deadline]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    stalled = (times[worst] - start, times[worst + 1] - start)
    assert gaps[worst] <= MAX_GAP, (
        f"no request completed for {gaps[worst]:.1f}s, from {stalled[0]:.1f}s to "
        f"{stalled[1]:.1f}s, while up to "
        f"{max((p for t, _, p in samples if stalled[0] <= t <= stalled[1]), default=0)} dropped "
        f"sessions waited for garbage collection to give back their workers and row "
        f"locks ({len(load.completed)} requests served, {load.dropped} sessions dropped, "
        f"{len(load.errors)} failed); first failures:\n" + "\n".join(load.errors[:5])
    )
    assert not load.errors, f"{len(load.errors)} request(s) failed:\n" + "\n".join(load.errors[:10])
    per_second = Counter(int(t - start) for t in load.completed if t < load.deadline)
    per_second_min = min(per_second[s] for s in range(int(SECONDS)))
    # The pools could not have absorbed the dropped sessions without getting their
    # workers back during the run: more sessions were dropped than the pools hold.
    assert load.dropped > capacity, (load.dropped, capacity)
    assert load.two_shard > 0
    assert all(backends.values())

    gc.collect()
    # Every dropped session was garbage collected and every worker is back in its pool.
    assert load.pending == 0, f"{load.pending} dropped sessions are still referenced"
    out = {name: engine.pool.checkedout() for name, engine in web_shards.items()}
    assert not any(out.values()), f"workers still checked out after gc: {out}"

    # Returned workers were rolled back (the ROLLBACK is sent without waiting: poll).
    idle_in_tx = _wait_for_no_rows(
        shard_dsns,
        "SELECT pid, state, left(query, 60) FROM pg_stat_activity "
        "WHERE pid = ANY(%(pids)s) AND state LIKE 'idle in transaction%%'",
        backends,
    )
    assert not idle_in_tx, f"backends left idle in transaction: {idle_in_tx}"
    prepared = _rows(
        shard_dsns, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
    )
    assert not any(prepared.values()), f"left prepared: {prepared}"

    # Exactly the committed increments are there: none lost, none from a dropped session.
    balances = {
        key: balance
        for rows in _rows(shard_dsns, "SELECT id, balance FROM co_account").values()
        for key, balance in rows
    }
    wrong = {
        key: (balances.get(key), load.committed[key])
        for key in range(KEYS)
        if balances.get(key) != load.committed[key]
    }
    assert not wrong, (
        f"{len(wrong)} counters differ from the increments committed, (found, committed) "
        f"by key: {dict(list(wrong.items())[:8])}; in total {sum(balances.values())} found, "
        f"{sum(load.committed.values())} committed"
    )

    # No worker was orphaned: closing the shards ends every backend they opened.
    web_shards.close()
    left = _wait_for_no_rows(
        shard_dsns,
        "SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(%(pids)s)",
        backends,
    )
    assert not left, f"backends of workers outliving their pools: {left}"

    latency = sorted(load.reclaimed_in_run) or [0.0]
    print(
        f"\nweb load: {len(load.completed)} requests served in {SECONDS:.0f}s "
        f"({load.two_shard} two-phase); per second min {per_second_min}, "
        f"max {max(per_second.values())}; {load.dropped} sessions dropped, "
        f"{len(load.reclaimed_in_run)} collected during the run (drop to collection: "
        f"median {latency[len(latency) // 2]:.2f}s, max {latency[-1]:.2f}s); at most "
        f"{max(p for _, _, p in samples)} pending at once; workers checked out at most "
        f"{max(c for _, c, _ in samples)} of {capacity}; wall {wall:.1f}s"
    )
