"""What the deadlock detector and the workers share: transaction tags and victim notes.

A lock cycle whose edges lie on several shards is invisible to every server:
each sees one lock wait, never the cycle.  To see it, every PostgreSQL backend
working for a session transaction carries that transaction's *tag* as its
``application_name`` (set with ``set_config(..., true)``, so it lasts exactly as
long as the transaction), and the detector
(:mod:`shardsession.coordinator.detector`) joins the waits of every shard by tag.

A tag is ``ss:<start>:<random>``: ``<start>`` is the transaction's start in
microseconds since the epoch (hex), which orders transactions by age, so every
detector, in any process, picks the same victim (the youngest of a cycle).

The detector cancels the victim's waiting statement with
``pg_cancel_backend()``.  PostgreSQL reports that as a plain ``QueryCanceled``;
so that the application sees a deadlock instead, the detector first writes a
note, ``(backend pid, tag, the statement's start, shards)``, into the shard's
``shardsession_deadlock_notes`` table, and a worker whose statement was
cancelled reads (and deletes) the note for its backend, tag and statement, and
reports ``DeadlockDetected``.  The statement's start (``query_start``, which
``pg_stat_activity`` keeps after the cancel) ties a note to the one statement
it is about: a note left behind, say because the cycle broke by itself just
before the cancel, can never relabel a later statement's cancel or timeout.
Several detectors noting the same victim write the same note.
"""

from __future__ import annotations

import os
import time

__all__ = [
    "TAG_PREFIX",
    "VICTIMS",
    "VICTIMS_DDL",
    "VICTIM_NOTE_SQL",
    "new_tag",
    "tag_start",
]

TAG_PREFIX = "ss:"
VICTIMS = "shardsession_deadlock_notes"
_VICTIMS_CREATE = (
    f"CREATE TABLE {VICTIMS} (backend_pid integer NOT NULL, tag text NOT NULL, "
    "query_start timestamptz, shards text[] NOT NULL, "
    "noted_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
    "PRIMARY KEY (backend_pid, tag, query_start))"
)
#: Creates the victim notes where they are missing (not ``IF NOT EXISTS``, for the
#: same reason as the commit log's, in :mod:`shardsession.twophase`).
VICTIMS_DDL = (
    f"DO $ss$ BEGIN IF to_regclass('{VICTIMS}') IS NULL THEN "
    f"EXECUTE $ddl${_VICTIMS_CREATE}$ddl$; END IF; "
    "EXCEPTION WHEN unique_violation OR duplicate_table OR duplicate_object THEN NULL; END $ss$"
)
#: Run by a worker whose statement was cancelled: the note about that statement, if
#: the detector left one.  Parameters: the backend pid, the transaction's tag.
VICTIM_NOTE_SQL = (
    f"DELETE FROM {VICTIMS} n WHERE n.backend_pid = %(pid)s AND n.tag = %(tag)s "
    "AND n.query_start = (SELECT query_start FROM pg_stat_activity WHERE pid = %(pid)s) "
    "RETURNING n.shards"
)


def new_tag() -> str:
    """A new transaction tag: ``ss:<start µs, hex>:<random, hex>``."""
    return f"{TAG_PREFIX}{time.time_ns() // 1000:x}:{os.urandom(4).hex()}"


def tag_start(tag: str) -> float | None:
    """When the tagged transaction started (seconds since the epoch); None if ``tag``
    is not one of ours."""
    if not tag.startswith(TAG_PREFIX):
        return None
    stamp, _, rest = tag[len(TAG_PREFIX) :].partition(":")
    try:
        return int(stamp, 16) / 1e6 if rest else None
    except ValueError:
        return None
