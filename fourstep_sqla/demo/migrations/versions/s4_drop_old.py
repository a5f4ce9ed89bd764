"""Step 4 (STOP_WRITE_OLD): drop the old column, once nothing would be lost.

Deploy code at Phase.STOP_WRITE_OLD (the old column declared with
``unmapped_column()``) BEFORE this migration: the two-release rule. The drop
refuses while any row has a value only in the old column, or a new value that
is neither forward(old) nor one whose backward gives the old value back, or an
old value the round trip would not give back. The sync triggers go with the
column, in one lock-safe transaction. The downgrade re-adds the column, makes
the triggers again and restores it from the new ones with the backward
transform.

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
BACKWARD_SQL = {"name": "coalesce(first_name || ' ' || last_name, first_name, last_name)"}


def _arguments() -> dict:
    return {
        "old": [sa.Column("name", sa.String(80), nullable=True)],
        "new": ["first_name", "last_name"],
        "forward_sql": FORWARD_SQL[op.get_context().dialect.name],
        "backward_sql": BACKWARD_SQL,
        # the sync triggers of s1 are dropped with the column; the downgrade makes
        # them again
        "sync_triggers": True,
    }


def upgrade() -> None:
    op.drop_old("users.full_name", "users", **_arguments())


def downgrade() -> None:
    op.restore_old("users.full_name", "users", **_arguments())
