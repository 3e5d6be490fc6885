"""Parsing of a relationship's ``cascade`` string into flags."""

from __future__ import annotations

from collections.abc import Iterable

from shardsession import exc

__all__ = ["CascadeOptions"]

_ALLOWED = frozenset(
    {"save-update", "merge", "expunge", "delete", "delete-orphan", "refresh-expire"}
)
_ALL = frozenset({"save-update", "merge", "refresh-expire", "expunge", "delete"})


class CascadeOptions(frozenset[str]):
    """The set of cascade rules of a relationship, with one boolean per rule.

    Built from a string such as ``"all, delete-orphan"``: ``all`` stands for
    ``save-update, merge, refresh-expire, expunge, delete`` and ``none`` for no
    rule.  The flags are :attr:`save_update`, :attr:`merge`, :attr:`expunge`,
    :attr:`delete`, :attr:`delete_orphan` and :attr:`refresh_expire`.
    """

    save_update: bool
    merge: bool
    expunge: bool
    delete: bool
    delete_orphan: bool
    refresh_expire: bool

    def __new__(cls, value: str | Iterable[str] = "save-update, merge") -> CascadeOptions:
        if isinstance(value, str):
            names = [v.strip() for v in value.split(",")]
        else:
            names = [str(v).strip() for v in value]
        names = [n for n in names if n]
        unknown = [n for n in names if n not in _ALLOWED and n not in ("all", "none")]
        if unknown:
            raise exc.ArgumentError(
                f"Invalid cascade option(s): {', '.join(repr(u) for u in sorted(unknown))}; "
                f"valid are {', '.join(sorted([*_ALLOWED, 'all', 'none']))}"
            )
        values: set[str] = set()
        for n in names:
            if n == "all":
                values |= _ALL
            elif n != "none":
                values.add(n)
        self = super().__new__(cls, values)
        self.save_update = "save-update" in values
        self.merge = "merge" in values
        self.expunge = "expunge" in values
        self.delete = "delete" in values
        self.delete_orphan = "delete-orphan" in values
        self.refresh_expire = "refresh-expire" in values
        return self

    def __repr__(self) -> str:
        return f"CascadeOptions({','.join(sorted(self))!r})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (CascadeOptions, (sorted(self),))
