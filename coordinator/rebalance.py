"""Resharding: move the rows whose shard changed after the list of shards changed.

:func:`rebalance` finds, on every shard, the rows of the models placed by
``__shard_key__`` whose rendezvous winner under the new shard names is another
shard, and moves each of them with the rows that live with it (the rows of models
without a shard key that follow it through a foreign key or a relationship,
recursively, and keyed rows that reference it).  Rows move in batches, one
source and one destination shard per batch, each batch one two-phase transaction:

1. on the source, the batch's rows are locked (``SELECT ... FOR UPDATE``) and
   their keys read again, so a transaction that got there first commits before
   the move and one that comes later waits and then finds the rows moved;
2. they are copied to the destination (``COPY``, every column, exactly) and
   deleted from the source;
3. the source is prepared; the destination, the commit point, records the
   decision in the commit log and commits; then the source's prepared
   transaction is committed.  The destination's rows are therefore visible
   before the source's lock is released: whoever waited on the source and
   finds the rows gone finds them on the destination.

A batch is atomic: a crash leaves it moved or not moved, and an in-doubt batch
is settled by recovery (``shardsession recover``, any application's background
recovery, or the next :func:`rebalance`, which settles what an earlier run left
at once).  There is no other state: a new run finds what is still misplaced.

While rows move, applications route with the new shard list and name the old
one (``Session(shards, previous_shards=...)``); :func:`follow_rebalance` is what
that does.  :func:`verify` proves the result: no misplaced row, no row on two
shards.  See :doc:`/resharding`.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from shardsession.coordinator import reference, routing, selectparts
from shardsession.coordinator.shards import ShardSet
from sqlalchemy import select
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, RelationshipDirection, class_mapper, registry
from sqlalchemy.schema import MetaData, Table, sort_tables

from shardsession.exc import ArgumentError, ConfigurationError, CrossShardError, ShardSessionError
from shardsession.preflight import check_shard_dsns, check_shard_name
from shardsession.recovery import settle_decision
from shardsession.twophase import (
    COMMIT_LOG_DDL,
    DECISION_SQL,
    new_global_id,
    parse_gid,
    participant_gid,
)

__all__ = [
    "RebalanceError",
    "RebalanceProgress",
    "RebalanceReport",
    "VerifyReport",
    "command",
    "follow_rebalance",
    "load_models",
    "rebalance",
    "verify",
]

_LOCK_KEY = 0x5348_5242  # "SHRB": one rebalance at a time, per shard database
_COORDINATOR = "rebal"  # global ids of batches start with it (settled by the next run)
_MAX_PASSES = 20
_DIALECT = PGDialect_psycopg()
_NAMES = """ARRAY(SELECT a.attname::text FROM unnest(c.{0}) WITH ORDINALITY k(n, i)
    JOIN pg_attribute a ON a.attrelid = c.{1} AND a.attnum = k.n ORDER BY k.i)"""
#: foreign keys into the tables named (child, parent, child columns, parent columns)
_FOREIGN_KEYS = (
    "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text, "
    f"{_NAMES.format('conkey', 'conrelid')}, {_NAMES.format('confkey', 'confrelid')} "
    "FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid::regclass::text = ANY(%s)"
)


class RebalanceError(ShardSessionError):
    """Rows could not be moved safely: the batch that failed moved nothing, and the
    message names the rows and the fix.

    :ivar report: the :class:`RebalanceReport` of what was done before, or None.
    """

    def __init__(self, message: str, report: RebalanceReport | None = None) -> None:
        super().__init__(message)
        self.report = report


# -- reports -------------------------------------------------------------------------


def _pairs(moved: Mapping[str, Mapping[tuple[str, str], int]]) -> dict[str, dict[str, int]]:
    return {t: {f"{a}->{b}": n for (a, b), n in sorted(p.items())} for t, p in moved.items()}


@dataclass
class VerifyReport:
    """Where the rows of the moved tables are, against where they belong.

    :ivar misplaced: table -> rows on a shard that is not theirs (a keyed row whose
        key wins another shard, a row without a key following a parent that is
        not on its shard, any row on a retiring shard).
    :ivar duplicated: table -> primary keys present on more than one shard.
    :ivar unkeyed: table -> rows whose shard key is NULL (they have no shard).
    :ivar left_on_retiring: table -> rows of tables that are not moved (no
        ``__shard_key__`` and no parent that has one) still on a retiring shard.
    :ivar reference_counts: reference table -> shard -> rows, for reference tables
        whose copies do not all have the same number of rows.
    :ivar examples: a few of the rows found wrong, for the message.
    """

    misplaced: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    unkeyed: dict[str, int] = field(default_factory=dict)
    left_on_retiring: dict[str, int] = field(default_factory=dict)
    reference_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every row is on its shard, no row is on two shards, and every
        reference table has the same rows on every shard."""
        counts = [*self.misplaced.values(), *self.duplicated.values(), *self.unkeyed.values()]
        return not any(counts) and not self.reference_counts

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        return {
            "ok": self.ok,
            "misplaced": self.misplaced,
            "duplicated": self.duplicated,
            "unkeyed": self.unkeyed,
            "left_on_retiring": self.left_on_retiring,
            "reference_counts": self.reference_counts,
            "examples": self.examples,
        }

    def summary(self) -> str:
        """One line: what is wrong, or that nothing is."""
        if self.ok:
            return "every row is on its shard and no row is on two shards"
        parts = [f"{sum(c.values())} row(s) {what}" for what, c in (
            ("misplaced", self.misplaced), ("on two shards", self.duplicated),
            ("without a shard key value", self.unkeyed)) if sum(c.values())]  # fmt: skip
        parts += [f"reference table {name} differs between shards ({counts})"
                  for name, counts in self.reference_counts.items()]  # fmt: skip
        return ", ".join(parts) + (f" (e.g. {self.examples[0]})" if self.examples else "")

    def as_text(self) -> str:
        """The report for people."""
        if self.ok:
            lines = [
                f"verified: every row of {len(self.misplaced)} table(s) is on its shard "
                "and no row is on two shards"
            ]
        else:
            lines = ["verification FAILED:"]
            for what, counts in (
                ("misplaced", self.misplaced),
                ("on two shards", self.duplicated),
                ("without a shard key value", self.unkeyed),
            ):
                lines += [f"  {t}: {n} row(s) {what}" for t, n in counts.items() if n]
            lines += [f"  e.g. {e}" for e in self.examples]
        lines += [
            f"  note: {n} row(s) of {t} (not moved by rebalance) are still on a retiring shard"
            for t, n in self.left_on_retiring.items()
            if n
        ]
        return "\n".join(lines)


