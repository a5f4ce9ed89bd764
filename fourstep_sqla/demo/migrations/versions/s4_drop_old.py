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
_JOIN = "coalesce(first_name || ' ' || last_name, first_name, last_name)"
BACKWARD_SQL = {
    "sqlite": {"name": _JOIN},
    "postgresql": {"name": _JOIN},
    "mysql": {"name": "coalesce(concat(first_name, ' ', last_name), first_name, last_name)"},
}
BACKWARD_SQL["mariadb"] = BACKWARD_SQL["mysql"]


def _arguments() -> dict:
    return {
        "old": [sa.Column("name", sa.String(80), nullable=True)],
        "new": ["first_name", "last_name"],
        "forward_sql": FORWARD_SQL[op.get_context().dialect.name],
        "backward_sql": BACKWARD_SQL[op.get_context().dialect.name],
        # the sync triggers of s1 are dropped with the column; the downgrade makes
        # them again
        "sync_triggers": True,
    }


def upgrade() -> None:
    op.drop_old("users.full_name", "users", **_arguments())


def downgrade() -> None:
    op.restore_old("users.full_name", "users", **_arguments())
