"""``shardsession migrate``: Alembic on every shard, and the library behind it.

Every test builds an Alembic project in ``tmp_path`` from the documented recipe
(``docs/examples/migrations``: alembic.ini, env.py, script.py.mako) with models and
revisions of its own, and migrates this test process's four shard databases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL

from shardsession import migrate
from shardsession.twophase import COMMIT_LOG_DDL
from tests.helpers import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "migrations"
TABLES = ["mig_timing", "mig_note", "mig_line", "mig_order", "mig_customer", "alembic_version"]

MODELS = """
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "mig_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))


class Order(Base):
    __tablename__ = "mig_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("mig_customer.id"), index=True)
    total: Mapped[int]


class Line(Base):
    __tablename__ = "mig_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("mig_order.id"))
"""

NOTE_MODEL = """

class Note(Base):
    __tablename__ = "mig_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200), index=True)
"""

REVISION = '''"""{message}"""

import sqlalchemy as sa
from alembic import context, op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''

R1 = {
    "message": "customers",
    "revision": "r1",
    "down": None,
    "upgrade": """    op.create_table(
        "mig_customer",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(80), nullable=False),
    )""",
    "downgrade": '    op.drop_table("mig_customer")',
}
# two tables and an index (the revision timed for the documentation)
R2 = {
    "message": "orders and their lines",
    "revision": "r2",
    "down": "r1",
    "upgrade": """    op.create_table(
        "mig_order",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("mig_customer.id"), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
    )
    op.create_index("ix_mig_order_customer_id", "mig_order", ["customer_id"])
    op.create_table(
        "mig_line",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("mig_order.id"), nullable=False),
    )""",
    "downgrade": """    op.drop_table("mig_line")
    op.drop_index("ix_mig_order_customer_id", "mig_order")
    op.drop_table("mig_order")""",
}


def _url(dsn: str) -> str:
    """``dsn`` as a SQLAlchemy URL for alembic.ini (where % must be doubled)."""
    parts = conninfo_to_dict(dsn)
    query = {key: str(parts[key]) for key in ("host", "port") if key in parts}
    url = URL.create(
        "postgresql+psycopg",
        username=parts.get("user"),
        password=parts.get("password"),
        database=parts.get("dbname"),
        query=query,
    )
    return url.render_as_string(hide_password=False).replace("%", "%%")


def _write_revision(project: Path, spec: dict[str, str | None]) -> None:
    path = project / "migrations" / "versions" / f"{spec['revision']}.py"
    path.write_text(REVISION.format(**spec))


def _drop(dsns: dict[str, str]) -> None:
    for dsn in dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)} CASCADE")


@pytest.fixture
def shards(shard_dsns: dict[str, str]) -> Iterator[dict[str, str]]:
    """The four shards, without this module's tables before and after the test."""
    assert sorted(shard_dsns) == ["s0", "s1", "s2", "s3"]
    _drop(shard_dsns)
    yield shard_dsns
    _drop(shard_dsns)


