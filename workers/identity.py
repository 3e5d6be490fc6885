"""The shard-side identity map of one worker.

It holds, for the current transaction, the row state of every row loaded or
written on this shard, keyed by ``(table, primary key)``.  It lets the worker
answer ``get()`` of a known key without SQL, and send the coordinator only the
key of a row it already sent unchanged in this transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Key = tuple[str, tuple[Any, ...]]

__all__ = ["ShardIdentityMap"]


class ShardIdentityMap:
    """Row state by identity key, plus which rows the coordinator holds."""

    __slots__ = ("_rows", "_sent")

    def __init__(self) -> None:
        self._rows: dict[Key, tuple[Any, ...]] = {}
        self._sent: set[Key] = set()

    def __len__(self) -> int:
        return len(self._rows)

    def observe(self, table: str, pk: tuple[Any, ...], row: tuple[Any, ...]) -> bool:
        """Record ``row`` as loaded; return True when the coordinator already has it unchanged."""
        key = (table, pk)
        if key in self._sent and self._rows.get(key) == row:
            return True
        self._rows[key] = row
        self._sent.add(key)
        return False

    def get(self, table: str, pk: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The row held for ``(table, pk)``, or None."""
        return self._rows.get((table, pk))

    def expire(self, table: str, keys: Iterable[tuple[Any, ...]] | None = None) -> int:
        """Forget rows of ``table`` (all of them when ``keys`` is None); return how many."""
        if keys is None:
            doomed = [key for key in self._rows if key[0] == table]
        else:
            doomed = [(table, tuple(pk)) for pk in keys if (table, tuple(pk)) in self._rows]
        for key in doomed:
            del self._rows[key]
            self._sent.discard(key)
        return len(doomed)

    def clear(self) -> None:
        """Forget everything (end of transaction with expiry, rollback)."""
        self._rows.clear()
        self._sent.clear()
