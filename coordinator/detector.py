"""The distributed deadlock detector.

Each PostgreSQL server breaks the lock cycles it can see.  A cycle whose waits
lie on several shards -- transaction A waits for B on shard s0 while B waits for
A on s1 -- it cannot see: each server has one lock wait and nothing to break.
This module finds such cycles and breaks them:

1. every shard is asked who waits for whom (``pg_stat_activity`` and
   ``pg_blocking_pids()``, and ``pg_locks`` with ``pg_prepared_xacts`` for waits
   on prepared transactions);
2. backends are joined into global transactions by their tag, the session
   transaction's id each worker sets as ``application_name``
   (:mod:`shardsession.deadlock`); an untagged backend is a transaction of its own;
3. in the wait-for graph, every strongly connected component holds a deadlock:
   its youngest *tagged* transaction is the victim.  A deadlock must be seen in
   two consecutive looks (shards are read one after another, so one look may
   join waits that never coexisted); then a note is left for the victim on the
   shard, and its waiting statement is cancelled if it still waits for the same
   holder.  Its worker reads the note and reports ``DeadlockDetected`` naming the
   shards, which SQLAlchemy raises as :class:`~sqlalchemy.exc.OperationalError`.
   A cycle within one shard is PostgreSQL's to break too, after its
   ``deadlock_timeout`` (1 s by default; only a superuser may lower it): whichever
   comes first breaks it.  Backends that are not shardsession's (no tag) are
   never cancelled: a cycle among them alone is left to PostgreSQL.

A wait on a prepared transaction is not part of any cycle (a prepared
transaction waits for nothing), but it may be the leftover of an application
that crashed in the middle of a two-phase commit, or of a worker lost between
the decision and ``COMMIT PREPARED``: when such a prepared transaction is a few
seconds old, recovery runs at once instead of leaving the waiter stuck until the
next background recovery.  Recovery commits it if its decision is recorded, and
presumes it aborted only once it is older than the grace period.

:class:`DeadlockDetector` runs this every ``deadlock_interval`` seconds in a
background thread of every :class:`~shardsession.ShardSet`;
:func:`detect_deadlocks` is one round, for ``shardsession deadlocks``.  Every
detector picks the same victim, so several application processes, each with its
detector, agree.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from shardsession.deadlock import VICTIMS, VICTIMS_DDL, tag_start

__all__ = ["DeadlockDetector", "DeadlockReport", "Wait", "detect_deadlocks", "find_cycles"]

# Who waits for whom on this shard's database; a holder pid of 0 is a prepared
# transaction (pg_blocking_pids() reports them so).
_WAITS_SQL = """
SELECT w.pid, w.application_name, extract(epoch FROM w.xact_start)::float8,
       blocker.pid, b.application_name, extract(epoch FROM b.xact_start)::float8,
       CASE WHEN b.state = 'idle in transaction'
            THEN extract(epoch FROM clock_timestamp() - b.state_change)::float8 END
FROM pg_stat_activity w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
LEFT JOIN pg_stat_activity b ON b.pid = blocker.pid
WHERE w.datname = current_database() AND w.wait_event_type = 'Lock'
  AND w.pid <> pg_backend_pid()
"""
# Which prepared transactions hold the locks that these backends wait for: a lock
# with no backend is a prepared transaction's, and its own transaction-id lock
# (same virtual transaction) names it in pg_prepared_xacts.
_PREPARED_HOLDERS_SQL = """
SELECT DISTINCT w.pid, x.gid, extract(epoch FROM clock_timestamp() - x.prepared)::float8
FROM pg_locks w
JOIN pg_locks h ON h.granted AND h.pid IS NULL AND h.locktype = w.locktype
  AND h.database IS NOT DISTINCT FROM w.database
  AND h.relation IS NOT DISTINCT FROM w.relation
  AND h.page IS NOT DISTINCT FROM w.page
  AND h.tuple IS NOT DISTINCT FROM w.tuple
  AND h.transactionid IS NOT DISTINCT FROM w.transactionid
  AND h.virtualxid IS NOT DISTINCT FROM w.virtualxid
  AND h.classid IS NOT DISTINCT FROM w.classid
  AND h.objid IS NOT DISTINCT FROM w.objid
  AND h.objsubid IS NOT DISTINCT FROM w.objsubid
JOIN pg_locks own ON own.virtualtransaction = h.virtualtransaction AND own.pid IS NULL
  AND own.locktype = 'transactionid' AND own.mode = 'ExclusiveLock'
