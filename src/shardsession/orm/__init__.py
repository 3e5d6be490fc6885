"""Declarative mapping, instrumentation, attribute history and collections.

Everything here runs in the application process: mapped classes, their
instrumented attributes, per-object :class:`InstanceState` and the change
tracking the Session's unit of work reads.
"""

from shardsession.orm import (
    attributes,
    base,
    collections,
    decl_base,
    instrumentation,
    interfaces,
    relationships,
    state,
    util,
)
from shardsession.orm.attributes import (
    InstrumentedAttribute,
    QueryableAttribute,
    del_attribute,
    flag_dirty,
    flag_modified,
    get_attribute,
    get_history,
    init_collection,
    instance_state,
    set_attribute,
    set_committed_value,
)
from shardsession.orm.base import (
    NEVER_SET,
    NO_VALUE,
    PASSIVE_NO_FETCH,
    PASSIVE_NO_INITIALIZE,
    PASSIVE_OFF,
    Mapped,
    PassiveFlag,
)
from shardsession.orm.cascade import CascadeOptions
from shardsession.orm.clsregistry import Registry
from shardsession.orm.clsregistry import Registry as registry
from shardsession.orm.collections import InstrumentedList
from shardsession.orm.decl_base import DeclarativeBase, MappedColumn, mapped_column
from shardsession.orm.history import History
from shardsession.orm.inspection import inspect
from shardsession.orm.instrumentation import is_instrumented
from shardsession.orm.interfaces import ColumnProperty
from shardsession.orm.mapper import Mapper
from shardsession.orm.relationships import (
    MANYTOONE,
    ONETOMANY,
    RelationshipDirection,
    RelationshipProperty,
    check_same_shard,
    relationship,
)
from shardsession.orm.state import AttributeState, InstanceState
from shardsession.orm.util import object_mapper, object_state, was_deleted

__all__ = [
    "MANYTOONE",
    "NEVER_SET",
    "NO_VALUE",
    "ONETOMANY",
    "PASSIVE_NO_FETCH",
    "PASSIVE_NO_INITIALIZE",
    "PASSIVE_OFF",
    "AttributeState",
    "CascadeOptions",
    "ColumnProperty",
    "DeclarativeBase",
    "History",
    "InstanceState",
    "InstrumentedAttribute",
    "InstrumentedList",
    "Mapped",
    "MappedColumn",
    "Mapper",
    "PassiveFlag",
    "QueryableAttribute",
    "Registry",
    "RelationshipDirection",
    "RelationshipProperty",
    "attributes",
    "base",
    "check_same_shard",
    "collections",
    "decl_base",
    "del_attribute",
    "flag_dirty",
    "flag_modified",
    "get_attribute",
    "get_history",
    "init_collection",
    "inspect",
    "instance_state",
    "instrumentation",
    "interfaces",
    "is_instrumented",
    "mapped_column",
    "object_mapper",
    "object_state",
    "registry",
    "relationship",
    "relationships",
    "set_attribute",
    "set_committed_value",
    "state",
    "util",
    "was_deleted",
]
