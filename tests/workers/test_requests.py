"""Round trips of every request kind through a real worker and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from shardsession.workers.handle import WorkerHandle, gather
from shardsession.workers.pool import WorkerPool

from shardsession import protocol as p
from shardsession.exc import IntegrityError, ProgrammingError, ShardNotFoundError


@pytest.fixture
def worker(shard_pool: WorkerPool, clean_shards: dict[str, str]) -> Iterator[WorkerHandle]:
    handle = shard_pool.checkout("s0")
    handle.request(p.Execute("CREATE TABLE IF NOT EXISTS wacct (id int PRIMARY KEY, owner text)"))
    handle.request(p.Commit())
    try:
        yield handle
    finally:
        handle.request(p.Rollback())
        handle.request(p.Execute("DROP TABLE IF EXISTS wacct"))
        handle.request(p.Commit())
        shard_pool.checkin(handle)


def test_execute_returns_columns_rows_and_rowcount(worker: WorkerHandle) -> None:
    rows = worker.request(p.Execute("SELECT %(a)s::int + 1 AS x, 'y' AS y", {"a": 41}))
    assert rows.columns == ("x", "y")
    assert rows.rows == [(42, "y")]
    worker.request(p.Execute("INSERT INTO wacct VALUES (1, 'a'), (2, 'b')"))
    updated = worker.request(p.Execute("UPDATE wacct SET owner = 'z'", fetch="none"))
    assert updated.rowcount == 2


def test_errors_carry_sqlstate_shard_and_class(worker: WorkerHandle) -> None:
    with pytest.raises(ProgrammingError) as info:
        worker.request(p.Execute("SELECT * FROM no_such_table"))
    assert info.value.sqlstate == "42P01"
    assert info.value.shard == "s0"
    assert "on shard 's0'" in str(info.value)
    assert info.value.statement == "SELECT * FROM no_such_table"
    worker.request(p.Rollback())
    worker.request(p.Execute("INSERT INTO wacct VALUES (1, 'a')"))
    with pytest.raises(IntegrityError) as dup:
        worker.request(p.Execute("INSERT INTO wacct VALUES (1, 'again')"))
    assert dup.value.sqlstate == "23505"
    status = worker.request(p.Rollback())
    assert status is None


def test_commit_and_rollback_follow_the_coordinator(worker: WorkerHandle, shard_dsns) -> None:
    worker.request(p.Execute("INSERT INTO wacct VALUES (1, 'kept')"))
    worker.request(p.Commit())
    worker.request(p.Execute("INSERT INTO wacct VALUES (2, 'dropped')"))
    worker.request(p.Rollback())
    with psycopg.connect(shard_dsns["s0"]) as conn:
        assert conn.execute("SELECT id FROM wacct").fetchall() == [(1,)]


def test_begin_isolation_level_and_savepoints(worker: WorkerHandle) -> None:
    worker.request(p.Begin(isolation_level="repeatable_read"))
    level = worker.request(p.Execute("SHOW transaction_isolation")).rows[0][0]
    assert level == "repeatable read"
    worker.request(p.Execute("INSERT INTO wacct VALUES (1, 'outer')"))
    worker.request(p.Savepoint("sp1"))
    worker.request(p.Execute("INSERT INTO wacct VALUES (2, 'inner')"))
    worker.request(p.RollbackToSavepoint("sp1"))
    worker.request(p.Savepoint("sp2"))
    worker.request(p.Execute("INSERT INTO wacct VALUES (3, 'kept')"))
    worker.request(p.ReleaseSavepoint("sp2"))
    assert worker.request(p.Execute("SELECT id FROM wacct ORDER BY id")).rows == [(1,), (3,)]
    worker.request(p.Commit())


def test_execute_many_copy_and_flush_batch(worker: WorkerHandle) -> None:
    inserted = worker.request(
        p.ExecuteMany(
            "INSERT INTO wacct VALUES (%s, %s) RETURNING id", [(1, "a"), (2, "b")], returning=True
        )
    )
    assert [r.rows for r in inserted] == [[(1,)], [(2,)]]
    copied = worker.request(p.CopyRows("wacct", ("id", "owner"), [(3, "c"), (4, None)]))
    assert copied.rowcount == 2
    batch = worker.request(
        p.FlushBatch(
            (
                p.ExecuteMany("UPDATE wacct SET owner = %s WHERE id = %s", [("x", 1), ("y", 2)]),
                p.Execute("DELETE FROM wacct WHERE id = %s", (3,), fetch="none"),
                p.Execute("SELECT id, owner FROM wacct ORDER BY id"),
            )
        )
    )
    assert batch[0].rowcount == 2
    assert batch[1].rowcount == 1
    assert batch[2].rows == [(1, "x"), (2, "y"), (4, None)]


def test_flush_batch_stops_at_the_first_error(worker: WorkerHandle) -> None:
    with pytest.raises(IntegrityError):
        worker.request(
            p.FlushBatch(
                (
                    p.Execute("INSERT INTO wacct VALUES (1, 'a')", fetch="none"),
                    p.Execute("INSERT INTO wacct VALUES (1, 'dup')", fetch="none"),
                    p.Execute("INSERT INTO wacct VALUES (2, 'never')", fetch="none"),
                )
            )
        )
    worker.request(p.Rollback())
    assert worker.request(p.Execute("SELECT count(*) FROM wacct")).rows == [(0,)]


def test_streaming_in_chunks(worker: WorkerHandle) -> None:
    first = worker.request(
        p.Execute("SELECT g FROM generate_series(1, 25) AS g", fetch="stream", chunk=10)
    )
    assert first.rows == [(i,) for i in range(1, 11)]
    assert first.cursor is not None
    second = worker.request(p.FetchMore(first.cursor, 10))
    third = worker.request(p.FetchMore(first.cursor, 10))
    assert [r[0] for r in second.rows + third.rows] == list(range(11, 26))
    assert third.cursor is None
    again = worker.request(p.Execute("SELECT 1", fetch="stream", chunk=1))
    worker.request(p.CloseCursor(again.cursor))
    assert worker.request(p.Ping())["open_cursors"] == 0


def test_large_bytes_travel_out_of_band(worker: WorkerHandle) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB
    frames = p.encode(p.Execute("SELECT %s::bytea", (p.large_bytes(payload),)))
    assert len(frames) == 2 and len(frames[1]) == len(payload)
    rows = worker.request(p.Execute("SELECT length(%s::bytea)", (p.large_bytes(payload),)))
    assert rows.rows == [(len(payload),)]


def test_two_phase_commands_and_recover_scan(worker: WorkerHandle, shard_dsns) -> None:
    worker.request(p.Execute("INSERT INTO wacct VALUES (1, 'prepared')"))
    worker.request(p.Prepare("sstest_1_s0"))
    found = worker.request(p.RecoverScan("sstest_"))
    assert [x["gid"] for x in found] == ["sstest_1_s0"]
    assert worker.request(p.CommitPrepared("sstest_1_s0")) is True
    assert worker.request(p.CommitPrepared("sstest_1_s0")) is False  # already resolved
    worker.request(p.Execute("INSERT INTO wacct VALUES (2, 'undone')"))
    worker.request(p.Prepare("sstest_2_s0"))
    assert worker.request(p.RollbackPrepared("sstest_2_s0")) is True
    assert worker.request(p.RecoverScan("sstest_")) == []
    with psycopg.connect(shard_dsns["s0"]) as conn:
        assert conn.execute("SELECT id FROM wacct").fetchall() == [(1,)]


def test_identity_map_sends_known_rows_as_keys(worker: WorkerHandle) -> None:
    worker.request(p.Execute("INSERT INTO wacct VALUES (1, 'a'), (2, 'b')"))
    spec = p.IdentitySpec("wacct", (0,))
    query = p.Execute("SELECT id, owner FROM wacct ORDER BY id", identity=spec)
    first = worker.request(query)
    assert first.rows == [(1, "a"), (2, "b")] and first.keys == [(1,), (2,)]
    worker.request(p.Execute("UPDATE wacct SET owner = 'B' WHERE id = 2"))
    second = worker.request(query)
    assert second.rows == [None, (2, "B")]  # row 1 unchanged: key only
    assert worker.request(p.IdentityGet("wacct", ((1,), (3,)))) == {(1,): (1, "a")}
    worker.request(p.IdentityExpire("wacct", ((1,),)))
    assert worker.request(query).rows == [(1, "a"), None]
    worker.request(p.IdentityClear())
    assert worker.request(query).rows == [(1, "a"), (2, "B")]
    worker.request(p.Commit(expire=False))
    assert worker.request(p.Ping())["identity_rows"] == 2
    worker.request(p.Commit(expire=True))
    assert worker.request(p.Ping())["identity_rows"] == 0


def test_statement_on_four_shards_runs_in_parallel(shard_pool: WorkerPool) -> None:
    handles = [shard_pool.checkout(shard) for shard in ("s0", "s1", "s2", "s3")]
    try:
        started = time.perf_counter()
        results = gather([(h, p.Execute("SELECT pg_sleep(0.2)")) for h in handles])
        elapsed = time.perf_counter() - started
        gather([(h, p.Rollback()) for h in handles])
    finally:
        for handle in handles:
            shard_pool.checkin(handle)
    assert len(results) == 4
    # Sequentially this takes 0.8 s; in parallel a little over 0.2 s.
    assert elapsed < 0.6, f"4 x pg_sleep(0.2) took {elapsed:.2f} s: not run in parallel"


def test_gather_reads_every_reply_when_one_fails(shard_pool: WorkerPool) -> None:
    handles = [shard_pool.checkout(shard) for shard in ("s0", "s1")]
    try:
        with pytest.raises(ProgrammingError):
            gather([(handles[0], p.Execute("SELECT 1")), (handles[1], p.Execute("SELEC"))])
        assert all(h.pending == 0 for h in handles)
        assert handles[0].request(p.Ping())["shard"] == "s0"
        gather([(h, p.Rollback()) for h in handles])
    finally:
        for handle in handles:
            shard_pool.checkin(handle)


def test_unknown_shard_is_a_clear_error(shard_pool: WorkerPool) -> None:
    with pytest.raises(ShardNotFoundError, match=r"no shard named 'nope'.*'s0', 's1'"):
        shard_pool.checkout("nope")


def test_ping_reports_every_idle_worker(shard_pool: WorkerPool) -> None:
    status = shard_pool.ping()
    assert sorted(status) == ["s0", "s1", "s2", "s3"]
    assert all(len(workers) == 2 for workers in status.values())
    assert all(not w["in_transaction"] for ws in status.values() for w in ws)


def test_create_all_and_drop_all_on_every_shard(shard_pool: WorkerPool, shard_dsns) -> None:
    from shardsession.sql import Column, ForeignKey, Integer, MetaData, String, Table

    md = MetaData()
    Table("ddl_parent", md, Column("id", Integer, primary_key=True), Column("name", String(20)))
    Table(
        "ddl_child",
        md,
        Column("id", Integer, primary_key=True),
        Column("parent_id", Integer, ForeignKey("ddl_parent.id")),
    )
    md.create_all(shard_pool)
    try:
        for dsn in shard_dsns.values():
            with psycopg.connect(dsn) as conn:
                found = conn.execute(
                    "SELECT to_regclass('ddl_parent'), to_regclass('ddl_child')"
                ).fetchone()
                assert found == ("ddl_parent", "ddl_child")
    finally:
        md.drop_all(shard_pool)
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT to_regclass('ddl_parent')").fetchone() == (None,)
