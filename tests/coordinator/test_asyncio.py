"""asyncio: AsyncSession, async_sessionmaker and async engines over the worker pools.

The same routing, merging and two-phase commit as the synchronous Session; while a
coroutine waits for a worker, the event loop runs the others.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict
from shardsession.coordinator.routing import shard_for_key
from sqlalchemy import Integer, MetaData, Table, create_engine, func, inspect, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import shardsession as ss
from shardsession.twophase import COMMIT_LOG

from .models import Account, Item, Tenant, User


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module's coroutines."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="module")
def ashards(shards: ss.ShardSet, shard_dsns: dict[str, str], runner: asyncio.Runner
            ) -> Iterator[ss.AsyncShardSet]:  # fmt: skip
    """Asyncio shards over the test process's databases (``shards`` made the tables)."""
    shard_set = ss.create_async_shards(shard_dsns, pool_size=2, max_overflow=2,
                                       recovery_interval=None)  # fmt: skip
    yield shard_set
    runner.run(shard_set.close())


@pytest.fixture
def run(runner: asyncio.Runner, clean_shards: Any) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine on the module's loop, over empty tables."""
    return runner.run  # type: ignore[return-value]


def _pair(names: list[str]) -> tuple[int, int]:
    b = next(i for i in range(2, 100) if shard_for_key(names, i) != shard_for_key(names, 1))
    return 1, b


def _rows(direct: dict[str, Any], sql: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for name, engine in direct.items():
        with engine.connect() as conn:
            out[name] = [tuple(r) for r in conn.execute(text(sql))]
    return out


async def _ticking(interval: float, stop: asyncio.Event) -> int:
    """Count ticks of ``interval`` seconds until ``stop`` is set."""
    ticks = 0
    while not stop.is_set():
        await asyncio.sleep(interval)
        ticks += 1
    return ticks


async def _while_ticking(work: Awaitable[Any]) -> tuple[Any, int]:
    """Run ``work`` next to a coroutine ticking every 50 ms; the result and the ticks."""
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticking(0.05, stop))
    await asyncio.sleep(0)  # the ticker starts before the work
    try:
        result = await work
    finally:
        stop.set()
    return result, await ticker


# -- the ORM over shards ---------------------------------------------------------------


def test_orm_routes_merges_and_commits_across_shards(ashards: ss.AsyncShardSet, run: Any,
                                                      direct: dict[str, Any]) -> None:  # fmt: skip
    names = list(ashards)
    Session = ss.async_sessionmaker(ashards, expire_on_commit=False)

    async def main() -> Any:
        async with Session() as session:
            session.add_all([Item(id=i, x=i % 7, name=f"n{i}") for i in range(1, 41)])
            session.add(Tenant(id=5, name="t5", users=[User(id=50, name="u50")]))
            await session.commit()
            got = await session.get(Item, 17)
            top = await session.scalars(select(Item).order_by(Item.x.desc(), Item.id).limit(4))
            total = await session.scalar(select(func.sum(Item.x)))
            groups = await session.execute(
                select(Item.x, func.count()).group_by(Item.x).order_by(Item.x)
            )
            tenant = await session.get(Tenant, 5)
            users = await session.run_sync(lambda _: [u.name for u in tenant.users])  # lazy load
            return got, [i.id for i in top.all()], total, groups.all(), users

    got, top, total, groups, users = run(main())
    assert (got.id, got.name, inspect(got).identity_token) == (17, "n17", shard_for_key(names, 17))
    assert top == [6, 13, 20, 27]
    assert total == sum(i % 7 for i in range(1, 41))
    assert groups == [(x, sum(1 for i in range(1, 41) if i % 7 == x)) for x in range(7)]
    assert users == ["u50"]
    placed = _rows(direct, "SELECT id FROM co_item")
    assert all(shard_for_key(names, i) == s for s, ids in placed.items() for (i,) in ids)
    assert sum(1 for ids in placed.values() if ids) >= 3
    decisions = [r for rows in _rows(direct, f"SELECT outcome FROM {COMMIT_LOG}").values()
                 for r in rows]  # fmt: skip
    assert decisions == [("commit",)]  # several shards written: one two-phase decision


def test_streamed_results_merge_across_shards(ashards: ss.AsyncShardSet, run: Any) -> None:
    async def main() -> list[int]:
        async with ss.AsyncSession(ashards) as session:
            session.add_all([Item(id=i, x=100 - i, name="n") for i in range(1, 31)])
            await session.commit()
            result = await session.stream(select(Item).order_by(Item.x).limit(25))
            return [item.id async for item in result.scalars()]

    assert run(main()) == list(range(30, 5, -1))


