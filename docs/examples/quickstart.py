"""Getting started: a model routed by its shard key, a two-phase commit, queries over every shard.

Run it with ``python docs/examples/quickstart.py``.  It starts a temporary local
PostgreSQL cluster with four shard databases (``s0`` ... ``s3``) and removes it at
the end; with your own servers, pass their DSNs to ``create_pool`` instead.
"""

from __future__ import annotations

import shardsession as ss
from shardsession import ForeignKey, Mapped, String, mapped_column, relationship
from shardsession.embedded import LocalCluster


class Base(ss.DeclarativeBase):
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
    __shard_key__ = "customer_id"  # an order lives on its customer's shard

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    amount: Mapped[int]
    customer: Mapped[Customer] = relationship(back_populates="orders")


def run(pool: ss.WorkerPool) -> None:
    Base.metadata.create_all(pool)  # every table on every shard

    with ss.Session(pool) as session:
        countries = ["DE", "FR", "NL", "SE"]
        for n in range(1, 21):
            session.add(Customer(id=n, name=f"customer {n}", country=countries[n % 4]))
            # The shard key is set explicitly: it routes the order before the flush.
            session.add(Order(id=100 + n, customer_id=n, amount=10 * n))
        session.commit()  # several shards were written: a two-phase commit

        # Each object remembers its shard: its identity token.
        placed: dict[str, int] = {}
        for customer in session.scalars(ss.select(Customer)):
            token = ss.inspect(customer).identity_token
            placed[token] = placed.get(token, 0) + 1
        print("customers per shard:", dict(sorted(placed.items())))
        assert sum(placed.values()) == 20 and len(placed) > 1

        # A query over every shard: each sorts and limits, the coordinator merges.
        top = session.scalars(ss.select(Order).order_by(Order.amount.desc()).limit(3)).all()
        print("largest orders:", [order.amount for order in top])
        assert [order.amount for order in top] == [200, 190, 180]

        # Aggregates are combined across shards.
        total, average = session.execute(
            ss.select(ss.func.sum(Order.amount), ss.func.avg(Order.amount))
        ).one()
        print("total:", total, "average:", float(average))
        assert total == sum(10 * n for n in range(1, 21)) and float(average) == 105.0

        per_country = session.execute(
            ss.select(Customer.country, ss.func.count())
            .group_by(Customer.country)
            .order_by(Customer.country)
        ).all()
        print("customers per country:", [tuple(row) for row in per_country])
        assert [tuple(row) for row in per_country] == [("DE", 5), ("FR", 5), ("NL", 5), ("SE", 5)]

    with ss.Session(pool) as session:
        # The primary key holds the shard key: get() asks only that customer's shard.
        customer = session.get(Customer, 7)
        # A relationship loads from the shard of the object it starts from.
        print(customer.name, "ordered", [order.amount for order in customer.orders])
        assert [order.id for order in customer.orders] == [107]

        customer.orders[0].amount += 1  # one shard written: a plain one-phase commit
        session.commit()
        assert session.scalar(ss.select(Order.amount).where(Order.id == 107)) == 71


def main() -> None:
    with LocalCluster(shards=4, temporary=True) as cluster:
        with ss.create_pool(cluster.dsns, workers_per_shard=2) as pool:
            run(pool)
    print("quickstart: ok")


if __name__ == "__main__":
    main()
