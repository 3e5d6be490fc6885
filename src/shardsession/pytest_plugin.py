"""pytest plugin: real PostgreSQL shard databases for every test process.

Registered through the ``pytest11`` entry point, so installing shardsession
makes these available to any suite:

Fixtures
    ``shard_dsns`` (session scope): this process's shard databases, a dict shard
    name -> DSN.  ``shard_pool`` (session scope): a :class:`~shardsession.ShardSet`
    over them (one engine per shard, two workers each kept in its pool), closed at
    the end of the run.  ``session`` (function scope): a Session
    over ``shard_pool``, closed and its shards emptied after the test.
    ``rollback_session`` (function scope): a Session over ``shard_pool`` whose
    every change, committed or not, is rolled back after the test, without
    emptying any table (:func:`shardsession.testing.rollback_session`).
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

    ``--shardsession-reuse-db`` keeps the databases after the run, and the next
    run with it reuses them (tables kept, rows emptied) instead of creating them:
    the embedded server's folder is then :func:`kept_folder` (its server is
    stopped after each run), and a second run on the same folder at the same time
    is refused.  ``--shardsession-create-db`` creates them afresh even so (on the
    embedded server, the whole folder).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

from shardsession import testing
from shardsession.embedded import LocalCluster, default_cluster_path
from shardsession.exc import ShardSessionError
from shardsession.testing import TestDatabases

_RUN_PATH = "shardsession_run_path"
_STATE = pytest.StashKey["_RunState"]()


def kept_folder(rootpath: Path) -> Path:
    """The folder that keeps the embedded server of ``--shardsession-reuse-db`` runs.

    One per project (pytest's rootdir), next to the default cluster folder
    (:func:`~shardsession.embedded.default_cluster_path`): the server's data is in
    its ``cluster`` subfolder, which ``shardsession down --path ... --remove`` deletes.
    """
    digest = hashlib.sha1(str(rootpath.resolve()).encode()).hexdigest()[:12]
    return default_cluster_path().parent / f"pytest-{digest}"


class _RunState:
    """What the plugin keeps for one pytest process."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.worker_id = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self._run_path = workerinput.get(_RUN_PATH) if workerinput else None
        self.owns_run_path = False
        self.template: str | None = config.getoption("--shardsession-dsn")
        #: keep the databases after the run (--shardsession-reuse-db)
        self.keep: bool = config.getoption("--shardsession-reuse-db")
        #: reuse the databases an earlier run kept (unless --shardsession-create-db)
        self.reuse = self.keep and not config.getoption("--shardsession-create-db")
        self._lock: IO[str] | None = None

    @property
    def kept_cluster(self) -> Path | None:
        """The embedded cluster folder kept between runs, if this run keeps one."""
        if not self.keep or self.template:
            return None
        return kept_folder(self.config.rootpath) / "cluster"

    def claim_kept_cluster(self) -> None:
        """Hold the kept folder for this run (controller only), or refuse the run.

        Two runs on one folder would empty each other's tables and stop each
        other's server.  With ``--shardsession-create-db`` the folder is emptied.
        """
        cluster = self.kept_cluster
        if cluster is None:
            return
        try:
            cluster.parent.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0 and cluster.parent.stat().st_uid == 0:
                # as root the server runs as another user, who must enter the folder
                cluster.parent.chmod(cluster.parent.stat().st_mode | 0o711)
            lock = open(cluster.parent / "run.lock", "a+")  # held until shutdown()
        except OSError as err:
            raise pytest.UsageError(
                f"shardsession: cannot keep the test databases in {cluster.parent} "
                f"({err.strerror or err}); run without --shardsession-reuse-db"
            ) from err
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            lock.close()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise pytest.UsageError(
                f"shardsession: another pytest run{pid} is using the kept test databases "
                f"of this project ({cluster}); wait for it to finish, or run this one "
                "without --shardsession-reuse-db"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        if not self.reuse:
            try:
                LocalCluster(shards=1, path=cluster).stop(remove=True)
            except (ShardSessionError, OSError) as err:
                lock.close()
                raise pytest.UsageError(
                    f"shardsession: --shardsession-create-db cannot delete the kept test "
                    f"databases in {cluster}: {err}"
                ) from err
        self._lock = lock
        self._run_path = str(cluster)
        self.owns_run_path = True

    def run_path(self) -> Path:
        """The embedded cluster folder of this test run (created on first use)."""
        if self._run_path is None:
            _reap_abandoned_runs()
            self._run_path = tempfile.mkdtemp(prefix=_RUN_PREFIX)
            Path(self._run_path, _OWNER).write_text(str(os.getpid()))
            self.owns_run_path = True
        return Path(self._run_path)

    def shutdown(self) -> None:
        """Stop the run's cluster and remove its folder, or keep it (controller only)."""
        if self.owns_run_path and self._run_path is not None:
            if self._lock is not None:  # kept for the next run: stopped, not removed
                try:
                    LocalCluster(shards=1, path=self._run_path).stop()
                finally:
                    self._lock.close()
                    self._lock = None
            else:
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
    group.addoption(
        "--shardsession-reuse-db",
        action="store_true",
        help="keep the test databases after the run, and reuse those an earlier run kept "
        "(tables kept, rows emptied) instead of creating them",
    )
    group.addoption(
        "--shardsession-create-db",
        action="store_true",
        help="create the test databases afresh, even with --shardsession-reuse-db",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Set up the per-process state; with --shardsession-reuse-db, hold the kept folder."""
    state = _RunState(config)
    config.stash[_STATE] = state
    if not state.is_worker:
        state.claim_kept_cluster()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """Hand every xdist worker the controller's cluster folder."""
    state = node.config.stash[_STATE]  # type: ignore[attr-defined]
    node.workerinput[_RUN_PATH] = str(state.run_path())  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where --shardsession-reuse-db kept the databases, and how to remove them."""
    state = terminalreporter.config.stash.get(_STATE, None)
    if state is None or state.is_worker or not state.keep:
        return
    cluster = state.kept_cluster
    if cluster is None:
        where = "on the servers of --shardsession-dsn (drop them there to remove them)"
    elif (cluster / "cluster.json").exists():
        where = (
            f"in {cluster}, whose server stops now (`shardsession down --path {cluster} "
            "--remove` deletes them)"
        )
    else:
        return  # no test needed them
    terminalreporter.write_line(
        f"shardsession: kept the test databases for the next --shardsession-reuse-db run "
        f"{where}; --shardsession-create-db creates them afresh"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the run's embedded cluster (in the controlling process, after all workers)."""
    state = config.stash.get(_STATE, None)
    if state is not None and not state.is_worker:
        state.shutdown()


@pytest.fixture(scope="session")
def _shardsession_databases(request: pytest.FixtureRequest) -> Iterator[TestDatabases]:
    config = request.config
    state: _RunState = config.stash[_STATE]
    template = state.template
    databases = TestDatabases(
        state.worker_id,
        config.getoption("--shardsession-shards"),
        cluster_path=None if template else state.run_path(),
        dsn_template=template,
    )
    # kept for the next run (--shardsession-reuse-db), or dropped
    finish = databases.close if state.keep else databases.drop
    problem = None
    try:
        databases.create(reuse=state.reuse)
    except (ShardSessionError, psycopg.Error, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        problem = f"shardsession: the test shards cannot be set up: {first}"
    if problem is not None:
        # One clear line and the end of the run, not the same traceback once per test.
        finish()
        request.session.shouldstop = problem
        pytest.fail(problem, pytrace=False)
    try:
        yield databases
    finally:
        finish()


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
def rollback_session(shard_pool: Any) -> Iterator[Any]:
    """A :class:`~shardsession.Session` over ``shard_pool`` whose every change is
    rolled back after the test (:func:`shardsession.testing.rollback_session`).

    Its ``commit()`` releases a SAVEPOINT inside a transaction per shard that is
    rolled back at teardown, so no table is emptied and nothing is committed.
    """
    with testing.rollback_session(shard_pool) as sess:
        yield sess


@pytest.fixture
def clean_shards(_shardsession_databases: TestDatabases) -> Iterator[dict[str, str]]:
    """Empty every table of every shard before and after the test; yield the DSNs."""
    _shardsession_databases.clean()
    yield dict(_shardsession_databases.dsns)
    _shardsession_databases.clean()
