"""Models shared by the coordinator tests (plain SQLAlchemy declarative)."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    """Keyed by its own id; users follow their tenant."""

    __tablename__ = "co_tenant"
    __shard_key__ = "id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    users: Mapped[list[User]] = relationship(
        back_populates="tenant", order_by="User.id", cascade="all, delete-orphan"
    )


class User(Base):
    """No shard key: lives with its tenant."""

    __tablename__ = "co_user"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("co_tenant.id"))
    name: Mapped[str] = mapped_column(String(40))
    tenant: Mapped[Tenant] = relationship(back_populates="users")


class Item(Base):
    """Sharded rows for the merge tests, keyed by their id."""

    __tablename__ = "co_item"
    __shard_key__ = "id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    x: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(40))
    val: Mapped[float | None] = mapped_column(Float, nullable=True)


class Node(Base):
    """Self-referential, no shard key: a tree lives on one shard."""

    __tablename__ = "co_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("co_node.id"))
    name: Mapped[str] = mapped_column(String(40))
    children: Mapped[list[Node]] = relationship(back_populates="parent")
    parent: Mapped[Node | None] = relationship(back_populates="children", remote_side=[id])


class Account(Base):
    """Bank accounts keyed by id, for two-phase commit tests."""

    __tablename__ = "co_account"
    __shard_key__ = "id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(Integer, default=0)
