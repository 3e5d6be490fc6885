"""Recovery against real PostgreSQL: partial runs, a run racing a commit, presumed abort.

Each test builds what a crashed coordinator leaves behind by hand: participants
prepared with psycopg (``PREPARE TRANSACTION 'ss_<global id>_<shard>'``) and the
decision written with :data:`~shardsession.twophase.DECISION_SQL` by the commit
point's own transaction.  Every part of a transaction (the commit point's too)
inserts a row of balance 10 into its shard's ``acct``; :func:`_balances` sums them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shardsession.recovery import _LOCK_KEY, recover
from shardsession.twophase import (
    COMMIT_LOG,
    COMMIT_LOG_DDL,
    DECISION_SQL,
    new_global_id,
    participant_gid,
)

SHARDS = ("s0", "s1", "s2", "s3")
_ids = itertools.count(1)


def _connect(dsn: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    # a lock wait is a bug in the test: fail rather than hang
    return psycopg.connect(dsn, autocommit=autocommit, options="-c lock_timeout=10s")


@pytest.fixture
def dsns(clean_shards: dict[str, str]) -> Iterator[dict[str, str]]:
    """Every shard with the commit log and an empty ``acct``."""
    for dsn in clean_shards.values():
        with _connect(dsn, autocommit=True) as conn:
            conn.execute(COMMIT_LOG_DDL)
            conn.execute("CREATE TABLE IF NOT EXISTS acct(id int primary key, balance int)")
    yield clean_shards  # the fixture rolls back what is left prepared


def _begin_commit_point(dsn: str) -> psycopg.Connection[Any]:
    """The commit point's transaction, open, with its own write done."""
    conn = _connect(dsn)
    conn.execute("INSERT INTO acct VALUES (%s, 10)", (next(_ids),))
    return conn


def _prepare(dsns: dict[str, str], global_id: str, shard: str) -> str:
    """Prepare ``shard``'s part of ``global_id``; return its participant gid."""
    gid = participant_gid(global_id, shard)
    conn = _connect(dsns[shard])
    try:
        conn.execute("INSERT INTO acct VALUES (%s, 10)", (next(_ids),))
        conn.execute(f"PREPARE TRANSACTION '{gid}'")
    finally:
        conn.close()
    return gid


def _crash_after_decision(dsns: dict[str, str], others: list[str]) -> tuple[str, list[str]]:
    """A commit that crashed after its decision: ``others`` are left prepared."""
    global_id = new_global_id("s0")
    with _begin_commit_point(dsns["s0"]) as point:
        gids = [_prepare(dsns, global_id, shard) for shard in others]
        point.execute(DECISION_SQL, (global_id, others))
    return global_id, gids


def _balances(dsns: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for shard, dsn in dsns.items():
        with _connect(dsn, autocommit=True) as conn:
            out[shard] = conn.execute("SELECT coalesce(sum(balance), 0) FROM acct").fetchone()[0]
    return out


def _prepared(dsns: dict[str, str]) -> list[str]:
    gids: list[str] = []
    for dsn in dsns.values():
        with _connect(dsn, autocommit=True) as conn:
            gids += [
                row[0]
                for row in conn.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
                )
            ]
    return sorted(gids)


def _log(dsn: str) -> list[tuple[str, str, list[str]]]:
    with _connect(dsn, autocommit=True) as conn:
        return conn.execute(
            f"SELECT gid, outcome, participants FROM {COMMIT_LOG} ORDER BY gid"
        ).fetchall()


def test_a_partial_run_keeps_a_decision_naming_shards_it_did_not_list(
    dsns: dict[str, str],
) -> None:
    global_id, (on_s1, on_s2) = _crash_after_decision(dsns, ["s1", "s2"])
    decision = [(global_id, "commit", ["s1", "s2"])]

    only_point = recover({"s0": dsns["s0"]}, older_than=0)
    assert only_point.pruned == 0 and not only_point.committed
    assert _log(dsns["s0"]) == decision
    assert _prepared(dsns) == sorted([on_s1, on_s2])

    some = recover({s: dsns[s] for s in ("s0", "s1")}, older_than=0)
    assert some.committed == [on_s1] and some.pruned == 0
    assert _log(dsns["s0"]) == decision  # s2 was not listed: it may still be prepared
    assert _prepared(dsns) == [on_s2]

    full = recover(dsns, older_than=0)
    assert full.committed == [on_s2] and not full.rolled_back and full.pruned == 1
    assert _log(dsns["s0"]) == [] and _prepared(dsns) == []
    assert _balances(dsns) == {"s0": 10, "s1": 10, "s2": 10, "s3": 0}


