"""What differs per database for the backfill and verify engine, chosen once.

The engine (:mod:`fourstep_sqla.runner`, :mod:`fourstep_sqla.jobs`) is written
once; everything that depends on the database lives in one object per dialect,
picked by :func:`rules_for` from a connection:

- the session set-up of a batch connection (PostgreSQL: ``lock_timeout`` below
  ``deadlock_timeout``, custom plans, asynchronous commit) and its undoing;
- how a batch transaction begins (SQLite: ``BEGIN IMMEDIATE``);
- which database errors are transient (retry), a statement timeout (halve the
  batch) or caused by a row's value (find the row, ``on_error`` applies);
- whether several workers can share a run's ranges (not on SQLite: one writer);
- how a run's planning waits for another process planning the same run;
- the identity of a run's new columns, where the database gives one
  (PostgreSQL: a re-added column never gets its old ``attnum`` back);
- how a Python-computed batch is written back in one statement;
- how a column is added to a state table an older version created.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Text,
    and_,
    bindparam,
    column,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, PendingRollbackError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import Column, Table
from sqlalchemy.types import Enum, String, TypeEngine

__all__ = ["DialectRules", "rules_for"]

log = logging.getLogger("fourstep_sqla.backfill")

#: an UPDATE's rows, as (match..., guard..., set...) value tuples
Rows = Sequence[tuple[Any, ...]]


def first_line(exc: DBAPIError) -> str:
    """The database's own message, first line only."""
    return str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__


def settle(conn: Connection, reset: Callable[[], None]) -> None:
    """Undo a session's settings with ``reset()``, best effort: on a connection the
    server closed (a terminated backend, a failover) there is nothing left to undo,
    and the error that ended the work must be the one the caller sees, not a
    ``PendingRollbackError`` from this cleanup."""
    if conn.closed or conn.invalidated:
        return
    try:
        conn.rollback()  # also clears a transaction a failed COMMIT left inactive
        reset()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.debug("connection lost; its session settings went with it", exc_info=True)
    except PendingRollbackError:
        log.debug("connection lost; its session settings went with it", exc_info=True)


