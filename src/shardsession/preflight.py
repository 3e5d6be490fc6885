"""Checks run on every shard DSN handed to shardsession before it is used.

Two-phase commit needs ``max_prepared_transactions > 0`` on each server
(PostgreSQL's default is 0), so a misconfigured server is reported up front with
the setting to change, instead of failing at the first multi-shard commit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from shardsession.exc import ConfigurationError, ShardUnreachableError, TwoPhaseNotEnabledError
from shardsession.twophase import MAX_SHARD_NAME

__all__ = [
    "check_shard_dsns",
    "check_shard_name",
    "describe_dsn",
    "named_dsns",
    "shard_conninfo",
]

_LIBPQ_KEYWORDS = {
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "options",
    "sslmode", "connect_timeout", "application_name", "service", "target_session_attrs",
}  # fmt: skip
# libpq options whose values must be whole numbers (libpq only says so at connect time)
_INTEGER_OPTIONS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                    "keepalives_count", "tcp_user_timeout")  # fmt: skip
_URL_PASSWORD = re.compile(r"(://[^/@:?#]*:)[^/@?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE)


def check_shard_name(name: object) -> str:
    """Return ``name`` if it can name a shard; raise naming the fix otherwise.

    A shard name is a non-empty string without NUL characters, at most
    :data:`~shardsession.twophase.MAX_SHARD_NAME` bytes long (two-phase commit
    names prepared transactions after shards).

    :raises ConfigurationError: (an :class:`~sqlalchemy.exc.ArgumentError`) for
        any other name.
    """
    if not isinstance(name, str):
        raise ConfigurationError(
            f"shard name {name!r} ({type(name).__name__}) is not a string; shard names are "
            f"strings: use {str(name)!r} (or a name such as 's0')"
        )
    if not name:
        raise ConfigurationError("a shard name is empty; give every shard a name such as 's0'")
    if "\x00" in name:
        raise ConfigurationError(
            f"shard name {name!r} contains a NUL character, which PostgreSQL cannot store "
            "(two-phase commit names prepared transactions after shards); remove it"
        )
    if len(name.encode()) > MAX_SHARD_NAME:
        raise ConfigurationError(
            f"shard name {name!r} is longer than {MAX_SHARD_NAME} bytes; two-phase commit "
            "names prepared transactions after shards. Use a shorter name."
        )
    return name


def _redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***`` (for messages)."""
    dsn = _URL_PASSWORD.sub(r"\1***@", dsn)
    dsn = _QUERY_PASSWORD.sub(r"\1***", dsn)
    return _KEYWORD_PASSWORD.sub(r"\1***", dsn)


def shard_conninfo(shard: str, dsn: object) -> str:
    """Check shard ``shard``'s DSN and return it as a psycopg conninfo.

    Takes libpq ``key=value`` strings and ``postgresql://`` URLs (also SQLAlchemy's
    ``postgresql+driver://`` spelling).  Besides what libpq's parser rejects, ports
    and other numeric options are checked here, so a typo is reported with the
    shard's name now rather than as a failed connection later.

    :raises ConfigurationError: (an :class:`~sqlalchemy.exc.ArgumentError`) naming
        the shard, the DSN (password hidden) and what is wrong.
    """
    if not isinstance(dsn, str):
        raise ConfigurationError(
            f"shard {shard!r}: the DSN must be a string such as "
            f"'postgresql://user@host/db', not {dsn!r}"
        )
    text = dsn.strip()
    for prefix in ("postgresql+", "postgres+"):
        if text.startswith(prefix) and "://" in text:  # SQLAlchemy's "postgresql+driver://"
            text = "postgresql://" + text.split("://", 1)[1]
    problem = None
    try:
        params = conninfo_to_dict(text)
    except psycopg.Error as err:
        problem = " ".join(str(err).split())
    else:
        problem = _value_problem(params)
    if problem:
        raise ConfigurationError(
            f"shard {shard!r}: {_redact_dsn(dsn)!r} is not a valid PostgreSQL DSN ({problem}); "
            "give a URL such as postgresql://user:password@host:5432/dbname or libpq "
            "keywords such as 'host=... port=5432 dbname=...'"
        )
    return text


