"""Per-object ORM bookkeeping: :class:`InstanceState` and :class:`AttributeState`.

The Session drives an object through transient → pending → persistent →
(deleted) → detached with the underscore methods documented here; the public
properties report where it is, as SQLAlchemy's ``InstanceState`` does.

Contract with the Session:

- ``state._attach(session, loader=..., on_modified=...)`` links the object
  (``_mark_pending`` / ``_mark_persistent(key, session)`` call it);
  ``state._detach()`` unlinks it.  The identity key is
  ``(mapped class, primary key tuple, shard id)``.
- ``loader(state, keys)`` is called, only when the passive flags allow
  "SQL", for expired column attributes (all expired, unmodified columns at
  once) and for relationships of objects with an identity that are not loaded
  (one key).  It must store every key with ``set_committed_value`` (``None``
  for an empty relationship) or raise (``ObjectDeletedError`` when the row is
  gone).  Without a loader such access raises ``DetachedInstanceError``.
- After a flush: ``_mark_persistent(key)`` for inserted objects (it snapshots),
  ``_commit_all()`` for updated ones, ``_mark_deleted()`` for deleted ones;
  after commit: ``_detach()`` for deleted objects, ``_expire()`` when expiring.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shardsession import exc
from shardsession.orm.base import (
    NEVER_SET,
    NO_VALUE,
    PASSIVE_NO_INITIALIZE,
    PASSIVE_OFF,
    PassiveFlag,
    manager_of_class,
    state_str,
)

if TYPE_CHECKING:
    from shardsession.orm.attributes import AttributeImpl
    from shardsession.orm.history import History
    from shardsession.orm.instrumentation import ClassManager
    from shardsession.orm.mapper import Mapper

__all__ = ["AttributeState", "IdentityKey", "InstanceState", "Loader", "PendingCollection"]

IdentityKey = tuple[type, tuple[Any, ...], Any]
"""``(mapped class, primary key tuple, identity token)``; the token is the shard id."""

Loader = Callable[["InstanceState", set[str]], None]
"""Loads the given attribute keys into a state (with ``set_committed_value``)."""


class PendingCollection:
    """Appends and removes made to a collection that is not loaded yet.

    They are replayed onto the collection when it is loaded, and reported by
    ``get_history(..., PassiveFlag.INCLUDE_PENDING_MUTATIONS)``.
    """

    def __init__(self) -> None:
        self.added_items: list[Any] = []
        self.deleted_items: list[Any] = []

    def append(self, value: Any) -> None:
        """Record that ``value`` was appended."""
        if any(v is value for v in self.deleted_items):
            self.deleted_items = [v for v in self.deleted_items if v is not value]
        elif not any(v is value for v in self.added_items):
            self.added_items.append(value)

    def remove(self, value: Any) -> None:
        """Record that ``value`` was removed."""
        if any(v is value for v in self.added_items):
            self.added_items = [v for v in self.added_items if v is not value]
        elif not any(v is value for v in self.deleted_items):
            self.deleted_items.append(value)


class InstanceState:
    """The ORM's record of one mapped object: identity, session link and changes.

    Obtain it with :func:`shardsession.orm.inspect` or
    :func:`~shardsession.orm.util.object_state`.  Attribute values live in the
    object's ``__dict__`` (:attr:`dict`); :attr:`committed_state` holds, for each
    attribute changed since the last snapshot, its value at that snapshot.

    .. attribute:: key

        The identity key ``(class, primary key tuple, shard id)``, or ``None``
        for a transient or pending object (same as :attr:`identity_key`).

    .. attribute:: committed_state

        Attribute key -> the value it had at the last load or flush, for the
        attributes changed since then.

    .. attribute:: expired_attributes

        The keys of the attributes that are expired: they are loaded again from
        the object's shard when next read.

    .. attribute:: modified

        ``True`` when an attribute of the object changed since the last flush.
    """

    def __init__(self, obj: Any, manager: ClassManager) -> None:
        self.class_: type = type(obj)
        self.manager = manager
        self.obj: Callable[[], Any] = weakref.ref(obj)
        self.committed_state: dict[str, Any] = {}
        self.expired_attributes: set[str] = set()
        self.key: IdentityKey | None = None
        self.modified = False
        self.expired = False
        self._deleted = False
        self.session_id: Any = None
        self._session_ref: Callable[[], Any] | None = None
        self._loader: Loader | None = None
        self._on_modified: Callable[[InstanceState], None] | None = None
        self._strong_obj: Any = None
        self._pending_mutations: dict[str, PendingCollection] = {}
        self._empty_collections: dict[str, Any] = {}
        self._parents: dict[str, Any] = {}
        #: set by ``Session.enable_relationship_loading``: relationships of this
        #: transient or pending object may be lazy loaded from its foreign keys
        self.load_pending = False

    def __repr__(self) -> str:
        return f"<InstanceState of {state_str(self)} {self._status}>"

    # -- lifecycle status -------------------------------------------------------------

    @property
    def _attached(self) -> bool:
        return self.session_id is not None

    @property
    def _status(self) -> str:
        for name in ("transient", "pending", "persistent", "deleted", "detached"):
            if getattr(self, name):
                return name
        return "unknown"

    @property
    def transient(self) -> bool:
        """``True`` when the object has no identity and belongs to no session."""
        return self.key is None and not self._attached

    @property
    def pending(self) -> bool:
        """``True`` when the object was added to a session but not flushed yet."""
        return self.key is None and self._attached

    @property
    def persistent(self) -> bool:
        """``True`` when the object has an identity and belongs to a session."""
        return self.key is not None and self._attached and not self._deleted

    @property
    def deleted(self) -> bool:
        """``True`` when the object's DELETE was flushed but not yet committed."""
        return self.key is not None and self._attached and self._deleted

    @property
    def was_deleted(self) -> bool:
        """``True`` when the object was deleted in a flush (stays true once detached)."""
        return self._deleted

    @property
    def detached(self) -> bool:
        """``True`` when the object has an identity but belongs to no session."""
        return self.key is not None and not self._attached

    @property
    def has_identity(self) -> bool:
        """``True`` when the object has an identity key."""
        return self.key is not None

    @property
    def identity(self) -> tuple[Any, ...] | None:
        """The primary key tuple of the identity key, or ``None``."""
        return None if self.key is None else self.key[1]

    @property
    def identity_key(self) -> IdentityKey | None:
        """The identity key ``(class, primary key tuple, shard id)``, or ``None``."""
        return self.key

    @property
    def identity_token(self) -> Any:
        """The shard id of the identity key, or ``None`` without identity."""
        return None if self.key is None else self.key[2]

    @property
    def session(self) -> Any:
        """The session the object belongs to, or ``None``."""
        return None if self._session_ref is None else self._session_ref()

    @property
    def object(self) -> Any:
        """The mapped object (``None`` once it was garbage collected)."""
        return self.obj()

    @property
    def dict(self) -> dict[str, Any]:
        """The object's ``__dict__``: the attribute values that are loaded."""
        o = self.obj()
        return o.__dict__ if o is not None else {}

    @property
    def mapper(self) -> Mapper:
        """The :class:`.Mapper` of the object's class."""
        assert self.manager.mapper is not None
        return self.manager.mapper

    @property
    def async_session(self) -> None:
        """Always ``None``: shardsession has no asyncio session."""
        return None

    @property
    def unmodified(self) -> set[str]:
        """Keys of the attributes with no change since the last snapshot."""
        return set(self.manager).difference(self.committed_state)

    def unmodified_intersection(self, keys: Iterable[str]) -> set[str]:
        """Return the keys of ``keys`` that have no change since the last snapshot."""
        return {k for k in keys if k in self.manager and k not in self.committed_state}

    @property
    def changed_keys(self) -> set[str]:
        """Keys of the attributes with a recorded change since the last snapshot.

        Includes collections with changes recorded while unloaded.  A key here
        may still have an empty history (e.g. set back to its old value).
        """
        return set(self.committed_state).union(self._pending_mutations)

    @property
    def unloaded(self) -> set[str]:
        """Keys of the attributes that hold no loaded value (expired or never loaded)."""
        return set(self.manager).difference(self.committed_state).difference(self.dict)

    @property
    def attrs(self) -> Mapping[str, AttributeState]:
        """A mapping of attribute key → :class:`AttributeState`."""
        return _AttributeStates(self)

    def get_history(self, key: str, passive: PassiveFlag = PASSIVE_OFF) -> History:
        """Return the :class:`.History` of attribute ``key``."""
        return self.manager[key].impl.get_history(self, self.dict, passive)

    def get_impl(self, key: str) -> AttributeImpl:
        """Return the attribute implementation behind ``key``."""
        return self.manager[key].impl

    # -- transitions driven by the Session ----------------------------------------

    def _attach(
        self,
        session: Any,
        *,
        loader: Loader | None = None,
        on_modified: Callable[[InstanceState], None] | None = None,
    ) -> None:
        """Link the object to ``session`` (pending without a key, persistent with one).

        ``loader`` is called as ``loader(state, keys)`` to load expired or lazy
        attributes; ``on_modified`` is called once when the object goes from
        unmodified to modified (so the session can keep a dirty set).
        """
        self.session_id = id(session)
        self._session_ref = weakref.ref(session)
        self._loader = loader
        self._on_modified = on_modified
        if self.modified:
            self._strong_obj = self.obj()

    def _detach(self) -> None:
        """Drop the session link: the object becomes detached (or transient if no key)."""
        self.session_id = None
        self._session_ref = None
        self._loader = None
        self._on_modified = None
        self._strong_obj = None

    def _mark_pending(self, session: Any, **kw: Any) -> None:
        """Make a transient object pending in ``session`` (``session.add``)."""
        self._attach(session, **kw)

    def _mark_persistent(
        self, key: IdentityKey, session: Any = None, *, commit: bool = True, **kw: Any
    ) -> None:
        """Give the object its identity ``key`` (after INSERT or when loaded).

        With ``commit`` (the default) the current values become the committed
        snapshot.  ``session`` attaches the object when given.
        """
        self.key = key
        self._deleted = False
        if session is not None:
            self._attach(session, **kw)
        if commit:
            self._commit_all()

    def _mark_deleted(self) -> None:
        """Record that the object's DELETE was flushed (it stays attached until commit)."""
        self._deleted = True

    def _mark_detached(self) -> None:
        """Detach the object from its session (commit after delete, expunge, close)."""
        self._detach()

    def _make_transient(self) -> None:
        """Forget identity, session link and expiry: the object becomes transient."""
        self._detach()
        self.key = None
        self._deleted = False
        self.expired = False
        self.expired_attributes.clear()

    def _commit_all(self) -> None:
        """Take a snapshot: the current values become committed and history is cleared."""
        # Runs for every loaded row: touch only what is not already empty.
        if self.committed_state:
            self.committed_state.clear()
        if self._pending_mutations:
            self._pending_mutations.clear()
        if self.expired_attributes:
            dict_ = self.dict
            self.expired_attributes.difference_update(
                [k for k in self.expired_attributes if k in dict_]
            )
        if not self.expired_attributes:
            self.expired = False
        self.modified = False
        self._strong_obj = None

    def _commit(self, keys: Iterable[str]) -> None:
        """Take a snapshot of the given attributes only."""
        dict_ = self.dict
        for key in keys:
            self.committed_state.pop(key, None)
            if key in dict_:
                self.expired_attributes.discard(key)
        # As in SQLAlchemy the modified flag stays: a flush simply finds no change.
        self.expired = False

    def _expire(self, attribute_names: Iterable[str] | None = None) -> None:
        """Expire all attributes (``None``) or the named ones.

        Expired column attributes are reloaded through the loader on next
        access; relationships are simply unloaded and lazy-load again.  Pending
        changes of the expired attributes are discarded.
        """
        dict_ = self.dict
        if attribute_names is None:
            self.expired = True
            names: list[str] = list(self.manager)
            self.committed_state.clear()
            self._pending_mutations.clear()
            self.modified = False
            self._strong_obj = None
        else:
            names = list(attribute_names)
            for key in names:
                if key not in self.manager:
                    raise exc.InvalidRequestError(
                        f"{self.class_.__name__} has no mapped attribute {key!r} to expire"
                    )
        for key in names:
            impl = self.manager[key].impl
            if impl.accepts_scalar_loader:
                self.expired_attributes.add(key)
            old = dict_.pop(key, None)
            if impl.collection and old is not None:
                impl._dispose(old)
            self._empty_collections.pop(key, None)
            self.committed_state.pop(key, None)
            self._pending_mutations.pop(key, None)
        if not self.committed_state and not self._pending_mutations:
            self.modified = False
            self._strong_obj = None

    def _modified_event(
        self,
        dict_: dict[str, Any],
        impl: AttributeImpl | None,
        previous: Any,
        collection: bool = False,
        is_userland: bool = False,
    ) -> None:
        """Record the value an attribute had before a change and flag the object modified."""
        if impl is not None:
            key = impl.key
            if is_userland and key not in dict_:
                raise exc.InvalidRequestError(
                    f"Can't flag attribute {key!r} modified; it's not present in the object state"
                )
            if key not in self.committed_state or is_userland:
                if collection:
                    if previous is NEVER_SET and key in dict_:
                        previous = dict_[key]
                    if (
                        previous is not None
                        and previous is not NO_VALUE
                        and previous is not NEVER_SET
                    ):
                        previous = list(previous)
                self.committed_state[key] = previous
        if not self.modified or (self._attached and self._strong_obj is None):
            self.modified = True
            if self._attached:
                # Keep modified objects alive while a session may flush them.
                self._strong_obj = self.obj()
                if self._on_modified is not None:
                    self._on_modified(self)

    def _get_pending_mutation(self, key: str) -> PendingCollection:
        return self._pending_mutations.setdefault(key, PendingCollection())

    def _load(self, keys: set[str]) -> None:
        """Call the installed loader for ``keys``; raise when there is none."""
        if self._loader is None:
            raise exc.DetachedInstanceError(
                f"Instance {state_str(self)} is not bound to a Session (or its session "
                f"installed no loader); attribute(s) {sorted(keys)} cannot be loaded. "
                "Load them before detaching, or add the object to a session."
            )
        self._loader(self, keys)

    # -- pickling -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "instance": self.obj(),
            "class_": self.class_,
            "committed_state": self.committed_state,
            "expired_attributes": self.expired_attributes,
            "key": self.key,
            "modified": self.modified,
            "expired": self.expired,
            "deleted": self._deleted,
            "pending_mutations": self._pending_mutations,
        }

    def __setstate__(self, d: dict[str, Any]) -> None:
        instance = d["instance"]
        self.class_ = d["class_"]
        manager = manager_of_class(self.class_)
        if manager is None:
            raise exc.UnmappedInstanceError(
                f"Cannot unpickle an instance of {self.class_.__name__}: the class is not "
                "mapped in this process"
            )
        self.manager = manager
        self.obj = weakref.ref(instance)
        self.committed_state = d["committed_state"]
        self.expired_attributes = d["expired_attributes"]
        self.key = d["key"]
        self.modified = d["modified"]
        self.expired = d["expired"]
        self._deleted = d["deleted"]
        self._pending_mutations = d["pending_mutations"]
        self.session_id = None
        self._session_ref = None
        self._loader = None
        self._on_modified = None
        self._strong_obj = None
        self._empty_collections = {}
        self._parents = {}


