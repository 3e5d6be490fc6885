"""How attribute values are read, written, loaded and tracked.

One implementation object per mapped attribute: :class:`ScalarAttributeImpl`
for columns, :class:`ScalarObjectAttributeImpl` for many-to-one (and
one-to-one) relationships, :class:`CollectionAttributeImpl` for one-to-many
list collections.  ``back_populates`` pairs keep each other in step here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardsession import exc
from shardsession.orm.backref import (
    _backref_from_collection_append,
    _backref_from_collection_remove,
    _backref_from_scalar_set,
    _is_nothing,
)
from shardsession.orm.base import (
    ATTR_EMPTY,
    CALLABLES_OK,
    INCLUDE_PENDING_MUTATIONS,
    INIT_OK,
    NEVER_SET,
    NO_RAISE,
    NO_VALUE,
    PASSIVE_NO_FETCH,
    PASSIVE_NO_RESULT,
    PASSIVE_OFF,
    PASSIVE_ONLY_PERSISTENT,
    PASSIVE_RETURN_NO_VALUE,
    SQL_OK,
    PassiveFlag,
    _Symbol,
    instance_state,
    manager_of_class,
)
from shardsession.orm.collections import CollectionAdapter, InstrumentedList
from shardsession.orm.history import HISTORY_BLANK, History, merge_pending

if TYPE_CHECKING:
    from shardsession.orm.state import InstanceState

__all__ = [
    "AttributeImpl",
    "CollectionAttributeImpl",
    "EventToken",
    "ScalarAttributeImpl",
    "ScalarObjectAttributeImpl",
]

ATTR_WAS_SET = _Symbol("ATTR_WAS_SET")


class EventToken:
    """Identifies which attribute started a change and how (to stop back-reference loops)."""

    __slots__ = ("impl", "op")

    def __init__(self, impl: AttributeImpl, op: str) -> None:
        self.impl = impl
        self.op = op

    def __repr__(self) -> str:
        return f"<EventToken {self.impl} {self.op}>"


class AttributeImpl:
    """Base of the per-attribute implementations."""

    collection = False
    accepts_scalar_loader = False
    trackparent = False

    def __init__(self, class_: type, key: str, *, active_history: bool = False) -> None:
        self.class_ = class_
        self.key = key
        self.active_history = active_history
        self.parent_token = f"{class_.__module__}.{class_.__qualname__}.{key}"
        self.append_token = EventToken(self, "append")
        self.remove_token = EventToken(self, "remove")
        self.replace_token = EventToken(self, "replace")
        if not self.collection:
            # For a scalar, "append" (from a back-reference) is a replace.
            self.append_token = self.replace_token
        self.bulk_replace_token = EventToken(self, "bulk_replace")
        #: Key of the ``back_populates`` attribute on the related class, if any.
        self.backref_key: str | None = None

    def __str__(self) -> str:
        return f"{self.class_.__name__}.{self.key}"

    # -- loading ------------------------------------------------------------------

    def _should_load(self, state: InstanceState, passive: PassiveFlag) -> bool:
        raise NotImplementedError

    def _keys_to_load(self, state: InstanceState) -> set[str]:
        return {self.key}

    def _default_value(self, state: InstanceState, dict_: dict[str, Any]) -> Any:
        return None

    def get(
        self, state: InstanceState, dict_: dict[str, Any], passive: PassiveFlag = PASSIVE_OFF
    ) -> Any:
        """Return the value, loading it through the state's loader when allowed."""
        key = self.key
        if key in dict_:
            return dict_[key]
        # A recorded change (e.g. a delete) means there is nothing to load.
        if key not in state.committed_state or state.committed_state[key] is NO_VALUE:
            if not passive & CALLABLES_OK:
                return PASSIVE_NO_RESULT
            value = self._fire_loader(state, dict_, passive)
            if value is PASSIVE_NO_RESULT:
                return value
            if value is ATTR_WAS_SET:
                return dict_[key]
        if not passive & INIT_OK:
            return NO_VALUE
        return self._default_value(state, dict_)

    def _fire_loader(
        self, state: InstanceState, dict_: dict[str, Any], passive: PassiveFlag
    ) -> Any:
        if not self._should_load(state, passive):
            return ATTR_EMPTY
        if not passive & SQL_OK:
            return PASSIVE_NO_RESULT
        if state._loader is None and passive & NO_RAISE:
            return PASSIVE_NO_RESULT
        keys = self._keys_to_load(state)
        state._load(keys)
        if self.accepts_scalar_loader:
            state.expired_attributes.difference_update(keys)
            if not state.expired_attributes:
                state.expired = False
        if self.key not in dict_:
            raise exc.InvalidRequestError(
                f"The loader of {state.class_.__name__} did not load attribute {self.key!r}; "
                "a loader must set every key it is given (set_committed_value) or raise "
                "ObjectDeletedError"
            )
        return ATTR_WAS_SET

    # -- parent tracking (for delete-orphan) ---------------------------------------

    def hasparent(self, state: InstanceState, optimistic: bool = False) -> bool:
        """Return whether ``state`` is currently referenced through this attribute.

        ``optimistic`` is returned for objects never seen by this attribute.
        """
        return state._parents.get(self.parent_token, optimistic) is not False

    def sethasparent(self, state: InstanceState, parent_state: InstanceState, value: bool) -> None:
        """Record that ``parent_state`` does (or no longer does) reference ``state``."""
        if value:
            state._parents[self.parent_token] = parent_state
        else:
            current = state._parents.get(self.parent_token)
            if current is None or current is parent_state or current is False:
                state._parents[self.parent_token] = False

    # -- to override ---------------------------------------------------------------

    def set(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
        check_old: Any = None,
        pop: bool = False,
    ) -> None:
        """Set the attribute to ``value`` with change tracking."""
        raise NotImplementedError

    def delete(self, state: InstanceState, dict_: dict[str, Any]) -> None:
        """Delete the attribute's value with change tracking."""
        raise NotImplementedError

    def get_history(
        self, state: InstanceState, dict_: dict[str, Any], passive: PassiveFlag = PASSIVE_OFF
    ) -> History:
        """Return the attribute's :class:`.History`."""
        raise NotImplementedError

    def set_committed_value(self, state: InstanceState, dict_: dict[str, Any], value: Any) -> Any:
        """Store ``value`` as the loaded, unchanged value."""
        dict_[self.key] = value
        state._commit([self.key])
        return value

    def _dispose(self, value: Any) -> None:
        pass


