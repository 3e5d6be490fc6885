"""Databases for the compat suite: the four shards of this test process and a reference one.

The shards are the plugin's ``shard_dsns``; the reference database is created next
to the first shard (``<s0 dbname>_ref``) for the whole session and dropped at the end.
Before and after every program run each database is emptied: its ``public`` schema
dropped and created again, and any prepared transaction rolled back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PROGRAMS_DIR = Path(__file__).parent / "programs"


def program_names() -> list[str]:
    """The compat programs, by file stem, in name order."""
    return sorted(p.stem for p in PROGRAMS_DIR.glob("*.py"))


def pytest_configure(config: pytest.Config) -> None:
    """Register one marker per program (``pytest -m association_basic``)."""
    config.addinivalue_line("markers", "compat: a differential compat program")
    for name in program_names():
        config.addinivalue_line("markers", f"{name}: the compat program programs/{name}.py")


@dataclass
class CompatDatabases:
    """Shard name -> DSN for the four shards, and the reference database's DSN."""

    shards: dict[str, str]
    ref: str

    def all(self) -> list[str]:
        return [self.ref, *self.shards.values()]

    def reset(self) -> None:
        """Empty every database: a new ``public`` schema, no prepared transaction."""
        for dsn in self.all():
            reset_database(dsn)


def reset_database(dsn: str) -> None:
    """Drop and re-create the ``public`` schema; roll back leftover prepared transactions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        gids = [
            row[0]
            for row in conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
            )
        ]
        for gid in gids:
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        conn.execute("SET lock_timeout = '20s'")
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(scope="session")
def compat_databases(shard_dsns: dict[str, str]) -> Iterator[CompatDatabases]:
    """The shards and a reference database created for this session (dropped at the end)."""
    s0 = conninfo_to_dict(shard_dsns["s0"])
    name = f"{s0['dbname']}_ref"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"unexpected database name {name!r}")
    admin = shard_dsns["s0"]
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dbs = CompatDatabases(shards=dict(shard_dsns), ref=make_conninfo(admin, dbname=name))
    try:
        yield dbs
    finally:
        try:
            dbs.reset()
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(drop)
