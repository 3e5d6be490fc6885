"""The History named tuple."""

from __future__ import annotations

from shardsession.orm import History
from shardsession.orm.history import HISTORY_BLANK


def test_is_a_named_tuple_of_three_fields() -> None:
    h = History([1], [2], [3])
    assert h == ([1], [2], [3])
    assert (h.added, h.unchanged, h.deleted) == ([1], [2], [3])
    added, unchanged, deleted = h
    assert (added, unchanged, deleted) == ([1], [2], [3])


def test_empty_and_has_changes() -> None:
    assert History((), (), ()).empty()
    assert not History((), (), ()).has_changes()
    assert not History((), [1], ()).empty()
    assert not History((), [1], ()).has_changes()
    assert History([1], (), ()).has_changes()
    assert History((), (), [1]).has_changes()
    assert not History((), (), [1]).empty()


def test_sum_non_added_non_deleted() -> None:
    h = History([1], [2], [3])
    assert h.sum() == [1, 2, 3]
    assert h.non_deleted() == [1, 2]
    assert h.non_added() == [2, 3]


def test_truthiness_follows_blank() -> None:
    assert not HISTORY_BLANK
    assert History([1], (), ())
    assert History((), [None], ())


def test_from_scalar_attribute_rules() -> None:
    class S:
        committed_state: dict = {}

    s = S()
    s.committed_state = {}
    assert History.from_scalar_attribute(s, "x", 5) == ((), [5], ())
    s.committed_state = {"x": 5}
    assert History.from_scalar_attribute(s, "x", 5) == ((), [5], ())
    assert History.from_scalar_attribute(s, "x", 6) == ([6], (), [5])
