"""Property tests: random operation sequences against simple reference models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardsession import exc
from shardsession.orm import flag_modified, get_history, inspect, set_committed_value
from tests.orm.models import Address, User

ABSENT = object()
UNKNOWN = object()

values = st.one_of(st.none(), st.integers(0, 3), st.sampled_from(["a", "b"]))
scalar_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), values),
        st.tuples(st.just("delete"), st.none()),
        st.tuples(st.just("flag_modified"), st.none()),
        st.tuples(st.just("commit"), st.none()),
        st.tuples(st.just("set_committed"), values),
    ),
    max_size=12,
)


@dataclass
class ScalarModel:
    """What SQLAlchemy documents for one column attribute.

    ``previous`` is the value at the last snapshot, or UNKNOWN when it was not
    loaded or when ``flag_modified`` said "treat as changed".
    """

    current: Any = ABSENT
    snapshot: Any = ABSENT
    touched: bool = False
    flagged: bool = False
    modified: bool = False

    def previous(self) -> Any:
        if self.flagged or self.snapshot is ABSENT:
            return UNKNOWN
        return self.snapshot

    def history(self) -> tuple[list, list, list]:
        cur = self.current
        if not self.touched:
            return ([], [] if cur is ABSENT else [cur], [])
        prev = self.previous()
        if prev is not UNKNOWN and cur is not ABSENT and cur == prev:
            return ([], [cur], [])
        if prev is UNKNOWN:
            return ([None if cur is ABSENT else cur], [], [])
        return ([] if cur is ABSENT else [cur], [], [prev])


def as_lists(h: Any) -> tuple[list, list, list]:
    return (list(h.added), list(h.unchanged), list(h.deleted))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(scalar_ops)
def test_scalar_history_matches_reference_model(ops: list[tuple[str, Any]]) -> None:
    u = User()
    model = ScalarModel()
    for op, arg in ops:
        if op == "set":
            u.name = arg
            model.current, model.touched, model.modified = arg, True, True
        elif op == "delete":
            model.modified = True
            if model.current is ABSENT:
                with pytest.raises(AttributeError):
                    del u.name
                model.touched = True
            else:
                del u.name
                model.current, model.touched = ABSENT, True
        elif op == "flag_modified":
            if model.current is ABSENT:
                with pytest.raises(exc.InvalidRequestError):
                    flag_modified(u, "name")
            else:
                flag_modified(u, "name")
                model.touched = model.flagged = model.modified = True
        elif op == "commit":
            inspect(u)._commit_all()
            model.snapshot, model.touched, model.flagged = model.current, False, False
            model.modified = False
        else:
            set_committed_value(u, "name", arg)
            model.current = model.snapshot = arg
            model.touched = model.flagged = False
        assert as_lists(get_history(u, "name")) == model.history(), (op, arg)
        assert inspect(u).modified == model.modified
        assert u.name == (None if model.current is ABSENT else model.current)


@dataclass
class CollectionModel:
    current: list = field(default_factory=list)
    snapshot: list = field(default_factory=list)

    def history(self) -> tuple[list, list, list]:
        before = {id(o) for o in self.snapshot}
        now = {id(o) for o in self.current}
        return (
            [o for o in self.current if id(o) not in before],
            [o for o in self.current if id(o) in before],
            [o for o in self.snapshot if id(o) not in now],
        )


collection_ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "append",
                "insert",
                "remove",
                "pop",
                "setitem",
                "delitem",
                "replace",
                "clear",
                "commit",
            ]
        ),
        st.integers(0, 5),
        st.lists(st.integers(0, 5), max_size=4, unique=True),
    ),
    max_size=12,
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(collection_ops)
def test_collection_history_and_backrefs_match_reference_model(
    ops: list[tuple[str, int, list[int]]],
) -> None:
    pool = [Address(id=i) for i in range(6)]
    u = User(id=1)
    model = CollectionModel()
    for op, n, subset in ops:
        coll = u.addresses
        outside = [a for a in pool if not any(a is c for c in model.current)]
        if op in ("append", "insert") and outside:
            a = outside[n % len(outside)]
            if op == "append":
                coll.append(a)
                model.current.append(a)
            else:
                coll.insert(n, a)
                model.current.insert(n, a)
        elif op in ("remove", "pop", "delitem") and model.current:
            i = n % len(model.current)
            if op == "remove":
                coll.remove(model.current[i])
            elif op == "pop":
                assert coll.pop(i) is model.current[i]
            else:
                del coll[i]
            del model.current[i]
        elif op == "setitem" and model.current and outside:
            i = n % len(model.current)
            coll[i] = outside[0]
            model.current[i] = outside[0]
        elif op == "replace":
            new = [pool[i] for i in subset]
            u.addresses = new
            model.current = list(new)
        elif op == "clear":
            coll.clear()
            model.current = []
        elif op == "commit":
            inspect(u)._commit_all()
            model.snapshot = list(model.current)
        assert list(u.addresses) == model.current
        assert as_lists(get_history(u, "addresses")) == model.history(), op
        for a in pool:
            linked = any(a is c for c in model.current)
            assert (a.user is u) == linked, (op, a.id)
