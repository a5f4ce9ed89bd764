"""Lock-safe DDL on PostgreSQL.

``ALTER TABLE`` takes an ACCESS EXCLUSIVE lock for a few milliseconds, but
while it *waits* for that lock (behind a long transaction) it queues every
other query on the table behind it. A DDL statement the library issues outside
a migration run therefore runs with a short ``lock_timeout`` inside a
savepoint, and is retried a bounded number of times with jittered backoff: an
application query waits at most about one timeout, and the work either
succeeds once the lock is free or fails clearly after its retries.

Inside an Alembic migration run the retries belong to the run, not to the
statement (:mod:`fourstep_sqla.alembic.locks`): a lock timeout rolls the whole
revision back, so that no lock it took stays held while it waits. On such a
connection :func:`run_ddl` simply runs the statement.

Elsewhere (SQLite, MySQL/MariaDB) the statement runs as it is.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from .errors import FourStepError

__all__ = [
    "DDLLockTimeoutError",
    "LockPolicy",
    "lock_not_available",
    "retried_by_migration",
    "retry_delay",
    "run_ddl",
]

log = logging.getLogger("fourstep_sqla.ddl")

T = TypeVar("T")


class DDLLockTimeoutError(FourStepError):
    """A DDL statement could not get its lock within its retries."""


@dataclass(frozen=True)
class LockPolicy:
    """How long one DDL attempt may wait for its lock, and how often to retry."""

    lock_timeout_ms: int = 500
    retries: int = 10
    max_backoff_s: float = 5.0


DEFAULT_POLICY = LockPolicy()


#: connections of a migration run, with what says whether the run retries a lock
#: timeout right now (so that :func:`run_ddl` does not retry it too)
_RETRIED_BY_MIGRATION: WeakKeyDictionary[Connection, Callable[[], bool]] = WeakKeyDictionary()


def lock_not_available(exc: DBAPIError) -> bool:
    """A lock wait ran out: PostgreSQL ``lock_timeout`` (55P03), MariaDB/MySQL
    ``lock_wait_timeout`` (1205)."""
    if getattr(exc.orig, "sqlstate", None) == "55P03":
        return True
    args: Any = getattr(exc.orig, "args", ())
    return bool(args) and args[0] == 1205


def retry_delay(attempt: int, policy: LockPolicy) -> float:
    """Seconds to wait before retry ``attempt``: growing, capped, jittered."""
    return float(min(0.1 * 2**attempt, policy.max_backoff_s) * (0.5 + random.random()))


def retried_by_migration(conn: Connection, retries: Callable[[], bool] | None) -> None:
    """Mark ``conn`` as a migration run's: ``retries()`` says whether the run
    retries a lock timeout at this moment (None: unmark)."""
    if retries is None:
        _RETRIED_BY_MIGRATION.pop(conn, None)
    else:
        _RETRIED_BY_MIGRATION[conn] = retries


def run_ddl(
    conn: Connection,
    what: str,
    statement: Callable[[], T],
    policy: LockPolicy = DEFAULT_POLICY,
) -> T:
    """Run ``statement()`` (which issues DDL on ``conn``) lock-safely."""
    retried = _RETRIED_BY_MIGRATION.get(conn)
    if conn.dialect.name != "postgresql" or (retried is not None and retried()):
        return statement()
    attempt = 0
    while True:
        savepoint = conn.begin_nested()
        try:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(policy.lock_timeout_ms)}ms'")
            result = statement()
            conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
            savepoint.commit()
            return result
        except FourStepError:
            # a refusal found under the lock: give the lock back with the attempt
            savepoint.rollback()
            raise
        except DBAPIError as exc:
            savepoint.rollback()
            if not lock_not_available(exc):
                raise
            attempt += 1
            if attempt > policy.retries:
                raise DDLLockTimeoutError(
                    f"{what}: could not get the table lock within {policy.lock_timeout_ms} ms "
                    f"after {policy.retries} retries; a long transaction holds it. Find it in "
                    f"pg_stat_activity, let it finish, and run the migration again (nothing "
                    f"of this statement was applied)."
                ) from exc
            delay = retry_delay(attempt, policy)
            log.warning(
                "%s: lock not available within %d ms, retry %d/%d in %.0f ms",
                what, policy.lock_timeout_ms, attempt, policy.retries, delay * 1000,
            )
            time.sleep(delay)
