"""Session events: :func:`listen`, :func:`listens_for`, :func:`remove`, :func:`contains`.

The API of ``sqlalchemy.event`` for the session events, so code written for
SQLAlchemy ports by changing its imports::

    from shardsession import event

    @event.listens_for(Session, "before_flush")
    def check(session, flush_context, instances): ...

Targets:

* a session class (``Session`` or a subclass): applies to every session of that
  class and its subclasses, including sessions created before the call;
* a session instance: applies to that session only;
* a ``sessionmaker``: applies to every session it makes (before or after the call).

A session class is recognised by the Session API (``execute``, ``flush``,
``commit``, ``rollback``, ``add``); a ``sessionmaker`` by being callable with a
session class as its ``class_`` attribute (or with a ``configure`` method).  A
session names its maker in its ``_maker`` attribute (None when made directly).

Order of calls (as in SQLAlchemy): listeners set on classes and makers first, in
the order they were registered, then the session's own listeners in their order;
``insert=True`` puts a listener before those of its group registered earlier.

The session fires events with :func:`dispatch`; ``do_orm_execute`` listeners are
fetched with :func:`listeners_for` and run by
:func:`shardsession.coordinator.execute_state.run_execute_listeners`.

Registration is thread-safe; a dispatch uses the listeners registered when it began.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from shardsession.exc import ArgumentError, InvalidRequestError

__all__ = [
    "SESSION_EVENTS",
    "contains",
    "dispatch",
    "listen",
    "listeners_for",
    "listens_for",
    "remove",
]

_F = TypeVar("_F", bound=Callable[..., Any])

_SESSION_INSTANCE = ("session", "instance")

#: Every session event and the names of its arguments, in call order (what
#: ``named=True`` listeners receive as keywords).  The same as SQLAlchemy's.
SESSION_EVENTS: dict[str, tuple[str, ...]] = {
    "do_orm_execute": ("orm_execute_state",),
    "before_flush": ("session", "flush_context", "instances"),
    "after_flush": ("session", "flush_context"),
    "after_flush_postexec": ("session", "flush_context"),
    "before_commit": ("session",),
    "after_commit": ("session",),
    "after_rollback": ("session",),
    "after_soft_rollback": ("session", "previous_transaction"),
    "after_begin": ("session", "transaction", "connection"),
    "after_transaction_create": ("session", "transaction"),
    "after_transaction_end": ("session", "transaction"),
    "before_attach": _SESSION_INSTANCE,
    "after_attach": _SESSION_INSTANCE,
    "pending_to_persistent": _SESSION_INSTANCE,
    "pending_to_transient": _SESSION_INSTANCE,
    "persistent_to_detached": _SESSION_INSTANCE,
    "persistent_to_deleted": _SESSION_INSTANCE,
    "persistent_to_transient": _SESSION_INSTANCE,
    "deleted_to_detached": _SESSION_INSTANCE,
    "deleted_to_persistent": _SESSION_INSTANCE,
    "detached_to_persistent": _SESSION_INSTANCE,
    "transient_to_pending": _SESSION_INSTANCE,
    "loaded_as_persistent": _SESSION_INSTANCE,
    "after_bulk_update": ("update_context",),
    "after_bulk_delete": ("delete_context",),
}

_SESSION_API = ("execute", "flush", "commit", "rollback", "add")

_lock = threading.RLock()
_seq = itertools.count(1)
_insert_seq = itertools.count(-1, -1)
# id(target) -> (weak reference to target, {identifier: [listener, ...]})
_registry: dict[int, tuple[Any, dict[str, list[_Listener]]]] = {}
# identifier -> number of registrations anywhere (a fast "nobody listens").
_counts: dict[str, int] = {}


class _Listener:
    """One registration: the user's function and how to call it."""

    __slots__ = ("_fired", "fn", "identifier", "named", "once", "propagate", "retval", "seq")

    def __init__(
        self,
        fn: Callable[..., Any],
        identifier: str,
        *,
        once: bool,
        named: bool,
        retval: bool,
        propagate: bool,
        seq: int,
    ) -> None:
        self.fn = fn
        self.identifier = identifier
        self.once = once
        self.named = named
        self.retval = retval
        self.propagate = propagate
        self.seq = seq
        self._fired = False

    def __call__(self, *args: Any) -> Any:
        if self.once:
            with _lock:
                if self._fired:
                    return None
                self._fired = True
        if self.named:
            return self.fn(**dict(zip(SESSION_EVENTS[self.identifier], args)))
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<listener {self.identifier} {self.fn!r}>"


