"""Autogenerate: the Four Step operations a model's phase calls for.

Active as soon as :mod:`fourstep_sqla.alembic` is imported (a global
comparator, run after Alembic's own). For every phased attribute whose table
is in ``target_metadata``, with what the database has (columns and the state
table):

- step 1 and later, the old column NOT NULL without a server default:
  ``op.relax_old_not_null`` (replacing Alembic's own ``alter_column`` on that
  column, and never emitting one back while the model declares it NOT NULL);
- steps 1-3, both transforms with a SQL form, the sync triggers not in the
  database: ``op.create_sync_triggers``, after the new columns; for a
  Python-only transform ``op.create_write_marks`` instead (opt out of both with
  ``context.configure(fourstep_sync_triggers=False)``);
- phase reached ``STOP_READ_OLD`` and the backfill not recorded: ``op.backfill``;
- ``STOP_WRITE_OLD`` with the old column still in the database: ``op.drop_old``;
- once dropped, the ``unmapped_column()`` still in the model is hidden from
  Alembic's comparison, so no ``add_column`` churn appears;
- steps 1 and 2: ``op.record_phase`` once the database has the new columns
  and has recorded an earlier phase (steps 3 and 4 record theirs with the
  backfill and the drop), so ``fourstep status``, ``check()`` and the next
  autogenerate know where the database is;
- indexes: the index :func:`~fourstep_sqla.attribute.forward_index` declares
  is created (and, on downgrade, dropped) with ``postgresql_concurrently=True``,
  which runs in an autocommit block of its own (see
  :mod:`fourstep_sqla.alembic.indexes`); an index on an old column that the
  model stops declaring is dropped concurrently before step 4 and, at step 4,
  left to ``op.drop_old`` (which drops it with the column and restores it on
  downgrade); once the old column is dropped, no index on it is created again,
  whatever the model keeps;
- the state tables (``fourstep_*``) are neither reflected nor dropped for not
  being in the application's metadata.

Nothing is emitted once a step is done.
"""

from __future__ import annotations

import logging
from typing import Any

from alembic.autogenerate import comparators
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops as alembic_ops
from alembic.util.langhelpers import DispatchPriority
from sqlalchemy import MetaData, inspect

from ..attribute import PhasedSpec
from ..marks import GUARD_TABLE, MARKS_TABLE, marks_present
from ..phase import Phase
from ..registry import all_specs
from ..state import STATE_METADATA, read_state
from ..triggers import SQLITE_MARKER, triggers_present
from .indexes import INDEXES_TABLE, mentions
from .ops import RecordPhaseOp, RelaxOldNotNullOp
from .render import backfill_op, drop_old_op, sync_triggers_op, write_marks_op
from .trigger_ops import sync_triggers_enabled

__all__ = ["fourstep_operations"]

log = logging.getLogger("fourstep_sqla.alembic.compare")

STATE_TABLES = frozenset(t.name for t in STATE_METADATA.sorted_tables) | {
    SQLITE_MARKER,
    GUARD_TABLE,
    MARKS_TABLE,
    INDEXES_TABLE,
}


def _metadatas(autogen_context: AutogenContext) -> list[MetaData]:
    metadata = autogen_context.metadata
    if metadata is None:
        return []
    if isinstance(metadata, MetaData):
        return [metadata]
    return list(metadata)


def _table_ops(upgrade_ops: alembic_ops.UpgradeOps, spec: PhasedSpec) -> list[Any]:
    table = spec.table
    assert table is not None
    return [
        op
        for op in upgrade_ops.ops
        if isinstance(op, alembic_ops.ModifyTableOps)
        and op.table_name == table.name
        and op.schema == table.schema
    ]


def _touches(op: Any, names: set[str], kind: str) -> bool:
    if kind == "alter":
        return isinstance(op, alembic_ops.AlterColumnOp) and op.column_name in names
    return isinstance(op, alembic_ops.AddColumnOp) and op.column.name in names