def test_failed_prepare_rolls_back_every_shard(ashards: ss.AsyncShardSet, run: Any,
                                               direct: dict[str, Any]) -> None:  # fmt: skip
    # A deferred constraint fails at PREPARE TRANSACTION on the shard that is not the
    # commit point: nothing is committed anywhere, as with the synchronous Session.
    names = list(ashards)
    a, b = _pair(names)
    point = min(shard_for_key(names, a), shard_for_key(names, b))
    other = next(shard_for_key(names, k) for k in (a, b) if shard_for_key(names, k) != point)
    with direct[other].begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS aio_later "
                          "(v int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))  # fmt: skip

    async def main() -> tuple[Any, Any]:
        async with ss.AsyncSession(ashards) as session:
            session.add_all([Account(id=a, balance=1), Account(id=b, balance=1)])
            await session.execute(text("INSERT INTO aio_later VALUES (1), (1)"),
                                  bind_arguments={"shard_id": other})  # fmt: skip
            with pytest.raises(ss.exc.TwoPhaseError, match="rolled back"):
                await session.commit()
            await session.rollback()
            return await session.get(Account, a), await session.get(Account, b)

    try:
        assert run(main()) == (None, None)
        prepared = _rows(direct, "SELECT gid FROM pg_prepared_xacts "
                                 "WHERE database = current_database()")  # fmt: skip
        assert not any(prepared.values())
        assert not any(_rows(direct, "SELECT id FROM co_account").values())
    finally:
        with direct[other].begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS aio_later"))


# -- waiting on the loop ---------------------------------------------------------------


def test_concurrent_sessions_wait_for_their_workers_together(ashards: ss.AsyncShardSet,
                                                             run: Any) -> None:  # fmt: skip
    Session = ss.async_sessionmaker(ashards)
    sleep = text("SELECT pg_sleep(:s)")

    async def one(seconds: float) -> None:
        async with Session() as session:
            await session.execute(sleep, {"s": seconds}, bind_arguments={"shard_id": "s0"})

    async def main() -> float:
        await asyncio.gather(one(0), one(0))  # both workers of s0 started
        started = time.monotonic()
        await asyncio.gather(one(1.0), one(1.0))
        return time.monotonic() - started

    elapsed = run(main())
    # one after the other would take 2 s; the margin is for a loaded machine
    assert 1.0 <= elapsed < 1.7, f"two 1 s queries on two workers took {elapsed:.2f} s"


def test_the_loop_runs_while_a_query_waits(ashards: ss.AsyncShardSet, run: Any) -> None:
    async def main() -> tuple[Any, int, Any, int]:
        async with ss.AsyncSession(ashards) as session:
            one = session.scalar(text("SELECT pg_sleep(0.6)::text || 'one'"),
                                 bind_arguments={"shard_id": "s1"})  # fmt: skip
            one_result, one_ticks = await _while_ticking(one)
            # a statement for every shard: sent to all, every reply awaited on the loop
            every = session.execute(text("SELECT pg_sleep(0.6)::text || 'all'"))
            every_result, every_ticks = await _while_ticking(every)
            return one_result, one_ticks, every_result.scalars().all(), every_ticks

    one, one_ticks, every, every_ticks = run(main())
    assert one == "one" and every == ["all"] * 4
    # every 50 ms for 0.6 s: about 12 ticks (a blocked loop ticks once at most)
    assert one_ticks >= 4, f"the loop ticked {one_ticks} times during a 0.6 s query"
    assert every_ticks >= 4, f"the loop ticked {every_ticks} times during a 0.6 s scatter"


def test_a_full_pool_makes_coroutines_wait_their_turn(shard_dsns: dict[str, str],
                                                      clean_shards: Any) -> None:  # fmt: skip
    # One worker per shard and no overflow: three sessions on s0 take turns; the loop
    # is not blocked by the ones waiting for the pool.
    async def main() -> tuple[float, int]:
        async with ss.create_async_shards(shard_dsns, pool_size=1, max_overflow=0,
                                          pool_timeout=5, recovery_interval=None,
                                          deadlock_interval=None) as shards:  # fmt: skip
            Session = ss.async_sessionmaker(shards)

            async def one() -> None:
                async with Session() as session:
                    await session.execute(text("SELECT pg_sleep(0.2)"),
                                          bind_arguments={"shard_id": "s0"})  # fmt: skip

            await one()
            started = time.monotonic()
            _, ticks = await _while_ticking(asyncio.gather(one(), one(), one()))
            return time.monotonic() - started, ticks

    elapsed, ticks = asyncio.run(main())
    assert 0.6 <= elapsed < 1.5, f"three 0.2 s queries on one worker took {elapsed:.2f} s"
    assert ticks >= 4, f"the loop ticked {ticks} times while three sessions took turns"


