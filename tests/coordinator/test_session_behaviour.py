"""Session behaviours SQLAlchemy's own ORM suite checks, against real shards.

Written afresh after the areas covered by SQLAlchemy's test/orm/test_session.py,
test_transaction.py, test_events.py (ORMExecuteTest) and
test/ext/test_horizontal_shard.py; expected values were checked against
SQLAlchemy 2.x on sqlite where the behaviour is not shard-specific.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from shardsession.coordinator.routing import shard_for_key
from shardsession.coordinator.session import Session
from shardsession.workers.pool import WorkerPool

from shardsession import (
    InvalidRequestError,
    SessionTransactionOrigin,
    close_all_sessions,
    event,
    make_transient,
    make_transient_to_detached,
    object_session,
    sessionmaker,
    set_shard_id,
)
from shardsession.exc import MultipleResultsFound, NoResultFound, ObjectDeletedError
from shardsession.orm import inspect
from shardsession.sql import delete, func, insert, select, update
from tests.coordinator.models_behaviour import BehaviourBase, Item, Report, WeatherLocation

SHARDS = ["s0", "s1", "s2", "s3"]


# -- fixtures and helpers ----------------------------------------------------------


@pytest.fixture(scope="module")
def schema(shard_pool: WorkerPool) -> Iterator[None]:
    BehaviourBase.metadata.create_all(shard_pool)
    yield
    BehaviourBase.metadata.drop_all(shard_pool)


@pytest.fixture
def s(schema: None, session: Session) -> Session:
    return session


@pytest.fixture
def make(
    schema: None, shard_pool: WorkerPool, session: Session
) -> Iterator[Callable[..., Session]]:
    """A factory of extra sessions over the pool, all closed after the test.

    Depends on ``session`` so that its teardown (which empties the shards) runs after
    these sessions are closed.
    """
    made: list[Session] = []

    def factory(**kw: Any) -> Session:
        sess = Session(shard_pool, **kw)
        made.append(sess)
        return sess

    yield factory
    for sess in made:
        sess.close()


def rows_on(dsns: dict[str, str], sql: str) -> dict[str, list[tuple]]:
    out = {}
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            out[shard] = conn.execute(sql).fetchall()
    return out


def item_ids(dsns: dict[str, str]) -> list[int]:
    return sorted(i for rows in rows_on(dsns, "SELECT id FROM bh_item").values() for (i,) in rows)


def items(n: int, start: int = 1) -> list[Item]:
    return [Item(id=i, tenant_id=i, name=f"n{i}", qty=i) for i in range(start, start + n)]


def seed(sess: Session, n: int) -> None:
    sess.add_all(items(n))
    sess.commit()


def tenant_on(shard: str, avoid: int = 0) -> int:
    """A tenant id whose items are routed to ``shard``."""
    return next(t for t in range(avoid + 1, 10_000) if shard_for_key(t, SHARDS) == shard)


def record(target: Any, names: list[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        event.listen(target, name, (lambda n: lambda *a, **k: seen.append(n))(name))
    return seen


def sql_counter(sess: Session) -> list[Any]:
    issued: list[Any] = []
    event.listen(sess, "do_orm_execute", lambda state: issued.append(state.statement))
    return issued


# -- 1. lifecycle and state ---------------------------------------------------------


def test_state_flags_through_a_full_lifecycle(s: Session) -> None:
    obj = Item(id=1, tenant_id=1, name="a")
    st = inspect(obj)
    assert (st.transient, st.pending, st.persistent) == (True, False, False)
    s.add(obj)
    assert st.pending and obj in s and object_session(obj) is s
    s.flush()
    assert st.persistent and not st.pending and st.key == (Item, (1,), st.identity_token)
    s.delete(obj)
    assert st.persistent and obj in s.deleted  # still persistent until the flush
    s.flush()
    assert st.deleted and obj not in s
    s.commit()
    assert st.detached and not st.deleted and object_session(obj) is None


def test_expunge_pending_gives_transient_and_persistent_gives_detached(s: Session) -> None:
    seed(s, 1)
    loaded = s.get(Item, 1)
    pending = Item(id=2, tenant_id=2, name="p")
    s.add(pending)
    s.expunge(pending)
    s.expunge(loaded)
    assert inspect(pending).transient and pending not in s
    assert inspect(loaded).detached and loaded not in s
    assert s.get(Item, 1) is not loaded  # a fresh object now represents the row


def test_new_dirty_deleted_report_pending_changes(s: Session) -> None:
    seed(s, 3)
    one, two, three = (s.get(Item, i) for i in (1, 2, 3))
    one.name = "changed"
    s.delete(two)
    fresh = Item(id=4, tenant_id=4, name="new")
    s.add(fresh)
    assert list(s.new) == [fresh]
    assert list(s.dirty) == [one]
    assert list(s.deleted) == [two]
    assert three not in s.dirty
    s.flush()
    assert not s.new and not s.dirty and not s.deleted


def test_dirty_counts_a_set_to_the_same_value_but_is_modified_does_not(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    obj.name = obj.name
    assert obj in s.dirty
    assert not s.is_modified(obj)
    obj.qty = obj.qty + 1
    assert s.is_modified(obj)


def test_iteration_and_contains(s: Session) -> None:
    seed(s, 2)
    a, b = s.get(Item, 1), s.get(Item, 2)
    c = Item(id=3, tenant_id=3, name="c")
    s.add(c)
    assert {id(o) for o in s} == {id(a), id(b), id(c)}
    assert c in s and a in s
    assert Item(id=1, tenant_id=1, name="other") not in s  # same key, different object


def test_expunge_all_detaches_everything(s: Session) -> None:
    seed(s, 3)
    loaded = s.scalars(select(Item)).all()
    new = Item(id=9, tenant_id=9, name="n")
    s.add(new)
    s.expunge_all()
    assert list(s) == [] and len(s.identity_map) == 0 and not s.new
    assert all(inspect(o).detached for o in loaded)
    assert inspect(new).transient


def test_add_object_attached_to_another_session_raises(
    s: Session, make: Callable[..., Session]
) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    other = make()
    with pytest.raises(InvalidRequestError, match="already attached"):
        other.add(obj)
    pending = Item(id=2, tenant_id=2, name="p")
    s.add(pending)
    with pytest.raises(InvalidRequestError):
        other.add(pending)


def test_delete_and_expunge_of_foreign_objects_raise(s: Session) -> None:
    with pytest.raises(InvalidRequestError, match="not persisted"):
        s.delete(Item(id=1, tenant_id=1, name="t"))
    with pytest.raises(InvalidRequestError, match="not present"):
        s.expunge(Item(id=1, tenant_id=1, name="t"))


def test_identity_map_is_weak_but_keeps_modified_objects(s: Session) -> None:
    seed(s, 2)
    clean, changed = s.get(Item, 1), s.get(Item, 2)
    clean_key, changed_key = inspect(clean).key, inspect(changed).key
    changed.name = "pending change"
    del clean, changed
    gc.collect()
    assert clean_key not in s.identity_map
    assert changed_key in s.identity_map
    s.commit()  # the held change is written
    gc.collect()
    assert changed_key not in s.identity_map
    assert s.get(Item, 2).name == "pending change"


def test_weak_identity_map_keeps_pending_objects(s: Session) -> None:
    s.add(Item(id=1, tenant_id=1, name="unreferenced"))
    gc.collect()
    assert len(s.new) == 1
    s.commit()
    assert s.get(Item, 1).name == "unreferenced"


# -- 2. transactions -----------------------------------------------------------------


def test_autobegin_on_first_statement(s: Session) -> None:
    assert not s.in_transaction() and s.get_transaction() is None
    s.execute(select(Item))
    trans = s.get_transaction()
    assert s.in_transaction() and trans is not None
    assert trans.origin is SessionTransactionOrigin.AUTOBEGIN
    assert trans.parent is None and not trans.nested and trans.is_active
    s.commit()
    assert not s.in_transaction() and not trans.is_active


def test_add_autobegins_like_sqlalchemy(s: Session) -> None:
    created = record(s, ["after_transaction_create"])
    s.add(Item(id=1, tenant_id=1, name="a"))
    assert s.in_transaction()
    assert created == ["after_transaction_create"]


def test_begin_twice_raises(s: Session) -> None:
    trans = s.begin()
    assert trans.origin is SessionTransactionOrigin.BEGIN
    with pytest.raises(InvalidRequestError, match="already"):
        s.begin()
    s.execute(select(Item))  # autobegin finds the explicit transaction
    with pytest.raises(InvalidRequestError):
        s.begin()
    s.rollback()
    s.begin()  # fine again after the end


def test_with_session_and_begin_commits(
    shard_pool: WorkerPool, schema: None, clean_shards: dict[str, str]
) -> None:
    with Session(shard_pool) as sess, sess.begin():
        sess.add_all(items(6))
    assert not sess.in_transaction()
    assert item_ids(clean_shards) == [1, 2, 3, 4, 5, 6]


def test_exception_inside_begin_block_rolls_back(
    shard_pool: WorkerPool, schema: None, clean_shards: dict[str, str]
) -> None:
    sess = Session(shard_pool)
    try:
        with pytest.raises(ZeroDivisionError), sess.begin():
            sess.add_all(items(5))
            sess.flush()
            1 / 0  # noqa: B018
        assert not sess.in_transaction()
        assert item_ids(clean_shards) == []
        assert not sess.new and len(sess.identity_map) == 0
    finally:
        sess.close()


def test_nested_transaction_accessors(s: Session) -> None:
    seed(s, 1)
    assert not s.in_nested_transaction() and s.get_nested_transaction() is None
    root_before = None
    nested = s.begin_nested()
    root = s.get_transaction()
    assert root is not root_before and root is not None
    assert s.in_transaction() and s.in_nested_transaction()
    assert s.get_nested_transaction() is nested
    assert nested.nested and nested.parent is root and nested.is_active
    assert nested.origin is SessionTransactionOrigin.BEGIN_NESTED
    assert root.origin is SessionTransactionOrigin.AUTOBEGIN and root.parent is None
    inner = s.begin_nested()
    assert inner.parent is nested and s.get_nested_transaction() is inner
    inner.commit()
    assert not inner.is_active and s.get_nested_transaction() is nested
    nested.commit()
    assert not s.in_nested_transaction() and s.in_transaction()


def test_savepoint_commit_keeps_its_rows(s: Session, shard_dsns: dict[str, str]) -> None:
    s.add(Item(id=1, tenant_id=1, name="outer"))
    with s.begin_nested():
        s.add_all(items(4, start=2))
    assert not s.in_nested_transaction()
    s.commit()
    assert item_ids(shard_dsns) == [1, 2, 3, 4, 5]


def test_savepoint_rollback_discards_only_its_rows(s: Session, shard_dsns: dict[str, str]) -> None:
    outer = items(4)  # spread over several shards before the savepoint
    s.add_all(outer)
    s.flush()
    sp = s.begin_nested()
    inner = items(6, start=10)  # some on shards first touched inside the savepoint
    s.add_all(inner)
    s.flush()
    sp.rollback()
    assert all(inspect(o).transient and o not in s for o in inner)
    assert s.get(Item, 12) is None
    assert all(inspect(o).persistent for o in outer)
    assert s.in_transaction() and not s.in_nested_transaction()
    s.commit()
    assert item_ids(shard_dsns) == [1, 2, 3, 4]


def test_savepoint_rollback_restores_values_of_before_the_savepoint(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    obj.name = "outer"
    s.flush()
    sp = s.begin_nested()
    obj.name = "inner"
    obj.qty = 99
    s.flush()
    sp.rollback()
    assert "name" in inspect(obj).expired_attributes  # expired, as SQLAlchemy does
    assert (obj.name, obj.qty) == ("outer", 1)
    s.rollback()
    assert obj.name == "n1"


def test_savepoint_rollback_brings_back_objects_deleted_in_it(s: Session) -> None:
    seed(s, 2)
    doomed = s.get(Item, 2)
    sp = s.begin_nested()
    s.delete(doomed)
    s.flush()
    assert inspect(doomed).deleted
    sp.rollback()
    assert inspect(doomed).persistent and doomed in s
    assert doomed.name == "n2"
    s.commit()
    assert s.scalar(select(func.count()).select_from(Item.__table__)) == 2


def test_savepoint_rollback_expunges_objects_added_in_it_unflushed(s: Session) -> None:
    seed(s, 1)
    sp = s.begin_nested()
    pending = Item(id=3, tenant_id=3, name="never flushed")
    s.add(pending)
    sp.rollback()
    assert inspect(pending).transient and pending not in s and not s.new
    s.commit()
    assert s.scalars(select(Item.id)).all() == [1]


def test_savepoint_rollback_reverts_unflushed_changes_made_in_it(s: Session) -> None:
    seed(s, 1)
    changed = s.get(Item, 1)
    sp = s.begin_nested()
    changed.name = "never flushed"
    sp.rollback()
    assert changed.name == "n1" and not s.dirty


def test_savepoint_rollback_cancels_unflushed_deletes_made_in_it(s: Session) -> None:
    seed(s, 1)
    doomed = s.get(Item, 1)
    sp = s.begin_nested()
    s.delete(doomed)
    sp.rollback()
    assert doomed not in s.deleted and inspect(doomed).persistent
    s.commit()
    assert s.scalars(select(Item.id)).all() == [1]


def test_close_keeps_loaded_state_of_detached_objects(
    s: Session, make: Callable[..., Session]
) -> None:
    seed(s, 1)
    other = make()
    obj = other.get(Item, 1)
    other.close()
    assert inspect(obj).detached
    assert (obj.name, obj.qty) == ("n1", 1)  # SQLAlchemy expunges before ending the transaction
    with make() as third:
        again = third.get(Item, 1)
    assert again.name == "n1"


def test_commit_with_savepoint_open_commits_everything(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    s.begin_nested()
    s.add_all(items(3))
    s.begin_nested()
    s.add(Item(id=4, tenant_id=4, name="deep"))
    s.commit()
    assert not s.in_transaction()
    assert item_ids(shard_dsns) == [1, 2, 3, 4]


def test_rollback_with_savepoint_open_rolls_back_everything(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    s.add(Item(id=1, tenant_id=1, name="a"))
    s.flush()
    nested = s.begin_nested()
    s.add(Item(id=2, tenant_id=2, name="b"))
    s.flush()
    s.rollback()
    assert not s.in_transaction() and not nested.is_active
    assert item_ids(shard_dsns) == []


def test_autobegin_false_requires_begin(make: Callable[..., Session]) -> None:
    sess = make(autobegin=False)
    with pytest.raises(InvalidRequestError, match=r"[Aa]utobegin"):
        sess.execute(select(Item))
    with pytest.raises(InvalidRequestError):
        sess.commit()
    sess.begin()
    sess.add(Item(id=1, tenant_id=1, name="a"))
    sess.commit()
    with pytest.raises(InvalidRequestError, match=r"[Aa]utobegin"):
        sess.get(Item, 1)  # the identity map was expired by commit: loading needs a transaction
    with sess.begin():
        assert sess.get(Item, 1).name == "a"


# -- 3. expiry and refresh --------------------------------------------------------------


def test_commit_expires_and_next_access_reloads(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    s.commit()
    assert inspect(obj).expired_attributes >= {"name", "qty"}
    assert "name" not in inspect(obj).dict
    assert obj.name == "n1"


def test_expire_on_commit_false_keeps_values_without_sql(make: Callable[..., Session]) -> None:
    sess = make(expire_on_commit=False)
    item = Item(id=1, tenant_id=1, name="kept")  # held: the identity map is weak
    sess.add(item)
    sess.commit()
    issued = sql_counter(sess)
    obj = sess.get(Item, 1)
    assert obj is item
    assert obj.name == "kept" and not inspect(obj).expired_attributes
    assert issued == []


def test_expire_named_attributes_discards_only_their_changes(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    obj.name, obj.qty = "local", 50
    s.expire(obj, ["name"])
    assert inspect(obj).expired_attributes == {"name"}
    assert obj.name == "n1" and obj.qty == 50
    assert s.is_modified(obj)


def test_expire_all_discards_every_change(s: Session) -> None:
    seed(s, 3)
    objs = s.scalars(select(Item)).all()
    for o in objs:
        o.name = "local"
    s.expire_all()
    assert not s.dirty
    assert sorted(o.name for o in objs) == ["n1", "n2", "n3"]


def test_refresh_reads_what_other_sessions_committed(
    s: Session, make: Callable[..., Session]
) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    other = make()
    other.get(Item, 1).qty = 500
    other.commit()
    assert obj.qty == 1  # still the loaded value
    s.refresh(obj)
    assert obj.qty == 500
    obj.name, obj.qty = "local", 7
    s.refresh(obj)  # expires everything first: local changes are discarded, nothing flushed
    assert (obj.name, obj.qty) == ("n1", 500)
    assert not s.is_modified(obj)


def test_refresh_named_attributes_keeps_other_local_changes(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    obj.name, obj.qty = "local", 7
    with s.no_autoflush:  # refresh() autoflushes like any query; keep qty=7 local
        s.refresh(obj, ["name"])
    assert (obj.name, obj.qty) == ("n1", 7)
    assert s.is_modified(obj)


def test_refresh_autoflushes_pending_changes_of_other_attributes(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    obj.name, obj.qty = "local", 7
    s.refresh(obj, ["name"])  # SQLAlchemy flushes qty=7 before the SELECT
    assert (obj.name, obj.qty) == ("n1", 7)
    s.refresh(obj)
    assert obj.qty == 7


def test_expired_object_whose_row_was_deleted_elsewhere(
    s: Session, make: Callable[..., Session]
) -> None:
    seed(s, 2)
    obj = s.get(Item, 1)
    s.commit()
    other = make()
    other.delete(other.get(Item, 1))
    other.commit()
    with pytest.raises(ObjectDeletedError):
        _ = obj.name
    s.rollback()
    assert s.get(Item, 1) is None  # get() of the stale identity finds nothing


def test_refresh_of_deleted_row_raises(s: Session, make: Callable[..., Session]) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    s.commit()
    other = make()
    other.execute(delete(Item))
    other.commit()
    with pytest.raises(InvalidRequestError, match="refresh"):
        s.refresh(obj)


# -- 4. results through the session ------------------------------------------------------


def test_scalars_first_one_and_their_errors(s: Session) -> None:
    seed(s, 8)
    all_items = s.scalars(select(Item).order_by(Item.id)).all()
    assert [o.id for o in all_items] == list(range(1, 9))
    assert s.scalars(select(Item).order_by(Item.id.desc())).first().id == 8
    assert s.scalars(select(Item).where(Item.id == 99)).first() is None
    with pytest.raises(NoResultFound):
        s.execute(select(Item).where(Item.id == 99)).one()
    with pytest.raises(MultipleResultsFound):
        s.execute(select(Item).where(Item.id > 2)).one()  # rows from several shards
    with pytest.raises(MultipleResultsFound):
        s.scalars(select(Item)).one_or_none()
    assert s.execute(select(Item).where(Item.id == 3)).scalar_one().id == 3
    assert s.scalars(select(Item).where(Item.id == 99)).one_or_none() is None
    assert s.scalar(select(Item.name).where(Item.id == 4)) == "n4"


def test_mappings_unique_and_partitions(s: Session) -> None:
    seed(s, 10)
    maps = s.execute(select(Item.id, Item.name).order_by(Item.id)).mappings().all()
    assert maps[0] == {"id": 1, "name": "n1"} and maps[0]["name"] == "n1"
    parities = s.execute(select(Item.id % 2).order_by(Item.id)).scalars().unique().all()
    assert sorted(parities) == [0, 1]
    parts = list(s.execute(select(Item.id).order_by(Item.id)).partitions(4))
    assert [len(p) for p in parts] == [4, 4, 2]
    assert [r[0] for p in parts for r in p] == list(range(1, 11))


def test_yield_per_streams_rows_from_four_shards(s: Session) -> None:
    rows = [{"id": i, "tenant_id": i, "name": f"r{i}", "qty": i % 7} for i in range(1, 5001)]
    s.execute(insert(Item), rows)
    s.commit()
    result = s.execute(select(Item).execution_options(yield_per=500))
    seen: set[int] = set()
    sizes = []
    shards = set()
    for part in result.partitions():
        sizes.append(len(part))
        for (obj,) in part:
            seen.add(obj.id)
            shards.add(inspect(obj).identity_token)
    assert seen == set(range(1, 5001))
    assert max(sizes) <= 500 and len(sizes) >= 10
    assert shards == set(SHARDS)


def test_cross_shard_update_and_delete_rowcount_is_summed(s: Session) -> None:
    seed(s, 20)
    upd = s.execute(update(Item).where(Item.qty > 10).values(name="big"))
    assert upd.rowcount == 10
    dele = s.execute(delete(Item).where(Item.qty <= 5))
    assert dele.rowcount == 5
    s.commit()
    assert s.scalar(select(func.count()).select_from(Item.__table__)) == 15


def test_bulk_update_synchronizes_loaded_objects(s: Session) -> None:
    seed(s, 4)
    objs = s.scalars(select(Item)).all()
    s.execute(update(Item).values(name="bulk"))
    assert {o.name for o in objs} == {"bulk"}


# -- 5. routing precedence through the Session --------------------------------------------


def test_set_shard_id_option_queries_one_shard(s: Session, shard_dsns: dict[str, str]) -> None:
    seed(s, 24)
    on_s2 = sorted(i for (i,) in rows_on({"s2": shard_dsns["s2"]}, "SELECT id FROM bh_item")["s2"])
    assert on_s2, "seed put nothing on s2"
    found = s.scalars(select(Item).options(set_shard_id("s2"))).all()
    assert sorted(o.id for o in found) == on_s2
    assert {inspect(o).identity_token for o in found} == {"s2"}


def test_shard_pinning_precedence(s: Session, shard_dsns: dict[str, str]) -> None:
    seed(s, 24)
    by_shard = {
        sh: sorted(i for (i,) in rows)
        for sh, rows in rows_on(shard_dsns, "SELECT id FROM bh_item").items()
    }
    stmt = select(Item.id)

    def ids(**kw: Any) -> list[int]:
        return sorted(s.scalars(**kw).all())

    assert ids(statement=stmt, bind_arguments={"shard_id": "s1"}) == by_shard["s1"]
    assert ids(statement=stmt.execution_options(shard_id="s3")) == by_shard["s3"]
    assert ids(statement=stmt, execution_options={"shard_id": "s0"}) == by_shard["s0"]
    # execution option beats bind_arguments; the option on the statement beats both
    assert (
        ids(statement=stmt, execution_options={"shard_id": "s0"}, bind_arguments={"shard_id": "s1"})
        == by_shard["s0"]
    )
    assert (
        ids(
            statement=select(Item.id).options(set_shard_id("s2")),
            execution_options={"shard_id": "s0"},
            bind_arguments={"shard_id": "s1"},
        )
        == by_shard["s2"]
    )


def test_same_primary_key_on_two_shards_and_identity_token(s: Session) -> None:
    t0 = tenant_on("s0")
    t3 = tenant_on("s3")
    s.add(Item(id=7, tenant_id=t0, name="on s0"))
    s.commit()
    s.add(Item(id=7, tenant_id=t3, name="on s3"))
    s.commit()
    a = s.get(Item, 7, identity_token="s0")
    b = s.get(Item, 7, identity_token="s3")
    assert a is not b and (a.name, b.name) == ("on s0", "on s3")
    assert s.identity_key(Item, 7, identity_token="s3") == inspect(b).key
    assert s.get(Item, 7, identity_token="s1") is None
    both = s.scalars(select(Item).where(Item.id == 7)).all()
    assert {id(o) for o in both} == {id(a), id(b)}


CONTINENTS = {"North America": "s0", "Asia": "s1", "Europe": "s2", "South America": "s3"}


def _weather_session(make: Callable[..., Session], calls: dict[str, list[Any]]) -> Session:
    def shard_chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
        calls["shard"].append(type(instance).__name__)
        if isinstance(instance, Report):
            instance = instance.location
        return CONTINENTS[instance.continent]

    def identity_chooser(
        mapper: Any,
        primary_key: Any,
        *,
        lazy_loaded_from: Any,
        execution_options: Any,
        bind_arguments: Any,
        **kw: Any,
    ) -> list[str]:
        calls["identity"].append(lazy_loaded_from)
        if lazy_loaded_from is not None:
            return [lazy_loaded_from.identity_token]
        return list(CONTINENTS.values())

    def execute_chooser(state: Any) -> list[str]:
        calls["execute"].append(state)
        if state.lazy_loaded_from is not None:
            return [state.lazy_loaded_from.identity_token]
        wanted = state.execution_options.get("continents")
        if wanted:
            return [CONTINENTS[c] for c in wanted]
        return list(CONTINENTS.values())

    return make(
        shard_chooser=shard_chooser,
        identity_chooser=identity_chooser,
        execute_chooser=execute_chooser,
    )


def _seed_weather(sess: Session) -> None:
    cities = [
        ("North America", "Toronto"),
        ("North America", "New York"),
        ("Asia", "Tokyo"),
        ("Asia", "Shanghai"),
        ("Europe", "London"),
        ("Europe", "Dublin"),
        ("South America", "Brasilia"),
        ("South America", "Quito"),
    ]
    for n, (continent, city) in enumerate(cities, start=1):
        loc = WeatherLocation(id=n, continent=continent, city=city)
        loc.reports = [
            Report(id=n * 10, temperature=float(n)),
            Report(id=n * 10 + 1, temperature=-n),
        ]
        sess.add(loc)
    sess.commit()


def test_weather_reports_sharded_by_continent(
    make: Callable[..., Session], shard_dsns: dict[str, str]
) -> None:
    calls: dict[str, list[Any]] = {"shard": [], "identity": [], "execute": []}
    sess = _weather_session(make, calls)
    _seed_weather(sess)
    placed = rows_on(shard_dsns, "SELECT city FROM bh_weather_location ORDER BY city")
    assert placed["s1"] == [("Shanghai",), ("Tokyo",)]
    assert placed["s2"] == [("Dublin",), ("London",)]
    reports = rows_on(shard_dsns, "SELECT count(*) FROM bh_report")
    assert all(v == [(4,)] for v in reports.values())  # each report went with its location
    assert "Report" in calls["shard"]

    sess.close()
    asia = sess.scalars(
        select(WeatherLocation)
        .execution_options(continents=["Asia"])
        .order_by(WeatherLocation.city)
    ).all()
    assert [c.city for c in asia] == ["Shanghai", "Tokyo"]
    assert {inspect(c).identity_token for c in asia} == {"s1"}
    everywhere = sess.scalars(select(WeatherLocation).order_by(WeatherLocation.id)).all()
    assert len(everywhere) == 8

    sess.close()
    dublin = sess.get(WeatherLocation, 6)
    assert dublin.city == "Dublin" and inspect(dublin).identity_token == "s2"
    assert calls["identity"][-1] is None
    temps = [r.temperature for r in dublin.reports]  # lazy load stays on the location's shard
    assert temps == [6.0, -6.0]
    assert {inspect(r).identity_token for r in dublin.reports} == {"s2"}
    assert dublin.reports[0].location is dublin

    # a change to a loaded object is written back to the shard it came from
    dublin.city = "Baile Atha Cliath"
    sess.commit()
    moved = rows_on({"s2": shard_dsns["s2"]}, "SELECT city FROM bh_weather_location WHERE id = 6")
    assert moved["s2"] == [("Baile Atha Cliath",)]


def test_execute_chooser_receives_the_execute_state(make: Callable[..., Session]) -> None:
    calls: dict[str, list[Any]] = {"shard": [], "identity": [], "execute": []}
    sess = _weather_session(make, calls)
    _seed_weather(sess)
    calls["execute"].clear()
    sess.execute(
        select(WeatherLocation.city), bind_arguments={"shard_id": "s3"}
    ).all()  # pinned: the chooser is not asked
    assert calls["execute"] == []
    rows = sess.execute(
        select(WeatherLocation.city).execution_options(continents=["Europe", "Asia"])
    ).all()
    assert sorted(r[0] for r in rows) == ["Dublin", "London", "Shanghai", "Tokyo"]
    (state,) = calls["execute"]
    assert state.is_select and state.session is sess


# -- 6. events --------------------------------------------------------------------------

LIFECYCLE_EVENTS = [
    "before_flush",
    "after_flush",
    "after_flush_postexec",
    "before_commit",
    "after_commit",
    "after_begin",
    "after_transaction_create",
    "after_transaction_end",
    "after_rollback",
    "after_soft_rollback",
]


def test_commit_event_order(s: Session) -> None:
    s.add(Item(id=1, tenant_id=1, name="a"))
    seen = record(s, LIFECYCLE_EVENTS)
    s.commit()
    core = [e for e in seen if e not in ("after_transaction_create", "after_transaction_end")]
    assert core == [
        "before_commit",
        "before_flush",
        "after_begin",
        "after_flush",
        "after_flush_postexec",
        "after_commit",
    ]
    assert seen[-1] == "after_transaction_end"


def test_after_begin_once_per_shard_touched(s: Session) -> None:
    begun: list[Any] = []
    event.listen(s, "after_begin", lambda sess, trans, conn: begun.append(trans))
    s.execute(select(Item))  # all four shards
    assert len(begun) == 4 and all(t is s.get_transaction() for t in begun)
    s.execute(select(Item))
    assert len(begun) == 4


def test_rollback_event_order(s: Session) -> None:
    s.execute(select(Item))
    seen = record(s, LIFECYCLE_EVENTS)
    s.rollback()
    assert seen == ["after_rollback", "after_transaction_end", "after_soft_rollback"]
    s.rollback()  # nothing begun: nothing fires
    assert len(seen) == 3


def test_savepoint_events(s: Session) -> None:
    seed(s, 1)
    created: list[Any] = []
    ended: list[Any] = []
    soft: list[Any] = []
    event.listen(s, "after_transaction_create", lambda sess, t: created.append(t))
    event.listen(s, "after_transaction_end", lambda sess, t: ended.append(t))
    event.listen(s, "after_soft_rollback", lambda sess, t: soft.append(t))
    sp = s.begin_nested()
    assert sp in created
    s.add(Item(id=2, tenant_id=2, name="x"))
    s.flush()
    sp.rollback()
    assert sp in ended and sp in soft
    assert s.in_transaction()


def test_after_transaction_end_for_every_level_on_commit(s: Session) -> None:
    ended: list[bool] = []
    event.listen(s, "after_transaction_end", lambda sess, t: ended.append(t.nested))
    s.begin_nested()
    s.begin_nested()
    s.commit()
    assert ended == [True, True, False]


def test_after_transaction_end_for_every_level_on_rollback(s: Session) -> None:
    ended: list[bool] = []
    event.listen(s, "after_transaction_end", lambda sess, t: ended.append(t.nested))
    s.begin_nested()
    s.begin_nested()
    s.rollback()
    assert ended == [True, True, False]


def test_instance_state_events(s: Session) -> None:
    got: list[tuple[str, int]] = []
    for name in ("transient_to_pending", "pending_to_persistent", "persistent_to_detached"):
        event.listen(s, name, (lambda n: lambda sess, obj: got.append((n, obj.id)))(name))
    obj = Item(id=1, tenant_id=1, name="a")
    s.add(obj)
    s.flush()
    s.expunge(obj)
    assert got == [
        ("transient_to_pending", 1),
        ("pending_to_persistent", 1),
        ("persistent_to_detached", 1),
    ]


def test_do_orm_execute_flags_and_bind_arguments(s: Session) -> None:
    seed(s, 4)
    states: list[Any] = []
    event.listen(s, "do_orm_execute", states.append)
    s.execute(select(Item), bind_arguments={"shard_id": "s1"})
    s.execute(update(Item).values(qty=0))
    s.execute(delete(Item).where(Item.id == 1))
    sel, upd, dele = states
    assert (sel.is_select, sel.is_update, sel.is_delete) == (True, False, False)
    assert (upd.is_select, upd.is_update, upd.is_delete) == (False, True, False)
    assert (dele.is_select, dele.is_update, dele.is_delete) == (False, False, True)
    assert sel.bind_arguments["shard_id"] == "s1"
    assert sel.is_orm_statement and sel.bind_mapper is inspect(Item)


def test_do_orm_execute_update_execution_options(s: Session) -> None:
    seed(s, 12)
    obj = s.get(Item, 1)
    obj.name = "local"

    @event.listens_for(s, "do_orm_execute")
    def refresh_everything(state: Any) -> None:
        if state.is_select:
            state.update_execution_options(populate_existing=True, autoflush=False)

    s.scalars(select(Item)).all()
    assert obj.name == "n1"  # populate_existing overwrote the unflushed change


def test_do_orm_execute_can_reroute_through_execution_options(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    seed(s, 16)
    on_s3 = sorted(i for (i,) in rows_on({"s3": shard_dsns["s3"]}, "SELECT id FROM bh_item")["s3"])

    @event.listens_for(s, "do_orm_execute")
    def pin(state: Any) -> None:
        state.update_execution_options(shard_id="s3")

    assert sorted(s.scalars(select(Item.id)).all()) == on_s3


def test_do_orm_execute_result_replaces_execution(s: Session) -> None:
    seed(s, 6)
    issued: list[Any] = []

    @event.listens_for(s, "do_orm_execute")
    def swap(state: Any) -> Any:
        issued.append(state.statement)
        if state.is_select and state.execution_options.get("swap"):
            return state.invoke_statement(statement=select(Item.id).where(Item.id == 5))
        return None

    assert s.scalars(select(Item.id).execution_options(swap=True)).all() == [5]
    assert len(issued) == 1  # invoke_statement does not run this listener again

    cached = s.execute(select(Item.name).where(Item.id == 2)).all()

    @event.listens_for(s, "do_orm_execute")
    def from_cache(state: Any) -> Any:
        if state.execution_options.get("cached"):
            return type(state.invoke_statement())(["name"], iter(cached))
        return None

    res = s.execute(select(Item.name).execution_options(cached=True))
    assert [r[0] for r in res] == ["n2"]


def test_do_orm_execute_invoke_statement_with_params(s: Session) -> None:
    seed(s, 6)
    from shardsession.sql import bindparam

    @event.listens_for(s, "do_orm_execute")
    def bump(state: Any) -> Any:
        if state.is_select and state.parameters:
            return state.invoke_statement(params={"wanted": state.parameters["wanted"] + 1})
        return None

    stmt = select(Item.id).where(Item.id == bindparam("wanted"))
    assert s.scalars(stmt, {"wanted": 3}).all() == [4]


def test_listeners_on_session_class_and_on_sessionmaker(
    shard_pool: WorkerPool, schema: None, clean_shards: dict[str, str]
) -> None:
    class_seen: list[Session] = []
    maker_seen: list[Session] = []

    def on_class(sess: Session) -> None:
        class_seen.append(sess)

    def on_maker(sess: Session) -> None:
        maker_seen.append(sess)

    maker = sessionmaker(shard_pool)
    other_maker = sessionmaker(shard_pool)
    event.listen(Session, "before_commit", on_class)
    event.listen(maker, "before_commit", on_maker)
    try:
        made_before = maker()
        made_other = other_maker()
        for sess in (made_before, made_other):
            sess.execute(select(Item))
            sess.commit()
        made_after = maker()
        made_after.commit()
        assert class_seen == [made_before, made_other, made_after]
        assert maker_seen == [made_before, made_after]
    finally:
        event.remove(Session, "before_commit", on_class)
        event.remove(maker, "before_commit", on_maker)
        for sess in (made_before, made_other, made_after):
            sess.close()


# -- 7. merge, utilities ------------------------------------------------------------------


def test_merge_with_load_copies_onto_the_session_object(s: Session) -> None:
    seed(s, 2)
    s.close()
    detached = Item(id=2, tenant_id=2, name="merged", qty=2)
    merged = s.merge(detached)
    assert merged is not detached and detached not in s
    assert inspect(merged).persistent and merged.name == "merged"
    assert s.is_modified(merged) and merged in s.dirty
    again = s.merge(Item(id=2, tenant_id=2, name="merged", qty=2))
    assert again is merged
    brand_new = s.merge(Item(id=50, tenant_id=50, name="new"))
    assert inspect(brand_new).pending and brand_new in s.new
    s.commit()
    assert s.scalar(select(Item.name).where(Item.id == 2)) == "merged"
    assert s.get(Item, 50) is brand_new


def test_merge_without_load_emits_no_sql(s: Session, make: Callable[..., Session]) -> None:
    seed(s, 1)
    loader = make(expire_on_commit=False)
    clean = loader.get(Item, 1)
    loader.expunge(clean)
    issued = sql_counter(s)
    merged = s.merge(clean, load=False)
    assert issued == []
    assert inspect(merged).persistent and merged is not clean
    assert merged.name == "n1" and not s.is_modified(merged) and merged not in s.dirty
    assert inspect(merged).key == inspect(clean).key


def test_merge_without_load_of_transient_raises(s: Session) -> None:
    with pytest.raises(InvalidRequestError):
        s.merge(Item(id=1, tenant_id=1, name="t"), load=False)


def test_make_transient_then_insert_as_new_row(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    make_transient(obj)
    st = inspect(obj)
    assert st.transient and st.key is None and obj not in s
    assert obj.name == "n1"
    obj.id = 2
    s.add(obj)
    s.commit()
    assert sorted(s.scalars(select(Item.id)).all()) == [1, 2]


def test_make_transient_to_detached_then_delete_without_loading(s: Session) -> None:
    seed(s, 3)
    s.close()
    stub = Item(id=3, tenant_id=3)
    make_transient_to_detached(stub)
    assert inspect(stub).detached
    s.add(stub)
    assert inspect(stub).persistent and inspect(stub).identity_token == shard_for_key(3, SHARDS)
    assert stub.name == "n3"  # unloaded attributes load on access
    s.delete(stub)
    s.commit()
    assert sorted(s.scalars(select(Item.id)).all()) == [1, 2]


def test_close_all_sessions_detaches_everything(s: Session, make: Callable[..., Session]) -> None:
    seed(s, 2)
    other = make()
    a = s.get(Item, 1)
    b = other.get(Item, 2)
    close_all_sessions()
    assert inspect(a).detached and inspect(b).detached
    assert not s.in_transaction() and not other.in_transaction()
    assert object_session(a) is None and Session.object_session(b) is None


def test_identity_key_and_object_session(s: Session) -> None:
    seed(s, 1)
    obj = s.get(Item, 1)
    token = inspect(obj).identity_token
    assert Session.identity_key(Item, 1, identity_token=token) == (Item, (1,), token)
    assert Session.identity_key(Item, (1,), identity_token=token) == inspect(obj).key
    assert Session.identity_key(instance=obj) == inspect(obj).key
    assert Session.object_session(obj) is s
    assert Session.object_session(Item(id=5, tenant_id=5, name="t")) is None


def test_sessionmaker_configure_and_info(
    shard_pool: WorkerPool, schema: None, clean_shards: dict[str, str]
) -> None:
    maker = sessionmaker(shard_pool, info={"app": "x"})
    first = maker(info={"req": 1})
    assert first.info == {"app": "x", "req": 1}
    assert maker().info == {"app": "x"} and maker().info is not first.info
    assert first.expire_on_commit is True
    maker.configure(expire_on_commit=False)
    second = maker()
    assert second.expire_on_commit is False and first.expire_on_commit is True
    second.add(Item(id=1, tenant_id=1, name="kept"))
    second.commit()
    assert not inspect(second.get(Item, 1)).expired_attributes
    first.close()
    second.close()


def test_session_info_is_per_session_and_persistent(
    s: Session, make: Callable[..., Session]
) -> None:
    s.info["k"] = 1
    s.commit()
    s.close()
    assert s.info == {"k": 1}
    assert make().info == {}
    given = {"a": 1}
    assert make(info=given).info == given


# -- more events and flush hooks ------------------------------------------------------------


def test_do_orm_execute_sees_get_that_misses_the_identity_map(s: Session) -> None:
    seed(s, 2)
    s.expunge_all()
    states: list[Any] = []
    event.listen(s, "do_orm_execute", states.append)
    obj = s.get(Item, 1)  # the primary key does not name the shard: every shard is asked
    assert obj is not None and obj.name == "n1"
    assert len(states) == 1 and states[0].is_select
    assert s.get(Item, 1) is obj
    assert len(states) == 1  # an identity map hit runs no statement


def test_do_orm_execute_sees_get_routed_by_identity_token(s: Session) -> None:
    seed(s, 2)
    token = inspect(s.get(Item, 2)).identity_token
    s.expunge_all()
    states: list[Any] = []
    event.listen(s, "do_orm_execute", states.append)
    assert s.get(Item, 2, identity_token=token).name == "n2"
    assert len(states) == 1 and states[0].is_select


def test_after_flush_still_sees_the_pre_flush_collections(s: Session) -> None:
    seed(s, 2)
    snaps: list[tuple[str, int, int, int]] = []

    def snap(name: str) -> Callable[..., None]:
        return lambda sess, ctx: snaps.append(
            (name, len(sess.new), len(sess.dirty), len(sess.deleted))
        )

    event.listen(s, "after_flush", snap("after_flush"))
    event.listen(s, "after_flush_postexec", snap("postexec"))
    one, two = s.get(Item, 1), s.get(Item, 2)
    _ = (one.name, two.name)  # loaded before any change: no autoflush in between
    s.add(Item(id=3, tenant_id=3, name="new"))
    one.name = "changed"
    s.delete(two)
    s.flush()
    assert snaps == [("after_flush", 1, 1, 1), ("postexec", 0, 0, 0)]


def test_before_flush_can_add_objects_to_the_same_flush(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    added: list[Item] = []

    @event.listens_for(s, "before_flush")
    def audit(sess: Session, ctx: Any, instances: Any) -> None:
        if not added:
            added.append(Item(id=99, tenant_id=99, name="audit"))
            sess.add(added[0])

    s.add(Item(id=1, tenant_id=1, name="a"))
    s.flush()
    assert inspect(added[0]).persistent
    s.commit()
    assert item_ids(shard_dsns) == [1, 99]


def test_delete_events_and_was_deleted(s: Session) -> None:
    from shardsession.orm import was_deleted

    seed(s, 1)
    got: list[str] = []
    for name in ("persistent_to_deleted", "deleted_to_detached"):
        event.listen(s, name, (lambda n: lambda sess, obj: got.append(n))(name))
    obj = s.get(Item, 1)
    s.delete(obj)
    assert not was_deleted(obj)
    s.flush()
    assert was_deleted(obj) and got == ["persistent_to_deleted"]
    assert s.get(Item, 1) is None  # gone within the transaction
    s.commit()
    assert got == ["persistent_to_deleted", "deleted_to_detached"]


def test_savepoint_context_manager_rolls_back_only_the_savepoint_on_error(
    s: Session, shard_dsns: dict[str, str]
) -> None:
    s.add(Item(id=1, tenant_id=1, name="kept"))
    with pytest.raises(KeyError), s.begin_nested():
        s.add(Item(id=2, tenant_id=2, name="lost"))
        s.flush()
        raise KeyError("boom")
    assert s.in_transaction() and not s.in_nested_transaction()
    s.commit()
    assert item_ids(shard_dsns) == [1]


def test_local_execution_options_exclude_the_statement_options(s: Session) -> None:
    states: list[Any] = []
    event.listen(s, "do_orm_execute", states.append)
    s.execute(select(Item).execution_options(on_stmt=1), execution_options={"local": 2})
    (state,) = states
    assert state.local_execution_options == {"local": 2}
    assert state.execution_options["on_stmt"] == 1 and state.execution_options["local"] == 2


def test_bulk_delete_removes_matched_objects_from_the_session(s: Session) -> None:
    seed(s, 3)
    gone, kept = s.get(Item, 1), s.get(Item, 2)
    _ = (gone.name, kept.name)
    result = s.execute(delete(Item).where(Item.id == 1))
    assert result.rowcount == 1
    assert gone not in s and inspect(gone).deleted
    assert kept in s and inspect(kept).persistent
    assert s.get(Item, 1) is None


def test_is_modified_collections_and_expunge_cascade(make: Callable[..., Session]) -> None:
    calls: dict[str, list[Any]] = {"shard": [], "identity": [], "execute": []}
    sess = _weather_session(make, calls)
    _seed_weather(sess)
    loc = sess.scalars(
        select(WeatherLocation)
        .execution_options(continents=["Asia"])
        .where(WeatherLocation.id == 3)
    ).one()
    reports = list(loc.reports)
    loc.reports.append(Report(id=999, temperature=0.0))
    assert sess.is_modified(loc)
    assert not sess.is_modified(loc, include_collections=False)
    sess.expunge(loc)
    assert all(r not in sess for r in reports)
    assert inspect(loc).detached


def test_bulk_update_keeps_unflushed_changes_of_other_objects(s: Session) -> None:
    seed(s, 2)
    one, two = s.get(Item, 1), s.get(Item, 2)
    _ = (one.name, two.name)
    two.name = "local"
    s.execute(update(Item).where(Item.id == 1).values(qty=0))
    assert one.qty == 0
    assert two.name == "local"
    s.commit()
    assert s.scalar(select(Item.name).where(Item.id == 2)) == "local"