def _remove_column_ops(
    upgrade_ops: alembic_ops.UpgradeOps, spec: PhasedSpec, names: set[str], kind: str
) -> None:
    for table_ops in _table_ops(upgrade_ops, spec):
        table_ops.ops = [op for op in table_ops.ops if not _touches(op, names, kind)]
    upgrade_ops.ops = [
        op
        for op in upgrade_ops.ops
        if not (isinstance(op, alembic_ops.ModifyTableOps) and not op.ops)
    ]


def _adds_columns(upgrade_ops: alembic_ops.UpgradeOps, spec: PhasedSpec) -> bool:
    """This autogenerate run adds (some of) the new columns."""
    names = set(spec.new_column_names)
    return any(
        _touches(op, names, "add") for table_ops in _table_ops(upgrade_ops, spec)
        for op in table_ops.ops
    )


def _index_ops(
    upgrade_ops: alembic_ops.UpgradeOps, spec: PhasedSpec, kind: type[Any]
) -> list[tuple[Any, Any]]:
    """(table ops, index op) pairs of ``kind`` on ``spec``'s table."""
    return [
        (table_ops, op)
        for table_ops in _table_ops(upgrade_ops, spec)
        for op in table_ops.ops
        if isinstance(op, kind)
    ]


def _forward_index(spec: PhasedSpec, name: str | None) -> bool:
    table = spec.table
    assert table is not None
    return any(
        ix.name == name and ix.info.get("fourstep_forward_index") == spec.key
        for ix in table.indexes
    )


def _steer_indexes(
    upgrade_ops: alembic_ops.UpgradeOps,
    spec: PhasedSpec,
    postgresql: bool,
    old_dropped: bool,
    dropping: bool,
) -> None:
    """Concurrent where the index belongs to the Four Step Process; none of the
    churn a dropped old column would cause (see the module docs)."""
    old = list(spec.old_column_names)
    removed: list[Any] = []
    # a forward index in the database under its name is the model's: its expressions
    # come back normalized from reflection, so Alembic would drop and re-create it
    in_db = {op.index_name: op for _, op in _index_ops(upgrade_ops, spec,
                                                       alembic_ops.DropIndexOp)}
    for _, op in _index_ops(upgrade_ops, spec, alembic_ops.CreateIndexOp):
        if _forward_index(spec, op.index_name) and op.index_name in in_db:
            removed += [op, in_db[op.index_name]]
    for _, op in _index_ops(upgrade_ops, spec, alembic_ops.CreateIndexOp):
        if any(op is r for r in removed):
            continue
        index = op.to_index()
        if mentions(index, old) and (old_dropped or dropping):
            removed.append(op)  # on a column that is gone, or going in this revision
        elif postgresql and _forward_index(spec, op.index_name):
            op.kw["postgresql_concurrently"] = True
    for _, op in _index_ops(upgrade_ops, spec, alembic_ops.DropIndexOp):
        if any(op is r for r in removed) or not mentions(op.to_index(), old):
            continue
        if dropping:
            removed.append(op)  # op.drop_old drops it with the column, and restores it
        elif postgresql:
            op.kw["postgresql_concurrently"] = True
    if removed:
        for table_ops in _table_ops(upgrade_ops, spec):
            table_ops.ops = [op for op in table_ops.ops if not any(op is r for r in removed)]
        upgrade_ops.ops = [
            op
            for op in upgrade_ops.ops
            if not (isinstance(op, alembic_ops.ModifyTableOps) and not op.ops)
        ]


