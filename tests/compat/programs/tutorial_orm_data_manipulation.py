# ruff: noqa
# fmt: off
# Source: github.com/sqlalchemy/sqlalchemy, the SQLAlchemy Unified Tutorial, at commit
#   f35da7e2b9349a08b8de1f6bd3b07c8bf8616790 (main, SQLAlchemy 2.1 development)
#   License: MIT, Copyright 2005-2026 SQLAlchemy authors and contributors.
#   doc/build/tutorial/metadata.rst: the Table objects and the ORM declarative mapping;
#   doc/build/tutorial/data_insert.rst: the three INSERT executions that load the
#     tutorial's rows (spongebob, sandy, patrick and their addresses);
#   doc/build/tutorial/orm_data_manipulation.rst: the whole "Data Manipulation with the
#     ORM" page, cut before its last example (an attribute access on a detached object
#     that raises DetachedInstanceError, shown in the page as a traceback), then its
#     final step (re-adding the object) kept.
# The pages are interactive sessions: where a page shows the value of a bare expression
# (>>> squidward.id), the script prints its repr; lines marked "# doctest: +SKIP" in the
# page are left out as the page's own test leaves them out.  Statements that only
# display SQL (print(stmt)) are not part of the cut.
# Changed (construction only):
#   - engine = create_engine("sqlite+pysqlite:///:memory:", echo=True)  ->  compat_env.engine()
#     (echo=True SQL logging to stdout dropped with it)
#   - engine.connect() (Core INSERTs on one database)  ->  compat_env.connect(): the reference
#     database, or in sharded mode the first shard, where the ORM rows of these unkeyed
#     models live too
#   - Session(engine)  ->  compat_env.Session(engine)
#   - import compat_env added

import compat_env  # the harness's construction (tests/compat/compat_env.py)

# --- tutorial/engine.rst
engine = compat_env.engine()

# --- tutorial/metadata.rst
from sqlalchemy import MetaData

metadata_obj = MetaData()

from sqlalchemy import Table, Column, Integer, String

user_table = Table(
    "user_account",
    metadata_obj,
    Column("id", Integer, primary_key=True),
    Column("name", String(30)),
    Column("fullname", String),
)

from sqlalchemy import ForeignKey

address_table = Table(
    "address",
    metadata_obj,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("user_account.id"), nullable=False),
    Column("email_address", String, nullable=False),
)

metadata_obj.create_all(engine)

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


from typing import List
from typing import Optional
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    fullname: Mapped[Optional[str]]

    addresses: Mapped[List["Address"]] = relationship(back_populates="user")

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, name={self.name!r}, fullname={self.fullname!r})"


class Address(Base):
    __tablename__ = "address"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_address: Mapped[str]
    user_id = mapped_column(ForeignKey("user_account.id"))

    user: Mapped[User] = relationship(back_populates="addresses")

    def __repr__(self) -> str:
        return f"Address(id={self.id!r}, email_address={self.email_address!r})"


Base.metadata.create_all(engine)

# --- tutorial/data_insert.rst
from sqlalchemy import insert

stmt = insert(user_table).values(name="spongebob", fullname="Spongebob Squarepants")

with compat_env.connect() as conn:
    result = conn.execute(stmt)
    conn.commit()

print(repr(result.inserted_primary_key))

with compat_env.connect() as conn:
    result = conn.execute(
        insert(user_table),
        [
            {"name": "sandy", "fullname": "Sandy Cheeks"},
            {"name": "patrick", "fullname": "Patrick Star"},
        ],
    )
    conn.commit()

from sqlalchemy import select, bindparam

scalar_subq = (
    select(user_table.c.id)
    .where(user_table.c.name == bindparam("username"))
    .scalar_subquery()
)

with compat_env.connect() as conn:
    result = conn.execute(
        insert(address_table).values(user_id=scalar_subq),
        [
            {
                "username": "spongebob",
                "email_address": "spongebob@sqlalchemy.org",
            },
            {"username": "sandy", "email_address": "sandy@sqlalchemy.org"},
            {"username": "sandy", "email_address": "sandy@squirrelpower.org"},
        ],
    )
    conn.commit()

# --- tutorial/orm_data_manipulation.rst
squidward = User(name="squidward", fullname="Squidward Tentacles")
krabs = User(name="ehkrabs", fullname="Eugene H. Krabs")

print(repr(squidward))

from sqlalchemy.orm import Session

session = compat_env.Session(engine)

session.add(squidward)
session.add(krabs)

print(repr(session.new))

session.flush()

print(repr(squidward.id))
print(repr(krabs.id))

some_squidward = session.get(User, 4)
print(repr(some_squidward))

print(repr(some_squidward is squidward))

session.commit()

sandy = session.execute(select(User).filter_by(name="sandy")).scalar_one()

print(repr(sandy))

sandy.fullname = "Sandy Squirrel"

print(repr(sandy in session.dirty))

sandy_fullname = session.execute(select(User.fullname).where(User.id == 2)).scalar_one()
print(sandy_fullname)

print(repr(sandy in session.dirty))

patrick = session.get(User, 3)

session.delete(patrick)

print(repr(session.execute(select(User).where(User.name == "patrick")).first()))

print(repr(patrick in session))

session.rollback()

print(repr(sandy.__dict__))

print(repr(sandy.fullname))

print(repr(patrick in session))

print(repr(session.execute(select(User).where(User.name == "patrick")).scalar_one() is patrick))

session.close()

session.add(squidward)
print(repr(squidward.name))
