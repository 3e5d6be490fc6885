"""Relationships between mapped classes: :func:`relationship` and its configuration.

Direction and join columns are derived from the tables' foreign keys when the
registry is configured (on first use).  Linked objects must live on the same
shard: :func:`check_same_shard` is what the Session calls at flush.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from shardsession import exc
from shardsession.orm.attribute_impl import (
    AttributeImpl,
    CollectionAttributeImpl,
    ScalarObjectAttributeImpl,
)
from shardsession.orm.base import (
    NO_VALUE,
    PASSIVE_NO_INITIALIZE,
    PASSIVE_NO_RESULT,
    PassiveFlag,
    instance_state,
    state_str,
)
from shardsession.orm.cascade import CascadeOptions
from shardsession.orm.interfaces import MapperProperty, _no_clause

if TYPE_CHECKING:
    from shardsession.orm.mapper import Mapper
    from shardsession.orm.state import InstanceState

__all__ = [
    "MANYTOONE",
    "ONETOMANY",
    "RelationshipDirection",
    "RelationshipProperty",
    "check_relationship_shards",
    "check_same_shard",
    "relationship",
]

_LAZY_OPTIONS = ("select", "selectin", "raise", "noload")


class RelationshipDirection(enum.Enum):
    """Which side of the foreign key a relationship is on."""

    ONETOMANY = 1
    """The related table holds the foreign key (``User.addresses``)."""
    MANYTOONE = 2
    """This class's table holds the foreign key (``Address.user``)."""
    MANYTOMANY = 3
    """Through an association table (not supported yet)."""


ONETOMANY = RelationshipDirection.ONETOMANY
MANYTOONE = RelationshipDirection.MANYTOONE