def _value_problem(params: Mapping[str, object]) -> str | None:
    for port in str(params.get("port") or "").split(","):
        port = port.strip()
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            return f"port {port!r} is not a TCP port number from 1 to 65535"
    for key in _INTEGER_OPTIONS:
        value = str(params.get(key) or "").strip()
        if value and not value.lstrip("-").isdigit():
            return f"{key} {value!r} is not a whole number"
    return None


def named_dsns(items: Sequence[str], *, names_required: bool, why: str = "") -> dict[str, str]:
    """Parse command-line ``SHARD=DSN`` items into shard name -> DSN.

    A ``key=value`` DSN or a URI is not mistaken for a name.  Unless
    ``names_required``, an unnamed DSN is named after its position (``s0``,
    ``s1``, ...).

    :param why: why names are needed, for the error message.
    :raises ConfigurationError: for a missing name (when required), a name given
        twice, a name that cannot name a shard or a malformed DSN (naming the shard).
    """
    dsns: dict[str, str] = {}
    for n, item in enumerate(items):
        name, sep, dsn = item.partition("=")
        named = bool(sep and name and dsn) and " " not in name and "://" not in name
        if not (named and name not in _LIBPQ_KEYWORDS):
            if names_required:
                raise ConfigurationError(
                    f"--dsn {item!r} needs the shard's name: --dsn s0=postgresql://... {why}"
                )
            name, dsn = f"s{n}", item
        if name in dsns:
            raise ConfigurationError(f"shard {name!r} is given twice; name each shard once")
        shard_conninfo(check_shard_name(name), dsn)
        dsns[name] = dsn
    return dsns


def describe_dsn(dsn: str) -> str:
    """Return ``dsn`` in a form safe to print: host, port and database, no password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    shown = [f"{key}={parts[key]}" for key in ("host", "port", "dbname", "user") if key in parts]
    return " ".join(shown) or "<default connection>"


def check_shard_dsns(
    dsns: Mapping[str, str], *, minimum: int = 1, connect_timeout: int = 10
) -> dict[str, int]:
    """Connect to every shard and check that two-phase commit is enabled.

    :param dsns: shard name -> libpq connection string.
    :param minimum: the smallest acceptable ``max_prepared_transactions``.
    :returns: shard name -> the server's ``max_prepared_transactions``.
    :raises TwoPhaseNotEnabledError: a server has the setting below ``minimum``;
        the message names the shard, the server and the setting to change.
    :raises ShardUnreachableError: a shard cannot be reached (its ``shard``
        attribute names it).
    :raises ConfigurationError: a shard's name or DSN is malformed.
    """
    found: dict[str, int] = {}
    for shard, dsn in dsns.items():
        conninfo = shard_conninfo(check_shard_name(shard), dsn)
        try:
            with psycopg.connect(
                conninfo, connect_timeout=connect_timeout, autocommit=True
            ) as conn:
                row = conn.execute("SHOW max_prepared_transactions").fetchone()
        except psycopg.OperationalError as err:
            reason = " ".join(str(err).split())  # libpq's message spans lines
            if not reason.endswith((".", "?", "!")):
                reason += "."
            unreachable = ShardUnreachableError(
                f"shard {shard!r} ({describe_dsn(conninfo)}) cannot be reached: {reason} "
                "Check that its server is running and the DSN's host, port, user and "
                "password are right."
            )
            unreachable.shard = shard  # type: ignore[attr-defined]
            raise unreachable from err
        value = int(row[0]) if row else 0
        if value < minimum:
            raise TwoPhaseNotEnabledError(
                f"shard {shard!r} ({describe_dsn(dsn)}) has max_prepared_transactions = {value}; "
                "shardsession commits across shards with two-phase commit, which needs it "
                f"to be at least {max(minimum, 1)}. Set `max_prepared_transactions = 64` "
                "(or more) in that server's postgresql.conf, or start it with "
                "`-c max_prepared_transactions=64`, then restart the server."
            )
        found[shard] = value
    return found
