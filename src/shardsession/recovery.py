"""Recovery of in-doubt two-phase commits: what a crash leaves prepared.

For every shard database, the prepared transactions named by shardsession
(``ss_<global id>_<shard>``) are listed.  Each is settled by its decision on
its commit-point shard (see :mod:`shardsession.twophase`): a ``commit`` record
means COMMIT PREPARED.  With no record, and once the transaction is older than a
grace period, recovery records ``abort`` there first (presumed abort) -- which
blocks behind, and then loses to, a coordinator still writing its commit
record -- and then runs ROLLBACK PREPARED.  COMMIT/ROLLBACK PREPARED run from a
connection to the database that holds the transaction.  Several recoverers
(processes or machines) may run at once: each shard is handled under an
advisory lock, and a shard whose lock is held is skipped this round.

A ``commit`` record is pruned only when it is safe to forget, all of:

* it is stamped before its shard's cutoff, a ``clock_timestamp()`` read on the
  commit point before *any* shard is listed.  Its participants were prepared
  before the stamp (:data:`~shardsession.twophase.DECISION_SQL`), hence before
  every listing: a participant still prepared cannot have been missed;
* it lists its participant shards, and every one of them was listed in this run
  (a run over some of the shards cannot see the others' prepared transactions);
* no participant of its transaction is still prepared on those shards.

Records with no participants (written before the column was filled) are kept:
nothing shows where their transaction may still be prepared.  ``abort`` records
are never pruned: each is the fence that makes a stalled coordinator's late
``commit`` record fail on the primary key, after recovery rolled its participants back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from shardsession.preflight import check_shard_name, shard_conninfo
from shardsession.twophase import COMMIT_LOG, COMMIT_LOG_DDL, parse_gid

__all__ = ["RecoveryReport", "recover", "settle_decision"]

_LOCK_KEY = 0x5348_5244  # "SHRD": the recovery advisory lock, per shard database


@dataclass
class RecoveryReport:
    """What one recovery run did.

    :ivar committed: gids committed (their decision was ``commit``).
    :ivar rolled_back: gids rolled back (no decision: presumed abort).
    :ivar waiting: gids left alone: younger than the grace period, or undecidable now
        (commit point unreachable).
    :ivar pruned: ``commit`` records deleted: every participant shard was listed in this
        run and none of them still holds the transaction prepared.
    :ivar skipped_shards: shards another recoverer was working on.
    :ivar errors: shard -> message, for shards that could not be reached.
    :ivar dry_run: whether this was a dry run (nothing was changed).
    """

    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    pruned: int = 0
    skipped_shards: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        return {
            "committed": self.committed,
            "rolled_back": self.rolled_back,
            "waiting": self.waiting,
            "pruned": self.pruned,
            "skipped_shards": self.skipped_shards,
            "errors": self.errors,
            "dry_run": self.dry_run,
        }


@contextlib.contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        yield conn


def settle_decision(dsn: str, global_id: str, *, presume_abort: bool, dry_run: bool) -> str | None:
    """The decision of ``global_id`` on its commit point (``dsn``).

    With ``presume_abort``, records ``abort`` when there is no decision yet --
    waiting behind a commit record still being written -- and returns what won.
    None when it cannot be known now (lock wait timed out).
    """
    with _connect(dsn) as conn:
        conn.execute(COMMIT_LOG_DDL)
        row = conn.execute(
            f"SELECT outcome FROM {COMMIT_LOG} WHERE gid = %s", (global_id,)
        ).fetchone()
        if row is not None or not presume_abort:
            return row[0] if row else None
        if dry_run:
            return "abort"
        # Blocks while a coordinator's transaction holding the same key is open;
        # whichever commits first decides, and the other fails on the key.
        conn.execute("SET lock_timeout = '10s'")
        try:
            conn.execute(
                f"INSERT INTO {COMMIT_LOG} (gid, outcome, decided_at) "
                "VALUES (%s, 'abort', clock_timestamp()) ON CONFLICT (gid) DO NOTHING",
                (global_id,),
            )
        except psycopg.errors.LockNotAvailable:
            return None
        row = conn.execute(
            f"SELECT outcome FROM {COMMIT_LOG} WHERE gid = %s", (global_id,)
        ).fetchone()
        return row[0] if row else None


def recover(
    dsns: Mapping[str, str],
    *,
    older_than: float = 10.0,
    dry_run: bool = False,
    after_listing: Callable[[], object] | None = None,
) -> RecoveryReport:
    """Settle every in-doubt shardsession transaction on ``dsns`` (shard -> DSN).

    :param dsns: the shards to examine, by the name the pool gives them: a
        transaction's commit point is found by its shard name.  A run over only
        some of the shards settles what it finds there but prunes no decision
        naming a shard it did not list.
    :param older_than: seconds a prepared transaction without a decision must have
        existed before it is presumed aborted.
    :param dry_run: report what would be done, change nothing.
    :param after_listing: testing hook, not for applications: called once every
        shard has been listed and before anything is settled or pruned, so a test
        can commit a transaction that races this run.
    :returns: a :class:`RecoveryReport` of what was done (or would be).
    :raises ConfigurationError: a shard's name or DSN is malformed (nothing is done).
    """
    dsns = {shard: shard_conninfo(check_shard_name(shard), dsn) for shard, dsn in dsns.items()}
    report = RecoveryReport(dry_run=dry_run)
    # Every cutoff is read before the first listing: a commit record stamped before
    # its shard's cutoff had all its participants prepared before any listing.
    cutoff: dict[str, Any] = {}
    for shard, dsn in dsns.items():
        with contextlib.suppress(psycopg.OperationalError), _connect(dsn) as conn:
            cutoff[shard] = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    prepared: dict[str, list[tuple[str, float]]] = {}  # only the shards listed
    for shard, dsn in dsns.items():
        try:
            with _connect(dsn) as conn:
                prepared[shard] = [
                    (gid, float(age))
                    for gid, age in conn.execute(
                        "SELECT gid, extract(epoch FROM now() - prepared) FROM pg_prepared_xacts "
                        "WHERE database = current_database() AND gid LIKE 'ss\\_%%'"
                    )
                ]
        except psycopg.OperationalError as err:
            report.errors[shard] = str(err).strip()
    if after_listing is not None:
        after_listing()
    still_prepared: set[str] = set()
    for shard, items in prepared.items():
        try:
            with _connect(dsns[shard]) as conn:
                if not conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()[0]:
                    report.skipped_shards.append(shard)
                    still_prepared.update(g for g, _ in items)
                    continue
                for gid, age in items:
                    if not _settle(conn, dsns, gid, age, older_than, dry_run, report):
                        still_prepared.add(gid)
        except psycopg.OperationalError as err:
            report.errors[shard] = str(err).strip()
            still_prepared.update(g for g, _ in items)
    if not dry_run:
        report.pruned = _prune(dsns, cutoff, set(prepared), still_prepared)
    return report


def _settle(
    conn: psycopg.Connection[Any],
    dsns: Mapping[str, str],
    gid: str,
    age: float,
    older_than: float,
    dry_run: bool,
    report: RecoveryReport,
) -> bool:
    """Settle one prepared transaction; False when it stays prepared."""
    parsed = parse_gid(gid)
    if parsed is None or parsed.commit_point not in dsns:
        report.waiting.append(gid)
        return False
    try:
        outcome = settle_decision(
            dsns[parsed.commit_point],
            parsed.global_id,
            presume_abort=age >= older_than,
            dry_run=dry_run,
        )
    except psycopg.OperationalError:
        outcome = None
    if outcome is None:
        report.waiting.append(gid)
        return False
    command = "COMMIT PREPARED" if outcome == "commit" else "ROLLBACK PREPARED"
    if not dry_run:
        with contextlib.suppress(psycopg.errors.UndefinedObject):  # settled meanwhile
            conn.execute(sql.SQL(command + " {}").format(sql.Literal(gid)))
    (report.committed if outcome == "commit" else report.rolled_back).append(gid)
    return True


def _prune(
    dsns: Mapping[str, str],
    cutoff: Mapping[str, Any],
    listed: set[str],
    still_prepared: set[str],
) -> int:
    """Delete the ``commit`` records that are safe to forget (see the module docstring).

    :param cutoff: shard -> its clock before any shard was listed (shards without
        one are not pruned).
    :param listed: the shards whose prepared transactions were listed in this run.
    :param still_prepared: participant gids left prepared on those shards.
    """
    live = sorted({p.global_id for g in still_prepared if (p := parse_gid(g)) is not None})
    pruned = 0
    for shard, dsn in dsns.items():
        if shard not in cutoff:
            continue
        with contextlib.suppress(psycopg.OperationalError), _connect(dsn) as conn:
            conn.execute(COMMIT_LOG_DDL)
            rows = conn.execute(
                f"DELETE FROM {COMMIT_LOG} WHERE outcome = 'commit' AND decided_at < %s "
                "AND cardinality(participants) > 0 AND participants <@ %s::text[] "
                "AND NOT (gid = ANY(%s::text[])) RETURNING gid",
                (cutoff[shard], sorted(listed), live),
            ).fetchall()
            pruned += len(rows)
    return pruned