class RelationshipProperty(MapperProperty):
    """A relationship from one mapped class to another (``inspect(User).relationships``).

    After configuration it knows :attr:`mapper` (the related mapper),
    :attr:`direction`, :attr:`local_columns`, :attr:`remote_side`,
    :attr:`local_remote_pairs`, :attr:`synchronize_pairs` (``(source, dest)``
    column pairs: copy ``source`` from the referenced row into the ``dest``
    foreign key column), :attr:`uselist` and the resolved :attr:`order_by`.
    """

    is_relationship = True

    def __init__(
        self,
        argument: Any = None,
        *,
        back_populates: str | None = None,
        order_by: Any = False,
        cascade: str = "save-update, merge",
        lazy: str | bool = "select",
        uselist: bool | None = None,
        foreign_keys: Any = None,
        remote_side: Any = None,
        single_parent: bool = False,
        active_history: bool = False,
        viewonly: bool = False,
        passive_deletes: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        if lazy is True:
            lazy = "select"
        if lazy not in _LAZY_OPTIONS:
            raise exc.ArgumentError(
                f"lazy={lazy!r} is not supported; use one of {', '.join(_LAZY_OPTIONS)} "
                "(joined eager loading cannot span shards: use 'selectin')"
            )
        self.argument = argument
        self.back_populates = back_populates
        self._order_by_arg = order_by
        self.cascade = CascadeOptions(cascade)
        self.lazy: str = lazy  # type: ignore[assignment]
        self._uselist_arg = uselist
        self._foreign_keys_arg = foreign_keys
        self._remote_side_arg = remote_side
        self.single_parent = single_parent
        self.active_history = active_history
        self.viewonly = viewonly
        self.passive_deletes = passive_deletes
        self.info = dict(info or {})
        # Set by the declarative scan from a Mapped[...] annotation.
        self._annotation_uselist: bool | None = None
        self._namespace: Callable[[], dict[str, Any]] = dict
        self._configured = False
        self._impl: AttributeImpl | None = None
        self.uselist: bool | None = None
        self.direction: RelationshipDirection | None = None
        self._mapper: Mapper | None = None
        self.local_columns: set[Any] = set()
        self.remote_side: set[Any] = set()
        self.local_remote_pairs: list[tuple[Any, Any]] = []
        self.synchronize_pairs: list[tuple[Any, Any]] = []
        self.order_by: Any = False

    # -- public view -----------------------------------------------------------------

    @property
    def mapper(self) -> Mapper:  # type: ignore[override]
        """The :class:`.Mapper` of the related class."""
        self.parent._check_configure()
        assert self._mapper is not None
        return self._mapper

    @property
    def entity(self) -> Mapper:
        """Same as :attr:`mapper`."""
        return self.mapper

    @property
    def target(self) -> Any:
        """The related class's table."""
        return self.mapper.local_table

    @property
    def foreign_keys(self) -> set[Any]:
        """The foreign key columns involved (on whichever side holds them)."""
        self.parent._check_configure()
        return {dest for _, dest in self.synchronize_pairs}

    def _clause_element(self) -> Any:
        return _no_clause(self)

    def _get_impl(self) -> AttributeImpl:
        if self._impl is None:
            self.parent._check_configure()
        assert self._impl is not None
        return self._impl

    # -- configuration ---------------------------------------------------------------

    def _resolve(self, value: Any, what: str) -> Any:
        if isinstance(value, str):
            try:
                return eval(value, self._namespace())
            except Exception as err:
                raise exc.InvalidRequestError(
                    f"When initializing mapper {self.parent}, expression {value!r} for "
                    f"{what} of relationship '{self}' failed to resolve: {err}. Check the "
                    "spelling and that the class is declared on the same base"
                ) from err
        if (
            callable(value)
            and not isinstance(value, type)
            and not hasattr(value, "__clause_element__")
        ):
            return value()
        return value

    def _configure(self) -> None:
        if self._configured:
            return
        from shardsession.orm.mapper import Mapper

        target = self._resolve(self.argument, "the related class")
        if target is None:
            raise exc.ArgumentError(
                f"relationship '{self}' has no related class: pass it as the first argument "
                "or annotate the attribute with Mapped[...]"
            )
        if isinstance(target, Mapper):
            self._mapper = target
        else:
            mapper = getattr(target, "__dict__", {}).get("_sa_class_manager")
            if mapper is None or mapper.mapper is None:
                raise exc.ArgumentError(
                    f"relationship '{self}' refers to {target!r}, which is not a mapped class"
                )
            self._mapper = mapper.mapper
        fks = _column_list(self._resolve(self._foreign_keys_arg, "foreign_keys"))
        remote = _column_list(self._resolve(self._remote_side_arg, "remote_side"))
        self._setup_join(fks, remote)
        self._setup_uselist()
        self._setup_order_by()
        if self.cascade.delete_orphan and self.direction is MANYTOONE and not self.single_parent:
            raise exc.ArgumentError(
                f"On {self}, delete-orphan cascade is not supported on a many-to-one "
                "relationship when single_parent is not set; set single_parent=True"
            )
        impl_cls = CollectionAttributeImpl if self.uselist else ScalarObjectAttributeImpl
        self._impl = impl_cls(
            self.parent.class_, self.key, lazy=self.lazy, active_history=self.active_history
        )
        self._configured = True

    def _setup_backref(self) -> None:
        if self.back_populates is None:
            return
        other_mapper = self.mapper
        other = other_mapper._props.get(self.back_populates)
        if other is None or not other.is_relationship:
            raise exc.InvalidRequestError(
                f"back_populates on relationship '{self}' refers to {self.back_populates!r}, "
                f"which is not a relationship of {other_mapper.class_.__name__}"
            )
        assert isinstance(other, RelationshipProperty)
        if other._mapper is not self.parent:
            raise exc.ArgumentError(
                f"relationship '{self}' back_populates '{other}', which relates to "
                f"{other.mapper.class_.__name__}, not {self.parent.class_.__name__}"
            )
        assert self._impl is not None
        self._impl.backref_key = self.back_populates

    def _setup_join(self, fks: list[Any] | None, remote: list[Any] | None) -> None:
        parent_table = self.parent.local_table
        target_table = self.mapper_unchecked.local_table
        restrict = {id(c) for c in fks} if fks else None
        if parent_table is target_table:
            groups = _fk_groups(parent_table, parent_table, restrict)
            self._require_one(groups, restrict)
            pairs = groups[0]
            remote_ids = {id(c) for c in remote} if remote else set()
            if remote_ids and all(id(ref) in remote_ids for _, ref in pairs):
                self._set_direction(MANYTOONE, pairs)
            else:
                self._set_direction(ONETOMANY, pairs)
            return
        m2o = _fk_groups(parent_table, target_table, restrict)
        o2m = _fk_groups(target_table, parent_table, restrict)
        if m2o and o2m:
            raise exc.ArgumentError(
                f"Could not determine the direction of relationship '{self}': foreign keys "
                f"link {_name(parent_table)!r} and {_name(target_table)!r} both ways. "
                "Specify the 'foreign_keys' argument naming the columns to use"
            )
        if m2o:
            self._require_one(m2o, restrict)
            self._set_direction(MANYTOONE, m2o[0])
        else:
            self._require_one(o2m, restrict)
            self._set_direction(ONETOMANY, o2m[0])

    @property
    def mapper_unchecked(self) -> Mapper:
        """The related mapper without triggering configuration (internal)."""
        assert self._mapper is not None
        return self._mapper

    def _require_one(self, groups: list[list[tuple[Any, Any]]], restrict: Any) -> None:
        parent_table = _name(self.parent.local_table)
        target_table = _name(self.mapper_unchecked.local_table)
        if not groups:
            hint = " among the given foreign_keys" if restrict else ""
            raise exc.ArgumentError(
                f"Could not determine join condition between parent/child tables on "
                f"relationship '{self}' - there are no foreign keys linking "
                f"{parent_table!r} and {target_table!r}{hint}. Add a ForeignKey to the "
                "referencing column"
            )
        if len(groups) > 1:
            raise exc.ArgumentError(
                f"Could not determine join condition between parent/child tables on "
                f"relationship '{self}' - there are multiple foreign key paths linking "
                f"{parent_table!r} and {target_table!r}. Specify the 'foreign_keys' "
                "argument with the columns that should be counted as foreign keys"
            )

    def _set_direction(
        self, direction: RelationshipDirection, pairs: list[tuple[Any, Any]]
    ) -> None:
        # pairs are (foreign key column, referenced column)
        self.direction = direction
        self.synchronize_pairs = [(ref, fk) for fk, ref in pairs]
        if direction is MANYTOONE:
            self.local_remote_pairs = [(fk, ref) for fk, ref in pairs]
        else:
            self.local_remote_pairs = [(ref, fk) for fk, ref in pairs]
        self.local_columns = {local for local, _ in self.local_remote_pairs}
        self.remote_side = {remote for _, remote in self.local_remote_pairs}

    def _setup_uselist(self) -> None:
        if self._uselist_arg is not None:
            uselist = self._uselist_arg
        elif self._annotation_uselist is not None:
            uselist = self._annotation_uselist
        else:
            uselist = self.direction is ONETOMANY
        if uselist and self.direction is MANYTOONE:
            raise exc.ArgumentError(
                f"relationship '{self}' is many-to-one (this table holds the foreign key) "
                "but is declared as a collection; annotate it Mapped[X] / "
                "Mapped[Optional[X]] or set uselist=False"
            )
        self.uselist = uselist

    def _setup_order_by(self) -> None:
        value = self._resolve(self._order_by_arg, "order_by")
        if value is False or value is None:
            self.order_by = False
            return
        if not isinstance(value, (list, tuple)):
            value = [value]
        resolved = []
        for item in value:
            item = self._resolve(item, "order_by")
            if hasattr(item, "__clause_element__"):
                item = item.__clause_element__()
            resolved.append(item)
        self.order_by = tuple(resolved)

    # -- helpers for the unit of work ---------------------------------------------------

    def linked_objects(
        self, state: InstanceState, passive: PassiveFlag = PASSIVE_NO_INITIALIZE
    ) -> list[Any]:
        """Return the objects ``state`` links to through this relationship now.

        Nothing is loaded with the default ``passive``; changes recorded against
        an unloaded collection are included.
        """
        history = state.get_history(self.key, passive | PassiveFlag.INCLUDE_PENDING_MUTATIONS)
        return [o for o in history.non_deleted() if o is not None]

    def __str__(self) -> str:
        owner = getattr(getattr(self, "parent", None), "class_", None)
        return f"{owner.__name__ if owner else '?'}.{getattr(self, 'key', '?')}"


def relationship(
    argument: Any = None,
    *,
    back_populates: str | None = None,
    order_by: Any = False,
    cascade: str = "save-update, merge",
    lazy: str | bool = "select",
    uselist: bool | None = None,
    foreign_keys: Any = None,
    remote_side: Any = None,
    single_parent: bool = False,
    active_history: bool = False,
    viewonly: bool = False,
    passive_deletes: bool = False,
    info: dict[str, Any] | None = None,
) -> Any:
    """Declare a relationship to another mapped class.

    :param argument: the related class, its name as a string (resolved lazily
        among the classes of the same declarative base), or a callable
        returning it.  May be omitted when the ``Mapped[...]`` annotation names it.
    :param back_populates: name of the relationship on the related class that
        mirrors this one; changes on either side update the other in Python.
    :param order_by: column(s), attribute(s) or a string expression ordering the
        collection when it is loaded.
    :param cascade: comma-separated cascade rules (``"all, delete-orphan"``, ...).
    :param lazy: ``"select"`` (load on first access), ``"selectin"`` (load for all
        parents of a query at once), ``"raise"`` or ``"noload"``.
    :param uselist: ``False`` makes a one-to-many scalar (one-to-one).
    :param foreign_keys: the foreign key column(s) to use when several paths exist.
    :param remote_side: for self-referential relationships, the column(s) on the
        remote side; naming the primary key makes it many-to-one.
    :param single_parent: allow ``delete-orphan`` on a many-to-one.
    :returns: a :class:`RelationshipProperty` to assign to a class attribute.
    """
    return RelationshipProperty(
        argument,
        back_populates=back_populates,
        order_by=order_by,
        cascade=cascade,
        lazy=lazy,
        uselist=uselist,
        foreign_keys=foreign_keys,
        remote_side=remote_side,
        single_parent=single_parent,
        active_history=active_history,
        viewonly=viewonly,
        passive_deletes=passive_deletes,
        info=info,
    )


def check_same_shard(
    parent_state: InstanceState,
    child_state: InstanceState,
    shard_of: Callable[[InstanceState], Any],
    relationship: RelationshipProperty | str | None = None,
) -> None:
    """Raise when two linked objects would live on different shards.

    The Session calls it at flush for every object linked through a
    relationship.  ``shard_of(state)`` returns the shard id an object lives on
    (or will be written to), or ``None`` when not decided yet; undecided objects
    pass (the Session puts them on their parent's shard).

    :raises InvalidRequestError: naming both objects, their shards and the
        relationship, when the shards differ.
    """
    parent_shard = shard_of(parent_state)
    child_shard = shard_of(child_state)
    if parent_shard is None or child_shard is None or parent_shard == child_shard:
        return
    via = f" through relationship '{relationship}'" if relationship is not None else ""
    raise exc.InvalidRequestError(
        f"Cannot link {state_str(parent_state)} on shard {parent_shard!r} to "
        f"{state_str(child_state)} on shard {child_shard!r}{via}: related objects must "
        "live on the same shard (a foreign key cannot span shards). Route both objects "
        "to one shard (shard key or shard_chooser)"
    )


def check_relationship_shards(
    state: InstanceState,
    shard_of: Callable[[InstanceState], Any],
    passive: PassiveFlag = PASSIVE_NO_INITIALIZE,
) -> None:
    """Run :func:`check_same_shard` for every object ``state`` is linked to."""
    for prop in state.mapper.relationships.values():
        for other in prop.linked_objects(state, passive):
            check_same_shard(state, instance_state(other), shard_of, prop)


def iter_relationship_changes(
    state: InstanceState, passive: PassiveFlag = PASSIVE_NO_INITIALIZE
) -> Iterator[tuple[RelationshipProperty, list[Any], list[Any]]]:
    """Yield ``(relationship, added objects, removed objects)`` for each changed relationship."""
    for prop in state.mapper.relationships.values():
        history = state.get_history(prop.key, passive | PassiveFlag.INCLUDE_PENDING_MUTATIONS)
        if history.has_changes():
            yield (
                prop,
                [o for o in history.added if o is not None],
                [o for o in history.deleted if o is not None],
            )


# -- foreign key helpers ---------------------------------------------------------------


def _name(table: Any) -> str:
    return str(getattr(table, "name", table))


def _column_list(value: Any) -> list[Any] | None:
    if value is None or value is NO_VALUE or value is PASSIVE_NO_RESULT:
        return None
    if not isinstance(value, (list, tuple, set, frozenset)):
        value = [value]
    out = []
    for item in value:
        if hasattr(item, "__clause_element__"):
            item = item.__clause_element__()
        out.append(item)
    return out


def _table_columns(table: Any) -> Iterable[Any]:
    cols = table.c if hasattr(table, "c") else table.columns
    return list(cols)


def _fk_groups(
    from_table: Any, to_table: Any, restrict: set[int] | None
) -> list[list[tuple[Any, Any]]]:
    """Foreign keys of ``from_table`` pointing at ``to_table``, grouped by constraint."""
    groups: dict[int, list[tuple[Any, Any]]] = {}
    for col in _table_columns(from_table):
        if restrict is not None and id(col) not in restrict:
            continue
        for fk in getattr(col, "foreign_keys", ()):
            ref = fk.column
            if getattr(ref, "table", None) is not to_table:
                continue
            constraint = getattr(fk, "constraint", None)
            group_key = id(constraint) if constraint is not None else id(fk)
            groups.setdefault(group_key, []).append((col, ref))
    return list(groups.values())
