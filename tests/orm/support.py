"""Helpers for the ORM tests: snapshotting, a fake Session and a fake loader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardsession.orm import inspect, set_committed_value


def commit(*objs: Any) -> None:
    """Snapshot objects as a flush/commit would (history cleared)."""
    for obj in objs:
        inspect(obj)._commit_all()


class FakeLoader:
    """Stands in for the Session's loader: serves attribute values from a dict."""

    def __init__(self, rows: dict[str, Any]) -> None:
        self.rows = rows
        self.calls: list[set[str]] = []

    def __call__(self, state: Any, keys: set[str]) -> None:
        self.calls.append(set(keys))
        obj = state.obj()
        for key in keys:
            set_committed_value(obj, key, self.rows.get(key))


class FakeSession:
    """Only an object the states can point at (they keep a weak reference)."""


def make_persistent(
    obj: Any, session: Any, shard: str = "s0", loader: Callable | None = None
) -> Any:
    """Give ``obj`` an identity on ``shard`` and attach it, as the Session does after a load."""
    state = inspect(obj)
    key = inspect(type(obj)).identity_key_from_instance(obj)
    state._mark_persistent((key[0], key[1], shard), session, loader=loader)
    return state