# -- targets ---------------------------------------------------------------------------


def _is_session_class(obj: Any) -> bool:
    return isinstance(obj, type) and all(callable(getattr(obj, a, None)) for a in _SESSION_API)


def _target_kind(target: Any) -> str | None:
    if isinstance(target, type):
        return "class" if _is_session_class(target) else None
    if _is_session_class(type(target)):
        return "session"
    if callable(target) and (
        _is_session_class(getattr(target, "class_", None))
        or callable(getattr(target, "configure", None))
    ):
        return "maker"
    return None


def _check(target: Any, identifier: str) -> None:
    kind = _target_kind(target)
    if kind is None:
        raise InvalidRequestError(
            f"No such event {identifier!r} for target {target!r}: only session events "
            "are supported, on a Session class, a Session or a sessionmaker"
        )
    if identifier not in SESSION_EVENTS:
        raise InvalidRequestError(
            f"No such event {identifier!r} for target {target!r}; the session events are: "
            f"{', '.join(sorted(SESSION_EVENTS))}"
        )


def _drop(key: int, ref: Any) -> None:
    if _lock is None:  # interpreter shutdown: module globals are already gone
        return
    with _lock:
        entry = _registry.get(key)
        if entry is not None and entry[0] is ref:
            del _registry[key]
            for ident, lst in entry[1].items():
                _counts[ident] -= len(lst)


def _lists_for(target: Any, create: bool) -> dict[str, list[_Listener]] | None:
    key = id(target)
    entry = _registry.get(key)
    if entry is not None:
        if entry[0]() is target:
            return entry[1]
        # A dead object's entry whose weakref callback has not run yet.
        _drop(key, entry[0])
    if not create:
        return None
    try:
        ref = weakref.ref(target, lambda r, key=key: _drop(key, r))
    except TypeError:
        raise ArgumentError(
            f"cannot listen on {target!r}: the object does not support weak references"
        ) from None
    lists: dict[str, list[_Listener]] = {}
    _registry[key] = (ref, lists)
    return lists


def _find(lst: list[_Listener], fn: Callable[..., Any]) -> _Listener | None:
    return next((li for li in lst if li.fn is fn or li.fn == fn), None)


# -- public API ------------------------------------------------------------------------


def listen(
    target: Any,
    identifier: str,
    fn: Callable[..., Any],
    *,
    propagate: bool = False,
    retval: bool = False,
    once: bool = False,
    named: bool = False,
    insert: bool = False,
) -> None:
    """Register *fn* to be called for event *identifier* of *target*.

    Listening twice with the same function on the same target registers it once.

    :param target: a session class, a session or a sessionmaker.
    :param identifier: the event name (see :data:`SESSION_EVENTS`).
    :param fn: the listener, called with the event's arguments.
    :param propagate: accepted for SQLAlchemy compatibility; listeners on a session
        class always apply to its subclasses (as in SQLAlchemy), so it changes nothing
        for session events.
    :param retval: accepted for SQLAlchemy compatibility.  A ``do_orm_execute``
        listener's return value replaces execution whenever it is not None, with or
        without this flag (as SQLAlchemy does); other session events ignore return
        values.
    :param once: call *fn* only the first time the event fires (on any session the
        registration applies to).
    :param named: pass the arguments as keywords named as in :data:`SESSION_EVENTS`.
    :param insert: call *fn* before the listeners of its group registered earlier.
    :raises InvalidRequestError: for an unknown event name or an unsupported target.
    :raises ArgumentError: when *fn* is not callable.
    """
    _check(target, identifier)
    if not callable(fn):
        raise ArgumentError(f"event listener for {identifier!r} must be callable, got {fn!r}")
    with _lock:
        lists = _lists_for(target, create=True)
        assert lists is not None
        lst = lists.setdefault(identifier, [])
        if _find(lst, fn) is not None:
            return
        seq = next(_insert_seq) if insert else next(_seq)
        listener = _Listener(
            fn,
            identifier,
            once=once,
            named=named,
            retval=retval,
            propagate=propagate,
            seq=seq,
        )
        lst.append(listener)
        lst.sort(key=lambda li: li.seq)
        _counts[identifier] = _counts.get(identifier, 0) + 1


