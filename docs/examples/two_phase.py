"""Two-phase commit: a transfer between shards, a failed one, and recovery after a crash.

Run it with ``python docs/examples/two_phase.py``.  It starts a temporary local
cluster of four shards, or uses the shards named in the ``SHARDSESSION_EXAMPLE_DSNS``
environment variable (a JSON object, shard name -> DSN) when it is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import shardsession as ss
from shardsession import CheckConstraint, Mapped, mapped_column
from shardsession.embedded import LocalCluster


@contextlib.contextmanager
def shard_dsns() -> Iterator[dict[str, str]]:
    """The shards to use: from SHARDSESSION_EXAMPLE_DSNS, else a temporary cluster."""
    given = os.environ.get("SHARDSESSION_EXAMPLE_DSNS")
    if given:
        yield json.loads(given)
        return
    with LocalCluster(shards=4, temporary=True) as cluster:
        yield cluster.dsns


class Base(ss.DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "tp_account"
    __shard_key__ = "id"
    __table_args__ = (CheckConstraint("balance >= 0", name="tp_account_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int]


def transfer(Session: ss.sessionmaker, source: int, target: int, amount: int) -> None:
    """Move ``amount`` from one account to another, in one transaction."""
    # Commits at the end (two-phase: two shards are written), rolls back on an error.
    with Session.begin() as session:
        session.get(Account, source).balance -= amount
        session.get(Account, target).balance += amount


def total(session: ss.Session) -> int:
    return session.scalar(ss.select(ss.func.sum(Account.balance)))


def two_accounts_on_different_shards(session: ss.Session) -> tuple[int, int]:
    first: dict[str, int] = {}
    for account in session.scalars(ss.select(Account).order_by(Account.id)):
        first.setdefault(ss.inspect(account).identity_token, account.id)
    source, target = sorted(first.values())[:2]
    return source, target


def main() -> None:
    if sys.argv[1:] == ["--crash-after-prepare"]:
        crash_after_prepare()
        return
    with shard_dsns() as dsns:
        # Background recovery is off so that this script decides when recovery runs;
        # applications keep it on (the default: every 30 seconds).
        with ss.create_pool(dsns, workers_per_shard=1, recovery_interval=None) as pool:
            Base.metadata.drop_all(pool)  # left over from an interrupted run
            Base.metadata.create_all(pool)
            try:
                demonstrate(pool, dsns)
            finally:
                Base.metadata.drop_all(pool)
    print("two_phase: ok")


def demonstrate(pool: ss.WorkerPool, dsns: dict[str, str]) -> None:
    Session = ss.sessionmaker(pool)
    with Session.begin() as session:
        session.add_all([Account(id=n, balance=100) for n in range(1, 9)])
    with Session() as session:
        source, target = two_accounts_on_different_shards(session)

    transfer(Session, source, target, 30)
    with Session() as session:
        balances = (session.get(Account, source).balance, session.get(Account, target).balance)
        print(f"after the transfer: account {source} has {balances[0]}, {target} has {balances[1]}")
        assert balances == (70, 130) and total(session) == 800

    # A transfer that breaks a constraint fails on its shard: the transaction is
    # rolled back on every shard and nothing is committed anywhere.
    try:
        transfer(Session, source, target, 1000)
    except ss.IntegrityError as err:
        print(f"refused by shard {err.shard}: SQLSTATE {err.sqlstate}")
        assert err.sqlstate == "23514"  # check_violation
    else:
        raise AssertionError("the overdraft should have failed")
    with Session() as session:
        assert session.get(Account, source).balance == 70 and total(session) == 800

    # Another process prepares a transfer on both shards, then dies before the
    # commit decision.  Its prepared transactions hold row locks until recovery.
    env = {**os.environ, "SHARDSESSION_EXAMPLE_DSNS": json.dumps(dsns)}
    child = subprocess.run([sys.executable, __file__, "--crash-after-prepare"], env=env)
    assert child.returncode == 3, child

    # No commit decision was recorded, so recovery rolls both back (presumed abort).
    # older_than=0 is safe only because we know the process is gone; the default
    # grace period protects commits still in progress.
    rolled_back: list[str] = []
    for _attempt in range(20):
        report = pool.recover(older_than=0)
        rolled_back += report.rolled_back
        if not report.skipped_shards:  # shards another process was recovering just then
            break
        time.sleep(0.1)
    print("recovery rolled back:", rolled_back)
    assert len(rolled_back) == 2

    transfer(Session, source, target, 70)  # the rows are free again
    with Session() as session:
        assert (session.get(Account, source).balance, total(session)) == (0, 800)


def crash_after_prepare() -> None:
    with shard_dsns() as dsns:
        pool = ss.create_pool(dsns, workers_per_shard=1, recovery_interval=None)
        session = ss.Session(pool)
        source, target = two_accounts_on_different_shards(session)
        session.get(Account, source).balance -= 5
        session.get(Account, target).balance += 5
        session.prepare()  # phase one on both shards; no decision yet
        os._exit(3)  # a crash: no commit, no rollback, no cleanup


if __name__ == "__main__":
    main()
