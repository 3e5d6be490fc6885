"""rollback_session: a Session whose every change is undone, with no table emptied.

The session joins one transaction per shard with SAVEPOINTs; the test's own
``commit()`` and ``rollback()`` work as they would on their own, queries reach
every shard, and when it ends nothing it wrote is left, committed or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import String, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import shardsession as ss
from shardsession.exc import ArgumentError
from shardsession.testing import rollback_session

pytest_plugins = ["pytester"]


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "rollback_account"
    __shard_key__ = "id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int]


class Order(Base):
    __tablename__ = "rollback_order"
    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    note: Mapped[str] = mapped_column(String(20))


class Country(Base):
    __tablename__ = "rollback_country"
    __shard_key__ = ss.REPLICATED
    code: Mapped[str] = mapped_column(String(2), primary_key=True)


TABLES = [table.name for table in Base.metadata.sorted_tables]


@pytest.fixture(scope="module")
def shards(shard_pool: ss.ShardSet) -> Iterator[ss.ShardSet]:
    """``shard_pool`` with this module's tables."""
    Base.metadata.create_all(shard_pool)
    yield shard_pool
    Base.metadata.drop_all(shard_pool)


def _committed_rows(shard_dsns: dict[str, str]) -> dict[str, int]:
    """Rows of this module's tables that other connections see, per table."""
    totals = dict.fromkeys(TABLES, 0)
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in TABLES:
                totals[table] += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return totals


def _prepared(shard_dsns: dict[str, str]) -> int:
    total = 0
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            total += conn.execute(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            ).fetchone()[0]
    return total


def _ids_on_distinct_shards(shards: ss.ShardSet, count: int) -> list[int]:
    names, seen, ids = list(shards), set(), []
    for key in range(1, 1000):
        shard = ss.shard_for_key(names, key)
        if shard not in seen:
            seen.add(shard)
            ids.append(key)
        if len(ids) == count:
            return ids
    raise AssertionError(f"fewer than {count} shards")


NOTHING = dict.fromkeys(TABLES, 0)


def test_commits_rollbacks_and_queries_across_shards_leave_no_row(
    shards: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    assert _committed_rows(shard_dsns) == NOTHING
    keys = range(1, 13)
    with rollback_session(shards) as session:
        session.add_all([Account(id=k, balance=k) for k in keys])
        session.commit()
        placed = {inspect(a).identity_token for a in session.scalars(select(Account))}
        assert placed == {ss.shard_for_key(list(shards), k) for k in keys}
        assert len(placed) > 1

        session.add(Account(id=100, balance=1000))
        session.flush()
        session.rollback()  # back to the savepoint of the last commit
        assert session.scalar(select(func.count()).select_from(Account)) == 12
        assert session.scalar(select(func.sum(Account.balance))) == sum(keys)
        top = select(Account.id).order_by(Account.balance.desc()).limit(3)
        assert session.scalars(top).all() == [12, 11, 10]

        session.add(Account(id=1, balance=0))  # a duplicate key: the flush fails
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        account = session.get(Account, 1)
        assert account is not None and account.balance == 1

        account.balance = 50
        session.commit()
        session.expire_all()
        assert session.scalar(select(Account.balance).where(Account.id == 1)) == 50
        # committed in the session, never in the database
        assert _committed_rows(shard_dsns) == NOTHING
    assert _committed_rows(shard_dsns) == NOTHING


def test_a_two_shard_write_commits_without_two_phase_commit(
    shards: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    a, b = _ids_on_distinct_shards(shards, 2)
    with rollback_session(shards) as session:
        session.add_all([Account(id=a, balance=10), Account(id=b, balance=0)])
        session.commit()
        first, second = session.get(Account, a), session.get(Account, b)
        assert first is not None and second is not None
        assert inspect(first).identity_token != inspect(second).identity_token
        first.balance -= 4
        second.balance += 4
        session.commit()  # PREPARE TRANSACTION cannot run inside the outer transactions
        assert _prepared(shard_dsns) == 0
        session.expire_all()
        balances = {k: v for k, v in session.execute(select(Account.id, Account.balance))}
        assert balances == {a: 6, b: 4}
    assert _committed_rows(shard_dsns) == NOTHING
    assert _prepared(shard_dsns) == 0


def test_sharded_identity_ids_are_made_and_found(
    shards: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    with rollback_session(shards) as session:
        orders = [Order(note=f"n{i}") for i in range(8)]
        session.add_all(orders)
        session.commit()
        ids = [order.id for order in orders]
        assert len(set(ids)) == 8
        for order in orders:
            assert ss.shard_for_id(shards, order.id) == inspect(order).identity_token
            assert session.get(Order, order.id) is order
    assert _committed_rows(shard_dsns) == NOTHING


def test_reference_table_writes_reach_every_shard(
    shards: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    with rollback_session(shards) as session:
        session.add(Country(code="fr"))
        session.commit()
        for name in shards:
            found = session.scalars(select(Country.code), bind_arguments={"shard_id": name}).all()
            assert found == ["fr"], name
    assert _committed_rows(shard_dsns) == NOTHING


def test_session_arguments_pass_through_except_those_it_sets(shards: ss.ShardSet) -> None:
    with rollback_session(shards, expire_on_commit=False) as session:
        account = Account(id=5, balance=5)
        session.add(account)
        session.commit()
        assert "balance" in inspect(account).dict  # not expired by the commit
    for name, value in [("twophase", True), ("join_transaction_mode", "rollback_only")]:
        with pytest.raises(ArgumentError, match=f"sets {name} itself"):
            with rollback_session(shards, **{name: value}):
                pass


def test_the_fixture_commits_nothing(
    rollback_session: ss.Session, shards: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    assert isinstance(rollback_session, ss.Session)
    rollback_session.add(Account(id=7, balance=7))
    rollback_session.commit()
    assert rollback_session.get(Account, 7) is not None
    assert _committed_rows(shard_dsns) == NOTHING


FIXTURE_SUITE = """
import psycopg
import pytest
from sqlalchemy import text


@pytest.fixture(scope="session", autouse=True)
def table(shard_dsns):
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE note (id serial PRIMARY KEY, body text)")


def test_writes_and_commits(rollback_session, shard_dsns):
    for shard in shard_dsns:
        rollback_session.execute(
            text("INSERT INTO note (body) VALUES ('x')"), bind_arguments={"shard_id": shard}
        )
    rollback_session.commit()


def test_after_it_every_shard_is_empty(shard_dsns):
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM note").fetchone()[0] == 0
"""


def test_the_fixture_rolls_back_at_teardown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shard_dsns: dict[str, str]
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    server = conninfo_to_dict(shard_dsns["s0"])
    template = " ".join(f"{k}={v}" for k, v in server.items() if k != "dbname")
    template += f" dbname=rollback{os.getpid()}_{{shard}}"
    pytester.makepyfile(test_notes=FIXTURE_SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:xdist", "--shardsession-shards", "2", "--shardsession-dsn", template,
        timeout=180,
    )  # fmt: skip
    result.assert_outcomes(passed=2)
