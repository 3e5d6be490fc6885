"""What the demo does to the shards: generate and load data, query it, move money.

* :func:`generate` makes the demo's tenants, users and orders from a seed, so the
  expected answer of every query is known in advance;
* :func:`load` writes them in batches (``add_all`` + ``commit``; a batch that
  spans several shards is a two-phase commit);
* :func:`run_queries` runs cross-shard queries and compares each answer with the
  one computed from the generated data;
* :func:`run_transfers` starts transfer processes (:func:`transfer_process`),
  each with its own worker pool and session, kills one worker of each in the
  middle of a transfer, and lets some crash inside a commit so that recovery has
  prepared transactions to settle;
* :func:`check_invariant` verifies what must hold afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import queue as queue_mod
import random
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

import shardsession as ss
from shardsession.demo.schema import Base, Order, Tenant, User
from shardsession.exc import (
    ConfigurationError,
    ShardSessionError,
    TwoPhaseCommitPendingWarning,
    TwoPhaseError,
    WorkerLostError,
)

__all__ = [
    "CRASH_POINTS",
    "KILL_STAGES",
    "DemoData",
    "QueryResult",
    "Sizes",
    "TransferResult",
    "check_invariant",
    "generate",
    "load",
    "plan_transfers",
    "rows_per_shard",
    "run_queries",
    "run_transfers",
    "transfer_process",
    "wait_gone",
]

REGIONS = ("eu-west", "us-east", "ap-south")
STATUSES = ("new", "paid", "shipped", "refunded")
_STATUS_WEIGHTS = (2, 5, 4, 1)
_NAMES = (
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
    "Tyrell", "Cyberdyne", "Soylent", "Wonka", "Oscorp", "Gringotts", "Aperture", "Monarch",
)  # fmt: skip

#: Where a transfer process has the parent kill one of its workers (cycled over processes).
KILL_STAGES = ("locked", "prepared-commit-point", "prepared-participant")
#: Where a transfer process crashes (``os._exit``) inside its last commit.
CRASH_POINTS = ("after_prepare", "after_decision")
_CRASH_EXIT = 9
_NO_CRASH = 10  # a crashing process whose last commit did not reach its crash point
_OVERTIME = 30.0  # seconds a transfer process may go on waiting for its kill


# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much the demo does."""

    tenants: int = 40
    users: int = 2000
    orders: int = 10000
    processes: int = 3
    seconds: float = 8.0
    fleet_customers: int = 2000  # the fleet section's customers (shardsession.demo.fleet)


@dataclass
class DemoData:
    """The generated rows, as plain tuples, and where each tenant lives."""

    tenants: list[tuple[int, str, str]]  # id, name, region
    users: list[tuple[int, int, str, int]]  # id, tenant_id, name, balance
    orders: list[tuple[int, int, int, str, int]]  # id, tenant_id, user_id, status, amount
    shard_of_tenant: dict[int, str]

    @property
    def total_balance(self) -> int:
        """The sum of every user's starting balance."""
        return sum(u[3] for u in self.users)


def generate(sizes: Sizes, shards: Sequence[str], seed: int = 2024) -> DemoData:
    """Make the demo's rows from ``seed`` (ids are globally unique, given here)."""
    rnd = random.Random(seed)
    tenants = [
        (t, f"{_NAMES[(t - 1) % len(_NAMES)]} {(t - 1) // len(_NAMES) + 1}", REGIONS[t % 3])
        for t in range(1, sizes.tenants + 1)
    ]
    # Every tenant gets at least one user; the rest are spread unevenly.
    owners = [t for t, _, _ in tenants]
    owners += rnd.choices(owners, k=max(0, sizes.users - len(owners)))
    owners.sort()
    users = [
        (uid, tid, f"user{uid:05d}", rnd.randint(5, 15) * 100)
        for uid, tid in enumerate(owners, start=1)
    ]
    orders = []
    for oid in range(1, sizes.orders + 1):
        uid, tid, _, _ = users[rnd.randrange(len(users))]
        status = rnd.choices(STATUSES, _STATUS_WEIGHTS)[0]
        orders.append((oid, tid, uid, status, rnd.randint(100, 99_999)))
    shard_of = {t: ss.shard_for_key(list(shards), t) for t, _, _ in tenants}
    return DemoData(tenants, users, orders, shard_of)


