"""InstanceState: lifecycle flags, Session-facing transitions, loading, expiry, pickling."""

from __future__ import annotations

import gc
import pickle

import pytest

from shardsession import exc
from shardsession.orm import PassiveFlag, get_history, inspect, set_committed_value
from shardsession.orm.base import NO_VALUE
from tests.orm.models import Address, User
from tests.orm.support import FakeLoader, FakeSession, commit, make_persistent


def flags(obj: object) -> tuple[bool, bool, bool, bool, bool]:
    s = inspect(obj)
    return (s.transient, s.pending, s.persistent, s.deleted, s.detached)


def test_lifecycle_transitions(session: FakeSession) -> None:
    u = User(id=7, tenant="t")
    s = inspect(u)
    assert flags(u) == (True, False, False, False, False)
    assert s.key is None and s.identity is None and s.identity_token is None
    assert not s.has_identity and s.session is None and s.session_id is None

    s._mark_pending(session)
    assert flags(u) == (False, True, False, False, False)
    assert s.session is session and s.session_id == id(session)

    s._mark_persistent((User, (7,), "s1"))
    assert flags(u) == (False, False, True, False, False)
    assert s.key == (User, (7,), "s1")
    assert s.identity_key == s.key
    assert s.identity == (7,)
    assert s.identity_token == "s1"
    assert s.has_identity

    s._mark_deleted()
    assert flags(u) == (False, False, False, True, False)
    assert s.was_deleted

    s._mark_detached()
    assert flags(u) == (False, False, False, False, True)
    assert s.was_deleted
    assert s.session is None

    s._make_transient()
    assert flags(u) == (True, False, False, False, False)
    assert not s.was_deleted


def test_mark_persistent_snapshots_values(session: FakeSession) -> None:
    u = User(id=1, tenant="t", name="a")
    assert get_history(u, "name").has_changes()
    make_persistent(u, session)
    assert not inspect(u).modified
    assert get_history(u, "name") == ((), ["a"], ())


def test_modified_callback_and_strong_reference(session: FakeSession) -> None:
    seen = []
    u = User(id=1, tenant="t", name="a")
    state = make_persistent(u, session)
    state._on_modified = seen.append
    u.name = "b"
    u.name = "c"
    assert seen == [state]  # reported once, on the first change
    assert state.modified
    del u
    gc.collect()
    # A modified object stays alive while attached: the session must flush it.
    assert state.obj() is not None
    state._commit_all()
    gc.collect()
    assert state.obj() is None


def test_commit_keys_only(session: FakeSession) -> None:
    u = User(id=1, tenant="t", name="a")
    make_persistent(u, session)
    u.name = "b"
    u.tenant = "u"
    inspect(u)._commit(["name"])
    assert get_history(u, "name") == ((), ["b"], ())
    assert get_history(u, "tenant") == (["u"], (), ["t"])
    assert inspect(u).modified


def test_unmodified_and_unloaded() -> None:
    u = User(name="a")
    s = inspect(u)
    assert "name" not in s.unmodified
    assert {"id", "tenant", "addresses"} <= s.unmodified
    assert "name" not in s.unloaded
    assert "tenant" in s.unloaded


def test_attrs_view() -> None:
    u = User(name="a")
    commit(u)
    u.name = "b"
    attr = inspect(u).attrs["name"]
    assert attr.value == "b"
    assert attr.loaded_value == "b"
    assert attr.history == (["b"], (), ["a"])
    assert inspect(u).attrs.tenant.loaded_value is NO_VALUE
    assert set(inspect(u).attrs) == set(inspect(User).attrs)
    with pytest.raises(KeyError):
        inspect(u).attrs["nope"]


