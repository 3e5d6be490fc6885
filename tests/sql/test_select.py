"""SELECT statements compiled and run on a real PostgreSQL."""

from __future__ import annotations

import pytest

from shardsession.exc import ArgumentError, InvalidRequestError
from shardsession.sql import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    and_,
    asc,
    bindparam,
    case,
    cast,
    column,
    desc,
    distinct,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    table,
    text,
    true,
    tuple_,
)


@pytest.fixture
def db(conn, run):
    md = MetaData()
    users = Table(
        "users",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(30)),
        Column("age", Integer),
        Column("boss_id", ForeignKey("users.id")),
    )
    addresses = Table(
        "addresses",
        md,
        Column("id", Integer, primary_key=True),
        Column("user_id", ForeignKey("users.id")),
        Column("email", String(50)),
    )
    md.create_all(conn)
    run(
        insert(users).values(
            [
                {"id": 1, "name": "ann", "age": 30, "boss_id": None},
                {"id": 2, "name": "bob", "age": 25, "boss_id": 1},
                {"id": 3, "name": "cy", "age": None, "boss_id": 1},
                {"id": 4, "name": "dee_%", "age": 41, "boss_id": 2},
            ]
        )
    )
    run(
        insert(addresses).values(
            [
                {"user_id": 1, "email": "ann@a"},
                {"user_id": 1, "email": "ann@b"},
                {"user_id": 2, "email": "bob@a"},
            ]
        )
    )
    return users, addresses


class _Attr:
    """Stands in for an ORM instrumented attribute."""

    def __init__(self, column):
        self.column = column

    def __clause_element__(self):
        return self.column

    def __eq__(self, other):
        return self.column == other

    __hash__ = object.__hash__


def _mapped(table):
    cls = type("User", (), {"__table__": table, "__mapper__": object()})
    for c in table.c:
        setattr(cls, c.key, _Attr(c))
    return cls


def ids(rows):
    return [r[0] for r in rows]


def test_comparisons(db, run):
    u, _ = db
    q = select(u.c.id).order_by(u.c.id)
    assert ids(run(q.where(u.c.age == 30))) == [1]
    assert ids(run(q.where(u.c.age != 30))) == [2, 4]
    assert ids(run(q.where(u.c.age < 30))) == [2]
    assert ids(run(q.where(u.c.age <= 30))) == [1, 2]
    assert ids(run(q.where(u.c.age > 30))) == [4]
    assert ids(run(q.where(u.c.age >= 30))) == [1, 4]
    assert ids(run(q.where(u.c.age == None))) == [3]  # noqa: E711
    assert ids(run(q.where(u.c.age != None))) == [1, 2, 4]  # noqa: E711
    assert ids(run(q.where(u.c.age.is_(None)))) == [3]
    assert ids(run(q.where(u.c.age.is_not(None)))) == [1, 2, 4]
    assert ids(run(q.where(u.c.age.between(25, 30)))) == [1, 2]
    assert ids(run(q.where(30 < u.c.age))) == [4]
    assert ids(run(q.where(u.c.boss_id == u.c.id))) == []


def test_in_and_not_in(db, run):
    u, a = db
    q = select(u.c.id).order_by(u.c.id)
    assert ids(run(q.where(u.c.id.in_([1, 3, 99])))) == [1, 3]
    assert ids(run(q.where(u.c.id.in_([])))) == []
    assert ids(run(q.where(u.c.id.not_in([])))) == [1, 2, 3, 4]
    assert ids(run(q.where(u.c.id.not_in([1, 2])))) == [3, 4]
    assert ids(run(q.where(u.c.name.in_(("bob", "cy"))))) == [2, 3]
    assert ids(run(q.where(u.c.id.in_(select(a.c.user_id))))) == [1, 2]
    assert ids(run(q.where(u.c.id.not_in(select(a.c.user_id))))) == [3, 4]
    assert ids(run(q.where(u.c.id.in_(bindparam("ids"))), {"ids": [2, 4]})) == [2, 4]
    assert ids(run(q.where(tuple_(u.c.id, u.c.name).in_([(1, "ann"), (2, "nope")])))) == [1]
    assert ids(run(q.where(u.c.id.in_([u.c.boss_id, 4])))) == [4]