def test_a_decision_is_pruned_only_once_every_participant_is_settled(
    dsns: dict[str, str],
) -> None:
    global_id, (on_s1, on_s2) = _crash_after_decision(dsns, ["s1", "s2"])
    _, (other_s1,) = _crash_after_decision(dsns, ["s1"])
    # another recoverer is working on s2: this run skips it
    with _connect(dsns["s2"], autocommit=True) as busy:
        busy.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        skipped = recover(dsns, older_than=0)
    assert skipped.skipped_shards == ["s2"]
    assert sorted(skipped.committed) == sorted([on_s1, other_s1]) and skipped.pruned == 1
    assert [row[0] for row in _log(dsns["s0"])] == [global_id]
    assert _prepared(dsns) == [on_s2]
    # s2 unreachable: what names it stays, what does not is pruned
    _, (third_s1,) = _crash_after_decision(dsns, ["s1"])
    down = dict(dsns, s2=make_conninfo(dsns["s2"], dbname="shardsession_no_such_db"))
    report = recover(down, older_than=0)
    assert list(report.errors) == ["s2"] and report.committed == [third_s1]
    assert report.pruned == 1 and [row[0] for row in _log(dsns["s0"])] == [global_id]

    done = recover(dsns, older_than=0)
    assert done.committed == [on_s2] and done.pruned == 1 and not done.errors
    assert _log(dsns["s0"]) == [] and _prepared(dsns) == []
    assert _balances(dsns) == {"s0": 30, "s1": 30, "s2": 10, "s3": 0}


def test_a_decision_committed_after_the_listing_survives_the_run(
    dsns: dict[str, str],
) -> None:
    global_id = new_global_id("s0")
    point = _begin_commit_point(dsns["s0"])  # its transaction starts before the run
    raced: list[str] = []

    def commit_now() -> None:
        # between this run's listing and its pruning: prepare, decide, commit
        raced.append(_prepare(dsns, global_id, "s1"))
        point.execute(DECISION_SQL, (global_id, ["s1"]))
        point.commit()

    try:
        report = recover(dsns, older_than=3600, after_listing=commit_now)
    finally:
        point.close()
    # the run listed s1 before the participant was prepared, and kept the decision
    assert raced and not report.committed and not report.waiting and report.pruned == 0
    assert _log(dsns["s0"]) == [(global_id, "commit", ["s1"])]
    assert _prepared(dsns) == raced
    # the next run still finds the decision: it commits the participant, then prunes
    later = recover(dsns, older_than=3600)
    assert later.committed == raced and later.pruned == 1 and not later.waiting
    assert _log(dsns["s0"]) == [] and _prepared(dsns) == []
    assert _balances(dsns) == {"s0": 10, "s1": 10, "s2": 0, "s3": 0}


def test_presumed_abort_waits_for_the_grace_period_and_keeps_its_fence(
    dsns: dict[str, str],
) -> None:
    global_id = new_global_id("s0")
    gid = _prepare(dsns, global_id, "s1")  # the coordinator stalled before deciding

    young = recover(dsns, older_than=3600)
    assert young.waiting == [gid] and not young.rolled_back
    assert _prepared(dsns) == [gid] and _log(dsns["s0"]) == []

    old = recover(dsns, older_than=0)
    assert old.rolled_back == [gid] and not old.committed
    assert _prepared(dsns) == [] and _log(dsns["s0"]) == [(global_id, "abort", [])]
    again = recover(dsns, older_than=0)
    assert again.pruned == 0 and _log(dsns["s0"]) == [(global_id, "abort", [])]
    # the coordinator wakes up: its commit decision loses to the abort record
    with pytest.raises(psycopg.errors.UniqueViolation), _begin_commit_point(dsns["s0"]) as late:
        late.execute(DECISION_SQL, (global_id, ["s1"]))
    assert _balances(dsns) == {shard: 0 for shard in SHARDS}


def test_a_dry_run_changes_nothing(dsns: dict[str, str]) -> None:
    global_id, (decided,) = _crash_after_decision(dsns, ["s1"])
    undecided = _prepare(dsns, new_global_id("s3"), "s2")
    before = (_prepared(dsns), _balances(dsns))

    dry = recover(dsns, older_than=0, dry_run=True)
    assert dry.dry_run and dry.committed == [decided] and dry.rolled_back == [undecided]
    assert dry.pruned == 0
    assert (_prepared(dsns), _balances(dsns)) == before
    assert _log(dsns["s0"]) == [(global_id, "commit", ["s1"])] and _log(dsns["s3"]) == []