def fourstep_operations(
    autogen_context: AutogenContext, upgrade_ops: alembic_ops.UpgradeOps
) -> list[Any]:
    """The fourstep operations for this autogenerate run (and the churn removed)."""
    connection = autogen_context.connection
    dialect = autogen_context.dialect
    if connection is None or dialect is None:
        return []
    # the state tables are fourstep's, not the application's: never drop them
    upgrade_ops.ops = [
        op
        for op in upgrade_ops.ops
        if not (isinstance(op, alembic_ops.DropTableOp) and op.table_name in STATE_TABLES)
    ]
    metadatas = _metadatas(autogen_context)
    inspector = inspect(connection)
    emitted: list[Any] = []
    for spec in all_specs():
        table = spec.table
        if table is None or table.metadata not in metadatas:
            continue
        if not inspector.has_table(table.name, schema=table.schema):
            continue
        columns = {c["name"]: c for c in inspector.get_columns(table.name, schema=table.schema)}
        old_names = set(spec.old_column_names)
        old_in_db = [n for n in spec.old_column_names if n in columns]
        # Alembic's own nullability changes on old columns are ours to make
        _remove_column_ops(upgrade_ops, spec, old_names, "alter")
        new_in_db = all(n in columns for n in spec.new_column_names)
        dropping = spec.phase is Phase.STOP_WRITE_OLD and new_in_db and bool(old_in_db)
        _steer_indexes(upgrade_ops, spec, dialect.name == "postgresql", not old_in_db,
                       dropping)
        if not old_in_db:
            # dropped already: the unmapped_column() must not come back
            _remove_column_ops(upgrade_ops, spec, old_names, "add")
            continue
        strict = [
            n for n in old_in_db
            if not columns[n]["nullable"] and columns[n].get("default") is None
        ]
        for n in old_in_db:
            if not columns[n]["nullable"] and n not in strict:
                log.info(
                    "%s: old column %s.%s is NOT NULL with a server default: step 4 inserts "
                    "get the default, so it is not relaxed", spec.key, table.name, n,
                )
        if strict:
            emitted.append(RelaxOldNotNullOp(
                spec.key, table.name, strict,
                existing_type=spec.old_columns[spec.old_column_names.index(strict[0])].type,
                schema=table.schema,
            ))
        triggers_wanted = (
            spec.phase < Phase.STOP_WRITE_OLD
            and len(old_in_db) == len(spec.old_column_names)
            and sync_triggers_enabled(autogen_context.migration_context)
        )
        synced = triggers_present(connection, spec.key, table.name, table.schema)
        marked = marks_present(connection, spec.key, table.name, table.schema)
        if triggers_wanted and not synced and not marked:
            # the sync triggers, or for Python-only transforms the write marks
            emitted.append(sync_triggers_op(spec, dialect) or write_marks_op(spec))
        state = read_state(connection, spec.key)
        backfilled = state is not None and state.backfilled
        recorded = state.recorded_phase if state is not None else None
        new_coming = new_in_db or _adds_columns(upgrade_ops, spec)
        if (
            spec.phase <= Phase.READ_NEW
            and new_coming
            and (recorded is None or recorded < spec.phase)
        ):
            emitted.append(RecordPhaseOp(spec.key, table.name, int(spec.phase),
                                         int(recorded or 0), schema=table.schema))
        if spec.phase >= Phase.STOP_READ_OLD and not backfilled and new_in_db:
            emitted.append(backfill_op(spec, dialect))
        if spec.phase is Phase.STOP_WRITE_OLD and new_in_db:
            # the downgrade creates the triggers again only if the database has them:
            # the step-1 revision that made them also drops them on its own downgrade
            emitted.append(drop_old_op(spec, dialect, sync_triggers=synced or marked))
    upgrade_ops.ops.extend(emitted)
    return emitted


@comparators.dispatch_for("autogenerate", priority=DispatchPriority.LAST)
def _compare(autogen_context: AutogenContext, upgrade_ops: alembic_ops.UpgradeOps) -> None:
    fourstep_operations(autogen_context, upgrade_ops)


_original_name_filters = AutogenContext.run_name_filters


def _run_name_filters(self: AutogenContext, name: Any, type_: Any, parent_names: Any) -> bool:
    # the state tables are the library's: not reflected, so never "Detected removed table"
    if type_ == "table" and name in STATE_TABLES:
        return False
    return bool(_original_name_filters(self, name, type_, parent_names))


if not getattr(AutogenContext.run_name_filters, "_fourstep", False):
    _run_name_filters._fourstep = True  # type: ignore[attr-defined]
    AutogenContext.run_name_filters = _run_name_filters  # type: ignore[method-assign]
