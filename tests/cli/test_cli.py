"""The ``shardsession`` command line: up, status, down, check, and its errors."""

from __future__ import annotations

import json
import os
import pwd
import socket
import threading
from pathlib import Path

import psycopg
import pytest

from shardsession.embedded import LocalCluster
from tests.helpers import python_for, run_cli


def _users() -> list[object]:
    params: list[object] = [pytest.param(None, id="current-user")]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody").pw_uid
        marks = [] if python_for(nobody) else [pytest.mark.skip(reason="no Python for nobody")]
        params.append(pytest.param(nobody, id="normal-user", marks=marks))
    return params


@pytest.mark.parametrize("uid", _users())
def test_up_status_down(tmp_path: Path, uid: int | None) -> None:
    path = tmp_path / "cluster"
    path.mkdir()
    if uid is not None:
        os.chown(tmp_path, uid, -1)
        os.chown(path, uid, -1)
    up = run_cli("up", "--path", str(path), "--shards", "2", "--json", uid=uid, cwd=str(tmp_path))
    assert up.returncode == 0, up.stderr
    shards = json.loads(up.stdout)["shards"]
    assert sorted(shards) == ["s0", "s1"]
    try:
        for dsn in shards.values():
            with psycopg.connect(dsn) as conn:
                value = conn.execute("SHOW max_prepared_transactions").fetchone()[0]
                assert int(value) >= 64
        # a second `up` reuses the running server: same DSNs
        again = run_cli("up", "--path", str(path), "--shards", "2", "--json", uid=uid,
                        cwd=str(tmp_path))  # fmt: skip
        assert json.loads(again.stdout)["shards"] == shards
        status = run_cli("status", "--path", str(path), "--json", uid=uid, cwd=str(tmp_path))
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["running"] is True
        assert [s["shard"] for s in info["instances"][0]["shards"]] == ["s0", "s1"]
        assert info["instances"][0]["shards"][0]["prepared_transactions"] == []
        text = run_cli("status", "--path", str(path), uid=uid, cwd=str(tmp_path)).stdout
        assert "running" in text and "shardsession_s1" in text
    finally:
        down = run_cli("down", "--path", str(path), "--json", uid=uid, cwd=str(tmp_path))
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["stopped"] is True
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(shards["s0"], connect_timeout=3)
    stopped = run_cli("status", "--path", str(path), uid=uid, cwd=str(tmp_path))
    assert stopped.returncode == 1
    assert "stopped" in stopped.stdout


def test_status_of_missing_cluster_is_friendly(tmp_path: Path) -> None:
    done = run_cli("status", "--path", str(tmp_path / "nothing"))
    assert done.returncode == 1
    assert "no cluster at" in done.stdout
    assert "Traceback" not in done.stderr


def test_missing_binaries_error_says_how_to_get_them(tmp_path: Path) -> None:
    done = run_cli("up", "--path", str(tmp_path / "c"), env={"SHARDSESSION_PG_BIN": "/nonexistent"})
    assert done.returncode == 2
    assert done.stderr.startswith("error: SHARDSESSION_PG_BIN='/nonexistent'")
    assert "Traceback" not in done.stderr


def test_busy_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("up", "--path", str(tmp_path / "c"), "--port", str(port))
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder owned by another user")
def test_data_folder_owned_by_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "c"
    data = path / "pg0"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    done = run_cli("up", "--path", str(path))
    assert done.returncode == 2
    assert f"the data folder {data} is owned by uid {nobody.pw_uid}" in done.stderr
    assert "chown" in done.stderr


def test_check_rejects_server_without_two_phase_commit(tmp_path: Path) -> None:
    cluster = LocalCluster(
        shards=1, path=tmp_path / "c", durable=False, settings={"max_prepared_transactions": 0}
    )
    dsn = cluster.start()["s0"]
    try:
        done = run_cli("check", "--dsn", dsn)
        assert done.returncode == 2
        assert "max_prepared_transactions = 0" in done.stderr
        assert "max_prepared_transactions = 64" in done.stderr  # the fix
        ok = LocalCluster(shards=1, path=tmp_path / "ok", durable=False)
        good = ok.start()["s0"]
        try:
            passed = run_cli("check", "--dsn", good, "--json")
            assert passed.returncode == 0, passed.stderr
            assert json.loads(passed.stdout) == {"s0": 128}
        finally:
            ok.stop(remove=True)
    finally:
        cluster.stop(remove=True)


