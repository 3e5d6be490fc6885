"""The demo's fleet section: what a sharded fleet needs beyond one Session.

It runs on the demo's shards with tables of its own (``demo_countries``,
``demo_customers``, ``demo_tickets``) and shows, each step checked against
answers computed here:

1. a **reference table** (``__shard_key__ = ss.REPLICATED``): countries written
   once, present on every shard, joined locally with sharded customers;
2. **global ids** (:class:`~shardsession.ShardedIdentity`): tickets numbered by
   the shard that made them, unique across shards, fetched with ``get()``;
3. **resharding**: countries, customers and their tickets are loaded on three
   shards, then :func:`~shardsession.coordinator.rebalance.rebalance` moves to the
   fourth exactly the rows whose shard changed, copies the reference table there,
   and verifies every row is on its shard;
4. **asyncio**: the same cross-shard query through ``ss.AsyncSession``;
5. **migrations**: an Alembic revision (an index) upgraded on every shard at once
   with :func:`shardsession.migrate.upgrade`, then downgraded again, so the demo
   can run again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import BigInteger, ForeignKey, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import shardsession as ss

__all__ = ["Country", "Customer", "FleetBase", "Ticket", "run_fleet"]

COUNTRIES = {"de": "Germany", "fr": "France", "jp": "Japan", "br": "Brazil", "ca": "Canada"}
#: the Alembic script directory of the migration step
MIGRATIONS = Path(__file__).with_name("migrations")


class FleetBase(DeclarativeBase):
    """The fleet section's own declarative base."""


class Country(FleetBase):
    """A reference table: the same rows on every shard."""

    __tablename__ = "demo_countries"
    __shard_key__ = ss.REPLICATED

    code: Mapped[str] = mapped_column(String(2), primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Customer(FleetBase):
    """Sharded by its id; refers to a country (a local join on every shard)."""

    __tablename__ = "demo_customers"
    __shard_key__ = "id"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    country_code: Mapped[str] = mapped_column(ForeignKey("demo_countries.code"))
    balance: Mapped[int]
    tickets: Mapped[list[Ticket]] = relationship(back_populates="customer")


class Ticket(FleetBase):
    """No shard key (it follows its customer); ids made by the shard, unique everywhere."""

    __tablename__ = "demo_tickets"

    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("demo_customers.id"))
    subject: Mapped[str] = mapped_column(String(40))
    customer: Mapped[Customer] = relationship(back_populates="tickets")


def _per_country(session: Any) -> dict[str, int]:
    rows = session.execute(
        select(Country.name, func.count(Customer.id))
        .join(Customer, Customer.country_code == Country.code)
        .group_by(Country.name)
    )
    return {name: count for name, count in rows}


