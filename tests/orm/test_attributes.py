"""Scalar attribute tracking and the attribute utility functions."""

from __future__ import annotations

import pytest

from shardsession import exc
from shardsession.orm import (
    PassiveFlag,
    attributes,
    del_attribute,
    flag_dirty,
    flag_modified,
    get_attribute,
    get_history,
    init_collection,
    inspect,
    instance_state,
    instrumentation,
    is_instrumented,
    object_state,
    set_attribute,
    set_committed_value,
    util,
    was_deleted,
)
from shardsession.orm.base import NO_VALUE
from tests.orm.models import Address, User
from tests.orm.support import commit


def test_seed_module_homes() -> None:
    for name in (
        "del_attribute",
        "get_attribute",
        "get_history",
        "init_collection",
        "flag_modified",
        "flag_dirty",
        "instance_state",
        "set_attribute",
        "set_committed_value",
        "History",
    ):
        assert hasattr(attributes, name), name
    assert util.object_state is object_state
    assert util.was_deleted is was_deleted
    assert instrumentation.is_instrumented is is_instrumented


def test_passive_flag_values_match_sqlalchemy() -> None:
    assert PassiveFlag.PASSIVE_OFF == 31
    assert PassiveFlag.PASSIVE_RETURN_NO_VALUE == 23
    assert PassiveFlag.PASSIVE_NO_INITIALIZE == 22
    assert PassiveFlag.PASSIVE_NO_FETCH == 29
    assert PassiveFlag.PASSIVE_ONLY_PERSISTENT == 15


def test_transient_unset_attribute_has_blank_history() -> None:
    u = User()
    assert get_history(u, "name") == ((), (), ())
    assert u.name is None
    # Reading the default does not store it.
    assert "name" not in u.__dict__


def test_set_commit_set_again() -> None:
    u = User()
    u.name = "a"
    assert get_history(u, "name") == (["a"], (), ())
    commit(u)
    assert get_history(u, "name") == ((), ["a"], ())
    u.name = "b"
    assert get_history(u, "name") == (["b"], (), ["a"])
    u.name = "c"
    # The committed value stays the first one.
    assert get_history(u, "name") == (["c"], (), ["a"])


def test_setting_back_to_committed_value_is_no_change() -> None:
    u = User()
    u.name = "q"
    commit(u)
    u.name = "r"
    u.name = "q"
    assert get_history(u, "name") == ((), ["q"], ())
    assert not get_history(u, "name").has_changes()


def test_set_none_on_transient() -> None:
    u = User()
    u.name = None
    assert get_history(u, "name") == ([None], (), ())


def test_delete_after_commit() -> None:
    u = User()
    u.name = "a"
    commit(u)
    del u.name
    assert get_history(u, "name") == ((), (), ["a"])
    assert "name" not in u.__dict__
    assert u.name is None
    u.name = "c"
    assert get_history(u, "name") == (["c"], (), ["a"])


def test_delete_on_transient_without_value_raises() -> None:
    u = User()
    with pytest.raises(AttributeError, match="does not have a value"):
        del u.name


def test_set_then_delete_on_transient_reports_none_added() -> None:
    u = User()
    u.name = "a"
    del u.name
    assert get_history(u, "name") == ([None], (), ())


def test_direct_dict_assignment_is_not_tracked() -> None:
    u = User()
    u.__dict__["name"] = "zz"
    assert get_history(u, "name") == ((), ["zz"], ())
    assert not inspect(u).modified


def test_in_place_mutation_needs_flag_modified() -> None:
    u = User()
    set_committed_value(u, "data", {"a": 1})
    u.data["a"] = 2
    assert get_history(u, "data") == ((), [{"a": 2}], ())
    assert not inspect(u).modified
    flag_modified(u, "data")
    assert get_history(u, "data") == ([{"a": 2}], (), ())
    assert inspect(u).modified
    assert "data" in inspect(u).committed_state


def test_flag_modified_forgets_the_previous_value() -> None:
    u = User()
    u.name = "a"
    commit(u)
    u.name = "b"
    flag_modified(u, "name")
    assert get_history(u, "name") == (["b"], (), ())


def test_flag_modified_on_unloaded_attribute_raises() -> None:
    u = User()
    with pytest.raises(exc.InvalidRequestError, match="not present in the object state"):
        flag_modified(u, "name")
    assert not inspect(u).modified


def test_flag_modified_on_expired_attribute_raises(session: object) -> None:
    u = User(id=1, name="a")
    commit(u)
    inspect(u)._expire(["name"])
    with pytest.raises(exc.InvalidRequestError):
        flag_modified(u, "name")


def test_flag_dirty_marks_modified_without_history() -> None:
    u = User(name="a")
    commit(u)
    assert not inspect(u).modified
    flag_dirty(u)
    assert inspect(u).modified
    assert inspect(u).committed_state == {}
    assert get_history(u, "name") == ((), ["a"], ())


