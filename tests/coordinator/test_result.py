"""The Result API: SQLAlchemy 2.x semantics, laziness and closing."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from shardsession.coordinator.result import (
    MappingResult,
    NoSuchColumnError,
    ResourceClosedError,
    Result,
    Row,
    RowMapping,
    ScalarResult,
)

from shardsession.exc import InvalidRequestError, MultipleResultsFound, NoResultFound

ROWS = [(1, "x"), (2, "y"), (2, "y"), (3, "z"), (4, "w")]


class Source:
    """A row iterator that records how many rows were pulled and whether it was closed."""

    def __init__(self, rows: list[tuple[Any, ...]], fail_at: int | None = None) -> None:
        self.rows = rows
        self.pulled = 0
        self.fail_at = fail_at
        self.closes = 0

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for row in self.rows:
            if self.fail_at is not None and self.pulled == self.fail_at:
                raise RuntimeError("shard went away")
            self.pulled += 1
            yield row

    def on_close(self) -> None:
        self.closes += 1


def make(rows: list[tuple[Any, ...]] = ROWS, **kw: Any) -> tuple[Result, Source]:
    src = Source(rows, kw.pop("fail_at", None))
    return Result(["a", "b"], iter(src), on_close=src.on_close, **kw), src


# -- Row ---------------------------------------------------------------------------


def test_row_is_a_tuple_with_keys() -> None:
    row = make()[0].first()
    assert isinstance(row, Row) and isinstance(row, tuple)
    assert row == (1, "x") and hash(row) == hash((1, "x"))
    assert row.a == 1 and row.b == "x" and row[1] == "x" and row[-1] == "x"
    assert row[0:1] == (1,)
    assert row._fields == ("a", "b")
    assert row._asdict() == {"a": 1, "b": "x"}
    assert row._tuple() == (1, "x") and type(row._tuple()) is tuple
    assert row._t is row
    assert repr(row) == "(1, 'x')"
    a, b = row
    assert (a, b) == (1, "x")
    with pytest.raises(AttributeError, match="Could not locate column in row for column 'zz'"):
        _ = row.zz


def test_row_mapping() -> None:
    m = make()[0].first()._mapping
    assert isinstance(m, RowMapping)
    assert m["a"] == 1 and m["b"] == "x"
    assert dict(m) == {"a": 1, "b": "x"} and m == {"a": 1, "b": "x"}
    assert list(m) == ["a", "b"] and len(m) == 2 and "a" in m and "zz" not in m
    assert list(m.keys()) == ["a", "b"]
    assert m.get("zz", 7) == 7
    with pytest.raises(NoSuchColumnError) as info:
        _ = m["zz"]
    assert isinstance(info.value, KeyError) and isinstance(info.value, InvalidRequestError)

    class Col:
        key = "b"

    assert m[Col()] == "x"  # column objects stand for their key


def test_row_pickles_with_its_keys() -> None:
    row = make()[0].first()
    back = pickle.loads(pickle.dumps(row))
    assert back == (1, "x") and back.b == "x" and back._fields == ("a", "b")


def test_duplicate_keys_name_the_first_column() -> None:
    row = Result(["a", "a"], iter([(1, 2)])).one()
    assert row.a == 1 and row._mapping["a"] == 1 and row == (1, 2)


# -- fetching ----------------------------------------------------------------------


def test_all_and_exhaustion() -> None:
    r, src = make()
    assert r.all() == ROWS
    assert src.closes == 1  # exhausted: released at once
    assert r.all() == [] and r.fetchone() is None and r.fetchmany(3) == []
    assert not r.closed
    r.close()
    assert src.closes == 1 and r.closed


def test_first_reads_one_row_and_closes() -> None:
    r, src = make()
    assert r.first() == (1, "x")
    assert src.pulled == 1 and src.closes == 1 and r.closed
    with pytest.raises(ResourceClosedError, match="This result object is closed"):
        r.all()
    with pytest.raises(ResourceClosedError):
        r.fetchone()
    assert make([])[0].first() is None


def test_results_are_lazy() -> None:
    r, src = make()
    assert src.pulled == 0
    assert r.fetchone() == (1, "x") and src.pulled == 1
    assert r.fetchmany(2) == [(2, "y"), (2, "y")] and src.pulled == 3
    it = iter(r)
    assert next(it) == (3, "z") and src.pulled == 4
    assert r.all() == [(4, "w")]


def test_fetchmany_and_partitions_sizes() -> None:
    r, _ = make()
    assert r.fetchmany() == [(1, "x")]  # DB-API default arraysize
    assert r.fetchmany(2) == [(2, "y"), (2, "y")]
    assert r.fetchmany(5) == [(3, "z"), (4, "w")]
    assert r.fetchmany(5) == []
    r, _ = make()
    assert [len(p) for p in r.partitions(2)] == [2, 2, 1]
    r, _ = make()
    r2 = r.yield_per(3)
    assert r2 is r
    assert [len(p) for p in r.partitions()] == [3, 2]
    r, _ = make()
    assert r.yield_per(4).fetchmany() == ROWS[:4]


def test_one_and_one_or_none() -> None:
    with pytest.raises(MultipleResultsFound, match="exactly one"):
        make()[0].one()
    with pytest.raises(NoResultFound, match="No row was found when one was required"):
        make([])[0].one()
    with pytest.raises(MultipleResultsFound, match="one or none"):
        make()[0].one_or_none()
    assert make([])[0].one_or_none() is None
    r, src = make([(9, "q")])
    assert r.one() == (9, "q") and r.closed and src.closes == 1
    r, src = make()
    with pytest.raises(MultipleResultsFound):
        r.one()
    assert src.pulled == 2 and r.closed  # no more than two rows read


def test_scalar_family() -> None:
    r, src = make()
    assert r.scalar() == 1 and r.closed and src.pulled == 1
    assert make([])[0].scalar() is None
    with pytest.raises(MultipleResultsFound):
        make()[0].scalar_one()
    with pytest.raises(NoResultFound):
        make([])[0].scalar_one()
    assert make([(5, "e")])[0].scalar_one() == 5
    assert make([(5, "e")])[0].scalar_one_or_none() == 5
    assert make([])[0].scalar_one_or_none() is None


def test_scalars() -> None:
    r, _ = make()
    s = r.scalars()
    assert isinstance(s, ScalarResult)
    assert s.all() == [1, 2, 2, 3, 4]
    assert make()[0].scalars(1).all() == ["x", "y", "y", "z", "w"]
    assert make()[0].scalars("b").unique().all() == ["x", "y", "z", "w"]
    assert list(make()[0].scalars().partitions(2)) == [[1, 2], [2, 3], [4]]
    assert make()[0].scalars().fetchmany(2) == [1, 2]
    s = make()[0].scalars()
    assert s.fetchone() == 1 and list(s) == [2, 2, 3, 4]
    r, src = make()
    assert r.scalars().first() == 1 and r.closed and src.closes == 1
    with pytest.raises(MultipleResultsFound):
        make()[0].scalars().one()
    assert make([(7, "s")])[0].scalars().one_or_none() == 7
    with pytest.raises(NoSuchColumnError):
        make()[0].scalars("zz")


def test_mappings() -> None:
    m = make()[0].mappings()
    assert isinstance(m, MappingResult)
    first = m.first()
    assert isinstance(first, RowMapping) and first == {"a": 1, "b": "x"}
    assert make()[0].mappings().all()[3] == {"a": 3, "b": "z"}
    assert len(make()[0].mappings().unique().all()) == 4
    assert make()[0].mappings().columns("b").fetchmany(2) == [{"b": "x"}, {"b": "y"}]
    assert list(make()[0].mappings().keys()) == ["a", "b"]
    with pytest.raises(NoResultFound):
        make([])[0].mappings().one()


def test_unique_rows_and_strategy() -> None:
    assert make()[0].unique().all() == [(1, "x"), (2, "y"), (3, "z"), (4, "w")]
    assert make()[0].unique(lambda row: row.a % 2).all() == [(1, "x"), (2, "y")]
    # Duplicates do not count as a second row for one().
    assert Result(["a"], iter([(2,), (2,)])).unique().one() == (2,)
    # Unhashable values (JSON, arrays) still de-duplicate by value.
    assert Result(["j"], iter([([1, 2],), ([1, 2],), ({"k": 1},)])).unique().all() == [
        ([1, 2],),
        ({"k": 1},),
    ]


class Entity:
    """Compares equal to every other instance: unique() must still go by identity."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


