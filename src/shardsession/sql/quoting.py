"""Quoting of identifiers and DDL literals exactly as PostgreSQL reads them."""

from __future__ import annotations

from shardsession.exc import CompileError

__all__ = ["quote_ident", "quote_literal", "quote_qualified"]


def quote_ident(name: str) -> str:
    """Return *name* as a PostgreSQL quoted identifier (``"a""b"`` for ``a"b``).

    Identifiers are always quoted, so names keep their case and may be reserved
    words or hold any character.

    :raises CompileError: for an empty name or one containing a NUL character.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CompileError(f"invalid SQL identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(name: str, schema: str | None) -> str:
    """Return ``"schema"."name"`` or ``"name"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def quote_literal(value: str) -> str:
    """Return *value* as a string literal for DDL (where parameters cannot be used).

    Quotes are doubled; a value holding backslashes uses the ``E'...'`` form with the
    backslashes doubled, so the result reads the same whatever
    ``standard_conforming_strings`` is.
    """
    if "\x00" in value:
        raise CompileError("a SQL string literal cannot hold a NUL character")
    body = value.replace("'", "''")
    if "\\" in body:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"
