"""Global ids: ShardedIdentity keys never repeat across shards and route get()."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from shardsession.coordinator.identity import SEQUENCE_BITS
from sqlalchemy import ForeignKey, String, create_engine, insert, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry, relationship
from sqlalchemy.orm import Session as PlainSession

import shardsession as ss

# PlainPost is the model as first written: its ids repeat across shards, and it says so
pytestmark = pytest.mark.filterwarnings("ignore::shardsession.exc.ShardedIdentityWarning")


class IdBase(DeclarativeBase):
    pass


class Note(IdBase):
    """No shard key: new notes are spread over the shards."""

    __tablename__ = "id_note"
    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    body: Mapped[str] = mapped_column(String(40))


class Order(IdBase):
    """Placed by its customer; the id says where it was created."""

    __tablename__ = "id_order"
    __shard_key__ = "customer"
    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    customer: Mapped[str] = mapped_column(String(20))
    lines: Mapped[list[OrderLine]] = relationship(back_populates="order")


class OrderLine(IdBase):
    """No shard key: follows its order."""

    __tablename__ = "id_order_line"
    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("id_order.id"))
    label: Mapped[str] = mapped_column(String(20))
    order: Mapped[Order] = relationship(back_populates="lines")


class Folder(IdBase):
    """No shard key: spread; its pages follow it."""

    __tablename__ = "id_folder"
    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    pages: Mapped[list[Page]] = relationship(back_populates="folder")


class Page(IdBase):
    __tablename__ = "id_page"
    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("id_folder.id"))
    folder: Mapped[Folder] = relationship(back_populates="pages")


class Post(IdBase):
    """The blog program's post, with global ids."""

    __tablename__ = "id_post"
    __shard_key__ = "author"
    id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
    author: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(40))


class PlainBase(DeclarativeBase):  # its own registry: configured (and warned) when used
    pass


class PlainPost(PlainBase):
    """The same post with a plain autoincrement id, as the program was first written."""

    __tablename__ = "id_plain_post"
    __shard_key__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    author: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(40))


@pytest.fixture(scope="module")
def tables(shards: ss.ShardSet) -> Iterator[ss.ShardSet]:
    IdBase.metadata.drop_all(shards)
    PlainBase.metadata.drop_all(shards)
    IdBase.metadata.create_all(shards)
    PlainBase.metadata.create_all(shards)
    yield shards
    IdBase.metadata.drop_all(shards)
    PlainBase.metadata.drop_all(shards)


@pytest.fixture
def fresh(tables: ss.ShardSet, clean_shards: dict[str, str]) -> ss.ShardSet:
    """The shards with the id tables, emptied."""
    return tables


def rows_by_shard(direct: dict[str, Any], table: str) -> dict[str, list[int]]:
    out = {}
    for name, engine in direct.items():
        with engine.connect() as conn:
            out[name] = sorted(conn.execute(text(f"SELECT id FROM {table}")).scalars())
    return out


def shards_reading(direct: dict[str, Any], table: str) -> set[str]:
    """The shards on which some other backend holds a lock on ``table`` (an open
    transaction that read it)."""
    found = set()
    for name, engine in direct.items():
        with engine.connect() as conn:
            held = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE relation = to_regclass(:t) "
                    "AND pid <> pg_backend_pid()"
                ),
                {"t": table},
            ).scalar()
        if held:
            found.add(name)
    return found


def test_ids_are_unique_across_four_shards_for_1000_objects(
    fresh: ss.ShardSet, direct: dict[str, Any]
) -> None:
    with ss.Session(fresh) as session:
        session.add_all([Note(body=f"note {i}") for i in range(1000)])
        session.commit()
        ids = session.scalars(select(Note.id)).all()
    assert len(ids) == 1000 and len(set(ids)) == 1000
    numbers = ss.shard_numbers(fresh)
    assert sorted(numbers.values()) == [0, 1, 2, 3]
    stored = rows_by_shard(direct, "id_note")
    # spread evenly, and every id holds the number of the shard that stores it
    assert {name: len(found) for name, found in stored.items()} == dict.fromkeys(fresh, 250)
    for name, found in stored.items():
        assert {i >> SEQUENCE_BITS for i in found} == {numbers[name]}
        assert {ss.shard_for_id(fresh, i) for i in found} == {name}


