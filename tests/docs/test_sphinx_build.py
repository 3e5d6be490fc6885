"""The documentation builds without warnings and covers the whole session API.

The API page must offer every name of SQLAlchemy's *Session API* page (the list
below is taken from it; the seed file itself lives outside the repository), each
with a docstring of its own.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: The ``autoclass`` / ``autofunction`` / ``function`` directives of SQLAlchemy's
#: Session API page, as (name, module it lives in besides the top-level package).
SESSION_API_NAMES: list[tuple[str, str]] = [
    ("sessionmaker", "shardsession"),
    ("ORMExecuteState", "shardsession"),
    ("Session", "shardsession"),
    ("SessionTransaction", "shardsession"),
    ("close_all_sessions", "shardsession"),
    ("make_transient", "shardsession"),
    ("make_transient_to_detached", "shardsession"),
    ("object_session", "shardsession"),
    ("was_deleted", "shardsession.orm.util"),
    ("object_state", "shardsession.orm.util"),
    ("del_attribute", "shardsession.orm.attributes"),
    ("get_attribute", "shardsession.orm.attributes"),
    ("get_history", "shardsession.orm.attributes"),
    ("init_collection", "shardsession.orm.attributes"),
    ("flag_modified", "shardsession.orm.attributes"),
    ("flag_dirty", "shardsession.orm.attributes"),
    ("instance_state", "shardsession.orm.attributes"),
    ("is_instrumented", "shardsession.orm.instrumentation"),
    ("set_attribute", "shardsession.orm.attributes"),
    ("set_committed_value", "shardsession.orm.attributes"),
    ("History", "shardsession.orm.attributes"),
]

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
ADDED_NAMES = ["create_pool", "WorkerPool", "set_shard_id", "recover", "RecoveryReport"]

_DIRECTIVE = re.compile(r"^\.\. (?:auto)?(?:class|function|exception|data)::\s+(\S+)", re.M)


def _api_text() -> str:
    return (DOCS / "api.rst").read_text(encoding="utf-8")


def _documented_names() -> set[str]:
    return {target.rsplit(".", 1)[-1] for target in _DIRECTIVE.findall(_api_text())}


def _public_members(cls: type) -> dict[str, Any]:
    """Public methods and properties of ``cls`` and its own base classes."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ in ("builtins", "typing", "abc", "collections.abc"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if isinstance(value, property):
                out[name] = value.fget
            elif inspect.isfunction(value):
                out[name] = value
    return out


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
    assert (html / "index.html").is_file()
    assert (html / "api.html").is_file()


def test_api_page_renders_every_session_api_name(html: Path) -> None:
    page = (html / "api.html").read_text(encoding="utf-8")
    for name, module in SESSION_API_NAMES:
        anchors = {f'id="shardsession.{name}"', f'id="{module}.{name}"'}
        assert any(a in page for a in anchors), f"{name} has no entry on the API page"
    for attr in ORM_EXECUTE_STATE_ATTRIBUTES:
        assert f'id="shardsession.ORMExecuteState.{attr}"' in page, attr


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


def test_api_page_documents_what_shardsession_adds() -> None:
    names = _documented_names()
    assert set(ADDED_NAMES) <= names
    assert ".. automodule:: shardsession.exc" in _api_text()


@pytest.mark.parametrize(("name", "module"), SESSION_API_NAMES)
def test_session_api_names_have_docstrings(name: str, module: str) -> None:
    import shardsession

    top = getattr(shardsession, name)
    home = getattr(importlib.import_module(module), name)
    assert top is home, f"shardsession.{name} is not {module}.{name}"
    assert (inspect.getdoc(top) or "").strip(), f"{name} has no docstring"
    if inspect.isclass(top):
        undocumented = [
            member
            for member, fn in _public_members(top).items()
            if not (getattr(fn, "__doc__", None) or "").strip()
        ]
        assert not undocumented, f"{name} members without a docstring: {undocumented}"


def test_orm_execute_state_attributes_are_described() -> None:
    import shardsession

    doc = shardsession.ORMExecuteState.__doc__ or ""
    for attr in ORM_EXECUTE_STATE_ATTRIBUTES:
        assert f".. attribute:: {attr}\n" in doc, attr
