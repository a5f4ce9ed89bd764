"""The backfill runner: plans or resumes a run, claims key ranges, walks them
in batches, sizes the batches, retries, and keeps the books.

What a batch writes is the job's business (:mod:`fourstep_sqla.jobs`); what
differs per database, the dialect rules' (:mod:`fourstep_sqla.dialects`). The
runner owns:

- **the run**: a run is planned once (its key upper bound fixed, its key space
  split into ranges in ``fourstep_ranges``, one progress row per range in
  ``fourstep_progress``) and resumed by every later call until it completes;
  planning is serialised on the attribute's ``fourstep_state`` row;
- **claims**: a worker claims a range by locking its row on a lease connection
  (``FOR UPDATE SKIP LOCKED``); a dead worker's lease dies with its connection;
- **batches**: one transaction per batch, with its progress row, so a run
  killed at any moment resumes exactly after its last committed batch; the
  batch size steers toward ``target_ms`` (at most doubling or halving per
  step); while keys are dense a batch's end is computed, not probed;
- **retries**: lock timeouts, deadlocks and serialization failures are retried
  a bounded number of times with jittered backoff; a statement timeout halves
  the batch.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from .dialects import DialectRules
from .errors import BackfillError
from .jobs import Job, PythonFill, ReadAhead
from .keys import KeyRange
from .state import (
    decode_key,
    encode_key,
    now,
    progress_table,
    ranges_table,
    state_table,
)

if TYPE_CHECKING:
    from .backfill import BackfillProgress, BackfillReport

__all__ = ["Runner"]

log = logging.getLogger("fourstep_sqla.backfill")

Key = tuple[Any, ...]

MIN_BATCH = 50
MAX_BATCH = 100_000


# -- statements on the state tables, built once (values bound per call) --------
def _one_range(table: Any) -> ColumnElement[bool]:
    """``key = :p_key AND run_id = :p_run AND range_no = :p_range`` on ``table``."""
    c = table.c
    return and_(
        c.key == bindparam("p_key", type_=c.key.type),
        c.run_id == bindparam("p_run", type_=c.run_id.type),
        c.range_no == bindparam("p_range", type_=c.range_no.type),
    )


#: lock a range's row on the lease connection, or nothing if another worker holds it
_CLAIM = (
    select(ranges_table.c.range_no)
    .where(_one_range(ranges_table))
    .with_for_update(skip_locked=True)
)
#: a claimed range's cursor, read again now that it is ours
_CURSOR = select(progress_table.c.cursor_key, progress_table.c.done).where(
    _one_range(progress_table)
)


def _progress_step() -> Any:
    """The UPDATE of a range's progress row after a batch."""
    p = progress_table.c
    return (
        update(progress_table)
        .where(_one_range(progress_table))
        .values(
            cursor_key=bindparam("p_cursor", type_=p.cursor_key.type),
            done=bindparam("p_done", type_=p.done.type),
            rows_updated=p.rows_updated + bindparam("p_rows", type_=p.rows_updated.type),
            batches=p.batches + 1,
            updated_at=bindparam("p_now", type_=p.updated_at.type),
        )
    )


_PROGRESS_STEP = _progress_step()


@dataclass
class Walk:
    """What one worker carries from batch to batch, across the ranges it claims."""

    batch_size: int
    #: the last batch found rows: keys are dense, step without probing
    dense: bool = False
    #: (start, upper) of the range after the current one, to read ahead into
    following: tuple[Key | None, Key] | None = None