def test_a_cancelled_wait_discards_the_worker(ashards: ss.AsyncShardSet, run: Any) -> None:
    async def main() -> tuple[float, Any, int]:
        async with ss.AsyncSession(ashards) as session:
            conn = await session.connection(bind_arguments={"shard_id": "s2"})
            worker = (await conn.get_raw_connection()).dbapi_connection
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    session.execute(text("SELECT pg_sleep(3)"), bind_arguments={"shard_id": "s2"}),
                    0.3,
                )
            elapsed = time.monotonic() - started
        # the late reply can never be read as another statement's: the worker is gone
        async with ss.AsyncSession(ashards) as session:
            value = await session.scalar(text("SELECT 7"), bind_arguments={"shard_id": "s2"})
        return elapsed, worker, value

    elapsed, worker, value = run(main())
    assert elapsed < 2.0  # the wait is cut at 0.3 s, not the query's 3 s
    assert worker.closed and worker.worker_exited()
    assert value == 7


def test_deadlock_between_two_coroutines_is_broken(shards: ss.ShardSet,
                                                   shard_dsns: dict[str, str],
                                                   clean_shards: Any) -> None:  # fmt: skip
    # Both transactions wait inside one event loop: each must await its lock, or the
    # other could never take its second lock and there would be no cycle to break.
    names = list(shards)
    a, b = _pair(names)

    async def transfer(Session: Any, both_locked: asyncio.Barrier, src: int, dst: int) -> Any:
        async with Session() as s:
            try:
                await s.execute(update(Account).where(Account.id == src)
                                .values(balance=Account.balance - 1))  # fmt: skip
                await both_locked.wait()
                await s.execute(update(Account).where(Account.id == dst)
                                .values(balance=Account.balance + 1))  # fmt: skip
                await s.commit()
                return "committed"
            except OperationalError as err:
                await s.rollback()
                return err

    async def main() -> list[Any]:
        async with ss.create_async_shards(shard_dsns, deadlock_interval=0.2,
                                          statement_timeout=20, recovery_interval=None
                                          ) as watched:  # fmt: skip
            Session = ss.async_sessionmaker(watched)
            async with Session() as s:
                s.add_all([Account(id=a, balance=100), Account(id=b, balance=100)])
                await s.commit()
            both_locked = asyncio.Barrier(2)
            return await asyncio.gather(transfer(Session, both_locked, a, b),
                                        transfer(Session, both_locked, b, a))  # fmt: skip

    started = time.monotonic()
    outcomes = asyncio.run(main())
    assert time.monotonic() - started < 10
    assert sorted(map(str, outcomes)).count("committed") == 1
    (victim,) = [o for o in outcomes if o != "committed"]
    assert "deadlock" in str(victim).lower()


def test_the_windows_style_loop_without_add_reader_waits_in_a_thread(
    shard_dsns: dict[str, str], clean_shards: Any
) -> None:
    class NoReaderLoop(asyncio.SelectorEventLoop):
        """A loop that cannot watch file descriptors, as Windows' proactor loop."""

        def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
            raise NotImplementedError

    async def main() -> tuple[Any, int]:
        async with ss.create_async_shards(shard_dsns, pool_size=1, recovery_interval=None,
                                          deadlock_interval=None) as shards:  # fmt: skip
            async with ss.AsyncSession(shards) as session:
                query = session.scalar(text("SELECT pg_sleep(0.4)::text || 'done'"),
                                       bind_arguments={"shard_id": "s3"})  # fmt: skip
                return await _while_ticking(query)

    with asyncio.Runner(loop_factory=NoReaderLoop) as loop_runner:
        result, ticks = loop_runner.run(main())
    assert result == "done" and ticks >= 3, f"{ticks} ticks during a 0.4 s query"


# -- engines, shard sets and errors ------------------------------------------------------


def test_async_engines_and_sync_code_share_one_pool_per_shard(
    ashards: ss.AsyncShardSet, run: Any, shard_dsns: dict[str, str]
) -> None:
    assert isinstance(ashards["s0"], AsyncEngine)
    assert ashards["s0"].sync_engine is ashards.sync["s0"]
    assert ashards.dsns == ashards.sync.dsns

    async def current_database(engine: AsyncEngine) -> str:
        async with engine.connect() as conn:
            return str(await conn.scalar(text("SELECT current_database()")))

    async def every_database() -> list[str]:
        return list(await asyncio.gather(*(current_database(e) for e in ashards.values())))

    assert run(every_database()) == [conninfo_to_dict(shard_dsns[s])["dbname"] for s in ashards]
    # synchronous code (a script, a migration) uses the same engines, blocking
    metadata = MetaData()
    Table("aio_sync_ddl", metadata, ss.Column("id", Integer, primary_key=True))
    ss.create_all(metadata, ashards.sync)
    try:
        with ss.Session(ashards.sync) as session:
            session.add_all([Account(id=i, balance=i) for i in range(1, 9)])
            session.commit()

        async def total_and_tables() -> tuple[Any, int, Any]:
            async with ss.AsyncSession(ashards) as session:
                total = await session.scalar(select(func.sum(Account.balance)))
                tables = await session.execute(
                    text("SELECT tablename FROM pg_tables WHERE tablename = 'aio_sync_ddl'")
                )  # one row per shard that has the table
            report = await ashards.recover(dry_run=True)
            return total, len(tables.all()), report

        total, tables, report = run(total_and_tables())
        assert (total, tables) == (sum(range(1, 9)), 4)
        assert report.dry_run and not report.errors
    finally:
        ss.drop_all(metadata, ashards.sync)


