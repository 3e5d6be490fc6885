"""ORMExecuteState and the do_orm_execute listener loop (no database needed)."""

from __future__ import annotations

from typing import Any

import pytest
from shardsession.coordinator.execute_state import (
    LAZY_LOADED_FROM,
    LOAD_KIND,
    ORMExecuteState,
    run_execute_listeners,
)
from shardsession.coordinator.options import UserDefinedOption, set_shard_id

from shardsession.exc import InvalidRequestError
from shardsession.orm import DeclarativeBase, Mapped, inspect, mapped_column
from shardsession.sql import delete, insert, select, text, update


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "es_items"
    __shard_key__ = "tenant"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str]


class Tag(Base):
    __tablename__ = "es_tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str | None]


class MiniSession:
    """Runs statements the way the real session does with this module's contract."""

    def __init__(self, listeners: list[Any]) -> None:
        self.listeners = listeners
        self.executed: list[tuple[Any, Any, dict[str, Any], dict[str, Any]]] = []

    def execute(
        self,
        statement: Any,
        params: Any = None,
        execution_options: Any = None,
        bind_arguments: Any = None,
        _listeners: list[Any] | None = None,
    ) -> Any:
        state = ORMExecuteState(
            self,
            statement,
            params,
            execution_options,
            bind_arguments,
            invoke=self._invoke,
            session_execution_options={"session_opt": "S", "shared": "session"},
        )
        listeners = self.listeners if _listeners is None else _listeners
        return run_execute_listeners(state, listeners, self._run)

    def _invoke(
        self, parent: ORMExecuteState, statement: Any, params: Any, opts: Any, bargs: Any
    ) -> Any:
        return self.execute(statement, params, opts, bargs, parent.remaining_listeners())

    def _run(self, state: ORMExecuteState) -> Any:
        self.executed.append(
            (state.statement, state.parameters, state.execution_options, state.bind_arguments)
        )
        return ("result", len(self.executed))


def test_execution_options_merge_statement_session_and_local() -> None:
    stmt = select(Item).execution_options(stmt_opt=1, shared="stmt", over="stmt")
    st = ORMExecuteState(
        None,
        stmt,
        None,
        {"over": "local", "local_opt": 2},
        None,
        session_execution_options={"session_opt": "S", "shared": "session"},
    )
    # Session-wide options yield to the statement's, the statement's to local ones.
    assert st.local_execution_options == {"session_opt": "S", "over": "local", "local_opt": 2}
    assert st.execution_options == {
        "stmt_opt": 1,
        "shared": "stmt",
        "over": "local",
        "session_opt": "S",
        "local_opt": 2,
    }
    st.update_execution_options(over="listener", new=3)
    assert st.execution_options["over"] == "listener"
    assert st.local_execution_options["new"] == 3
    assert stmt.get_execution_options()["over"] == "stmt"


def test_kinds_and_mappers() -> None:
    sel = ORMExecuteState(None, select(Item, Tag.label, Item.id), None)
    assert (sel.is_select, sel.is_insert, sel.is_update, sel.is_delete) == (
        True,
        False,
        False,
        False,
    )
    assert sel.is_orm_statement
    assert sel.all_mappers == [inspect(Item), inspect(Tag)]
    assert sel.bind_mapper is inspect(Item)
    assert ORMExecuteState(None, insert(Tag).values(id=1), None).is_insert
    up = ORMExecuteState(None, update(Tag).values(label="x"), [{"a": 1}])
    assert up.is_update and up.is_executemany and up.all_mappers == [inspect(Tag)]
    de = ORMExecuteState(None, delete(Item), None)
    assert de.is_delete and de.bind_mapper is inspect(Item)
    core = ORMExecuteState(None, select(Item.__table__), None)
    assert not core.is_orm_statement and core.bind_mapper is None
    assert core.bind_arguments["clause"] is core.statement
    txt = ORMExecuteState(None, text("SELECT 1"), None)
    assert not txt.is_orm_statement and txt.all_mappers == [] and not txt.is_select


def test_explicit_mapper_bind_argument_is_kept() -> None:
    st = ORMExecuteState(None, select(Item), None, None, {"mapper": inspect(Tag)})
    assert st.bind_mapper is inspect(Tag)


def test_load_context() -> None:
    parent = inspect(Item(id=1, tenant="t"))
    st = ORMExecuteState(
        None, select(Tag), None, {LAZY_LOADED_FROM: parent, LOAD_KIND: "relationship"}
    )
    assert st.lazy_loaded_from is parent
    assert st.is_relationship_load and not st.is_column_load
    assert st.load_options._lazy_loaded_from is parent
    col = ORMExecuteState(None, select(Tag), None, {LOAD_KIND: "column"})
    assert col.is_column_load and not col.is_relationship_load and col.lazy_loaded_from is None


def test_load_options() -> None:
    st = ORMExecuteState(
        None,
        select(Item).execution_options(populate_existing=True, yield_per=10),
        None,
        {"identity_token": "s1"},
    )
    lo = st.load_options
    assert (lo.populate_existing, lo.yield_per, lo._identity_token, lo.autoflush) == (
        True,
        10,
        "s1",
        True,
    )
    with pytest.raises(InvalidRequestError, match="not against a SELECT"):
        ORMExecuteState(None, delete(Item), None).load_options  # noqa: B018


