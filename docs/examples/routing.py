"""Routing: the shard key, pinning a statement to a shard, choosers, identity tokens.

Run it with ``python docs/examples/routing.py``.  It starts a temporary local
cluster of four shards, or uses the shards named in the ``SHARDSESSION_EXAMPLE_DSNS``
environment variable (a JSON object, shard name -> DSN) when it is set.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, func, inspect, select
from sqlalchemy.ext.horizontal_shard import set_shard_id
from sqlalchemy.orm import DeclarativeBase, Mapped, ORMExecuteState, mapped_column, relationship

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


# -- routed by a shard key ------------------------------------------------------------


class Invoice(Base):
    __tablename__ = "routing_invoice"
    __shard_key__ = "tenant"  # hashed to a shard; part of the primary key

    tenant: Mapped[str] = mapped_column(String(30), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    amount: Mapped[int]


def shard_key_routing(shards: ss.ShardSet) -> None:
    with ss.Session(shards) as session:
        for tenant in ("acme", "globex", "initech", "umbrella", "hooli", "stark"):
            session.add_all([Invoice(tenant=tenant, number=n, amount=n) for n in range(1, 4)])
        session.commit()

        # Where a tenant's rows live is a pure function of the key and the shard names.
        acme_shard = ss.shard_for_key(list(shards), "acme")

        # The WHERE clause pins the shard key: only that tenant's shard is asked.
        acme = session.scalars(select(Invoice).where(Invoice.tenant == "acme")).all()
        home = {inspect(invoice).identity_token for invoice in acme}
        print("acme lives on", home)
        assert len(acme) == 3 and home == {acme_shard}

        # get() with the whole primary key goes straight to the shard too.
        assert inspect(session.get(Invoice, ("acme", 2))).identity_token == acme_shard

        # Pin a statement to a shard yourself, as with SQLAlchemy's ShardedSession:
        # bind_arguments={"shard_id": ...}, the set_shard_id() option, or an
        # identity_token execution option.
        count = select(func.count()).select_from(Invoice)
        on_s1 = session.scalars(select(Invoice).options(set_shard_id("s1"))).all()
        assert {inspect(i).identity_token for i in on_s1} <= {"s1"}
        on_s2 = session.scalar(count, bind_arguments={"shard_id": "s2"})
        on_s3 = session.scalar(count.execution_options(identity_token="s3"))
        everywhere = session.scalar(count)  # no key pinned: every shard, counts added up
        print("invoices on s1, s2, s3, everywhere:", len(on_s1), on_s2, on_s3, everywhere)
        assert everywhere == 18

        # A name that is not a shard is refused.
        try:
            session.scalar(count, bind_arguments={"shard_id": "s9"})
        except ss.exc.ShardNotFoundError as err:
            print("refused:", err)
        else:
            raise AssertionError("an unknown shard should be refused")


# -- routed by choosers -----------------------------------------------------------------

CONTINENTS = {"Europe": "s0", "Asia": "s1", "North America": "s2", "South America": "s3"}


class Location(Base):
    __tablename__ = "routing_location"  # no __shard_key__: the choosers route it

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    continent: Mapped[str] = mapped_column(String(30))
    city: Mapped[str] = mapped_column(String(50))
    reports: Mapped[list[Report]] = relationship(back_populates="location", order_by="Report.id")


class Report(Base):
    __tablename__ = "routing_report"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    location_id: Mapped[int] = mapped_column(ForeignKey("routing_location.id"))
    temperature: Mapped[float]
    location: Mapped[Location] = relationship(back_populates="reports")


def shard_chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
    """The shard a new object goes to (SQLAlchemy's ShardedSession signature)."""
    if isinstance(instance, Report):
        instance = instance.location
    return CONTINENTS[instance.continent]


def identity_chooser(
    mapper: Any,
    primary_key: Any,
    *,
    lazy_loaded_from: Any,
    execution_options: dict[str, Any],
    bind_arguments: dict[str, Any],
    **kw: Any,
) -> list[str]:
    """The shards get() asks for a primary key (all of them, in parallel)."""
    if lazy_loaded_from is not None:  # a many-to-one: the shard of the object it starts from
        return [lazy_loaded_from.identity_token]
    return list(CONTINENTS.values())


def execute_chooser(state: ORMExecuteState) -> list[str]:
    """The shards a statement runs on when nothing pinned it."""
    wanted = state.execution_options.get("continents")
    if wanted:
        return [CONTINENTS[c] for c in wanted]
    return list(CONTINENTS.values())


def chooser_routing(shards: ss.ShardSet) -> None:
    Session = ss.sessionmaker(
        shards,
        shard_chooser=shard_chooser,
        identity_chooser=identity_chooser,
        execute_chooser=execute_chooser,
    )
    cities = [("Europe", "Dublin"), ("Asia", "Tokyo"), ("Europe", "Oslo"), ("Asia", "Seoul")]
    with Session() as session:
        for n, (continent, city) in enumerate(cities, start=1):
            location = Location(id=n, continent=continent, city=city)
            location.reports = [Report(id=10 * n + k, temperature=float(n + k)) for k in (0, 1)]
            session.add(location)
        session.commit()

    with Session() as session:
        # A custom execution option, read by the execute_chooser.
        asia = session.scalars(
            select(Location).execution_options(continents=["Asia"]).order_by(Location.city)
        ).all()
        print("Asia:", [(c.city, inspect(c).identity_token) for c in asia])
        assert [c.city for c in asia] == ["Seoul", "Tokyo"]

        # get(): the identity_chooser names the identity tokens to look for in the
        # identity map; not found there, the load runs where the execute_chooser says.
        dublin = session.get(Location, 1)
        assert dublin is not None and inspect(dublin).identity_token == "s0"
        # Its reports went with it (the shard_chooser), and a lazy load reads from the
        # shard of the object it starts from.
        assert [r.temperature for r in dublin.reports] == [1.0, 2.0]
        assert {inspect(r).identity_token for r in dublin.reports} == {"s0"}

        # An identity token names the shard: get() asks only that one.
        tokyo = session.get(Location, 2, identity_token="s1")
        assert tokyo is not None and tokyo.city == "Tokyo"
        assert session.get(Location, 2, identity_token="s0") is None


def main() -> None:
    with shard_dsns() as dsns, ss.create_shards(dsns, pool_size=1) as shards:
        Base.metadata.drop_all(shards)  # left over from an interrupted run
        Base.metadata.create_all(shards)
        try:
            shard_key_routing(shards)
            chooser_routing(shards)
        finally:
            Base.metadata.drop_all(shards)
    print("routing: ok")


if __name__ == "__main__":
    main()
