"""Worker processes as DBAPI connections in SQLAlchemy's pool."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text

import shardsession as ss

from .models import Item


def _pid(session: ss.Session, shard: str) -> int:
    conn = session.connection(bind_arguments={"shard_id": shard})
    return int(conn.connection.dbapi_connection.pid)


@pytest.fixture
def one_worker(shard_dsns: dict[str, str], shards: ss.ShardSet, clean_shards: Any
               ) -> Iterator[ss.ShardSet]:  # fmt: skip
    small = ss.create_shards({"s0": shard_dsns["s0"]}, pool_size=1, max_overflow=0,
                             pool_timeout=3, pool_pre_ping=True)  # fmt: skip
    yield small
    small.close()


def test_an_interrupted_reply_is_never_read_as_a_later_answer(one_worker: ss.ShardSet) -> None:
    with ss.Session(one_worker) as s:
        s.add_all([Item(id=i, x=i, name=f"n{i}") for i in (1, 2)])
        s.commit()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with ss.Session(one_worker) as s:
            first = _pid(s, "s0")
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(KeyboardInterrupt):
                s.execute(text("SELECT id, name, pg_sleep(1) FROM co_item WHERE id = 1"))
            signal.setitimer(signal.ITIMER_REAL, 0)
            s.rollback()
            item = s.get(Item, 2)
            assert (item.id, item.name) == (2, "n2")
            assert _pid(s, "s0") != first, "the interrupted worker must be discarded"
    finally:
        signal.signal(signal.SIGALRM, old)


def test_a_session_dropped_without_close_gives_its_worker_back(one_worker: ss.ShardSet) -> None:
    s = ss.Session(one_worker)
    s.execute(text("SELECT 1"))  # checks the only worker out, inside a transaction
    del s
    gc.collect()
    with ss.Session(one_worker) as other:
        assert other.execute(text("SELECT 2")).scalar() == 2


def test_pool_timeout_when_every_worker_is_out(one_worker: ss.ShardSet) -> None:
    with ss.Session(one_worker) as holder:
        holder.execute(text("SELECT 1"))
        with ss.Session(one_worker) as waiting, pytest.raises(ss.exc.PoolTimeoutError):
            waiting.execute(text("SELECT 1"))


def test_pre_ping_replaces_a_killed_worker(one_worker: ss.ShardSet) -> None:
    with ss.Session(one_worker) as s:
        pid = _pid(s, "s0")
    os.kill(pid, signal.SIGKILL)
    with ss.Session(one_worker) as s:
        assert s.execute(text("SELECT 3")).scalar() == 3
        assert _pid(s, "s0") != pid


def test_database_errors_are_sqlalchemys_and_name_the_shard(session: ss.Session) -> None:
    session.add(Item(id=1, x=1, name="a"))
    session.commit()
    session.add(Item(id=1, x=1, name="dup"))
    with pytest.raises(ss.exc.IntegrityError, match=r"\[shard 's\d'\] duplicate key"):
        session.commit()
    session.rollback()
    assert session.scalars(select(Item.name)).all() == ["a"]


_APP = """
import os, sys, time
import shardsession as ss
from sqlalchemy import text
print("application module ran", flush=True)
shards = ss.create_shards({"s0": os.environ["DSN"]})
with shards["s0"].connect() as conn:
    print(conn.connection.dbapi_connection.pid, flush=True)
    conn.execute(text("SELECT 1"))
    if sys.argv[1] == "die":
        os.kill(os.getpid(), 9)
