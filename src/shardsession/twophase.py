"""Two-phase commit names and the commit log, shared by the coordinator and recovery.

A global transaction id is ``<coordinator>-<sequence>-<commit point>``: the
coordinator id (host, pid and start time, or a configured name), a sequence
number, and the hex of the commit-point shard's name.  Each participant's
prepared transaction is named ``ss_<global id>_<shard>`` (gids are unique per
PostgreSQL *server*, and one server may hold several shard databases).

The decision is made durable on the commit-point shard: that shard does not
prepare; its own transaction inserts ``(gid, 'commit')`` into
``shardsession_commit_log`` and commits in one phase, and that commit *is* the
decision.  Recovery settles an in-doubt prepared transaction by inserting
``(gid, 'abort')`` on the commit point: if the coordinator's commit row is there
(or arrives first) the transaction commits, otherwise the abort row wins and the
coordinator's commit fails on the primary key, so the two can never disagree.
Why this and not a separate coordinator database: no extra server to run and
back up, one fewer PREPARE per transaction, and the decision lives exactly as
long as the data it decides about.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass

from shardsession.exc import TwoPhaseError

__all__ = [
    "COMMIT_LOG",
    "COMMIT_LOG_DDL",
    "DECISION_SQL",
    "GID_PREFIX",
    "MAX_SHARD_NAME",
    "ParsedGid",
    "new_global_id",
    "parse_gid",
    "participant_gid",
]

GID_PREFIX = "ss"
COMMIT_LOG = "shardsession_commit_log"
_COMMIT_LOG_CREATE = (
    f"CREATE TABLE {COMMIT_LOG} ("
    "gid text PRIMARY KEY, outcome text NOT NULL CHECK (outcome IN ('commit', 'abort')), "
    "participants text[] NOT NULL DEFAULT '{}', decided_at timestamptz NOT NULL DEFAULT now())"
)
#: Creates the commit log where it is missing.  Not ``CREATE TABLE IF NOT EXISTS``:
#: PostgreSQL checks the CREATE privilege on the schema before it looks for the
#: table, and an application's role often lacks it (the default since PostgreSQL 15).
#: Two sessions creating it at once: the second one's error is ignored.
COMMIT_LOG_DDL = (
    f"DO $ss$ BEGIN IF to_regclass('{COMMIT_LOG}') IS NULL THEN "
    f"EXECUTE $ddl${_COMMIT_LOG_CREATE}$ddl$; END IF; "
    "EXCEPTION WHEN unique_violation OR duplicate_table OR duplicate_object THEN NULL; END $ss$"
)
#: The commit decision, written by the commit point's own transaction just before it
#: commits.  ``decided_at`` is the clock at the insert, not the transaction's start
#: (``now()``): recovery prunes only decisions stamped before its listing, and every
#: participant of such a decision was prepared before the stamp.  Parameters:
#: the global id and the shard names of every prepared participant: recovery prunes
#: the record only once each shard named was listed and none still holds the
#: transaction prepared (an empty list keeps the record for good).
DECISION_SQL = (
    f"INSERT INTO {COMMIT_LOG} (gid, outcome, participants, decided_at) "
    "VALUES (%s, 'commit', %s, clock_timestamp())"
)
_MAX_GID = 200  # PostgreSQL's limit for a prepared transaction's name
#: longest shard name (bytes) a pool accepts: with the longest coordinator id and
#: sequence, ``ss_<coord>-<seq>-<hex(commit point)>_<shard>`` then stays within 200
MAX_SHARD_NAME = 48


def _coordinator_id() -> str:
    host = abs(hash(socket.gethostname())) % 36**4
    return f"{host:x}{os.getpid():x}{int(time.time()) % 36**5:x}"


_COORDINATOR = _coordinator_id()
_sequence = itertools.count(1)


def _renew_after_fork() -> None:
    # A forked child inherits the parent's id and sequence: both would hand out
    # the same global ids.  Its own pid makes its ids distinct.
    global _COORDINATOR, _sequence
    _COORDINATOR = _coordinator_id()
    _sequence = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)


def new_global_id(commit_point: str, coordinator: str | None = None) -> str:
    """A new global transaction id naming its commit-point shard."""
    coord = (coordinator or _COORDINATOR).replace("-", "").replace("_", "")[:20]
    return f"{coord}-{next(_sequence):x}-{commit_point.encode().hex()}"


def participant_gid(global_id: str, shard: str) -> str:
    """The prepared-transaction name of ``global_id`` on ``shard``."""
    gid = f"{GID_PREFIX}_{global_id}_{shard}"
    if len(gid) > _MAX_GID:
        raise TwoPhaseError(
            f"prepared transaction id {gid[:40]}... would be {len(gid)} characters, over "
            f"PostgreSQL's {_MAX_GID}; use shorter shard names (or a shorter coordinator name)"
        )
    return gid


@dataclass(frozen=True)
class ParsedGid:
    """A participant gid taken apart."""

    global_id: str
    commit_point: str
    shard: str


def parse_gid(gid: str) -> ParsedGid | None:
    """Take a participant gid apart; None when it is not one of ours."""
    if not gid.startswith(GID_PREFIX + "_"):
        return None
    rest = gid[len(GID_PREFIX) + 1 :]
    global_id, sep, shard = rest.partition("_")
    parts = global_id.split("-")
    if not sep or len(parts) != 3:
        return None
    try:
        commit_point = bytes.fromhex(parts[2]).decode()
    except ValueError:
        return None
    return ParsedGid(global_id, commit_point, shard)
