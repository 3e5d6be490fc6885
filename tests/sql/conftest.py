"""Fixtures for the SQL layer tests: a connection to a real shard in a private schema."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from shardsession.sql import compile_statement
from shardsession.sql.compiler import clear_cache


@pytest.fixture
def dsn(shard_dsns: dict[str, str]) -> str:
    """The DSN of the first shard database."""
    return next(iter(shard_dsns.values()))


@pytest.fixture
def schema_name() -> str:
    """A schema name unique to the test."""
    return f"sqltest_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(dsn: str, schema_name: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection whose search_path is a fresh schema, dropped afterwards."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema_name}"')
        c.execute(f'SET search_path TO "{schema_name}"')
        try:
            yield c
        finally:
            c.rollback()
            c.execute(f'DROP SCHEMA "{schema_name}" CASCADE')


@pytest.fixture
def run(conn: psycopg.Connection[Any]) -> Callable[..., Any]:
    """Compile a statement, execute it on ``conn`` and return its rows (or rowcount)."""

    def _run(stmt: Any, params: dict[str, Any] | None = None) -> Any:
        compiled = compile_statement(stmt, column_keys=(params or {}).keys())
        cur = conn.execute(compiled.sql, compiled.construct_params(params))
        if cur.description is None:
            return cur.rowcount
        return [compiled.process_row(r) for r in cur.fetchall()]

    return _run


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """Start the test with an empty compiled-statement cache."""
    clear_cache()
    yield
    clear_cache()