def test_unique_orm_entities_by_identity() -> None:
    a, b = Entity(), Entity()
    r = Result(["Entity"], iter([(a,), (a,), (b,), (a,)]))
    assert [x for (x,) in r.unique().all()] == [a, b]
    got = Result(["Entity"], iter([(a,), (b,), (b,)])).scalars().unique().all()
    assert len(got) == 2 and got[0] is a and got[1] is b


def test_columns_and_keys() -> None:
    r, _ = make()
    assert r.keys() == ["a", "b"] and list(r.keys()) == ["a", "b"] and "a" in r.keys()
    assert len(r.keys()) == 2
    c = r.columns("b")
    assert list(c.keys()) == ["b"]
    assert c.fetchmany(2) == [("x",), ("y",)]
    assert r.fetchone() == (2, "y")  # the same rows underneath
    row = make()[0].columns(1, 0).first()
    assert row == ("x", 1) and row.a == 1
    assert make()[0].columns("b", "a").columns("a").first() == (1,)
    with pytest.raises(NoSuchColumnError, match="'zz'"):
        make()[0].columns("zz")
    assert make()[0].tuples().all() == ROWS and make()[0].t.first() == (1, "x")


def test_rowcount() -> None:
    assert make()[0].rowcount == -1
    assert make(rowcount=5)[0].rowcount == 5


def test_row_processor_is_applied_lazily() -> None:
    seen: list[tuple[Any, ...]] = []

    def proc(row: tuple[Any, ...]) -> tuple[Any, ...]:
        seen.append(row)
        return (row[0] * 10, row[1].upper())

    r, _ = make(row_processor=proc)
    assert r.fetchone() == (10, "X") and len(seen) == 1
    assert r.scalars().all() == [20, 20, 30, 40]


def test_close_early_runs_on_close_once_and_stops_reading() -> None:
    r, src = make()
    r.fetchone()
    r.close()
    r.close()
    assert src.closes == 1 and src.pulled == 1
    with pytest.raises(ResourceClosedError):
        list(r)
    with Result(["a"], iter([(1,)]), on_close=src.on_close) as r2:
        assert r2.fetchone() == (1,)
    assert r2.closed and src.closes == 2


def test_error_while_fetching_closes_the_result() -> None:
    r, src = make(fail_at=2)
    assert r.fetchmany(2) == ROWS[:2]
    with pytest.raises(RuntimeError, match="shard went away"):
        r.fetchone()
    assert r.closed and src.closes == 1
    with pytest.raises(ResourceClosedError):
        r.fetchone()


def test_generator_source_is_closed_when_result_closes() -> None:
    finalized: list[bool] = []

    def gen() -> Iterator[tuple[int]]:
        try:
            yield from ((i,) for i in range(100))
        finally:
            finalized.append(True)

    r = Result(["n"], gen())
    assert r.fetchmany(3) == [(0,), (1,), (2,)]
    r.close()
    assert finalized == [True]
