"""``CREATE INDEX CONCURRENTLY`` names the transactions it will wait for.

The build waits for every older transaction of the database, on any table: a
forgotten ``idle in transaction`` session makes the step-2 revision look hung
while the application runs on. The concurrent index op (``forward_index``'s
revision, as autogenerate writes it) warns, as it starts, with the pid,
application name, age and state of each transaction open for a second or more;
it then completes once that transaction ends. Named are the transactions the
build waits for: those that hold a snapshot (a report in REPEATABLE READ here)
or a lock on the table. PostgreSQL only; run alone (the other tests'
transactions would be named too).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, create_engine, text

import fourstep_sqla.alembic  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.serial]


def test_the_transactions_a_concurrent_build_waits_for_are_named(
    pg_schema_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = pg_schema_engine
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE iw_items (id integer PRIMARY KEY, v integer)")
        conn.exec_driver_sql("INSERT INTO iw_items SELECT g, g FROM generate_series(1, 100) g")
    report = create_engine(engine.url, connect_args={"application_name": "nightly-report"})
    caplog.set_level(logging.WARNING, logger="fourstep_sqla.alembic.indexes")
    failures: list[BaseException] = []

    def build() -> None:
        try:
            with engine.connect() as conn:
                operations = Operations(MigrationContext.configure(conn))
                operations.create_index("iw_items_v", "iw_items", ["v"],
                                        postgresql_concurrently=True)
        except BaseException as exc:  # handed to the test
            failures.append(exc)

    with report.connect() as holder:
        # a report reading in one snapshot, left open (idle in transaction)
        holder.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        holder.execute(text("SELECT count(*) FROM pg_class"))
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        time.sleep(1.2)
        builder = threading.Thread(target=build)
        builder.start()
        builder.join(3)
        assert builder.is_alive(), "the build did not wait for the open transaction"
        holder.rollback()
    builder.join(30)
    report.dispose()

    assert failures == []
    warnings = [r.getMessage() for r in caplog.records
                if "waits for these open transactions" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert f"pid {pid} (nightly-report, open " in warnings[0], warnings[0]
    assert "idle in transaction" in warnings[0] and "pg_backend_pid" in warnings[0]
    with engine.connect() as conn:
        valid = conn.execute(text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = 'iw_items_v'"
        )).scalar_one()
    assert valid is True
