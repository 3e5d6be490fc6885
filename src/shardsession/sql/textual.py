"""Literal SQL statements and fragments: :func:`text`."""

from __future__ import annotations

import re
from typing import Any

from shardsession.exc import ArgumentError
from shardsession.sql.columns import ColumnClause
from shardsession.sql.elements import ColumnElement, KeyContext, coerce_expression
from shardsession.sql.expressions import BindParameter

__all__ = ["TextClause", "text"]


_BIND_RE = re.compile(r"(?<![:\w\\]):(\w+)")


class TextClause(ColumnElement):
    """Literal SQL with ``:name`` bound parameters (``text("SELECT * FROM t WHERE a = :a")``).

    ``::type`` casts are left alone and ``\\:`` gives a literal colon.  Values for the
    parameters come from :meth:`bindparams` or from the execution's parameters.
    """

    __visit_name__ = "text"
    _precedence = 0

    def __init__(self, text_: str) -> None:
        self.text = text_
        self._binds: dict[str, BindParameter] = {}
        self._parts: list[str | BindParameter] = []
        pos = 0
        for m in _BIND_RE.finditer(text_):
            self._parts.append(text_[pos : m.start()].replace("\\:", ":"))
            name = m.group(1)
            bp = self._binds.get(name)
            if bp is None:
                bp = self._binds[name] = BindParameter(name, None, _has_value=False)
            self._parts.append(bp)
            pos = m.end()
        self._parts.append(text_[pos:].replace("\\:", ":"))
        self._execution_options: dict[str, Any] = {}

    def bindparams(self, *binds: BindParameter, **values: Any) -> TextClause:
        """Return a copy with values (or typed :func:`bindparam` objects) for parameters."""
        new = self._clone()
        for b in binds:
            if b.key not in new._binds:
                raise ArgumentError(f"text() has no parameter named :{b.key}")
            new._binds[b.key] = b
        for k, v in values.items():
            if k not in new._binds:
                raise ArgumentError(f"text() has no parameter named :{k}")
            new._binds[k] = BindParameter(k, v, new._binds[k].type)
        new._parts = [new._binds[p.key] if isinstance(p, BindParameter) else p for p in new._parts]  # type: ignore[index]
        return new

    def _clone(self) -> TextClause:
        new = TextClause.__new__(TextClause)
        new.__dict__.update(self.__dict__)
        new._binds = dict(self._binds)
        new._execution_options = dict(self._execution_options)
        return new

    def columns(self, *cols: Any, **typed: Any) -> Any:
        """Return a SELECT-like statement whose result columns are *cols* (and ``name=type``)."""
        from shardsession.sql.selects import TextualSelect

        result = [c if isinstance(c, ColumnElement) else coerce_expression(c) for c in cols] + [
            ColumnClause(k, t) for k, t in typed.items()
        ]
        return TextualSelect(self, result)

    def execution_options(self, **kw: Any) -> TextClause:
        """Return a copy with execution options set."""
        new = self._clone()
        new._execution_options.update(kw)
        return new

    def get_execution_options(self) -> dict[str, Any]:
        """Return the execution options set on this statement."""
        return dict(self._execution_options)

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return ("text", *(p if isinstance(p, str) else p._key(ctx) for p in self._parts))


def text(text_: str) -> TextClause:
    """Return literal SQL with ``:name`` parameters; values are always bound, never spliced."""
    return TextClause(text_)
