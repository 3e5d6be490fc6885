"""The construction that the compat programs use, in reference or sharded mode.

Every program in ``programs/`` is a program written by others in which only the
lines that build engines and sessions were changed to call this module.  The
harness (``test_programs.py``) runs each program twice, with ``SS_COMPAT_MODE``:

``reference``
    plain SQLAlchemy on one PostgreSQL database (``SS_COMPAT_REF_DSN``);
``sharded``
    shardsession over four shard databases (``SS_COMPAT_DSNS``, a JSON object
    shard name -> DSN).

and compares what the two runs print.  Nothing here changes what a program does
beyond where its data lives.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy
import sqlalchemy.orm
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

__all__ = [
    "MODE",
    "AsyncSession",
    "Session",
    "ShardedSession",
    "async_engine",
    "async_sessionmaker",
    "connect",
    "core_engine",
    "engine",
    "sessionmaker",
    "shard_dsns",
    "shard_engines",
]

MODE = os.environ.get("SS_COMPAT_MODE", "reference")
if MODE not in ("reference", "sharded"):
    raise SystemExit(f"SS_COMPAT_MODE must be 'reference' or 'sharded', not {MODE!r}")

_cache: dict[str, Any] = {}
_written: set[str] = set()


def _track_writes(shards: Mapping[str, Engine]) -> None:
    """Note which shards receive INSERT / UPDATE / DELETE statements (for the harness).

    The harness asks for it with ``SS_COMPAT_WRITES`` (a file name): a program that
    spreads its data must write to several shards, even when it rolls back at the end.
    """
    if not os.environ.get("SS_COMPAT_WRITES"):
        return
    for name, eng in shards.items():

        def note(conn: Any, cursor: Any, statement: str, *args: Any, _name: str = name) -> None:
            verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
            if verb in ("INSERT", "UPDATE", "DELETE") and "shardsession_" not in statement:
                _written.add(_name)

        event.listen(eng, "before_cursor_execute", note)


@atexit.register
def _report_writes() -> None:
    path = os.environ.get("SS_COMPAT_WRITES")
    if path:
        with open(path, "w") as f:
            json.dump(sorted(_written), f)


def _url(dsn: str) -> URL:
    """A ``postgresql+psycopg`` URL for a libpq conninfo string or a URL."""
    if "://" in dsn:
        return sqlalchemy.make_url(dsn).set(drivername="postgresql+psycopg")
    parts = conninfo_to_dict(dsn)
    query = {k: str(v) for k, v in parts.items() if k not in ("user", "password", "dbname")}
    return URL.create(
        "postgresql+psycopg",
        username=parts.get("user"),
        password=parts.get("password"),
        database=parts.get("dbname"),
        query=query,
    )


def shard_dsns() -> dict[str, str]:
    """The four shard databases, shard name -> DSN, in shard order."""
    return dict(json.loads(os.environ["SS_COMPAT_DSNS"]))


def _ss() -> Any:
    import shardsession

    return shardsession


if MODE == "reference":
    from sqlalchemy.ext.horizontal_shard import ShardedSession
else:  # the session class of programs that shard by themselves (examples/sharding)
    from shardsession import Session as ShardedSession


def engine(**kw: Any) -> Any:
    """What a program gets instead of ``create_engine(...)``.

    reference: an :class:`~sqlalchemy.engine.Engine` on the reference database;
    sharded: ``shardsession.create_shards(...)`` over the four shards (a ShardSet).
    The same object is returned on every call with the same arguments.
    """
    key = f"engine:{sorted(kw.items())!r}"
    if key not in _cache:
        if MODE == "reference":
            _cache[key] = sqlalchemy.create_engine(_url(os.environ["SS_COMPAT_REF_DSN"]), **kw)
        else:
            _cache[key] = _ss().create_shards(shard_dsns(), **kw)
            _track_writes(_cache[key])
    return _cache[key]


def shard_engines(**kw: Any) -> Mapping[str, Engine]:
    """For programs that shard by themselves (examples/sharding): one engine per shard.

    reference: plain SQLAlchemy engines on the four shard databases;
    sharded: ``shardsession.create_shards(...)`` (a mapping shard name -> Engine).
    """
    key = f"shard_engines:{sorted(kw.items())!r}"
    if key not in _cache:
        if MODE == "reference":
            _cache[key] = {
                name: sqlalchemy.create_engine(_url(dsn), **kw)
                for name, dsn in shard_dsns().items()
            }
        else:
            _cache[key] = _ss().create_shards(shard_dsns(), **kw)
        _track_writes(_cache[key])
    return _cache[key]


def core_engine() -> Engine:
    """The one engine that Core statements (``engine.connect()``) go to.

    reference: the reference database; sharded: the first shard, which holds the
    rows of every model without ``__shard_key__`` and without a parent.
    """
    shards = engine()
    if MODE == "reference":
        return shards
    return shards[next(iter(shards))]


def connect() -> sqlalchemy.Connection:
    """``engine.connect()`` for a program's Core statements (see :func:`core_engine`)."""
    return core_engine().connect()


