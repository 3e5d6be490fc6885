"""LocalCluster's mistakes a user can fix: each is one line that names the fix.

Bad arguments, shard names the cluster does not have, a cluster folder whose
PostgreSQL binaries were removed, and a folder another process is using (which
is waited for, saying so).
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shardsession.embedded import LocalCluster
from shardsession.exc import ArgumentError, ClusterError, PostgresNotFoundError
from shardsession.pgbin import find_pg_bindir, pg_version
from tests.helpers import run_cli


def test_invalid_arguments_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    path = tmp_path / "c"
    with pytest.raises(ClusterError, match=r"port 70000 is not a TCP port number from 1 to 65535"):
        LocalCluster(shards=1, path=path, port=70000)
    with pytest.raises(ClusterError, match=r"from 1 to 65534"):  # the second server's port
        LocalCluster(shards=2, instances=2, path=path, port=65535)
    with pytest.raises(ClusterError, match=r"shards is how many shard databases.*not '4'"):
        LocalCluster(shards="4", path=path)  # type: ignore[arg-type]
    with pytest.raises(PostgresNotFoundError, match=r"bindir='/nonexistent' does not hold"):
        LocalCluster(shards=1, path=path, bindir="/nonexistent")
    assert not path.exists()


def test_shard_names_the_cluster_does_not_have(tmp_path: Path) -> None:
    cluster = LocalCluster(shards=2, path=tmp_path / "c", durable=False)
    cluster.start()
    try:
        with pytest.raises(ArgumentError, match=r"shard name 1 \(int\) is not a string.*'1'"):
            cluster.stop_server(1)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match=r"'s\\x000' contains a NUL character"):
            cluster.admin_dsn("s\x000")
        with pytest.raises(ClusterError, match=r"has no shard 's9'; its shards are 's0', 's1'"):
            cluster.create_database("extra", shard="s9")
        assert cluster.running()  # nothing was stopped
    finally:
        cluster.stop(remove=True)


def _linked_bindir(folder: Path) -> Path:
    """A folder of links to this machine's server programs, to remove later."""
    real = find_pg_bindir()
    folder.mkdir()
    for program in real.iterdir():
        (folder / program.name).symlink_to(program)
    return folder


def test_cluster_whose_binaries_are_gone_says_how_to_run_it(tmp_path: Path) -> None:
    path = tmp_path / "c"
    bindir = _linked_bindir(tmp_path / "bin")
    major = pg_version(bindir).split(".")[0]
    LocalCluster(shards=1, path=path, bindir=bindir, durable=False).start()
    LocalCluster(shards=1, path=path).stop()
    shutil.rmtree(bindir)  # say, PostgreSQL was upgraded or uninstalled
    installed = find_pg_bindir()
    search = {"SHARDSESSION_PG_BIN": ""}
    try:
        done = run_cli("up", "--path", str(path), "--shards", "1", env=search)
        assert done.returncode == 2
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(
            f"error: the cluster at {path} was created with PostgreSQL {major}."
        )
        assert f"from {bindir}, which is gone" in lines[0]
        assert f"set SHARDSESSION_PG_BIN={installed}" in lines[0]
        assert "Traceback" not in done.stderr
        # status needs no binaries; the fix named works
        assert run_cli("status", "--path", str(path), env=search).returncode == 1
        fixed = run_cli("up", "--path", str(path), "--shards", "1",
                        env={"SHARDSESSION_PG_BIN": str(installed)})  # fmt: skip
        assert fixed.returncode == 0, fixed.stderr
    finally:
        done = run_cli("down", "--path", str(path), "--remove",
                       env={"SHARDSESSION_PG_BIN": str(installed)})  # fmt: skip
    assert done.returncode == 0, done.stderr


_HOLD = """
import sys
from shardsession.embedded import LocalCluster
with LocalCluster(shards=1, path=sys.argv[1])._locked():
    print("locked", flush=True)
    sys.stdin.readline()
"""


def _first_line(stream: object, seconds: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()  # type: ignore[attr-defined]
    try:
        return lines.get(timeout=seconds)
    except queue.Empty:
        pytest.fail(f"nothing was printed in {seconds} s")


def test_up_says_it_waits_for_another_process(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    up = None
    try:
        assert _first_line(holder.stdout, 30) == "locked\n"
        up = subprocess.Popen(
            [sys.executable, "-m", "shardsession", "up", "--path", str(path), "--shards", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert _first_line(up.stderr, 30) == (
            f"waiting for another shardsession process (pid {holder.pid}) using {path} "
            f"(lock {path / '.lock'})...\n"
        )
        assert up.poll() is None  # still waiting
        holder.communicate("\n", timeout=30)  # the holder lets go: `up` carries on
        out, err = up.communicate(timeout=120)
        assert up.returncode == 0, err
        assert f"cluster at {path} is up" in out and err == ""
    finally:
        holder.kill()
        if up is not None:
            up.kill()
            up.wait()
        LocalCluster(shards=1, path=path).stop(remove=True)
