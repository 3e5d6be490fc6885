"""The worker side of a DBAPI connection, driven directly with protocol messages."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterator

import psycopg
import pytest
from shardsession.workers.connection import COPY_MIN_ROWS, WorkerConnection

from shardsession import protocol as p


@pytest.fixture
def worker(shard_dsns: dict[str, str]) -> Iterator[WorkerConnection]:
    conn = WorkerConnection("s0", {"conninfo": shard_dsns["s0"]})
    conn.handle(p.Execute("DROP TABLE IF EXISTS wk_rows"))
    conn.handle(p.Execute(
        "CREATE TABLE wk_rows (id int PRIMARY KEY, name varchar(20), amount numeric, "
        "at timestamptz, flag boolean)"
    ))  # fmt: skip
    conn.handle(p.Commit())
    yield conn
    conn.handle(p.Rollback())
    conn.handle(p.Execute("DROP TABLE wk_rows"))
    conn.handle(p.Commit())
    conn.close()


INSERT = (
    "INSERT INTO wk_rows (id, name, amount, at, flag) VALUES (%(id)s::INTEGER, "
    "%(name)s::VARCHAR(20), %(amount)s, %(at)s, %(flag)s)"
)


def _rows(n: int, start: int = 0) -> list[dict[str, object]]:
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    return [
        {"id": i, "name": f"n'\\t{i}" if i % 2 else None, "amount": decimal.Decimal("1.50") * i,
         "at": at, "flag": i % 3 == 0}
        for i in range(start, start + n)
    ]  # fmt: skip


def test_large_plain_inserts_run_as_copy_with_the_same_result(worker: WorkerConnection) -> None:
    rows = _rows(COPY_MIN_ROWS)
    result = worker.handle(p.ExecuteMany(INSERT, rows))
    assert worker.copies == 1 and result.rowcount == COPY_MIN_ROWS
    small = _rows(3, start=COPY_MIN_ROWS)
    worker.handle(p.ExecuteMany(INSERT, small))
    assert worker.copies == 1  # few rows: a plain executemany
    got = worker.handle(p.Execute("SELECT id, name, amount, at, flag FROM wk_rows ORDER BY id"))
    assert [dict(zip(("id", "name", "amount", "at", "flag"), r)) for r in got.rows] == [
        *rows,
        *small,
    ]
    assert worker.status & p.STATUS_WROTE


def test_copy_errors_are_the_inserts_errors(worker: WorkerConnection) -> None:
    rows = _rows(COPY_MIN_ROWS)
    rows[-1]["id"] = 0  # a duplicate key
    with pytest.raises(psycopg.errors.UniqueViolation):
        worker.handle(p.ExecuteMany(INSERT, rows))


class Name(str):
    """A value of a type COPY is not trusted with (only plain types are)."""


def test_values_copy_cannot_write_exactly_use_executemany(worker: WorkerConnection) -> None:
    rows = _rows(COPY_MIN_ROWS)
    rows[5]["name"] = Name("special")
    worker.handle(p.ExecuteMany(INSERT, rows))
    assert worker.copies == 0
    got = worker.handle(p.Execute("SELECT name FROM wk_rows WHERE id = 5"))
    assert got.rows == [("special",)]
