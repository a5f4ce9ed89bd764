"""Offline ``--sql`` scripts a DBA can apply with psql (PostgreSQL).

``alembic upgrade FROM:TO --sql`` (and ``downgrade``) writes the revisions'
SQL instead of running it. With :mod:`fourstep_sqla.alembic` imported, the
PostgreSQL script keeps the promises of an online run::

    alembic upgrade r02:head --sql > step3.sql
    psql -v ON_ERROR_STOP=1 -f step3.sql "$DATABASE_URL"

Apply it with ``ON_ERROR_STOP`` (without it psql goes on after an error, into
the next revision) and psql's autocommit on, as it is by default: the script
commits by itself where it must.

Short lock waits
    Every revision begins with ``SET LOCAL lock_timeout = '500ms'`` (the run's
    ``fourstep_lock_timeout_ms``), set again after each autocommit block, so an
    ``ALTER TABLE`` queued behind a long transaction never stalls the
    application for longer than that. On a lock timeout psql stops and the
    revision's open transaction is rolled back: the revisions before it stay
    applied, and so does what the revision committed in an autocommit block
    (every fourstep operation can run again). Write the script again from the
    revision the database is at (``SELECT version_num FROM alembic_version``)
    and run it when the blocker is gone. Statements in autocommit blocks
    (``CREATE INDEX CONCURRENTLY``, ``VALIDATE CONSTRAINT``) run without it, as
    online; the batches below set their own.

The drop gate (``op.drop_old``)
    A ``DO`` block counts the rows that would lose data, with the same
    predicates as the online gate (:mod:`fourstep_sqla.places`): missing,
    mismatched, and lossy unless ``accept_lossy=True``; rows with an empty old
    place are compared where the sync triggers are installed. It raises, with
    the counts, and the script stops before the ``DROP``. Consecutive
    ``op.drop_old`` operations run all their gates before the first ``DROP``.
    Then, in the revision's transaction, the definitions of the indexes on the
    old column(s) are recorded in ``fourstep_indexes``, the sync triggers are
    dropped, then the column(s). Sample keys are not listed: ``fourstep verify
    KEY`` lists them. Without sync triggers, a write outside the ORM that
    commits between the gate and the ``DROP`` is not re-checked (online a guard
    trigger does that).

Backfill and restore in committed batches (``op.backfill``, ``op.restore_old``)
    The migration's transaction is committed first (an autocommit block), then
    a ``DO`` block walks the table's pages in ``ctid`` ranges (a TID range
    scan, PostgreSQL 14+; the revision knows column names, not the primary
    key, and pages work for any key), updates the pending rows of each range
    (the backfill engine's predicate: :class:`~fourstep_sqla.jobs.SQLFill`),
    and commits after each one. A range's size follows its duration toward
    ``target_ms`` (40 ms). Lock timeouts and deadlocks are retried with a
    jittered pause, a bounded number of times; the sync triggers stay out of
    these writes (``fourstep.sync = off``), as online. A last ``UPDATE`` takes
    the rows the ranges missed (moved by a concurrent update, or added at the
    end of the table). Killed, it is simply run again: it writes pending rows
    only. A ``COMMIT`` inside ``DO`` needs the block to run outside a
    transaction block (``psql --single-transaction`` does not get in the way:
    the script's own ``COMMIT`` statements end that transaction). Inside one
    (``\\set AUTOCOMMIT off``, a client that wraps the file in a transaction)
    it fails with "invalid transaction termination": run ``fourstep backfill
    KEY`` first, then the block finds nothing pending and commits nothing (a
    restore: run that revision online). Before PostgreSQL 14 it is one
    ``UPDATE``. ``on_error="skip"`` is online only: a row the transform fails
    on stops the script, naming the error.

The step-1 downgrade's NOT NULL (``op.restore_old_not_null``)
    ``ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID``, committed; then
    ``VALIDATE CONSTRAINT`` in a transaction of its own (reads and writes go
    on); then ``SET NOT NULL``, proved from the check without a scan, and the
    check dropped. A NULL makes the validation refuse, with the count: the
    check is removed and the script stops.

The phase (``op.record_phase``, and what the backfill, the drop and the restore record)
    ``CREATE TABLE IF NOT EXISTS`` of the state tables, then an upsert of the
    phase into ``fourstep_state``, so ``check(engine)``, ``fourstep status``
    and autogenerate see the database exactly as after an online run.

The restore also creates the sync triggers again (``sync_triggers=True``),
typed with ``table.column%TYPE``, and builds the indexes the drop recorded
again, concurrently, with psql's ``\\gexec`` (with another client, run the
query before ``\\gexec`` and then the statements it returns). As with the
step-1 triggers written offline, the trigger bodies call their helper
functions by their bare names (online they are qualified with the schema
they were created in): writers need that schema on their ``search_path``.

SQLite and MariaDB/MySQL scripts stay as they were: one ``UPDATE`` per
backfill and restore, no gate (run ``fourstep verify KEY`` first), no
``lock_timeout``, no recorded phase (a comment says to check ``fourstep
status``). MariaDB/MySQL drop the sync triggers before the column. SQLite's
nullability changes and drops copy the table (batch mode), which needs the
live table: the script says so in a comment and leaves them to an online run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from alembic.operations import MigrateOperation, Operations
from alembic.runtime.migration import MigrationContext, RevisionStep
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import table as table_clause
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql import column as column_clause
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine, UserDefinedType

from ..attribute import PhasedSpec
from ..backfill import DEFAULT_TARGET_MS
from ..ddl import LockPolicy
from ..dialects import DialectRules
from ..errors import FourStepError
from ..frozen import frozen_transform
from ..jobs import SQLFill
from ..keys import KeyRange, all_null, any_not_null
from ..phase import Phase
from ..places import SQLPlaces
from ..state import STATE_METADATA, state_table
from ..transform import Transform
from ..triggers import SyncTriggers, trigger_names
from .indexes import indexes_table

if TYPE_CHECKING:
    from .ops import BackfillOp, DropOldOp, RelaxOldNotNullOp, RestoreOldOp

__all__ = [
    "ColumnTypeOf",
    "alter_nullable",
    "autocommit_block",
    "backfill",
    "drop_old",
    "invoke",
    "record_phase",
    "restore_old",
    "run_migrations",
]

#: a PL/pgSQL block; the transforms' SQL and the triggers use other tags
_DO = "DO $fourstep_do$\n#variable_conflict use_column\n{body}\n$fourstep_do$"


# -- the run: the lock_timeout of each revision, the drop gates first ----------------------------
@dataclass
class _Run:
    context: MigrationContext
    policy: LockPolicy
    lock_timeout: bool
    deferred: list[Callable[[], None]] = field(default_factory=list)
    depth: int = 0
    in_revision: bool = False
    state_tables: bool = False

    def set_timeout(self) -> None:
        if self.lock_timeout:
            timeout = literal(f"{int(self.policy.lock_timeout_ms)}ms")
            self.context.impl.static_output(
                f"SET LOCAL lock_timeout = {_sql(self.context, timeout)};")

    def revision(self, fn: Callable[..., Any], **kw: Any) -> Any:
        if self.lock_timeout:
            _comment(self.context, (
                f"each statement of this revision waits at most "
                f"{int(self.policy.lock_timeout_ms)} ms for a lock. On a lock timeout psql "
                f"stops and this revision's open transaction rolls back (the revisions "
                f"before it stay applied): once the blocker is gone, write the script again "
                f"from the revision in alembic_version and run it."
            ))
        self.in_revision = True
        try:
            self.set_timeout()
            result = fn(**kw)
            self.flush()
            return result
        finally:
            self.in_revision = False
            self.deferred.clear()

    def flush(self) -> None:
        """The DDL the drop gates left for later, in order."""
        self.depth += 1
        try:
            while self.deferred:
                self.deferred.pop(0)()
        finally:
            self.depth -= 1


_RUNS: WeakKeyDictionary[MigrationContext, _Run] = WeakKeyDictionary()


def _postgresql(context: MigrationContext) -> bool:
    return context.dialect.name == "postgresql"


def run_migrations(
    context: MigrationContext,
    original: Callable[..., None],
    policy: LockPolicy,
    kw: dict[str, Any],
) -> None:
    """``MigrationContext.run_migrations`` in ``--sql`` mode: each revision's steps
    wrapped (see the module docs)."""
    if context in _RUNS:
        original(context, **kw)
        return
    run = _Run(
        context, policy,
        lock_timeout=_postgresql(context)
        and bool(context.opts.get("fourstep_lock_safety", True)),
    )
    steps = context._migrations_fn
    assert steps is not None

    def offline_steps(heads: Any, ctx: MigrationContext) -> Iterator[Any]:
        for step in steps(heads, ctx):
            if isinstance(step, RevisionStep):
                fn = step.migration_fn

                @functools.wraps(fn)
                def revision(*, _fn: Any = fn, **kwargs: Any) -> Any:
                    return run.revision(_fn, **kwargs)

                step.migration_fn = revision
            yield step

    if _postgresql(context):
        _comment(context, (
            "apply with psql -v ON_ERROR_STOP=1 -f FILE, psql's autocommit on (the default): "
            "the script commits by itself where it must (see fourstep_sqla.alembic.offline)."
        ))
    context._migrations_fn = offline_steps
    _RUNS[context] = run
    try:
        original(context, **kw)
    finally:
        context._migrations_fn = steps
        _RUNS.pop(context, None)


def invoke(
    operations: Operations,
    operation: MigrateOperation,
    original: Callable[[Operations, MigrateOperation], Any],
) -> Any:
    """``Operations.invoke`` in ``--sql`` mode: the DDL of the drops runs before the
    next other operation, so every gate of a revision runs before the first DROP."""
    from .ops import DropOldOp

    run = _RUNS.get(operations.migration_context)
    if run is None:
        return original(operations, operation)
    if run.depth == 0 and not isinstance(operation, DropOldOp):
        run.flush()
    run.depth += 1
    try:
        return original(operations, operation)
    finally:
        run.depth -= 1


@contextmanager
def autocommit_block(
    context: MigrationContext, original: Callable[[MigrationContext], Any]
) -> Iterator[None]:
    """``MigrationContext.autocommit_block`` in ``--sql`` mode: the short
    ``lock_timeout`` again in the transaction that begins after it."""
    with original(context):
        yield
    run = _RUNS.get(context)
    if run is not None and run.in_revision:
        run.set_timeout()


# -- rendering ----------------------------------------------------------------------------------
def _sql(context: MigrationContext, element: Any) -> str:
    """``element`` compiled for the script's dialect, values inline."""
    return str(element.compile(dialect=context.dialect,
                               compile_kwargs={"literal_binds": True})).strip()


