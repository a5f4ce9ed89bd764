"""Alembic operations of the Four Step Process.

Importing :mod:`fourstep_sqla.alembic` (in ``env.py``) registers them:

``op.relax_old_not_null(key, table_name, columns, existing_type)`` (step 1)
    the old column(s) stop being NOT NULL, so step 4 can stop writing them.
    Reverse: ``op.restore_old_not_null`` (refuses while NULLs exist; on
    PostgreSQL through ``CHECK ... NOT VALID`` + ``VALIDATE`` so writes go on).
``op.backfill(key, table_name, old, new, forward_sql=..., forward=...)`` (step 3)
    runs the backfill engine inside the migration, each batch committed on
    its own (in an autocommit block, on fresh connections of the same engine;
    on SQLite and single-connection pools, where a new connection would see
    another database, on the migration's own connection), resumable; in
    committed batches in offline ``--sql`` mode too (see
    :mod:`fourstep_sqla.alembic.offline`). Reverse:
    ``op.record_phase`` back to step 2 (the data stays).
``op.drop_old(key, table_name, old, new, forward_sql=..., backward_sql=...)`` (step 4)
    refuses, with counts and sample keys, while any row would lose data; then
    drops lock-safely (PostgreSQL) or in batch mode (SQLite). Reverse:
    ``op.restore_old``, which re-adds the column(s) and restores their values
    from the new ones with the backward transform.
``op.record_phase(key, table_name, phase, previous)``
    records the phase the database reached; its reverse records ``previous``.

Migrations are frozen history: these operations take column names and the SQL
text of the transforms, rendered for the target dialect, never the models. A
Python-only transform is referenced as ``"module:function"``.

Type checkers cannot see ``op.<name>`` registered at run time: use the typed
functions of :mod:`fourstep_sqla.alembic` (``fs.backfill(...)``) if you care.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from alembic.operations import MigrateOperation, Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Engine, MetaData, Table, func, or_, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import AssertionPool, SingletonThreadPool, StaticPool
from sqlalchemy.types import TypeEngine

from ..attribute import PhasedSpec
from ..backfill import BackfillError, ExternalTransactionError, backfill
from ..ddl import LockPolicy, run_ddl
from ..dialects import rules_for
from ..errors import FourStepError
from ..frozen import frozen_transform
from ..marks import MARKS_TABLE, DropGuard, WriteMarks, home_of, marks_present
from ..phase import Phase
from ..state import record_phase
from ..transform import Transform
from ..triggers import SyncTriggers, from_table, placed, triggers_present
from ..verify import verify
from . import indexes, locks, offline

__all__ = [
    "BackfillOp",
    "DropOldOp",
    "DropRefusedError",
    "RecordPhaseOp",
    "RelaxOldNotNullOp",
    "RestoreOldNotNullOp",
    "RestoreOldOp",
]

log = logging.getLogger("fourstep_sqla.alembic")


class DropRefusedError(FourStepError):
    """``op.drop_old`` found rows that would lose data; the column stays."""


def _column_names(columns: Sequence[Column[Any] | str]) -> list[str]:
    return [c if isinstance(c, str) else c.name for c in columns]


def lock_policy(operations: Operations) -> LockPolicy:
    """The DDL lock policy: ``context.configure(fourstep_lock_timeout_ms=...,
    fourstep_lock_retries=...)`` in env.py, else 500 ms and 10 retries."""
    return locks.lock_policy(operations.get_context().opts)


class _KeyedOp(MigrateOperation):
    key: str
    table_name: str
    schema: str | None

    def reflect(self, conn: Any) -> Table:
        return reflect_columns(conn, self.table_name, self.schema)


def reflect_columns(conn: Any, table_name: str, schema: str | None) -> Table:
    """The table's columns and primary key, as the database has them.

    Two catalog queries instead of a full reflection's ten: operations run
    this while their revision may already hold the table's exclusive lock.
    """
    from sqlalchemy import PrimaryKeyConstraint, inspect

    inspector = inspect(conn)
    columns = inspector.get_columns(table_name, schema=schema)
    if not columns:
        from sqlalchemy.exc import NoSuchTableError

        raise NoSuchTableError(table_name)
    pk = inspector.get_pk_constraint(table_name, schema=schema)
    table = Table(
        table_name, MetaData(),
        *(Column(c["name"], c["type"], nullable=c["nullable"],
                 server_default=None if c.get("default") is None else text(c["default"]))
          for c in columns),
        schema=schema,
    )
    if pk.get("constrained_columns"):
        table.append_constraint(PrimaryKeyConstraint(*pk["constrained_columns"],
                                                     name=pk.get("name")))
    return table


# -- record_phase -----------------------------------------------------------------
@Operations.register_operation("record_phase")
class RecordPhaseOp(_KeyedOp):
    """Record the phase the database reached for one phased attribute."""

    def __init__(
        self, key: str, table_name: str, phase: int, previous: int, schema: str | None = None
    ) -> None:
        self.key, self.table_name, self.schema = key, table_name, schema
        self.phase, self.previous = int(phase), int(previous)

    @classmethod
    def record_phase(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        phase: int,
        previous: int,
        schema: str | None = None,
    ) -> None:
        """Record ``phase`` for ``key``; the reverse records ``previous``."""
        operations.invoke(cls(key, table_name, phase, previous, schema=schema))

    def reverse(self) -> RecordPhaseOp:
        return RecordPhaseOp(self.key, self.table_name, self.previous, self.phase, self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("fourstep_record_phase", self.key, self.table_name, self.phase)


@Operations.implementation_for(RecordPhaseOp)
def _record_phase(operations: Operations, operation: RecordPhaseOp) -> None:
    if operations.get_context().as_sql:
        offline.record_phase(operations, operation.key, operation.table_name, operation.phase)
        return
    record_phase(operations.get_bind(), operation.key, operation.table_name, operation.phase)


# -- backfill ---------------------------------------------------------------------
@Operations.register_operation("backfill")
class BackfillOp(_KeyedOp):
    """Step 3: fill the new column(s) from the old one(s), in committed batches."""

    def __init__(
        self,
        key: str,
        table_name: str,
        old: Sequence[str],
        new: Sequence[str],
        forward_sql: Mapping[str, str] | None = None,
        forward: str | None = None,
        schema: str | None = None,
        batch_size: int | None = None,
        target_ms: float | None = None,
        on_error: str = "stop",
        forward_present_sql: str | None = None,
    ) -> None:
        self.key, self.table_name, self.schema = key, table_name, schema
        self.old, self.new = list(old), list(new)
        self.forward_sql = dict(forward_sql) if forward_sql else None
        self.forward = forward
        self.batch_size, self.target_ms, self.on_error = batch_size, target_ms, on_error
        self.forward_present_sql = forward_present_sql

    @classmethod
    def backfill(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        old: Sequence[str],
        new: Sequence[str],
        forward_sql: Mapping[str, str] | None = None,
        forward: str | None = None,
        schema: str | None = None,
        batch_size: int | None = None,
        target_ms: float | None = None,
        on_error: str = "stop",
        forward_present_sql: str | None = None,
    ) -> None:
        """Backfill ``new = forward(old)`` on ``table_name`` (see module docs).

        ``forward_present_sql``: SQL true where ``forward(old)`` is not empty,
        given some old column is not NULL (``""``: always); autogenerate writes
        it for the built-in transforms. Without it each row's transform is
        evaluated a second time to leave rows with an empty result alone.
        """
        operations.invoke(
            cls(key, table_name, old, new, forward_sql, forward, schema, batch_size,
                target_ms, on_error, forward_present_sql)
        )

    def reverse(self) -> RecordPhaseOp:
        # the backfilled values stay: step 2 reads them, step 1 ignores them
        return RecordPhaseOp(self.key, self.table_name, Phase.READ_NEW, Phase.STOP_READ_OLD,
                             self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("fourstep_backfill", self.key, self.table_name, self.new)

    def forward_transform(self) -> Transform[Any]:
        return frozen_transform(
            "forward", self.new, self.forward_sql, self.forward, self.forward_present_sql
        )


def _external_transaction_message(key: str) -> str:
    return (
        f"{key}: op.backfill commits every batch on its own, but env.py handed Alembic a "
        f"connection that is already inside a transaction (connection.begin() or "
        f"engine.begin() around context.run_migrations()). Open the connection with "
        f"engine.connect() and let context.begin_transaction() manage transactions "
        f"(transaction_per_migration=True is recommended), or run `fourstep backfill "
        f"{key}` before this migration."
    )


@Operations.implementation_for(BackfillOp)
def _backfill(operations: Operations, operation: BackfillOp) -> None:
    context = operations.get_context()
    transform = operation.forward_transform()
    if context.as_sql:
        _offline_backfill(operations, operation, transform)
        return
    if context._in_external_transaction:
        raise ExternalTransactionError(_external_transaction_message(operation.key))
    assert context.connection is not None
    own = _one_connection_only(context.connection)
    with _between_transactions(context) if own else context.autocommit_block():
        connection = context.connection
        assert connection is not None
        engine = connection.engine
        table = operation.reflect(connection)
        spec = PhasedSpec.frozen(
            key=operation.key,
            table=table,
            old=operation.old,
            new=operation.new,
            forward=transform,
            backward=transform,
        )
        options: dict[str, Any] = {"on_error": operation.on_error}
        if operation.batch_size:
            options["batch_size"] = operation.batch_size
        if operation.target_ms is not None:
            options["target_ms"] = operation.target_ms
        if own:
            connection.rollback()  # the reflection's; every batch commits on its own
        report = backfill(connection if own else engine, spec, **options)
        if not report.ok:
            raise BackfillError(_unfinished(operation.key, report))
        log.info("%s: backfilled %d rows in %d batches", operation.key, report.rows_updated,
                 report.batches)
        if own:
            record_phase(connection, operation.key, operation.table_name, Phase.STOP_READ_OLD)
            connection.commit()
        else:
            with engine.begin() as conn:
                record_phase(conn, operation.key, operation.table_name, Phase.STOP_READ_OLD)


def _one_connection_only(connection: Connection) -> bool:
    """The backfill must run on the migration's own connection: a new connection
    of its engine would be another database, or the same connection again.

    SQLite: ``sqlite://`` in memory is a new, empty database per connection
    under ``NullPool`` (test suites that migrate at start-up), and SQLite has one
    writer anyway, so a second connection buys nothing. Pools of one
    connection (``StaticPool``, Flask-SQLAlchemy's choice for ``sqlite://``;
    ``SingletonThreadPool``; ``AssertionPool``) hand out the migration's own
    connection again. Elsewhere the batches run on fresh connections of the
    engine, as before: an async driver's too (a migration under Alembic's async
    template runs in ``run_sync``'s greenlet, where they work).
    """
    pool = connection.engine.pool
    return connection.dialect.name == "sqlite" or isinstance(
        pool, (StaticPool, SingletonThreadPool, AssertionPool)
    )


@contextmanager
def _between_transactions(context: MigrationContext) -> Iterator[None]:
    """The migration's own connection with no transaction open, for a backfill
    that commits batch by batch on it, each batch with its progress row.

    What ``autocommit_block()`` does, without switching the connection to
    AUTOCOMMIT (the batches need transactions of their own): the migration's
    transaction so far is committed, and a new one begun afterwards, in the
    private attribute where Alembic keeps it, as its autocommit block does. The
    lock guard counts it as the commit it is (the revision cannot be rolled back
    past it any more).
    """
    run = locks.active(context)
    counted: AbstractContextManager[None] = run.committing() if run is not None else nullcontext()
    with counted:
        connection = context.connection
        assert connection is not None
        transaction = context._transaction
        if transaction is not None and transaction.is_active:
            transaction.commit()
        elif connection.in_transaction():
            connection.commit()
        try:
            yield
        finally:
            if connection.in_transaction():
                connection.rollback()
            if transaction is not None:
                context._transaction = connection.begin()


def _unfinished(key: str, report: Any) -> str:
    """Why ``op.backfill`` stops the migration, and what to do."""
    if report.skipped_keys:
        return (
            f"{key}: the backfill did not finish: the forward transform failed on "
            f"{len(report.skipped_keys)} row(s) (keys {report.skipped_keys[:10]!r}), "
            f"{report.rows_left} row(s) left. Fix those rows (or the transform) and run the "
            f"migration again: it resumes."
        )
    if getattr(report, "held_elsewhere", 0):
        return (
            f"{key}: another process is running this backfill ({report.held_elsewhere} "
            f"range(s) held elsewhere, {report.rows_left} row(s) left): let it finish, then "
            f"run the migration again; it finds the work done."
        )
    return (
        f"{key}: {report.rows_left} row(s) are still pending after the backfill's runs: a "
        f"writer keeps leaving rows with only the old place written behind it (sync "
        f"triggers missing, or opted out?). Find it, then run the migration again: it "
        f"resumes."
    )


def _offline_backfill(
    operations: Operations, operation: BackfillOp, transform: Transform[Any]
) -> None:
    # committed batches on PostgreSQL, one UPDATE elsewhere (see the offline module)
    offline.backfill(operations, operation, transform)


# -- drop_old / restore_old -------------------------------------------------------
class _OldColumnsOp(_KeyedOp):
    def __init__(
        self,
        key: str,
        table_name: str,
        old: Sequence[Column[Any]],
        new: Sequence[str | Column[Any]],
        forward_sql: Mapping[str, str] | None = None,
        backward_sql: Mapping[str, str] | None = None,
        forward: str | None = None,
        backward: str | None = None,
        schema: str | None = None,
        sync_triggers: bool = False,
        accept_lossy: bool = False,
    ) -> None:
        self.key, self.table_name, self.schema = key, table_name, schema
        self.old = list(old)
        self.new = _column_names(new)
        self.forward_sql = dict(forward_sql) if forward_sql else None
        self.backward_sql = dict(backward_sql) if backward_sql else None
        self.forward, self.backward = forward, backward
        self.sync_triggers, self.accept_lossy = sync_triggers, accept_lossy

    @property
    def old_names(self) -> list[str]:
        return _column_names(self.old)

    def spec(self, table: Table) -> PhasedSpec:
        return PhasedSpec.frozen(
            key=self.key,
            table=table,
            old=self.old_names,
            new=self.new,
            forward=frozen_transform("forward", self.new, self.forward_sql, self.forward),
            backward=frozen_transform("backward", self.old_names, self.backward_sql,
                                      self.backward),
        )

    def triggers(self, conn: Any, table: Table) -> SyncTriggers:
        """The sync triggers of this attribute on ``table`` (reflected)."""
        return placed(conn, from_table(self.key, table, self.old_names, self.new,
                                       self.forward_sql or {}, self.backward_sql or {}))

    def _args(self) -> tuple[Any, ...]:
        return (self.key, self.table_name, self.old, self.new, self.forward_sql,
                self.backward_sql, self.forward, self.backward, self.schema,
                self.sync_triggers, self.accept_lossy)


@Operations.register_operation("drop_old")
class DropOldOp(_OldColumnsOp):
    """Step 4: prove nothing would be lost, then drop the old column(s)."""

    @classmethod
    def drop_old(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        old: Sequence[Column[Any]],
        new: Sequence[str | Column[Any]],
        forward_sql: Mapping[str, str] | None = None,
        backward_sql: Mapping[str, str] | None = None,
        forward: str | None = None,
        backward: str | None = None,
        schema: str | None = None,
        sync_triggers: bool = False,
        accept_lossy: bool = False,
    ) -> None:
        """Drop the old column(s) of ``key`` once no row would lose data.

        The drop refuses while a row is missing or mismatched, and while a row
        would not survive the round trip ``backward(forward(old))`` unless
        ``accept_lossy=True``. The sync triggers (if any) are dropped with the
        column(s), in one lock-safe transaction. ``sync_triggers=True``: the
        reverse (``restore_old``) creates them again.
        """
        operations.invoke(cls(key, table_name, old, new, forward_sql, backward_sql, forward,
                              backward, schema, sync_triggers, accept_lossy))

    def reverse(self) -> RestoreOldOp:
        return RestoreOldOp(*self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_fourstep_old_columns", self.key, self.table_name, self.old_names)


@Operations.register_operation("restore_old")
class RestoreOldOp(_OldColumnsOp):
    """Reverse of step 4: re-add the old column(s), restored from the new ones."""

    @classmethod
    def restore_old(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        old: Sequence[Column[Any]],
        new: Sequence[str | Column[Any]],
        forward_sql: Mapping[str, str] | None = None,
        backward_sql: Mapping[str, str] | None = None,
        forward: str | None = None,
        backward: str | None = None,
        schema: str | None = None,
        sync_triggers: bool = False,
        accept_lossy: bool = False,
    ) -> None:
        """Re-add the old column(s) of ``key`` and fill them with backward(new);
        with ``sync_triggers=True`` create the sync triggers again first."""
        operations.invoke(cls(key, table_name, old, new, forward_sql, backward_sql, forward,
                              backward, schema, sync_triggers, accept_lossy))

    def reverse(self) -> DropOldOp:
        return DropOldOp(*self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_fourstep_old_columns", self.key, self.table_name, self.old_names)


def _keys(keys: Sequence[Any]) -> str:
    return ", ".join(repr(k) for k in keys)


def drop_gate(conn: Any, operation: _OldColumnsOp, table: Table) -> None:
    """Refuse the drop, with counts and sample keys, while a row would lose data."""
    spec = operation.spec(table)
    result = verify(conn, spec, record=False)
    where = f"{', '.join(operation.old_names)} of {table.description}"
    if not result.ok:
        raise DropRefusedError(
            f"{operation.key}: refusing to drop {where}: {result.missing} row(s) have a value "
            f"only in the old place and {result.mismatched} row(s) differ from forward(old) "
            f"without backward(new) giving the old value back (of {result.total}; sample keys "
            f"{_keys(result.sample_keys)}). Nothing was dropped. Run `fourstep backfill "
            f"{operation.key} --repair` (it writes new = forward(old) where the places "
            f"disagree), check with `fourstep verify {operation.key}`, then upgrade again."
        )
    if result.lossy and not operation.accept_lossy:
        raise DropRefusedError(
            f"{operation.key}: refusing to drop {where}: {result.lossy} row(s) hold an old "
            f"value that backward(forward(old)) does not give back, so dropping it loses the "
            f"difference (sample keys {_keys(result.lossy_keys)}: e.g. '' split into NULLs, "
            f"a trailing separator). Nothing was dropped. Fix those values, or accept the "
            f"loss with op.drop_old(..., accept_lossy=True)."
        )
    if result.lossy:
        log.warning("%s: dropping %s with %d lossy row(s) accepted (sample keys %s)",
                    operation.key, where, result.lossy, _keys(result.lossy_keys))
    if result.unstable:
        log.warning(
            "%s: %d row(s) hold a new value that forward(backward(new)) does not give back "
            "(sample keys %s): after a downgrade past this drop, code at step 1 reads them "
            "differently", operation.key, result.unstable, _keys(result.unstable_keys),
        )


@Operations.implementation_for(DropOldOp)
def _drop_old(operations: Operations, operation: DropOldOp) -> None:
    context = operations.get_context()
    if context.as_sql:
        offline.drop_old(operations, operation, lambda: _drop_columns(operations, operation, None))
        return
    conn = operations.get_bind()
    rules_for(conn).hold_writes(conn)
    table = operation.reflect(conn)
    if not any(name in table.c for name in operation.old_names):
        # the DROP committed, the revision did not (MariaDB/MySQL commit DDL at
        # once; a process killed right after it): this run finishes the step
        log.info("%s: %s of %s dropped already (this revision ran before, up to there)",
                 operation.key, ", ".join(operation.old_names), table.description)
        record_phase(conn, operation.key, operation.table_name, Phase.STOP_WRITE_OLD)
        return
    if DropGuard.supported(conn.dialect):
        conn.exec_driver_sql(DropGuard.table_statement(conn.dialect, home_of(conn, table.schema)))
    guard = _install_guard(operations, operation, table)
    try:
        _warn_if_gate_under_lock(conn, operation, table)
        drop_gate(conn, operation, table)
    except BaseException:
        if guard is not None:
            _remove_guard(operations, guard)
        raise

    def ddl() -> None:
        # a write that commits between the gate and the DROP is carried into the new
        # place by the sync triggers, which are dropped in the DROP's own transaction;
        # without them the guard noted its row, compared again under the DROP's lock
        bind = operations.get_bind()
        try:
            # the indexes DROP COLUMN takes along, remembered for the restore
            found = indexes.on_old_columns(bind, table, operation.old_names)
            indexes.record(bind, operation.key, table, found)
            _drop_columns(operations, operation, operation.triggers(bind, table), guard, table,
                          [*_marks_statements(bind, operation, table),
                           *indexes.drop_statements(bind, table, found)])
        except BaseException as exc:
            # a lock timeout is retried (the guard is still wanted then)
            if guard is not None and not locks.lock_error(exc):
                _remove_guard(operations, guard)
            raise
        record_phase(bind, operation.key, operation.table_name, Phase.STOP_WRITE_OLD)

    run = locks.active(context)
    if run is not None and run.top_level():
        # the gates of the drops that follow run before this DDL (module docs of locks)
        run.defer(f"{operation.key}: DROP COLUMN {', '.join(operation.old_names)}", ddl)
    else:
        ddl()


def _warn_if_gate_under_lock(conn: Any, operation: _OldColumnsOp, table: Table) -> None:
    """The gate scans the table: say so when this revision already holds its
    ACCESS EXCLUSIVE lock (an earlier operation), which stalls every query meanwhile."""
    if _holds_exclusive_lock(conn, table):
        log.warning(
            "%s: the drop gate scans %s while this revision holds its ACCESS EXCLUSIVE lock "
            "(taken by an operation before op.drop_old): every query on the table waits for "
            "the scan. Put the op.drop_old operations first in the revision.",
            operation.key, table.description,
        )


def _marks_statements(conn: Any, operation: _OldColumnsOp, table: Table) -> list[str]:
    """Dropping the write marks (and forgetting them), when the table has them."""
    if not marks_present(conn, operation.key, table.name, table.schema):
        return []
    marks = WriteMarks.of(conn, operation.key, table, operation.old_names, operation.new)
    return marks.drop(conn.dialect) + marks.clear(conn.dialect)


def _install_guard(
    operations: Operations, operation: _OldColumnsOp, table: Table
) -> DropGuard | None:
    """Without sync triggers on PostgreSQL and MariaDB/MySQL: commit a guard
    before the gate runs."""
    context = operations.get_context()
    conn = operations.get_bind()
    if not DropGuard.supported(conn.dialect):
        return None
    if triggers_present(conn, operation.key, table.name, table.schema):
        return None
    if conn.dialect.name != "postgresql":
        # DDL commits at once there, on the migration's connection and under its
        # short lock_wait_timeout (alembic/locks.py)
        guard = DropGuard.of(conn, operation.key, table, operation.old_names)
        for statement in guard.create(conn.dialect):
            conn.exec_driver_sql(statement)
        return guard
    if context._in_external_transaction:
        log.warning(
            "%s: without sync triggers, and inside a transaction env.py opened, the drop "
            "cannot guard against an old-only write that commits between its gate and the "
            "DROP", operation.key,
        )
        return None
    guard = DropGuard.of(conn, operation.key, table, operation.old_names)
    statements = guard.create(conn.dialect)
    # committed before the gate starts, so that every writer's transaction sees it;
    # whatever the revision did before is committed with it
    with context.autocommit_block():
        connection = context.connection
        assert connection is not None
        with connection.engine.begin() as guard_conn:
            def install() -> None:
                for statement in statements:
                    guard_conn.exec_driver_sql(statement)

            run_ddl(guard_conn, f"{operation.key}: drop guard", install,
                    lock_policy(operations))
    return guard


def _remove_guard(operations: Operations, guard: DropGuard) -> None:
    """Best effort, after a refused or failed drop.

    The migration's transaction holds the gate's read locks: it is ended first
    (since the guard was installed it did nothing but read), then the guard is
    dropped on a connection of its own.
    """
    context = operations.get_context()
    try:
        bind = operations.get_bind()
        if bind.dialect.name != "postgresql":
            # DDL commits at once there: nothing of the revision's to end first
            for statement in guard.drop(bind.dialect):
                bind.exec_driver_sql(statement)
            return
        with context.autocommit_block():
            connection = context.connection
            assert connection is not None
            with connection.engine.begin() as conn:
                def remove() -> None:
                    for statement in guard.drop(conn.dialect):
                        conn.exec_driver_sql(statement)

                run_ddl(conn, f"{guard.key}: drop guard", remove, lock_policy(operations))
    except Exception:  # the refusal is what the user must see
        log.warning("%s: could not remove the drop guard trigger; the next successful "
                    "drop removes it", guard.key, exc_info=True)


def _recheck_guarded(conn: Any, operation: _OldColumnsOp, table: Table, guard: DropGuard) -> None:
    """Under the DROP's lock: the rows written while the gate ran, compared again."""
    from ..verify import verify_rows

    result = verify_rows(
        conn, operation.spec(table), guard.written(table, conn.dialect), synced=False
    )
    lossy = result.lossy if not operation.accept_lossy else 0
    if result.ok and not lossy:
        return
    raise DropRefusedError(
        f"{operation.key}: refusing to drop {', '.join(operation.old_names)} of "
        f"{table.description}: while the drop gate ran, writes outside the ORM (no sync "
        f"triggers) left {result.missing} row(s) with a value only in the old place, "
        f"{result.mismatched} mismatched and {lossy} lossy (sample keys "
        f"{_keys(result.sample_keys + result.lossy_keys)}). Nothing was dropped. Run "
        f"`fourstep backfill {operation.key} --repair`, then upgrade again."
    )


