"""The session's identity map: one live object per ``(class, primary key, shard)``.

Objects are held weakly, as in SQLAlchemy: an object nobody references any more
leaves the map, unless it has changes waiting to be flushed (its
:class:`~shardsession.orm.state.InstanceState` then holds it strongly).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from shardsession.orm.attributes import instance_state
from shardsession.orm.state import InstanceState

__all__ = ["IdentityMap"]

IdentityKey = tuple[type, tuple[Any, ...], Any]


class IdentityMap:
    """Identity key -> object, weakly referenced."""

    def __init__(self) -> None:
        self._objects: weakref.WeakValueDictionary[IdentityKey, Any] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __iter__(self) -> Iterator[IdentityKey]:
        return iter(list(self._objects.keys()))

    def __getitem__(self, key: IdentityKey) -> Any:
        return self._objects[key]

    def get(self, key: IdentityKey, default: Any = None) -> Any:
        """The object with identity ``key``, or ``default``."""
        return self._objects.get(key, default)

    def keys(self) -> list[IdentityKey]:
        """The identity keys of the live objects."""
        return list(self._objects.keys())

    def iter_values(self) -> Iterator[Any]:
        """The live objects, one at a time (the map must not change meanwhile)."""
        return self._objects.values()

    def values(self) -> list[Any]:
        """The live objects."""
        return list(self._objects.values())

    def items(self) -> list[tuple[IdentityKey, Any]]:
        """``(identity key, object)`` pairs of the live objects."""
        return list(self._objects.items())

    def states(self) -> list[InstanceState]:
        """The states of the live objects."""
        return [instance_state(obj) for obj in self._objects.values()]

    def add(self, key: IdentityKey, obj: Any) -> None:
        """Record ``obj`` under ``key``."""
        self._objects[key] = obj

    def discard(self, key: IdentityKey, obj: Any = None) -> None:
        """Forget ``key`` (only if it still maps to ``obj`` when ``obj`` is given)."""
        current = self._objects.get(key)
        if current is not None and (obj is None or current is obj):
            del self._objects[key]

    def clear(self) -> None:
        """Forget every object."""
        self._objects.clear()
