"""Statements on several shards: merged results equal one database's.

Every query runs twice: on shardsession over 4 shards, and with plain SQLAlchemy
on one table (``item_ref`` on shard s0's database) holding every row.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from shardsession.coordinator.routing import shard_for_key
from sqlalchemy import (
    Float,
    Integer,
    String,
    desc,
    distinct,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column
from sqlalchemy.orm import Session as PlainSession

import shardsession as ss

from .models import Item

N = 600


def _distinct_on(stmt: Any, *exprs: Any) -> Any:
    try:  # SQLAlchemy 2.1's spelling; 2.0 takes the expressions in distinct()
        from sqlalchemy.dialects.postgresql import distinct_on
    except ImportError:
        return stmt.distinct(*exprs)
    return stmt.ext(distinct_on(*exprs))


class RefBase(DeclarativeBase):
    pass


class ItemRef(RefBase):
    __tablename__ = "item_ref"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    x: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(40))
    val: Mapped[float | None] = mapped_column(Float, nullable=True)


def _data() -> list[dict[str, Any]]:
    rnd = random.Random(12)
    return [
        {"id": i, "x": rnd.randrange(50), "name": rnd.choice(["ann", "bob", "Cid", "dee", "é"]),
         "val": None if rnd.random() < 0.15 else round(rnd.uniform(-5, 5), 2)}
        for i in range(N)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(shards: ss.ShardSet, direct: dict[str, Any], shard_dsns: dict[str, str]
           ) -> Iterator[Any]:  # fmt: skip
    from shardsession.testing import truncate_all  # noqa: F401  (same cleaning as the plugin)

    rows = _data()
    with ss.Session(shards) as s:
        s.execute(text("DELETE FROM co_item"), bind_arguments={"shard_id": "s0"})
        for shard in shards:
            s.execute(text("DELETE FROM co_item"), bind_arguments={"shard_id": shard})
        s.add_all([Item(**r) for r in rows])
        s.commit()
    ref = direct["s0"]
    RefBase.metadata.drop_all(ref)
    RefBase.metadata.create_all(ref)
    with PlainSession(ref) as s:
        s.add_all([ItemRef(**r) for r in rows])
        s.commit()
    yield ref
    RefBase.metadata.drop_all(ref)
    with ss.Session(shards) as s:
        for shard in shards:
            s.execute(text("DELETE FROM co_item"), bind_arguments={"shard_id": shard})
        s.commit()


def _objects(rows: list[Any]) -> list[Any]:
    # float sums depend on the order of addition (as in PostgreSQL's parallel plans)
    return [
        (o.id, o.x, o.name, o.val) if hasattr(o, "val")
        else float(f"{o:.12g}") if isinstance(o, float) else o
        for o in rows
    ]  # fmt: skip


QUERIES: list[tuple[str, Callable[[Any], Any]]] = [
    ("order_by_limit", lambda M: select(M).order_by(M.x, M.id).limit(37)),
    ("desc_offset", lambda M: select(M).order_by(M.x.desc(), M.id).offset(50).limit(30)),
    ("nulls_first", lambda M: select(M).order_by(M.val.asc().nulls_first(), M.id).limit(40)),
    ("desc_nulls_default", lambda M: select(M).order_by(M.val.desc(), M.id).limit(40)),
    ("where_order", lambda M: select(M).where(M.x < 10).order_by(M.name, M.id)),
    (
        "expr_order",
        lambda M: select(M).where(M.val.is_not(None)).order_by(M.x + M.val, M.id).limit(25),
    ),
    ("offset_only", lambda M: select(M).order_by(M.id).offset(N - 7)),
    ("columns", lambda M: select(M.id, M.x).order_by(M.x.desc(), M.id).limit(9)),
    ("distinct", lambda M: select(M.name).distinct().order_by(M.name)),
    ("distinct_on", lambda M: _distinct_on(select(M.x, M.id), M.x).order_by(M.x, M.id.desc())),
    ("distinct_on_entity", lambda M: _distinct_on(select(M), M.name).order_by(M.name, M.x, M.id)),
    ("count", lambda M: select(func.count()).select_from(M)),
    (
        "aggregates",
        lambda M: select(
            func.count(M.val), func.sum(M.x), func.min(M.val), func.max(M.name), func.avg(M.x)
        ),
    ),
    (
        "group_by",
        lambda M: (
            select(M.name, func.count(), func.avg(M.val), func.max(M.x))
            .group_by(M.name)
            .order_by(M.name)
        ),
    ),
    (
        "group_order_agg_limit",
        lambda M: (
            select(M.x, func.count().label("n"))
            .group_by(M.x)
            .order_by(func.count().desc(), M.x)
            .limit(5)
        ),
    ),
    (
        "having",
        lambda M: (
            select(M.x, func.sum(M.val)).group_by(M.x).having(func.count() > 12).order_by(M.x)
        ),
    ),
    (
        "group_by_unselected",
        lambda M: select(func.count()).select_from(M).group_by(M.name).order_by(func.count()),
    ),
    ("empty_aggregate", lambda M: select(func.sum(M.x), func.count()).where(M.x > 1000)),
]


@pytest.mark.parametrize("name,query", QUERIES, ids=[q[0] for q in QUERIES])
def test_merged_equals_one_database(loaded: Any, shards: ss.ShardSet, name: str,
                                    query: Callable[[Any], Any]) -> None:  # fmt: skip
    with PlainSession(loaded) as ref_session:
        expected = _objects(list(ref_session.execute(query(ItemRef)).all()))
    with ss.Session(shards) as s:
        got = _objects(list(s.execute(query(Item)).all()))
    expected = [tuple(_objects(list(r))) for r in expected]
    got = [tuple(_objects(list(r))) for r in got]
    assert got == expected


def test_objects_carry_their_shard(loaded: Any, shards: ss.ShardSet) -> None:
    names = list(shards)
    with ss.Session(shards) as s:
        items = s.scalars(select(Item).order_by(Item.x, Item.id).limit(100)).all()
        assert {inspect(o).identity_token for o in items} == set(names)
        for o in items:
            assert inspect(o).key[2] == shard_for_key(names, o.id)
        again = s.scalars(select(Item).order_by(Item.x, Item.id).limit(5)).all()
        assert again[0] is items[0]  # the identity map holds one object per row
        items[0].x = -1  # autoflushed before the next broadcast
        assert s.scalars(select(Item).order_by(Item.x, Item.id).limit(1)).one() is items[0]
        s.rollback()


def test_streaming_merges_lazily(loaded: Any, shards: ss.ShardSet) -> None:
    with PlainSession(loaded) as ref_session:
        expected = [
            o.id for o in ref_session.scalars(select(ItemRef).order_by(ItemRef.x, ItemRef.id))
        ]
    with ss.Session(shards) as s:
        result = s.scalars(select(Item).order_by(Item.x, Item.id).execution_options(yield_per=50))
        got = [o.id for o in result]
    assert got == expected


def test_update_and_delete_reach_every_shard(loaded: Any, shards: ss.ShardSet) -> None:
    with ss.Session(shards) as s:
        result = s.execute(update(Item).where(Item.x < 5).values(x=Item.x + 1000))
        with PlainSession(loaded) as ref_session:
            expected = ref_session.scalar(select(func.count()).where(ItemRef.x < 5))
        assert result.rowcount == expected > 0
        assert s.scalar(select(func.count()).where(Item.x >= 1000)) == expected
        s.rollback()
        assert s.scalar(select(func.count()).where(Item.x >= 1000)) == 0


@pytest.mark.parametrize(
    "query,match",
    [
        (lambda M: select(func.count(distinct(M.x))), "DISTINCT"),
        (lambda M: select(func.string_agg(M.name, ",")), "string_agg"),
        (lambda M: select(func.count() + 1), "inside an expression"),
        (lambda M: select(M.id, func.row_number().over(order_by=M.id)), "window"),
        (lambda M: select(M.id).union(select(M.id)), "UNION"),
        (lambda M: text("SELECT id FROM co_item ORDER BY id LIMIT 3"), "textual SELECT"),
    ],
    ids=["count_distinct", "string_agg", "nested", "window", "union", "text_order"],
)
def test_what_cannot_merge_raises(loaded: Any, shards: ss.ShardSet, query: Any, match: str
                                  ) -> None:  # fmt: skip
    with ss.Session(shards) as s, pytest.raises(ss.exc.CrossShardError, match=match):
        s.execute(query(Item))


def test_plain_textual_select_concatenates(loaded: Any, shards: ss.ShardSet) -> None:
    with ss.Session(shards) as s:
        ids = sorted(r[0] for r in s.execute(text("SELECT id FROM co_item WHERE x = 3")))
    with PlainSession(loaded) as ref_session:
        expected = sorted(ref_session.scalars(select(ItemRef.id).where(ItemRef.x == 3)))
    assert ids == expected


def test_legacy_query_merges_like_select(loaded: Any, shards: ss.ShardSet) -> None:
    with PlainSession(loaded) as ref_session:
        expected = [(o.id, o.x) for o in ref_session.query(ItemRef).order_by(ItemRef.x, ItemRef.id)]
        pairs = ref_session.query(ItemRef.id, ItemRef.x).order_by(ItemRef.x, ItemRef.id).all()
    with ss.Session(shards) as s:
        objects = s.query(Item).order_by(Item.x, Item.id).all()
        assert all(isinstance(o, Item) for o in objects)  # objects, not 1-tuples
        assert [(o.id, o.x) for o in objects] == expected
        assert s.query(Item.id, Item.x).order_by(Item.x, Item.id).all() == pairs
        assert s.query(Item).order_by(Item.x, Item.id).first().id == expected[0][0]


def test_same_named_columns_keep_their_positions(loaded: Any, shards: ss.ShardSet) -> None:
    # Result.columns() finds positions by name: two columns named "id" must not collapse
    other = aliased(Item)
    stmt = (select(Item.id, other.id).join(other, other.x == Item.x)
            .where(Item.x < 3).order_by(Item.id, other.id))  # fmt: skip
    ref_other = aliased(ItemRef)
    ref_stmt = (select(ItemRef.id, ref_other.id).join(ref_other, ref_other.x == ItemRef.x)
                .where(ItemRef.x < 3).order_by(ItemRef.id, ref_other.id))  # fmt: skip
    with PlainSession(loaded) as ref_session:
        expected = ref_session.execute(ref_stmt).all()
    with ss.Session(shards) as s:
        # a self-join on x matches rows of one shard only: pin each id's shard
        got = s.execute(stmt).all()
    same_shard = [
        (a, b)
        for a, b in expected
        if shard_for_key(list(shards), a) == shard_for_key(list(shards), b)
    ]
    assert got == same_shard and any(a != b for a, b in got)


def test_order_by_a_label_name(loaded: Any, shards: ss.ShardSet) -> None:
    def query(M: Any) -> Any:
        total = func.sum(M.x).label("total")
        return select(M.name, total).group_by(M.name).order_by(desc("total"), M.name).limit(3)

    with PlainSession(loaded) as ref_session:
        expected = ref_session.execute(query(ItemRef)).all()
    with ss.Session(shards) as s:
        assert s.execute(query(Item)).all() == expected


def test_a_statement_for_one_shard_is_sent_as_written(
    session: ss.Session, shards: ss.ShardSet
) -> None:
    # Nothing to merge: no hidden columns, no LIMIT widened by OFFSET, no ORDER BY or
    # LIMIT dropped from a grouped query.
    from sqlalchemy import event, func

    names = list(shards)
    home = shard_for_key(names, 3)
    session.add_all([Item(id=i, x=i % 5, name=f"n{i}") for i in range(1, 60)])
    session.commit()
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        sent.append((statement, params))

    event.listen(shards[home], "before_cursor_execute", record)
    try:
        paged = select(Item.id).where(Item.id == 3).order_by(Item.id).limit(10).offset(10000)
        assert session.execute(paged).all() == []
        grouped = (select(Item.x, func.count()).group_by(Item.x)
                   .order_by(func.count().desc(), Item.x).limit(2))  # fmt: skip
        rows = session.execute(grouped, bind_arguments={"shard_id": home}).all()
    finally:
        event.remove(shards[home], "before_cursor_execute", record)
    assert len(rows) <= 2
    (first, first_params), (second, second_params) = sent[-2:]
    assert "LIMIT" in first and "OFFSET" in first
    assert sorted(v for v in first_params.values() if isinstance(v, int)) == [3, 10, 10000]
    assert "_ss_" not in first and "_ss_" not in second  # no hidden merge columns
    assert "GROUP BY" in second and "ORDER BY count(*) DESC" in second and "LIMIT" in second
    assert 2 in second_params.values()


def test_a_statement_is_compiled_once_not_once_per_execution(
    loaded: Any, shards: ss.ShardSet
) -> None:
    # SQLAlchemy's compiled cache must serve a repeated statement, single-shard or
    # scattered: the merge plan's statement keeps one cache key from run to run.
    from unittest import mock

    from sqlalchemy.sql import compiler

    compiles = 0
    original = compiler.SQLCompiler.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal compiles
        compiles += 1
        original(self, *args, **kwargs)

    statements: list[Callable[[], Any]] = [
        lambda: select(Item).order_by(Item.x.desc(), Item.id).limit(7).offset(2),
        lambda: select(Item.x, func.count()).group_by(Item.x).order_by(Item.x),
        lambda: select(Item).where(Item.id == 3),
    ]
    with mock.patch.object(compiler.SQLCompiler, "__init__", counting):
        for make in statements:
            for _ in range(3):  # SQLAlchemy's ORM may compile a new statement twice
                with ss.Session(shards) as s:
                    s.execute(make()).all()
            compiles = 0
            for _ in range(5):
                with ss.Session(shards) as s:
                    s.execute(make()).all()
            assert compiles == 0, f"{make()}: compiled {compiles} times in 5 runs"
