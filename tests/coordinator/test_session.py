"""Session behaviour against real shards through the worker pool."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from shardsession.coordinator.session import Session
from shardsession.workers.pool import WorkerPool

from shardsession import (
    InvalidRequestError,
    PendingRollbackError,
    TwoPhaseError,
    make_transient,
    make_transient_to_detached,
    object_session,
    sessionmaker,
)
from shardsession.exc import IntegrityError, ShardNotFoundError
from shardsession.orm import inspect
from shardsession.sql import func, select, text
from tests.coordinator.models import Account, Base, Customer, Order


@pytest.fixture(scope="module")
def schema(shard_pool: WorkerPool) -> Iterator[None]:
    Base.metadata.create_all(shard_pool)
    yield
    Base.metadata.drop_all(shard_pool)


@pytest.fixture
def s(schema: None, session: Session) -> Session:
    return session


def rows_on(dsns: dict[str, str], sql: str) -> dict[str, list[tuple]]:
    out = {}
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            out[shard] = conn.execute(sql).fetchall()
    return out


def prepared_left(dsns: dict[str, str]) -> int:
    return sum(
        len(v)
        for v in rows_on(
            dsns, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ).values()
    )


def accounts(n: int) -> list[Account]:
    return [Account(id=i, tenant_id=i, owner=f"o{i}", balance=100) for i in range(1, n + 1)]


def test_objects_go_to_the_shard_of_their_key(s: Session, shard_dsns: dict[str, str]) -> None:
    s.add_all(accounts(20))
    s.commit()
    found = rows_on(shard_dsns, "SELECT id FROM acct ORDER BY id")
    assert sum(len(v) for v in found.values()) == 20
    assert sum(1 for v in found.values() if v) >= 3  # spread over shards
    for shard, ids in found.items():
        for (i,) in ids:
            obj = s.get(Account, i)
            assert inspect(obj).identity_token == shard
            assert inspect(obj).key == (Account, (i,), shard)


def test_lifecycle_states(s: Session) -> None:
    a = Account(id=1, tenant_id=1, owner="x")
    st = inspect(a)
    assert st.transient
    s.add(a)
    assert st.pending and a in s and a in s.new
    s.flush()
    assert st.persistent and a.balance == 0  # python default applied
    s.delete(a)
    assert a in s.deleted
    s.flush()
    assert st.deleted
    s.commit()
    assert st.detached and object_session(a) is None


def test_get_uses_identity_map_and_expire_on_commit(s: Session) -> None:
    s.add(Account(id=5, tenant_id=5, owner="five"))
    s.commit()
    a = s.get(Account, 5)
    assert s.get(Account, 5) is a
    assert "owner" in inspect(a).dict
    s.commit()
    assert inspect(a).expired_attributes  # expired by commit
    assert a.owner == "five"  # reloaded from its shard
    assert s.get(Account, 12345) is None


def test_same_primary_key_on_two_shards(s: Session) -> None:
    s.add(Account(id=1, tenant_id=1, owner="one"))
    s.commit()
    shard1 = inspect(s.get(Account, 1)).identity_token
    other = next(sh for sh in sorted(s.pool.shards) if sh != shard1)
    s.execute(
        text("INSERT INTO acct (id, tenant_id, owner, balance) VALUES (1, 999, 'twin', 0)"),
        bind_arguments={"shard_id": other},
    )
    s.commit()
    a = s.get(Account, 1, identity_token=shard1)
    b = s.get(Account, 1, identity_token=other)
    assert a is not b
    assert (a.owner, b.owner) == ("one", "twin")


def test_rollback_expunges_new_restores_deleted_expires_rest(s: Session) -> None:
    s.add_all([Account(id=1, tenant_id=1, owner="keep"), Account(id=2, tenant_id=2, owner="gone")])
    s.commit()
    keep, gone = s.get(Account, 1), s.get(Account, 2)
    keep.owner = "changed"
    s.delete(gone)
    new = Account(id=3, tenant_id=3, owner="new")
    s.add(new)
    s.flush()
    s.rollback()
    assert inspect(new).transient and new not in s
    assert gone in s and inspect(gone).persistent
    assert keep.owner == "keep"


def test_integrity_error_needs_rollback(s: Session) -> None:
    s.add(Account(id=7, tenant_id=7, owner="a"))
    s.commit()
    s.add(Account(id=7, tenant_id=7, owner="dup"))
    with pytest.raises(IntegrityError) as info:
        s.flush()
    assert info.value.sqlstate == "23505"
    with pytest.raises(PendingRollbackError):
        s.execute(select(Account))
    s.rollback()
    assert s.scalars(select(Account.owner)).all() == ["a"]


def test_relationships_same_shard_fk_and_lazy_load(s: Session, shard_dsns) -> None:
    c = Customer(tenant_id=42, name="c")
    c.orders = [Order(amount=5), Order(amount=7)]
    s.add(c)
    s.commit()
    shard = inspect(c).identity_token
    cid = c.id
    on_shard = rows_on({shard: shard_dsns[shard]}, "SELECT customer_id, amount FROM orders")
    assert sorted(a for _, a in on_shard[shard]) == [5, 7]
    assert {fk for fk, _ in on_shard[shard]} == {cid}
    s.close()
    c2 = s.get(Customer, cid, identity_token=shard)
    assert [o.amount for o in c2.orders] == [5, 7]
    assert c2.orders[0].customer is c2


def test_delete_cascade_and_orphans(s: Session) -> None:
    c = Customer(tenant_id=1, name="c", orders=[Order(amount=1), Order(amount=2)])
    s.add(c)
    s.commit()
    c.orders.pop(0)
    s.commit()
    assert s.scalar(select(func.count()).select_from(Order.__table__)) == 1
    s.delete(c)
    s.commit()
    assert s.scalar(select(func.count()).select_from(Order.__table__)) == 0


def test_savepoint_rollback(s: Session) -> None:
    s.add(Account(id=1, tenant_id=1, owner="outer"))
    s.flush()
    nested = s.begin_nested()
    s.add(Account(id=2, tenant_id=2, owner="inner"))
    s.flush()
    nested.rollback()
    s.commit()
    assert s.scalars(select(Account.id).order_by(Account.id)).all() == [1]


def test_two_phase_commit_on_four_shards(s: Session, shard_dsns) -> None:
    s.add_all(accounts(40))
    s.commit()
    found = rows_on(shard_dsns, "SELECT count(*) FROM acct")
    assert all(v[0][0] > 0 for v in found.values())
    assert sum(v[0][0] for v in found.values()) == 40
    assert prepared_left(shard_dsns) == 0


def test_failure_on_one_shard_leaves_nothing(s: Session, shard_dsns) -> None:
    s.add_all(accounts(8))
    s.commit()
    s.expunge_all()
    s.add_all([Account(id=100 + i, tenant_id=100 + i, owner="n") for i in range(12)])
    s.add(Account(id=3, tenant_id=3, owner="duplicate"))
    with pytest.raises(IntegrityError):
        s.commit()
    s.rollback()
    total = sum(v[0][0] for v in rows_on(shard_dsns, "SELECT count(*) FROM acct").values())
    assert total == 8
    assert prepared_left(shard_dsns) == 0


def test_explicit_prepare(s: Session, shard_dsns) -> None:
    s.add_all(accounts(12))
    s.prepare()
    assert prepared_left(shard_dsns) >= 2
    with pytest.raises(InvalidRequestError, match="already prepared"):
        s.prepare()
    with pytest.raises(InvalidRequestError, match="prepared"):
        s.execute(select(Account))
    s.commit()
    assert prepared_left(shard_dsns) == 0
    assert len(s.scalars(select(Account)).all()) == 12


def test_cross_shard_order_by_limit_and_aggregates(s: Session) -> None:
    s.add_all(accounts(30))
    s.commit()
    top = s.scalars(select(Account).order_by(Account.id.desc()).limit(5)).all()
    assert [a.id for a in top] == [30, 29, 28, 27, 26]
    page = s.execute(select(Account.id).order_by(Account.id).offset(10).limit(3)).all()
    assert [r[0] for r in page] == [11, 12, 13]
    assert s.scalar(select(func.count()).select_from(Account.__table__)) == 30
    assert s.scalar(select(func.sum(Account.balance))) == 3000
    assert s.scalar(select(func.max(Account.id))) == 30


def test_shard_key_in_where_touches_one_shard(s: Session) -> None:
    s.add_all(accounts(10))
    s.commit()
    found = s.scalars(select(Account).where(Account.tenant_id == 4)).all()
    assert [a.id for a in found] == [4]
    assert len(s.get_transaction()._handles) == 1


def test_unknown_shard_id_is_clear(s: Session) -> None:
    with pytest.raises(ShardNotFoundError):
        s.execute(select(Account), bind_arguments={"shard_id": "nope"})


def test_merge_refresh_is_modified(s: Session) -> None:
    s.add(Account(id=1, tenant_id=1, owner="a", balance=1))
    s.commit()
    detached = Account(id=1, tenant_id=1, owner="merged", balance=2)
    merged = s.merge(detached)
    assert merged is s.get(Account, 1) and merged.owner == "merged"
    assert s.is_modified(merged)
    s.commit()
    merged.owner = "local"
    s.refresh(merged)
    assert merged.owner == "merged"


def test_sessionmaker_and_utilities(shard_pool: WorkerPool, schema: None) -> None:
    maker = sessionmaker(shard_pool, expire_on_commit=False)
    with maker.begin() as sess:
        sess.add(Account(id=9, tenant_id=9, owner="m"))
    with maker() as sess:
        a = sess.get(Account, 9)
        assert object_session(a) is sess
        make_transient(a)
        assert inspect(a).transient and a.owner == "m"
        b = Account(id=9, tenant_id=9, owner="m")
        make_transient_to_detached(b)
        assert inspect(b).detached
        sess.add(b)
        assert inspect(b).persistent
        sess.delete(b)
        sess.commit()
    with maker() as sess:
        assert sess.get(Account, 9) is None


def test_executemany_insert_is_split_by_shard_key(s: Session, shard_dsns) -> None:
    from shardsession.sql import insert

    rows = [{"id": i, "tenant_id": i, "owner": "bulk", "balance": 1} for i in range(1, 13)]
    result = s.execute(insert(Account), rows)
    assert result.rowcount == 12
    s.commit()
    for shard, ids in rows_on(shard_dsns, "SELECT id FROM acct").items():
        for (i,) in ids:
            assert inspect(s.get(Account, i)).identity_token == shard


def test_bulk_mappings_and_bulk_save(s: Session) -> None:
    s.bulk_insert_mappings(Account, [{"id": i, "tenant_id": i, "owner": "m"} for i in (1, 2, 3)])
    s.bulk_update_mappings(Account, [{"id": 2, "tenant_id": 2, "owner": "updated"}])
    objs = [Account(id=4, tenant_id=4, owner="saved", balance=5)]
    s.bulk_save_objects(objs)
    s.commit()
    got = s.execute(select(Account.id, Account.owner).order_by(Account.id)).all()
    assert [tuple(r) for r in got] == [(1, "m"), (2, "updated"), (3, "m"), (4, "saved")]
    assert objs[0] not in s or inspect(objs[0]).transient


def test_events_fire_around_flush_and_commit(s: Session) -> None:
    from shardsession import event

    seen: list[str] = []
    event.listen(s, "before_flush", lambda sess, ctx, objs: seen.append("before_flush"))
    event.listen(s, "after_flush", lambda sess, ctx: seen.append("after_flush"))
    event.listen(s, "before_commit", lambda sess: seen.append("before_commit"))
    event.listen(s, "after_commit", lambda sess: seen.append("after_commit"))
    event.listen(s, "after_rollback", lambda sess: seen.append("after_rollback"))
    s.add(Account(id=1, tenant_id=1, owner="e"))
    s.commit()
    assert seen == ["before_commit", "before_flush", "after_flush", "after_commit"]
    s.add(Account(id=2, tenant_id=2, owner="e"))
    s.flush()
    s.rollback()
    assert seen[-1] == "after_rollback"


def test_do_orm_execute_can_reroute(s: Session) -> None:
    from shardsession import event

    s.add_all(accounts(8))
    s.commit()
    calls = []

    @event.listens_for(s, "do_orm_execute")
    def only_s0(state):
        calls.append(state.is_select)
        if state.is_select and "shard_id" not in state.bind_arguments:
            return state.invoke_statement(bind_arguments={"shard_id": "s0"})
        return None

    ids = s.scalars(select(Account.id)).all()
    assert calls and all(
        inspect(s.get(Account, i, identity_token="s0")).identity_token == "s0" for i in ids
    )


def test_selectin_loads_children_per_shard_in_one_query_each(s: Session) -> None:
    from shardsession import event
    from tests.coordinator.models import Project, Task

    for t in range(1, 9):
        s.add(
            Project(tenant_id=t, name=f"p{t}", tasks=[Task(title=f"t{t}a"), Task(title=f"t{t}b")])
        )
    s.commit()
    s.close()
    statements: list[object] = []
    event.listen(s, "do_orm_execute", lambda state: statements.append(state.statement))
    projects = s.scalars(select(Project).order_by(Project.tenant_id)).all()
    assert len(projects) == 8
    issued = len(statements)
    assert issued <= 1 + 4  # the query, then at most one IN query per shard
    assert all("tasks" in inspect(p).dict for p in projects)
    assert [t.title for t in projects[2].tasks] == ["t3a", "t3b"]
    assert projects[2].tasks[0].project is projects[2]
    assert len(statements) == issued  # reading them issued no more SQL


def test_get_without_shard_key_asks_candidates_in_parallel(s: Session) -> None:
    c = Customer(tenant_id=77, name="x")
    s.add(c)
    s.commit()
    cid, shard = c.id, inspect(c).identity_token
    s.close()
    found = s.get(Customer, cid)  # pk does not hold the shard key: every shard is asked
    assert found is not None and inspect(found).identity_token == shard
    assert len(s.get_transaction()._handles) == len(s.pool.shards)


def test_lazy_loads_are_flagged_on_the_execute_state(s: Session) -> None:
    from shardsession import event

    c = Customer(tenant_id=3, name="c", orders=[Order(amount=1)])
    s.add(c)
    s.commit()
    seen = []
    event.listen(
        s,
        "do_orm_execute",
        lambda st: seen.append((st.is_relationship_load, st.is_column_load, st.lazy_loaded_from)),
    )
    assert c.name == "c"  # expired by commit: a column load
    assert [o.amount for o in c.orders] == [1]  # a relationship load
    assert seen[0][1] is True and seen[0][2] is inspect(c)
    assert seen[1][0] is True and seen[1][2] is inspect(c)


def test_failure_at_prepare_leaves_no_change_anywhere(s: Session, shard_dsns) -> None:
    from shardsession.sql import text

    ddl = (
        "CREATE TABLE IF NOT EXISTS deferred_t (id int PRIMARY KEY, v int, "
        "CONSTRAINT deferred_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)"
    )
    for shard in s.pool.shards:
        s.execute(text(ddl), bind_arguments={"shard_id": shard})
    s.commit()
    try:
        s.execute(text("INSERT INTO deferred_t VALUES (1, 1)"), bind_arguments={"shard_id": "s0"})
        # the duplicate only fails when the constraint is checked: at PREPARE
        s.execute(
            text("INSERT INTO deferred_t VALUES (1, 5), (2, 5)"), bind_arguments={"shard_id": "s1"}
        )
        with pytest.raises(TwoPhaseError, match="PREPARE failed"):
            s.commit()
        s.rollback()
        counts = rows_on(shard_dsns, "SELECT count(*) FROM deferred_t")
        assert all(v == [(0,)] for v in counts.values())
        assert prepared_left(shard_dsns) == 0
    finally:
        for shard in s.pool.shards:
            s.execute(text("DROP TABLE deferred_t"), bind_arguments={"shard_id": shard})
        s.commit()


def test_lost_worker_fails_the_transaction_only(s: Session, shard_dsns) -> None:
    import os
    import signal

    from shardsession.exc import WorkerLostError

    s.add(Account(id=1, tenant_id=1, owner="kept"))
    s.commit()
    a = s.get(Account, 1)
    shard = inspect(a).identity_token
    a.owner = "lost"
    s.flush()
    handle = s.get_transaction()._handles[shard]
    os.kill(handle.pid, signal.SIGKILL)
    a.balance = 5
    with pytest.raises(WorkerLostError, match=f"of shard '{shard}' died"):
        s.commit()
    s.rollback()
    assert s.get(Account, 1).owner == "kept"  # committed data intact; a new worker served it


def test_linking_objects_of_two_shards_is_refused_at_flush(s: Session) -> None:
    customers = [Customer(tenant_id=t, name=f"c{t}") for t in range(1, 9)]
    s.add_all(customers)
    s.commit()
    by_shard = {}
    for c in customers:
        by_shard.setdefault(inspect(c).identity_token, c)
    first, second = list(by_shard.values())[:2]
    order = Order(amount=1)
    first.orders.append(order)
    s.commit()
    order.customer = second
    with pytest.raises(InvalidRequestError, match="shard"):
        s.flush()
    s.rollback()
    assert order.customer is first or order.customer_id == first.id


def test_get_and_refresh_options(s: Session, shard_dsns) -> None:
    s.add(Account(id=1, tenant_id=1, owner="db", balance=1))
    s.commit()
    a = s.get(Account, 1)
    shard = inspect(a).identity_token
    with psycopg.connect(shard_dsns[shard], autocommit=True) as conn:
        conn.execute("UPDATE acct SET owner = 'outside' WHERE id = 1")
    assert s.get(Account, 1).owner == "db"  # identity map answers
    assert s.get(Account, 1, populate_existing=True).owner == "outside"
    locked = s.get(Account, 1, with_for_update=True)
    assert locked is a
    with psycopg.connect(shard_dsns[shard], autocommit=True) as conn:
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("UPDATE acct SET owner = 'blocked' WHERE id = 1")
    s.rollback()
    s.refresh(a, with_for_update={"nowait": True})
    assert a.owner == "outside"
    s.commit()


def test_connection_runs_raw_sql_in_the_session_transaction(s: Session) -> None:
    s.add(Account(id=1, tenant_id=1, owner="a"))
    s.flush()
    shard = inspect(s.get(Account, 1)).identity_token
    conn = s.connection(bind_arguments={"shard_id": shard})
    assert conn.exec_driver_sql("SELECT owner FROM acct WHERE id = %s", (1,)).all() == [("a",)]
    assert conn.execute(text("SELECT count(*) FROM acct")).scalar() == 1
    s.rollback()
    assert s.connection(shard_id=shard).execute(text("SELECT count(*) FROM acct")).scalar() == 0
    with pytest.raises(InvalidRequestError, match="needs the shard"):
        s.connection()


def test_enable_relationship_loading_on_a_pending_object(s: Session) -> None:
    c = Customer(tenant_id=5, name="c")
    s.add(c)
    s.commit()
    cid = c.id
    o = Order(amount=3, customer_id=cid)
    s.enable_relationship_loading(o)
    assert o.customer is c


def test_one_to_many_without_back_reference_gets_generated_keys(s: Session) -> None:
    from tests.coordinator.models import Note

    first = Customer(tenant_id=11, name="a", notes=[Note(text="n1"), Note(text="n2")])
    s.add(first)
    s.commit()
    cid = first.id
    assert [n.customer_id for n in first.notes] == [cid, cid]
    # move a persistent note (whose own attributes did not change) to a new customer
    # on the same shard: only the parent's collection changed
    note = first.notes[0]
    second = Customer(tenant_id=11, name="b")
    first.notes.remove(note)
    second.notes.append(note)
    s.add(second)
    s.commit()
    second_id = second.id
    s.close()
    reloaded = s.scalars(select(Note).order_by(Note.text)).all()
    assert [(n.text, n.customer_id) for n in reloaded] == [("n1", second_id), ("n2", cid)]
