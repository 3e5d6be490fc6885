"""Alembic migrations on every shard: the library behind ``shardsession migrate``.

Every shard gets the same Alembic revisions.  :func:`upgrade`, :func:`downgrade`
and :func:`stamp` run one Alembic command on every shard at once, each shard in a
Python process of its own (Alembic's ``context`` and ``op`` are process-wide, so
threads could not run two shards' ``env.py`` side by side).  The process of a
shard connects with psycopg, puts that connection in
``config.attributes["connection"]`` and the shard's name in
``config.attributes["shard"]``, and runs the project's own ``env.py``, which must
use that connection (see :doc:`migrations` for the recipe).

A command runs in two steps.  First every shard's process reads the shard's
revision through ``env.py`` (so a custom version table is honoured); if the shards
to migrate are not all at one revision, nothing is migrated and
:class:`MixedRevisionsError` names each shard's revision and the fix.  Then every
shard runs the command, and the :class:`MigrationReport` says, per shard, the
revision before and after, the time taken and the error, if any.  When a shard
fails, :class:`MigrationError` carries the report and names which shards are at
which revision and how to bring them level.

Alembic is an optional dependency (``pip install 'shardsession[migrate]'``); this
module imports it only when a function needs it.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from shardsession.deadlock import VICTIMS
from shardsession.exc import ConfigurationError, ShardSessionError
from shardsession.preflight import check_shard_name, shard_conninfo
from shardsession.twophase import COMMIT_LOG

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory
    from sqlalchemy.engine import Connection, Engine

__all__ = [
    "SHARDSESSION_TABLES",
    "MigrationError",
    "MigrationReport",
    "MixedRevisionsError",
    "Revision",
    "ShardMigration",
    "current",
    "describe_revisions",
    "downgrade",
    "history",
    "include_name",
    "revision",
    "show_revision",
    "stamp",
    "upgrade",
]

#: The tables shardsession keeps on every shard for itself (the two-phase commit
#: log and the deadlock detector's notes).  They are in no application's models, so
#: autogenerate would drop them; :func:`include_name` leaves them out.
SHARDSESSION_TABLES = frozenset({COMMIT_LOG, VICTIMS})

#: The revisions a shard is at: its version table's heads, sorted; ``()`` when it
#: has none (Alembic's "base").
Heads = tuple[str, ...]

_CHANGES = ("upgrade", "downgrade", "stamp")
_OPPOSITE = {"upgrade": "downgrade", "downgrade": "upgrade", "stamp": "stamp"}
_RELATIVE = re.compile(r"[+-]\d+$|@")  # "+1", "ae10+2", "branch@head": resolved per shard
_CHILD = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from shardsession.migrate import _fork_shards; _fork_shards()"
)


class MigrationError(ShardSessionError):
    """A migration failed on one or more shards.

    The message names every shard's revision after the failure and how to bring
    the shards level.

    :ivar report: the :class:`MigrationReport` of the command.
    """

    def __init__(self, message: str, report: MigrationReport) -> None:
        super().__init__(message)
        self.report = report


class MixedRevisionsError(ConfigurationError):
    """The shards to migrate are at different revisions; nothing was changed.

    :ivar revisions: shard name -> its revisions (a tuple of revision ids, empty for
        none).
    """

    def __init__(self, message: str, revisions: Mapping[str, Heads]) -> None:
        super().__init__(message)
        self.revisions = dict(revisions)


def show_revision(heads: Heads | None) -> str:
    """Return ``heads`` as text: ``"base"`` for none, ``"unknown"`` for None, else the
    revision ids joined by commas."""
    if heads is None:
        return "unknown"
    return ",".join(heads) if heads else "base"


def describe_revisions(revisions: Mapping[str, Heads | None]) -> str:
    """Return shard -> revision as one line, shards at the same revision grouped:
    ``"s0, s1: 3f2a; s2: base"``."""
    groups: dict[str, list[str]] = {}
    for shard, heads in revisions.items():
        groups.setdefault(show_revision(heads), []).append(shard)
    return "; ".join(f"{', '.join(shards)}: {rev}" for rev, shards in groups.items())


@dataclasses.dataclass(frozen=True)
class ShardMigration:
    """What one command did on one shard.

    :ivar shard: the shard's name.
    :ivar before: its revisions before the command.
    :ivar after: its revisions after the command (None if they could not be read
        after a failure).
    :ivar seconds: the time the command took on this shard.
    :ivar ran: False for a shard left out with ``shards=...``.
    :ivar error: the error, or None when the command succeeded.
    :ivar log: what Alembic and ``env.py`` wrote to stderr on this shard, with the
        traceback of an error.
    """

    shard: str
    before: Heads
    after: Heads | None
    seconds: float = 0.0
    ran: bool = True
    error: str | None = None
    log: str = ""

    @property
    def ok(self) -> bool:
        """Whether the command succeeded (or was not run) on this shard."""
        return self.error is None

    @property
    def from_revision(self) -> str:
        """``before`` as text (:func:`show_revision`)."""
        return show_revision(self.before)

    @property
    def to_revision(self) -> str:
        """``after`` as text (:func:`show_revision`)."""
        return show_revision(self.after)

    def as_dict(self) -> dict[str, Any]:
        """Return this shard's outcome as JSON-ready data."""
        return {
            "shard": self.shard,
            "from": list(self.before),
            "to": None if self.after is None else list(self.after),
            "seconds": round(self.seconds, 3),
            "ran": self.ran,
            "ok": self.ok,
            "error": self.error,
            "log": self.log,
        }


