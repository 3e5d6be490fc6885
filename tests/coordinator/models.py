"""Models used by the Session tests."""

from __future__ import annotations

from shardsession.orm import DeclarativeBase, Mapped, mapped_column, relationship
from shardsession.sql import BigInteger, ForeignKey, String


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "acct"
    __shard_key__ = "tenant_id"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tenant_id: Mapped[int]
    owner: Mapped[str] = mapped_column(String(50))
    balance: Mapped[int] = mapped_column(default=0)


class Customer(Base):
    __tablename__ = "customer"
    __shard_key__ = "tenant_id"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int]
    name: Mapped[str]
    orders: Mapped[list[Order]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="Order.id"
    )
    # no back-reference: the flush alone must fill Note.customer_id
    notes: Mapped[list[Note]] = relationship(order_by="Note.id")


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    amount: Mapped[int]
    note: Mapped[str | None]
    customer: Mapped[Customer] = relationship(back_populates="orders")


class Project(Base):
    __tablename__ = "project"
    __shard_key__ = "tenant_id"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int]
    name: Mapped[str]
    tasks: Mapped[list[Task]] = relationship(
        back_populates="project", lazy="selectin", order_by="Task.id"
    )


class Task(Base):
    __tablename__ = "task"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"))
    title: Mapped[str]
    project: Mapped[Project] = relationship(back_populates="tasks")


class Note(Base):
    __tablename__ = "note"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customer.id"))
    text: Mapped[str]