def _drop_columns(
    operations: Operations,
    operation: _OldColumnsOp,
    triggers: SyncTriggers | None,
    guard: DropGuard | None = None,
    table: Table | None = None,
    also: Sequence[str] = (),
) -> None:
    """Drop the sync triggers (or the guard), the statements ``also`` (the write
    marks) and the old column(s), in one lock-safe transaction."""
    context = operations.get_context()
    dialect = context.dialect
    drop_triggers = triggers.drop(dialect) if triggers is not None else []
    drop_triggers = [*drop_triggers, *also]
    if dialect.name == "sqlite":
        # SQLite's DROP COLUMN refuses indexed, unique, view- or trigger-referenced
        # columns: batch mode copies the table instead
        # (and, like PostgreSQL, drop the indexes on them along with them)
        from sqlalchemy import inspect

        names = set(operation.old_names)
        indexes = []
        if not context.as_sql:
            conn = operations.get_bind()
            for statement in drop_triggers:
                conn.exec_driver_sql(statement)
            inspector = inspect(conn)
            indexes = [
                ix["name"]
                for ix in inspector.get_indexes(operation.table_name, schema=operation.schema)
                if ix["name"] and names.intersection(c for c in ix["column_names"] if c)
            ]
        _clear_batch_copy(operations, operation.table_name)
        with operations.batch_alter_table(operation.table_name, schema=operation.schema) as batch:
            for index in indexes:
                batch.drop_index(index)
            for name in operation.old_names:
                batch.drop_column(name)
        return

    def drop() -> None:
        bind = operations.get_bind()
        if guard is not None and table is not None:
            # the DROP's own lock first: from here on no write can slip in (on
            # MariaDB/MySQL the caller holds the table's write lock already)
            if dialect.name == "postgresql":
                bind.exec_driver_sql(
                    f"LOCK TABLE {guard.table(dialect)} IN ACCESS EXCLUSIVE MODE"
                )
            _recheck_guarded(bind, operation, table, guard)
            for statement in guard.drop(dialect):
                bind.exec_driver_sql(statement)
        for statement in drop_triggers:
            bind.exec_driver_sql(statement)
        for name in operation.old_names:
            operations.drop_column(operation.table_name, name, schema=operation.schema)

    if context.as_sql:
        for name in operation.old_names:
            operations.drop_column(operation.table_name, name, schema=operation.schema)
        return
    if dialect.name in ("mysql", "mariadb"):
        # DDL commits at once there: without the table's write lock an old-only
        # write between DROP TRIGGER and DROP COLUMN would be carried nowhere
        bind = operations.get_bind()
        prep = dialect.identifier_preparer
        quoted = prep.quote(operation.table_name)
        if operation.schema:
            quoted = f"{prep.quote_schema(operation.schema)}.{quoted}"
        # every table used while the lock is held must be locked with it: the
        # guard's, which the comparison under the lock reads and the guard's
        # removal clears, and the write marks' when they are forgotten here
        also_locked = [guard.guard_table(dialect)] if guard is not None else []
        if any(MARKS_TABLE in statement for statement in drop_triggers):
            also_locked.append(_home_quoted(dialect, operation.schema, MARKS_TABLE))
        bind.exec_driver_sql(
            "LOCK TABLES " + ", ".join(f"{t} WRITE" for t in [quoted, *also_locked])
        )
        try:
            drop()
        finally:
            bind.exec_driver_sql("UNLOCK TABLES")
        return
    what = f"DROP COLUMN {', '.join(operation.old_names)}"
    run_ddl(operations.get_bind(), f"{operation.key}: {what}", drop, lock_policy(operations))


