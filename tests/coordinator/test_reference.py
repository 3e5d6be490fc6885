"""Reference tables: written on every shard in one transaction, read from one, joined
locally with sharded rows, one object per row in a session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from shardsession.coordinator.routing import shard_for_key
from sqlalchemy import ForeignKey, String, delete, func, insert, inspect, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    column_property,
    joinedload,
    mapped_column,
    query_expression,
    relationship,
    selectinload,
    with_expression,
)
from sqlalchemy.orm import Session as PlainSession

import shardsession as ss
from shardsession.twophase import COMMIT_LOG


class Base(DeclarativeBase):
    pass


class Country(Base):
    """A reference table marked on the class."""

    __tablename__ = "rf_country"
    __shard_key__ = ss.REPLICATED
    code: Mapped[str] = mapped_column(String(2), primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    customer_count: Mapped[int | None] = query_expression()
    customers: Mapped[list[Customer]] = relationship(
        back_populates="country", order_by="Customer.id"
    )


class Product(Base):
    """A reference table marked on the table."""

    __tablename__ = "rf_product"
    __table_args__ = {"info": {"shardsession": "reference"}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    price: Mapped[int]


class Customer(Base):
    __tablename__ = "rf_customer"
    __shard_key__ = "id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    country_code: Mapped[str] = mapped_column(ForeignKey("rf_country.code"))
    country: Mapped[Country] = relationship(back_populates="customers")
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Base):
    """No shard key: follows its customer, never its product (declared first)."""

    __tablename__ = "rf_order"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    product_id: Mapped[int] = mapped_column(ForeignKey("rf_product.id"))
    product: Mapped[Product] = relationship()
    customer_id: Mapped[int] = mapped_column(ForeignKey("rf_customer.id"))
    customer: Mapped[Customer] = relationship(back_populates="orders")
    quantity: Mapped[int]


class Badge(Base):
    """A reference table that (wrongly) points at a sharded row."""

    __tablename__ = "rf_badge"
    __shard_key__ = ss.REPLICATED
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    holder_id: Mapped[int | None] = mapped_column(ForeignKey("rf_customer.id"))
    holder: Mapped[Customer | None] = relationship()


COUNTRIES = [("DE", "Germany"), ("FR", "France"), ("IT", "Italy"), ("JP", "Japan")]
PRODUCTS = [(1, "pen", 3), (2, "ink", 7), (3, "pad", 5), (4, "cap", 8), (5, "nib", 2)]


@pytest.fixture(scope="module")
def ref_shards(shards: ss.ShardSet) -> Iterator[ss.ShardSet]:
    Base.metadata.drop_all(shards)
    Base.metadata.create_all(shards)
    yield shards
    Base.metadata.drop_all(shards)


@pytest.fixture
def s(ref_shards: ss.ShardSet, clean_shards: dict[str, str]) -> Iterator[ss.Session]:
    with ss.Session(ref_shards) as sess:
        yield sess


def _rows(direct: dict[str, Any], sql: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for shard, engine in direct.items():
        with engine.connect() as conn:
            out[shard] = [tuple(r) for r in conn.execute(text(sql))]
    return out


def _load(s: ss.Session) -> None:
    """Countries, products, 40 customers over the 4 shards, 80 orders."""
    s.add_all([Country(code=c, name=n) for c, n in COUNTRIES])
    s.add_all([Product(id=i, name=n, price=p) for i, n, p in PRODUCTS])
    s.flush()
    for i in range(1, 41):
        customer = Customer(id=i, name=f"c{i:02d}", country_code=COUNTRIES[i % 3][0])
        customer.orders = [
            Order(id=2 * i + k, product_id=1 + (i * 3 + k) % 5, quantity=1 + (i + k) % 4)
            for k in range(2)
        ]
        s.add(customer)
    s.commit()


def test_a_reference_row_is_written_on_every_shard_and_read_from_one(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    s.add_all([Country(code=c, name=n) for c, n in COUNTRIES])
    s.commit()
    expected = sorted(COUNTRIES)
    assert _rows(direct, "SELECT code, name FROM rf_country ORDER BY code") == {
        shard: expected for shard in direct
    }
    # read from one shard: each row once, counted once
    assert [c.code for c in s.scalars(select(Country).order_by(Country.code))] == [
        c for c, _ in expected
    ]
    assert s.scalar(select(func.count()).select_from(Country)) == len(COUNTRIES)
    # changed and deleted on every shard, in one two-phase commit
    s.get(Country, "FR").name = "République française"
    s.delete(s.get(Country, "JP"))
    s.commit()
    assert _rows(direct, "SELECT code, name FROM rf_country ORDER BY code") == {
        shard: [("DE", "Germany"), ("FR", "République française"), ("IT", "Italy")]
        for shard in direct
    }
    decisions = _rows(direct, f"SELECT participants FROM {COMMIT_LOG}")
    assert sorted(decisions["s0"][-1][0]) == sorted(direct)  # every shard took part


def test_bulk_and_core_writes_reach_every_shard_with_one_database_rowcounts(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    s.execute(insert(Product), [{"id": i, "name": n, "price": p} for i, n, p in PRODUCTS])
    s.execute(insert(Product.__table__).values(id=6, name="box", price=9))
    raised = s.execute(update(Product).where(Product.price >= 5).values(price=Product.price + 1))
    assert raised.rowcount == 4  # as one database says, not once per shard
    s.execute(update(Product), [{"id": 1, "price": 30}, {"id": 5, "price": 50}])
    gone = s.execute(delete(Product.__table__).where(Product.__table__.c.name == "pad"))
    assert gone.rowcount == 1
    # naming a shard, or using a shard's connection of the session, still writes all
    s.execute(update(Product).where(Product.id == 6).values(name="crate"),
              bind_arguments={"shard_id": "s2"})  # fmt: skip
    s.connection(bind_arguments={"shard_id": "s3"}).execute(
        insert(Product.__table__).values(id=7, name="tag", price=1)
    )
    s.commit()
    expected = [(1, "pen", 30), (2, "ink", 8), (4, "cap", 9), (5, "nib", 50),
                (6, "crate", 10), (7, "tag", 1)]  # fmt: skip
    assert _rows(direct, "SELECT id, name, price FROM rf_product ORDER BY id") == {
        shard: expected for shard in direct
    }
    assert [tuple(r) for r in s.execute(select(Product.id, Product.price).order_by(Product.id))
            ] == [(i, p) for i, _, p in expected]  # fmt: skip


def test_get_and_selects_of_reference_rows_read_the_first_shard_only(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    s.add_all([Country(code=c, name=n) for c, n in COUNTRIES])
    s.commit()
    for shard in ("s1", "s2", "s3"):  # the other copies differ: only s0 may be read
        with direct[shard].begin() as conn:
            conn.execute(text("UPDATE rf_country SET name = 'elsewhere'"))
    s.expunge_all()
    fr = s.get(Country, "FR")
    assert fr.name == "France"
    assert inspect(fr).identity_token == "s0"
    assert s.scalars(select(Country.name).where(Country.code.in_(["DE", "IT"]))).all() == [
        "Germany",
        "Italy",
    ]


def test_join_with_a_reference_table_across_shards_matches_one_database(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    _load(s)
    assert len({shard_for_key(list(direct), i) for i in range(1, 41)}) == 4
    statements = [
        select(Customer.id, Customer.name, Country.name)
        .join(Customer.country)
        .where(Country.code != "DE")
        .order_by(Country.name, Customer.id.desc())
        .offset(3)
        .limit(10),
        select(Country.name, func.count(Order.id), func.sum(Order.quantity * Product.price))
        .select_from(Order)
        .join(Order.customer)
        .join(Customer.country)
        .join(Order.product)
        .group_by(Country.name)
        .order_by(Country.name),
        select(Order.id, Product.name)
        .join(Order.product)
        .order_by(Product.price.desc(), Order.id)
        .limit(7),
        select(Country.code).join(Country.customers).distinct().order_by(Country.code),
    ]
    sharded = [[tuple(r) for r in s.execute(stmt)] for stmt in statements]
    # the same rows in one database: a schema of s0's database
    with direct["s0"].begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS rf_one CASCADE"))
        conn.execute(text("CREATE SCHEMA rf_one"))
        one = conn.execution_options(schema_translate_map={None: "rf_one"})
        Base.metadata.create_all(one)
        for cls in (Country, Product, Customer, Order):
            rows = [dict(r._mapping) for r in s.execute(select(cls.__table__))]
            one.execute(insert(cls.__table__), rows)
    try:
        with direct["s0"].connect() as conn:
            one = conn.execution_options(schema_translate_map={None: "rf_one"})
            with PlainSession(one) as plain:
                expected = [[tuple(r) for r in plain.execute(stmt)] for stmt in statements]
    finally:
        with direct["s0"].begin() as conn:
            conn.execute(text("DROP SCHEMA rf_one CASCADE"))
    assert expected[0] and expected[1] and expected[2]
    assert sharded == expected
    # each reference row once per match, not once per shard
    assert sum(n for _, n, _ in sharded[1]) == 80
    assert [c for (c,) in sharded[3]] == ["DE", "FR", "IT"]


def test_a_reference_row_is_one_object_whichever_shard_it_is_read_through(
    s: ss.Session,
) -> None:
    _load(s)
    s.expunge_all()
    pairs = s.execute(select(Customer, Country).join(Customer.country)).all()
    assert len({shard for c, _ in pairs for shard in [inspect(c).identity_token]}) == 4
    by_code: dict[str, set[int]] = {}
    for _, country in pairs:
        by_code.setdefault(country.code, set()).add(id(country))
        assert inspect(country).identity_token == "s0"
    assert all(len(objects) == 1 for objects in by_code.values())
    france = s.get(Country, "FR")
    france.name = "changed in memory"
    customers = s.scalars(select(Customer).where(Customer.country_code == "FR")).all()
    assert {inspect(c).identity_token for c in customers} == set(s.shards)
    assert all(c.country is france for c in customers)  # lazy loads on every shard
    assert sum(1 for key in s.identity_map.keys() if key[0] is Country) == 3
    # a reference object's collection of sharded objects spans every shard
    expected = sorted(c.id for c in customers)
    assert [c.id for c in france.customers] == expected
    s.expunge_all()
    loaded = s.scalars(select(Country).options(selectinload(Country.customers))).all()
    assert sorted(c.id for c in next(x for x in loaded if x.code == "FR").customers) == expected
    with pytest.raises(ss.exc.CrossShardError, match=r"joinedload\(\) of sharded"):
        s.scalars(select(Country).options(joinedload(Country.customers))).unique().all()


def test_reference_and_sharded_writes_commit_together_or_not_at_all(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    _load(s)
    names = list(direct)
    a = next(i for i in range(1, 41) if shard_for_key(names, i) == "s0")
    b = next(i for i in range(1, 41) if shard_for_key(names, i) == "s1")
    # On s3 only (not the commit point, written by nothing but the reference update),
    # a deferred constraint makes PREPARE TRANSACTION fail.
    with direct["s3"].begin() as conn:
        conn.execute(text("ALTER TABLE rf_product ADD CONSTRAINT rf_price_once UNIQUE (price) "
                          "DEFERRABLE INITIALLY DEFERRED"))  # fmt: skip
    try:
        s.get(Customer, a).name = "renamed"
        s.get(Customer, b).name = "renamed"
        s.get(Product, 1).price = 2  # the price of product 5 too
        with pytest.raises(ss.exc.TwoPhaseError, match=r"'s3'.*rolled back"):
            s.commit()
        s.rollback()
    finally:
        with direct["s3"].begin() as conn:
            conn.execute(text("ALTER TABLE rf_product DROP CONSTRAINT rf_price_once"))
    assert _rows(direct, "SELECT price FROM rf_product WHERE id = 1") == {
        shard: [(3,)] for shard in direct
    }
    renamed = _rows(direct, "SELECT id FROM rf_customer WHERE name = 'renamed'")
    assert all(rows == [] for rows in renamed.values())
    prepared = _rows(direct, "SELECT count(*) FROM pg_prepared_xacts "
                     "WHERE database = current_database()")  # fmt: skip
    assert all(rows == [(0,)] for rows in prepared.values())
    # the same transaction without the constraint commits on every shard
    s.get(Customer, a).name = "renamed"
    s.get(Product, 1).price = 2
    s.commit()
    assert _rows(direct, "SELECT price FROM rf_product WHERE id = 1") == {
        shard: [(2,)] for shard in direct
    }
    assert _rows(direct, f"SELECT name FROM rf_customer WHERE id = {a}")["s0"] == [("renamed",)]


def test_copies_that_diverged_are_refused_naming_the_shards(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    s.add_all([Country(code=c, name=n) for c, n in COUNTRIES])
    s.commit()
    with direct["s2"].begin() as conn:
        conn.execute(text("DELETE FROM rf_country WHERE code = 'FR'"))
    s.get(Country, "FR").name = "Frankreich"
    with pytest.raises(ss.exc.ReferenceDivergedError, match=r"\['s2'\] differ") as caught:
        s.flush()
    assert "rf_country" in str(caught.value)
    s.rollback()
    with pytest.raises(ss.exc.ReferenceDivergedError, match=r"\['s2'\] differ"):
        s.execute(update(Country).where(Country.code.in_(["FR", "DE"])).values(name="x"))
    s.rollback()
    assert _rows(direct, "SELECT name FROM rf_country WHERE code = 'FR'") == {
        "s0": [("France",)], "s1": [("France",)], "s2": [], "s3": [("France",)],
    }  # fmt: skip


def test_a_write_inside_a_rolled_back_savepoint_is_undone_on_every_shard(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    s.add(Product(id=1, name="pen", price=3))
    s.commit()
    s.get(Product, 1).price = 4
    s.flush()
    nested = s.begin_nested()
    s.add(Product(id=2, name="ink", price=7))
    s.get(Product, 1).price = 5
    s.flush()
    nested.rollback()
    s.commit()
    assert _rows(direct, "SELECT id, price FROM rf_product ORDER BY id") == {
        shard: [(1, 4)] for shard in direct
    }


def test_sharded_objects_refer_to_reference_rows_but_are_not_placed_by_them(
    s: ss.Session, direct: dict[str, Any]
) -> None:
    names = list(direct)
    cid = next(i for i in range(1, 100) if shard_for_key(names, i) != names[0])
    pen = Product(id=1, name="pen", price=3)
    customer = Customer(id=cid, name="far", country=Country(code="FR", name="France"))
    s.add(Order(id=1, product=pen, customer=customer, quantity=2))
    s.commit()  # no cross-shard link error: the product is on every shard
    where = _rows(direct, "SELECT id FROM rf_order")
    assert [shard for shard, rows in where.items() if rows] == [shard_for_key(names, cid)]
    s.add(Badge(id=1, holder=customer))
    with pytest.raises(ss.exc.CrossShardError, match=r"Badge\.holder"):
        s.flush()


def test_statements_that_cannot_be_exact_over_reference_rows_raise(s: ss.Session) -> None:
    _load(s)
    with pytest.raises(ss.exc.CrossShardError, match="LEFT OUTER JOIN"):
        s.execute(select(Country.code, Customer.id).outerjoin(Country.customers))
    with pytest.raises(ss.exc.CrossShardError, match="subquery"):
        s.execute(select(Country).where(Country.code.in_(select(Customer.country_code))))
    per_country = (
        select(func.count(Customer.id))
        .where(Customer.country_code == Country.code)
        .scalar_subquery()
    )
    with pytest.raises(ss.exc.CrossShardError, match="with_expression"):
        s.scalars(select(Country).options(with_expression(Country.customer_count, per_country)))
    with pytest.raises(ss.exc.CrossShardError, match="copies would differ"):
        s.execute(
            update(Country)
            .where(Country.code.in_(select(Customer.country_code)))
            .values(name="has customers")
        )
    s.rollback()


def test_reference_writes_need_a_two_phase_session(
    ref_shards: ss.ShardSet, clean_shards: Any, direct: dict[str, Any]
) -> None:
    with ss.Session(ref_shards, twophase=False) as s:
        s.add(Country(code="FR", name="France"))
        with pytest.raises(ss.exc.CrossShardError, match="twophase"):
            s.commit()
    assert _rows(direct, "SELECT code FROM rf_country") == {shard: [] for shard in direct}


def test_a_reference_class_may_not_compute_columns_from_sharded_rows(s: ss.Session) -> None:
    class Other(DeclarativeBase):
        pass

    class Region(Other):
        __tablename__ = "rf_region"
        __shard_key__ = ss.REPLICATED
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        customers = column_property(select(func.count(Customer.__table__.c.id)).scalar_subquery())

    s.add(Region(id=1))
    with pytest.raises(ss.exc.ArgumentError, match=r"Region.customers reads sharded"):
        s.flush()


def test_a_joined_collection_of_a_reference_object_in_a_scattered_query_raises(
    s: ss.Session,
) -> None:
    # Every shard would fill the one Country's collection with its own customers only.
    _load(s)
    s.expunge_all()
    fanout = select(Customer).options(joinedload(Customer.country).joinedload(Country.customers))
    with pytest.raises(ss.exc.CrossShardError, match=r"selectinload\(\)"):
        s.scalars(fanout).unique().all()
    # the many-to-one itself joins fine, and selectinload() reads every shard
    s.rollback()
    safe = select(Customer).options(joinedload(Customer.country).selectinload(Country.customers))
    customers = s.scalars(safe).unique().all()
    france = next(c.country for c in customers if c.country_code == "FR")
    assert sorted(c.id for c in france.customers) == sorted(
        c.id for c in customers if c.country_code == "FR"
    )
