"""The demo's Alembic environment: the shard's connection comes from ``shardsession migrate``."""

from alembic import context

from shardsession.demo.fleet import FleetBase
from shardsession.migrate import include_name

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=FleetBase.metadata,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