@dataclass
class RebalanceReport:
    """What one :func:`rebalance` did (or, with ``dry_run``, would do).

    :ivar moved: table -> ``(source, destination)`` -> rows moved (would move).
    :ivar planned: the same counted before moving (a dry pass), or None when
        there was no progress display to size.
    :ivar batches: batches committed (counted, for a dry run).
    :ivar passes: passes over the shards (a pass that finds nothing ends the run).
    :ivar retries: batches retried after a lock wait timed out or a deadlock.
    :ivar settled: batches an earlier, interrupted run left prepared, settled
        first (``gid: commit`` or ``gid: abort``).
    :ivar seconds: time spent moving (planning and verification excluded).
    :ivar verification: the final :class:`VerifyReport` (None for a dry run).
    """

    moved: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    planned: dict[str, dict[tuple[str, str], int]] | None = None
    batches: int = 0
    passes: int = 0
    retries: int = 0
    settled: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    verification: VerifyReport | None = None

    @property
    def rows(self) -> int:
        """Rows moved, all tables together."""
        return sum(n for pairs in self.moved.values() for n in pairs.values())

    @property
    def rows_per_second(self) -> float:
        """Moving throughput."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``); pairs are ``"s0->s3"``."""
        return {
            "dry_run": self.dry_run,
            "rows": self.rows,
            "moved": _pairs(self.moved),
            "batches": self.batches,
            "passes": self.passes,
            "retries": self.retries,
            "settled": self.settled,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "verification": self.verification.as_dict() if self.verification else None,
        }

    def as_text(self) -> str:
        """The report for people: rows per table and per shard pair."""
        if self.dry_run:
            lines = [f"dry run: {self.rows} row(s) would move, in {self.batches} batch(es)"]
        else:
            lines = [
                f"moved {self.rows} row(s) in {self.batches} batch(es), {self.passes} "
                f"pass(es), {self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s)"
            ]
        for table, pairs in _pairs(self.moved).items():
            lines.append(f"  {table}: " + ", ".join(f"{p}: {n}" for p, n in pairs.items()))
        lines += [f"  settled an interrupted batch: {s}" for s in self.settled]
        if self.verification is not None:
            lines.append(self.verification.as_text())
        return "\n".join(lines)


@dataclass(frozen=True)
class RebalanceProgress:
    """One step of a rebalance, given to the ``progress`` callback after each batch.

    :ivar done: rows moved so far.
    :ivar total: rows planned (0 when unknown).
    :ivar batches: batches committed so far.
    :ivar table: the table of the batch's first rows; ``source`` and ``target``
        its shards; ``rows`` the rows it moved (children included).
    """

    done: int
    total: int
    batches: int
    table: str
    source: str
    target: str
    rows: int


# -- which tables move -------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    """Rows of ``child`` whose ``child_cols`` equal a ``parent`` row's ``parent_cols``
    live on that row's shard (a foreign key, or a relationship's join)."""

    child: Table
    parent: Table
    child_cols: tuple[str, ...]
    parent_cols: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"{self.child.fullname}({', '.join(self.child_cols)}) -> "
            f"{self.parent.fullname}({', '.join(self.parent_cols)})"
        )


def _mappers(models: Any) -> list[Mapper[Any]]:
    reg = models if isinstance(models, registry) else getattr(models, "registry", None)
    if isinstance(reg, registry):
        reg.configure()
        return sorted(reg.mappers, key=lambda m: (m.class_.__module__, m.class_.__qualname__))
    if isinstance(models, MetaData):
        raise ArgumentError(
            "rebalance needs the models, not a MetaData: pass the declarative "
            "base (Base), whose classes say their __shard_key__"
        )
    try:
        return [class_mapper(cls) for cls in models]
    except Exception as err:
        raise ArgumentError(
            f"{models!r} is not a declarative base, a registry or a list of mapped classes"
        ) from err


def _model_links(mappers: Sequence[Mapper[Any]]) -> set[_Link]:
    out: set[_Link] = set()
    for mapper in mappers:
        table = mapper.local_table
        if isinstance(table, Table):
            for fk in table.foreign_key_constraints:
                out.add(
                    _Link(
                        table,
                        fk.referred_table,
                        tuple(e.parent.name for e in fk.elements),
                        tuple(e.column.name for e in fk.elements),
                    )
                )
        for rel in mapper.relationships:
            if rel.secondary is not None or rel.direction is RelationshipDirection.MANYTOMANY:
                continue
            pairs = list(rel.local_remote_pairs or ())
            if rel.direction is RelationshipDirection.ONETOMANY:
                pairs = [(remote, local) for local, remote in pairs]
            children = {c.table for c, _ in pairs}
            parents = {p.table for _, p in pairs}
            if len(children) == len(parents) == 1:
                child, parent = children.pop(), parents.pop()
                if isinstance(child, Table) and isinstance(parent, Table):
                    out.add(
                        _Link(
                            child,
                            parent,
                            tuple(c.name for c, _ in pairs),
                            tuple(p.name for _, p in pairs),
                        )
                    )
    return out


class _Plan:
    """The moved tables (parents first), their keys, links and the columns read."""

    def __init__(self, models: Any) -> None:
        mappers = _mappers(models)
        self.keys: dict[Table, routing.ShardKey] = {}
        self.models: set[Table] = set()
        candidates: list[Table] = []
        pk: dict[Table, list[str]] = {}
        for mapper in mappers:
            table = mapper.local_table
            if not isinstance(table, Table) or table in self.models:
                continue
            self.models.add(table)
            pk[table] = [c.name for c in table.primary_key.columns] or [
                c.name for c in mapper.primary_key if c.table is table
            ]
            attr = getattr(mapper.class_, "__shard_key__", None)
            if attr is None:
                candidates.append(table)
            elif isinstance(attr, str):  # anything else (a reference table) stays put
                try:
                    key = routing.ShardKey(mapper, attr)
                except ArgumentError:
                    continue
                if key.column.table is table:
                    self.keys[table] = key
                else:  # joined inheritance: the subclass row follows its base row
                    candidates.append(table)
        links = sorted(_model_links(mappers), key=str)
        moved = set(self.keys)
        self.placing: dict[Table, _Link] = {}
        grew = True
        while grew:
            grew = False
            for link in links:
                if (
                    link.child in candidates
                    and link.child not in moved
                    and link.parent in moved
                    and link.parent is not link.child
                ):
                    moved.add(link.child)
                    self.placing[link.child] = link
                    grew = True
        for table in moved:
            if not pk[table]:
                raise ConfigurationError(
                    f"table {table.fullname} has no primary key: its rows "
                    "cannot be addressed one by one to move them"
                )
        if not self.keys:
            raise ConfigurationError(
                "none of the models has a __shard_key__ naming one of its columns: nothing "
                "would move. Pass the declarative base of your sharded models"
            )
        self.pk = pk
        self.links: list[_Link] = [x for x in links if x.child in moved and x.parent in moved]
        self.moved = moved
        self.extra: list[tuple[Table, Table]] = []
        self._derive()

    def add_link(self, link: _Link) -> None:
        """A foreign key the database has and the models do not declare."""
        if link not in self.links:
            self.links.append(link)
            self.extra.append((link.parent, link.child))
            self._derive()

    def _derive(self) -> None:
        ordered = sorted(self.moved, key=lambda t: t.fullname)  # ties: by name, not by chance
        self.tables: list[Table] = sort_tables(ordered, extra_dependencies=self.extra)
        self.children = {t: [x for x in self.links if x.parent is t] for t in self.tables}
        self.needed: dict[Table, list[str]] = {}
        for t in self.tables:
            cols = list(self.pk[t])
            if t in self.keys:
                cols.append(self.keys[t].column.name)
            cols += [c for x in self.children[t] for c in x.parent_cols]
            self.needed[t] = list(dict.fromkeys(cols))
        self.procs = {
            t: k.type.dialect_impl(_DIALECT).result_processor(_DIALECT, None)
            for t, k in self.keys.items()
        }

    def key_value(self, table: Table, raw: Any) -> Any:
        """A raw column value of ``table``'s key as the application sees it, normalized."""
        proc = self.procs[table]
        return self.keys[table].normalize(proc(raw) if proc else raw)


