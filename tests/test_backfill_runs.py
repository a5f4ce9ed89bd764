"""Backfill runs: which run a call works on, when it may say complete, and
two calls at once; on SQLite and PostgreSQL, some on MariaDB too.

- :class:`TestRecreatedColumns`: a run killed midway (a ``progress`` callback
  that raises, or a real process killed with SIGKILL), then the new columns
  dropped and added again (a downgrade past step 1 and an upgrade back): the
  next call fills every row again instead of finishing the old run's ranges.
- :class:`TestCompleteMeansNothingPending`: rows a resumed run never covered
  (inserted between two calls by a writer that does not dual-write) are
  filled; a row that stays pending makes the report say ``complete=False``
  with ``rows_left`` and leaves the run unfinished in the state table; rows
  the transform fails on (``on_error="skip"``) are reported once, not chased
  by new runs.
- :class:`TestTwoCallsAtOnce`: a second call joining a run whose last range
  another call holds waits for it and reports complete; it takes the range
  over when its holder is killed; with a time budget it says the range is
  held elsewhere.
- The stopped-run and the waiting tests run on MariaDB too (a database of
  their own there).
- :class:`TestStateTablesOfThePreviousVersion`: state tables created by the
  previous version (no ``run_place`` column) are read as they are and
  completed by the next backfill, on SQLite, PostgreSQL and MariaDB.

Every test seeds old-only rows ``name = 'First<i> Last<i>'`` with Core and reads
back what the database stores. Tables are prefixed ``bfr_``.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    literal,
    select,
    text,
    union,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased
from fourstep_sqla.backfill import BackfillProgress, BackfillReport
from fourstep_sqla.runner import MAX_RUNS
from fourstep_sqla.state import progress_table, ranges_table, read_state

pytestmark = [
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
    # Python-only transforms are declared on purpose here (Python mode)
    pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning"),
]

MODES = ("sql", "python")
by_mode = pytest.mark.parametrize("mode", MODES)
#: 160 keys in batches of 10: 16 batches, in one range on SQLite and in four
#: ranges of 40 keys on PostgreSQL
N = 160


def picky_split(name: str) -> tuple[str | None, str | None]:
    """``Transform.split(" ")`` in Python, failing on names that start with "bad"."""
    if name.startswith("bad"):
        raise ValueError(f"cannot split {name!r}")
    first, _, last = name.partition(" ")
    return first or None, last or None


def make_model(table: str, mode: str = "sql", forward: Transform[Any] | None = None) -> Any:
    """A model ``id, name -> first_name, last_name`` on ``table``; Python mode
    strips the SQL form of the forward transform."""

    class Base(DeclarativeBase):
        pass

    fwd = forward if forward is not None else Transform.split(" ")
    if mode == "python":
        fwd = Transform(fwd.python, name=fwd.name)
    model = type(f"Bfr_{table}", (Base,), {
        "__tablename__": table,
        "__module__": __name__,
        "id": mapped_column(Integer, primary_key=True, autoincrement=False),
        "legacy_name": mapped_column("name", String(100), nullable=True),
        "first_name": mapped_column(String(100), nullable=True),
        "last_name": mapped_column(String(100), nullable=True),
        "full_name": phased(old="legacy_name", new=("first_name", "last_name"), forward=fwd,
                            backward=Transform.join(" "), phase=Phase.STOP_READ_OLD),
    })
    return model


def build(engine: Engine, table: str, mode: str = "sql", rows: int = N,
          forward: Transform[Any] | None = None) -> Any:
    model = make_model(table, mode, forward)
    model.metadata.create_all(engine)
    seed(engine, table, range(1, rows + 1))
    return model


def seed(engine: Engine, table: str, ids: range | list[int]) -> None:
    """Old-only rows, as a writer that does not dual-write inserts them."""
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO {table} (id, name) VALUES (:id, :name)"),
            [{"id": i, "name": f"First{i} Last{i}"} for i in ids],
        )


def expected(ids: range | list[int]) -> dict[int, tuple[str | None, str | None]]:
    return {i: (f"First{i}", f"Last{i}") for i in ids}


def new_values(engine: Engine, table: str) -> dict[int, tuple[str | None, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, first_name, last_name FROM {table}")).all()
    return {int(r[0]): (r[1], r[2]) for r in rows}


def pending_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            f"SELECT count(*) FROM {table} WHERE first_name IS NULL AND last_name IS NULL "
            f"AND name IS NOT NULL"
        )).scalar_one())


def runs_recorded(engine: Engine, key: str) -> set[str]:
    """The run ids ``fourstep_ranges`` / ``fourstep_progress`` still hold for ``key``."""
    with engine.connect() as conn:
        rows = conn.execute(
            union(
                select(ranges_table.c.run_id).where(ranges_table.c.key == key),
                select(progress_table.c.run_id).where(progress_table.c.key == key),
            )
        ).all()
    return {str(r[0]) for r in rows}


def progress_rows_updated(engine: Engine, key: str) -> int:
    """Rows recorded in ``fourstep_progress`` for ``key`` (0 before the first run)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("fourstep_progress"):
            return 0
        return int(conn.execute(
            select(func.coalesce(func.sum(progress_table.c.rows_updated), 0)).where(
                progress_table.c.key == key
            )
        ).scalar_one())


