"""The pool: checkout/checkin under threads, timeouts, lifecycle, dead workers."""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from shardsession import create_pool
from shardsession import protocol as p
from shardsession.exc import PoolTimeoutError, WorkerLostError


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """True when ``pid`` has exited and been reaped (no process, no zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def backend_state(dsn: str, backend_pid: int) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
        ).fetchone()
    return row[0] if row else None


def test_sixteen_threads_over_two_workers_per_shard(shard_dsns: dict[str, str]) -> None:
    pool = create_pool(shard_dsns, workers_per_shard=2, checkout_timeout=60)
    in_use = {shard: 0 for shard in shard_dsns}
    peak = dict(in_use)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(15):
                shard = rng.choice(sorted(shard_dsns))
                handle = pool.checkout(shard)
                with lock:
                    in_use[shard] += 1
                    peak[shard] = max(peak[shard], in_use[shard])
                try:
                    assert handle.request(p.Execute("SELECT %s::int", (seed,))).rows == [(seed,)]
                    handle.request(p.Rollback())
                finally:
                    with lock:
                        in_use[shard] -= 1
                    pool.checkin(handle)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads), "threads deadlocked"
        assert errors == []
        assert max(peak.values()) == 2  # contention happened, and never beyond the pool
        assert all(len(pids) == 2 for pids in pool.worker_pids().values())
    finally:
        pool.close()


def test_checkout_timeout_and_overflow(shard_dsns: dict[str, str]) -> None:
    pool = create_pool(
        {"s0": shard_dsns["s0"]},
        workers_per_shard=1,
        max_overflow=1,
        checkout_timeout=0.3,
        max_idle=0.2,
        monitor_interval=0.1,
    )
    try:
        first = pool.checkout("s0")
        overflow = pool.checkout("s0")
        assert overflow.pid != first.pid
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError, match=r"no worker of shard 's0' became free within"):
            pool.checkout("s0")
        assert time.monotonic() - started >= 0.3
        pool.checkin(overflow)
        pool.checkin(first)
        wait_until(lambda: len(pool.worker_pids()["s0"]) == 1, 10, "idle overflow retired")
        assert gone_eventually(overflow.pid) or gone_eventually(first.pid)
    finally:
        pool.close()


def gone_eventually(pid: int, timeout: float = 10) -> bool:
    try:
        wait_until(lambda: gone(pid), timeout, f"process {pid} to exit")
    except AssertionError:
        return False
    return True


def test_idle_worker_killed_is_replaced(shard_dsns: dict[str, str]) -> None:
    pool = create_pool({"s0": shard_dsns["s0"]}, workers_per_shard=1, monitor_interval=0.1)
    try:
        (old,) = pool.worker_pids()["s0"]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: pool.worker_pids()["s0"] not in ([old], []), 15, "a replacement")
        assert gone_eventually(old)
        handle = pool.checkout("s0")
        assert handle.pid != old
        assert handle.request(p.Execute("SELECT 1")).rows == [(1,)]
        handle.request(p.Rollback())
        pool.checkin(handle)
    finally:
        pool.close()


def test_worker_killed_mid_transaction(shard_dsns: dict[str, str], clean_shards) -> None:
    dsn = shard_dsns["s1"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (id int PRIMARY KEY)")
    pool = create_pool({"s1": dsn}, workers_per_shard=1, monitor_interval=0.1)
    try:
        handle = pool.checkout("s1")
        handle.request(p.Execute("INSERT INTO kept VALUES (1)"))
        handle.request(p.Commit())
        handle.request(p.Execute("INSERT INTO kept VALUES (2)"))  # not committed
        backend = handle.backend_pid
        assert backend_state(dsn, backend) == "idle in transaction"
        os.kill(handle.pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match=r"of shard 's1' died.*transaction.*is gone"):
            handle.request(p.Commit())
        pool.checkin(handle)  # dropped, then replaced
        wait_until(lambda: backend_state(dsn, backend) is None, 15, "the backend to end")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT id FROM kept").fetchall() == [(1,)]
        replacement = pool.checkout("s1")
        assert replacement.pid != handle.pid
        assert replacement.request(p.Execute("SELECT count(*) FROM kept")).rows == [(1,)]
        replacement.request(p.Rollback())
        pool.checkin(replacement)
    finally:
        pool.close()


def test_worker_killed_mid_statement(shard_dsns: dict[str, str]) -> None:
    dsn = shard_dsns["s2"]
    pool = create_pool({"s2": dsn}, workers_per_shard=1, monitor_interval=0.1)
    try:
        handle = pool.checkout("s2")
        backend = handle.backend_pid
        handle.send(p.Execute("SELECT pg_sleep(60)"))
        wait_until(lambda: backend_state(dsn, backend) == "active", 10, "the statement to run")
        os.kill(handle.pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match="died while running a request"):
            handle.recv()
        pool.checkin(handle)
        # client_connection_check_interval makes the server notice within ~1 s
        wait_until(lambda: backend_state(dsn, backend) is None, 20, "the backend to end")
        wait_until(lambda: len(pool.worker_pids()["s2"]) == 1, 15, "a replacement")
    finally:
        pool.close()


def test_lost_connection_is_a_lost_worker(shard_dsns: dict[str, str]) -> None:
    dsn = shard_dsns["s3"]
    pool = create_pool({"s3": dsn}, workers_per_shard=1, monitor_interval=0.1)
    try:
        handle = pool.checkout("s3")
        handle.request(p.Execute("SELECT 1"))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (handle.backend_pid,))
        with pytest.raises(WorkerLostError, match="lost its connection"):
            handle.request(p.Execute("SELECT 1"))
        assert gone_eventually(handle.pid)
        pool.checkin(handle)
        fresh = pool.checkout("s3")
        assert fresh.request(p.Execute("SELECT 2")).rows == [(2,)]
        fresh.request(p.Rollback())
        pool.checkin(fresh)
    finally:
        pool.close()


def test_close_stops_every_worker(shard_dsns: dict[str, str]) -> None:
    pool = create_pool(shard_dsns, workers_per_shard=2)
    pids = [pid for pids in pool.worker_pids().values() for pid in pids]
    assert len(pids) == 8
    pool.close()
    pool.close()  # twice is fine
    assert all(gone_eventually(pid) for pid in pids)
    with pytest.raises(Exception, match="closed"):
        pool.checkout("s0")


def test_garbage_collected_pool_stops_its_workers(shard_dsns: dict[str, str]) -> None:
    pool = create_pool({"s0": shard_dsns["s0"]}, workers_per_shard=2)
    pids = pool.worker_pids()["s0"]
    del pool
    gc.collect()
    assert all(gone_eventually(pid) for pid in pids)


def test_workers_exit_when_the_application_is_killed(shard_dsns: dict[str, str]) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from shardsession import create_pool
        pool = create_pool({json.dumps(shard_dsns)}, workers_per_shard=1)
        print(json.dumps(pool.worker_pids()), flush=True)
        time.sleep(120)
        """
    )
    app = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = app.stdout.readline()
        pids = [pid for group in json.loads(line).values() for pid in group]
        assert len(pids) == 4
        os.kill(app.pid, signal.SIGKILL)
        app.wait(10)
        assert all(gone_eventually(pid, 15) for pid in pids), "orphaned workers left running"
    finally:
        if app.poll() is None:
            app.kill()