class AttributeState:
    """A view of one attribute of one object, from ``inspect(obj).attrs[key]``."""

    def __init__(self, state: InstanceState, key: str) -> None:
        self.state = state
        self.key = key

    def __repr__(self) -> str:
        return f"<AttributeState {self.state.class_.__name__}.{self.key}>"

    @property
    def loaded_value(self) -> Any:
        """The value in the object's dict, or ``NO_VALUE`` without loading anything."""
        return self.state.dict.get(self.key, NO_VALUE)

    @property
    def value(self) -> Any:
        """The attribute's value, loading it if needed (like ``getattr``)."""
        return self.state.manager[self.key].impl.get(self.state, self.state.dict)

    @property
    def history(self) -> History:
        """The attribute's :class:`.History`, without loading anything."""
        return self.state.get_history(self.key, PASSIVE_NO_INITIALIZE)

    def load_history(self) -> History:
        """The attribute's :class:`.History`, loading the value first if needed."""
        return self.state.get_history(self.key, PASSIVE_OFF)


class _AttributeStates(Mapping[str, AttributeState]):
    def __init__(self, state: InstanceState) -> None:
        self._state = state

    def __getitem__(self, key: str) -> AttributeState:
        if key not in self._state.manager:
            raise KeyError(key)
        return AttributeState(self._state, key)

    def __getattr__(self, key: str) -> AttributeState:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.manager)

    def __len__(self) -> int:
        return len(self._state.manager)