def test_get_asks_only_the_shard_the_id_names(fresh: ss.ShardSet, direct: dict[str, Any]) -> None:
    with ss.Session(fresh) as session:
        notes = [Note(body=f"n{i}") for i in range(8)]
        session.add_all(notes)
        session.commit()
        where = {n.id: ss.inspect(n).identity_token for n in notes}
    assert set(where.values()) == set(fresh)
    for note_id, shard in where.items():
        with ss.Session(fresh) as session:
            note = session.get(Note, note_id)
            assert note is not None and ss.inspect(note).identity_token == shard
            assert shards_reading(direct, "id_note") == {shard}  # the transaction is open
    # a miss asks the named shard, then every other one
    absent = (ss.shard_numbers(fresh)["s2"] << SEQUENCE_BITS) + 999_999
    with ss.Session(fresh) as session:
        assert session.get(Note, absent) is None
        assert shards_reading(direct, "id_note") == set(fresh)
    # without a sharded identity, get() has to ask every shard
    with ss.Session(fresh) as session:
        assert session.get(PlainPost, 1) is None
        assert shards_reading(direct, "id_plain_post") == set(fresh)


def test_get_finds_a_row_moved_to_another_shard(fresh: ss.ShardSet, direct: dict[str, Any]) -> None:
    with ss.Session(fresh) as session:
        note = Note(body="moving")
        session.add(note)
        session.commit()
        note_id, home = note.id, ss.inspect(note).identity_token
    away = next(name for name in fresh if name != home)
    with direct[home].begin() as conn:  # resharding moved the row
        conn.execute(text("DELETE FROM id_note WHERE id = :i"), {"i": note_id})
    with direct[away].begin() as conn:
        conn.execute(text("INSERT INTO id_note (id, body) VALUES (:i, 'moving')"), {"i": note_id})
    with ss.Session(fresh) as session:
        found = session.get(Note, note_id)
        assert found is not None and found.body == "moving"
        assert ss.inspect(found).identity_token == away
        assert session.get_one(Note, note_id) is found


def test_keyed_objects_are_placed_by_key_and_their_ids_say_where(
    fresh: ss.ShardSet, direct: dict[str, Any]
) -> None:
    customers = [f"customer-{i}" for i in range(12)]
    with ss.Session(fresh) as session:
        orders = [
            Order(customer=c, lines=[OrderLine(label="a"), OrderLine(label="b")]) for c in customers
        ]
        session.add_all(orders)
        session.commit()
        made = {o.id: (o.customer, [line.id for line in o.lines]) for o in orders}
    numbers = ss.shard_numbers(fresh)
    for order_id, (customer, line_ids) in made.items():
        shard = ss.shard_for_key(list(fresh), customer)
        assert ss.shard_for_id(fresh, order_id) == shard
        assert {ss.shard_for_id(fresh, i) for i in line_ids} == {shard}  # lines follow
        assert order_id >> SEQUENCE_BITS == numbers[shard]
    with ss.Session(fresh) as session:
        some_id = next(iter(made))
        order = session.get(Order, some_id)
        assert order is not None and sorted(line.label for line in order.lines) == ["a", "b"]
        assert shards_reading(direct, "id_order") == {ss.shard_for_id(fresh, some_id)}


def test_orm_bulk_insert_returns_ids_of_the_shard_it_wrote(
    fresh: ss.ShardSet, direct: dict[str, Any]
) -> None:
    with ss.Session(fresh) as session:
        ids = session.scalars(
            insert(Note).returning(Note.id), [{"body": f"bulk {i}"} for i in range(5)]
        ).all()
        orders = session.scalars(
            insert(Order).returning(Order.id),
            [{"customer": f"c{i}"} for i in range(8)],
        ).all()
        session.commit()
    stored = rows_by_shard(direct, "id_note")
    (shard,) = [name for name, found in stored.items() if found]  # one statement: one shard
    assert sorted(ids) == stored[shard]
    assert {ss.shard_for_id(fresh, i) for i in ids} == {shard}
    order_rows = rows_by_shard(direct, "id_order")
    assert sorted(orders) == sorted(i for found in order_rows.values() for i in found)
    for name, found in order_rows.items():
        assert {ss.shard_for_id(fresh, i) for i in found} <= {name}