def test_expired_attribute_loads_through_loader(session: FakeSession) -> None:
    loader = FakeLoader({"id": 1, "tenant": "t", "name": "fresh", "created": None, "data": None})
    u = User(id=1, tenant="t", name="old")
    state = make_persistent(u, session, loader=loader)
    state._expire()
    assert state.expired
    assert "name" in state.expired_attributes
    assert "name" not in u.__dict__
    assert u.name == "fresh"
    # All expired columns are loaded in one call.
    assert loader.calls == [{"id", "tenant", "name", "created", "data"}]
    assert state.expired_attributes == set()
    assert not state.expired
    assert u.tenant == "t"
    assert len(loader.calls) == 1


def test_expire_some_attributes_discards_their_changes(session: FakeSession) -> None:
    loader = FakeLoader({"name": "db"})
    u = User(id=1, tenant="t", name="a")
    state = make_persistent(u, session, loader=loader)
    u.name = "changed"
    u.tenant = "t2"
    state._expire(["name"])
    assert state.expired_attributes == {"name"}
    assert "name" not in state.committed_state
    assert get_history(u, "tenant") == (["t2"], (), ["t"])
    assert u.name == "db"
    assert loader.calls == [{"name"}]
    with pytest.raises(exc.InvalidRequestError):
        state._expire(["nope"])


def test_modified_expired_attribute_is_not_reloaded(session: FakeSession) -> None:
    loader = FakeLoader({"tenant": "db"})
    u = User(id=1, tenant="t", name="a")
    state = make_persistent(u, session, loader=loader)
    state._expire(["name", "tenant"])
    u.name = "mine"
    assert get_history(u, "name") == (["mine"], (), ())
    assert u.tenant == "db"
    assert loader.calls == [{"tenant"}]
    assert u.name == "mine"


def test_expired_attribute_of_detached_object_raises() -> None:
    u = User(id=1, tenant="t", name="a")
    state = inspect(u)
    state._mark_persistent((User, (1,), "s0"))
    state._expire()
    assert state.detached
    with pytest.raises(exc.DetachedInstanceError, match="not bound to a Session"):
        u.name  # noqa: B018
    # Passive history neither loads nor raises.
    assert get_history(u, "name", PassiveFlag.PASSIVE_NO_INITIALIZE) == ((), (), ())


def test_loader_must_populate_requested_keys(session: FakeSession) -> None:
    def lazy_loader(state: object, keys: set[str]) -> None:
        pass

    u = User(id=1, tenant="t")
    state = make_persistent(u, session, loader=lazy_loader)
    state._expire(["name"])
    with pytest.raises(exc.InvalidRequestError, match="did not load attribute 'name'"):
        u.name  # noqa: B018


def test_loader_errors_propagate(session: FakeSession) -> None:
    def gone(state: object, keys: set[str]) -> None:
        raise exc.ObjectDeletedError("row is gone")

    u = User(id=1, tenant="t")
    state = make_persistent(u, session, loader=gone)
    state._expire()
    with pytest.raises(exc.ObjectDeletedError):
        u.tenant  # noqa: B018


def test_unloaded_relationship_lazy_loads_through_loader(session: FakeSession) -> None:
    a1, a2 = Address(id=1, email="x"), Address(id=2, email="y")
    loader = FakeLoader({"addresses": [a1, a2]})
    u = User(id=1, tenant="t")
    make_persistent(u, session, loader=loader)
    assert "addresses" not in u.__dict__
    assert u.addresses == [a1, a2]
    assert loader.calls == [{"addresses"}]
    assert get_history(u, "addresses") == ((), [a1, a2], ())


def test_unloaded_relationship_of_detached_object_raises() -> None:
    u = User(id=1, tenant="t")
    inspect(u)._mark_persistent((User, (1,), "s0"))
    with pytest.raises(exc.DetachedInstanceError):
        u.addresses  # noqa: B018
    a = Address(id=1, email="e")
    inspect(a)._mark_persistent((Address, (1,), "s0"))
    with pytest.raises(exc.DetachedInstanceError):
        a.user  # noqa: B018


