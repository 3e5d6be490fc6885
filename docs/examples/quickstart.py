"""Getting started: SQLAlchemy models over four shards, a two-phase commit, merged queries.

Run it with ``python docs/examples/quickstart.py``.  It starts a temporary local
PostgreSQL cluster with four shard databases (``s0`` ... ``s3``) and removes it at
the end; with your own servers, pass their DSNs to ``ss.create_shards`` instead.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import shardsession as ss
from shardsession.embedded import LocalCluster


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customer"
    __shard_key__ = "id"  # the customer's id chooses its shard

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    country: Mapped[str] = mapped_column(String(2))
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")


class Order(Base):
    __tablename__ = "customer_order"
    # No __shard_key__: an order goes to the shard of the customer it belongs to.

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    amount: Mapped[int]
    customer: Mapped[Customer] = relationship(back_populates="orders")


def run(shards: ss.ShardSet) -> None:
    Base.metadata.create_all(shards)  # every table on every shard
    Session = ss.sessionmaker(shards)

    with Session() as session:
        countries = ["DE", "FR", "NL", "SE"]
        for n in range(1, 21):
            customer = Customer(id=n, name=f"customer {n}", country=countries[n % 4])
            customer.orders.append(Order(id=100 + n, amount=10 * n))
            session.add(customer)
        session.commit()  # several shards were written: a two-phase commit

        # Each object remembers its shard: its identity token.
        placed: dict[str, int] = {}
        for customer in session.scalars(select(Customer)):
            token = inspect(customer).identity_token
            placed[token] = placed.get(token, 0) + 1
        print("customers per shard:", dict(sorted(placed.items())))
        assert sum(placed.values()) == 20 and len(placed) > 1

        # A query over every shard: each sorts and limits, the rows are merged.
        top = session.scalars(select(Order).order_by(Order.amount.desc()).limit(3)).all()
        print("largest orders:", [order.amount for order in top])
        assert [order.amount for order in top] == [200, 190, 180]
        # Every order was written next to its customer.
        assert all(inspect(o).identity_token == inspect(o.customer).identity_token for o in top)

        # Aggregates are combined across shards.
        total, average = session.execute(
            select(func.sum(Order.amount), func.avg(Order.amount))
        ).one()
        print("total:", total, "average:", float(average))
        assert total == sum(10 * n for n in range(1, 21)) and float(average) == 105.0

        per_country = session.execute(
            select(Customer.country, func.count())
            .group_by(Customer.country)
            .order_by(Customer.country)
        ).all()
        print("customers per country:", [tuple(row) for row in per_country])
        assert [tuple(row) for row in per_country] == [("DE", 5), ("FR", 5), ("NL", 5), ("SE", 5)]

    with Session() as session:
        # The primary key is the shard key: get() asks only that customer's shard.
        customer = session.get(Customer, 7)
        assert customer is not None
        # A relationship loads from the shard of the object it starts from.
        print(customer.name, "ordered", [order.amount for order in customer.orders])
        assert [order.id for order in customer.orders] == [107]

        customer.orders[0].amount += 1  # one shard written: a plain one-phase commit
        session.commit()
        assert session.scalar(select(Order.amount).where(Order.id == 107)) == 71


def main() -> None:
    with LocalCluster(shards=4, temporary=True) as cluster:
        with ss.create_shards(cluster.dsns, pool_size=2) as shards:
            run(shards)
    print("quickstart: ok")


if __name__ == "__main__":
    main()
