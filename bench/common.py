"""What every benchmark shares: parameters, timing, result records and the environment."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import psycopg

from shardsession.embedded import LocalCluster

__all__ = [
    "SIDE_LABELS",
    "Figure",
    "Params",
    "Target",
    "Trial",
    "WorkloadResult",
    "WrongResult",
    "environment",
    "expect",
    "measure",
    "result_from_json",
    "shards",
]

#: how each side is named in tables and plots
SIDE_LABELS = {
    "shardsession": "shardsession",
    "sqlalchemy": "SQLAlchemy ShardedSession",
    "sqlalchemy-plain": "SQLAlchemy Session (one shard's database)",
    "sqlalchemy-engines": "SQLAlchemy Session (an engine per shard)",
    "psycopg": "psycopg (no ORM)",
}


class WrongResult(AssertionError):
    """A side returned a result that differs from the reference answer."""


def expect(condition: bool, message: str) -> None:
    """Raise :class:`WrongResult` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise WrongResult(message)


@dataclass
class Params:
    """The sizes of a run.

    :ivar rows: accounts inserted and loaded (ids ``1..rows``).
    :ivar repeat: repetitions of each measurement; the best is kept.
    :ivar ops: transactions / queries per repetition of the per-operation workloads.
    :ivar memory_rows: rows streamed by the memory workload.
    :ivar sleep: seconds each shard sleeps in the scatter-gather workload.
    :ivar threads: application threads of the concurrency workload.
    """

    rows: int = 40_000
    repeat: int = 3
    ops: int = 1000
    memory_rows: int = 1_000_000
    sleep: float = 0.05
    threads: int = 16


@dataclass
class Figure:
    """One side's best measurement of a workload.

    :ivar side: a key of :data:`SIDE_LABELS`: ``shardsession``, ``sqlalchemy``
        (``ShardedSession``), ``sqlalchemy-plain``, ``sqlalchemy-engines`` or ``psycopg``.
    :ivar variant: what distinguishes figures of the same side (e.g. ``"4 shards"``).
    :ivar value: the figure, in the workload's unit.
    :ivar seconds: the best repetition's duration.
    :ivar count: rows / operations in one repetition.
    """

    side: str
    value: float
    seconds: float = 0.0
    count: int = 0
    variant: str = ""

    @property
    def label(self) -> str:
        """The side's display name, with the variant."""
        name = SIDE_LABELS.get(self.side, self.side)
        return f"{name}, {self.variant}" if self.variant else name


@dataclass
class Target:
    """A target of the issue, and whether this run met it.

    :ivar description: what is measured, without the bound, e.g.
        ``"shardsession / SQLAlchemy ShardedSession"``; :attr:`goal` says the bound.
    :ivar value: the measured ratio (or absolute value).
    :ivar op: ``">="``, ``">"`` (at least) or ``"<="``, ``"<"`` (at most).
    :ivar bound: the target's bound.
    :ivar unit: ``"x"`` for ratios, else the unit of ``value`` (``"MB"``).
    """

    description: str
    value: float
    op: str
    bound: float
    unit: str = "x"

    def __post_init__(self) -> None:
        if self.op not in (">=", ">", "<=", "<"):
            raise ValueError(f"target {self.description!r}: unknown comparison {self.op!r}")

    @property
    def goal(self) -> str:
        """The bound as printed, e.g. ``">= 0.9x"`` or ``"< 100 MB"``."""
        unit = self.unit if self.unit in ("", "x") else " " + self.unit
        return f"{self.op} {self.bound:g}{unit}"

    @property
    def text(self) -> str:
        """The whole target in words: the description and the goal."""
        return f"{self.description} {self.goal}"

    @property
    def met(self) -> bool:
        """Whether the measured value meets the bound."""
        return {
            ">=": self.value >= self.bound,
            ">": self.value > self.bound,
            "<=": self.value <= self.bound,
            "<": self.value < self.bound,
        }[self.op]