def _emit(context: MigrationContext, element: Any) -> None:
    context.impl.static_output(f"{_sql(context, element)};")


def _comment(context: MigrationContext, message: str) -> None:
    context.impl.static_output("-- fourstep: " + message)


def _do(context: MigrationContext, body: str) -> None:
    context.impl.static_output(_DO.format(body=body) + ";")


def _quoted(context: MigrationContext, name: str, schema: str | None) -> str:
    prep = context.dialect.identifier_preparer
    quoted = prep.quote(name)
    return f"{prep.quote_schema(schema)}.{quoted}" if schema else quoted


def _regclass(context: MigrationContext, name: str, schema: str | None) -> ColumnElement[Any]:
    return cast(literal(str(_quoted(context, name, schema)), String()), REGCLASS)


def _var(name: str, type_: TypeEngine[Any] | None = None) -> ColumnElement[Any]:
    """A PL/pgSQL variable of the block (names: ``fourstep_*``)."""
    return literal_column(name, type_)


def _message(*parts: Any) -> ColumnElement[Any]:
    """A message of text and variables, built in SQL: ``concat(...)``."""
    return func.concat(*(literal(p) if isinstance(p, str) else p for p in parts))


def _table(
    name: str, schema: str | None, columns: Sequence[Column[Any] | str]
) -> Table:
    """The table as the revision knows it: names, and types where it gives them."""
    return Table(
        name, MetaData(),
        *(Column(c) if isinstance(c, str) else Column(c.name, c.type) for c in columns),
        schema=schema,
    )