def recreate_new_columns(engine: Engine, table: str) -> None:
    """A downgrade past step 1, then an upgrade back: the new columns are
    dropped and added again, empty."""
    with engine.begin() as conn:
        for name in ("first_name", "last_name"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {name}")
        for name in ("first_name", "last_name"):
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} VARCHAR(100)")


def stop_after(batches: int) -> Any:
    """A ``progress`` callback that stops the run (as a killed deploy job would)
    once ``batches`` batches have committed."""

    def stop(progress: BackfillProgress) -> None:
        if progress.batches == batches:
            raise RuntimeError("killed midway")

    return stop


def assert_complete(report: BackfillReport) -> None:
    assert report.complete is True
    assert report.rows_left == 0
    assert report.held_elsewhere == 0
    assert report.budget_exhausted is False


# -- a backfill run in a process of its own ----------------------------------------------
WORKER = textwrap.dedent(
    """
    import sys

    from sqlalchemy import Integer, String, create_engine
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    from fourstep_sqla import Phase, Transform, backfill, phased

    url, search_path, table, mode, pause_ms = sys.argv[1:6]
    engine = create_engine(
        url, connect_args={"options": f"-csearch_path={search_path}"} if search_path else {}
    )
    forward = Transform.split(" ")
    if mode == "python":
        forward = Transform(forward.python, name=forward.name)


    class Base(DeclarativeBase):
        pass


    class Model(Base):
        __tablename__ = table
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        legacy_name = mapped_column("name", String(100), nullable=True)
        first_name = mapped_column(String(100), nullable=True)
        last_name = mapped_column(String(100), nullable=True)
        full_name = phased(old="legacy_name", new=("first_name", "last_name"), forward=forward,
                           backward=Transform.join(" "), phase=Phase.STOP_READ_OLD)


    report = backfill(engine, Model.full_name, batch_size=10, target_ms=0,
                      pause_ms=float(pause_ms))
    print(report.complete, report.rows_updated)
    """
)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start :data:`WORKER` on an engine's database; every process is killed at the end."""
    script = tmp_path / "backfill_worker.py"
    script.write_text(WORKER)
    started: list[subprocess.Popen[str]] = []

    def start(engine: Engine, table: str, mode: str = "sql", pause_ms: float = 0) -> Any:
        search_path = ""
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                search_path = str(conn.exec_driver_sql("SHOW search_path").scalar_one())
        url = engine.url.render_as_string(hide_password=False)
        process = subprocess.Popen(
            [sys.executable, str(script), url, search_path, table, mode, str(pause_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def wait_for_progress(engine: Engine, key: str, rows: int, process: Any) -> int:
    """Wait until the run of ``key`` has committed at least ``rows`` rows."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = progress_rows_updated(engine, key)
        if done >= rows:
            return done
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the worker ended early: {out} {err}")
        time.sleep(0.02)
    raise AssertionError(f"{key}: fewer than {rows} rows done after 60 s")


needs_drop_column = pytest.mark.skipif(
    sqlite3.sqlite_version_info < (3, 35), reason="SQLite before 3.35 has no DROP COLUMN"
)


# -- 1. a run belongs to the columns it filled --------------------------------------------
@needs_drop_column
class TestRecreatedColumns:
    @by_mode
    def test_a_stopped_run_is_not_finished_on_new_columns(
        self, engine: Engine, mode: str
    ) -> None:
        table = f"bfr_recreated_{mode}"
        model = build(engine, table, mode)
        key = f"{table}.full_name"
        with pytest.raises(RuntimeError, match="killed midway"):
            backfill(engine, model.full_name, batch_size=10, target_ms=0, progress=stop_after(6))
        stopped = read_state(engine, key)
        assert stopped is not None and stopped.run_status == "running"
        assert pending_rows(engine, table) == N - 60

        recreate_new_columns(engine, table)
        assert pending_rows(engine, table) == N

        report = backfill(engine, model.full_name, batch_size=10, target_ms=0)

        assert_complete(report)
        assert new_values(engine, table) == expected(range(1, N + 1))
        assert report.rows_updated == N
        assert report.run_id != stopped.run_id
        state = read_state(engine, key)
        assert state is not None
        assert (state.run_id, state.run_status) == (report.run_id, "complete")
        # the stopped run's plan is gone: nothing resumes it again
        assert runs_recorded(engine, key) == {report.run_id}
        if engine.dialect.name == "postgresql":
            # the columns' identity tells the run apart: one new run, every batch once
            assert report.batches == 16
            assert state.rows_updated == N
        else:
            # no identity on SQLite or MariaDB: the stopped run's last 10 batches,
            # then the check of the table finds the first 60 rows, a new run fills them
            assert report.batches == 10 + 16
            assert state.rows_updated == 60

    def test_a_killed_process_then_new_columns(self, engine: Engine, spawn: Any) -> None:
        """SIGKILL mid-run, downgrade past step 1, upgrade back: every row is filled."""
        table = "bfr_recreated_killed"
        model = build(engine, table)
        key = f"{table}.full_name"
        worker = spawn(engine, table, pause_ms=40)
        done = wait_for_progress(engine, key, 50, worker)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        assert done < N
        killed = read_state(engine, key)
        assert killed is not None and killed.run_status == "running"

        recreate_new_columns(engine, table)
        report = backfill(engine, model.full_name, batch_size=10, target_ms=0)

        assert_complete(report)
        assert report.rows_updated == N
        assert new_values(engine, table) == expected(range(1, N + 1))
        assert pending_rows(engine, table) == 0
        state = read_state(engine, key)
        assert state is not None and state.run_status == "complete"
        assert report.run_id != killed.run_id
        assert runs_recorded(engine, key) == {report.run_id}

    def test_the_run_records_the_identity_of_its_new_columns(
        self, pg_schema_engine: Engine
    ) -> None:
        """PostgreSQL: the run records its table and new columns by number, and a
        re-added column gets a new number."""
        engine = pg_schema_engine
        table = "bfr_identity"
        model = build(engine, table)
        key = f"{table}.full_name"
        first = backfill(engine, model.full_name)
        assert_complete(first)

        def place() -> str:
            with engine.connect() as conn:
                return str(conn.execute(
                    text("SELECT run_place FROM fourstep_state WHERE key = :k"), {"k": key}
                ).scalar_one())

        def attnums() -> list[int]:
            with engine.connect() as conn:
                return [int(n) for n in conn.execute(text(
                    "SELECT attnum FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
                    "AND attname IN ('first_name', 'last_name') ORDER BY attname"
                ), {"t": table}).scalars()]

        recorded = place()
        assert all(str(n) in recorded for n in attnums())
        recreate_new_columns(engine, table)
        again = backfill(engine, model.full_name)
        assert_complete(again)
        assert again.rows_updated == N
        assert place() != recorded
        assert all(str(n) in place() for n in attnums())


# -- 2. complete means nothing pending -----------------------------------------------------
class TestCompleteMeansNothingPending:
    @by_mode
    def test_rows_inserted_between_two_calls_are_filled(self, engine: Engine, mode: str) -> None:
        """A resumed run's upper bound is the first call's: rows inserted since,
        by a writer that does not dual-write, are past it."""
        table = f"bfr_between_{mode}"
        model = build(engine, table, mode, rows=100)
        key = f"{table}.full_name"
        with pytest.raises(RuntimeError, match="killed midway"):
            backfill(engine, model.full_name, batch_size=10, target_ms=0, progress=stop_after(3))
        stopped = read_state(engine, key)
        assert stopped is not None and stopped.run_status == "running"
        written = 100 - pending_rows(engine, table)
        assert written == stopped.rows_updated > 0
        seed(engine, table, range(101, 151))

        report = backfill(engine, model.full_name, batch_size=10, target_ms=0)

        assert_complete(report)
        assert report.rows_updated == 150 - written
        assert new_values(engine, table) == expected(range(1, 151))
        state = read_state(engine, key)
        assert state is not None and state.run_status == "complete"

    @by_mode
    def test_a_row_left_pending_is_reported(self, engine: Engine, mode: str) -> None:
        """A writer keeps clearing row 1's new place behind the run: the report
        says so, the state keeps the run unfinished, the next call finishes it."""
        table = f"bfr_left_{mode}"
        model = build(engine, table, mode)
        key = f"{table}.full_name"

        def clear_row_one(progress: BackfillProgress) -> None:
            with engine.begin() as conn:
                conn.execute(text(
                    f"UPDATE {table} SET first_name = NULL, last_name = NULL WHERE id = 1"
                ))

        report = backfill(engine, model.full_name, batch_size=10, target_ms=0,
                          progress=clear_row_one)

        assert report.complete is False
        assert report.rows_left == 1 == pending_rows(engine, table)
        assert report.budget_exhausted is False
        assert report.held_elsewhere == 0
        # the first run filled every row, each later one row 1 again
        assert report.rows_updated == N + MAX_RUNS - 1
        state = read_state(engine, key)
        assert state is not None
        assert state.run_status == "running"
        assert state.backfilled is False

        again = backfill(engine, model.full_name, batch_size=10, target_ms=0)

        assert_complete(again)
        assert again.rows_updated == 1
        assert new_values(engine, table) == expected(range(1, N + 1))
        state = read_state(engine, key)
        assert state is not None and state.run_status == "complete"

    def test_skipped_rows_are_reported_once(self, engine: Engine) -> None:
        """Rows the transform fails on stay pending: they are skipped and reported,
        not taken for rows a run left behind (Python mode)."""
        table = "bfr_skipped"
        model = build(engine, table, forward=Transform(picky_split, name="picky_split"))
        bad = [7, 70, 150]
        with engine.begin() as conn:
            users = model.__table__
            conn.execute(update(users).where(users.c.id.in_(bad))
                         .values(name=literal("bad") + users.c.name))

        report = backfill(engine, model.full_name, batch_size=10, target_ms=0, on_error="skip")

        assert report.complete is True
        assert report.rows_left == 0
        assert sorted(report.skipped_keys) == [(i,) for i in bad]
        assert report.rows_updated == N - len(bad)
        assert pending_rows(engine, table) == len(bad)
        state = read_state(engine, f"{table}.full_name")
        assert state is not None
        assert (state.run_status, state.skipped) == ("complete", len(bad))

    @pytest.mark.parametrize("transform", ["builtin", "plain"])
    def test_skipped_rows_of_a_sql_cast_are_reported_once(
        self, server_engine: Engine, transform: str
    ) -> None:
        """PostgreSQL and MariaDB: a SQL cast fails on a row (SQLite's CAST never
        fails). The built-in says cheaply when its result is empty; a plain SQL
        transform is evaluated by the pending predicate itself, so looking for
        pending rows fails on the row too."""
        engine = server_engine
        forward = Transform.cast(int, Integer())
        if transform == "plain":
            forward = Transform(int, sql=lambda amount: sql_cast(amount, Integer()), name="to_int")

        class Base(DeclarativeBase):
            pass

        model: Any = type("Bfr_cast", (Base,), {
            "__tablename__": "bfr_cast",
            "__module__": __name__,
            "id": mapped_column(Integer, primary_key=True, autoincrement=False),
            "amount_text": mapped_column(String(20), nullable=True),
            "amount": mapped_column(Integer, nullable=True),
            "total": phased(old="amount_text", new="amount", forward=forward,
                            backward=Transform.cast(str, String()), phase=Phase.STOP_READ_OLD),
        })
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO bfr_cast (id, amount_text) VALUES (:id, :a)"),
                [{"id": i, "a": "x" if i in (5, 55) else str(i)} for i in range(1, N + 1)],
            )

        report = backfill(engine, model.total, batch_size=10, target_ms=0, on_error="skip")

        assert report.complete is True
        assert report.rows_left == 0
        assert sorted(report.skipped_keys) == [(5,), (55,)]
        assert report.rows_updated == N - 2
        state = read_state(engine, "bfr_cast.total")
        assert state is not None and state.run_status == "complete"


# -- 3. two calls at once ---------------------------------------------------------------
class Holder:
    """A backfill call in a thread that stops after ``batches`` batches, holding
    the range it is in, until released."""

    def __init__(self, engine: Engine, model: Any, batches: int) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.report: BackfillReport | None = None
        self.error: BaseException | None = None

        def hold(progress: BackfillProgress) -> None:
            if progress.batches == batches:
                self.holding.set()
                if not self.release.wait(60):
                    raise RuntimeError("never released")

        def run() -> None:
            try:
                self.report = backfill(engine, model.full_name, batch_size=10, target_ms=0,
                                       progress=hold)
            except BaseException as exc:  # handed to the test
                self.error = exc

        self.thread = threading.Thread(target=run, name="holder")
        self.thread.start()
        assert self.holding.wait(60), "the holder never got there"

    def finish(self) -> BackfillReport:
        self.release.set()
        self.thread.join(60)
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


class TestTwoCallsAtOnce:
    def test_the_second_call_waits_for_the_range_the_first_holds(
        self, engine: Engine
    ) -> None:
        table = "bfr_two_wait"
        model = build(engine, table)
        key = f"{table}.full_name"
        # 14 of 16 batches done: the holder is in the last of the 4 ranges (1 on SQLite)
        holder = Holder(engine, model, batches=14)
        release = threading.Timer(1.0, holder.release.set)
        try:
            release.start()
            started = time.monotonic()
            second = backfill(engine, model.full_name, batch_size=10, target_ms=0)
            waited = time.monotonic() - started
        finally:
            release.cancel()
            first = holder.finish()

        assert_complete(second)
        assert_complete(first)
        assert second.run_id == first.run_id
        assert first.rows_updated + second.rows_updated == N
        assert new_values(engine, table) == expected(range(1, N + 1))
        state = read_state(engine, key)
        assert state is not None
        assert (state.run_id, state.run_status, state.rows_updated) == (
            first.run_id, "complete", N
        )
        if engine.dialect.name != "sqlite":
            # it waited for the holder, which finished its own range (SQLite has no
            # claims: one writer at a time, the second call did the rest itself)
            assert waited >= 0.9
            assert (first.rows_updated, second.rows_updated) == (N, 0)

    def test_a_range_whose_holder_was_killed_is_taken_over(
        self, engine: Engine, spawn: Any
    ) -> None:
        table = "bfr_two_killed"
        model = build(engine, table)
        key = f"{table}.full_name"
        worker = spawn(engine, table, pause_ms=150)
        # on PostgreSQL the worker is then in the last of the 4 ranges
        wait_for_progress(engine, key, 130, worker)
        joined: dict[str, Any] = {}

        def second_call() -> None:
            try:
                joined["report"] = backfill(engine, model.full_name, batch_size=10, target_ms=0)
            except BaseException as exc:  # handed to the test
                joined["error"] = exc

        thread = threading.Thread(target=second_call, name="second")
        thread.start()
        time.sleep(0.3)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        thread.join(60)
        assert not thread.is_alive()
        if "error" in joined:
            raise joined["error"]
        report: BackfillReport = joined["report"]

        assert_complete(report)
        assert new_values(engine, table) == expected(range(1, N + 1))
        state = read_state(engine, key)
        assert state is not None
        assert (state.run_id, state.run_status) == (report.run_id, "complete")
        assert state.rows_updated == N  # every row counted once, across both processes

    def test_a_time_budget_says_the_range_is_held_elsewhere(
        self, pg_schema_engine: Engine
    ) -> None:
        """PostgreSQL (SQLite has no claims): the budget runs out while waiting."""
        engine = pg_schema_engine
        table = "bfr_two_budget"
        model = build(engine, table)
        holder = Holder(engine, model, batches=14)
        try:
            second = backfill(engine, model.full_name, batch_size=10, target_ms=0,
                              max_seconds=0.5)
        finally:
            first = holder.finish()

        assert second.complete is False
        assert second.budget_exhausted is True
        assert second.held_elsewhere == 1
        assert second.rows_updated == 0
        assert second.rows_left == 20  # the two batches of the held range
        assert_complete(first)
        assert new_values(engine, table) == expected(range(1, N + 1))


# -- state tables created by the previous version ------------------------------------------
def previous_state_tables() -> MetaData:
    """The state tables as the previous version created them."""
    metadata = MetaData()
    Table(
        "fourstep_state", metadata,
        Column("key", String(255), primary_key=True),
        Column("table_name", String(255), nullable=False),
        Column("recorded_phase", Integer),
        Column("run_id", String(36)),
        Column("run_status", String(16)),
        Column("run_upper_bound", Text),
        Column("run_started_at", DateTime(timezone=True)),
        Column("run_finished_at", DateTime(timezone=True)),
        Column("verified_at", DateTime(timezone=True)),
        Column("verify_total", BigInteger),
        Column("verify_missing", BigInteger),
        Column("verify_mismatched", BigInteger),
        Column("verify_sample", Text),
        Column("updated_at", DateTime(timezone=True)),
    )
    Table(
        "fourstep_ranges", metadata,
        Column("key", String(255), primary_key=True),
        Column("run_id", String(36), primary_key=True),
        Column("range_no", Integer, primary_key=True),
        Column("lower_key", Text),
        Column("upper_key", Text, nullable=False),
    )
    Table(
        "fourstep_progress", metadata,
        Column("key", String(255), primary_key=True),
        Column("run_id", String(36), primary_key=True),
        Column("range_no", Integer, primary_key=True),
        Column("cursor_key", Text),
        Column("done", Boolean, nullable=False, default=False),
        Column("rows_updated", BigInteger, nullable=False, default=0),
        Column("batches", Integer, nullable=False, default=0),
        Column("updated_at", DateTime(timezone=True)),
    )
    Table(
        "fourstep_skipped", metadata,
        Column("key", String(255), primary_key=True),
        Column("row_key", String(512), primary_key=True),
        Column("run_id", String(36)),
        Column("error", Text),
        Column("recorded_at", DateTime(timezone=True)),
    )
    return metadata


class TestStateTablesOfThePreviousVersion:
    def check(self, engine: Engine) -> None:
        table = "bfr_previous"
        model = build(engine, table)
        key = f"{table}.full_name"
        previous = previous_state_tables()
        previous.create_all(engine)
        with engine.begin() as conn:
            conn.execute(previous.tables["fourstep_state"].insert().values(
                key=key, table_name=table, recorded_phase=2
            ))
        state = read_state(engine, key)
        assert state is not None and state.recorded_phase == 2

        report = backfill(engine, model.full_name, batch_size=10, target_ms=0)

        assert_complete(report)
        assert new_values(engine, table) == expected(range(1, N + 1))
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("fourstep_state")}
        assert "run_place" in columns
        again = backfill(engine, model.full_name, batch_size=10, target_ms=0)
        assert_complete(again)
        assert again.rows_updated == 0
        state = read_state(engine, key)
        assert state is not None
        assert (state.recorded_phase, state.run_status) == (2, "complete")

    def test_on_each_database(self, engine: Engine) -> None:
        self.check(engine)

