"""Turning psycopg exceptions into protocol failures that name the shard."""

from __future__ import annotations

import psycopg

from shardsession.protocol import Failure

__all__ = ["failure_from"]

# Most specific first: psycopg's SQLSTATE classes derive from the DBAPI ones.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (psycopg.IntegrityError, "IntegrityError"),
    (psycopg.DataError, "DataError"),
    (psycopg.ProgrammingError, "ProgrammingError"),
    (psycopg.NotSupportedError, "NotSupportedError"),
    (psycopg.InternalError, "InternalError"),
    (psycopg.OperationalError, "OperationalError"),
    (psycopg.InterfaceError, "InterfaceError"),
)


def failure_from(
    err: BaseException, shard: str, statement: str | None, in_transaction: bool
) -> Failure:
    """Describe ``err`` (raised while running ``statement`` on ``shard``) as a Failure."""
    if isinstance(err, psycopg.Error):
        kind = next((name for cls, name in _KINDS if isinstance(err, cls)), "DBAPIError")
        detail = str(err).strip()
        diag = getattr(err, "diag", None)
        if diag is not None and diag.message_detail:
            detail = (
                f"{detail} ({diag.message_detail})" if diag.message_detail not in detail else detail
            )
        return Failure(
            kind=kind,
            message=f"on shard {shard!r}: {detail}",
            shard=shard,
            sqlstate=err.sqlstate,
            statement=statement,
            in_transaction=in_transaction,
        )
    if type(err).__name__ == "StaleRowCount":
        return Failure(
            kind="StaleDataError",
            message=str(err),
            shard=shard,
            statement=statement,
            in_transaction=in_transaction,
        )
    return Failure(
        kind="InvalidRequestError",
        message=f"on shard {shard!r}: {type(err).__name__}: {err}",
        shard=shard,
        statement=statement,
        in_transaction=in_transaction,
    )
