"""Testing an application with the shardsession pytest plugin.

Installing shardsession registers the plugin; nothing needs configuring.  Run
``pytest docs/examples/test_with_plugin.py`` (or with ``-n 4``: each pytest-xdist
worker gets its own shard databases).
"""

from __future__ import annotations

import psycopg
import pytest

import shardsession as ss
from shardsession import Mapped, String, mapped_column


class Base(ss.DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "plugin_customer"
    __shard_key__ = "id"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture(scope="session")
def tables(shard_pool: ss.WorkerPool) -> None:
    """Create the application's tables once per test process, on every shard."""
    Base.metadata.create_all(shard_pool)


def test_customers_are_spread_over_the_shards(tables: None, session: ss.Session) -> None:
    session.add_all([Customer(id=n, name=f"customer {n}") for n in range(1, 21)])
    session.commit()
    shards = {ss.inspect(c).identity_token for c in session.scalars(ss.select(Customer))}
    assert len(shards) > 1
    assert session.scalar(ss.select(ss.func.count()).select_from(Customer)) == 20


def test_every_test_starts_with_empty_tables(tables: None, session: ss.Session) -> None:
    # The session fixture emptied every shard after the previous test.
    assert session.scalar(ss.select(ss.func.count()).select_from(Customer)) == 0


def test_shards_are_real_databases(
    tables: None, shard_dsns: dict[str, str], session: ss.Session
) -> None:
    session.add(Customer(id=7, name="seven"))
    session.commit()
    rows = 0
    for dsn in shard_dsns.values():  # shard name -> DSN of this test process's database
        with psycopg.connect(dsn) as conn:
            rows += conn.execute("SELECT count(*) FROM plugin_customer").fetchone()[0]
    assert rows == 1


def test_a_pool_of_your_own(tables: None, shard_dsns: dict[str, str]) -> None:
    # Other pool settings: build a pool over the same databases.
    with ss.create_pool(shard_dsns, workers_per_shard=1, recovery_interval=None) as pool:
        with ss.Session(pool) as session:
            assert session.get(Customer, 1) is None
