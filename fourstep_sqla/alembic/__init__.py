"""Alembic integration: ``import fourstep_sqla.alembic`` in ``env.py``.

Importing this package registers the Four Step operations on Alembic's
``op`` (see :mod:`fourstep_sqla.alembic.ops`): ``op.relax_old_not_null``,
``op.backfill``, ``op.drop_old``, ``op.create_sync_triggers`` and their reverses
``op.restore_old_not_null``, ``op.record_phase``, ``op.restore_old`` and
``op.drop_sync_triggers``.

Type checkers cannot see operations registered at run time; the functions
below are typed equivalents that call ``op.invoke(...)``::

    from fourstep_sqla import alembic as fs

    def upgrade() -> None:
        fs.backfill("users.full_name", "users", old=["name"], new=["first_name", "last_name"],
                    forward_sql={"first_name": "...", "last_name": "..."})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column

from . import compare as _compare  # noqa: F401  (registers the autogenerate comparator)
from . import locks as _locks
from . import render as _render  # noqa: F401  (registers the renderers)
from .ops import (
    BackfillOp,
    DropOldOp,
    DropRefusedError,
    RecordPhaseOp,
    RelaxOldNotNullOp,
    RestoreOldNotNullOp,
    RestoreOldOp,
)
from .trigger_ops import (
    CreateSyncTriggersOp,
    CreateWriteMarksOp,
    DropSyncTriggersOp,
    DropWriteMarksOp,
)

_locks.install()  # lock safety per migration (see fourstep_sqla.alembic.locks)

__all__ = [
    "BackfillOp",
    "CreateSyncTriggersOp",
    "CreateWriteMarksOp",
    "DropOldOp",
    "DropRefusedError",
    "DropSyncTriggersOp",
    "DropWriteMarksOp",
    "RecordPhaseOp",
    "RelaxOldNotNullOp",
    "RestoreOldNotNullOp",
    "RestoreOldOp",
    "backfill",
    "create_sync_triggers",
    "create_write_marks",
    "drop_old",
    "drop_sync_triggers",
    "drop_write_marks",
    "record_phase",
    "relax_old_not_null",
]


def backfill(
    key: str,
    table_name: str,
    *,
    old: Sequence[str],
    new: Sequence[str],
    forward_sql: Mapping[str, str] | None = None,
    forward: str | None = None,
    schema: str | None = None,
    batch_size: int | None = None,
    target_ms: float | None = None,
    on_error: str = "stop",
) -> None:
    """Typed ``op.backfill(...)``."""
    from alembic import op

    op.invoke(
        BackfillOp(key, table_name, old, new, forward_sql, forward, schema, batch_size,
                   target_ms, on_error)
    )


def drop_old(
    key: str,
    table_name: str,
    *,
    old: Sequence[Column[Any]],
    new: Sequence[str],
    forward_sql: Mapping[str, str] | None = None,
    backward_sql: Mapping[str, str] | None = None,
    forward: str | None = None,
    backward: str | None = None,
    schema: str | None = None,
    sync_triggers: bool = False,
    accept_lossy: bool = False,
) -> None:
    """Typed ``op.drop_old(...)``."""
    from alembic import op

    op.invoke(
        DropOldOp(key, table_name, old, new, forward_sql, backward_sql, forward, backward,
                  schema, sync_triggers, accept_lossy)
    )


def create_sync_triggers(
    key: str,
    table_name: str,
    *,
    old: Sequence[Column[Any] | str],
    new: Sequence[Column[Any] | str],
    forward_sql: Mapping[str, str],
    backward_sql: Mapping[str, str],
    schema: str | None = None,
) -> None:
    """Typed ``op.create_sync_triggers(...)``."""
    from alembic import op

    op.invoke(CreateSyncTriggersOp(key, table_name, old, new, forward_sql, backward_sql, schema))


def drop_sync_triggers(
    key: str,
    table_name: str,
    *,
    old: Sequence[Column[Any] | str],
    new: Sequence[Column[Any] | str],
    forward_sql: Mapping[str, str],
    backward_sql: Mapping[str, str],
    schema: str | None = None,
) -> None:
    """Typed ``op.drop_sync_triggers(...)``."""
    from alembic import op

    op.invoke(DropSyncTriggersOp(key, table_name, old, new, forward_sql, backward_sql, schema))


def relax_old_not_null(
    key: str,
    table_name: str,
    columns: Sequence[str],
    *,
    existing_type: Any = None,
    schema: str | None = None,
) -> None:
    """Typed ``op.relax_old_not_null(...)``."""
    from alembic import op

    op.invoke(RelaxOldNotNullOp(key, table_name, columns, existing_type, schema))


def record_phase(
    key: str, table_name: str, *, phase: int, previous: int, schema: str | None = None
) -> None:
    """Typed ``op.record_phase(...)``."""
    from alembic import op

    op.invoke(RecordPhaseOp(key, table_name, phase, previous, schema))


def create_write_marks(
    key: str,
    table_name: str,
    *,
    old: Sequence[Column[Any] | str],
    new: Sequence[Column[Any] | str],
    schema: str | None = None,
) -> None:
    """Typed ``op.create_write_marks(...)``."""
    from alembic import op

    op.invoke(CreateWriteMarksOp(key, table_name, old, new, schema))


def drop_write_marks(
    key: str,
    table_name: str,
    *,
    old: Sequence[Column[Any] | str],
    new: Sequence[Column[Any] | str],
    schema: str | None = None,
) -> None:
    """Typed ``op.drop_write_marks(...)``."""
    from alembic import op

    op.invoke(DropWriteMarksOp(key, table_name, old, new, schema))
