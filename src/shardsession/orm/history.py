"""The :class:`History` triple and how it is computed from a committed snapshot."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from shardsession.orm.base import NEVER_SET, NO_VALUE, PASSIVE_NO_RESULT

__all__ = ["HISTORY_BLANK", "History"]

# Values of a committed snapshot meaning "the previous value is not known".
_UNKNOWN_PREVIOUS = (NO_VALUE, PASSIVE_NO_RESULT)
# Placeholder: the attribute has no entry in ``committed_state`` at all.
_NO_SNAPSHOT = object()


class History(NamedTuple):
    """The changes of one attribute since its last committed snapshot.

    A named tuple of three sequences: ``added`` (values set or appended since
    the snapshot), ``unchanged`` (values present both in the snapshot and now)
    and ``deleted`` (values replaced or removed since the snapshot).  Obtain one
    with :func:`~shardsession.orm.attributes.get_history`.
    """

    added: Sequence[Any]
    unchanged: Sequence[Any]
    deleted: Sequence[Any]

    def __bool__(self) -> bool:
        return self != HISTORY_BLANK

    def empty(self) -> bool:
        """Return ``True`` when the attribute has neither changes nor an unchanged value."""
        return not bool(self.added or self.deleted) and not self.unchanged

    def has_changes(self) -> bool:
        """Return ``True`` when something was added or deleted since the snapshot."""
        return bool(self.added or self.deleted)

    def sum(self) -> Sequence[Any]:
        """Return ``added + unchanged + deleted`` as one list."""
        return list(self.added or []) + list(self.unchanged or []) + list(self.deleted or [])

    def non_deleted(self) -> Sequence[Any]:
        """Return ``added + unchanged``: the values the attribute holds now."""
        return list(self.added or []) + list(self.unchanged or [])

    def non_added(self) -> Sequence[Any]:
        """Return ``unchanged + deleted``: the values the snapshot held."""
        return list(self.unchanged or []) + list(self.deleted or [])

    def as_state(self) -> History:
        """Return the same history with every object replaced by its :class:`.InstanceState`."""
        from shardsession.orm.base import instance_state

        def conv(values: Sequence[Any]) -> Sequence[Any]:
            return [instance_state(v) if v is not None else None for v in values]

        return History(conv(self.added), conv(self.unchanged), conv(self.deleted))

    @classmethod
    def from_scalar_attribute(cls, state: Any, key: str, current: Any) -> History:
        """Build the history of a plain column attribute whose value is ``current``.

        Values are compared with ``==``, so setting an attribute back to its
        committed value yields no change.
        """
        original = state.committed_state.get(key, _NO_SNAPSHOT)
        if original is _NO_SNAPSHOT:
            if current is NO_VALUE:
                return cls((), (), ())
            return cls((), [current], ())
        if current is not NO_VALUE and _equal(current, original):
            return cls((), [current], ())
        if original in _UNKNOWN_PREVIOUS or original is NEVER_SET:
            deleted: Sequence[Any] = ()
            # A delete of a value that was never known shows as "set to None".
            if current is NO_VALUE or current is PASSIVE_NO_RESULT:
                current = None
        else:
            deleted = [original]
        if current is NO_VALUE:
            return cls((), (), deleted)
        return cls([current], (), deleted)

    @classmethod
    def from_object_attribute(cls, state: Any, key: str, current: Any) -> History:
        """Build the history of a many-to-one attribute (objects compared by identity).

        A previous value of ``None`` is not reported as deleted.
        """
        original = state.committed_state.get(key, _NO_SNAPSHOT)
        if original is _NO_SNAPSHOT:
            if current is NO_VALUE or current is NEVER_SET:
                return cls((), (), ())
            return cls((), [current], ())
        if current is original and current is not NEVER_SET:
            return cls((), [current], ())
        if original in _UNKNOWN_PREVIOUS or original is NEVER_SET or original is None:
            deleted: Sequence[Any] = ()
            if current is NO_VALUE or current is PASSIVE_NO_RESULT:
                current = None
        else:
            deleted = [original]
        if current is NO_VALUE:
            return cls((), (), deleted)
        return cls([current], (), deleted)

    @classmethod
    def from_collection(cls, state: Any, key: str, current: Any) -> History:
        """Build the history of a list collection by diffing it against its snapshot.

        Members are compared by identity; order changes are not reported.
        """
        original = state.committed_state.get(key, _NO_SNAPSHOT)
        if current is NO_VALUE:
            return cls((), (), ())
        current_list = list(current)
        if original is NO_VALUE or original is NEVER_SET:
            return cls(current_list, (), ())
        if original is _NO_SNAPSHOT:
            return cls((), current_list, ())
        original_list = list(original) if original is not None else []
        current_ids = {id(v) for v in current_list}
        original_ids = {id(v) for v in original_list}
        return cls(
            [v for v in current_list if id(v) not in original_ids],
            [v for v in current_list if id(v) in original_ids],
            [v for v in original_list if id(v) not in current_ids],
        )


def _equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        result = a == b
    except Exception:
        return False
    # Comparing SQL expressions produces an expression, not a bool: treat as changed.
    return result is True or (isinstance(result, bool) and result)


def merge_pending(history: History, added: Iterable[Any], removed: Iterable[Any]) -> History:
    """Fold changes recorded against a not-yet-loaded collection into ``history``."""
    added_list = list(history.added)
    deleted_list = list(history.deleted)
    unchanged_list = list(history.unchanged)
    for value in added:
        if not any(value is v for v in added_list + unchanged_list):
            added_list.append(value)
    for value in removed:
        if any(value is v for v in unchanged_list):
            unchanged_list = [v for v in unchanged_list if v is not value]
            deleted_list.append(value)
        elif any(value is v for v in added_list):
            added_list = [v for v in added_list if v is not value]
        elif not any(value is v for v in deleted_list):
            deleted_list.append(value)
    return History(added_list, unchanged_list, deleted_list)


HISTORY_BLANK = History((), (), ())
"""The history of an attribute with no value and no changes."""