class Runner:
    """One backfill call: plan or resume a run of ``job``, then work its ranges."""

    def __init__(
        self,
        job: Job,
        rules: DialectRules,
        report: BackfillReport,
        *,
        first_batch: int,
        target_ms: float,
        pause_ms: float,
        max_seconds: float | None,
        lock_timeout_ms: float | None,
        retries: int,
        progress: Callable[[BackfillProgress], None] | None,
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.key = job.state_key
        self.table = job.table
        self.keys: KeyRange = job.keys
        self.rules = rules
        self.report = report
        self.first_batch = first_batch
        self.target = target_ms / 1000.0
        self.pause = pause_ms / 1000.0
        self.max_seconds = max_seconds
        self.lock_timeout_ms = lock_timeout_ms
        self.retries = retries
        self.progress_callback = progress
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.pending_at_start: int | None = None
        self.stop_event = threading.Event()
        #: Python mode on PostgreSQL: read and compute the next batch on this
        #: engine while the current one is written
        self.read_ahead_engine: Engine | None = None
        #: ranges the key space is split into for a new run
        self.parts = 1

    def budget_left(self) -> bool:
        if self.max_seconds is None:
            return True
        if time.monotonic() - self.started < self.max_seconds:
            return True
        self.report.budget_exhausted = True
        return False

    # -- plan / resume ----------------------------------------------------------
    def open_run(self, conn: Connection) -> str | None:
        """The run to work on: resumed if one is unfinished, else planned now."""
        key = self.key
        with conn.begin():
            self._lock_state_row(conn)
            row = conn.execute(
                select(state_table.c.run_id, state_table.c.run_status).where(
                    state_table.c.key == key
                )
            ).one()
            if row.run_id is not None and row.run_status in ("running", "failed"):
                log.info("%s: resuming backfill run %s", key, row.run_id)
                return str(row.run_id)
            upper = self.keys.last_key(conn)
            if upper is None:
                log.info("%s: table %s is empty", key, self.table.description)
                return None
            run_id = str(uuid.uuid4())
            ranges = self.keys.split(conn, upper, self.parts)
            conn.execute(
                insert(ranges_table),
                [
                    {
                        "key": key,
                        "run_id": run_id,
                        "range_no": i,
                        "lower_key": None if lo is None else encode_key(lo),
                        "upper_key": encode_key(hi),
                    }
                    for i, (lo, hi) in enumerate(ranges)
                ],
            )
            conn.execute(
                insert(progress_table),
                [
                    {
                        "key": key,
                        "run_id": run_id,
                        "range_no": i,
                        "cursor_key": None,
                        "done": False,
                        "rows_updated": 0,
                        "batches": 0,
                        "updated_at": now(),
                    }
                    for i in range(len(ranges))
                ],
            )
            # older runs' plans are history nobody reads: keep the tables small
            conn.execute(
                ranges_table.delete().where(
                    ranges_table.c.key == key, ranges_table.c.run_id != run_id
                )
            )
            conn.execute(
                progress_table.delete().where(
                    progress_table.c.key == key, progress_table.c.run_id != run_id
                )
            )
            conn.execute(
                update(state_table)
                .where(state_table.c.key == key)
                .values(
                    run_id=run_id,
                    run_status="running",
                    run_upper_bound=encode_key(upper),
                    run_started_at=now(),
                    run_finished_at=None,
                    updated_at=now(),
                )
            )
            log.info(
                "%s: new %s run %s up to key %r in %d range(s), %s mode",
                key, self.job.kind, run_id, upper, len(ranges), self.job.mode,
            )
            return run_id

    def _lock_state_row(self, conn: Connection) -> None:
        """Make sure the state row exists and serialise run planning on it."""
        key = self.key
        exists = conn.execute(
            select(state_table.c.key).where(state_table.c.key == key)
        ).first()
        if exists is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(state_table).values(
                            key=key,
                            table_name=self.table.fullname,
                            updated_at=now(),
                        )
                    )
            except IntegrityError:
                pass  # another worker inserted it first
        stmt = select(state_table.c.key).where(state_table.c.key == key)
        if self.rules.shares_ranges:
            stmt = stmt.with_for_update()
        conn.execute(stmt).one()

    # -- claiming ranges --------------------------------------------------------
    def ranges_todo(self, conn: Connection, run_id: str) -> list[Any]:
        rows = conn.execute(
            select(ranges_table, progress_table.c.cursor_key)
            .join(
                progress_table,
                and_(
                    progress_table.c.key == ranges_table.c.key,
                    progress_table.c.run_id == ranges_table.c.run_id,
                    progress_table.c.range_no == ranges_table.c.range_no,
                ),
            )
            .where(
                ranges_table.c.key == self.key,
                ranges_table.c.run_id == run_id,
                progress_table.c.done.is_(False),
            )
            .order_by(ranges_table.c.range_no)
        ).all()
        conn.rollback()
        return list(rows)

    def claim(self, lease: Connection, run_id: str, range_no: int) -> bool:
        """Lock one range row on the lease connection; False if someone holds it."""
        if not self.rules.shares_ranges:
            return True
        lease.rollback()
        lease.begin()
        got = lease.execute(
            _CLAIM, {"p_key": self.key, "p_run": run_id, "p_range": range_no}
        ).first()
        if got is None:
            lease.rollback()
            return False
        return True

    # -- working ------------------------------------------------------------------
    def work(self, conn: Connection, lease: Connection, run_id: str) -> None:
        """Claim and finish ranges until none is left or the budget runs out."""
        ahead = None
        if self.read_ahead_engine is not None and isinstance(self.job, PythonFill):
            ahead = ReadAhead(self.job, self.read_ahead_engine)
        try:
            self._work(conn, lease, run_id, ahead)
        finally:
            if ahead is not None:
                ahead.close()

    def _work(
        self, conn: Connection, lease: Connection, run_id: str, ahead: ReadAhead | None
    ) -> None:
        walk = Walk(self.first_batch)
        todo = self.ranges_todo(conn, run_id)
        for i, rng in enumerate(todo):
            if self.stop_event.is_set() or not self.budget_left():
                return
            if not self.claim(lease, run_id, rng.range_no):
                continue
            try:
                # re-read the cursor now that the range is ours
                cursor_text = conn.execute(
                    _CURSOR, {"p_key": self.key, "p_run": run_id, "p_range": rng.range_no}
                ).one()
                conn.rollback()
                if cursor_text.done:
                    continue
                cursor = decode_key(cursor_text.cursor_key) or decode_key(rng.lower_key)
                upper = decode_key(rng.upper_key)
                # where the next range (probably ours too) starts: read ahead into it
                after = todo[i + 1] if i + 1 < len(todo) else None
                walk.following = None if after is None else (
                    decode_key(after.cursor_key) or decode_key(after.lower_key),
                    decode_key(after.upper_key),
                )
                self.work_range(conn, run_id, rng.range_no, cursor, upper, walk, ahead)
            finally:
                if lease.in_transaction():
                    lease.rollback()

    def _batch_end(self, conn: Connection, lower: Key | None, upper: Key, walk: Walk) -> Key:
        return self.keys.batch_end(conn, lower, upper, walk.batch_size, dense=walk.dense)

    def work_range(
        self,
        conn: Connection,
        run_id: str,
        range_no: int,
        cursor: Key | None,
        upper: Key,
        walk: Walk,
        ahead: ReadAhead | None,
    ) -> None:
        """Batches from ``cursor`` to ``upper`` of one claimed range."""
        from .backfill import BackfillProgress

        while cursor != upper:
            if self.stop_event.is_set() or not self.budget_left():
                return
            prefetched = None
            if ahead is not None and ahead.window is not None and ahead.window[0::2] == (
                cursor, upper
            ):
                # the window read ahead during the previous write: take it as it is
                hi = ahead.window[1]
                prefetched = ahead.take()
            else:
                hi = self._batch_end(conn, cursor, upper, walk)
            if ahead is not None:
                if hi != upper:
                    ahead.start(hi, self._batch_end(conn, hi, upper, walk), upper)
                elif walk.following is not None:
                    start, end = walk.following
                    ahead.start(start, self._batch_end(conn, start, end, walk), end)
            conn.rollback()
            started = time.monotonic()
            attempts = 0
            while True:
                try:
                    updated, skipped = self.run_batch(
                        conn, run_id, range_no, cursor, hi, upper, prefetched
                    )
                    break
                except DBAPIError as exc:
                    if conn.in_transaction():
                        conn.rollback()
                    if self.rules.is_statement_timeout(exc) and walk.batch_size > MIN_BATCH:
                        walk.batch_size = max(walk.batch_size // 2, MIN_BATCH)
                        log.warning(
                            "%s: statement timeout, batch halved to %d rows",
                            self.spec.key, walk.batch_size,
                        )
                        hi = self.keys.batch_end(conn, cursor, upper, walk.batch_size)
                        conn.rollback()
                        prefetched = None
                        continue
                    if self.rules.is_transient(exc) and attempts < self.retries:
                        attempts += 1
                        delay = min(0.05 * 2**attempts, 2.0) * (0.5 + random.random())
                        log.warning(
                            "%s: batch after key %r gave way (%s), retry %d/%d in %.0f ms",
                            self.spec.key, cursor,
                            self.rules.sqlstate(exc) or type(exc.orig).__name__,
                            attempts, self.retries, delay * 1000,
                        )
                        time.sleep(delay)
                        started = time.monotonic()
                        continue
                    raise BackfillError(
                        f"{self.spec.key}: the batch of keys after {cursor!r} up to {hi!r} on "
                        f"{self.table.description} failed after {attempts} retr"
                        f"{'y' if attempts == 1 else 'ies'}: {exc.orig!r}. Nothing of this "
                        f"batch was written; run the backfill again to resume here."
                    ) from exc
            elapsed = time.monotonic() - started
            with self.lock:
                self.report.rows_updated += updated
                self.report.batches += 1
                self.report.skipped_keys.extend(skipped)
                self.report.batch_seconds.append(elapsed)
                snapshot = BackfillProgress(
                    key=self.spec.key,
                    rows_updated=self.report.rows_updated,
                    batches=self.report.batches,
                    rows_pending_at_start=self.pending_at_start,
                    elapsed=time.monotonic() - self.started,
                    batch_size=walk.batch_size,
                    last_batch_ms=elapsed * 1000,
                )
            log.debug(
                "%s: batch up to %r: %d rows in %.1f ms (size %d)",
                self.spec.key, hi, updated, elapsed * 1000, walk.batch_size,
            )
            if self.progress_callback is not None:
                self.progress_callback(snapshot)
            self._steer(walk, elapsed)
            walk.dense = updated > 0
            cursor = hi
            if self.pause:
                time.sleep(self.pause)

    def _steer(self, walk: Walk, elapsed: float) -> None:
        """Toward the target duration, at most x2 or /2 per step; in Python mode
        only the write holds row locks, so steer on the write."""
        steer = elapsed
        if self.job.mode == "python" and self.job.last_write_seconds >= 0:
            steer = self.job.last_write_seconds
        if self.target > 0 and steer > 0:
            factor = min(max(self.target / steer, 0.5), 2.0)
            walk.batch_size = int(min(max(walk.batch_size * factor, MIN_BATCH), MAX_BATCH))

    def run_batch(
        self,
        conn: Connection,
        run_id: str,
        range_no: int,
        lower: Key | None,
        hi: Key,
        upper: Key,
        prefetched: Any = None,
    ) -> tuple[int, list[Key]]:
        """One batch and its progress record, in one transaction."""
        self.rules.begin_batch(conn)
        quiet = self.job.trigger_key
        try:
            if quiet is not None:
                self.rules.quiet_triggers(conn, quiet)
            updated, skipped = self.job.batch(conn, run_id, lower, hi, prefetched)
            if quiet is not None:
                self.rules.wake_triggers(conn, quiet)
            conn.execute(
                _PROGRESS_STEP,
                {
                    "p_key": self.key,
                    "p_run": run_id,
                    "p_range": range_no,
                    "p_cursor": encode_key(hi),
                    "p_done": hi == upper,
                    "p_rows": updated,
                    "p_now": now(),
                },
            )
            conn.commit()
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            raise
        return updated, skipped

    # -- the end -------------------------------------------------------------------
    def finish(self, conn: Connection, run_id: str) -> bool:
        """Mark the run complete when every range is done; True if so."""
        with conn.begin():
            left = conn.execute(
                select(func.count())
                .select_from(progress_table)
                .where(
                    progress_table.c.key == self.key,
                    progress_table.c.run_id == run_id,
                    progress_table.c.done.is_(False),
                )
            ).scalar_one()
            if left:
                return False
            conn.execute(
                update(state_table)
                .where(state_table.c.key == self.key, state_table.c.run_id == run_id)
                .values(run_status="complete", run_finished_at=now(), updated_at=now())
            )
        return True

    def upper_bound(self, conn: Connection) -> Key | None:
        text = conn.execute(
            select(state_table.c.run_upper_bound).where(state_table.c.key == self.key)
        ).scalar_one_or_none()
        conn.rollback()
        upper: Key | None = decode_key(text)
        return upper

    def run_threads(self, engine: Engine, run_id: str, workers: int) -> None:
        """``workers`` threads, each with its own batch and lease connections."""
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                with engine.connect() as conn, engine.connect() as lease:
                    self.rules.setup_session(conn, self.lock_timeout_ms)
                    try:
                        self.work(conn, lease, run_id)
                    finally:
                        self.rules.teardown_session(conn)
            except BaseException as exc:
                errors.append(exc)
                self.stop_event.set()

        threads = [
            threading.Thread(target=worker, name=f"fourstep-backfill-{i}")
            for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
