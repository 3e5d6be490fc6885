"""``Session.begin_nested()``: SAVEPOINTs on every shard the nested block uses.

The pattern SQLAlchemy documents -- try an insert inside ``begin_nested()``,
catch the ``IntegrityError``, carry on -- must keep the outer transaction's work
and leave it usable, on one shard and across several.
"""

from __future__ import annotations

from typing import Any

import pytest
from shardsession.coordinator.routing import shard_for_key
from sqlalchemy import select, text, update
from sqlalchemy.exc import DataError, IntegrityError

import shardsession as ss

from .models import Account


def _ids_on_distinct_shards(shards: ss.ShardSet, count: int) -> list[int]:
    names, seen, ids = list(shards), set(), []
    for i in range(1, 1000):
        shard = shard_for_key(names, i)
        if shard not in seen:
            seen.add(shard)
            ids.append(i)
        if len(ids) == count:
            return ids
    raise AssertionError("not enough shards")


def _same_shard_as(shards: ss.ShardSet, key: int) -> int:
    names = list(shards)
    return next(i for i in range(key + 1, 10_000)
                if shard_for_key(names, i) == shard_for_key(names, key))  # fmt: skip


def _balances(direct: dict[str, Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for engine in direct.values():
        with engine.connect() as conn:
            out.update({i: b for i, b in conn.execute(text("SELECT id, balance FROM co_account"))})
    return out


def test_failed_insert_in_savepoint_keeps_the_outer_work_on_one_shard(
    session: ss.Session, shards: ss.ShardSet, direct: dict[str, Any]
) -> None:
    a = 1
    b = _same_shard_as(shards, a)
    session.add(Account(id=a, balance=1))
    session.commit()
    session.add(Account(id=b, balance=5))  # outer work, flushed by begin_nested()
    with pytest.raises(IntegrityError):
        with session.begin_nested():
            session.add(Account(id=a, balance=2))  # duplicate key
    session.commit()
    assert _balances(direct) == {a: 1, b: 5}


def test_savepoints_on_several_shards_roll_back_together(
    session: ss.Session, shards: ss.ShardSet, direct: dict[str, Any]
) -> None:
    a, b, c = _ids_on_distinct_shards(shards, 3)
    session.add_all([Account(id=a, balance=10), Account(id=b, balance=20)])
    session.commit()
    session.get(Account, a).balance = 11  # outer work on two shards
    session.get(Account, b).balance = 21
    try:
        with session.begin_nested():
            session.add(Account(id=c, balance=30))  # a third shard joins inside
            session.get(Account, a).balance = 99
            session.add(Account(id=b, balance=0))  # duplicate: the flush fails
            session.flush()
    except IntegrityError:
        pass
    # rolled back to the savepoint everywhere: a's inner change and c are gone
    assert session.get(Account, a).balance == 11
    assert session.get(Account, c) is None
    session.add(Account(id=c, balance=33))  # and the outer transaction goes on
    session.commit()
    assert _balances(direct) == {a: 11, b: 21, c: 33}
    assert all(
        conn.execute(text("SELECT count(*) FROM pg_prepared_xacts "
                          "WHERE database = current_database()")).scalar() == 0
        for conn in (e.connect() for e in direct.values())
    )  # fmt: skip


def test_failed_statement_on_one_shard_of_a_scatter_rolls_back_the_savepoint(
    session: ss.Session, shards: ss.ShardSet, direct: dict[str, Any]
) -> None:
    ids = _ids_on_distinct_shards(shards, len(shards))
    session.add_all([Account(id=i, balance=100) for i in ids])
    session.commit()
    session.get(Account, ids[1]).balance = 7
    session.flush()
    with pytest.raises(DataError, match="division by zero"):
        with session.begin_nested():
            session.execute(update(Account).where(Account.id == ids[0]).values(balance=1))
            # every shard runs it; only the shard of ids[1] divides by zero
            session.execute(update(Account).values(
                balance=Account.balance + 70 / (Account.balance - 7)))  # fmt: skip
    got = {i: b for i, b in session.execute(select(Account.id, Account.balance))}
    assert got == {**{i: 100 for i in ids}, ids[1]: 7}
    session.commit()
    assert _balances(direct) == got


def test_released_savepoint_commits_with_the_outer_transaction(
    session: ss.Session, shards: ss.ShardSet, direct: dict[str, Any]
) -> None:
    a, b = _ids_on_distinct_shards(shards, 2)
    session.add(Account(id=a, balance=1))
    with session.begin_nested():
        session.add(Account(id=b, balance=2))
    session.commit()
    assert _balances(direct) == {a: 1, b: 2}
