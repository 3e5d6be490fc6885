"""The :func:`inspect` entry point."""

from __future__ import annotations

from typing import Any

from shardsession import exc
from shardsession.orm.attributes import InstrumentedAttribute
from shardsession.orm.base import manager_of_class
from shardsession.orm.mapper import Mapper
from shardsession.orm.state import InstanceState
from shardsession.orm.util import _unmapped_message, object_state

__all__ = ["inspect"]


def inspect(subject: Any, raiseerr: bool = True) -> Any:
    """Return the ORM's view of ``subject``.

    - a mapped class → its :class:`.Mapper`;
    - a mapped instance → its :class:`.InstanceState`;
    - a :class:`.Mapper`, :class:`.InstanceState` or instrumented attribute → itself.

    :param raiseerr: when ``False``, return ``None`` for anything else instead of raising.
    :raises UnmappedClassError: for a class that is not mapped.
    :raises UnmappedInstanceError: for an instance of an unmapped class.
    """
    if isinstance(subject, (Mapper, InstanceState, InstrumentedAttribute)):
        return subject
    if isinstance(subject, type):
        manager = manager_of_class(subject)
        if manager is not None and manager.mapper is not None:
            return manager.mapper
        if not raiseerr:
            return None
        raise exc.UnmappedClassError(
            f"Class '{subject.__module__}.{subject.__qualname__}' is not mapped; "
            "declare it on a DeclarativeBase subclass with __tablename__"
        )
    if manager_of_class(type(subject)) is not None:
        return object_state(subject)
    if not raiseerr:
        return None
    raise exc.UnmappedInstanceError(
        f"No inspection is available for {subject!r}: {_unmapped_message(subject)}"
    )
