"""SQLAlchemy's ORM behaviour on shards: the data bugs of the first edition stay fixed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String, func, select, update
from sqlalchemy.orm import Mapped, mapped_column, relationship

import shardsession as ss

from .models import Base, Item, Node, Tenant, User


class Husband(Base):
    __tablename__ = "husband"
    id: Mapped[int] = mapped_column(primary_key=True)
    wife: Mapped[Wife | None] = relationship(back_populates="husband", uselist=False)


class Wife(Base):
    __tablename__ = "wife"
    id: Mapped[int] = mapped_column(primary_key=True)
    husband_id: Mapped[int | None] = mapped_column(ForeignKey("husband.id"))
    name: Mapped[str] = mapped_column(String(20), default="w")
    husband: Mapped[Husband | None] = relationship(back_populates="wife")


def test_self_referential_tree_flushed_together_keeps_its_keys(session: ss.Session) -> None:
    root = Node(name="root", children=[Node(name="a"), Node(name="b", children=[Node(name="c")])])
    session.add(root)
    session.commit()
    session.expunge_all()
    rows = session.execute(select(Node.name, Node.parent_id).order_by(Node.name)).all()
    ids = dict(session.execute(select(Node.name, Node.id)).all())
    assert rows == [("a", ids["root"]), ("b", ids["root"]), ("c", ids["b"]), ("root", None)]


def test_make_transient_of_an_expired_object_keeps_the_new_value(session: ss.Session) -> None:
    session.add(Tenant(id=3, name="old"))
    session.commit()  # expires the object
    tenant = session.get(Tenant, 3)
    session.expire(tenant)
    ss.make_transient(tenant)
    tenant.id = 4
    tenant.name = "copy"
    session.add(tenant)
    session.commit()
    assert sorted(session.execute(select(Tenant.id, Tenant.name)).all()) == [
        (3, "old"), (4, "copy")
    ]  # fmt: skip


def test_bulk_update_by_primary_key_touches_only_those_rows(session: ss.Session) -> None:
    session.add_all([Item(id=i, x=0, name="n") for i in range(12)])
    session.commit()
    session.execute(update(Item), [{"id": 2, "x": 20}, {"id": 7, "x": 70}])
    session.commit()
    assert dict(session.execute(select(Item.id, Item.x).where(Item.x != 0)).all()) == {
        2: 20, 7: 70
    }  # fmt: skip
    assert session.scalar(select(func.count()).where(Item.x == 0)) == 10


def test_one_to_one_back_reference_is_replaced(shards: ss.ShardSet, session: ss.Session) -> None:
    Base.metadata.create_all(shards, tables=[Husband.__table__, Wife.__table__])
    h = Husband(id=1)
    w1, w2 = Wife(id=1), Wife(id=2)
    h.wife = w1
    h.wife = w2
    assert w1.husband is None and w2.husband is h
    session.add_all([h, w1, w2])
    session.commit()
    assert session.scalar(select(Wife.husband_id).where(Wife.id == 1)) is None
    assert session.scalar(select(Wife.husband_id).where(Wife.id == 2)) == 1


def test_group_by_an_entity_runs(session: ss.Session) -> None:
    tenants = [Tenant(id=t, name=f"t{t}") for t in range(6)]
    session.add_all(tenants)
    session.commit()
    got = session.scalars(select(Tenant).group_by(Tenant).order_by(Tenant.id)).all()
    assert [t.id for t in got] == list(range(6))
    names = [(t.name, n) for t, n in session.execute(
        select(Tenant, func.count(User.id)).outerjoin(Tenant.users).group_by(Tenant)
        .order_by(Tenant.id), bind_arguments={"shard_id": "s0"})]  # fmt: skip
    assert all(n == 0 for _, n in names)


def test_selectin_and_lazy_loads_go_to_the_parents_shard(session: ss.Session,
                                                         shards: ss.ShardSet) -> None:  # fmt: skip
    for t in range(8):
        session.add(Tenant(id=t, name=f"t{t}", users=[User(id=10 * t + k, name="u")
                                                       for k in range(3)]))  # fmt: skip
    session.commit()
    session.expunge_all()
    statements: list[str] = []

    def count(conn: Any, *args: Any) -> None:
        statements.append(args[1])

    for engine in shards.values():
        ss.event.listen(engine, "before_cursor_execute", count)
    try:
        tenants = session.scalars(
            select(Tenant).options(ss.selectinload(Tenant.users)).order_by(Tenant.id)
        ).all()
        assert [[u.id for u in t.users] for t in tenants] == [
            [10 * t + k for k in range(3)] for t in range(8)
        ]
        # one selectin query per shard holding tenants, each on that shard only
        selectin = [st for st in statements if "FROM co_user" in st]
        assert len(selectin) == len(shards)
    finally:
        for engine in shards.values():
            ss.event.remove(engine, "before_cursor_execute", count)
    user = session.get(User, 31)
    assert user.tenant.name == "t3"


def test_queries_during_a_flush_do_not_flush_again(session: ss.Session) -> None:
    # A query over every shard from a flush event: SQLAlchemy does not autoflush
    # while flushing, and neither may the broadcast.
    seen: list[int] = []

    def count_items(sess: Any, flush_context: Any) -> None:
        seen.append(sess.scalar(select(func.count()).select_from(Item)))

    ss.event.listen(session, "after_flush", count_items)
    session.add_all([Item(id=i, x=i, name="n") for i in range(6)])
    session.commit()
    assert seen == [6]  # the flush's rows, seen by its own transaction on every shard
    session.add(Tenant(id=1, name="one", users=[User(id=1, name="u")]))
    session.flush()
    session.delete(session.get(Tenant, 1))  # the cascade loads users during the flush
    assert session.execute(select(Tenant).where(Tenant.name == "zed")).first() is None
    session.commit()
    assert session.scalar(select(func.count()).select_from(Tenant)) == 0


def test_orm_insert_statements_go_to_their_rows_shards(session: ss.Session,
                                                       direct: Any) -> None:  # fmt: skip
    from shardsession.coordinator.routing import shard_for_key

    session.execute(ss.insert(Item), {"id": 1, "x": 1, "name": "one"})
    session.execute(ss.insert(Item), [{"id": i, "x": i, "name": "many"} for i in range(2, 30)])
    session.execute(ss.insert(Item), [{"id": 31, "x": 31, "name": "pinned"}],
                    bind_arguments={"shard_id": "s2"})  # fmt: skip
    session.commit()
    names = list(session.shards)
    for shard, engine in direct.items():
        with engine.connect() as conn:
            ids = {r[0] for r in conn.execute(ss.text("SELECT id FROM co_item"))}
        expected = {i for i in range(1, 30) if shard_for_key(names, i) == shard}
        assert ids == expected | ({31} if shard == "s2" else set())


def test_empty_in_on_the_shard_key_returns_nothing(session: ss.Session) -> None:
    session.add(Item(id=1, x=1, name="a"))
    session.commit()
    assert session.scalars(select(Item).where(Item.id.in_([]))).all() == []


def test_joined_eager_collections_merge_in_order(session: ss.Session) -> None:
    for t in range(6):
        session.add(Tenant(id=t, name=f"t{t}", users=[User(id=10 * t + k, name="u")
                                                       for k in range(t % 3)]))  # fmt: skip
    session.commit()
    session.expunge_all()
    tenants = (
        session.scalars(
            select(Tenant).options(ss.joinedload(Tenant.users)).order_by(Tenant.id.desc())
        )
        .unique()
        .all()
    )
    assert [t.id for t in tenants] == [5, 4, 3, 2, 1, 0]
    assert [[u.id for u in t.users] for t in tenants] == [
        [10 * t + k for k in range(t % 3)] for t in (5, 4, 3, 2, 1, 0)
    ]


def test_new_objects_are_inserted_in_one_batch_per_shard(session: ss.Session,
                                                         shards: ss.ShardSet) -> None:  # fmt: skip
    statements: list[tuple[int, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool
               ) -> None:  # fmt: skip
        if statement.startswith("INSERT"):
            statements.append((id(conn.engine), many))

    for engine in shards.values():
        ss.event.listen(engine, "before_cursor_execute", record)
    try:
        session.add_all([Item(id=i, x=i, name="n") for i in range(400)])  # keys alternate shards
        session.commit()
    finally:
        for engine in shards.values():
            ss.event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == len(shards) and all(many for _, many in statements)
    assert session.scalar(select(func.count()).select_from(Item)) == 400