def test_set_committed_value_clears_history() -> None:
    u = User()
    u.name = "a"
    set_committed_value(u, "name", "b")
    assert u.name == "b"
    assert get_history(u, "name") == ((), ["b"], ())


def test_set_committed_value_none_on_collection_gives_empty_list() -> None:
    u = User()
    set_committed_value(u, "addresses", None)
    assert u.addresses == []
    assert "addresses" in u.__dict__
    assert get_history(u, "addresses") == ((), [], ())


def test_set_committed_value_on_collection() -> None:
    u = User()
    a1, a2 = Address(), Address()
    set_committed_value(u, "addresses", [a1, a2])
    assert u.addresses == [a1, a2]
    assert get_history(u, "addresses") == ((), [a1, a2], ())


def test_set_get_del_attribute_functions() -> None:
    u = User()
    set_attribute(u, "name", "x")
    assert get_attribute(u, "name") == "x"
    assert get_history(u, "name") == (["x"], (), ())
    commit(u)
    del_attribute(u, "name")
    assert get_history(u, "name") == ((), (), ["x"])
    with pytest.raises(AttributeError):
        get_attribute(u, "nope")


def test_set_attribute_bypasses_overridden_setattr() -> None:
    u = User()
    calls = []

    def spy(key: str, value: object) -> None:
        calls.append(key)

    u.__dict__["__setattr__"] = spy  # instance dict entries do not affect set_attribute
    set_attribute(u, "name", "n")
    assert u.__dict__["name"] == "n"
    assert calls == []


def test_init_collection_returns_adapter_of_new_empty_list() -> None:
    u = User()
    u.addresses.append(Address())
    adapter = init_collection(u, "addresses")
    assert adapter.data is u.addresses
    assert u.addresses == []
    assert "addresses" in u.__dict__


def test_init_collection_on_scalar_raises() -> None:
    with pytest.raises(exc.InvalidRequestError):
        init_collection(User(), "name")


def test_instance_state_and_object_state() -> None:
    u = User()
    assert instance_state(u) is object_state(u) is inspect(u)
    assert instance_state(u).object is u


def test_object_state_of_unmapped_object_raises() -> None:
    class Plain:
        pass

    with pytest.raises(exc.UnmappedInstanceError, match="is not mapped"):
        object_state(Plain())
    with pytest.raises(exc.UnmappedInstanceError):
        object_state(42)
    with pytest.raises(exc.UnmappedInstanceError):
        was_deleted(Plain())
    with pytest.raises(AttributeError):
        instance_state(Plain())


def test_inspect_unmapped_raises_or_returns_none() -> None:
    class Plain:
        pass

    with pytest.raises(exc.UnmappedClassError):
        inspect(Plain)
    with pytest.raises(exc.UnmappedInstanceError):
        inspect(Plain())
    assert inspect(Plain, raiseerr=False) is None
    assert inspect(Plain(), raiseerr=False) is None


def test_is_instrumented() -> None:
    u = User()
    assert is_instrumented(u, "name")
    assert is_instrumented(u, "addresses")
    assert not is_instrumented(u, "__repr__")
    assert not is_instrumented(object(), "name")


def test_state_created_for_instances_built_without_init() -> None:
    u = User.__new__(User)
    u.name = "x"
    assert get_history(u, "name") == (["x"], (), ())


def test_primary_key_set_records_old_value_even_if_expired() -> None:
    from tests.orm.support import FakeLoader

    u = User(id=1, tenant="t")
    commit(u)
    loader = FakeLoader({"id": 1, "tenant": "t"})
    state = inspect(u)
    state.key = (User, (1,), "s0")
    state._loader = loader
    state._expire()
    u.id = 2
    # Primary keys load their old value before a change (active history).
    assert get_history(u, "id") == ([2], (), [1])
    assert loader.calls


def test_passive_no_initialize_does_not_load(session: object) -> None:
    from tests.orm.support import FakeLoader, make_persistent

    u = User(id=1, tenant="t", name="a")
    loader = FakeLoader({"id": 1, "tenant": "t", "name": "fresh"})
    make_persistent(u, session, loader=loader)
    inspect(u)._expire(["name"])
    assert get_history(u, "name", PassiveFlag.PASSIVE_NO_INITIALIZE) == ((), (), ())
    assert get_history(u, "name", PassiveFlag.PASSIVE_NO_FETCH) == ((), (), ())
    assert loader.calls == []
    assert get_history(u, "name") == ((), ["fresh"], ())
    assert loader.calls == [{"name"}]


def test_noload_value_is_not_a_sentinel_leak() -> None:
    u = User()
    assert inspect(u).attrs.name.loaded_value is NO_VALUE
