"""INSERT / UPDATE / DELETE compiled and run on a real PostgreSQL."""

from __future__ import annotations

import itertools
import pickle
import uuid

import pytest

from shardsession.exc import ArgumentError, CompileError, InvalidRequestError
from shardsession.sql import (
    JSONB,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    compile_statement,
    delete,
    func,
    insert,
    select,
    update,
)


@pytest.fixture
def items(conn):
    md = MetaData()
    counter = itertools.count(100)
    t = Table(
        "items",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(40), nullable=False),
        Column("qty", Integer, default=1),
        Column("serial", Integer, default=lambda: next(counter)),
        Column(
            "doubled", Integer, default=lambda ctx: (ctx.current_parameters.get("qty") or 0) * 2
        ),
        Column("touched", Integer, onupdate=lambda: 7),
        Column("meta", JSONB),
    )
    md.create_all(conn)
    return t


def test_insert_returning_and_defaults(items, run):
    t = items
    rows = run(insert(t).values(name="a").returning(t.c.id, t.c.qty, t.c.serial, t.c.doubled))
    assert rows == [(1, 1, 100, 2)]  # the context sees the scalar default of qty
    rows = run(insert(t).values(name="b", qty=5).returning(t.c.qty, t.c.serial, t.c.doubled))
    assert rows == [(5, 101, 10)]
    # an explicit value wins over the default
    assert run(insert(t).values(name="c", serial=1).returning(t.c.serial)) == [(1,)]


def test_insert_values_forms(items, run):
    t = items
    run(insert(t).values({"name": "d1"}))
    run(insert(t).values({t.c.name: "d2"}))
    run(insert(t).values(name="d3", meta={"k": [1, 2]}))
    rows = run(
        insert(t)
        .values([{"name": "m1"}, {"name": "m2", "qty": 3}])
        .returning(t.c.name, t.c.qty, t.c.serial)
    )
    assert [(n, q) for n, q, _ in rows] == [("m1", 1), ("m2", 3)]
    assert rows[0][2] != rows[1][2]  # the callable default ran per row
    assert run(select(t.c.meta).where(t.c.name == "d3")) == [({"k": [1, 2]},)]
    with pytest.raises(ArgumentError):
        insert(t).values(nope=1)
    with pytest.raises(ArgumentError):
        insert(t).values(name="x").values([{"name": "y"}])


def test_insert_from_params_executemany(items, conn):
    t = items
    stmt = insert(t)
    rows = [{"name": "p1", "qty": 2}, {"name": "p2", "qty": 4}]
    compiled = compile_statement(stmt, column_keys=rows[0].keys())
    assert compiled.sql.startswith('INSERT INTO "items" ("name", "qty", "serial", "doubled")')
    with conn.cursor() as cur:
        cur.executemany(compiled.sql, [compiled.construct_params(r) for r in rows])
    got = conn.execute("SELECT name, qty, doubled FROM items ORDER BY name").fetchall()
    assert got == [("p1", 2, 4), ("p2", 4, 8)]
    with pytest.raises(CompileError, match="no column"):
        compile_statement(stmt, column_keys=["bogus"])


def test_insert_default_values_and_from_select(conn, run):
    md = MetaData()
    t = Table("t", md, Column("id", Integer, primary_key=True), Column("v", Integer))
    t2 = Table("t2", md, Column("id", Integer, primary_key=True), Column("v", Integer))
    md.create_all(conn)
    assert run(insert(t).returning(t.c.id)) == [(1,)]
    run(insert(t).values(v=5))
    run(insert(t2).from_select(["id", "v"], select(t.c.id, t.c.v * 10).where(t.c.v.is_not(None))))
    assert run(select(t2.c.id, t2.c.v)) == [(2, 50)]


def test_update(items, run):
    t = items
    run(
        insert(t).values(
            [{"name": "a", "qty": 1}, {"name": "b", "qty": 2}, {"name": "c", "qty": 3}]
        )
    )
    n = run(update(t).where(t.c.qty >= 2).values(qty=t.c.qty + 10))
    assert n == 2
    rows = run(
        update(t)
        .where(t.c.name == "a")
        .values({"name": "A"})
        .returning(t.c.id, t.c.name, t.c.touched)
    )
    assert rows == [(1, "A", 7)]  # onupdate applied
    assert run(select(t.c.name, t.c.qty).order_by(t.c.id)) == [("A", 1), ("b", 12), ("c", 13)]
    # filter_by on DML
    assert run(update(t).filter_by(name="b").values(qty=0)) == 1
    # UPDATE from parameters (executemany style): SET columns come from the keys
    stmt = update(t).where(t.c.id == bindparam("b_id"))
    assert run(stmt, {"b_id": 3, "name": "C", "qty": 99}) == 1
    assert run(select(t.c.name, t.c.qty).where(t.c.id == 3)) == [("C", 99)]
    with pytest.raises(CompileError, match="bogus"):
        compile_statement(stmt, column_keys=["b_id", "bogus"])


def test_update_with_other_table_in_where(conn, run):
    md = MetaData()
    a = Table("a", md, Column("id", Integer, primary_key=True), Column("v", Integer))
    b = Table("b", md, Column("id", Integer, primary_key=True), Column("flag", Integer))
    md.create_all(conn)
    run(insert(a).values([{"id": 1, "v": 0}, {"id": 2, "v": 0}]))
    run(insert(b).values([{"id": 1, "flag": 1}, {"id": 2, "flag": 0}]))
    assert run(update(a).where(a.c.id == b.c.id, b.c.flag == 1).values(v=9)) == 1
    assert run(delete(a).where(a.c.id == b.c.id, b.c.flag == 0)) == 1
    assert run(select(a.c.id, a.c.v)) == [(1, 9)]


def test_delete(items, run):
    t = items
    run(insert(t).values([{"name": "a"}, {"name": "b"}, {"name": "c"}]))
    assert run(delete(t).where(t.c.name.in_(["a", "b"])).returning(t.c.name)) == [("a",), ("b",)]
    assert run(delete(t).filter_by(name="zzz")) == 0
    assert run(select(func.count()).select_from(t)) == [(1,)]


def test_uuid_primary_key_with_callable_default(conn, run):
    md = MetaData()
    t = Table(
        "u", md, Column("id", Uuid, primary_key=True, default=uuid.uuid4), Column("n", Integer)
    )
    md.create_all(conn)
    assert t.autoincrement_column is None
    (a,) = run(insert(t).values(n=1).returning(t.c.id))[0]
    (b,) = run(insert(t).values(n=1).returning(t.c.id))[0]
    assert isinstance(a, uuid.UUID) and a != b


def test_callable_default_not_available_after_pickle(items):
    compiled = compile_statement(insert(items).values(name="x"))
    clone = pickle.loads(pickle.dumps(compiled))
    assert clone.sql == compiled.sql
    assert clone.construct_params({"serial": 5, "doubled": 6}) == ("x", 1, 5, 6)
    with pytest.raises(InvalidRequestError, match="callable column default"):
        clone.construct_params()


def test_dml_rejects_non_tables(items):
    with pytest.raises(ArgumentError):
        insert(42)
    with pytest.raises(ArgumentError):
        update(items).values(nope=1)
    plain = Table("plain", MetaData(), Column("id", Integer, primary_key=True))
    with pytest.raises(CompileError, match="no values"):
        compile_statement(update(plain))