def test_like_family(db, run):
    u, _ = db
    q = select(u.c.id).order_by(u.c.id)
    assert ids(run(q.where(u.c.name.like("a%")))) == [1]
    assert ids(run(q.where(u.c.name.ilike("A%")))) == [1]
    assert ids(run(q.where(u.c.name.not_like("%n%")))) == [2, 3, 4]
    assert ids(run(q.where(u.c.name.startswith("b")))) == [2]
    assert ids(run(q.where(u.c.name.endswith("y")))) == [3]
    assert ids(run(q.where(u.c.name.contains("e")))) == [4]
    # autoescape: "_%" is matched literally, not as wildcards
    assert ids(run(q.where(u.c.name.contains("_%", autoescape=True)))) == [4]
    assert ids(run(q.where(u.c.name.contains("n_", autoescape=True)))) == []
    assert ids(run(q.where(u.c.name.like("dee!_%", escape="!")))) == [4]


def test_boolean_logic(db, run):
    u, _ = db
    q = select(u.c.id).order_by(u.c.id)
    assert ids(run(q.where(and_(u.c.age > 20, u.c.age < 35)))) == [1, 2]
    assert ids(run(q.where(or_(u.c.id == 1, u.c.id == 4)))) == [1, 4]
    assert ids(run(q.where((u.c.id == 1) | (u.c.id == 2) & (u.c.age == 25)))) == [1, 2]
    assert ids(run(q.where(~(u.c.id == 1)))) == [2, 3, 4]
    assert ids(run(q.where(not_(or_(u.c.id == 1, u.c.id == 2))))) == [3, 4]
    assert ids(run(q.where(and_()))) == [1, 2, 3, 4]
    assert ids(run(q.where(or_()))) == []
    assert ids(run(q.where(true()))) == [1, 2, 3, 4]
    assert ids(run(q.where(false()))) == []
    assert ids(run(q.where(u.c.id > 1, u.c.id < 4))) == [2, 3]
    assert ids(run(q.where(or_(u.c.id == 1, and_(u.c.id > 2, u.c.age == null()))))) == [1, 3]


def test_arithmetic_and_operators(db, run):
    u, _ = db
    row = run(
        select(
            (u.c.age + 1).label("a1"),
            (u.c.age - 1),
            (u.c.age * 2),
            (u.c.age / 5),
            (u.c.age % 7),
            (100 - u.c.age),
            (2 * u.c.age),
            -u.c.age,
            (u.c.name + "!"),
            u.c.name.concat("?"),
            u.c.age.op("#")(3),
        ).where(u.c.id == 1)
    )[0]
    assert row == (31, 29, 60, 6, 2, 70, 60, -30, "ann!", "ann?", 30 ^ 3)
    # precedence: (age + 1) * 2 must keep its parentheses
    assert run(select((u.c.age + 1) * 2).where(u.c.id == 1)) == [(62,)]
    assert run(select(u.c.age - (u.c.age - 1)).where(u.c.id == 1)) == [(1,)]


def test_order_limit_offset_distinct(db, run):
    u, a = db
    assert ids(run(select(u.c.id).order_by(u.c.age.desc().nulls_first()))) == [3, 4, 1, 2]
    assert ids(run(select(u.c.id).order_by(u.c.age.asc().nulls_first()))) == [3, 2, 1, 4]
    assert ids(run(select(u.c.id).order_by(desc(u.c.age).nulls_last()))) == [4, 1, 2, 3]
    assert ids(run(select(u.c.id).order_by(asc(u.c.name)).limit(2).offset(1))) == [2, 3]
    assert ids(run(select(u.c.id).order_by(u.c.id).slice(1, 3))) == [2, 3]
    assert ids(
        run(select(u.c.id).order_by(u.c.id).limit(2).order_by(None).order_by(u.c.id.desc()))
    ) == [4, 3]
    assert run(select(a.c.user_id).distinct().order_by(a.c.user_id)) == [(1,), (2,)]
    rows = run(
        select(a.c.user_id, a.c.email).distinct(a.c.user_id).order_by(a.c.user_id, a.c.email)
    )
    assert rows == [(1, "ann@a"), (2, "bob@a")]
    with pytest.raises(ArgumentError):
        select(u.c.id).limit(-1)


