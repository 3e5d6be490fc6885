"""Resharding: ``rebalance`` moves exactly the rows whose shard changed, and their children.

The models below are the application's: accounts placed by their id, ledger
entries and their notes without a shard key (they follow their account, then
their entry), holds keyed by their account's id with a foreign key to it (they
must move in the same batch), a reference table and a plain model, which stay
where they are.  Data is loaded onto three shards (``s0``-``s2``) by the same
rendezvous hash the Session uses, then moved to four (or from four to three).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from shardsession.coordinator.rebalance import RebalanceError, load_models, rebalance, verify
from sqlalchemy import ForeignKey, String, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import shardsession as ss
from shardsession.exc import ConfigurationError, OperationalError, TwoPhaseError
from shardsession.twophase import COMMIT_LOG_DDL
from tests.faults.support import ROOT, prepared, wait_for
from tests.helpers import run_cli

OLD = ("s0", "s1", "s2")
NEW = ("s0", "s1", "s2", "s3")
SEED = 20261201
MODELS = "tests.coordinator.test_rebalance:Base"
MOVED = ("rb_account", "rb_entry", "rb_note", "rb_hold")


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "rb_account"
    __shard_key__ = "id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(default=0)
    entries: Mapped[list[Entry]] = relationship(back_populates="account")


class Entry(Base):
    """No shard key: lives with its account."""

    __tablename__ = "rb_entry"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    account_id: Mapped[int] = mapped_column(ForeignKey("rb_account.id"), index=True)
    amount: Mapped[int]
    account: Mapped[Account] = relationship(back_populates="entries")


class Note(Base):
    """No shard key: lives with its entry, hence with the entry's account."""

    __tablename__ = "rb_note"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    entry_id: Mapped[int] = mapped_column(ForeignKey("rb_entry.id"), index=True)
    body: Mapped[str] = mapped_column(String(40))


class Hold(Base):
    """Keyed by its account's id, with a foreign key to it (a composite primary key)."""

    __tablename__ = "rb_hold"
    __shard_key__ = "account_id"
    account_id: Mapped[int] = mapped_column(ForeignKey("rb_account.id"), primary_key=True)
    n: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    amount: Mapped[int]


class Currency(Base):
    """A reference table: every shard has all of it; never moved."""

    __tablename__ = "rb_currency"
    __shard_key__ = ss.REPLICATED
    code: Mapped[str] = mapped_column(String(3), primary_key=True)


class Region(Base):
    """No key and no parent: stays on the shard it was written to."""

    __tablename__ = "rb_region"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


# -- data and where it is -------------------------------------------------------------


@pytest.fixture(scope="session")
def rb_tables(direct: dict[str, Any]) -> None:
    """This module's tables on every test shard (made once per test process)."""
    for engine in direct.values():
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)


@pytest.fixture
def rb(rb_tables: None, clean_shards: dict[str, str]) -> dict[str, str]:
    """The four test shards, with this module's tables, empty."""
    return dict(clean_shards)


def load(
    dsns: dict[str, str], accounts: int, shards: tuple[str, ...] = OLD, seed: int = SEED
) -> dict[int, int]:
    """Accounts 1..n (balance 1000) with entries, notes and holds, where the rendezvous
    hash over ``shards`` puts them; reference and plain rows on every shard.
    Returns account -> how many entries it has."""
    rng = random.Random(seed)
    per: dict[str, dict[str, list[tuple[Any, ...]]]] = {
        s: collections.defaultdict(list) for s in shards
    }
    entries: dict[int, int] = {}
    entry_id = note_id = 0
    for account in range(1, accounts + 1):
        rows = per[ss.shard_for_key(shards, account)]
        rows["rb_account"].append((account, 1000))
        entries[account] = rng.randrange(3)
        for _ in range(entries[account]):
            entry_id += 1
            rows["rb_entry"].append((entry_id, account, rng.randrange(100)))
            for _ in range(rng.randrange(2)):
                note_id += 1
                rows["rb_note"].append((note_id, entry_id, f"note {note_id}"))
        for n in range(rng.randrange(2)):
            rows["rb_hold"].append((account, n, 5))
    for shard, tables in per.items():
        tables["rb_currency"] = [("EUR",), ("USD",)]
        tables["rb_region"] = [(shards.index(shard),)]
        with psycopg.connect(dsns[shard], autocommit=True) as conn:
            for table in (
                "rb_account",
                "rb_entry",
                "rb_note",
                "rb_hold",
                "rb_currency",
                "rb_region",
            ):
                with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                    for row in tables[table]:
                        copy.write_row(row)
    for shard in set(dsns) - set(per):  # the shard being added has the reference rows too
        with psycopg.connect(dsns[shard], autocommit=True) as conn:
            conn.execute("INSERT INTO rb_currency VALUES ('EUR'), ('USD')")
    return entries


