"""The benchmarks keep working: every workload runs at a tiny size with correct results.

No timing is asserted (figures on a shared test machine mean nothing); what is
asserted is that each workload measures every side, that its correctness checks ran
and passed, that its targets are exactly issue 15's and are printed, met or missed,
with their figures, that a wrong answer is caught, and that the command line, the
JSON, the reST and the SVG come out whole, measured or replayed from a saved run.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from bench import report
from bench.__main__ import WORKLOADS, exit_status, main, run_workloads
from bench.common import Params, WorkloadResult, WrongResult
from bench.context import Context
from bench.model import REFERENCE, TABLE
from bench.transfer import balance_checker

ROOT = Path(__file__).resolve().parents[2]
TINY = Params(rows=200, repeat=1, ops=20, memory_rows=2000, sleep=0.01, threads=4)

SIDES = {
    "insert": ["shardsession", "sqlalchemy", "psycopg"],
    "load": ["shardsession", "sqlalchemy", "psycopg"],
    "top100": ["shardsession", "sqlalchemy", "psycopg"],
    "aggregate": ["shardsession", "sqlalchemy", "psycopg"],
    "transfer": ["shardsession", "sqlalchemy", "psycopg"],
    "point": ["shardsession", "sqlalchemy-plain", "sqlalchemy", "psycopg"],
    "concurrency": ["shardsession", "sqlalchemy-engines", "sqlalchemy", "psycopg"],
    "scatter": ["shardsession"] * 2 + ["sqlalchemy"] * 2 + ["psycopg"] * 2,
    "roundtrip": ["shardsession", "psycopg"] * 2,
    "memory": ["shardsession"],
}
#: issue 15's targets: per workload, each target's (what shardsession is measured
#: against, comparison, bound, unit), in order.  A side's name: the ratio of
#: throughputs; SCATTER: the 4-shard latency over the 1-shard one; None: the figure.
SCATTER = "4 shards / 1 shard"
TARGETS: dict[str, list[tuple[str | None, str, float, str]]] = {
    "insert": [("sqlalchemy", ">=", 3.0, "x")],
    "load": [("sqlalchemy", ">=", 1.0, "x")],
    "top100": [("sqlalchemy", ">=", 2.0, "x")],
    "aggregate": [("sqlalchemy", ">=", 2.0, "x")],
    "transfer": [("sqlalchemy", ">=", 1.5, "x")],
    "point": [("sqlalchemy-plain", ">=", 0.9, "x"), ("sqlalchemy", ">=", 2.0, "x")],
    "concurrency": [("sqlalchemy-engines", ">=", 1.0, "x")],
    "scatter": [(SCATTER, "<=", 1.2, "x")],
    "roundtrip": [],
    "memory": [(None, "<", 100.0, "MB")],
}


def measured(r: WorkloadResult, versus: str | None) -> float | None:
    """What a target of ``r`` against ``versus`` (as in :data:`TARGETS`) must measure."""
    if versus == SCATTER:
        four, one = r.figure("shardsession", "4 shards"), r.figure("shardsession", "1 shard")
        assert four is not None and one is not None
        return four.value / one.value
    ours = r.figure("shardsession")
    assert ours is not None
    return ours.value if versus is None else r.speedup(ours, versus)


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}


def test_every_workload_runs_with_correct_results(
    shard_dsns: dict[str, str], tmp_path: Path
) -> None:
    with Context(shard_dsns, TINY) as ctx:
        results = run_workloads(ctx, list(WORKLOADS), log=False)
    assert [r.name for r in results] == list(WORKLOADS)
    for r in results:
        assert r.error is None, f"{r.name}: {r.error}"
        assert [f.side for f in r.figures] == SIDES[r.name], r.name
        assert all(f.value >= 0 and f.count > 0 for f in r.figures), r.name
        assert [(t.op, t.bound, t.unit) for t in r.targets] == [
            target[1:] for target in TARGETS[r.name]
        ], r.name
        for t, (versus, *_) in zip(r.targets, TARGETS[r.name]):
            assert t.value == pytest.approx(measured(r, versus)), (r.name, t.description)
        assert r.checks, f"{r.name} ran no correctness check"
    assert exit_status(results) == 0
    for dsn in shard_dsns.values():  # the benchmark leaves nothing behind
        assert not tables(dsn) & {TABLE, REFERENCE, "bench_roundtrip"}

    by_name = {r.name: r for r in results}
    insert = by_name["insert"]
    assert insert.figures[0].count == TINY.rows
    assert insert.speedup(insert.figures[1], "sqlalchemy") == 1.0
    scatter = by_name["scatter"]
    assert {f.variant for f in scatter.figures} == {"4 shards", "1 shard"}
    concurrency = by_name["concurrency"]
    assert concurrency.figures[0].count == TINY.ops // TINY.threads * TINY.threads
    assert f"{TINY.threads} threads" in concurrency.notes[0]

    text = io.StringIO()
    env = {"date": "today", "postgresql": "16", "python": "3.11"}
    report.write_text(results, env, TINY, text)
    printed = text.getvalue()
    sections = printed.split("\n== ")
    assert sections[-1].startswith("summary")
    summary = sections[-1].splitlines()
    for name in WORKLOADS:
        assert f"== {name}:" in printed
    for r, section in zip(results, sections[1:-1]):  # each workload: its figures, its targets
        assert section.startswith(f"{r.name}:")
        for f in r.figures:
            assert f.label in section and report.fmt(f.value) in section, (r.name, f.label)
        for t in r.targets:
            met = "met" if t.met else "MISSED"
            line = f"target: {t.description} {t.goal}: measured {report.fmt(t.value, t.unit)}, "
            assert line + met in section, (r.name, line)
            row = [
                s
                for s in summary
                if s.split()[:1] == [r.name] and t.description in s and t.goal in s
            ]
            assert len(row) == 1, (r.name, t.description)
            ending = rf"{re.escape(report.fmt(t.value, t.unit))}\s+{'yes' if t.met else 'NO'}$"
            assert re.search(ending, row[0]), row[0]
    assert "target: none" in sections[list(WORKLOADS).index("roundtrip") + 1]
    data = json.loads(report.dumps(results, env, TINY))
    assert data["ok"] is True
    assert [w["name"] for w in data["workloads"]] == list(WORKLOADS)
    assert data["parameters"]["threads"] == TINY.threads
    assert len(data["summary"]) == sum(len(t) or 1 for t in TARGETS.values())
    assert {row["target"] for row in data["summary"]} >= {">= 0.9x", "<= 1.2x", "< 100 MB"}
    svg, rst = report.write_docs(results, env, TINY, tmp_path)
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg")
    assert "insert" in svg.read_text() and "list-table" in rst.read_text()
    check_rst(rst.read_text())


def check_rst(text: str) -> None:
    """The generated reST parses without a single warning."""
    docutils_core = pytest.importorskip("docutils.core")
    errors = io.StringIO()
    docutils_core.publish_doctree(
        text, settings_overrides={"warning_stream": errors, "report_level": 2, "halt_level": 5}
    )
    assert errors.getvalue() == ""


def test_a_wrong_answer_fails_the_run(shard_dsns: dict[str, str]) -> None:
    with Context(shard_dsns, TINY) as ctx:
        results = []
        for names in (["top100"], ["aggregate", "load"]):
            ctx.ensure_data(TINY.rows)
            # the unsharded reference now disagrees with the shards: every side is wrong
            with psycopg.connect(ctx.layout.reference_dsn, autocommit=True) as conn:
                sql = f"UPDATE {REFERENCE} SET balance = balance + 1 WHERE id = %s"
                conn.execute(sql, (TINY.rows,))
            # a wrong result makes the next workload reload the data
            results += run_workloads(ctx, names, log=False)
    top100, aggregate, load = results
    assert top100.error is not None and top100.error.startswith("wrong result: top100")
    assert aggregate.error is not None and aggregate.error.startswith("wrong result: aggregate")
    assert load.error is None  # the shards themselves are right
    assert exit_status(results) == 1
    crashed = [WorkloadResult("x", "x", error="crashed: RuntimeError: boom")]
    assert exit_status(crashed) == 2


def test_a_lost_or_misrouted_write_is_caught(shard_dsns: dict[str, str]) -> None:
    with Context(shard_dsns, TINY) as ctx:
        ctx.ensure_data(TINY.rows)
        layout = ctx.layout
        before, after = balance_checker(layout, "transfer", "x", Counter({1: -1, 2: 1}))
        before()
        shard = layout.shard_of(1)
        with psycopg.connect(layout.dsns[shard], autocommit=True) as conn:
            conn.execute(f"UPDATE {TABLE} SET balance = balance - 1 WHERE id = 1")
        with pytest.raises(WrongResult, match="1 balances did not move"):
            after(1)
        assert layout.fingerprints() != layout.expected_fingerprints(TINY.rows)
        # a row on the wrong shard: the counts no longer match the routing
        other = next(s for s in layout.shard_ids if s != shard)
        with psycopg.connect(layout.dsns[other], autocommit=True) as conn:
            conn.execute(f"INSERT INTO {TABLE} VALUES (%s, 1, 'x', 0)", (TINY.rows + 1,))
        assert layout.fingerprints()[other] != layout.expected_fingerprints(TINY.rows)[other]


def test_command_line_prints_json_and_writes_the_docs(
    shard_dsns: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = shard_dsns["s0"].replace("_s0_", "_{shard}_")
    assert template != shard_dsns["s0"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "top100",
            "aggregate",
            "concurrency",
            "memory",
            "--dsn",
            template,
            "--rows",
            "100",
            "--repeat",
            "1",
            "--ops",
            "10",
            "--memory-rows",
            "1000",
            "--threads",
            "2",
            "--json",
            "--docs",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] is True
    assert out["environment"]["postgresql"].startswith(("15", "16", "17", "18"))
    assert out["environment"]["sqlalchemy"].startswith("2.")
    assert out["parameters"]["rows"] == 100
    assert out["parameters"]["threads"] == 2
    names = ["top100", "aggregate", "concurrency", "memory"]
    assert [w["name"] for w in out["workloads"]] == names
    for w in out["workloads"]:
        assert w["error"] is None and w["checks"]
        assert all(t["met"] in (True, False) for t in w["targets"])
    assert "2 threads x 5 transactions" in out["workloads"][2]["notes"][0]
    docs = [tmp_path / "benchmarks_results.rst", tmp_path / "_static" / "benchmarks.svg"]
    assert "concurrency" in docs[0].read_text() and "concurrency" in docs[1].read_text()
    assert "--threads 2" in docs[0].read_text()

    # the saved run, reported again: the same text targets and the very same docs
    saved = tmp_path / "run.json"
    saved.write_text(done.stdout, encoding="utf-8")
    replay = tmp_path / "replay"
    capsys.readouterr()
    assert main(["--from-json", str(saved), "--docs", str(replay)]) == 0
    printed = capsys.readouterr().out
    for w in out["workloads"]:
        assert f"== {w['name']}:" in printed
        for t in w["targets"]:
            assert f"target: {t['description']} {t['goal']}: measured " in printed
    for path in docs:
        again = replay / path.relative_to(tmp_path)
        assert again.read_text() == path.read_text(), again


def test_command_line_rejects_a_template_without_placeholder() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--dsn", "host=nowhere", "top100"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "{shard}" in done.stderr
