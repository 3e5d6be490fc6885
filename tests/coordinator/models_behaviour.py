"""Models for test_session_behaviour.py (own metadata, tables prefixed ``bh_``)."""

from __future__ import annotations

from shardsession.orm import DeclarativeBase, Mapped, mapped_column, relationship
from shardsession.sql import BigInteger, ForeignKey, String


class BehaviourBase(DeclarativeBase):
    pass


class Item(BehaviourBase):
    """Routed by ``tenant_id``; the primary key does not hold the shard key."""

    __tablename__ = "bh_item"
    __shard_key__ = "tenant_id"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tenant_id: Mapped[int]
    name: Mapped[str] = mapped_column(String(50))
    qty: Mapped[int] = mapped_column(default=0)


class WeatherLocation(BehaviourBase):
    """No shard key: a session's shard_chooser places it by continent."""

    __tablename__ = "bh_weather_location"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    continent: Mapped[str] = mapped_column(String(30))
    city: Mapped[str] = mapped_column(String(50))
    reports: Mapped[list[Report]] = relationship(
        back_populates="location", cascade="all, delete-orphan", order_by="Report.id"
    )


class Report(BehaviourBase):
    __tablename__ = "bh_report"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    location_id: Mapped[int] = mapped_column(ForeignKey("bh_weather_location.id"))
    temperature: Mapped[float]
    location: Mapped[WeatherLocation] = relationship(back_populates="reports")
