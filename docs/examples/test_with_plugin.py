"""Testing an application with the shardsession pytest plugin.

Installing shardsession registers the plugin; nothing needs configuring.  Run
``pytest docs/examples/test_with_plugin.py`` (or with ``-n 4``: each pytest-xdist
worker gets its own shard databases).
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import String, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import shardsession as ss


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "plugin_customer"
    __shard_key__ = "id"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture(scope="session")
def tables(shard_pool: ss.ShardSet) -> None:
    """Create the application's tables once per test process, on every shard."""
    Base.metadata.create_all(shard_pool)


def test_customers_are_spread_over_the_shards(tables: None, session: Session) -> None:
    session.add_all([Customer(id=n, name=f"customer {n}") for n in range(1, 21)])
    session.commit()
    shards = {inspect(c).identity_token for c in session.scalars(select(Customer))}
    assert len(shards) > 1
    assert session.scalar(select(func.count()).select_from(Customer)) == 20


def test_rollback_session_undoes_even_what_the_test_commits(
    tables: None, rollback_session: Session
) -> None:
    rollback_session.add_all([Customer(id=n, name=f"customer {n}") for n in range(1, 5)])
    rollback_session.commit()  # releases a SAVEPOINT on each shard
    rollback_session.add(Customer(id=5, name="five"))
    rollback_session.rollback()  # back to the commit
    assert rollback_session.scalar(select(func.count()).select_from(Customer)) == 4
    # after the test, each shard's transaction is rolled back: no table is emptied


def test_every_test_starts_with_empty_tables(tables: None, session: Session) -> None:
    # The session fixture emptied every shard after its test; the rollback_session
    # of the test before this one left nothing to empty.
    assert session.scalar(select(func.count()).select_from(Customer)) == 0


def test_shards_are_real_databases(
    tables: None, shard_dsns: dict[str, str], session: Session
) -> None:
    session.add(Customer(id=7, name="seven"))
    session.commit()
    rows = 0
    for dsn in shard_dsns.values():  # shard name -> DSN of this test process's database
        with psycopg.connect(dsn) as conn:
            rows += conn.execute("SELECT count(*) FROM plugin_customer").fetchone()[0]
    assert rows == 1


def test_shards_of_your_own(tables: None, shard_dsns: dict[str, str]) -> None:
    # Other settings: make engines of your own over the same databases.
    with ss.create_shards(shard_dsns, pool_size=1, max_overflow=0) as shards:
        with ss.Session(shards) as session:
            assert session.get(Customer, 1) is None
