"""The backfill engine: step 3 of the Four Step Process.

``backfill(bind, User.full_name)`` writes ``new = forward(old)`` into every
row where the new place is still empty and the old one is not. It is the one
implementation that the CLI (``fourstep backfill``), the Alembic operation and
the tests call.

How it stays safe on a big, busy table:

- **Key ranges.** It walks the primary key (integer, text, UUID, composite) in
  batches ``lower < pk <= upper``; each batch is an index range scan, never
  ``IN (SELECT ... LIMIT n)`` (which makes PostgreSQL hash-join the whole table
  and re-check nothing). The upper bound of the key is fixed when a run starts,
  so a run always finishes however fast rows are inserted: rows inserted later
  are written in both places by the application.
- **The pending predicate is on the row being updated**: ``new IS NULL AND old
  IS NOT NULL``. Under READ COMMITTED PostgreSQL re-checks it after waiting for
  a row lock, so a row the application writes meanwhile is never overwritten.
- **One transaction per batch, with its progress.** The batch and its cursor in
  ``fourstep_progress`` commit together: a run killed at any moment (even
  ``kill -9``) resumes exactly after its last committed batch, and a finished
  run repeated walks the keys again, finding nothing to do.
- **Adaptive batch size** toward ``target_ms`` per batch (never more than
  doubling or halving per step). Every row a batch touches stays locked until
  it commits, so the target bounds how long an application write can wait.
  The default (40 ms) is about 12,000 narrow rows per batch on PostgreSQL,
  which keeps a concurrent writer's p99 near 3-4 ms on a 1M-row table; the
  first batch is 4,000 rows. While keys are dense, a batch's upper key is
  computed (``lower + size``); after an empty batch one index probe jumps to
  the next existing key, so sparse keys cost one probe per gap.
- **Lock manners on PostgreSQL**: ``lock_timeout`` is set below
  ``deadlock_timeout`` so the backfill, not the application, gives way; lock
  timeouts, deadlocks and serialization failures are retried a bounded number
  of times with jittered backoff; a statement timeout halves the batch. Batches
  commit with ``synchronous_commit = off``: a server crash can lose the last few,
  each together with its progress row, so the resume simply redoes them.
- **SQL mode** (the forward transform has a SQL form): one set-based UPDATE
  per batch. **Python mode** otherwise: read the pending rows of a batch,
  compute in Python, write them with one statement guarded by
  compare-and-set on the old value(s); rows whose old value changed in
  between are picked up by a sweep of that batch. On PostgreSQL the next
  batch is read and computed on a second connection while the current one
  is written, so Python and the server work at the same time.
- **Several workers** (threads here, or processes on many machines) share a
  run: its key space is split into ranges, and a worker claims a range by
  locking its row in ``fourstep_ranges`` (``FOR UPDATE SKIP LOCKED``) on a
  lease connection. A worker that dies releases its lease with its connection
  and another one resumes the range from its cursor.
- **Transforms that raise**: ``on_error="stop"`` (default) stops with an error
  naming the keys and the exception, nothing of the failing batch written;
  ``on_error="skip"`` records those keys in ``fourstep_skipped``, finishes the
  rest and reports them. In SQL mode the failing rows are found by bisecting
  the batch under savepoints. In Python mode a computed value the column
  cannot hold exactly (too long, too many decimals, another type) fails its
  row the same way, instead of being truncated or converted by the database.
- **Repair** (``repair=True``): the same engine over the rows whose two places
  disagree (see :mod:`fourstep_sqla.places`), rewriting ``new = forward(old)``:
  the old place wins. For rows written past the sync triggers, or before them.

The pieces: :mod:`fourstep_sqla.runner` (runs, claims, batches, retries),
:mod:`fourstep_sqla.jobs` (what a batch writes: fill or repair, in SQL or in
Python) and :mod:`fourstep_sqla.dialects` (what differs per database).

Not handled: several workers on SQLite (one writer at a time anyway: the
ranges run one after the other), tables without a primary key (a clear error).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Engine

from .attribute import PhasedSpec
from .dialects import rules_for
from .errors import BackfillError, ExternalTransactionError
from .jobs import Job, make_job
from .keys import KeyRange, primary_key_of
from .registry import resolve
from .runner import Runner
from .state import ensure_state_tables

__all__ = [
    "BackfillError",
    "BackfillProgress",
    "BackfillReport",
    "ExternalTransactionError",
    "backfill",
    "pending_count",
]

log = logging.getLogger("fourstep_sqla.backfill")

OnError = Literal["stop", "skip"]
Key = tuple[Any, ...]

#: default target duration of one batch (see the module docs)
DEFAULT_TARGET_MS = 40.0
DEFAULT_FIRST_BATCH = 4_000


@dataclass(frozen=True)
class BackfillProgress:
    """Sent to the ``progress`` callback after every batch."""

    key: str
    rows_updated: int
    batches: int
    rows_pending_at_start: int | None
    elapsed: float
    batch_size: int
    last_batch_ms: float


@dataclass
class BackfillReport:
    """What a backfill call did."""

    key: str
    mode: str
    rows_updated: int = 0
    batches: int = 0
    seconds: float = 0.0
    rows_left: int = 0
    skipped_keys: list[Key] = field(default_factory=list)
    complete: bool = False
    #: the time budget (``max_seconds``) ran out with rows left
    budget_exhausted: bool = False
    dry_run: bool = False
    run_id: str | None = None
    #: wall time of each batch, in order (for benchmarks and logs)
    batch_seconds: list[float] = field(default_factory=list)
    #: a repair (``repair=True``): rows whose places disagreed were rewritten
    repair: bool = False
    #: step 4 is done: the old column(s) are dropped, there is nothing to fill
    dropped: bool = False

    @property
    def ok(self) -> bool:
        """Complete with nothing skipped."""
        return self.complete and not self.skipped_keys


def _job(
    bind: Engine | Connection, spec: PhasedSpec, on_error: OnError, repair: bool
) -> Job | None:
    """The job for ``spec`` on this database, or None when step 4 is done (the old
    column(s) dropped); one read-only look at the database."""
    table = spec.table
    assert table is not None
    keys = KeyRange(table, primary_key_of(table, spec.key))
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            found = _look(conn, spec)
    else:
        found = _look(bind, spec)
    if found is None:
        return None
    rules, synced, marks = found
    state_key = f"{spec.key}:repair" if repair else spec.key
    return make_job(
        spec, keys, rules, state_key=state_key, on_error=on_error, repair=repair, synced=synced,
        marks=marks,
    )


def _look(conn: Connection, spec: PhasedSpec) -> tuple[Any, bool, str | bool | None] | None:
    """The dialect rules, whether the sync triggers are installed and where the
    write marks live (False: none); None when the old column(s) are gone."""
    from .places import old_place_dropped
    from .triggers import installed
    from .verify import written_marks

    try:
        if old_place_dropped(conn, spec):
            return None
        return rules_for(conn), installed(conn, spec), written_marks(conn, spec)
    finally:
        if conn.in_transaction():
            conn.rollback()


def pending_count(
    bind: Engine | Connection, attribute_or_key: Any, *, repair: bool = False
) -> int:
    """Rows a backfill of ``attribute_or_key`` would still write (read-only).

    The same predicate the backfill uses: every new column NULL, some old
    column not NULL, and ``forward(old)`` not empty; with ``repair=True``, the
    rows whose places disagree.
    """
    spec = resolve(attribute_or_key)
    if spec.table is None:
        raise BackfillError(f"{spec.describe()} is not mapped yet; import its model first")
    job = _job(bind, spec, "stop", repair)
    if job is None:
        return 0
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return job.count_pending(conn)
    return job.count_pending(bind)


def _engine_of(bind: Engine | Connection) -> Engine:
    return bind if isinstance(bind, Engine) else bind.engine


def backfill(
    bind: Engine | Connection,
    attribute_or_key: Any,
    *,
    batch_size: int | None = None,
    target_ms: float = DEFAULT_TARGET_MS,
    pause_ms: float = 0.0,
    max_seconds: float | None = None,
    workers: int = 1,
    on_error: OnError = "stop",
    dry_run: bool = False,
    lock_timeout_ms: float | None = None,
    retries: int = 5,
    repair: bool = False,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillReport:
    """Write ``new = forward(old)`` into every pending row of a phased attribute.

    :param bind: an Engine, or a Connection that is not inside a transaction
        (each batch commits on its own).
    :param attribute_or_key: ``User.full_name`` or ``"users.full_name"``.
    :param batch_size: rows in the first batch (then adapted to ``target_ms``);
        with ``target_ms=0`` the size stays fixed.
    :param target_ms: target duration of one batch.
    :param pause_ms: sleep between batches.
    :param max_seconds: time budget; the report says ``complete=False`` when it
        runs out with rows left (run again to resume).
    :param workers: threads working ranges of the key space in parallel
        (PostgreSQL and MySQL/MariaDB; on SQLite ranges run one after another).
    :param on_error: ``"stop"`` or ``"skip"`` when the transform fails on a row.
    :param dry_run: count what would be done; write nothing, not even state.
    :param lock_timeout_ms: PostgreSQL lock_timeout per batch (capped below
        half of ``deadlock_timeout``).
    :param retries: retries of a batch after lock timeouts or deadlocks.
    :param repair: rewrite ``new = forward(old)`` in every row whose places
        disagree (missing or mismatched, see :mod:`fourstep_sqla.places`), not
        only where the new place is empty. A separate run, with the same
        batching, resume, locking and report.
    :param progress: called after every batch with a :class:`BackfillProgress`.
    """
    spec = resolve(attribute_or_key)
    if spec.table is None:
        raise BackfillError(f"{spec.describe()} is not mapped yet; import its model first")
    if on_error not in ("stop", "skip"):
        raise BackfillError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    if workers < 1:
        raise BackfillError(f"workers must be at least 1, not {workers}")
    if isinstance(bind, Connection) and bind.in_transaction():
        raise ExternalTransactionError(
            f"{spec.key}: backfill() commits every batch on its own and cannot run inside "
            f"the transaction this connection has open. Pass the Engine, commit first, or "
            f"inside an Alembic migration use op.backfill() (which runs in an "
            f"autocommit block)."
        )
    job = _job(bind, spec, on_error, repair)
    if job is None:
        log.info("%s: step 4 done: old column(s) dropped; nothing to backfill", spec.key)
        return BackfillReport(key=spec.key, mode="sql" if spec.forward.has_sql else "python",
                              repair=repair, complete=True, dry_run=dry_run, dropped=True)
    report = BackfillReport(key=spec.key, mode=job.mode, repair=repair)
    owned = isinstance(bind, Engine)
    conn = bind.connect() if isinstance(bind, Engine) else bind
    rules = job.rules
    runner = Runner(
        job,
        rules,
        report,
        first_batch=batch_size or DEFAULT_FIRST_BATCH,
        target_ms=max(target_ms, 0.0),
        pause_ms=pause_ms,
        max_seconds=max_seconds,
        lock_timeout_ms=lock_timeout_ms,
        retries=retries,
        progress=progress,
    )
    session_ready = False
    try:
        if dry_run:
            report.dry_run = True
            report.rows_left = job.count_pending(conn)
            report.seconds = time.monotonic() - runner.started
            return report
        ensure_state_tables(conn)
        if conn.in_transaction():
            conn.commit()
        rules.setup_session(conn, lock_timeout_ms)
        session_ready = True
        runner.parts = rules.ranges_for(runner.keys.integer, workers)
        if job.mode == "python" and rules.reads_ahead:
            runner.read_ahead_engine = _engine_of(bind)
        run_id = runner.open_run(conn)
        report.run_id = run_id
        if run_id is None:
            report.complete = True
            return report
        if progress is not None:
            report_upper = runner.upper_bound(conn)
            runner.pending_at_start = job.count_pending(conn, report_upper)
        if workers == 1 or not rules.shares_ranges:
            lease = _engine_of(bind).connect() if rules.shares_ranges else conn
            try:
                runner.work(conn, lease, run_id)
            finally:
                if lease is not conn:
                    lease.close()
        else:
            runner.run_threads(_engine_of(bind), run_id, workers)
        report.complete = runner.finish(conn, run_id)
        if not report.complete:
            report.rows_left = job.count_pending(conn, runner.upper_bound(conn))
        report.seconds = time.monotonic() - runner.started
        log.info(
            "%s: %d rows in %d batches, %.2f s, %s",
            spec.key, report.rows_updated, report.batches, report.seconds,
            "complete" if report.complete else f"{report.rows_left} rows left",
        )
        return report
    finally:
        try:
            if session_ready:
                rules.teardown_session(conn)
        finally:
            if owned:
                conn.close()