shards.close()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_workers_skip_main_and_exit_with_their_application(
    tmp_path: Any, shard_dsns: dict[str, str]
) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(_APP))  # no __main__ guard, on purpose
    env = {**os.environ, "DSN": shard_dsns["s0"]}
    done = subprocess.run([sys.executable, str(script), "ok"], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("application module ran") == 1
    killed = subprocess.run([sys.executable, str(script), "die"], capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    worker = int(killed.stdout.splitlines()[1])
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "a worker outlived its killed application"


def test_a_worker_killed_during_a_commit_is_not_lent_again(
    shard_dsns: dict[str, str], shards: ss.ShardSet, clean_shards: Any
) -> None:
    from shardsession.coordinator.routing import shard_for_key

    from .models import Account

    two = {n: shard_dsns[n] for n in ("s0", "s1")}
    small = ss.create_shards(two, pool_size=1, max_overflow=0, pool_timeout=3)
    try:
        a = next(i for i in range(100) if shard_for_key(["s0", "s1"], i) == "s0")
        b = next(i for i in range(100) if shard_for_key(["s0", "s1"], i) == "s1")
        with ss.Session(small) as s:
            s.add_all([Account(id=a, balance=10), Account(id=b, balance=10)])
            s.flush()
            os.kill(_pid(s, "s1"), signal.SIGKILL)  # a participant dies before PREPARE
            with pytest.raises((ss.exc.TwoPhaseError, ss.exc.OperationalError)):
                s.commit()
        assert small.dsns == two  # recovery can reach the shards given as DSNs
        assert not small.recover(older_than=0).errors
        for _ in range(2):  # the dead worker is replaced, never lent
            with ss.Session(small) as s:
                assert s.execute(text("SELECT 1"), bind_arguments={"shard_id": "s1"}).scalar()
                assert s.get(Account, a) is None and s.get(Account, b) is None
    finally:
        small.close()


_TERMINATE_APP = """
import os, sys, time
import psycopg
import shardsession as ss
from sqlalchemy import text

TERMINATE = "SELECT pg_terminate_backend(%s)"
RUNNING = ("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
           "'%pg_sleep%' AND pid <> pg_backend_pid()")


def backend(session):
    conn = session.connection(bind_arguments={"shard_id": "s0"}).connection.dbapi_connection
    return conn.info.backend_pid

if __name__ == "__main__":
    dsn = os.environ["DSN"]
    admin = psycopg.connect(dsn, autocommit=True)
    shards = ss.create_shards({"s0": dsn}, pool_size=2)
    with ss.Session(shards) as s:  # a worker idle in the pool
        s.execute(text("SELECT 1"), bind_arguments={"shard_id": "s0"})
        pid = backend(s)
    admin.execute(TERMINATE, (pid,))
    time.sleep(0.3)
    with ss.Session(shards) as s:  # replaced without a word
        print("after idle:", s.scalar(text("SELECT 2"), bind_arguments={"shard_id": "s0"}))
    s = ss.Session(shards)  # idle in a transaction
    s.execute(text("SELECT 3"), bind_arguments={"shard_id": "s0"})
    admin.execute(TERMINATE, (backend(s),))
    time.sleep(0.3)
    try:
        s.execute(text("SELECT 4"), bind_arguments={"shard_id": "s0"})
    except ss.exc.OperationalError as err:
        print("in transaction:", type(err).__name__, "s0" in str(err))
    s.close()
    import threading
    def terminate_when_running():
        while (row := admin.execute(RUNNING).fetchone()) is None:
            time.sleep(0.02)
        admin.execute(TERMINATE, row)
    threading.Thread(target=terminate_when_running).start()
    with ss.Session(shards) as s:  # running a statement
        try:
            s.execute(text("SELECT pg_sleep(30)"), bind_arguments={"shard_id": "s0"})
        except ss.exc.OperationalError as err:
            print("running:", type(err).__name__)
    with ss.Session(shards) as s:
        print("after all:", s.execute(text("SELECT 5"), bind_arguments={"shard_id": "s0"}).scalar())
    shards.close()
"""


def test_terminated_backends_raise_once_and_print_nothing(
    tmp_path: Any, shard_dsns: dict[str, str]
) -> None:
    # An administrator's pg_terminate_backend (or a server restart) ends the workers'
    # connections: the application sees one OperationalError where a transaction was
    # open, pooled workers are replaced silently, and no process writes to stderr.
    script = tmp_path / "terminate.py"
    script.write_text(_TERMINATE_APP)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "DSN": shard_dsns["s0"]}, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "after idle: 2",
        "in transaction: OperationalError True",
        "running: OperationalError",
        "after all: 5",
    ], done.stdout
    assert done.stderr == ""


def test_a_copy_sent_as_a_statement_fails_and_the_next_session_works(
    one_worker: ss.ShardSet,
) -> None:
    # psycopg refuses COPY through execute() and leaves its connection copying: that
    # worker is discarded, not lent again to fail every later session.
    from sqlalchemy.exc import DBAPIError

    with ss.Session(one_worker) as s:
        before = _pid(s, "s0")
        with pytest.raises(DBAPIError, match="COPY"):
            s.execute(text("COPY (SELECT 1) TO STDOUT"), bind_arguments={"shard_id": "s0"})
    with ss.Session(one_worker) as s:
        assert s.execute(text("SELECT 41 + 1"), bind_arguments={"shard_id": "s0"}).scalar() == 42
        assert _pid(s, "s0") != before