def test_aggregates_group_by_having(db, run):
    u, a = db
    assert run(select(func.count()).select_from(u)) == [(4,)]
    assert run(
        select(func.count(u.c.age), func.sum(u.c.age), func.min(u.c.age), func.max(u.c.age))
    ) == [(3, 96, 25, 41)]
    (avg,) = run(select(func.avg(u.c.age)))[0]
    assert avg == 32
    rows = run(
        select(a.c.user_id, func.count().label("n"))
        .group_by(a.c.user_id)
        .having(func.count() > 1)
        .order_by(desc("n"))
    )
    assert rows == [(1, 2)]
    assert run(select(func.count(distinct(a.c.user_id)))) == [(2,)]
    assert run(select(func.lower("ABC"), func.coalesce(None, 5))) == [("abc", 5)]
    rows = run(
        select(u.c.boss_id, func.count().label("n")).group_by("boss_id").order_by(u.c.boss_id)
    )
    assert rows == [(1, 2), (2, 1), (None, 1)]


def test_joins(db, run):
    u, a = db
    rows = run(select(u.c.name, a.c.email).join(a).order_by(a.c.email))
    assert rows == [("ann", "ann@a"), ("ann", "ann@b"), ("bob", "bob@a")]
    rows = run(select(u.c.name, a.c.email).outerjoin(a).order_by(u.c.id, a.c.email))
    assert [r[0] for r in rows] == ["ann", "ann", "bob", "cy", "dee_%"]
    rows = run(
        select(u.c.name).select_from(a).join(u, a.c.user_id == u.c.id).where(a.c.email == "bob@a")
    )
    assert rows == [("bob",)]
    boss = u.alias("boss")
    rows = run(
        select(u.c.name, boss.c.name.label("boss"))
        .join(boss, u.c.boss_id == boss.c.id)
        .order_by(u.c.id)
    )
    assert rows == [("bob", "ann"), ("cy", "ann"), ("dee_%", "bob")]
    # ON clause inferred through an alias: alias -> users via boss_id is ambiguous with
    # the self reference, so it must be given; addresses -> alias is inferred.
    al = u.alias()
    rows = run(select(al.c.name, a.c.email).join(a).where(a.c.email == "ann@b"))
    assert rows == [("ann", "ann@b")]
    rows = run(select(u.c.name).join_from(u, a).where(a.c.email.like("b%")))
    assert rows == [("bob",)]
    full = run(select(u.c.id, a.c.id).join(a, u.c.id == a.c.user_id, full=True))
    assert len(full) == 5


def test_join_without_foreign_key_raises(db):
    u, _ = db
    other = Table("other", MetaData(), Column("x", Integer))
    with pytest.raises(InvalidRequestError, match="foreign key"):
        select(u).join(other)


def test_subqueries_and_exists(db, run):
    u, a = db
    counts = select(a.c.user_id, func.count().label("n")).group_by(a.c.user_id).subquery()
    rows = run(
        select(u.c.name, counts.c.n).join(counts, u.c.id == counts.c.user_id).order_by(u.c.id)
    )
    assert rows == [("ann", 2), ("bob", 1)]
    # correlated scalar subquery
    n_addr = select(func.count()).where(a.c.user_id == u.c.id).scalar_subquery()
    rows = run(select(u.c.name, n_addr.label("n")).order_by(u.c.id))
    assert rows == [("ann", 2), ("bob", 1), ("cy", 0), ("dee_%", 0)]
    # EXISTS in both spellings
    q = select(u.c.id).order_by(u.c.id)
    assert ids(run(q.where(exists().where(a.c.user_id == u.c.id)))) == [1, 2]
    assert ids(run(q.where(~select(a.c.id).where(a.c.user_id == u.c.id).exists()))) == [3, 4]
    assert run(select(exists(select(a.c.id).where(a.c.email == "bob@a")))) == [(True,)]
    # two anonymous subqueries get distinct names
    s1 = select(u.c.id).where(u.c.id < 3).subquery()
    s2 = select(u.c.id).where(u.c.id > 1).subquery()
    assert run(select(s1.c.id).join(s2, s1.c.id == s2.c.id)) == [(2,)]
    # scalar subquery compared to a column
    max_age = select(func.max(u.c.age)).scalar_subquery()
    assert ids(run(select(u.c.id).where(u.c.age == max_age))) == [4]


