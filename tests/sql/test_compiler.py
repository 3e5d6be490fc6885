"""The compiler's output: SQL shape, parameters, routing information and the cache."""

from __future__ import annotations

import pickle

import pytest

from shardsession.exc import InvalidRequestError
from shardsession.sql import (
    Column,
    CompiledStatement,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    ParamRef,
    String,
    Table,
    and_,
    bindparam,
    cache_info,
    compile_statement,
    delete,
    func,
    insert,
    not_,
    or_,
    select,
    text,
    update,
)
from shardsession.sql.quoting import quote_ident


@pytest.fixture
def tables():
    md = MetaData()
    users = Table(
        "users",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(30)),
        Column("region", String(10)),
    )
    orders = Table(
        "orders",
        md,
        Column("id", Integer, primary_key=True),
        Column("user_id", ForeignKey("users.id")),
        Column("total", Integer),
    )
    return users, orders


class _Attr:
    def __init__(self, column):
        self.column = column

    def __clause_element__(self):
        return self.column


def _mapped(name, table):
    cls = type(name, (), {"__table__": table, "__mapper__": object()})
    for c in table.c:
        setattr(cls, c.key, _Attr(c))
    return cls


def test_values_are_parameters_never_sql(tables):
    users, _ = tables
    evil = "x'); DROP TABLE users; --"
    c = compile_statement(select(users.c.id).where(users.c.name == evil))
    assert evil not in c.sql and "DROP" not in c.sql
    assert c.construct_params() == (evil,)


def test_identifier_quoting():
    assert quote_ident("a") == '"a"'
    assert quote_ident('we"ird') == '"we""ird"'
    md = MetaData()
    t = Table('x"; DROP', md, Column("c%s", Integer))
    c = compile_statement(select(t))
    # quotes doubled, percent signs escaped for psycopg
    assert c.sql == 'SELECT "x""; DROP"."c%%s" FROM "x""; DROP"'


def test_equality_filters(tables):
    users, orders = tables
    stmt = select(users).where(users.c.id == 5, users.c.region.in_(["eu", "us"]))
    c = compile_statement(stmt)
    assert c.equality_filters == {"id": (5,), "region": ("eu", "us")}
    assert c.table == "users" and c.tables == ("users",)
    # reversed operands count too
    assert compile_statement(select(users).where(7 == users.c.id)).equality_filters == {"id": (7,)}
    # under OR / NOT nothing is guaranteed
    c = compile_statement(select(users).where(or_(users.c.id == 1, users.c.id == 2)))
    assert c.equality_filters == {}
    c = compile_statement(select(users).where(not_(users.c.id == 1)))
    assert c.equality_filters == {}
    c = compile_statement(select(users).where(users.c.id.not_in([1])))
    assert c.equality_filters == {}
    # nested AND is still top level
    c = compile_statement(select(users).where(and_(users.c.id == 1, and_(users.c.name == "a"))))
    assert c.equality_filters == {"id": (1,), "name": ("a",)}
    # same column twice: the possible values intersect
    c = compile_statement(select(users).where(users.c.id.in_([1, 2, 3]), users.c.id.in_([2, 3, 4])))
    assert c.equality_filters == {"id": (2, 3)}
    # other tables' columns only under qualified keys
    c = compile_statement(select(users).join(orders).where(orders.c.total == 3, users.c.id == 1))
    assert c.equality_filters == {"id": (1,)}
    # a condition on an alias of the main table (self-join) does not constrain the main row
    boss = users.alias("boss")
    c = compile_statement(select(users).join(boss, users.c.id == boss.c.id).where(boss.c.id == 2))
    assert c.equality_filters == {}
    assert c.equality_filters_for(qualified=True) == {("boss", "id"): (2,)}
    c = compile_statement(select(boss).where(boss.c.id == 2))
    assert c.equality_filters == {"id": (2,)} and c.table == "users"
    # a subquery's column constrains no table row
    sq = select(users.c.id).subquery()
    assert (
        compile_statement(select(sq).where(sq.c.id == 1)).equality_filters_for(qualified=True) == {}
    )
    c = compile_statement(select(users).join(orders).where(orders.c.total == 3, users.c.id == 1))
    assert c.equality_filters_for(qualified=True) == {
        ("orders", "total"): (3,),
        ("users", "id"): (1,),
    }


def test_equality_filters_with_user_parameters(tables):
    users, _ = tables
    c = compile_statement(select(users).where(users.c.id == bindparam("uid")))
    assert c.equality_filters == {"id": (ParamRef("uid"),)}
    assert c.equality_filters_for({"uid": 9}) == {"id": (9,)}
    c = compile_statement(select(users).where(users.c.id.in_(bindparam("ids"))))
    assert c.equality_filters_for({"ids": [1, 2]}) == {"id": (1, 2)}