class ColumnTypeOf(UserDefinedType[Any]):
    """``table.column%TYPE``: the type a column has in the database, for
    PostgreSQL function signatures written by a script that knows the column's
    name only (the sync triggers' helper functions)."""

    cache_ok = True

    def __init__(self, reference: str) -> None:
        self.reference = reference

    def get_col_spec(self, **kw: Any) -> str:
        return f"{self.reference}%TYPE"


def _sync_triggers(
    context: MigrationContext, operation: DropOldOp | RestoreOldOp
) -> SyncTriggers:
    """The sync triggers of ``operation``, their columns typed as the database has them."""
    prep = context.dialect.identifier_preparer
    owner = _quoted(context, operation.table_name, operation.schema)

    def typed(column: Column[Any] | str) -> Column[Any]:
        name = column if isinstance(column, str) else column.name
        default = None if isinstance(column, str) else column.server_default
        return Column(name, ColumnTypeOf(f"{owner}.{prep.quote(name)}"),
                      server_default=default)

    return SyncTriggers(
        key=operation.key,
        table_name=operation.table_name,
        schema=operation.schema,
        old=tuple(typed(c) for c in operation.old),
        new=tuple(typed(c) for c in operation.new),
        forward_sql=operation.forward_sql or {},
        backward_sql=operation.backward_sql or {},
    )


# -- the phase ------------------------------------------------------------------------------------
def _state_tables(context: MigrationContext) -> None:
    run = _RUNS.get(context)
    if run is not None and run.state_tables:
        return
    for table in STATE_METADATA.sorted_tables:
        _emit(context, CreateTable(table, if_not_exists=True))
    if run is not None:
        run.state_tables = True


def _upsert_phase(context: MigrationContext, key: str, table_name: str, phase: int) -> None:
    _state_tables(context)
    statement = pg_insert(state_table).values(
        key=key, table_name=table_name, recorded_phase=int(phase), updated_at=func.now()
    )
    _emit(context, statement.on_conflict_do_update(
        index_elements=[state_table.c.key],
        set_={"recorded_phase": statement.excluded.recorded_phase,
              "updated_at": statement.excluded.updated_at},
    ))


