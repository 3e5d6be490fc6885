"""How the demo shows what it does: rich terminal tables, plain text or JSON.

:func:`make_reporter` picks one: :class:`JsonReporter` for ``--json`` (one JSON
document on stdout, nothing else), :class:`RichReporter` when ``rich`` is
installed and stdout is a terminal that wants colour, :class:`PlainReporter`
otherwise.  All three render the same report dict (see
:func:`shardsession.demo.run.run_demo`) through :func:`sections`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = [
    "JsonReporter",
    "PlainReporter",
    "Progress",
    "Reporter",
    "RichReporter",
    "Section",
    "make_reporter",
    "sections",
    "use_rich",
]


# -- the report as tables -------------------------------------------------------------


@dataclass
class Section:
    """One table of the final report."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # numeric columns, right-aligned


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def sections(report: dict[str, Any]) -> list[Section]:
    """The final report as tables (shared by the rich and plain renderers)."""
    out: list[Section] = []
    cluster = report["cluster"]
    load = report["load"]
    per_shard = load.get("rows_per_shard", {})
    if cluster["external"]:
        where = f"{len(cluster['shards'])} shards given with --dsn"
    else:
        state = "reused" if cluster.get("reused") else "started"
        where = f"embedded cluster at {cluster['path']} ({state})"
    rows = [
        [shard, _n(c["tenants"]), _n(c["users"]), _n(c["orders"])] for shard, c in per_shard.items()
    ]
    rows.append(["total", _n(load["tenants"]), _n(load["users"]), _n(load["orders"])])
    out.append(
        Section(
            "Shards",
            ["shard", "tenants", "users", "orders"],
            rows,
            [
                where,
                f"loaded {_n(load['rows'])} rows in {load['batches']} batches "
                f"({load['two_phase_commits']} two-phase commits) in {load['seconds']:.1f} s",
            ],
            right={1, 2, 3},
        )
    )
    out.append(
        Section(
            "Cross-shard queries",
            ["query", "ran on", "result", "matches", "ms"],
            [
                [q["name"], q["where"], q["shown"], _yes(q["matches"]), f"{q['ms']:.1f}"]
                for q in report["queries"]
            ],
            right={4},
        )
    )
    tr = report["transfers"]
    rows = []
    for proc in tr["processes"]:
        counts = proc["counts"]
        kill = proc.get("kill") or {}
        killed = (
            f"pid {kill['pid']} ({kill['shard']}), {_STAGE_TEXT.get(kill['stage'], kill['stage'])}"
            if kill
            else "-"
        )
        rows.append(
            [
                str(proc["index"] + 1),
                _n(counts.get("committed", 0)),
                _n(counts.get("skipped", 0)),
                _n(counts.get("retried", 0)),
                killed,
                kill.get("outcome") or "-",
                _crash_cell(proc),
            ]
        )
    errors: dict[str, int] = {}
    for proc in tr["processes"]:
        for name, count in proc.get("errors", {}).items():
            errors[name] = errors.get(name, 0) + count
    why = ", ".join(f"{name} {count}" for name, count in sorted(errors.items()))
    out.append(
        Section(
            f"Transfers: {len(tr['processes'])} processes for {tr['seconds']:.1f} s",
            ["process", "committed", "skipped", "retried", "worker killed", "then", "crash"],
            rows,
            [
                f"{_n(tr['committed'])} transfers committed (each a two-phase commit over two "
                f"shards), {_n(tr['skipped'])} skipped for lack of funds",
                f"{tr['retried']} rolled back and retried"
                + (f" ({why})" if why else "")
                + f"; {_n(tr['committed_after_kill'])} committed after the kills",
            ],
            right={1, 2, 3},
        )
    )
    rec = report["recovery"]
    out.append(
        Section(
            "Recovery (older than 0 s: every transfer process is gone)",
            ["committed", "rolled back", "left waiting", "decisions pruned", "errors"],
            [
                [
                    _n(len(rec["committed"])),
                    _n(len(rec["rolled_back"])),
                    _n(len(rec["waiting"])),
                    _n(rec["pruned"]),
                    _n(len(rec["errors"])),
                ]
            ],
            [f"committed {g}" for g in rec["committed"]]
            + [f"rolled back {g}" for g in rec["rolled_back"]]
            + [f"waiting {g}" for g in rec["waiting"]]
            + [f"shard {s}: {m}" for s, m in rec["errors"].items()],
            right={0, 1, 2, 3, 4},
        )
    )
    inv = report["invariant"]
    prepared = sum(inv["prepared_left"].values())
    locked = [s for s, flag in inv["locked_rows"].items() if flag]
    out.append(
        Section(
            "Invariant",
            ["check", "expected", "actual", "ok"],
            [
                [
                    "total balance",
                    _n(inv["expected_total"]),
                    _n(inv["total"]),
                    _yes(inv["total"] == inv["expected_total"]),
                ],
                [
                    "users",
                    _n(inv["expected_users"]),
                    _n(inv["users"]),
                    _yes(inv["users"] == inv["expected_users"]),
                ],
                [
                    "negative balances",
                    "0",
                    _n(inv["negative_balances"]),
                    _yes(inv["negative_balances"] == 0),
                ],
                ["prepared transactions left", "0", _n(prepared), _yes(prepared == 0)],
                ["shards with locked rows", "0", _n(len(locked)), _yes(not locked)],
            ],
            right={1, 2},
        )
    )
    fleet = report["fleet"]
    out.append(
        Section(
            "What a fleet needs",
            ["step", "result", "ok"],
            [[s["step"], s["result"], _yes(s["ok"])] for s in fleet["steps"]],
            [
                "demo_countries is a reference table; demo_tickets ids are ss.ShardedIdentity; "
                f"the rebalance moved {fleet['rebalance']['rows_per_second']:,.0f} rows/s"
            ],
        )
    )
    return out


