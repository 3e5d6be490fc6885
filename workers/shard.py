"""One worker's connection to its shard, and how each request runs on it.

The connection is in autocommit mode and the worker issues ``BEGIN``,
``COMMIT``, ``PREPARE TRANSACTION`` ... itself, so transaction state follows the
coordinator's commands only.  A statement that arrives outside a transaction
begins one implicitly (saving a round trip).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from shardsession.workers.identity import ShardIdentityMap

from shardsession import protocol as p

__all__ = ["ShardConnection", "StaleRowCount"]


class StaleRowCount(Exception):
    """An UPDATE or DELETE of the flush matched another number of rows than expected."""


_ISOLATION = {"READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE", "READ UNCOMMITTED"}


class ShardConnection:
    """The psycopg connection of one worker and the state of its transaction."""

    def __init__(
        self,
        shard: str,
        dsn: str,
        *,
        name: str,
        connect_timeout: float | None = None,
        statement_timeout: float | None = None,
    ) -> None:
        self.shard = shard
        self.name = name
        options = ["-c client_connection_check_interval=1000"]
        if statement_timeout:
            options.append(f"-c statement_timeout={int(statement_timeout * 1000)}")
        self.conn = psycopg.connect(
            dsn,
            autocommit=True,
            application_name=name,
            connect_timeout=int(connect_timeout) if connect_timeout else None,
            options=" ".join(options),
        )
        self.conn.prepare_threshold = 2
        self.identity = ShardIdentityMap()
        self._cursors: dict[int, psycopg.ServerCursor[Any]] = {}
        self._cursor_ids = itertools.count(1)
        self._handlers: dict[type, Callable[[Any], Any]] = {
            p.Execute: self._execute,
            p.ExecuteMany: self._execute_many,
            p.CopyRows: self._copy,
            p.FlushBatch: self._flush,
            p.FetchMore: self._fetch_more,
            p.CloseCursor: self._close_cursor,
            p.Begin: self._begin,
            p.Savepoint: lambda r: self._simple("SAVEPOINT {}", r.name),
            p.ReleaseSavepoint: lambda r: self._simple("RELEASE SAVEPOINT {}", r.name),
            p.RollbackToSavepoint: lambda r: self._simple("ROLLBACK TO SAVEPOINT {}", r.name),
            p.Prepare: self._prepare,
            p.CommitPrepared: lambda r: self._finish_prepared("COMMIT PREPARED", r.gid),
            p.RollbackPrepared: lambda r: self._finish_prepared("ROLLBACK PREPARED", r.gid),
            p.Commit: self._commit,
            p.Rollback: self._rollback,
            p.RecoverScan: self._recover_scan,
            p.IdentityGet: self._identity_get,
            p.IdentityExpire: lambda r: self.identity.expire(r.table, r.keys),
            p.IdentityClear: lambda r: self.identity.clear(),
            p.Ping: self._ping,
        }

    # -- dispatch ------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        """Whether the connection is inside a transaction block (possibly failed)."""
        return self.conn.info.transaction_status in (
            TransactionStatus.INTRANS,
            TransactionStatus.INERROR,
            TransactionStatus.ACTIVE,
        )

    def handle(self, request: p.Request) -> Any:
        """Run ``request``; return its reply value (exceptions propagate)."""
        return self._handlers[type(request)](request)

    def connection_alive(self) -> bool:
        """Read what the server sent while idle; False when the connection is gone."""
        try:
            self.conn.pgconn.consume_input()
        except psycopg.OperationalError:
            return False
        return not self.conn.broken and self.conn.pgconn.status == psycopg.pq.ConnStatus.OK

    def close(self) -> None:
        """Roll back any transaction and close the connection."""
        if not self.conn.closed:
            try:
                if self.in_transaction:
                    self.conn.execute("ROLLBACK")
            finally:
                self.conn.close()

    # -- statements ----------------------------------------------------------

    def _ensure_transaction(self) -> None:
        if self.conn.info.transaction_status == TransactionStatus.IDLE:
            self.conn.execute("BEGIN")

    def _execute(self, req: p.Execute) -> p.Rows:
        if req.fetch == "stream":
            self._ensure_transaction()
            return self._open_stream(req)
        if self.conn.info.transaction_status == TransactionStatus.IDLE:
            # BEGIN and the first statement travel together: one server round trip.
            with self.conn.pipeline():
                self.conn.execute("BEGIN")
                cur = self.conn.execute(req.sql, req.params)
        else:
            cur = self.conn.execute(req.sql, req.params)
        if req.fetch == "none" or cur.description is None:
            return p.Rows(rowcount=cur.rowcount)
        columns = tuple(col.name for col in cur.description)
        rows = cur.fetchall()
        return self._rows(columns, rows, req.identity, cur.rowcount)

    def _rows(
        self,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        spec: p.IdentitySpec | None,
        rowcount: int,
    ) -> p.Rows:
        if spec is None:
            return p.Rows(columns, rows, None, rowcount)  # type: ignore[arg-type]
        keys = []
        out: list[tuple[Any, ...] | None] = []
        observe = self.identity.observe
        for row in rows:
            pk = tuple(row[i] for i in spec.pk)
            keys.append(pk)
            out.append(None if observe(spec.table, pk, row) else row)
        return p.Rows(columns, out, keys, rowcount)

    def _open_stream(self, req: p.Execute) -> p.Rows:
        cursor_id = next(self._cursor_ids)
        cur = self.conn.cursor(name=f"ss_stream_{cursor_id}")
        cur.execute(req.sql, req.params)
        self._cursors[cursor_id] = cur
        return self._chunk(cursor_id, req.chunk, req.identity)

    def _chunk(self, cursor_id: int, size: int, spec: p.IdentitySpec | None) -> p.Rows:
        cur = self._cursors[cursor_id]
        rows = cur.fetchmany(size)
        columns = tuple(col.name for col in cur.description or ())
        result = self._rows(columns, rows, spec, len(rows))
        if len(rows) < size:
            cur.close()
            del self._cursors[cursor_id]
        else:
            result.cursor = cursor_id
        return result

    def _fetch_more(self, req: p.FetchMore) -> p.Rows:
        if req.cursor not in self._cursors:
            raise LookupError(f"no open streaming result {req.cursor}")
        return self._chunk(req.cursor, req.size, None)

    def _close_cursor(self, req: p.CloseCursor) -> None:
        cur = self._cursors.pop(req.cursor, None)
        if cur is not None and not cur.closed and self.in_transaction:
            cur.close()

    def _execute_many(self, req: p.ExecuteMany) -> list[p.Rows] | p.Rows:
        self._ensure_transaction()
        with self.conn.cursor() as cur:
            if len(req.params) == 1:
                # one row (the usual point update): a plain execute is cheaper
                cur.execute(req.sql, req.params[0])
            else:
                cur.executemany(req.sql, req.params, returning=req.returning)
            if req.expect_rowcount is not None and cur.rowcount != req.expect_rowcount:
                raise StaleRowCount(req.stale_message.format(rowcount=cur.rowcount))
            if not req.returning:
                return p.Rows(rowcount=cur.rowcount)
            results = []
            while True:
                columns = tuple(col.name for col in cur.description or ())
                results.append(p.Rows(columns, cur.fetchall(), None, cur.rowcount))
                if not cur.nextset():
                    break
            return results

    def _copy(self, req: p.CopyRows) -> p.Rows:
        self._ensure_transaction()
        if req.target_sql is not None:
            query: Any = sql.SQL("COPY " + req.target_sql + " FROM STDIN")
        else:
            target = (
                sql.Identifier(req.schema, req.table) if req.schema else sql.Identifier(req.table)
            )
            query = sql.SQL("COPY {} ({}) FROM STDIN").format(
                target, sql.SQL(", ").join(map(sql.Identifier, req.columns))
            )
        with self.conn.cursor() as cur, cur.copy(query) as copy:
            for row in req.rows:
                copy.write_row(row)
        return p.Rows(rowcount=len(req.rows))

    def _flush(self, req: p.FlushBatch) -> list[Any]:
        results = [self.handle(statement) for statement in req.statements]
        if req.prepare is not None:
            self._prepare(req.prepare)
        elif req.commit is not None:
            self._commit(req.commit)
        return results

    # -- transactions --------------------------------------------------------

    def _begin(self, req: p.Begin) -> None:
        if self.in_transaction:
            raise psycopg.ProgrammingError(f"a transaction is already open on {self.shard!r}")
        text = "BEGIN"
        if req.isolation_level:
            level = req.isolation_level.upper().replace("_", " ")
            if level not in _ISOLATION:
                raise ValueError(f"unknown isolation level {req.isolation_level!r}")
            text += f" ISOLATION LEVEL {level}"
        if req.read_only:
            text += " READ ONLY"
        self.conn.execute(text)

    def _simple(self, template: str, name: str) -> None:
        self._ensure_transaction()
        self.conn.execute(sql.SQL(template).format(sql.Identifier(name)))

    def _close_streams(self) -> None:
        self._cursors.clear()  # the server closes them with the transaction

    def _prepare(self, req: p.Prepare) -> None:
        self._ensure_transaction()
        self._close_streams()
        self.conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(req.gid)))
        self.identity.clear()

    def _finish_prepared(self, command: str, gid: str) -> bool:
        """Run COMMIT/ROLLBACK PREPARED; False when no such prepared transaction exists."""
        try:
            self.conn.execute(sql.SQL(command + " {}").format(sql.Literal(gid)))
        except psycopg.errors.UndefinedObject:
            return False
        return True

    def _commit(self, req: p.Commit) -> None:
        self._close_streams()
        if self.in_transaction:
            self.conn.execute("COMMIT")
        if req.expire:
            self.identity.clear()

    def _rollback(self, req: p.Rollback) -> None:
        self._close_streams()
        if self.in_transaction:
            self.conn.execute("ROLLBACK")
        self.identity.clear()

    # -- other ---------------------------------------------------------------

    def _recover_scan(self, req: p.RecoverScan) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT gid, prepared, owner, transaction::text FROM pg_prepared_xacts "
            "WHERE database = current_database() AND starts_with(gid, %s) ORDER BY prepared",
            (req.prefix,),
        ).fetchall()
        return [
            {"gid": gid, "prepared": at, "owner": owner, "xid": xid} for gid, at, owner, xid in rows
        ]

    def _identity_get(self, req: p.IdentityGet) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        found = {}
        for key in req.keys:
            row = self.identity.get(req.table, tuple(key))
            if row is not None:
                found[tuple(key)] = row
        return found

    def _ping(self, req: p.Ping) -> dict[str, Any]:
        if req.check_connection:
            self.conn.execute("SELECT 1")
        return {
            "shard": self.shard,
            "name": self.name,
            "backend_pid": self.conn.info.backend_pid,
            "in_transaction": self.in_transaction,
            "identity_rows": len(self.identity),
            "open_cursors": len(self._cursors),
        }
