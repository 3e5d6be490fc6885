"""``shardsession demo``: run as a user runs it, at its smallest size (``--quick``).

The demo loads a multi-tenant schema, checks its cross-shard queries, moves money
from several processes while workers are killed and commits crash, runs recovery
and checks that the money is all there.  These tests check what it reports
against the databases themselves.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shardsession.demo.report import use_rich
from shardsession.embedded import LocalCluster
from tests.helpers import run_cli

DEMO_TABLES = ("demo_orders", "demo_users", "demo_tenants")


def _named(dsns: dict[str, str]) -> list[str]:
    return [arg for shard, dsn in dsns.items() for arg in ("--dsn", f"{shard}={dsn}")]


def _check_report(report: dict[str, Any]) -> None:
    assert report["ok"] is True, report
    assert report["invariant_held"] is True
    assert report["queries_matched"] is True
    assert report["queries"] and all(q["matches"] for q in report["queries"]), report["queries"]
    inv = report["invariant"]
    assert inv["total"] == inv["expected_total"] > 0
    assert inv["users"] == inv["expected_users"] == report["sizes"]["users"]
    assert inv["negative_balances"] == 0
    assert sum(inv["prepared_left"].values()) == 0
    assert not any(inv["locked_rows"].values())
    # the fleet section: reference table, global ids, resharding, asyncio, migration
    fleet = report["fleet"]
    assert fleet["ok"] is True, fleet["steps"]
    assert [s["step"] for s in fleet["steps"]] == [
        "reference table", "global ids", "join with the reference table",
        "rebalance 3 -> 4 shards", "after resharding", "asyncio", "migration",
    ]  # fmt: skip
    assert fleet["rebalance"]["rows"] > 0
    tr = report["transfers"]
    assert tr["workers_killed"] == report["sizes"]["processes"] >= 2
    # the worker killed while holding a row lock: the next statement there failed with
    # SQLAlchemy's OperationalError naming the shard; the transfer was rolled back and retried
    first = tr["processes"][0]
    kill = first["kill"]
    assert kill["stage"] == "locked"
    assert kill["outcome"] == "OperationalError: rolled back, retried", kill
    assert f"[shard {kill['shard']!r}]" in kill["error"] and str(kill["pid"]) in kill["error"]
    # the commit point killed after the other shard had prepared: no decision could be
    # recorded, so the two-phase commit rolled back everywhere and said so
    second = tr["processes"][1]
    assert second["kill"]["stage"] == "prepared-commit-point"
    assert second["kill"]["outcome"] == "TwoPhaseError: rolled back, retried", second["kill"]
    assert tr["retried"] >= 2
    # ... and the transfers went on afterwards, in every process
    assert all(p["committed_after_kill"] > 0 for p in tr["processes"]), tr["processes"]
    assert tr["committed"] > 0
    assert not report["recovery"]["errors"] and not report["recovery"]["waiting"]


def _connectable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def test_demo_json_on_its_own_cluster_then_stops_it(tmp_path: Path) -> None:
    path = tmp_path / "demo"
    done = run_cli("demo", "--quick", "--json", "--path", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # stdout holds the JSON document and nothing else
    _check_report(report)
    cluster = report["cluster"]
    assert cluster["external"] is False and cluster["path"] == str(path)
    assert sorted(cluster["shards"]) == ["s0", "s1", "s2", "s3"]
    assert report["load"]["two_phase_commits"] >= 1
    assert report["two_phase_commits"] >= report["transfers"]["committed"]
    # two processes crashed inside a commit: recovery committed the one whose
    # decision was recorded and rolled back the one without
    assert report["transfers"]["crashed_in_commit"] == 2
    assert len(report["recovery"]["committed"]) >= 1
    assert len(report["recovery"]["rolled_back"]) >= 1
    # the cluster was stopped afterwards
    assert cluster["stopped"] is True and cluster["kept"] is False
    assert not LocalCluster(shards=4, path=path).running()
    assert not _connectable(cluster["shards"]["s0"])


def test_demo_plain_text_without_a_terminal(shard_dsns: dict[str, str]) -> None:
    try:
        args = ["--quick", "--seconds", "2", *_named(shard_dsns)]
        done = run_cli("demo", *args, env={"TERM": "xterm-256color"})
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        _drop_demo_tables(shard_dsns)
    out = done.stdout
    assert "\x1b[" not in out  # stdout is a pipe: no colours, no cursor movement
    assert "invariant held: yes; queries matched: yes" in out
    for title in ("Shards", "Cross-shard queries", "Transfers", "Recovery", "Invariant"):
        assert f"\n{title}" in out, title
    assert "killed worker" in out
    assert "OperationalError: rolled back, retried" in out
    assert "TwoPhaseError: rolled back, retried" in out
    assert "total balance" in out
    assert "NO" not in out.split()


def test_demo_against_given_shards(shard_dsns: dict[str, str]) -> None:
    try:
        done = run_cli("demo", "--quick", "--seconds", "2", "--json", *_named(shard_dsns))
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        _check_report(report)
        assert report["cluster"]["external"] is True
        assert report["cluster"]["shards"] == shard_dsns
        assert "stopped" not in report["cluster"] and report["cluster"]["kept"] is False
        # what the demo reports is what the shards hold
        users = balance = prepared = 0
        for shard, dsn in shard_dsns.items():
            with psycopg.connect(dsn) as conn:
                n, total = conn.execute(
                    "SELECT count(*), coalesce(sum(balance), 0) FROM demo_users"
                ).fetchone()
                assert n == report["load"]["rows_per_shard"][shard]["users"]
                users += n
                balance += total
                prepared += conn.execute(
                    "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
                ).fetchone()[0]
        assert users == report["sizes"]["users"]
        assert balance == report["invariant"]["expected_total"]
        assert prepared == 0
    finally:
        _drop_demo_tables(shard_dsns)
    # the shards were only used, never stopped
    assert all(_connectable(dsn) for dsn in shard_dsns.values())


def _drop_demo_tables(dsns: dict[str, str]) -> None:
    for dsn in dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(DEMO_TABLES)}")


def test_demo_errors_the_user_can_fix(tmp_path: Path) -> None:
    unnamed = run_cli("demo", "--dsn", "host=/nowhere dbname=x")
    assert unnamed.returncode == 2
    assert unnamed.stderr.startswith("error: --dsn 'host=/nowhere dbname=x' needs the shard's name")
    one = run_cli("demo", "--dsn", "s0=host=/nowhere")
    assert one.returncode == 2 and "at least two shards" in one.stderr
    no_binaries = {"SHARDSESSION_PG_BIN": "/nonexistent"}
    missing = run_cli("demo", "--quick", "--path", str(tmp_path / "c"), env=no_binaries)
    assert missing.returncode == 2
    assert "error: SHARDSESSION_PG_BIN='/nonexistent'" in missing.stderr
    for done in (unnamed, one, missing):
        assert "Traceback" not in done.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "terminal", "expected"),
    [
        ({}, True, True),
        ({}, False, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"TERM": "dumb"}, True, False),
    ],
)
def test_rich_only_on_a_terminal_that_wants_colour(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], terminal: bool, expected: bool
) -> None:
    pytest.importorskip("rich")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stream = _Terminal() if terminal else io.StringIO()
    assert use_rich(stream) is expected


def test_a_second_demo_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    import fcntl
    import os

    path = tmp_path / "demo"
    lock = tmp_path / ".demo.demo.lock"
    with open(lock, "a+") as held:  # a demo running on that folder holds this lock
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(str(os.getpid()))
        held.flush()
        second = run_cli("demo", "--quick", "--path", str(path))
    assert second.returncode == 2, second.stdout[-2000:]
    assert f"another `shardsession demo` (pid {os.getpid()}) is running on {path}" in second.stderr
    assert "--path" in second.stderr and "Traceback" not in second.stderr
    assert not path.exists()  # it touched nothing
