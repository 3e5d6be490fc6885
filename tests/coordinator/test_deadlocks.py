"""The distributed deadlock detector: lock cycles across shards are found and broken."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from shardsession.coordinator.detector import Wait, detect_deadlocks, find_cycles
from shardsession.coordinator.routing import shard_for_key
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

import shardsession as ss
from shardsession.twophase import new_global_id, participant_gid

from .models import Account

# -- the wait-for graph ----------------------------------------------------------------


# transaction tags (shardsession.deadlock): A is the oldest
A, B, C, D, E = (f"ss:{n}:0000" for n in (1, 2, 3, 4, 5))


def test_a_cycle_over_two_shards_picks_its_youngest_transaction() -> None:
    waits = [Wait("s0", A, 10, B, 11), Wait("s1", B, 11, A, 10)]
    (cycle,) = find_cycles(waits, {A: 1.0, B: 2.0})
    assert cycle.victim == B and cycle.shards == ("s0", "s1")
    assert cycle.backends == (("s1", 11, 10),)  # B's wait there, and who it waits for


def test_a_cycle_on_one_shard_is_broken_too() -> None:
    # PostgreSQL would break it after deadlock_timeout; the detector may be sooner.
    waits = [Wait("s0", A, 10, B, 11), Wait("s0", B, 11, A, 10)]
    (cycle,) = find_cycles(waits, {A: 1.0, B: 2.0})
    assert cycle.victim == B and cycle.shards == ("s0",)


def test_backends_that_are_not_shardsessions_are_never_victims() -> None:
    # Other programs' backends have no tag: a cycle among them is PostgreSQL's, and
    # in a mixed cycle the victim is the youngest tagged transaction.
    alone = [Wait("s0", "s0/10", 10, "s0/11", 11), Wait("s0", "s0/11", 11, "s0/10", 10)]
    assert find_cycles(alone, {"s0/10": 1.0, "s0/11": 2.0}) == []
    mixed = [Wait("s0", A, 10, "s0/11", 11), Wait("s0", "s0/11", 11, A, 10)]
    (cycle,) = find_cycles(mixed, {A: 1.0, "s0/11": 9.0})
    assert cycle.victim == A


def test_a_chain_is_not_a_cycle() -> None:
    waits = [Wait("s0", A, 10, B, 11), Wait("s1", B, 11, C, 12),
             Wait("s2", C, 12, "s2/prepared/x")]  # fmt: skip
    assert find_cycles(waits, {A: 1.0, B: 2.0, C: 3.0}) == []


def test_every_cycle_gets_a_victim_and_no_more() -> None:
    # Two cycles sharing A; removing the youngest of the first (C) leaves A-B-A.
    waits = [
        Wait("s0", A, 1, B, 2), Wait("s1", B, 2, A, 1),
        Wait("s1", A, 3, C, 4), Wait("s2", C, 4, A, 3),
        Wait("s3", D, 5, E, 6), Wait("s0", E, 6, D, 5),
    ]  # fmt: skip
    cycles = find_cycles(waits, {A: 1, B: 2, C: 3, D: 4, E: 0})
    assert sorted(c.victim for c in cycles) == [B, C, D]


# -- on real shards ----------------------------------------------------------------------


@pytest.fixture
def watched(shards: ss.ShardSet, shard_dsns: dict[str, str], clean_shards: Any
            ) -> Iterator[ss.ShardSet]:  # fmt: skip
    """Shards with a fast detector; a statement waits at most 20 s, so a missed
    deadlock fails the test instead of hanging it.  (``shards`` made the tables.)"""
    shard_set = ss.create_shards(shard_dsns, deadlock_interval=0.2, statement_timeout=20,
                                 recovery_interval=None, recovery_grace=1.0)  # fmt: skip
    try:
        yield shard_set
    finally:
        shard_set.close()


def _two_shards(shards: ss.ShardSet) -> tuple[int, int]:
    names = list(shards)
    b = next(i for i in range(2, 100) if shard_for_key(names, i) != shard_for_key(names, 1))
    return 1, b


def test_cross_shard_deadlock_is_broken_and_named(watched: ss.ShardSet,
                                                  direct: dict[str, Any]) -> None:  # fmt: skip
    a, b = _two_shards(watched)
    names = list(watched)
    with ss.Session(watched) as s:
        s.add_all([Account(id=a, balance=100), Account(id=b, balance=100)])
        s.commit()
    first_locks = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def transfer(name: str, src: int, dst: int) -> None:
        with ss.Session(watched) as s:
            try:
                s.execute(update(Account).where(Account.id == src)
                          .values(balance=Account.balance - 1))  # fmt: skip
                first_locks.wait(10)
                s.execute(update(Account).where(Account.id == dst)
                          .values(balance=Account.balance + 1))  # fmt: skip
                s.commit()
                outcome[name] = "committed"
            except OperationalError as err:
                s.rollback()
                outcome[name] = err

    started = time.monotonic()
    threads = [threading.Thread(target=transfer, args=("t1", a, b)),
               threading.Thread(target=transfer, args=("t2", b, a))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - started
    assert sorted(map(str, outcome.values())).count("committed") == 1, outcome
    (err,) = [v for v in outcome.values() if v != "committed"]
    assert isinstance(err.orig, psycopg.errors.DeadlockDetected), err
    for shard in {shard_for_key(names, a), shard_for_key(names, b)}:
        assert repr(shard) in str(err)
    assert "Roll back and retry" in str(err)
    assert elapsed < 5, f"the deadlock took {elapsed:.1f}s to break"
    with ss.Session(watched) as s:  # the survivor's transfer, and only it, committed
        assert sorted(s.scalars(select(Account.balance))) == [99, 101]


def test_backends_carry_the_session_transaction_tag(watched: ss.ShardSet,
                                                    direct: dict[str, Any]) -> None:  # fmt: skip
    a, b = _two_shards(watched)
    used = sorted({shard_for_key(list(watched), k) for k in (a, b)})

    def app_name(shard: str, pid: int) -> str:
        with direct[shard].connect() as conn:
            return conn.execute(text("SELECT application_name FROM pg_stat_activity "
                                     "WHERE pid = :p"), {"p": pid}).scalar() or ""  # fmt: skip

    with ss.Session(watched) as s:
        s.add_all([Account(id=a, balance=1), Account(id=b, balance=1)])
        s.flush()
        pids = {name: s.connection(bind_arguments={"shard_id": name}).connection
                .dbapi_connection.info.backend_pid for name in used}  # fmt: skip
        tags = {app_name(name, pid) for name, pid in pids.items()}
        assert len(tags) == 1 and tags.pop().startswith("ss:")
        s.commit()
        # the tag ends with the transaction
        assert not any(app_name(name, pid).startswith("ss:") for name, pid in pids.items())


def test_wait_on_a_crashed_applications_prepared_transaction_is_settled(
    watched: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    # What a coordinator that died after PREPARE leaves: a prepared transaction
    # holding a row lock, and no decision on its commit point.
    a, b = _two_shards(watched)
    names = list(watched)
    with ss.Session(watched) as s:
        s.add_all([Account(id=a, balance=100), Account(id=b, balance=100)])
        s.commit()
    shard = shard_for_key(names, a)
    point = next(n for n in names if n != shard)
    gid = participant_gid(new_global_id(point), shard)
    with psycopg.connect(shard_dsns[shard], autocommit=True) as crashed:
        crashed.execute("BEGIN")
        crashed.execute("UPDATE co_account SET balance = 0 WHERE id = %s", (a,))
        crashed.execute(f"PREPARE TRANSACTION '{gid}'")
    started = time.monotonic()
    with ss.Session(watched) as s:
        s.execute(update(Account).where(Account.id == a).values(balance=Account.balance + 5))
        s.commit()
        waited = time.monotonic() - started
        assert s.get(Account, a).balance == 105  # the crashed transaction was rolled back
    assert waited < 8, f"waited {waited:.1f}s for the leftover prepared transaction"
    report = detect_deadlocks(shard_dsns, cancel=False)
    assert report.waits == [] and report.cycles == []


def test_shardsession_tables_created_by_many_sessions_at_once(tmp_path: Any) -> None:
    # A new shard: every worker's first connect and every detector create the commit
    # log and the notes if missing, possibly at the same moment; none may fail.
    from shardsession.deadlock import VICTIMS_DDL
    from shardsession.embedded import LocalCluster
    from shardsession.twophase import COMMIT_LOG_DDL

    with LocalCluster(shards=1, path=tmp_path / "c", durable=False) as cluster:
        dsn = cluster.start()["s0"]
        errors: list[BaseException] = []
        for _ in range(10):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS shardsession_deadlock_notes, "
                             "shardsession_commit_log")  # fmt: skip
            together = threading.Barrier(4)

            def create(together: threading.Barrier) -> None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    together.wait()
                    try:
                        conn.execute(COMMIT_LOG_DDL)
                        conn.execute(VICTIMS_DDL)
                    except psycopg.Error as err:
                        errors.append(err)

            threads = [threading.Thread(target=create, args=(together,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert errors == []
