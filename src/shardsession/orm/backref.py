"""Keeping the two ends of a ``back_populates`` pair in step.

Each handler runs when one end changes and applies the mirror change to the
other end; event tokens stop the mirrored change from echoing back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardsession.orm.base import NEVER_SET, NO_VALUE, PASSIVE_NO_FETCH, PASSIVE_NO_RESULT

if TYPE_CHECKING:
    from shardsession.orm.attribute_impl import AttributeImpl, EventToken
    from shardsession.orm.state import InstanceState

_NOTHING = (None, NO_VALUE, PASSIVE_NO_RESULT, NEVER_SET)


def _is_nothing(value: Any) -> bool:
    return any(value is v for v in _NOTHING)


def _backref_from_collection_append(
    parent_impl: AttributeImpl, state: InstanceState, child: Any, initiator: EventToken
) -> None:
    child_state, child_impl = parent_impl._backref_impl(child)  # type: ignore[attr-defined]
    if initiator is child_impl.append_token or initiator is child_impl.bulk_replace_token:
        return
    child_impl.append(child_state, child_state.dict, state.obj(), initiator, PASSIVE_NO_FETCH)


def _backref_from_collection_remove(
    parent_impl: AttributeImpl, state: InstanceState, child: Any, initiator: EventToken
) -> None:
    if _is_nothing(child):
        return
    child_state, child_impl = parent_impl._backref_impl(child)  # type: ignore[attr-defined]
    if child_impl.collection:
        skip = (child_impl.remove_token, child_impl.bulk_replace_token)
        check_dupes = False
    else:
        skip = (child_impl.remove_token, child_impl.replace_token)
        check_dupes = parent_impl.collection
    if initiator is skip[0] or initiator is skip[1]:
        return
    if check_dupes:
        members = state.dict.get(parent_impl.key, ())
        if sum(1 for m in members if m is child) > 1:
            return
    child_impl.pop(child_state, child_state.dict, state.obj(), initiator, PASSIVE_NO_FETCH)


def _backref_from_scalar_set(
    parent_impl: AttributeImpl,
    state: InstanceState,
    child: Any,
    oldchild: Any,
    initiator: EventToken,
) -> None:
    if oldchild is child:
        return
    if not _is_nothing(oldchild):
        old_state, old_impl = parent_impl._backref_impl(oldchild)  # type: ignore[attr-defined]
        check = old_impl.remove_token if old_impl.collection else old_impl.replace_token
        if initiator is not check:
            old_impl.pop(
                old_state, old_state.dict, state.obj(), parent_impl.append_token, PASSIVE_NO_FETCH
            )
    if child is not None:
        child_state, child_impl = parent_impl._backref_impl(child)  # type: ignore[attr-defined]
        if initiator is child_impl.append_token:
            return
        if child_impl.collection and initiator is child_impl.bulk_replace_token:
            return
        child_impl.append(child_state, child_state.dict, state.obj(), initiator, PASSIVE_NO_FETCH)