class DialectRules:
    """The rules of a database the engine does not know specially."""

    name = "default"
    #: several workers (threads or processes) may share one run's ranges
    shares_ranges = True
    #: Python mode reads the next batch on a second connection while writing
    reads_ahead = False
    #: a failed statement aborts the transaction (reads that may fail need a savepoint)
    error_aborts_transaction = False
    #: errors (``orig.args[0]``) worth a retry: lock wait timeout, deadlock
    retry_codes: frozenset[int] = frozenset({1205, 1213})

    # -- session ------------------------------------------------------------------
    def setup_session(self, conn: Connection, lock_timeout_ms: float | None) -> None:
        """Prepare a connection for batches (undone by :meth:`teardown_session`)."""

    def teardown_session(self, conn: Connection) -> None:
        """Undo :meth:`setup_session` before the connection goes back to its pool."""

    def begin_batch(self, conn: Connection) -> None:
        """Begin the transaction of one batch."""
        conn.begin()

    def begin_planning(self, conn: Connection, wait_seconds: float | None) -> None:
        """Begin the transaction that plans or resumes a run. Its first statement
        locks the attribute's state row, which another process planning the same
        run holds for as long as its planning takes (a count on a big table with
        a non-integer key): wait for it, up to ``wait_seconds`` (None: as long as
        it takes), rather than for the batches' short lock timeout."""
        self.begin_batch(conn)

    def place_identity(
        self, conn: Connection, table: Table, columns: Sequence[Column[Any]]
    ) -> str | None:
        """What tells these columns from columns of the same names dropped and
        added again since, or None where the database gives nothing such."""
        return None

    def add_column(self, conn: Connection, table: Table, column: Column[Any]) -> None:
        """``ALTER TABLE table ADD COLUMN column``, idempotent: another process
        may add it at the same time."""
        from sqlalchemy import inspect
        from sqlalchemy.schema import CreateColumn

        preparer = conn.dialect.identifier_preparer
        definition = CreateColumn(column).compile(dialect=conn.dialect)
        if_not_exists = "IF NOT EXISTS " if self.adds_if_not_exists(conn) else ""
        statement = (
            f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {if_not_exists}{definition}"
        )
        try:
            conn.exec_driver_sql(statement)
        except DBAPIError:
            if self.error_aborts_transaction:
                raise  # such a database says IF NOT EXISTS (PostgreSQL)
            # without IF NOT EXISTS: another process may have added it meanwhile
            present = {c["name"] for c in inspect(conn).get_columns(table.name, table.schema)}
            if column.name not in present:
                raise
            return
        log.info("added column %s to %s", column.name, table.name)

    def adds_if_not_exists(self, conn: Connection) -> bool:
        """``ADD COLUMN IF NOT EXISTS`` is understood."""
        return False

    def insert_if_absent(self, conn: Connection, table: Table, values: dict[str, Any]) -> None:
        """Insert a row unless one with its primary key exists (another process
        may insert it at the same moment); the row is then locked by this
        transaction or by the one that inserted it."""
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(values))
        except IntegrityError:
            pass  # another worker inserted it first

    # -- leases: a worker's claim on a range of a run ----------------------------
    def try_lease(self, conn: Connection, name: str) -> bool | None:
        """Take the session-level lock ``name`` on ``conn`` if it is free, and
        return at once: whether it was taken. It is held outside any transaction
        (a claim lasts as long as a range: hours on a big table, during which an
        open transaction would hold back VACUUM, InnoDB's purge and every
        ``CREATE INDEX CONCURRENTLY`` of the database) and dies with ``conn``.
        None where the database has no such lock: the runner then locks the
        range's row in a transaction held as long."""
        return None

    def end_lease(self, conn: Connection, name: str) -> None:
        """Release what :meth:`try_lease` took."""

    def hold_writes(self, conn: Connection) -> None:
        """Make sure ``conn``'s transaction keeps other writers out from here on
        where the database has one writer at a time (the drop gate and the DROP
        must be one atomic step there); elsewhere row locks and the DDL's own
        lock do."""

    def quiet_triggers(self, conn: Connection, key: str) -> None:
        """Keep the sync triggers of ``key`` out of this batch's own writes (they
        are set for the whole session where the database can tell sessions)."""

    def wake_triggers(self, conn: Connection, key: str) -> None:
        """Undo :meth:`quiet_triggers` before the batch commits."""

    # -- errors ---------------------------------------------------------------------
    def sqlstate(self, exc: DBAPIError) -> str | None:
        orig = exc.orig
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return str(state) if state else None

    def is_transient(self, exc: DBAPIError) -> bool:
        """Lock timeouts, deadlocks and the like: the batch may simply be retried."""
        args: Any = getattr(exc.orig, "args", ())
        return bool(args) and isinstance(args[0], int) and args[0] in self.retry_codes

    def is_statement_timeout(self, exc: DBAPIError) -> bool:
        return False

    def reason(self, exc: DBAPIError) -> str:
        """Why a row failed, for the report: the database's own message."""
        return first_line(exc)

    def is_data_error(self, exc: DBAPIError) -> bool:
        """An error caused by a row's value (a transform failed on it)."""
        args: Any = getattr(exc.orig, "args", ())
        # 1292 truncated incorrect value, 1264 out of range, 1406 data too long,
        # 1366 incorrect value, 1365 division by zero, 3140 invalid JSON, 1690 value
        # out of range (how the built-in cast rejects a value there)
        data_errors = {1264, 1292, 1365, 1366, 1406, 1690, 3140}
        if args and isinstance(args[0], int) and args[0] in data_errors:
            return True
        return isinstance(exc, DataError)

    # -- planning ---------------------------------------------------------------------
    def ranges_for(self, integer_key: bool, workers: int) -> int:
        """How many ranges a new run's key space is split into.

        Several per worker so that a fast worker takes over the rest; with one
        worker, an integer key is still split in four (nearly free: computed, not
        counted) so that other processes started later with the same key can join
        the run. Each range costs its claim and a partial last batch, about 1 ms
        each: 16 ranges measured 1-2% slower than 4 on a 1M-row backfill.
        """
        if workers > 1:
            return workers * 4
        return 4 if integer_key else 1

    # -- Python-computed batches ----------------------------------------------------
    def update_rows(
        self,
        conn: Connection,
        table: Table,
        match: Sequence[Column[Any]],
        guard: Sequence[Column[Any]],
        targets: Sequence[Column[Any]],
        rows: Rows,
        where: Sequence[ColumnElement[bool]],
        encoded: str | None = None,
    ) -> int:
        """``UPDATE table SET targets = ...`` for each row, matched on ``match``.

        Each row is ``(match values..., guard values..., target values...)``; a row
        is written only while its ``guard`` columns still hold the values given
        (compare-and-set, NULL-safe) and ``where`` holds. Returns rows written.
        ``encoded``: :meth:`encode_rows` of exactly these ``rows``, made ahead.
        """
        n_match, n_guard = len(match), len(guard)
        match_params: list[Any] = [bindparam(f"k{i}") for i in range(n_match)]
        guard_params: list[Any] = [bindparam(f"g{i}") for i in range(n_guard)]
        stmt = (
            update(table)
            .where(
                *(c == p for c, p in zip(match, match_params)),
                *(
                    or_(and_(c.is_(None), p.is_(None)), c == p)
                    for c, p in zip(guard, guard_params)
                ),
                *where,
            )
            .values({c: bindparam(f"n{i}") for i, c in enumerate(targets)})
        )
        names = [
            *(f"k{i}" for i in range(n_match)),
            *(f"g{i}" for i in range(n_guard)),
            *(f"n{i}" for i in range(len(targets))),
        ]
        params = [dict(zip(names, row)) for row in rows]
        return int(conn.execute(stmt, params).rowcount)

    def encode_rows(self, rows: Rows) -> str | None:
        """``rows`` in the form :meth:`update_rows` sends them, where it encodes
        them (None elsewhere, or when they do not encode): made on the read-ahead
        thread, so that the encoding is off the write's critical path."""
        return None


