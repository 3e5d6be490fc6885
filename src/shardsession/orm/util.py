"""State utilities that raise informative errors for unmapped objects."""

from __future__ import annotations

from typing import Any

from shardsession import exc
from shardsession.orm.base import instance_state, manager_of_class
from shardsession.orm.state import InstanceState

__all__ = ["object_mapper", "object_state", "was_deleted"]


def object_state(instance: Any) -> InstanceState:
    """Return the :class:`.InstanceState` of a mapped object.

    :raises UnmappedInstanceError: when ``instance`` is not an instance of a
        mapped class (``inspect(instance)`` behaves the same).
    """
    if manager_of_class(type(instance)) is None:
        raise exc.UnmappedInstanceError(_unmapped_message(instance))
    return instance_state(instance)


def object_mapper(instance: Any) -> Any:
    """Return the :class:`.Mapper` of a mapped object's class."""
    return object_state(instance).mapper


def was_deleted(object_: Any) -> bool:
    """Return ``True`` when ``object_`` was deleted in a flush.

    It stays ``True`` after the deleting transaction commits and the object is
    detached; it is ``False`` for objects only marked with ``Session.delete()``
    and not flushed yet.
    """
    return object_state(object_).was_deleted


def _unmapped_message(instance: Any) -> str:
    cls = type(instance)
    if isinstance(instance, type):
        return (
            f"Class object {instance.__name__!r} was given where an instance of a mapped "
            "class is expected"
        )
    return f"Class '{cls.__module__}.{cls.__qualname__}' is not mapped"
