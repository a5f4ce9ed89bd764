"""Lock-safe DDL on PostgreSQL: a DROP waiting behind a long transaction never
stalls the application's queries for longer than about one lock_timeout.

A transaction on another connection holds a lock on the table (it read a row
and stays open). The step-4 migration's ``ALTER TABLE ... DROP COLUMN`` needs
ACCESS EXCLUSIVE and queues; while it waits, the application's point queries
queue behind it. With ``fourstep_lock_timeout_ms=200`` each attempt gives up
after 200 ms, letting them through, and retries with backoff.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from test_alembic_ops import ENV_PY, Env

from fourstep_sqla.ddl import DDLLockTimeoutError

pytestmark = pytest.mark.postgres

LOCK_MS = 200


def _env(tmp_path: Path, engine: Engine, retries: int) -> Env:
    env = Env(tmp_path, engine)
    (env.dir / "env.py").write_text(
        ENV_PY.replace(
            "context.configure(connection=connection, transaction_per_migration=True)",
            "context.configure(connection=connection, transaction_per_migration=True, "
            f"fourstep_lock_timeout_ms={LOCK_MS}, fourstep_lock_retries={retries})",
        )
    )
    env.all_steps()
    command.upgrade(env.config, "s3")
    return env


class _PointQueries(threading.Thread):
    """The application: point SELECTs on the table, timing each one."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(text("SELECT first_name FROM users WHERE id = 2")).all()
                conn.commit()
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.005)


def test_drop_waits_politely_and_succeeds_once_the_lock_is_gone(
    pg_schema_engine: Engine, tmp_path: Path
) -> None:
    env = _env(tmp_path, pg_schema_engine, retries=20)
    engine = pg_schema_engine
    holder = engine.connect()
    holder.execute(text("SELECT * FROM users WHERE id = 1")).all()
    queries = _PointQueries(engine)
    queries.start()
    failure: list[BaseException] = []

    def migrate() -> None:
        try:
            command.upgrade(env.config, "s4")
        except BaseException as exc:
            failure.append(exc)

    migration = threading.Thread(target=migrate)
    migration.start()
    time.sleep(1.5)  # several lock_timeouts while the long transaction holds on
    assert migration.is_alive(), failure
    holder.rollback()
    holder.close()
    migration.join(timeout=30)
    queries.stop.set()
    queries.join()
    assert not failure, failure
    assert "name" not in [c["name"] for c in inspect(pg_schema_engine).get_columns("users")]
    assert len(queries.latencies) > 20
    # without lock_timeout a query would have waited the whole 1.5 s
    assert max(queries.latencies) < LOCK_MS / 1000 * 2.5, max(queries.latencies)


def test_drop_fails_clearly_after_its_retries(pg_schema_engine: Engine, tmp_path: Path) -> None:
    env = _env(tmp_path, pg_schema_engine, retries=2)
    holder = pg_schema_engine.connect()
    holder.execute(text("SELECT * FROM users WHERE id = 1")).all()
    try:
        with pytest.raises(DDLLockTimeoutError, match="after 2 retries") as caught:
            command.upgrade(env.config, "s4")
        assert "pg_stat_activity" in str(caught.value)
    finally:
        holder.rollback()
        holder.close()
    # nothing was applied: the column is still there and the revision did not move
    assert "name" in [c["name"] for c in inspect(pg_schema_engine).get_columns("users")]
    command.upgrade(env.config, "s4")  # and it goes through once the lock is free
