"""Options and fixtures of the fault-injection tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import shardsession as ss
from tests.faults.models import Base


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--shardsession-soak SECONDS`` (0: the short bounded default run)."""
    parser.getgroup("shardsession").addoption(
        "--shardsession-soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run the chaos tests for SECONDS with more processes and threads (default 0: "
        "the short bounded run)",
    )


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    """The ``--shardsession-soak`` value (0 for the default run)."""
    # default: the option is unknown when this conftest is not loaded at startup
    return float(request.config.getoption("--shardsession-soak", default=0.0) or 0.0)


@pytest.fixture
def fault_shards(clean_shards: dict[str, str]) -> Iterator[ss.ShardSet]:
    """This test's own shards over the test databases, emptied, with the fault tables.

    One worker per shard kept in each pool, and no background recovery: what a
    fault leaves behind stays there until the test recovers it.  The pools ping a
    worker before handing it out (``pool_pre_ping``): a worker killed after its
    last reply is otherwise found dead only by the next statement sent to it, as
    with any SQLAlchemy pool.
    """
    shards = ss.create_shards(
        clean_shards, pool_size=1, max_overflow=4, pool_pre_ping=True, recovery_interval=None
    )
    try:
        ss.create_all(Base.metadata, shards)
        yield shards
    finally:
        shards.close()
