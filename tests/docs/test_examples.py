"""Every runnable example of the documentation runs and checks its own invariants.

The examples live in ``docs/examples/``; each runs in a subprocess with this
environment's Python.  ``quickstart.py`` starts its own temporary cluster, as a
reader would run it; the others get this test process's shard databases through
``SHARDSESSION_EXAMPLE_DSNS`` (faster), and the pytest example runs through pytest
with ``--shardsession-dsn`` pointing at this process's server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
TIMEOUT = 180


def _clean_env(**extra: str) -> dict[str, str]:
    # The examples must not see that they run under pytest (or an xdist worker).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST_") and k != "SHARDSESSION_EXAMPLE_DSNS"
    }
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd="/tmp",
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


SHARED_DSN_EXAMPLES = [
    (
        "routing.py",
        [
            "acme lives on {'s",
            "refused: no shard named 's9'",
            "Asia: [('Seoul', 's1'), ('Tokyo', 's1')]",
        ],
    ),
    (
        "cross_shard.py",
        [
            "teams with more than 250 points: [('blue', 10, 265), ('red', 10, 255)]",
            "refused: count(DISTINCT",
            "refused: a textual SELECT using 'ORDER BY'",
            "refused: UNION / INTERSECT / EXCEPT",
            "refused: rank() OVER",
            "refused: aggregates grouped with whole ORM entities",
            "refused: string_agg(",
            "badge ids: [(1, 'first'), (1, 'second')]",
            "refused: Badge.player links a Badge on shard",
        ],
    ),
    (
        "two_phase.py",
        [
            "after the transfer: account 1 has 70, ",
            "SQLSTATE 23514: [shard '",
            "refused: PREPARE TRANSACTION failed on shard",
            "recovery rolled back: ['ss_",
        ],
    ),
]


def test_every_example_is_tested() -> None:
    tested = {"quickstart.py", "test_with_plugin.py", *(name for name, _ in SHARED_DSN_EXAMPLES)}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_quickstart_runs_standalone() -> None:
    out = _run([str(EXAMPLES / "quickstart.py")], _clean_env()).stdout
    assert "largest orders: [200, 190, 180]" in out
    assert "customers per country: [('DE', 5), ('FR', 5), ('NL', 5), ('SE', 5)]" in out
    assert out.rstrip().endswith("quickstart: ok")


@pytest.mark.parametrize(
    ("name", "expected"), SHARED_DSN_EXAMPLES, ids=[n for n, _ in SHARED_DSN_EXAMPLES]
)
def test_example_runs_on_this_process_shards(
    name: str, expected: list[str], shard_dsns: dict[str, str]
) -> None:
    if sorted(shard_dsns) == ["s0", "s1", "s2", "s3"]:
        env = _clean_env(SHARDSESSION_EXAMPLE_DSNS=json.dumps(shard_dsns))
    else:  # the examples name four shards: let them start their own cluster
        env = _clean_env()
    out = _run([str(EXAMPLES / name)], env).stdout
    for text in expected:
        assert text in out, f"{name} did not print {text!r}:\n{out}"
    assert out.rstrip().endswith(f"{name.removesuffix('.py')}: ok")


def _template_for(shard_dsns: dict[str, str], prefix: str) -> str | None:
    """A ``--shardsession-dsn`` template for new databases next to ``shard_dsns``.

    Only when every shard is on the same server (the embedded cluster's case).
    """
    servers = []
    for dsn in shard_dsns.values():
        parts = conninfo_to_dict(dsn)
        parts.pop("dbname", None)
        servers.append(parts)
    if any(s != servers[0] for s in servers):
        return None
    return make_conninfo(**servers[0], dbname=f"{prefix}_{{shard}}")


def test_pytest_example_passes_through_the_plugin(shard_dsns: dict[str, str]) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    args = ["-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q"]
    template = _template_for(shard_dsns, f"docs_{worker}")
    if template is not None:
        args += ["--shardsession-dsn", template]
    out = _run([*args, str(EXAMPLES / "test_with_plugin.py")], _clean_env()).stdout
    assert "5 passed" in out, out


def test_readme_first_program_runs_twice_and_says_what_it_leaves(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("## A first program")
    code = text[text.index("```python", start) + len("```python") : text.index("```\n", start + 20)]
    cluster = tmp_path / "cluster"
    assert code.count("LocalCluster(shards=4)") == 1
    program = tmp_path / "first.py"
    program.write_text(code.replace("LocalCluster(shards=4)",
                                    f"LocalCluster(shards=4, path={str(cluster)!r})"))  # fmt: skip
    try:
        for _ in range(2):  # the second run finds the first one's data and server
            done = subprocess.run([sys.executable, str(program)], capture_output=True,
                                  text=True, env=_clean_env(), timeout=TIMEOUT)  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout.splitlines() == [
                "[40, 39, 38] 8200",
                "the local cluster keeps running with its data; `shardsession down` stops it",
            ]
    finally:
        from shardsession.embedded import LocalCluster

        LocalCluster(shards=4, path=cluster).stop(remove=True)
