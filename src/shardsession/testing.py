"""Per-test-run shard databases, usable without pytest.

:class:`TestDatabases` gives one test process its own set of shard databases:
on the embedded cluster it copies each shard's database (used as a template, so
creation is fast), and against external servers (a DSN template with ``{shard}``)
it creates ``<dbname>_<suffix>`` next to each shard's database.  It also empties
shards between tests and drops the databases at the end, rolling back leftover
prepared transactions first (``DROP DATABASE`` fails while one exists).

The pytest plugin (:mod:`shardsession.pytest_plugin`) is a thin layer over it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shardsession.embedded import LocalCluster
from shardsession.exc import ConfigurationError
from shardsession.preflight import check_shard_dsns

__all__ = ["TestDatabases", "rollback_prepared", "truncate_all"]


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
        self._admin: dict[str, str] = {}
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    @property
    def shard_names(self) -> list[str]:
        """The shard names: ``s0`` ... ``s{shards-1}``."""
        return [f"s{i}" for i in range(self.shards)]

    def create(self) -> dict[str, str]:
        """Create this process's shard databases; return shard name -> DSN."""
        if self.dsn_template is not None:
            self._create_external()
        else:
            self._create_embedded()
        check_shard_dsns(self.dsns)
        return dict(self.dsns)

    def _create_embedded(self) -> None:
        cluster = LocalCluster(shards=self.shards, path=self.cluster_path, durable=False)
        cluster.start()
        for shard in self.shard_names:
            name = f"{cluster.database_name(shard)}_{self.suffix}"
            self._admin[shard] = cluster.admin_dsn(shard)
            self._drop(shard, name)
            self.dsns[shard] = cluster.create_database(
                name, template=cluster.database_name(shard), shard=shard
            )

    def _create_external(self) -> None:
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
            self._drop(shard, name)
            with psycopg.connect(self._admin[shard], autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self.dsns[shard] = make_conninfo(**{**parts, "dbname": name})

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
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        for shard, dsn in self.dsns.items():
            self._drop(shard, conninfo_to_dict(dsn)["dbname"])
        self.dsns.clear()

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
