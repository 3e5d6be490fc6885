"""ORM options carried by statements: :class:`set_shard_id` and user-defined options.

Statements keep what :meth:`~shardsession.sql.Select.options` receives in their
``_with_options`` tuple without compiling it; the session and the router read the
options back from there (see :func:`find_shard_id_option`).
"""

from __future__ import annotations

from typing import Any

from shardsession.exc import ArgumentError

__all__ = [
    "ORMOption",
    "UserDefinedOption",
    "find_shard_id_option",
    "set_shard_id",
    "statement_options",
]


class ORMOption:
    """Base class of the options a statement carries for the ORM (not compiled to SQL).

    :ivar propagate_to_loaders: when true, the session copies the option onto the
        statements it emits later to load attributes and relationships of the
        objects the statement returned.
    """

    __slots__ = ()

    propagate_to_loaders: bool = False


class UserDefinedOption(ORMOption):
    """An option carrying an arbitrary *payload* for the application's own listeners.

    ``do_orm_execute`` listeners find it in
    :attr:`~shardsession.coordinator.execute_state.ORMExecuteState.user_defined_options`.

    :param payload: anything the application wants to pass along.
    """

    __slots__ = ("payload",)

    propagate_to_loaders = False

    def __init__(self, payload: Any = None) -> None:
        self.payload = payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.payload!r})"


class set_shard_id(ORMOption):
    """Run a statement on one named shard, whatever else would route it.

    Apply it with ``select(User).options(set_shard_id("s1"))`` (or on any statement
    with an ``options()`` method).  It takes precedence over every other way of
    choosing shards: identity token, ``shard_id`` execution option or bind argument,
    ``execute_chooser`` and the shard-key router.

    :param shard_id: the name of a shard of the session's pool.
    :param propagate_to_loaders: when true (the default), lazy loads and attribute
        refreshes of the objects the statement returns go to the same shard through
        the option as well; with false only the statement itself is pinned (objects
        are still loaded from the shard they came from, which is their identity
        token).
    :raises ArgumentError: when *shard_id* is not a non-empty string.
    """

    __slots__ = ("propagate_to_loaders", "shard_id")

    def __init__(self, shard_id: str, propagate_to_loaders: bool = True) -> None:
        if not isinstance(shard_id, str) or not shard_id:
            raise ArgumentError(f"set_shard_id() needs a shard name (a string), got {shard_id!r}")
        self.shard_id = shard_id
        self.propagate_to_loaders = bool(propagate_to_loaders)

    def __repr__(self) -> str:
        return (
            f"set_shard_id({self.shard_id!r}, propagate_to_loaders={self.propagate_to_loaders!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, set_shard_id):
            return NotImplemented
        return (self.shard_id, self.propagate_to_loaders) == (
            other.shard_id,
            other.propagate_to_loaders,
        )

    def __hash__(self) -> int:
        return hash((set_shard_id, self.shard_id, self.propagate_to_loaders))

    def __reduce__(self) -> tuple[Any, ...]:
        return (set_shard_id, (self.shard_id, self.propagate_to_loaders))


def statement_options(statement: Any) -> tuple[Any, ...]:
    """Return the options given to *statement* with ``.options()`` (``()`` if none).

    :param statement: any statement; ones without ``options()`` (e.g. ``text()``)
        have none.
    """
    opts = getattr(statement, "_with_options", None)
    return tuple(opts) if opts else ()


def find_shard_id_option(statement: Any) -> set_shard_id | None:
    """Return the :class:`set_shard_id` option that applies to *statement*, or None.

    When ``.options()`` was given several, the first one wins (as in SQLAlchemy).

    :param statement: the statement being executed.
    """
    for opt in statement_options(statement):
        if isinstance(opt, set_shard_id):
            return opt
    return None
