"""The commit-point two-phase commit through SQLAlchemy's twophase session."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from shardsession.coordinator.routing import shard_for_key
from sqlalchemy import select, text

import shardsession as ss
from shardsession.twophase import COMMIT_LOG

from .models import Account


def _pair(shards: ss.ShardSet) -> tuple[int, int]:
    names = list(shards)
    a = 1
    b = next(i for i in range(2, 100) if shard_for_key(names, i) != shard_for_key(names, a))
    return a, b


def _scalar(direct: dict[str, Any], shard: str, sql: str) -> Any:
    with direct[shard].connect() as conn:
        return conn.execute(text(sql)).scalar()


def _prepared(direct: dict[str, Any]) -> int:
    return sum(
        _scalar(direct, s, "SELECT count(*) FROM pg_prepared_xacts "
                "WHERE database = current_database()")
        for s in direct
    )  # fmt: skip


def _decisions(direct: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    out = []
    for engine in direct.values():
        with engine.connect() as conn:
            out += [tuple(r) for r in conn.execute(
                text(f"SELECT gid, outcome, participants FROM {COMMIT_LOG}"))]  # fmt: skip
    return out


def test_two_shards_written_commit_with_a_decision(session: ss.Session, shards: ss.ShardSet,
                                                   direct: dict[str, Any]) -> None:  # fmt: skip
    a, b = _pair(shards)
    session.add_all([Account(id=a, balance=100), Account(id=b, balance=100)])
    session.commit()
    decisions = _decisions(direct)
    assert len(decisions) == 1 and decisions[0][1] == "commit"
    assert sorted(decisions[0][2]) == sorted({shard_for_key(list(shards), v) for v in (a, b)})
    x, y = session.get(Account, a), session.get(Account, b)
    x.balance -= 30
    y.balance += 30
    session.commit()
    assert (session.get(Account, a).balance, session.get(Account, b).balance) == (70, 130)
    assert _prepared(direct) == 0
    assert len(_decisions(direct)) == 2


def test_one_shard_written_commits_in_one_phase(session: ss.Session, shards: ss.ShardSet,
                                                direct: dict[str, Any]) -> None:  # fmt: skip
    a, b = _pair(shards)
    session.add_all([Account(id=a, balance=5), Account(id=b, balance=5)])
    session.commit()
    before = len(_decisions(direct))
    session.get(Account, b)  # a read on another shard
    session.get(Account, a).balance = 6
    session.commit()
    assert len(_decisions(direct)) == before  # no decision row: one phase
    assert session.get(Account, a).balance == 6


def test_failed_prepare_rolls_back_every_shard(session: ss.Session, shards: ss.ShardSet,
                                               direct: dict[str, Any]) -> None:  # fmt: skip
    # A deferred constraint is checked at PREPARE TRANSACTION on the non-commit-point
    # shard: the whole transaction must roll back, on the commit point too.
    a, b = _pair(shards)
    names = list(shards)
    point = min(shard_for_key(names, a), shard_for_key(names, b))
    other_id = b if shard_for_key(names, a) == point else a
    other = shard_for_key(names, other_id)
    with direct[other].begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS uniq_later (v int UNIQUE "
                          "DEFERRABLE INITIALLY DEFERRED)"))  # fmt: skip
    try:
        session.add_all([Account(id=a, balance=1), Account(id=b, balance=1)])
        session.execute(text("INSERT INTO uniq_later VALUES (1), (1)"),
                        bind_arguments={"shard_id": other})  # fmt: skip
        with pytest.raises(ss.exc.TwoPhaseError, match="rolled back"):
            session.commit()
        session.rollback()
        assert session.get(Account, a) is None and session.get(Account, b) is None
        assert _prepared(direct) == 0
        assert all(o != "commit" for _, o, _ in _decisions(direct))
    finally:
        with direct[other].begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS uniq_later"))


def test_twophase_off_commits_each_shard_alone(shards: ss.ShardSet, clean_shards: Any,
                                               direct: dict[str, Any]) -> None:  # fmt: skip
    a, b = _pair(shards)
    with ss.Session(shards, twophase=False) as s:
        s.add_all([Account(id=a, balance=1), Account(id=b, balance=1)])
        s.commit()
        assert s.get(Account, b).balance == 1
    assert _decisions(direct) == []


def test_engine_level_two_phase_through_the_dbapi(shards: ss.ShardSet, clean_shards: Any,
                                                  direct: dict[str, Any]) -> None:  # fmt: skip
    engine = shards["s1"]
    with engine.connect() as conn:
        tx = conn.begin_twophase()
        conn.execute(text("INSERT INTO co_account (id, balance) VALUES (1, 9)"))
        tx.prepare()
        assert _prepared(direct) == 1
        tx.commit()
    with engine.connect() as conn:
        tx = conn.begin_twophase()
        conn.execute(text("INSERT INTO co_account (id, balance) VALUES (2, 9)"))
        tx.prepare()
        tx.rollback()
    assert _prepared(direct) == 0
    assert _scalar(direct, "s1", "SELECT string_agg(id::text, ',') FROM co_account") == "1"


def test_prepare_refused_for_want_of_prepared_slots_is_a_twophase_error(tmp_path: Any) -> None:
    # A server of its own whose one prepared-transaction slot is taken.
    from shardsession.embedded import LocalCluster

    with LocalCluster(shards=2, path=tmp_path / "c", durable=False,
                      settings={"max_prepared_transactions": 1}) as cluster:  # fmt: skip
        dsns = cluster.start()
        with ss.create_shards(dsns, recovery_interval=None) as shards:
            Account.metadata.create_all(shards, tables=[Account.__table__])
            a, b = _pair(shards)
            with psycopg.connect(dsns["s0"], autocommit=True) as holder:
                holder.execute("BEGIN")
                holder.execute("PREPARE TRANSACTION 'slot_taken'")
                try:
                    with ss.Session(shards) as s:
                        s.add_all([Account(id=a, balance=1), Account(id=b, balance=1)])
                        refused = pytest.raises(ss.exc.TwoPhaseError, match="max_prepared_trans")
                        with refused as caught:
                            s.commit()
                        assert "nothing was committed" in str(caught.value)
                        s.rollback()
                        assert s.get(Account, a) is None and s.get(Account, b) is None
                finally:
                    holder.execute("ROLLBACK PREPARED 'slot_taken'")


def test_every_prepare_and_commit_prepared_is_sent_before_any_reply_is_read(
    session: ss.Session, shards: ss.ShardSet, direct: dict[str, Any]
) -> None:
    # Three writers: two PREPAREs and two COMMIT PREPAREDs (the commit point neither),
    # each pair sent to the workers before either reply is read, so they run together.
    from unittest import mock

    from shardsession.coordinator import dbapi

    from shardsession import protocol as p

    names = list(shards)
    keys: dict[str, int] = {}
    for i in range(1, 200):
        keys.setdefault(shard_for_key(names, i), i)
        if len(keys) == 3:
            break
    session.add_all([Account(id=i, balance=1) for i in keys.values()])
    events: list[tuple[str, str]] = []
    send, recv = dbapi.Connection.send, dbapi.Connection.recv

    def spy_send(conn: Any, request: Any) -> None:
        events.append(("send", type(request).__name__))
        send(conn, request)

    def spy_recv(conn: Any) -> Any:
        try:
            return recv(conn)
        finally:
            events.append(("recv", ""))

    with mock.patch.object(dbapi.Connection, "send", spy_send), \
            mock.patch.object(dbapi.Connection, "recv", spy_recv):  # fmt: skip
        session.commit()
    assert _prepared(direct) == 0
    for name in (p.Prepare.__name__, p.FinishPrepared.__name__):
        at = [i for i, e in enumerate(events) if e == ("send", name)]
        assert len(at) == 2, (name, events)
        assert all(e[0] == "send" for e in events[at[0] : at[1] + 1]), (name, events)
    with ss.Session(shards) as s:
        assert sorted(a.id for a in s.scalars(select(Account))) == sorted(keys.values())


def test_a_participant_whose_transaction_failed_rolls_every_shard_back(
    session: ss.Session, shards: ss.ShardSet, direct: dict[str, Any]
) -> None:
    # PostgreSQL answers PREPARE TRANSACTION of an aborted transaction with a rollback,
    # not an error: the commit must fail as a whole, not commit the other shards.
    from sqlalchemy.exc import DBAPIError

    from shardsession.exc import TwoPhaseError

    a, b = _pair(shards)
    names = list(shards)
    for failing in (shard_for_key(names, a), shard_for_key(names, b)):
        with ss.Session(shards) as s:  # two writers; the failed one is either of them
            s.add_all([Account(id=a, balance=1), Account(id=b, balance=2)])
            s.flush()
            with pytest.raises(DBAPIError):
                s.execute(text("SELECT 1/0"), bind_arguments={"shard_id": failing})
            with pytest.raises(TwoPhaseError, match=r"aborted|could not commit"):
                s.commit()
    session.rollback()
    assert _prepared(direct) == 0
    with ss.Session(shards) as s:
        assert list(s.scalars(select(Account.id))) == []