def record_phase(operations: Operations, key: str, table_name: str, phase: int) -> None:
    """``op.record_phase`` offline: an upsert into ``fourstep_state`` (PostgreSQL)."""
    context = operations.get_context()
    if not _postgresql(context):
        _comment(context, f"{key} is now at phase {phase} (run `fourstep status` after "
                          f"applying)")
        return
    _upsert_phase(context, key, table_name, phase)


# -- backfill and restore -----------------------------------------------------------------------
def _batched(
    context: MigrationContext,
    fill: SQLFill,
    verb: str,
    done_verb: str,
    *,
    retries: int,
    target_ms: float,
) -> None:
    """The ``DO`` block that writes ``fill``'s pending rows in committed page ranges."""
    spec = fill.spec
    table = fill.table
    key = spec.key.removesuffix(":restore")
    ctid: ColumnElement[Any] = literal_column("ctid")
    in_range = and_(ctid >= _var("fourstep_from"), ctid < _var("fourstep_to"))
    batch = _sql(context, fill.update(in_range))
    sweep = _sql(context, update(table).where(fill.pending()).values(fill.assignments()))
    anything = _sql(context, exists().where(fill.pending()))
    size = _sql(context, func.pg_relation_size(_regclass(context, table.name, table.schema)))
    pages = f"{size} / current_setting('block_size')::bigint"
    done = _sql(context, _message(
        f"{key}: {done_verb} ", _var("fourstep_rows"), " row(s) in ",
        _var("fourstep_batches"), " committed batch(es)"))
    failed = _sql(context, _message(
        f"{key}: the {verb} stopped: ", _var("SQLERRM"), ". The batches before this one are "
        "committed. Fix the rows (or the transform of the revision) and run the script "
        "again from this revision: it writes pending rows only."))
    nothing = _sql(context, _message(f"{key}: nothing left to {verb}"))
    number = functools.partial(_sql, context)
    body = f"""DECLARE
    fourstep_page bigint := 0;
    fourstep_pages bigint := 8;
    fourstep_last bigint;
    fourstep_from tid;
    fourstep_to tid;
    fourstep_count bigint;
    fourstep_rows bigint := 0;
    fourstep_batches bigint := 0;
    fourstep_retries integer := 0;
    fourstep_started timestamptz;
    fourstep_ms double precision;
    fourstep_lock_timeout text := current_setting('lock_timeout');
BEGIN
    IF NOT {anything} THEN
        RAISE NOTICE USING MESSAGE = {nothing};
        RETURN;
    END IF;
    -- the library's own writes: the sync triggers stay out of them
    PERFORM set_config('fourstep.sync', 'off', false);
    PERFORM set_config('lock_timeout', {number(literal(f"{int(_LOCK_WAIT_MS)}ms"))}, false);
    IF current_setting('server_version_num')::integer < 140000 THEN
        -- no TID range scan before PostgreSQL 14: one UPDATE
        {sweep};
        GET DIAGNOSTICS fourstep_count = ROW_COUNT;
        fourstep_rows := fourstep_count;
        fourstep_batches := 1;
    ELSE
        fourstep_last := {pages};
        WHILE fourstep_page <= fourstep_last LOOP
            fourstep_from := format('(%s,0)', fourstep_page)::tid;
            fourstep_to := format('(%s,0)', fourstep_page + fourstep_pages)::tid;
            fourstep_started := clock_timestamp();
            BEGIN
                {batch};
                GET DIAGNOSTICS fourstep_count = ROW_COUNT;
            EXCEPTION
                WHEN lock_not_available OR deadlock_detected OR serialization_failure THEN
                    fourstep_retries := fourstep_retries + 1;
                    IF fourstep_retries > {number(literal(int(retries), Integer))} THEN
                        RAISE;
                    END IF;
                    PERFORM pg_sleep(least(0.05 * 2 ^ fourstep_retries, 5)
                                     * (0.5 + random() / 2));
                    CONTINUE;
                WHEN data_exception THEN
                    RAISE EXCEPTION USING MESSAGE = {failed};
            END;
            COMMIT;
            fourstep_retries := 0;
            fourstep_rows := fourstep_rows + fourstep_count;
            fourstep_batches := fourstep_batches + 1;
            fourstep_page := fourstep_page + fourstep_pages;
            fourstep_ms := extract(epoch FROM clock_timestamp() - fourstep_started) * 1000;
            -- toward the target duration, never more than doubling or halving
            fourstep_pages := greatest(1, fourstep_pages / 2, least(fourstep_pages * 2,
                (fourstep_pages * {number(literal(float(target_ms)))}
                 / greatest(fourstep_ms, 1))::bigint));
        END LOOP;
        -- rows the ranges missed: moved by a concurrent update, or added past the end
        {sweep};
        GET DIAGNOSTICS fourstep_count = ROW_COUNT;
        fourstep_rows := fourstep_rows + fourstep_count;
    END IF;
    COMMIT;
    PERFORM set_config('fourstep.sync', '', false);
    PERFORM set_config('lock_timeout', fourstep_lock_timeout, false);
    RAISE NOTICE USING MESSAGE = {done};
END"""
    _do(context, body)


