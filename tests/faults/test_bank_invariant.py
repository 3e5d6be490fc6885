"""Bank transfers between accounts on different shards under chaos.

Application processes (each with its own shards and several threads) move money
between two accounts on different shards, one two-phase commit per transfer;
each transfer also writes one ledger entry per account, on the account's shard.
Meanwhile the test SIGKILLs random worker processes (a participant's or the
commit point's, at whatever step they are) and, now and then, a whole
application process (replacing it).  The applications' background recovery
(every second, 3 s grace) settles what the dead left prepared while the others
keep committing; afterwards a last recovery settles the rest, and:

* every transfer is all or nothing: each transfer in the ledger has both its
  entries, and each balance is its opening balance plus its entries;
* every transfer whose ``commit()`` returned is there, and every one whose
  ``commit()`` raised is not (unless the error said the outcome is not known yet);
* the total is unchanged, no balance is negative, nothing is prepared, nothing
  is locked, and every worker of every application has exited.

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
from collections import defaultdict
from typing import Any

import psycopg
import pytest

import shardsession as ss
from shardsession.twophase import COMMIT_LOG
from tests.faults import support
from tests.faults.models import Account

N_ACCOUNTS = 1000
START_BALANCE = 1000
SEED = 20261124

APP = textwrap.dedent(
    """
    import collections, json, random, sys, threading, time, warnings
    import shardsession as ss
    from shardsession.exc import TwoPhaseCommitPendingWarning, TwoPhaseError
    from tests.faults.models import Account, Entry

    dsns = json.loads(sys.argv[1])
    seed, threads, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    # background recovery runs often, with a short grace: it settles what killed
    # applications left prepared while the others keep transferring (and races them)
    shards = ss.create_shards(dsns, pool_size=threads, max_overflow=threads, pool_timeout=20,
                              statement_timeout=2, pool_pre_ping=True,
                              recovery_interval=1.0, recovery_grace=3.0)
    with ss.Session(shards) as s:  # every shard's pool has a worker before the chaos
        for shard in shards:
            s.connection(bind_arguments={"shard_id": shard})
    shard_of = {i: ss.shard_for_key(list(dsns), i) for i in range(1, n + 1)}
    lock = threading.Lock()
    counts = collections.Counter()
    errors = collections.Counter()

    def say(**data):
        with lock:
            print(json.dumps(data), flush=True)

    say(ready=True)

    def pending(message, category, *args, **kwargs):
        with lock:
            counts["pending_warnings"] += 1

    # TwoPhaseCommitPendingWarning: committed, the rest is left to recovery
    warnings.simplefilter("always", TwoPhaseCommitPendingWarning)
    warnings.showwarning = pending
    # every application stops at the same moment: the test's deadline (wall clock)
    deadline = time.monotonic() + float(sys.stdin.readline()) - time.time()

    def run(k):
        rnd = random.Random(seed * 1000 + k)
        done = 0
        while time.monotonic() < deadline:
            a, b = rnd.randint(1, n), rnd.randint(1, n)
            if shard_of[a] == shard_of[b]:
                continue
            amount = rnd.randint(1, 300)
            done += 1
            transfer = f"{seed}-{k}-{done}"
            s = ss.Session(shards)
            committing = False
            try:
                got = {}
                for i in sorted((a, b)):  # lock in id order: no deadlock between transfers
                    got[i] = s.get(Account, i, with_for_update=True)
                src, dst = got[a], got[b]
                if src.balance < amount:
                    s.rollback()
                    outcome = "skipped"
                else:
                    src.balance -= amount
                    dst.balance += amount
                    s.add_all([Entry(transfer=transfer, account_id=a, delta=-amount),
                               Entry(transfer=transfer, account_id=b, delta=amount)])
                    committing = True
                    s.commit()
                    outcome = "committed"
                    say(ok=transfer)
            except Exception as err:
                outcome = "aborted"
                if committing:
                    unknown = isinstance(err, TwoPhaseError) and "not known" in str(err)
                    say(failed=transfer, error=type(err).__name__, unknown=unknown,
                        message=str(err).splitlines()[0][:300])
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
    shards.close()
    say(counts=dict(counts), errors=dict(errors))
    """
)


class _App:
    """One application process and what it printed."""

    def __init__(self, dsns: dict[str, str], seed: int, threads: int) -> None:
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", APP, json.dumps(dsns), str(seed), str(threads),
             str(N_ACCOUNTS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
            cwd=support.ROOT,
        )  # fmt: skip
        self.killed = False
        self.ready = threading.Event()
        self.lines: list[dict[str, Any]] = []
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
            if "ready" in data:
                self.ready.set()

    def start_transfers(self, until: float) -> None:
        """Let it transfer until ``until`` (``time.time()``); it reads this once ready."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{until}\n")
        self.proc.stdin.close()

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
def accounts(fault_shards: ss.ShardSet, clean_shards: dict[str, str]) -> dict[str, str]:
    """N_ACCOUNTS accounts of START_BALANCE, spread over the shards."""
    shards = list(clean_shards)
    ids = sorted(range(1, N_ACCOUNTS + 1), key=lambda i: ss.shard_for_key(shards, i))
    with ss.Session(fault_shards) as s:  # by shard: the flush batches each shard's rows
        s.add_all([Account(id=i, owner=f"o{i}", balance=START_BALANCE) for i in ids])
        s.commit()
    return clean_shards


