"""Step 1 (WRITE_BOTH): add the new columns, relax the old NOT NULL, sync triggers.

From here until the drop the database keeps name and first_name/last_name in
step for every writer outside the ORM: the old release during the rollout
(it writes only name), raw SQL, other services, and later the step-4 release
(it writes only first_name/last_name). The SQL is frozen here, rendered per
dialect by fourstep's renderer, as autogenerate writes it.

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


def _triggers() -> dict:
    return {
        "old": [sa.Column("name", sa.String(80), nullable=True)],
        "new": [sa.Column("first_name", sa.String(40)), sa.Column("last_name", sa.String(40))],
        "forward_sql": FORWARD_SQL[op.get_context().dialect.name],
        "backward_sql": BACKWARD_SQL[op.get_context().dialect.name],
        # split and join never raise: no per-row error handler in the triggers
        "catch_errors": False,
    }


def upgrade() -> None:
    op.add_column("users", sa.Column("first_name", sa.String(40)))
    op.add_column("users", sa.Column("last_name", sa.String(40)))
    op.relax_old_not_null("users.full_name", "users", ["name"], existing_type=sa.String(80))
    op.create_sync_triggers("users.full_name", "users", **_triggers())
    op.record_phase("users.full_name", "users", phase=1, previous=0)


def downgrade() -> None:
    op.record_phase("users.full_name", "users", phase=0, previous=1)
    op.drop_sync_triggers("users.full_name", "users", **_triggers())
    op.restore_old_not_null("users.full_name", "users", ["name"], existing_type=sa.String(80))
    op.drop_column("users", "last_name")
    op.drop_column("users", "first_name")