def _home_quoted(dialect: Any, schema: str | None, name: str) -> str:
    """``name`` quoted, in ``schema`` when there is one."""
    prep = dialect.identifier_preparer
    quoted = str(prep.quote(name))
    return f"{prep.quote_schema(schema)}.{quoted}" if schema else quoted


def _clear_batch_copy(operations: Operations, table_name: str) -> None:
    """SQLite: the copy a batch operation killed midway left behind would fail
    every later run with "table _alembic_tmp_... already exists". A revision is
    one transaction now (alembic/locks.py), so a kill leaves no copy; this
    clears one left by a run before that (pysqlite ran the DDL before a
    revision's first DML one statement at a time), or outside the guard."""
    if operations.get_context().as_sql:
        return
    from sqlalchemy import inspect

    leftover = f"_alembic_tmp_{table_name}"
    conn = operations.get_bind()
    if inspect(conn).has_table(leftover):
        log.warning("dropping %s, left behind by a table copy that was stopped", leftover)
        conn.exec_driver_sql(f"DROP TABLE {conn.dialect.identifier_preparer.quote(leftover)}")


@Operations.implementation_for(RestoreOldOp)
def _restore_old(operations: Operations, operation: RestoreOldOp) -> None:
    context = operations.get_context()
    if context.as_sql:
        offline.restore_old(operations, operation)
        return
    present: set[str] = set()
    if not context.as_sql:
        from sqlalchemy import inspect

        # a restore killed or failed after its columns were added: run it again
        present = {
            c["name"]
            for c in inspect(operations.get_bind()).get_columns(
                operation.table_name, schema=operation.schema
            )
        }
    for col in operation.old:
        if col.name in present:
            log.info("%s: %s is there already (an earlier restore); restoring its values",
                     operation.key, col.name)
            continue
        # a fresh Column per run; nullable, as step 1 relaxed it
        restored = Column(col.name, col.type, nullable=True, server_default=col.server_default)
        if context.dialect.name == "sqlite" or context.as_sql:
            operations.add_column(operation.table_name, restored, schema=operation.schema)
        else:
            run_ddl(operations.get_bind(), f"{operation.key}: ADD COLUMN {col.name}",
                    lambda c=restored: operations.add_column(  # type: ignore[misc]
                        operation.table_name, c, schema=operation.schema),
                    lock_policy(operations))
    if context._in_external_transaction:
        raise ExternalTransactionError(_external_transaction_message(operation.key))
    if operation.sync_triggers:
        from .trigger_ops import run_statements, sync_triggers_enabled

        if sync_triggers_enabled(operations):
            # before the restore: a step-4 writer meanwhile gets its old place too
            bind = operations.get_bind()
            reflected = operation.reflect(bind)
            if operation.forward_sql and operation.backward_sql:
                triggers = operation.triggers(bind, reflected)
                run_statements(operations, operation.key, "create sync triggers",
                               triggers.create(context.dialect))
            else:  # Python-only transforms: the write marks they had
                marks = WriteMarks.of(bind, operation.key, reflected, operation.old_names,
                                      operation.new)
                run_statements(operations, operation.key, "create write marks",
                               marks.create(context.dialect))
    assert context.connection is not None
    own = _one_connection_only(context.connection)
    if own:  # the values, on the migration's own connection (see _one_connection_only)
        with _between_transactions(context):
            connection = context.connection
            assert connection is not None
            table = operation.reflect(connection)
            connection.rollback()  # the reflection's; every batch commits on its own
            _restore_values(operation, connection, table)
    with context.autocommit_block():
        connection = context.connection
        assert connection is not None
        table = operation.reflect(connection)
        if not own:
            _restore_values(operation, connection.engine, table)
        # the indexes the drop took along, built again (concurrently on PostgreSQL)
        found = indexes.recall(connection, operation.key)
        if found:
            indexes.rebuild(connection, table, found)
            indexes.forget(connection, operation.key)
        if not own:
            with connection.engine.begin() as conn:
                record_phase(conn, operation.key, operation.table_name, Phase.STOP_READ_OLD)
    if own:  # in the migration's transaction: a new connection is not this database
        record_phase(operations.get_bind(), operation.key, operation.table_name,
                     Phase.STOP_READ_OLD)


