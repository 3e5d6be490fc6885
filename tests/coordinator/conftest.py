"""Fixtures of the coordinator tests: one ShardSet per test process, tables created once."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

import shardsession as ss

from .models import Base


@pytest.fixture(scope="session")
def shards(shard_dsns: dict[str, str]) -> Iterator[ss.ShardSet]:
    """The test process's 4 shards, with the test models' tables."""
    shard_set = ss.create_shards(shard_dsns, pool_size=2, max_overflow=4)
    Base.metadata.drop_all(shard_set)
    Base.metadata.create_all(shard_set)
    yield shard_set
    shard_set.close()


@pytest.fixture
def session(shards: ss.ShardSet, clean_shards: dict[str, str]) -> Iterator[ss.Session]:
    """A sharded Session over empty tables."""
    with ss.Session(shards) as sess:
        yield sess


@pytest.fixture(scope="session")
def direct(shard_dsns: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Plain SQLAlchemy engines (psycopg, no workers) on each shard's database."""
    engines = {
        name: create_engine(
            "postgresql+psycopg://",
            creator=functools.partial(psycopg.connect, dsn),
            pool_pre_ping=True,  # a test may terminate every backend of a database
        )
        for name, dsn in shard_dsns.items()
    }
    yield engines
    for engine in engines.values():
        engine.dispose()
