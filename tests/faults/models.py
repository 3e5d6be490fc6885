"""The models of the fault tests: plain SQLAlchemy declarative classes.

Their tables have names of their own (``fault_*``): other test modules create
tables in the same shard databases, and a table of the same name with other
columns would be reused by ``create_all``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A bank account, placed by its id."""

    __tablename__ = "fault_account"
    __shard_key__ = "id"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(40), default="")
    balance: Mapped[int] = mapped_column(Integer, default=0)


class Entry(Base):
    """One side of a transfer, on the shard of its account (written in the same transaction).

    Every transfer writes two entries, ``-amount`` and ``+amount``: a transfer
    committed on one shard only shows as a transfer id with one entry.
    """

    __tablename__ = "fault_entry"
    __shard_key__ = "account_id"
    transfer: Mapped[str] = mapped_column(String(60), primary_key=True)
    account_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    delta: Mapped[int] = mapped_column(BigInteger)
