"""A program that links two objects placed on different shards gets a clear CrossShardError.

The program is ``programs/association_basic.py`` (SQLAlchemy's
examples/association/basic_association.py) with ``__shard_key__ = "description"``
added to ``Item`` when the test runs: the items spread over the shards while the
order goes to the first shard, and each ``OrderItem`` links the order to an item.  On
plain SQLAlchemy it runs; on shardsession its commit must fail with
:class:`shardsession.exc.CrossShardError` whose message names the fix, not with a
database error or a silently broken link.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.conftest import CompatDatabases
from tests.compat.test_programs import run_program, sharded_api_available

BASE_PROGRAM = Path(__file__).parent / "programs" / "association_basic.py"
ITEM = 'class Item(Base):\n    __tablename__ = "item"\n'


def _keyed_by_description(folder: Path) -> Path:
    source = BASE_PROGRAM.read_text()
    assert source.count(ITEM) == 1, "association_basic.py no longer defines Item as expected"
    program = folder / "association_items_by_description.py"
    program.write_text(source.replace(ITEM, ITEM + '    __shard_key__ = "description"\n'))
    return program


@pytest.mark.compat
def test_link_across_shards_is_refused(compat_databases: CompatDatabases, tmp_path: Path) -> None:
    program = _keyed_by_description(tmp_path)
    ref = run_program(program, "reference", compat_databases, tmp_path)
    assert ref.returncode == 0, ref.describe()
    assert "SA Mug" in ref.stdout and "john smith" in ref.stdout, ref.describe()

    if not sharded_api_available():
        pytest.skip("shardsession.create_shards / Session / sessionmaker are not importable yet")

    got = run_program(program, "sharded", compat_databases, tmp_path)
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
