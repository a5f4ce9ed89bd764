"""Step 1 (WRITE_BOTH): add the new columns, relax the old NOT NULL.

Deploy after this migration: code at Phase.WRITE_BOTH.

Revision ID: s1
"""

import sqlalchemy as sa
from alembic import op

import fourstep_sqla.alembic  # noqa: F401  (fourstep ops)

revision = "s1"
down_revision = "s0"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("first_name", sa.String(40)))
    op.add_column("users", sa.Column("last_name", sa.String(40)))
    op.relax_old_not_null("users.full_name", "users", ["name"], existing_type=sa.String(80))
    op.record_phase("users.full_name", "users", phase=1, previous=0)


def downgrade() -> None:
    op.record_phase("users.full_name", "users", phase=0, previous=1)
    op.restore_old_not_null("users.full_name", "users", ["name"], existing_type=sa.String(80))
    op.drop_column("users", "last_name")
    op.drop_column("users", "first_name")
