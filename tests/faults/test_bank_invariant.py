"""Bank transfers between accounts on different shards under chaos.

Application processes (each with its own pool and several threads) move money
between two accounts on different shards, one two-phase commit per transfer,
while the test SIGKILLs random worker processes and, now and then, a whole
application process (replacing it).  Afterwards recovery settles what the
crashes left prepared, and the money is all there: the total is unchanged, no
balance is negative, nothing is prepared and nothing is locked.

``--shardsession-soak SECONDS`` runs it longer with more processes and threads.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import psycopg
import pytest

from shardsession import recover

N_ACCOUNTS = 1000
START_BALANCE = 1000
SEED = 20261124

APP = textwrap.dedent(
    """
    import collections, json, random, sys, threading, time, warnings
    import shardsession as ss
    from shardsession.coordinator.routing import shard_for_key
    from tests.coordinator.models import Account

    dsns = json.loads(sys.argv[1])
    seed, seconds = int(sys.argv[2]), float(sys.argv[3])
    threads, n = int(sys.argv[4]), int(sys.argv[5])
    pool = ss.create_pool(dsns, workers_per_shard=threads, recovery_interval=None,
                          monitor_interval=0.2, checkout_timeout=20, statement_timeout=2)
    pids = [p for ps in pool.worker_pids().values() for p in ps]
    print(json.dumps({"workers": pids}), flush=True)
    shard_of = {i: shard_for_key(i, list(dsns)) for i in range(1, n + 1)}
    lock = threading.Lock()
    counts = collections.Counter()
    errors = collections.Counter()

    def pending(message, category, *args, **kwargs):
        with lock:
            counts["pending_warnings"] += 1

    # TwoPhaseCommitPendingWarning: committed, the rest is left to recovery
    warnings.showwarning = pending
    deadline = time.monotonic() + seconds

    def run(k):
        rnd = random.Random(seed * 1000 + k)
        while time.monotonic() < deadline:
            a = rnd.randint(1, n)
            b = rnd.randint(1, n)
            if shard_of[a] == shard_of[b]:
                continue
            amount = rnd.randint(1, 300)
            s = ss.Session(pool)
            try:
                got = {}
                for i in sorted((a, b)):  # lock in id order: fewer deadlocks
                    got[i] = s.get(Account, i, with_for_update=True,
                                   bind_arguments={"shard_id": shard_of[i]})
                src, dst = got[a], got[b]
                if src.balance < amount:
                    s.rollback()
                    outcome = "skipped"
                else:
                    src.balance -= amount
                    dst.balance += amount
                    s.commit()
                    outcome = "committed"
            except Exception as err:
                outcome = "aborted"
                with lock:
                    errors[type(err).__name__] += 1
                try:
                    s.rollback()
                except Exception as err2:
                    with lock:
                        errors["rollback:" + type(err2).__name__] += 1
            finally:
                try:
                    s.close()
                except Exception:
                    pass
            with lock:
                counts[outcome] += 1

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    pool.close()
    print(json.dumps({"counts": dict(counts), "errors": dict(errors)}), flush=True)
    """
)


def _children_of() -> dict[int, list[int]]:
    """ppid -> child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def _workers_of(app_pid: int) -> list[int]:
    """The pool workers of an application process: its grandchildren.

    Workers are started by the forkserver (a child of the application); the
    forkserver and the resource tracker themselves are children.
    """
    tree = _children_of()
    return [g for c in tree.get(app_pid, []) for g in tree.get(c, [])]


def _descendants(pid: int) -> set[int]:
    tree = _children_of()
    out, todo = set(), [pid]
    while todo:
        for c in tree.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _sum(dsns: dict[str, str], query: str) -> dict[str, int]:
    out = {}
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            out[shard] = conn.execute(query).fetchone()[0]
    return out


class _App:
    """One application process and what it printed."""

    def __init__(self, dsns: dict[str, str], seed: int, seconds: float, threads: int) -> None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", APP, json.dumps(dsns), str(seed), str(seconds),
             str(threads), str(N_ACCOUNTS)],
            stdout=subprocess.PIPE, stderr=self._err, text=True, cwd=root,
        )  # fmt: skip
        self.killed = False
        self.ready = threading.Event()
        self.lines: list[dict] = []
        self.seen: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            self.lines.append(data)
            if "workers" in data:
                self.seen.update(data["workers"])
                self.ready.set()

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._err.seek(0)
        self.stderr = self._err.read()
        self._err.close()