def listens_for(target: Any, identifier: str, **kw: Any) -> Callable[[_F], _F]:
    """Decorator form of :func:`listen`; returns the function unchanged.

    :param target: a session class, a session or a sessionmaker.
    :param identifier: the event name.
    :param kw: the keyword flags of :func:`listen`.
    """

    def decorate(fn: _F) -> _F:
        listen(target, identifier, fn, **kw)
        return fn

    return decorate


def remove(target: Any, identifier: str, fn: Callable[..., Any]) -> None:
    """Unregister *fn* from event *identifier* of *target* (the exact target it was
    registered on: removing from a subclass does not remove a base-class listener).

    :raises InvalidRequestError: when *fn* is not registered there, or for an unknown
        event name.
    """
    _check(target, identifier)
    with _lock:
        lists = _lists_for(target, create=False)
        lst = lists.get(identifier, []) if lists is not None else []
        found = _find(lst, fn)
        if found is None:
            raise InvalidRequestError(
                f"No listeners found for event {target!r} / {identifier!r} / {fn!r}"
            )
        lst.remove(found)
        _counts[identifier] -= 1


def contains(target: Any, identifier: str, fn: Callable[..., Any]) -> bool:
    """Return True if *fn* is registered for *identifier* on exactly *target*.

    :raises InvalidRequestError: for an unknown event name or an unsupported target.
    """
    _check(target, identifier)
    with _lock:
        lists = _lists_for(target, create=False)
        return lists is not None and _find(lists.get(identifier, []), fn) is not None


def listeners_for(session: Any, identifier: str) -> list[Callable[..., Any]]:
    """Return the listeners of *identifier* that apply to *session*, in call order.

    Those of the session's class and base classes and of its maker (its ``_maker``
    attribute) come first, by registration order, then the session's own.  Each
    returned callable takes the event's positional arguments and applies its
    registration's ``once`` / ``named`` settings.

    :param session: the session firing the event.
    :param identifier: the event name.
    :raises InvalidRequestError: for an unknown event name.
    """
    if identifier not in SESSION_EVENTS:
        raise InvalidRequestError(
            f"No such session event {identifier!r}; the session events are: "
            f"{', '.join(sorted(SESSION_EVENTS))}"
        )
    with _lock:
        if not _counts.get(identifier):
            return []
        shared: list[_Listener] = []
        for cls in type(session).__mro__:
            lists = _lists_for(cls, create=False)
            if lists:
                shared.extend(lists.get(identifier, ()))
        maker = getattr(session, "_maker", None)
        if maker is not None:
            lists = _lists_for(maker, create=False)
            if lists:
                shared.extend(lists.get(identifier, ()))
        shared.sort(key=lambda li: li.seq)
        lists = _lists_for(session, create=False)
        own = list(lists.get(identifier, ())) if lists else []
    return [*shared, *own]


def any_listeners(*identifiers: str) -> bool:
    """Whether anything listens for one of *identifiers*, on any session (a cheap check).

    :param identifiers: event names.
    """
    return any(_counts.get(identifier) for identifier in identifiers)


def dispatch(session: Any, identifier: str, *args: Any) -> list[Any]:
    """Fire event *identifier* for *session*: call each listener with *args*.

    :param session: the session the event happens in.
    :param identifier: the event name.
    :param args: the event's arguments, in the order of :data:`SESSION_EVENTS`.
    :return: the listeners' return values, in call order.
    :raises TypeError: when the number of *args* does not match the event.
    :raises InvalidRequestError: for an unknown event name.
    """
    expected = SESSION_EVENTS.get(identifier)
    if expected is not None and not _counts.get(identifier):
        # The common case (nobody listens) stays cheap: it runs for every attribute change.
        if len(args) != len(expected):
            raise TypeError(
                f"event {identifier!r} takes {len(expected)} arguments "
                f"({', '.join(expected)}), {len(args)} given"
            )
        return []
    listeners = listeners_for(session, identifier)
    expected = SESSION_EVENTS[identifier]
    if len(args) != len(expected):
        raise TypeError(
            f"event {identifier!r} takes {len(expected)} arguments "
            f"({', '.join(expected)}), {len(args)} given"
        )
    return [fn(*args) for fn in listeners]
