"""pytest plugin: real PostgreSQL shard databases for every test process.

Registered through the ``pytest11`` entry point, so installing shardsession
makes these available to any suite:

Fixtures
    ``shard_dsns`` (session scope): this process's shard databases, a dict shard
    name -> DSN.  ``shard_pool`` (session scope): a :class:`~shardsession.ShardSet`
    over them (one engine per shard, two workers each kept in its pool), closed at
    the end of the run.  ``session`` (function scope): a Session
    over ``shard_pool``, closed and its shards emptied after the test.
    ``clean_shards`` (function scope):
    empties every table of every shard before and after the test and returns
    the same dict.

Parallel runs
    Under pytest-xdist each xdist worker gets its own databases, named with its
    worker id (``shardsession_s0_gw0``, ``shardsession_s0_gw1``, ...), copied from
    template databases on one embedded server.  The server is started once, by
    whichever process needs it first (a file lock guards it), and stopped by the
    controlling process after the last worker has finished.

Options
    ``--shardsession-dsn TEMPLATE`` runs against external servers instead: a DSN
    with ``{shard}`` (``s0``, ``s1``, ...) or ``{n}`` (``0``, ``1``, ...), e.g.
    ``postgresql://u:pw@host/app_{shard}`` or, one server per shard,
    ``postgresql://u:pw@localhost:544{n}/app``; each process creates
    ``<dbname>_<worker>`` on those servers.  ``--shardsession-shards N``
    sets the number of shards (4).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shardsession.embedded import LocalCluster
from shardsession.exc import ShardSessionError
from shardsession.testing import TestDatabases

_RUN_PATH = "shardsession_run_path"
_STATE = pytest.StashKey["_RunState"]()


class _RunState:
    """What the plugin keeps for one pytest process."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.worker_id = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self._run_path = workerinput.get(_RUN_PATH) if workerinput else None
        self.owns_run_path = False

    def run_path(self) -> Path:
        """The embedded cluster folder of this test run (created on first use)."""
        if self._run_path is None:
            _reap_abandoned_runs()
            self._run_path = tempfile.mkdtemp(prefix=_RUN_PREFIX)
            Path(self._run_path, _OWNER).write_text(str(os.getpid()))
            self.owns_run_path = True
        return Path(self._run_path)

    def shutdown(self) -> None:
        """Stop the run's cluster and remove its folder (controller only)."""
        if self.owns_run_path and self._run_path is not None:
            LocalCluster(shards=1, path=self._run_path).stop(remove=True)
            shutil.rmtree(self._run_path, ignore_errors=True)


_RUN_PREFIX = "shardsession-pytest-"
_OWNER = "controller.pid"


def _reap_abandoned_runs() -> None:
    """Stop the clusters of earlier runs whose controlling process was killed.

    A run that ends normally stops its own cluster; one killed with SIGKILL
    cannot, so the next run cleans up after it.
    """
    for folder in Path(tempfile.gettempdir()).glob(_RUN_PREFIX + "*"):
        try:
            pid = int((folder / _OWNER).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            LocalCluster(shards=1, path=folder).stop(remove=True)
        except Exception:
            continue
        shutil.rmtree(folder, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--shardsession-*`` options."""
    group = parser.getgroup("shardsession", "shardsession shard databases")
    group.addoption(
        "--shardsession-dsn",
        default=None,
        metavar="TEMPLATE",
        help="DSN template for external PostgreSQL servers: {shard} becomes s0, s1, ... and "
        "{n} 0, 1, ... (e.g. postgresql://u:pw@localhost:544{n}/app for one server per "
        "shard); default: an embedded cluster started for the run",
    )
    group.addoption(
        "--shardsession-shards",
        type=int,
        default=4,
        metavar="N",
        help="number of shards (default 4)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Set up the per-process state."""
    config.stash[_STATE] = _RunState(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """Hand every xdist worker the controller's cluster folder."""
    state = node.config.stash[_STATE]  # type: ignore[attr-defined]
    node.workerinput[_RUN_PATH] = str(state.run_path())  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the run's embedded cluster (in the controlling process, after all workers)."""
    state = config.stash.get(_STATE, None)
    if state is not None and not state.is_worker:
        state.shutdown()


@pytest.fixture(scope="session")
def _shardsession_databases(request: pytest.FixtureRequest) -> Iterator[TestDatabases]:
    config = request.config
    state: _RunState = config.stash[_STATE]
    template = config.getoption("--shardsession-dsn")
    databases = TestDatabases(
        state.worker_id,
        config.getoption("--shardsession-shards"),
        cluster_path=None if template else state.run_path(),
        dsn_template=template,
    )
    problem = None
    try:
        databases.create()
    except (ShardSessionError, psycopg.Error, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        problem = f"shardsession: the test shards cannot be set up: {first}"
    if problem is not None:
        # One clear line and the end of the run, not the same traceback once per test.
        databases.drop()
        request.session.shouldstop = problem
        pytest.fail(problem, pytrace=False)
    try:
        yield databases
    finally:
        databases.drop()


@pytest.fixture(scope="session")
def shard_dsns(_shardsession_databases: TestDatabases) -> dict[str, str]:
    """This test process's shard databases: shard name -> DSN (session scope)."""
    return dict(_shardsession_databases.dsns)


@pytest.fixture(scope="session")
def shard_pool(shard_dsns: dict[str, str]) -> Iterator[Any]:
    """The shards of this process as a :class:`~shardsession.ShardSet` (session scope):
    one engine per shard, two workers each kept in its pool."""
    from shardsession import create_pool

    pool = create_pool(shard_dsns, workers_per_shard=2)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def session(shard_pool: Any, _shardsession_databases: TestDatabases) -> Iterator[Any]:
    """A :class:`~shardsession.Session` over ``shard_pool``.

    Rolled back and closed after the test, and every shard's tables emptied.
    """
    from shardsession import Session

    sess = Session(shard_pool)
    try:
        yield sess
    finally:
        sess.close()
        _shardsession_databases.clean()


@pytest.fixture
def clean_shards(_shardsession_databases: TestDatabases) -> Iterator[dict[str, str]]:
    """Empty every table of every shard before and after the test; yield the DSNs."""
    _shardsession_databases.clean()
    yield dict(_shardsession_databases.dsns)
    _shardsession_databases.clean()
