"""Checks run on every shard DSN handed to shardsession before it is used.

Two-phase commit needs ``max_prepared_transactions > 0`` on each server
(PostgreSQL's default is 0), so a misconfigured server is reported up front with
the setting to change, instead of failing at the first multi-shard commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from shardsession.exc import ConfigurationError, ShardUnreachableError, TwoPhaseNotEnabledError

__all__ = ["check_shard_dsns", "describe_dsn", "named_dsns"]

_LIBPQ_KEYWORDS = {
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "options",
    "sslmode", "connect_timeout", "application_name", "service", "target_session_attrs",
}  # fmt: skip


def named_dsns(items: Sequence[str], *, names_required: bool, why: str = "") -> dict[str, str]:
    """Parse command-line ``SHARD=DSN`` items into shard name -> DSN.

    A ``key=value`` DSN or a URI is not mistaken for a name.  Unless
    ``names_required``, an unnamed DSN is named after its position (``s0``,
    ``s1``, ...).

    :param why: why names are needed, for the error message.
    :raises ConfigurationError: for a missing name (when required) or a name given twice.
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
        dsns[name] = dsn
    return dsns


def describe_dsn(dsn: str) -> str:
    """Return ``dsn`` in a form safe to print: host, port and database, no password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
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
    :raises ShardUnreachableError: a shard cannot be reached.
    """
    found: dict[str, int] = {}
    for shard, dsn in dsns.items():
        try:
            with psycopg.connect(dsn, connect_timeout=connect_timeout, autocommit=True) as conn:
                row = conn.execute("SHOW max_prepared_transactions").fetchone()
        except psycopg.OperationalError as err:
            raise ShardUnreachableError(
                f"shard {shard!r} ({describe_dsn(dsn)}) cannot be reached: {err}".strip(),
                shard=shard,
                sqlstate=getattr(err, "sqlstate", None),
                orig=err,
            ) from err
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
