"""Instrumented list collections for one-to-many relationships.

An :class:`InstrumentedList` behaves as a plain ``list``; while it is the value
of a relationship attribute its :class:`CollectionAdapter` reports every
mutation to the attribute, which snapshots the previous contents for history
and keeps ``back_populates`` ends in step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, SupportsIndex

if TYPE_CHECKING:
    from shardsession.orm.attribute_impl import CollectionAttributeImpl
    from shardsession.orm.state import InstanceState

__all__ = ["CollectionAdapter", "InstrumentedList"]


class CollectionAdapter:
    """Links one collection object to the attribute and object that own it."""

    def __init__(
        self, attr: CollectionAttributeImpl, owner_state: InstanceState, data: InstrumentedList
    ) -> None:
        self.attr = attr
        self.owner_state = owner_state
        self._data = data
        self.empty = False
        self.invalidated = False

    def __repr__(self) -> str:
        return f"<CollectionAdapter {self.attr}>"

    @property
    def data(self) -> InstrumentedList:
        """The collection object itself."""
        return self._data

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return True

    def _reset_empty(self) -> None:
        # An empty collection handed out on access lives outside the instance
        # dict until its first mutation makes it real.
        if self.empty:
            self.empty = False
            state = self.owner_state
            state.dict[self.attr.key] = state._empty_collections.pop(self.attr.key, self._data)

    def _before_change(self) -> None:
        self._reset_empty()
        state = self.owner_state
        state._modified_event(state.dict, self.attr, _never_set(), True)

    def fire_append_event(self, item: Any, initiator: Any = None) -> Any:
        """Report that ``item`` is being appended; return the item to store."""
        self._reset_empty()
        state = self.owner_state
        return self.attr.fire_append_event(state, state.dict, item, initiator)

    def fire_remove_event(self, item: Any, initiator: Any = None) -> None:
        """Report that ``item`` is being removed."""
        self._reset_empty()
        state = self.owner_state
        self.attr.fire_remove_event(state, state.dict, item, initiator)

    def append_with_event(self, item: Any, initiator: Any = None) -> None:
        """Append ``item``, firing the append event (history, back-references)."""
        self._data.append(item, _sa_initiator=initiator)

    def append_without_event(self, item: Any) -> None:
        """Append ``item`` silently (used when loading)."""
        list.append(self._data, item)

    def append_multiple_without_event(self, items: Iterable[Any]) -> None:
        """Append ``items`` silently (used when loading)."""
        list.extend(self._data, items)

    def remove_with_event(self, item: Any, initiator: Any = None) -> None:
        """Remove ``item``, firing the remove event."""
        self._data.remove(item, _sa_initiator=initiator)

    def remove_without_event(self, item: Any) -> None:
        """Remove ``item`` silently; absent items are ignored."""
        for i, v in enumerate(self._data):
            if v is item:
                list.__delitem__(self._data, i)
                return

    def clear_with_event(self, initiator: Any = None) -> None:
        """Remove every member, firing a remove event for each."""
        self._data.clear(_sa_initiator=initiator)

    def clear_without_event(self) -> None:
        """Remove every member silently."""
        list.clear(self._data)


def _never_set() -> Any:
    from shardsession.orm.base import NEVER_SET

    return NEVER_SET


class InstrumentedList(list[Any]):
    """A ``list`` whose mutations are tracked while it is a relationship's collection.

    Supported mutations: ``append``, ``extend``, ``insert``, ``remove``, ``pop``,
    ``clear``, ``del l[i]``, ``del l[a:b]``, ``l[i] = x``, ``l[a:b] = [...]`` and
    ``+=``.  Reordering (``sort``, ``reverse``) is not a change of membership and
    is not reported.
    """

    _sa_adapter: CollectionAdapter | None = None

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # The adapter links to the owner's state and attribute; the owner
        # re-adopts the list after unpickling, so only the members travel.
        return (InstrumentedList, (), None, iter(list(self)))

    def _adapter(self) -> CollectionAdapter | None:
        adapter = self._sa_adapter
        if adapter is None or adapter.invalidated:
            return None
        return adapter

    def append(self, item: Any, _sa_initiator: Any = None) -> None:
        """Append ``item`` to the end."""
        adapter = self._adapter()
        if adapter is not None:
            item = adapter.fire_append_event(item, _sa_initiator)
        list.append(self, item)

    def extend(self, items: Iterable[Any]) -> None:
        """Append each of ``items``."""
        for item in list(items):
            self.append(item)

    def __iadd__(self, items: Iterable[Any]) -> InstrumentedList:  # type: ignore[override]
        self.extend(items)
        return self

    def insert(self, index: SupportsIndex, item: Any) -> None:
        """Insert ``item`` before position ``index``."""
        adapter = self._adapter()
        if adapter is not None:
            item = adapter.fire_append_event(item)
        list.insert(self, index, item)

    def remove(self, item: Any, _sa_initiator: Any = None) -> None:
        """Remove the first member equal to ``item`` (``ValueError`` when absent).

        As in SQLAlchemy the remove event fires first, so a missing member
        still flags the object modified (its history shows no change).
        """
        adapter = self._adapter()
        if adapter is not None:
            adapter.fire_remove_event(item, _sa_initiator)
        list.remove(self, item)

    def pop(self, index: SupportsIndex = -1) -> Any:
        """Remove and return the member at ``index`` (the last by default)."""
        adapter = self._adapter()
        if adapter is None:
            return list.pop(self, index)
        adapter._before_change()
        item = list.pop(self, index)
        # Fired after the removal, as SQLAlchemy does: a duplicate member that
        # remains in the list no longer points back at the owner.
        adapter.fire_remove_event(item)
        return item

    def clear(self, _sa_initiator: Any = None) -> None:
        """Remove every member."""
        adapter = self._adapter()
        if adapter is not None and len(self):
            adapter._before_change()
            for item in list(self):
                adapter.fire_remove_event(item, _sa_initiator)
        list.clear(self)

    def __setitem__(self, index: Any, value: Any) -> None:
        adapter = self._adapter()
        if adapter is None:
            list.__setitem__(self, index, value)
            return
        if isinstance(index, slice):
            self._set_slice(index, value)
            return
        existing = list.__getitem__(self, index)
        # Like SQLAlchemy: always a remove event for the old member and an
        # append event for the new one, even when they are the same object.
        if existing is not None:
            adapter.fire_remove_event(existing)
        value = adapter.fire_append_event(value)
        list.__setitem__(self, index, value)

    def _set_slice(self, index: slice, value: Any) -> None:
        if value is self:
            return
        values = list(value)
        start, stop, step = index.indices(len(self))
        if step == 1:
            for _ in range(start, max(start, stop)):
                if len(self) > start:
                    del self[start]
            for i, item in enumerate(values):
                self.insert(start + i, item)
            return
        positions = list(range(start, stop, step))
        if len(values) != len(positions):
            raise ValueError(
                f"attempt to assign sequence of size {len(values)} to extended slice "
                f"of size {len(positions)}"
            )
        for i, item in zip(positions, values):
            self[i] = item

    def __delitem__(self, index: Any) -> None:
        adapter = self._adapter()
        if adapter is not None:
            removed = list.__getitem__(self, index)
            if isinstance(index, slice):
                if removed:
                    adapter._before_change()
                for item in removed:
                    adapter.fire_remove_event(item)
            else:
                adapter.fire_remove_event(removed)
        list.__delitem__(self, index)
