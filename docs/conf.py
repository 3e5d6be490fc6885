"""Sphinx configuration for the shardsession documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.  Only
extensions bundled with Sphinx are used, and nothing is fetched from the network.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

project = "shardsession"
author = "the shardsession authors"
copyright = "the shardsession authors"
release = importlib.metadata.version("shardsession")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
# examples/ holds runnable .py files the pages include; benchmarks_results.rst is
# pulled into benchmarks.rst with ``.. include::`` and is not a page of its own.
exclude_patterns = ["_build", "examples", "benchmarks_results.rst", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
pygments_style = "sphinx"

# -- autodoc ----------------------------------------------------------------------------

autodoc_member_order = "bysource"
# The docstrings describe every parameter; type hints in the signatures would only
# repeat them (and name private and typing helpers that have no page).
autodoc_typehints = "none"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"

# -- cross references -------------------------------------------------------------------

# A reference that resolves to nothing fails the build (``sphinx-build -W``).
nitpicky = True
# Names from outside the project.  Without network access at build time there is no
# intersphinx, so the standard library, psycopg and SQLAlchemy have no targets here.
_EXTERNAL_MODULES = (
    "abc|builtins|collections|contextlib|dataclasses|datetime|decimal|enum|os|pathlib|"
    "pickle|socket|subprocess|threading|typing|uuid|weakref|"
    "multiprocess|multiprocessing|psycopg|sqlalchemy|pytest|xdist|_pytest"
)
# (Built-in names such as ``str`` or ``AttributeError`` need no entry: Sphinx itself
# leaves them unlinked without a warning.)
nitpick_ignore_regex = [
    (r"py:.*", rf"({_EXTERNAL_MODULES})(\..+)?"),
]

# -- HTML -------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"shardsession {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "description": "The SQLAlchemy 2.x ORM Session API over many PostgreSQL shards.",
    "fixed_sidebar": True,
    "page_width": "1040px",
    "show_related": False,
}


# -- references by module path ---------------------------------------------------------
#
# The API page documents each object once, under its public name (``shardsession.Session``,
# ``shardsession.WorkerPool``), while docstrings may name the module it is defined in
# (``shardsession.workers.pool.WorkerPool``) or a name imported into the module they are
# in.  A reference that finds no target is resolved here to the documented object that
# *is* the same Python object; anything else stays unresolved and fails the build.

_DOCUMENTED_TYPES = {
    "class",
    "exception",
    "function",
    "method",
    "classmethod",
    "staticmethod",
    "property",
    "data",
}
# Plain values (numbers, strings) are not told apart by identity.
_VALUE_TYPES = (int, float, str, bytes, tuple, frozenset, type(None))


def _import_path(path: str) -> Any:
    """Return the object named by a dotted path, or raise LookupError."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            break
        return obj
    raise LookupError(path)


# Filled on the first unresolved reference of a build: the reading phase is over then.
_by_id: dict[int, str] = {}


def _unwrap(obj: Any) -> Any:
    """The function behind a bound (class)method, so that identities compare."""
    return getattr(obj, "__func__", obj)


def _documented_objects(env: Any) -> dict[int, str]:
    """id(python object) -> the full name it is documented under."""
    if _by_id:
        return _by_id
    cache = _by_id
    for name, entry in env.get_domain("py").objects.items():
        if entry.objtype not in _DOCUMENTED_TYPES or entry.aliased:
            continue
        try:
            obj = _import_path(name)
        except LookupError:
            continue
        if isinstance(obj, _VALUE_TYPES):
            continue
        cache.setdefault(id(_unwrap(obj)), name)
    return cache


def _candidates(node: Any) -> list[str]:
    target = node["reftarget"].lstrip("~.")
    module = node.get("py:module")
    cls = node.get("py:class")
    out = [target]
    if module:
        if cls:
            out.append(f"{module}.{cls}.{target}")
        out.append(f"{module}.{target}")
        if cls:
            # the module the documented class is defined in
            try:
                home = _import_path(f"{module}.{cls}").__module__
            except (LookupError, AttributeError):
                home = None
            if home:
                out.append(f"{home}.{cls}.{target}")
                out.append(f"{home}.{target}")
    return out


def _resolve_by_identity(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    by_id = _documented_objects(env)
    objects = env.get_domain("py").objects
    for path in _candidates(node):
        if not path.startswith("shardsession"):
            continue
        try:
            obj = _import_path(path)
        except LookupError:
            continue
        name = by_id.get(id(_unwrap(obj)))
        if name is None:
            continue
        entry = objects[name]
        return make_refnode(
            app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name
        )
    return None


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", lambda app: _by_id.clear())
    app.connect("missing-reference", _resolve_by_identity)
    return {"parallel_read_safe": True}