#: each batch's lock_timeout: below the default deadlock_timeout (1 s), as online,
#: so the batch, not the application, gives way
_LOCK_WAIT_MS = 500


def _fill(spec: PhasedSpec) -> SQLFill:
    table = spec.table
    assert table is not None
    # the batch's bounds are pages, not keys: no key range, no dialect rules needed
    return SQLFill(spec, KeyRange(table, ()), DialectRules(), state_key=spec.key,
                   on_error="stop")


def _out_of_transaction_note(context: MigrationContext, key: str, what: str) -> None:
    otherwise = (
        f"run `fourstep backfill {key}` first, then this block finds nothing to do and "
        f"commits nothing" if what == "backfill" else
        "run this revision online instead (alembic downgrade)"
    )
    _comment(context, (
        f"the {what} of {key} commits batch by batch (a DO block with COMMIT), so it must "
        f"run outside a transaction block: psql -f with autocommit on (the default; "
        f"--single-transaction does not get in the way, the script's own COMMITs end it). "
        f"Inside one (\\set AUTOCOMMIT off, a client that wraps the file in a transaction) it "
        f"fails with 'invalid transaction termination': {otherwise}."
    ))


def backfill(operations: Operations, operation: BackfillOp, transform: Transform[Any]) -> None:
    """``op.backfill`` offline: committed batches on PostgreSQL, one UPDATE elsewhere."""
    context = operations.get_context()
    if transform.sql is None:
        raise FourStepError(
            f"{operation.key}: offline (--sql) mode renders the backfill in SQL, which needs "
            f"the SQL form of the forward transform; this one is Python only "
            f"({operation.forward}). Run `fourstep backfill {operation.key}` instead."
        )
    if not _postgresql(context):
        _one_update(operations, operation, transform)
        return
    table = _table(operation.table_name, operation.schema, [*operation.old, *operation.new])
    spec = PhasedSpec.frozen(key=operation.key, table=table, old=operation.old,
                             new=operation.new, forward=transform, backward=transform)
    with context.autocommit_block():
        _out_of_transaction_note(context, operation.key, "backfill")
        _batched(context, _fill(spec), "backfill", "backfilled",
                 retries=_policy(context).retries, target_ms=_target(operation.target_ms))
    _upsert_phase(context, operation.key, operation.table_name, Phase.STOP_READ_OLD)


def _policy(context: MigrationContext) -> LockPolicy:
    from .locks import lock_policy

    return lock_policy(context.opts)


def _target(target_ms: float | None) -> float:
    return DEFAULT_TARGET_MS if not target_ms else float(target_ms)


def _one_update(operations: Operations, operation: BackfillOp, transform: Transform[Any]) -> None:
    """SQLite, MariaDB/MySQL: one UPDATE over the whole table, said so."""
    assert transform.sql is not None
    context = operations.get_context()
    columns: list[Any] = [column_clause(n) for n in (*operation.old, *operation.new)]
    table = table_clause(operation.table_name, *columns, schema=operation.schema)
    old = [table.c[n] for n in operation.old]
    new = [table.c[n] for n in operation.new]
    result = transform.sql(*old)
    values = result if isinstance(result, tuple) else (result,)
    pending = and_(all_null(new), any_not_null(old))
    _comment(context, (
        f"op.backfill({operation.key!r}) in offline mode is ONE UPDATE over the whole "
        f"table; on a big, busy table run `fourstep backfill {operation.key}` instead"
    ))
    operations.execute(update(table).where(pending).values(dict(zip(new, values))))


