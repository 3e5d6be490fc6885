"""List collections: history of every mutation and back_populates in both directions.

The expected results were obtained by running the same steps with SQLAlchemy 2.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shardsession import exc
from shardsession.orm import InstrumentedList, get_history, inspect, set_committed_value
from tests.orm.models import Address, Node, User
from tests.orm.support import commit


def loaded_user() -> tuple[User, list[Address]]:
    """A user whose collection holds a1..a3 as loaded; a4 is unrelated."""
    u = User(id=1, tenant="t")
    addrs = [Address(id=i, email=f"e{i}") for i in range(1, 5)]
    set_committed_value(u, "addresses", addrs[:3])
    for a in addrs[:3]:
        set_committed_value(a, "user", u)
    commit(u, *addrs)
    return u, addrs


def ids(values: Any) -> list[int]:
    return [v.id for v in values]


def hist_ids(obj: Any, key: str) -> tuple[list[int], list[int], list[int]]:
    h = get_history(obj, key)
    return ids(h.added), ids(h.unchanged), ids(h.deleted)


def _del_slice(lst: list) -> None:
    del lst[0:2]


def _set_slice(lst: list, a4: Address) -> None:
    lst[0:2] = [a4]


def _setitem(lst: list, a4: Address) -> None:
    lst[0] = a4


def _iadd(u: User, a4: Address) -> None:
    u.addresses += [a4]


# (name, mutation(u, a), expected collection history, ids whose .user became None,
#  whether a4.user became u)
CASES: list[tuple[str, Callable[[User, list[Address]], Any], tuple, list[int], bool]] = [
    ("append", lambda u, a: u.addresses.append(a[3]), ([4], [1, 2, 3], []), [], True),
    ("remove", lambda u, a: u.addresses.remove(a[0]), ([], [2, 3], [1]), [1], False),
    ("pop", lambda u, a: u.addresses.pop(), ([], [1, 2], [3]), [3], False),
    ("pop0", lambda u, a: u.addresses.pop(0), ([], [2, 3], [1]), [1], False),
    ("del_index", lambda u, a: u.addresses.__delitem__(1), ([], [1, 3], [2]), [2], False),
    ("del_slice", lambda u, a: _del_slice(u.addresses), ([], [3], [1, 2]), [1, 2], False),
    ("set_slice", lambda u, a: _set_slice(u.addresses, a[3]), ([4], [3], [1, 2]), [1, 2], True),
    ("setitem", lambda u, a: _setitem(u.addresses, a[3]), ([4], [2, 3], [1]), [1], True),
    (
        "replace",
        lambda u, a: setattr(u, "addresses", [a[2], a[3]]),
        ([4], [3], [1, 2]),
        [1, 2],
        True,
    ),
    ("clear", lambda u, a: u.addresses.clear(), ([], [], [1, 2, 3]), [1, 2, 3], False),
    ("insert", lambda u, a: u.addresses.insert(0, a[3]), ([4], [1, 2, 3], []), [], True),
    ("extend", lambda u, a: u.addresses.extend([a[3]]), ([4], [1, 2, 3], []), [], True),
    ("iadd", lambda u, a: _iadd(u, a[3]), ([4], [1, 2, 3], []), [], True),
    ("del_attr", lambda u, a: delattr(u, "addresses"), ([], [], [1, 2, 3]), [1, 2, 3], False),
]


@pytest.mark.parametrize(
    ("mutate", "expected", "orphaned", "a4_linked"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_collection_mutation_history_and_backrefs(
    mutate: Callable, expected: tuple, orphaned: list[int], a4_linked: bool
) -> None:
    u, addrs = loaded_user()
    mutate(u, addrs)
    assert hist_ids(u, "addresses") == expected
    for a in addrs[:3]:
        if a.id in orphaned:
            assert a.user is None
            assert get_history(a, "user") == ([None], (), [u])
        else:
            assert a.user is u
            assert get_history(a, "user") == ((), [u], ())
    if a4_linked:
        assert addrs[3].user is u
        assert get_history(addrs[3], "user") == ([u], (), ())
    else:
        assert get_history(addrs[3], "user") == ((), (), ())
    assert inspect(u).modified


def test_reorder_is_not_a_change() -> None:
    u, _ = loaded_user()
    u.addresses.reverse()
    assert hist_ids(u, "addresses") == ([], [3, 2, 1], [])
    u.addresses.sort(key=lambda a: a.id)
    assert not get_history(u, "addresses").has_changes()


def test_remove_missing_member_raises_and_changes_nothing() -> None:
    u, addrs = loaded_user()
    with pytest.raises(ValueError):
        u.addresses.remove(addrs[3])
    assert u.addresses == addrs[:3]
    assert hist_ids(u, "addresses") == ([], [1, 2, 3], [])
    assert get_history(addrs[3], "user") == ((), (), ())


def test_extended_slice_size_mismatch_raises() -> None:
    u, addrs = loaded_user()
    with pytest.raises(ValueError, match="extended slice"):
        u.addresses[::2] = [addrs[3]]


def test_transient_collection_is_created_on_first_mutation() -> None:
    u = User()
    lst = u.addresses
    assert isinstance(lst, InstrumentedList)
    assert "addresses" not in u.__dict__
    assert get_history(u, "addresses") == ((), [], ())
    a = Address()
    lst.append(a)
    assert u.__dict__["addresses"] is lst
    assert get_history(u, "addresses") == ([a], [], [])
    assert a.user is u


def test_history_after_snapshot_then_append_and_remove() -> None:
    u = User()
    a1, a2 = Address(id=1), Address(id=2)
    u.addresses.append(a1)
    commit(u)
    assert hist_ids(u, "addresses") == ([], [1], [])
    u.addresses.append(a2)
    u.addresses.remove(a1)
    assert hist_ids(u, "addresses") == ([2], [], [1])


def test_append_then_remove_same_object_is_no_change() -> None:
    u, addrs = loaded_user()
    u.addresses.append(addrs[3])
    u.addresses.remove(addrs[3])
    assert hist_ids(u, "addresses") == ([], [1, 2, 3], [])


def test_duplicate_member_removal_keeps_back_reference() -> None:
    u, addrs = loaded_user()
    u.addresses.append(addrs[0])
    u.addresses.remove(addrs[0])
    # addrs[0] is still a member once: it keeps pointing at u.
    assert addrs[0].user is u
    assert hist_ids(u, "addresses") == ([], [2, 3, 1], [])


def test_setting_child_parent_appends_to_loaded_collection() -> None:
    u, addrs = loaded_user()
    addrs[3].user = u
    assert u.addresses[-1] is addrs[3]
    assert hist_ids(u, "addresses") == ([4], [1, 2, 3], [])


def test_moving_child_between_parents_updates_both_collections() -> None:
    u, addrs = loaded_user()
    other = User(id=2, tenant="t")
    addrs[0].user = other
    assert ids(u.addresses) == [2, 3]
    assert other.addresses == [addrs[0]]
    assert hist_ids(u, "addresses") == ([], [2, 3], [1])
    assert get_history(addrs[0], "user") == ([other], (), [u])
    # and the reverse: appending to another parent's collection moves it back
    u.addresses.append(addrs[0])
    assert other.addresses == []
    assert addrs[0].user is u


def test_setting_child_parent_to_none_removes_it() -> None:
    u, addrs = loaded_user()
    addrs[1].user = None
    assert ids(u.addresses) == [1, 3]
    del addrs[2].user
    assert ids(u.addresses) == [1]
    assert get_history(addrs[2], "user") == ((), (), [u])


def test_replacing_collection_with_itself_is_no_change() -> None:
    u, _ = loaded_user()
    u.addresses = u.addresses
    assert not inspect(u).modified


def test_old_collection_is_detached_after_replacement() -> None:
    u, addrs = loaded_user()
    old = u.addresses
    u.addresses = [addrs[3]]
    old.append(addrs[0])
    # Mutating the discarded list no longer affects the object.
    assert u.addresses == [addrs[3]]
    assert addrs[0].user is None


def test_collection_rejects_non_lists_and_unmapped_members() -> None:
    u = User()
    with pytest.raises(TypeError):
        u.addresses = "abc"
    with pytest.raises(TypeError):
        u.addresses.append(object())
    with pytest.raises(TypeError):
        Address().user = 5


def test_self_referential_back_populates() -> None:
    root, child = Node(id=1), Node(id=2)
    child.parent = root
    assert root.children == [child]
    root.children.remove(child)
    assert child.parent is None
    other = Node(id=3)
    root.children.append(other)
    assert other.parent is root


def test_hasparent_tracks_membership_for_orphan_detection() -> None:
    u, addrs = loaded_user()
    impl = inspect(User).attrs.addresses.class_attribute.impl
    assert impl.hasparent(inspect(addrs[0]))
    u.addresses.remove(addrs[0])
    assert not impl.hasparent(inspect(addrs[0]))
    # never-seen objects get the optimistic answer
    fresh = Address()
    assert impl.hasparent(inspect(fresh), optimistic=True)
    assert not impl.hasparent(inspect(fresh), optimistic=False)


def test_pickle_plain_instrumented_list() -> None:
    import pickle

    lst = InstrumentedList([1, 2])
    assert pickle.loads(pickle.dumps(lst)) == [1, 2]


def test_unknown_relationship_value_type_error_message() -> None:
    with pytest.raises(exc.InvalidRequestError):
        User.addresses.__clause_element__()
