"""Models for test_review_fixes.py (own metadata, tables prefixed ``rf_``)."""

from __future__ import annotations

from shardsession.orm import DeclarativeBase, Mapped, mapped_column, relationship
from shardsession.sql import BigInteger, ForeignKey


class ReviewBase(DeclarativeBase):
    pass


class Keyed(ReviewBase):
    """Routed by ``k``, which is not part of the primary key."""

    __tablename__ = "rf_keyed"
    __shard_key__ = "k"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    k: Mapped[int]
    name: Mapped[str]


class Log(ReviewBase):
    """No shard key and no relationships: only a shard_chooser can place it."""

    __tablename__ = "rf_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    msg: Mapped[str]


class Client(ReviewBase):
    __tablename__ = "rf_client"
    __shard_key__ = "tenant_id"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tenant_id: Mapped[int]
    name: Mapped[str]


class Memo(ReviewBase):
    """No shard key: follows the client it refers to (many-to-one, no back-reference)."""

    __tablename__ = "rf_memo"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("rf_client.id"))
    text: Mapped[str]
    client: Mapped[Client | None] = relationship()
    replies: Mapped[list[Reply]] = relationship(back_populates="memo")


class Reply(ReviewBase):
    """No shard key: follows its memo, which follows its client."""

    __tablename__ = "rf_reply"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    memo_id: Mapped[int | None] = mapped_column(ForeignKey("rf_memo.id"))
    text: Mapped[str]
    memo: Mapped[Memo | None] = relationship(back_populates="replies")
