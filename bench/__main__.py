"""Run the benchmarks: shardsession against SQLAlchemy's ShardedSession and raw psycopg.

``python -m bench [WORKLOAD ...] [--dsn TEMPLATE] [--rows N] [--repeat N] [--ops N]
[--memory-rows N] [--threads N] [--json] [--docs DIR]`` (also ``shardsession bench ...``);
``python -m bench --from-json FILE [--docs DIR]`` reports a saved ``--json`` run again.

Every figure is measured in this run, each side on the same PostgreSQL and the same
data, best of ``--repeat`` repetitions.  The exit status is 0 when every workload ran
and returned correct results (missed targets are reported, not failures), 1 when a
side returned a wrong result, 2 when a workload crashed.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    common,
    concurrency,
    insert,
    load,
    memory,
    point,
    query,
    report,
    roundtrip,
    scatter,
    transfer,
)
from .common import Params, WorkloadResult, WrongResult, result_from_json
from .context import Context

WORKLOADS: dict[str, Callable[[Context], WorkloadResult]] = {
    "insert": insert.run,
    "load": load.run,
    "top100": query.run_top100,
    "aggregate": query.run_aggregate,
    "transfer": transfer.run,
    "point": point.run,
    "concurrency": concurrency.run,
    "scatter": scatter.run,
    "roundtrip": roundtrip.run,
    "memory": memory.run,
}
TITLES = {
    "insert": insert.TITLE,
    "load": load.TITLE,
    "top100": query.TOP100_TITLE,
    "aggregate": query.AGGREGATE_TITLE,
    "transfer": transfer.TITLE,
    "point": point.TITLE,
    "concurrency": concurrency.TITLE,
    "scatter": scatter.TITLE,
    "roundtrip": roundtrip.TITLE,
    "memory": memory.TITLE,
}


def run_workloads(ctx: Context, names: list[str], *, log: bool = True) -> list[WorkloadResult]:
    """Run the named workloads in order; a wrong result or a crash is recorded in
    the workload's ``error`` (with the traceback on stderr) and the next one runs.
    """
    results = []
    for name in names:
        if log:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            results.append(WORKLOADS[name](ctx))
        except WrongResult as err:
            print(f"{name}: WRONG RESULT: {err}", file=sys.stderr, flush=True)
            results.append(WorkloadResult(name, TITLES[name], error=f"wrong result: {err}"))
            ctx.data_changed()
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            results.append(
                WorkloadResult(name, TITLES[name], error=f"crashed: {type(err).__name__}: {err}")
            )
            ctx.data_changed()
    return results


def exit_status(results: list[WorkloadResult]) -> int:
    """0 when every result is correct, 1 on a wrong result, 2 on a crash."""
    errors = [r.error for r in results if r.error is not None]
    if any(e.startswith("crashed") for e in errors):
        return 2
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("workloads", nargs="*", help=f"which to run: {', '.join(WORKLOADS)}")
    parser.add_argument(
        "--dsn", help="DSN template with {shard} for s0..s3 (default: a temporary embedded cluster)"
    )
    defaults = Params()
    parser.add_argument("--rows", type=int, default=defaults.rows, help="accounts inserted/loaded")
    parser.add_argument("--repeat", type=int, default=defaults.repeat, help="best of N")
    parser.add_argument(
        "--ops",
        "--n",
        type=int,
        default=defaults.ops,
        help="operations per repetition: transactions (point and concurrency; half for transfer), "
        "queries (a tenth for top100/aggregate, a hundredth for scatter)",
    )
    parser.add_argument(
        "--memory-rows", type=int, default=defaults.memory_rows, help="rows the memory test streams"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="application threads of the concurrency workload",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--docs", type=Path, help="write DIR/benchmarks_results.rst and DIR/_static/benchmarks.svg"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="measure nothing: report (and --docs) the results saved by an earlier --json run",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return _replay(args)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.dsn and "{shard}" not in args.dsn:
        parser.error("--dsn needs a {shard} placeholder, e.g. 'host=db dbname=app_{shard}'")
    for name in ("rows", "repeat", "ops", "memory_rows", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        print(
            "the benchmarks compare against SQLAlchemy: install the bench extra, "
            'pip install "shardsession[bench]"',
            file=sys.stderr,
        )
        return 2
    names = [w for w in WORKLOADS if w in args.workloads] if args.workloads else list(WORKLOADS)
    params = Params(
        rows=args.rows,
        repeat=args.repeat,
        ops=args.ops,
        memory_rows=args.memory_rows,
        threads=args.threads,
    )
    with common.shards(args.dsn) as dsns:
        env = common.environment(dsns["s0"], embedded=not args.dsn)
        with Context(dsns, params) as ctx:
            results = run_workloads(ctx, names)
    _output(args, results, env, params)
    status = exit_status(results)
    if status:
        print(
            "FAILED: " + "; ".join(f"{r.name}: {r.error}" for r in results if r.error),
            file=sys.stderr,
        )
    return status


def _replay(args: argparse.Namespace) -> int:
    """Report the results of an earlier ``--json`` run again (text, JSON, docs)."""
    import json

    data = json.loads(args.from_json.read_text(encoding="utf-8"))
    results = [result_from_json(w) for w in data["workloads"]]
    env = data["environment"]
    params = Params(**data["parameters"])
    _output(args, results, env, params)
    return exit_status(results)


def _output(args: argparse.Namespace, results: list[Any], env: dict[str, Any], params: Any) -> None:
    """Print the results (text or JSON) and write the docs files when asked."""
    if args.json:
        print(report.dumps(results, env, params))
    else:
        report.write_text(results, env, params, sys.stdout)
    if args.docs is not None:
        for path in report.write_docs(results, env, params, args.docs):
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
