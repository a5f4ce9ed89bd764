"""Step 3 (STOP_READ_OLD): backfill the new columns from the old one.

Batches of primary-key ranges, each committed on its own, resumable. The SQL
is frozen here, rendered per dialect by fourstep's renderer (this reference
revision carries every dialect it is tested on). Deploy code at
Phase.STOP_READ_OLD after it.

Revision ID: s3
"""

from alembic import op

import fourstep_sqla.alembic  # noqa: F401  (fourstep ops)

revision = "s3"
down_revision = "s2"
branch_labels = None
depends_on = None

_AT = (
    "locate(CONVERT(' ' USING utf8mb4) COLLATE utf8mb4_bin, "
    "CONVERT(name USING utf8mb4) COLLATE utf8mb4_bin)"
)
_FIRST = f"CASE WHEN ({_AT} > 0) THEN substr(name, 1, {_AT} - 1) ELSE name END"
_LAST = f"CASE WHEN ({_AT} > 0) THEN substr(name, {_AT} + 1) END"
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
    # the separator is found by binary comparison, never by the column's collation
    "mysql": {
        "first_name": f"CASE WHEN (char_length({_FIRST}) > 0) THEN {_FIRST} ELSE NULL END",
        "last_name": f"CASE WHEN (char_length({_LAST}) > 0) THEN {_LAST} ELSE NULL END",
    },
}
FORWARD_SQL["mariadb"] = FORWARD_SQL["mysql"]

# split(" ") is empty only for '' and ' ': rows to leave alone, tested without
# evaluating the transform a second time per row (on MariaDB/MySQL by length,
# since their PAD SPACE collations find '' equal to ' ' and '  ')
PRESENT_SQL = {
    "sqlite": "(name NOT IN ('', ' '))",
    "postgresql": "(name NOT IN ('', ' '))",
    "mysql": "(char_length(replace(name, ' ', '')) > 0 OR char_length(name) >= 2)",
}
PRESENT_SQL["mariadb"] = PRESENT_SQL["mysql"]


def upgrade() -> None:
    op.backfill(
        "users.full_name",
        "users",
        old=["name"],
        new=["first_name", "last_name"],
        forward_sql=FORWARD_SQL[op.get_context().dialect.name],
        forward_present_sql=PRESENT_SQL[op.get_context().dialect.name],
    )


def downgrade() -> None:
    # the backfilled values stay: step 2 code reads them, step 1 code ignores them
    op.record_phase("users.full_name", "users", phase=2, previous=3)
