"""Mapped properties: the base class and :class:`ColumnProperty`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from shardsession import exc
from shardsession.orm.attribute_impl import AttributeImpl, ScalarAttributeImpl

if TYPE_CHECKING:
    from shardsession.orm.attributes import InstrumentedAttribute
    from shardsession.orm.mapper import Mapper

__all__ = ["ColumnProperty", "MapperProperty", "ReadOnlyProperties"]

_V = TypeVar("_V")


class MapperProperty:
    """One mapped attribute of a class: a column or a relationship."""

    key: str
    parent: Mapper
    is_relationship = False

    def _get_impl(self) -> AttributeImpl:
        raise NotImplementedError

    def _clause_element(self) -> Any:
        raise NotImplementedError

    @property
    def class_attribute(self) -> InstrumentedAttribute[Any]:
        """The :class:`.InstrumentedAttribute` installed on the class for this property."""
        return self.parent.class_manager[self.key]

    @property
    def mapper(self) -> Mapper | None:
        """The related mapper for relationships; ``None`` for columns."""
        return None

    def __repr__(self) -> str:
        owner = getattr(getattr(self, "parent", None), "class_", None)
        name = owner.__name__ if owner is not None else "?"
        return f"<{type(self).__name__} {name}.{getattr(self, 'key', '?')}>"


class ColumnProperty(MapperProperty):
    """A column mapped to an attribute (``inspect(User).attrs.name``)."""

    def __init__(self, column: Any, key: str) -> None:
        self.columns: list[Any] = [column]
        self.key = key
        self._impl: AttributeImpl | None = None

    @property
    def expression(self) -> Any:
        """The mapped :class:`!Column`."""
        return self.columns[0]

    @property
    def column(self) -> Any:
        """The mapped :class:`!Column` (same as :attr:`expression`)."""
        return self.columns[0]

    def _clause_element(self) -> Any:
        return self.columns[0]

    def _get_impl(self) -> AttributeImpl:
        if self._impl is None:
            # A primary key change must know the old key, so it loads the old
            # value before replacing it (SQLAlchemy's "active history").
            self._impl = ScalarAttributeImpl(
                self.parent.class_,
                self.key,
                active_history=bool(getattr(self.columns[0], "primary_key", False)),
            )
        return self._impl


class ReadOnlyProperties(Mapping[str, _V], Generic[_V]):
    """An ordered, read-only mapping that also allows attribute access (``m.attrs.name``)."""

    def __init__(self, data: dict[str, _V]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> _V:
        return self._data[key]

    def __getattr__(self, key: str) -> _V:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    # The flush walks these for every object: skip the generic Mapping views.
    def values(self) -> Any:
        """The properties, in mapping order."""
        return self._data.values()

    def items(self) -> Any:
        """``(key, property)`` pairs, in mapping order."""
        return self._data.items()

    def keys(self) -> Any:
        """The attribute keys, in mapping order."""
        return self._data.keys()

    def __repr__(self) -> str:
        return f"ReadOnlyProperties({list(self._data)})"


def _no_clause(prop: MapperProperty) -> Any:
    raise exc.InvalidRequestError(
        f"{prop.parent.class_.__name__}.{prop.key} is a relationship; use the columns of "
        "the related class in SQL expressions (relationship comparisons are not supported)"
    )
