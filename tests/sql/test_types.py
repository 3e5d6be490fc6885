"""Column types: DDL spelling, Python type inference, and round trips through PostgreSQL."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid

import pytest

from shardsession.exc import ArgumentError
from shardsession.sql import (
    JSON,
    JSONB,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    Time,
    Uuid,
    insert,
    select,
    type_for_python,
)
from shardsession.sql.types import to_type


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


@pytest.mark.parametrize(
    ("type_", "ddl"),
    [
        (Integer, "INTEGER"),
        (BigInteger(), "BIGINT"),
        (SmallInteger, "SMALLINT"),
        (String, "VARCHAR"),
        (String(12), "VARCHAR(12)"),
        (Text, "TEXT"),
        (Boolean, "BOOLEAN"),
        (Float, "DOUBLE PRECISION"),
        (Numeric, "NUMERIC"),
        (Numeric(10), "NUMERIC(10)"),
        (Numeric(10, 2), "NUMERIC(10, 2)"),
        (DateTime, "TIMESTAMP WITHOUT TIME ZONE"),
        (DateTime(timezone=True), "TIMESTAMP WITH TIME ZONE"),
        (Date, "DATE"),
        (Time, "TIME WITHOUT TIME ZONE"),
        (Interval, "INTERVAL"),
        (Uuid, "UUID"),
        (JSON, "JSON"),
        (JSONB, "JSONB"),
        (LargeBinary, "BYTEA"),
        (Enum("a", "bbb"), "VARCHAR(3)"),
        (Enum(Color), "VARCHAR(5)"),
    ],
)
def test_ddl_spelling(type_, ddl):
    assert to_type(type_).ddl() == ddl


@pytest.mark.parametrize(
    ("py", "cls"),
    [
        (int, Integer),
        (str, String),
        (bool, Boolean),
        (float, Float),
        (decimal.Decimal, Numeric),
        (datetime.datetime, DateTime),
        (datetime.date, Date),
        (datetime.time, Time),
        (datetime.timedelta, Interval),
        (uuid.UUID, Uuid),
        (bytes, LargeBinary),
        (dict, JSON),
        (list, JSON),
        (dict[str, int], JSON),
    ],
)
def test_type_for_python(py, cls):
    t = type_for_python(py)
    assert type(t) is cls


def test_type_for_python_enum_and_unknown():
    t = type_for_python(Color)
    assert isinstance(t, Enum) and t.enum_class is Color and t.enums == ("RED", "GREEN")
    with pytest.raises(ArgumentError, match="no column type"):
        type_for_python(object)


def test_type_arguments_checked():
    with pytest.raises(ArgumentError):
        String(0)
    with pytest.raises(ArgumentError):
        Numeric(scale=2)
    with pytest.raises(ArgumentError):
        Enum()
    with pytest.raises(ArgumentError):
        to_type("INTEGER")
    assert String(3) == String(3) and String(3) != String(4)


def test_every_type_round_trips(conn, run):
    md = MetaData()
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
    values = {
        "i": 2**31 - 1,
        "bi": 2**62,
        "si": -32768,
        "s": "héllo 'quoted' \\ back",
        "t": "x" * 10_000,
        "b": True,
        "f": 1.5,
        "n": decimal.Decimal("12345.67"),
        "dt": when,
        "dtz": when.replace(tzinfo=datetime.UTC),
        "d": datetime.date(2020, 2, 29),
        "tm": datetime.time(23, 59, 1),
        "iv": datetime.timedelta(days=3, seconds=5),
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "j": {"a": [1, 2, {"b": None}]},
        "jb": [1, "two", {"three": 3.0}],
        "lb": b"\x00\x01\xff",
        "e": "bbb",
        "ec": Color.GREEN,
    }
    t = Table(
        "everything",
        md,
        Column("id", Integer, primary_key=True),
        Column("i", Integer),
        Column("bi", BigInteger),
        Column("si", SmallInteger),
        Column("s", String(40)),
        Column("t", Text),
        Column("b", Boolean),
        Column("f", Float),
        Column("n", Numeric(10, 2)),
        Column("dt", DateTime),
        Column("dtz", DateTime(timezone=True)),
        Column("d", Date),
        Column("tm", Time),
        Column("iv", Interval),
        Column("u", Uuid),
        Column("j", JSON),
        Column("jb", JSONB),
        Column("lb", LargeBinary),
        Column("e", Enum("a", "bbb")),
        Column("ec", Enum(Color)),
    )
    md.create_all(conn)
    (new_id,) = run(insert(t).values(**values).returning(t.c.id))[0]
    row = run(select(*[t.c[k] for k in values]).where(t.c.id == new_id))[0]
    assert dict(zip(values, row)) == values
    # every comparable type can be compared and matched with IN (bound as a typed array)
    for key, value in values.items():
        if key == "j":  # plain JSON has no equality operator in PostgreSQL
            continue
        col = t.c[key]
        assert run(select(t.c.id).where(col == value)) == [(new_id,)], key
        assert run(select(t.c.id).where(col.in_([value]))) == [(new_id,)], key
        assert run(select(t.c.id).where(col.not_in([value]))) == [], key
        assert run(select(t.c.id).where(col.in_([]))) == [], key
    # NULL in every column
    (null_id,) = run(insert(t).values(**dict.fromkeys(values)).returning(t.c.id))[0]
    row = run(select(*[t.c[k] for k in values]).where(t.c.id == null_id))[0]
    assert row == (None,) * len(values)
    # the stored enum value is the member's name
    assert run(select(t.c.id).where(t.c.ec == Color.GREEN)) == [(new_id,)]
    assert run(select(t.c.id).where(t.c.ec.in_([Color.GREEN, Color.RED]))) == [(new_id,)]
    raw = conn.execute("SELECT ec FROM everything WHERE id = %s", (new_id,)).fetchone()
    assert raw == ("GREEN",)


def test_enum_check_constraint_rejects_other_values(conn, run):
    import psycopg

    md = MetaData()
    t = Table("e", md, Column("id", Integer, primary_key=True), Column("v", Enum("x", "y")))
    md.create_all(conn)
    run(insert(t).values(v="x"))
    with pytest.raises(psycopg.errors.CheckViolation):
        run(insert(t).values(v="z"))