def test_a_script_without_main_guard_works(shard_dsns: dict[str, str], tmp_path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from shardsession import create_pool, protocol as p
            import os
            pool = create_pool(
                {json.dumps(shard_dsns)}, workers_per_shard=1, start_method=os.environ["SS_METHOD"]
            )
            handle = pool.checkout("s0")
            print(handle.request(p.Execute("SELECT 7")).rows[0][0])
            pool.checkin(handle)
            pool.close()
            """
        )
    )
    for method in ("forkserver", "spawn"):
        env = {**os.environ, "SS_METHOD": method}
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "7"


def test_pool_refuses_servers_without_two_phase_commit(tmp_path) -> None:
    from shardsession.embedded import LocalCluster
    from shardsession.exc import TwoPhaseNotEnabledError

    cluster = LocalCluster(
        shards=1, path=tmp_path / "c", durable=False, settings={"max_prepared_transactions": 0}
    )
    try:
        dsns = cluster.start()
        with pytest.raises(TwoPhaseNotEnabledError, match="max_prepared_transactions = 0"):
            create_pool(dsns)
    finally:
        cluster.stop(remove=True)


def test_shard_names_that_could_overflow_a_gid_are_refused(shard_dsns) -> None:
    from shardsession.exc import ArgumentError
    from shardsession.twophase import MAX_SHARD_NAME, new_global_id, participant_gid

    longest = "x" * MAX_SHARD_NAME
    gid = participant_gid(new_global_id(longest, "c" * 40), longest)
    assert len(gid) <= 200
    with pytest.raises(ArgumentError, match="longer than"):
        create_pool({"y" * (MAX_SHARD_NAME + 1): shard_dsns["s0"]})