def restore_old(operations: Operations, operation: RestoreOldOp) -> None:
    """``op.restore_old`` offline: re-add the old column(s) and restore them from the
    new ones; on PostgreSQL also the sync triggers and the indexes, in committed
    batches."""
    context = operations.get_context()
    backward = frozen_transform("backward", operation.old_names, operation.backward_sql,
                                operation.backward)
    if backward.sql is None:
        raise FourStepError(f"{operation.key}: offline restore needs a SQL backward form")
    postgresql = _postgresql(context)
    for col in operation.old:
        # a fresh Column per run; nullable, as step 1 relaxed it
        restored = Column(col.name, col.type, nullable=True, server_default=col.server_default)
        if postgresql:  # a restore stopped after its columns were added: run it again
            operations.add_column(operation.table_name, restored, schema=operation.schema,
                                  if_not_exists=True)
        else:
            operations.add_column(operation.table_name, restored, schema=operation.schema)
    if not postgresql:
        columns: list[Any] = [column_clause(n) for n in (*operation.old_names, *operation.new)]
        table = table_clause(operation.table_name, *columns, schema=operation.schema)
        result = backward.sql(*(table.c[n] for n in operation.new))
        values = result if isinstance(result, tuple) else (result,)
        operations.execute(
            update(table)
            .where(or_(*(table.c[n].isnot(None) for n in operation.new)))
            .values(dict(zip([table.c[n] for n in operation.old_names], values)))
        )
        return
    from .trigger_ops import sync_triggers_enabled

    if (operation.sync_triggers and operation.forward_sql and operation.backward_sql
            and sync_triggers_enabled(context.opts)):
        # before the restore: a step-4 writer meanwhile gets its old place too
        for statement in _sync_triggers(context, operation).create(context.dialect):
            context.impl.static_output(f"{statement};")
    table = _table(operation.table_name, operation.schema, [*operation.old, *operation.new])
    spec = operation.spec(table).reversed()
    _emit(context, CreateTable(indexes_table, if_not_exists=True))
    with context.autocommit_block():
        _out_of_transaction_note(context, operation.key, "restore")
        _batched(context, _fill(spec), "restore", "restored",
                 retries=_policy(context).retries, target_ms=DEFAULT_TARGET_MS)
        _rebuild_indexes(context, operation)
    _upsert_phase(context, operation.key, operation.table_name, Phase.STOP_READ_OLD)


# -- indexes on the old columns -----------------------------------------------------------------
_pg_index = table_clause("pg_index", column_clause("indexrelid"), column_clause("indrelid"),
                         column_clause("indisvalid", Boolean()))
_pg_class = table_clause("pg_class", column_clause("oid"), column_clause("relname", String()),
                         column_clause("relnamespace"))
_pg_namespace = table_clause("pg_namespace", column_clause("oid"),
                             column_clause("nspname", String()))
_pg_depend = table_clause("pg_depend", column_clause("objid"), column_clause("classid"),
                          column_clause("refobjid"), column_clause("refobjsubid"))
_pg_attribute = table_clause("pg_attribute", column_clause("attrelid"),
                             column_clause("attnum"), column_clause("attname", String()))


def _record_indexes(context: MigrationContext, operation: DropOldOp) -> None:
    """The indexes that depend on the old column(s), remembered for the restore (the
    catalog query of :func:`fourstep_sqla.alembic.indexes.on_old_columns`)."""
    i, ic = _pg_index.alias("i"), _pg_class.alias("ic")
    d, a = _pg_depend.alias("d"), _pg_attribute.alias("a")
    owner = _regclass(context, operation.table_name, operation.schema)
    found = (
        select(literal(operation.key), ic.c.relname, literal(operation.table_name),
               func.pg_get_indexdef(i.c.indexrelid))
        .distinct()
        .select_from(
            i.join(ic, ic.c.oid == i.c.indexrelid)
            .join(d, and_(d.c.objid == i.c.indexrelid,
                          d.c.classid == cast(literal("pg_class"), REGCLASS),
                          d.c.refobjid == i.c.indrelid))
            .join(a, and_(a.c.attrelid == i.c.indrelid, a.c.attnum == d.c.refobjsubid))
        )
        .where(i.c.indrelid == owner, a.c.attname.in_(operation.old_names))
    )
    c = indexes_table.c
    _emit(context, CreateTable(indexes_table, if_not_exists=True))
    _emit(context, indexes_table.delete().where(c.key == operation.key))
    _emit(context, indexes_table.insert().from_select(
        [c.key, c.index_name, c.table_name, c.definition], found))


def _rebuild_indexes(context: MigrationContext, operation: RestoreOldOp) -> None:
    """psql's ``\\gexec``: build the recorded indexes again, concurrently (an INVALID
    leftover of a build that stopped is dropped first)."""
    c = indexes_table.c
    x, ic, n = _pg_index.alias("x"), _pg_class.alias("ic"), _pg_namespace.alias("n")
    owner = _regclass(context, operation.table_name, operation.schema)
    invalid = (
        select(literal(0).label("step"), c.index_name,
               func.concat(literal("DROP INDEX CONCURRENTLY IF EXISTS "),
                           func.quote_ident(n.c.nspname), literal("."),
                           func.quote_ident(ic.c.relname)).label("statement"))
        .select_from(
            indexes_table.join(ic, ic.c.relname == c.index_name)
            .join(x, x.c.indexrelid == ic.c.oid)
            .join(n, n.c.oid == ic.c.relnamespace)
        )
        .where(c.key == operation.key, x.c.indrelid == owner, ~x.c.indisvalid)
    )
    build = (
        select(literal(1).label("step"), c.index_name,
               func.regexp_replace(c.definition, literal("^CREATE (UNIQUE )?INDEX "),
                                   literal("CREATE \\1INDEX CONCURRENTLY IF NOT EXISTS "))
               .label("statement"))
        .where(c.key == operation.key)
    )
    steps = union_all(invalid, build).subquery("fourstep_indexes_again")
    query = select(steps.c.statement).order_by(steps.c.step, steps.c.index_name)
    _comment(context, (
        "the indexes the drop took along, built again concurrently: psql's \\gexec runs "
        "each statement the query returns (with another client, run the query, then "
        "its results)"
    ))
    context.impl.static_output(f"{_sql(context, query)}\n\\gexec")
    _emit(context, indexes_table.delete().where(c.key == operation.key))


