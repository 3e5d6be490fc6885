"""Routing of objects, identities and statements to shards (no database needed)."""

from __future__ import annotations

import datetime
import decimal
import enum
import os
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any

import pytest
from shardsession.coordinator.execute_state import LAZY_LOADED_FROM, ORMExecuteState
from shardsession.coordinator.options import UserDefinedOption, set_shard_id
from shardsession.coordinator.routing import Router, encode_shard_key, shard_for_key

from shardsession.exc import ArgumentError, ShardNotFoundError
from shardsession.orm import DeclarativeBase, Mapped, inspect, mapped_column
from shardsession.sql import bindparam, delete, insert, select, text, update

SHARDS = ["s0", "s1", "s2", "s3"]


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "rt_customers"
    __shard_key__ = "tenant"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str]
    name: Mapped[str | None]


class Account(Base):
    """The shard key is part of a composite primary key."""

    __tablename__ = "rt_accounts"
    __shard_key__ = "region"

    region: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)


class Note(Base):
    """No shard key."""

    __tablename__ = "rt_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str | None]


def _persistent(obj: Any, shard: str) -> Any:
    state = inspect(obj)
    state.key = (*inspect(type(obj)).identity_key_from_instance(obj)[:2], shard)
    return obj


def _state(stmt: Any, params: Any = None, eo: Any = None, ba: Any = None) -> ORMExecuteState:
    return ORMExecuteState(None, stmt, params, eo, ba)


# -- the hash ------------------------------------------------------------------------------


def test_hash_is_stable_within_a_process() -> None:
    values = [1, "acme", uuid.UUID(int=7), b"\x00\x01", (1, "x")]
    first = [shard_for_key(v, SHARDS) for v in values]
    assert [shard_for_key(v, SHARDS) for v in values] == first
    # The order the shards are listed in does not matter.
    assert [shard_for_key(v, list(reversed(SHARDS))) for v in values] == first


def test_hash_is_stable_across_processes_and_hash_seeds() -> None:
    code = (
        "from shardsession.coordinator.routing import shard_for_key;"
        "print([shard_for_key(v, ['s0','s1','s2','s3']) for v in (range(50))],"
        "[shard_for_key(s, ['s0','s1','s2','s3']) for s in ('a','bb','ccc','tenant-9')])"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        outs.add(out)
    assert len(outs) == 1
    local = (
        str([shard_for_key(v, SHARDS) for v in range(50)])
        + " "
        + str([shard_for_key(s, SHARDS) for s in ("a", "bb", "ccc", "tenant-9")])
    )
    assert outs == {local + "\n"}


def test_hash_golden_values() -> None:
    # Data placement depends on these: changing the encoding or hash moves rows.
    assert encode_shard_key(5) == b"i1:5"
    assert encode_shard_key("ab") == b"s2:ab"
    assert encode_shard_key((1, "x")) == b"t8:i1:1s1:x"
    got = [shard_for_key(v, SHARDS) for v in (0, 1, 2, 3, "acme", "globex")]
    assert got == GOLDEN


GOLDEN = ["s1", "s3", "s2", "s0", "s3", "s0"]


def test_distribution_over_four_shards_is_even() -> None:
    counts = Counter(shard_for_key(i, SHARDS) for i in range(10_000))
    assert set(counts) == set(SHARDS)
    for shard, n in counts.items():
        assert 2000 <= n <= 3000, (shard, n)


def test_adding_a_shard_moves_about_one_fifth_of_keys_all_to_the_new_shard() -> None:
    five = [*SHARDS, "s4"]
    moved = []
    for i in range(10_000):
        before, after = shard_for_key(i, SHARDS), shard_for_key(i, five)
        if before != after:
            moved.append(after)
    assert 1500 <= len(moved) <= 2500, len(moved)
    assert set(moved) == {"s4"}


class Color(enum.Enum):
    red = "R"


class Level(enum.IntEnum):
    high = 3


def test_equal_values_encode_equally() -> None:
    assert encode_shard_key(5) == encode_shard_key(5.0) == encode_shard_key(decimal.Decimal("5.00"))
    assert encode_shard_key(0.1) == encode_shard_key(decimal.Decimal("0.10"))
    aware = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC)
    other_tz = aware.astimezone(datetime.timezone(datetime.timedelta(hours=5)))
    assert encode_shard_key(aware) == encode_shard_key(other_tz)
    assert encode_shard_key(aware) != encode_shard_key(aware.replace(tzinfo=None))
    assert encode_shard_key(Color.red) == encode_shard_key("red")
    assert encode_shard_key(Level.high) == encode_shard_key(3)
    assert encode_shard_key(True) != encode_shard_key(1)
    assert encode_shard_key(b"ab") != encode_shard_key("ab")
    assert encode_shard_key(("a", "b")) != encode_shard_key(("ab",))
    assert encode_shard_key(datetime.date(2024, 1, 2)) != encode_shard_key("2024-01-02")