def test_pending_objects_do_not_load(session: FakeSession) -> None:
    loader = FakeLoader({})
    u = User(id=1, tenant="t")
    inspect(u)._mark_pending(session, loader=loader)
    assert u.addresses == []
    assert u.name is None
    assert loader.calls == []


def test_backref_to_unloaded_collection_is_recorded_as_pending(session: FakeSession) -> None:
    existing = Address(id=1, email="x")
    loader = FakeLoader({"addresses": [existing]})
    u = User(id=1, tenant="t")
    make_persistent(u, session, loader=loader)
    a = Address(id=2, email="new")
    a.user = u
    # The collection was not loaded to do this.
    assert loader.calls == []
    assert "addresses" not in u.__dict__
    assert get_history(u, "addresses", PassiveFlag.PASSIVE_NO_INITIALIZE) == ((), (), ())
    h = get_history(
        u,
        "addresses",
        PassiveFlag.PASSIVE_NO_INITIALIZE | PassiveFlag.INCLUDE_PENDING_MUTATIONS,
    )
    assert h == ([a], [], [])
    # Loading merges the pending append into the loaded collection.
    assert u.addresses == [existing, a]
    assert get_history(u, "addresses") == ([a], [existing], [])


def test_pickle_round_trip_keeps_history_and_key(session: FakeSession) -> None:
    u = User(id=1, tenant="t", name="a")
    a1 = Address(id=1, email="x")
    u.addresses.append(a1)
    make_persistent(u, session)
    u.name = "b"
    a2 = Address(id=2, email="y")
    u.addresses.append(a2)
    inspect(u)._expire(["created"])

    u2 = pickle.loads(pickle.dumps(u))
    s2 = inspect(u2)
    assert s2.key == (User, (1,), "s0")
    assert s2.detached  # the session link does not travel
    assert s2.session is None
    assert get_history(u2, "name") == (["b"], (), ["a"])
    added, unchanged, deleted = get_history(u2, "addresses")
    assert [a.id for a in added] == [2]
    assert [a.id for a in unchanged] == [1]
    assert deleted == []
    assert s2.expired_attributes == {"created"}
    assert s2.modified
    # The collection is still instrumented after unpickling, and back-references hold.
    assert u2.addresses[1].user is u2
    a3 = Address(id=3, email="z")
    u2.addresses.append(a3)
    assert a3.user is u2
    assert [a.id for a in get_history(u2, "addresses").added] == [2, 3]


def test_pickle_transient_and_deleted_flags() -> None:
    u = User(id=1, tenant="t")
    u2 = pickle.loads(pickle.dumps(u))
    assert inspect(u2).transient
    assert get_history(u2, "tenant") == (["t"], (), ())
    s = inspect(u)
    s._mark_persistent((User, (1,), "s0"))
    s._mark_deleted()
    u3 = pickle.loads(pickle.dumps(u))
    assert inspect(u3).was_deleted and inspect(u3).detached


def test_set_committed_value_then_pickle_empty_collection() -> None:
    u = User(id=1, tenant="t")
    set_committed_value(u, "addresses", None)
    u2 = pickle.loads(pickle.dumps(u))
    assert u2.addresses == []
    assert get_history(u2, "addresses") == ((), [], ())


def test_mapper_property_of_state() -> None:
    u = User()
    assert inspect(u).mapper is inspect(User)
    assert inspect(u).dict is u.__dict__
    assert inspect(u).class_ is User


def test_setting_unloaded_many_to_one_does_not_load_and_pickles(session: FakeSession) -> None:
    loader = FakeLoader({})
    a = Address(id=5, email="e")
    make_persistent(a, session, loader=loader)
    u = User(id=1, tenant="t")
    a.user = u
    # The old value was not loaded to replace it: it is simply unknown.
    assert loader.calls == []
    assert get_history(a, "user") == ([u], (), ())
    a2 = pickle.loads(pickle.dumps(a))
    h = get_history(a2, "user")
    assert [x.id for x in h.added] == [1] and h.deleted == ()
