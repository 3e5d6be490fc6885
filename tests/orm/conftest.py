"""Fixtures of the ORM tests."""

from __future__ import annotations

import pytest

from tests.orm.support import FakeSession


@pytest.fixture
def session() -> FakeSession:
    """A stand-in session object for attaching states."""
    return FakeSession()