def test_create_async_engine_on_the_dialect(shard_dsns: dict[str, str], runner: asyncio.Runner
                                            ) -> None:  # fmt: skip
    dsn = shard_dsns["s1"]
    engine = create_async_engine("postgresql+shardsession://", connect_args={"conninfo": dsn})
    named = create_engine("postgresql+shardsession_async://", connect_args={"conninfo": dsn})
    assert engine.dialect.is_async and named.dialect.is_async
    assert type(named.dialect) is type(engine.dialect)

    async def main() -> tuple[Any, list[int], Any]:
        async with engine.connect() as conn:
            value = await conn.scalar(text("SELECT 40 + 2"))
            streamed = await conn.stream(text("SELECT generate_series(1, 5)"))
            rows = [row[0] async for row in streamed]
        # an engine made this way can be one shard of an AsyncShardSet
        shards = ss.create_async_shards({"only": engine}, recovery_interval=None,
                                        deadlock_interval=None)  # fmt: skip
        async with ss.AsyncSession(shards) as session:
            alone = await session.scalar(text("SELECT current_database()"))
        await shards.close()
        return value, rows, alone

    try:
        value, rows, alone = runner.run(main())
        assert (value, rows) == (42, [1, 2, 3, 4, 5])
        assert alone == conninfo_to_dict(dsn)["dbname"]
    finally:
        runner.run(engine.dispose())
        named.dispose()


def test_begin_runs_ddl_on_every_shard_in_one_transaction_each(
    ashards: ss.AsyncShardSet, run: Any, direct: dict[str, Any]
) -> None:
    metadata = MetaData()
    Table("aio_ddl", metadata, ss.Column("id", Integer, primary_key=True))
    present = "SELECT count(*) FROM pg_tables WHERE tablename = 'aio_ddl'"

    def create_then_fail_on_s2(conn: Any) -> None:
        metadata.create_all(conn)
        if conn.engine is ashards.sync["s2"]:
            raise RuntimeError("s2 refuses")

    async def fail() -> None:
        async with ashards.begin() as conn:
            await conn.run_sync(create_then_fail_on_s2)

    with pytest.raises(RuntimeError, match="s2 refuses"):
        run(fail())
    assert _rows(direct, present) == {s: [(0,)] for s in ashards}

    async def create() -> dict[str, Any]:
        async with ashards.begin() as conn:
            return await conn.run_sync(lambda c: metadata.create_all(c) or c.engine.url)

    try:
        assert list(run(create())) == list(ashards)
        assert _rows(direct, present) == {s: [(1,)] for s in ashards}
    finally:

        async def drop() -> None:
            async with ashards.begin() as conn:
                await conn.run_sync(metadata.drop_all)

        run(drop())
    assert _rows(direct, present) == {s: [(0,)] for s in ashards}


def test_sync_shards_are_refused_with_the_fix(shards: ss.ShardSet) -> None:
    with pytest.raises(ss.exc.ArgumentError, match="create_async_shards"):
        ss.async_sessionmaker(shards)()
    with pytest.raises(ss.exc.ArgumentError, match="create_async_shards"):
        ss.AsyncShardSet(shards)
    with pytest.raises(ss.exc.ArgumentError, match="create_async_shards"):
        ss.create_async_shards({"s0": shards["s0"]})
    with pytest.raises(ss.exc.ArgumentError, match="shards"):
        ss.AsyncSession()


def test_missing_greenlet_names_the_extra(shard_dsns: dict[str, str]) -> None:
    program = (
        "import sys\n"
        "sys.modules['greenlet'] = None  # as if it were not installed\n"
        "import shardsession as ss\n"
        "from shardsession import *  # the asyncio names are left out, nothing fails\n"
        "for make in (lambda: ss.create_async_shards({'s0': sys.argv[1]}),\n"
        "             lambda: ss.AsyncSession({})):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as err:\n"
        "        print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", program, shard_dsns["s0"]],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all("pip install 'shardsession[asyncio]'" in x for x in lines)