@dataclasses.dataclass(frozen=True)
class MigrationReport:
    """What :func:`upgrade`, :func:`downgrade` or :func:`stamp` did on every shard.

    :ivar command: ``"upgrade"``, ``"downgrade"`` or ``"stamp"``.
    :ivar revision: the target revision as given.
    :ivar shards: shard name -> :class:`ShardMigration`, in the order given.
    :ivar seconds: wall-clock time of the whole command, processes included.
    """

    command: str
    revision: str
    shards: dict[str, ShardMigration]
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether the command succeeded on every shard it ran on."""
        return all(m.ok for m in self.shards.values())

    @property
    def revisions(self) -> dict[str, Heads | None]:
        """Shard name -> its revisions now."""
        return {shard: m.after for shard, m in self.shards.items()}

    @property
    def level(self) -> bool:
        """Whether every shard is now at the same, known revision."""
        now = list(self.revisions.values())
        return None not in now and len(set(now)) <= 1

    def as_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "command": self.command,
            "revision": self.revision,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "level": self.level,
            "shards": [m.as_dict() for m in self.shards.values()],
        }

    def as_text(self) -> str:
        """Return the report as lines for a terminal: one per shard, then the state."""
        lines = [
            f"{self.command} {self.revision}: {len(self.shards)} shard(s) in {self.seconds:.2f} s"
        ]
        for m in self.shards.values():
            if not m.ran:
                lines.append(f"  {m.shard}: at {m.from_revision} (not selected)")
                continue
            outcome = "ok" if m.ok else f"error: {m.error}"
            lines.append(
                f"  {m.shard}: {m.from_revision} -> {m.to_revision}  {m.seconds:.2f} s  {outcome}"
            )
        if self.level:
            lines.append(
                f"all {len(self.shards)} shard(s) are at "
                f"{show_revision(next(iter(self.revisions.values())))}"
            )
        else:
            lines.append(
                f"the shards are at different revisions: {describe_revisions(self.revisions)}"
            )
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Revision:
    """One revision script of the script directory (an entry of :func:`history`).

    :ivar revision: its id.
    :ivar down_revisions: the ids of the revisions it follows (empty for the first).
    :ivar message: the first line of its message.
    :ivar head: whether no revision follows it.
    :ivar path: its file.
    """

    revision: str
    down_revisions: Heads
    message: str
    head: bool
    path: str

    def as_dict(self) -> dict[str, Any]:
        """Return the revision as JSON-ready data."""
        return dataclasses.asdict(self) | {"down_revisions": list(self.down_revisions)}

    def as_text(self) -> str:
        """Return the revision as one line: ``base -> 3f2a (head): add orders``."""
        head = " (head)" if self.head else ""
        return f"{show_revision(self.down_revisions)} -> {self.revision}{head}: {self.message}"


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's ``include_name`` hook that leaves :data:`SHARDSESSION_TABLES` out.

    Pass it to ``context.configure(..., include_name=include_name)`` in ``env.py``:
    otherwise ``revision --autogenerate`` finds shardsession's own tables on the
    shard and writes a migration that drops them.
    """
    return not (type_ == "table" and name in SHARDSESSION_TABLES)