def placement(dsns: dict[str, str]) -> dict[str, dict[Any, list[str]]]:
    """table -> primary key -> the shards holding it (read directly from every shard)."""
    keys = {
        "rb_account": "id",
        "rb_entry": "id",
        "rb_note": "id",
        "rb_hold": "account_id, n",
        "rb_currency": "code",
        "rb_region": "id",
    }
    out: dict[str, dict[Any, list[str]]] = {t: collections.defaultdict(list) for t in keys}
    for shard, dsn in sorted(dsns.items()):
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table, key in keys.items():
                for row in conn.execute(f"SELECT {key} FROM {table}"):
                    out[table][row if len(row) > 1 else row[0]].append(shard)
    return out


def parents(dsns: dict[str, str]) -> tuple[dict[int, int], dict[int, int]]:
    """entry -> its account, note -> its entry."""
    entry_of: dict[int, int] = {}
    note_of: dict[int, int] = {}
    for dsn in dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            entry_of.update(conn.execute("SELECT id, account_id FROM rb_entry").fetchall())
            note_of.update(conn.execute("SELECT id, entry_id FROM rb_note").fetchall())
    return entry_of, note_of


def expected_moves(
    where: dict[str, dict[Any, list[str]]],
    entry_of: dict[int, int],
    note_of: dict[int, int],
    new: tuple[str, ...] = NEW,
) -> dict[str, dict[tuple[str, str], int]]:
    """What must move, worked out from the rows themselves: accounts and holds whose
    winner changed, entries and notes of those accounts."""
    out: dict[str, collections.Counter[tuple[str, str]]] = collections.defaultdict(
        collections.Counter
    )
    home = {a: ss.shard_for_key(new, a) for a in where["rb_account"]}
    for account, (shard,) in where["rb_account"].items():
        if home[account] != shard:
            out["rb_account"][shard, home[account]] += 1
    for (account, _n), (shard,) in where["rb_hold"].items():
        if home[account] != shard:
            out["rb_hold"][shard, home[account]] += 1
    for entry, (shard,) in where["rb_entry"].items():
        if home[entry_of[entry]] != shard:
            out["rb_entry"][shard, home[entry_of[entry]]] += 1
    for note, (shard,) in where["rb_note"].items():
        if home[entry_of[note_of[note]]] != shard:
            out["rb_note"][shard, home[entry_of[note_of[note]]]] += 1
    return {table: dict(pairs) for table, pairs in out.items()}


def assert_in_place(dsns: dict[str, str], new: tuple[str, ...] = NEW) -> None:
    """Every account and hold on its winner; every entry and note with its parent."""
    where = placement(dsns)
    entry_of, note_of = parents(dsns)
    for account, shards in where["rb_account"].items():
        assert shards == [ss.shard_for_key(new, account)], (account, shards)
    for (account, _n), shards in where["rb_hold"].items():
        assert shards == where["rb_account"][account]
    for entry, shards in where["rb_entry"].items():
        assert shards == where["rb_account"][entry_of[entry]], (entry, shards)
    for note, shards in where["rb_note"].items():
        assert shards == where["rb_entry"][note_of[note]], (note, shards)


# -- moving ----------------------------------------------------------------------------