@pytest.mark.parametrize("bad", [None, object(), {"a": 1}, 1.5j])
def test_unencodable_values_raise(bad: Any) -> None:
    with pytest.raises(TypeError):
        encode_shard_key(bad)


def test_string_for_integer_column_routes_like_the_int() -> None:
    router = Router(SHARDS)
    col = inspect(Account).shard_key_column
    assert router.shard_for_value("17", col) == router.shard_for_value(17, col)


# -- router construction -------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[], ["a", "a"], ["a", ""], ["a", 3]])
def test_router_rejects_bad_shard_lists(ids: list[Any]) -> None:
    with pytest.raises(ArgumentError):
        Router(ids)


def test_router_rejects_non_callable_chooser() -> None:
    with pytest.raises(ArgumentError, match="shard_chooser"):
        Router(SHARDS, shard_chooser="s0")  # type: ignore[arg-type]


# -- objects -------------------------------------------------------------------------------


def test_instance_routes_by_shard_key() -> None:
    router = Router(SHARDS)
    c = Customer(id=1, tenant="acme")
    assert router.shard_for_instance(inspect(Customer), c) == shard_for_key("acme", SHARDS)
    assert router.shard_for_instance(None, c) == shard_for_key("acme", SHARDS)


def test_identity_token_wins_over_chooser_and_key() -> None:
    calls = []
    router = Router(SHARDS, shard_chooser=lambda *a, **k: calls.append(a) or "s0")
    c = _persistent(Customer(id=1, tenant="acme"), "s3")
    assert router.shard_for_instance(inspect(Customer), c) == "s3"
    assert calls == []


def test_shard_chooser_wins_over_key_and_receives_arguments() -> None:
    calls: list[tuple[Any, ...]] = []

    def chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
        calls.append((mapper, instance, clause))
        return "s2"

    router = Router(SHARDS, shard_chooser=chooser)
    c = Customer(id=1, tenant="acme")
    assert router.shard_for_instance(inspect(Customer), c) == "s2"
    marker = object()
    assert router.shard_for_instance(inspect(Customer), c, clause=marker) == "s2"
    assert calls == [(inspect(Customer), c, None), (inspect(Customer), c, marker)]


def test_chooser_without_clause_parameter_works_when_no_clause() -> None:
    router = Router(SHARDS, shard_chooser=lambda mapper, instance: "s1")
    assert router.shard_for_instance(None, Note(id=1)) == "s1"


def test_chooser_returning_unknown_shard_raises() -> None:
    router = Router(SHARDS, shard_chooser=lambda m, i: "nope")
    with pytest.raises(ShardNotFoundError, match=r"'nope'.*s0, s1, s2, s3"):
        router.shard_for_instance(None, Customer(id=1, tenant="a"))


def test_model_without_shard_key_and_no_chooser_raises() -> None:
    with pytest.raises(ShardNotFoundError, match=r"Note declares no __shard_key__"):
        Router(SHARDS).shard_for_instance(None, Note(id=1))


def test_unset_shard_key_raises() -> None:
    with pytest.raises(ShardNotFoundError, match=r"Customer\.tenant is not set"):
        Router(SHARDS).shard_for_instance(None, Customer(id=1))


def test_unknown_identity_token_raises() -> None:
    c = _persistent(Customer(id=1, tenant="a"), "elsewhere")
    with pytest.raises(ShardNotFoundError, match="elsewhere"):
        Router(SHARDS).shard_for_instance(None, c)


# -- identities ----------------------------------------------------------------------------