# -- SQL helpers ------------------------------------------------------------------------


def _ident(table: Table) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)


def _cols(names: Sequence[str], alias: str | None = None) -> sql.Composed:
    return sql.SQL(", ").join(
        sql.Identifier(alias, n) if alias else sql.Identifier(n) for n in names
    )


def _match(cols: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> sql.Composed:
    """``cols`` equal one of ``rows`` (values as literals: COPY takes no parameters)."""
    if len(cols) == 1:
        return sql.SQL("{} = ANY({})").format(
            sql.Identifier(cols[0]), sql.Literal([r[0] for r in rows])
        )
    tuples = sql.SQL(", ").join(
        sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, r))) for r in rows
    )
    return sql.SQL("({}) IN ({})").format(_cols(cols), tuples)


def _joined(link: _Link, child: str, parent: str) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(parent, p), sql.Identifier(child, c))
        for c, p in zip(link.child_cols, link.parent_cols)
    )


def _linked(link: _Link, alias: str) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT NULL").format(sql.Identifier(alias, c)) for c in link.child_cols
    )


def _stray_sql(link: _Link, what: sql.Composable) -> sql.Composed:
    """Rows of ``link.child`` (alias ``c``) linked to a parent row not on their shard."""
    return sql.SQL(
        "SELECT {} FROM {} AS c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})"
    ).format(
        what, _ident(link.child), _linked(link, "c"), _ident(link.parent), _joined(link, "c", "p")
    )


def _one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first column of the first row of ``query`` (None without a row)."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _describe(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    detail = getattr(getattr(err, "diag", None), "message_detail", None)
    return f"{text} ({detail})" if detail else text


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- connections --------------------------------------------------------------------------