def test_new_objects_linked_to_each_other_share_a_spread_shard(fresh: ss.ShardSet) -> None:
    with ss.Session(fresh) as session:
        folders = [Folder(pages=[Page(), Page()]) for _ in range(4)]
        session.add_all([page for folder in folders for page in folder.pages])  # cascades
        session.commit()
        homes = [ss.inspect(folder).identity_token for folder in folders]
        assert sorted(homes) == sorted(fresh)  # four folders, four shards
        for folder, home in zip(folders, homes, strict=True):
            assert {ss.inspect(page).identity_token for page in folder.pages} == {home}
            assert {ss.shard_for_id(fresh, p.id) for p in folder.pages} == {home}
            assert ss.shard_for_id(fresh, folder.id) == home


def test_each_table_gets_a_bigint_column_with_its_own_sequence(
    tables: ss.ShardSet, direct: dict[str, Any]
) -> None:
    class GlobalId:  # a mixin: each class gets its own copy of the column
        id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)

    reg = registry()
    one = reg.map_declaratively(type("One", (GlobalId,), {"__tablename__": "id_one"}))
    two = reg.map_declaratively(type("Two", (GlobalId,), {"__tablename__": "id_two"}))
    assert [str(m.local_table.c.id.server_default.arg) for m in (one, two)] == [
        "shardsession_next_id('id_one_id_gid'::regclass)",
        "shardsession_next_id('id_two_id_gid'::regclass)",
    ]
    with direct["s1"].connect() as conn:
        found = conn.execute(
            text(
                "SELECT data_type, column_default, pg_get_serial_sequence('id_note', 'id') "
                "FROM information_schema.columns WHERE table_name = 'id_note' "
                "AND column_name = 'id'"
            )
        ).one()
    assert found == (
        "bigint",
        "shardsession_next_id('id_note_id_gid'::regclass)",
        "public.id_note_id_gid",  # owned by the column: dropped with the table
    )
    with pytest.raises(ss.exc.ArgumentError, match="BIGINT"):

        class Wrong(IdBase):
            __tablename__ = "id_wrong"
            id: Mapped[str] = mapped_column(String(10), ss.ShardedIdentity(), primary_key=True)


def test_a_reference_table_cannot_have_a_sharded_identity(tables: ss.ShardSet) -> None:
    reg = registry()

    class Country(DeclarativeBase):
        registry = reg

    class Code(Country):
        __tablename__ = "id_country"
        __shard_key__ = ss.REPLICATED
        id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)

    with ss.Session(tables) as session:
        session.add(Code())
        with pytest.raises(ss.exc.ArgumentError, match=r"reference table .* another id"):
            session.flush()


# -- shard numbers ---------------------------------------------------------------------------


class Schema:
    """A new schema on every shard, where shard numbers start from nothing."""

    def __init__(self, shard_dsns: dict[str, str]) -> None:
        self.name = f"ids_{uuid.uuid4().hex[:8]}"
        self.dsns = shard_dsns
        self.made: list[ss.ShardSet] = []

    def shards(self, *names: str) -> ss.ShardSet:
        """A ShardSet of the shards ``names`` whose search path is this schema."""
        shard_set = ss.create_shards(
            {name: self.dsns[name] for name in names},
            pool_size=1,
            max_overflow=2,
            recovery_interval=None,
            deadlock_interval=None,
            connect_args={"options": f"-c search_path={self.name}"},
        )
        self.made.append(shard_set)
        return shard_set


@contextlib.contextmanager
def new_schema(shard_dsns: dict[str, str]) -> Iterator[Schema]:
    schema = Schema(shard_dsns)
    for dsn in shard_dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema.name}")
    try:
        yield schema
    finally:
        for shard_set in schema.made:
            shard_set.close()
        for dsn in shard_dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema.name} CASCADE")


