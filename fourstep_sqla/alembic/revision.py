"""``fourstep revision --step 1|2|3|4 KEY``: the step's revision without autogenerate.

Writes the same operations the autogenerate comparator would emit for that
step, rendered by the same renderers, through Alembic's own ``revision``
command (so the script template, revision ids and ``down_revision`` are
Alembic's). The operations of the attributes whose tables copy KEY's rows (a
version table's, :mod:`fourstep_sqla.versioned`) are written with KEY's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.operations import ops as alembic_ops
from sqlalchemy import Connection, create_engine, inspect
from sqlalchemy.engine import Dialect

from ..attribute import PhasedSpec
from ..errors import FourStepError
from ..marks import marks_present
from ..registry import copies_of
from ..triggers import triggers_present
from .ops import RecordPhaseOp, RelaxOldNotNullOp
from .render import backfill_op, drop_old_op, sync_triggers_op, write_marks_op
from .trigger_ops import sync_triggers_enabled

__all__ = ["step_operations", "write_revision"]


def step_operations(
    spec: PhasedSpec,
    step: int,
    dialect: Dialect,
    connection: Connection | None = None,
    opts: Mapping[str, Any] | None = None,
) -> list[Any]:
    """The operations of ``step`` (1 to 4) for ``spec``, as autogenerate writes them.

    ``connection``: the database, to tell which new columns exist, whether the
    old ones are NOT NULL and whether the sync triggers are installed;
    ``opts``: ``context.configure()`` options (``fourstep_sync_triggers``).
    """
    table = spec.table
    if table is None:
        raise FourStepError(f"{spec.describe()} is not mapped yet")
    enabled = sync_triggers_enabled({} if opts is None else opts)
    synced = connection is not None and (
        triggers_present(connection, spec.key, table.name, table.schema)
        or marks_present(connection, spec.key, table.name, table.schema)
    )
    if step == 1:
        return _step1(spec, dialect, connection, enabled and not synced)
    if step == 2:
        return [RecordPhaseOp(spec.key, table.name, 2, 1, schema=table.schema)]
    if step == 3:
        return [backfill_op(spec, dialect)]
    if step == 4:
        return [drop_old_op(spec, dialect, sync_triggers=synced)]
    raise FourStepError(
        f"fourstep revision writes steps 1, 2, 3 and 4; step {step} is not one of them"
    )


def _step1(
    spec: PhasedSpec, dialect: Dialect, connection: Connection | None, triggers: bool
) -> list[Any]:
    """The new columns, the old NOT NULL relaxed, the sync triggers, the phase."""
    table = spec.table
    assert table is not None
    columns: dict[str, Any] = {}
    if connection is not None and inspect(connection).has_table(table.name, schema=table.schema):
        columns = {
            c["name"]: c for c in inspect(connection).get_columns(table.name, schema=table.schema)
        }
    operations: list[Any] = [
        alembic_ops.AddColumnOp(table.name, column._copy(), schema=table.schema)
        for column in spec.new_columns
        if column.name not in columns
    ]
    strict = [
        c.name for c in spec.old_columns
        if c.name in columns and not columns[c.name]["nullable"]
        and columns[c.name].get("default") is None
    ]
    if strict:
        operations.append(RelaxOldNotNullOp(
            spec.key, table.name, strict, existing_type=spec.old_columns[0].type,
            schema=table.schema,
        ))
    if triggers:
        operations.append(sync_triggers_op(spec, dialect) or write_marks_op(spec))
    operations.append(RecordPhaseOp(spec.key, table.name, 1, 0, schema=table.schema))
    return operations


def write_revision(
    config: Config, spec: PhasedSpec, step: int, message: str | None, url: str | None = None
) -> str:
    """Write the revision of ``step`` for ``spec``; return its path."""
    database_url = url or config.get_main_option("sqlalchemy.url")
    if not database_url:
        raise FourStepError("no database URL: the SQL of a revision is rendered for its dialect")
    dialect = create_engine(database_url).dialect

    def directives(context: Any, revision: Any, scripts: list[Any]) -> None:
        # a version table's copy of the move goes with it, as autogenerate writes it
        operations = [
            op
            for moved in (spec, *copies_of(spec))
            for op in step_operations(
                moved, step, context.dialect or dialect, context.connection, context.opts
            )
        ]
        script = scripts[0]
        script.upgrade_ops = alembic_ops.UpgradeOps(ops=list(operations))
        script.downgrade_ops = alembic_ops.DowngradeOps(
            ops=[op.reverse() for op in reversed(operations)]
        )

    # Alembic applies process_revision_directives only when env.py runs
    previous = config.get_main_option("revision_environment")
    config.set_main_option("revision_environment", "true")
    try:
        result = command.revision(
            config,
            message=message or f"fourstep step {step}: {spec.key}",
            process_revision_directives=directives,
        )
    finally:
        config.set_main_option("revision_environment", previous or "false")
    if result is None or isinstance(result, list):
        raise FourStepError("alembic did not write a revision")
    return str(result.path)
