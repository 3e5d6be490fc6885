"""``python -m bench [--dsn TEMPLATE] [--json] [--n N] [WORKLOAD ...]``."""

from __future__ import annotations

import argparse
import sys

from . import common, roundtrip

WORKLOADS = {"roundtrip": roundtrip}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("workloads", nargs="*", help=f"which to run: {', '.join(WORKLOADS)}")
    parser.add_argument("--dsn", help="DSN template with {shard} (default: embedded cluster)")
    parser.add_argument("--n", type=int, default=2000, help="operations per repetition")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (best is kept)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {list(WORKLOADS)}")
    args.workloads = args.workloads or list(WORKLOADS)
    with common.shards(args.dsn) as dsns:
        env = common.environment(dsns["s0"])
        for name in args.workloads:
            rows = WORKLOADS[name].run(dsns, n=args.n, repeat=args.repeat)
            common.report(name, env, rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
