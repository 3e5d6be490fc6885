"""Instrumented attributes and the attribute/state utility functions.

The functions here have the names, arguments and behaviour of
``sqlalchemy.orm.attributes``: :func:`get_history`, :func:`set_committed_value`,
:func:`flag_modified`, ... They work on transient and detached objects as
well as on objects that belong to a session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from shardsession import exc
from shardsession.orm.attribute_impl import AttributeImpl, CollectionAttributeImpl
from shardsession.orm.base import (
    NO_VALUE,
    PASSIVE_NO_FETCH,
    PASSIVE_NO_FETCH_RELATED,
    PASSIVE_NO_INITIALIZE,
    PASSIVE_OFF,
    PASSIVE_ONLY_PERSISTENT,
    PASSIVE_RETURN_NO_VALUE,
    Mapped,
    PassiveFlag,
    instance_dict,
    instance_state,
)
from shardsession.orm.collections import CollectionAdapter
from shardsession.orm.history import HISTORY_BLANK, History

if TYPE_CHECKING:
    from shardsession.orm.interfaces import MapperProperty

__all__ = [
    "HISTORY_BLANK",
    "NO_VALUE",
    "PASSIVE_NO_FETCH",
    "PASSIVE_NO_FETCH_RELATED",
    "PASSIVE_NO_INITIALIZE",
    "PASSIVE_OFF",
    "PASSIVE_ONLY_PERSISTENT",
    "PASSIVE_RETURN_NO_VALUE",
    "History",
    "InstrumentedAttribute",
    "PassiveFlag",
    "QueryableAttribute",
    "del_attribute",
    "flag_dirty",
    "flag_modified",
    "get_attribute",
    "get_history",
    "init_collection",
    "instance_dict",
    "instance_state",
    "set_attribute",
    "set_committed_value",
]

_T = TypeVar("_T")


class InstrumentedAttribute(Mapped[_T]):
    """The descriptor installed on a mapped class for each mapped attribute.

    On an instance it reads and writes the value with change tracking.  On the
    class (``User.name``) it stands for the mapped column in SQL expressions:
    :meth:`__clause_element__` returns the :class:`~shardsession.sql.Column`
    and the comparison operators and column methods (``like``, ``in_``,
    ``desc``, ...) are forwarded to it.
    """

    def __init__(self, class_: type, key: str, prop: MapperProperty) -> None:
        self.class_ = class_
        self.key = key
        self.prop = prop

    def __repr__(self) -> str:
        return f"<InstrumentedAttribute {self.class_.__name__}.{self.key}>"

    def __str__(self) -> str:
        return f"{self.class_.__name__}.{self.key}"

    __hash__ = object.__hash__

    @property
    def impl(self) -> AttributeImpl:
        """The :class:`.AttributeImpl` doing the work (relationships configure on first use)."""
        return self.prop._get_impl()

    @property
    def parent(self) -> Any:
        """The :class:`.Mapper` of the class owning the attribute."""
        return self.prop.parent

    @property
    def mapper(self) -> Any:
        """For a relationship, the related class's :class:`.Mapper`."""
        return self.prop.mapper

    def __get__(self, instance: Any, owner: Any) -> Any:
        if instance is None:
            return self
        dict_ = instance.__dict__
        impl = self.impl
        if not impl.collection and self.key in dict_:
            return dict_[self.key]
        return impl.get(instance_state(instance), dict_)

    def __set__(self, instance: Any, value: Any) -> None:
        self.impl.set(instance_state(instance), instance.__dict__, value)

    def __delete__(self, instance: Any) -> None:
        self.impl.delete(instance_state(instance), instance.__dict__)

    # -- SQL expression side --------------------------------------------------------

    def __clause_element__(self) -> Any:
        """Return the column this attribute maps (relationships raise)."""
        return self.prop._clause_element()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("class_", "key", "prop"):
            raise AttributeError(name)
        try:
            target = self.prop._clause_element()
        except exc.InvalidRequestError:
            raise AttributeError(
                f"Neither {self!r} nor its relationship has an attribute {name!r}"
            ) from None
        try:
            return getattr(target, name)
        except AttributeError:
            raise AttributeError(
                f"Neither {self!r} nor the column it maps has an attribute {name!r}"
            ) from None

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        return self.__clause_element__() == other

    def __ne__(self, other: object) -> Any:  # type: ignore[override]
        return self.__clause_element__() != other

    def __lt__(self, other: Any) -> Any:
        return self.__clause_element__() < other

    def __le__(self, other: Any) -> Any:
        return self.__clause_element__() <= other

    def __gt__(self, other: Any) -> Any:
        return self.__clause_element__() > other

    def __ge__(self, other: Any) -> Any:
        return self.__clause_element__() >= other

    def __add__(self, other: Any) -> Any:
        return self.__clause_element__() + other

    def __radd__(self, other: Any) -> Any:
        return other + self.__clause_element__()

    def __sub__(self, other: Any) -> Any:
        return self.__clause_element__() - other

    def __rsub__(self, other: Any) -> Any:
        return other - self.__clause_element__()

    def __mul__(self, other: Any) -> Any:
        return self.__clause_element__() * other

    def __rmul__(self, other: Any) -> Any:
        return other * self.__clause_element__()

    def __truediv__(self, other: Any) -> Any:
        return self.__clause_element__() / other

    def __rtruediv__(self, other: Any) -> Any:
        return other / self.__clause_element__()

    def __floordiv__(self, other: Any) -> Any:
        return self.__clause_element__() // other

    def __mod__(self, other: Any) -> Any:
        return self.__clause_element__() % other

    def __neg__(self) -> Any:
        return -self.__clause_element__()

    def __invert__(self) -> Any:
        return ~self.__clause_element__()

    def __and__(self, other: Any) -> Any:
        return self.__clause_element__() & other

    def __or__(self, other: Any) -> Any:
        return self.__clause_element__() | other

    def __getitem__(self, index: Any) -> Any:
        return self.__clause_element__()[index]

    def __lshift__(self, other: Any) -> Any:
        return self.__clause_element__() << other

    def __rshift__(self, other: Any) -> Any:
        return self.__clause_element__() >> other

    # Defined last: inside the class body this name shadows the builtin.
    @property
    def property(self) -> MapperProperty:
        """The :class:`.ColumnProperty` or :class:`.RelationshipProperty` mapped here."""
        return self.prop