def _ledger(dsns: dict[str, str]) -> dict[str, list[tuple[str, int, int]]]:
    """Transfer id -> its entries ``(shard, account, delta)`` on every shard."""
    out: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for shard, dsn in dsns.items():
        for transfer, account, delta in support.rows(
            dsn, "SELECT transfer, account_id, delta FROM fault_entry"
        ):
            out[transfer].append((shard, account, delta))
    return out


def _check_books(dsns: dict[str, str], ok: set[str], failed: dict[str, str]) -> int:
    """Every transfer all or nothing, and as ``commit()`` said; return how many there are."""
    ledger = _ledger(dsns)
    torn = {t: e for t, e in ledger.items() if len(e) != 2 or sum(d for _, _, d in e) != 0}
    assert not torn, f"transfers committed on one shard only: {dict(list(torn.items())[:5])}"
    lost = sorted(ok - set(ledger))
    assert not lost, f"commit() returned but the transfer is not there: {lost[:10]}"
    ghosts = {t: failed[t] for t in failed if t in ledger}
    assert not ghosts, f"commit() raised but the transfer was committed: {ghosts}"
    for shard, dsn in dsns.items():
        wrong = support.rows(
            dsn,
            "SELECT a.id, a.balance, coalesce(sum(e.delta), 0) FROM fault_account a "
            "LEFT JOIN fault_entry e ON e.account_id = a.id GROUP BY a.id, a.balance "
            "HAVING a.balance <> %s + coalesce(sum(e.delta), 0)",
            (START_BALANCE,),
        )
        assert not wrong, f"balances on {shard} that their entries do not explain: {wrong[:5]}"
    return len(ledger)


def test_transfers_keep_the_money_under_chaos(
    accounts: dict[str, str], soak_seconds: float
) -> None:
    dsns = accounts
    soak = soak_seconds > 0
    seconds = soak_seconds if soak else 8.0
    n_apps, threads = (4, 4) if soak else (2, 2)
    app_kills = max(2, int(seconds // 30)) if soak else 2
    rnd = random.Random(SEED)
    started = time.monotonic()
    apps = [_App(dsns, SEED + k, threads) for k in range(n_apps)]
    for app in apps:
        assert app.ready.wait(60), "an application process did not start"
    until = time.time() + seconds
    deadline = time.monotonic() + seconds
    for app in apps:
        app.start_transfers(until)
    kill_at = sorted(
        time.monotonic() + seconds * (k + 1) / (app_kills + 1) for k in range(app_kills)
    )
    workers_killed = apps_killed = 0
    next_seed = SEED + 100
    while time.monotonic() < deadline - 1.0:
        time.sleep(rnd.uniform(0.2, 0.6))
        # only applications whose shards are set up (a worker killed while it starts
        # fails the start: that is not what this test is about)
        live = [a for a in apps if a.proc.poll() is None and not a.killed and a.ready.is_set()]
        for app in live:
            app.seen.update(support.descendants(app.proc.pid))
        if kill_at and time.monotonic() >= kill_at[0] and live:
            kill_at.pop(0)
            victim = rnd.choice(live)
            victim.seen.update(support.descendants(victim.proc.pid))
            victim.proc.send_signal(signal.SIGKILL)
            victim.killed = True
            apps_killed += 1
            left = deadline - time.monotonic()
            if left > 2:
                apps.append(_App(dsns, next_seed, threads))
                apps[-1].start_transfers(until)
                next_seed += 1
            continue
        if live:
            workers = support.workers_of(rnd.choice(live).proc.pid)
            if workers:
                try:
                    os.kill(rnd.choice(workers), signal.SIGKILL)
                    workers_killed += 1
                except ProcessLookupError:
                    pass
    t_chaos = time.monotonic()
    for app in apps:
        app.finish(timeout=max(5.0, deadline - time.monotonic()) + 60)
    t_apps = time.monotonic()
    # every worker ever seen has exited (those of killed applications notice by themselves)
    seen = {p for a in apps for p in a.seen}
    support.wait_for(
        lambda: all(support.gone(p) for p in seen),
        20,
        f"every worker to exit: {sorted(p for p in seen if not support.gone(p))}",
        step=0.1,
    )
    t_exit = time.monotonic()

    finished = [a for a in apps if not a.killed]
    for app in finished:
        assert app.proc.returncode == 0, app.stderr[-3000:]
    results = [line for a in finished for line in a.lines if "counts" in line]
    assert len(results) == len(finished)
    counts: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    for r in results:
        for name, count in r["counts"].items():
            counts[name] += count
        for name, count in r["errors"].items():
            errors[name] += count
    lines = [line for a in apps for line in a.lines]
    ok = {line["ok"] for line in lines if "ok" in line}
    failed = {
        line["failed"]: f"{line['error']}: {line['message']}"
        for line in lines
        if "failed" in line and not line["unknown"]
    }

    # a killed application's recovery lock goes with its connection's backend
    support.wait_for(lambda: not support.recovery_busy(dsns), 10, "the recovery locks")
    report = ss.recover(dsns, older_than=0)
    assert not report.errors and not report.waiting and not report.skipped_shards, report
    again = ss.recover(dsns, older_than=0)  # idempotent: nothing left to do
    assert not again.committed and not again.rolled_back and not again.waiting, again
    assert not again.errors

    transfers = _check_books(dsns, ok, failed)
    # settled decisions are pruned: only the abort records (fences) stay
    assert {outcome for _, _, outcome in support.decisions(dsns)} <= {"abort"}
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
                "transfers_in_ledger": transfers,
                "acknowledged": len(ok),
                "failed_at_commit": len(failed),
                **counts,
                "recovered_committed": len(report.committed),
                "recovered_rolled_back": len(report.rolled_back),
                "pruned": report.pruned + again.pruned,
                "errors": errors,
            }
        )
    )
    # transfers committed (acknowledged by any application: the ones that finished may
    # be replacements started late, with little time left on a loaded machine)
    assert ok and workers_killed > 0 and apps_killed > 0
    assert support.total(dsns, "SELECT count(*) FROM fault_account") == N_ACCOUNTS
    balance = support.total(dsns, "SELECT coalesce(sum(balance), 0) FROM fault_account")
    assert balance == N_ACCOUNTS * START_BALANCE
    assert support.total(dsns, "SELECT count(*) FROM fault_account WHERE balance < 0") == 0
    assert support.prepared(dsns) == {}
    support.assert_unlocked(dsns, "fault_account")