# -- the drop -------------------------------------------------------------------------------------
def _gate(context: MigrationContext, operation: DropOldOp) -> None:
    """The drop gate as a DO block that raises, with the counts, while a row would
    lose data (the predicates of :mod:`fourstep_sqla.places`)."""
    table = _table(operation.table_name, operation.schema, [*operation.old, *operation.new])
    places = SQLPlaces.of(operation.spec(table), "the drop gate")
    # rows with an empty old place count where the sync triggers are installed
    synced = _var("fourstep_synced", Boolean())
    scope = or_(places.scope(False), and_(synced, places.scope(True)))
    categories = [places.missing(), places.mismatched(), places.lossy()]
    counts = select(func.count(), *(
        func.coalesce(func.sum(case((and_(scope, condition), 1), else_=0)), 0)
        for condition in categories
    )).select_from(table)
    names = trigger_names(operation.key, "postgresql")
    triggers = table_clause("pg_trigger", column_clause("tgrelid"),
                            column_clause("tgname", String()),
                            column_clause("tgisinternal", Boolean()))
    installed = select(func.count()).select_from(triggers).where(
        triggers.c.tgrelid == _regclass(context, operation.table_name, operation.schema),
        ~triggers.c.tgisinternal,
        triggers.c.tgname.in_(names),
    ).scalar_subquery() == len(names)
    where = f"{', '.join(operation.old_names)} of {table.description}"
    total, missing = _var("fourstep_total"), _var("fourstep_missing")
    mismatched, lossy = _var("fourstep_mismatched"), _var("fourstep_lossy")
    disagree = _sql(context, _message(
        f"{operation.key}: refusing to drop {where}: ", missing, " row(s) have a value only "
        "in the old place and ", mismatched, " row(s) differ from forward(old) without "
        "backward(new) giving the old value back (of ", total, " rows). Nothing was "
        f"dropped. Run `fourstep backfill {operation.key} --repair` (it writes new = "
        f"forward(old) where the places disagree), check with `fourstep verify "
        f"{operation.key}` (it lists sample keys), then run the script again from this "
        f"revision."))
    loses = _sql(context, _message(
        f"{operation.key}: refusing to drop {where}: ", lossy, " row(s) hold an old value "
        f"that backward(forward(old)) does not give back, so dropping it loses the "
        f"difference (e.g. '' split into NULLs, a trailing separator; `fourstep verify "
        f"{operation.key}` lists sample keys). Nothing was dropped. Fix those values, or "
        f"accept the loss with op.drop_old(..., accept_lossy=True)."))
    passed = _sql(context, _message(
        f"{operation.key}: drop gate passed: ", total, " rows, ", lossy,
        " lossy row(s) accepted"))
    failed = _sql(context, _message(
        f"{operation.key}: the drop gate could not compare the rows: ", _var("SQLERRM"),
        f". Nothing was dropped. Run `fourstep verify {operation.key}`, which compares "
        f"such rows in Python and names them."))
    refuse_lossy = "" if operation.accept_lossy else f"""
    IF fourstep_lossy > 0 THEN
        RAISE EXCEPTION USING MESSAGE = {loses};
    END IF;"""
    body = f"""DECLARE
    fourstep_synced boolean := {_sql(context, installed)};
    fourstep_total bigint;
    fourstep_missing bigint;
    fourstep_mismatched bigint;
    fourstep_lossy bigint;
BEGIN
    BEGIN
        {_sql(context, counts)}
        INTO fourstep_total, fourstep_missing, fourstep_mismatched, fourstep_lossy;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION USING MESSAGE = {failed};
    END;
    IF fourstep_missing + fourstep_mismatched > 0 THEN
        RAISE EXCEPTION USING MESSAGE = {disagree};
    END IF;{refuse_lossy}
    RAISE NOTICE USING MESSAGE = {passed};
END"""
    _comment(context, (
        f"the drop gate of {operation.key}: the script stops here, with the counts, while "
        f"a row would lose data"
    ))
    _do(context, body)


