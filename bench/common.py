"""What every benchmark shares: the environment report, timing, and output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import psycopg

from shardsession.embedded import LocalCluster


def environment(dsn: str) -> dict[str, Any]:
    """Machine, Python, PostgreSQL and library versions, printed with every figure."""
    with psycopg.connect(dsn) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    versions = {}
    for dist in ("shardsession", "psycopg", "multiprocess", "sqlalchemy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "postgresql": server,
        **versions,
    }


def best_of(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """Run ``fn`` ``repeat`` times; return the best seconds and the count it reported."""
    best = float("inf")
    count = 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - started)
    return best, count


def per_op_us(seconds: float, count: int) -> float:
    """Microseconds per operation."""
    return seconds / count * 1e6


@contextmanager
def shards(dsn_template: str | None, count: int = 4) -> Iterator[dict[str, str]]:
    """Shard DSNs: from ``--dsn`` (a template with ``{shard}``) or a temporary cluster."""
    if dsn_template:
        yield {f"s{i}": dsn_template.replace("{shard}", f"s{i}") for i in range(count)}
        return
    cluster = LocalCluster(shards=count, temporary=True, durable=False)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def report(title: str, env: dict[str, Any], rows: list[dict[str, Any]], as_json: bool) -> None:
    """Print the figures as a table (or JSON), with the environment they came from."""
    if as_json:
        print(json.dumps({"benchmark": title, "environment": env, "results": rows}, indent=2))
        return
    print(f"== {title}")
    print("   " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None))
    columns = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    print("   " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        cells = [_fmt(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)]
        print("   " + "  ".join(cells))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)
