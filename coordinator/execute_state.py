"""The :class:`ORMExecuteState` handed to ``do_orm_execute`` listeners, and their loop.

How the session uses this module (one ``Session.execute()`` call)::

    listeners = event.listeners_for(session, "do_orm_execute")   # or parent's rest
    state = ORMExecuteState(
        session, statement, params, execution_options, bind_arguments,
        invoke=session._invoke_statement,            # see InvokeCallback
        session_execution_options=session_wide_options,
    )
    result = run_execute_listeners(state, listeners, session._execute_routed)

``session._execute_routed(state)`` runs ``state.statement`` with ``state.parameters``,
``state.execution_options`` and ``state.bind_arguments`` (routing it with
:meth:`~shardsession.coordinator.routing.Router.shards_for_execute`).  A listener
that returns a result (anything but None) replaces that execution.

``session._invoke_statement(parent, statement, params, execution_options,
bind_arguments)`` runs the same steps as ``Session.execute`` but with
``listeners = parent.remaining_listeners()`` (and the parent's load context, which
:meth:`ORMExecuteState.invoke_statement` passes in *execution_options* already), so
the listener calling :meth:`ORMExecuteState.invoke_statement` and those before it
are not run again while the ones after it are -- SQLAlchemy's semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shardsession.coordinator.options import (
    ORMOption,
    UserDefinedOption,
    find_shard_id_option,
    statement_options,
)

from shardsession.exc import InvalidRequestError
from shardsession.orm.inspection import inspect

__all__ = [
    "LAZY_LOADED_FROM",
    "LOAD_KIND",
    "REFRESH_STATE",
    "InvokeCallback",
    "LoadOptions",
    "ORMExecuteState",
    "UpdateDeleteOptions",
    "run_execute_listeners",
]

#: Execution option the session's loaders set to the
#: :class:`~shardsession.orm.state.InstanceState` whose attribute a statement loads.
LAZY_LOADED_FROM = "_ss_lazy_loaded_from"
#: Execution option the session's loaders set to ``"relationship"`` (loading a
#: relationship) or ``"column"`` (loading / refreshing columns of an existing object).
LOAD_KIND = "_ss_load_kind"
#: Execution option holding the InstanceState a column load refreshes.
REFRESH_STATE = "_ss_refresh_state"

#: ``invoke(parent_state, statement, params, execution_options, bind_arguments) -> Result``
InvokeCallback = Callable[[Any, Any, Any, Mapping[str, Any], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class LoadOptions:
    """The ORM load settings of a SELECT, read from its execution options.

    The SQLAlchemy spellings (``_identity_token``, ``_lazy_loaded_from``, ...) are
    available as aliases, so listeners written for ``horizontal_shard`` keep working.
    """

    populate_existing: bool = False
    autoflush: bool = True
    yield_per: int | None = None
    identity_token: Any = None
    lazy_loaded_from: Any = None
    refresh_state: Any = None

    @property
    def _populate_existing(self) -> bool:
        return self.populate_existing

    @property
    def _autoflush(self) -> bool:
        return self.autoflush

    @property
    def _yield_per(self) -> int | None:
        return self.yield_per

    @property
    def _identity_token(self) -> Any:
        return self.identity_token

    @property
    def _lazy_loaded_from(self) -> Any:
        return self.lazy_loaded_from

    @property
    def _refresh_state(self) -> Any:
        return self.refresh_state


@dataclass(frozen=True)
class UpdateDeleteOptions:
    """The ORM settings of an UPDATE or DELETE, read from its execution options.

    ``_synchronize_session`` and ``_identity_token`` are SQLAlchemy-spelled aliases.
    """

    synchronize_session: Any = "auto"
    identity_token: Any = None

    @property
    def _synchronize_session(self) -> Any:
        return self.synchronize_session

    @property
    def _identity_token(self) -> Any:
        return self.identity_token


def _mapper_of(entity: Any) -> Any:
    if entity is None:
        return None
    m = inspect(entity, raiseerr=False)
    return getattr(m, "mapper", None)


class ORMExecuteState:
    """One ``Session.execute()`` call, as ``do_orm_execute`` listeners see it.

    Listeners may replace :attr:`statement` and :attr:`parameters`, call
    :meth:`update_execution_options`, add to :attr:`bind_arguments`, re-execute with
    :meth:`invoke_statement` or return a result to use instead of executing.

    :param session: the session.
    :param statement: the statement.
    :param parameters: the parameters.
    :param execution_options: the options passed to ``execute()``.
    :param bind_arguments: the bind arguments passed to ``execute()`` (copied).
    :param invoke: the session's re-execution callback, see :data:`InvokeCallback`;
        without it :meth:`invoke_statement` raises.
    :param session_execution_options: the session's own execution options; they apply
        where neither the statement nor *execution_options* set the key.

    .. attribute:: session

        The :class:`~shardsession.Session` running the statement.

    .. attribute:: statement

        The statement being executed.  A listener may assign another statement
        here; the session then runs that one instead.

    .. attribute:: parameters

        The parameters given to ``Session.execute()``: a dict, a list of dicts
        (executemany), or None.  A listener may replace them.

    .. attribute:: bind_arguments

        The ``bind_arguments`` dict of the call (a copy).  ``"shard_id"`` in it
        pins the statement to one shard; for an ORM statement ``"mapper"`` holds
        the :attr:`bind_mapper`, for any other statement ``"clause"`` holds the
        statement.  Listeners may add keys that an ``execute_chooser`` reads.

    .. attribute:: local_execution_options

        The execution options given to this call of ``Session.execute()`` (plus
        the session-wide options the statement does not set itself, and what
        :meth:`update_execution_options` added).  The statement's own options
        are not included.

    .. attribute:: execution_options

        All the options in effect: the statement's own execution options with
        :attr:`local_execution_options` laid over them.
    """

    def __init__(
        self,
        session: Any,
        statement: Any,
        parameters: Any = None,
        execution_options: Mapping[str, Any] | None = None,
        bind_arguments: Mapping[str, Any] | None = None,
        *,
        invoke: InvokeCallback | None = None,
        session_execution_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.session = session
        self.statement = statement
        self.parameters = parameters
        stmt_opts = _statement_execution_options(statement)
        local: dict[str, Any] = {
            k: v for k, v in (session_execution_options or {}).items() if k not in stmt_opts
        }
        local.update(execution_options or {})
        self.local_execution_options: dict[str, Any] = local
        self.execution_options: dict[str, Any] = {**stmt_opts, **local}
        self.bind_arguments: dict[str, Any] = dict(bind_arguments or {})
        self._invoke = invoke
        self._listeners: list[Callable[[ORMExecuteState], Any]] = []
        self._current = -1
        if self.is_orm_statement:
            mappers = self.all_mappers
            if mappers:
                self.bind_arguments.setdefault("mapper", mappers[0])
        else:
            self.bind_arguments.setdefault("clause", statement)

    def __repr__(self) -> str:
        return f"<ORMExecuteState {type(self.statement).__name__} at {id(self):#x}>"

    # -- kind of statement -----------------------------------------------------

    @property
    def is_select(self) -> bool:
        """True for a SELECT (including ``text().columns()``)."""
        return bool(getattr(self.statement, "is_select", False))

    @property
    def is_insert(self) -> bool:
        """True for an INSERT."""
        return getattr(self.statement, "__visit_name__", None) == "insert"

    @property
    def is_update(self) -> bool:
        """True for an UPDATE."""
        return getattr(self.statement, "__visit_name__", None) == "update"

    @property
    def is_delete(self) -> bool:
        """True for a DELETE."""
        return getattr(self.statement, "__visit_name__", None) == "delete"

    @property
    def is_executemany(self) -> bool:
        """True when :attr:`parameters` is a list of parameter dicts."""
        return isinstance(self.parameters, list)

    @property
    def is_from_statement(self) -> bool:
        """Always False: ``select().from_statement()`` is not supported."""
        return False

    @property
    def is_orm_statement(self) -> bool:
        """True when the statement selects or targets a mapped class.

        Statements against plain tables and ``text()`` are Core statements: no
        objects are built from their rows.
        """
        stmt = self.statement
        if getattr(stmt, "__visit_name__", None) in ("insert", "update", "delete"):
            return _mapper_of(getattr(stmt, "entity", None)) is not None
        for item in getattr(stmt, "_entities", ()):
            if item.entity is not None and _mapper_of(item.entity) is not None:
                return True
        return False

    # -- mappers -----------------------------------------------------------------

    @property
    def bind_mapper(self) -> Any:
        """The main mapper of an ORM statement (``bind_arguments["mapper"]``), or None."""
        return self.bind_arguments.get("mapper")

    @property
    def all_mappers(self) -> list[Any]:
        """The mappers at the top level of the statement, without duplicates.

        For a SELECT, those of the entities and columns selected, in order; for an
        INSERT / UPDATE / DELETE, the mapper of the target class; else ``[]``.
        """
        stmt = self.statement
        if getattr(stmt, "__visit_name__", None) in ("insert", "update", "delete"):
            m = _mapper_of(getattr(stmt, "entity", None))
            return [m] if m is not None else []
        out: list[Any] = []
        descriptions = getattr(stmt, "column_descriptions", None)
        for d in descriptions or ():
            m = _mapper_of(d.get("entity"))
            if m is not None and m not in out:
                out.append(m)
        return out

    # -- loading -------------------------------------------------------------------

    @property
    def lazy_loaded_from(self) -> Any:
        """The :class:`~shardsession.orm.state.InstanceState` a lazy load is for, or None."""
        return self.execution_options.get(LAZY_LOADED_FROM)

    @property
    def is_relationship_load(self) -> bool:
        """True when the statement loads objects for a relationship of another object."""
        return self.execution_options.get(LOAD_KIND) == "relationship"

    @property
    def is_column_load(self) -> bool:
        """True when the statement loads or refreshes columns of an existing object.

        That happens for ``Session.refresh()`` and for expired attributes.
        """
        return self.execution_options.get(LOAD_KIND) == "column"

    @property
    def load_options(self) -> LoadOptions:
        """The :class:`LoadOptions` of a SELECT.

        :raises InvalidRequestError: when the statement is not a SELECT.
        """
        if not self.is_select:
            raise InvalidRequestError(
                "This ORM execution is not against a SELECT statement so there are no load options."
            )
        o = self.execution_options
        return LoadOptions(
            populate_existing=bool(o.get("populate_existing", False)),
            autoflush=bool(o.get("autoflush", True)),
            yield_per=o.get("yield_per"),
            identity_token=o.get("identity_token"),
            lazy_loaded_from=o.get(LAZY_LOADED_FROM),
            refresh_state=o.get(REFRESH_STATE),
        )

    @property
    def update_delete_options(self) -> UpdateDeleteOptions:
        """The :class:`UpdateDeleteOptions` of an UPDATE or DELETE.

        :raises InvalidRequestError: when the statement is neither.
        """
        if not (self.is_update or self.is_delete):
            raise InvalidRequestError(
                "This ORM execution is not against an UPDATE or DELETE statement so there "
                "are no update options."
            )
        o = self.execution_options
        return UpdateDeleteOptions(
            synchronize_session=o.get("synchronize_session", "auto"),
            identity_token=o.get("identity_token"),
        )

    @property
    def user_defined_options(self) -> list[UserDefinedOption]:
        """The :class:`~shardsession.coordinator.options.UserDefinedOption` objects
        given to the statement with ``.options()``, in order."""
        return [o for o in statement_options(self.statement) if isinstance(o, UserDefinedOption)]

    @property
    def orm_options(self) -> list[ORMOption]:
        """Every ORM option given to the statement with ``.options()``, in order."""
        return [o for o in statement_options(self.statement) if isinstance(o, ORMOption)]

    @property
    def shard_id_option(self) -> str | None:
        """The shard named by a ``set_shard_id()`` option of the statement, or None."""
        opt = find_shard_id_option(self.statement)
        return None if opt is None else opt.shard_id

    # -- changing the execution ----------------------------------------------------

    def update_execution_options(self, **opts: Any) -> None:
        """Set execution options for this execution (they win over earlier values).

        Unlike SQLAlchemy, :attr:`execution_options` reflects the update at once as
        well as :attr:`local_execution_options`.
        """
        self.local_execution_options = {**self.local_execution_options, **opts}
        self.execution_options = {**self.execution_options, **opts}

    def remaining_listeners(self) -> list[Callable[[ORMExecuteState], Any]]:
        """The ``do_orm_execute`` listeners after the one running now.

        The session passes them as the listeners of a re-execution made through
        :meth:`invoke_statement`.
        """
        return self._listeners[self._current + 1 :]

    def invoke_statement(
        self,
        statement: Any = None,
        params: Any = None,
        execution_options: Mapping[str, Any] | None = None,
        bind_arguments: Mapping[str, Any] | None = None,
    ) -> Any:
        """Execute this statement (or another) again, from inside a listener.

        The listener calling this and those before it are not run again; the
        listeners after it are.  Typical uses: run the statement once per shard and
        merge, or return a cached result.

        :param statement: the statement to run instead of :attr:`statement`.
        :param params: parameters merged over :attr:`parameters` (for executemany,
            a list of the same length, merged pairwise).
        :param execution_options: merged over :attr:`local_execution_options`.
        :param bind_arguments: merged over :attr:`bind_arguments`.
        :return: the session's :class:`~shardsession.coordinator.result.Result`.
        :raises InvalidRequestError: when the state was made without a session
            callback, or executemany parameter lists differ in length.
        """
        if self._invoke is None:
            raise InvalidRequestError(
                "this ORMExecuteState cannot re-execute: it was created without the "
                "session's invoke callback"
            )
        stmt = self.statement if statement is None else statement
        new_params = _merge_params(self.parameters, params)
        opts = {**self.local_execution_options, **(execution_options or {})}
        bargs = {**self.bind_arguments, **(bind_arguments or {})}
        if statement is not None and statement is not self.statement:
            # The mapper / clause were derived from the old statement.
            for key in ("mapper", "clause"):
                if key not in (bind_arguments or {}):
                    bargs.pop(key, None)
        return self._invoke(self, stmt, new_params, opts, bargs)


def _statement_execution_options(statement: Any) -> dict[str, Any]:
    get = getattr(statement, "get_execution_options", None)
    if get is not None:
        return dict(get())
    return dict(getattr(statement, "_execution_options", None) or {})


def _merge_params(current: Any, given: Any) -> Any:
    if not given:
        return current
    if isinstance(current, list):
        if not isinstance(given, list | tuple) or len(given) != len(current):
            count = len(given) if isinstance(given, list | tuple) else 1
            raise InvalidRequestError(
                "Can't apply executemany parameters to statement; number of parameter "
                f"sets passed to Session.execute() ({len(current)}) does not match number "
                f"of parameter sets given to ORMExecuteState.invoke_statement() ({count})"
            )
        return [{**a, **b} for a, b in zip(current, given)]
    if isinstance(given, list | tuple):
        raise InvalidRequestError(
            "invoke_statement() got a list of parameter sets for a statement executed "
            "with a single parameter dict"
        )
    return {**(current or {}), **given}


def run_execute_listeners(
    state: ORMExecuteState,
    listeners: Sequence[Callable[[ORMExecuteState], Any]],
    execute: Callable[[ORMExecuteState], Any],
) -> Any:
    """Run the ``do_orm_execute`` *listeners* in order, then *execute* the statement.

    Each listener gets *state*.  The first one returning something other than None
    ends the loop: that value is the result of ``Session.execute()`` and the
    statement is not executed here (it may have been through
    :meth:`ORMExecuteState.invoke_statement`).  When every listener returns None,
    ``execute(state)`` runs the statement as the listeners left it (statement,
    parameters, execution options, bind arguments) and its return value is returned.

    :param state: the state of this execution.
    :param listeners: from :func:`shardsession.event.listeners_for` for a top-level
        execution, or ``parent.remaining_listeners()`` for a re-execution.
    :param execute: the session's routed execution of a state.
    """
    state._listeners = list(listeners)
    for idx, fn in enumerate(state._listeners):
        state._current = idx
        result = fn(state)
        if result is not None:
            return result
    state._current = len(state._listeners)
    return execute(state)