# -- configuration ----------------------------------------------------------------------


def _require_alembic() -> None:
    try:
        import alembic  # noqa: F401
    except ImportError as err:
        raise ConfigurationError(
            "shardsession migrate needs Alembic, which is not installed; install it with "
            "`pip install 'shardsession[migrate]'`"
        ) from err


@dataclasses.dataclass(frozen=True)
class _ConfigSpec:
    """An Alembic configuration that can be rebuilt in a shard's process."""

    file: str | None
    toml: str | None
    section: str
    x: tuple[str, ...]
    overrides: dict[str, dict[str, str]]

    @classmethod
    def of(cls, config: Config) -> _ConfigSpec:
        """The spec of ``config``, with the options set on it in memory."""
        if config.__dict__.get("attributes"):
            raise ConfigurationError(
                "the Alembic Config has attributes set; they cannot reach the shards' "
                "migration processes. Pass values to env.py as options "
                "(config.set_main_option) or -x arguments instead"
            )
        x = getattr(config.cmd_opts, "x", None) or ()
        spec = cls(
            config.config_file_name,
            getattr(config, "toml_file_name", None),
            config.config_ini_section,
            tuple(x),
            {},
        )
        fresh = spec.build().file_config
        given = config.file_config
        for section in given.sections():
            old = dict(fresh.items(section, raw=True)) if fresh.has_section(section) else {}
            changed = {k: v for k, v in given.items(section, raw=True) if old.get(k) != v}
            if changed:
                spec.overrides[section] = changed
        return spec

    def build(self, connection: Connection | None = None, shard: str | None = None) -> Config:
        """A new Config; with ``connection`` and ``shard`` in its attributes if given."""
        from alembic.config import Config

        extra: dict[str, Any] = {"toml_file": self.toml} if self.toml else {}
        config = Config(
            self.file,
            ini_section=self.section,
            cmd_opts=Namespace(x=list(self.x), quiet=True),
            **extra,
        )
        for section, options in self.overrides.items():
            for key, value in options.items():
                config.set_section_option(section, key, value)  # raw: % already doubled
        if connection is not None:
            config.attributes["connection"] = connection
            config.attributes["shard"] = shard
        return config

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_config(
    config: Config | str | os.PathLike[str] | None,
    directory: str | os.PathLike[str] | None,
    section: str,
    x: Sequence[str],
) -> tuple[_ConfigSpec, ScriptDirectory]:
    """Resolve what the user gave into a spec and check its script directory."""
    _require_alembic()
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if isinstance(config, Config):
        cfg = config
    else:
        path = Path(config) if config is not None else None
        if path is None and directory is None:
            path = Path("alembic.ini")
            if not path.is_file():
                raise ConfigurationError(
                    f"no alembic.ini in {Path.cwd()}; give the Alembic configuration with "
                    "-c path/to/alembic.ini or the script directory with --directory "
                    "path/to/migrations (config=... or directory=... in Python)"
                )
        if path is not None and not path.is_file():
            raise ConfigurationError(
                f"the Alembic configuration {str(path)!r} does not exist; give the path of "
                "your alembic.ini (or pyproject.toml) with -c"
            )
        if path is not None and path.name == "pyproject.toml":
            cfg = Config(None, toml_file=str(path), ini_section=section)  # type: ignore[call-arg]
        else:
            cfg = Config(None if path is None else str(path), ini_section=section)
    try:
        spec = _ConfigSpec.of(cfg)
        if x:
            spec = dataclasses.replace(spec, x=tuple(x))
        if directory is not None:
            location = str(directory).replace("%", "%%")
            spec.overrides.setdefault(spec.section, {})["script_location"] = location
        script = ScriptDirectory.from_config(spec.build())
    except configparser.Error as err:
        raise ConfigurationError(
            f"the Alembic configuration {cfg.config_file_name} cannot be read: "
            f"{' '.join(str(err).split())}"
        ) from err
    except CommandError as err:
        raise ConfigurationError(
            f"the Alembic script directory cannot be used: {err} Point script_location "
            "(or --directory) at the folder with env.py and versions/"
        ) from err
    if not Path(script.dir, "env.py").is_file():
        raise ConfigurationError(
            f"the Alembic script directory {script.dir} has no env.py; write one that "
            "takes each shard's connection from config.attributes['connection'] (see the "
            "recipe in shardsession's migrations documentation)"
        )
    return spec, script


