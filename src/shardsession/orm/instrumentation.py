"""Per-class bookkeeping of mapped classes: which attributes are instrumented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shardsession.orm.base import DEFAULT_STATE_ATTR, MANAGER_ATTR, manager_of_class

if TYPE_CHECKING:
    from shardsession.orm.attributes import InstrumentedAttribute
    from shardsession.orm.mapper import Mapper
    from shardsession.orm.state import InstanceState

__all__ = ["ClassManager", "is_instrumented", "manager_of_class", "register_class"]


_InstanceState: Any = None


class ClassManager:
    """The registry of instrumented attributes of one mapped class.

    It maps attribute keys to the :class:`.InstrumentedAttribute` descriptors
    installed on the class and creates :class:`.InstanceState` objects.
    """

    def __init__(self, class_: type) -> None:
        self.class_ = class_
        self.attributes: dict[str, InstrumentedAttribute[Any]] = {}
        self.mapper: Mapper | None = None

    def __repr__(self) -> str:
        return f"<ClassManager of {self.class_.__name__}>"

    def __iter__(self) -> Iterator[str]:
        return iter(self.attributes)

    def __contains__(self, key: object) -> bool:
        return key in self.attributes

    def __getitem__(self, key: str) -> InstrumentedAttribute[Any]:
        return self.attributes[key]

    def __len__(self) -> int:
        return len(self.attributes)

    def keys(self) -> list[str]:
        """Return the instrumented attribute keys in mapping order."""
        return list(self.attributes)

    def instrument_attribute(self, key: str, attr: InstrumentedAttribute[Any]) -> None:
        """Install ``attr`` as the descriptor for ``key`` on the class."""
        self.attributes[key] = attr
        setattr(self.class_, key, attr)

    def _new_state(self, instance: Any) -> InstanceState:
        global _InstanceState
        if _InstanceState is None:  # imported late: the state module imports this one
            from shardsession.orm.state import InstanceState as _InstanceState
        state = _InstanceState(instance, self)
        instance.__dict__[DEFAULT_STATE_ATTR] = state
        return state

    def new_instance(self) -> Any:
        """Create an instance without calling ``__init__`` (how loaded rows become objects)."""
        instance = self.class_.__new__(self.class_)
        self._new_state(instance)
        return instance

    def has_state(self, instance: Any) -> bool:
        """Return ``True`` when ``instance`` already carries an instance state."""
        return DEFAULT_STATE_ATTR in instance.__dict__


def register_class(class_: type) -> ClassManager:
    """Create (or return) the :class:`ClassManager` of ``class_``."""
    manager = manager_of_class(class_)
    if manager is None:
        manager = ClassManager(class_)
        setattr(class_, MANAGER_ATTR, manager)
    return manager


def is_instrumented(instance: Any, key: str) -> bool:
    """Return ``True`` when attribute ``key`` of ``instance`` is instrumented by the ORM.

    This holds for the mapped attributes (columns and relationships) of mapped
    classes; plain Python attributes and unmapped objects give ``False``.
    """
    manager = manager_of_class(type(instance))
    return manager is not None and key in manager