def test_shard_numbers_survive_a_new_shard_set_with_an_extra_shard(
    shard_dsns: dict[str, str], clean_shards: dict[str, str]
) -> None:
    with new_schema(shard_dsns) as schema:
        three = schema.shards("s1", "s2", "s3")
        IdBase.metadata.create_all(three)
        with ss.Session(three) as session:
            notes = [Note(body=f"before {i}") for i in range(6)]
            session.add_all(notes)
            session.commit()
            before = {n.id: ss.inspect(n).identity_token for n in notes}
        assert ss.shard_numbers(three) == {"s1": 0, "s2": 1, "s3": 2}
        three.close()

        four = schema.shards("s0", "s1", "s2", "s3")  # s0 joins: it sorts first, but 0 is taken
        IdBase.metadata.create_all(four)
        assert ss.shard_numbers(four) == {"s0": 3, "s1": 0, "s2": 1, "s3": 2}
        with ss.Session(four) as session:
            for note_id, shard in before.items():
                note = session.get(Note, note_id)
                assert note is not None and ss.inspect(note).identity_token == shard
            session.add_all([Note(body=f"after {i}") for i in range(8)])
            session.commit()
            after = session.scalars(select(Note.id).where(Note.body.like("after%"))).all()
        assert {i >> SEQUENCE_BITS for i in after} == {0, 1, 2, 3}
        assert len(set(after) | set(before)) == 14
        four.close()
        # a process started later reads the same numbers
        assert ss.shard_numbers(schema.shards("s2", "s0", "s3", "s1")) == {
            "s0": 3,
            "s1": 0,
            "s2": 1,
            "s3": 2,
        }


def test_two_shards_with_one_number_are_refused(
    shard_dsns: dict[str, str], clean_shards: dict[str, str]
) -> None:
    with new_schema(shard_dsns) as schema:
        pair = schema.shards("s0", "s1")
        IdBase.metadata.create_all(pair)
        for name in ("s0", "s1"):  # e.g. s1's database was copied from s0's
            with pair[name].begin() as conn:
                conn.exec_driver_sql(
                    "CREATE VIEW shardsession_shard AS SELECT 7::integer AS number, "
                    "'s0'::text AS name, now() AS claimed_at"
                )
        with ss.Session(pair) as session:
            session.add(Note(body="x"))
            with pytest.raises(ss.exc.ShardNumberError, match=r"\['s0', 's1'\].*number 7") as err:
                session.flush()
        fix = "CREATE OR REPLACE VIEW shardsession_shard AS SELECT 0::integer AS number"
        message = str(err.value)
        assert f"on 's1': {fix}" in message
        with pair["s1"].begin() as conn:  # the fix the message gives
            conn.exec_driver_sql(message.split("on 's1': ")[1].split(". Then")[0])
        assert ss.shard_numbers(schema.shards("s0", "s1")) == {"s0": 7, "s1": 0}


def test_an_insert_before_the_shards_are_numbered_names_the_fix(shard_dsns: dict[str, str]) -> None:
    with new_schema(shard_dsns) as schema:
        one = schema.shards("s0")
        IdBase.metadata.create_all(one)
        engine = create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(
                shard_dsns["s0"], options=f"-c search_path={schema.name}"
            ),
        )
        try:
            with pytest.raises(sa_exc.DBAPIError, match="no shard number yet") as err:
                with PlainSession(engine) as plain:
                    plain.add(Note(body="too early"))
                    plain.commit()
            assert "shardsession.shard_numbers" in str(err.value.orig.diag.message_hint)
        finally:
            engine.dispose()
        with ss.Session(one) as session:  # a shardsession session numbers the shard first
            made = session.scalars(insert(Note).returning(Note.id), [{"body": "numbered"}])
            assert [i >> SEQUENCE_BITS for i in made] == [0]
            session.commit()


# -- the mapping-time warning -----------------------------------------------------------------


