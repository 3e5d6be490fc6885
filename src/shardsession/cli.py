"""The ``shardsession`` command line (also ``python -m shardsession``).

Commands:

``up``
    start (or reuse) the local cluster and print the shard DSNs.
``status``
    show its servers, databases and prepared transactions.
``down``
    stop it.
``check``
    check shard DSNs of external servers (reachable, two-phase commit enabled).
``recover``
    settle in-doubt two-phase commits.
``deadlocks``
    one round of the distributed deadlock detector: print who waits for whom,
    the lock cycles across shards, and cancel each cycle's youngest transaction.
``rebalance``
    after adding or removing shards, move the rows whose shard changed, in
    two-phase batches, while applications run (:mod:`shardsession.coordinator.rebalance`).
``demo``
    a multi-tenant workload over four shards: load, cross-shard queries,
    two-phase transfers while workers are killed, recovery, and the invariant.
``migrate``
    Alembic on every shard at once: ``upgrade``, ``downgrade``, ``stamp``,
    ``current``, ``history`` and ``revision`` (:mod:`shardsession.migrate`).

Every command takes ``--json`` for scripts.  Expected failures (no PostgreSQL
binaries, a busy or invalid port, a folder that is a file or owned by someone else,
a malformed DSN, an unreachable or misconfigured server, a mistyped argument)
print one line starting with ``error:`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from shardsession.embedded import LocalCluster, default_cluster_path
from shardsession.exc import ShardSessionError
from shardsession.preflight import check_shard_dsns, describe_dsn, named_dsns
from shardsession.recovery import recover

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like the commands' own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    import platform

    import psycopg
    import sqlalchemy

    from shardsession import __version__

    return (
        f"shardsession {__version__} (SQLAlchemy {sqlalchemy.__version__}, psycopg "
        f"{psycopg.__version__}, Python {platform.python_version()})"
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``shardsession`` command."""
    parser = _Parser(
        prog="shardsession",
        description="Local PostgreSQL shards for shardsession, and tools to operate them.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--path",
            default=None,
            help=f"the cluster folder (default: {default_cluster_path()})",
        )
        p.add_argument("--json", action="store_true", help="print JSON for scripts")

    up = sub.add_parser("up", help="start (or reuse) the local cluster; print the shard DSNs")
    common(up)
    up.add_argument("--shards", type=int, default=4, help="number of shard databases (4)")
    up.add_argument("--instances", type=int, default=1, help="number of separate servers (1)")
    up.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    up.add_argument("--tcp", action="store_true", help="print TCP DSNs (with password)")
    up.add_argument(
        "--dsn",
        action="append",
        metavar="[SHARD=]DSN",
        help="use external shards (e.g. compose/) instead of the embedded cluster: check each "
        "(reachable, two-phase commit on) and print them; repeat for every shard; unnamed "
        "DSNs become s0, s1, ...",
    )

    status = sub.add_parser("status", help="show servers, databases, prepared transactions")
    common(status)

    down = sub.add_parser("down", help="stop the local cluster")
    common(down)
    down.add_argument("--remove", action="store_true", help="also delete the cluster folder")

    rec = sub.add_parser("recover", help="settle in-doubt two-phase commits")
    _shard_arguments(rec)
    rec.add_argument(
        "--older-than",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="presume undecided transactions older than this aborted (10)",
    )
    rec.add_argument("--dry-run", action="store_true", help="report only; change nothing")

    dead = sub.add_parser(
        "deadlocks", help="find lock cycles across shards and cancel their victims (one round)"
    )
    _shard_arguments(dead)
    dead.add_argument("--dry-run", action="store_true", help="report only; cancel nothing")
    dead.add_argument("--json", action="store_true", help="print JSON for scripts")
    rec.add_argument("--json", action="store_true", help="print JSON for scripts")
    _add_rebalance_parser(sub)

    check = sub.add_parser("check", help="check shard DSNs: reachable, two-phase commit on")
    check.add_argument(
        "--dsn",
        action="append",
        required=True,
        metavar="[SHARD=]DSN",
        help="a shard DSN, optionally named (repeat for each shard; unnamed: s0, s1, ...)",
    )
    check.add_argument("--json", action="store_true", help="print JSON for scripts")

    _add_migrate_parser(sub)

    demo = sub.add_parser(
        "demo",
        help="load, query and move money across 4 shards while killing workers; check it all",
    )
    demo.add_argument(
        "--path",
        default=None,
        help=f"the demo cluster's folder (default: {default_cluster_path().parent / 'demo'})",
    )
    demo.add_argument(
        "--dsn",
        action="append",
        metavar="SHARD=DSN",
        help="use these shards instead of the embedded cluster (repeat for each shard; the "
        "demo replaces its demo_* tables there and runs recovery with --older-than 0, so "
        "use shards no other application writes to)",
    )
    demo.add_argument("--keep", action="store_true", help="leave the cluster running; print DSNs")
    demo.add_argument("--quick", action="store_true", help="small sizes and short transfers")
    demo.add_argument("--tenants", type=int, default=None, help="tenants to load (40)")
    demo.add_argument("--users", type=int, default=None, help="users to load (2000)")
    demo.add_argument("--orders", type=int, default=None, help="orders to load (10000)")
    demo.add_argument("--processes", type=int, default=None, help="transfer processes (3)")
    demo.add_argument("--seconds", type=float, default=None, help="seconds of transfers (8)")
    demo.add_argument("--json", action="store_true", help="print one JSON document for scripts")

    bench = sub.add_parser(
        "bench",
        help="run the benchmarks against SQLAlchemy and psycopg (needs the bench extra)",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of python -m bench")
    return parser


def _add_migrate_parser(sub: Any) -> None:
    migrate = sub.add_parser(
        "migrate", help="run Alembic migrations on every shard at once (the migrate extra)"
    )
    actions = migrate.add_subparsers(dest="action", required=True, metavar="ACTION")

    def alembic_options(p: argparse.ArgumentParser, shards: bool = True) -> None:
        if shards:
            _shard_arguments(p)
            p.add_argument(
                "-x",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="for env.py's context.get_x_argument()",
            )
        p.add_argument(
            "-c",
            "--config",
            default=None,
            metavar="FILE",
            help="Alembic's alembic.ini or pyproject.toml (default: ./alembic.ini)",
        )
        p.add_argument("-n", "--name", default="alembic", help="the ini file's section (alembic)")
        p.add_argument(
            "--directory",
            default=None,
            metavar="DIR",
            help="the script directory, with env.py (overrides script_location)",
        )
        p.add_argument("--json", action="store_true", help="print JSON for scripts")

    for action, text in (
        ("upgrade", "upgrade every shard to REVISION (e.g. head)"),
        ("downgrade", "downgrade every shard to REVISION (e.g. -1, base)"),
        ("stamp", "record REVISION on every shard without running migrations"),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("revision", metavar="REVISION")
        p.add_argument(
            "--shard",
            action="append",
            metavar="SHARD",
            help="only this shard (repeat); the others are reported as they are",
        )
        p.add_argument(
            "--allow-mixed",
            action="store_true",
            help="run even if the shards are at different revisions",
        )
        alembic_options(p)
    alembic_options(actions.add_parser("current", help="every shard's revision"))
    alembic_options(actions.add_parser("history", help="the revisions, newest first"), False)
    rev = actions.add_parser("revision", help="write a new revision script (once for all shards)")
    rev.add_argument("-m", "--message", default=None, help="the revision's message")
    rev.add_argument(
        "--autogenerate",
        action="store_true",
        help="compare the models with one shard (--shard, else the first)",
    )
    rev.add_argument("--shard", default=None, help="the shard --autogenerate compares with")
    rev.add_argument("--rev-id", default=None, help="the new revision's id")
    rev.add_argument("--head", default="head", help="the revision it follows (head)")
    rev.add_argument(
        "--allow-mixed",
        action="store_true",
        help="autogenerate even if the shards are at different revisions",
    )
    alembic_options(rev)


def _shard_arguments(p: argparse.ArgumentParser) -> None:
    """``--dsn SHARD=DSN`` (repeated) or ``--path`` (the local cluster): see :func:`_shard_dsns`."""
    p.add_argument(
        "--dsn",
        action="append",
        metavar="SHARD=DSN",
        help="a shard's name and DSN, e.g. s0=postgresql://... (repeat for every shard; "
        "the names must be the pool's shard names); default: the local cluster's shards",
    )
    p.add_argument("--path", default=None, help="the local cluster folder (without --dsn)")


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _cmd_up(args: argparse.Namespace) -> int:
    if args.dsn:
        dsns = named_dsns(args.dsn, names_required=False)
        found = check_shard_dsns(dsns)
        lines = [f"{len(dsns)} external shard(s) ready for shardsession"]
        lines += [
            f"  {shard}: {dsn} (max_prepared_transactions = {found[shard]})"
            for shard, dsn in dsns.items()
        ]
        _print(args, {"path": None, "shards": dsns}, "\n".join(lines))
        return 0
    cluster = LocalCluster(
        shards=args.shards, path=args.path, instances=args.instances, port=args.port
    )
    dsns = cluster.start()
    if args.tcp:
        dsns = cluster.tcp_dsns
    has = [s["shard"] for inst in cluster.status()["instances"] for s in inst["shards"]]
    lines = [f"cluster at {cluster.path} is up ({args.shards} shards)"]
    if len(has) > len(dsns):
        # an existing cluster with more shards than asked for: say so, never hide them
        lines[0] = (
            f"cluster at {cluster.path} is up; it has {len(has)} shards ({', '.join(has)}), "
            f"these are the {len(dsns)} asked for (--shards {len(has)} for all of them)"
        )
    lines += [f"  {shard}: {dsn}" for shard, dsn in dsns.items()]
    data = {"path": str(cluster.path), "shards": dsns, "cluster_shards": has}
    _print(args, data, "\n".join(lines))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    info = LocalCluster(shards=1, path=args.path).status()
    if not info["exists"]:
        _print(args, info, f"no cluster at {info['path']} (start one with `shardsession up`)")
        return 1
    lines = [
        f"cluster at {info['path']}: {'running' if info['running'] else 'stopped'}"
        f" (PostgreSQL {info['version']}, server user {info['user']})"
    ]
    for inst in info["instances"]:
        state = f"running, pid {inst['pid']}" if inst["running"] else "stopped"
        lines.append(f"  server {inst['index']}: port {inst['port']}, {state}")
        for shard in inst["shards"]:
            prepared = shard.get("prepared_transactions")
            extra = "" if prepared is None else f", {len(prepared)} prepared transaction(s)"
            lines.append(f"    {shard['shard']}: database {shard['database']}{extra}")
            for xact in prepared or []:
                lines.append(f"      {xact['gid']} (prepared {xact['prepared']})")
    _print(args, info, "\n".join(lines))
    return 0 if info["running"] else 1


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster(shards=1, path=args.path)
    stopped = cluster.stop(remove=args.remove)
    text = f"cluster at {cluster.path} {'stopped' if stopped else 'was not running'}"
    if args.remove:
        text += "; folder removed"
    _print(args, {"path": str(cluster.path), "stopped": stopped, "removed": args.remove}, text)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    dsns = named_dsns(args.dsn, names_required=False)
    found = check_shard_dsns(dsns)
    lines = [
        f"{shard} ({describe_dsn(dsns[shard])}): max_prepared_transactions = {value}, ok"
        for shard, value in found.items()
    ]
    _print(args, found, "\n".join(lines))
    return 0


def _shard_dsns(args: argparse.Namespace, why: str) -> dict[str, str] | None:
    """The shards of ``--dsn SHARD=DSN`` (names required: ``why`` says why), or else of
    the running local cluster at ``--path``; None (said on stderr) when there is none."""
    if args.dsn:
        return named_dsns(args.dsn, names_required=True, why=why)
    info = LocalCluster(shards=1, path=args.path).status()
    if not info["running"]:
        print(f"error: no running cluster at {info['path']}; give --dsn", file=sys.stderr)
        return None
    return {s["shard"]: s["dsn"] for inst in info["instances"] for s in inst["shards"]}


def _cmd_recover(args: argparse.Namespace) -> int:
    dsns = _shard_dsns(args, "(recovery finds each transaction's commit point by shard name)")
    if dsns is None:
        return 2
    report = recover(dsns, older_than=args.older_than, dry_run=args.dry_run)
    verb = "would be" if args.dry_run else "were"
    lines = [
        f"{len(report.committed)} prepared transaction(s) {verb} committed, "
        f"{len(report.rolled_back)} rolled back, {len(report.waiting)} left waiting; "
        f"{report.pruned} decision record(s) pruned"
    ]
    lines += [f"  committed {g}" for g in report.committed]
    lines += [f"  rolled back {g}" for g in report.rolled_back]
    lines += [f"  waiting {g}" for g in report.waiting]
    lines += [f"  shard {s}: {m}" for s, m in report.errors.items()]
    _print(args, report.as_dict(), "\n".join(lines))
    return 1 if report.errors else 0


def _cmd_deadlocks(args: argparse.Namespace) -> int:
    from shardsession.coordinator.detector import detect_deadlocks

    dsns = _shard_dsns(args, "(waits are joined across shards)")
    if dsns is None:
        return 2
    report = detect_deadlocks(dsns, cancel=not args.dry_run)
    _print(args, report.as_dict(), report.as_text())
    return 1 if report.unreachable else 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from shardsession import migrate

    where = {"config": args.config, "directory": args.directory, "section": args.name}
    if args.action == "history":
        revisions = migrate.history(**where)
        lines = [r.as_text() for r in revisions] or ["no revisions yet"]
        _print(args, [r.as_dict() for r in revisions], "\n".join(lines))
        return 0
    if args.action == "revision" and not args.autogenerate:
        script = migrate.revision(
            None, args.message, rev_id=args.rev_id, head=args.head, x=args.x, **where
        )
        _print(
            args,
            {"revision": script.revision, "path": script.path, "shard": None},
            f"wrote {script.path} (revision {script.revision})",
        )
        return 0
    dsns = _shard_dsns(args, "(each shard is reported by name)")
    if dsns is None:
        return 2
    if args.action == "current":
        revisions = migrate.current(dsns, x=args.x, **where)
        heads = tuple(sorted(r.revision for r in migrate.history(**where) if r.head))
        lines = [
            f"{shard}: {migrate.show_revision(r)}{' (head)' if r == heads else ''}"
            for shard, r in revisions.items()
        ]
        level = len(set(revisions.values())) == 1
        if not level:
            lines.append(
                f"the shards are at different revisions: {migrate.describe_revisions(revisions)}"
            )
        data = {
            "shards": {s: list(r) for s, r in revisions.items()},
            "level": level,
            "heads": list(heads),
        }
        _print(args, data, "\n".join(lines))
        return 0 if level else 1
    if args.action == "revision":
        shard = args.shard or next(iter(dsns))
        script = migrate.revision(
            dsns,
            args.message,
            autogenerate=True,
            shard=shard,
            rev_id=args.rev_id,
            head=args.head,
            x=args.x,
            allow_mixed=args.allow_mixed,
            **where,
        )
        _print(
            args,
            {"revision": script.revision, "path": script.path, "shard": shard},
            f"compared the models with shard {shard}; wrote {script.path} "
            f"(revision {script.revision})",
        )
        return 0
    try:
        report = getattr(migrate, args.action)(
            dsns, args.revision, shards=args.shard, allow_mixed=args.allow_mixed, x=args.x, **where
        )
    except migrate.MigrationError as err:
        _print(args, err.report.as_dict(), err.report.as_text())
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print(args, report.as_dict(), report.as_text())
    return 0


def _add_rebalance_parser(sub: Any) -> None:
    reb = sub.add_parser("rebalance", help="move the rows whose shard changed (new shard list)")
    reb.add_argument("--models", required=True, metavar="MODULE:BASE",
                     help="your models' declarative base, e.g. myapp.models:Base")  # fmt: skip
    reb.add_argument("--dsn", action="append", required=True, metavar="SHARD=DSN",
                     help="a shard of the new list (repeat for every shard)")  # fmt: skip
    reb.add_argument("--retire", action="append", default=[], metavar="SHARD=DSN",
                     help="a shard being removed (its rows move to the --dsn shards)")  # fmt: skip
    reb.add_argument("--batch-size", type=int, default=500, help="rows per batch (500)")
    reb.add_argument("--lock-timeout", type=float, default=5.0, metavar="SECONDS",
                     help="wait this long for a row in use, then retry (5)")  # fmt: skip
    only = reb.add_mutually_exclusive_group()
    only.add_argument("--dry-run", action="store_true", help="count what would move; move nothing")
    only.add_argument("--verify", action="store_true", help="only check where every row is")
    reb.add_argument("--json", action="store_true", help="print JSON for scripts")


def _cmd_rebalance(args: argparse.Namespace) -> int:
    from shardsession.coordinator.rebalance import command

    why = "(rows are placed by hashing over the shard names)"
    return command(
        named_dsns(args.dsn, names_required=True, why=why),
        named_dsns(args.retire, names_required=True, why=why),
        args.models, batch_size=args.batch_size, dry_run=args.dry_run, verify_only=args.verify,
        json_output=args.json, lock_timeout=args.lock_timeout,
    )  # fmt: skip


def _cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from shardsession.demo.report import make_reporter
    from shardsession.demo.run import QUICK, DemoOptions, parse_dsns, run_demo
    from shardsession.demo.workload import Sizes

    sizes = QUICK if args.quick else Sizes()
    given = {
        name: getattr(args, name)
        for name in ("tenants", "users", "orders", "processes", "seconds")
        if getattr(args, name) is not None
    }
    sizes = dataclasses.replace(sizes, **given)
    problem = None
    if any(value < 1 for value in given.values()):
        problem = "--tenants, --users, --orders, --processes and --seconds must be at least 1"
    elif sizes.users < sizes.tenants:
        problem = "--users must be at least --tenants (every tenant has a user)"
    elif args.dsn and args.path:
        problem = "give --dsn (shards of your own) or --path (the embedded cluster), not both"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    options = DemoOptions(
        path=args.path,
        dsns=parse_dsns(args.dsn) if args.dsn else None,
        keep=args.keep,
        sizes=sizes,
    )
    report = run_demo(options, make_reporter(args.json))
    return 0 if report["ok"] else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from shardsession.bench.__main__ import main as bench_main

    return bench_main(args.bench_args)


_COMMANDS = {
    "up": _cmd_up,
    "status": _cmd_status,
    "down": _cmd_down,
    "check": _cmd_check,
    "recover": _cmd_recover,
    "deadlocks": _cmd_deadlocks,
    "rebalance": _cmd_rebalance,
    "migrate": _cmd_migrate,
    "demo": _cmd_demo,
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after "bench" belongs to the benchmark runner's own parser.
        return _cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ShardSessionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
