"""Per-test-run shard databases and sessions, usable without pytest.

:class:`TestDatabases` gives one test process its own set of shard databases:
on the embedded cluster it copies each shard's database (used as a template, so
creation is fast), and against external servers (a DSN template with ``{shard}``)
it creates ``<dbname>_<suffix>`` next to each shard's database.  It also empties
shards between tests and drops the databases at the end, rolling back leftover
prepared transactions first (``DROP DATABASE`` fails while one exists); or it
keeps them for the next run, which reuses them (``create(reuse=True)``).

:func:`rollback_session` is a :class:`~shardsession.Session` whose every change is
undone when it ends, without emptying any table.

The pytest plugin (:mod:`shardsession.pytest_plugin`) is a thin layer over both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import Connection, Engine

from shardsession import Session, ShardSet
from shardsession.embedded import LocalCluster
from shardsession.exc import ArgumentError, ConfigurationError
from shardsession.preflight import check_shard_dsns

__all__ = ["TestDatabases", "rollback_prepared", "rollback_session", "truncate_all"]


def rollback_prepared(conn: psycopg.Connection[Any]) -> list[str]:
    """Roll back every prepared transaction of ``conn``'s database; return their gids.

    ``conn`` must be in autocommit mode.
    """
    gids = [
        row[0]
        for row in conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        )
    ]
    for gid in gids:
        with contextlib.suppress(psycopg.errors.UndefinedObject):
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    return gids


def truncate_all(conn: psycopg.Connection[Any]) -> list[str]:
    """Empty every table outside the system schemas of ``conn``'s database.

    Sequences restart, so generated ids begin at 1 again.  Leftover prepared
    transactions (which hold locks) are rolled back first.  ``conn`` must be in
    autocommit mode.  :returns: the tables emptied.
    """
    rollback_prepared(conn)
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1"
        )
    ]
    if tables:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    return tables


class TestDatabases:
    """The shard databases of one test process.

    :param suffix: what makes this process's databases unique (the xdist worker
        id, ``gw0``, or ``main``).
    :param shards: how many shards (``s0`` ... ``s{shards-1}``).
    :param cluster_path: the embedded cluster folder shared by the test run
        (ignored when ``dsn_template`` is given).
    :param dsn_template: a DSN for external servers in which ``{shard}`` becomes the
        shard name (``s0``, ``s1``, ...) and ``{n}`` its number (``0``, ``1``, ...).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        suffix: str,
        shards: int = 4,
        *,
        cluster_path: str | Path | None = None,
        dsn_template: str | None = None,
    ) -> None:
        self.suffix = suffix
        self.shards = shards
        self.cluster_path = cluster_path
        self.dsn_template = dsn_template
        self.dsns: dict[str, str] = {}
        #: the shards whose database :meth:`create` found and kept (``reuse=True``)
        self.reused: list[str] = []
        self._admin: dict[str, str] = {}
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    @property
    def shard_names(self) -> list[str]:
        """The shard names: ``s0`` ... ``s{shards-1}``."""
        return [f"s{i}" for i in range(self.shards)]

    def create(self, *, reuse: bool = False) -> dict[str, str]:
        """Create this process's shard databases; return shard name -> DSN.

        :param reuse: keep a database that exists already (left by :meth:`close`)
            instead of dropping it and creating it again.  Its tables are kept and
            emptied (:func:`truncate_all`), so tests find them empty, with ids
            starting at 1.  :attr:`reused` lists the shards whose database was kept.
        """
        self.reused = []
        if self.dsn_template is not None:
            self._create_external(reuse)
        else:
            self._create_embedded(reuse)
        check_shard_dsns(self.dsns)
        for shard in self.reused:
            truncate_all(self.connection(shard))
        return dict(self.dsns)

    def _create_embedded(self, reuse: bool) -> None:
        cluster = LocalCluster(shards=self.shards, path=self.cluster_path, durable=False)
        cluster.start()
        for shard in self.shard_names:
            name = f"{cluster.database_name(shard)}_{self.suffix}"
            self._admin[shard] = cluster.admin_dsn(shard)
            if not self._keep(shard, name, reuse):
                self._drop(shard, name)
            # creates the database only if it is missing
            self.dsns[shard] = cluster.create_database(
                name, template=cluster.database_name(shard), shard=shard
            )

    def _create_external(self, reuse: bool) -> None:
        template = self.dsn_template or ""
        if "{shard}" not in template and "{n}" not in template:
            raise ConfigurationError(
                f"--shardsession-dsn {template!r} has no {{shard}} or {{n}} placeholder; write "
                "it as e.g. 'postgresql://user:pw@host:5432/app_{shard}' so each shard gets its "
                "own database, or 'postgresql://user:pw@localhost:544{n}/app' for one server "
                "per shard on ports 5440, 5441, ..."
            )
        for n, shard in enumerate(self.shard_names):
            parts = conninfo_to_dict(template.replace("{shard}", shard).replace("{n}", str(n)))
            base = parts.get("dbname") or parts.get("user") or "postgres"
            name = f"{base}_{self.suffix}"
            self._admin[shard] = make_conninfo(**{**parts, "dbname": "postgres"})
            if not self._keep(shard, name, reuse):
                self._drop(shard, name)
                with psycopg.connect(self._admin[shard], autocommit=True) as conn:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self.dsns[shard] = make_conninfo(**{**parts, "dbname": name})

    def _keep(self, shard: str, name: str, reuse: bool) -> bool:
        """Whether database ``name`` of ``shard`` is reused (noted in :attr:`reused`)."""
        if reuse and self._exists(shard, name):
            self.reused.append(shard)
            return True
        return False

    def _exists(self, shard: str, name: str) -> bool:
        with psycopg.connect(self._admin[shard], autocommit=True) as admin:
            found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return found.fetchone() is not None

    def connection(self, shard: str) -> psycopg.Connection[Any]:
        """A cached autocommit connection to ``shard``'s database (for fixtures)."""
        conn = self._conns.get(shard)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.dsns[shard], autocommit=True)
            self._conns[shard] = conn
        return conn

    def clean(self) -> None:
        """Empty every table of every shard (see :func:`truncate_all`)."""
        for shard in self.dsns:
            try:
                truncate_all(self.connection(shard))
            except psycopg.OperationalError:
                # the cached connection was ended meanwhile (a test terminated
                # backends, a server restarted): once more on a new one
                self._conns.pop(shard).close()
                truncate_all(self.connection(shard))

    def drop(self) -> None:
        """Drop this process's shard databases, rolling back prepared transactions first."""
        self._close_connections()
        for shard, dsn in self.dsns.items():
            self._drop(shard, conninfo_to_dict(dsn)["dbname"])
        self.dsns.clear()

    def close(self) -> None:
        """Keep this process's shard databases for a later ``create(reuse=True)``.

        Closes the connections of :meth:`connection` and rolls back the prepared
        transactions tests left, which would hold their locks (and count against
        ``max_prepared_transactions``) until the next run.
        """
        self._close_connections()
        for dsn in self.dsns.values():
            with contextlib.suppress(psycopg.OperationalError):  # a server already stopped
                with psycopg.connect(dsn, autocommit=True) as conn:
                    rollback_prepared(conn)
        self.dsns.clear()

    def _close_connections(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _drop(self, shard: str, name: str) -> None:
        with psycopg.connect(self._admin[shard], autocommit=True) as admin:
            found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not found.fetchone():
                return
            dsn = make_conninfo(self._admin[shard], dbname=name)
            with psycopg.connect(dsn, autocommit=True) as conn:
                rollback_prepared(conn)
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class _JoinedSession(Session):
    """A :class:`~shardsession.Session` over connections whose transactions it joins.

    Its shards are bound to connections (SQLAlchemy's "join a session into an
    external transaction"), while :attr:`shards` still names the engines they come
    from, as it does for every Session: shard numbering
    (:func:`~shardsession.shard_numbers`) connects through them.  No shard ever
    commits on its own (a commit releases savepoints, the end rolls back every
    shard), so writes to reference tables are allowed without two-phase commit.
    """

    #: every shard's work ends together (rolled back): see coordinator/reference.py
    _shards_end_together = True

    def __init__(
        self,
        connections: Mapping[str, Connection],
        source: ShardSet,
        **kwargs: Any,
    ) -> None:
        bound = ShardSet(connections, dsns=source.dsns)  # type: ignore[arg-type]
        super().__init__(bound, twophase=False, join_transaction_mode="create_savepoint", **kwargs)
        self._source = source

    @property
    def shards(self) -> dict[str, Any]:
        """Shard name -> Engine (the engines the session's connections come from)."""
        return dict(self._source)


@contextlib.contextmanager
def rollback_session(shards: Mapping[str, Engine], **session_kwargs: Any) -> Iterator[Session]:
    """A :class:`~shardsession.Session` whose every change is undone at the end.

    One connection per shard is opened and a transaction begun on each; the
    session joins them with a SAVEPOINT (SQLAlchemy's
    ``join_transaction_mode="create_savepoint"``).  Inside, ``commit()`` releases
    the savepoints and ``rollback()`` rolls back to them, so code under test runs as
    it would on its own; when the block ends, the session is closed and the
    transactions are rolled back: no table needs emptying.

    Nothing the session writes is ever committed, so other connections never see
    it, and no two-phase commit runs: a commit that wrote to several shards
    releases each shard's savepoint.  Writes to reference tables reach every shard
    as in any session (no shard commits on its own here, so they need no two-phase
    commit either).

    :param shards: a :class:`~shardsession.ShardSet` (or shard name -> Engine).
    :param session_kwargs: other :class:`~shardsession.Session` arguments, such as
        ``expire_on_commit``.
    :raises ArgumentError: for ``twophase`` or ``join_transaction_mode``, which the
        session sets itself.

    Example::

        with rollback_session(shards) as session:
            session.add(Account(id=1, balance=10))
            session.commit()        # releases a SAVEPOINT
        # the account is gone
    """
    fixed = sorted({"twophase", "join_transaction_mode", "shards", "bind"} & set(session_kwargs))
    if fixed:
        raise ArgumentError(
            f"rollback_session() sets {', '.join(fixed)} itself (its commits only release "
            "savepoints); leave them out, or make a shardsession.Session of your own"
        )
    source = shards if isinstance(shards, ShardSet) else ShardSet(shards)
    with contextlib.ExitStack() as stack:
        connections: dict[str, Connection] = {}
        for name, engine in source.items():
            connection = stack.enter_context(engine.connect())
            # a Transaction used as a context manager would commit: roll it back instead
            stack.callback(connection.begin().rollback)
            connections[name] = connection
        session = _JoinedSession(connections, source, **session_kwargs)
        stack.callback(session.close)
        yield session