def test_update_delete_options() -> None:
    st = ORMExecuteState(
        None, update(Tag).values(label="x"), None, {"synchronize_session": "fetch"}
    )
    assert st.update_delete_options._synchronize_session == "fetch"
    assert ORMExecuteState(None, delete(Tag), None).update_delete_options.synchronize_session == (
        "auto"
    )
    with pytest.raises(InvalidRequestError, match="not against an UPDATE or DELETE"):
        ORMExecuteState(None, select(Tag), None).update_delete_options  # noqa: B018


def test_options_views() -> None:
    u1, u2 = UserDefinedOption("a"), UserDefinedOption({"b": 2})
    stmt = select(Item).options(u1, set_shard_id("s2"), u2)
    st = ORMExecuteState(None, stmt, None)
    assert st.user_defined_options == [u1, u2]
    assert st.shard_id_option == "s2"
    assert len(st.orm_options) == 3
    assert ORMExecuteState(None, text("x"), None).user_defined_options == []


def test_without_listeners_the_statement_executes() -> None:
    session = MiniSession([])
    assert session.execute(select(Item), {"p": 1}) == ("result", 1)
    assert session.executed[0][1] == {"p": 1}


def test_listener_returning_result_replaces_execution_and_stops_chain() -> None:
    ran: list[str] = []
    session = MiniSession(
        [
            lambda st: ran.append("a"),
            lambda st: ran.append("b") or "cached",
            lambda st: ran.append("c"),
        ]
    )
    assert session.execute(select(Item)) == "cached"
    assert ran == ["a", "b"]
    assert session.executed == []


def test_listener_changes_apply_to_execution() -> None:
    other = select(Tag)

    def change(st: ORMExecuteState) -> None:
        st.statement = other
        st.parameters = {"x": 1}
        st.update_execution_options(flag=True)
        st.bind_arguments["shard_id"] = "s1"

    session = MiniSession([change])
    session.execute(select(Item))
    stmt, params, opts, bargs = session.executed[0]
    assert stmt is other and params == {"x": 1} and opts["flag"] is True
    assert bargs["shard_id"] == "s1"


def test_invoke_statement_skips_current_and_earlier_listeners_runs_later_ones() -> None:
    ran: list[str] = []

    def first(st: ORMExecuteState) -> None:
        ran.append("first")

    def per_shard(st: ORMExecuteState) -> Any:
        ran.append("per_shard")
        results = []
        for shard in ("s0", "s1"):
            results.append(
                st.invoke_statement(
                    params={"extra": shard},
                    execution_options={"identity_token": shard},
                    bind_arguments={"shard_id": shard},
                )
            )
        return ("merged", results)

    def after(st: ORMExecuteState) -> None:
        ran.append(f"after:{st.bind_arguments.get('shard_id')}")

    session = MiniSession([first, per_shard, after])
    out = session.execute(select(Item), {"p": 1}, {"local": 1})
    assert out == ("merged", [("result", 1), ("result", 2)])
    assert ran == ["first", "per_shard", "after:s0", "after:s1"]
    (_, p0, o0, b0), (_, p1, o1, b1) = session.executed
    assert p0 == {"p": 1, "extra": "s0"} and p1 == {"p": 1, "extra": "s1"}
    assert o0["identity_token"] == "s0" and o0["local"] == 1 and o1["identity_token"] == "s1"
    assert b0["shard_id"] == "s0" and b1["shard_id"] == "s1"


def test_invoke_statement_from_last_listener_runs_no_listeners() -> None:
    ran: list[str] = []

    def only(st: ORMExecuteState) -> Any:
        ran.append("only")
        return st.invoke_statement()

    session = MiniSession([only])
    assert session.execute(select(Item)) == ("result", 1)
    assert ran == ["only"]


def test_invoke_statement_with_other_statement_rederives_mapper() -> None:
    def swap(st: ORMExecuteState) -> Any:
        return st.invoke_statement(statement=select(Tag))

    session = MiniSession([swap])
    session.execute(select(Item))
    stmt, _, _, bargs = session.executed[0]
    assert stmt.column_descriptions[0]["entity"] is Tag
    assert bargs["mapper"] is inspect(Tag)


def test_invoke_statement_executemany_params() -> None:
    seen: list[Any] = []

    def merge(st: ORMExecuteState) -> Any:
        seen.append(st.invoke_statement(params=[{"b": 1}, {"b": 2}]))
        with pytest.raises(InvalidRequestError, match=r"\(2\) does not match .* \(1\)"):
            st.invoke_statement(params=[{"b": 1}])
        return "done"

    session = MiniSession([merge])
    session.execute(update(Tag).values(label="x"), [{"a": 1}, {"a": 2}])
    assert session.executed[0][1] == [{"a": 1, "b": 1}, {"a": 2, "b": 2}]


def test_invoke_statement_without_callback_raises() -> None:
    st = ORMExecuteState(None, select(Item), None)
    with pytest.raises(InvalidRequestError, match="invoke callback"):
        st.invoke_statement()