@pytest.fixture
def project(tmp_path: Path, shards: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """An Alembic project made from the documented recipe, with revisions r1 and r2.

    Its sqlalchemy.url (used by plain ``alembic`` only) points at shard s1.  The
    project is on ``sys.path`` for the test (the library's shard processes inherit
    it), and ``sys.path`` is restored afterwards (Alembic prepends to it).
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    ini = (EXAMPLE / "alembic.ini").read_text()
    lines = [
        f"sqlalchemy.url = {_url(shards['s1'])}" if line.startswith("sqlalchemy.url") else line
        for line in ini.splitlines()
    ]
    (tmp_path / "alembic.ini").write_text("\n".join(lines) + "\n")
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        (tmp_path / "migrations" / name).write_text((EXAMPLE / "migrations" / name).read_text())
    # The test shards also hold other test modules' tables: autogenerate must not see
    # them (it would write migrations dropping them), so this project looks at its own.
    env = tmp_path / "migrations" / "env.py"
    recipe = env.read_text()
    assert recipe.count("include_name=include_name,") == 2
    anchor = "from shardsession.migrate import include_name\n"
    assert recipe.count(anchor) == 1
    only_mine = (
        "\n\ndef only_mine(name, type_, parents):\n"
        "    return include_name(name, type_, parents) and (\n"
        "        type_ != 'table' or name.startswith('mig_'))\n"
    )
    env.write_text(
        recipe.replace("include_name=include_name,", "include_name=only_mine,").replace(
            anchor, anchor + only_mine
        )
    )
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "models.py").write_text(MODELS)
    _write_revision(tmp_path, R1)
    _write_revision(tmp_path, R2)
    return tmp_path


def _dsn_args(dsns: dict[str, str]) -> list[str]:
    return [arg for shard, dsn in dsns.items() for arg in ("--dsn", f"{shard}={dsn}")]


def _migrate(project: Path, dsns: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", *args, *_dsn_args(dsns), cwd=str(project))


def _versions(dsns: dict[str, str]) -> dict[str, list[str]]:
    """Each shard's alembic_version rows, read directly."""
    found = {}
    for shard, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            exists = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
            rows = (
                conn.execute("SELECT version_num FROM alembic_version").fetchall()
                if (exists and exists[0])
                else []
            )
        found[shard] = sorted(row[0] for row in rows)
    return found


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'mig_%'")
        return {row[0] for row in rows}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("INFO ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _upgrade(project: Path, dsns: dict[str, str], revision: str, **options: object) -> None:
    """Set the shards up through the library (faster than the command line)."""
    report = migrate.upgrade(dsns, revision, config=project / "alembic.ini", **options)  # type: ignore[arg-type]
    assert report.ok


def test_upgrade_runs_on_every_shard_at_once(project: Path, shards: dict[str, str]) -> None:
    # r3 sleeps on each shard between two timestamps: shards migrated together overlap
    _write_revision(
        project,
        {
            "message": "timing",
            "revision": "r3",
            "down": "r2",
            "upgrade": """    op.create_table("mig_timing", sa.Column("shard", sa.Text),
                    sa.Column("note", sa.Text),
                    sa.Column("started", sa.DateTime(timezone=True)),
                    sa.Column("finished", sa.DateTime(timezone=True)))
    shard = context.config.attributes["shard"]
    note = context.get_x_argument(as_dictionary=True)["note"]
    op.execute(f"INSERT INTO mig_timing VALUES ('{shard}', '{note}', clock_timestamp(), NULL)")
    op.execute("SELECT pg_sleep(1.0)")
    op.execute("UPDATE mig_timing SET finished = clock_timestamp()")""",
            "downgrade": '    op.drop_table("mig_timing")',
        },
    )
    up = _migrate(project, shards, "upgrade", "head", "-x", "note=from-x")
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[0].startswith("upgrade head: 4 shard(s) in ")
    for n in range(4):
        assert lines[1 + n].startswith(f"  s{n}: base -> r3  ") and lines[1 + n].endswith(" ok")
    assert lines[-1] == "all 4 shard(s) are at r3"
    assert _versions(shards) == {s: ["r3"] for s in shards}
    windows: list[tuple[datetime, datetime]] = []
    for shard, dsn in shards.items():
        assert _tables(dsn) == {"mig_customer", "mig_order", "mig_line", "mig_timing"}
        with psycopg.connect(dsn) as conn:
            index = conn.execute("SELECT to_regclass('ix_mig_order_customer_id')").fetchone()
            row = conn.execute("SELECT shard, note, started, finished FROM mig_timing").fetchone()
        assert index is not None and index[0] == "ix_mig_order_customer_id", shard
        assert row is not None and row[0] == shard  # config.attributes["shard"] names it
        assert row[1] == "from-x"  # -x reached env.py's context
        windows.append((row[2], row[3]))
    # one process per shard, all at the same time: every shard slept while the others did
    assert max(w[0] for w in windows) < min(w[1] for w in windows), windows

    current = _migrate(project, shards, "current", "--json")
    assert current.returncode == 0, current.stderr
    assert json.loads(current.stdout) == {
        "shards": {s: ["r3"] for s in shards},
        "level": True,
        "heads": ["r3"],
    }


def test_downgrade_and_history(project: Path, shards: dict[str, str]) -> None:
    _upgrade(project, shards, "head")
    down = _migrate(project, shards, "downgrade", "r1", "--json")
    assert down.returncode == 0, down.stderr
    report = json.loads(down.stdout)
    assert report["ok"] and report["level"] and report["command"] == "downgrade"
    assert [(s["shard"], s["from"], s["to"]) for s in report["shards"]] == [
        (s, ["r2"], ["r1"]) for s in shards
    ]
    assert _versions(shards) == {s: ["r1"] for s in shards}
    assert all(_tables(dsn) == {"mig_customer"} for dsn in shards.values())
    history = run_cli("migrate", "history", "-c", str(project / "alembic.ini"))
    assert history.stdout.splitlines() == [
        "r1 -> r2 (head): orders and their lines",
        "base -> r1: customers",
    ]


def test_mixed_revisions_are_refused_until_the_lagging_shards_catch_up(
    project: Path, shards: dict[str, str]
) -> None:
    # plain alembic with the same env.py migrates the one shard of sqlalchemy.url: s1
    plain = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "r1"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr
    assert _versions(shards) == {"s0": [], "s1": ["r1"], "s2": [], "s3": []}

    refused = _migrate(project, shards, "upgrade", "head")
    assert refused.returncode == 2
    error = _one_error_line(refused.stderr)
    assert "different revisions (s0, s2, s3: base; s1: r1)" in error
    assert "`shardsession migrate upgrade r1 --shard s0 --shard s2 --shard s3`" in error
    assert "--allow-mixed" in error and "nothing was changed" in error
    assert _versions(shards) == {"s0": [], "s1": ["r1"], "s2": [], "s3": []}
    assert _tables(shards["s0"]) == set()

    current = _migrate(project, shards, "current")
    assert current.returncode == 1
    assert current.stdout.splitlines() == [
        "s0: base",
        "s1: r1",
        "s2: base",
        "s3: base",
        "the shards are at different revisions: s0, s2, s3: base; s1: r1",
    ]

    # the fix the error names
    caught_up = _migrate(
        project, shards, "upgrade", "r1", "--shard", "s0", "--shard", "s2", "--shard", "s3"
    )
    assert caught_up.returncode == 0, caught_up.stderr
    assert "  s1: at r1 (not selected)" in caught_up.stdout.splitlines()
    assert caught_up.stdout.splitlines()[-1] == "all 4 shard(s) are at r1"
    assert _versions(shards) == {s: ["r1"] for s in shards}


def test_a_failed_shard_is_reported_with_every_shard_revision_and_the_fix(
    project: Path, shards: dict[str, str]
) -> None:
    with psycopg.connect(shards["s2"], autocommit=True) as conn:
        conn.execute("CREATE TABLE mig_line (id integer)")  # r2 cannot create it there
    failed = _migrate(project, shards, "upgrade", "head")
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[3].startswith("  s2: base -> base  ")
    assert '(psycopg.errors.DuplicateTable) relation "mig_line" already exists' in lines[3]
    assert lines[-1] == "the shards are at different revisions: s0, s1, s3: r2; s2: base"
    error = _one_error_line(failed.stderr)
    assert "failed on 1 shard(s) (s2: ProgrammingError:" in error
    assert "The shards are now at: s0, s1, s3: r2; s2: base." in error
    assert "`shardsession migrate upgrade r2 --shard s2`" in error
    assert "`shardsession migrate downgrade base --shard s0 --shard s1 --shard s3`" in error
    # s2's migration was one transaction: rolled back, as reported
    assert _versions(shards) == {"s0": ["r2"], "s1": ["r2"], "s2": [], "s3": ["r2"]}

    with psycopg.connect(shards["s2"], autocommit=True) as conn:
        conn.execute("DROP TABLE mig_line")
    fixed = _migrate(project, shards, "upgrade", "r2", "--shard", "s2")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.splitlines()[-1] == "all 4 shard(s) are at r2"


def test_a_shard_process_that_dies_is_reported_unknown(
    project: Path, shards: dict[str, str]
) -> None:
    _write_revision(
        project,
        {
            "message": "crash on s1",
            "revision": "r3",
            "down": "r2",
            "upgrade": """    import os
    op.execute("CREATE TABLE mig_note (id integer)")
    if context.config.attributes["shard"] == "s1":
        os._exit(3)""",
            "downgrade": '    op.drop_table("mig_note")',
        },
    )
    failed = _migrate(project, shards, "upgrade", "head", "--json")
    assert failed.returncode == 1
    report = {s["shard"]: s for s in json.loads(failed.stdout)["shards"]}
    assert report["s1"]["to"] is None and "ended without an answer" in report["s1"]["error"]
    assert all(report[s]["ok"] and report[s]["to"] == ["r3"] for s in ("s0", "s2", "s3"))
    error = _one_error_line(failed.stderr)
    assert "s0, s2, s3: r3; s1: unknown" in error and "`shardsession migrate current`" in error
    # the connection died with the process: PostgreSQL rolled s1 back
    assert _versions(shards) == {"s0": ["r3"], "s1": [], "s2": ["r3"], "s3": ["r3"]}


def test_autogenerate_compares_the_models_with_the_first_shard(
    project: Path, shards: dict[str, str]
) -> None:
    _upgrade(project, shards, "head")
    with psycopg.connect(shards["s0"], autocommit=True) as conn:
        conn.execute(COMMIT_LOG_DDL)  # shardsession's own table: not in the models
    with (project / "myapp" / "models.py").open("a") as models:
        models.write(NOTE_MODEL)
    made = _migrate(project, shards, "revision", "--autogenerate", "-m", "notes", "--rev-id", "r3")
    assert made.returncode == 0, made.stderr
    path = project / "migrations" / "versions" / "r3_notes.py"
    assert made.stdout.strip() == f"compared the models with shard s0; wrote {path} (revision r3)"
    assert sorted(p.name for p in path.parent.glob("*.py")) == ["r1.py", "r2.py", "r3_notes.py"]
    upgrade_part = path.read_text().split("def downgrade")[0]
    assert "op.create_table('mig_note'" in upgrade_part
    assert "op.create_index(op.f('ix_mig_note_body'), 'mig_note', ['body']" in upgrade_part
    assert "drop" not in upgrade_part  # neither shardsession's tables nor anything else
    _upgrade(project, shards, "head")
    assert all("mig_note" in _tables(dsn) for dsn in shards.values())


def test_library_reports_every_shard(project: Path, shards: dict[str, str]) -> None:
    report = migrate.upgrade(shards, "r1", config=project / "alembic.ini")
    assert report.ok and report.level and report.command == "upgrade"
    assert report.revisions == {s: ("r1",) for s in shards}
    assert [(m.shard, m.from_revision, m.to_revision, m.ran) for m in report.shards.values()] == [
        (s, "base", "r1", True) for s in shards
    ]
    assert all(m.seconds > 0 for m in report.shards.values())
    assert "Running upgrade  -> r1, customers" in report.shards["s0"].log
    # no ini file: the script directory alone (the project is on sys.path)
    partial = migrate.upgrade(shards, "head", directory=project / "migrations", shards=["s3"])
    assert [m.ran for m in partial.shards.values()] == [False, False, False, True]
    assert not partial.level
    assert migrate.current(shards, directory=project / "migrations") == {
        "s0": ("r1",),
        "s1": ("r1",),
        "s2": ("r1",),
        "s3": ("r2",),
    }


def test_library_refuses_mixed_revisions_unless_allowed(
    project: Path, shards: dict[str, str]
) -> None:
    config = project / "alembic.ini"
    _upgrade(project, shards, "r1")
    _upgrade(project, shards, "head", shards=["s3"])
    with pytest.raises(migrate.MixedRevisionsError) as mixed:
        migrate.downgrade(shards, "base", config=config)
    assert mixed.value.revisions == {"s0": ("r1",), "s1": ("r1",), "s2": ("r1",), "s3": ("r2",)}
    assert "upgrade(dsns, 'r2', shards=['s0', 's1', 's2'])" in str(mixed.value)
    assert _versions(shards) == {"s0": ["r1"], "s1": ["r1"], "s2": ["r1"], "s3": ["r2"]}
    allowed = migrate.upgrade(shards, "head", config=config, allow_mixed=True)
    assert [(m.from_revision, m.to_revision) for m in allowed.shards.values()] == [
        ("r1", "r2"),
        ("r1", "r2"),
        ("r1", "r2"),
        ("r2", "r2"),
    ]
    assert allowed.level


def test_library_failure_and_stamp(project: Path, shards: dict[str, str]) -> None:
    config = project / "alembic.ini"
    _upgrade(project, shards, "head")
    with psycopg.connect(shards["s0"], autocommit=True) as conn:
        # r2's downgrade cannot drop mig_line on s0 now
        conn.execute("CREATE VIEW mig_view AS SELECT * FROM mig_line")
    with pytest.raises(migrate.MigrationError) as failed:
        migrate.downgrade(shards, "r1", config=config)
    after = failed.value.report
    assert after.revisions == {"s0": ("r2",), "s1": ("r1",), "s2": ("r1",), "s3": ("r1",)}
    assert not after.ok and not after.level
    assert "DependentObjectsStillExist" in (after.shards["s0"].error or "")
    assert "`shardsession migrate downgrade r1 --shard s0`" in str(failed.value)
    # stamp records a revision without running its migrations
    stamped = migrate.stamp(shards, "r1", config=config, shards=["s0"])
    assert stamped.level and stamped.revisions["s0"] == ("r1",)
    assert "mig_line" in _tables(shards["s0"])


def _ignore_shard_connection(project: Path) -> None:
    """An env.py that always connects to sqlalchemy.url itself (the recipe's mistake)."""
    env = project / "migrations" / "env.py"
    text = env.read_text()
    assert 'config.attributes.get("connection")' in text
    env.write_text(text.replace('config.attributes.get("connection")', "None"))


MISTAKES = [
    pytest.param(
        ["upgrade", "head", "-c", "nothing.ini"],
        "error: the Alembic configuration 'nothing.ini' does not exist",
        id="no-such-config",
    ),
    pytest.param(
        ["upgrade", "head", "--directory", "nowhere"],
        "error: the Alembic script directory cannot be used",
        id="no-script-directory",
    ),
    pytest.param(
        ["upgrade", "nosuch"], "error: revision 'nosuch' is not in ", id="unknown-revision"
    ),
    pytest.param(
        ["downgrade", "base", "--shard", "s9"],
        "error: no shard named 's9'; the shards are s0, s1, s2, s3",
        id="unknown-shard",
    ),
    pytest.param(
        ["upgrade", "head", "--dsn", "host=/tmp dbname=x"],
        "needs the shard's name: --dsn s0=postgresql://",
        id="unnamed-dsn",
    ),
    pytest.param(
        ["current"],
        "made a connection of its own instead of using the shard's",
        id="env-py-ignores-the-shard-connection",
    ),
]


@pytest.mark.parametrize(("args", "expected"), MISTAKES)
def test_mistakes_give_one_error_line(
    project: Path, shards: dict[str, str], args: list[str], expected: str
) -> None:
    if "current" in args:
        _ignore_shard_connection(project)
    done = _migrate(project, shards, *args)
    assert done.returncode == 2, done.stdout
    assert expected in _one_error_line(done.stderr)
    assert _versions(shards) == {s: [] for s in shards}


def test_no_alembic_ini_names_the_options(tmp_path: Path, shards: dict[str, str]) -> None:
    done = run_cli("migrate", "upgrade", "head", *_dsn_args(shards), cwd=str(tmp_path))
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == (
        f"error: no alembic.ini in {tmp_path}; give the Alembic configuration with -c "
        "path/to/alembic.ini or the script directory with --directory path/to/migrations "
        "(config=... or directory=... in Python)"
    )


def test_missing_alembic_names_the_extra(project: Path) -> None:
    # an interpreter where `import alembic` fails, as without the migrate extra
    code = (
        "import sys; sys.modules['alembic'] = None; from shardsession.cli import main; "
        "sys.exit(main(['migrate', 'history']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == (
        "error: shardsession migrate needs Alembic, which is not installed; install it with "
        "`pip install 'shardsession[migrate]'`"
    )