def test_equality_filters_in_dml(tables):
    users, _ = tables
    assert compile_statement(
        update(users).where(users.c.id == 3).values(name="x")
    ).equality_filters == {"id": (3,)}
    c = compile_statement(delete(users).where(users.c.region == "eu"))
    assert c.equality_filters == {"region": ("eu",)} and c.is_delete and c.table == "users"
    c = compile_statement(insert(users).values(id=4, name="n"))
    assert c.insert_rows() == [{"id": 4, "name": "n"}] and c.rows == 1
    c = compile_statement(insert(users), column_keys=["id", "region"])
    assert c.insert_rows({"id": 1, "region": "eu"}) == [{"id": 1, "region": "eu"}]
    c = compile_statement(insert(users).values([{"id": 1}, {"id": 2}]))
    assert c.insert_rows() == [{"id": 1}, {"id": 2}] and c.rows == 2


def test_order_by_limit_offset_aggregates(tables):
    users, orders = tables
    stmt = (
        select(
            orders.c.user_id,
            func.count().label("n"),
            func.sum(orders.c.total),
            func.max(orders.c.total),
        )
        .group_by(orders.c.user_id)
        .order_by(orders.c.user_id.desc(), func.count().desc().nulls_last(), "n")
        .limit(10)
        .offset(20)
    )
    c = compile_statement(stmt)
    assert c.is_select and c.result_keys == ("user_id", "n", "sum", "max")
    assert c.aggregates == ((1, "count"), (2, "sum"), (3, "max"))
    assert c.group_by == (0,)
    assert c.order_by == ((0, True, None), (None, True, False), (1, False, None))
    assert (c.limit, c.offset) == (10, 20)
    assert c.construct_params() == (10, 20)
    assert c.construct_params(limit=30, offset=0) == (30, 0)
    c = compile_statement(select(func.count(func.distinct(orders.c.user_id))))
    c2 = compile_statement(select(func.count(users.c.id.distinct())))
    assert c2.aggregates == ((0, "count_distinct"),)
    assert c.aggregates == ((0, "count"),)
    with pytest.raises(InvalidRequestError):
        compile_statement(select(users)).construct_params(limit=3)
    c = compile_statement(select(users.c.id).distinct())
    assert c.distinct and c.limit is None


def test_entities_and_returning(tables):
    users, orders = tables
    User = _mapped("User", users)
    Order = _mapped("Order", orders)
    c = compile_statement(select(User, Order.total).join(Order))
    assert c.entity == "User"
    assert c.entities == (("User", "users", 0, 3, (0,)),)
    assert c.result_keys == ("id", "name", "region", "total")
    c = compile_statement(select(Order.total, User))
    assert c.entities == (("User", "users", 1, 4, (1,)),)
    assert set(c.tables) == {"users", "orders"}
    c = compile_statement(insert(User).values(name="x").returning(User))
    assert c.entity == "User" and c.returning == ("id", "name", "region") and c.returns_rows
    assert c.entities == (("User", "users", 0, 3, (0,)),)
    c = compile_statement(update(User).where(User.id.__clause_element__() == 1).values(name="y"))
    assert c.entity == "User" and not c.returns_rows and c.is_update


def test_result_processors_convert_enums():
    import enum

    class Mood(enum.Enum):
        HAPPY = 1
        SAD = 2

    md = MetaData()
    t = Table("m", md, Column("id", Integer, primary_key=True), Column("mood", Enum(Mood)))
    c = compile_statement(select(t.c.id, t.c.mood))
    assert c.process_row((1, "SAD")) == (1, Mood.SAD)
    assert compile_statement(insert(t).values(mood=Mood.HAPPY)).construct_params() == ("HAPPY",)
    clone = pickle.loads(pickle.dumps(c))
    assert clone.result_processors is None and clone.process_row((1, "SAD")) == (1, "SAD")


def test_compiled_statement_pickles_small_and_plain(tables):
    users, _ = tables
    c = compile_statement(select(users).where(users.c.id == 3).order_by(users.c.name).limit(5))
    data = pickle.dumps(c)
    assert b"shardsession.sql.schema" not in data  # no expression objects inside
    clone = pickle.loads(data)
    assert isinstance(clone, CompiledStatement)
    assert clone.sql == c.sql and clone.construct_params() == (3, 5)
    assert clone.equality_filters == {"id": (3,)} and clone.order_by == ((1, False, None),)
    with pytest.raises(AttributeError):
        c.sql = "x"


