"""Results of statements: :class:`Result`, :class:`ScalarResult`, :class:`MappingResult`.

The API follows SQLAlchemy 2.x.  A result is *lazy*: it pulls rows from the iterator
it was given (which may fetch chunks from worker processes as it goes) only when
asked, and holds no more rows than the call needs -- :meth:`Result.all` builds a list,
:meth:`Result.first` reads one row and closes the result.

States: *open* (rows may be fetched), *exhausted* (every row was read: fetches return
nothing, ``on_close`` has run) and *closed* (:meth:`Result.close`, :meth:`Result.first`,
:meth:`Result.one`, :meth:`Result.scalar` ...: fetching raises
:class:`ResourceClosedError`).  ``on_close`` runs exactly once, on the first of
exhaustion, close or an error raised while fetching.

:class:`ScalarResult` and :class:`MappingResult` (from :meth:`Result.scalars` and
:meth:`Result.mappings`) and the results of :meth:`Result.columns` read from the same
rows as the result they came from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from shardsession.coordinator.merge import hashable

from shardsession.exc import InvalidRequestError, MultipleResultsFound, NoResultFound

__all__ = [
    "MappingResult",
    "NoSuchColumnError",
    "RMKeyView",
    "ResourceClosedError",
    "Result",
    "Row",
    "RowMapping",
    "ScalarResult",
]

#: Rows per :meth:`Result.fetchmany` / :meth:`Result.partitions` when neither a size
#: nor :meth:`Result.yield_per` says otherwise (the DB-API's default ``arraysize``).
DEFAULT_FETCH_SIZE = 1

_NONE: Any = object()


class ResourceClosedError(InvalidRequestError):
    """Rows were fetched from a result that was closed."""


class NoSuchColumnError(KeyError, InvalidRequestError):
    """A row or result was asked for a column it does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _no_column(key: Any) -> NoSuchColumnError:
    return NoSuchColumnError(f"Could not locate column in row for column {str(key)!r}")


def _key_of(key: Any) -> Any:
    # Column objects stand for their result key.
    if isinstance(key, str | int):
        return key
    for attr in ("_result_name", "key", "name"):
        v = getattr(key, attr, None)
        if isinstance(v, str):
            return v
    return key