#: ``conn.info`` keys of MariaDB/MySQL sessions: the batches' lock wait, and a
#: planning transaction's longer one still in force
_BATCH_WAIT = "fourstep_batch_lock_wait"
_PLANNED = "fourstep_planning_lock_wait"


class MySQLRules(DialectRules):
    name = "mysql"

    def adds_if_not_exists(self, conn: Connection) -> bool:
        return bool(getattr(conn.dialect, "is_mariadb", False))

    def setup_session(self, conn: Connection, lock_timeout_ms: float | None) -> None:
        """Short lock waits, and the sync triggers out of the library's own writes.

        ``innodb_lock_wait_timeout`` (row locks) and ``lock_wait_timeout`` (a
        table's metadata lock, which DDL holds) default to 50 s and a day: a
        batch would hold its rows that long behind an application's transaction.
        Both count whole seconds, so ``lock_timeout_ms`` is rounded up to one at
        least (500 ms: 1 s); a wait that runs out (1205) is retried like a
        PostgreSQL lock timeout. ``@fourstep_sync``: see :mod:`fourstep_sqla.triggers`.
        """
        wanted = lock_timeout_ms if lock_timeout_ms is not None else 500.0
        seconds = max(1, math.ceil(wanted / 1000))
        conn.info[_BATCH_WAIT] = seconds
        # one statement per execute: some drivers refuse several
        for statement in (
            f"SET SESSION innodb_lock_wait_timeout = {seconds}",
            f"SET SESSION lock_wait_timeout = {seconds}",
            "SET @fourstep_sync = 'off'",
        ):
            conn.exec_driver_sql(statement)
        conn.commit()

    def begin_batch(self, conn: Connection) -> None:
        conn.begin()
        if conn.info.pop(_PLANNED, False):
            # back to the batches' short wait after a planning transaction
            seconds = conn.info.get(_BATCH_WAIT, 1)
            conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {seconds}")

    def begin_planning(self, conn: Connection, wait_seconds: float | None) -> None:
        """READ COMMITTED, as on PostgreSQL: the planning reads what another
        process committed while it waited for the state row's lock, not the
        snapshot of its first read (REPEATABLE READ would show a state row
        inserted meanwhile as missing). The state row is waited for up to
        ``wait_seconds`` (whole seconds; None: a day), not the batches' second."""
        conn.begin()
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        seconds = 86_400 if wait_seconds is None else max(1, math.ceil(wait_seconds))
        conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {seconds}")
        conn.info[_PLANNED] = True

    def teardown_session(self, conn: Connection) -> None:
        conn.info.pop(_BATCH_WAIT, None)
        conn.info.pop(_PLANNED, None)

        def reset() -> None:
            for statement in (
                "SET SESSION innodb_lock_wait_timeout = DEFAULT",
                "SET SESSION lock_wait_timeout = DEFAULT",
                "SET @fourstep_sync = NULL",
            ):
                conn.exec_driver_sql(statement)
            conn.commit()

        settle(conn, reset)

    def insert_if_absent(self, conn: Connection, table: Table, values: dict[str, Any]) -> None:
        """``INSERT ... ON DUPLICATE KEY UPDATE``: it takes the row's exclusive lock
        at once. A plain INSERT that finds the key takes a shared lock first
        (kept after the savepoint's rollback), and two callers that then lock
        the row for update deadlock (InnoDB, several workers planning at once)."""
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        key = next(iter(table.primary_key.columns))
        statement = mysql_insert(table).values(values)
        conn.execute(statement.on_duplicate_key_update({key.name: statement.inserted[key.name]}))

    def reason(self, exc: DBAPIError) -> str:
        """``1690: BIGINT value is out of range in ...``, not the driver's tuple."""
        args: Any = getattr(exc.orig, "args", ())
        if len(args) >= 2 and isinstance(args[0], int):
            return f"{args[0]}: {str(args[1]).splitlines()[0]}"
        return first_line(exc)

    def try_lease(self, conn: Connection, name: str) -> bool | None:
        """``GET_LOCK(name, 0)``: 1 taken, 0 held by another session."""
        got = conn.execute(select(func.get_lock(lease_lock_name(name), 0))).scalar()
        conn.commit()
        return got == 1

    def end_lease(self, conn: Connection, name: str) -> None:
        conn.execute(select(func.release_lock(lease_lock_name(name))))
        conn.commit()


