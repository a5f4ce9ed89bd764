"""The backfill runner: plans or resumes a run, claims key ranges, walks them
in batches, sizes the batches, retries, and keeps the books.

What a batch writes is the job's business (:mod:`fourstep_sqla.jobs`); what
differs per database, the dialect rules' (:mod:`fourstep_sqla.dialects`). The
runner owns:

- **the run**: a run is planned once (its key upper bound fixed, its key space
  split into ranges in ``fourstep_ranges``, one progress row per range in
  ``fourstep_progress``, the identity of the columns it fills where the
  database gives one) and resumed by every later call until it completes,
  unless its columns were dropped and added again since; planning is
  serialised on the attribute's ``fourstep_state`` row;
- **the end of a run**: when its ranges are done, the table is checked for
  pending rows up to the call's own upper bound (the last key when the call
  started); a row left behind starts a new run, a bounded number of times,
  and only a run after which none is left is marked complete;
- **claims**: a worker claims a range with a session-level lock on a lease
  connection (PostgreSQL's advisory lock, MariaDB's ``GET_LOCK``), held outside
  any transaction, so that a claim of hours holds back neither VACUUM nor
  ``CREATE INDEX CONCURRENTLY``; a dead worker's lease dies with its connection;
  a range another live process holds is waited for (polled), and taken over
  from its cursor when its holder dies;
- **batches**: one transaction per batch, with its progress row, so a run
  killed at any moment resumes exactly after its last committed batch; the
  batch size steers toward ``target_ms`` (at most doubling or halving per
  step); while keys are dense a batch's end is computed, not probed;
- **retries**: lock timeouts, deadlocks and serialization failures are retried
  a bounded number of times with jittered backoff; a statement timeout halves
  the batch.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError
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
    skipped_table,
    state_table,
)

if TYPE_CHECKING:
    from .backfill import BackfillProgress, BackfillReport

__all__ = ["Runner"]

log = logging.getLogger("fourstep_sqla.backfill")

Key = tuple[Any, ...]

MIN_BATCH = 50
MAX_BATCH = 100_000
#: runs one call works at most: the one it resumes or plans, then new runs for
#: rows the check finds left behind (a run resumed on re-created columns, rows
#: inserted past its upper bound); a row still pending after the last one is
#: reported (``complete=False``, ``rows_left``), not chased for ever
MAX_RUNS = 3
#: polling for ranges held by another process: first wait and longest wait, s
POLL_FIRST = 0.05
POLL_MAX = 1.0
#: how often a worker makes sure its claim still holds (seconds)
LEASE_CHECK_SECONDS = 1.0


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


def _lease_name(key: str, run_id: str, range_no: int) -> str:
    """What a worker's claim on one range of a run is called."""
    return f"{key}:{run_id}:{range_no}"


