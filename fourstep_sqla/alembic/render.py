"""Turning a phased attribute into frozen migration operations, and into text.

A revision must keep working after the models move on, so it carries the SQL
text of the transforms, rendered for the target dialect with constants
inline, and names columns, not attributes::

    op.backfill(
        "users.full_name",
        "users",
        old=["name"],
        new=["first_name", "last_name"],
        forward_sql={"first_name": "nullif(...)", "last_name": "nullif(...)"},
    )

A Python-only transform is referenced as ``"module:function"`` instead.
:func:`backfill_op` and :func:`drop_old_op` build the operations from a
spec; the renderers registered here write them into ``upgrade()``, with the
import line the script needs.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Column
from sqlalchemy.engine import Dialect

from ..attribute import PhasedSpec
from ..errors import FourStepError
from ..frozen import present_sql, transform_sql
from ..transform import Transform
from ..triggers import never_fails
from .ops import (
    BackfillOp,
    DropOldOp,
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

__all__ = [
    "backfill_op",
    "drop_old_op",
    "present_sql",
    "sync_triggers_op",
    "transform_sql",
    "write_marks_op",
]


def _reference(spec: PhasedSpec, transform: Transform[Any], label: str) -> str | None:
    if transform.sql is not None:
        return None
    reference = transform.reference
    if reference is None:
        raise FourStepError(
            f"{spec.describe()}: the {label} transform {transform.name!r} has no SQL form and "
            f"is not an importable module-level function, so a migration cannot refer to it. "
            f"Give it a SQL form or define it at module level."
        )
    return reference


def _table_args(spec: PhasedSpec) -> tuple[str, str | None]:
    table = spec.table
    if table is None:
        raise FourStepError(f"{spec.describe()} is not mapped yet")
    return table.name, table.schema


def backfill_op(spec: PhasedSpec, dialect: Dialect) -> BackfillOp:
    """The step-3 operation for ``spec``, frozen for ``dialect``."""
    name, schema = _table_args(spec)
    return BackfillOp(
        spec.key,
        name,
        old=list(spec.old_column_names),
        new=list(spec.new_column_names),
        forward_sql=transform_sql(spec, spec.forward, spec.old_columns, spec.new_columns, dialect),
        forward=_reference(spec, spec.forward, "forward"),
        schema=schema,
        forward_present_sql=present_sql(spec.forward, spec.old_columns, dialect),
    )


def sync_triggers_op(spec: PhasedSpec, dialect: Dialect) -> CreateSyncTriggersOp | None:
    """The step-1 sync triggers for ``spec``, frozen for ``dialect`` (None for a
    transform without a SQL form)."""
    if not (spec.forward.has_sql and spec.backward.has_sql):
        return None
    name, schema = _table_args(spec)
    forward = transform_sql(spec, spec.forward, spec.old_columns, spec.new_columns, dialect)
    backward = transform_sql(spec, spec.backward, spec.new_columns, spec.old_columns, dialect)
    assert forward is not None and backward is not None
    return CreateSyncTriggersOp(
        spec.key,
        name,
        old=[Column(c.name, c.type) for c in spec.old_columns],
        new=[Column(c.name, c.type) for c in spec.new_columns],
        forward_sql=forward,
        backward_sql=backward,
        schema=schema,
        catch_errors=not (never_fails(spec.forward) and never_fails(spec.backward)),
    )


def write_marks_op(spec: PhasedSpec) -> CreateWriteMarksOp:
    """The step-1 write marks for a ``spec`` whose transforms lack a SQL form."""
    name, schema = _table_args(spec)
    return CreateWriteMarksOp(
        spec.key,
        name,
        old=list(spec.old_column_names),
        new=list(spec.new_column_names),
        schema=schema,
    )


def drop_old_op(spec: PhasedSpec, dialect: Dialect, sync_triggers: bool = False) -> DropOldOp:
    """The step-4 operation for ``spec``, frozen for ``dialect``; with
    ``sync_triggers`` (and SQL forms of both transforms) its reverse creates the
    sync triggers again."""
    name, schema = _table_args(spec)
    old = [
        Column(c.name, c.type, nullable=True, server_default=c.server_default)
        for c in spec.old_columns
    ]
    return DropOldOp(
        spec.key,
        name,
        old=old,
        new=list(spec.new_column_names),
        forward_sql=transform_sql(spec, spec.forward, spec.old_columns, spec.new_columns, dialect),
        backward_sql=transform_sql(
            spec, spec.backward, spec.new_columns, spec.old_columns, dialect
        ),
        forward=_reference(spec, spec.forward, "forward"),
        backward=_reference(spec, spec.backward, "backward"),
        schema=schema,
        sync_triggers=sync_triggers,
    )


# -- renderers ----------------------------------------------------------------------
class _Code(str):
    """Already rendered Python source, written as it is."""

    def __repr__(self) -> str:
        return str(self)


def _kwargs(autogen_context: AutogenContext, items: dict[str, Any]) -> str:
    from alembic.autogenerate import render as alembic_render

    parts = []
    for key, value in items.items():
        if value is None:
            continue
        if isinstance(value, list) and value and isinstance(value[0], Column):
            columns = ", ".join(
                alembic_render._render_column(c, autogen_context)
                for c in value
            )
            parts.append(f"{key}=[{columns}]")
        else:
            parts.append(f"{key}={value!r}")
    return ",\n    ".join(parts)


def _render(name: str, autogen_context: AutogenContext, head: list[Any], kw: dict[str, Any]) -> str:
    autogen_context.imports.add("import fourstep_sqla.alembic  # noqa: F401  (fourstep ops)")
    args = ",\n    ".join([*(repr(h) for h in head), _kwargs(autogen_context, kw)])
    return f"op.{name}(\n    {args},\n)"


@renderers.dispatch_for(BackfillOp)
def _render_backfill(autogen_context: AutogenContext, op: BackfillOp) -> str:
    return _render(
        "backfill",
        autogen_context,
        [op.key, op.table_name],
        {"old": op.old, "new": op.new, "forward_sql": op.forward_sql, "forward": op.forward,
         "forward_present_sql": op.forward_present_sql, "schema": op.schema},
    )


def _render_columns_op(
    name: str, autogen_context: AutogenContext, op: DropOldOp | RestoreOldOp
) -> str:
    return _render(
        name,
        autogen_context,
        [op.key, op.table_name],
        {"old": op.old, "new": op.new, "forward_sql": op.forward_sql,
         "backward_sql": op.backward_sql, "forward": op.forward, "backward": op.backward,
         "schema": op.schema, "sync_triggers": op.sync_triggers or None,
         "accept_lossy": op.accept_lossy or None},
    )


@renderers.dispatch_for(DropOldOp)
def _render_drop_old(autogen_context: AutogenContext, op: DropOldOp) -> str:
    return _render_columns_op("drop_old", autogen_context, op)


@renderers.dispatch_for(RestoreOldOp)
def _render_restore_old(autogen_context: AutogenContext, op: RestoreOldOp) -> str:
    return _render_columns_op("restore_old", autogen_context, op)


def _render_triggers_op(
    name: str, autogen_context: AutogenContext, op: CreateSyncTriggersOp
) -> str:
    return _render(
        name,
        autogen_context,
        [op.key, op.table_name],
        {"old": op.old, "new": op.new, "forward_sql": op.forward_sql,
         "backward_sql": op.backward_sql, "schema": op.schema,
         "catch_errors": None if op.catch_errors else False},
    )


@renderers.dispatch_for(CreateSyncTriggersOp)
def _render_create_sync_triggers(autogen_context: AutogenContext, op: CreateSyncTriggersOp) -> str:
    return _render_triggers_op("create_sync_triggers", autogen_context, op)


@renderers.dispatch_for(DropSyncTriggersOp)
def _render_drop_sync_triggers(autogen_context: AutogenContext, op: DropSyncTriggersOp) -> str:
    return _render_triggers_op("drop_sync_triggers", autogen_context, op)


def _render_marks_op(name: str, autogen_context: AutogenContext, op: CreateWriteMarksOp) -> str:
    return _render(name, autogen_context, [op.key, op.table_name],
                   {"old": op.old, "new": op.new, "schema": op.schema})


@renderers.dispatch_for(CreateWriteMarksOp)
def _render_create_write_marks(autogen_context: AutogenContext, op: CreateWriteMarksOp) -> str:
    return _render_marks_op("create_write_marks", autogen_context, op)


@renderers.dispatch_for(DropWriteMarksOp)
def _render_drop_write_marks(autogen_context: AutogenContext, op: DropWriteMarksOp) -> str:
    return _render_marks_op("drop_write_marks", autogen_context, op)


@renderers.dispatch_for(RecordPhaseOp)
def _render_record_phase(autogen_context: AutogenContext, op: RecordPhaseOp) -> str:
    return _render(
        "record_phase",
        autogen_context,
        [op.key, op.table_name],
        {"phase": op.phase, "previous": op.previous, "schema": op.schema},
    )


def _render_nullability(
    name: str, autogen_context: AutogenContext, op: RelaxOldNotNullOp
) -> str:
    from alembic.autogenerate import render as alembic_render

    kw: dict[str, Any] = {"schema": op.schema}
    if op.existing_type is not None:
        kw = {"existing_type": _Code(alembic_render._repr_type(op.existing_type, autogen_context)),
              **kw}
    return _render(name, autogen_context, [op.key, op.table_name, op.columns], kw)


@renderers.dispatch_for(RelaxOldNotNullOp)
def _render_relax(autogen_context: AutogenContext, op: RelaxOldNotNullOp) -> str:
    return _render_nullability("relax_old_not_null", autogen_context, op)


@renderers.dispatch_for(RestoreOldNotNullOp)
def _render_restore_not_null(autogen_context: AutogenContext, op: RestoreOldNotNullOp) -> str:
    return _render_nullability("restore_old_not_null", autogen_context, op)