def test_case_cast_literal(db, run):
    u, _ = db
    label = case((u.c.age < 28, "young"), (u.c.age >= 28, "old"), else_="unknown")
    rows = run(select(u.c.id, label).order_by(u.c.id))
    assert rows == [(1, "old"), (2, "young"), (3, "unknown"), (4, "old")]
    rows = run(select(case({1: "one", 2: "two"}, value=u.c.id, else_="many")).order_by(u.c.id))
    assert [r[0] for r in rows] == ["one", "two", "many", "many"]
    assert run(select(cast(u.c.age, String), cast("12.50", Numeric(5, 2))).where(u.c.id == 1)) == [
        ("30", __import__("decimal").Decimal("12.50"))
    ]
    assert run(select(literal(5), literal("x"), literal_column("1 + 1"))) == [(5, "x", 2)]


def test_text_statements(db, run):
    u, _ = db
    assert run(text("SELECT name FROM users WHERE id = :id"), {"id": 2}) == [("bob",)]
    assert run(text("SELECT :x::int + 1"), {"x": 41}) == [(42,)]
    assert run(text("SELECT '\\:literal', 7 % 4")) == [(":literal", 3)]
    # psycopg placeholders written in the SQL text stay literal text
    assert run(text("SELECT '%s', '%(x)s', '%%'")) == [("%s", "%(x)s", "%%")]
    stmt = text("SELECT name FROM users WHERE id = :id OR id = :id").bindparams(id=3)
    assert run(stmt) == [("cy",)]
    q = text("SELECT id, name FROM users WHERE age > :a ORDER BY id").columns(u.c.id, u.c.name)
    from shardsession.sql import compile_statement

    c = compile_statement(q.bindparams(a=26))
    assert c.is_select and c.result_keys == ("id", "name")
    assert run(q.bindparams(a=26)) == [(1, "ann"), (4, "dee_%")]
    assert ids(run(select(u.c.id).where(text("age > :lim")).order_by(u.c.id), {"lim": 29})) == [
        1,
        4,
    ]
    with pytest.raises(InvalidRequestError, match="'id'"):
        run(text("SELECT :id"))


def test_bindparam(db, run):
    u, _ = db
    q = select(u.c.name).where(u.c.id == bindparam("uid"))
    assert run(q, {"uid": 4}) == [("dee_%",)]
    q = select(u.c.name).where(u.c.id == bindparam("uid", 2))
    assert run(q) == [("bob",)]
    assert run(q, {"uid": 3}) == [("cy",)]


def test_lightweight_table_and_column(db, run):
    t = table("users", column("id"), column("name"))
    assert run(select(t.c.name).where(t.c.id == 2)) == [("bob",)]


def test_entity_select_and_filter_by(db, run):
    u, a = db
    User = _mapped(u)
    q = select(User).filter_by(name="bob")
    assert q._entities[0].entity is User and q._entities[0].is_entity
    assert run(q) == [(2, "bob", 25, 1)]
    assert run(select(User.name).where(User.id == 1)) == [("ann",)]
    assert q.column_descriptions[0]["entity"] is User
    assert run(select(User).filter_by(age=None)) == [(3, "cy", None, 1)]
    Address = _mapped(a)
    rows = run(select(User.name).join(Address).filter_by(email="ann@b"))
    assert rows == [("ann",)]
    with pytest.raises(InvalidRequestError, match="no column"):
        select(User).filter_by(nope=1)


def test_add_and_replace_columns(db, run):
    u, _ = db
    q = select(u.c.id).where(u.c.id == 1)
    assert run(q.add_columns(u.c.name)) == [(1, "ann")]
    assert run(q.with_only_columns(u.c.age)) == [(30,)]
    assert run(q.with_only_columns(func.count(), maintain_column_froms=True)) == [(1,)]
    assert run(q) == [(1,)]  # generative: the original is unchanged


