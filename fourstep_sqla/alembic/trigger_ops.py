"""Alembic operations for the sync triggers (see :mod:`fourstep_sqla.triggers`).

``op.create_sync_triggers(key, table_name, old, new, forward_sql, backward_sql)``
    step 1, after the new columns: the database keeps old and new in step for
    every writer from now until the drop. Reverse: ``op.drop_sync_triggers``.
``op.drop_sync_triggers(...)``
    the same arguments; drops what exists. ``op.drop_old`` drops the triggers
    itself, in the same transaction as the old column(s).

``old`` and ``new`` are column names or ``sa.Column`` objects; online the
table is reflected for the types, offline (``--sql``) the columns' types are
needed on PostgreSQL (the trigger's helper functions are typed), so
autogenerate writes ``sa.Column`` objects. On PostgreSQL every statement runs
with a short ``lock_timeout`` and bounded retries (``CREATE TRIGGER`` takes a
lock that blocks writes while it waits).

``op.create_write_marks(key, table_name, old, new)`` / ``op.drop_write_marks``
    the same for a phased attribute whose transforms have no SQL form: the
    write marks of :mod:`fourstep_sqla.marks`, which let the drop gate tell a
    step-4 write from a stale row.

``context.configure(fourstep_sync_triggers=False)`` in ``env.py`` opts out of
both: autogenerate writes no such operation and an existing one does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations
from sqlalchemy import Column

from ..ddl import run_ddl
from ..errors import SyncTriggerError
from ..marks import WriteMarks
from ..triggers import SyncTriggers, from_table, placed, trigger_names, triggers_on
from .ops import lock_policy, reflect_columns

__all__ = [
    "CreateSyncTriggersOp",
    "CreateWriteMarksOp",
    "DropSyncTriggersOp",
    "DropWriteMarksOp",
    "sync_triggers_enabled",
]

log = logging.getLogger("fourstep_sqla.alembic")


def sync_triggers_enabled(operations_or_opts: Any) -> bool:
    """``context.configure(fourstep_sync_triggers=...)``, default True."""
    opts: Any = operations_or_opts
    if not isinstance(opts, Mapping):
        opts = getattr(operations_or_opts, "opts", None)
        if opts is None:
            opts = operations_or_opts.get_context().opts
    return bool(opts.get("fourstep_sync_triggers", True))


def _names(columns: Sequence[Column[Any] | str]) -> list[str]:
    return [c if isinstance(c, str) else c.name for c in columns]


@Operations.register_operation("create_sync_triggers")
class CreateSyncTriggersOp(MigrateOperation):
    """Create the sync triggers of one phased attribute."""

    def __init__(
        self,
        key: str,
        table_name: str,
        old: Sequence[Column[Any] | str],
        new: Sequence[Column[Any] | str],
        forward_sql: Mapping[str, str],
        backward_sql: Mapping[str, str],
        schema: str | None = None,
        catch_errors: bool = True,
    ) -> None:
        self.key, self.table_name, self.schema = key, table_name, schema
        self.old, self.new = list(old), list(new)
        self.forward_sql, self.backward_sql = dict(forward_sql), dict(backward_sql)
        self.catch_errors = catch_errors

    @classmethod
    def create_sync_triggers(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        old: Sequence[Column[Any] | str],
        new: Sequence[Column[Any] | str],
        forward_sql: Mapping[str, str],
        backward_sql: Mapping[str, str],
        schema: str | None = None,
        catch_errors: bool = True,
    ) -> None:
        """Create the sync triggers of ``key`` on ``table_name`` (see module docs).

        ``catch_errors=False``: the transforms never raise (autogenerate says so
        for the built-in identity, split and join), so the triggers need no
        per-row error handler, which costs about 40% of a bulk UPDATE on
        PostgreSQL.
        """
        operations.invoke(cls(key, table_name, old, new, forward_sql, backward_sql, schema,
                              catch_errors))

    def _args(self) -> tuple[Any, ...]:
        return (self.key, self.table_name, self.old, self.new, self.forward_sql,
                self.backward_sql, self.schema, self.catch_errors)

    def reverse(self) -> MigrateOperation:
        return DropSyncTriggersOp(*self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_fourstep_sync_triggers", self.key, self.table_name)

    def triggers(self, operations: Operations) -> SyncTriggers | None:
        """The triggers, with the column types reflected (online) or given (offline);
        None offline on SQLite, whose triggers need the table's primary key."""
        context = operations.get_context()
        if not context.as_sql:
            conn = operations.get_bind()
            table = reflect_columns(conn, self.table_name, self.schema)
            return placed(conn, from_table(
                self.key, table, _names(self.old), _names(self.new), self.forward_sql,
                self.backward_sql, self.catch_errors,
            ))
        untyped = [c for c in (*self.old, *self.new) if isinstance(c, str)]
        if untyped and context.dialect.name == "postgresql":
            raise SyncTriggerError(
                f"{self.key}: offline (--sql) the sync triggers need the column types on "
                f"PostgreSQL: pass old=[sa.Column(...)] and new=[sa.Column(...)] "
                f"(autogenerate does) instead of the names {', '.join(map(str, untyped))}"
            )
        if context.dialect.name == "sqlite":
            context.impl.static_output(
                f"-- fourstep: the SQLite sync triggers of {self.key} are created and "
                f"dropped online only (they look up the table's primary key)"
            )
            return None
        return SyncTriggers(
            key=self.key,
            table_name=self.table_name,
            schema=self.schema,
            old=tuple(c if isinstance(c, Column) else Column(c) for c in self.old),
            new=tuple(c if isinstance(c, Column) else Column(c) for c in self.new),
            forward_sql=self.forward_sql,
            backward_sql=self.backward_sql,
            catch_errors=self.catch_errors,
        )


