"""Sphinx configuration for the shardsession documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.  Only
extensions bundled with Sphinx are used, and nothing is fetched from the network.

Most names of ``shardsession`` are SQLAlchemy's own objects, re-exported.  The API
page documents them with autodoc, so their text is SQLAlchemy's docstrings as the
installed SQLAlchemy has them; nothing of it is copied into this repository.  Those
docstrings are written for SQLAlchemy's own documentation build: they use a role and
a directive of its (``:paramref:``, ``.. legacy::``), spell its names with short
prefixes (``_orm.Session``) and refer to its pages, labels and glossary, which do not
exist here.  The role and the directive are defined below; SQLAlchemy's targets are
ignored by ``nitpick_ignore_regex`` patterns, and a reference written in one of
SQLAlchemy's docstrings that only SQLAlchemy's documentation can resolve is shown as
unlinked text.  References in our own pages and docstrings stay nitpicky.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from typing import Any

project = "shardsession"
author = "the shardsession authors"
copyright = "the shardsession authors"
release = importlib.metadata.version("shardsession")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.extlinks",
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

# -- links to SQLAlchemy's documentation ------------------------------------------------

SQLALCHEMY_DOCS = "https://docs.sqlalchemy.org/en/20/"
# :sqla:`orm/session_api.html` links to a page of SQLAlchemy's documentation.
extlinks = {"sqla": (SQLALCHEMY_DOCS + "%s", "%s")}
extlinks_detect_hardcoded_links = False

# -- cross references -------------------------------------------------------------------

# A reference that resolves to nothing fails the build (``sphinx-build -W``).
nitpicky = True
# Names from outside the project.  Without network access at build time there is no
# intersphinx, so the standard library, psycopg and SQLAlchemy have no targets here.
_EXTERNAL_MODULES = (
    "abc|builtins|collections|contextlib|dataclasses|datetime|decimal|enum|os|pathlib|"
    "pickle|socket|subprocess|threading|typing|uuid|weakref|concurrent|types|"
    "multiprocess|multiprocessing|psycopg|sqlalchemy|pytest|xdist|_pytest"
)
# SQLAlchemy's docstrings name its objects with short module prefixes that its own
# build expands (``_orm.Session`` is ``sqlalchemy.orm.Session``).
_SQLALCHEMY_PREFIXES = (
    "_orm|_sa|_sql|_engine|_schema|_expression|_types|_functions|_dml|_selectable|"
    "_result|_events|_pool|_url|_reflection|_ddl|_sqltypes|_postgresql|_asyncio|_query|_future"
)
nitpick_ignore_regex = [
    # (Built-in names such as ``str`` need no entry: Sphinx leaves them unlinked.)
    (r"py:.*", rf"({_EXTERNAL_MODULES})(\..+)?"),
    (r"py:.*", rf"({_SQLALCHEMY_PREFIXES})\..+"),
]


# The pages, labels, glossary terms and objects SQLAlchemy's docstrings refer to that
# have no target here: only SQLAlchemy's documentation has them.  A reference is
# recognised as one of those by where it is written (a docstring of a module of the
# installed SQLAlchemy), so that references in our own text and docstrings stay
# nitpicky.  The text of such a reference is still shown, unlinked.
def _defined_in_sqlalchemy(name: str) -> bool:
    """Whether the object autodoc documented as ``name`` is SQLAlchemy's."""
    try:
        obj = _import_path(name)
    except LookupError:
        # an attribute autodoc found in the source: the class that declares it decides
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = _import_path(owner_name)
        except LookupError:
            return False
        for klass in getattr(owner, "__mro__", (owner,)):
            if attr in vars(klass) or attr in getattr(klass, "__annotations__", {}):
                owner = klass
                break
        obj = owner
    obj = getattr(obj, "fget", None) or getattr(obj, "__objclass__", None) or obj
    module = getattr(_unwrap(obj), "__module__", None) or ""
    return isinstance(module, str) and module.split(".")[0] == "sqlalchemy"


def _shown_without_prefix(contnode: Any) -> Any:
    """``_orm.Session.add()`` shown as ``Session.add()``, as SQLAlchemy's own build does."""
    from docutils import nodes

    for text in list(contnode.findall(nodes.Text)):
        shown = _PREFIX.sub("", str(text))
        if shown != str(text):
            text.parent.replace(text, nodes.Text(shown))
    return contnode


