"""Lock safety per migration: what ``import fourstep_sqla.alembic`` does to every revision.

``ALTER TABLE`` needs an exclusive lock for a few milliseconds, but while it
*waits* for it (behind a long transaction) every query on the table queues
behind it; and once granted, the lock is held until the revision's
transaction ends, so whatever the revision does next (a scan, another ``ALTER``
that waits) stalls the application too. Retrying statement by statement
inside one transaction keeps the first lock while the next statement waits.
So, online, for ``alembic upgrade``, ``downgrade`` and ``stamp``:

PostgreSQL
    Every statement of a revision, Alembic's own operations included, runs
    under a short ``lock_timeout`` (500 ms by default; ``context.configure(...,
    fourstep_lock_timeout_ms=..., fourstep_lock_retries=...)``): ``SET LOCAL``
    first thing in the revision's transaction, and again after each
    autocommit block. A lock timeout rolls the revision back to where it began
    (a savepoint taken before its first statement: every lock it took is
    released), sleeps a growing, jittered delay and runs the revision again,
    a bounded number of times; then :class:`~fourstep_sqla.ddl.DDLLockTimeoutError`
    names the statement that waited and how to find the blocker. That is the
    move GitLab made with ``with_lock_retries``, from subtransactions to the
    migration's whole transaction. With ``transaction_per_migration=True``
    (recommended) the revision's transaction is the whole transaction; without
    it, revisions run earlier in the same transaction keep their locks while
    the current one waits (a warning says so).

    Once a revision has committed part of its work (an autocommit block:
    ``op.backfill``, a concurrent index, the NOT NULL validation), it cannot
    be run again from its start: from there on each operation is retried on
    its own, inside a savepoint.

    Statements inside an autocommit block run without the short timeout: the
    library's own (``CREATE INDEX CONCURRENTLY``, ``VALIDATE CONSTRAINT``) take
    locks that never block the application's reads and writes.

MariaDB/MySQL
    DDL commits at once there, so there is no transaction to roll back:
    ``lock_wait_timeout`` is set low for the run (whole seconds: 1 s for the
    default) and each operation is retried on its own. A revision stopped
    midway runs again from its start over what it did: Alembic's
    ``add_column`` and ``drop_column`` skip a column added or dropped already,
    ``create_index`` and ``drop_index`` an index made (the same columns and
    uniqueness) or dropped already, as the library's own operations skip what
    is done.

SQLite
    pysqlite begins a transaction only before DML, so a revision's DDL would
    commit statement by statement: the revision's first write begins one
    (``BEGIN IMMEDIATE``), and so does its first write after each autocommit
    block.

Drop gates first
    ``op.drop_old`` runs its gate (a scan) at once but leaves its DDL for
    later: consecutive ``op.drop_old`` operations run all their gates before
    the first ``DROP``, so no gate ever scans under an exclusive lock another
    one took. The DDL runs before the next other operation, or at the end of
    the revision. (SQL sent directly through ``op.get_bind()`` right after an
    ``op.drop_old`` runs before that DDL.)

One run at a time
    A mutating run takes a database-wide advisory lock (PostgreSQL
    ``pg_advisory_lock``, MariaDB/MySQL ``GET_LOCK``) on a connection of its
    own before it reads the current revision. A second ``alembic upgrade``
    started meanwhile (two pods deploying at once) waits, logging whom it
    waits for, then finds the work done instead of repeating it.

``context.configure(fourstep_lock_safety=False)`` turns all of this off;
``fourstep_migration_lock=False`` only the advisory lock.
Offline (``--sql``) scripts get their own ``SET LOCAL lock_timeout`` per
revision and their gates first: see :mod:`fourstep_sqla.alembic.offline`.
SQLite has one writer at a time and no lock timeout: there only the drop
gates run first.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

from alembic.operations import MigrateOperation, Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError

from ..ddl import (
    DDLLockTimeoutError,
    LockPolicy,
    lock_not_available,
    retried_by_migration,
    retry_delay,
)
from . import offline
from .indexes import concurrent, run_index_op

__all__ = ["MigrationLocks", "active", "lock_error", "lock_policy"]

log = logging.getLogger("fourstep_sqla.alembic.locks")

_GUARDS: WeakKeyDictionary[MigrationContext, MigrationLocks] = WeakKeyDictionary()
_SAVEPOINT = "fourstep_revision"
#: how often a run waiting for another one says so
_WAIT_LOG_SECONDS = 10.0


#: what begins a SQLite revision's transaction: a statement that writes
_WRITE = re.compile(
    r"\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|TRUNCATE|RENAME)\b", re.IGNORECASE
)


def lock_policy(opts: Any) -> LockPolicy:
    """``context.configure(fourstep_lock_timeout_ms=..., fourstep_lock_retries=...)``,
    else 500 ms and 10 retries (``opts``: a MigrationContext's options)."""
    default = LockPolicy()
    return LockPolicy(
        lock_timeout_ms=int(opts.get("fourstep_lock_timeout_ms", default.lock_timeout_ms)),
        retries=int(opts.get("fourstep_lock_retries", default.retries)),
    )


def active(context: MigrationContext) -> MigrationLocks | None:
    """The lock guard of a migration run in progress on ``context``, if any."""
    return _GUARDS.get(context)


def _statement_of(exc: BaseException) -> str:
    found: BaseException | None = exc
    while found is not None:
        if isinstance(found, DBAPIError) and found.statement:
            return " ".join(str(found.statement).split())[:200]
        found = found.__cause__ or found.__context__
    return "a statement"


def lock_error(exc: BaseException) -> bool:
    """``exc`` is (or was raised from) a lock wait that ran out."""
    found: BaseException | None = exc
    seen = 0
    while found is not None and seen < 10:
        if isinstance(found, DBAPIError) and lock_not_available(found):
            return True
        found = found.__cause__ or found.__context__
        seen += 1
    return False


class MigrationLocks:
    """The lock guard of one migration run (see the module docs)."""

    def __init__(self, context: MigrationContext, policy: LockPolicy) -> None:
        self.context = context
        self.policy = policy
        self.dialect = context.dialect.name
        #: autocommit blocks entered since the run started
        self.commits = 0
        #: commits seen when the current revision started
        self._revision_commits = 0
        self._in_revision = False
        self._autocommit = 0
        self._alone = 0
        self._depth = 0
        self._state_ready = False
        self._deferred: list[tuple[str, Callable[[], None]]] = []
        self._sqlite_revision = False

    # -- state the operations ask about ----------------------------------------------
    @property
    def postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def restartable(self) -> bool:
        """A lock timeout can still roll the whole revision back (PostgreSQL, nothing
        of it committed yet)."""
        return self.postgresql and self._in_revision and self.commits == self._revision_commits

    def retries_now(self) -> bool:
        """A lock timeout on the migration connection is retried by the run at this
        moment (or cannot be retried at all: inside an autocommit block)."""
        return self.restartable or self._alone > 0 or self._autocommit > 0

    def top_level(self) -> bool:
        """The operation being run was invoked by the revision itself."""
        return self._depth == 1

    def defer(self, what: str, ddl: Callable[[], None]) -> None:
        """Run ``ddl`` before the next other operation or at the end of the revision."""
        self._deferred.append((what, ddl))

    # -- the connection ----------------------------------------------------------------
    @property
    def connection(self) -> Connection:
        connection = self.context.connection
        assert connection is not None
        return connection

    def set_timeout(self) -> None:
        if self.postgresql:
            self.connection.exec_driver_sql(
                f"SET LOCAL lock_timeout = '{int(self.policy.lock_timeout_ms)}ms'"
            )

    def _begin_sqlite(self, conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
        """SQLite, before each statement of a revision: its first write begins
        the revision's transaction, as Alembic means it to be one. pysqlite
        begins a transaction only before INSERT, UPDATE and DELETE, so each DDL
        statement before the first of those committed on its own: a revision
        stopped midway (a killed deploy) left part of it done, and its run again
        failed (``duplicate column name``, a leftover ``_alembic_tmp_`` table).
        At the first write, not before: a ``PRAGMA foreign_keys=OFF`` the
        revision runs first (which SQLite ignores inside a transaction) still
        takes effect, and the database's writers wait from the revision's first
        write on, as they did. IMMEDIATE: that write takes the write lock anyway."""
        if not self._sqlite_revision or self._autocommit or not _WRITE.match(statement):
            return
        raw = conn.connection.driver_connection
        if raw is not None and not getattr(raw, "in_transaction", True) and conn.in_transaction():
            cursor.execute("BEGIN IMMEDIATE")

    @contextmanager
    def committing(self) -> Iterator[None]:
        """Around an autocommit block: the revision's work so far is committed (it
        cannot be rolled back any more), and the next transaction gets the timeout."""
        self.commits += 1
        self._autocommit += 1
        try:
            yield
        finally:
            self._autocommit -= 1
        if self._in_revision and not self._autocommit:
            self.set_timeout()

    # -- one revision ------------------------------------------------------------------
    def run_revision(self, name: str, fn: Callable[..., Any], kw: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            if self.dialect == "sqlite":
                connection = self.connection
                self._sqlite_revision = True
                event.listen(connection, "before_cursor_execute", self._begin_sqlite)
                try:
                    return self._once(fn, kw)
                finally:
                    self._sqlite_revision = False
                    event.remove(connection, "before_cursor_execute", self._begin_sqlite)
            if not self.postgresql:
                return self._once(fn, kw)
            connection = self.connection
            self._revision_commits = self.commits
            self._in_revision = True
            try:
                self.set_timeout()
                connection.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
                self._prepare()
                try:
                    result = self._once(fn, kw)
                except BaseException as exc:
                    if not (lock_error(exc) and self.restartable):
                        raise
                    connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                    self._state_ready = False
                    attempt += 1
                    self._give_up_or_wait(f"revision {name}", exc, attempt, whole=True)
                    continue
                if self.commits == self._revision_commits:
                    connection.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
                return result
            finally:
                self._in_revision = False
                self._deferred.clear()

    def _prepare(self) -> None:
        """Before the revision's first statement: the library's state tables, so
        that an operation never creates them while the revision holds a lock on
        the application's table."""
        if self._state_ready:
            return
        from ..state import ensure_state_tables

        ensure_state_tables(self.connection)
        self._state_ready = True

    def _once(self, fn: Callable[..., Any], kw: dict[str, Any]) -> Any:
        self._deferred.clear()
        result = fn(**kw)
        self.flush()
        return result

    def _give_up_or_wait(self, what: str, exc: BaseException, attempt: int,
                         whole: bool) -> None:
        """Raise after the last retry, else log and sleep. ``whole``: the revision
        was rolled back to its start, else only the operation ``what``."""
        policy = self.policy
        statement = _statement_of(exc)
        undone = (
            "Nothing of this revision was applied"
            if whole else
            "This operation was rolled back; what the revision committed before it (an "
            "autocommit block) stays, and every fourstep operation can run again"
        )
        if attempt > policy.retries:
            raise DDLLockTimeoutError(
                f"{what}: {statement!r} could not get its lock within "
                f"{policy.lock_timeout_ms} ms, after {policy.retries} retries: another "
                f"transaction holds a lock on the table (find it: SELECT pid, xact_start, "
                f"state, query FROM pg_stat_activity WHERE state <> 'idle' ORDER BY "
                f"xact_start). {undone}. Let that transaction finish (or end it) and run the "
                f"migration again; more patience: context.configure(fourstep_lock_retries=N)."
            ) from exc
        delay = retry_delay(attempt, policy)
        log.warning(
            "%s: %s waited more than %d ms for a lock; rolled %s back (its locks released), "
            "retry %d/%d in %.0f ms", what, statement, policy.lock_timeout_ms,
            "the revision" if whole else "the operation", attempt, policy.retries,
            delay * 1000,
        )
        time.sleep(delay)

    # -- one operation -----------------------------------------------------------------
    def invoke(
        self,
        operations: Operations,
        operation: MigrateOperation,
        original: Callable[[Operations, MigrateOperation], Any],
    ) -> Any:
        from .ops import DropOldOp

        if self._depth == 0 and not isinstance(operation, DropOldOp):
            self.flush()
        if self._depth == 0 and self.dialect in ("mysql", "mariadb") and _applied_already(
            operations, operation
        ):
            return None
        self._depth += 1
        try:
            if (self._depth == 1 and self._retries_each_operation()
                    and not concurrent(operation)):
                return self._retry_alone(type(operation).__name__,
                                         lambda: original(operations, operation))
            return original(operations, operation)
        finally:
            self._depth -= 1

    def flush(self) -> None:
        """The DDL the drop gates left for later, in order."""
        while self._deferred:
            what, ddl = self._deferred.pop(0)
            # the operations ddl() invokes are its own, not the revision's: they must
            # neither flush the next drop's DDL into this one nor retry on their own
            self._depth += 1
            try:
                if self._depth == 1 and self._retries_each_operation():
                    self._retry_alone(what, ddl)
                else:
                    ddl()
            finally:
                self._depth -= 1

    def _retries_each_operation(self) -> bool:
        if self.context.as_sql or self._autocommit:
            return False
        if self.dialect in ("mysql", "mariadb"):
            return True
        return self.postgresql and self._in_revision and not self.restartable

    def _retry_alone(self, what: str, run: Callable[[], Any]) -> Any:
        """Retry one operation on a lock timeout: inside a savepoint on PostgreSQL
        (part of the revision committed already), as it is on MariaDB/MySQL (its DDL
        committed statement by statement)."""
        attempt = 0
        while True:
            savepoint = self.connection.begin_nested() if self.postgresql else None
            self._alone += 1
            try:
                result = run()
            except BaseException as exc:
                if savepoint is not None and savepoint.is_active:
                    savepoint.rollback()
                if not lock_error(exc):
                    raise
                attempt += 1
                self._give_up_or_wait(what, exc, attempt, whole=False)
                continue
            finally:
                self._alone -= 1
            if savepoint is not None and savepoint.is_active:
                savepoint.commit()
            return result

    # -- the whole run -----------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[None]:
        """MariaDB/MySQL: ``lock_wait_timeout`` low for the run, restored after."""
        if self.dialect not in ("mysql", "mariadb"):
            yield
            return
        connection = self.connection
        before = connection.exec_driver_sql("SELECT @@session.lock_wait_timeout").scalar_one()
        seconds = max(1, math.ceil(self.policy.lock_timeout_ms / 1000))
        connection.exec_driver_sql(f"SET SESSION lock_wait_timeout = {seconds}")
        try:
            yield
        finally:
            try:
                connection.exec_driver_sql(f"SET SESSION lock_wait_timeout = {int(before)}")
            except Exception:  # the connection broke with the migration: nothing to restore
                log.debug("could not restore lock_wait_timeout", exc_info=True)


# -- one run at a time ----------------------------------------------------------------------
def _lock_name(context: MigrationContext, connection: Connection) -> str:
    """One lock per version table: its schema (else the connection's current one,
    as a tenant's ``search_path`` or database picks it) and its name."""
    version = getattr(context, "_version", None)
    name = getattr(version, "name", "alembic_version")
    schema = getattr(version, "schema", None)
    if schema is None:
        current = "current_schema()" if connection.dialect.name == "postgresql" else "DATABASE()"
        schema = connection.exec_driver_sql(f"SELECT {current}").scalar()
    return f"fourstep_sqla.migrations:{schema or ''}.{name}"


@contextmanager
def _one_run_at_a_time(context: MigrationContext) -> Iterator[None]:
    dialect = context.dialect.name
    connection = context.connection
    if connection is None or dialect not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    name = _lock_name(context, connection)
    # a connection of its own, so the lock outlives the revisions' transactions and
    # dies with the process
    holder = connection.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    released = False
    try:
        if dialect == "postgresql":
            number = _lock_number(name)
            acquire = text("SELECT pg_try_advisory_lock(:n)").bindparams(n=number)
            release = text("SELECT pg_advisory_unlock(:n)").bindparams(n=number)
        else:
            acquire = text("SELECT GET_LOCK(:n, 0)").bindparams(n=name[:64])
            release = text("SELECT RELEASE_LOCK(:n)").bindparams(n=name[:64])
        waited_since = time.monotonic()
        said = 0.0
        while not holder.execute(acquire).scalar():
            now = time.monotonic()
            if now - said >= _WAIT_LOG_SECONDS:
                said = now
                log.warning(
                    "another migration run is in progress on this database (%s); waiting "
                    "for it to finish (%.0f s so far), then this run carries on from where "
                    "it left the database", _holder_of(holder, dialect, name),
                    now - waited_since,
                )
            time.sleep(0.2)
        try:
            yield
        finally:
            try:
                holder.execute(release)
                released = True
            except Exception:
                log.debug("could not release the migration lock", exc_info=True)
    finally:
        if not released:
            holder.invalidate()  # never back to the pool holding the lock
        holder.close()


def _lock_number(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31


def _holder_of(holder: Connection, dialect: str, name: str) -> str:
    try:
        if dialect == "postgresql":
            key = _lock_number(name) & 0xFFFFFFFFFFFFFFFF
            row = holder.execute(text(
                "SELECT a.pid, a.application_name, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi "
                "AND l.objid = :lo AND l.objsubid = 1 LIMIT 1"
            ), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).first()
            if row is not None:
                return (f"PostgreSQL backend pid {row.pid} ({row.application_name or 'no name'},"
                        f" connected {row.backend_start:%Y-%m-%d %H:%M:%S})")
        else:
            pid = holder.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name[:64]}).scalar()
            if pid is not None:
                return f"connection id {pid}"
    except Exception:
        log.debug("could not name the migration lock holder", exc_info=True)
    return "another process"


# -- wiring into Alembic -----------------------------------------------------------------------
def _enabled(context: MigrationContext) -> bool:
    return (
        not context.as_sql
        and context.connection is not None
        and bool(context.opts.get("fourstep_lock_safety", True))
        and context.dialect.name in ("postgresql", "mysql", "mariadb", "sqlite")
    )


def _mutating(context: MigrationContext) -> bool:
    return (
        context.opts.get("destination_rev") is not None
        and not context.opts.get("dont_mutate", False)
        and bool(context.opts.get("fourstep_migration_lock", True))
    )


_original_run_migrations = MigrationContext.run_migrations
_original_autocommit_block = MigrationContext.autocommit_block
_original_invoke = Operations.invoke


def _run_migrations(self: MigrationContext, **kw: Any) -> None:
    if self.as_sql:  # the script's own lock_timeout and order (see the offline module)
        offline.run_migrations(self, _original_run_migrations, lock_policy(self.opts), kw)
        return
    if not _enabled(self) or self in _GUARDS:
        _original_run_migrations(self, **kw)
        return
    guard = MigrationLocks(self, lock_policy(self.opts))
    steps = self._migrations_fn
    assert steps is not None
    if self.dialect.name == "postgresql" and not self._transaction_per_migration:
        log.info("transaction_per_migration is off: a lock timeout rolls back only the "
                 "revision being run; set transaction_per_migration=True so that it "
                 "releases every lock the run took")

    def guarded_steps(heads: Any, context: MigrationContext) -> Iterator[Any]:
        for step in steps(heads, context):
            fn = step.migration_fn
            name = str(getattr(step, "short_log", None) or getattr(fn, "__name__", "revision"))

            @functools.wraps(fn)
            def run(*, _fn: Any = fn, _name: str = name, **kwargs: Any) -> Any:
                return guard.run_revision(_name, _fn, kwargs)

            step.migration_fn = run
            yield step

    self._migrations_fn = guarded_steps
    _GUARDS[self] = guard
    retried_by_migration(guard.connection, guard.retries_now)
    try:
        if _mutating(self):
            with _one_run_at_a_time(self), guard.session():
                _original_run_migrations(self, **kw)
        else:
            with guard.session():
                _original_run_migrations(self, **kw)
    finally:
        self._migrations_fn = steps
        _GUARDS.pop(self, None)
        retried_by_migration(guard.connection, None)


def _applied_already(operations: Operations, operation: MigrateOperation) -> bool:
    """MariaDB/MySQL: whether Alembic's ``add_column`` / ``drop_column`` /
    ``create_index`` / ``drop_index`` is done already. DDL commits at once there,
    so a revision stopped midway (a killed process, a failed statement) runs
    again from its start over what it did: those are skipped then, as the
    library's own operations skip what is done. An index is taken for done only
    with the same columns and uniqueness: another index of that name fails as
    it would."""
    from alembic.operations import ops as alembic_ops
    from sqlalchemy import inspect

    if operations.get_context().as_sql:
        return False
    if isinstance(operation, (alembic_ops.CreateIndexOp, alembic_ops.DropIndexOp)):
        return _index_applied_already(operations, operation)
    if isinstance(operation, alembic_ops.AddColumnOp):
        name, wanted = operation.column.name, True
    elif isinstance(operation, alembic_ops.DropColumnOp):
        name, wanted = operation.column_name, False
    else:
        return False
    conn = operations.get_bind()
    present = {c["name"] for c in inspect(conn).get_columns(operation.table_name,
                                                            schema=operation.schema)}
    if (name in present) != wanted:
        return False
    log.info("%s.%s is %s already (this revision ran before, up to there): skipped",
             operation.table_name, name, "added" if wanted else "dropped")
    return True


def _index_applied_already(operations: Operations, operation: MigrateOperation) -> bool:
    from alembic.operations import ops as alembic_ops
    from sqlalchemy import inspect

    assert isinstance(operation, (alembic_ops.CreateIndexOp, alembic_ops.DropIndexOp))
    table_name = operation.table_name
    if table_name is None:
        return False
    found = {
        i["name"]: i
        for i in inspect(operations.get_bind()).get_indexes(table_name, schema=operation.schema)
    }
    name = str(operation.index_name)
    if isinstance(operation, alembic_ops.DropIndexOp):
        done, what = name not in found, "dropped"
    else:
        columns = [c if isinstance(c, str) else None for c in operation.columns]
        there = found.get(name)
        done = (
            there is not None
            and None not in columns
            and list(there["column_names"]) == columns
            and bool(there["unique"]) == bool(operation.unique)
        )
        what = "created"
    if done:
        log.info("index %s of %s is %s already (this revision ran before, up to there): "
                 "skipped", name, table_name, what)
    return done


@contextmanager
def _autocommit_block(self: MigrationContext) -> Iterator[None]:
    guard = _GUARDS.get(self)
    if guard is None and self.as_sql:
        with offline.autocommit_block(self, _original_autocommit_block):
            yield
        return
    if guard is None:
        with _original_autocommit_block(self):
            yield
        return
    with guard.committing(), _original_autocommit_block(self):
        yield


def _dispatch(operations: Operations, operation: MigrateOperation) -> Any:
    return run_index_op(operations, operation, _original_invoke)


def _invoke(self: Operations, operation: MigrateOperation) -> Any:
    guard = _GUARDS.get(self.migration_context)
    if guard is None and self.migration_context.as_sql:
        return offline.invoke(self, operation, _dispatch)
    if guard is None:
        return _dispatch(self, operation)
    return guard.invoke(self, operation, _dispatch)


def install() -> None:
    """Wrap Alembic's runner (idempotent; done when :mod:`fourstep_sqla.alembic` is imported)."""
    if getattr(MigrationContext.run_migrations, "_fourstep", False):
        return
    replacements: list[tuple[type, str, Any]] = [
        (MigrationContext, "run_migrations", _run_migrations),
        (MigrationContext, "autocommit_block", _autocommit_block),
        (Operations, "invoke", _invoke),
    ]
    for target, name, replacement in replacements:
        replacement._fourstep = True
        setattr(target, name, replacement)