@pytest.fixture
def accounts(shard_pool, clean_shards):
    import shardsession as ss
    from tests.coordinator.models import Account, Base

    Base.metadata.create_all(shard_pool)
    with ss.Session(shard_pool) as s:
        s.add_all(
            [
                Account(id=i, tenant_id=i, owner=f"o{i}", balance=START_BALANCE)
                for i in range(1, N_ACCOUNTS + 1)
            ]
        )
        s.commit()
    yield clean_shards


def test_transfers_keep_the_money_under_chaos(
    accounts, shard_pool, soak_seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsns = accounts
    # only this test recovers (the session pool's background recovery would too)
    monkeypatch.setattr(shard_pool, "recovery_interval", None)
    soak = soak_seconds > 0
    seconds = soak_seconds if soak else 10.0
    n_apps, threads = (4, 4) if soak else (2, 2)
    app_kills = max(2, int(seconds // 30)) if soak else 2
    rnd = random.Random(SEED)
    started = time.monotonic()
    deadline = started + seconds
    apps = [_App(dsns, SEED + k, seconds, threads) for k in range(n_apps)]
    for app in apps:
        assert app.ready.wait(60), "an application process did not start"
    deadline = time.monotonic() + seconds  # children count from their pool's start
    kill_at = sorted(
        time.monotonic() + seconds * (k + 1) / (app_kills + 1) for k in range(app_kills)
    )
    workers_killed = apps_killed = 0
    next_seed = SEED + 100
    while time.monotonic() < deadline - 1.0:
        time.sleep(rnd.uniform(0.2, 0.6))
        # only applications whose pool has started (a worker killed inside
        # create_pool fails the start: that is not what this test is about)
        live = [a for a in apps if a.proc.poll() is None and not a.killed and a.ready.is_set()]
        for app in live:
            app.seen.update(_descendants(app.proc.pid))
        if kill_at and time.monotonic() >= kill_at[0] and live:
            kill_at.pop(0)
            victim = rnd.choice(live)
            victim.seen.update(_descendants(victim.proc.pid))
            victim.proc.send_signal(signal.SIGKILL)
            victim.killed = True
            apps_killed += 1
            left = deadline - time.monotonic()
            if left > 2:
                replacement = _App(dsns, next_seed, left, threads)
                next_seed += 1
                apps.append(replacement)
            continue
        if live:
            app = rnd.choice(live)
            workers = _workers_of(app.proc.pid)
            if workers:
                with_pid = rnd.choice(workers)
                try:
                    os.kill(with_pid, signal.SIGKILL)
                    workers_killed += 1
                except ProcessLookupError:
                    pass
    t_chaos = time.monotonic()
    for app in apps:
        app.finish(timeout=max(5.0, deadline - time.monotonic()) + 60)
    t_apps = time.monotonic()
    # every worker ever seen has exited (those of killed applications notice by themselves)
    seen = {p for a in apps for p in a.seen}
    end = time.monotonic() + 20
    while not all(_gone(p) for p in seen) and time.monotonic() < end:
        time.sleep(0.1)
    assert all(_gone(p) for p in seen), sorted(p for p in seen if not _gone(p))

    t_exit = time.monotonic()
    finished = [a for a in apps if not a.killed]
    for app in finished:
        assert app.proc.returncode == 0, app.stderr[-3000:]
    results = [line for a in finished for line in a.lines if "counts" in line]
    assert len(results) == len(finished)
    committed = sum(r["counts"].get("committed", 0) for r in results)
    aborted = sum(r["counts"].get("aborted", 0) for r in results)
    skipped = sum(r["counts"].get("skipped", 0) for r in results)
    pending = sum(r["counts"].get("pending_warnings", 0) for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for name, count in r["errors"].items():
            errors[name] = errors.get(name, 0) + count

    report = recover(dsns, older_than=0)
    assert not report.errors and not report.waiting and not report.skipped_shards, report
    again = recover(dsns, older_than=0)  # idempotent: nothing left to do
    assert not again.committed and not again.rolled_back and not again.waiting, again
    assert not again.errors

    print(
        "\nbank: "
        + json.dumps(
            {
                "seconds": round(time.monotonic() - started, 1),
                "apps_exit_s": round(t_apps - t_chaos, 1),
                "workers_exit_s": round(t_exit - t_apps, 1),
                "apps": len(apps),
                "threads": threads,
                "apps_killed": apps_killed,
                "workers_killed": workers_killed,
                "committed": committed,
                "aborted": aborted,
                "skipped": skipped,
                "pending_warnings": pending,
                "recovered_committed": len(report.committed),
                "recovered_rolled_back": len(report.rolled_back),
                "pruned": report.pruned + again.pruned,
                "errors": errors,
            }
        )
    )
    assert committed > 0
    balances = _sum(dsns, "SELECT coalesce(sum(balance), 0) FROM acct")
    rows = _sum(dsns, "SELECT count(*) FROM acct")
    negative = _sum(dsns, "SELECT count(*) FROM acct WHERE balance < 0")
    assert sum(rows.values()) == N_ACCOUNTS, rows
    assert sum(balances.values()) == N_ACCOUNTS * START_BALANCE, balances
    assert sum(negative.values()) == 0, negative
    prepared = _sum(
        dsns, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
    )
    assert sum(prepared.values()) == 0, prepared
    for dsn in dsns.values():  # nothing stays locked
        with psycopg.connect(dsn) as conn:
            conn.execute("SET lock_timeout = '2s'")
            conn.execute("UPDATE acct SET balance = balance")
            conn.rollback()


def test_lost_reply_to_the_decision_commit_keeps_the_transaction_atomic(
    accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit point commits the decision, its worker dies before it hears so.

    A deferred trigger makes the commit point's COMMIT take 1.5 s; its worker is
    stopped while waiting (PostgreSQL finishes the commit meanwhile) and then
    killed, so the coordinator never gets the reply.  The decision is durable, so
    the transfer must end committed on both shards (now or by recovery), never
    on one only.
    """
    from shardsession.coordinator.routing import shard_for_key

    import shardsession as ss
    from shardsession.twophase import COMMIT_LOG
    from tests.coordinator.models import Account

    dsns = accounts
    shards = sorted(dsns)
    a = next(i for i in range(1, N_ACCOUNTS) if shard_for_key(i, list(dsns)) == shards[0])
    b = next(i for i in range(1, N_ACCOUNTS) if shard_for_key(i, list(dsns)) == shards[1])
    with psycopg.connect(dsns[shards[0]], autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION ss_test_slow() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER ss_test_slow AFTER INSERT ON {COMMIT_LOG} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ss_test_slow()"
        )
    pool = ss.create_pool(dsns, workers_per_shard=1, recovery_interval=None)
    try:
        victims = pool.worker_pids()[shards[0]]

        def stop_then_kill() -> None:
            time.sleep(0.7)  # inside the commit point's COMMIT (the trigger sleeps)
            for pid in victims:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(2.0)  # PostgreSQL has committed; the reply is never read
            for pid in victims:
                os.kill(pid, signal.SIGKILL)

        s = ss.Session(pool)
        x = s.get(Account, a, bind_arguments={"shard_id": shards[0]})
        y = s.get(Account, b, bind_arguments={"shard_id": shards[1]})
        x.balance -= 10
        y.balance += 10
        killer = threading.Thread(target=stop_then_kill)
        killer.start()
        s.commit()  # the decision committed although its reply was lost: a success
        killer.join()
        s.close()
    finally:
        pool.close()
        with psycopg.connect(dsns[shards[0]], autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER IF EXISTS ss_test_slow ON {COMMIT_LOG}")
    recover(dsns, older_than=0)
    balance = {}
    for shard, ident in ((shards[0], a), (shards[1], b)):
        with psycopg.connect(dsns[shard]) as conn:
            balance[ident] = conn.execute(
                "SELECT balance FROM acct WHERE id = %s", (ident,)
            ).fetchone()[0]
    # all or nothing -- and here all, since the decision was committed
    assert (balance[a], balance[b]) == (START_BALANCE - 10, START_BALANCE + 10), balance
