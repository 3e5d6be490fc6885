"""The documentation builds without warnings and covers the whole session API.

The API page must offer every name of SQLAlchemy's *Session API* page (the list
below is taken from it; the seed file lives outside the repository, and is compared
with the list when it is found next to the checkout), each importable from
``shardsession``: SQLAlchemy's own object, or for ``Session`` and ``sessionmaker``
shardsession's subclass of it.  The page documents them with autodoc, from
SQLAlchemy's docstrings, and adds what shardsession has of its own.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: The ``autoclass`` / ``autofunction`` / ``function`` directives of SQLAlchemy's
#: Session API page, as (name, the SQLAlchemy module the page documents it in).
SESSION_API_NAMES: list[tuple[str, str]] = [
    ("sessionmaker", "sqlalchemy.orm"),
    ("ORMExecuteState", "sqlalchemy.orm"),
    ("Session", "sqlalchemy.orm"),
    ("SessionTransaction", "sqlalchemy.orm"),
    ("close_all_sessions", "sqlalchemy.orm"),
    ("make_transient", "sqlalchemy.orm"),
    ("make_transient_to_detached", "sqlalchemy.orm"),
    ("object_session", "sqlalchemy.orm"),
    ("was_deleted", "sqlalchemy.orm.util"),
    ("object_state", "sqlalchemy.orm.util"),
    ("del_attribute", "sqlalchemy.orm.attributes"),
    ("get_attribute", "sqlalchemy.orm.attributes"),
    ("get_history", "sqlalchemy.orm.attributes"),
    ("init_collection", "sqlalchemy.orm.attributes"),
    ("flag_modified", "sqlalchemy.orm.attributes"),
    ("flag_dirty", "sqlalchemy.orm.attributes"),
    ("instance_state", "sqlalchemy.orm.attributes"),
    ("is_instrumented", "sqlalchemy.orm.instrumentation"),
    ("set_attribute", "sqlalchemy.orm.attributes"),
    ("set_committed_value", "sqlalchemy.orm.attributes"),
    ("History", "sqlalchemy.orm.attributes"),
]

#: shardsession's subclasses of SQLAlchemy's classes; every other name is SQLAlchemy's.
SUBCLASSED = {"Session", "sessionmaker"}

#: The attributes of ORMExecuteState the seed page documents explicitly.
ORM_EXECUTE_STATE_ATTRIBUTES = [
    "session",
    "statement",
    "parameters",
    "bind_arguments",
    "local_execution_options",
    "execution_options",
]

#: The sections of the seed page, in order.
SESSION_API_SECTIONS = [
    "Session and sessionmaker()",
    "Session Utilities",
    "Attribute and State Management Utilities",
]

#: What the API page adds for shardsession's own public names.
ADDED_NAMES = [
    "create_shards",
    "ShardSet",
    "create_pool",
    "create_all",
    "drop_all",
    "shard_for_key",
    "set_shard_id",
    "recover",
    "RecoveryReport",
]
#: Modules the API page documents with ``automodule``.
ADDED_MODULES = [
    "shardsession.exc",
    "shardsession.coordinator.dialect",
    "shardsession.pytest_plugin",
]

#: Where CI and the sessions keep the seed page: next to the checkout.
SEED_PAGE = ROOT.parent / "shared" / "seed" / "session_api.rst"

_DIRECTIVE = re.compile(r"^\.\. (?:auto)?(?:class|function|exception|data)::\s+(\S+)", re.M)


def _api_text() -> str:
    return (DOCS / "api.rst").read_text(encoding="utf-8")


def _documented_names() -> set[str]:
    return {target.rsplit(".", 1)[-1] for target in _DIRECTIVE.findall(_api_text())}


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the HTML documentation once, as CI does (warnings are errors)."""
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("docs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(out / "doctrees"),
            str(DOCS),
            str(out / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"sphinx-build -W failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
    )
    return out / "html"


def test_sphinx_build_has_no_warnings(html: Path) -> None:
    for page in ["index", "getting_started", "sharding", "architecture", "transactions",
                 "testing", "deploying", "benchmarks", "differences", "api"]:  # fmt: skip
        assert (html / f"{page}.html").is_file(), page


def test_api_page_renders_every_session_api_name(html: Path) -> None:
    page = (html / "api.html").read_text(encoding="utf-8")
    for name, _ in SESSION_API_NAMES:
        assert f'id="shardsession.{name}"' in page, f"{name} has no entry on the API page"
    for attr in ORM_EXECUTE_STATE_ATTRIBUTES:
        assert f'id="shardsession.ORMExecuteState.{attr}"' in page, attr


def test_api_page_renders_sqlalchemy_docstrings(html: Path) -> None:
    # The re-exported objects are documented with SQLAlchemy's own text, and the
    # sharded Session with the methods it inherits.
    page = (html / "api.html").read_text(encoding="utf-8")
    for anchor in ["shardsession.Session.execute", "shardsession.Session.get",
                   "shardsession.Session.commit", "shardsession.sessionmaker.begin"]:  # fmt: skip
        assert f'id="{anchor}"' in page, anchor
    assert "Represents a call to the" in page  # ORMExecuteState's docstring


@pytest.mark.parametrize("name", [n for n, _ in SESSION_API_NAMES])
def test_api_page_lists_session_api_name(name: str) -> None:
    assert name in _documented_names(), f"docs/api.rst has no directive for {name}"


def test_api_page_keeps_the_session_api_sections_in_order() -> None:
    text = _api_text()
    positions = []
    for title in SESSION_API_SECTIONS:
        match = re.search(rf"^{re.escape(title)}\n-+$", text, re.M)
        assert match is not None, f"docs/api.rst has no section {title!r}"
        positions.append(match.start())
    assert positions == sorted(positions)


def test_api_page_documents_what_shardsession_adds(html: Path) -> None:
    assert {*ADDED_NAMES, "LocalCluster", "TestDatabases"} <= _documented_names()
    for module in ADDED_MODULES:
        assert f".. automodule:: {module}" in _api_text(), module
    page = (html / "api.html").read_text(encoding="utf-8")
    for name in ["ShardSet.recover", "exc.CrossShardError", "exc.TwoPhaseError"]:
        assert f'id="shardsession.{name}"' in page, name


@pytest.mark.parametrize(("name", "module"), SESSION_API_NAMES)
def test_session_api_names_are_importable_from_shardsession(name: str, module: str) -> None:
    import shardsession

    ours = getattr(shardsession, name)
    theirs = getattr(importlib.import_module(module), name)
    assert name in shardsession.__all__
    if name in SUBCLASSED:
        assert inspect.isclass(ours) and issubclass(ours, theirs) and ours is not theirs
    else:
        assert ours is theirs, f"shardsession.{name} is not {module}.{name}"
    assert (inspect.getdoc(ours) or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize("name", ADDED_NAMES)
def test_added_names_have_docstrings(name: str) -> None:
    import shardsession

    assert name in shardsession.__all__
    assert (inspect.getdoc(getattr(shardsession, name)) or "").strip(), name


def test_the_list_matches_the_seed_page() -> None:
    if not SEED_PAGE.is_file():
        pytest.skip(f"the seed page is not at {SEED_PAGE}")
    names = re.findall(
        r"^\.\. (?:autoclass|autofunction|function)::\s+(\S+)", SEED_PAGE.read_text(), re.M
    )
    assert [n.rsplit(".", 1)[-1] for n in names] == [n for n, _ in SESSION_API_NAMES]


def test_code_blocks_scroll_instead_of_being_cut_off(html: Path) -> None:
    css = (html / "_static" / "custom.css").read_text()
    assert "overflow-x: auto" in css
    page = (html / "deploying.html").read_text()
    assert "_static/custom.css" in page  # the rendered pages load it