def lease_lock_name(name: str) -> str:
    """MariaDB/MySQL: a lock name of at most 64 characters (the servers' limit)."""
    return "fourstep_sqla.range:" + hashlib.sha1(name.encode()).hexdigest()


def lease_lock_number(name: str) -> int:
    """PostgreSQL: a signed 64-bit advisory lock key of ``name``."""
    digest = hashlib.blake2b(f"fourstep_sqla.range:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgreSQLRules(DialectRules):
    name = "postgresql"
    reads_ahead = True
    error_aborts_transaction = True
    #: lock timeout, deadlock, serialization failure
    retry_states = frozenset({"55P03", "40P01", "40001"})

    def setup_session(self, conn: Connection, lock_timeout_ms: float | None) -> None:
        """A ``lock_timeout`` below the server's ``deadlock_timeout``, and more.

        For the session, not per batch: one round trip less per batch. Custom
        plans: psycopg prepares repeated statements, and a generic plan for
        ``pk > $1 AND pk <= $2`` joined to a batch of rows can scan the table.
        ``synchronous_commit = off``: a crash may lose the last few batches, but
        each one with its own progress row (same transaction), so the resume
        redoes exactly those; in exchange no batch waits for its WAL flush.
        ``fourstep.sync = off``: the sync triggers stay out of the library's own
        writes (see :mod:`fourstep_sqla.triggers`).
        """
        deadlock = conn.exec_driver_sql(
            "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"
        ).scalar_one()
        conn.rollback()
        ceiling = max(float(deadlock) / 2, 10.0)
        wanted = lock_timeout_ms if lock_timeout_ms is not None else 500.0
        timeout = min(wanted, ceiling)
        # one statement per execute: asyncpg prepares every statement, and a
        # prepared statement holds one command
        for statement in (
            f"SET lock_timeout = '{int(timeout)}ms'",
            "SET plan_cache_mode = force_custom_plan",
            "SET synchronous_commit = off",
            "SET fourstep.sync = 'off'",
        ):
            conn.exec_driver_sql(statement)
        conn.commit()

    def teardown_session(self, conn: Connection) -> None:
        def reset() -> None:
            for setting in ("lock_timeout", "plan_cache_mode", "synchronous_commit",
                            "fourstep.sync"):
                conn.exec_driver_sql(f"RESET {setting}")
            conn.commit()

        settle(conn, reset)

    def begin_planning(self, conn: Connection, wait_seconds: float | None) -> None:
        conn.begin()
        wait_ms = 0 if wait_seconds is None else max(int(wait_seconds * 1000), 1)
        # the session's lock_timeout is the batches' (below deadlock_timeout)
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")

    def place_identity(
        self, conn: Connection, table: Table, columns: Sequence[Column[Any]]
    ) -> str | None:
        """``<table oid>:<attnum>,...``: a column dropped and added again gets a new
        ``attnum`` (never reused), a table created again a new oid."""
        rows = conn.execute(
            text(
                "SELECT attrelid::bigint AS rel, attname, attnum FROM pg_catalog.pg_attribute "
                "WHERE attrelid = to_regclass(CAST(:table AS text)) AND attname IN :names "
                "AND NOT attisdropped"
            ).bindparams(bindparam("names", expanding=True)),
            {
                "table": conn.dialect.identifier_preparer.format_table(table),
                "names": [c.name for c in columns],
            },
        ).all()
        numbers = {r.attname: int(r.attnum) for r in rows}
        if not rows or any(c.name not in numbers for c in columns):
            return None
        return f"{int(rows[0].rel)}:" + ",".join(str(numbers[c.name]) for c in columns)

    def adds_if_not_exists(self, conn: Connection) -> bool:
        return True

    def is_transient(self, exc: DBAPIError) -> bool:
        return self.sqlstate(exc) in self.retry_states

    def is_statement_timeout(self, exc: DBAPIError) -> bool:
        return self.sqlstate(exc) == "57014"  # query_canceled

    def is_data_error(self, exc: DBAPIError) -> bool:
        state = self.sqlstate(exc)
        if state is not None:
            return state.startswith("22")  # data exception class
        return isinstance(exc, DataError)

    def update_rows(
        self,
        conn: Connection,
        table: Table,
        match: Sequence[Column[Any]],
        guard: Sequence[Column[Any]],
        targets: Sequence[Column[Any]],
        rows: Rows,
        where: Sequence[ColumnElement[bool]],
        encoded: str | None = None,
    ) -> int:
        """One ``UPDATE ... FROM`` over the batch's rows, shipped as one document."""
        from sqlalchemy.dialects.postgresql import ARRAY, JSONB

        columns = [*match, *guard, *targets]
        names = [f"c{i}" for i in range(len(columns))]
        payload = encoded if encoded is not None else self.encode_rows(rows)
        source: Any
        if payload is not None:
            elements = (
                func.jsonb_array_elements(
                    sql_cast(bindparam("rows", value=payload, type_=Text()), JSONB)
                )
                .table_valued("value")
                .alias("e")
            )
            source = select(
                *(
                    sql_cast(
                        elements.c.value.op("->>")(literal_column(str(i))), _unbounded(c.type)
                    ).label(n)
                    for i, (n, c) in enumerate(zip(names, columns))
                )
            ).subquery("v")
        else:
            arrays = [
                bindparam(f"a{i}", value=[row[i] for row in rows], type_=ARRAY(c.type))
                for i, c in enumerate(columns)
            ]
            source = (
                func.unnest(*arrays)
                .table_valued(*(column(n, c.type) for n, c in zip(names, columns)))
                .render_derived(name="v")
            )
        n_match, n_guard = len(match), len(guard)
        match_cols = [source.c[n] for n in names[:n_match]]
        guard_cols = [source.c[n] for n in names[n_match : n_match + n_guard]]
        target_cols = [source.c[n] for n in names[n_match + n_guard :]]
        stmt = (
            update(table)
            .where(
                *where,  # keeps the join to the batch's own index range
                *(c == v for c, v in zip(match, match_cols)),
                *(c.is_not_distinct_from(v) for c, v in zip(guard, guard_cols)),
            )
            .values({c: v for c, v in zip(targets, target_cols)})
        )
        # stale statistics (a freshly loaded table) can make the planner rescan
        # unnest() once per row of the range: hash the batch instead
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        return int(conn.execute(stmt).rowcount)

    def encode_rows(self, rows: Rows) -> str | None:
        """One JSON document of arrays, parsed by the server: far cheaper to send
        than per-element array dumps, for the types JSON carries exactly (None for
        the others, which go as arrays)."""
        try:
            return json.dumps(rows, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            return None

    def try_lease(self, conn: Connection, name: str) -> bool | None:
        """``pg_try_advisory_lock``, session level (in this database)."""
        got = conn.execute(select(func.pg_try_advisory_lock(lease_lock_number(name)))).scalar()
        conn.commit()
        return bool(got)

    def end_lease(self, conn: Connection, name: str) -> None:
        conn.execute(select(func.pg_advisory_unlock(lease_lock_number(name))))
        conn.commit()


class SQLiteRules(DialectRules):
    name = "sqlite"
    #: one writer at a time: the ranges of a run are worked one after the other
    shares_ranges = False

    def begin_batch(self, conn: Connection) -> None:
        # pysqlite opens a transaction only before DML, so a SAVEPOINT (the
        # bisection path) would start one of its own and RELEASE would commit
        # part of the batch without its progress row: begin explicitly.
        # IMMEDIATE: take the write lock now, waiting out the busy timeout, rather
        # than failing at once when a read-then-write batch finds a writer
        conn.begin()
        raw = conn.connection.driver_connection
        if raw is not None and not getattr(raw, "in_transaction", True):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def setup_session(self, conn: Connection, lock_timeout_ms: float | None) -> None:
        pass

    def teardown_session(self, conn: Connection) -> None:
        pass

    def hold_writes(self, conn: Connection) -> None:
        # pysqlite runs DDL outside any transaction unless one was begun: without
        # this, a write could commit between the gate and the DROP's table copy
        raw = conn.connection.driver_connection
        if raw is not None and not getattr(raw, "in_transaction", True):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def quiet_triggers(self, conn: Connection, key: str) -> None:
        # SQLite triggers cannot read a session setting: a marker row, visible to
        # no other writer (SQLite has one writer at a time) and gone at commit
        from .triggers import SQLITE_MARKER

        conn.execute(
            text(f"INSERT INTO {SQLITE_MARKER} (key) VALUES (:key)"), {"key": key}
        )

    def wake_triggers(self, conn: Connection, key: str) -> None:
        from .triggers import SQLITE_MARKER

        conn.execute(text(f"DELETE FROM {SQLITE_MARKER} WHERE key = :key"), {"key": key})

    def is_transient(self, exc: DBAPIError) -> bool:
        return "database is locked" in str(exc.orig)

    def is_data_error(self, exc: DBAPIError) -> bool:
        # a built-in cast rejects a value with a runtime "integer overflow"
        # (SQLite has no other way to raise inside an expression)
        return isinstance(exc, DataError) or "integer overflow" in str(exc.orig)

    def reason(self, exc: DBAPIError) -> str:
        text_ = first_line(exc)
        if text_ == "integer overflow":
            return "the SQL transform rejected the value (SQLite says: integer overflow)"
        return text_

    def ranges_for(self, integer_key: bool, workers: int) -> int:
        return 1


def _unbounded(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """``type_`` without a length: an explicit ``CAST(... AS VARCHAR(10))`` truncates
    silently on PostgreSQL, while the assignment to the column raises instead."""
    if isinstance(type_, Enum):
        return type_  # a type of its own in the database (PostgreSQL): the cast names it
    if isinstance(type_, String) and type_.length is not None:
        return String()
    return type_


_RULES: dict[str, DialectRules] = {
    "postgresql": PostgreSQLRules(),
    "sqlite": SQLiteRules(),
    "mysql": MySQLRules(),
    "mariadb": MySQLRules(),
}
_DEFAULT = DialectRules()


def rules_for(bind: Connection | Engine) -> DialectRules:
    """The rules of ``bind``'s database."""
    return _RULES.get(bind.dialect.name, _DEFAULT)
