"""Step 2 (READ_NEW): no schema change; the database records the phase.

Deploy code at Phase.READ_NEW (new, falling back to old), possibly behind
``read_phase()`` for some requests first.

Revision ID: s2
"""

from alembic import op

import fourstep_sqla.alembic  # noqa: F401  (fourstep ops)

revision = "s2"
down_revision = "s1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.record_phase("users.full_name", "users", phase=2, previous=1)


def downgrade() -> None:
    op.record_phase("users.full_name", "users", phase=1, previous=2)
