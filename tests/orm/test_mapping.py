"""Declarative mapping: tables, columns, type inference, constructor, Mapper API."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from typing import Annotated, Optional

import pytest

from shardsession import exc
from shardsession.orm import (
    ColumnProperty,
    DeclarativeBase,
    InstrumentedAttribute,
    Mapped,
    Mapper,
    inspect,
    mapped_column,
    relationship,
)
from shardsession.sql import Column, ForeignKey, Index, MetaData, Table, UniqueConstraint
from shardsession.sql import types as t
from tests.orm.models import Address, Base, User


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


str30 = Annotated[str, mapped_column(t.String(30))]
intpk = Annotated[int, mapped_column(primary_key=True)]


def new_base() -> type[DeclarativeBase]:
    class B(DeclarativeBase):
        pass

    return B


def test_string_annotations_resolve_and_make_columns() -> None:
    table = User.__table__
    assert [c.name for c in table.columns] == ["id", "tenant", "name", "created", "data"]
    assert isinstance(table.c.id.type, t.Integer)
    assert isinstance(table.c.tenant.type, t.String)
    assert isinstance(table.c.name.type, t.String) and table.c.name.type.length == 50
    assert isinstance(table.c.created.type, t.DateTime)
    assert isinstance(table.c.data.type, t.JSON)
    assert table.metadata is Base.metadata
    assert User.__mapper__ is inspect(User)


def test_nullability_from_annotations() -> None:
    c = User.__table__.c
    assert c.id.nullable is False and c.id.primary_key
    assert c.tenant.nullable is False  # Mapped[str]
    assert c.name.nullable is True  # Mapped[str | None]
    assert c.created.nullable is True  # Mapped[Optional[datetime]]


def test_type_inference_for_python_types() -> None:
    B = new_base()

    class Thing(B):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        f: Mapped[float]
        b: Mapped[bool]
        d: Mapped[datetime.date]
        dt: Mapped[datetime.datetime]
        tm: Mapped[datetime.time]
        td: Mapped[datetime.timedelta]
        n: Mapped[decimal.Decimal]
        u: Mapped[uuid.UUID]
        raw: Mapped[bytes]
        color: Mapped[Color]
        opt: Mapped[Optional[int]]  # noqa: UP045
        pipe: Mapped[None | str]  # noqa: RUF036
        forced: Mapped[int | None] = mapped_column(nullable=False)
        loose: Mapped[int] = mapped_column(nullable=True)

    c = Thing.__table__.c
    expected = {
        "f": t.Float,
        "b": t.Boolean,
        "d": t.Date,
        "dt": t.DateTime,
        "tm": t.Time,
        "td": t.Interval,
        "n": t.Numeric,
        "u": t.Uuid,
        "raw": t.LargeBinary,
        "color": t.Enum,
        "opt": t.Integer,
        "pipe": t.String,
    }
    for name, type_cls in expected.items():
        assert isinstance(c[name].type, type_cls), name
    assert c.opt.nullable and c.pipe.nullable
    assert not c.f.nullable
    assert c.forced.nullable is False
    assert c.loose.nullable is True


def test_type_annotation_map_and_annotated() -> None:
    class B(DeclarativeBase):
        type_annotation_map = {str: t.String(20)}

    class Thing(B):
        __tablename__ = "things"
        id: Mapped[intpk]
        a: Mapped[str]
        b: Mapped[str30]
        c: Mapped[Optional[str30]]  # noqa: UP045

    cols = Thing.__table__.c
    assert cols.id.primary_key
    assert cols.a.type.length == 20
    assert cols.b.type.length == 30 and not cols.b.nullable
    assert cols.c.type.length == 30 and cols.c.nullable


def test_explicit_name_type_and_column_options() -> None:
    B = new_base()

    class Thing(B):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column("thing_id", primary_key=True)
        label = mapped_column(t.String(10), unique=True, index=True, default="x")
        note: Mapped[str] = mapped_column(type_=t.Text, server_default="n")
        classic = Column(t.Integer)

    cols = Thing.__table__.c
    assert cols.thing_id.primary_key
    assert inspect(Thing).get_property("id").columns[0] is cols.thing_id
    assert cols.label.unique and cols.label.index and cols.label.default.arg == "x"
    assert isinstance(cols.note.type, t.Text) and cols.note.server_default == "n"
    assert isinstance(cols.classic.type, t.Integer)
    th = Thing(id=1, label="a", note="b", classic=3)
    assert th.__dict__["id"] == 1 and th.classic == 3


def test_column_order_follows_declaration() -> None:
    B = new_base()

    class Thing(B):
        __tablename__ = "things"
        id = mapped_column(t.Integer, primary_key=True)
        a: Mapped[int]
        b: Mapped[int] = mapped_column()
        c: Mapped[int]

    assert [c.name for c in Thing.__table__.columns] == ["id", "a", "b", "c"]


def test_composite_primary_key_and_identity_key() -> None:
    B = new_base()

    class Pair(B):
        __tablename__ = "pairs"
        a: Mapped[int] = mapped_column(primary_key=True)
        b: Mapped[str] = mapped_column(primary_key=True)
        v: Mapped[str | None]

    m = inspect(Pair)
    assert [c.name for c in m.primary_key] == ["a", "b"]
    p = Pair(a=1, b="x")
    assert m.primary_key_from_instance(p) == (1, "x")
    assert m.identity_key_from_instance(p) == (Pair, (1, "x"), None)
    assert m.identity_key_from_primary_key((1, "x"), "s2") == (Pair, (1, "x"), "s2")
    assert m.identity_key_from_primary_key(5) == (Pair, (5,), None)
    state = inspect(p)
    state._mark_persistent((Pair, (1, "x"), "s3"))
    assert m.identity_key_from_instance(p) == (Pair, (1, "x"), "s3")


def test_table_args_constraints_and_kwargs() -> None:
    B = new_base()

    class Thing(B):
        __tablename__ = "things"
        __table_args__ = (
            UniqueConstraint("a", "b", name="uq_ab"),
            Index("ix_b", "b"),
            {"schema": "app", "comment": "hello"},
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        a: Mapped[int]
        b: Mapped[int]

    table = Thing.__table__
    assert table.schema == "app" and table.comment == "hello"
    uqs = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    assert [c.name for c in uqs] == ["uq_ab"]
    assert [i.name for i in table.indexes] == ["ix_b"]

    class Other(B):
        __tablename__ = "others"
        __table_args__ = {"comment": "only kwargs"}
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Other.__table__.comment == "only kwargs"


def test_explicit_table() -> None:
    B = new_base()
    tbl = Table("raw", B.metadata, Column("id", t.Integer, primary_key=True), Column("x", t.String))

    class Raw(B):
        __table__ = tbl

    assert inspect(Raw).local_table is tbl
    r = Raw(id=1, x="a")
    assert r.x == "a"
    assert list(inspect(Raw).columns) == ["id", "x"]


def test_mixins_and_abstract_bases_get_fresh_columns() -> None:
    B = new_base()

    class Stamped:
        created: Mapped[datetime.datetime]
        owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"))

    class Abstract(B):
        __abstract__ = True
        id: Mapped[int] = mapped_column(primary_key=True)

    class Owner(B):
        __tablename__ = "owners"
        id: Mapped[int] = mapped_column(primary_key=True)

    class A(Stamped, Abstract):
        __tablename__ = "a"

    class C(Stamped, Abstract):
        __tablename__ = "c"

    assert [c.name for c in A.__table__.columns] == ["id", "created", "owner_id"]
    assert A.__table__.c.created is not C.__table__.c.created
    assert A.__table__.c.owner_id.foreign_keys[0].column is Owner.__table__.c.id
    with pytest.raises(exc.UnmappedClassError):
        inspect(Abstract)


def test_default_constructor() -> None:
    u = User(id=1, name="n")
    assert u.id == 1 and u.name == "n"
    with pytest.raises(TypeError, match="'bogus' is an invalid keyword argument for User"):
        User(bogus=1)


def test_user_defined_init_is_kept() -> None:
    B = new_base()

    class Thing(B):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        x: Mapped[int]

        def __init__(self, x: int) -> None:
            self.x = x * 2

    assert Thing(3).x == 6


def test_mapper_api() -> None:
    m = inspect(User)
    assert isinstance(m, Mapper)
    assert m.class_ is User and m.entity is User and m.mapper is m
    assert m.local_table is User.__table__ and m.persist_selectable is User.__table__
    assert list(m.columns) == ["id", "tenant", "name", "created", "data"]
    assert m.columns["name"] is User.__table__.c.name
    assert list(m.column_attrs) == ["id", "tenant", "name", "created", "data"]
    assert isinstance(m.column_attrs.name, ColumnProperty)
    assert list(m.relationships) == ["addresses"]
    assert list(m.attrs) == ["id", "tenant", "name", "created", "data", "addresses"]
    assert m.primary_key == (User.__table__.c.id,)
    assert m.get_property("name") is m.attrs["name"]
    assert m.get_property_by_column(User.__table__.c.name).key == "name"
    with pytest.raises(exc.InvalidRequestError, match="has no property 'nope'"):
        m.get_property("nope")
    assert m.shard_key == "tenant"
    assert m.shard_key_column is User.__table__.c.tenant
    assert inspect(Address).shard_key is None
    assert inspect(m) is m
    assert m.attrs.name.class_attribute is User.name


def test_shard_key_must_name_a_column_attribute() -> None:
    B = new_base()
    with pytest.raises(exc.ArgumentError, match="__shard_key__"):

        class Bad(B):
            __tablename__ = "bad"
            __shard_key__ = "nope"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_mapping_errors() -> None:
    B = new_base()
    with pytest.raises(exc.InvalidRequestError, match="__tablename__"):

        class NoTable(B):
            id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(exc.ArgumentError, match="primary key"):

        class NoPk(B):
            __tablename__ = "nopk"
            x: Mapped[int]

    with pytest.raises(exc.ArgumentError, match="annotation is required"):

        class NoType(B):
            __tablename__ = "notype"
            id = mapped_column(primary_key=True)

    with pytest.raises(exc.ArgumentError, match="Could not locate a column type"):

        class OddType(B):
            __tablename__ = "odd"
            id: Mapped[int] = mapped_column(primary_key=True)
            x: Mapped[object]

    with pytest.raises(exc.ArgumentError, match="Mapped"):

        class NotMapped(B):
            __tablename__ = "notmapped"
            id: int = mapped_column(primary_key=True)

    local_type = int
    with pytest.raises(exc.ArgumentError, match="Could not evaluate the annotation"):

        class LocalName(B):
            __tablename__ = "localname"
            id: Mapped[local_type] = mapped_column(primary_key=True)

    with pytest.raises(exc.ArgumentError, match="unsupported"):
        mapped_column(deferred=True)


def test_plain_attributes_and_classvars_are_not_mapped() -> None:
    B = new_base()

    class Thing(B):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: str = "plain"
        counter = 0

    assert list(inspect(Thing).attrs) == ["id"]
    assert Thing.label == "plain"


def test_inheriting_from_a_mapped_class_is_rejected() -> None:
    B = new_base()

    class Parent(B):
        __tablename__ = "parents"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(exc.InvalidRequestError, match="inheritance"):

        class Child(Parent):
            __tablename__ = "children"


def test_shared_metadata() -> None:
    md = MetaData()

    class B(DeclarativeBase):
        metadata = md

    class Thing(B):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert B.metadata is md and Thing.__table__.metadata is md
    assert B.registry.metadata is md


def test_instrumented_attribute_expression_side() -> None:
    col = User.__table__.c.name
    assert isinstance(User.name, InstrumentedAttribute)
    assert User.name.__clause_element__() is col
    expr = User.name == "x"
    assert expr.left is col and expr.operator == (col == "x").operator
    assert (User.id < 3).operator == (col < 3).operator
    assert (User.id != 3).left is User.__table__.c.id
    assert User.name.like("a%").left is col
    assert User.name.desc().modifier == col.desc().modifier
    assert User.name.desc().element is col
    assert User.id.in_([1, 2]).left is User.__table__.c.id
    joined = User.id == Address.user_id
    assert joined.left is User.__table__.c.id and joined.right is Address.__table__.c.user_id
    assert User.name.key == "name" and User.name.class_ is User
    assert User.name.property is inspect(User).attrs.name
    assert hash(User.name) == hash(User.name)
    with pytest.raises(AttributeError):
        User.name.no_such_method  # noqa: B018


def test_relationship_attribute_refuses_expression_use() -> None:
    with pytest.raises(exc.InvalidRequestError, match="relationship"):
        User.addresses.__clause_element__()
    with pytest.raises(AttributeError):
        User.addresses.like  # noqa: B018


def test_relationship_declared_with_class_and_lambda() -> None:
    B = new_base()

    class Parent(B):
        __tablename__ = "parents"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Child(B):
        __tablename__ = "children"
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id = mapped_column(ForeignKey("parents.id"))
        parent = relationship(Parent)
        parent2 = relationship(lambda: Parent, foreign_keys=lambda: [Child.parent_id])

    rels = inspect(Child).relationships
    assert rels.parent.mapper is inspect(Parent)
    assert rels.parent2.mapper is inspect(Parent)
    assert rels.parent.uselist is False
    assert isinstance(Child.__table__.c.parent_id.type, t.Integer)


def test_columns_declared_on_the_base_are_inherited() -> None:
    class B(DeclarativeBase):
        id: Mapped[int] = mapped_column(primary_key=True)

    class One(B):
        __tablename__ = "one"

    class Two(B):
        __tablename__ = "two"
        x: Mapped[int]

    assert [c.name for c in One.__table__.columns] == ["id"]
    assert [c.name for c in Two.__table__.columns] == ["id", "x"]
    assert One.__table__.c.id is not Two.__table__.c.id


def test_identity_key_from_row() -> None:
    m = inspect(User)
    assert m.identity_key_from_row({"id": 4, "name": "x"}, "s1") == (User, (4,), "s1")


def test_forgetting_relationship_on_a_class_annotation_is_an_error() -> None:
    B = new_base()

    class Target(B):
        __tablename__ = "target"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(exc.ArgumentError, match="relationship"):

        class Holder(B):
            __tablename__ = "holder"
            id: Mapped[int] = mapped_column(primary_key=True)
            targets: Mapped[list[Target]]

    with pytest.raises(exc.ArgumentError, match="relationship"):

        class Holder2(B):
            __tablename__ = "holder2"
            id: Mapped[int] = mapped_column(primary_key=True)
            target: Mapped[Target]


def test_mapped_classes_and_attributes_in_select() -> None:
    from shardsession.sql import select

    sql = str(select(User).where(User.name == "x").order_by(User.name.desc()))
    assert sql.startswith('SELECT "users"."id", "users"."tenant"')
    assert 'WHERE "users"."name" = ' in sql
    assert sql.endswith('ORDER BY "users"."name" DESC')
    joined = str(select(Address.email).join_from(User, Address, User.id == Address.user_id))
    assert 'JOIN "addresses" ON "users"."id" = "addresses"."user_id"' in joined
