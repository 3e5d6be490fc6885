"""Fixtures shared by the whole suite (the shard fixtures come from the plugin)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmp_path(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A temporary folder that a PostgreSQL server user can enter (pytest's is private).

    Overrides pytest's ``tmp_path`` for this suite: tests start servers in it,
    and as root those run as another user.
    """
    path = Path(tempfile.mkdtemp(prefix="ss-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