def test_identity_token_wins_for_identity() -> None:
    router = Router(SHARDS, identity_chooser=lambda *a, **k: pytest.fail("called"))
    assert router.shards_for_identity(inspect(Customer), 1, identity_token="s2") == ["s2"]


def test_identity_chooser_receives_arguments() -> None:
    seen: dict[str, Any] = {}

    def chooser(mapper: Any, primary_key: Any, **kw: Any) -> list[str]:
        seen.update(mapper=mapper, pk=primary_key, **kw)
        return ["s3", "s1", "s3"]

    router = Router(SHARDS, identity_chooser=chooser)
    parent = object()
    got = router.shards_for_identity(
        inspect(Customer),
        (5,),
        lazy_loaded_from=parent,
        execution_options={"x": 1},
        bind_arguments={"y": 2},
    )
    assert got == ["s3", "s1"]
    assert seen == {
        "mapper": inspect(Customer),
        "pk": (5,),
        "lazy_loaded_from": parent,
        "execution_options": {"x": 1},
        "bind_arguments": {"y": 2},
    }


def test_identity_chooser_errors() -> None:
    with pytest.raises(ShardNotFoundError):
        Router(SHARDS, identity_chooser=lambda *a, **k: ["zz"]).shards_for_identity(
            inspect(Customer), 1
        )
    with pytest.raises(ArgumentError, match=r"return \['s1'\]"):
        Router(SHARDS, identity_chooser=lambda *a, **k: "s1").shards_for_identity(
            inspect(Customer), 1
        )


def test_identity_default_uses_shard_key_in_primary_key() -> None:
    router = Router(SHARDS)
    mapper = inspect(Account)
    expected = [shard_for_key(7, SHARDS)]
    assert router.shards_for_identity(mapper, (7, 100)) == expected
    assert router.shards_for_identity(mapper, {"region": 7, "number": 100}) == expected


def test_identity_default_without_key_in_pk_asks_all_shards() -> None:
    router = Router(SHARDS)
    assert router.shards_for_identity(inspect(Customer), 5) == SHARDS
    assert router.shards_for_identity(inspect(Note), 5) == SHARDS


# -- statements: precedence ----------------------------------------------------------------


def test_execute_precedence_each_level_overrides_later_ones() -> None:
    chosen: list[Any] = []

    def chooser(state: ORMExecuteState) -> list[str]:
        chosen.append(state)
        return ["s1", "s2"]

    router = Router(["s0", "s1", "s2", "s3", "s4"], execute_chooser=chooser)
    base = select(Customer).where(Customer.tenant == "acme")
    pinned = base.options(set_shard_id("s0"))

    # 1. set_shard_id beats identity_token, shard_id option, bind argument, chooser.
    st = _state(pinned.execution_options(identity_token="s1"), None, {"shard_id": "s2"})
    st.bind_arguments["shard_id"] = "s3"
    assert router.shards_for_execute(st) == ["s0"]
    # 2. identity_token beats shard_id option and bind argument.
    st = _state(base.execution_options(identity_token="s1"), None, {"shard_id": "s2"})
    st.bind_arguments["shard_id"] = "s3"
    assert router.shards_for_execute(st) == ["s1"]
    # identity_token given at execute() time works too
    assert router.shards_for_execute(_state(base, None, {"identity_token": "s4"})) == ["s4"]
    # 3. shard_id execution option beats the bind argument.
    st = _state(base.execution_options(shard_id="s2"), None, None, {"shard_id": "s3"})
    assert router.shards_for_execute(st) == ["s2"]
    st = _state(base, None, {"_sa_shard_id": "s4"}, {"shard_id": "s3"})
    assert router.shards_for_execute(st) == ["s4"]
    # 4. bind argument beats the chooser.
    assert router.shards_for_execute(_state(base, None, None, {"shard_id": "s3"})) == ["s3"]
    assert chosen == []
    # 5. chooser beats the shard key router.
    st = _state(base)
    assert router.shards_for_execute(st) == ["s1", "s2"]
    assert chosen == [st]
    # 6. default: the shard key.
    assert Router(SHARDS).shards_for_execute(_state(base)) == [shard_for_key("acme", SHARDS)]