@Operations.register_operation("drop_sync_triggers")
class DropSyncTriggersOp(CreateSyncTriggersOp):
    """Drop the sync triggers of one phased attribute (those that exist)."""

    @classmethod
    def drop_sync_triggers(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        old: Sequence[Column[Any] | str],
        new: Sequence[Column[Any] | str],
        forward_sql: Mapping[str, str],
        backward_sql: Mapping[str, str],
        schema: str | None = None,
        catch_errors: bool = True,
    ) -> None:
        """Drop the sync triggers of ``key`` on ``table_name``."""
        operations.invoke(cls(key, table_name, old, new, forward_sql, backward_sql, schema,
                              catch_errors))

    def reverse(self) -> MigrateOperation:
        return CreateSyncTriggersOp(*self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_fourstep_sync_triggers", self.key, self.table_name)


def run_statements(operations: Operations, key: str, what: str, statements: list[str]) -> None:
    """Run trigger DDL: lock-safely online, as script text offline."""
    context = operations.get_context()
    if context.as_sql:
        mysql = context.dialect.name in ("mysql", "mariadb")
        if mysql:  # trigger bodies hold ';': the mysql client needs another delimiter
            context.impl.static_output("DELIMITER //")
        for statement in statements:
            if mysql:
                context.impl.static_output(f"{statement} //")
            else:
                context.impl.static_output(f"{statement};")
        if mysql:
            context.impl.static_output("DELIMITER ;")
        return
    conn = operations.get_bind()

    def go() -> None:
        for statement in statements:
            conn.exec_driver_sql(statement)

    run_ddl(conn, f"{key}: {what}", go, lock_policy(operations))


@Operations.implementation_for(CreateSyncTriggersOp)
def _create_sync_triggers(operations: Operations, operation: CreateSyncTriggersOp) -> None:
    if not sync_triggers_enabled(operations):
        log.info("%s: sync triggers opted out (fourstep_sync_triggers=False)", operation.key)
        return
    triggers = operation.triggers(operations)
    if triggers is not None:
        run_statements(operations, operation.key, "create sync triggers",
                       triggers.create(operations.get_context().dialect))


def _any_trigger_present(operations: Operations, operation: DropSyncTriggersOp) -> bool:
    """Whether any sync trigger of the operation's key is still on its table (a
    revision stopped between two ``DROP TRIGGER`` left the others behind:
    MariaDB/MySQL commit each at once)."""
    conn = operations.get_bind()
    names = set(trigger_names(operation.key, conn.dialect.name))
    return bool(names & triggers_on(conn, operation.table_name, operation.schema))


@Operations.implementation_for(DropSyncTriggersOp)
def _drop_sync_triggers(operations: Operations, operation: DropSyncTriggersOp) -> None:
    if not operations.get_context().as_sql and not _any_trigger_present(operations, operation):
        # gone already: a revision run again after it was stopped past this point
        # (MariaDB/MySQL commit DDL at once: the new columns may be gone too)
        log.info("%s: no sync triggers on %s; nothing to drop", operation.key,
                 operation.table_name)
        return
    triggers = operation.triggers(operations)
    if triggers is not None:
        run_statements(operations, operation.key, "drop sync triggers",
                       triggers.drop(operations.get_context().dialect))


# -- write marks (Python-only transforms) ----------------------------------------------------
@Operations.register_operation("create_write_marks")
class CreateWriteMarksOp(MigrateOperation):
    """Create the write marks of a phased attribute whose transforms have no SQL
    form (see :mod:`fourstep_sqla.marks`)."""

    def __init__(
        self,
        key: str,
        table_name: str,
        old: Sequence[Column[Any] | str],
        new: Sequence[Column[Any] | str],
        schema: str | None = None,
    ) -> None:
        self.key, self.table_name, self.schema = key, table_name, schema
        self.old, self.new = list(old), list(new)

    @classmethod
    def create_write_marks(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        old: Sequence[Column[Any] | str],
        new: Sequence[Column[Any] | str],
        schema: str | None = None,
    ) -> None:
        """Note, per row, which place was written last on its own, until the drop."""
        operations.invoke(cls(key, table_name, old, new, schema))

    def _args(self) -> tuple[Any, ...]:
        return (self.key, self.table_name, self.old, self.new, self.schema)

    def reverse(self) -> MigrateOperation:
        return DropWriteMarksOp(*self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_fourstep_write_marks", self.key, self.table_name)

    def marks(self, operations: Operations) -> WriteMarks | None:
        """The marks over the reflected table (online); None offline on SQLite."""
        context = operations.get_context()
        if not context.as_sql:
            conn = operations.get_bind()
            table = reflect_columns(conn, self.table_name, self.schema)
            return WriteMarks.of(conn, self.key, table, _names(self.old), _names(self.new))
        if context.dialect.name == "sqlite":
            context.impl.static_output(
                f"-- fourstep: the SQLite write marks of {self.key} are created and dropped "
                f"online only (they look up the table's primary key)"
            )
            return None
        raise SyncTriggerError(
            f"{self.key}: the write marks are created online only: they need the table's "
            f"primary key and column types"
        )


@Operations.register_operation("drop_write_marks")
class DropWriteMarksOp(CreateWriteMarksOp):
    """Drop the write marks of a phased attribute (those that exist)."""

    @classmethod
    def drop_write_marks(
        cls,
        operations: Operations,
        key: str,
        table_name: str,
        old: Sequence[Column[Any] | str],
        new: Sequence[Column[Any] | str],
        schema: str | None = None,
    ) -> None:
        """Drop the write marks of ``key`` on ``table_name`` and forget its marks."""
        operations.invoke(cls(key, table_name, old, new, schema))

    def reverse(self) -> MigrateOperation:
        return CreateWriteMarksOp(*self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_fourstep_write_marks", self.key, self.table_name)


@Operations.implementation_for(CreateWriteMarksOp)
def _create_write_marks(operations: Operations, operation: CreateWriteMarksOp) -> None:
    if not sync_triggers_enabled(operations):
        log.info("%s: write marks opted out (fourstep_sync_triggers=False)", operation.key)
        return
    marks = operation.marks(operations)
    if marks is not None:
        run_statements(operations, operation.key, "create write marks",
                       marks.create(operations.get_context().dialect))


@Operations.implementation_for(DropWriteMarksOp)
def _drop_write_marks(operations: Operations, operation: DropWriteMarksOp) -> None:
    marks = operation.marks(operations)
    if marks is not None:
        dialect = operations.get_context().dialect
        run_statements(operations, operation.key, "drop write marks",
                       marks.drop(dialect) + marks.clear(dialect))