def test_recover_command_settles_and_reports(tmp_path: Path) -> None:
    cluster = LocalCluster(shards=2, path=tmp_path / "c", durable=False)
    dsns = cluster.start()
    try:
        for dsn in dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE t (id int)")
        # a prepared transaction with no decision (its coordinator is gone)
        gid = "ss_dead-1-" + b"s0".hex() + "_s1"
        with psycopg.connect(dsns["s1"]) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute(f"PREPARE TRANSACTION '{gid}'")
        path = ["--path", str(tmp_path / "c")]
        dry = run_cli("recover", *path, "--older-than", "0", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["rolled_back"] == [gid]
        unnamed = run_cli("recover", "--dsn", dsns["s0"], "--older-than", "0")
        assert unnamed.returncode == 2 and "needs the shard's name" in unnamed.stderr
        named = [a for s, d in dsns.items() for a in ("--dsn", f"{s}={d}")]
        done = run_cli("recover", *named, "--older-than", "0")
        assert done.returncode == 0, done.stderr
        assert "1 rolled back" in done.stdout and gid in done.stdout
        with psycopg.connect(dsns["s1"]) as conn:
            assert conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        cluster.stop(remove=True)


def test_up_with_external_shards_checks_and_names_them(shard_dsns: dict[str, str]) -> None:
    done = run_cli(
        "up", "--json", "--dsn", f"a={shard_dsns['s0']}", "--dsn", f"b={shard_dsns['s1']}"
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["shards"] == {"a": shard_dsns["s0"], "b": shard_dsns["s1"]}
    assert out["path"] is None  # no embedded cluster was started


def test_check_names_unnamed_shards_in_order_and_refuses_a_name_twice(
    shard_dsns: dict[str, str],
) -> None:
    done = run_cli("check", "--json", "--dsn", shard_dsns["s0"], "--dsn", shard_dsns["s1"])
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)) == ["s0", "s1"]
    twice = run_cli("check", "--dsn", f"x={shard_dsns['s0']}", "--dsn", f"x={shard_dsns['s1']}")
    assert twice.returncode == 2
    assert "shard 'x' is given twice" in twice.stderr and "Traceback" not in twice.stderr


def test_deadlocks_reports_a_cycle_across_shards_and_cancels_its_youngest(
    tmp_path: Path,
) -> None:
    # A cluster of its own: no application's detector watches it, so the cycle stays
    # until the command breaks it.
    with LocalCluster(shards=2, path=tmp_path / "c", durable=False) as cluster:
        dsns = cluster.start()
        for dsn in dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE hot (id int PRIMARY KEY)")
                conn.execute("INSERT INTO hot VALUES (1)")
        older, younger = "ss:1000:aaaa", "ss:2000:bbbb"  # transaction tags, by age
        conns = {}
        for tag in (older, younger):
            for shard, dsn in dsns.items():
                conn = psycopg.connect(dsn, application_name=tag)
                conn.execute("SELECT 1")  # a transaction is open
                conns[tag, shard] = conn
        conns[older, "s0"].execute("UPDATE hot SET id = 1")
        conns[younger, "s1"].execute("UPDATE hot SET id = 1")
        outcome: dict[str, BaseException | None] = {}

        def blocked(tag: str, shard: str) -> None:
            try:
                conns[tag, shard].execute("UPDATE hot SET id = 1")
                outcome[tag] = None
            except psycopg.Error as err:
                outcome[tag] = err
                conns[tag, shard].rollback()
                conns[tag, "s0" if shard == "s1" else "s1"].rollback()

        waits = [threading.Thread(target=blocked, args=(older, "s1")),
                 threading.Thread(target=blocked, args=(younger, "s0"))]  # fmt: skip
        for t in waits:
            t.start()
        argv = [arg for shard, dsn in dsns.items() for arg in ("--dsn", f"{shard}={dsn}")]
        seen = json.loads(run_cli("deadlocks", *argv, "--dry-run", "--json").stdout)
        for _ in range(50):  # both waits in place
            if len(seen["waits"]) == 2:
                break
            seen = json.loads(run_cli("deadlocks", *argv, "--dry-run", "--json").stdout)
        assert len(seen["cycles"]) == 1, seen
        assert seen["cycles"][0]["victim"] == younger
        assert seen["cycles"][0]["shards"] == ["s0", "s1"]
        assert not seen["cycles"][0]["cancelled"]
        done = run_cli("deadlocks", *argv)
        assert done.returncode == 0, done.stderr
        assert f"victim {younger} (cancelled)" in done.stdout
        for t in waits:
            t.join(10)
        assert outcome[older] is None  # the older transaction went on
        assert isinstance(outcome[younger], psycopg.errors.QueryCanceled)
        for conn in conns.values():
            conn.close()


def test_version_names_the_library_and_what_it_runs_on() -> None:
    import sqlalchemy

    import shardsession

    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"shardsession {shardsession.__version__} (")
    assert f"SQLAlchemy {sqlalchemy.__version__}" in done.stdout


def test_up_with_fewer_shards_than_the_cluster_has_says_what_it_has(tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    try:
        assert run_cli("up", "--path", path, "--shards", "4").returncode == 0
        fewer = run_cli("up", "--path", path, "--shards", "2")
        assert fewer.returncode == 0, fewer.stderr
        first = fewer.stdout.splitlines()[0]
        assert "it has 4 shards (s0, s1, s2, s3)" in first and "--shards 4" in first
        data = json.loads(run_cli("up", "--path", path, "--shards", "2", "--json").stdout)
        assert sorted(data["shards"]) == ["s0", "s1"]
        assert data["cluster_shards"] == ["s0", "s1", "s2", "s3"]
    finally:
        run_cli("down", "--path", path, "--remove")