_STAGE_TEXT = {
    "locked": "holding a locked row",
    "prepared-commit-point": "commit point, after PREPARE",
    "prepared-participant": "prepared participant",
}
_CRASH_TEXT = {
    "after_prepare": "exit after PREPARE",
    "after_decision": "exit after decision",
}


def _crash_cell(proc: dict[str, Any]) -> str:
    crash = proc.get("crash")
    if not crash:
        return "-"
    text = _CRASH_TEXT.get(crash, crash)
    return text if proc.get("crashed") else f"{text} (did not happen)"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The closing lines: did it hold, and the counts that matter."""
    tr = report["transfers"]
    rec = report["recovery"]
    queries = report["queries"]
    matched = sum(q["matches"] for q in queries)
    settled = len(rec["committed"]) + len(rec["rolled_back"])
    return [
        f"invariant held: {_yes(report['invariant']['held'])}; queries matched: "
        f"{_yes(report['queries_matched'])} ({matched}/{len(queries)}); fleet steps: "
        f"{_yes(report['fleet']['ok'])}",
        f"{_n(tr['committed'])} transfers committed, {tr['retried']} retried, "
        f"{tr['workers_killed']} worker(s) killed, {_n(report['two_phase_commits'])} two-phase "
        f"commits, {tr['crashed_in_commit']} crash(es) inside a commit, {settled} prepared "
        f"transaction(s) settled by recovery; {report['elapsed_seconds']:.1f} s",
    ]


# -- reporters -------------------------------------------------------------------------


class Progress:
    """A running progress display; :meth:`update` moves it."""

    def update(
        self, completed: float | None = None, *, advance: float = 0, status: str = ""
    ) -> None:
        """Set or advance the completed amount and the status text."""


class Reporter:
    """Receives what the demo does as it happens, and the final report."""

    #: whether :func:`~shardsession.demo.run.run_demo` should print progress at all
    live = True

    def step(self, text: str) -> None:
        """A phase starts (or a line of information)."""

    def event(self, text: str) -> None:
        """Something noteworthy happened (a worker killed, a process crashed)."""

    @contextlib.contextmanager
    def progress(self, description: str, total: float) -> Iterator[Progress]:
        """Show progress towards ``total`` while the block runs."""
        yield Progress()

    def finish(self, report: dict[str, Any], kept: dict[str, str] | None = None) -> None:
        """Show the final report (and the DSNs of a kept cluster)."""


class JsonReporter(Reporter):
    """Prints the final report as one JSON document; nothing else."""

    live = False

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def finish(self, report: dict[str, Any], kept: dict[str, str] | None = None) -> None:
        self.out.write(json.dumps(report, indent=2, default=str) + "\n")
        self.out.flush()


class _PlainProgress(Progress):
    def __init__(self, owner: PlainReporter, total: float) -> None:
        self.owner = owner
        self.total = total or 1
        self.completed = 0.0
        self.dots = 0

    def update(
        self, completed: float | None = None, *, advance: float = 0, status: str = ""
    ) -> None:
        self.completed = completed if completed is not None else self.completed + advance
        want = min(20, int(20 * self.completed / self.total))
        if want > self.dots:
            self.owner._dots(want - self.dots)
            self.dots = want


class PlainReporter(Reporter):
    """Plain text for pipes, logs and terminals without colour."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self._open = False  # a line of progress dots is open

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _close_line(self) -> None:
        if self._open:
            self._write("\n")
            self._open = False

    def _dots(self, n: int) -> None:
        if not self._open:
            self._write("  ")
            self._open = True
        self._write("." * n)

    def step(self, text: str) -> None:
        self._close_line()
        self._write(text + "\n")

    def event(self, text: str) -> None:
        self._close_line()
        self._write(f"  {text}\n")

    @contextlib.contextmanager
    def progress(self, description: str, total: float) -> Iterator[Progress]:
        self.step(description)
        bar = _PlainProgress(self, total)
        yield bar
        bar.update(bar.total)
        self._close_line()

    def finish(self, report: dict[str, Any], kept: dict[str, str] | None = None) -> None:
        self._close_line()
        for section in sections(report):
            self._write("\n" + render_plain(section))
        self._write("\n" + "\n".join(summary_lines(report)) + "\n")
        if kept:
            self._write("\nthe cluster keeps running (stop it with `shardsession down --path "
                        f"{report['cluster']['path']}`):\n")  # fmt: skip
            for shard, dsn in kept.items():
                self._write(f"  {shard}: {dsn}\n")