class RMKeyView(Sequence[str]):
    """The keys of a result or a row mapping: iterable, sized, ``in``, equal to a list."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = tuple(keys)

    def __getitem__(self, index: Any) -> Any:
        return self._keys[index]

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RMKeyView):
            return self._keys == other._keys
        if isinstance(other, list | tuple):
            return list(self._keys) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._keys)

    def __repr__(self) -> str:
        return f"RMKeyView({list(self._keys)!r})"


class Row(tuple[Any, ...]):
    """One result row: a tuple that also answers ``row.key`` and ``row._mapping[key]``.

    A row equals the plain tuple of its values (and hashes like it).  When two
    columns share a key, the key names the first of them.
    """

    __slots__ = ()
    #: the result keys, in column order.
    _fields: tuple[str, ...] = ()
    _keymap: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._keymap[name]]
        except KeyError:
            raise AttributeError(f"Could not locate column in row for column {name!r}") from None

    def __reduce__(self) -> Any:
        return (_rebuild_row, (self._fields, tuple(self)))

    @property
    def _mapping(self) -> RowMapping:
        """The row as a read-only mapping of key to value."""
        return RowMapping(self)

    @property
    def _t(self) -> Row:
        """The row itself (typed as a tuple in SQLAlchemy)."""
        return self

    def _tuple(self) -> tuple[Any, ...]:
        """Return the values as a plain tuple."""
        return tuple(self)

    def _asdict(self) -> dict[str, Any]:
        """Return a new dict of key to value."""
        return {k: self[i] for k, i in self._keymap.items()}


@lru_cache(maxsize=1024)
def _row_class(keys: tuple[str, ...]) -> type[Row]:
    keymap: dict[str, int] = {}
    for i, k in enumerate(keys):
        keymap.setdefault(k, i)
    return type("Row", (Row,), {"__slots__": (), "_fields": keys, "_keymap": keymap})


def _rebuild_row(keys: tuple[str, ...], values: tuple[Any, ...]) -> Row:
    return _row_class(tuple(keys))(values)


def make_row(keys: Sequence[str], values: Iterable[Any]) -> Row:
    """Build a :class:`Row` with *keys* over *values*."""
    return _row_class(tuple(keys))(values)


class RowMapping(Mapping[str, Any]):
    """A row seen as a mapping of result key (or column object) to value."""

    __slots__ = ("_row",)

    def __init__(self, row: Row) -> None:
        self._row = row

    def __getitem__(self, key: Any) -> Any:
        k = _key_of(key)
        i = self._row._keymap.get(k) if isinstance(k, str) else None
        if i is None:
            raise _no_column(key)
        return self._row[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._row._keymap)

    def __len__(self) -> int:
        return len(self._row._keymap)

    def __contains__(self, key: object) -> bool:
        return _key_of(key) in self._row._keymap

    def __hash__(self) -> int:
        return hash(self._row)

    def keys(self) -> RMKeyView:  # type: ignore[override]
        """The keys of the row."""
        return RMKeyView(list(self._row._keymap))

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class _Source:
    """The row iterator shared by a result and the results derived from it."""

    def __init__(
        self,
        rows: Iterable[tuple[Any, ...]],
        row_processor: Callable[[tuple[Any, ...]], Any] | None,
        on_close: Callable[[], None] | None,
    ) -> None:
        self.it: Iterator[tuple[Any, ...]] | None = iter(rows)
        self.row_processor = row_processor
        self.on_close = on_close
        self.exhausted = False
        self.closed = False
        self.yield_per: int | None = None

    def next(self) -> Any:
        if self.closed:
            raise ResourceClosedError("This result object is closed.")
        if self.it is None:
            return _NONE
        try:
            raw = next(self.it)
            proc = self.row_processor
            return proc(raw) if proc is not None else raw
        except StopIteration:
            self.release()
            return _NONE
        except BaseException:
            self.close()
            raise

    def rest(self) -> list[Any]:
        """Every remaining row, processed, in one go (then released)."""
        if self.closed:
            raise ResourceClosedError("This result object is closed.")
        if self.it is None:
            return []
        try:
            raws = list(self.it)
            proc = self.row_processor
            rows = [proc(raw) for raw in raws] if proc is not None else raws
        except BaseException:
            self.close()
            raise
        self.release()
        return rows

    def release(self) -> None:
        """Drop the iterator and run ``on_close`` (once)."""
        it, self.it = self.it, None
        self.exhausted = True
        if it is not None:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        cb, self.on_close = self.on_close, None
        if cb is not None:
            cb()

    def close(self) -> None:
        self.closed = True
        self.release()


class _Fetcher:
    """Fetch methods shared by :class:`Result`, :class:`ScalarResult`, :class:`MappingResult`."""

    _src: _Source
    _unique: bool
    _strategy: Callable[[Any], Any] | None
    _seen: set[Any] | None

    def _convert(self, row: Any) -> Any:
        raise NotImplementedError

    def _init_unique(self, other: _Fetcher | None) -> None:
        self._unique = other._unique if other is not None else False
        self._strategy = other._strategy if other is not None else None
        self._seen = set() if self._unique else None

    def _set_unique(self, strategy: Callable[[Any], Any] | None) -> None:
        self._unique = True
        self._strategy = strategy
        if self._seen is None:
            self._seen = set()

    def _next(self) -> Any:
        while True:
            row = self._src.next()
            if row is _NONE:
                return _NONE
            item = self._convert(row)
            if not self._unique:
                return item
            assert self._seen is not None
            if self._strategy is not None:
                key = self._strategy(item)
            else:
                key = item
                try:
                    hash(key)
                except TypeError:
                    key = hashable(item)
            if key in self._seen:
                continue
            self._seen.add(key)
            return item

    # -- iteration and fetching ---------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._next()
            if item is _NONE:
                return
            yield item

    def __next__(self) -> Any:
        item = self._next()
        if item is _NONE:
            raise StopIteration
        return item

    def fetchone(self) -> Any:
        """Return the next row (or value), or None when there are no more."""
        item = self._next()
        return None if item is _NONE else item

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Return up to *size* more rows (default: :meth:`yield_per`'s size, else 1)."""
        if size is None:
            size = self._src.yield_per or DEFAULT_FETCH_SIZE
        out: list[Any] = []
        while size <= 0 or len(out) < size:
            item = self._next()
            if item is _NONE:
                break
            out.append(item)
        return out

    def fetchall(self) -> list[Any]:
        """Return every remaining row (the same as :meth:`all`)."""
        return self.all()

    def all(self) -> list[Any]:
        """Return every remaining row in a list; the result is exhausted afterwards."""
        if not self._unique:
            convert = self._convert
            return [convert(row) for row in self._src.rest()]
        return list(self)

    def partitions(self, size: int | None = None) -> Iterator[list[Any]]:
        """Yield lists of up to *size* rows until the result is exhausted.

        Without *size*, :meth:`yield_per`'s size is used (else one row per list).
        """
        while True:
            part = self.fetchmany(size)
            if not part:
                return
            yield part

    def first(self) -> Any:
        """Return the first row (or None) and close the result, discarding the rest."""
        try:
            item = self._next()
        finally:
            self._src.close()
        return None if item is _NONE else item

    def _only_one(self, *, none_ok: bool) -> Any:
        try:
            item = self._next()
            if item is _NONE:
                if none_ok:
                    return None
                raise NoResultFound("No row was found when one was required")
            if self._next() is not _NONE:
                raise MultipleResultsFound(
                    "Multiple rows were found when one or none was required"
                    if none_ok
                    else "Multiple rows were found when exactly one was required"
                )
            return item
        finally:
            self._src.close()

    def one(self) -> Any:
        """Return the only row and close the result.

        :raises NoResultFound: when there is no row.
        :raises MultipleResultsFound: when there is more than one.
        """
        return self._only_one(none_ok=False)

    def one_or_none(self) -> Any:
        """Return the only row, or None when there is none; close the result.

        :raises MultipleResultsFound: when there is more than one.
        """
        return self._only_one(none_ok=True)

    def close(self) -> None:
        """Close the result: the rows not read are discarded, and so are open cursors."""
        self._src.close()

    @property
    def closed(self) -> bool:
        """True once the result was closed (not merely exhausted)."""
        return self._src.closed

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Result(_Fetcher):
    """The rows of an executed statement, read lazily from *rows*.

    :param keys: the result keys (column names / labels), in column order.
    :param rows: an iterable of row tuples; it is consumed only as rows are fetched.
    :param rowcount: what :attr:`rowcount` reports (-1 when unknown).
    :param row_processor: applied to each tuple from *rows* before it becomes a
        :class:`Row` (e.g. converting values or building ORM objects); must return a
        tuple of the same width.
    :param on_close: called once, when the result is exhausted, closed, or fails.
    """

    def __init__(
        self,
        keys: Sequence[str],
        rows: Iterable[tuple[Any, ...]],
        *,
        rowcount: int = -1,
        row_processor: Callable[[tuple[Any, ...]], Any] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._src = _Source(rows, row_processor, on_close)
        self._keys = tuple(keys)
        self._indexes: tuple[int, ...] | None = None
        self._row_cls = _row_class(self._keys)
        self._rowcount = rowcount
        self._init_unique(None)

    def _derive(self, keys: tuple[str, ...], indexes: tuple[int, ...] | None) -> Result:
        new = object.__new__(Result)
        new._src = self._src
        new._keys = keys
        new._indexes = indexes
        new._row_cls = _row_class(keys)
        new._rowcount = self._rowcount
        new._init_unique(self)
        return new

    def _convert(self, row: Any) -> Row:
        if self._indexes is not None:
            row = tuple(row[i] for i in self._indexes)
        return self._row_cls(row)

    def _index(self, key: Any) -> int:
        if isinstance(key, int) and not isinstance(key, bool):
            if -len(self._keys) <= key < len(self._keys):
                return key % len(self._keys)
            raise _no_column(key)
        k = _key_of(key)
        try:
            return self._keys.index(k)
        except ValueError:
            raise _no_column(key) from None

    # -- shape ----------------------------------------------------------------------

    def keys(self) -> RMKeyView:
        """The result keys, in column order."""
        return RMKeyView(self._keys)

    @property
    def rowcount(self) -> int:
        """Rows matched or returned as the database reported them; -1 when unknown."""
        return self._rowcount

    def columns(self, *keys: Any) -> Result:
        """Return a result over the same rows keeping only *keys* (names, indexes or columns).

        The new result reads from the same rows: what one reads, the other will not.
        """
        idx = tuple(self._index(k) for k in keys)
        base = self._indexes
        new_keys = tuple(self._keys[i] for i in idx)
        return self._derive(new_keys, idx if base is None else tuple(base[i] for i in idx))

    def unique(self, strategy: Callable[[Any], Any] | None = None) -> Result:
        """Return this result de-duplicating its rows; *strategy* maps a row to its key.

        Without *strategy* rows are compared by value (ORM objects by identity).
        """
        self._set_unique(strategy)
        return self

    def yield_per(self, num: int) -> Result:
        """Set the default batch size of :meth:`partitions` and :meth:`fetchmany`; returns self."""
        self._src.yield_per = num
        return self

    def tuples(self) -> Result:
        """Return this result (typed as tuples in SQLAlchemy)."""
        return self

    @property
    def t(self) -> Result:
        """This result (the same as :meth:`tuples`)."""
        return self

    def scalars(self, index: Any = 0) -> ScalarResult:
        """Return a result of one column's values (the first by default)."""
        return ScalarResult(self, self._index(index))

    def mappings(self) -> MappingResult:
        """Return a result of :class:`RowMapping` objects instead of rows."""
        return MappingResult(self)

    # -- single values -----------------------------------------------------------

    def scalar(self) -> Any:
        """Return the first column of the first row (None if no row); close the result."""
        row = self.first()
        return None if row is None else row[0]

    def scalar_one(self) -> Any:
        """Return the only row's first column (see :meth:`one`)."""
        return self.scalars().one()

    def scalar_one_or_none(self) -> Any:
        """Return the only row's first column or None (see :meth:`one_or_none`)."""
        return self.scalars().one_or_none()


class ScalarResult(_Fetcher):
    """One column's values of a :class:`Result` (from :meth:`Result.scalars`)."""

    def __init__(self, result: Result, index: int) -> None:
        self._src = result._src
        self._result = result
        self._pos = index
        self._init_unique(result)

    def _convert(self, row: Any) -> Any:
        return self._result._convert(row)[self._pos]

    def unique(self, strategy: Callable[[Any], Any] | None = None) -> ScalarResult:
        """De-duplicate the values (by value; ORM objects by identity); returns self."""
        self._set_unique(strategy)
        return self

    def yield_per(self, num: int) -> ScalarResult:
        """See :meth:`Result.yield_per`."""
        self._src.yield_per = num
        return self


class MappingResult(_Fetcher):
    """A result whose rows are :class:`RowMapping` objects (from :meth:`Result.mappings`)."""

    def __init__(self, result: Result) -> None:
        self._src = result._src
        self._result = result
        self._init_unique(result)

    def _convert(self, row: Any) -> RowMapping:
        return RowMapping(self._result._convert(row))

    def keys(self) -> RMKeyView:
        """The result keys, in column order."""
        return self._result.keys()

    def columns(self, *keys: Any) -> MappingResult:
        """Return a mapping result keeping only *keys* (see :meth:`Result.columns`)."""
        new = MappingResult(self._result.columns(*keys))
        new._init_unique(self)
        return new

    def unique(self, strategy: Callable[[Any], Any] | None = None) -> MappingResult:
        """De-duplicate the rows; returns self."""
        self._set_unique(strategy)
        return self

    def yield_per(self, num: int) -> MappingResult:
        """See :meth:`Result.yield_per`."""
        self._src.yield_per = num
        return self
