"""The :class:`Mapper`: how one class maps to one table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shardsession import exc
from shardsession.orm.attributes import InstrumentedAttribute
from shardsession.orm.base import PASSIVE_OFF, PassiveFlag, instance_state
from shardsession.orm.instrumentation import ClassManager, register_class
from shardsession.orm.interfaces import ColumnProperty, MapperProperty, ReadOnlyProperties

if TYPE_CHECKING:
    from shardsession.orm.clsregistry import Registry
    from shardsession.orm.relationships import RelationshipProperty
    from shardsession.orm.state import IdentityKey, InstanceState

__all__ = ["Mapper"]


class Mapper:
    """The mapping of a class to a :class:`!Table`.

    Obtain it with ``inspect(User)``.  It lists the mapped columns and
    relationships and builds identity keys ``(class, primary key tuple,
    identity token)``, where the identity token is the shard id.  The shard
    choosers of a :class:`~shardsession.Session` receive it as their ``mapper``
    argument.

    .. attribute:: class_

        The mapped class.

    .. attribute:: local_table

        The :class:`!Table` the class is mapped to.

    .. attribute:: primary_key

        The primary key columns of :attr:`local_table`, in table order.

    .. attribute:: shard_key

        The attribute name given as the class's ``__shard_key__``, or ``None``.
    """

    is_mapper = True

    def __init__(
        self,
        class_: type,
        local_table: Any,
        properties: dict[str, MapperProperty],
        registry: Registry,
        *,
        shard_key: str | None = None,
    ) -> None:
        self.class_ = class_
        self.local_table = local_table
        self.registry = registry
        self.class_manager: ClassManager = register_class(class_)
        self.class_manager.mapper = self
        self._props: dict[str, MapperProperty] = {}
        self._columntoproperty: dict[int, ColumnProperty] = {}
        self.configured = False
        for key, prop in properties.items():
            self._add_property(key, prop)
        self.primary_key: tuple[Any, ...] = tuple(_primary_key_columns(local_table))
        if not self.primary_key:
            raise exc.ArgumentError(
                f"Mapper {self} could not assemble any primary key columns for mapped "
                f"table {_table_name(local_table)!r}"
            )
        for col in self.primary_key:
            if id(col) not in self._columntoproperty:
                raise exc.ArgumentError(
                    f"Primary key column {col.name!r} of {_table_name(local_table)!r} is not "
                    f"mapped to an attribute of {class_.__name__}"
                )
        if shard_key is not None:
            prop = self._props.get(shard_key)
            if not isinstance(prop, ColumnProperty):
                raise exc.ArgumentError(
                    f"__shard_key__ of {class_.__name__} is {shard_key!r}, which is not a "
                    "mapped column attribute of the class"
                )
        self.shard_key: str | None = shard_key
        registry._add_mapper(self)

    def _add_property(self, key: str, prop: MapperProperty) -> None:
        prop.key = key
        prop.parent = self
        self._props[key] = prop
        self._relationships = None
        if isinstance(prop, ColumnProperty):
            for col in prop.columns:
                self._columntoproperty[id(col)] = prop
        self.class_manager.instrument_attribute(key, InstrumentedAttribute(self.class_, key, prop))

    def __repr__(self) -> str:
        return f"<Mapper at {id(self):#x}; {self.class_.__name__}>"

    def __str__(self) -> str:
        return f"Mapper[{self.class_.__name__}({_table_name(self.local_table)})]"

    # -- structure ------------------------------------------------------------------

    @property
    def persist_selectable(self) -> Any:
        """The table rows of this class are written to (same as :attr:`local_table`)."""
        return self.local_table

    @property
    def mapped_table(self) -> Any:
        """Alias of :attr:`persist_selectable`."""
        return self.local_table

    @property
    def tables(self) -> list[Any]:
        """The tables this mapper maps (always one: no inheritance yet)."""
        return [self.local_table]

    @property
    def entity(self) -> type:
        """The mapped class."""
        return self.class_

    @property
    def mapper(self) -> Mapper:
        """This mapper (so ``inspect(x).mapper`` works for classes and instances)."""
        return self

    def __clause_element__(self) -> Any:
        return self.local_table

    def _check_configure(self) -> None:
        if not self.configured:
            self.registry.configure()

    @property
    def attrs(self) -> ReadOnlyProperties[MapperProperty]:
        """Every mapped property (columns and relationships), by attribute key."""
        self._check_configure()
        return ReadOnlyProperties(dict(self._props))

    @property
    def column_attrs(self) -> ReadOnlyProperties[ColumnProperty]:
        """The :class:`.ColumnProperty` objects, by attribute key."""
        return ReadOnlyProperties(
            {k: p for k, p in self._props.items() if isinstance(p, ColumnProperty)}
        )

    @property
    def relationships(self) -> ReadOnlyProperties[RelationshipProperty]:
        """The :class:`!RelationshipProperty` objects, by attribute key."""
        self._check_configure()
        # Read on every flush of every object: built once, rebuilt when a property is added.
        cached = getattr(self, "_relationships", None)
        if cached is None:
            cached = self._relationships = ReadOnlyProperties(
                {k: p for k, p in self._props.items() if p.is_relationship}  # type: ignore[misc]
            )
        return cached

    @property
    def columns(self) -> ReadOnlyProperties[Any]:
        """The mapped columns, keyed by attribute key."""
        return ReadOnlyProperties(
            {k: p.columns[0] for k, p in self._props.items() if isinstance(p, ColumnProperty)}
        )

    c = columns

    @property
    def iterate_properties(self) -> Iterator[MapperProperty]:
        """Iterate over every mapped property."""
        self._check_configure()
        return iter(list(self._props.values()))

    def has_property(self, key: str) -> bool:
        """Return ``True`` when ``key`` is a mapped attribute."""
        return key in self._props

    def get_property(self, key: str) -> MapperProperty:
        """Return the property mapped at ``key``.

        :raises InvalidRequestError: when there is none.
        """
        self._check_configure()
        try:
            return self._props[key]
        except KeyError:
            raise exc.InvalidRequestError(f"Mapper '{self}' has no property '{key}'") from None

    def get_property_by_column(self, column: Any) -> ColumnProperty:
        """Return the :class:`.ColumnProperty` mapping ``column``."""
        try:
            return self._columntoproperty[id(column)]
        except KeyError:
            raise exc.InvalidRequestError(
                f"Column {getattr(column, 'name', column)!r} is not mapped by {self}"
            ) from None

    def attribute_key_for_column(self, column: Any) -> str:
        """Return the attribute key under which ``column``'s value is stored."""
        return self.get_property_by_column(column).key

    @property
    def shard_key_column(self) -> Any:
        """The column of the :attr:`shard_key` attribute, or ``None``."""
        if self.shard_key is None:
            return None
        prop = self._props[self.shard_key]
        assert isinstance(prop, ColumnProperty)
        return prop.columns[0]

    # -- identity -------------------------------------------------------------------

    def _pk_keys(self) -> list[str]:
        return [self._columntoproperty[id(c)].key for c in self.primary_key]

    def primary_key_from_instance(self, instance: Any) -> tuple[Any, ...]:
        """Return the primary key values of ``instance`` (loading them if expired)."""
        return self._primary_key_from_state(instance_state(instance))

    def _primary_key_from_state(
        self, state: InstanceState, passive: PassiveFlag = PASSIVE_OFF
    ) -> tuple[Any, ...]:
        dict_ = state.dict
        manager = self.class_manager
        return tuple(manager[k].impl.get(state, dict_, passive) for k in self._pk_keys())

    def identity_key_from_primary_key(
        self, primary_key: Any, identity_token: Any = None
    ) -> IdentityKey:
        """Return the identity key for a primary key value (tuple or scalar) and shard id."""
        if not isinstance(primary_key, (tuple, list)):
            primary_key = (primary_key,)
        return (self.class_, tuple(primary_key), identity_token)

    def identity_key_from_instance(self, instance: Any) -> IdentityKey:
        """Return the identity key of ``instance`` from its current primary key values.

        The identity token is the one of its existing key (its shard), or ``None``.
        """
        state = instance_state(instance)
        return self._identity_key_from_state(state)

    def _identity_key_from_state(
        self, state: InstanceState, passive: PassiveFlag = PASSIVE_OFF
    ) -> IdentityKey:
        return (
            self.class_,
            self._primary_key_from_state(state, passive),
            state.identity_token,
        )

    def identity_key_from_row(self, row: Any, identity_token: Any = None) -> IdentityKey:
        """Return the identity key for a row given as a mapping of column name → value."""
        return (self.class_, tuple(row[col.name] for col in self.primary_key), identity_token)


def _table_name(table: Any) -> str:
    return str(getattr(table, "name", table))


def _primary_key_columns(table: Any) -> list[Any]:
    pk = getattr(table, "primary_key", None)
    if pk is None:
        return []
    cols = getattr(pk, "columns", pk)
    if isinstance(cols, dict):
        cols = cols.values()
    return list(cols)
