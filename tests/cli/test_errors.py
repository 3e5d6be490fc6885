"""Mistakes a user can fix give one line naming the shard and the fix, never a traceback.

The command line prints ``error: ...`` and exits with status 2; the Python API
(``create_shards``, ``create_pool``) raises the same message as an
:class:`~sqlalchemy.exc.ArgumentError` or, for a server that does not answer, an
:class:`~sqlalchemy.exc.OperationalError`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

import shardsession as ss
from shardsession.embedded import _unprivileged_port_start
from shardsession.exc import ArgumentError, OperationalError
from tests.helpers import run_cli

MALFORMED = [
    pytest.param("postgresql://app:secret@/db?port=abc", "port 'abc'", id="url-port-not-a-number"),
    pytest.param("host=db.example port=99999 password=secret", "port '99999'", id="port-too-big"),
    pytest.param("garbage", 'missing "="', id="not-a-dsn"),
]
FACTORIES = [pytest.param(ss.create_shards, id="create_shards"),
             pytest.param(ss.create_pool, id="create_pool")]  # fmt: skip


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# -- malformed DSNs and shard names -------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize(("dsn", "problem"), MALFORMED)
def test_malformed_dsn_names_its_shard(factory: Callable[..., object], dsn: str, problem: str
                                       ) -> None:  # fmt: skip
    with pytest.raises(ArgumentError) as info:
        factory({"s0": "host=localhost dbname=a", "s1": dsn}, recovery_interval=None)
    message = str(info.value)
    assert message.startswith("shard 's1': ")
    assert problem in message and "postgresql://user:password@host:5432/dbname" in message
    assert "secret" not in message  # the password is not repeated


@pytest.mark.parametrize("command", ["check", "recover"])
@pytest.mark.parametrize(("dsn", "problem"), MALFORMED)
def test_cli_malformed_dsn_is_one_line_naming_the_shard(command: str, dsn: str, problem: str
                                                        ) -> None:  # fmt: skip
    done = run_cli(command, "--dsn", f"s1={dsn}")
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert line.startswith("error: shard 's1': ") and problem in line
    assert "secret" not in line


def test_shard_names_are_strings_without_nul() -> None:
    with pytest.raises(ArgumentError, match=r"shard name 1 \(int\) is not a string.*use '1'"):
        ss.create_shards({1: "host=localhost dbname=a"}, recovery_interval=None)  # type: ignore[dict-item]
    with pytest.raises(ArgumentError, match=r"shard name 'a\\x00b' contains a NUL character"):
        ss.create_pool({"a\x00b": "host=localhost dbname=a"}, recovery_interval=None)


def test_cli_refuses_a_shard_name_too_long_for_two_phase_commit() -> None:
    name = "n" * 49
    done = run_cli("check", "--dsn", f"{name}=host=localhost dbname=a")
    assert done.returncode == 2
    assert "is longer than 48 bytes" in _one_error_line(done.stderr)


def test_cli_unreachable_server_is_one_line_naming_the_shard() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_cli("check", "--dsn", f"s1=postgresql://app@127.0.0.1:{port}/db")
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert line.startswith(f"error: shard 's1' (host=127.0.0.1 port={port} dbname=db user=app)")
    assert "cannot be reached" in line and "Check that its server is running" in line


# -- servers that do not answer ------------------------------------------------------


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A port whose connections are taken by the kernel but never served."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepted: the startup packet is never answered
        yield listener.getsockname()[1]


@contextlib.contextmanager
def _stalled_server() -> Iterator[int]:
    """A server that completes PostgreSQL's startup handshake, then never answers again."""

    def message(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!I", len(body) + 4) + body

    ready = message(b"R", struct.pack("!I", 0))  # AuthenticationOk
    for key, value in [(b"server_version", b"15.0"), (b"client_encoding", b"UTF8"),
                       (b"standard_conforming_strings", b"on"), (b"DateStyle", b"ISO, MDY"),
                       (b"integer_datetimes", b"on")]:  # fmt: skip
        ready += message(b"S", key + b"\0" + value + b"\0")
    ready += message(b"K", struct.pack("!II", 1, 1)) + message(b"Z", b"I")
    clients: list[socket.socket] = []

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                (length,) = struct.unpack("!I", client.recv(4, socket.MSG_WAITALL))
                client.recv(length - 4, socket.MSG_WAITALL)  # the startup message
                client.sendall(ready)
            except OSError:
                return
            clients.append(client)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        try:
            yield listener.getsockname()[1]
        finally:
            for client in clients:
                client.close()


def _connect_error(engine: Engine, limit: float) -> tuple[BaseException, float]:
    """Connect in a thread; return the error and the seconds it took (fail past ``limit``)."""
    outcome: list[BaseException] = []
    start = time.monotonic()

    def attempt() -> None:
        try:
            engine.connect().close()
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"connecting was still waiting after {limit} s"
    assert outcome, "connecting to a server that never answers succeeded"
    return outcome[0], time.monotonic() - start


@pytest.mark.parametrize("factory", FACTORIES)
def test_connect_timeout_to_a_silent_server_names_the_shard(factory: Callable[..., ss.ShardSet]
                                                           ) -> None:  # fmt: skip
    with _silent_server() as port:
        shards = factory({"s1": f"host=127.0.0.1 port={port} dbname=db user=app"},
                         connect_timeout=2, recovery_interval=None)  # fmt: skip
        try:
            error, seconds = _connect_error(shards["s1"], 30)
        finally:
            shards.close()
    assert isinstance(error, OperationalError)
    message = str(error)
    assert "[shard 's1'] " in message and "raise connect_timeout" in message
    # psycopg's timeout, unless a starved machine started the worker too late for it
    # and the coordinator's own limit came first
    assert "connection timeout expired (connect_timeout=2 s)" in message or (
        "did not connect to PostgreSQL within 7 s" in message
    )
    assert 1.5 < seconds < 20


def test_coordinator_gives_up_on_a_worker_whose_server_stalls_after_connecting() -> None:
    with _stalled_server() as port:
        shards = ss.create_shards(
            {"s1": f"host=127.0.0.1 port={port} dbname=db user=app sslmode=disable "
                   "gssencmode=disable"},
            connect_timeout=2,
            recovery_interval=None,
        )  # fmt: skip
        try:
            error, seconds = _connect_error(shards["s1"], 30)
        finally:
            shards.close()
    assert isinstance(error, OperationalError)
    assert "[shard 's1'] the worker" in str(error)
    assert "did not connect to PostgreSQL within 7 s" in str(error)  # 2 s, and 5 to start
    assert 6.5 < seconds < 20


# -- the embedded cluster's port and folder ------------------------------------------


def _bad_ports() -> list[object]:
    ports: list[object] = ["70000", "0", "-1", "abc"]
    if _unprivileged_port_start() > 80:
        ports.append("80")
    return ports


@pytest.mark.parametrize("port", _bad_ports())
def test_up_with_an_invalid_port_says_which_ports_work(tmp_path: Path, port: str) -> None:
    done = run_cli("up", "--path", str(tmp_path / "c"), "--port", port)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert "--port" in line and port in line
    assert not (tmp_path / "c").exists()  # refused before anything was made


@pytest.mark.parametrize("command", ["up", "status", "down"])
def test_path_that_is_a_file_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "not-a-folder"
    path.write_text("mine\n")
    done = run_cli(command, "--path", str(path))
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == (
        f"error: the cluster folder {path} is a file, not a folder. Choose a folder with "
        "--path (or path=)."
    )
    assert path.read_text() == "mine\n"