def test_for_update_variants(db, conn, run):
    u, a = db
    with conn.transaction():
        assert ids(run(select(u.c.id).where(u.c.id == 1).with_for_update())) == [1]
        assert ids(run(select(u.c.id).where(u.c.id == 1).with_for_update(nowait=True))) == [1]
        assert ids(
            run(select(u.c.id).where(u.c.id == 1).with_for_update(read=True, skip_locked=True))
        ) == [1]
        rows = run(select(u.c.id).join(a).where(u.c.id == 2).with_for_update(of=u, key_share=True))
        assert ids(rows) == [2]
    with pytest.raises(ArgumentError):
        select(u).with_for_update(nowait=True, skip_locked=True)


def test_execution_options_and_options_are_stored(db):
    u, _ = db
    q = select(u).options("opt1").execution_options(shard_id="s1")
    q2 = q.execution_options(foo=1).options("opt2")
    assert q.get_execution_options() == {"shard_id": "s1"}
    assert q2.get_execution_options() == {"shard_id": "s1", "foo": 1}
    assert q._with_options == ("opt1",) and q2._with_options == ("opt1", "opt2")


def test_value_injection_is_data(db, run):
    u, _ = db
    evil = "'; DROP TABLE users; --"
    assert run(select(u.c.id).where(u.c.name == evil)) == []
    run(insert(u).values(id=9, name=evil[:30]))
    assert run(select(u.c.name).where(u.c.id == 9)) == [(evil[:30],)]
    assert run(select(u.c.id).where(u.c.name.like("%" + "%(x)s" + "%"))) == []
    assert run(select(func.count()).select_from(u)) == [(5,)]


def test_is_with_booleans(conn, run):
    md = MetaData()
    from shardsession.sql import Boolean

    t = Table("flags", md, Column("id", Integer, primary_key=True), Column("on", Boolean))
    md.create_all(conn)
    run(insert(t).values([{"id": 1, "on": True}, {"id": 2, "on": False}, {"id": 3, "on": None}]))
    q = select(t.c.id).order_by(t.c.id)
    assert ids(run(q.where(t.c.on.is_(True)))) == [1]
    assert ids(run(q.where(t.c.on.is_not(True)))) == [2, 3]
    assert ids(run(q.where(t.c.on.is_(False)))) == [2]
    assert ids(run(q.where(t.c.on))) == [1]
    assert ids(run(q.where(~t.c.on))) == [2]
    assert ids(run(q.where(t.c.on == True))) == [1]  # noqa: E712


def test_relationship_join_protocol(db, run):
    u, a = db

    class AddressesRelationship:
        """Stands in for an ORM relationship attribute (``User.addresses``)."""

        def __join_info__(self):
            return a, a.c.user_id == u.c.id

    rows = run(select(u.c.name, a.c.email).join(AddressesRelationship()).order_by(a.c.email))
    assert rows == [("ann", "ann@a"), ("ann", "ann@b"), ("bob", "bob@a")]


def test_schema_qualified_table(conn, run, schema_name):
    md = MetaData()
    t = Table("q", md, Column("id", Integer, primary_key=True), schema=schema_name)
    md.create_all(conn)
    conn.execute("SET search_path TO public")
    run(insert(t).values(id=1))
    assert run(select(t.c.id).where(t.c.id == 1)) == [(1,)]
    md.drop_all(conn)
    assert conn.execute("SELECT to_regclass(%s)", (f'"{schema_name}"."q"',)).fetchone() == (None,)


def test_correlate_control(db, run):
    u, a = db
    inner = select(func.count()).select_from(a).where(a.c.user_id == u.c.id)
    q = select(u.c.id, inner.correlate(u).scalar_subquery()).order_by(u.c.id)
    assert run(q) == [(1, 2), (2, 1), (3, 0), (4, 0)]
    # correlate(None): the subquery gets its own FROM users (a cross join inside)
    q = select(u.c.id, inner.correlate(None).scalar_subquery()).where(u.c.id == 1)
    assert run(q) == [(1, 3)]
