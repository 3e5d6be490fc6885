"""Scatter-gather SELECTs: the merged result of four shards equals one database's.

Every table row lives on one of the four shards and, as well, in a reference table
in shard s0's database; each query runs sharded (planned, sent to the workers,
merged) and against the reference table, and the two results must be equal -- in
the same order wherever ORDER BY fully determines it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from shardsession.coordinator.merge import merge_sorted, numeric_div
from shardsession.coordinator.result import Result
from shardsession.coordinator.scatter import execute_plan, plan_select
from shardsession.workers.pool import WorkerPool

from shardsession import protocol as p
from shardsession.exc import InvalidRequestError
from shardsession.sql import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    compile_statement,
    func,
    select,
)

SHARDS = ("s0", "s1", "s2", "s3")
N_ROWS = 600

md = MetaData()
items = Table(
    "scatter_items",
    md,
    Column("id", Integer, primary_key=True),
    Column("grp", Integer),
    Column("name", String),
    Column("amount", Integer),
    Column("price", Numeric(10, 2)),
    Column("score", Float),
    Column("big", BigInteger),
)
t = items.c
DDL = (
    "CREATE TABLE {} (id int PRIMARY KEY, grp int, name text, amount int, "
    "price numeric(10, 2), score float8, big bigint)"
)
NAMES = [None, "", "a", "B", "b", "ab", "abc", "Z", "zz", "é", "ü", "a b"]


def _rows(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)

    def maybe(v: Any, p_null: float = 0.15) -> Any:
        return None if rng.random() < p_null else v

    out = []
    for i in range(1, N_ROWS + 1):
        out.append(
            (
                i,
                maybe(rng.randint(1, 9)),
                rng.choice(NAMES),
                maybe(rng.randint(-40, 40)),
                maybe(Decimal(rng.randint(-100000, 100000)).scaleb(-2)),
                maybe(rng.choice([rng.uniform(-1e3, 1e3), 0.5, -0.0, 1e-9])),
                maybe(rng.randint(-(2**62), 2**62)),
            )
        )
    return out


@pytest.fixture
def data(shard_dsns: dict[str, str], clean_shards: dict[str, str]) -> Iterator[list[Any]]:
    rows = _rows(20261124)
    rng = random.Random(7)
    # Uneven shards: s3 gets few rows, so some shards run out early in merges.
    placement = [rng.choices(SHARDS, weights=[5, 3, 4, 1])[0] for _ in rows]
    for shard in SHARDS:
        with psycopg.connect(shard_dsns[shard], autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS scatter_items, scatter_ref")
            conn.execute(DDL.format("scatter_items"))
            mine = [r for r, s in zip(rows, placement) if s == shard]
            with conn.cursor().copy("COPY scatter_items FROM STDIN") as cp:
                for r in mine:
                    cp.write_row(r)
            if shard == "s0":
                conn.execute(DDL.format("scatter_ref"))
                with conn.cursor().copy("COPY scatter_ref FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
    yield rows
    for shard in SHARDS:
        with psycopg.connect(shard_dsns[shard], autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS scatter_items, scatter_ref")


@pytest.fixture
def handles(shard_pool: WorkerPool, data: list[Any]) -> Iterator[dict[str, Any]]:
    hs = {s: shard_pool.checkout(s) for s in SHARDS}
    try:
        yield hs
    finally:
        for h in hs.values():
            h.drain()
            h.request(p.Rollback())
            shard_pool.checkin(h)


def reference(dsns: dict[str, str], stmt: Any, params: dict[str, Any] | None = None) -> list:
    compiled = compile_statement(stmt)
    sql = compiled.sql.replace('"scatter_items"', '"scatter_ref"')
    with psycopg.connect(dsns["s0"]) as conn:
        return [tuple(r) for r in conn.execute(sql, compiled.construct_params(params))]


def sharded(handles: dict[str, Any], stmt: Any, params: dict[str, Any] | None = None, **kw: Any):
    plan = plan_select(stmt, compile_statement(stmt), params)
    return [tuple(r) for r in execute_plan(plan, handles, **kw)]


def _sortable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in row)


def check(
    dsns: dict[str, str],
    handles: dict[str, Any],
    stmt: Any,
    params: dict[str, Any] | None = None,
    *,
    ordered: bool = True,
) -> list:
    want = reference(dsns, stmt, params)
    got = sharded(handles, stmt, params)
    if not ordered:
        want, got = sorted(want, key=_sortable), sorted(got, key=_sortable)
    assert got == want, f"{compile_statement(stmt).sql} params={params}"
    return got


# -- plain, ORDER BY, LIMIT / OFFSET -------------------------------------------------


def test_plain_select_concatenates(shard_dsns, handles) -> None:
    got = check(shard_dsns, handles, select(items), ordered=False)
    assert len(got) == N_ROWS
    check(shard_dsns, handles, select(t.id, t.name).where(t.amount > 10), ordered=False)


@pytest.mark.parametrize(
    "order",
    [
        [t.id],
        [t.id.desc()],
        [t.grp, t.id],
        [t.grp.desc(), t.id],
        [t.grp.nulls_first(), t.id.desc()],
        [t.grp.desc().nulls_last(), t.id],
        [t.name, t.amount.desc(), t.id],
        [t.name.desc().nulls_last(), t.price, t.id],
        [t.price.desc(), t.id],
        [t.score.nulls_first(), t.id],
        [t.big.desc(), t.id],
    ],
    ids=lambda o: ",".join(str(x).replace('"scatter_items".', "") for x in o),
)
def test_order_by_matches_one_database(shard_dsns, handles, order) -> None:
    check(shard_dsns, handles, select(items).order_by(*order))
    check(shard_dsns, handles, select(items).order_by(*order).limit(17).offset(40))


def test_order_by_a_column_not_selected(shard_dsns, handles) -> None:
    stmt = select(t.id, t.grp).order_by(t.score.desc().nulls_last(), t.name, t.id)
    got = check(shard_dsns, handles, stmt)
    assert all(len(r) == 2 for r in got)  # the hidden ORDER BY columns are gone
    check(shard_dsns, handles, select(t.name).order_by(t.amount, t.id.desc()).limit(9).offset(3))
    check(shard_dsns, handles, select((t.amount * 2).label("double")).order_by(t.big, t.id))


def test_limit_and_offset(shard_dsns, handles) -> None:
    base = select(t.id, t.amount).order_by(t.amount.desc(), t.id)
    for limit, offset in [(5, None), (None, 590), (10, 595), (0, 3), (1000, 0), (3, 700)]:
        stmt = base
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset is not None:
            stmt = stmt.offset(offset)
        check(shard_dsns, handles, stmt)
    stmt = base.limit(bindparam("n")).offset(bindparam("o"))
    check(shard_dsns, handles, stmt, {"n": 7, "o": 11})
    # Without ORDER BY any rows do, but never more than the limit.
    got = sharded(handles, select(t.id).limit(25))
    assert len(got) == 25 and len(set(got)) == 25


def test_the_shards_are_asked_for_offset_plus_limit_rows(handles) -> None:
    stmt = select(t.id).order_by(t.id).limit(5).offset(10)
    plan = plan_select(stmt, compile_statement(stmt), None)
    assert plan.params == (15, 0)
    assert (plan.offset, plan.limit) == (10, 5)


@pytest.mark.parametrize("seed", range(8))
def test_random_query_shapes(shard_dsns, handles, seed) -> None:
    rng = random.Random(seed)
    cols = [t.grp, t.name, t.amount, t.price, t.score, t.big]
    for _ in range(12):
        keys = rng.sample(cols, rng.randint(1, 3))
        order = []
        for k in keys:
            e = k.desc() if rng.random() < 0.5 else k.asc()
            nulls = rng.choice([None, "first", "last"])
            if nulls == "first":
                e = e.nulls_first()
            elif nulls == "last":
                e = e.nulls_last()
            order.append(e)
        order.append(t.id.desc() if rng.random() < 0.5 else t.id)
        shown = rng.sample([t.id, *cols], rng.randint(1, 4))
        stmt = select(*shown).order_by(*order)
        if rng.random() < 0.4:
            stmt = stmt.where(t.amount > rng.randint(-30, 30))
        if rng.random() < 0.6:
            stmt = stmt.limit(rng.choice([0, 1, 7, 50, 1000]))
        if rng.random() < 0.4:
            stmt = stmt.offset(rng.choice([0, 3, 100, 599]))
        check(shard_dsns, handles, stmt)


# -- DISTINCT ------------------------------------------------------------------------


def test_distinct(shard_dsns, handles) -> None:
    got = check(shard_dsns, handles, select(t.grp).distinct(), ordered=False)
    assert len(got) == len(set(got)) == 10  # 1..9 and NULL
    check(shard_dsns, handles, select(t.grp, t.name).distinct().order_by(t.name, t.grp))
    check(
        shard_dsns,
        handles,
        select(t.name, t.grp).distinct().order_by(t.grp.desc(), t.name).limit(8).offset(2),
    )
    got = sharded(handles, select(t.name).distinct().limit(5))
    assert len(got) == len(set(got)) == 5
    check(shard_dsns, handles, select(t.grp, t.id).distinct(t.grp).order_by(t.grp, t.id.desc()))
    check(
        shard_dsns,
        handles,
        select(t.id, t.name).distinct(t.name).order_by(t.name, t.id).limit(4).offset(1),
    )


def test_distinct_with_order_by_outside_the_select_list_is_refused(handles) -> None:
    stmt = select(t.grp).distinct().order_by(t.id)
    with pytest.raises(InvalidRequestError, match="must appear in the select list"):
        plan_select(stmt, compile_statement(stmt), None)


# -- aggregates ----------------------------------------------------------------------


def _assert_same_aggregates(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            if isinstance(w, float):
                assert g == pytest.approx(w, rel=1e-12, abs=1e-9)
            else:
                assert g == w and type(g) is type(w)
                if isinstance(w, Decimal):
                    assert str(g) == str(w)  # same scale as PostgreSQL gives


def test_whole_table_aggregates(shard_dsns, handles) -> None:
    stmt = select(
        func.count(),
        func.count(t.amount).label("n_amount"),
        func.sum(t.amount).label("s_amount"),
        func.sum(t.big).label("s_big"),
        func.sum(t.price).label("s_price"),
        func.min(t.name).label("min_name"),
        func.max(t.name).label("max_name"),
        func.min(t.price).label("min_price"),
        func.max(t.score).label("max_score"),
        func.avg(t.amount).label("avg_amount"),
        func.avg(t.price).label("avg_price"),
        func.avg(t.big).label("avg_big"),
        func.avg(t.score).label("avg_score"),
        func.sum(t.score).label("s_score"),
    )
    got, want = sharded(handles, stmt), reference(shard_dsns, stmt)
    _assert_same_aggregates(got, want)
    assert got[0][0] == N_ROWS


def test_aggregates_over_no_rows(shard_dsns, handles) -> None:
    stmt = select(
        func.count(), func.sum(t.amount), func.min(t.name), func.avg(t.price), func.avg(t.amount)
    ).where(t.id < 0)
    got = sharded(handles, stmt)
    assert got == reference(shard_dsns, stmt) == [(0, None, None, None, None)]


def test_grouped_aggregates(shard_dsns, handles) -> None:
    stmt = (
        select(
            t.grp,
            func.count().label("n"),
            func.sum(t.amount).label("s"),
            func.min(t.price).label("lo"),
            func.max(t.name).label("hi"),
            func.avg(t.amount).label("avg_amount"),
            func.avg(t.price).label("avg_price"),
        )
        .group_by(t.grp)
        .order_by(t.grp.nulls_first())
    )
    _assert_same_aggregates(sharded(handles, stmt), reference(shard_dsns, stmt))
    by_two = (
        select(t.grp, t.name, func.count().label("n"), func.avg(t.score).label("a"))
        .group_by(t.grp, t.name)
        .order_by(t.grp, t.name)
    )
    _assert_same_aggregates(sharded(handles, by_two), reference(shard_dsns, by_two))


def test_group_by_order_by_aggregate_and_limit(shard_dsns, handles) -> None:
    stmt = (
        select(t.name, func.count().label("n"))
        .group_by(t.name)
        .order_by(func.count().desc(), t.name)
        .limit(4)
        .offset(1)
    )
    check(shard_dsns, handles, stmt)
    # ORDER BY an aggregate that is not selected, and by an avg.
    stmt = (
        select(t.grp)
        .group_by(t.grp)
        .order_by(func.sum(t.amount).desc().nulls_last(), t.grp)
        .limit(5)
    )
    check(shard_dsns, handles, stmt)
    stmt = select(t.grp, func.avg(t.amount).label("a")).group_by(t.grp)
    stmt = stmt.order_by(func.avg(t.amount), t.grp)
    got = check(shard_dsns, handles, stmt)
    assert all(isinstance(a, Decimal) for _, a in got if a is not None)


def test_group_by_a_column_not_selected(shard_dsns, handles) -> None:
    stmt = select(func.count().label("n"), func.max(t.amount)).select_from(items).group_by(t.grp)
    got = check(shard_dsns, handles, stmt, ordered=False)
    assert len(got) == 10 and all(len(r) == 2 for r in got)


def test_group_by_without_aggregates_and_distinct_groups(shard_dsns, handles) -> None:
    check(shard_dsns, handles, select(t.name).group_by(t.name).order_by(t.name.desc()))
    check(shard_dsns, handles, select(t.grp).group_by(t.grp).order_by(t.grp).limit(3).offset(2))


def test_having_on_group_keys_runs_on_the_shards(shard_dsns, handles) -> None:
    stmt = select(t.grp, func.count().label("n")).group_by(t.grp).having(t.grp > 4).order_by(t.grp)
    got = check(shard_dsns, handles, stmt)
    assert [g for g, _ in got] == [5, 6, 7, 8, 9]


def test_having_on_aggregates_is_decided_after_combining(shard_dsns, handles) -> None:
    n, lo = func.count(), func.min(t.amount)
    cases = [
        select(t.grp, n.label("n")).group_by(t.grp).having(func.count() > 62),
        select(t.name).group_by(t.name).having(func.sum(t.amount) >= bindparam("s")),
        select(t.grp, func.avg(t.price).label("a"))
        .group_by(t.grp)
        .having((func.avg(t.price) > 5) | (func.max(t.amount) < 39), t.grp.is_not(None)),
        select(t.grp).group_by(t.grp).having(~(lo < -39), func.count() * 2 > 100),
        select(t.name, n.label("n"))
        .group_by(t.name)
        .having(func.count().between(45, 60))
        .order_by(func.count().desc(), t.name)
        .limit(2),
        select(func.count()).select_from(items).having(func.count() > 10_000),
    ]
    sizes = [len(check(shard_dsns, handles, c, {"s": 30}, ordered=False)) for c in cases]
    # Each HAVING keeps some groups and drops others (the last one drops the only row).
    assert sizes == [4, 2, 5, 3, 2, 0]


@pytest.mark.parametrize(
    ("stmt", "match"),
    [
        (select(func.count(t.grp.distinct())), r"count\(DISTINCT \.\.\.\) cannot be combined"),
        (select(func.sum(t.amount.distinct())), r"sum\(DISTINCT"),
        (select(func.avg(t.amount.distinct())), r"avg\(DISTINCT"),
        (
            select(t.grp).group_by(t.grp).having(func.count() / 2 > 30),
            "cannot be evaluated",
        ),
        (select(func.array_agg(t.id)), r"array_agg\(\) cannot be combined"),
        (select(func.count() + 1), "expression over aggregate results"),
        (select(t.grp).group_by(t.grp).order_by(func.count() * 2), "expression over aggregate"),
    ],
    ids=[
        "count-distinct",
        "sum-distinct",
        "avg-distinct",
        "having-div",
        "array_agg",
        "expr",
        "order",
    ],
)
def test_uncombinable_queries_raise(stmt, match) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        plan_select(stmt, compile_statement(stmt), None)
    assert "shard" in str(info.value)  # the message says what to do instead


def test_min_max_distinct_are_combined(shard_dsns, handles) -> None:
    stmt = select(func.min(t.amount.distinct()), func.max(t.name.distinct()))
    check(shard_dsns, handles, stmt)


def test_numeric_division_matches_postgresql(shard_dsns) -> None:
    rng = random.Random(3)
    cases = [(4, 3), (0, 5), (-5, 3), (10**20, 3), (1, 30000), (Decimal("1234567.50"), 7)]
    cases += [(Decimal("123456789012345678.125"), 7), (Decimal("99999999999999999999.55"), 3)]
    cases += [(rng.randint(-(10**12), 10**12), rng.randint(1, 10**6)) for _ in range(40)]
    for _ in range(40):
        cases.append((Decimal(rng.randint(-(10**9), 10**9)).scaleb(-3), rng.randint(1, 999)))
    with psycopg.connect(shard_dsns["s0"]) as conn:
        for total, count in cases:
            want = conn.execute("SELECT %s::numeric / %s::numeric", (total, count)).fetchone()[0]
            got = numeric_div(total, count)
            assert str(got) == str(want), (total, count)


def test_merge_orders_nan_and_nulls_like_postgresql() -> None:
    nan = float("nan")
    a = [(1.0,), (nan,), (None,)]
    b = [(0.5,), (2.0,), (nan,), (None,)]
    got = [r[0] for r in merge_sorted([a, b], [(0, False, None)])]
    assert got[:3] == [0.5, 1.0, 2.0] and all(v != v for v in got[3:5]) and got[5:] == [None, None]
    a, b = [(nan,), (1.0,), (None,)], [(nan,), (2.0,), (0.5,), (None,)]
    desc = [r[0] for r in merge_sorted([a, b], [(0, True, False)])]  # DESC NULLS LAST
    assert all(v != v for v in desc[:2]) and desc[2:5] == [2.0, 1.0, 0.5] and desc[5:] == [None] * 2


# -- running: sending, streaming, closing ------------------------------------------


def _open_cursors(handles: dict[str, Any]) -> dict[str, int]:
    return {s: h.request(p.Ping())["open_cursors"] for s, h in handles.items()}


@pytest.fixture
def big_table(shard_dsns: dict[str, str], data: list[Any]) -> Iterator[Table]:
    # Set up before (and torn down after) the worker handles, whose transactions
    # would otherwise hold locks that DROP TABLE waits for.
    for k, shard in enumerate(SHARDS):
        with psycopg.connect(shard_dsns[shard], autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS scatter_big")
            conn.execute("CREATE TABLE scatter_big (id int PRIMARY KEY, val text)")
            conn.execute(
                "INSERT INTO scatter_big SELECT g, 'v' || g FROM generate_series(1, 10000) g "
                "WHERE g %% 4 = %s",
                (k,),
            )
    yield Table(
        "scatter_big",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("val", String),
    )
    for shard in SHARDS:
        with psycopg.connect(shard_dsns[shard], autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS scatter_big")


def test_streaming_merge_keeps_order_and_reads_in_chunks(big_table, handles) -> None:
    stmt = select(big_table.c.id, big_table.c.val).order_by(big_table.c.id.desc())
    plan = plan_select(stmt, compile_statement(stmt), None)
    result = execute_plan(plan, handles, stream_chunk=50)
    assert isinstance(result, Result)
    first = result.fetchmany(120)
    assert [r.id for r in first] == list(range(10000, 9880, -1))
    # Only a few chunks were read: every shard still has its cursor open.
    assert _open_cursors(handles) == dict.fromkeys(SHARDS, 1)
    rest = result.all()
    ids = [r[0] for r in first + rest]
    assert ids == list(range(10000, 0, -1))
    assert rest[-1].val == "v1"
    assert _open_cursors(handles) == dict.fromkeys(SHARDS, 0)


def test_closing_a_stream_early_closes_the_cursors(big_table, handles) -> None:
    closed: list[bool] = []
    stmt = select(big_table.c.id).order_by(big_table.c.id)
    plan = plan_select(stmt, compile_statement(stmt), None)
    result = execute_plan(plan, handles, stream_chunk=100, on_close=lambda: closed.append(True))
    assert result.scalars().fetchmany(5) == [1, 2, 3, 4, 5]
    assert _open_cursors(handles) == dict.fromkeys(SHARDS, 1)
    result.close()
    assert closed == [True]
    assert _open_cursors(handles) == dict.fromkeys(SHARDS, 0)
    # first() closes too; a LIMIT that is reached releases the cursors at once.
    result = execute_plan(plan, handles, stream_chunk=100)
    assert result.first() == (1,)
    assert _open_cursors(handles) == dict.fromkeys(SHARDS, 0)
    limited = select(big_table.c.id).order_by(big_table.c.id).limit(7)
    plan = plan_select(limited, compile_statement(limited), None)
    assert execute_plan(plan, handles, stream_chunk=3).scalars().all() == list(range(1, 8))
    assert _open_cursors(handles) == dict.fromkeys(SHARDS, 0)


def test_tag_shard_appends_each_rows_shard(big_table, handles) -> None:
    stmt = select(big_table.c.id).where(big_table.c.id <= 8).order_by(big_table.c.id)
    plan = plan_select(stmt, compile_statement(stmt), None)
    for chunk in (None, 2):
        rows = execute_plan(plan, handles, stream_chunk=chunk, tag_shard=True).all()
        assert [tuple(r) for r in rows] == [(i, SHARDS[i % 4]) for i in range(1, 9)]


def test_a_failing_shard_raises_and_leaves_no_reply_unread(handles) -> None:
    from shardsession.exc import ProgrammingError

    stmt = select(t.id).order_by(t.id)
    plan = plan_select(stmt, compile_statement(stmt), None)
    handles["s2"].request(p.Execute("ALTER TABLE scatter_items RENAME TO scatter_gone"))
    with pytest.raises(ProgrammingError):
        execute_plan(plan, handles)
    assert all(h.pending == 0 for h in handles.values())


def test_textual_select_that_needs_merging_is_refused() -> None:
    from shardsession.sql import column, text

    ok = text("SELECT id FROM scatter_items WHERE id > :x").columns(column("id", Integer))
    assert plan_select(ok, compile_statement(ok), {"x": 1}).kind == "concat"
    bad = text("SELECT id FROM scatter_items ORDER BY id LIMIT 3").columns(column("id", Integer))
    with pytest.raises(InvalidRequestError, match="Build it with select"):
        plan_select(bad, compile_statement(bad), None)
