"""Targets and how the report prints them: every figure with its target, met or missed.

Built from hand-made results, so every comparison can be made to hold or fail on
purpose; no database needed.
"""

from __future__ import annotations

import io

import pytest

from bench import report
from bench.common import Figure, Params, Target, WorkloadResult


def result(name: str, ours: float, theirs: float) -> WorkloadResult:
    r = WorkloadResult(name, f"{name} title", unit="tx/s")
    r.figures += [Figure("shardsession", ours, 1.0, 10), Figure("sqlalchemy", theirs, 1.0, 10)]
    return r


@pytest.mark.parametrize(
    ("op", "value", "bound", "met"),
    [
        (">=", 2.0, 2.0, True),
        (">=", 1.99, 2.0, False),
        (">", 2.0, 2.0, False),
        ("<=", 1.2, 1.2, True),
        ("<=", 1.21, 1.2, False),
        ("<", 100.0, 100.0, False),
        ("<", 99.9, 100.0, True),
    ],
)
def test_a_target_is_met_by_its_comparison(op: str, value: float, bound: float, met: bool) -> None:
    assert Target("t", value, op, bound).met is met


def test_a_target_prints_its_bound_and_rejects_an_unknown_comparison() -> None:
    assert Target("ratio", 1.0, ">=", 0.9).goal == ">= 0.9x"
    assert Target("ratio", 1.0, ">=", 2.0).text == "ratio >= 2x"
    assert Target("growth", 5.0, "<", 100.0, unit="MB").goal == "< 100 MB"
    with pytest.raises(ValueError, match="unknown comparison '=='"):
        Target("ratio", 1.0, "==", 1.0)


def test_at_least_and_at_most_targets() -> None:
    r = result("point", ours=900.0, theirs=1000.0)
    r.aim("shardsession / SQLAlchemy ShardedSession", "sqlalchemy", 0.9)
    r.aim("shardsession / SQLAlchemy ShardedSession", "sqlalchemy", 2.0)
    r.at_most("latency ratio", 1.25, 1.2)
    r.at_most("growth", 100.0, 100.0, unit="MB", strict=True)
    assert [(t.op, t.value, t.met) for t in r.targets] == [
        (">=", pytest.approx(0.9), True),
        (">=", pytest.approx(0.9), False),
        ("<=", 1.25, False),
        ("<", 100.0, False),
    ]


def test_the_text_and_the_summary_show_every_target_with_its_figure() -> None:
    point = result("point", ours=900.0, theirs=1000.0)
    point.aim("shardsession / SQLAlchemy ShardedSession", "sqlalchemy", 0.9)
    memory = WorkloadResult("memory", "memory title", unit="MB", higher_is_better=False)
    memory.figures.append(Figure("shardsession", 120.5, 3.0, 1000))
    memory.at_most("peak RSS growth", 120.5, 100.0, unit="MB", strict=True)
    roundtrip = result("roundtrip", ours=10.0, theirs=20.0)
    broken = WorkloadResult("load", "load title", error="wrong result: load, x: ...")
    results = [point, memory, roundtrip, broken]
    out = io.StringIO()
    report.write_text(results, {"date": "today"}, Params(), out)
    text = out.getvalue()
    assert "target: shardsession / SQLAlchemy ShardedSession >= 0.9x: measured 0.90x, met" in text
    assert "target: peak RSS growth < 100 MB: measured 120 MB, MISSED" in text
    assert "target: none" in text
    summary = text.split("== summary")[1].splitlines()[3:]
    cells = [line.split("  ") for line in summary]
    assert [[c.strip() for c in row if c.strip()] for row in cells] == [
        ["point", "shardsession / SQLAlchemy ShardedSession", ">= 0.9x", "0.90x", "yes"],
        ["memory", "peak RSS growth", "< 100 MB", "120 MB", "NO"],
        ["roundtrip", report.NO_TARGET, "-", "-", "-"],
        ["load", "results must be correct", "correct", "WRONG RESULT", "NO"],
    ]
    svg = report.render_svg(results, {"date": "today"})
    assert "(target &gt;= 0.9x)" in svg
    assert "peak RSS growth &lt; 100 MB: 120 MB, MISSED" in svg
