"""Public names of shardsession.orm and their re-export at top level."""

from __future__ import annotations

import types

import shardsession
import shardsession.orm as orm

REQUIRED = [
    "DeclarativeBase",
    "Mapped",
    "mapped_column",
    "relationship",
    "inspect",
    "PassiveFlag",
    "InstanceState",
    "Mapper",
    "History",
    "get_history",
    "flag_modified",
    "flag_dirty",
    "set_committed_value",
    "set_attribute",
    "get_attribute",
    "del_attribute",
    "init_collection",
    "instance_state",
    "object_state",
    "is_instrumented",
    "was_deleted",
]


def test_all_lists_required_names_and_they_exist() -> None:
    for name in REQUIRED:
        assert name in orm.__all__, name
    for name in orm.__all__:
        assert getattr(orm, name) is not None, name
    assert len(set(orm.__all__)) == len(orm.__all__)


def test_submodules_are_exported() -> None:
    for name in ("attributes", "util", "instrumentation", "collections", "state"):
        assert name in orm.__all__
        assert isinstance(getattr(orm, name), types.ModuleType)


def test_top_level_reexports() -> None:
    for name in REQUIRED:
        assert getattr(shardsession, name) is getattr(orm, name), name