def drop_old(
    operations: Operations, operation: DropOldOp, drop_columns: Callable[[], None]
) -> None:
    """``op.drop_old`` offline: the gate, then (after the revision's other gates) the
    index definitions recorded, the sync triggers and the old column(s) dropped,
    the phase recorded. ``drop_columns``: the online module's DROP, used elsewhere."""
    context = operations.get_context()
    if context.dialect.name == "sqlite":
        _comment(context, (
            f"op.drop_old({operation.key!r}) cannot be written offline on SQLite: its DROP "
            f"copies the table (batch mode), which needs the live table. Run this "
            f"revision online (alembic upgrade)."
        ))
        return
    if not (_postgresql(context) and operation.forward_sql and operation.backward_sql):
        _comment(context, (
            f"the drop gate of {operation.key} cannot run offline; run `fourstep verify "
            f"{operation.key}` against the database before applying this"
        ))
        if context.dialect.name in ("mysql", "mariadb") and operation.forward_sql \
                and operation.backward_sql:
            # triggers left on a dropped column would fail every later write
            for statement in _sync_triggers(context, operation).drop(context.dialect):
                context.impl.static_output(f"{statement};")
        drop_columns()
        return
    _gate(context, operation)

    def ddl() -> None:
        _record_indexes(context, operation)
        for statement in _sync_triggers(context, operation).drop(context.dialect):
            context.impl.static_output(f"{statement};")
        for name in operation.old_names:
            operations.drop_column(operation.table_name, name, schema=operation.schema)
        _upsert_phase(context, operation.key, operation.table_name, Phase.STOP_WRITE_OLD)

    run = _RUNS.get(context)
    if run is not None and run.depth == 1:
        run.deferred.append(ddl)  # the gates of the drops that follow run first
    else:
        ddl()


# -- NOT NULL -------------------------------------------------------------------------------------
def alter_nullable(
    operations: Operations, operation: RelaxOldNotNullOp, nullable: bool
) -> None:
    """``op.relax_old_not_null`` / ``op.restore_old_not_null`` offline."""
    context = operations.get_context()
    if context.dialect.name == "sqlite":
        _comment(context, (
            f"{operation.key}: making {', '.join(operation.columns)} of "
            f"{operation.table_name} {'NULL-able' if nullable else 'NOT NULL'} copies the "
            f"table on SQLite (batch mode), which needs the live table: run this revision "
            f"online (alembic upgrade / downgrade)."
        ))
        return
    for name in operation.columns:
        if nullable or not _postgresql(context):
            operations.alter_column(operation.table_name, name, nullable=nullable,
                                    existing_type=operation.existing_type,
                                    schema=operation.schema)
        else:
            _set_not_null(operations, operation, name)


def _set_not_null(operations: Operations, operation: RelaxOldNotNullOp, name: str) -> None:
    """SET NOT NULL through ``CHECK ... NOT VALID``, then ``VALIDATE`` on its own,
    as online (``_set_not_null_postgresql`` of the ops module)."""
    context = operations.get_context()
    prep = context.dialect.identifier_preparer
    table = _quoted(context, operation.table_name, operation.schema)
    column = prep.quote(name)
    # the name the online path uses: either finds what the other left behind
    check_name = f"fourstep_nn_{operation.table_name}_{name}"[:63]
    check = prep.quote(check_name)
    timeout = f"{int(_policy(context).lock_timeout_ms)}ms"
    _comment(context, (
        f"{name} NOT NULL again without a scan under an exclusive lock: a NOT VALID check, "
        f"committed; VALIDATE in a transaction of its own; then SET NOT NULL, proved from "
        f"the check"
    ))
    context.impl.static_output(
        f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check}, "
        f"ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID;"
    )
    nulls = select(func.count()).select_from(
        _table(operation.table_name, operation.schema, [name])
    ).where(column_clause(name).is_(None))
    refused = _sql(context, _message(
        f"{operation.key}: cannot make {name} of {operation.table_name} NOT NULL again: ",
        _var("fourstep_nulls"), " row(s) hold NULL there (written at step 4, or never set; "
        "step-4 code still running?). Nothing was changed. Deploy the previous release's "
        "code first, fill those rows, then run the script again from this revision."))
    body = f"""DECLARE
    fourstep_failed boolean := false;
    fourstep_nulls bigint;
BEGIN
    -- VALIDATE takes a lock that never blocks reads and writes: no short timeout
    PERFORM set_config('lock_timeout', '0', true);
    BEGIN
        ALTER TABLE {table} VALIDATE CONSTRAINT {check};
    EXCEPTION WHEN check_violation THEN
        fourstep_failed := true;
    END;
    IF fourstep_failed THEN
        PERFORM set_config('lock_timeout', {_sql(context, literal(timeout))}, true);
        ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check};
        COMMIT;
        {_sql(context, nulls)} INTO fourstep_nulls;
        RAISE EXCEPTION USING MESSAGE = {refused};
    END IF;
END"""
    with context.autocommit_block():
        _do(context, body)
    context.impl.static_output(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL;")
    context.impl.static_output(f"ALTER TABLE {table} DROP CONSTRAINT {check};")
