"""A backfill holds no transaction open between its batches, whatever its workers.

A worker claims a range of the run for as long as it walks it: on a 100M-row
table, hours. Were the claim a transaction (a row lock held on a lease
connection), it would hold back, for those hours, what every other session of
the database waits for: on PostgreSQL ``VACUUM`` could remove none of the rows
the backfill's own UPDATEs leave dead (the table doubles in size), and every
``CREATE INDEX CONCURRENTLY`` of the database, on any table, would wait for it;
on MariaDB/MySQL InnoDB's purge would stop behind it. So the claim is a
session-level lock (PostgreSQL's advisory lock, MariaDB's ``GET_LOCK``): it is
held without a transaction and still dies with its connection.

Each test pauses a worker between two batches (the progress callback) and
looks, from another connection, at the sessions the backfill opened (their
ids noted as they connect): none has a transaction older than the pause. On
PostgreSQL a ``CREATE INDEX CONCURRENTLY`` on another table, under a 2 s
``lock_timeout``, then completes during the pause. Rows are checked at the end.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, event, text
from test_backfill_runs import build, expected, new_values

from fourstep_sqla import backfill
from fourstep_sqla.backfill import BackfillProgress

#: CREATE INDEX CONCURRENTLY waits for every older transaction of the database:
#: run alone (make test)
pytestmark = pytest.mark.serial

ROWS = 600
#: how long a worker pauses; a transaction older than ``OLD_S`` is held across the
#: pause (MariaDB notes when a transaction began in whole seconds only)
PAUSE_S = {"postgresql": 0.8, "mysql": 1.5}
OLD_S = {"postgresql": 0.4, "mysql": 1.2}


class Sessions:
    """The database session ids of every connection ``engine`` opens."""

    def __init__(self, engine: Engine) -> None:
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        mysql = engine.dialect.name == "mysql"
        query = "SELECT CONNECTION_ID()" if mysql else "SELECT pg_backend_pid()"

        @event.listens_for(engine, "connect")
        def noted(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(query)
            (session_id,) = cursor.fetchone()
            cursor.close()
            with self.lock:
                self.ids.add(int(session_id))

    def old_transactions(self, observer: Any, seconds: float) -> list[tuple[Any, ...]]:
        """The backfill's sessions in a transaction that began over ``seconds`` ago."""
        with self.lock:
            ids = sorted(self.ids)
        if observer.dialect.name == "mysql":
            statement = text(
                "SELECT trx_mysql_thread_id, trx_started, trx_state, trx_query "
                "FROM information_schema.innodb_trx WHERE trx_mysql_thread_id IN :ids "
                "AND trx_started < now(6) - INTERVAL :s SECOND"
            )
        else:
            statement = text(
                "SELECT pid, state, backend_xid, backend_xmin, left(query, 120) "
                "FROM pg_stat_activity WHERE pid IN :ids AND xact_start IS NOT NULL "
                "AND xact_start < clock_timestamp() - make_interval(secs => :s)"
            )
        statement = statement.bindparams(bindparam("ids", expanding=True))
        rows = observer.execute(statement, {"ids": ids, "s": seconds}).all()
        observer.rollback()
        return [tuple(r) for r in rows]


@pytest.mark.parametrize("workers", [1, 2])
def test_no_transaction_is_held_between_batches(server_engine: Engine, workers: int) -> None:
    engine = server_engine
    table = f"bfl_idle_{workers}"
    model = build(engine, table, rows=ROWS)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE bfl_other (id INTEGER PRIMARY KEY, v INTEGER)")
    sessions = Sessions(engine)
    seen: list[list[tuple[Any, ...]]] = []
    built: list[str] = []
    tried: list[bool] = []
    failures: list[BaseException] = []

    def pause(progress: BackfillProgress) -> None:
        if progress.batches not in (3, 20):
            return
        try:
            time.sleep(PAUSE_S[engine.dialect.name])
            with engine.connect() as observer:
                seen.append(sessions.old_transactions(observer, OLD_S[engine.dialect.name]))
            if engine.dialect.name == "postgresql" and not tried:
                tried.append(True)
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as ddl:
                    ddl.exec_driver_sql("SET lock_timeout = '2s'")
                    ddl.exec_driver_sql(
                        f"CREATE INDEX CONCURRENTLY bfl_other_v_{workers} ON bfl_other (v)"
                    )
                    built.append("built")
        except BaseException as exc:  # reported by the test, not swallowed by the run
            failures.append(exc)

    report = backfill(engine, model.full_name, batch_size=10, target_ms=0, workers=workers,
                      progress=pause)

    assert failures == [], failures
    assert seen and all(rows == [] for rows in seen), seen
    if engine.dialect.name == "postgresql":
        assert built == ["built"]
    assert report.complete and report.rows_updated == ROWS
    assert new_values(engine, table) == expected(range(1, ROWS + 1))


def test_a_claim_held_by_a_row_lock_survives_the_lease_check(
    pg_schema_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the database has no session-level lock (the rules' fallback, played
    here on PostgreSQL), a claim is the range's row locked in a transaction the
    lease keeps open: the worker's look at its lease (every batch here) must
    not end that transaction, or another process could take the range."""
    import fourstep_sqla.runner as runner
    from fourstep_sqla.dialects import PostgreSQLRules
    from fourstep_sqla.state import ranges_table

    engine = pg_schema_engine
    monkeypatch.setattr(PostgreSQLRules, "try_lease", lambda self, conn, name: None)
    monkeypatch.setattr(runner, "LEASE_CHECK_SECONDS", 0.0)
    model = build(engine, "bfl_rowlock", rows=ROWS)
    free: list[list[int]] = []

    def look(progress: BackfillProgress) -> None:
        if progress.batches == 3:
            with engine.connect() as observer:
                free.append(list(observer.execute(
                    ranges_table.select().with_only_columns(ranges_table.c.range_no)
                    .with_for_update(skip_locked=True)
                ).scalars()))
                observer.rollback()

    report = backfill(engine, model.full_name, batch_size=10, target_ms=0, progress=look)
    assert report.complete
    (unlocked,) = free
    assert 0 not in unlocked, unlocked  # the first range, being worked, stays claimed
    assert new_values(engine, "bfl_rowlock") == expected(range(1, ROWS + 1))