# -- shards ----------------------------------------------------------------------------


def open_shards(dsns: Mapping[str, str], **options: Any) -> ss.ShardSet:
    """``ss.create_shards(dsns, **options)``, with every shard's DSN known to the ShardSet.

    The session's two-phase commit settles a lost commit decision by connecting to
    the commit point with ``ShardSet.dsns``.  shardsession 0.2.0 leaves those empty
    for shards given as DSNs (it reads them from the engines' URLs, while the DSN
    travels in ``connect_args``), so they are filled in from ``dsns`` here.
    """
    shards = ss.create_shards(dsns, **options)
    for shard, dsn in dsns.items():
        if not shards.dsns.get(shard):
            shards.dsns[shard] = dsn
    return shards


# -- loading ---------------------------------------------------------------------------


def _batches(data: DemoData, rows_per_batch: int) -> Iterator[list[int]]:
    """Groups of tenant ids of about ``rows_per_batch`` rows each."""
    rows = collections.Counter({t: 1 for t, _, _ in data.tenants})
    rows.update(u[1] for u in data.users)
    rows.update(o[1] for o in data.orders)
    group: list[int] = []
    size = 0
    for tid, _, _ in data.tenants:
        group.append(tid)
        size += rows[tid]
        if size >= rows_per_batch:
            yield group
            group, size = [], 0
    if group:
        yield group


