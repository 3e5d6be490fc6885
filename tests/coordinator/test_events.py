"""Session events: listen / remove / contains and dispatch order (stand-in sessions)."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from shardsession import event
from shardsession.exc import InvalidRequestError


def _session_class() -> type:
    """A fresh stand-in Session class (the registry is global: no sharing between tests)."""

    class Session:
        def __init__(self) -> None:
            self._maker: Any = None

        def execute(self, *a: Any) -> None: ...

        def flush(self) -> None: ...

        def commit(self) -> None: ...

        def rollback(self) -> None: ...

        def add(self, obj: Any) -> None: ...

    return Session


class Maker:
    """A stand-in sessionmaker."""

    def __init__(self, class_: type) -> None:
        self.class_ = class_

    def __call__(self) -> Any:
        s = self.class_()
        s._maker = self
        return s


def _recorder(calls: list[Any], name: str) -> Callable[..., Any]:
    def fn(*args: Any) -> str:
        calls.append((name, args))
        return name

    return fn


def _names(calls: list[Any]) -> list[str]:
    return [c[0] for c in calls]


def test_instance_listener_gets_arguments_and_results_are_returned() -> None:
    Session = _session_class()
    s, other = Session(), Session()
    calls: list[Any] = []
    event.listen(s, "after_soft_rollback", _recorder(calls, "a"))
    assert event.dispatch(s, "after_soft_rollback", s, "T") == ["a"]
    assert calls == [("a", (s, "T"))]
    assert event.dispatch(other, "after_soft_rollback", other, "T") == []


def test_class_listener_applies_to_all_instances_and_subclasses() -> None:
    Session = _session_class()

    class Sub(Session):  # type: ignore[misc, valid-type]
        pass

    before = Sub()
    calls: list[Any] = []
    event.listen(Session, "after_commit", _recorder(calls, "base"))
    event.listen(Sub, "after_commit", _recorder(calls, "sub"))
    after = Session()
    event.dispatch(before, "after_commit", before)
    assert _names(calls) == ["base", "sub"]
    calls.clear()
    event.dispatch(after, "after_commit", after)
    assert _names(calls) == ["base"]


def test_order_class_level_by_registration_then_instance_and_insert() -> None:
    Session = _session_class()

    class Sub(Session):  # type: ignore[misc, valid-type]
        pass

    calls: list[Any] = []
    s = Sub()
    event.listen(Session, "after_commit", _recorder(calls, "a"))
    event.listen(Sub, "after_commit", _recorder(calls, "b"))
    event.listen(s, "after_commit", _recorder(calls, "c"))
    event.listen(Session, "after_commit", _recorder(calls, "d"))
    event.listen(Session, "after_commit", _recorder(calls, "e"), insert=True)
    event.listen(s, "after_commit", _recorder(calls, "f"), insert=True)
    event.dispatch(s, "after_commit", s)
    # Same order SQLAlchemy gives: class level (insert first), then instance level.
    assert _names(calls) == ["e", "a", "b", "d", "f", "c"]


def test_sessionmaker_listeners_apply_to_its_sessions_only() -> None:
    Session = _session_class()

    class Sub(Session):  # type: ignore[misc, valid-type]
        pass

    maker, other_maker = Maker(Sub), Maker(Sub)
    early = maker()
    calls: list[Any] = []
    on_maker = _recorder(calls, "maker")
    event.listen(maker, "before_commit", on_maker)
    event.listen(Sub, "before_commit", _recorder(calls, "sub"))
    late, unrelated, plain = maker(), other_maker(), Sub()
    for s in (early, late, unrelated, plain):
        event.dispatch(s, "before_commit", s)
    assert _names(calls) == ["maker", "sub", "maker", "sub", "sub", "sub"]
    assert event.contains(maker, "before_commit", on_maker)
    assert not event.contains(other_maker, "before_commit", on_maker)


def test_listening_twice_registers_once() -> None:
    Session = _session_class()
    s = Session()
    calls: list[Any] = []
    fn = _recorder(calls, "x")
    event.listen(s, "after_commit", fn)
    event.listen(s, "after_commit", fn)
    event.dispatch(s, "after_commit", s)
    assert _names(calls) == ["x"]


def test_remove_and_contains_are_exact_per_target() -> None:
    Session = _session_class()

    class Sub(Session):  # type: ignore[misc, valid-type]
        pass

    s = Sub()
    calls: list[Any] = []
    fn = _recorder(calls, "x")
    event.listen(Session, "after_commit", fn)
    assert event.contains(Session, "after_commit", fn)
    assert not event.contains(Sub, "after_commit", fn)
    assert not event.contains(s, "after_commit", fn)
    with pytest.raises(InvalidRequestError, match="No listeners found"):
        event.remove(Sub, "after_commit", fn)
    event.remove(Session, "after_commit", fn)
    assert not event.contains(Session, "after_commit", fn)
    event.dispatch(s, "after_commit", s)
    assert calls == []
    with pytest.raises(InvalidRequestError, match="No listeners found"):
        event.remove(Session, "after_commit", fn)


def test_remove_instance_listener() -> None:
    Session = _session_class()
    s = Session()
    calls: list[Any] = []
    fn = _recorder(calls, "x")
    event.listen(s, "after_attach", fn)
    event.remove(s, "after_attach", fn)
    event.dispatch(s, "after_attach", s, object())
    assert calls == []


def test_once_fires_once_across_sessions() -> None:
    Session = _session_class()
    a, b = Session(), Session()
    calls: list[Any] = []
    event.listen(Session, "before_commit", _recorder(calls, "once"), once=True)
    event.listen(Session, "before_commit", _recorder(calls, "always"))
    for s in (a, b, a):
        event.dispatch(s, "before_commit", s)
    assert _names(calls) == ["once", "always", "always", "always"]


def test_named_listener_gets_keywords() -> None:
    Session = _session_class()
    s = Session()
    got: list[dict[str, Any]] = []
    event.listen(s, "before_flush", lambda **kw: got.append(kw), named=True)
    event.dispatch(s, "before_flush", s, "ctx", None)
    assert got == [{"session": s, "flush_context": "ctx", "instances": None}]


def test_propagate_is_accepted_and_subclasses_always_get_class_listeners() -> None:
    Session = _session_class()

    class Sub(Session):  # type: ignore[misc, valid-type]
        pass

    calls: list[Any] = []
    event.listen(Session, "after_rollback", _recorder(calls, "p"), propagate=True)
    event.listen(Session, "after_rollback", _recorder(calls, "np"), propagate=False)
    s = Sub()
    event.dispatch(s, "after_rollback", s)
    assert _names(calls) == ["p", "np"]


def test_listens_for_decorator_returns_function() -> None:
    Session = _session_class()
    s = Session()

    @event.listens_for(s, "after_begin", named=True)
    def hook(**kw: Any) -> str:
        return "|".join(sorted(kw))

    assert callable(hook) and hook(a=1) == "a"
    assert event.dispatch(s, "after_begin", s, "t", "c") == ["connection|session|transaction"]


def test_unknown_event_name_lists_valid_ones() -> None:
    Session = _session_class()
    with pytest.raises(InvalidRequestError, match=r"'before_flus'.*after_attach.*before_flush"):
        event.listen(Session, "before_flus", lambda *a: None)
    with pytest.raises(InvalidRequestError, match="before_flus"):
        event.dispatch(Session(), "before_flus")


def test_unsupported_target_raises() -> None:
    class NotASession:
        pass

    with pytest.raises(InvalidRequestError, match="No such event 'before_flush'"):
        event.listen(NotASession, "before_flush", lambda *a: None)
    with pytest.raises(InvalidRequestError):
        event.listen(NotASession(), "before_flush", lambda *a: None)


def test_dispatch_checks_argument_count() -> None:
    Session = _session_class()
    s = Session()
    with pytest.raises(TypeError, match=r"takes 3 arguments \(session, flush_context, instances"):
        event.dispatch(s, "before_flush", s)


def test_every_documented_event_can_be_listened_to() -> None:
    Session = _session_class()
    s = Session()
    names = set(event.SESSION_EVENTS)
    assert len(names) == 25
    for name, argnames in event.SESSION_EVENTS.items():
        got: list[Any] = []
        event.listen(s, name, lambda *a, got=got: got.append(a))
        args = tuple(range(len(argnames)))
        event.dispatch(s, name, *args)
        assert got == [args], name


def test_listener_registered_during_dispatch_applies_next_time() -> None:
    Session = _session_class()
    s = Session()
    calls: list[Any] = []
    late = _recorder(calls, "late")

    def first(session: Any) -> None:
        calls.append(("first", ()))
        event.listen(s, "after_commit", late)

    event.listen(s, "after_commit", first)
    event.dispatch(s, "after_commit", s)
    assert _names(calls) == ["first"]
    event.dispatch(s, "after_commit", s)
    assert _names(calls) == ["first", "first", "late"]


def test_registry_does_not_keep_sessions_alive() -> None:
    Session = _session_class()
    s = Session()
    event.listen(s, "after_commit", lambda *a: None)
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None
    # A new session (possibly at the same address) starts without listeners.
    s2 = Session()
    assert event.listeners_for(s2, "after_commit") == []


def test_concurrent_registration_is_safe() -> None:
    Session = _session_class()
    fns = [_recorder([], f"f{i}") for i in range(400)]
    start = threading.Barrier(8)

    def worker(part: list[Callable[..., Any]]) -> None:
        start.wait()
        for fn in part:
            event.listen(Session, "after_commit", fn)

    threads = [threading.Thread(target=worker, args=(fns[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    s = Session()
    got = [li.fn for li in event.listeners_for(s, "after_commit")]  # type: ignore[attr-defined]
    assert sorted(map(id, got)) == sorted(map(id, fns))


def test_do_orm_execute_listeners_for_run_loop() -> None:
    from shardsession.coordinator.execute_state import ORMExecuteState, run_execute_listeners

    Session = _session_class()
    s = Session()
    seen: list[str] = []
    event.listen(Session, "do_orm_execute", lambda st: seen.append("cls"))
    event.listen(s, "do_orm_execute", lambda st: "replaced")
    state = ORMExecuteState(s, object(), None)
    out = run_execute_listeners(
        state, event.listeners_for(s, "do_orm_execute"), lambda st: "executed"
    )
    assert (out, seen) == ("replaced", ["cls"])
