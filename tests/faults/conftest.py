"""Options of the fault-injection tests."""

from __future__ import annotations

import pytest


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
