"""Schema objects: columns built before their table, keys, constraints, FK resolution."""

from __future__ import annotations

import pytest

from shardsession.exc import ArgumentError, InvalidRequestError
from shardsession.sql import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    NullType,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)


def test_column_named_later_and_attached():
    col = Column(Integer, primary_key=True)
    assert col.table is None and col._name is None
    with pytest.raises(ArgumentError):
        _ = col.name
    col.name = "id"
    assert col.key == "id"
    md = MetaData()
    t = Table("t", md, col)
    assert col.table is t and t.c.id is col and t.c["id"] is col
    assert t.primary_key == (col,)
    assert col.nullable is False


def test_unnamed_column_cannot_join_table():
    with pytest.raises(ArgumentError, match="name"):
        Table("t", MetaData(), Column(Integer))


def test_column_key_differs_from_name():
    md = MetaData()
    t = Table("t", md, Column("user_name", String, key="name"))
    assert t.c.name.name == "user_name"
    assert "name" in t.c and "user_name" not in t.c


def test_column_arguments():
    fk = ForeignKey("a.id", ondelete="cascade")
    c = Column("x", BigInteger, fk, nullable=False, default=5, server_default="7", unique=True)
    assert c.type.ddl() == "BIGINT" and c.foreign_keys == [fk] and fk.parent is c
    assert c.default.arg == 5 and c.default.is_scalar and c.server_default == "7"
    assert fk.ondelete == "CASCADE"
    assert Column("y", String).nullable is True
    with pytest.raises(ArgumentError):
        ForeignKey("a.id", ondelete="EXPLODE")
    with pytest.raises(ArgumentError):
        Column("z", Integer, "not a thing")


def test_callable_default_with_and_without_context():
    c0 = Column("a", Integer, default=lambda: 3)
    c1 = Column("b", Integer, default=lambda ctx: ctx.current_parameters["x"] * 2)
    assert c0.default.get() == 3
    assert c1.default.get({"x": 4}) == 8


def test_column_belongs_to_one_table_and_copy():
    md = MetaData()
    c = Column("id", Integer, primary_key=True)
    Table("a", md, c)
    with pytest.raises(ArgumentError, match="already belongs"):
        Table("b", md, c)
    md2 = MetaData()
    c2 = c._copy()
    t2 = Table("b", md2, c2)
    assert c2.table is t2 and c2.primary_key and c.table is not t2


def test_foreign_key_resolution_and_type_inference():
    md = MetaData()
    parent = Table("parent", md, Column("id", BigInteger, primary_key=True))
    child = Table(
        "child",
        md,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("parent.id")),
    )
    fk = child.c.parent_id.foreign_keys[0]
    assert fk.column is parent.c.id
    assert fk.target_fullname == "parent.id"
    assert isinstance(child.c.parent_id.type, BigInteger)
    assert child.foreign_keys == [fk]
    assert child.c.parent_id.references(parent.c.id)
    assert md.sorted_tables == [parent, child]


def test_unresolvable_foreign_key_raises():
    md = MetaData()
    t = Table("t", md, Column("x", Integer, ForeignKey("nope.id")))
    with pytest.raises(InvalidRequestError, match="nope"):
        _ = t.c.x.foreign_keys[0].column
    assert isinstance(Column("y", ForeignKey("a.b")).type, NullType)


def test_table_constraints_and_indexes():
    md = MetaData()
    t = Table(
        "t",
        md,
        Column("a", Integer),
        Column("b", Integer),
        Column("c", String, index=True),
        PrimaryKeyConstraint("a", "b", name="t_pk"),
        UniqueConstraint("b", "c", name="t_uq"),
        CheckConstraint("a > 0", name="t_ck"),
        Index("ix_t_ab", "a", "b", unique=True),
    )
    assert t.primary_key == (t.c.a, t.c.b)
    assert t.c.a.primary_key and t.c.a.nullable is False
    assert {type(c).__name__ for c in t.constraints} >= {
        "PrimaryKeyConstraint",
        "UniqueConstraint",
        "CheckConstraint",
    }
    assert sorted(ix.name for ix in t.indexes) == ["ix_t_ab", "ix_t_c"]
    assert t.autoincrement_column is None
    Index("ix_late", t.c.c)
    assert "ix_late" in [ix.name for ix in t.indexes]


def test_autoincrement_column_rules():
    md = MetaData()
    assert Table("a", md, Column("id", Integer, primary_key=True)).autoincrement_column is not None
    assert Table("b", md, Column("id", String, primary_key=True)).autoincrement_column is None
    t = Table("c", md, Column("id", Integer, primary_key=True, autoincrement=False))
    assert t.autoincrement_column is None
    t = Table("d", md, Column("id", Integer, ForeignKey("a.id"), primary_key=True))
    assert t.autoincrement_column is None


def test_duplicate_table_and_column():
    md = MetaData()
    Table("t", md, Column("id", Integer))
    with pytest.raises(InvalidRequestError, match="already defined"):
        Table("t", md, Column("id", Integer))
    with pytest.raises(ArgumentError, match="already has"):
        Table("u", md, Column("id", Integer), Column("id", String))


def test_schema_qualified_tables():
    md = MetaData(schema="s1")
    t = Table("t", md, Column("id", Integer, primary_key=True))
    assert t.fullname == "s1.t" and md.tables["s1.t"] is t
    u = Table("u", md, Column("t_id", ForeignKey("t.id")))
    assert u.c.t_id.foreign_keys[0].column is t.c.id


def test_composite_foreign_key_constraint():
    md = MetaData()
    p = Table("p", md, Column("a", Integer), Column("b", Integer), PrimaryKeyConstraint("a", "b"))
    c = Table(
        "c",
        md,
        Column("x", Integer),
        Column("y", Integer),
        ForeignKeyConstraint(["x", "y"], ["p.a", "p.b"], ondelete="CASCADE"),
    )
    (fkc,) = c.foreign_key_constraints
    assert fkc.columns == [c.c.x, c.c.y] and fkc.referred_table is p
    assert [fk.column for fk in fkc.elements] == [p.c.a, p.c.b]


def test_column_collection_behaviour():
    md = MetaData()
    t = Table("t", md, Column("a", Integer), Column("b", Integer))
    assert list(t.c) == [t.c.a, t.c.b] and len(t.c) == 2
    assert t.c[0] is t.c.a and t.c.keys() == ["a", "b"]
    assert t.c.a in t.c and "b" in t.c and t.c.get("zz") is None
    # selected columns with the same key are all kept; the key names the first
    from shardsession.sql import select

    other = Table("o", md, Column("a", Integer))
    sel = select(t.c.a, other.c.a).selected_columns
    assert len(sel) == 2 and sel.a is t.c.a and sel[1] is other.c.a
    with pytest.raises(AttributeError):
        _ = t.c.zz
    # == between columns builds SQL but still compares identities in plain Python
    assert t.c.a in [t.c.b, t.c.a]
    assert (t.c.a == t.c.a) and not (t.c.a == t.c.b)
    assert len({t.c.a, t.c.a, t.c.b}) == 2
    with pytest.raises(TypeError):
        bool(t.c.a > 1)