def _rows_on(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def run_fleet(
    dsns: Mapping[str, str],
    *,
    customers: int = 2000,
    seed: int = 2024,
    step: Callable[[str], None] = lambda text: None,
) -> dict[str, Any]:
    """Run the fleet section on ``dsns`` (four shards or more); return its report.

    ``report["ok"]`` says whether every step matched its expected answer.
    """
    from shardsession import migrate
    from shardsession.coordinator.rebalance import rebalance

    names = list(dsns)
    rng = random.Random(seed)
    wanted = {i: rng.choice(sorted(COUNTRIES)) for i in range(1, customers + 1)}
    expected = {COUNTRIES[code]: n for code, n in Counter(wanted.values()).items()}
    out: dict[str, Any] = {"shards": names}
    steps: list[dict[str, Any]] = []

    def record(name: str, result: str, ok: bool, **extra: Any) -> None:
        steps.append({"step": name, "result": result, "ok": bool(ok), **extra})

    everywhere = ss.create_shards(dsns, pool_size=1, max_overflow=3, recovery_interval=None)
    first = ss.create_shards({n: dsns[n] for n in names[:-1]}, pool_size=1, max_overflow=3,
                             recovery_interval=None)  # fmt: skip
    try:
        step("fleet: a reference table, global ids and resharding")
        FleetBase.metadata.drop_all(everywhere)
        FleetBase.metadata.create_all(everywhere)
        with ss.Session(first) as s:
            s.add_all([Country(code=c, name=n) for c, n in COUNTRIES.items()])
            s.commit()
        copies = {shard: _rows_on(dsns[shard], "demo_countries") for shard in first}
        record("reference table", f"{len(COUNTRIES)} countries written once, on "
               f"{sum(1 for n in copies.values() if n == len(COUNTRIES))} of {len(first)} shards",
               all(n == len(COUNTRIES) for n in copies.values()))  # fmt: skip

        # Customers and their tickets, on every shard but the last.
        with ss.Session(first) as s:
            for i, code in wanted.items():
                customer = Customer(id=i, country_code=code, balance=100)
                customer.tickets.append(Ticket(subject=f"ticket of {i}"))
                s.add(customer)
            s.commit()
            ids = s.scalars(select(Ticket.id)).all()
            sample = rng.sample(ids, 20)
        with ss.Session(first) as s:
            found = [s.get(Ticket, i) for i in sample]
            same = all(t is not None and t.subject == f"ticket of {t.customer_id}" for t in found)
        record("global ids", f"{len(ids):,} tickets, {len(set(ids)):,} distinct ids; get() "
               f"of 20 found each on its shard", len(set(ids)) == customers and same)  # fmt: skip
        with ss.Session(first) as s:
            joined = _per_country(s)
        record("join with the reference table", "customers per country, on 3 shards",
               joined == expected)  # fmt: skip

        # The last shard joins: move exactly what now hashes to another shard.
        planned = rebalance(everywhere, FleetBase, dry_run=True)
        report = rebalance(everywhere, FleetBase)
        moved = report.rows
        verified = report.verification is not None and report.verification.ok
        out["rebalance"] = {"rows": moved, "seconds": round(report.seconds, 3),
                            "rows_per_second": round(report.rows_per_second, 1)}  # fmt: skip
        record("rebalance 3 -> 4 shards",
               f"{moved:,} rows moved ({planned.rows:,} planned) in {report.seconds:.2f} s, "
               "verified", verified and moved == planned.rows)  # fmt: skip
        with ss.Session(everywhere) as s:
            joined = _per_country(s)
            again = [s.get(Ticket, i) for i in sample]
            on_new = s.scalar(select(func.count(Customer.id)),
                              bind_arguments={"shard_id": names[-1]})  # fmt: skip
        copied = _rows_on(dsns[names[-1]], "demo_countries")
        record("after resharding", f"same answers; {on_new:,} customers and {copied} countries "
               f"on {names[-1]}", joined == expected and all(t is not None for t in again)
               and on_new > 0 and copied == len(COUNTRIES))  # fmt: skip

        step("fleet: asyncio")
        top = asyncio.run(_async_top(dsns))
        with ss.Session(everywhere) as s:
            sync_top = s.execute(select(Customer.id, Customer.balance)
                                 .order_by(Customer.id.desc()).limit(3)).all()  # fmt: skip
        record("asyncio", f"top 3 through AsyncSession: {[row[0] for row in top]}",
               [tuple(r) for r in top] == [tuple(r) for r in sync_top])  # fmt: skip

        step("fleet: a migration on every shard")
        started = time.monotonic()
        up = migrate.upgrade(dsns, "head", directory=MIGRATIONS)
        seconds = time.monotonic() - started
        indexed = [shard for shard, dsn in dsns.items() if _has_index(dsn)]
        down = migrate.downgrade(dsns, "base", directory=MIGRATIONS)
        out["migration_seconds"] = round(seconds, 2)
        record("migration", f"upgrade on {len(indexed)} shards at once in {seconds:.2f} s, "
               "then downgraded", up.ok and down.ok and len(indexed) == len(names))  # fmt: skip
    finally:
        first.close()
        everywhere.close()
    out["steps"] = steps
    out["ok"] = all(s["ok"] for s in steps)
    return out


def _has_index(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname = 'demo_customers_country'"
        ).fetchone()
    return row is not None


async def _async_top(dsns: Mapping[str, str]) -> list[Any]:
    shards = ss.create_async_shards(dsns, pool_size=1, max_overflow=3, recovery_interval=None)
    try:
        async with ss.async_sessionmaker(shards)() as session:
            result = await session.execute(
                select(Customer.id, Customer.balance).order_by(Customer.id.desc()).limit(3)
            )
            return list(result.all())
    finally:
        await shards.close()
