"""SQL function calls: ``func.count()``, ``func.lower(x)``, ``func.now()``, ..."""

from __future__ import annotations

import re
from typing import Any

from shardsession.exc import ArgumentError
from shardsession.sql import types as sqltypes
from shardsession.sql.elements import ColumnElement, KeyContext, _from_list, coerce_expression

__all__ = ["AGGREGATES", "Function", "func"]

#: Aggregate functions whose per-shard results the coordinator knows how to combine.
AGGREGATES = frozenset({"count", "sum", "min", "max", "avg"})

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class Function(ColumnElement):
    """A call of SQL function *name* with arguments (plain values are bound).

    ``count`` with no argument renders ``count(*)``.  The result type is ``BIGINT``
    for ``count``, the argument's type for ``sum``/``min``/``max``, ``NUMERIC`` for
    ``avg``, or the *type_* keyword.
    """

    __visit_name__ = "function"

    def __init__(
        self, name: str, *args: Any, type_: Any = None, packages: tuple[str, ...] = ()
    ) -> None:
        for part in (*packages, name):
            if not _NAME_RE.match(part):
                raise ArgumentError(f"invalid SQL function name {part!r}")
        self.name = name
        self.packages = packages
        self.clauses = [coerce_expression(a) for a in args]
        if type_ is not None:
            self.type = sqltypes.to_type(type_)
        else:
            lname = name.lower()
            if lname == "count":
                self.type = sqltypes.BigInteger()
            elif (
                lname in ("sum", "min", "max", "coalesce", "abs", "lower", "upper") and self.clauses
            ):
                self.type = self.clauses[0].type
            elif lname == "avg":
                self.type = sqltypes.Numeric()
            elif lname in ("now", "current_timestamp"):
                self.type = sqltypes.DateTime(timezone=True)
            else:
                self.type = sqltypes.NullType()

    @property
    def _result_name(self) -> str | None:
        return self.name

    @property
    def is_aggregate(self) -> bool:
        """True for count / sum / min / max / avg."""
        return not self.packages and self.name.lower() in AGGREGATES

    def _key(self, ctx: KeyContext) -> tuple[Any, ...]:
        return (
            "func",
            self.packages,
            self.name,
            self.type.type_key(),
            *(c._key(ctx) for c in self.clauses),
        )

    def _from_objects(self) -> list[Any]:
        return _from_list(self.clauses)


class _FunctionGenerator:
    """``func.name(*args)`` builds :class:`Function`; ``func.schema.name(...)`` qualifies it."""

    def __init__(self, packages: tuple[str, ...] = ()) -> None:
        self._packages = packages

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name.endswith("_") and not name.endswith("__"):
            name = name[:-1]
        return _FunctionGenerator((*self._packages, name))

    def __call__(self, *args: Any, **kw: Any) -> Function:
        if not self._packages:
            raise ArgumentError("use func.<name>(...)")
        *pkgs, name = self._packages
        return Function(name, *args, type_=kw.get("type_"), packages=tuple(pkgs))


func = _FunctionGenerator()
"""Build SQL function calls: ``func.count()``, ``func.max(t.c.x)``, ``func.lower(name)``."""
