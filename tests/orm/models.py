"""Mapped classes shared by the ORM tests (module level so instances pickle).

Declared with string annotations (``from __future__ import annotations``) on
purpose: the declarative scan must resolve them from this module's globals.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional

from shardsession.orm import DeclarativeBase, Mapped, mapped_column, relationship
from shardsession.sql import ForeignKey
from shardsession.sql.types import JSON, String


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __shard_key__ = "tenant"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str]
    name: Mapped[str | None] = mapped_column(String(50))
    created: Mapped[Optional[datetime.datetime]]  # noqa: UP045
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    addresses: Mapped[list[Address]] = relationship(
        back_populates="user", order_by="Address.email", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"User({self.__dict__.get('id')!r})"


class Address(Base):
    __tablename__ = "addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    email: Mapped[str]
    user: Mapped[User | None] = relationship(back_populates="addresses")

    def __repr__(self) -> str:
        return f"Address({self.__dict__.get('id')!r})"


class Node(Base):
    """Self-referential adjacency list."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"))
    children: Mapped[list[Node]] = relationship(back_populates="parent")
    parent: Mapped[Node | None] = relationship(back_populates="children", remote_side="Node.id")
