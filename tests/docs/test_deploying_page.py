"""What docs/deploying.rst shows of ``shardsession check`` is what the command prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

from psycopg.conninfo import make_conninfo

from tests.helpers import run_cli

PAGE = Path(__file__).resolve().parents[2] / "docs" / "deploying.rst"


def _shape(line: str) -> str:
    """A line of ``check`` output with the DSN's description and the value left out."""
    return re.sub(r"\(.*\)", "(DSN)", re.sub(r"= \d+", "= N", line))


def _described(line: str) -> list[str]:
    """The keywords of the DSN description in a line of ``check`` output."""
    found = re.search(r"\((.*)\)", line)
    assert found, line
    return [part.split("=", 1)[0] for part in found.group(1).split()]


def _example() -> tuple[list[str], list[str]]:
    """The page's ``check`` example: the DSNs it gives and the lines it shows."""
    text = PAGE.read_text()
    start = text.index("$ shardsession check")
    block = text[start : text.index("\n\n", start)].splitlines()
    command = " ".join(block[: next(i for i, line in enumerate(block) if "ok" in line)])
    dsns = re.findall(r"--dsn (\S+)", command)
    return dsns, [line.strip() for line in block if line.strip().endswith(", ok")]


def test_the_check_example_prints_what_check_prints(shard_dsns: dict[str, str]) -> None:
    dsns, shown = _example()
    names = [dsn.partition("=")[0] for dsn in dsns]
    assert names == ["s0", "s1"] and len(shown) == 2
    args = [a for name, dsn in zip(names, shard_dsns.values()) for a in ("--dsn", f"{name}={dsn}")]
    done = run_cli("check", *args)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert [_shape(line) for line in printed] == [_shape(line) for line in shown]
    # host, port (the page's DSNs give none), database and user; never the password
    for line, real in zip(shown, printed):
        assert [key for key in _described(real) if key != "port"] == _described(line)
        assert "port" in _described(real) and "secret" not in line

    as_json = run_cli("check", "--json", *args)
    values = json.loads(as_json.stdout)
    text = " ".join(PAGE.read_text().split())
    documented = json.loads(re.search(r"instead, ``(\{.*?\})``", text).group(1))
    assert sorted(values) == sorted(documented) == names
    assert all(isinstance(value, int) for value in values.values())


def test_a_failing_shard_prints_one_error_line_and_exits_2(shard_dsns: dict[str, str]) -> None:
    good = shard_dsns["s0"]
    missing = make_conninfo(good, dbname="no_such_database")
    for extra in ([], ["--json"]):
        done = run_cli("check", *extra, "--dsn", f"s0={good}", "--dsn", f"s1={missing}")
        assert done.returncode == 2
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: shard 's1'"), done.stderr
        assert 'database "no_such_database" does not exist' in lines[0]
        assert "host, port, user and password are right" in lines[0]
    text = " ".join(PAGE.read_text().split())
    assert "exits with status 2" in text and "on standard error that starts with ``error:``" in text