class ScalarAttributeImpl(AttributeImpl):
    """A column attribute: values compared with ``==`` for history."""

    accepts_scalar_loader = True

    def _should_load(self, state: InstanceState, passive: PassiveFlag) -> bool:
        return self.key in state.expired_attributes

    def _keys_to_load(self, state: InstanceState) -> set[str]:
        # Load every expired, unchanged column at once, as one refresh.
        keys = {k for k in state.expired_attributes if k not in state.committed_state}
        keys.add(self.key)
        return keys

    def _old_value(self, state: InstanceState, dict_: dict[str, Any]) -> Any:
        # An object without identity has nothing to load: skip the loader machinery.
        if self.active_history and state.key is not None:
            return self.get(state, dict_, PASSIVE_RETURN_NO_VALUE)
        return dict_.get(self.key, NO_VALUE)

    def set(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
        check_old: Any = None,
        pop: bool = False,
    ) -> None:
        """Set the column value, remembering the committed one for history."""
        old = self._old_value(state, dict_)
        state._modified_event(dict_, self, old)
        dict_[self.key] = value

    def delete(self, state: InstanceState, dict_: dict[str, Any]) -> None:
        """Remove the column value; raise ``AttributeError`` when there is none."""
        old = self._old_value(state, dict_)
        state._modified_event(dict_, self, old)
        existing = dict_.pop(self.key, NO_VALUE)
        if existing is NO_VALUE and old is NO_VALUE and not state.expired:
            raise AttributeError(f"{self} object does not have a value")

    def get_history(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> History:
        """Compare the current value with the committed one using ``==``."""
        if self.key in dict_:
            return History.from_scalar_attribute(state, self.key, dict_[self.key])
        if self.key in state.committed_state:
            return History.from_scalar_attribute(state, self.key, NO_VALUE)
        if passive & INIT_OK:
            passive ^= INIT_OK
        current = self.get(state, dict_, passive)
        if current is PASSIVE_NO_RESULT:
            return HISTORY_BLANK
        return History.from_scalar_attribute(state, self.key, current)


class _RelationshipImpl(AttributeImpl):
    trackparent = True

    def __init__(self, class_: type, key: str, *, lazy: str = "select", **kw: Any) -> None:
        super().__init__(class_, key, **kw)
        self.lazy = lazy

    def _should_load(self, state: InstanceState, passive: PassiveFlag) -> bool:
        # Session.enable_relationship_loading() lets a keyless object load too.
        if (state.key is None and not state.load_pending) or self.lazy == "noload":
            return False
        if self.lazy == "raise" and not passive & NO_RAISE:
            raise exc.InvalidRequestError(
                f"'{self}' is not available due to lazy='raise'; load it with the query "
                "(e.g. selectinload) instead"
            )
        return True

    def _check_value(self, value: Any) -> None:
        if value is not None and manager_of_class(type(value)) is None:
            raise TypeError(f"Attribute '{self}' accepts mapped objects, not {value!r}")

    def _backref_impl(self, child: Any) -> tuple[InstanceState, AttributeImpl]:
        child_state = instance_state(child)
        assert self.backref_key is not None
        return child_state, child_state.manager[self.backref_key].impl

    def append(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> None:
        raise NotImplementedError

    def pop(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> None:
        raise NotImplementedError


class ScalarObjectAttributeImpl(_RelationshipImpl):
    """A many-to-one (or one-to-one) attribute: objects compared by identity."""

    def set(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
        check_old: Any = None,
        pop: bool = False,
    ) -> None:
        """Point the attribute at ``value`` (or ``None``), updating the other end."""
        self._check_value(value)
        if self.active_history:
            old = self.get(state, dict_, PASSIVE_ONLY_PERSISTENT)
        else:
            old = self.get(state, dict_, (PASSIVE_NO_FETCH ^ INIT_OK) | NO_RAISE)
        if check_old is not None and old is not PASSIVE_NO_RESULT and check_old is not old:
            if pop:
                return
            raise ValueError(f"Object {check_old!r} not associated with attribute '{self}'")
        value = self.fire_replace_event(state, dict_, value, old, initiator)
        dict_[self.key] = value

    def fire_replace_event(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        previous: Any,
        initiator: EventToken | None,
    ) -> Any:
        """Run the side effects of replacing ``previous`` with ``value``."""
        if previous is not value and not _is_nothing(previous):
            self.sethasparent(instance_state(previous), state, False)
        if self.backref_key is not None:
            _backref_from_scalar_set(self, state, value, previous, initiator or self.replace_token)
        state._modified_event(dict_, self, previous)
        if value is not None:
            self.sethasparent(instance_state(value), state, True)
        return value

    def delete(self, state: InstanceState, dict_: dict[str, Any]) -> None:
        """Unset the related object, updating the other end."""
        old = self.get(state, dict_, (PASSIVE_NO_FETCH ^ INIT_OK) | NO_RAISE)
        if not _is_nothing(old):
            self.sethasparent(instance_state(old), state, False)
        if self.backref_key is not None:
            _backref_from_collection_remove(self, state, old, self.remove_token)
        state._modified_event(dict_, self, old)
        existing = dict_.pop(self.key, NO_VALUE)
        if existing is NO_VALUE and old is not PASSIVE_NO_RESULT and state.key is None:
            raise AttributeError(f"{self} object does not have a value")

    def append(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> None:
        """Back-reference entry: the other side added this object; point at ``value``."""
        self.set(state, dict_, value, initiator, passive)

    def pop(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> None:
        """Back-reference entry: unset the attribute if it still points at ``value``."""
        self.set(state, dict_, None, initiator, passive, check_old=value, pop=True)

    def get_history(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> History:
        """Compare the current object with the committed one by identity."""
        if self.key in dict_:
            current = dict_[self.key]
        else:
            if passive & INIT_OK:
                passive ^= INIT_OK
            current = self.get(state, dict_, passive)
            if current is PASSIVE_NO_RESULT:
                return HISTORY_BLANK
        return History.from_object_attribute(state, self.key, current)


class CollectionAttributeImpl(_RelationshipImpl):
    """A one-to-many list collection: membership compared by identity."""

    collection = True

    def _adopt(self, state: InstanceState, value: Any) -> Any:
        # Lists read back from a pickle (or assigned to __dict__ directly) get
        # their adapter on first use.
        if isinstance(value, InstrumentedList):
            adapter = value._sa_adapter
            if adapter is None or adapter.owner_state is not state or adapter.attr is not self:
                value._sa_adapter = CollectionAdapter(self, state, value)
        return value

    def _new_collection(self, state: InstanceState, items: Any = ()) -> InstrumentedList:
        data = InstrumentedList()
        list.extend(data, items)
        data._sa_adapter = CollectionAdapter(self, state, data)
        return data

    def _dispose(self, value: Any) -> None:
        adapter = getattr(value, "_sa_adapter", None)
        if adapter is not None:
            adapter.invalidated = True

    def _default_value(self, state: InstanceState, dict_: dict[str, Any]) -> Any:
        if self.key in state._empty_collections:
            return state._empty_collections[self.key]
        data = self._new_collection(state)
        assert data._sa_adapter is not None
        data._sa_adapter.empty = True
        state._empty_collections[self.key] = data
        return data

    def get(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> Any:
        """Return the collection, loading it or creating an empty one as allowed."""
        value = super().get(state, dict_, passive)
        if value is PASSIVE_NO_RESULT or value is NO_VALUE:
            return value
        return self._adopt(state, value)

    def fire_append_event(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None,
    ) -> Any:
        """Run the side effects of adding ``value`` to the collection."""
        self._check_value(value)
        if self.backref_key is not None and value is not None:
            _backref_from_collection_append(self, state, value, initiator or self.append_token)
        state._modified_event(dict_, self, NEVER_SET, True)
        if value is not None:
            self.sethasparent(instance_state(value), state, True)
        return value

    def fire_remove_event(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None,
    ) -> None:
        """Run the side effects of removing ``value`` from the collection."""
        if value is not None:
            self.sethasparent(instance_state(value), state, False)
        if self.backref_key is not None:
            _backref_from_collection_remove(self, state, value, initiator or self.remove_token)
        state._modified_event(dict_, self, NEVER_SET, True)

    def append(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> None:
        """Append ``value``; on an unloaded collection, record it as a pending change."""
        collection = self.get(state, dict_, passive)
        if collection is PASSIVE_NO_RESULT:
            self.fire_append_event(state, dict_, value, initiator)
            state._get_pending_mutation(self.key).append(value)
        else:
            collection._sa_adapter.append_with_event(value, initiator)

    def remove(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> None:
        """Remove ``value``; on an unloaded collection, record it as a pending change."""
        collection = self.get(state, dict_, passive)
        if collection is PASSIVE_NO_RESULT:
            self.fire_remove_event(state, dict_, value, initiator)
            state._get_pending_mutation(self.key).remove(value)
        else:
            collection._sa_adapter.remove_with_event(value, initiator)

    def pop(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> None:
        """Like :meth:`remove` but ignore a value that is not a member."""
        try:
            self.remove(state, dict_, value, initiator, passive)
        except ValueError:
            pass

    def set(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        value: Any,
        initiator: EventToken | None = None,
        passive: PassiveFlag = PASSIVE_OFF,
        check_old: Any = None,
        pop: bool = False,
    ) -> None:
        """Replace the whole collection: members are diffed and events fired."""
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise TypeError(
                f"Attribute '{self}' is a list collection; assign a list, not {value!r}"
            )
        new_values = list(value)
        old = self.get(state, dict_, PASSIVE_ONLY_PERSISTENT | (passive & NO_RAISE))
        if old is PASSIVE_NO_RESULT:
            old = self._default_value(state, dict_)
        elif old is value:
            return
        old_adapter: CollectionAdapter = old._sa_adapter
        old_adapter._reset_empty()
        state._modified_event(dict_, self, old, True)
        new = self._new_collection(state)
        dict_[self.key] = new
        token = initiator or self.bulk_replace_token
        old_ids = {id(v) for v in old}
        new_ids = {id(v) for v in new_values}
        for member in new_values:
            if id(member) in old_ids:
                list.append(new, member)
            else:
                list.append(new, self.fire_append_event(state, dict_, member, token))
        for member in list(old):
            if id(member) not in new_ids:
                self.fire_remove_event(state, dict_, member, token)
        self._dispose(old)

    def delete(self, state: InstanceState, dict_: dict[str, Any]) -> None:
        """Empty and remove the collection, firing remove events."""
        if self.key not in dict_:
            return
        state._modified_event(dict_, self, NEVER_SET, True)
        collection = self.get(state, dict_)
        collection._sa_adapter.clear_with_event()
        del dict_[self.key]

    def set_committed_value(self, state: InstanceState, dict_: dict[str, Any], value: Any) -> Any:
        """Install ``value`` as the loaded collection, replaying pending changes."""
        data = self._new_collection(state, value or ())
        old = dict_.get(self.key)
        if old is not None:
            self._dispose(old)
        state._empty_collections.pop(self.key, None)
        dict_[self.key] = data
        state._commit([self.key])
        pending = state._pending_mutations.pop(self.key, None)
        if pending is not None:
            state._modified_event(dict_, self, data, True)
            for item in pending.added_items:
                if not any(item is v for v in data):
                    list.append(data, item)
            for item in pending.deleted_items:
                data._sa_adapter.remove_without_event(item)  # type: ignore[union-attr]
        for item in data:
            if item is not None:
                self.sethasparent(instance_state(item), state, True)
        return data

    def get_history(
        self,
        state: InstanceState,
        dict_: dict[str, Any],
        passive: PassiveFlag = PASSIVE_OFF,
    ) -> History:
        """Diff the collection against its committed snapshot by identity."""
        current = self.get(state, dict_, passive)
        pending = state._pending_mutations.get(self.key)
        if current is PASSIVE_NO_RESULT:
            if passive & INCLUDE_PENDING_MUTATIONS and pending is not None:
                return merge_pending(HISTORY_BLANK, pending.added_items, pending.deleted_items)
            return HISTORY_BLANK
        history = History.from_collection(state, self.key, current)
        if passive & INCLUDE_PENDING_MUTATIONS and pending is not None:
            return merge_pending(history, pending.added_items, pending.deleted_items)
        return history