class _Connections:
    """One autocommit connection per shard; with ``exclusive`` each holds the
    rebalance lock of its shard for the length of the run."""

    def __init__(self, dsns: Mapping[str, str], *, exclusive: bool) -> None:
        self.dsns = dict(dsns)
        self.exclusive = exclusive
        self._open: dict[str, psycopg.Connection[Any]] = {}

    def __getitem__(self, shard: str) -> psycopg.Connection[Any]:
        conn = self._open.get(shard)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        conn = psycopg.connect(
            self.dsns[shard],
            autocommit=True,
            connect_timeout=10,
            application_name="shardsession-rebalance",
        )
        # text COPY between servers: the same unambiguous formats on both sides
        for setting in (
            "datestyle = 'ISO, YMD'",
            "intervalstyle = 'postgres'",
            "extra_float_digits = 3",
            "timezone = 'UTC'",
        ):
            conn.execute(f"SET {setting}")
        if self.exclusive and not _one(conn, "SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)):
            conn.close()
            raise RebalanceError(
                f"another rebalance is running on shard {shard!r}; wait for "
                "it to finish (or stop it) and run again"
            )
        self._open[shard] = conn
        return conn

    def rollback(self, *shards: str) -> None:
        """End whatever transaction the shards' connections are in; drop broken ones."""
        for shard in shards:
            conn = self._open.get(shard)
            if conn is None:
                continue
            if conn.closed or conn.broken:
                del self._open[shard]
                continue
            with contextlib.suppress(psycopg.Error):
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")

    def close(self) -> None:
        """Close every connection (releasing the locks)."""
        for conn in self._open.values():
            with contextlib.suppress(psycopg.Error):
                conn.close()
        self._open.clear()


def _dsns_of(shards: Any, what: str) -> dict[str, str]:
    if isinstance(shards, ShardSet):
        return dict(shards.dsns)
    if not isinstance(shards, Mapping) or not shards:
        raise ArgumentError(f"{what} must map shard names to DSNs or engines (or be a ShardSet)")
    if all(isinstance(v, Engine) for v in shards.values()):
        return dict(ShardSet(dict(shards)).dsns)
    for name, dsn in shards.items():
        check_shard_name(name)
        if not isinstance(dsn, str):
            raise ArgumentError(f"{what}: shard {name!r} has {dsn!r}, not a DSN or an Engine")
    return dict(shards)


# -- moving ----------------------------------------------------------------------------


class _Retry(Exception):
    """The batch was rolled back everywhere and may be tried again."""


class _Mover:
    def __init__(
        self,
        plan: _Plan,
        dsns: dict[str, str],
        retiring: dict[str, str],
        *,
        batch_size: int,
        lock_timeout: float,
        attempts: int,
        progress: Callable[[RebalanceProgress], object] | None,
    ) -> None:
        overlap = set(dsns) & set(retiring)
        if overlap:
            raise ArgumentError(f"shards {sorted(overlap)} are both in the new list and retiring")
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be at least 1, not {batch_size}")
        self.plan, self.names, self.retiring = plan, tuple(dsns), set(retiring)
        self.all = {**dsns, **retiring}
        self.batch_size, self.lock_timeout, self.attempts = batch_size, lock_timeout, attempts
        self.progress = progress
        self.report = RebalanceReport()
        self.total = 0
        self.columns: dict[tuple[Table, str], list[str]] = {}
        self.seen: set[tuple[Table, tuple[Any, ...]]] | None = None  # a dry pass's counted rows
        stamp = f"{os.getpid():x}{int(time.time() * 1000) % 36**6:x}"
        self.coordinator = (_COORDINATOR + stamp)[:20]

    # -- preparing -------------------------------------------------------------------

    def check_schema(self, conns: _Connections) -> None:
        """Every moved table exists on every shard; every foreign key into a moved table
        comes from a moved table (else deleting the source rows would fail or cascade)."""
        by_name: dict[str, Table] = {}
        for shard in self.all:
            conn = conns[shard]
            for table in self.plan.tables:
                found = _one(conn, "SELECT to_regclass(%s)::text", (_ident(table).as_string(conn),))
                if found is None:
                    raise ConfigurationError(
                        f"table {table.fullname} does not exist on shard {shard!r}: create the "
                        "schema on every shard, new ones included (ss.create_all(Base.metadata, "
                        "shards) or your migrations), then rebalance"
                    )
                by_name[found] = table
            for child, parent, ccols, pcols in conn.execute(_FOREIGN_KEYS, (list(by_name),)):
                if child not in by_name:
                    raise ConfigurationError(
                        f"table {child} on shard {shard!r} has a foreign key to {parent}, whose "
                        f"rows rebalance moves, but {child} is not moved (it has no model with a "
                        f"__shard_key__ or a parent that has one): deleting the moved rows would "
                        f"fail or cascade. Give {child} a model that follows {parent}, or drop "
                        "the foreign key"
                    )
                self.plan.add_link(
                    _Link(by_name[child], by_name[parent], tuple(ccols), tuple(pcols))
                )

    def settle_in_doubt(self, conns: _Connections) -> None:
        """Finish the batches an interrupted run left prepared (its lock is gone, so no
        live rebalance owns them): commit those whose decision was recorded, fence and
        roll back the others."""
        for shard in self.all:
            conn = conns[shard]
            gids = [
                row[0]
                for row in conn.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                    f"AND gid LIKE 'ss\\_{_COORDINATOR}%'"
                )
            ]
            for gid in gids:
                parsed = parse_gid(gid)
                if parsed is None or parsed.commit_point not in self.all:
                    raise RebalanceError(
                        f"a batch {gid!r} is prepared on shard {shard!r} and its decision is on "
                        "a shard not given here; run `shardsession recover` with every shard"
                    )
                outcome = settle_decision(
                    self.all[parsed.commit_point],
                    parsed.global_id,
                    presume_abort=True,
                    dry_run=False,
                )
                if outcome is None:
                    continue  # its decision is locked: a later attempt settles it
                verb = "COMMIT PREPARED {}" if outcome == "commit" else "ROLLBACK PREPARED {}"
                with contextlib.suppress(psycopg.errors.UndefinedObject):
                    conn.execute(sql.SQL(verb).format(sql.Literal(gid)))
                self.report.settled.append(f"{gid}: {outcome}")

    def _columns(self, conns: _Connections, table: Table, src: str, dst: str) -> list[str]:
        """The table's stored columns, the same on both shards (generated ones excluded)."""
        found = []
        for shard in (src, dst):
            if (table, shard) not in self.columns:
                conn = conns[shard]
                self.columns[table, shard] = [
                    row[0]
                    for row in conn.execute(
                        "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
                        "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                        (_ident(table).as_string(conn),),
                    )
                ]
            found.append(self.columns[table, shard])
        if sorted(found[0]) != sorted(found[1]):
            raise ConfigurationError(
                f"table {table.fullname} has columns {found[0]} on shard {src!r} but {found[1]} "
                f"on {dst!r}: migrate every shard to the same schema, then rebalance"
            )
        return found[0]

    # -- finding misplaced rows --------------------------------------------------------

    def _scan_keyed(
        self, conn: psycopg.Connection[Any], table: Table, src: str
    ) -> dict[str, list[tuple[Any, ...]]]:
        pk, key = self.plan.pk[table], self.plan.keys[table].column.name
        out: dict[str, list[tuple[Any, ...]]] = {}
        # a row whose parent is here moves in its parent's batch (a foreign key forbids
        # moving it first); its parent may be busy now and move in a later pass
        with_parent = [
            sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})").format(
                _ident(x.parent), _joined(x, "c", "p"))
            for x in self.plan.links if x.child is table and x.parent is not table
        ]  # fmt: skip
        query = sql.SQL("SELECT {}, {} FROM {} AS c WHERE {}").format(
            _cols(pk, "c"), sql.Identifier("c", key), _ident(table),
            sql.SQL(" AND ").join([sql.SQL("true"), *with_parent]),
        )  # fmt: skip
        with conn.transaction(), conn.cursor(name="shardsession_rebalance_scan") as cur:
            cur.itersize = 10_000
            cur.execute(query)
            for row in cur:
                if row[-1] is None:
                    continue  # no shard: verify reports it
                dst = routing.shard_for_key(self.names, self.plan.key_value(table, row[-1]))
                if dst != src:
                    out.setdefault(dst, []).append(tuple(row[:-1]))
        return out

    def _scan_strays(
        self, conns: _Connections, table: Table, src: str
    ) -> dict[str, list[tuple[Any, ...]]]:
        """Rows of a table without a key that are not with their parent: placed by
        where the parent is (or, unlinked on a retiring shard, sent to the first shard)."""
        link, pk = self.plan.placing[table], self.plan.pk[table]
        conn = conns[src]
        out: dict[str, list[tuple[Any, ...]]] = {}
        if src in self.retiring:
            unlinked = sql.SQL("SELECT {} FROM {} AS c WHERE NOT ({})").format(
                _cols(pk, "c"), _ident(table), _linked(link, "c")
            )
            out[self.names[0]] = [tuple(r) for r in conn.execute(unlinked)]
        strays = conn.execute(_stray_sql(link, _cols([*pk, *link.child_cols], "c"))).fetchall()
        if not strays:
            return {k: v for k, v in out.items() if v}
        wanted = {tuple(r[len(pk) :]) for r in strays}
        where: dict[tuple[Any, ...], str | None] = {}
        for shard in self.all:
            if shard == src:
                continue
            query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
                _cols(link.parent_cols),
                _ident(link.parent),
                _match(link.parent_cols, sorted(wanted, key=repr)),
            )
            for row in conns[shard].execute(query):
                where[tuple(row)] = None if tuple(row) in where else shard  # two: ambiguous
        for row in strays:
            dst = where.get(tuple(row[len(pk) :]))
            if dst is not None and dst in self.names:  # orphans and doubles: verify says so
                out.setdefault(dst, []).append(tuple(row[: len(pk)]))
        return {k: v for k, v in out.items() if v}

    # -- one batch ---------------------------------------------------------------------

    def _select(
        self, conn: psycopg.Connection[Any], table: Table, where: sql.Composable, lock: str
    ) -> list[tuple[Any, ...]]:
        query = sql.SQL("SELECT {} FROM {} WHERE {}" + lock).format(
            _cols(self.plan.needed[table]), _ident(table), where
        )
        return [tuple(r) for r in conn.execute(query)]

    def _collect(
        self,
        conn: psycopg.Connection[Any],
        table: Table,
        dst: str,
        pks: Sequence[tuple[Any, ...]],
        *,
        dry: bool,
        skip_locked: bool,
    ) -> dict[Table, dict[tuple[Any, ...], tuple[Any, ...]]]:
        """The batch: the root rows still bound for ``dst``, locked, and every row that
        lives with them (breadth-first over the links), locked too."""
        plan = self.plan
        lock = "" if dry else (" FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE")
        rows: dict[Table, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
        frontier: dict[Table, list[tuple[Any, ...]]] = {}
        found = self._select(conn, table, _match(plan.pk[table], pks), lock)
        self._add(rows, frontier, table, found, dst, None)
        while frontier:
            current, frontier = frontier, {}
            for parent, parent_rows in current.items():
                index = plan.needed[parent].index
                for link in plan.children[parent]:
                    values = {tuple(r[index(c)] for c in link.parent_cols) for r in parent_rows}
                    values = {v for v in values if None not in v}
                    if not values:
                        continue
                    where = _match(link.child_cols, sorted(values, key=repr))
                    found = self._select(conn, link.child, where, "" if dry else " FOR UPDATE")
                    self._add(rows, frontier, link.child, found, dst, link)
        return rows

    def _add(
        self,
        rows: dict[Table, dict[tuple[Any, ...], tuple[Any, ...]]],
        frontier: dict[Table, list[tuple[Any, ...]]],
        table: Table,
        found: list[tuple[Any, ...]],
        dst: str,
        link: _Link | None,
    ) -> None:
        plan = self.plan
        width = len(plan.pk[table])
        have = rows.setdefault(table, {})
        key = plan.keys.get(table)
        for row in found:
            pk = row[:width]
            if pk in have or (self.seen is not None and (table, pk) in self.seen):
                continue
            if key is not None:
                raw = row[plan.needed[table].index(key.column.name)]
                home = (
                    None
                    if raw is None
                    else routing.shard_for_key(self.names, plan.key_value(table, raw))
                )
                if link is None and home != dst:
                    continue  # its key changed since the scan: not this batch's
                if link is not None and home != dst:
                    raise CrossShardError(
                        f"{table.fullname} row {pk} is linked to a {link.parent.fullname} row "
                        f"moving to shard {dst!r} ({link}), but its own {key.class_name}."
                        f"{key.attr} = {raw!r} belongs on {home!r}: linked rows must share a "
                        f"shard. Give {key.class_name} the same shard key value as its parent, "
                        "or no __shard_key__ so that it follows it"
                    )
            have[pk] = row
            frontier.setdefault(table, []).append(row)

    def move(
        self,
        conns: _Connections,
        table: Table,
        src: str,
        dst: str,
        pks: Sequence[tuple[Any, ...]],
        *,
        dry: bool,
        skip_locked: bool,
    ) -> int:
        """Move (or count) one batch; retried when a lock wait or the network fails."""
        last: BaseException | None = None
        for attempt in range(self.attempts):
            try:
                return self._move_once(
                    conns, table, src, dst, pks, dry=dry, skip_locked=skip_locked
                )
            except _Retry as err:
                last = err.__cause__ or err
                self.report.retries += 1
                time.sleep(min(2.0, 0.05 * 2**attempt))
                self.settle_in_doubt(conns)
        raise RebalanceError(
            f"a batch of {len(pks)} {table.fullname} row(s) from shard {src!r} to {dst!r} "
            f"failed {self.attempts} times, last: {_describe(last or Exception())}. Nothing of it "
            "moved; run rebalance again (it continues where it stopped)",
            self.report,
        )

    def _move_once(
        self,
        conns: _Connections,
        table: Table,
        src: str,
        dst: str,
        pks: Sequence[tuple[Any, ...]],
        *,
        dry: bool,
        skip_locked: bool,
    ) -> int:
        try:
            s = conns[src]
            s.execute("BEGIN")
            if not dry:
                s.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(f"{int(self.lock_timeout * 1000)}ms")
                    )
                )
            rows = self._collect(s, table, dst, pks, dry=dry, skip_locked=skip_locked)
            count = sum(len(v) for v in rows.values())
            if dry or not count:
                s.execute("ROLLBACK")
                if self.seen is not None:
                    self.seen.update((t, pk) for t, r in rows.items() for pk in r)
                self._record(table, src, dst, rows)
                return count
            d = conns[dst]
            d.execute("BEGIN")
            self._copy(conns, s, d, rows, src, dst)
            self._delete(s, rows, src)
        except psycopg.OperationalError as err:  # lock timeout, deadlock, lost connection
            conns.rollback(src, dst)
            raise _Retry() from err
        except psycopg.Error as err:
            conns.rollback(src, dst)
            raise RebalanceError(self._explain(err, table, src, dst), self.report) from err
        except BaseException:
            conns.rollback(src, dst)
            raise
        self._commit(conns, s, d, src, dst)
        self._record(table, src, dst, rows)
        return count

    def _explain(self, err: psycopg.Error, table: Table, src: str, dst: str) -> str:
        what = _describe(err)
        if isinstance(err, psycopg.errors.UniqueViolation):
            return (
                f"moving {table.fullname} rows from shard {src!r} to {dst!r}: {what}. The row "
                f"is already on {dst!r}, so it is on two shards; keep one copy (delete the "
                "other) and run rebalance again. Nothing of this batch moved"
            )
        if isinstance(err, psycopg.errors.ForeignKeyViolation):
            return (
                f"moving {table.fullname} rows from shard {src!r} to {dst!r}: {what}. A "
                "foreign key links rows that belong on different shards under the new list; "
                "give linked models the same shard key. Nothing of this batch moved"
            )
        return f"moving {table.fullname} rows from {src!r} to {dst!r}: {what}; nothing moved"

    def _copy(
        self,
        conns: _Connections,
        s: psycopg.Connection[Any],
        d: psycopg.Connection[Any],
        rows: dict[Table, dict[tuple[Any, ...], tuple[Any, ...]]],
        src: str,
        dst: str,
    ) -> None:
        for table in self.plan.tables:
            if not rows.get(table):
                continue
            cols = _cols(self._columns(conns, table, src, dst))
            where = _match(self.plan.pk[table], list(rows[table]))
            out = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT").format(
                cols, _ident(table), where
            )
            into = sql.SQL("COPY {} ({}) FROM STDIN").format(_ident(table), cols)
            with s.cursor().copy(out) as source, d.cursor().copy(into) as target:
                for data in source:
                    target.write(data)

    def _delete(
        self,
        s: psycopg.Connection[Any],
        rows: dict[Table, dict[tuple[Any, ...], tuple[Any, ...]]],
        src: str,
    ) -> None:
        for table in reversed(self.plan.tables):
            if not rows.get(table):
                continue
            query = sql.SQL("DELETE FROM {} WHERE {}").format(
                _ident(table), _match(self.plan.pk[table], list(rows[table]))
            )
            deleted = s.execute(query).rowcount
            if deleted != len(rows[table]):  # cannot happen while the rows are locked
                raise RebalanceError(
                    f"deleting {len(rows[table])} locked {table.fullname} rows "
                    f"on {src!r} deleted {deleted}; nothing moved"
                )

    def _commit(
        self,
        conns: _Connections,
        s: psycopg.Connection[Any],
        d: psycopg.Connection[Any],
        src: str,
        dst: str,
    ) -> None:
        """Source prepared, destination (the commit point) decides and commits, then the
        source commits: the rows are visible on the destination before the source lets
        its waiters go."""
        global_id = new_global_id(dst, coordinator=self.coordinator)
        gid = participant_gid(global_id, src)
        try:
            s.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        except psycopg.Error as err:  # nothing decided: the next attempt fences and settles
            conns.rollback(src, dst)
            if isinstance(err, psycopg.OperationalError):
                raise _Retry() from err
            raise RebalanceError(
                f"PREPARE TRANSACTION on shard {src!r} failed: {_describe(err)}; nothing moved",
                self.report,
            ) from err
        try:
            d.execute(DECISION_SQL, (global_id, [src]))
            d.execute("COMMIT")
            outcome: str | None = "commit"
        except psycopg.Error as err:
            failure: BaseException | None = err
            if d.closed or d.broken:  # the COMMIT's outcome is unknown: read or fence it
                conns.rollback(dst)
                try:
                    outcome = settle_decision(
                        self.all[dst], global_id, presume_abort=True, dry_run=False
                    )
                except psycopg.Error:
                    outcome = None
            else:
                conns.rollback(dst)
                outcome = "abort"
        else:
            failure = None
        verb = "COMMIT PREPARED {}" if outcome == "commit" else "ROLLBACK PREPARED {}"
        if outcome is not None:
            try:
                conns[src].execute(sql.SQL(verb).format(sql.Literal(gid)))
            except psycopg.Error:
                conns.rollback(src)  # settled by the next settle_in_doubt / recovery
        if outcome == "abort":
            raise _Retry() from failure
        if outcome is None:
            raise RebalanceError(
                f"batch {gid} from {src!r} to {dst!r} is in doubt: its decision on {dst!r} "
                "could not be read; run rebalance again (it settles it first) or "
                "`shardsession recover`",
                self.report,
            ) from failure

    def _record(
        self,
        table: Table,
        src: str,
        dst: str,
        rows: dict[Table, dict[tuple[Any, ...], tuple[Any, ...]]],
    ) -> None:
        moved = sum(len(r) for r in rows.values())
        if not moved:
            return
        for t, r in rows.items():
            if r:
                pairs = self.report.moved.setdefault(t.fullname, {})
                pairs[src, dst] = pairs.get((src, dst), 0) + len(r)
        self.report.batches += 1
        if self.progress is not None and self.seen is None:
            self.progress(
                RebalanceProgress(
                    self.report.rows,
                    self.total,
                    self.report.batches,
                    table.fullname,
                    src,
                    dst,
                    moved,
                )
            )

    # -- passes --------------------------------------------------------------------------

    def one_pass(self, conns: _Connections, *, dry: bool, skip_locked: bool) -> tuple[int, int]:
        """Every moved table, parents first, every shard: find what is misplaced and move
        it.  Returns the rows found misplaced and the rows moved."""
        found = moved = 0
        for table in self.plan.tables:
            for src in self.all:
                if table in self.plan.keys:
                    groups = self._scan_keyed(conns[src], table, src)
                else:
                    groups = self._scan_strays(conns, table, src)
                for dst, pks in sorted(groups.items()):
                    if self.seen is not None:
                        pks = [pk for pk in pks if (table, pk) not in self.seen]
                    found += len(pks)
                    for chunk in _chunks(pks, self.batch_size):
                        moved += self.move(
                            conns, table, src, dst, chunk, dry=dry, skip_locked=skip_locked
                        )
        return found, moved


