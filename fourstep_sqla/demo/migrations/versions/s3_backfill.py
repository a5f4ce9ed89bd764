"""Step 3 (STOP_READ_OLD): backfill the new columns from the old one.

Batches of primary-key ranges, each committed on its own, resumable. The SQL
is frozen here, rendered per dialect by fourstep's renderer (this reference
revision carries both dialects it is tested on). Deploy code at
Phase.STOP_READ_OLD after it.

Revision ID: s3
"""

from alembic import op

import fourstep_sqla.alembic  # noqa: F401  (fourstep ops)

revision = "s3"
down_revision = "s2"
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


def upgrade() -> None:
    op.backfill(
        "users.full_name",
        "users",
        old=["name"],
        new=["first_name", "last_name"],
        forward_sql=FORWARD_SQL[op.get_context().dialect.name],
        # split(" ") is empty only for '' and ' ': rows to leave alone, tested
        # without evaluating the transform a second time per row
        forward_present_sql="(name NOT IN ('', ' '))",
    )


def downgrade() -> None:
    # the backfilled values stay: step 2 code reads them, step 1 code ignores them
    op.record_phase("users.full_name", "users", phase=2, previous=3)