def _progress_step() -> Any:
    """The UPDATE of a range's progress row after a batch."""
    p = progress_table.c
    return (
        update(progress_table)
        .where(_one_range(progress_table))
        .values(
            cursor_key=bindparam("p_cursor", type_=p.cursor_key.type),
            # sticky: on SQLite (no claims) two calls at once may walk one range,
            # and the slower one's batch must not reopen what the other finished
            done=or_(p.done, bindparam("p_done", type_=p.done.type)),
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
    #: when the lease was last found alive (monotonic seconds)
    lease_checked: float = 0.0


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
        #: the last key when this call started: what "nothing pending" is checked
        #: against (rows inserted later are the application's, as with a run's bound)
        self.call_bound: Key | None = None
        self.bound_fixed = False
        #: the identity of the columns this job fills (see DialectRules.place_identity)
        self.place: str | None = None
        #: ranges this call's own workers hold right now (threads do not wait for them)
        self.mine: set[int] = set()

    def budget_left(self) -> bool:
        if self.max_seconds is None:
            return True
        if time.monotonic() - self.started < self.max_seconds:
            return True
        self.report.budget_exhausted = True
        return False

    # -- plan / resume ----------------------------------------------------------
    def open_run(self, conn: Connection, replacing: str | None = None) -> str | None:
        """The run to work on: resumed if one is unfinished, else planned now;
        None when the table is empty.

        ``replacing``: the run just worked, whose ranges are done but which left
        rows behind: a new run is planned, unless another process has already
        moved on to a run of its own (then that one is joined).
        """
        self.rules.begin_planning(conn, self._wait())
        try:
            run_id = self._open_run(conn, replacing)
            conn.commit()
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            raise
        return run_id

    def _open_run(self, conn: Connection, replacing: str | None) -> str | None:
        key = self.key
        self._lock_state_row(conn)
        row = conn.execute(
            select(
                state_table.c.run_id, state_table.c.run_status, state_table.c.run_place,
                state_table.c.run_key_order,
            ).where(state_table.c.key == key)
        ).one()
        self.place = self.rules.place_identity(conn, self.table, self.spec.new_columns)
        same_place = row.run_place is None or self.place is None or row.run_place == self.place
        # a run recorded no order when the model's was the only one walked
        walked = (json.loads(row.run_key_order) if row.run_key_order is not None
                  else [c.name for c in self.keys.declared])
        same_order = walked == self.keys.names
        if row.run_id is not None and row.run_status != "complete" and same_place \
                and not same_order:
            log.warning(
                "%s: backfill run %s walked the key as (%s) and this call walks it as (%s), "
                "the order of the index that serves it: its cursors mean nothing in this "
                "order, starting a new run (rows it wrote are not pending: they are passed "
                "over, not written again)", key, row.run_id, ", ".join(walked),
                ", ".join(self.keys.names),
            )
        elif row.run_id is not None and same_place and same_order:
            if replacing is None and row.run_status in ("running", "failed"):
                log.info("%s: resuming backfill run %s", key, row.run_id)
                self._fix_call_bound(self.keys.last_key(conn))
                return str(row.run_id)
            if replacing is not None and row.run_id != replacing:
                log.info("%s: joining backfill run %s of another process", key, row.run_id)
                return str(row.run_id)
        elif row.run_id is not None and row.run_status != "complete":
            log.warning(
                "%s: backfill run %s filled columns dropped and added again since; its "
                "cursors mean nothing for these: starting a new run", key, row.run_id,
            )
        upper = self.keys.last_key(conn)
        self._fix_call_bound(upper)
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
                run_place=self.place,
                run_key_order=json.dumps(self.keys.names),
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

    def already_complete(self, conn: Connection) -> str | None:
        """The last run's id when it is complete, on these columns, and no row is
        pending, not even one a transform failed on: a finished backfill run
        again costs one look at the table, not a walk of its keys (read-only;
        None otherwise)."""
        if not self.job.checks_left_behind:
            return None
        row = conn.execute(
            select(
                state_table.c.run_id, state_table.c.run_status, state_table.c.run_place
            ).where(state_table.c.key == self.key)
        ).first()
        try:
            if row is None or row.run_id is None or row.run_status != "complete":
                return None
            self.place = self.rules.place_identity(conn, self.table, self.spec.new_columns)
            if row.run_place not in (None, self.place) and self.place is not None:
                return None  # the columns were added again since
            self._fix_call_bound(self.keys.last_key(conn))
        finally:
            conn.rollback()
        # skipped rows count here: a call again tries them again (fixed since?)
        if self.call_bound is not None and self.job.left_behind(conn, self.call_bound, set()):
            return None
        return str(row.run_id)

    def _wait(self) -> float | None:
        """How long a wait for another process may take: what is left of the
        budget (None: no budget, as long as it takes)."""
        if self.max_seconds is None:
            return None
        return max(self.max_seconds - (time.monotonic() - self.started), 0.001)

    def _fix_call_bound(self, last: Key | None) -> None:
        if not self.bound_fixed:
            self.call_bound, self.bound_fixed = last, True

    def _lock_state_row(self, conn: Connection) -> None:
        """Make sure the state row exists and serialise run planning on it."""
        key = self.key
        exists = conn.execute(
            select(state_table.c.key).where(state_table.c.key == key)
        ).first()
        if exists is None:
            self.rules.insert_if_absent(
                conn, state_table, {"key": key, "table_name": self.table.fullname,
                                    "updated_at": now()},
            )
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
        """Claim one range on the lease connection; False if someone holds it.

        A session-level lock where the database has one (held outside any
        transaction, see :meth:`DialectRules.try_lease`), else the range's row
        locked in a transaction the lease keeps open."""
        if not self.rules.shares_ranges:
            return True
        lease.rollback()
        taken = self.rules.try_lease(lease, _lease_name(self.key, run_id, range_no))
        if taken is not None:
            return taken
        lease.begin()
        got = lease.execute(
            _CLAIM, {"p_key": self.key, "p_run": run_id, "p_range": range_no}
        ).first()
        if got is None:
            lease.rollback()
            return False
        return True

    def release(self, lease: Connection, run_id: str, range_no: int) -> None:
        """End the claim on a range; a lease that cannot say it released its
        lock is closed for good, never back to the pool still holding it."""
        if lease.invalidated:
            return  # lost: its lock went with it
        try:
            if lease.in_transaction():
                lease.rollback()
            if self.rules.shares_ranges:
                self.rules.end_lease(lease, _lease_name(self.key, run_id, range_no))
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                log.warning("%s: could not release the claim on range %d of run %s; its "
                            "connection is closed instead", self.key, range_no, run_id,
                            exc_info=True)
            lease.invalidate()

    def check_lease(self, lease: Connection, run_id: str, range_no: int, walk: Walk) -> None:
        """A worker works a range only while its claim holds: the lease connection
        is asked whether it is still there, once a second at most. Lost (its
        backend terminated, the server restarted), its lock went with it and
        another process may take the range over: the worker stops here."""
        if not self.rules.shares_ranges or lease.closed:
            return
        now = time.monotonic()
        if now - walk.lease_checked < LEASE_CHECK_SECONDS:
            return
        walk.lease_checked = now
        claimed_in_transaction = lease.in_transaction()  # the row-lock claim: kept open
        try:
            lease.exec_driver_sql("SELECT 1")
            if not claimed_in_transaction:
                lease.rollback()
        except DBAPIError as exc:
            raise BackfillError(
                f"{self.spec.key}: the connection holding this worker's claim on range "
                f"{range_no} of run {run_id} was lost ({exc.orig!r}), and the claim with it. "
                f"Every batch committed before is kept; run the backfill again to resume here."
            ) from exc

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
        poll = POLL_FIRST
        waiting_since: float | None = None
        while True:
            todo = self.ranges_todo(conn, run_id)
            held = 0
            for i, rng in enumerate(todo):
                if self.stop_event.is_set() or not self.budget_left():
                    return
                with self.lock:
                    if rng.range_no in self.mine:
                        continue  # one of this call's own workers is on it
                if not self.claim(lease, run_id, rng.range_no):
                    held += 1
                    continue
                with self.lock:
                    self.mine.add(rng.range_no)
                try:
                    # re-read the cursor now that the range is ours
                    cursor_text = conn.execute(
                        _CURSOR, {"p_key": self.key, "p_run": run_id, "p_range": rng.range_no}
                    ).one()
                    conn.rollback()
                    if cursor_text.done:
                        continue
                    if waiting_since is not None:
                        log.info(
                            "%s: took over range %d of run %s from its cursor (its holder "
                            "is gone)", self.spec.key, rng.range_no, run_id,
                        )
                    cursor = decode_key(cursor_text.cursor_key) or decode_key(rng.lower_key)
                    upper = decode_key(rng.upper_key)
                    # where the next range (probably ours too) starts: read ahead into it
                    after = todo[i + 1] if i + 1 < len(todo) else None
                    walk.following = None if after is None else (
                        decode_key(after.cursor_key) or decode_key(after.lower_key),
                        decode_key(after.upper_key),
                    )
                    self.work_range(conn, run_id, rng.range_no, cursor, upper, walk, ahead,
                                    lease)
                finally:
                    with self.lock:
                        self.mine.discard(rng.range_no)
                    self.release(lease, run_id, rng.range_no)
            if not held:
                return
            # the rest is held by other live processes: wait until they finish
            # it, or die and release it with their connection
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.info(
                    "%s: %d range(s) of run %s are being worked by another process; "
                    "waiting for them", self.spec.key, held, run_id,
                )
            budget = self._wait()
            if self.stop_event.wait(poll if budget is None else min(poll, budget)):
                return
            if not self.budget_left():
                with self.lock:
                    self.report.held_elsewhere = max(self.report.held_elsewhere, held)
                log.info(
                    "%s: the time budget ran out while %d range(s) of run %s are held by "
                    "another process", self.spec.key, held, run_id,
                )
                return
            poll = min(poll * 2, POLL_MAX)

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
        lease: Connection,
    ) -> None:
        """Batches from ``cursor`` to ``upper`` of one claimed range."""
        from .backfill import BackfillProgress

        while cursor != upper:
            if self.stop_event.is_set() or not self.budget_left():
                return
            self.check_lease(lease, run_id, range_no, walk)
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
                self.report.skipped_keys.extend(self.keys.declared_key(k) for k in skipped)
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

    # -- the run, to its end ---------------------------------------------------------
    def run(self, conn: Connection, engine: Engine, run_id: str, workers: int) -> bool:
        """Work ``run_id``, then new runs while rows are left behind (at most
        :data:`MAX_RUNS` in all); True when one is complete with none left."""
        for number in range(1, MAX_RUNS + 1):
            self.report.run_id = run_id
            self.work_run(conn, engine, run_id, workers)
            if not self.ranges_done(conn, run_id):
                return False  # the budget ran out, or ranges are held elsewhere
            if not self.left_behind(conn, self.forget_written_skips(conn)):
                self.mark_complete(conn, run_id)
                return True
            if not self.budget_left():
                return False  # rows left when the time budget ran out: the run stays open
            if number == MAX_RUNS:
                log.warning(
                    "%s: the ranges of run %s are done but rows up to key %r are still "
                    "pending after %d runs (a writer clearing the new place, or inserting "
                    "the old one alone, meanwhile?); the run stays open: run the backfill "
                    "again", self.spec.key, run_id, self.call_bound, MAX_RUNS,
                )
                return False
            log.warning(
                "%s: the ranges of run %s are done but rows up to key %r are still "
                "pending (rows inserted past its upper bound, or columns added again since "
                "it started): a new run", self.spec.key, run_id, self.call_bound,
            )
            following = self.open_run(conn, replacing=run_id)
            if following is None:  # the table was emptied meanwhile
                self.mark_complete(conn, run_id)
                return True
            run_id = following
        return False  # pragma: no cover - the loop returns

    def work_run(self, conn: Connection, engine: Engine, run_id: str, workers: int) -> None:
        """The ranges of ``run_id``: on this connection, or in ``workers`` threads."""
        if workers == 1 or not self.rules.shares_ranges:
            lease = engine.connect() if self.rules.shares_ranges else conn
            try:
                self.work(conn, lease, run_id)
            finally:
                if lease is not conn:
                    lease.close()
        else:
            self.run_threads(engine, run_id, workers)

    def ranges_done(self, conn: Connection, run_id: str) -> bool:
        """Every range of ``run_id`` is done (read-only)."""
        left = conn.execute(
            select(func.count())
            .select_from(progress_table)
            .where(
                progress_table.c.key == self.key,
                progress_table.c.run_id == run_id,
                progress_table.c.done.is_(False),
            )
        ).scalar_one()
        conn.rollback()
        return not left

    def forget_written_skips(self, conn: Connection) -> list[str]:
        """Drop from ``fourstep_skipped`` the keys whose rows are no longer to
        write: fixed at their source and backfilled by this run, written by the
        application meanwhile, or deleted. A key still failing was recorded again
        by this run; the rest stay, and are returned (as recorded). One look per
        500 keys, by primary key."""
        row_keys = list(conn.execute(
            select(skipped_table.c.row_key).where(skipped_table.c.key == self.key)
        ).scalars())
        conn.rollback()
        gone: list[str] = []
        for start in range(0, len(row_keys), 500):
            chunk = row_keys[start : start + 500]
            # keys recorded in the model's order (see Job.settle)
            keys = [self.keys.walk_key(decode_key(row_key)) for row_key in chunk]
            found = conn.execute(
                select(*self.keys.columns).where(
                    or_(*(self.keys.equals(k) for k in keys)),
                    self.job.pending(with_forward=False),
                )
            ).all()
            conn.rollback()
            # both sides encoded from values the database gave: compared as text
            still = {encode_key(self.keys.declared_key(tuple(r))) for r in found}
            gone += [row_key for row_key in chunk if row_key not in still]
        for start in range(0, len(gone), 500):
            conn.execute(
                skipped_table.delete().where(
                    skipped_table.c.key == self.key,
                    skipped_table.c.row_key.in_(gone[start : start + 500]),
                )
            )
            conn.commit()
        if gone:
            log.info("%s: %d skipped key(s) written since, no longer listed",
                     self.spec.key, len(gone))
        dropped = set(gone)
        return [row_key for row_key in row_keys if row_key not in dropped]

    def left_behind(self, conn: Connection, skipped_keys: list[str]) -> bool:
        """A row up to the call's bound is still pending, apart from the skipped
        keys (``fourstep_skipped``'s, as :meth:`forget_written_skips` left them)."""
        if self.call_bound is None or not self.job.checks_left_behind:
            return False
        # recorded in the model's key order (see Job.settle)
        skipped = {self.keys.walk_key(decode_key(row_key)) for row_key in skipped_keys}
        return self.job.left_behind(conn, self.call_bound, skipped)

    def mark_complete(self, conn: Connection, run_id: str) -> None:
        """Record ``run_id`` as complete (if it is still the attribute's run)."""
        # the state row may be locked by another process planning: wait as planning does
        self.rules.begin_planning(conn, self._wait())
        try:
            conn.execute(
                update(state_table)
                .where(state_table.c.key == self.key, state_table.c.run_id == run_id)
                .values(run_status="complete", run_finished_at=now(), updated_at=now())
            )
            conn.commit()
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            raise

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
