"""The concurrency workload's plan: each thread's own accounts, taken from every shard."""

from __future__ import annotations

import pytest

from bench.concurrency import plan
from bench.model import Layout

LAYOUT = Layout({f"s{i}": f"dbname=unused_s{i}" for i in range(4)})


def test_each_thread_has_accounts_of_its_own_on_every_shard() -> None:
    work = plan(LAYOUT, rows=2000, threads=16, ops=1000)
    assert len(work) == 16
    assert all(len(w) == 1000 // 16 for w in work)
    owners: dict[int, int] = {}
    for k, todo in enumerate(work):
        assert {shard for _, shard in todo} == set(LAYOUT.shard_ids)
        for account, shard in todo:
            assert LAYOUT.shard_of(account) == shard
            assert owners.setdefault(account, k) == k, f"account {account} in two threads"
    assert plan(LAYOUT, rows=2000, threads=16, ops=1000) == work  # seeded


def test_too_few_rows_for_the_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="raise --rows or lower --threads"):
        plan(LAYOUT, rows=20, threads=16, ops=100)