def render_plain(section: Section) -> str:
    """A section as an aligned text table."""
    table = [section.columns, *section.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(section.columns))]

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in section.right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  " + "  ".join(cells).rstrip()

    out = [section.title, line(section.columns), "  " + "  ".join("-" * w for w in widths)]
    out += [line(row) for row in section.rows]
    out += [f"  {note}" for note in section.notes]
    return "\n".join(out) + "\n"


class _RichProgress(Progress):
    def __init__(self, progress: Any, task: Any) -> None:
        self.progress = progress
        self.task = task

    def update(
        self, completed: float | None = None, *, advance: float = 0, status: str = ""
    ) -> None:
        kwargs: dict[str, Any] = {"status": status} if status else {}
        if completed is not None:
            self.progress.update(self.task, completed=completed, **kwargs)
        else:
            self.progress.update(self.task, advance=advance, **kwargs)


class RichReporter(Reporter):
    """Tables and progress bars on a terminal, with ``rich``."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self._live: Any = None

    def step(self, text: str) -> None:
        self._print(f"[bold cyan]>[/] {text}")

    def event(self, text: str) -> None:
        self._print(f"  [yellow]![/] {text}")

    def _print(self, text: str) -> None:
        (self._live.console if self._live is not None else self.console).print(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: float) -> Iterator[Progress]:
        from rich.progress import (
            BarColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgressBar

        self.step(description)
        bar = RichProgressBar(
            TextColumn("  "),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
        )
        with bar:
            self._live = bar
            try:
                task = bar.add_task(description, total=total, status="")
                yield _RichProgress(bar, task)
                bar.update(task, completed=total)
            finally:
                self._live = None

    def finish(self, report: dict[str, Any], kept: dict[str, str] | None = None) -> None:
        from rich.table import Table
        from rich.text import Text

        for section in sections(report):
            table = Table(title=section.title, title_justify="left", title_style="bold")
            for i, column in enumerate(section.columns):
                table.add_column(column, justify="right" if i in section.right else "left")
            for row in section.rows:
                table.add_row(*[_rich_cell(cell) for cell in row])
            self.console.print()
            self.console.print(table)
            for note in section.notes:
                self.console.print(Text(f"  {note}", style="dim"))
        held = report["ok"]
        lines = summary_lines(report)
        self.console.print()
        self.console.print(Text(lines[0], style="bold green" if held else "bold red"))
        self.console.print(lines[1])
        if kept:
            self.console.print(
                "\nthe cluster keeps running (stop it with "
                f"`shardsession down --path {report['cluster']['path']}`):"
            )
            for shard, dsn in kept.items():
                self.console.print(f"  {shard}: {dsn}", highlight=False)


def _rich_cell(cell: str) -> Any:
    from rich.text import Text

    if cell == "yes":
        return Text(cell, style="green")
    if cell == "NO":
        return Text(cell, style="bold red")
    return Text(cell)


def use_rich(stream: TextIO | None = None) -> bool:
    """Whether to draw with ``rich``: installed, a terminal, and colour not turned off."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def make_reporter(json_output: bool) -> Reporter:
    """The reporter for ``--json``, a colour terminal with rich, or plain text."""
    if json_output:
        return JsonReporter()
    return RichReporter() if use_rich() else PlainReporter()
