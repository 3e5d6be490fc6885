"""Shared constants of the ORM core: passive flags, marker symbols and state lookup."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

if TYPE_CHECKING:
    from shardsession.orm.attributes import InstrumentedAttribute
    from shardsession.orm.instrumentation import ClassManager
    from shardsession.orm.state import InstanceState

__all__ = [
    "ATTR_EMPTY",
    "DEFAULT_STATE_ATTR",
    "MANAGER_ATTR",
    "NEVER_SET",
    "NO_VALUE",
    "PASSIVE_NO_FETCH",
    "PASSIVE_NO_FETCH_RELATED",
    "PASSIVE_NO_INITIALIZE",
    "PASSIVE_NO_RESULT",
    "PASSIVE_OFF",
    "PASSIVE_ONLY_PERSISTENT",
    "PASSIVE_RETURN_NO_VALUE",
    "Mapped",
    "PassiveFlag",
    "instance_dict",
    "instance_state",
    "manager_of_class",
    "state_str",
]

DEFAULT_STATE_ATTR = "_sa_instance_state"
"""Key of an instance's ``__dict__`` holding its :class:`.InstanceState`."""

MANAGER_ATTR = "_sa_class_manager"
"""Name of the class attribute holding a mapped class's :class:`.ClassManager`."""


class _Symbol:
    """A named singleton marker that survives pickling with its identity."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self) -> str:
        # A string tells pickle to look the object up by this global name in
        # this module, so unpickling yields the very same singleton.
        return self.name

    def __bool__(self) -> bool:
        return False


NO_VALUE = _Symbol("NO_VALUE")
"""Marks an attribute that holds no value (absent from the instance dict)."""

NEVER_SET = NO_VALUE
"""Synonym of :data:`NO_VALUE` (as in SQLAlchemy since 1.4)."""

PASSIVE_NO_RESULT = _Symbol("PASSIVE_NO_RESULT")
"""Returned by a load that the passive flags did not allow to run."""

ATTR_EMPTY = _Symbol("ATTR_EMPTY")
"""Returned by a loader when there is nothing to load (use the default)."""


class PassiveFlag(enum.IntFlag):
    """Bit flags telling attribute operations what they may do to produce a value.

    The values and the pre-packaged combinations match SQLAlchemy's
    ``sqlalchemy.orm.PassiveFlag``.  In shardsession "SQL" means calling the
    loader callback the Session installs on a state (which asks a worker).
    """

    NO_CHANGE = 0
    CALLABLES_OK = 1
    SQL_OK = 2
    RELATED_OBJECT_OK = 4
    INIT_OK = 8
    NON_PERSISTENT_OK = 16
    LOAD_AGAINST_COMMITTED = 32
    NO_AUTOFLUSH = 64
    NO_RAISE = 128
    DEFERRED_HISTORY_LOAD = 256
    INCLUDE_PENDING_MUTATIONS = 512

    PASSIVE_OFF = RELATED_OBJECT_OK | NON_PERSISTENT_OK | INIT_OK | CALLABLES_OK | SQL_OK
    PASSIVE_RETURN_NO_VALUE = PASSIVE_OFF ^ INIT_OK
    PASSIVE_NO_INITIALIZE = PASSIVE_RETURN_NO_VALUE ^ CALLABLES_OK
    PASSIVE_NO_FETCH = PASSIVE_OFF ^ SQL_OK
    PASSIVE_NO_FETCH_RELATED = PASSIVE_OFF ^ RELATED_OBJECT_OK
    PASSIVE_ONLY_PERSISTENT = PASSIVE_OFF ^ NON_PERSISTENT_OK
    PASSIVE_MERGE = PASSIVE_OFF | NO_RAISE


PASSIVE_OFF = PassiveFlag.PASSIVE_OFF
PASSIVE_RETURN_NO_VALUE = PassiveFlag.PASSIVE_RETURN_NO_VALUE
PASSIVE_NO_INITIALIZE = PassiveFlag.PASSIVE_NO_INITIALIZE
PASSIVE_NO_FETCH = PassiveFlag.PASSIVE_NO_FETCH
PASSIVE_NO_FETCH_RELATED = PassiveFlag.PASSIVE_NO_FETCH_RELATED
PASSIVE_ONLY_PERSISTENT = PassiveFlag.PASSIVE_ONLY_PERSISTENT
PASSIVE_MERGE = PassiveFlag.PASSIVE_MERGE
SQL_OK = PassiveFlag.SQL_OK
INIT_OK = PassiveFlag.INIT_OK
CALLABLES_OK = PassiveFlag.CALLABLES_OK
NO_RAISE = PassiveFlag.NO_RAISE
NON_PERSISTENT_OK = PassiveFlag.NON_PERSISTENT_OK
INCLUDE_PENDING_MUTATIONS = PassiveFlag.INCLUDE_PENDING_MUTATIONS


def manager_of_class(cls: type) -> ClassManager | None:
    """Return the :class:`.ClassManager` of ``cls``, or ``None`` when it is not mapped."""
    manager = cls.__dict__.get(MANAGER_ATTR) if isinstance(cls, type) else None
    if manager is not None and manager.class_ is cls:
        return manager
    return None


def instance_state(instance: Any) -> InstanceState:
    """Return the :class:`.InstanceState` of a mapped object.

    This is the internal, fast lookup: it raises a bare :class:`AttributeError`
    for an unmapped object.  Prefer :func:`.object_state` or :func:`.inspect`,
    which raise :class:`~shardsession.exc.UnmappedInstanceError` instead.
    """
    try:
        return instance.__dict__[DEFAULT_STATE_ATTR]
    except (KeyError, AttributeError):
        pass
    manager = manager_of_class(type(instance))
    if manager is None:
        raise AttributeError(
            f"{type(instance).__name__!r} object has no instance state: it is not mapped"
        )
    # Instances built without running __init__ (cls.__new__, copy) get their
    # state on first use.
    return manager._new_state(instance)


def instance_dict(instance: Any) -> dict[str, Any]:
    """Return the dictionary holding the attribute values of a mapped object."""
    return instance.__dict__


def state_str(state: InstanceState) -> str:
    """Render a state's object for error messages: ``<User at 0x...>``."""
    obj = state.obj()
    if obj is None:
        return f"<{state.class_.__name__} (garbage collected)>"
    return f"<{state.class_.__name__} at {id(obj):#x}>"


_T = TypeVar("_T")


class Mapped(Generic[_T]):
    """Annotation marking a mapped attribute: ``name: Mapped[str]``.

    On a declarative class each ``Mapped[...]`` annotation becomes a column
    (or, with :func:`.relationship`, a relationship).  At runtime the class
    attribute is an :class:`.InstrumentedAttribute`, a subclass of this one;
    on instances it reads and writes a value of type ``_T``.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        @overload
        def __get__(self, instance: None, owner: Any) -> InstrumentedAttribute[_T]: ...

        @overload
        def __get__(self, instance: object, owner: Any) -> _T: ...

        def __get__(self, instance: object | None, owner: Any) -> Any: ...

        def __set__(self, instance: Any, value: _T) -> None: ...

        def __delete__(self, instance: Any) -> None: ...
