"""The demo from start to end: cluster, schema, load, queries, transfers, recovery.

:func:`run_demo` is what ``shardsession demo`` runs.  It returns the report (a
JSON-ready dict) after handing it to a :class:`~shardsession.demo.report.Reporter`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardsession.demo.fleet import run_fleet
from shardsession.demo.report import Reporter
from shardsession.demo.workload import (
    Sizes,
    check_invariant,
    generate,
    load,
    open_shards,
    plan_transfers,
    rows_per_shard,
    run_queries,
    run_transfers,
)
from shardsession.embedded import LocalCluster, default_cluster_path
from shardsession.exc import ConfigurationError
from shardsession.preflight import named_dsns

__all__ = ["DEMO_SHARDS", "QUICK", "DemoOptions", "default_demo_path", "parse_dsns", "run_demo"]

#: How many shards the embedded demo cluster has.
DEMO_SHARDS = 4
#: The sizes of ``--quick`` (the tests use them).
QUICK = Sizes(tenants=12, users=200, orders=1000, processes=2, seconds=3.0, fleet_customers=300)


def default_demo_path() -> Path:
    """The demo cluster's folder: ``demo`` next to the default cluster folder."""
    return default_cluster_path().parent / "demo"


def parse_dsns(items: list[str]) -> dict[str, str]:
    """``["s0=DSN", ...]`` -> ``{"s0": "DSN"}``; every item must name its shard.

    :raises ConfigurationError: for an item without a name, a repeated name, or
        fewer than two shards (transfers need two).
    """
    out = named_dsns(items, names_required=True, why="(give every shard its name)")
    if len(out) < 2:
        raise ConfigurationError("the demo needs at least two shards: give --dsn for each of them")
    return out


@dataclass
class DemoOptions:
    """What ``shardsession demo`` was asked to do."""

    path: str | None = None
    dsns: dict[str, str] | None = None
    keep: bool = False
    sizes: Sizes = field(default_factory=Sizes)
    seed: int = 2024