def _check_target(script: ScriptDirectory, target: str) -> None:
    from alembic.util import CommandError

    if _RELATIVE.search(target) or target in ("head", "heads", "base"):
        return  # resolved against each shard's revision by Alembic itself
    try:
        script.get_revisions(target)
    except CommandError as err:
        raise ConfigurationError(
            f"revision {target!r} is not in {script.dir}: {err} "
            "(`shardsession migrate history` lists the revisions)"
        ) from err


def _checked_dsns(dsns: Mapping[str, str], selected: Sequence[str] | None) -> list[str]:
    """Check every shard's name and DSN; return the shards to migrate."""
    if not dsns:
        raise ConfigurationError("no shards given: pass {'s0': dsn, ...} (--dsn s0=DSN)")
    for shard, dsn in dsns.items():
        shard_conninfo(check_shard_name(shard), dsn)
    if selected is None:
        return list(dsns)
    unknown = [s for s in selected if s not in dsns]
    if unknown:
        raise ConfigurationError(f"no shard named {unknown[0]!r}; the shards are {', '.join(dsns)}")
    return [s for s in dsns if s in selected]


# -- one shard's process ----------------------------------------------------------------


def _engine(dsn: str) -> Engine:
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    conninfo = shard_conninfo("?", dsn)
    return create_engine(
        "postgresql+psycopg://", poolclass=NullPool, creator=lambda: psycopg.connect(conninfo)
    )


def _read_heads(spec: _ConfigSpec, engine: Engine, shard: str) -> Heads:
    """Run env.py on a new connection to read the shard's revisions (changing nothing)."""
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    seen: dict[str, Any] = {}

    def look(heads: Any, context: Any) -> list[Any]:
        seen["bind"] = context.bind
        seen["heads"] = tuple(sorted(context.get_current_heads()))
        return []

    with engine.connect() as connection:
        config = spec.build(connection, shard)
        script = ScriptDirectory.from_config(config)
        with EnvironmentContext(config, script, fn=look, dont_mutate=True):
            script.run_env()
        if connection.in_transaction():
            connection.rollback()
    if "heads" not in seen:
        raise ConfigurationError(
            f"env.py in {script.dir} did not call context.run_migrations(); see the env.py "
            "recipe in shardsession's migrations documentation"
        )
    if seen["bind"] is not connection:
        raise ConfigurationError(
            f"env.py in {script.dir} made a connection of its own instead of using the "
            f"shard's, config.attributes['connection'], so it would migrate the same database "
            "for every shard; pass that connection to context.configure(connection=...) "
            "(see the env.py recipe in shardsession's migrations documentation)"
        )
    return seen["heads"]


