"""The application process dies at each step of a two-phase commit.

A child process commits 12 accounts, which land on all 4 shards: ``s0`` is the
commit point (the first writer by name; it does not prepare), ``s1``-``s3`` are
prepared.  The child dies with ``os._exit`` -- no cleanup, no ``finally``, as a
SIGKILL would -- at a precise step, chosen by wrapping, in the child only, a
method of the real commit coordinator or of the worker connection's ``send``.
Its workers then exit by themselves, and recovery leaves the transaction
committed on every shard or on none, exactly as the step implies, with nothing
prepared, nothing locked, and the commit log holding only the fence of an abort.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

import shardsession as ss
from shardsession.twophase import parse_gid
from tests.faults import support
from tests.faults.models import Account

N_ROWS = 12
SHARDS = ["s0", "s1", "s2", "s3"]

APP = textwrap.dedent(
    """
    import json, os, sys
    import shardsession as ss
    from shardsession.coordinator import dbapi
    from shardsession.coordinator.twophase import CommitCoordinator
    from tests.faults.models import Account

    dsns, point, first_id = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    shards = ss.create_shards(dsns, pool_size=1, recovery_interval=None)

    def crash(coordinator):
        print(json.dumps({"crash": point, "global_id": coordinator.global_id,
                          "commit_point": getattr(coordinator.commit_point, "shard", None)}),
              flush=True)
        os._exit(9)

    def wrap(cls, name, before=None, after=None):
        original = getattr(cls, name)
        def method(self, *args, **kwargs):
            if before is not None:
                before(self, *args, **kwargs)
            out = original(self, *args, **kwargs)
            if after is not None:
                after(self, *args, **kwargs)
            return out
        setattr(cls, name, method)

    sent = {}  # message type -> the connections it was sent to, in order

    def before_send(conn, request):
        kind = type(request).__name__
        earlier = sent.setdefault(kind, [])
        # a second PREPARE / COMMIT PREPARED is about to go out: first wait for the
        # reply to the first one (it is done), then die
        if (point, kind, len(earlier)) in (("after_prepare_some", "Prepare", 1),
                                           ("after_commit_some", "FinishPrepared", 1)):
            earlier[0].recv()
            crash(conn.tpc)
        if point == "after_prepare" and kind == "Decide":
            crash(conn.tpc)  # every PREPARE acknowledged, the decision not sent

    def after_send(conn, request):
        sent.setdefault(type(request).__name__, []).append(conn)
        if point == "decision_sent" and type(request).__name__ == "Decide":
            crash(conn.tpc)  # the decision is on its way, its reply never read

    wrap(dbapi.Connection, "send", before_send, after_send)
    if point == "before_prepare":
        wrap(CommitCoordinator, "prepare", lambda self, conn: crash(self))
    if point == "after_decision":
        wrap(CommitCoordinator, "_finish", lambda self, **kw: crash(self))

    with ss.Session(shards) as s:
        s.add_all([Account(id=first_id + i, owner="x", balance=1) for i in range(12)])
        s.flush()
        pids = {shard: s.connection(bind_arguments={"shard_id": shard}).connection
                .dbapi_connection.pid for shard in sorted(dsns)}
        print(json.dumps({"workers": pids}), flush=True)
        s.commit()
    print(json.dumps({"committed": True}), flush=True)
    """
)

# step -> (shards left prepared by the crash, whether the transaction ends committed)
# (None: either outcome, as long as it is all or nothing)
POINTS: dict[str, tuple[int, bool | None]] = {
    "before_prepare": (0, False),
    "after_prepare_some": (1, False),
    "after_prepare": (3, False),
    "decision_sent": (3, None),
    "after_decision": (3, True),
    "after_commit_some": (2, True),
}


def _crash(dsns: dict[str, str], point: str, first_id: int) -> tuple[dict, dict]:
    """Run the application until it dies at ``point``; wait for its workers to exit.

    :returns: what it printed at the crash, and its workers (shard -> pid).
    """
    app = subprocess.run(
        [sys.executable, "-c", APP, json.dumps(dsns), point, str(first_id)],
        capture_output=True, text=True, cwd=support.ROOT, timeout=120,
    )  # fmt: skip
    assert app.returncode == 9, (app.returncode, app.stdout, app.stderr[-3000:])
    lines = [json.loads(line) for line in app.stdout.splitlines()]
    workers = next(line["workers"] for line in lines if "workers" in line)
    crashed = next(line for line in lines if "crash" in line)
    assert crashed["crash"] == point and not any("committed" in line for line in lines)
    assert sorted(workers) == SHARDS, f"the {N_ROWS} rows should reach every shard: {workers}"
    support.wait_for(
        lambda: all(support.gone(p) for p in workers.values()),
        15,
        f"the workers {sorted(workers.values())} of the dead application to exit",
    )
    return crashed, workers


@pytest.mark.parametrize("point", list(POINTS))
def test_application_killed_during_commit(
    fault_shards: ss.ShardSet, clean_shards: dict[str, str], point: str
) -> None:
    dsns = clean_shards
    left, committed = POINTS[point]
    ids = f"id BETWEEN 1000 AND {1000 + N_ROWS - 1}"
    with support.recovery_paused(dsns):
        crashed, _ = _crash(dsns, point, 1000)
        in_doubt = support.prepared(dsns)
    global_id, commit_point = crashed["global_id"], crashed["commit_point"]
    if point != "before_prepare":
        assert commit_point == "s0", crashed
    gids = [g for gs in in_doubt.values() for g in gs]
    assert len(gids) == left, f"after a crash at {point}: {in_doubt}"
    assert all(parse_gid(g).global_id == global_id for g in gids), (global_id, in_doubt)
    assert "s0" not in in_doubt, "the commit point never prepares"

    report = ss.recover(dsns, older_than=0)
    assert not report.errors and not report.waiting and not report.skipped_shards, report
    count = support.total(dsns, f"SELECT count(*) FROM fault_account WHERE {ids}")
    if committed is None:  # the decision was in flight: it either committed or lost
        committed = count == N_ROWS
    settled = report.committed if committed else report.rolled_back
    # The test shards are shared with the test process's other shard sets, whose
    # background recovery may settle some of them first (rightly): this run settles
    # the rest, and nothing in the other direction.
    assert set(settled) <= set(gids), report
    assert not (report.rolled_back if committed else report.committed), report
    assert count == (N_ROWS if committed else 0), f"{count} of {N_ROWS} rows committed"
    assert support.prepared(dsns) == {}
    support.assert_unlocked(dsns, "fault_account", ids)
    # the commit log: a committed transaction's decision is pruned once every
    # participant is settled; an aborted one keeps its abort record (the fence that
    # makes a late commit decision fail), and one that never prepared leaves nothing
    again = ss.recover(dsns, older_than=0)
    assert not again.committed and not again.rolled_back and not again.waiting, again
    log = support.decisions(dsns)
    if committed or left == 0:
        assert log == [], log
    else:
        assert log == [("s0", global_id, "abort")], log


def test_recovery_waits_for_the_grace_period_and_dry_run_changes_nothing(
    fault_shards: ss.ShardSet, clean_shards: dict[str, str]
) -> None:
    dsns = clean_shards
    with support.recovery_paused(dsns):
        crashed, _ = _crash(dsns, "after_prepare", 2000)
    in_doubt = sorted(g for gs in support.prepared(dsns).values() for g in gs)
    assert support.shards_of(in_doubt) == ["s1", "s2", "s3"]

    young = ss.recover(dsns, older_than=3600)
    assert sorted(young.waiting) == in_doubt, young
    assert not young.rolled_back and not young.committed and not young.pruned
    dry = ss.recover(dsns, older_than=0, dry_run=True)
    assert sorted(dry.rolled_back) == in_doubt and not dry.committed, dry
    assert sorted(g for gs in support.prepared(dsns).values() for g in gs) == in_doubt
    assert support.decisions(dsns) == [], "a dry run must write no decision"

    # two recoverers at once: between them every transaction is settled, each by
    # presumed abort (both see the same abort record)
    reports: list[ss.RecoveryReport] = []
    threads = [
        threading.Thread(target=lambda: reports.append(ss.recover(dsns, older_than=0)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(reports) == 2, "a recoverer did not finish in 60 s"
    assert not any(r.committed or r.errors for r in reports), reports
    assert sorted({g for r in reports for g in r.rolled_back}) == in_doubt, reports
    leftovers = ss.recover(dsns, older_than=0)
    assert not leftovers.committed and not leftovers.rolled_back and not leftovers.waiting
    assert support.prepared(dsns) == {}
    assert support.decisions(dsns) == [("s0", crashed["global_id"], "abort")]
    assert support.total(dsns, "SELECT count(*) FROM fault_account") == 0


def test_committed_transactions_leave_no_decision_behind(
    fault_shards: ss.ShardSet, clean_shards: dict[str, str]
) -> None:
    dsns = clean_shards
    with support.recovery_paused(dsns), ss.Session(fault_shards) as session:
        session.add_all([Account(id=i, owner="y") for i in range(1, N_ROWS + 1)])
        session.commit()
        log = support.decisions(dsns)
        assert [(shard, outcome) for shard, _, outcome in log] == [("s0", "commit")], log
        assert support.prepared(dsns) == {}
    report = fault_shards.recover(older_than=0)
    assert report.pruned == 1 and not report.committed and not report.rolled_back, report
    assert support.decisions(dsns) == []
    assert support.total(dsns, "SELECT count(*) FROM fault_account") == N_ROWS
