"""Before the Four Step Process: users with one name column.

Revision ID: s0
"""

import sqlalchemy as sa
from alembic import op

revision = "s0"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(80), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("users")
