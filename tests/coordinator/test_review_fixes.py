"""Regressions found in review: shard key changes, bulk insert routing, routing of new
objects through new parents, global ids after fork, the commit log for roles without
CREATE, and textual SELECTs run on several shards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from shardsession.coordinator.routing import shard_for_key
from shardsession.coordinator.session import Session
from shardsession.workers.pool import WorkerPool, create_pool

from shardsession import InvalidRequestError, twophase
from shardsession.exc import ShardNotFoundError
from shardsession.orm import inspect
from shardsession.sql import Integer, column, text
from tests.coordinator.models_review import Client, Keyed, Log, Memo, Reply, ReviewBase


@pytest.fixture(scope="module")
def schema(shard_pool: WorkerPool) -> Iterator[None]:
    ReviewBase.metadata.create_all(shard_pool)
    yield
    ReviewBase.metadata.drop_all(shard_pool)


@pytest.fixture
def s(schema: None, session: Session) -> Session:
    return session


def rows_on(dsns: dict[str, str], query: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            out[shard] = conn.execute(query).fetchall()
    return out


def keys_by_shard(shards: list[str]) -> dict[str, list[int]]:
    """Shard key values 1..200 grouped by the shard they hash to."""
    out: dict[str, list[int]] = {}
    for k in range(1, 201):
        out.setdefault(shard_for_key(k, shards), []).append(k)
    return out


# -- 1. a changed shard key must not leave the row on its old shard ------------------


def test_changing_shard_key_to_another_shard_raises_before_sending(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    by_shard = keys_by_shard(sorted(shard_dsns))
    old_shard, new_shard = sorted(by_shard)[:2]
    old_k, new_k = by_shard[old_shard][0], by_shard[new_shard][0]
    obj = Keyed(id=1, k=old_k, name="a")
    s.add(obj)
    s.commit()
    obj.k = new_k
    with pytest.raises(InvalidRequestError) as err:
        s.flush()
    message = str(err.value)
    for part in ("Keyed", "Keyed.k", repr(old_shard), repr(new_shard), str(new_k)):
        assert part in message, (part, message)
    assert "delete the object and add a copy with the new key" in message
    assert s.is_active  # refused before anything was sent: no rollback needed
    s.rollback()
    found = rows_on(shard_dsns, "SELECT id, k FROM rf_keyed")
    assert found[old_shard] == [(1, old_k)]
    assert all(not rows for shard, rows in found.items() if shard != old_shard)


def test_changing_shard_key_within_its_shard_updates_in_place(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    by_shard = keys_by_shard(sorted(shard_dsns))
    shard = sorted(by_shard)[0]
    old_k, new_k = by_shard[shard][:2]
    obj = Keyed(id=1, k=old_k, name="a")
    s.add(obj)
    s.commit()
    obj.k = new_k
    s.commit()
    found = rows_on(shard_dsns, "SELECT id, k FROM rf_keyed")
    assert found[shard] == [(1, new_k)]
    assert sum(len(rows) for rows in found.values()) == 1


def test_changing_shard_key_to_none_raises(s: Session) -> None:
    obj = Keyed(id=1, k=5, name="a")
    s.add(obj)
    s.flush()
    obj.k = None  # type: ignore[assignment]
    with pytest.raises(InvalidRequestError, match=r"Keyed\.k was changed to None"):
        s.flush()


# -- 2. bulk inserts never go to several shards ---------------------------------------


def test_bulk_insert_mappings_without_shard_key_value_raises(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    rows = [{"id": 1, "k": 3, "name": "routed"}, {"id": 2, "name": "no key"}]
    with pytest.raises(ShardNotFoundError, match=r"row 1 inserted into Keyed.*Keyed\.k"):
        s.bulk_insert_mappings(Keyed, rows)
    s.commit()
    assert sum(len(r) for r in rows_on(shard_dsns, "SELECT id FROM rf_keyed").values()) == 0


def test_bulk_insert_mappings_for_model_without_shard_key_or_chooser_raises(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    with pytest.raises(ShardNotFoundError, match="Log declares no __shard_key__"):
        s.bulk_insert_mappings(Log, [{"id": 1, "msg": "x"}])
    s.commit()
    assert sum(len(r) for r in rows_on(shard_dsns, "SELECT id FROM rf_log").values()) == 0


def test_bulk_insert_mappings_with_shard_chooser_goes_to_one_shard(
    schema: None, shard_pool: WorkerPool, shard_dsns: dict[str, str]
) -> None:
    with Session(shard_pool, shard_chooser=lambda mapper, instance, clause=None: "s2") as s:
        s.bulk_insert_mappings(Log, [{"id": 1, "msg": "x"}])
        s.commit()
    try:
        found = rows_on(shard_dsns, "SELECT id FROM rf_log")
        assert found["s2"] == [(1,)]
        assert sum(len(r) for r in found.values()) == 1
    finally:
        with psycopg.connect(shard_dsns["s2"]) as conn:
            conn.execute("DELETE FROM rf_log")


# -- 3. new objects follow new objects they are linked to, in any order ----------------


def test_new_object_follows_the_new_parent_it_refers_to(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    memo = Memo(id=1, text="m", client=Client(id=2, tenant_id=7, name="c"))
    s.add(memo)  # the memo comes before its client in the session's new objects
    s.commit()
    expected = shard_for_key(7, sorted(shard_dsns))
    assert inspect(memo).identity_token == expected
    assert inspect(memo.client).identity_token == expected
    assert rows_on(shard_dsns, "SELECT id, client_id FROM rf_memo")[expected] == [(1, 2)]


def test_new_object_follows_a_chain_of_new_objects(s: Session, shard_dsns: dict[str, str]) -> None:
    reply = Reply(
        id=1, text="r", memo=Memo(id=1, text="m", client=Client(id=3, tenant_id=9, name="c"))
    )
    s.add(reply)
    s.commit()
    expected = shard_for_key(9, sorted(shard_dsns))
    assert inspect(reply).identity_token == expected
    assert inspect(reply.memo).identity_token == expected
    assert rows_on(shard_dsns, "SELECT id, memo_id FROM rf_reply")[expected] == [(1, 1)]


def test_linked_new_objects_without_any_shard_raise(s: Session) -> None:
    # memo <-> reply link both ways; nothing routes either: a clear error, no endless walk
    s.add(Reply(id=1, text="r", memo=Memo(id=1, text="m")))
    with pytest.raises(ShardNotFoundError, match="declares no __shard_key__"):
        s.flush()


# -- 4. forked processes make their own global transaction ids -------------------------


def _gid_from_child() -> str:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            os.write(write_end, twophase.new_global_id("s0").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        gid = pipe.read()
    os.waitpid(pid, 0)
    assert gid, "the forked child wrote no global id"
    return gid


def test_forked_processes_make_distinct_global_ids() -> None:
    twophase.new_global_id("s0")  # the parent has used its sequence already
    children = [_gid_from_child(), _gid_from_child()]
    parent = twophase.new_global_id("s0")
    assert len({parent, *children}) == 3, (parent, children)
    coordinators = {g.split("-")[0] for g in (parent, *children)}
    assert len(coordinators) == 3, coordinators


# -- 5. a role without CREATE can use shards that have the commit log ------------------


def test_pool_starts_for_a_role_without_create_privilege(
    shard_pool: WorkerPool, shard_dsns: dict[str, str]
) -> None:
    role = f"ss_rf_nocreate_{os.getpid()}"
    first = next(iter(shard_dsns.values()))
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        for dsn in shard_dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # PostgreSQL < 15
                (exists,) = conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL", (twophase.COMMIT_LOG,)
                ).fetchone()
                (can_create,) = conn.execute(
                    "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)
                ).fetchone()
                assert exists and not can_create
        dsns = {shard: make_conninfo(dsn, user=role) for shard, dsn in shard_dsns.items()}
        pool = create_pool(dsns, recovery_interval=None)
        try:
            with Session(pool) as s:
                users = s.execute(text("SELECT current_user")).scalars().all()
            assert users == [role] * len(dsns)
        finally:
            pool.close()
    finally:
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- 6. textual SELECTs that would need merging are refused on several shards ----------


@pytest.fixture
def spread(s: Session, shard_dsns: dict[str, str]) -> Session:
    """Ten Keyed rows over every shard."""
    s.add_all([Keyed(id=i, k=i, name=f"n{i}") for i in range(1, 11)])
    s.commit()
    assert all(rows_on(shard_dsns, "SELECT 1 FROM rf_keyed").values())
    return s


@pytest.mark.parametrize(
    "query",
    [
        "SELECT id FROM rf_keyed ORDER BY id",
        "select id from rf_keyed order\n  by id",
        "SELECT id FROM rf_keyed LIMIT 3",
        "SELECT id FROM rf_keyed OFFSET 2",
        "SELECT k FROM rf_keyed GROUP BY k",
        "SELECT DISTINCT k FROM rf_keyed",
        "SELECT 1 FROM rf_keyed HAVING true",
        "SELECT count(*) FROM rf_keyed",
        "SELECT SUM(k) FROM rf_keyed",
        "SELECT avg (k) FROM rf_keyed",
        "SELECT min(k) FROM rf_keyed",
        "SELECT max(k) FROM rf_keyed",
        "WITH t AS (SELECT k FROM rf_keyed) SELECT k FROM t ORDER BY k",
    ],
)
def test_text_select_needing_merge_on_several_shards_raises(spread: Session, query: str) -> None:
    with pytest.raises(InvalidRequestError, match="cannot merge a textual statement") as err:
        spread.execute(text(query))
    assert "bind_arguments={'shard_id': ...}" in str(err.value)
    assert "select()" in str(err.value)


def test_text_select_needing_merge_runs_on_one_shard(spread: Session) -> None:
    query = "SELECT id FROM rf_keyed ORDER BY id DESC"
    plain = spread.execute(text(query), bind_arguments={"shard_id": "s0"}).scalars().all()
    typed = text(query).columns(column("id", Integer))
    assert plain
    assert plain == sorted(plain, reverse=True)
    assert spread.execute(typed, bind_arguments={"shard_id": "s0"}).scalars().all() == plain


def test_plain_text_select_on_several_shards_is_concatenated(spread: Session) -> None:
    query = (
        'SELECT id, name AS "limit" FROM rf_keyed '
        "WHERE name IS DISTINCT FROM 'order by count(' /* group by */ -- limit 1\n"
    )
    rows = spread.execute(text(query)).all()
    assert sorted(r[0] for r in rows) == list(range(1, 11))


def test_text_statement_that_is_not_a_query_runs_on_every_shard(spread: Session) -> None:
    result = spread.execute(
        text("UPDATE rf_keyed SET name = 'x' WHERE id IN (SELECT id FROM rf_keyed ORDER BY id)")
    )
    assert result.rowcount == 10
    spread.execute(
        text("CREATE TEMP TABLE rf_tmp ON COMMIT DROP AS SELECT k FROM rf_keyed ORDER BY k")
    )
    assert len(spread.execute(text("SELECT k FROM rf_tmp")).all()) == 10