def _restore_values(operation: RestoreOldOp, bind: Engine | Connection, table: Table) -> None:
    """Fill the re-added old column(s) with backward(new), in committed batches."""
    spec = operation.spec(table).reversed()
    try:
        report = backfill(bind, spec)
    except BackfillError as exc:
        raise BackfillError(_restore_failed(operation, str(exc))) from exc
    if not report.ok:
        raise BackfillError(
            f"{operation.key}: restoring the old column(s) did not finish "
            f"({report.rows_left} rows left, skipped {report.skipped_keys[:10]!r})"
        )


def _restore_failed(operation: _OldColumnsOp, detail: str) -> str:
    """The engine's message about a failed row, told as the restore it is (the
    engine speaks of a forward transform and of options the op does not take)."""
    detail = detail.split(" Nothing of this batch was written.")[0]
    detail = detail.replace("the forward transform", "the backward transform", 1)
    prefix = f"{operation.key}: "
    detail = detail[len(prefix):] if detail.startswith(prefix) else detail
    return (
        f"{operation.key}: restoring {', '.join(operation.old_names)} of "
        f"{operation.table_name} from the new column(s) failed: {detail}. The old column(s) "
        f"are back and every other row is restored; nothing of the failing batch was "
        f"written. Fix the new value(s) of those rows (or the backward transform of the "
        f"revision), then run the downgrade again: it carries on from where it stopped."
    )