def rebalance(
    shards: Any,
    models: Any,
    *,
    retiring: Any = None,
    batch_size: int = 500,
    dry_run: bool = False,
    progress: Callable[[RebalanceProgress], object] | None = None,
    lock_timeout: float = 5.0,
    attempts: int = 10,
) -> RebalanceReport:
    """Move every row whose shard changed to its shard under ``shards``' names.

    :param shards: the new list of shards: a :class:`~shardsession.ShardSet`, or shard
        name -> DSN (or Engine).  Their names are what rows are hashed over.
    :param models: the declarative base (or its ``registry``, or a list of mapped
        classes).  Tables of models with a column ``__shard_key__`` move, with the
        tables of models without one that follow them; other tables stay.
    :param retiring: shards leaving the list (name -> DSN or Engine): everything
        moved on them goes to the shards of ``shards``.
    :param batch_size: rows of a table per batch (their children come along).
    :param dry_run: count what would move, per table and per shard pair; change nothing.
    :param progress: called with a :class:`RebalanceProgress` after each batch; when
        given, a dry pass sizes the run first (``RebalanceProgress.total``).
    :param lock_timeout: seconds a batch waits for a row another transaction holds
        before it is rolled back and tried again (up to ``attempts`` times).
    :returns: the :class:`RebalanceReport`; its ``verification`` is ok.
    :raises RebalanceError: rows that cannot be moved safely (the message says why and
        what to do), or a final verification that fails.
    :raises ConfigurationError: a table missing on a shard, or shards whose schemas differ.
    """
    new = _dsns_of(shards, "shards")
    old = _dsns_of(retiring, "retiring") if retiring else {}
    plan = _Plan(models)
    mover = _Mover(
        plan,
        new,
        old,
        batch_size=batch_size,
        lock_timeout=lock_timeout,
        attempts=attempts,
        progress=progress,
    )
    report = mover.report
    report.dry_run = dry_run
    check_shard_dsns(mover.all)
    conns = _Connections(mover.all, exclusive=True)
    try:
        checked = _run(mover, conns, dry_run=dry_run)
    except psycopg.Error as err:  # a shard lost outside a batch (batches retry their own)
        raise RebalanceError(
            f"{_describe(err)}; the batches committed so far stay moved: run "
            "rebalance again to continue",
            report,
        ) from err
    finally:
        conns.close()
    if checked is not None and not checked.ok:
        raise RebalanceError(f"rebalance finished, but {checked.summary()}: see its "
                             "report; run it again, or fix what it names", report)  # fmt: skip
    return report