def _describe(err: BaseException) -> str:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _serve(job: dict[str, Any], spec: _ConfigSpec, orders: IO[str], replies: IO[str]) -> None:
    """One shard's process: read its revisions, then run the command it is sent."""

    def reply(**message: Any) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    shard = job["shard"]
    try:
        engine = _engine(job["dsn"])
        before = _read_heads(spec, engine, shard)
    except Exception as err:
        traceback.print_exc()
        reply(error=_describe(err))
        return
    reply(heads=list(before))
    order = json.loads(orders.readline() or "null")
    if order is None or order["command"] not in _CHANGES:
        return
    from alembic import command

    error = None
    started = time.perf_counter()
    try:
        with engine.connect() as connection:
            getattr(command, order["command"])(spec.build(connection, shard), order["revision"])
            if connection.in_transaction():  # env.py left the transaction to its caller
                connection.commit()
    except Exception as err:
        traceback.print_exc()
        error = _describe(err)
    seconds = time.perf_counter() - started
    try:
        after: list[str] | None = list(_read_heads(spec, engine, shard))
    except Exception:
        traceback.print_exc()
        after = None
    reply(error=error, after=after, seconds=seconds)


def _fork_shards() -> None:
    """The helper process: import Alembic once, then fork one process per shard.

    Started by :func:`_processes` with the plan on stdin.  The helper has no threads
    and no connections, so forking it is safe, and each shard's process starts in
    milliseconds instead of importing Alembic and SQLAlchemy again.
    """
    plan = json.loads(sys.stdin.readline())
    spec = _ConfigSpec(**plan["config"])
    spec = dataclasses.replace(spec, x=tuple(spec.x))
    # imported once here, inherited by every fork
    import alembic.command
    import alembic.runtime.environment
    import alembic.script  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    children = []
    own = [fd for job in plan["jobs"] for fd in (job["orders"], job["replies"], job["log"])]
    for job in plan["jobs"]:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            children.append(pid)
            continue
        status = 0
        try:
            for fd in own:
                if fd not in (job["orders"], job["replies"], job["log"]):
                    os.close(fd)
            os.dup2(job["log"], 1)  # whatever env.py or Alembic prints: the shard's log
            os.dup2(job["log"], 2)
            with open(job["orders"]) as orders, open(job["replies"], "w") as replies:
                _serve(job, spec, orders, replies)
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    for fd in own:
        os.close(fd)
    for pid in children:
        os.waitpid(pid, 0)


class _Shard:
    """The parent's end of one shard's process: its pipes and its log."""

    def __init__(self, shard: str, dsn: str, helper_log: IO[bytes]) -> None:
        self.shard = shard
        self.dsn = dsn
        self.helper_log = helper_log
        self.log_file: IO[bytes] = tempfile.TemporaryFile()
        self.child_orders, orders = os.pipe()
        replies, self.child_replies = os.pipe()
        self._orders = open(orders, "w")
        self._replies = open(replies)

    def job(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "dsn": self.dsn,
            "orders": self.child_orders,
            "replies": self.child_replies,
            "log": self.log_file.fileno(),
        }

    def started(self) -> None:
        """Close the ends the helper took over (so EOF means the child is gone)."""
        os.close(self.child_orders)
        os.close(self.child_replies)

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._orders.write(json.dumps(message) + "\n")
            self._orders.flush()

    def receive(self) -> dict[str, Any]:
        line = self._replies.readline()
        if line:
            return dict(json.loads(line))
        said = self.log().strip() or _read(self.helper_log).strip() or "(it wrote nothing)"
        last = said.splitlines()[-1]
        return {"error": f"its migration process ended without an answer: {last}", "after": None}

    def log(self) -> str:
        """What the shard's process wrote to stdout and stderr."""
        return _read(self.log_file)

    def close(self) -> None:
        for pipe in (self._orders, self._replies, self.log_file):
            with contextlib.suppress(OSError):
                pipe.close()


def _read(log: IO[bytes]) -> str:
    # pread: a child shares the file's offset, which must stay at the end
    fd = log.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


