"""A program that links two objects placed on different shards gets a clear CrossShardError.

``crossshard/association_items_by_description.py`` is SQLAlchemy's
examples/association/basic_association.py with ``__shard_key__ = "description"`` on
``Item``: the items spread over the shards while the order goes to the first shard, and
each ``OrderItem`` links the order to an item.  On plain SQLAlchemy it runs; on
shardsession its commit must fail with :class:`shardsession.exc.CrossShardError`
whose message names the fix, not with a database error or a silently broken link.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.conftest import CompatDatabases
from tests.compat.test_programs import run_program, sharded_api_available

PROGRAM = Path(__file__).parent / "crossshard" / "association_items_by_description.py"


@pytest.mark.compat
def test_link_across_shards_is_refused(compat_databases: CompatDatabases, tmp_path: Path) -> None:
    ref = run_program(PROGRAM, "reference", compat_databases, tmp_path)
    assert ref.returncode == 0, ref.describe()
    assert "SA Mug" in ref.stdout and "john smith" in ref.stdout, ref.describe()

    if not sharded_api_available():
        pytest.skip("shardsession.create_shards / Session / sessionmaker are not importable yet")

    got = run_program(PROGRAM, "sharded", compat_databases, tmp_path)
    assert got.returncode != 0, "the program linked rows of two shards without an error\n" + (
        got.describe()
    )
    last = got.stderr.strip().splitlines()[-1]
    error, _, message = last.partition(": ")
    assert error == "shardsession.exc.CrossShardError", got.describe()
    # the message names the objects, their shards and what to do about it
    assert "OrderItem" in message or "orderitem" in message, message
    assert "__shard_key__" in message, message
    # nothing of the failed transaction was written (the catalog commit before it was)
    assert not [row for row in got.rows if row.startswith(("order:", "orderitem:"))], got.rows