def test_dry_run_counts_exactly_what_the_move_moves(rb: dict[str, str]) -> None:
    load(rb, 400)
    before = placement(rb)
    expected = expected_moves(before, *parents(rb))
    assert expected["rb_account"] and expected["rb_entry"] and expected["rb_note"]
    assert {pair for pairs in expected.values() for pair in pairs} == {(s, "s3") for s in OLD}

    dry = rebalance(rb, Base, dry_run=True, batch_size=50)
    assert dry.moved == expected
    assert placement(rb) == before  # a dry run changes nothing

    report = rebalance(rb, Base, batch_size=37)
    assert report.moved == dry.moved
    assert report.batches == sum(-(-n // 37) for n in expected["rb_account"].values())
    assert report.verification is not None and report.verification.ok
    after = placement(rb)
    for table in ("rb_currency", "rb_region"):  # not moved
        assert after[table] == before[table]
    for table in MOVED:  # nothing lost, nothing doubled
        assert set(after[table]) == set(before[table])
        assert all(len(shards) == 1 for shards in after[table].values())
    assert rebalance(rb, Base).rows == 0  # nothing left to move


def test_children_move_with_their_parent(rb: dict[str, str]) -> None:
    entries = load(rb, 300)
    rebalance(rb, Base, batch_size=16)
    assert_in_place(rb)
    counts = collections.Counter(a for a in parents(rb)[0].values())
    assert {a: n for a, n in entries.items() if n} == dict(counts)


def test_removing_a_shard_empties_it(rb: dict[str, str]) -> None:
    load(rb, 300, shards=NEW)
    before = placement(rb)
    three = {s: rb[s] for s in OLD}
    dry = rebalance(three, Base, retiring={"s3": rb["s3"]}, dry_run=True)
    assert dry.moved == expected_moves(before, *parents(rb), new=OLD)
    report = rebalance(three, Base, retiring={"s3": rb["s3"]}, batch_size=40)
    assert report.moved == dry.moved
    assert {dst for pairs in report.moved.values() for _src, dst in pairs} <= set(OLD)
    assert_in_place(rb, new=OLD)
    # the reference and plain tables are left, and the verification says so
    assert report.verification is not None
    assert report.verification.left_on_retiring == {"rb_currency": 2, "rb_region": 1}
    assert verify(three, Base, retiring={"s3": rb["s3"]}).ok


def test_a_row_already_on_its_destination_stops_the_batch(rb: dict[str, str]) -> None:
    load(rb, 60)
    moving = next(a for a in range(1, 61) if ss.shard_for_key(NEW, a) == "s3")
    with psycopg.connect(rb["s3"], autocommit=True) as conn:  # a copy of it on its new shard
        conn.execute("INSERT INTO rb_account (id, balance) VALUES (%s, 7)", (moving,))
    checked = verify(rb, Base)
    assert not checked.ok
    assert checked.duplicated["rb_account"] == 1
    with pytest.raises(RebalanceError, match="already on 's3', so it is on two shards"):
        rebalance(rb, Base, batch_size=1000)
    where = placement(rb)["rb_account"]
    assert len(where) == 60 and sorted(where[moving]) == [ss.shard_for_key(OLD, moving), "s3"]


def test_foreign_keys_from_unmoved_tables_are_refused(rb: dict[str, str]) -> None:
    load(rb, 10)
    with psycopg.connect(rb["s1"], autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE rb_audit (account_id int REFERENCES rb_account (id) ON DELETE CASCADE)"
        )
    try:
        before = placement(rb)
        with pytest.raises(
            ConfigurationError, match=r"rb_audit .* has a foreign key to rb_account"
        ):
            rebalance(rb, Base)
        assert placement(rb) == before
    finally:
        with psycopg.connect(rb["s1"], autocommit=True) as conn:
            conn.execute("DROP TABLE rb_audit")


# -- sessions during a rebalance ------------------------------------------------------------


@pytest.fixture
def new_shards(rb: dict[str, str]) -> Iterator[ss.ShardSet]:
    shards = ss.create_shards(rb, pool_size=2, max_overflow=8, recovery_interval=None)
    yield shards
    shards.close()


def test_sessions_find_rows_not_moved_yet(rb: dict[str, str], new_shards: ss.ShardSet) -> None:
    load(rb, 40)
    moving = [a for a in range(1, 41) if ss.shard_for_key(NEW, a) != ss.shard_for_key(OLD, a)]
    assert moving
    a = moving[0]
    with ss.Session(new_shards) as plain:  # routing by the new list alone misses it
        assert plain.get(Account, a) is None
    with ss.Session(new_shards, previous_shards=OLD) as s:
        found = s.get(Account, a)
        assert found is not None and ss.inspect(found).identity_token == ss.shard_for_key(OLD, a)
        rows = s.scalars(select(Account).where(Account.id.in_(moving))).all()
        assert sorted(r.id for r in rows) == moving
        assert s.scalar(select(func.count()).select_from(Account)) == 40
        result = s.execute(update(Account).where(Account.id == moving[1]).values(balance=5))
        assert result.rowcount == 1
        s.commit()
    rebalance(rb, Base)
    with ss.Session(new_shards, previous_shards=OLD) as s:
        found = s.get(Account, a)
        assert found is not None and ss.inspect(found).identity_token == "s3"
        assert s.get(Account, moving[1]).balance == 5


def test_a_transaction_holding_a_row_commits_before_the_move(
    rb: dict[str, str], new_shards: ss.ShardSet
) -> None:
    load(rb, 40)
    a = next(a for a in range(1, 41) if ss.shard_for_key(NEW, a) == "s3")
    old = ss.shard_for_key(OLD, a)
    outcome: list[Any] = []
    with ss.Session(new_shards, previous_shards=OLD) as s:
        account = s.get(Account, a)  # locks the row where it is until the commit
        mover = threading.Thread(target=lambda: outcome.append(rebalance(rb, Base)))
        mover.start()

        def others_moved() -> bool:
            where = placement(rb)["rb_account"]
            return all(w == [ss.shard_for_key(NEW, b)] for b, w in where.items() if b != a)

        wait_for(others_moved, 20, "every other account moved")
        assert placement(rb)["rb_account"][a] == [old]  # still where it was
        account.balance += 250
        s.commit()
    mover.join(30)
    assert outcome and outcome[0].verification.ok
    with psycopg.connect(rb["s3"], autocommit=True) as conn:
        moved = conn.execute("SELECT balance FROM rb_account WHERE id = %s", (a,)).fetchone()
    assert moved == (1250,)  # the update committed first, and moved with the row


def test_session_needs_the_engines_of_retiring_shards(
    rb: dict[str, str], new_shards: ss.ShardSet
) -> None:
    three = {s: new_shards[s] for s in OLD}
    with pytest.raises(ss.exc.ArgumentError, match=r"\['s3'\] are in previous_shards"):
        ss.Session(three, previous_shards=NEW)
    load(rb, 30, shards=NEW)
    on_s3 = next(a for a in range(1, 31) if ss.shard_for_key(NEW, a) == "s3")
    with ss.Session(three, previous_shards=new_shards) as s:
        assert ss.inspect(s.get(Account, on_s3)).identity_token == "s3"
        assert s.scalar(select(func.count()).select_from(Account)) == 30


def test_transfers_keep_the_books_while_rows_move(rb: dict[str, str]) -> None:
    """3 -> 4 shards under two-account transfers from several threads: no money made or
    lost, no account lost or doubled, every committed transfer counted, all in place."""
    accounts, hot = 2000, 120
    load(rb, accounts)
    shards = ss.create_shards(
        rb, pool_size=4, max_overflow=8, recovery_interval=1.0, recovery_grace=5.0, lock_timeout=10
    )
    make = ss.sessionmaker(shards=shards, previous_shards=OLD)
    committed: list[tuple[int, int, int]] = []
    problems: list[str] = []
    retries = collections.Counter()
    done = threading.Event()

    def transfers(seed: int) -> None:
        rng = random.Random(seed)
        while not done.is_set():
            a, b = rng.sample(range(1, hot + 1), 2)
            amount = rng.randrange(1, 50)
            for _ in range(50):
                try:
                    with make() as s, s.begin():
                        first, second = sorted((a, b))
                        accounts_ = {
                            n: s.get(Account, n, with_for_update=True) for n in (first, second)
                        }
                        accounts_[a].balance -= amount
                        accounts_[b].balance += amount
                    committed.append((a, b, amount))
                    break
                except (OperationalError, TwoPhaseError) as err:
                    retries[type(err).__name__] += 1
                    if "not known" in str(err):
                        problems.append(f"outcome unknown: {err}")
                        return
                except Exception as err:  # any other error is a defect
                    problems.append(f"{type(err).__name__}: {err}")
                    return

    threads = [threading.Thread(target=transfers, args=(SEED + i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(committed) >= 30, 20, "transfers before the rebalance")
        started = len(committed)
        report = rebalance(rb, Base, batch_size=10, lock_timeout=2)
        during = len(committed) - started
    finally:
        done.set()
        for t in threads:
            t.join(60)
        shards.close()
    assert not problems, problems
    assert during > 20, f"only {during} transfers ran during the rebalance"
    assert report.verification is not None and report.verification.ok
    balances: dict[int, list[int]] = collections.defaultdict(list)
    for dsn in rb.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            for account, balance in conn.execute("SELECT id, balance FROM rb_account"):
                balances[account].append(balance)
    assert sorted(balances) == list(range(1, accounts + 1))  # none lost
    assert all(len(v) == 1 for v in balances.values())  # none doubled
    expected = dict.fromkeys(range(1, accounts + 1), 1000)
    for a, b, amount in committed:
        expected[a] -= amount
        expected[b] += amount
    assert {a: v[0] for a, v in balances.items()} == expected  # every commit counted
    assert sum(v[0] for v in balances.values()) == 1000 * accounts
    assert_in_place(rb)
    moved_hot = sum(
        1
        for a in range(1, hot + 1)
        if ss.shard_for_key(OLD, a) != "s3" and ss.shard_for_key(NEW, a) == "s3"
    )
    assert moved_hot > 10  # the transfers did touch rows that moved


# -- crashes -----------------------------------------------------------------------------------


def _cli_args(dsns: dict[str, str], *extra: str) -> list[str]:
    return ["rebalance", "--models", MODELS, *(f"--dsn={s}={d}" for s, d in dsns.items()), *extra]


def test_a_killed_rebalance_finishes_when_run_again(rb: dict[str, str]) -> None:
    load(rb, 1500)
    before = placement(rb)
    env = {**os.environ, "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "shardsession", *_cli_args(rb, "--batch-size", "5")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(8)]  # the plan, then 7 batches
        assert all(line.startswith("batch ") for line in lines[1:]), lines
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    partly = placement(rb)["rb_account"]
    assert any(shards == ["s3"] for shards in partly.values())  # some moved already
    assert not all(ss.shard_for_key(NEW, a) == w[0] for a, w in partly.items())  # not all
    again = run_cli(*_cli_args(rb, "--json"), cwd=ROOT, env={"PYTHONPATH": ROOT})
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["verification"]["ok"] and report["rows"] > 0
    assert_in_place(rb)
    after = placement(rb)
    assert all(set(after[t]) == set(before[t]) for t in MOVED)
    assert not prepared(rb)


def test_a_batch_killed_after_prepare_is_settled_by_the_next_run(rb: dict[str, str]) -> None:
    load(rb, 200)
    before = placement(rb)
    with psycopg.connect(rb["s3"], autocommit=True) as conn:  # the decision waits
        conn.execute(COMMIT_LOG_DDL)
        conn.execute(
            "CREATE FUNCTION rb_stall() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER rb_stall BEFORE INSERT ON shardsession_commit_log "
            "FOR EACH ROW EXECUTE FUNCTION rb_stall()"
        )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardsession", *_cli_args(rb)],
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        with psycopg.connect(rb["s3"], autocommit=True) as conn:
            stalled = (
                "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                "AND application_name = 'shardsession-rebalance'"
            )
            wait_for(lambda: conn.execute(stalled).fetchone() is not None, 30, "the decision")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM ({stalled}) AS s")
            conn.execute("DROP TRIGGER rb_stall ON shardsession_commit_log")
            conn.execute("DROP FUNCTION rb_stall()")
        in_doubt = prepared(rb)
        assert len(in_doubt) == 1 and len(next(iter(in_doubt.values()))) == 1  # the source
        assert placement(rb)["rb_account"] == before["rb_account"]  # nothing moved yet
        again = run_cli(*_cli_args(rb, "--json"), cwd=ROOT, env={"PYTHONPATH": ROOT})
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert [s.split(": ")[1] for s in report["settled"]] == ["abort"]
        assert report["moved"] == {
            t: {f"{a}->{b}": n for (a, b), n in sorted(p.items())}
            for t, p in expected_moves(before, *parents(rb)).items()
        }
        assert_in_place(rb)
        assert not prepared(rb)
    finally:
        proc.kill()
        with psycopg.connect(rb["s3"], autocommit=True) as conn:
            conn.execute("DROP TRIGGER IF EXISTS rb_stall ON shardsession_commit_log")
            conn.execute("DROP FUNCTION IF EXISTS rb_stall()")


# -- the command line ----------------------------------------------------------------------


def test_command_line_dry_run_verify_and_errors(rb: dict[str, str]) -> None:
    load(rb, 120)
    expected = expected_moves(placement(rb), *parents(rb))
    dry = run_cli(*_cli_args(rb, "--dry-run"), cwd=ROOT, env={"PYTHONPATH": ROOT})
    assert dry.returncode == 0, dry.stderr
    total = sum(n for pairs in expected.values() for n in pairs.values())
    assert dry.stdout.startswith(f"dry run: {total} row(s) would move")
    for (src, dst), n in expected["rb_account"].items():
        assert f"{src}->{dst}: {n}" in dry.stdout
    checked = run_cli(*_cli_args(rb, "--verify", "--json"), cwd=ROOT, env={"PYTHONPATH": ROOT})
    assert checked.returncode == 1
    assert json.loads(checked.stdout)["misplaced"]["rb_account"] == sum(
        expected["rb_account"].values()
    )
    moved = run_cli(*_cli_args(rb), cwd=ROOT, env={"PYTHONPATH": ROOT})
    assert moved.returncode == 0, moved.stderr
    assert "verified: every row of 4 table(s) is on its shard" in moved.stdout
    bad = run_cli(
        "rebalance",
        "--models",
        "tests.nowhere:Base",
        f"--dsn=s0={rb['s0']}",
        cwd=ROOT,
        env={"PYTHONPATH": ROOT},
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error: --models 'tests.nowhere:Base': cannot import")
    assert len(bad.stderr.splitlines()) == 1, bad.stderr
    with pytest.raises(ConfigurationError, match="has no 'Nope'"):
        load_models("tests.coordinator.test_rebalance:Nope")
    assert load_models(MODELS) is Base


def test_a_new_shard_gets_the_reference_tables(rb: dict[str, str]) -> None:
    # Reference rows written while the fleet had three shards: the fourth has none.
    new = {s: rb[s] for s in NEW}
    for shard in OLD:
        with psycopg.connect(rb[shard], autocommit=True) as conn:
            conn.execute("INSERT INTO rb_currency VALUES ('EUR'), ('JPY'), ('USD')")
    dry = rebalance(new, Base, dry_run=True)
    assert dry.moved["rb_currency"] == {("s0", "s3"): 3}
    done = rebalance(new, Base)
    assert done.moved["rb_currency"] == {("s0", "s3"): 3}
    with psycopg.connect(rb["s3"], autocommit=True) as conn:
        codes = [r[0] for r in conn.execute("SELECT code FROM rb_currency ORDER BY code")]
    assert codes == ["EUR", "JPY", "USD"]
    assert verify(new, Base).ok
    # copies that differ are not guessed between: verification and rebalance say so
    with psycopg.connect(rb["s1"], autocommit=True) as conn:
        conn.execute("INSERT INTO rb_currency VALUES ('GBP')")
    checked = verify(new, Base)
    assert not checked.ok and checked.reference_counts["rb_currency"]["s1"] == 4
    with pytest.raises(RebalanceError, match="rb_currency has different rows"):
        rebalance(new, Base)
