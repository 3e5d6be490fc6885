"""The private SQLAlchemy attributes read by selectparts still mean what we read."""

from __future__ import annotations

from shardsession.coordinator import selectparts as parts
from sqlalchemy import func, select

from .models import Item


def test_each_private_read_matches_the_statement() -> None:
    stmt = (
        select(Item.x, func.count())
        .group_by(Item.x)
        .having(func.count() > 1)
        .order_by(Item.x.desc())
        .limit(5)
        .offset(2)
        .distinct()
    )
    assert [str(c) for c in parts.order_by(stmt)] == [str(Item.x.desc())]
    assert [str(c) for c in parts.group_by(stmt)] == [str(Item.x.expression)]
    assert len(parts.having(stmt)) == 1
    assert parts.distinct(stmt) is True
    assert parts.limit_offset(stmt) == (5, 2)
    assert parts.limit_offset(select(Item)) == (None, None)
    assert "HAVING" not in str(parts.without_having(stmt))
    assert "HAVING" in str(stmt)
    assert parts.for_update(select(Item).with_for_update(key_share=True, skip_locked=True)) == {
        "read": False, "key_share": True, "nowait": False, "skip_locked": True
    }  # fmt: skip
    assert parts.for_update(stmt) is None


def test_distinct_on_in_both_spellings() -> None:
    try:
        from sqlalchemy.dialects.postgresql import distinct_on
    except ImportError:  # SQLAlchemy 2.0
        stmt = select(Item).distinct(Item.name)
    else:
        stmt = select(Item).ext(distinct_on(Item.name))
    assert [str(c) for c in parts.distinct_on(stmt)] == [str(Item.name.expression)]
    assert parts.distinct_on(select(Item)) == ()