def _bind_first(
    args: tuple[Any, ...], kw: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # shardsession takes the shards positionally: Session(shardset), sessionmaker(shardset)
    if "bind" in kw and not args:
        args = (kw.pop("bind"),)
    return args, kw


def Session(*args: Any, **kw: Any) -> sqlalchemy.orm.Session:
    """``sqlalchemy.orm.Session(...)`` / ``shardsession.Session(...)``."""
    if MODE == "reference":
        return sqlalchemy.orm.Session(*args, **kw)
    args, kw = _bind_first(args, kw)
    return _ss().Session(*args, **kw)


def sessionmaker(*args: Any, **kw: Any) -> sqlalchemy.orm.sessionmaker[Any]:
    """``sqlalchemy.orm.sessionmaker(...)`` / ``shardsession.sessionmaker(...)``."""
    if MODE == "reference":
        return sqlalchemy.orm.sessionmaker(*args, **kw)
    args, kw = _bind_first(args, kw)
    return _ss().sessionmaker(*args, **kw)


def async_engine(**kw: Any) -> Any:
    """What an asyncio program gets instead of ``create_async_engine(...)``.

    reference: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (psycopg) on the reference
    database; sharded: ``shardsession.create_async_shards(...)`` over the four shards.
    """
    key = f"async_engine:{sorted(kw.items())!r}"
    if key not in _cache:
        if MODE == "reference":
            from sqlalchemy.ext.asyncio import create_async_engine

            _cache[key] = create_async_engine(_url(os.environ["SS_COMPAT_REF_DSN"]), **kw)
        else:
            _cache[key] = _ss().create_async_shards(shard_dsns(), **kw)
            _track_writes(_cache[key].sync)
    return _cache[key]


def AsyncSession(*args: Any, **kw: Any) -> Any:
    """``sqlalchemy.ext.asyncio.AsyncSession(...)`` / ``shardsession.AsyncSession(...)``."""
    if MODE == "reference":
        from sqlalchemy.ext.asyncio import AsyncSession as _AsyncSession

        return _AsyncSession(*args, **kw)
    args, kw = _bind_first(args, kw)
    return _ss().AsyncSession(*args, **kw)


def async_sessionmaker(*args: Any, **kw: Any) -> Any:
    """``sqlalchemy.ext.asyncio.async_sessionmaker(...)`` /
    ``shardsession.async_sessionmaker(...)``."""
    if MODE == "reference":
        from sqlalchemy.ext.asyncio import async_sessionmaker as _async_sessionmaker

        return _async_sessionmaker(*args, **kw)
    args, kw = _bind_first(args, kw)
    return _ss().async_sessionmaker(*args, **kw)
