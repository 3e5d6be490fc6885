"""A local PostgreSQL cluster for development and tests.

:class:`LocalCluster` initialises data folders with ``initdb``, starts one
server (or one per shard with ``instances=``) on a free loopback port and a
private unix socket, with two-phase commit enabled, and creates one database per
shard.  It is idempotent and safe across processes: every operation on a cluster
folder holds an exclusive file lock on ``<path>/.lock`` (a process that has to wait
for it says so on stderr, once), and a process that finds the server already
running reuses it.  Stopping is explicit (:meth:`LocalCluster.stop`,
``shardsession down``) or, for a cluster created with ``temporary=True``, at the
exit of the process that started it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from shardsession.exc import ClusterError, PortInUseError, PostgresNotFoundError
from shardsession.pgbin import ServerUser, find_pg_bindir, has_server, pg_version, server_user
from shardsession.preflight import check_shard_name

__all__ = ["DEFAULT_PATH", "InstanceInfo", "LocalCluster", "default_cluster_path"]

SUPERUSER = "shardsession"
_STATE = "cluster.json"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; leave room for "/.s.PGSQL.65535"


def default_cluster_path() -> Path:
    """Return the folder used when no ``path`` is given.

    ``$XDG_CACHE_HOME/shardsession/cluster`` (``~/.cache/...``) for a normal user.
    As root the server runs as another user who cannot enter ``/root``, so the
    default is ``/var/tmp/shardsession/cluster`` instead.
    """
    if os.geteuid() == 0:
        return Path("/var/tmp/shardsession/cluster")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "shardsession" / "cluster"


DEFAULT_PATH = default_cluster_path


@dataclass
class InstanceInfo:
    """One PostgreSQL server of a :class:`LocalCluster`."""

    index: int
    data: str
    port: int
    socket_dir: str
    shards: list[str] = field(default_factory=list)

    def dsn(self, dbname: str) -> str:
        """Return the libpq DSN of database ``dbname`` on this server (unix socket)."""
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_port_start() -> int:
    # Linux lets ordinary users listen from this port up (1024 unless lowered).
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _file_in_the_way(path: Path) -> Path | None:
    """The file (not a folder) at ``path`` or above it, if there is one."""
    for folder in [*reversed(path.parents), path]:
        if folder.exists() and not folder.is_dir():
            return folder
    return None


def _major(version: str) -> str:
    return version.split(".")[0]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """A PostgreSQL cluster on this machine, with one database per shard.

    :param shards: how many shard databases (named ``s0``, ``s1``, ...).
    :param path: the cluster folder; :func:`default_cluster_path` when ``None``
        (a fresh temporary folder when ``temporary`` is true).
    :param instances: how many separate servers; shards are spread over them
        round-robin, so ``instances=shards`` gives each shard its own server
        (tests use it to stop one shard).
    :param port: the TCP port of the first server (the next servers take the
        ports after it); a free one when ``None``.
    :param temporary: stop the servers and delete the folder when this process exits.
    :param durable: ``False`` turns off fsync for speed (tests); crash safety
        against an operating-system crash is lost, a killed server is still safe.
    :param bindir: the folder with the server binaries; found by
        :func:`~shardsession.pgbin.find_pg_bindir` when ``None``.
    :param settings: extra ``postgresql.conf`` settings written at ``initdb``.

    Example::

        cluster = LocalCluster(shards=4)
        dsns = cluster.start()          # {"s0": "host=... dbname=shardsession_s0", ...}
        cluster.stop()
    """

    def __init__(
        self,
        shards: int = 4,
        path: str | os.PathLike[str] | None = None,
        instances: int = 1,
        *,
        port: int | None = None,
        temporary: bool = False,
        durable: bool = True,
        bindir: str | os.PathLike[str] | None = None,
        settings: dict[str, str | int] | None = None,
    ) -> None:
        if isinstance(shards, bool) or not isinstance(shards, int):
            raise ClusterError(
                f"shards is how many shard databases to create (an int such as 4), not "
                f"{shards!r}; the cluster names them s0, s1, ..."
            )
        if shards < 1:
            raise ClusterError(f"shards must be at least 1, not {shards}")
        if isinstance(instances, bool) or not isinstance(instances, int):
            raise ClusterError(f"instances is how many servers to run (an int), not {instances!r}")
        if instances < 1 or instances > shards:
            raise ClusterError(
                f"instances must be between 1 and the number of shards ({shards}), not {instances}"
            )
        if port is not None:
            _check_port(port, instances)
        self.shards = shards
        self.instances = instances
        self.port = port
        self.temporary = temporary
        self.durable = durable
        self.settings = dict(settings or {})
        self._bindir = Path(bindir) if bindir is not None else None
        if self._bindir is not None and not has_server(self._bindir):
            raise PostgresNotFoundError(
                f"bindir={str(self._bindir)!r} does not hold the PostgreSQL server programs "
                "postgres, initdb and pg_ctl; give the folder that does (for example "
                "/usr/lib/postgresql/15/bin), or leave bindir out to search the usual places."
            )
        # the binaries recorded by the cluster at ``path`` when they are gone: their
        # folder and version, for the message that says what to do
        self._missing_bindir: tuple[Path, str] | None = None
        if path is None:
            path = tempfile.mkdtemp(prefix="shardsession-") if temporary else default_cluster_path()
        self.path = Path(path).absolute()
        self._user: ServerUser | None = None
        self._started_here = False

    # -- public API ----------------------------------------------------------

    @property
    def shard_names(self) -> list[str]:
        """The shard names this cluster serves: ``s0`` ... ``s{shards-1}``."""
        return [f"s{i}" for i in range(self.shards)]

    @staticmethod
    def database_name(shard: str) -> str:
        """The database that holds shard ``shard``."""
        return f"shardsession_{shard}"

    @property
    def bindir(self) -> Path:
        """The folder with the PostgreSQL server binaries in use.

        :raises ClusterError: the binaries the cluster at ``path`` was created with
            are gone (the message says how to give others of the same major version).
        """
        if self._bindir is None:
            if self._missing_bindir is not None:
                self._bindir = self._replacement_bindir(*self._missing_bindir)
            else:
                self._bindir = find_pg_bindir()
        return self._bindir

    @property
    def user(self) -> ServerUser:
        """The operating-system user the servers run as."""
        if self._user is None:
            self._user = server_user()
        return self._user

    def start(self) -> dict[str, str]:
        """Create and start the cluster, or reuse the one already running at ``path``.

        :returns: shard name -> DSN (over the private unix socket).
        :raises PostgresNotFoundError: no server binaries were found.
        :raises PortInUseError: the ``port`` asked for is taken.
        :raises ClusterError: the folder is a file or belongs to another user, the
            binaries the cluster was created with are gone, or the server did not
            start (the message quotes its log).
        """
        self._prepare_path()
        with self._locked():
            state = self._read_state()
            if state is None and self.port is not None and not _port_is_free(self.port):
                raise PortInUseError(
                    f"port {self.port} on 127.0.0.1 is already in use by another program; "
                    "choose another with --port (or port=), or leave it out to pick a free one."
                )
            if state is not None:
                self._check_compatible(state)
                self._check_binaries(state)
                infos = [InstanceInfo(**item) for item in state["instances"]]
            else:
                infos = self._plan()
            for info in infos:
                self._ensure_initialised(info)
                if not self._is_running(info):
                    self._start_instance(info)
                    self._started_here = True
            self._write_state(infos)
            self._ensure_databases(infos)
        if self.temporary and self._started_here:
            atexit.register(self._stop_at_exit)
        return self.dsns

    @property
    def dsns(self) -> dict[str, str]:
        """Shard name -> DSN over the unix socket (needs :meth:`start` first)."""
        return {shard: info.dsn(self.database_name(shard)) for shard, info in self._by_shard()}

    @property
    def tcp_dsns(self) -> dict[str, str]:
        """Shard name -> DSN over TCP on 127.0.0.1, with the cluster's password."""
        state = self._require_state()
        password = state["password"]
        return {
            shard: (
                f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{info.port}/"
                f"{self.database_name(shard)}"
            )
            for shard, info in self._by_shard()
        }

    def admin_dsn(self, shard: str | None = None) -> str:
        """A DSN to the ``postgres`` maintenance database of the server holding ``shard``."""
        info = self._instances()[0] if shard is None else self._instance_of(shard)
        return info.dsn("postgres")

    def running(self) -> bool:
        """Whether every server of the cluster at ``path`` is running."""
        state = self._read_state()
        if state is None:
            return False
        return all(self._is_running(InstanceInfo(**item)) for item in state["instances"])

    def stop(self, *, remove: bool | None = None) -> bool:
        """Stop every server of the cluster at ``path``.

        :param remove: also delete the cluster folder (default: only for a
            temporary cluster).
        :returns: whether a running server was stopped.
        """
        if not self.path.exists():
            return False
        if not self.path.is_dir():
            raise self._not_a_folder()
        remove = self.temporary if remove is None else remove
        stopped = False
        with self._locked():
            state = self._read_state()
            for item in state["instances"] if state else []:
                info = InstanceInfo(**item)
                if self._is_running(info):
                    self._pg_ctl(info, "stop", "-m", "fast", "-w", "-t", "60")
                    stopped = True
                if remove:
                    self._remove_socket_dir(info)
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        return stopped

    def stop_server(self, shard: str, *, mode: str = "fast") -> None:
        """Stop only the server that holds ``shard`` (``start()`` brings it back).

        Meant for tests of a lost shard with ``instances=shards``.

        :param mode: ``pg_ctl`` shutdown mode: ``smart``, ``fast`` or ``immediate``
            (``immediate`` is like a crash: recovery runs at the next start).
        """
        info = self._instance_of(shard)
        with self._locked():
            self._pg_ctl(info, "stop", "-m", mode, "-w", "-t", "60")

    def status(self) -> dict[str, Any]:
        """Describe the cluster: servers, databases and prepared transactions.

        :returns: a JSON-ready dict with ``path``, ``running``, ``version`` and a
            list of ``instances`` (port, socket, pid, shards with their DSN and
            prepared transactions).
        """
        state = self._read_state()
        if state is None:
            return {"path": str(self.path), "exists": False, "running": False, "instances": []}
        out: dict[str, Any] = {
            "path": str(self.path),
            "exists": True,
            "running": True,
            "version": state.get("version"),
            "user": state.get("user"),
            "instances": [],
        }
        for item in state["instances"]:
            info = InstanceInfo(**item)
            alive = self._is_running(info)
            out["running"] = out["running"] and alive
            entry: dict[str, Any] = {
                "index": info.index,
                "port": info.port,
                "socket_dir": info.socket_dir,
                "data": info.data,
                "running": alive,
                "pid": self._pid(info) if alive else None,
                "shards": [],
            }
            for shard in info.shards:
                dbname = self.database_name(shard)
                shard_entry: dict[str, Any] = {"shard": shard, "database": dbname}
                if alive:
                    shard_entry["dsn"] = info.dsn(dbname)
                    shard_entry["prepared_transactions"] = self._prepared(info, dbname)
                entry["shards"].append(shard_entry)
            out["instances"].append(entry)
        return out

    def create_database(self, name: str, *, template: str | None = None, shard: str) -> str:
        """Create database ``name`` on the server of ``shard`` (if missing).

        :param template: copy this database instead of the default template.
        :returns: the new database's DSN.
        """
        info = self._instance_of(shard)
        with psycopg.connect(info.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
                _retry_busy_template(conn, query)
        return info.dsn(name)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.temporary:
            self.stop()

    def __repr__(self) -> str:
        return (
            f"LocalCluster(shards={self.shards}, path={str(self.path)!r}, "
            f"instances={self.instances})"
        )

    # -- folder, lock and state ---------------------------------------------

    def _not_a_folder(self) -> ClusterError:
        blocker = _file_in_the_way(self.path) or self.path
        what = "is" if blocker == self.path else f"cannot be made: {blocker} is"
        return ClusterError(
            f"the cluster folder {self.path} {what} a file, not a folder. Choose a folder "
            "with --path (or path=)."
        )

    def _prepare_path(self) -> None:
        if _file_in_the_way(self.path) is not None:
            raise self._not_a_folder()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:  # a file appeared meanwhile
            raise self._not_a_folder() from err
        except PermissionError as err:
            raise ClusterError(
                f"cannot create the cluster folder {self.path}: {err.strerror}. Choose a folder "
                "you can write with --path (or path=)."
            ) from err
        user = self.user
        if not user.is_current and self.path.stat().st_uid == os.geteuid():
            # The server user must be able to enter the folder to reach its data.
            self.path.chmod(self.path.stat().st_mode | 0o711)
        if not user.can_reach(self.path):
            raise ClusterError(
                f"the PostgreSQL server runs as user {user.name!r}, who cannot enter {self.path} "
                "(a folder above it is private). Choose a cluster folder outside private "
                "home folders with --path (or path=), for example under /var/tmp."
            )
        if not os.access(self.path, os.W_OK):
            raise ClusterError(
                f"the cluster folder {self.path} is not writable by this user; choose another "
                "folder with --path (or path=), or fix its permissions."
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path / ".lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Say why nothing happens: another `up`, `down` or a test run may hold
                # the folder for a while (initdb, a server start).
                lock.seek(0)
                holder = lock.read().strip()
                pid = f" (pid {holder})" if holder.isdigit() else ""
                print(
                    f"waiting for another shardsession process{pid} using {self.path} "
                    f"(lock {lock_path})...",
                    file=sys.stderr,
                    flush=True,
                )
                fcntl.flock(lock, fcntl.LOCK_EX)
            with contextlib.suppress(OSError):  # who holds it, for the next waiter
                lock.truncate(0)
                lock.write(f"{os.getpid()}\n")
                lock.flush()
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.path / _STATE).read_text())
            if self._bindir is None and state.get("bindir"):
                # Keep using the binaries the cluster was created with.
                recorded = Path(state["bindir"])
                if has_server(recorded):
                    self._bindir = recorded
                else:  # only an error once they are needed: status and removal work
                    self._missing_bindir = (recorded, str(state.get("version") or "?"))
            return state
        except FileNotFoundError:
            return None
        except NotADirectoryError as err:
            raise self._not_a_folder() from err
        except (json.JSONDecodeError, OSError) as err:
            raise ClusterError(
                f"the cluster state file {self.path / _STATE} is unreadable ({err}); stop any "
                "server using this folder and delete the folder to start afresh."
            ) from err

    def _require_state(self) -> dict[str, Any]:
        state = self._read_state()
        if state is None:
            raise ClusterError(f"no cluster at {self.path}; start it first (`shardsession up`)")
        return state

    def _replacement_bindir(self, recorded: Path, version: str) -> Path:
        """Other binaries for a cluster whose own are gone: SHARDSESSION_PG_BIN's, if
        they are of the cluster's major version; otherwise raise, saying what to do."""
        major = _major(version)
        if os.environ.get("SHARDSESSION_PG_BIN"):
            found = find_pg_bindir()
            if _major(pg_version(found)) != major:
                raise ClusterError(
                    f"the cluster at {self.path} holds PostgreSQL {major} data, but "
                    f"SHARDSESSION_PG_BIN={str(found)!r} is PostgreSQL {pg_version(found)}; "
                    f"point it at a PostgreSQL {major} installation."
                )
            return found
        try:
            found = find_pg_bindir()
            hint = (
                f"To use the PostgreSQL {major} installed in {found}, set "
                f"SHARDSESSION_PG_BIN={found}. "
                if _major(pg_version(found)) == major
                else f"Install PostgreSQL {major} and set SHARDSESSION_PG_BIN to its bin folder. "
            )
        except (PostgresNotFoundError, ClusterError, OSError):
            hint = f"Install PostgreSQL {major} and set SHARDSESSION_PG_BIN to its bin folder. "
        raise ClusterError(
            f"the cluster at {self.path} was created with PostgreSQL {version} from {recorded}, "
            f"which is gone. {hint}Or, if its data is not needed, delete it "
            f"(`shardsession down --path {self.path} --remove`) and start afresh."
        )

    def _instance_of(self, shard: object) -> InstanceInfo:
        """The server holding ``shard``; an error naming the cluster's shards if none."""
        name = check_shard_name(shard)  # before the state: a wrong type says so first
        by_shard = dict(self._by_shard())
        if name not in by_shard:
            raise ClusterError(
                f"the cluster at {self.path} has no shard {shard!r}; its shards are "
                f"{', '.join(repr(name) for name in by_shard)}"
            )
        return by_shard[name]

    def _instances(self) -> list[InstanceInfo]:
        return [InstanceInfo(**item) for item in self._require_state()["instances"]]

    def _by_shard(self) -> list[tuple[str, InstanceInfo]]:
        pairs = [(shard, info) for info in self._instances() for shard in info.shards]
        wanted = set(self.shard_names)
        return sorted(((s, i) for s, i in pairs if s in wanted), key=lambda pair: int(pair[0][1:]))

    def _write_state(self, infos: list[InstanceInfo]) -> None:
        previous = self._read_state() or {}
        same = previous.get("bindir") == str(self.bindir) and previous.get("version")
        state = {
            "format": 1,
            "version": previous["version"] if same else pg_version(self.bindir),
            "bindir": str(self.bindir),
            "user": self.user.name,
            "password": previous.get("password") or self._password(),
            "instances": [asdict(info) for info in infos],
        }
        tmp = self.path / (_STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.path / _STATE)

    def _password(self) -> str:
        pwfile = self.path / "password"
        if pwfile.exists():
            return pwfile.read_text().strip()
        password = secrets.token_urlsafe(18)
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        return password

    def _check_compatible(self, state: dict[str, Any]) -> None:
        have = len(state["instances"])
        if have != self.instances:
            raise ClusterError(
                f"the cluster at {self.path} runs {have} server(s), not {self.instances}; stop "
                "it first (`shardsession down --path ...`) or choose another --path."
            )
        if have > 1:
            served = sum(len(item["shards"]) for item in state["instances"])
            if served != self.shards:
                raise ClusterError(
                    f"the cluster at {self.path} serves {served} shards over {have} servers, "
                    f"not {self.shards}; stop it first or choose another --path."
                )
        elif self.shards > len(state["instances"][0]["shards"]):
            state["instances"][0]["shards"] = self.shard_names

    def _check_binaries(self, state: dict[str, Any]) -> None:
        if not state.get("version") or state.get("bindir") == str(self.bindir):
            return
        version = pg_version(self.bindir)
        if _major(version) != _major(str(state["version"])):
            raise ClusterError(
                f"the cluster at {self.path} holds PostgreSQL {_major(state['version'])} data, "
                f"which PostgreSQL {version} from {self.bindir} cannot run; leave bindir= out "
                "to use the binaries it was created with, give those of PostgreSQL "
                f"{_major(state['version'])}, or choose another path."
            )

    def _plan(self) -> list[InstanceInfo]:
        infos = []
        for index in range(self.instances):
            shards = [s for n, s in enumerate(self.shard_names) if n % self.instances == index]
            infos.append(
                InstanceInfo(
                    index=index,
                    data=str(self.path / f"pg{index}"),
                    port=0,
                    socket_dir=str(self._socket_dir(index)),
                    shards=shards,
                )
            )
        return infos

    def _socket_dir(self, index: int) -> Path:
        local = self.path / "run" / str(index)
        if len(str(local)) <= _MAX_SOCKET_PATH - 16:
            return local
        digest = hashlib.sha1(str(self.path).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"shardsession-{digest}-{index}"

    # -- server processes ----------------------------------------------------

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            cwd=str(self.path),
            env=env,
            timeout=120,
            **self.user.popen_kwargs(),  # type: ignore[arg-type]
        )
        if check and done.returncode != 0:
            raise ClusterError(
                f"`{' '.join(args)}` failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done

    def _pg_ctl(self, info: InstanceInfo, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bindir / "pg_ctl"), "-D", info.data, *args])

    def _ensure_initialised(self, info: InstanceInfo) -> None:
        data = Path(info.data)
        user = self.user
        if (data / "PG_VERSION").exists():
            owner = data.stat().st_uid
            if owner != user.uid:
                raise ClusterError(
                    f"the data folder {data} is owned by uid {owner}, but the server runs as "
                    f"{user.name!r} (uid {user.uid}); PostgreSQL only starts on a data folder "
                    "owned by its own user. Use another --path, or give the folder to that "
                    f"user (`chown -R {user.name} {data}`)."
                )
            return
        if data.exists() and any(data.iterdir()):
            raise ClusterError(
                f"{data} exists and is not an empty PostgreSQL data folder; remove it or choose "
                "another --path."
            )
        if not self.bindir or not user.can_reach(self.bindir / "postgres"):
            raise ClusterError(
                f"the server binaries in {self.bindir} cannot be reached by user {user.name!r}; "
                "install PostgreSQL system-wide or set SHARDSESSION_PG_BIN to a readable folder."
            )
        data.mkdir(mode=0o700, exist_ok=True)
        if not user.is_current:
            os.chown(data, user.uid, user.gid)
        pwfile = self.path / ".initdb-pw"
        pwfile.write_text(self._password() + "\n")
        try:
            if not user.is_current:
                os.chown(pwfile, user.uid, user.gid)
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D", info.data,
                    "-U", SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        settings: dict[str, str | int] = {
            "listen_addresses": "'127.0.0.1'",
            "max_connections": 300,
            "max_prepared_transactions": 128,
            "shared_buffers": "'64MB'",
            "log_min_messages": "warning",
            "include_if_exists": "'shardsession.conf'",
        }
        if not self.durable:
            # fsync off is safe against a crash of PostgreSQL itself (only an operating
            # system crash loses data); synchronous_commit stays on, or a crashed
            # commit-point server could lose a commit decision already reported.
            settings.update(fsync="off", full_page_writes="off")
        settings.update(self.settings)
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(data / "postgresql.conf", "a") as handle:
            handle.write("\n# written by shardsession\n" + conf)

    def _is_running(self, info: InstanceInfo) -> bool:
        if not (Path(info.data) / "postmaster.pid").exists() or not info.port:
            return False
        try:
            with psycopg.connect(info.dsn("postgres"), connect_timeout=5):
                return True
        except psycopg.OperationalError:
            return False

    def _pid(self, info: InstanceInfo) -> int | None:
        try:
            return int((Path(info.data) / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _start_instance(self, info: InstanceInfo) -> None:
        user = self.user
        sock = Path(info.socket_dir)
        sock.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not user.is_current:
            os.chown(sock, user.uid, user.gid)
            os.chown(sock.parent, os.geteuid(), os.getegid())
            sock.parent.chmod(0o711)
        explicit = self.port + info.index if self.port is not None else None
        if explicit is not None and not _port_is_free(explicit):
            raise PortInUseError(
                f"port {explicit} on 127.0.0.1 is already in use by another program; choose "
                "another with --port (or port=), or leave it out to pick a free one."
            )
        attempts = 1 if explicit is not None else 5
        for attempt in range(attempts):
            if explicit is not None:
                port = explicit
            elif attempt == 0 and info.port and _port_is_free(info.port):
                port = info.port
            else:
                port = _free_port()
            conf = Path(info.data) / "shardsession.conf"
            conf.write_text(f"port = {port}\nunix_socket_directories = '{info.socket_dir}'\n")
            if not user.is_current:
                os.chown(conf, user.uid, user.gid)
            log = Path(info.data) / "server.log"
            done = self._run(
                [str(self.bindir / "pg_ctl"), "-D", info.data, "-l", str(log), "-w", "-t", "60",
                 "start"],
                check=False,
            )  # fmt: skip
            if done.returncode == 0:
                info.port = port
                return
            tail = _tail(log)
            if "Address already in use" in tail or "could not bind" in tail:
                if explicit is not None:
                    raise PortInUseError(
                        f"port {port} on 127.0.0.1 is already in use; choose another with "
                        "--port (or port=), or leave it out to pick a free one."
                    )
                time.sleep(0.1)
                continue
            raise ClusterError(
                f"PostgreSQL at {info.data} did not start: "
                f"{(done.stderr or done.stdout).strip()}\n{tail}"
            )
        raise ClusterError(f"PostgreSQL at {info.data} found no free port after {attempts} tries")

    def _ensure_databases(self, infos: list[InstanceInfo]) -> None:
        for info in infos:
            with psycopg.connect(info.dsn("postgres"), autocommit=True) as conn:
                have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
                for shard in info.shards:
                    name = self.database_name(shard)
                    if name not in have:
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _prepared(self, info: InstanceInfo, dbname: str) -> list[dict[str, Any]]:
        with psycopg.connect(info.dsn("postgres"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT gid, prepared, owner FROM pg_prepared_xacts WHERE database = %s",
                (dbname,),
            ).fetchall()
        return [{"gid": gid, "prepared": at.isoformat(), "owner": owner} for gid, at, owner in rows]

    def _remove_socket_dir(self, info: InstanceInfo) -> None:
        if not Path(info.socket_dir).is_relative_to(self.path):
            shutil.rmtree(info.socket_dir, ignore_errors=True)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _retry_busy_template(conn: psycopg.Connection[Any], query: sql.Composable) -> None:
    # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template,
    # which another xdist worker may briefly be while creating its own copy.
    for attempt in range(50):
        try:
            conn.execute(query)
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 49:
                raise
            time.sleep(0.1)
        except psycopg.errors.DuplicateDatabase:
            return


def _check_port(port: object, instances: int) -> None:
    highest = 65536 - instances  # every server takes the next port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= highest:
        raise ClusterError(
            f"port {port!r} is not a TCP port number from 1 to {highest}; choose one with "
            "--port (or port=), or leave it out to pick a free one."
        )
    lowest = _unprivileged_port_start()
    if port < lowest:
        raise ClusterError(
            f"port {port} is below {lowest}, where only privileged programs may listen, and "
            "the PostgreSQL server runs as an ordinary user; choose a port from "
            f"{lowest} to {highest} with --port (or port=), or leave it out to pick a free one."
        )
