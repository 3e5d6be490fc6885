"""CREATE / DROP DDL against a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from shardsession.sql import (
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    insert,
    select,
    text,
)
from shardsession.sql.ddl import create_statements, drop_statements


def _exists(conn, name):
    return conn.execute("SELECT to_regclass(%s)", (f'"{name}"'.replace("%", "%"),)).fetchone()[0]


def _blog(md):
    users = Table(
        "users",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(50), nullable=False, unique=True),
        Column("kind", String(10), server_default="plain"),
        CheckConstraint("char_length(name) > 0", name="users_name_ck"),
    )
    posts = Table(
        "posts",
        md,
        Column("id", Integer, primary_key=True),
        Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        Column("slug", String(40), index=True),
        Column("created", Integer, server_default=text("42")),
    )
    tags = Table(
        "post_tags",
        md,
        Column("post_id", ForeignKey("posts.id"), primary_key=True),
        Column("tag", String(20), primary_key=True),
        Index("ix_tag", "tag"),
    )
    return users, posts, tags


def test_create_and_drop_all_with_constraints(conn, run):
    md = MetaData()
    users, posts, tags = _blog(md)
    assert md.sorted_tables == [users, posts, tags]
    md.create_all(conn)
    for name in ("users", "posts", "post_tags"):
        assert _exists(conn, name) is not None
    # identity PK gives generated ids; server defaults apply
    (uid, kind) = run(insert(users).values(name="ann").returning(users.c.id, users.c.kind))[0]
    assert kind == "plain"
    (pid, created) = run(
        insert(posts).values(user_id=uid, slug="a").returning(posts.c.id, posts.c.created)
    )[0]
    assert created == 42
    run(insert(tags).values(post_id=pid, tag="x"))
    with pytest.raises(psycopg.errors.UniqueViolation):  # composite PK
        run(insert(tags).values(post_id=pid, tag="x"))
    with pytest.raises(psycopg.errors.UniqueViolation):  # unique column
        run(insert(users).values(name="ann"))
    with pytest.raises(psycopg.errors.CheckViolation):
        run(insert(users).values(name=""))
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        run(insert(posts).values(user_id=999))
    with pytest.raises(psycopg.errors.NotNullViolation):
        run(insert(posts).values(slug="no user"))
    indexes = {
        r[0]
        for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        )
    }
    assert {"ix_posts_slug", "ix_tag"} <= indexes
    # ON DELETE CASCADE is in place: deleting the user removes the post
    conn.execute("DELETE FROM post_tags")
    conn.execute("DELETE FROM users")
    assert run(select(posts.c.id)) == []
    md.drop_all(conn)
    for name in ("users", "posts", "post_tags"):
        assert _exists(conn, name) is None


def test_checkfirst(conn):
    md = MetaData()
    _blog(md)
    md.create_all(conn)
    md.create_all(conn)  # no error: everything exists
    with pytest.raises(psycopg.errors.DuplicateTable):
        md.create_all(conn, checkfirst=False)
    md.drop_all(conn)
    md.drop_all(conn)  # nothing left to drop, no error
    with pytest.raises(psycopg.errors.UndefinedTable):
        md.drop_all(conn, checkfirst=False)


def test_non_autocommit_connection_commits_when_idle(dsn, schema_name):
    md = MetaData(schema=schema_name)
    Table("t", md, Column("id", Integer, primary_key=True))
    with psycopg.connect(dsn) as admin:
        admin.execute(f'CREATE SCHEMA "{schema_name}"')
        admin.commit()
        try:
            with psycopg.connect(dsn) as c:  # autocommit off
                md.create_all(c)
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # visible from another connection: it was committed
            assert admin.execute("SELECT to_regclass(%s)", (f'"{schema_name}"."t"',)).fetchone()[0]
            # inside an explicit transaction nothing is committed on our behalf
            with psycopg.connect(dsn) as c:
                c.execute("SELECT 1")
                md.drop_all(c)
                c.rollback()
            assert admin.execute("SELECT to_regclass(%s)", (f'"{schema_name}"."t"',)).fetchone()[0]
        finally:
            admin.rollback()
            admin.execute(f'DROP SCHEMA "{schema_name}" CASCADE')
            admin.commit()


def test_run_ddl_protocol_receives_statements(conn):
    md = MetaData()
    _blog(md)

    class Pool:
        def __init__(self):
            self.batches = []

        def _run_ddl(self, statements):
            self.batches.append(list(statements))
            for s in statements:  # run them for real, twice, to show they are idempotent
                conn.execute(s)

    pool = Pool()
    md.create_all(pool)
    md.create_all(pool)
    assert len(pool.batches) == 2
    assert all("IF NOT EXISTS" in s for s in pool.batches[0] if s.startswith("CREATE"))
    md.drop_all(pool)
    md.drop_all(pool)
    assert _exists(conn, "users") is None


def test_foreign_key_cycle(conn, run):
    md = MetaData()
    a = Table("a", md, Column("id", Integer, primary_key=True), Column("b_id", ForeignKey("b.id")))
    b = Table("b", md, Column("id", Integer, primary_key=True), Column("a_id", ForeignKey("a.id")))
    stmts = create_statements(md, None, set(), False)
    assert any(s.startswith("ALTER TABLE") for s in stmts)
    md.create_all(conn)
    run(insert(a).values(id=1))
    run(insert(b).values(id=1, a_id=1))
    run(a.update().values(b_id=1))
    assert run(select(a.c.b_id)) == [(1,)]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        run(insert(a).values(id=2, b_id=99))
    assert drop_statements(md, None, set(), False)[0].startswith("ALTER TABLE")
    md.drop_all(conn)
    assert _exists(conn, "a") is None and _exists(conn, "b") is None
    # the idempotent form for _run_ddl binds, run twice
    for _ in range(2):
        for s in create_statements(md, None, set(), True):
            conn.execute(s)
    for _ in range(2):
        for s in drop_statements(md, None, set(), True):
            conn.execute(s)
    assert _exists(conn, "a") is None


def test_composite_fk_and_named_constraints(conn, run):
    md = MetaData()
    Table(
        "p",
        md,
        Column("a", Integer),
        Column("b", Integer),
        PrimaryKeyConstraint("a", "b", name="p_pkey_custom"),
    )
    c = Table(
        "c",
        md,
        Column("id", Integer, primary_key=True),
        Column("x", Integer),
        Column("y", Integer),
        ForeignKeyConstraint(["x", "y"], ["p.a", "p.b"], name="c_p_fk"),
        UniqueConstraint("x", "y", name="c_xy_uq"),
    )
    md.create_all(conn)
    names = {
        r[0]
        for r in conn.execute(
            "SELECT conname FROM pg_constraint WHERE connamespace = current_schema()::regnamespace"
        )
    }
    assert {"p_pkey_custom", "c_p_fk", "c_xy_uq"} <= names
    conn.execute("INSERT INTO p VALUES (1, 2)")
    run(insert(c).values(x=1, y=2))
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        run(insert(c).values(x=2, y=1))


def test_hostile_identifiers_round_trip(conn, run):
    md = MetaData()
    evil_table = 'we"ird; DROP TABLE x; --%s'
    evil_col = "col\"'; --%(x)s"
    t = Table(
        evil_table,
        md,
        Column("id", Integer, primary_key=True),
        Column(evil_col, String(50), index=True),
    )
    md.create_all(conn)
    run(insert(t).values({evil_col: "v%s'"}))
    assert run(select(t.c[evil_col]).where(t.c[evil_col] == "v%s'")) == [("v%s'",)]
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            (evil_table,),
        )
    ]
    assert cols == ["id", evil_col]
    md.drop_all(conn)
    assert conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchone() == (0,)


def test_hostile_server_default_literal(conn, run):
    md = MetaData()
    t = Table(
        "t",
        md,
        Column("id", Integer, primary_key=True),
        Column("v", String, server_default="it's \\ a '); DROP TABLE t; --"),
    )
    md.create_all(conn)
    assert run(insert(t).returning(t.c.v)) == [("it's \\ a '); DROP TABLE t; --",)]
