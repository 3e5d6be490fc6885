"""Two-phase commit: a transfer between shards, failed ones, and recovery after a crash.

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

from sqlalchemy import CheckConstraint, String, UniqueConstraint, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import shardsession as ss
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


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "tp_account"
    __shard_key__ = "id"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="tp_account_not_negative"),
        # Checked when the transaction ends: on a participant, at PREPARE TRANSACTION.
        UniqueConstraint("owner", name="tp_account_owner", deferrable=True, initially="DEFERRED"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(30))
    balance: Mapped[int]


def transfer(Session: ss.sessionmaker, source: int, target: int, amount: int) -> None:
    """Move ``amount`` from one account to another, in one transaction."""
    # Commits at the end (two-phase: two shards are written), rolls back on an error.
    with Session.begin() as session:
        session.get_one(Account, source).balance -= amount
        session.get_one(Account, target).balance += amount


def total(session: Session) -> int:
    return session.scalar(select(func.sum(Account.balance))) or 0


def accounts_by_shard(session: Session) -> dict[str, list[int]]:
    placed: dict[str, list[int]] = {}
    for account in session.scalars(select(Account).order_by(Account.id)):
        placed.setdefault(inspect(account).identity_token, []).append(account.id)
    return dict(sorted(placed.items()))


def main() -> None:
    if sys.argv[1:] == ["--crash-after-prepare"]:
        crash_after_prepare()
        return
    with shard_dsns() as dsns:
        # Background recovery is off (the default of create_shards) so that this
        # script decides when recovery runs.
        with ss.create_shards(dsns, pool_size=1) as shards:
            Base.metadata.drop_all(shards)  # left over from an interrupted run
            Base.metadata.create_all(shards)
            try:
                demonstrate(shards, dsns)
            finally:
                Base.metadata.drop_all(shards)
    print("two_phase: ok")


def demonstrate(shards: ss.ShardSet, dsns: dict[str, str]) -> None:
    Session = ss.sessionmaker(shards)
    with Session.begin() as session:
        session.add_all([Account(id=n, owner=f"owner {n}", balance=100) for n in range(1, 9)])
    with Session() as session:
        placed = accounts_by_shard(session)
    (source, *_), (target, *_) = list(placed.values())[:2]  # on two different shards

    transfer(Session, source, target, 30)
    with Session() as session:
        balances = (
            session.get_one(Account, source).balance,
            session.get_one(Account, target).balance,
        )
        print(f"after the transfer: account {source} has {balances[0]}, {target} has {balances[1]}")
        assert balances == (70, 130) and total(session) == 800

    # A transfer that breaks a constraint fails on its shard, at the flush: the
    # transaction is rolled back on every shard and nothing is committed anywhere.
    # The error is SQLAlchemy's, wrapping psycopg's, with the shard named.
    try:
        transfer(Session, source, target, 1000)
    except IntegrityError as err:
        print(f"refused: SQLSTATE {err.orig.sqlstate}: {str(err.orig).splitlines()[0]}")
        assert err.orig.sqlstate == "23514"  # check_violation
    else:
        raise AssertionError("the overdraft should have failed")
    with Session() as session:
        assert session.get_one(Account, source).balance == 70 and total(session) == 800

    # A deferred constraint is checked when a participant prepares.  PREPARE failing
    # on one shard rolls back every shard: TwoPhaseError, nothing committed.
    names = list(placed)  # sorted: the first is the commit point, the last prepares
    first_shard, last_shard = names[0], names[-1]
    a, b = placed[last_shard][:2]
    try:
        with Session.begin() as session:
            session.get_one(Account, placed[first_shard][0]).balance += 1
            session.get_one(Account, a).owner = "the same owner"
            session.get_one(Account, b).owner = "the same owner"
    except ss.exc.TwoPhaseError as err:
        print("refused:", str(err).split(";")[0])
    else:
        raise AssertionError("the duplicate owner should have failed at PREPARE")
    with Session() as session:
        assert total(session) == 800

    # Another process prepares a transfer on two shards, then dies before the commit
    # decision.  Its prepared transaction holds row locks until recovery settles it.
    env = {**os.environ, "SHARDSESSION_EXAMPLE_DSNS": json.dumps(dsns)}
    child = subprocess.run([sys.executable, __file__, "--crash-after-prepare"], env=env)
    assert child.returncode == 3, child

    # No commit decision was recorded, so recovery rolls it back (presumed abort).
    # older_than=0 is safe only because we know the process is gone; the default
    # grace period protects commits still in progress.
    rolled_back: list[str] = []
    for _attempt in range(20):
        report = ss.recover(dsns, older_than=0)
        rolled_back += report.rolled_back
        if not report.skipped_shards:  # shards another process was recovering just then
            break
        time.sleep(0.1)
    print("recovery rolled back:", rolled_back)
    assert len(rolled_back) == 1  # the commit point never prepares

    transfer(Session, source, target, 70)  # the rows are free again
    with Session() as session:
        assert (session.get_one(Account, source).balance, total(session)) == (0, 800)


def crash_after_prepare() -> None:
    with shard_dsns() as dsns:
        shards = ss.create_shards(dsns, pool_size=1)
        session = ss.Session(shards)
        placed = accounts_by_shard(session)
        (source, *_), (target, *_) = list(placed.values())[:2]
        session.get_one(Account, source).balance -= 5
        session.get_one(Account, target).balance += 5
        session.prepare()  # phase one: every writer but the commit point prepares
        os._exit(3)  # a crash: no decision, no rollback, no cleanup


if __name__ == "__main__":
    main()
