"""Alembic's ``env.py`` for an application sharded with shardsession.

``shardsession migrate`` runs this file once per shard, each shard in a process
of its own, with that shard's SQLAlchemy connection in
``config.attributes["connection"]`` and the shard's name in
``config.attributes["shard"]``.  Plain ``alembic`` passes no connection: then the
file connects to ``sqlalchemy.url`` from alembic.ini itself, which is how one
shard is migrated or inspected by hand.
"""

from logging.config import fileConfig

from alembic import context
from myapp.models import Base  # your application's declarative base
from sqlalchemy import engine_from_config, pool
from sqlalchemy.engine import Connection

from shardsession.migrate import include_name

config = context.config
if config.config_file_name is not None:
    # keep the application's loggers: `shardsession migrate revision` runs this
    # file inside the calling process
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# what `revision --autogenerate` compares the shard with
target_metadata = Base.metadata


def migrate(connection: Connection) -> None:
    """Run the migrations on one database, in one transaction."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # autogenerate must not drop shardsession's own tables (the commit log)
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate the shard shardsession gave us, or else the database of sqlalchemy.url."""
    shard_connection = config.attributes.get("connection")
    if shard_connection is not None:
        migrate(shard_connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        migrate(connection)


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL for one database instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        include_name=include_name,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