def test_lost_reply_to_the_decision_commit_keeps_the_transfer_atomic(
    accounts: dict[str, str], fault_shards: ss.ShardSet
) -> None:
    """The commit point commits the decision, its worker dies before it hears so.

    A deferred trigger makes the commit point's COMMIT sleep.  Its worker is
    stopped (SIGSTOP) while PostgreSQL runs that COMMIT, so the reply is never
    read, and killed once the decision is visible.  The decision is durable, so
    ``commit()`` must settle the lost reply as committed: the transfer ends
    committed on both shards at once, with nothing left to recovery.
    """
    dsns = accounts
    shards = list(dsns)
    a = next(i for i in range(1, N_ACCOUNTS) if ss.shard_for_key(shards, i) == "s0")
    b = next(i for i in range(1, N_ACCOUNTS) if ss.shard_for_key(shards, i) == "s1")
    with psycopg.connect(dsns["s0"], autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION fault_slow() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER fault_slow AFTER INSERT ON {COMMIT_LOG} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_slow()"
        )
    try:
        with support.recovery_paused(dsns), ss.Session(fault_shards) as session:
            x, y = session.get(Account, a), session.get(Account, b)
            x.balance -= 10
            y.balance += 10
            session.flush()
            before = len(support.decisions(dsns))  # the accounts' own transactions
            with support.reply_lost(
                session, dsns, "s0", "the commit point's COMMIT to run",
                lambda: len(support.decisions(dsns)) > before, "the decision",
            ) as worker:  # fmt: skip
                session.commit()  # the decision committed although its reply was lost
            assert support.gone(worker), "the commit point's worker should be dead"
            assert support.prepared(dsns) == {}, "commit() should have finished every shard"
    finally:
        ss.recover(dsns, older_than=0)  # what a failed check left prepared (and locked)
        with psycopg.connect(dsns["s0"], autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f"DROP TRIGGER IF EXISTS fault_slow ON {COMMIT_LOG}")
    report = ss.recover(dsns, older_than=0)
    assert not report.committed and not report.rolled_back and not report.errors, report
    balance = {
        ident: support.one(dsns[shard], "SELECT balance FROM fault_account WHERE id = %s", (ident,))
        for shard, ident in (("s0", a), ("s1", b))
    }
    # all or nothing -- and here all, since the decision was committed
    assert balance == {a: START_BALANCE - 10, b: START_BALANCE + 10}, balance