def _run(mover: _Mover, conns: _Connections, *, dry_run: bool) -> VerifyReport | None:
    report, progress = mover.report, mover.progress
    mover.check_schema(conns)
    copies = _copy_reference_tables(mover.plan, mover.names, conns, dry=dry_run)
    for name, pairs in copies.items():
        report.moved.setdefault(name, {}).update(pairs)
    if not dry_run:
        for shard in mover.all:
            conns[shard].execute(COMMIT_LOG_DDL)
        mover.settle_in_doubt(conns)
    if dry_run or progress is not None:
        mover.seen = set()
        mover.one_pass(conns, dry=True, skip_locked=False)
        if not dry_run:  # what was copied counts as planned too
            for name, pairs in copies.items():
                report.moved.setdefault(name, {}).update(pairs)
        report.planned, mover.seen = report.moved, None
        mover.total = report.rows
        if dry_run:
            return None
        report.moved, report.batches = {n: dict(p) for n, p in copies.items()}, 0
    if progress is not None:
        progress(RebalanceProgress(0, mover.total, 0, "", "", "", 0))
    started = time.monotonic()
    skip_locked = True  # rows busy now are taken by a later pass
    for _ in range(_MAX_PASSES):
        report.passes += 1
        found, moved = mover.one_pass(conns, dry=False, skip_locked=skip_locked)
        if not found:
            break
        skip_locked = skip_locked and moved > 0  # no progress: wait for the locks next time
    else:
        raise RebalanceError(
            f"rows were still misplaced after {_MAX_PASSES} passes; run rebalance again", report
        )
    report.seconds = time.monotonic() - started
    mover.settle_in_doubt(conns)  # a batch whose source was lost after its decision
    report.verification = _verify(mover.plan, mover.names, mover.retiring, conns)
    return report.verification