# -- relax / restore NOT NULL -------------------------------------------------------
@Operations.register_operation("relax_old_not_null")
class RelaxOldNotNullOp(_KeyedOp):
    """Step 1: the old column(s) become nullable so step 4 can stop writing them."""

    def __init__(
        self,
        key: str,
        table_name: str,
        columns: Sequence[str],
        existing_type: TypeEngine[Any] | None = None,
        schema: str | None = None,
    ) -> None:
        self.key, self.table_name, self.schema = key, table_name, schema
        self.columns = list(columns)
        self.existing_type = existing_type

    @classmethod
    def relax_old_not_null(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        columns: Sequence[str],
        existing_type: TypeEngine[Any] | None = None,
        schema: str | None = None,
    ) -> None:
        """ALTER the old column(s) of ``key`` to NULL-able, lock-safely."""
        operations.invoke(cls(key, table_name, columns, existing_type, schema))

    def reverse(self) -> RestoreOldNotNullOp:
        return RestoreOldNotNullOp(self.key, self.table_name, self.columns, self.existing_type,
                                   self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("fourstep_relax_old_not_null", self.key, self.table_name, self.columns)


@Operations.register_operation("restore_old_not_null")
class RestoreOldNotNullOp(RelaxOldNotNullOp):
    """Reverse of step 1: the old column(s) NOT NULL again (refused while NULLs exist)."""

    @classmethod
    def restore_old_not_null(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        columns: Sequence[str],
        existing_type: TypeEngine[Any] | None = None,
        schema: str | None = None,
    ) -> None:
        """Make the old column(s) of ``key`` NOT NULL again."""
        operations.invoke(cls(key, table_name, columns, existing_type, schema))

    def reverse(self) -> RelaxOldNotNullOp:  # type: ignore[override]
        return RelaxOldNotNullOp(self.key, self.table_name, self.columns, self.existing_type,
                                 self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("fourstep_restore_old_not_null", self.key, self.table_name, self.columns)


def _alter_nullable(operations: Operations, operation: RelaxOldNotNullOp, nullable: bool) -> None:
    context = operations.get_context()
    if context.as_sql:
        offline.alter_nullable(operations, operation, nullable)
        return
    if context.dialect.name == "sqlite":
        if not context.as_sql:
            rules_for(operations.get_bind()).hold_writes(operations.get_bind())
        _clear_batch_copy(operations, operation.table_name)
        with operations.batch_alter_table(operation.table_name, schema=operation.schema) as batch:
            for name in operation.columns:
                batch.alter_column(name, nullable=nullable, existing_type=operation.existing_type)
        return
    for name in operation.columns:
        def alter(n: str = name) -> None:
            operations.alter_column(operation.table_name, n, nullable=nullable,
                                    existing_type=operation.existing_type,
                                    schema=operation.schema)
        if not nullable and context.dialect.name == "postgresql":
            _set_not_null_postgresql(operations, operation, name)
        else:
            run_ddl(operations.get_bind(), f"{operation.key}: ALTER COLUMN {name}", alter,
                    lock_policy(operations))


def _set_not_null_postgresql(
    operations: Operations, operation: RelaxOldNotNullOp, name: str
) -> None:
    """SET NOT NULL without scanning the table under ACCESS EXCLUSIVE.

    ``CHECK (col IS NOT NULL) NOT VALID`` (instant) is committed first; then
    ``VALIDATE CONSTRAINT`` scans in a transaction of its own, under SHARE
    UPDATE EXCLUSIVE (reads and writes go on, and no lock the revision took
    before is held meanwhile); then ``SET NOT NULL``, which PostgreSQL 12+
    proves from the valid check without a scan, and the check is dropped. Run
    again after it was stopped, it finds its check and carries on. A NULL that
    arrives before the validation makes it refuse, with the count, and the
    check is removed.
    """
    context = operations.get_context()
    conn = operations.get_bind()
    policy = lock_policy(operations)
    prep = conn.dialect.identifier_preparer
    table = prep.quote(operation.table_name)
    if operation.schema:
        table = f"{prep.quote_schema(operation.schema)}.{table}"
    column = prep.quote(name)
    check_name = f"fourstep_nn_{operation.table_name}_{name}"[:63]
    check = prep.quote(check_name)
    what = f"{operation.key}: SET NOT NULL {name}"
    present = conn.execute(
        text("SELECT 1 FROM pg_constraint WHERE conname = :name AND conrelid = to_regclass(:t)"),
        {"name": check_name, "t": table},
    ).first()
    if present is None:
        run_ddl(conn, what, lambda: conn.exec_driver_sql(
            f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID"
        ), policy)
    failed: DBAPIError | None = None
    with context.autocommit_block():
        try:
            operations.get_bind().exec_driver_sql(
                f"ALTER TABLE {table} VALIDATE CONSTRAINT {check}")
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "23514":  # check_violation
                raise
            failed = exc
    conn = operations.get_bind()
    if failed is not None:
        run_ddl(conn, what, lambda: conn.exec_driver_sql(
            f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check}"), policy)
        raise FourStepError(
            f"{operation.key}: cannot make {name} of {operation.table_name} NOT NULL again: "
            f"rows holding NULL there were written while the downgrade ran (step-4 code "
            f"still running?). Nothing was changed. Deploy the previous release's code "
            f"first, fill those rows, and downgrade again."
        ) from failed
    run_ddl(conn, what, lambda: conn.exec_driver_sql(
        f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL"), policy)
    run_ddl(conn, what, lambda: conn.exec_driver_sql(
        f"ALTER TABLE {table} DROP CONSTRAINT {check}"), policy)


def _holds_exclusive_lock(conn: Any, table: Table) -> bool:
    """PostgreSQL: this transaction holds ``table``'s ACCESS EXCLUSIVE lock already."""
    if conn.dialect.name != "postgresql":
        return False
    held = conn.execute(
        select(func.count()).select_from(text("pg_locks")).where(
            text("pid = pg_backend_pid() AND mode = 'AccessExclusiveLock' "
                 "AND relation = to_regclass(:table)")
        ),
        {"table": indexes.regclass(conn, table)},
    ).scalar_one()
    return bool(held)


@Operations.implementation_for(RelaxOldNotNullOp)
def _relax(operations: Operations, operation: RelaxOldNotNullOp) -> None:
    _alter_nullable(operations, operation, nullable=True)


@Operations.implementation_for(RestoreOldNotNullOp)
def _restore_not_null(operations: Operations, operation: RestoreOldNotNullOp) -> None:
    context = operations.get_context()
    if not context.as_sql:
        conn = operations.get_bind()
        table = operation.reflect(conn)
        if _holds_exclusive_lock(conn, table):
            # no scan under that lock (an earlier operation of this revision took it):
            # the validation, in a transaction of its own, refuses instead
            _alter_nullable(operations, operation, nullable=False)
            return
        nulls = conn.execute(
            select(func.count()).select_from(table).where(
                or_(*(table.c[n].is_(None) for n in operation.columns))
            )
        ).scalar_one()
        if nulls:
            raise FourStepError(
                f"{operation.key}: cannot make {', '.join(operation.columns)} NOT NULL again: "
                f"{nulls} row(s) hold NULL there (written at step 4, or never set). Fill them, "
                f"or keep the column nullable."
            )
    _alter_nullable(operations, operation, nullable=False)
