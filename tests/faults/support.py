"""Plain helpers of the fault tests: processes, waits and what the shards hold."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg

from shardsession.recovery import _LOCK_KEY
from shardsession.twophase import COMMIT_LOG, COMMIT_LOG_DDL, parse_gid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREPARED_SQL = "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY 1"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts: it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def children() -> dict[int, list[int]]:
    """Parent pid -> its live child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    tree = children()
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def workers_of(app_pid: int) -> list[int]:
    """The worker processes of an application: its grandchildren.

    Workers are forked by the ``forkserver``, a child of the application (as is
    the resource tracker).
    """
    tree = children()
    return [g for c in tree.get(app_pid, []) for g in tree.get(c, [])]


def one(dsn: str, query: str, args: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of ``query`` on ``dsn``."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(query, args).fetchone()
        return None if row is None else row[0]


def rows(dsn: str, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every row of ``query`` on ``dsn``."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(query, args).fetchall()


def total(dsns: Mapping[str, str], query: str, args: tuple[Any, ...] = ()) -> int:
    """The sum over every shard of the single value ``query`` returns."""
    return sum(int(one(dsn, query, args) or 0) for dsn in dsns.values())


def prepared(dsns: Mapping[str, str]) -> dict[str, list[str]]:
    """Shard -> the gids prepared in its database (only shards that have some)."""
    out = {}
    for shard, dsn in dsns.items():
        gids = [row[0] for row in rows(dsn, PREPARED_SQL)]
        if gids:
            out[shard] = gids
    return out


def decisions(dsns: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Every record of every shard's commit log: ``(shard, global id, outcome)``."""
    out = []
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(COMMIT_LOG_DDL)
            out += [
                (shard, gid, outcome)
                for gid, outcome in conn.execute(f"SELECT gid, outcome FROM {COMMIT_LOG}")
            ]
    return sorted(out)


def shards_of(gids: list[str]) -> list[str]:
    """The shards named by participant gids, sorted."""
    out = []
    for gid in gids:
        parsed = parse_gid(gid)
        assert parsed is not None, f"{gid!r} is not a shardsession participant gid"
        out.append(parsed.shard)
    return sorted(out)


def assert_unlocked(dsns: Mapping[str, str], table: str, where: str = "true") -> None:
    """Every row of ``table`` matching ``where`` can be locked at once: nothing holds it."""
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            conn.execute("SET lock_timeout = '2s'")
            try:
                conn.execute(f"SELECT 1 FROM {table} WHERE {where} FOR UPDATE").fetchall()
            except psycopg.errors.LockNotAvailable as err:
                raise AssertionError(f"rows of {table} on shard {shard!r} stay locked") from err
            conn.rollback()


def recovery_busy(dsns: Mapping[str, str]) -> list[str]:
    """The shards whose recovery lock some session holds (a recoverer at work)."""
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
        "AND objid = %s AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return [shard for shard, dsn in dsns.items() if one(dsn, query, (_LOCK_KEY,))]


@contextlib.contextmanager
def recovery_paused(dsns: Mapping[str, str]) -> Iterator[None]:
    """Hold every shard's recovery lock: any recoverer skips these shards meanwhile.

    A background recovery (of a pool another test module started in this
    process) would otherwise settle what a crash left prepared before the test
    has looked at it.
    """
    with contextlib.ExitStack() as stack:
        for dsn in dsns.values():
            conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        yield


@contextlib.contextmanager
def reply_lost(
    session: Any, dsns: Mapping[str, str], shard: str, running: str,
    effect: Callable[[], bool], effect_what: str,
) -> Iterator[int]:  # fmt: skip
    """Lose the reply of the request the body sends to ``shard``'s worker.

    When the worker's backend sleeps (in a test trigger: ``running`` says what it
    runs), the worker is stopped, so its reply is never read; once ``effect()``
    shows the request took effect in PostgreSQL, the worker is killed.  Yields the
    worker's pid; the thread's problems fail the test.
    """
    dbapi_connection = session.connection(bind_arguments={"shard_id": shard}).connection
    worker = dbapi_connection.dbapi_connection.pid
    backend = dbapi_connection.dbapi_connection.info.backend_pid
    problems: list[str] = []

    def sleeping() -> bool:
        query = "SELECT wait_event FROM pg_stat_activity WHERE pid = %s"
        return one(dsns[shard], query, (backend,)) == "PgSleep"

    def stop_then_kill() -> None:
        try:
            wait_for(sleeping, 30, running)
            os.kill(worker, signal.SIGSTOP)  # the reply will never be read
            wait_for(effect, 10, effect_what)
        except BaseException as err:
            problems.append(repr(err))
        finally:
            os.kill(worker, signal.SIGKILL)

    killer = threading.Thread(target=stop_then_kill)
    killer.start()
    try:
        yield worker
    finally:
        killer.join(60)
    assert not problems, problems