def test_local_execution_options_override_statement_ones_for_routing() -> None:
    stmt = select(Customer).execution_options(shard_id="s1")
    st = _state(stmt, None, {"shard_id": "s2"})
    assert Router(SHARDS).shards_for_execute(st) == ["s2"]


def test_first_set_shard_id_option_wins() -> None:
    stmt = select(Customer).options(UserDefinedOption(1), set_shard_id("s3"), set_shard_id("s1"))
    assert Router(SHARDS).shards_for_execute(_state(stmt)) == ["s3"]


@pytest.mark.parametrize(
    "make",
    [
        lambda s: _state(s.options(set_shard_id("bad"))),
        lambda s: _state(s.execution_options(identity_token="bad")),
        lambda s: _state(s, None, {"shard_id": "bad"}),
        lambda s: _state(s, None, None, {"shard_id": "bad"}),
    ],
)
def test_unknown_explicit_shard_raises(make: Any) -> None:
    with pytest.raises(ShardNotFoundError, match="'bad'"):
        Router(SHARDS).shards_for_execute(make(select(Customer)))


def test_execute_chooser_unknown_or_empty_raises() -> None:
    st = _state(select(Customer))
    with pytest.raises(ShardNotFoundError, match="'zz'"):
        Router(SHARDS, execute_chooser=lambda s: ["s0", "zz"]).shards_for_execute(st)
    with pytest.raises(ShardNotFoundError, match="no shard"):
        Router(SHARDS, execute_chooser=lambda s: []).shards_for_execute(st)


def test_execute_chooser_result_is_deduplicated_in_pool_order() -> None:
    st = _state(select(Customer))
    router = Router(SHARDS, execute_chooser=lambda s: iter(["s3", "s0", "s3"]))
    assert router.shards_for_execute(st) == ["s0", "s3"]


# -- statements: default router ------------------------------------------------------------


def _k(*values: Any) -> list[str]:
    return [s for s in SHARDS if s in {shard_for_key(v, SHARDS) for v in values}]


def _two_tenants_on_different_shards() -> tuple[str, str]:
    names = [f"t{i}" for i in range(50)]
    a = names[0]
    b = next(n for n in names if shard_for_key(n, SHARDS) != shard_for_key(a, SHARDS))
    return a, b


def test_default_routes_equality_and_in() -> None:
    router = Router(SHARDS)
    a, b = _two_tenants_on_different_shards()
    assert router.shards_for_execute(_state(select(Customer).where(Customer.tenant == a))) == _k(a)
    st = _state(select(Customer).where(Customer.name == "x", Customer.tenant.in_([a, b])))
    assert router.shards_for_execute(st) == _k(a, b)
    st = _state(select(Customer.name).where(Customer.tenant == a))
    assert router.shards_for_execute(st) == _k(a)


def test_default_routes_bound_parameters() -> None:
    router = Router(SHARDS)
    a, b = _two_tenants_on_different_shards()
    stmt = select(Customer).where(Customer.tenant == bindparam("t"))
    assert router.shards_for_execute(_state(stmt, {"t": b})) == _k(b)
    stmt = select(Customer).where(Customer.tenant.in_(bindparam("ts", expanding=True)))
    assert router.shards_for_execute(_state(stmt, {"ts": [a, b]})) == _k(a, b)
    # A parameter that was not given pins nothing.
    stmt = select(Customer).where(Customer.tenant == bindparam("t"))
    assert router.shards_for_execute(_state(stmt)) == SHARDS


def test_default_routes_executemany_parameter_sets_as_union() -> None:
    a, b = _two_tenants_on_different_shards()
    stmt = update(Customer).where(Customer.tenant == bindparam("t")).values(name="n")
    st = _state(stmt, [{"t": a}, {"t": b}])
    assert Router(SHARDS).shards_for_execute(st) == _k(a, b)


def test_default_update_and_delete_are_pinned() -> None:
    router = Router(SHARDS)
    a, _ = _two_tenants_on_different_shards()
    st = _state(update(Customer).where(Customer.tenant == a).values(name="x"))
    assert router.shards_for_execute(st) == _k(a)
    assert router.shards_for_execute(_state(delete(Customer).where(Customer.tenant == a))) == _k(a)