@dataclass
class WorkloadResult:
    """Everything one workload reports.

    :ivar name: the workload's command-line name.
    :ivar title: a one-line description.
    :ivar unit: the unit of the figures (``rows/s``, ``tx/s``, ``ms``, ...).
    :ivar higher_is_better: True for throughput, False for latency and memory.
    :ivar figures: one per side (and variant).
    :ivar targets: the issue's targets for this workload.
    :ivar checks: the correctness checks that passed.
    :ivar notes: how the sides were run, where it matters.
    :ivar error: a wrong result or a crash; the run then fails.
    """

    name: str
    title: str
    unit: str = ""
    higher_is_better: bool = True
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def figure(self, side: str, variant: str = "") -> Figure | None:
        """The figure of ``side`` (and ``variant``), if measured."""
        for f in self.figures:
            if f.side == side and f.variant == variant:
                return f
        return None

    def speedup(self, fig: Figure, side: str) -> float | None:
        """How many times better ``fig`` is than ``side``'s figure of the same variant."""
        ref = self.figure(side, fig.variant)
        if ref is None or ref.value <= 0 or fig.value <= 0:
            return None
        return fig.value / ref.value if self.higher_is_better else ref.value / fig.value

    @classmethod
    def throughput(
        cls, name: str, title: str, unit: str, best: dict[str, tuple[float, int]]
    ) -> WorkloadResult:
        """A result with one figure per side: operations counted over the best seconds."""
        result = cls(name, title, unit=unit)
        for side, (seconds, count) in best.items():
            result.figures.append(Figure(side, count / seconds, seconds, count))
        return result

    def aim(self, label: str, versus: str, minimum: float) -> None:
        """Add the target "shardsession at least ``minimum`` times as good as ``versus``"
        (``label`` names the ratio, e.g. ``"shardsession / SQLAlchemy ShardedSession"``).
        """
        ours = self.figure("shardsession")
        assert ours is not None
        self.targets.append(Target(label, self.speedup(ours, versus) or 0.0, ">=", minimum))

    def at_most(
        self, label: str, value: float, maximum: float, *, unit: str = "x", strict: bool = False
    ) -> None:
        """Add the target "``value`` at most ``maximum``" (under it when ``strict``), for
        figures where lower is better: a latency ratio, a memory growth.
        """
        self.targets.append(Target(label, value, "<" if strict else "<=", maximum, unit))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, with the ratios and whether each target was met."""
        return {
            "name": self.name,
            "title": self.title,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "figures": [
                {
                    "side": f.side,
                    "variant": f.variant,
                    "label": f.label,
                    "value": f.value,
                    "seconds": f.seconds,
                    "count": f.count,
                    "vs_sqlalchemy": self.speedup(f, "sqlalchemy"),
                    "vs_psycopg": self.speedup(f, "psycopg"),
                }
                for f in self.figures
            ],
            "targets": [
                {
                    "description": t.description,
                    "goal": t.goal,
                    "value": t.value,
                    "op": t.op,
                    "bound": t.bound,
                    "unit": t.unit,
                    "met": t.met,
                }
                for t in self.targets
            ],
            "checks": list(self.checks),
            "notes": list(self.notes),
            "error": self.error,
        }


def result_from_json(data: dict[str, Any]) -> WorkloadResult:
    """Rebuild a :class:`WorkloadResult` from :meth:`WorkloadResult.to_json`'s output."""
    return WorkloadResult(
        name=data["name"],
        title=data["title"],
        unit=data["unit"],
        higher_is_better=data["higher_is_better"],
        figures=[
            Figure(f["side"], f["value"], f["seconds"], f["count"], f["variant"])
            for f in data["figures"]
        ],
        targets=[
            Target(t["description"], t["value"], t["op"], t["bound"], t["unit"])
            for t in data["targets"]
        ],
        checks=list(data["checks"]),
        notes=list(data["notes"]),
        error=data["error"],
    )


@dataclass
class Trial:
    """One side of a measurement.

    :ivar run: the timed part; returns the number of rows or operations it did.
    :ivar before: untimed, before every repetition (e.g. empty the table).
    :ivar after: untimed, after every repetition, given what ``run`` returned (checks).
    """

    run: Callable[[], int]
    before: Callable[[], None] | None = None
    after: Callable[[int], None] | None = None


def measure(trials: Mapping[str, Trial], repeat: int) -> dict[str, tuple[float, int]]:
    """Run every trial ``repeat`` times, interleaved (so drift in the machine's load
    touches every side alike); return side -> (best seconds, count).
    """
    best: dict[str, tuple[float, int]] = {}
    for _ in range(max(1, repeat)):
        for side, trial in trials.items():
            if trial.before is not None:
                trial.before()
            started = time.perf_counter()
            count = trial.run()
            seconds = time.perf_counter() - started
            if trial.after is not None:
                trial.after(count)
            if side not in best or seconds < best[side][0]:
                best[side] = (seconds, count)
    return best


def environment(dsn: str, *, embedded: bool) -> dict[str, Any]:
    """Machine, Python, PostgreSQL and library versions, printed with every figure."""
    with psycopg.connect(dsn) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        fsync = conn.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
    versions: dict[str, str | None] = {}
    for dist in ("shardsession", "psycopg", "sqlalchemy", "multiprocess"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "processor": _processor(),
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "postgresql": server,
        "servers": "embedded cluster (one server, 4 databases)" if embedded else "external (--dsn)",
        "fsync": fsync,
        **versions,
    }


def _processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