@contextlib.contextmanager
def demo_lock(path: Path) -> Iterator[None]:
    """Hold the demo folder ``path`` for one demo at a time.

    Two demos on one folder would drop each other's tables and stop each other's
    cluster; the second one is refused at once, naming the first one's pid.

    :raises ConfigurationError: another demo holds the folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.demo.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise ConfigurationError(
                f"another `shardsession demo` (pid {holder}) is running on {path}; wait for "
                "it to finish, or give this one a folder of its own with --path"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def run_demo(options: DemoOptions, reporter: Reporter) -> dict[str, Any]:
    """Run the demo; return the report (``report["ok"]``: invariant held, queries matched)."""
    if options.dsns is not None:
        return _run_demo(options, reporter)
    with demo_lock(Path(options.path) if options.path else default_demo_path()):
        return _run_demo(options, reporter)


def _run_demo(options: DemoOptions, reporter: Reporter) -> dict[str, Any]:
    import shardsession as ss

    started = time.monotonic()
    sizes = options.sizes
    cluster: LocalCluster | None = None
    info: dict[str, Any] = {"external": options.dsns is not None, "path": None}
    shards = None
    try:
        if options.dsns is not None:
            dsns = dict(options.dsns)
            reporter.step(f"using {len(dsns)} shards given with --dsn")
        else:
            path = Path(options.path) if options.path else default_demo_path()
            cluster = LocalCluster(shards=DEMO_SHARDS, path=path)
            info["reused"] = cluster.running()
            verb = "reusing" if info["reused"] else "starting"
            reporter.step(f"{verb} the embedded cluster ({DEMO_SHARDS} shards) at {cluster.path}")
            dsns = cluster.start()
            info["path"] = str(cluster.path)
        info["shards"] = dsns
        # An earlier run cut short after its crashes leaves prepared transactions,
        # whose locks would block dropping the demo tables: settle them first.
        earlier = ss.recover(dsns, older_than=0)
        settled = len(earlier.committed) + len(earlier.rolled_back)
        if settled:
            reporter.event(f"settled {settled} prepared transaction(s) an earlier run left")
        info["settled_before"] = settled
        # A statement timeout, so that a lock someone else holds on the demo tables
        # makes an error instead of a hang.
        shards = open_shards(
            dsns, pool_size=1, max_overflow=3, statement_timeout=60, recovery_interval=None
        )
        data = generate(sizes, list(dsns), seed=options.seed)
        plan_transfers(data, sizes)  # too few users for the transfers: say so now
        rows = len(data.tenants) + len(data.users) + len(data.orders)
        with reporter.progress(
            f"creating the demo tables; loading {len(data.tenants)} tenants, "
            f"{len(data.users):,} users, {len(data.orders):,} orders",
            rows,
        ) as bar:
            loaded = load(shards, data, advance=lambda n: bar.update(advance=n))
        loaded["rows_per_shard"] = rows_per_shard(shards)

        reporter.step("running cross-shard queries")
        queries = run_queries(shards, data)
        for q in queries:
            if not q.matches:
                reporter.event(f"{q.name}: got {q.result!r}, expected {q.expected!r}")

        transfers = _transfers(reporter, dsns, data, sizes)

        reporter.step("running recovery (older than 0 s: the transfer processes are gone)")
        report = ss.recover(dsns, older_than=0)
        invariant = check_invariant(shards, data)
        shards.close()
        shards = None
        fleet = run_fleet(dsns, customers=sizes.fleet_customers, seed=options.seed,
                          step=reporter.step)  # fmt: skip
    finally:
        if shards is not None:
            shards.close()
        if cluster is not None and not options.keep:
            with contextlib.suppress(Exception):
                info["stopped"] = cluster.stop()
    info["kept"] = bool(cluster is not None and options.keep)
    if cluster is not None and not options.keep:
        reporter.step(f"stopped the embedded cluster at {cluster.path}")
    tr = transfers.as_dict()
    matched = all(q.matches for q in queries)
    out: dict[str, Any] = {
        "ok": bool(invariant["held"] and matched and fleet["ok"]),
        "invariant_held": invariant["held"],
        "queries_matched": matched,
        "cluster": info,
        "sizes": asdict(sizes),
        "load": loaded,
        "queries": [q.as_dict() for q in queries],
        "transfers": tr,
        "recovery": report.as_dict(),
        "invariant": invariant,
        "fleet": fleet,
        "two_phase_commits": loaded["two_phase_commits"] + tr["two_phase_commits"],
        "elapsed_seconds": round(time.monotonic() - started, 2),
    }
    reporter.finish(out, kept=dsns if info["kept"] else None)
    return out


def _transfers(reporter: Reporter, dsns: dict[str, str], data: Any, sizes: Sizes) -> Any:
    """Run the transfer phase with a progress display and one line per event."""
    counts: dict[int, dict[str, int]] = {}
    started: list[float] = []
    ready: list[int] = []

    def status() -> str:
        total = {k: sum(c.get(k, 0) for c in counts.values()) for k in ("committed", "retried")}
        return f"{total['committed']:,} committed, {total['retried']} retried"

    with reporter.progress(
        f"transfers: {sizes.processes} processes for {sizes.seconds:g} s, one worker of each "
        "killed on the way",
        sizes.seconds,
    ) as bar:
        bar.update(0, status=f"starting {sizes.processes} processes")

        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "started":
                ready.append(info["index"])
                bar.update(0, status=f"{len(ready)} of {sizes.processes} processes ready")
            elif kind == "running":
                started.append(time.monotonic())
                bar.update(0, status="running")
            elif kind == "progress":
                counts[info["index"]] = info["counts"]
                elapsed = time.monotonic() - started[0] if started else 0.0
                bar.update(min(elapsed, sizes.seconds), status=status())
            elif kind == "killed":
                reporter.event(
                    f"{info['at']:4.1f} s  killed worker {info['pid']} (shard {info['shard']}) "
                    f"of process {info['index'] + 1}: {_KILL_TEXT[info['stage']]}"
                )
            elif kind == "done":
                counts[info["index"]] = info["counts"]
                bar.update(status=status())
                if info["crash"]:
                    reporter.event(
                        f"process {info['index'] + 1} exits abruptly {_CRASH_TEXT[info['crash']]}"
                    )

        result = run_transfers(dsns, data, sizes, on_event)
    for proc in result.processes:
        if not proc["left_workers_gone"]:
            reporter.event(f"workers of process {proc['index'] + 1} are still running")
    return result


_KILL_TEXT = {
    "locked": "it held a row locked (FOR UPDATE) for a transfer",
    "prepared-commit-point": "it was the commit point, after the other shard had PREPAREd",
    "prepared-participant": "its shard had PREPAREd, before COMMIT PREPARED",
}
_CRASH_TEXT = {
    "after_prepare": "after PREPARE, before the commit decision (os._exit)",
    "after_decision": "after the commit decision, before COMMIT PREPARED (os._exit)",
}
