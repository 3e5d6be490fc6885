"""One worker's psycopg connection, and how each request runs on it.

The worker is the server side of a DBAPI connection whose application side is
:class:`shardsession.coordinator.dbapi.Connection`.  The psycopg connection is kept
in autocommit mode and the worker opens transactions itself, so ``BEGIN`` travels
in one pipeline with the first statement (one server round trip, not two) and the
isolation level, read-only and deferrable settings go into that ``BEGIN``.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import os
import re
import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import ExecStatus, TransactionStatus

from shardsession import protocol as p
from shardsession.deadlock import VICTIM_NOTE_SQL

__all__ = ["WorkerConnection"]

# Command tags of statements that write nothing: every other statement marks the
# transaction as a writer (a two-phase participant that must PREPARE).
_READ_TAGS = frozenset(
    {"SELECT", "SHOW", "SET", "RESET", "FETCH", "MOVE", "DECLARE", "CLOSE", "SAVEPOINT",
     "RELEASE", "ROLLBACK", "BEGIN", "EXPLAIN", "LISTEN", "UNLISTEN", "DISCARD"}
)  # fmt: skip
_IDLE = TransactionStatus.IDLE
# libpq result statuses of a statement that returns rows (a description, maybe no columns)
_ROW_STATUSES = frozenset(
    getattr(ExecStatus, name) for name in ("TUPLES_OK", "SINGLE_TUPLE", "TUPLES_CHUNK")
    if hasattr(ExecStatus, name)  # TUPLES_CHUNK: psycopg >= 3.2
)  # fmt: skip
#: executemany of a plain INSERT with at least this many rows runs as COPY
COPY_MIN_ROWS = 200
# INSERT INTO t (a, b) VALUES (%(a)s::INTEGER, %(b)s) as SQLAlchemy renders it
_PLAIN_INSERT = re.compile(
    r"INSERT INTO (\"?[\w.\"]+\"?) \(([^()]*)\) VALUES \(((?:%\((\w+)\)s(?:::[\w ]+(?:\(\d+\))?)?"
    r"(?:, )?)+)\)",
)
_PARAM = re.compile(r"%\((\w+)\)s")
# values COPY's text format writes exactly as an INSERT would bind them
_COPY_TYPES = (int, float, str, bool, decimal.Decimal, datetime.datetime, datetime.date,
               datetime.time, datetime.timedelta, uuid.UUID, bytes, type(None))  # fmt: skip
# the session transaction's tag, for as long as the transaction lasts
_TAG_SQL = "SELECT set_config('application_name', %s, true)"
# A backend waiting for a lock when its worker dies would only notice at the end of
# the wait; checking the client socket twice a second frees its locks promptly.
_CHECK_CLIENT_SQL = (
    ", CASE WHEN current_setting('client_connection_check_interval') = '0' THEN "
    "set_config('client_connection_check_interval', '500', false) END"
)
_ISOLATION_SQL = {
    1: "READ UNCOMMITTED",
    2: "READ COMMITTED",
    3: "REPEATABLE READ",
    4: "SERIALIZABLE",
}


class WorkerConnection:
    """The psycopg connection of one worker and the state DBAPI callers see.

    :param shard: the shard's name (errors name it).
    :param connect_kwargs: what psycopg's ``connect()`` takes.
    """

    def __init__(self, shard: str, connect_kwargs: dict[str, Any]) -> None:
        self.shard = shard
        kwargs = dict(connect_kwargs)
        kwargs["autocommit"] = True
        self._connect_kwargs = kwargs
        try:
            self.conn = psycopg.connect(**kwargs)
        except psycopg.errors.ConnectionTimeout as err:
            limit = kwargs.get("connect_timeout")
            err.args = (
                f"{err} ({f'connect_timeout={limit} s' if limit else 'connect_timeout'}); check "
                "that the server is running and answering, or raise connect_timeout",
            )
            raise self.name_shard(err) from None
        except psycopg.Error as err:
            raise self.name_shard(err) from None
        self.autocommit = False  # as the DBAPI caller sees it
        self.isolation_level: int | None = None
        self.read_only: bool | None = None
        self.deferrable: bool | None = None
        self.wrote = False
        self.tag: str | None = None  # the tag of the transaction begun last
        self.copies = 0  # executemany requests run as COPY
        self._cursors: dict[str, psycopg.ServerCursor[Any]] = {}
        self._cursor = self.conn.cursor()
        # Merging text in the coordinator is exact only under the C collation.
        check_client = _CHECK_CLIENT_SQL if self.conn.info.server_version >= 140000 else ""
        row = self.conn.execute(
            f"SELECT datcollate, to_jsonb(d) ->> 'datlocprovider'{check_client} "
            "FROM pg_database d WHERE datname = current_database()"
        ).fetchone()
        self.collation = "C" if row is None else (row[0] if row[1] in (None, "c") else "icu")
        self._handlers: dict[type, Any] = {
            p.Execute: self._execute,
            p.ExecuteMany: self._execute_many,
            p.Copy: self._copy,
            p.Fetch: self._fetch,
            p.Close: self._close_cursor,
            p.Commit: self._commit,
            p.Rollback: self._rollback,
            p.SetOption: self._set_option,
            p.Prepare: self._prepare,
            p.Decide: self._decide,
            p.FinishPrepared: self._finish_prepared,
            p.Ping: self._ping,
        }

    # -- dispatch --------------------------------------------------------------

    @property
    def status(self) -> int:
        """The transaction status, with :data:`~shardsession.protocol.STATUS_WROTE`."""
        status = int(self.conn.info.transaction_status)
        return status | p.STATUS_WROTE if self.wrote else status

    @property
    def broken(self) -> bool:
        """Whether the connection to PostgreSQL is gone, or stuck in a command that
        did not finish (a ``COPY`` sent as a plain statement leaves it copying)."""
        return (
            self.conn.closed
            or self.conn.broken
            or self.conn.info.transaction_status == TransactionStatus.ACTIVE
        )

    def handle(self, request: p.Request) -> Any:
        """Run ``request`` and return its reply value (exceptions propagate)."""
        try:
            return self._handlers[type(request)](request)
        except psycopg.errors.QueryCanceled as err:
            raise self._deadlock_victim(err) from None

    def _deadlock_victim(self, err: psycopg.errors.QueryCanceled) -> psycopg.Error:
        """``DeadlockDetected`` if the deadlock detector cancelled this statement
        (it left a note for this backend and tag), else ``err`` itself."""
        if self.tag is None:
            return err
        try:  # this connection's transaction is aborted: read the note on another
            with psycopg.connect(**{**self._connect_kwargs, "connect_timeout": 10}) as side:
                pid = self.conn.info.backend_pid
                note = side.execute(VICTIM_NOTE_SQL, {"pid": pid, "tag": self.tag})
                row = note.fetchone()
        except psycopg.Error:
            return err
        if row is None:
            return err
        shards = ", ".join(repr(s) for s in row[0])
        return psycopg.errors.DeadlockDetected(
            f"deadlock detected across shards {shards}: this transaction waited for a lock "
            "whose holder was waiting for this transaction on another shard; shardsession's "
            "deadlock detector cancelled this transaction, the youngest of the cycle. Roll "
            "back and retry the transaction."
        )

    def connection_alive(self) -> bool:
        """Read what the server sent while idle; False when the connection is gone."""
        try:
            self.conn.pgconn.consume_input()
        except psycopg.OperationalError:
            return False
        return not self.conn.broken and self.conn.pgconn.status == psycopg.pq.ConnStatus.OK

    def name_shard(self, err: BaseException) -> BaseException:
        """Put the shard's name in front of a database error's message."""
        if isinstance(err, psycopg.Error) and err.args and isinstance(err.args[0], str):
            err.args = (f"[shard {self.shard!r}] {err.args[0]}", *err.args[1:])
        return err

    def close(self) -> None:
        """Roll back what is open and close the connection."""
        with contextlib.suppress(Exception):
            if self.conn.info.transaction_status != _IDLE:
                self.conn.execute("ROLLBACK")
        self.conn.close()

    # -- statements --------------------------------------------------------------

    def _begin_sql(self) -> str:
        text = "BEGIN"
        if self.isolation_level is not None:
            text += " ISOLATION LEVEL " + _ISOLATION_SQL[int(self.isolation_level)]
        if self.read_only is not None:
            text += " READ ONLY" if self.read_only else " READ WRITE"
        if self.deferrable is not None:
            text += " DEFERRABLE" if self.deferrable else " NOT DEFERRABLE"
        return text

    def _must_begin(self) -> bool:
        return not self.autocommit and self.conn.info.transaction_status == _IDLE

    def _queue_begin(self, tag: str | None) -> None:
        """Send BEGIN, and the transaction's tag (inside a pipeline: no round trip)."""
        self.conn.execute(self._begin_sql())
        if tag is not None:
            self.conn.execute(_TAG_SQL, (tag,))
        self.tag = tag

    def _begin(self, tag: str | None) -> None:
        """Begin a transaction now (one round trip)."""
        if tag is None:
            self.conn.execute(self._begin_sql())
            self.tag = None
            return
        with self.conn.pipeline():
            self._queue_begin(tag)

    def _run(self, cur: psycopg.Cursor[Any], req: p.Execute) -> None:
        if self._must_begin():
            # BEGIN and the statement travel together: one server round trip.
            with self.conn.pipeline():
                self._queue_begin(req.tag)
                cur.execute(req.sql, req.params, prepare=req.prepare)
        else:
            cur.execute(req.sql, req.params, prepare=req.prepare)
        self._note_write(cur)

    def _note_write(self, cur: psycopg.Cursor[Any]) -> None:
        if not self.wrote and not self.autocommit:
            tag = (cur.statusmessage or "").partition(" ")[0]
            if tag not in _READ_TAGS:
                self.wrote = True

    def _describe(self, cur: Any) -> tuple[tuple[Any, ...], ...] | None:
        """The DBAPI description of ``cur``'s result, read from libpq's result directly
        (what psycopg's ``cursor.description`` says, without building its objects)."""
        res = cur.pgresult
        if res is None:
            return None
        count = res.nfields
        if not count and res.status not in _ROW_STATUSES:
            return None
        encoding = self.conn.info.encoding  # the client's, which SET can change
        return tuple(
            (
                name.decode(encoding) if (name := res.fname(i)) else f"column_{i + 1}",
                res.ftype(i), None, None, None, None, None,
            )
            for i in range(count)
        )  # fmt: skip

    def _execute(self, req: p.Execute) -> p.Result:
        if req.cursor is not None:
            return self._open_cursor(req)
        cur = self._cursor  # one client-side cursor, reused: cheaper than one per request
        self._run(cur, req)
        description = self._describe(cur)
        rows = cur.fetchall() if description is not None else []
        return p.Result(description, rows, cur.rowcount)

    def _open_cursor(self, req: p.Execute) -> p.Result:
        if self.conn.info.transaction_status == _IDLE:
            self._begin(req.tag)  # a server-side cursor lives in a transaction
        cur = self.conn.cursor(name=req.cursor)
        cur.execute(req.sql, req.params)
        self._cursors[req.cursor] = cur  # type: ignore[index]
        return p.Result(self._describe(cur), [], cur.rowcount)

    def _fetch(self, req: p.Fetch) -> list[tuple[Any, ...]]:
        cur = self._cursors[req.cursor]
        return cur.fetchall() if req.size < 0 else cur.fetchmany(req.size)

    def _close_cursor(self, req: p.Close) -> None:
        cur = self._cursors.pop(req.cursor, None)
        if cur is not None and self.conn.info.transaction_status != _IDLE:
            with contextlib.suppress(psycopg.Error):
                cur.close()

    def _copy_plan(self, req: p.ExecuteMany) -> tuple[str, list[str]] | None:
        """``(COPY statement, parameter names)`` when ``req`` can run as COPY, else None."""
        if req.returning or len(req.params) < COPY_MIN_ROWS:
            return None
        found = _PLAIN_INSERT.fullmatch(req.sql.strip())
        if found is None:
            return None
        names = _PARAM.findall(found.group(3))
        if len(names) != len(found.group(2).split(",")):
            return None
        for row in req.params:
            if not isinstance(row, dict) or len(row) != len(names):
                return None
            if not all(type(row[n]) in _COPY_TYPES for n in names if n in row):
                return None
        return f"COPY {found.group(1)} ({found.group(2)}) FROM STDIN", names

    def _execute_many(self, req: p.ExecuteMany) -> p.Result:
        plan = self._copy_plan(req)
        if plan is not None:
            sql_text, names = plan
            rows = [[row[n] for n in names] for row in req.params]
            self.copies += 1
            return self._copy(p.Copy(sql_text, rows, req.tag))
        with self.conn.cursor() as cur:
            if self._must_begin():
                self._begin(req.tag)
            if len(req.params) == 1:
                cur.execute(req.sql, req.params[0])  # the usual single-row case: cheaper
                rows = cur.fetchall() if req.returning and cur.description else []
            else:
                cur.executemany(req.sql, req.params, returning=req.returning)
                rows = []
                if req.returning:
                    while True:
                        if cur.description is not None:
                            rows.extend(cur.fetchall())
                        if not cur.nextset():
                            break
            self._note_write(cur)
            return p.Result(self._describe(cur) if req.returning else None, rows, cur.rowcount)

    def _copy(self, req: p.Copy) -> p.Result:
        if self._must_begin():
            self._begin(req.tag)
        with self.conn.cursor() as cur, cur.copy(req.sql) as copy:
            for row in req.rows:
                copy.write_row(row)
        self.wrote = True
        return p.Result(None, [], len(req.rows))

    # -- transactions --------------------------------------------------------------

    def _end(self) -> None:
        self._cursors.clear()  # the server closes them with the transaction
        self.wrote = False
        # self.tag stays until the next BEGIN: a deferred trigger waiting for a lock
        # at COMMIT or PREPARE can still be a deadlock's victim

    def _commit(self, req: p.Commit) -> None:
        self._end()
        if self.conn.info.transaction_status != _IDLE:
            self.conn.execute("COMMIT")

    def _rollback(self, req: p.Rollback) -> None:
        self._end()
        if self.conn.info.transaction_status != _IDLE:
            self.conn.execute("ROLLBACK")

    def _set_option(self, req: p.SetOption) -> None:
        if req.name not in ("autocommit", "isolation_level", "read_only", "deferrable"):
            raise psycopg.ProgrammingError(f"unknown connection option {req.name!r}")
        if req.name == "autocommit" and self.conn.info.transaction_status != _IDLE:
            raise psycopg.ProgrammingError(
                "can't change 'autocommit' now: connection in transaction status INTRANS"
            )
        setattr(self, req.name, req.value)

    def _prepare(self, req: p.Prepare) -> None:
        self._end()
        status = self.conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            # PostgreSQL would answer PREPARE with a rollback, not an error: the other
            # shards would commit without this one's work.
            raise psycopg.errors.InFailedSqlTransaction(
                "current transaction is aborted (a statement failed earlier in it), so it "
                "cannot be prepared; roll back and retry the transaction"
            )
        if status == _IDLE:
            self.conn.execute(self._begin_sql())  # nothing ran: prepare an empty transaction
        cur = self.conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(req.gid)))
        if cur.statusmessage != "PREPARE TRANSACTION":
            raise psycopg.errors.InFailedSqlTransaction(
                f"PREPARE TRANSACTION was answered with {cur.statusmessage!r}: the "
                "transaction was rolled back on this shard; roll back and retry it"
            )

    def _decide(self, req: p.Decide) -> None:
        self._end()
        try:
            with self.conn.pipeline():
                if self.conn.info.transaction_status == _IDLE:
                    self.conn.execute(self._begin_sql())
                self.conn.execute(req.sql, req.params)
                # the decision must be durable when the commit returns, whatever the
                # server's or the role's synchronous_commit says
                self.conn.execute("SET LOCAL synchronous_commit TO on")
                self.conn.execute("COMMIT")
        except psycopg.Error:
            # Not decided: the transaction is still open (aborted) on this shard.  A
            # Decide ends the transaction either way -- the coordinator rolls back the
            # other shards only, and SQLAlchemy returns a connection whose commit
            # failed to the pool without a rollback -- so it is rolled back here.
            if not self.broken and self.conn.info.transaction_status != _IDLE:
                with contextlib.suppress(psycopg.Error):
                    self.conn.execute("ROLLBACK")
            raise

    def _finish_prepared(self, req: p.FinishPrepared) -> bool:
        if self.conn.info.transaction_status != _IDLE:
            self._rollback(p.Rollback())
        command = "COMMIT PREPARED {}" if req.commit else "ROLLBACK PREPARED {}"
        try:
            self.conn.execute(sql.SQL(command).format(sql.Literal(req.gid)))
        except psycopg.errors.UndefinedObject:
            return False
        return True

    def _ping(self, req: p.Ping) -> dict[str, Any]:
        if req.check_connection:
            self.conn.execute(";")
        return {
            "pid": os.getpid(),
            "backend_pid": self.conn.info.backend_pid,
            "server_version": self.conn.info.server_version,
            "collation": self.collation,
        }
