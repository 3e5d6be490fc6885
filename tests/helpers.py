"""Helpers shared by the test modules (not fixtures: plain functions)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import psycopg

SITE_PACKAGES = Path(psycopg.__file__).resolve().parents[1]


def python_for(uid: int) -> list[str] | None:
    """A command that runs this environment's Python as user ``uid``, or None.

    The virtualenv's interpreter may live under a private home folder; then the
    system interpreter of the same version is used with our site-packages added.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable).resolve(), Path("/usr/bin") / version]
    for exe in candidates:
        if exe.exists() and _reachable(exe, uid) and _reachable(SITE_PACKAGES, uid):
            boot = f"import site; site.addsitedir({str(SITE_PACKAGES)!r})"
            return [str(exe), "-c", boot + "; import runpy; runpy.run_module('shardsession', "
                    "run_name='__main__', alter_sys=True)"]  # fmt: skip
    return None


def _reachable(path: Path, uid: int) -> bool:
    for folder in [path, *path.parents]:
        st = folder.stat()
        bit = 0o100 if st.st_uid == uid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def run_cli(*args: str, uid: int | None = None, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``python -m shardsession ARGS`` (as user ``uid`` when given)."""
    full_env = {**os.environ, **(env or {})}
    kwargs: dict[str, object] = {}
    if uid is None or uid == os.geteuid():
        command = [sys.executable, "-m", "shardsession"]
    else:
        command = python_for(uid)
        assert command is not None, "no Python reachable by the test user"
        entry = pwd.getpwuid(uid)
        kwargs = {"user": uid, "group": entry.pw_gid, "extra_groups": []}
        full_env["HOME"] = cwd or "/tmp"
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=full_env, cwd=cwd or "/tmp",
        timeout=180, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
