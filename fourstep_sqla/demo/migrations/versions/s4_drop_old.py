"""Step 4 (STOP_WRITE_OLD): drop the old column, once nothing would be lost.

Deploy code at Phase.STOP_WRITE_OLD (the old column declared with
``unmapped_column()``) BEFORE this migration: the two-release rule. The drop
refuses while any row has a value only in the old column or a new value that
differs from forward(old). The downgrade re-adds the column and restores it
from the new ones with the backward transform.

Revision ID: s4
"""

import sqlalchemy as sa
from alembic import op

import fourstep_sqla.alembic  # noqa: F401  (fourstep ops)

revision = "s4"
down_revision = "s3"
branch_labels = None
depends_on = None

FORWARD_SQL = {
    "sqlite": {
        "first_name": "nullif(CASE WHEN (instr(name, ' ') > 0) "
        "THEN substr(name, 1, instr(name, ' ') - 1) ELSE name END, '')",
        "last_name": "nullif(CASE WHEN (instr(name, ' ') > 0) "
        "THEN substr(name, instr(name, ' ') + 1) END, '')",
    },
    "postgresql": {
        "first_name": "nullif(CASE WHEN (strpos(name, ' ') > 0) "
        "THEN substr(name, 1, strpos(name, ' ') - 1) ELSE name END, '')",
        "last_name": "nullif(CASE WHEN (strpos(name, ' ') > 0) "
        "THEN substr(name, strpos(name, ' ') + 1) END, '')",
    },
}
BACKWARD_SQL = {
    "name": "CASE WHEN (first_name IS NULL) THEN last_name WHEN (last_name IS NULL) "
    "THEN first_name ELSE first_name || ' ' || last_name END",
}


def _arguments() -> dict:
    return {
        "old": [sa.Column("name", sa.String(80), nullable=True)],
        "new": ["first_name", "last_name"],
        "forward_sql": FORWARD_SQL[op.get_context().dialect.name],
        "backward_sql": BACKWARD_SQL,
    }


def upgrade() -> None:
    op.drop_old("users.full_name", "users", **_arguments())


def downgrade() -> None:
    op.restore_old("users.full_name", "users", **_arguments())
