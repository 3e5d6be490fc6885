"""An index on the demo's customers by country (the demo's migration step).

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the index on every shard."""
    op.create_index("demo_customers_country", "demo_customers", ["country_code"])


def downgrade() -> None:
    """Drop it again."""
    op.drop_index("demo_customers_country", table_name="demo_customers")