def load(
    shards: ss.ShardSet,
    data: DemoData,
    advance: Callable[[int], None] = lambda n: None,
    rows_per_batch: int | None = None,
) -> dict[str, Any]:
    """Create the demo tables afresh and load ``data``, one commit per batch of tenants.

    Orders are attached to their user through the ``User.orders`` relationship;
    the flush fills in ``user_id`` and writes tenants, users and orders in
    foreign-key order.  :returns: counts and timing of the load.

    :param advance: called with the number of rows of each batch committed.
    :param rows_per_batch: about how many rows a commit writes (default: a tenth
        of them, at least 100 and at most 1,500).
    """
    started = time.perf_counter()
    Base.metadata.drop_all(shards)
    Base.metadata.create_all(shards)
    users_of: dict[int, list[tuple[int, int, str, int]]] = collections.defaultdict(list)
    for row in data.users:
        users_of[row[1]].append(row)
    orders_of: dict[int, list[tuple[int, int, int, str, int]]] = collections.defaultdict(list)
    for row in data.orders:
        orders_of[row[2]].append(row)
    tenants = {t[0]: t for t in data.tenants}
    if rows_per_batch is None:
        total = len(data.tenants) + len(data.users) + len(data.orders)
        rows_per_batch = min(1500, max(100, total // 10))
    batches = two_phase = 0
    for group in _batches(data, rows_per_batch):
        objects: list[Any] = []
        count = 0
        for tid in group:
            _, name, region = tenants[tid]
            objects.append(Tenant(id=tid, name=name, region=region))
            for uid, _, uname, balance in users_of[tid]:
                user = User(id=uid, tenant_id=tid, name=uname, balance=balance)
                user.orders = [
                    Order(id=oid, tenant_id=tid, status=status, amount=amount)
                    for oid, _, _, status, amount in orders_of[uid]
                ]
                objects.append(user)
                count += 1 + len(user.orders)
            count += 1
        with ss.Session(shards) as session:
            session.add_all(objects)
            session.commit()
        batches += 1
        if len({data.shard_of_tenant[t] for t in group}) > 1:
            two_phase += 1
        advance(count)
    return {
        "tenants": len(data.tenants),
        "users": len(data.users),
        "orders": len(data.orders),
        "rows": len(data.tenants) + len(data.users) + len(data.orders),
        "batches": batches,
        "two_phase_commits": two_phase,
        "seconds": round(time.perf_counter() - started, 2),
    }


def rows_per_shard(shards: ss.ShardSet) -> dict[str, dict[str, int]]:
    """How many tenants, users and orders each shard holds (one query per shard)."""
    out: dict[str, dict[str, int]] = {}
    with ss.Session(shards) as session:
        for shard in shards:
            pin = {"shard_id": shard}
            out[shard] = {
                "tenants": session.scalar(select(func.count(Tenant.id)), bind_arguments=pin),
                "users": session.scalar(select(func.count(User.id)), bind_arguments=pin),
                "orders": session.scalar(select(func.count(Order.id)), bind_arguments=pin),
            }
    return out


# -- queries ---------------------------------------------------------------------------


@dataclass
class QueryResult:
    """One query of the demo: what it returned and whether that was right."""

    name: str
    where: str
    result: Any
    expected: Any
    ms: float
    shown: str = ""  # the result, short, for people

    @property
    def matches(self) -> bool:
        """Whether the answer equals the one computed from the generated data."""
        return bool(self.result == self.expected)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "name": self.name,
            "where": self.where,
            "result": self.result,
            "expected": self.expected,
            "matches": self.matches,
            "shown": self.shown,
            "ms": round(self.ms, 1),
        }


def _avg(total: int, count: int) -> str:
    return f"{Decimal(total) / Decimal(count):,.2f}" if count else "-"


def run_queries(shardset: ss.ShardSet, data: DemoData) -> list[QueryResult]:
    """Run the demo's queries; each answer is compared with the expected one."""
    shards = list(shardset)
    region_of = {t: r for t, _, r in data.tenants}
    out: list[QueryResult] = []

    def timed(
        name: str, where: str, run: Callable[[], Any], expected: Any, show: Callable[[Any], str]
    ) -> None:
        started = time.perf_counter()
        result = run()
        ms = (time.perf_counter() - started) * 1e3
        out.append(QueryResult(name, where, result, expected, ms, show(result)))

    every = f"all {len(shards)} shards"
    with ss.Session(shardset) as session:
        # top-N: every shard sorts and limits, the coordinator merges the sorted streams
        top = sorted(data.orders, key=lambda o: (-o[4], o[0]))[:5]
        timed(
            "top 5 orders by amount",
            every,
            lambda: [
                [o.id, o.tenant_id, o.amount]
                for o in session.scalars(
                    select(Order).order_by(Order.amount.desc(), Order.id).limit(5)
                )
            ],
            [[o[0], o[1], o[4]] for o in top],
            lambda rows: ", ".join(f"#{i} {a:,}" for i, _, a in rows),
        )
        # GROUP BY: partial counts and sums from every shard, combined per group
        by_status = _count_and_sum(data.orders, lambda o: o[3])
        timed(
            "orders and revenue by status",
            every,
            lambda: [
                [status, count, int(total)]
                for status, count, total in session.execute(
                    select(Order.status, func.count(Order.id), func.sum(Order.amount))
                    .group_by(Order.status)
                    .order_by(Order.status)
                )
            ],
            [[s, c, t] for s, (c, t) in sorted(by_status.items())],
            lambda rows: ", ".join(f"{s} {c:,}" for s, c, _ in rows),
        )
        # a join on each shard (a tenant's orders live with it), then grouping
        by_region = _count_and_sum(data.orders, lambda o: region_of[o[1]])
        timed(
            "orders, revenue, average by region (join)",
            every,
            lambda: [
                [region, count, int(total), f"{avg:,.2f}"]
                for region, count, total, avg in session.execute(
                    select(
                        Tenant.region,
                        func.count(Order.id),
                        func.sum(Order.amount),
                        func.avg(Order.amount),
                    )
                    .join(Order, Order.tenant_id == Tenant.id)
                    .group_by(Tenant.region)
                    .order_by(Tenant.region)
                )
            ],
            [[r, c, t, _avg(t, c)] for r, (c, t) in sorted(by_region.items())],
            lambda rows: ", ".join(f"{r} {c:,} (avg {a})" for r, c, _, a in rows),
        )
        # ORDER BY an aggregate + LIMIT, after combining groups
        revenue: collections.Counter[int] = collections.Counter()
        for o in data.orders:
            revenue[o[1]] += o[4]
        best = sorted(revenue.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        tenant_revenue = func.sum(Order.amount).label("revenue")
        timed(
            "top 3 tenants by revenue",
            every,
            lambda: [
                [tid, int(total)]
                for tid, total in session.execute(
                    select(Order.tenant_id, tenant_revenue)
                    .group_by(Order.tenant_id)
                    .order_by(tenant_revenue.desc(), Order.tenant_id)
                    .limit(3)
                )
            ],
            [[t, r] for t, r in best],
            lambda rows: ", ".join(f"tenant {t} {r:,}" for t, r in rows),
        )
        # the shard key in WHERE routes the statement to that tenant's shard only
        tid = best[0][0]
        members = [u for u in data.users if u[1] == tid]
        timed(
            f"users and balance of tenant {tid}",
            f"{data.shard_of_tenant[tid]} only (tenant {tid}'s shard)",
            lambda: list(
                session.execute(
                    select(func.count(User.id), func.sum(User.balance)).where(User.tenant_id == tid)
                ).one()
            ),
            [len(members), sum(u[3] for u in members)],
            lambda row: f"{row[0]:,} users, balance {row[1]:,}",
        )
        # a relationship loaded lazily from the object's own shard
        counts = collections.Counter(o[2] for o in data.orders)
        uid = max(counts, key=lambda u: (counts[u], -u))
        owner = data.users[uid - 1]
        timed(
            f"orders of user {uid} (relationship)",
            f"{data.shard_of_tenant[owner[1]]} only (user's shard)",
            lambda: len(
                session.get(
                    User, uid, bind_arguments={"shard_id": data.shard_of_tenant[owner[1]]}
                ).orders
            ),
            counts[uid],
            lambda n: f"{n} orders",
        )
        timed(
            "total balance",
            every,
            lambda: int(session.scalar(select(func.sum(User.balance)))),
            data.total_balance,
            lambda total: f"{total:,}",
        )
    return out


# -- transfers: the child process ------------------------------------------------------

#: Errors after which a transfer is rolled back and retried: a worker killed under a
#: statement (SQLAlchemy's OperationalError, the shard named in the message), a failed
#: two-phase commit (TwoPhaseError) or a lost worker (WorkerLostError).
_RETRIED = (OperationalError, TwoPhaseError, WorkerLostError)
#: The grace period of the recovery a transfer process runs itself: long enough that
#: it never presumes aborted a commit another process is still making.
_OWN_RECOVERY_GRACE = 600.0


@dataclass
class _Child:
    """The state of one transfer process (in that process)."""

    index: int
    events: Any
    kill_now: Any
    killed: Any
    kill_stage: str
    parent: int = 0
    shards: Any = None  # this process's ShardSet
    workers: set[int] = field(default_factory=set)  # every worker it started
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    kill: dict[str, Any] | None = None
    pair: tuple[str, str] = ("", "")  # shards of the transfer in progress
    pids: dict[str, int] = field(default_factory=dict)  # ... and the workers it uses there
    committing: bool = False  # the transfer in progress has reached its second phase
    crash_point: str | None = None

    def check_parent(self) -> None:
        """Raise :class:`_ParentGone` when the demo process has exited."""
        if os.getppid() != self.parent:
            raise _ParentGone

    def request_kill(self, shard: str, stage: str) -> None:
        """Ask the parent to SIGKILL this process's worker of ``shard``; wait until it has."""
        self.kill = {"stage": stage, "shard": shard, "pid": self.pids[shard], "outcome": None}
        self.events.put(("kill", self.index, dict(self.kill)))
        deadline = time.monotonic() + 30
        while not self.killed.wait(0.5):
            self.check_parent()
            if time.monotonic() > deadline:
                self.kill["outcome"] = "the parent did not kill the worker in time"
                return

    def after_prepare(self) -> None:
        """Every shard of the commit in progress is prepared; its decision comes next.

        Crash here, or have a worker killed: the commit point's (the first written
        shard by name, where the decision is recorded) or the prepared participant's.
        """
        if self.crash_point == "after_prepare":
            os._exit(_CRASH_EXIT)
        if self.kill is None and self.kill_now.is_set():
            commit_point, participant = sorted(self.pair)
            if self.kill_stage == "prepared-commit-point":
                self.request_kill(commit_point, self.kill_stage)
            elif self.kill_stage == "prepared-participant":
                self.request_kill(participant, self.kill_stage)

    def after_decision(self) -> None:
        """The commit decision of the commit in progress is recorded: crash here if asked."""
        if self.crash_point == "after_decision":
            os._exit(_CRASH_EXIT)


def _worker_pid(session: Any, shard: str) -> int:
    """The pid of the worker process that serves ``session`` on ``shard``."""
    connection = session.connection(bind_arguments={"shard_id": shard})
    return int(connection.connection.dbapi_connection.pid)


def _install_fault_points(child: _Child) -> None:
    """Have this process's two-phase commits call ``child.after_prepare`` / ``after_decision``.

    ``after_prepare`` comes from SQLAlchemy's ``commit_twophase`` connection event:
    the session prepares every shard, then commits them one by one, and the first
    commit call is where shardsession records the decision.  There is no public
    hook between the decision and ``COMMIT PREPARED``, so for ``after_decision``
    the coordinator's step that finishes a decided commit is wrapped, in this
    (throw-away) process only.
    """
    from shardsession.coordinator.twophase import CommitCoordinator

    def on_commit_twophase(conn: Any, xid: Any, is_prepared: bool) -> None:
        if not child.committing:
            child.committing = True
            child.after_prepare()

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        child.workers.add(int(dbapi_connection.pid))

    for engine in child.shards.values():
        event.listen(engine, "commit_twophase", on_commit_twophase)
        event.listen(engine, "connect", on_connect)

    finish = CommitCoordinator._finish

    def finish_after_decision(self: Any, *, commit: bool) -> None:
        if commit:
            child.after_decision()
        finish(self, commit=commit)

    CommitCoordinator._finish = finish_after_decision  # type: ignore[method-assign]


def _transfer(child: _Child, a: int, b: int, shard_of: Mapping[int, str], amount: int) -> str:
    """Move ``amount`` from user ``a`` to user ``b``: ``committed`` or ``skipped``."""
    child.pair = (shard_of[a], shard_of[b])
    child.committing = False
    session = ss.Session(child.shards)
    try:
        rows = {}
        for uid in sorted((a, b)):  # always lock in id order: no deadlock across shards
            rows[uid] = session.get(
                User, uid, with_for_update=True, bind_arguments={"shard_id": shard_of[uid]}
            )
        source, target = rows[a], rows[b]
        if source.balance < amount:
            session.rollback()
            return "skipped"
        # the workers that hold the two rows locked: the kills aim at them
        child.pids = {shard: _worker_pid(session, shard) for shard in child.pair}
        if child.kill is None and child.kill_stage == "locked" and child.kill_now.is_set():
            child.request_kill(shard_of[a], "locked")
        source.balance -= amount
        target.balance += amount
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TwoPhaseCommitPendingWarning)
            session.commit()
        if any(issubclass(w.category, TwoPhaseCommitPendingWarning) for w in caught):
            # Committed (the decision is recorded), but a shard whose worker died
            # still holds its part prepared, rows locked: finish it now, as the
            # warning says, instead of holding up every transfer that needs them.
            child.counts["left_to_recovery"] += 1
            finished = ss.recover(child.shards.dsns, older_than=_OWN_RECOVERY_GRACE)
            child.counts["finished_by_own_recovery"] += len(finished.committed)
        return "committed"
    except BaseException:
        with contextlib.suppress(Exception):
            session.rollback()
        raise
    finally:
        with contextlib.suppress(Exception):
            session.close()


def transfer_process(
    index: int,
    dsns: dict[str, str],
    accounts: list[tuple[int, str]],
    reserved: list[tuple[int, str]] | None,
    seconds: float,
    seed: int,
    kill_stage: str,
    crash_point: str | None,
    events: Any,
    go: Any,
    kill_now: Any,
    killed: Any,
) -> None:
    """One transfer process: its own shards (worker pools) and sessions, moving money.

    Runs transfers between users on different shards for ``seconds`` after ``go``
    is set.  Once ``kill_now`` is set, the next transfer reaching ``kill_stage``
    asks the parent (through ``events``) to SIGKILL one of this process's workers
    and waits on ``killed``; the transfer then fails or completes as the library
    decides, and a failed one is rolled back and retried.  With ``crash_point``,
    the process finally moves money between the two ``reserved`` users (id, shard)
    and exits abruptly (``os._exit``) at that point of the two-phase commit,
    leaving a prepared transaction for recovery.  Reports go to ``events`` as
    ``(kind, index, info)`` tuples.
    """
    parent = os.getppid()
    child = _Child(index, events, kill_now, killed, kill_stage, parent=parent)
    try:
        child.shards = open_shards(
            dsns,
            pool_size=1,
            max_overflow=2,
            statement_timeout=10,
            pool_timeout=30,
            recovery_interval=None,  # the demo runs recovery itself, at the end
        )
        _install_fault_points(child)
        with ss.Session(child.shards) as session:  # start a worker on every shard
            pids = {shard: _worker_pid(session, shard) for shard in child.shards}
    except (*_RETRIED, ShardSessionError) as err:
        events.put(("failed", index, f"{type(err).__name__}: {err}"))
        if child.shards is not None:
            child.shards.close()
        return
    try:
        done = _transfer_loop(child, accounts, pids, seconds, seed, go)
        done["crash"] = crash_point
        events.put(("done", index, done))
        if crash_point is not None and reserved:
            events.close()
            events.join_thread()  # what was put must reach the parent before the crash
            child.crash_point = crash_point
            shard_of = dict(reserved)
            with contextlib.suppress(*_RETRIED):
                _transfer(child, reserved[0][0], reserved[1][0], shard_of, 1)
            os._exit(_NO_CRASH)  # not reached: the commit crashes at crash_point
    except _ParentGone:
        events.cancel_join_thread()
    except BaseException:
        events.put(("error", index, traceback.format_exc()))
        raise
    finally:
        child.shards.close()


class _ParentGone(Exception):
    """The demo process went away: stop (the workers follow by themselves)."""


def _transfer_loop(
    child: _Child,
    accounts: list[tuple[int, str]],
    pids: dict[str, int],
    seconds: float,
    seed: int,
    go: Any,
) -> dict[str, Any]:
    """Transfer money until ``seconds`` after ``go``; return the counts."""
    shard_of = dict(accounts)
    ids = [uid for uid, _ in accounts]
    others = {s: [uid for uid, t in accounts if t != s] for s in set(shard_of.values())}
    rnd = random.Random(seed)
    child.events.put(("ready", child.index, pids))
    while not go.wait(0.5):
        child.check_parent()
    deadline = time.monotonic() + seconds
    next_report = 0.0
    after_kill = 0
    # On a slow machine, go on past the deadline (up to a limit) until the kill has
    # happened and a transfer committed after it: that is what the demo shows.
    while time.monotonic() < deadline or (
        not after_kill and time.monotonic() < deadline + _OVERTIME
    ):
        child.check_parent()
        a = rnd.choice(ids)
        b = rnd.choice(others[shard_of[a]])
        amount = rnd.randint(1, 300)
        for _attempt in range(5):
            pending = child.counts["left_to_recovery"]
            try:
                outcome = _transfer(child, a, b, shard_of, amount)
            except _RETRIED as err:
                child.counts["retried"] += 1
                child.errors[type(err).__name__] += 1
                if child.kill is not None and child.kill["outcome"] is None:
                    child.kill["outcome"] = f"{type(err).__name__}: rolled back, retried"
                    child.kill["error"] = str(err).strip().splitlines()[0]
                continue
            child.counts[outcome] += 1
            if child.kill is not None:
                if child.kill["outcome"] is None:
                    child.kill["outcome"] = f"{outcome} anyway"
                    if child.counts["left_to_recovery"] > pending:
                        child.kill["outcome"] += ", its shard finished by recovery"
                after_kill += outcome == "committed"
            break
        else:
            child.counts["given_up"] += 1
        if time.monotonic() >= next_report:
            child.events.put(("progress", child.index, dict(child.counts)))
            next_report = time.monotonic() + 0.25
    return {
        "index": child.index,
        "counts": dict(child.counts),
        "errors": dict(child.errors),
        "kill": child.kill,
        "committed_after_kill": after_kill,
        "workers": sorted(child.workers),
    }


# -- transfers: the parent -------------------------------------------------------------


@dataclass
class TransferResult:
    """What the transfer phase did."""

    processes: list[dict[str, Any]]
    seconds: float
    workers_killed: int
    crashed: int

    def total(self, key: str) -> int:
        """The sum of counter ``key`` over every process."""
        return sum(p["counts"].get(key, 0) for p in self.processes)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        committed = self.total("committed")
        return {
            "processes": self.processes,
            "committed": committed,
            "skipped": self.total("skipped"),
            "retried": self.total("retried"),
            "given_up": self.total("given_up"),
            "left_to_recovery": self.total("left_to_recovery"),
            "two_phase_commits": committed,
            "workers_killed": self.workers_killed,
            "committed_after_kill": sum(p["committed_after_kill"] for p in self.processes),
            "crashed_in_commit": self.crashed,
            "seconds": round(self.seconds, 2),
        }


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Wait until every process in ``pids`` has exited; whether they all did."""
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _context() -> Any:
    # A fresh interpreter per transfer process.  Never fork: this process holds a
    # worker pool (threads, pipes, connections).
    return multiprocessing.get_context("spawn")


def _count_and_sum(orders: Any, group: Any) -> dict[Any, list[int]]:
    """The expected answer of a grouped count and sum of order amounts."""
    out: dict[Any, list[int]] = {}
    for o in orders:
        acc = out.setdefault(group(o), [0, 0])
        acc[0] += 1
        acc[1] += o[4]
    return out


def plan_transfers(
    data: DemoData, sizes: Sizes
) -> tuple[list[tuple[int, str]], list[list[tuple[int, str]]]]:
    """The users the transfers use, and the pairs set aside for the crashing commits.

    Each crash gets two users on different shards that normal transfers never
    touch, so the locks a crashed commit leaves hold nobody up.

    :returns: ``(accounts, reserved)``: ``(user id, shard)`` of the users to move
        money between, and one pair of them per crash.
    :raises ConfigurationError: when there are too few users on too few shards.
    """
    shard_of_user = {u[0]: data.shard_of_tenant[u[1]] for u in data.users}
    crashers = min(sizes.processes, len(CRASH_POINTS))
    reserved: list[list[tuple[int, str]]] = []
    taken: set[int] = set()
    for _ in range(crashers):
        a = next((u[0] for u in reversed(data.users) if u[0] not in taken), None)
        b = next(
            (
                u[0]
                for u in reversed(data.users)
                if u[0] not in taken and shard_of_user[u[0]] != shard_of_user.get(a)
            ),
            None,
        )
        if a is None or b is None:
            break
        taken.update((a, b))
        reserved.append([(a, shard_of_user[a]), (b, shard_of_user[b])])
    accounts = [(u[0], shard_of_user[u[0]]) for u in data.users if u[0] not in taken]
    if len(reserved) < crashers or len({s for _, s in accounts}) < 2:
        raise ConfigurationError(
            f"the transfers need users on at least two shards, also after setting "
            f"{2 * crashers} aside for the crashes; {len(data.tenants)} tenant(s) with "
            f"{len(data.users)} user(s) are too few: give more --tenants and --users"
        )
    return accounts, reserved


def run_transfers(
    dsns: dict[str, str],
    data: DemoData,
    sizes: Sizes,
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, info: None,
    seed: int = 7,
) -> TransferResult:
    """Run ``sizes.processes`` transfer processes for ``sizes.seconds``, with kills.

    Each process gets one worker killed (SIGKILL, by this process) in the middle
    of a transfer, at a stage from :data:`KILL_STAGES`; the first processes also
    crash inside their last commit (:data:`CRASH_POINTS`).  ``on_event(kind,
    info)`` is called with ``"started"`` (a process is ready), ``"running"`` (all
    are, and start now), ``"progress"``, ``"killed"`` and ``"done"``.
    """
    n = sizes.processes
    accounts, reserved = plan_transfers(data, sizes)
    crashers = len(reserved)
    ctx = _context()
    events = ctx.Queue()
    go = ctx.Event()
    kill_now = [ctx.Event() for _ in range(n)]
    killed = [ctx.Event() for _ in range(n)]
    procs = []
    for i in range(n):
        crash = CRASH_POINTS[i] if i < crashers else None
        res = reserved[i] if i < crashers else None
        stage = KILL_STAGES[i % len(KILL_STAGES)]
        args = (i, dsns, accounts, res, sizes.seconds, seed + i, stage, crash)
        procs.append(
            ctx.Process(
                target=transfer_process,
                args=(*args, events, go, kill_now[i], killed[i]),
                name=f"shardsession-demo-transfers-{i}",
                daemon=True,
            )
        )
    results: dict[int, dict[str, Any]] = {}
    workers_killed = 0
    try:
        for proc in procs:
            proc.start()
        reports = _Reports(events, procs)
        ready: set[int] = set()
        deadline = time.monotonic() + 120
        while len(ready) < n:
            report = reports.next(deadline)
            if report is None:
                continue
            kind, index, info = report
            if kind == "error":
                raise RuntimeError(f"transfer process {index} failed:\n{info}")
            if kind == "failed":
                raise ShardSessionError(f"transfer process {index} could not start: {info}")
            if kind == "ready":
                ready.add(index)
                on_event("started", {"index": index, "workers": info})
        started = time.monotonic()
        go.set()
        on_event("running", {})
        # kill one worker of each process, spread over the middle of the run
        kill_at = [started + sizes.seconds * (0.3 + 0.4 * i / max(1, n)) for i in range(n)]
        end = started + sizes.seconds + 120
        while len(results) < n:
            now = time.monotonic()
            for i, at in enumerate(kill_at):
                if at and now >= at:
                    kill_now[i].set()
                    kill_at[i] = 0.0
            report = reports.next(end, timeout=0.05)
            if report is None:
                continue
            kind, index, info = report
            if kind == "error":
                raise RuntimeError(f"transfer process {index} failed:\n{info}")
            if kind == "kill":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info["pid"], signal.SIGKILL)
                    workers_killed += 1
                wait_gone([info["pid"]], 10)
                killed[index].set()
                on_event("killed", {"index": index, "at": time.monotonic() - started, **info})
            elif kind == "progress":
                on_event("progress", {"index": index, "counts": info})
            elif kind == "done":
                results[index] = info
                reports.finished.add(index)
                on_event("done", info)
        seconds = time.monotonic() - started
        for proc in procs:
            proc.join(60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    crashed = 0
    for i, proc in enumerate(procs):
        info = results[i]
        info["exit_code"] = proc.exitcode
        info["crashed"] = info["crash"] is not None and proc.exitcode == _CRASH_EXIT
        crashed += info["crashed"]
        info["left_workers_gone"] = wait_gone(info["workers"], 15)
    return TransferResult([results[i] for i in range(n)], seconds, workers_killed, crashed)


class _Reports:
    """The reports of the transfer processes, watching that they stay alive."""

    def __init__(self, events: Any, procs: Sequence[Any]) -> None:
        self.events = events
        self.procs = procs
        self.finished: set[int] = set()  # processes whose "done" arrived
        self._dead_since: dict[int, float] = {}

    def next(self, deadline: float, timeout: float = 0.1) -> tuple[str, int, Any] | None:
        """The next report, or None after ``timeout``.

        :raises ShardSessionError: when ``deadline`` has passed, or a process has
            exited without reporting that it was done.
        """
        try:
            return self.events.get(timeout=timeout)  # type: ignore[no-any-return]
        except queue_mod.Empty:
            pass
        now = time.monotonic()
        if now > deadline:
            raise ShardSessionError("the transfer processes did not report in time")
        for i, proc in enumerate(self.procs):
            if i in self.finished or proc.is_alive():
                continue
            # what it sent last may still be on its way: allow a moment
            if now - self._dead_since.setdefault(i, now) > 2.0:
                raise ShardSessionError(
                    f"transfer process {i} exited with status {proc.exitcode} before it was done"
                )
        return None


# -- the invariant ---------------------------------------------------------------------


def check_invariant(shards: ss.ShardSet, data: DemoData) -> dict[str, Any]:
    """What must hold after the transfers, crashes and recovery.

    The total balance equals the starting total, no balance is negative, every
    user is still there, no prepared transaction is left on any shard and no row
    of the users table is still locked.
    """
    with ss.Session(shards) as session:
        total = int(session.scalar(select(func.sum(User.balance))) or 0)
        users = int(session.scalar(select(func.count(User.id))))
        negative = int(session.scalar(select(func.count(User.id)).where(User.balance < 0)))
    prepared: dict[str, int] = {}
    locked: dict[str, bool] = {}
    for shard, dsn in shards.dsns.items():
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            prepared[shard] = conn.execute(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            ).fetchone()[0]
            conn.execute("SET LOCAL lock_timeout = '2s'")
            try:
                conn.execute(f"SELECT 1 FROM {User.__tablename__} FOR UPDATE").fetchall()
                locked[shard] = False
            except psycopg.errors.LockNotAvailable:
                locked[shard] = True
            conn.rollback()
    held = (
        total == data.total_balance
        and negative == 0
        and users == len(data.users)
        and not any(prepared.values())
        and not any(locked.values())
    )
    return {
        "expected_total": data.total_balance,
        "total": total,
        "users": users,
        "expected_users": len(data.users),
        "negative_balances": negative,
        "prepared_left": prepared,
        "locked_rows": locked,
        "held": held,
    }