# -- reference tables -----------------------------------------------------------------------


def _reference_tables(plan: _Plan) -> list[Table]:
    return sorted((t for t in plan.models if reference.is_reference_table(t)),
                  key=lambda t: t.fullname)  # fmt: skip


def _reference_counts(table: Table, names: Sequence[str], conns: _Connections
                      ) -> dict[str, int]:  # fmt: skip
    query = sql.SQL("SELECT count(*) FROM {}").format(_ident(table))
    return {shard: _one(conns[shard], query) for shard in names}


def _copy_reference_tables(
    plan: _Plan, names: Sequence[str], conns: _Connections, *, dry: bool
) -> dict[str, dict[tuple[str, str], int]]:
    """Fill the reference tables of shards that have none of their rows (a shard
    just added) from a shard that has them: table -> (from, to) -> rows.

    :raises RebalanceError: the copies on the other shards differ (which copy is
        right cannot be told here).
    """
    copied: dict[str, dict[tuple[str, str], int]] = {}
    for table in _reference_tables(plan):
        counts = _reference_counts(table, names, conns)
        full = {n for n in counts.values() if n}
        if not full:
            continue
        if len(full) > 1:
            raise RebalanceError(
                f"reference table {table.fullname} has different rows on the shards "
                f"({counts}); make the copies equal (write the rows through a Session) "
                "and run rebalance again"
            )
        source = next(s for s in names if counts[s])
        for shard in (s for s in names if not counts[s]):
            copied.setdefault(table.fullname, {})[(source, shard)] = counts[source]
            if dry:
                continue
            ident = _ident(table)
            out, into = conns[source], conns[shard]
            with into.transaction():
                into.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(ident))
                if _one(into, sql.SQL("SELECT count(*) FROM {}").format(ident)):
                    continue  # written meanwhile: verification compares the copies
                with (
                    out.cursor().copy(sql.SQL("COPY {} TO STDOUT").format(ident)) as read,
                    into.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(ident)) as write,
                ):
                    for data in read:
                        write.write(data)
    return copied


# -- verifying ---------------------------------------------------------------------------


def verify(shards: Any, models: Any, *, retiring: Any = None) -> VerifyReport:
    """Prove where the rows are: none misplaced, none on two shards.

    Takes the arguments of :func:`rebalance`.  Reads only; safe while applications run
    (a row moving at that instant may be counted on both shards or neither).

    :raises RebalanceError: a shard cannot be read (unreachable, a table missing).
    """
    new = _dsns_of(shards, "shards")
    old = _dsns_of(retiring, "retiring") if retiring else {}
    plan = _Plan(models)
    conns = _Connections({**new, **old}, exclusive=False)
    try:
        return _verify(plan, tuple(new), set(old), conns)
    except psycopg.Error as err:
        raise RebalanceError(f"cannot verify: {_describe(err)}") from err
    finally:
        conns.close()


def _verify(
    plan: _Plan, names: tuple[str, ...], retiring: set[str], conns: _Connections
) -> VerifyReport:
    report = VerifyReport()
    shards = [*names, *sorted(retiring)]
    for table in plan.tables:
        name, misplaced, unkeyed = table.fullname, 0, 0
        for shard in shards:
            conn = conns[shard]
            if shard in retiring:
                misplaced += _one(conn, sql.SQL("SELECT count(*) FROM {}").format(_ident(table)))
            elif table in plan.keys:
                key = sql.Identifier(plan.keys[table].column.name)
                query = sql.SQL("SELECT {}, count(*) FROM {} GROUP BY 1").format(key, _ident(table))
                for raw, n in conn.execute(query):
                    if raw is None:
                        unkeyed += n
                        continue
                    home = routing.shard_for_key(names, plan.key_value(table, raw))
                    if home != shard:
                        misplaced += n
                        if len(report.examples) < 5:
                            report.examples.append(f"{name} key {raw!r} on {shard!r}, not {home!r}")
            else:
                misplaced += _one(conn, _stray_sql(plan.placing[table], sql.SQL("count(*)")))
        report.misplaced[name], report.unkeyed[name] = misplaced, unkeyed
        report.duplicated[name] = _duplicates(conns, shards, table, plan.pk[table], report)
    for table in _reference_tables(plan):
        counts = _reference_counts(table, names, conns)
        if len(set(counts.values())) > 1:
            report.reference_counts[table.fullname] = counts
    for table in sorted(plan.models - plan.moved, key=lambda t: t.fullname):
        for shard in sorted(retiring):
            conn = conns[shard]
            if _one(conn, "SELECT to_regclass(%s)", (_ident(table).as_string(conn),)):
                n = _one(conn, sql.SQL("SELECT count(*) FROM {}").format(_ident(table)))
                left = report.left_on_retiring
                left[table.fullname] = left.get(table.fullname, 0) + n
    return report


def _tagged(rows: Any, shard: str) -> Iterator[tuple[Any, str]]:
    for row in rows:
        yield row[0], shard


def _duplicates(
    conns: _Connections,
    shards: Sequence[str],
    table: Table,
    pk: Sequence[str],
    report: VerifyReport,
) -> int:
    """Primary keys on several shards: a merge of every shard's keys, sorted the same way
    in PostgreSQL (``COLLATE "C"``) and in Python (code points)."""
    text = (
        sql.SQL("{}::text").format(sql.Identifier(pk[0]))
        if len(pk) == 1
        else sql.SQL("ROW({})::text").format(_cols(pk))
    )
    query = sql.SQL('SELECT {0} FROM {1} ORDER BY {0} COLLATE "C"').format(text, _ident(table))
    with contextlib.ExitStack() as stack:
        streams = []
        for shard in shards:
            conn = conns[shard]
            stack.enter_context(conn.transaction())
            cur = stack.enter_context(conn.cursor(name="shardsession_rebalance_keys"))
            cur.itersize = 10_000
            cur.execute(query)
            streams.append(_tagged(cur, shard))
        count = 0
        for value, group in itertools.groupby(heapq.merge(*streams), key=lambda x: x[0]):
            where = sorted({shard for _, shard in group})
            if len(where) > 1:
                count += 1
                if len(report.examples) < 5:
                    report.examples.append(f"{table.fullname} {value} on {where}")
        return count


# -- sessions during a rebalance ---------------------------------------------------------------