@pytest.mark.parametrize(
    "stmt",
    [
        select(Customer),
        select(Customer).where(Customer.name == "x"),
        select(Customer).where((Customer.tenant == "a") | (Customer.id == 1)),
        select(Note).where(Note.id == 1),
        update(Customer).values(name="x"),
        delete(Customer).where(Customer.tenant != "a"),
        text("SELECT 1"),
    ],
)
def test_unpinned_statements_go_to_all_shards(stmt: Any) -> None:
    assert Router(SHARDS).shards_for_execute(_state(stmt)) == SHARDS


def test_empty_pin_goes_to_one_shard() -> None:
    st = _state(select(Customer).where(Customer.tenant.in_([])))
    assert Router(SHARDS).shards_for_execute(st) == ["s0"]


def test_lazy_load_goes_to_parent_shard() -> None:
    parent = inspect(_persistent(Customer(id=1, tenant="a"), "s2"))
    st = _state(select(Note), None, {LAZY_LOADED_FROM: parent})
    assert Router(SHARDS).shards_for_execute(st) == ["s2"]


def test_insert_routes_by_row_shard_keys() -> None:
    router = Router(SHARDS)
    a, b = _two_tenants_on_different_shards()
    st = _state(insert(Customer).values(id=1, tenant=a))
    assert router.shards_for_execute(st) == _k(a)
    st = _state(insert(Customer).values([{"id": 1, "tenant": a}, {"id": 2, "tenant": b}]))
    assert router.shards_for_execute(st) == _k(a, b)
    st = _state(insert(Customer), [{"id": 1, "tenant": b}, {"id": 2, "tenant": b}])
    assert router.shards_for_execute(st) == _k(b)


def test_insert_without_shard_key_value_raises() -> None:
    with pytest.raises(ShardNotFoundError, match=r"Customer\.tenant"):
        Router(SHARDS).shards_for_execute(_state(insert(Customer).values(id=1)))
    with pytest.raises(ShardNotFoundError, match="no mapped class"):
        Router(SHARDS).shards_for_execute(_state(insert(Customer.__table__).values(id=1)))
    with pytest.raises(ShardNotFoundError, match="__shard_key__"):
        Router(SHARDS).shards_for_execute(_state(insert(Note).values(id=1)))


def test_explicit_shard_routes_insert_without_key() -> None:
    st = _state(insert(Note).values(id=1), None, None, {"shard_id": "s1"})
    assert Router(SHARDS).shards_for_execute(st) == ["s1"]


def test_split_insert_rows() -> None:
    router = Router(SHARDS)
    a, b = _two_tenants_on_different_shards()
    rows = [{"id": 1, "tenant": a}, {"id": 2, "tenant": b}, {"id": 3, "tenant": a}]
    got = router.split_insert_rows(inspect(Customer), rows)
    sa, sb = shard_for_key(a, SHARDS), shard_for_key(b, SHARDS)
    assert got == {sa: [rows[0], rows[2]], sb: [rows[1]]}
    assert list(got) == [s for s in SHARDS if s in (sa, sb)]
    assert got[sa][0] is not rows[0]


def test_split_insert_rows_without_key() -> None:
    with pytest.raises(ShardNotFoundError):
        Router(SHARDS).split_insert_rows(inspect(Note), [{"id": 1}])
    calls: list[Any] = []
    router = Router(SHARDS, shard_chooser=lambda m, i: calls.append((m, i)) or "s3")
    assert router.split_insert_rows(inspect(Note), [{"id": 1}, {"id": 2}]) == {
        "s3": [{"id": 1}, {"id": 2}]
    }
    assert calls == [(inspect(Note), None)]
    with pytest.raises(ShardNotFoundError, match="row 1"):
        Router(SHARDS).split_insert_rows(inspect(Customer), [{"tenant": "a"}, {"id": 2}])


def test_set_shard_id_option_object() -> None:
    opt = set_shard_id("s1", propagate_to_loaders=False)
    assert (opt.shard_id, opt.propagate_to_loaders) == ("s1", False)
    assert opt == set_shard_id("s1", False) and opt != set_shard_id("s1")
    stmt = select(Customer).options(opt)
    assert stmt._with_options == (opt,)
    with pytest.raises(ArgumentError):
        set_shard_id(None)  # type: ignore[arg-type]
    import pickle

    assert pickle.loads(pickle.dumps(opt)) == opt