def test_cache_hit_for_same_structure(tables, fresh_cache):
    users, _ = tables
    a = compile_statement(select(users).where(users.c.id == 1).limit(3))
    b = compile_statement(select(users).where(users.c.id == 2).limit(7))
    info = cache_info()
    assert info["hits"] == 1 and info["misses"] == 1
    assert a.sql == b.sql
    assert a.construct_params() == (1, 3) and b.construct_params() == (2, 7)
    assert a.equality_filters == {"id": (1,)} and b.equality_filters == {"id": (2,)}
    # fresh aliases and subqueries of the same shape share one entry
    for n in (1, 2):
        al = users.alias()
        sq = select(users.c.id).where(users.c.id > n).subquery()
        c = compile_statement(select(al.c.name, sq.c.id).join(sq, al.c.id == sq.c.id))
        assert c.construct_params() == (n,)
    assert cache_info()["hits"] == 2
    # in_ lists of any length share one entry
    compile_statement(select(users).where(users.c.id.in_([1])))
    compile_statement(select(users).where(users.c.id.in_([1, 2, 3, 4])))
    assert cache_info()["hits"] == 3


@pytest.mark.parametrize(
    "pair",
    [
        "op",
        "in_vs_not_in",
        "column",
        "table_same_name",
        "alias_reuse",
        "limit_vs_offset",
        "entity_vs_columns",
        "bind_name",
        "label",
        "text",
        "insert_keys",
        "null_vs_value",
    ],
)
def test_different_structures_never_collide(tables, fresh_cache, pair):
    users, _ = tables
    other_md = MetaData()
    users2 = Table("users", other_md, Column("id", Integer), Column("name", String))
    u1 = users.alias()
    u2 = users.alias()
    User = _mapped("User", users)
    cases = {
        "op": (select(users).where(users.c.id == 1), select(users).where(users.c.id > 1)),
        "in_vs_not_in": (
            select(users).where(users.c.id.in_([1])),
            select(users).where(users.c.id.not_in([1])),
        ),
        "column": (select(users.c.id), select(users.c.name)),
        "table_same_name": (select(users.c.id), select(users2.c.id)),
        "alias_reuse": (
            select(u1.c.id).join(u2, u1.c.id == u2.c.id),
            select(u1.c.id).join(u1, u1.c.id == u1.c.id),
        ),
        "limit_vs_offset": (select(users).limit(1), select(users).offset(1)),
        "entity_vs_columns": (select(User), select(*users.c)),
        "bind_name": (
            select(users).where(users.c.id == bindparam("a")),
            select(users).where(users.c.id == bindparam("b")),
        ),
        "label": (select(users.c.id.label("x")), select(users.c.id.label("y"))),
        "text": (text("SELECT 1"), text("SELECT 2")),
        "insert_keys": (insert(users), insert(users)),
        "null_vs_value": (
            select(users).where(users.c.name == None),  # noqa: E711
            select(users).where(users.c.name == "x"),
        ),
    }
    a, b = cases[pair]
    kw_a = {"column_keys": ["id"]} if pair == "insert_keys" else {}
    kw_b = {"column_keys": ["id", "name"]} if pair == "insert_keys" else {}
    ca = compile_statement(a, **kw_a)
    cb = compile_statement(b, **kw_b)
    assert cache_info()["misses"] == 2
    if pair == "entity_vs_columns":
        assert ca.sql == cb.sql and ca.entity == "User" and cb.entity is None
    elif pair == "bind_name":
        assert ca.construct_params({"a": 1}) == (1,)
        with pytest.raises(InvalidRequestError):
            cb.construct_params({"a": 1})
    elif pair == "table_same_name":
        # same text, but each compiled form stays bound to its own table's columns
        assert ca is not cb
    else:
        assert ca.sql != cb.sql


def test_missing_parameter_is_a_clear_error(tables):
    users, _ = tables
    c = compile_statement(select(users).where(users.c.id == bindparam("uid")))
    with pytest.raises(InvalidRequestError, match="uid"):
        c.construct_params()
    assert c.construct_params({"uid": 1}) == (1,)


def test_str_of_expressions(tables):
    users, _ = tables
    assert str(users.c.id == 5) == '"users"."id" = %s'
    assert str((users.c.id + 1) * 2) == '("users"."id" + %s) * %s'
    assert str(users.c.id.in_([1, 2])) == '"users"."id" = ANY(%s::BIGINT[])'
    assert str(select(users.c.id)) == 'SELECT "users"."id" FROM "users"'


def test_reused_bind_object_does_not_share_plan_with_distinct_values(fresh_cache):
    from shardsession.sql import literal

    five = literal(5)
    reused = compile_statement(select(five, five))
    distinct_values = compile_statement(select(literal(5), literal(6)))
    assert reused.construct_params() == (5, 5)
    assert distinct_values.construct_params() == (5, 6)
    # and the other order of compilation
    from shardsession.sql.compiler import clear_cache

    clear_cache()
    assert compile_statement(select(literal(1), literal(2))).construct_params() == (1, 2)
    seven = literal(7)
    assert compile_statement(select(seven, seven)).construct_params() == (7, 7)