@contextlib.contextmanager
def _processes(dsns: Mapping[str, str], spec: _ConfigSpec) -> Iterator[dict[str, _Shard]]:
    """One process per shard, forked from one helper; closing their pipes ends them."""
    if not hasattr(os, "fork"):
        raise ConfigurationError("shardsession migrate needs a POSIX system (it forks)")
    helper_log = tempfile.TemporaryFile()
    procs = {shard: _Shard(shard, dsn, helper_log) for shard, dsn in dsns.items()}
    jobs = [proc.job() for proc in procs.values()]
    path = [entry or os.getcwd() for entry in sys.path]
    helper = None
    try:
        helper = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(path)],
            stdin=subprocess.PIPE,
            stderr=helper_log,
            text=True,
            pass_fds=[fd for job in jobs for fd in (job["orders"], job["replies"], job["log"])],
        )
        assert helper.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # a helper that died says so below
            helper.stdin.write(json.dumps({"config": spec.as_json(), "jobs": jobs}) + "\n")
        with contextlib.suppress(BrokenPipeError):
            helper.stdin.close()
        for proc in procs.values():
            proc.started()
        yield procs
    finally:
        for proc in procs.values():
            proc.close()
        helper_log.close()
        if helper is not None:
            try:
                helper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()


def _collect_heads(procs: Mapping[str, _Shard]) -> dict[str, Heads]:
    """Every shard's revisions, read in parallel; raise if any shard cannot be read."""
    replies = {shard: proc.receive() for shard, proc in procs.items()}
    failed = {shard: r["error"] for shard, r in replies.items() if "heads" not in r}
    if failed:
        shard, error = next(iter(failed.items()))
        others = f" (and {len(failed) - 1} more shard(s))" if len(failed) > 1 else ""
        raise ConfigurationError(
            f"shard {shard!r}: its revision could not be read: {error}{others}; nothing was "
            "migrated. Check that the shard is reachable and that env.py runs"
        )
    return {shard: tuple(r["heads"]) for shard, r in replies.items()}


# -- the commands -----------------------------------------------------------------------


def _newest(script: ScriptDirectory, revisions: Sequence[Heads]) -> Heads:
    """The newest of ``revisions``, by the order of the script directory's history."""
    order = {s.revision: n for n, s in enumerate(script.walk_revisions())}

    def age(heads: Heads) -> int:
        return min((order.get(h, -1) for h in heads), default=len(order))

    return min(revisions, key=age)


def _as_target(heads: Heads | None) -> str:
    if not heads:
        return "base"
    return heads[0] if len(heads) == 1 else "heads"


def _shard_options(shards: Sequence[str]) -> tuple[str, str]:
    """The CLI's and the API's spelling of a shard selection."""
    return " ".join(f"--shard {s}" for s in shards), repr(list(shards))


def _refuse_mixed(
    command: str, script: ScriptDirectory, heads: Mapping[str, Heads], anyway: str = ""
) -> None:
    if len(set(heads.values())) <= 1:
        return
    newest = _newest(script, list(heads.values()))
    behind = [s for s, h in heads.items() if h != newest]
    target = _as_target(newest)
    cli, api = _shard_options(behind)
    raise MixedRevisionsError(
        f"the shards are at different revisions ({describe_revisions(heads)}); refusing to "
        f"{command} them, nothing was changed. Bring them level first: migrate the others "
        f"alone with `shardsession migrate upgrade {target} {cli}` (upgrade(dsns, "
        f"{target!r}, shards={api}) in Python), or pass --allow-mixed (allow_mixed=True) "
        f"{anyway or f'to {command} every shard from the revision it is at'}",
        heads,
    )


def _failure(report: MigrationReport) -> str:
    failed = [m for m in report.shards.values() if not m.ok]
    done = [m for m in report.shards.values() if m.ok and m.ran]
    what = "; ".join(f"{m.shard}: {m.error}" for m in failed)
    text = (
        f"{report.command} {report.revision} failed on {len(failed)} shard(s) ({what}). "
        f"The shards are now at: {describe_revisions(report.revisions)}."
    )
    if any(m.after is None for m in failed):
        return text + (
            " Check the shards marked unknown with `shardsession migrate current`, "
            "then migrate each alone with --shard"
        )
    if not done:
        return text + " Fix the cause and run the command again"
    cli, api = _shard_options([m.shard for m in failed])
    reached = _as_target(done[0].after)
    text += (
        f" Fix the cause on {', '.join(m.shard for m in failed)}, then bring "
        f"{'it' if len(failed) == 1 else 'them'} level with "
        f"`shardsession migrate {report.command} {reached} {cli}` "
        f"({report.command}(dsns, {reached!r}, shards={api}) in Python)"
    )
    starts = {m.after for m in failed}
    if len(starts) == 1:
        back = _as_target(next(iter(starts)))
        others, _ = _shard_options([m.shard for m in done])
        text += (
            f", or return the others with `shardsession migrate "
            f"{_OPPOSITE[report.command]} {back} {others}`"
        )
    return text


