"""``fourstep revision --step 3|4 KEY``: the step's revision without autogenerate.

Writes the same operations the autogenerate comparator would emit for that
step, rendered by the same renderers, through Alembic's own ``revision``
command (so the script template, revision ids and ``down_revision`` are
Alembic's).
"""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from alembic.operations import ops as alembic_ops
from sqlalchemy import create_engine
from sqlalchemy.engine import Dialect

from ..attribute import PhasedSpec
from ..errors import FourStepError
from .ops import RecordPhaseOp
from .render import backfill_op, drop_old_op

__all__ = ["step_operations", "write_revision"]


def step_operations(spec: PhasedSpec, step: int, dialect: Dialect) -> list[Any]:
    """The operations of ``step`` (2, 3 or 4) for ``spec``."""
    table = spec.table
    if table is None:
        raise FourStepError(f"{spec.describe()} is not mapped yet")
    if step == 2:
        return [RecordPhaseOp(spec.key, table.name, 2, 1, schema=table.schema)]
    if step == 3:
        return [backfill_op(spec, dialect)]
    if step == 4:
        return [drop_old_op(spec, dialect)]
    raise FourStepError(
        f"fourstep revision writes steps 2, 3 and 4; step {step} is not one of them (step 1 "
        f"is a plain autogenerate: the new columns, and the relaxed old NOT NULL)"
    )


def write_revision(
    config: Config, spec: PhasedSpec, step: int, message: str | None, url: str | None = None
) -> str:
    """Write the revision of ``step`` for ``spec``; return its path."""
    database_url = url or config.get_main_option("sqlalchemy.url")
    if not database_url:
        raise FourStepError("no database URL: the SQL of a revision is rendered for its dialect")
    dialect = create_engine(database_url).dialect
    operations = step_operations(spec, step, dialect)

    def directives(context: Any, revision: Any, scripts: list[Any]) -> None:
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