def _sqlalchemy_reference_as_text(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """An unresolved reference written in a SQLAlchemy docstring: its text, unlinked."""
    source = node.source or ""
    _, found, name = source.rpartition(":docstring of ")
    if not found and source.startswith("docstring of "):
        name = source.removeprefix("docstring of ")
    if name and _defined_in_sqlalchemy(name.strip()):
        return _shown_without_prefix(contnode)
    if node.get("refdomain") == "py" and _PREFIX.match(node["reftarget"].lstrip("~.")):
        return _shown_without_prefix(contnode)  # SQLAlchemy's spelling of its own names
    if node.get("refdomain") == "py":
        # a name our docstrings import from SQLAlchemy (``PGDialect_psycopg``)
        for path in _candidates(node):
            if path.startswith("shardsession") and _defined_in_sqlalchemy(path):
                return contnode
    return None


def _paramref_role(
    name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
    content: Any = None,
) -> tuple[list[Any], list[Any]]:  # fmt: skip
    """SQLAlchemy's ``:paramref:`Class.method.param``` role: the parameter's name, as code."""
    from docutils import nodes

    target = re.sub(r"^[~.!]+", "", text.strip())
    shown = target.rsplit(".", 1)[-1]
    return [nodes.literal(rawtext, shown, classes=["xref", "paramref"])], []


def _legacy_directive() -> Any:
    """SQLAlchemy's ``.. legacy::`` note, shown as an admonition titled "Legacy"."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class Legacy(SphinxDirective):
        has_content = True
        optional_arguments = 1
        final_argument_whitespace = True

        def run(self) -> list[Any]:
            node = nodes.admonition(classes=["note", "legacy"])
            node += nodes.title(text="Legacy")
            if self.arguments:
                node += nodes.paragraph(text=self.arguments[0])
            self.state.nested_parse(self.content, self.content_offset, node)
            return [node]

    return Legacy


# -- HTML -------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"shardsession {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "description": "SQLAlchemy 2.x sessions over many PostgreSQL shards.",
    "fixed_sidebar": True,
    "page_width": "1040px",
    "show_related": False,
}


# -- references by module path ---------------------------------------------------------
#
# The API page documents each object once, under its public name (``shardsession.Session``,
# ``shardsession.create_shards``), while docstrings may name the module it is defined in
# (``shardsession.coordinator.shards.create_shards``) or a name imported into the module
# they are in.  A reference that finds no target is resolved here to the documented object
# that *is* the same Python object; anything else stays unresolved and fails the build.

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


_PREFIX = re.compile(rf"^({_SQLALCHEMY_PREFIXES})\.")
_PREFIX_MODULES = {
    "_orm": "sqlalchemy.orm",
    "_sa": "sqlalchemy",
    "_sql": "sqlalchemy.sql",
    "_engine": "sqlalchemy.engine",
    "_schema": "sqlalchemy.schema",
    "_expression": "sqlalchemy.sql.expression",
    "_types": "sqlalchemy.types",
    "_functions": "sqlalchemy.sql.functions",
    "_dml": "sqlalchemy.sql.dml",
    "_selectable": "sqlalchemy.sql.selectable",
    "_result": "sqlalchemy.engine.result",
    "_events": "sqlalchemy.events",
    "_pool": "sqlalchemy.pool",
    "_url": "sqlalchemy.engine.url",
    "_query": "sqlalchemy.orm.query",
}


def _candidates(node: Any) -> list[str]:
    target = node["reftarget"].lstrip("~.")
    found = _PREFIX.match(target)
    if found and found.group(1) in _PREFIX_MODULES:
        target = _PREFIX_MODULES[found.group(1)] + target[found.end() - 1 :]
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
    """A reference to an object documented under another name (e.g. a SQLAlchemy
    object re-exported by shardsession) links to that entry."""
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    by_id = _documented_objects(env)
    objects = env.get_domain("py").objects
    for path in _candidates(node):
        if not path.startswith(("shardsession", "sqlalchemy")):
            continue
        try:
            obj = _import_path(path)
        except LookupError:
            continue
        if isinstance(obj, _VALUE_TYPES):
            continue
        name = by_id.get(id(_unwrap(obj)))
        if name is None:
            continue
        entry = objects[name]
        return make_refnode(
            app.builder,
            node["refdoc"],
            entry.docname,
            entry.node_id,
            _shown_without_prefix(contnode),
            name,
        )
    return None


def _viewcode_follow_imported(app: Any, modname: str, attribute: str) -> str | None:
    """Source pages for shardsession's modules only, not for re-exported SQLAlchemy."""
    try:
        home = getattr(_import_path(f"{modname}.{attribute}"), "__module__", None)
    except LookupError:
        return None
    if isinstance(home, str) and home.startswith("shardsession"):
        return home
    return modname  # no source page: the attribute is not defined there


def setup(app: Any) -> dict[str, Any]:
    app.add_role("paramref", _paramref_role)
    app.add_directive("legacy", _legacy_directive())
    app.connect("builder-inited", lambda app: _by_id.clear())
    app.connect("missing-reference", _resolve_by_identity)
    app.connect("missing-reference", _sqlalchemy_reference_as_text, priority=900)
    app.connect("viewcode-follow-imported", _viewcode_follow_imported)
    return {"parallel_read_safe": True}