def follow_rebalance(session: Any, previous: Mapping[str, Any] | Sequence[str]) -> None:
    """Make ``session`` find rows a running rebalance has not moved yet.

    Called by :class:`~shardsession.Session` for ``previous_shards``.  New rows go
    where the new shard names place them; a statement pinned to shard keys (a
    ``get()``, ``where(key == v)``, an UPDATE or DELETE of a key) runs on the key's
    shard under both lists, and for a key whose shard changed it first locks the
    row where it was (``FOR KEY SHARE``, until the transaction ends).  Then no batch
    can move it meanwhile, and a batch already moving it finishes first (its
    destination commits before its source), so the row is seen exactly once.  Other
    statements run on every shard, the retiring ones included.

    :param previous: the shard names before the change, or a mapping of name ->
        Engine (e.g. the old :class:`~shardsession.ShardSet`), which must hold the
        engines of the shards that are leaving.
    """
    names = tuple(previous)
    if not names:
        raise ArgumentError("previous_shards is empty: give the shard names before the change")
    defaults = (session._default_execute_chooser, session._default_identity_chooser)
    if (
        session._custom_shard_chooser
        or (session.execute_chooser, session.identity_chooser) != defaults
    ):
        raise ArgumentError(
            "previous_shards works with the default choosers (routing by "
            "__shard_key__); with choosers of your own, route to both lists "
            "in them"
        )
    engines = previous if isinstance(previous, Mapping) else {}
    leaving = [name for name in names if name not in session._shards]
    missing = [name for name in leaving if not isinstance(engines.get(name), Engine)]
    if missing:
        raise ArgumentError(
            f"shards {missing} are in previous_shards but not in shards: pass previous_shards "
            "as a mapping of name -> Engine (e.g. the old ShardSet) so that rows not moved "
            "yet can be read there"
        )
    if leaving:
        known = getattr(previous, "dsns", None) or ShardSet({n: engines[n] for n in leaving}).dsns
        session._dsns = {**session._dsns, **{n: known[n] for n in leaving}}
        session._shards.update({n: engines[n] for n in leaving})
    session._previous_shards = names
    identity, execute = session.identity_chooser, session.execute_chooser

    def identity_chooser(mapper: Any, primary_key: Any, **kw: Any) -> list[Any]:
        found = list(identity(mapper, primary_key, **kw))
        if kw.get("lazy_loaded_from") is not None:
            return found
        return found + [s for s in session._shards if s not in found]

    def execute_chooser(orm_context: Any) -> list[Any]:
        statement, params = orm_context.statement, orm_context.parameters
        if routing.statement_shards(statement, params, session._shard_names) is None:
            found = list(execute(orm_context))
            if len(found) == 1 and found != list(session._shard_names):
                return found  # one shard chosen on purpose (e.g. a reference table)
            return found + [s for s in session._shards if s not in session._shard_names]
        before = routing.statement_shards(statement, params, names) or []
        chosen = list(dict.fromkeys([*execute(orm_context), *before]))
        _hold_unmoved(session, orm_context, names)
        return chosen

    session.identity_chooser = identity_chooser
    session.execute_chooser = execute_chooser


def _hold_unmoved(session: Any, orm_context: Any, previous: tuple[str, ...]) -> None:
    """Lock the pinned rows that may still be on their old shard, as strongly as the
    statement will (a weaker lock, upgraded later by two transactions at once, would
    deadlock them): ``FOR KEY SHARE`` for reads and UPDATEs, the statement's own
    ``FOR ...`` for a locking SELECT, ``FOR UPDATE`` for a DELETE."""
    statement = orm_context.statement
    mode = selectparts.for_update(statement) or {
        "read": not orm_context.is_delete,
        "key_share": not orm_context.is_delete,
    }
    for key, values in routing.pinned_keys(statement, orm_context.parameters):
        wait: dict[str, list[Any]] = {}
        for value in values:
            was = routing.shard_for_key(previous, value)
            if was != routing.shard_for_key(session._shard_names, value):
                wait.setdefault(was, []).append(value)
        for shard, found in wait.items():
            lock = select(key.column).where(key.column.in_(found)).with_for_update(**mode)
            session.connection(bind_arguments={"shard_id": shard}).execute(lock).all()


# -- the command line ---------------------------------------------------------------------


def load_models(spec: str) -> Any:
    """Import ``package.module:Base`` (the current folder is importable, as with
    ``python -m``) and return ``Base``.

    :raises ConfigurationError: the module does not import or has no such name.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(
            f"--models {spec!r}: give package.module:Base, the module "
            "and the declarative base of your models"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as err:
        raise ConfigurationError(
            f"--models {spec!r}: cannot import {module_name!r} ({type(err).__name__}: {err})"
        ) from err
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigurationError(f"--models {spec!r}: {module_name} has no {attr!r}")
        found = getattr(found, part)
    try:
        _mappers(found)
    except ArgumentError as err:
        raise ConfigurationError(f"--models {spec!r}: {err}") from err
    return found


class _Console:
    """Progress for people: a rich bar on a terminal, one line per batch otherwise."""

    def __init__(self) -> None:
        from shardsession.demo.report import use_rich

        self.bar: Any = None
        if use_rich():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[last]}"),
            )
            self.task = self.bar.add_task("moving rows", total=None, last="")

    def __call__(self, event: RebalanceProgress) -> None:
        if self.bar is not None:
            self.bar.start()
            last = f"{event.table} {event.source} -> {event.target}" if event.table else ""
            self.bar.update(self.task, completed=event.done, total=event.total or None, last=last)
        elif event.batches == 0:
            print(f"{event.total} row(s) to move", flush=True)
        else:
            print(
                f"batch {event.batches}: {event.rows} row(s) of {event.table} {event.source} -> "
                f"{event.target}; {event.done}/{event.total} moved",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def command(
    dsns: Mapping[str, str],
    retiring: Mapping[str, str],
    models: str,
    *,
    batch_size: int,
    dry_run: bool,
    verify_only: bool,
    json_output: bool,
    lock_timeout: float,
) -> int:
    """``shardsession rebalance``: prints the report; the exit status is 0 when every row
    is where it belongs, 1 when ``--verify`` finds rows that are not."""
    import json

    base = load_models(models)
    if verify_only:
        checked = verify(dsns, base, retiring=retiring or None)
        print(json.dumps(checked.as_dict(), indent=2) if json_output else checked.as_text())
        return 0 if checked.ok else 1
    console = None if json_output or dry_run else _Console()
    try:
        report = rebalance(
            dsns, base, retiring=retiring or None, batch_size=batch_size, dry_run=dry_run,
            progress=console, lock_timeout=lock_timeout,
        )  # fmt: skip
    except RebalanceError as err:
        if err.report is None or err.report.verification is None:
            raise
        report, failed = err.report, str(err)
    else:
        failed = ""
    finally:
        if console is not None:
            console.close()
    print(json.dumps(report.as_dict(), indent=2) if json_output else report.as_text())
    if failed:
        print(f"error: {failed}", file=sys.stderr)
    return 1 if failed else 0