JOIN pg_prepared_xacts x ON x.transaction = own.transactionid
WHERE NOT w.granted AND w.pid = ANY(%s)
"""
# The victim's backend, if it still runs the same transaction and still waits for
# the same holder (a prepared one: 0).
_STILL_WAITING = (
    "pid = %(pid)s AND application_name = %(tag)s AND wait_event_type = 'Lock' "
    "AND (%(holder)s = 0 OR %(holder)s = ANY(pg_blocking_pids(pid)))"
)
# A note about the waiting statement (its query_start); detectors noting the same
# victim write the same row, and no detector ever deletes one (a late delete could
# take the note from a victim another detector just cancelled): old ones are pruned.
_NOTE_SQL = (
    f"INSERT INTO {VICTIMS} (backend_pid, tag, query_start, shards) "
    f"SELECT pid, application_name, query_start, %(shards)s FROM pg_stat_activity "
    f"WHERE {_STILL_WAITING} ON CONFLICT DO NOTHING"
)
_CANCEL_SQL = f"SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE {_STILL_WAITING}"
_PRUNE_NOTES_SQL = f"DELETE FROM {VICTIMS} WHERE noted_at < clock_timestamp() - interval '1 hour'"


@dataclass(frozen=True)
class Wait:
    """One lock wait: on ``shard``, backend ``pid`` of ``waiter`` waits for ``holder``.

    Transactions are named by their tag, ``<shard>/<pid>`` for an untagged
    backend, or ``<shard>/prepared/<gid>`` for a prepared transaction.
    """

    shard: str
    waiter: str
    pid: int
    holder: str
    #: the holder's backend pid (0 for a prepared transaction)
    holder_pid: int = 0


@dataclass(frozen=True)
class Cycle:
    """A deadlock and the transaction chosen to break it."""

    members: tuple[str, ...]
    shards: tuple[str, ...]
    victim: str
    #: (shard, backend pid, holder's backend pid) of the victim's waits in the cycle
    backends: tuple[tuple[str, int, int], ...]

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """What identifies this deadlock from one look to the next."""
        return self.victim, self.members


@dataclass
class DeadlockReport:
    """One detection round.

    :ivar waits: every lock wait seen, on every shard reached.
    :ivar cycles: the deadlocks found.
    :ivar cancelled: victims whose waiting statement was cancelled (only deadlocks
        also seen in the previous look are acted on).
    :ivar prepared_waits: ``(shard, gid, age in seconds)`` of prepared
        transactions that others wait for.
    :ivar unreachable: shard -> error, for shards that could not be asked.
    :ivar recovered: whether the round ran recovery for old prepared transactions.
    :ivar idle_holders: ``(shard, backend pid, seconds)`` of lock holders that are
        idle in their transaction: a client that holds locks and does nothing.
    """

    waits: list[Wait] = field(default_factory=list)
    cycles: list[Cycle] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    prepared_waits: list[tuple[str, str, float]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    recovered: bool = False
    idle_holders: list[tuple[str, int, float]] = field(default_factory=list)

    def as_text(self) -> str:
        """The report as lines for people (what ``shardsession deadlocks`` prints)."""
        lines = [f"{len(self.waits)} lock wait(s), {len(self.cycles)} deadlock(s)"]
        for w in self.waits:
            lines.append(f"  {w.shard}: {w.waiter} (backend {w.pid}) waits for {w.holder}")
        for cycle in self.cycles:
            state = "cancelled" if cycle.victim in self.cancelled else "not cancelled"
            lines.append(
                f"  deadlock over shards {', '.join(cycle.shards)} between "
                f"{', '.join(cycle.members)}: victim {cycle.victim} ({state})"
            )
        for shard, gid, age in self.prepared_waits:
            lines.append(f"  {shard}: prepared transaction {gid} ({age:.1f}s old) is waited for")
        if self.recovered:
            lines.append("  recovery ran for the prepared transactions waited for")
        for shard, error in self.unreachable.items():
            lines.append(f"  {shard}: not reached: {error}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "waits": [vars(w) for w in self.waits],
            "cycles": [
                {"members": list(c.members), "shards": list(c.shards), "victim": c.victim,
                 "cancelled": c.victim in self.cancelled}
                for c in self.cycles
            ],
            "prepared_waits": [{"shard": s, "gid": g, "age": a}
                               for s, g, a in self.prepared_waits],
            "recovered": self.recovered,
            "unreachable": dict(self.unreachable),
        }  # fmt: skip


def find_cycles(waits: Iterable[Wait], starts: Mapping[str, float]) -> list[Cycle]:
    """The distributed deadlocks among ``waits`` and the victim of each.

    ``starts`` gives each transaction's start time; the youngest tagged member
    of a cycle is its victim (ties: the greatest name, so every detector agrees).
    After a victim is chosen it is taken out of the graph and the rest is
    searched again.  A cycle with no tagged member is left to PostgreSQL.
    """
    waits = list(waits)
    removed: set[str] = set()
    cycles: list[Cycle] = []
    while True:
        graph: dict[str, set[str]] = defaultdict(set)
        for w in waits:
            if w.waiter not in removed and w.holder not in removed:
                graph[w.waiter].add(w.holder)
        found = None
        for component in _strongly_connected(graph):
            members = set(component)
            inside = [w for w in waits if w.waiter in members and w.holder in members]
            found = members, inside, sorted({w.shard for w in inside})
            break
        if found is None:
            return cycles
        members, inside, shards = found
        tagged = [n for n in members if tag_start(n) is not None]
        if not tagged:  # not shardsession's transactions: PostgreSQL breaks it
            removed |= members
            continue
        victim = max(tagged, key=lambda n: (starts.get(n, 0.0), n))
        backends = tuple(sorted({(w.shard, w.pid, w.holder_pid)
                                 for w in inside if w.waiter == victim}))  # fmt: skip
        cycles.append(Cycle(tuple(sorted(members)), tuple(shards), victim, backends))
        removed.add(victim)


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


class _Probe:
    """The detector's own autocommit connections, one per shard, opened on demand."""

    def __init__(self, dsns: Mapping[str, str]) -> None:
        self.dsns = dict(dsns)
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    def connection(self, shard: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(shard)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.dsns[shard], autocommit=True, connect_timeout=10,
                                   application_name="shardsession deadlock detector")  # fmt: skip
            conn.execute(VICTIMS_DDL)
            self._conns[shard] = conn
        return conn

    def drop(self, shard: str) -> None:
        conn = self._conns.pop(shard, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        for shard in list(self._conns):
            self.drop(shard)


def _node(shard: str, pid: int, name: str | None) -> tuple[str, float | None]:
    start = tag_start(name or "")
    if start is not None:
        return str(name), start
    return f"{shard}/{pid}", None


def _look(probe: _Probe, report: DeadlockReport) -> dict[str, float]:
    """Fill ``report.waits`` and ``report.prepared_waits``; return the start times."""
    starts: dict[str, float] = {}
    for shard in probe.dsns:
        try:
            conn = probe.connection(shard)
            rows = conn.execute(_WAITS_SQL).fetchall()
            on_prepared = [r[0] for r in rows if r[3] == 0]
            prepared = (conn.execute(_PREPARED_HOLDERS_SQL, (on_prepared,)).fetchall()
                        if on_prepared else [])  # fmt: skip
        except psycopg.Error as err:
            probe.drop(shard)
            report.unreachable[shard] = str(err).strip().splitlines()[0] if str(err) else "error"
            continue
        for pid, name, started, holder_pid, holder_name, holder_started, idle in rows:
            if idle is not None:
                report.idle_holders.append((shard, holder_pid, float(idle)))
            waiter, tagged = _node(shard, pid, name)
            starts[waiter] = tagged if tagged is not None else (started or 0.0)
            if holder_pid == 0:
                continue
            holder, tagged = _node(shard, holder_pid, holder_name)
            starts.setdefault(holder, tagged if tagged is not None else (holder_started or 0.0))
            report.waits.append(Wait(shard, waiter, pid, holder, holder_pid))
        for pid, gid, age in prepared:
            waiter = next(_node(shard, r[0], r[1])[0] for r in rows if r[0] == pid)
            report.waits.append(Wait(shard, waiter, pid, f"{shard}/prepared/{gid}"))
            report.prepared_waits.append((shard, gid, float(age)))
    return starts


def _cancel(probe: _Probe, cycle: Cycle) -> bool:
    """Note and cancel the victim's waiting statements; True if one was cancelled."""
    done = False
    for shard, pid, holder in cycle.backends:
        args = {"pid": pid, "tag": cycle.victim, "holder": holder, "shards": list(cycle.shards)}
        try:
            conn = probe.connection(shard)
            conn.execute(_NOTE_SQL, args)
            hit = conn.execute(_CANCEL_SQL, args).fetchone()
        except psycopg.Error:
            probe.drop(shard)
            continue
        done = done or bool(hit and hit[0])
    return done


def detect_deadlocks(
    dsns: Mapping[str, str],
    *,
    cancel: bool = True,
    recover: Callable[[], Any] | None = None,
    settle_after: float = 2.0,
    previous: DeadlockReport | None = None,
    _probe: _Probe | None = None,
) -> DeadlockReport:
    """One detection round over the shards ``dsns`` (shard name -> conninfo).

    :param cancel: cancel the victim of each deadlock seen in this look and in
        ``previous`` (False: only report).
    :param previous: the report of the look before; without one, this round
        looks twice, 50 ms apart.
    :param recover: called when some transaction waits for a prepared transaction
        at least ``settle_after`` seconds old (a live coordinator finishes its
        prepared transactions within milliseconds).
    """
    probe = _probe or _Probe(dsns)
    report = DeadlockReport()
    try:
        if previous is None and cancel:
            previous = detect_deadlocks(dsns, cancel=False, _probe=probe)
            time.sleep(0.05)
        starts = _look(probe, report)
        report.cycles = find_cycles(report.waits, starts)
        seen_before = {c.key for c in previous.cycles} if previous is not None else set()
        if cancel:
            for cycle in report.cycles:
                if cycle.key in seen_before and _cancel(probe, cycle):
                    report.cancelled.append(cycle.victim)
        if recover is not None and any(age >= settle_after
                                       for _, _, age in report.prepared_waits):  # fmt: skip
            recover()
            report.recovered = True
    finally:
        if _probe is None:
            probe.close()
    return report


class DeadlockDetector:
    """Runs :func:`detect_deadlocks` every ``interval`` seconds in a daemon thread.

    While lock waits are seen it looks five times as often (a cycle often forms
    again among the transactions that were waiting behind the last one), so
    under contention cycles are broken within a fraction of ``interval``.

    The same thread returns the workers of **sessions dropped without**
    ``close()`` (a request handler that raised, say).  SQLAlchemy's Session and
    its transaction refer to each other, so a dropped Session is freed -- and its
    workers rolled back and returned to their pool -- only by Python's cycle
    collector, which runs when the process allocates: a service whose requests
    all wait for a dropped session's locks, or for a worker, may never get there.
    When a pool has no worker left to lend, or a lock holder has sat idle in its
    transaction for ``interval`` seconds, the thread runs ``gc.collect()`` (at
    most once per ``interval``).

    :param shards: the :class:`~shardsession.ShardSet` watched (held weakly: the
        thread ends when it is closed or collected).
    :ivar detected: distributed deadlocks found so far.
    :ivar cancelled: victims cancelled so far.
    :ivar collections: garbage collections run to return dropped sessions' workers.
    :ivar last_report: the last round's :class:`DeadlockReport`.
    """

    def __init__(self, shards: Any, interval: float, stop: threading.Event) -> None:
        self.interval = interval
        self.detected = 0
        self.cancelled = 0
        self.collections = 0
        self._last_collect = 0.0
        self._misses: dict[str, int] = {}
        self.last_report: DeadlockReport | None = None
        self._shards = weakref.ref(shards)
        self._stop = stop
        self._dsns = dict(shards.dsns)
        self._grace = shards.recovery_grace
        self._thread = threading.Thread(target=self._run, name="shardsession-deadlocks",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _recover(self) -> None:
        shards = self._shards()
        if shards is not None:
            shards.last_recovery = shards.recover(older_than=self._grace)

    def _run(self) -> None:
        probe = _Probe(self._dsns)
        rounds = 0
        pause = self.interval
        try:
            while not self._stop.wait(pause):
                if self._shards() is None:
                    return
                try:
                    report = detect_deadlocks(
                        self._dsns, recover=self._recover,
                        settle_after=max(0.5, self.interval), _probe=probe,
                        previous=self.last_report or DeadlockReport(),
                    )  # fmt: skip
                except Exception:  # never let the thread die; try again next round
                    continue
                self._warn_unreachable(report)
                pause = self.interval / 5 if report.waits else self.interval
                self._collect_dropped_sessions(report)
                seen_before = (
                    {c.key for c in self.last_report.cycles} if self.last_report else set()
                )
                self.detected += sum(1 for c in report.cycles if c.key not in seen_before)
                self.cancelled += len(report.cancelled)
                self.last_report = report
                rounds += 1
                if rounds % 600 == 0:
                    for shard in self._dsns:
                        with contextlib.suppress(psycopg.Error):
                            probe.connection(shard).execute(_PRUNE_NOTES_SQL)
        finally:
            probe.close()

    def _warn_unreachable(self, report: DeadlockReport) -> None:
        for shard in self._dsns:
            if shard not in report.unreachable:
                self._misses.pop(shard, None)
                continue
            self._misses[shard] = self._misses.get(shard, 0) + 1
            if self._misses[shard] == 3:  # once per outage, not on a single blip
                warnings.warn(
                    f"the deadlock detector cannot reach shard {shard!r} "
                    f"({report.unreachable[shard]}); deadlocks through it are not broken "
                    "until it can. Check the shard's DSN (it connects with ShardSet.dsns).",
                    RuntimeWarning,
                    stacklevel=1,
                )

    def _collect_dropped_sessions(self, report: DeadlockReport) -> None:
        now = time.monotonic()
        if now - self._last_collect < self.interval:
            return
        idle = any(seconds >= self.interval for _, _, seconds in report.idle_holders)
        shards = self._shards()
        full = shards is not None and any(
            engine.pool.checkedout() >= capacity
            for engine, capacity in ((shards[name], cap) for name, cap in shards.capacity.items())
        )
        del shards
        if idle or full:
            self._last_collect = now
            gc.collect()
            self.collections += 1

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after the ShardSet is closed)."""
        self._thread.join(timeout)