QueryableAttribute = InstrumentedAttribute
"""Alias of :class:`InstrumentedAttribute` (SQLAlchemy's base-class name)."""


# -- utility functions ----------------------------------------------------------------


def _impl(instance: Any, key: str) -> tuple[Any, AttributeImpl]:
    state = instance_state(instance)
    try:
        attr = state.manager[key]
    except KeyError:
        raise AttributeError(
            f"{type(instance).__name__!r} has no mapped attribute {key!r}"
        ) from None
    return state, attr.impl


def get_history(obj: Any, key: str, passive: PassiveFlag = PASSIVE_OFF) -> History:
    """Return a :class:`.History` of the changes to attribute ``key`` of ``obj``.

    The history compares the current value with the value at the last
    snapshot (load, flush or :func:`set_committed_value`).  With the default
    ``passive=PASSIVE_OFF`` an unloaded attribute is loaded first; pass
    ``PassiveFlag.PASSIVE_NO_INITIALIZE`` to never load, in which case an
    unloaded attribute reports an empty history.

    :param obj: a mapped object.
    :param key: the attribute name.
    :param passive: a :class:`.PassiveFlag` saying what may be done to get the value.
    """
    state, impl = _impl(obj, key)
    return impl.get_history(state, state.dict, passive)


def set_committed_value(instance: Any, key: str, value: Any) -> None:
    """Set attribute ``key`` to ``value`` as if it had been loaded: no history is recorded.

    Any earlier change of the attribute is forgotten.  For a collection,
    ``value`` is an iterable of members (``None`` gives an empty collection).
    This is how the Session's loaders populate attributes.
    """
    state, impl = _impl(instance, key)
    impl.set_committed_value(state, state.dict, value)


def set_attribute(instance: Any, key: str, value: Any, initiator: Any = None) -> None:
    """Set attribute ``key`` to ``value`` with full change tracking (like ``setattr``).

    It works even when the class overrides ``__setattr__`` or the descriptor.
    ``initiator`` is the event token of the attribute starting the change.
    """
    state, impl = _impl(instance, key)
    impl.set(state, state.dict, value, initiator)


def get_attribute(instance: Any, key: str) -> Any:
    """Return the value of attribute ``key``, loading it if needed (like ``getattr``)."""
    state, impl = _impl(instance, key)
    return impl.get(state, state.dict)


def del_attribute(instance: Any, key: str) -> None:
    """Delete the value of attribute ``key`` with change tracking (like ``delattr``)."""
    state, impl = _impl(instance, key)
    impl.delete(state, state.dict)


def init_collection(obj: Any, key: str) -> CollectionAdapter:
    """Replace collection ``key`` of ``obj`` by a new, empty one and return its adapter.

    The old collection (if any) is discarded without events and no history is
    recorded; the new list is ``init_collection(obj, key).data``.
    """
    state, impl = _impl(obj, key)
    if not isinstance(impl, CollectionAttributeImpl):
        raise exc.InvalidRequestError(
            f"Attribute {key!r} of {type(obj).__name__} is not a collection"
        )
    dict_ = state.dict
    old = dict_.pop(key, None)
    if old is not None:
        impl._dispose(old)
    user_data = impl._default_value(state, dict_)
    adapter = user_data._sa_adapter
    adapter._reset_empty()
    return adapter


def flag_modified(instance: Any, key: str) -> None:
    """Mark attribute ``key`` as modified so a flush writes it.

    Use it after mutating a value in place (a list or dict stored in a
    column), which the ORM cannot see.  The attribute then reports its current
    value as added.  Raises :class:`~shardsession.exc.InvalidRequestError` when
    the attribute holds no value (not loaded or expired).
    """
    state, impl = _impl(instance, key)
    state._modified_event(state.dict, impl, NO_VALUE, is_userland=True)


def flag_dirty(instance: Any) -> None:
    """Mark ``instance`` as modified without changing any attribute.

    The object takes part in the next flush (its flush events run) even though
    no attribute changed; no UPDATE is emitted for it.
    """
    state = instance_state(instance)
    state._modified_event(state.dict, None, NO_VALUE, is_userland=True)