def _change(
    command: str,
    dsns: Mapping[str, str],
    target: str,
    config: Config | str | os.PathLike[str] | None,
    directory: str | os.PathLike[str] | None,
    section: str,
    x: Sequence[str],
    shards: Sequence[str] | None,
    allow_mixed: bool,
) -> MigrationReport:
    selected = _checked_dsns(dsns, shards)
    spec, script = _load_config(config, directory, section, x)
    _check_target(script, target)
    started = time.perf_counter()
    results: dict[str, ShardMigration] = {}
    with _processes(dsns, spec) as procs:
        before = _collect_heads(procs)
        if not allow_mixed:
            _refuse_mixed(command, script, {s: before[s] for s in selected})
        for shard, proc in procs.items():
            proc.send({"command": command if shard in selected else "stop", "revision": target})
        for shard, proc in procs.items():
            if shard not in selected:
                results[shard] = ShardMigration(shard, before[shard], before[shard], ran=False)
                continue
            done = proc.receive()
            after = done.get("after")
            results[shard] = ShardMigration(
                shard,
                before[shard],
                None if after is None else tuple(after),
                seconds=float(done.get("seconds", 0.0)),
                error=done.get("error"),
                log=proc.log(),
            )
    report = MigrationReport(command, target, results, time.perf_counter() - started)
    if not report.ok:
        raise MigrationError(_failure(report), report)
    return report


def upgrade(
    dsns: Mapping[str, str],
    revision: str = "head",
    *,
    config: Config | str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    section: str = "alembic",
    x: Sequence[str] = (),
    shards: Sequence[str] | None = None,
    allow_mixed: bool = False,
) -> MigrationReport:
    """Upgrade every shard to ``revision``, all shards at once (Alembic's ``upgrade``).

    :param dsns: shard name -> DSN (libpq keywords or a ``postgresql://`` URL).
    :param revision: the target: ``"head"``, a revision id, ``"+1"``...
    :param config: an ``alembic.config.Config``, or the path of ``alembic.ini`` (or
        ``pyproject.toml``); default ``alembic.ini`` in the working directory.
    :param directory: the script directory (the folder with ``env.py``); replaces
        the configuration's ``script_location``.  Alone, no ini file is read.
    :param section: the section of the ini file to read (Alembic's ``-n``).
    :param x: ``KEY=VALUE`` strings for ``context.get_x_argument()`` (Alembic's ``-x``).
    :param shards: migrate only these shards (the others are reported, untouched).
    :param allow_mixed: migrate the shards even if they are at different revisions,
        each from its own.
    :returns: the :class:`MigrationReport`.
    :raises MixedRevisionsError: the shards to migrate are at different revisions
        (and ``allow_mixed`` is False); nothing was changed.
    :raises MigrationError: the command failed on a shard; its ``report`` says where
        each shard is.
    :raises ConfigurationError: Alembic is missing, the configuration, a DSN or the
        revision is wrong, or a shard's revision cannot be read; nothing was changed.
    """
    return _change("upgrade", dsns, revision, config, directory, section, x, shards, allow_mixed)


def downgrade(
    dsns: Mapping[str, str],
    revision: str,
    *,
    config: Config | str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    section: str = "alembic",
    x: Sequence[str] = (),
    shards: Sequence[str] | None = None,
    allow_mixed: bool = False,
) -> MigrationReport:
    """Downgrade every shard to ``revision`` (a revision id, ``"-1"`` or ``"base"``),
    all shards at once.  The parameters, result and errors are :func:`upgrade`'s."""
    return _change("downgrade", dsns, revision, config, directory, section, x, shards, allow_mixed)