def test_keyed_models_with_autoincrement_ids_warn_once_at_mapping_time() -> None:
    reg = registry()

    class Base(DeclarativeBase):
        registry = reg

    class Invoice(Base):  # ids repeat across shards: warned
        __tablename__ = "w_invoice"
        __shard_key__ = "tenant"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[str] = mapped_column(String(10))

    class Keyed(Base):  # the key is in the primary key: unique
        __tablename__ = "w_keyed"
        __shard_key__ = "tenant"
        tenant: Mapped[str] = mapped_column(String(10), primary_key=True)
        number: Mapped[int] = mapped_column(primary_key=True)

    class Assigned(Base):  # the application gives the ids
        __tablename__ = "w_assigned"
        __shard_key__ = "tenant"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant: Mapped[str] = mapped_column(String(10))

    class Global(Base):
        __tablename__ = "w_global"
        __shard_key__ = "tenant"
        id: Mapped[int] = mapped_column(ss.ShardedIdentity(), primary_key=True)
        tenant: Mapped[str] = mapped_column(String(10))

    class Unkeyed(Base):  # lives with what it is linked to: not warned
        __tablename__ = "w_unkeyed"
        id: Mapped[int] = mapped_column(primary_key=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.configure()
        ss.coordinator.routing.shard_key_for(Invoice.__mapper__)  # used again: no repeat
    found = [w for w in caught if issubclass(w.category, ss.exc.ShardedIdentityWarning)]
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    assert message.startswith("Invoice.id is an autoincrement integer primary key")
    assert found[0].filename == __file__  # shown where the class is defined

    assert "repeat on several shards" in message
    for fix in ("ss.ShardedIdentity()", "part of the primary key", "autoincrement=False"):
        assert fix in message
    assert issubclass(ss.exc.ShardedIdentityWarning, sa_exc.SAWarning)
    del Keyed, Assigned, Global, Unkeyed


# -- a program that printed the wrong thing -------------------------------------------------------


def blog(new_session: Callable[[], Any], model: type[Any]) -> list[str]:
    """Writes posts by eight authors, then looks each one up by its id."""
    out = []
    with new_session() as session:
        for author in ["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal"]:
            session.add(model(author=author, title=f"{author}'s first post"))
        session.commit()
        ids = {p.title: p.id for p in session.scalars(select(model))}
    out.append(f"{len(set(ids.values()))} ids for {len(ids)} posts")
    with new_session() as session:
        for title in sorted(ids):
            found = session.scalars(select(model).where(model.id == ids[title])).all()
            out.append(f"{title}: {sorted(p.title for p in found)}")
    return out


def test_a_program_that_printed_wrong_output_prints_the_right_output(
    fresh: ss.ShardSet, direct: dict[str, Any]
) -> None:
    reference = blog(lambda: PlainSession(direct["s0"]), PlainPost)  # one database
    assert reference[0] == "8 ids for 8 posts"
    with direct["s0"].begin() as conn:
        conn.execute(text("TRUNCATE id_plain_post RESTART IDENTITY"))
    wrong = blog(lambda: ss.Session(fresh), PlainPost)  # plain ids over four shards
    assert wrong != reference and wrong[0] != "8 ids for 8 posts"
    right = blog(lambda: ss.Session(fresh), Post)
    assert right == reference


# -- the documentation's example ----------------------------------------------------------------


def test_the_example_on_the_ids_page_prints_what_the_page_says(
    shard_dsns: dict[str, str], tmp_path: Path
) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "ids.rst").read_text()
    section = page.split("\nAn example\n----------\n", 1)[1]
    blocks = re.findall(r"\.\. code-block:: \w+\n\n((?:(?:    .*)?\n)+)", section)
    code, printed = (textwrap.dedent(block) for block in blocks[:2])
    assert "LocalCluster(shards=4).start()" in code
    with new_schema(shard_dsns) as schema:  # four shards that have no numbers yet
        dsns = {
            name: make_conninfo(dsn, options=f"-c search_path={schema.name}")
            for name, dsn in shard_dsns.items()
        }
        program = tmp_path / "ids_example.py"
        program.write_text(code.replace("LocalCluster(shards=4).start()", repr(dsns)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        run = subprocess.run(
            [sys.executable, str(program)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == printed.strip()


def test_asyncio_sessions_number_the_shards_and_get_by_id(
    fresh: ss.ShardSet, shard_dsns: dict[str, str]
) -> None:
    pytest.importorskip("greenlet")

    async def main() -> tuple[list[int], list[str]]:
        ashards = ss.create_async_shards(
            shard_dsns, pool_size=1, max_overflow=2, recovery_interval=None, deadlock_interval=None
        )
        try:
            async with ss.AsyncSession(ashards) as session:
                session.add_all([Note(body=f"async {i}") for i in range(4)])
                await session.commit()
                ids = list((await session.scalars(select(Note.id))).all())
            found = []
            for note_id in ids:
                async with ss.AsyncSession(ashards) as session:
                    note = await session.get(Note, note_id)
                    found.append(ss.inspect(note).identity_token)
            return ids, found
        finally:
            await ashards.close()

    ids, found = asyncio.run(main())
    assert sorted(found) == sorted(fresh)  # spread, one per shard
    assert found == [ss.shard_for_id(fresh, i) for i in ids]
