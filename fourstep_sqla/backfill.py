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
  ``kill -9``) resumes exactly after its last committed batch.
- **A run belongs to the columns it fills.** A run records the identity of
  its new columns where the database gives one (PostgreSQL: the table's oid
  and the columns' ``attnum``, which a column dropped and added again never
  gets back). A run stopped midway, then the new columns dropped and added
  again (a downgrade past step 1, an upgrade back): the next call starts a
  new run instead of finishing the old one's ranges over empty columns. On
  SQLite and MariaDB/MySQL, which give no such identity, the check below
  catches it: the old run's remaining ranges, then a new run.
- **Complete means nothing pending.** When a run's ranges are done, the
  table is checked for pending rows (the same predicate, read-only, stopping
  at the first: one scan when there is none) with keys up to the call's own
  bound, the last key when the call started. So rows a resumed run never
  covered (inserted past its upper bound before this call, or written before
  its columns were added again) are found; they get a new run, at most
  three runs per call, and a run is marked complete only when none is left.
  A row still pending after that (a writer clearing the new place behind
  the backfill) is reported: ``complete=False`` with ``rows_left``, and the
  run stays open in the state table. Rows inserted after the call started
  are the application's, as above, and the next call's. A finished
  backfill run again is that one check, not a walk of the keys (0.13 s on
  1M rows on PostgreSQL). Rows skipped by ``on_error="skip"`` stay pending
  by nature and are not counted.
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
  run: its key space is split into ranges, and a worker claims a range with a
  session-level lock on a lease connection (PostgreSQL's advisory lock,
  MariaDB/MySQL's ``GET_LOCK``), held outside any transaction: a claim lasts
  as long as its range, and an open transaction of hours would hold back
  VACUUM (InnoDB's purge) and every ``CREATE INDEX CONCURRENTLY`` of the
  database. A worker that dies releases its lease with its connection and
  another one resumes the range from its cursor. Session-level locks need
  the session: behind a pooler in transaction mode (PgBouncer's
  ``pool_mode = transaction``) point the backfill at the database itself.
- **Two calls at once** (two ``alembic upgrade``, ``fourstep backfill`` run
  twice, workers on many machines): a call that finds the ranges left all
  claimed by other live processes *waits* for them, polling their claims
  (50 ms, doubling up to 1 s), rather than ending with work it knows nothing
  about: when a holder finishes its range there is nothing left to do, when
  it dies its lease goes with its connection and the waiting call takes the
  range over from its cursor. Either way the call then reports complete, as
  every process sharing the run does. Waiting is safe: the waiter holds no
  lock while it waits and the holder waits for nothing of the waiter's. It
  is bounded only by ``max_seconds``: when the budget runs out while waiting,
  the report says ``complete=False``, ``budget_exhausted=True`` and
  ``held_elsewhere`` = the number of ranges other processes hold, so a caller
  can say "another process is running this backfill" rather than "rows are
  left". Planning a run waits the same way for another process planning it
  (on PostgreSQL without the batches' short ``lock_timeout``; on SQLite the
  planning transaction takes the write lock first).
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

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Column, Connection, Engine
from sqlalchemy.util.concurrency import await_, in_greenlet

from .attribute import PhasedSpec
from .dialects import rules_for
from .errors import BackfillError, ExternalTransactionError, FourStepError
from .jobs import Job, make_job
from .keys import KeyRange, key_columns, primary_key_of
from .registry import resolve
from .runner import Runner
from .state import ensure_state_tables

__all__ = [
    "AsyncBindError",
    "BackfillError",
    "BackfillProgress",
    "BackfillReport",
    "ExternalTransactionError",
    "backfill",
    "pending_count",
    "refuse_async",
    "refuse_open_transaction",
    "run_backfill",
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
    #: counted as the call starts, by one COUNT (in Python mode without running
    #: the transform, so rows whose forward(old) is empty count too)
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
    #: pending rows left, counted when the report is not complete: by one COUNT
    #: (in Python mode without running the transform, so rows whose forward(old)
    #: is empty count too); a dry run counts exactly
    rows_left: int = 0
    skipped_keys: list[Key] = field(default_factory=list)
    #: no row that existed when the call started is pending any more (rows the
    #: transform failed on, ``skipped_keys``, apart); see the module docs
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
    #: ranges of the run that other live processes were still working when this
    #: call gave up waiting for them (its time budget ran out): another process
    #: is running this backfill, nothing needs fixing
    held_elsewhere: int = 0

    @property
    def ok(self) -> bool:
        """Complete with nothing skipped."""
        return self.complete and not self.skipped_keys


class AsyncBindError(FourStepError):
    """A synchronous function was given an AsyncEngine, AsyncConnection or AsyncSession."""


def refuse_async(bind: object, function: str, key: str | None = None) -> None:
    """Raise :class:`AsyncBindError` when ``bind`` comes from SQLAlchemy's asyncio
    extension, which has no synchronous API: ``function``'s coroutine in
    :mod:`fourstep_sqla.asyncio` takes it."""
    if not type(bind).__module__.startswith("sqlalchemy.ext.asyncio"):
        return
    kind = type(bind).__name__
    where = f"{key}: " if key else ""
    what = "its bind (an AsyncEngine)" if kind == "AsyncSession" else f"the {kind}"
    raise AsyncBindError(
        f"{where}fourstep_sqla.{function}() is synchronous and was given an {kind}, which "
        f"has no synchronous API. Use `await fourstep_sqla.asyncio.{function}(...)` with "
        f"{what} instead: the same options and the same report, on the event loop."
    )


def refuse_open_transaction(conn: Connection, key: str) -> None:
    """Raise :class:`ExternalTransactionError` when ``conn`` is inside a transaction:
    the backfill commits every batch on its own."""
    if conn.in_transaction():
        raise ExternalTransactionError(
            f"{key}: backfill() commits every batch on its own and cannot run inside "
            f"the transaction this connection has open. Pass the Engine, commit first, or "
            f"inside an Alembic migration use op.backfill() (which runs in an "
            f"autocommit block)."
        )


def _job(
    bind: Engine | Connection, spec: PhasedSpec, on_error: OnError, repair: bool
) -> Job | None:
    """The job for ``spec`` on this database, or None when step 4 is done (the old
    column(s) dropped); one read-only look at the database."""
    table = spec.table
    assert table is not None
    primary_key_of(table, spec.key)  # no key at all: say so before touching the database
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            found = _look(conn, spec)
    else:
        found = _look(bind, spec)
    if found is None:
        return None
    rules, synced, marks, columns = found
    keys = KeyRange(table, columns)
    state_key = f"{spec.key}:repair" if repair else spec.key
    return make_job(
        spec, keys, rules, state_key=state_key, on_error=on_error, repair=repair, synced=synced,
        marks=marks,
    )


def _look(
    conn: Connection, spec: PhasedSpec
) -> tuple[Any, bool, str | bool | None, tuple[Column[Any], ...]] | None:
    """The dialect rules, whether the sync triggers are installed, where the
    write marks live (False: none) and the key columns in the order of their
    index (:func:`~fourstep_sqla.keys.key_columns`); None when the old
    column(s) are gone."""
    from .places import old_place_dropped
    from .triggers import installed
    from .verify import written_marks

    assert spec.table is not None
    try:
        if old_place_dropped(conn, spec):
            return None
        columns = key_columns(conn, spec.table, spec.key)
        return rules_for(conn), installed(conn, spec), written_marks(conn, spec), columns
    finally:
        if conn.in_transaction():
            conn.rollback()


def pending_count(
    bind: Engine | Connection, attribute_or_key: Any, *, repair: bool = False,
    exact: bool = True,
) -> int:
    """Rows a backfill of ``attribute_or_key`` would still write (read-only).

    The same predicate the backfill uses: every new column NULL, some old
    column not NULL, and ``forward(old)`` not empty; with ``repair=True``, the
    rows whose places disagree. A Python transform is run over every pending
    row for the last clause: ``exact=False`` leaves it out (one COUNT, as
    ``fourstep status`` takes it), counting rows whose ``forward(old)`` is
    empty too.
    """
    spec = resolve(attribute_or_key)
    refuse_async(bind, "pending_count", spec.key)
    if spec.table is None:
        raise BackfillError(f"{spec.describe()} is not mapped yet; import its model first")
    job = _job(bind, spec, "stop", repair)
    if job is None:
        return 0
    count = job.count_pending if exact else job.progress_total
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return count(conn)
    return count(bind)


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
        runs out with rows left (run again to resume), or while waiting for
        ranges another process holds (``held_elsewhere``). Without it, a call
        waits for such ranges as long as their holders live.
    :param workers: threads working ranges of the key space in parallel
        (PostgreSQL and MySQL/MariaDB; on SQLite ranges run one after another).
    :param on_error: ``"stop"`` or ``"skip"`` when the transform fails on a row.
    :param dry_run: count what would be done; write nothing, not even state.
    :param lock_timeout_ms: how long a batch waits for a lock (500 ms by
        default): PostgreSQL's ``lock_timeout`` (capped below half of
        ``deadlock_timeout``); MariaDB/MySQL's ``innodb_lock_wait_timeout`` and
        ``lock_wait_timeout``, in whole seconds (1 at least).
    :param retries: retries of a batch after lock timeouts or deadlocks.
    :param repair: rewrite ``new = forward(old)`` in every row whose places
        disagree (missing or mismatched, see :mod:`fourstep_sqla.places`), not
        only where the new place is empty. A separate run, with the same
        batching, resume, locking and report.
    :param progress: called after every batch with a :class:`BackfillProgress`.

    An asyncio application awaits :func:`fourstep_sqla.asyncio.backfill` instead,
    with its AsyncEngine or AsyncConnection.
    """
    spec = resolve(attribute_or_key)
    refuse_async(bind, "backfill", spec.key)
    return run_backfill(
        bind, spec, batch_size=batch_size, target_ms=target_ms, pause_ms=pause_ms,
        max_seconds=max_seconds, workers=workers, on_error=on_error, dry_run=dry_run,
        lock_timeout_ms=lock_timeout_ms, retries=retries, repair=repair, progress=progress,
    )


def run_backfill(
    bind: Engine | Connection,
    spec: PhasedSpec,
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
    alone: bool = False,
) -> BackfillReport:
    """:func:`backfill` of a resolved ``spec``.

    ``alone``: this call is one of ``workers`` calls sharing the run, each on a
    connection of its own (the workers of :func:`fourstep_sqla.asyncio.backfill`,
    which claim ranges the way several processes do): a new run is planned for
    ``workers``, but this call works on ``bind`` only, without threads.

    Inside ``AsyncConnection.run_sync`` (an async driver, driven from the event
    loop's thread) nothing runs in a thread: no read-ahead, no worker threads;
    waits for ranges held elsewhere and the pause between batches sleep on the
    event loop instead of blocking it.
    """
    if spec.table is None:
        raise BackfillError(f"{spec.describe()} is not mapped yet; import its model first")
    if on_error not in ("stop", "skip"):
        raise BackfillError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    if workers < 1:
        raise BackfillError(f"workers must be at least 1, not {workers}")
    if isinstance(bind, Connection):
        refuse_open_transaction(bind, spec.key)
    job = _job(bind, spec, on_error, repair)
    if job is None:
        log.info("%s: step 4 done: old column(s) dropped; nothing to backfill", spec.key)
        return BackfillReport(key=spec.key, mode="sql" if spec.forward.has_sql else "python",
                              repair=repair, complete=True, dry_run=dry_run, dropped=True)
    # an async driver's connections can be used only on the event loop's thread
    # (this runs in run_sync's greenlet there), never from a thread of ours
    on_the_loop = bind.dialect.is_async and in_greenlet()
    if on_the_loop and workers > 1 and not alone and job.rules.shares_ranges:
        raise BackfillError(
            f"{spec.key}: workers={workers} works ranges in threads, and the connections of "
            f"an async driver cannot be used from a thread. Await "
            f"fourstep_sqla.asyncio.backfill(async_engine, ..., workers={workers}) instead: "
            f"its workers are connections of the engine on the event loop."
        )
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
    if on_the_loop:
        _wait_on_the_loop(runner, pause_ms, progress)
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
        if job.mode == "python" and rules.reads_ahead and not on_the_loop:
            runner.read_ahead_engine = _engine_of(bind)
        finished = runner.already_complete(conn)
        if finished is not None:
            runner.forget_written_skips(conn)  # nothing is pending: not even those
            report.run_id, report.complete = finished, True
            report.seconds = time.monotonic() - runner.started
            log.info("%s: run %s is complete and no row is pending", spec.key, finished)
            return report
        run_id = runner.open_run(conn)
        report.run_id = run_id
        if run_id is None:
            report.complete = True
            return report
        if progress is not None:
            runner.pending_at_start = job.progress_total(conn, runner.call_bound)
        report.complete = runner.run(conn, _engine_of(bind), run_id, 1 if alone else workers)
        if not report.complete:
            report.rows_left = job.progress_total(conn, runner.call_bound)
        report.seconds = time.monotonic() - runner.started
        log.info(
            "%s: %d rows in %d batches, %.2f s, %s",
            spec.key, report.rows_updated, report.batches, report.seconds,
            "complete" if report.complete else f"{report.rows_left} rows left"
            + (f", {report.held_elsewhere} range(s) held by another process"
               if report.held_elsewhere else ""),
        )
        return report
    finally:
        try:
            if session_ready:
                rules.teardown_session(conn)
        finally:
            if owned:
                conn.close()


class _LoopEvent(threading.Event):
    """A runner's stop event whose ``wait`` sleeps on the event loop (``asyncio.sleep``
    awaited through the greenlet) instead of blocking the loop's thread: while a
    backfill inside ``run_sync`` waits for ranges another process (or another of
    its workers) holds, the application and those workers go on."""

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            await_(asyncio.sleep(left))
        return self.is_set()


def _wait_on_the_loop(
    runner: Runner, pause_ms: float, progress: Callable[[BackfillProgress], None] | None
) -> None:
    """The runner's sleeps, on the event loop: its waits for held ranges, and the
    pause after each batch (taken right after the batch's progress report, where
    the runner would sleep)."""
    runner.stop_event = _LoopEvent()
    if pause_ms <= 0:
        return
    runner.pause = 0.0
    pause = pause_ms / 1000.0

    def report_then_pause(snapshot: BackfillProgress) -> None:
        if progress is not None:
            progress(snapshot)
        await_(asyncio.sleep(pause))

    runner.progress_callback = report_then_pause
