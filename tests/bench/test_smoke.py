"""The benchmarks keep working: each runs at a tiny size (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import roundtrip

ROOT = Path(__file__).resolve().parents[2]


def test_roundtrip_reports_every_operation(shard_dsns: dict[str, str]) -> None:
    rows = roundtrip.run(shard_dsns, n=20, repeat=1)
    assert [r["operation"] for r in rows] == [
        "worker empty request",
        "worker 1-row query",
        "psycopg empty statement",
        "psycopg 1-row query",
    ]
    assert all(r["us_per_op"] > 0 for r in rows)
    assert rows[3]["vs_psycopg_1row"] == 1.0


def test_command_line_prints_json_with_the_environment(shard_dsns: dict[str, str]) -> None:
    template = shard_dsns["s0"].replace("_s0_", "_{shard}_")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "roundtrip", "--dsn", template, "--n", "10",
         "--repeat", "1", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["benchmark"] == "roundtrip"
    assert out["environment"]["postgresql"].startswith(("15", "16", "17", "18"))
    assert len(out["results"]) == 4