def stamp(
    dsns: Mapping[str, str],
    revision: str,
    *,
    config: Config | str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    section: str = "alembic",
    x: Sequence[str] = (),
    shards: Sequence[str] | None = None,
    allow_mixed: bool = False,
) -> MigrationReport:
    """Record ``revision`` in every shard's version table without running migrations
    (Alembic's ``stamp``), e.g. for shards whose tables ``create_all`` made.  The
    parameters, result and errors are :func:`upgrade`'s."""
    return _change("stamp", dsns, revision, config, directory, section, x, shards, allow_mixed)


def current(
    dsns: Mapping[str, str],
    *,
    config: Config | str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    section: str = "alembic",
    x: Sequence[str] = (),
) -> dict[str, Heads]:
    """Return every shard's revisions, read in parallel through ``env.py``.

    :raises ConfigurationError: as :func:`upgrade`, or a shard cannot be read.
    """
    _checked_dsns(dsns, None)
    spec, _ = _load_config(config, directory, section, x)
    with _processes(dsns, spec) as procs:
        return _collect_heads(procs)


def history(
    *,
    config: Config | str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    section: str = "alembic",
) -> list[Revision]:
    """Return the revisions of the script directory, newest first (no shard is read)."""
    _, script = _load_config(config, directory, section, ())
    found = []
    for s in script.walk_revisions():
        down = s.down_revision
        downs = (down,) if isinstance(down, str) else tuple(down or ())
        found.append(Revision(s.revision, downs, s.doc, s.is_head, s.path))
    return found


def revision(
    dsns: Mapping[str, str] | None,
    message: str | None = None,
    *,
    autogenerate: bool = False,
    shard: str | None = None,
    config: Config | str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    section: str = "alembic",
    x: Sequence[str] = (),
    rev_id: str | None = None,
    head: str = "head",
    allow_mixed: bool = False,
) -> Script:
    """Write one new revision script, once for every shard (Alembic's ``revision``).

    With ``autogenerate``, the models (``target_metadata`` of ``env.py``) are
    compared with one shard only: ``shard``, or else the first of ``dsns``.  The
    shards must all be at the same revision (unless ``allow_mixed``), since what is
    found on that one shard is written for all of them.  Without ``autogenerate``
    no shard is used and ``dsns`` may be None.

    :param message: the revision's message (Alembic's ``-m``).
    :param rev_id: the new revision's id instead of a generated one.
    :param head: the revision the new one follows (``"head"``).
    :returns: the new Alembic ``Script`` (its ``path`` is the file written).
    :raises MixedRevisionsError: the shards are at different revisions.
    :raises ConfigurationError: as :func:`upgrade`; also for a ``shard`` not in
        ``dsns``, no ``dsns`` with ``autogenerate``, or a revision Alembic refuses
        (e.g. the compared shard is not at the head revision).
    """
    from alembic import command
    from alembic.util import CommandError

    spec, script = _load_config(config, directory, section, x)
    try:
        if not autogenerate:
            made = command.revision(spec.build(), message=message, rev_id=rev_id, head=head)
        else:
            if not dsns:
                raise ConfigurationError(
                    "autogenerate compares the models with a shard: give the shards "
                    "(--dsn s0=DSN, or a running local cluster)"
                )
            compared = _checked_dsns(dsns, None if shard is None else [shard])[0]
            if not allow_mixed:
                with _processes(dsns, spec) as procs:
                    _refuse_mixed(
                        "autogenerate a revision for",
                        script,
                        _collect_heads(procs),
                        f"to compare the models with shard {compared!r} anyway",
                    )
            engine = _engine(dsns[compared])
            _read_heads(spec, engine, compared)  # env.py must use the shard's connection
            with engine.connect() as connection:
                made = command.revision(
                    spec.build(connection, compared),
                    message=message,
                    autogenerate=True,
                    rev_id=rev_id,
                    head=head,
                )
    except CommandError as err:
        raise ConfigurationError(f"alembic revision refused: {err}") from err
    scripts = made if isinstance(made, list) else [made]
    if not scripts or scripts[0] is None:
        raise ConfigurationError("alembic revision wrote no script (check env.py's hooks)")
    return scripts[0]
