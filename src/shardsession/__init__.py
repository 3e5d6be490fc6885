"""shardsession: the SQLAlchemy 2.x ORM ``Session`` API over many PostgreSQL shards."""

from __future__ import annotations

from shardsession import exc
from shardsession.exc import *  # noqa: F403

__version__ = "0.1.0"

__all__ = ["__version__", "exc", *exc.__all__]
