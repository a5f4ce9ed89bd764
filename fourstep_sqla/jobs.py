"""What one backfill batch does to its rows: one class per write strategy.

The runner (:mod:`fourstep_sqla.runner`) walks key ranges, sizes batches,
claims ranges and keeps the books; a job only says which rows of a batch are
pending and how to write them:

- :class:`SQLFill`: ``new = forward(old)`` where the new place is empty, one
  set-based ``UPDATE`` per batch (the forward transform has a SQL form);
- :class:`PythonFill`: the same computed in Python: read the pending rows,
  apply the transform, write them back in one statement guarded by
  compare-and-set on the old value(s);
- :class:`SQLRepair` / :class:`PythonRepair`: ``new = forward(old)`` where the
  two places disagree (see :mod:`fourstep_sqla.places`): the old place wins;
- a restore (the reverse of a drop) is a fill of the reversed move
  (``old = backward(new)``), :meth:`fourstep_sqla.attribute.PhasedSpec.reversed`.

Every pending predicate is on the row being updated, so under READ COMMITTED
a row an application writes meanwhile is re-checked after its lock is
granted, and never overwritten.

A transform that fails on a row fails that row: ``on_error="stop"`` raises
naming the keys, nothing of the batch written; ``"skip"`` records the keys in
``fourstep_skipped`` and writes the rest. Python-computed values are checked
against their column before they are written (a text longer than the column,
a NUMERIC with more decimals than its scale, a value of another type): the
database would truncate, round or convert them, so such a row fails instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from operator import itemgetter
from typing import Any, Literal

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import Column
from sqlalchemy.types import (
    ARRAY,
    JSON,
    Boolean,
    Enum,
    Float,
    Integer,
    Numeric,
    PickleType,
    String,
)

from .attribute import PhasedSpec
from .dialects import DialectRules
from .errors import BackfillError, FourStepError, TransformError
from .keys import KeyRange, all_null, any_not_null
from .places import MISMATCHED, MISSING, SQLPlaces
from .state import encode_key, now, skipped_table

__all__ = ["Job", "PythonFill", "PythonRepair", "SQLFill", "SQLRepair", "make_job"]

log = logging.getLogger("fourstep_sqla.backfill")

OnError = Literal["stop", "skip"]
Key = tuple[Any, ...]
#: rows computed in Python: what to write, and (key, error) of the rows that failed
Computed = tuple[list[tuple[Any, ...]], list[tuple[Key, str]]]
#: a batch read and computed ahead: its rows, what to write, and that encoded
#: for the wire where the dialect encodes it (``DialectRules.encode_rows``)
Prefetched = tuple[list[Any], Computed, str | None]


class Job:
    """One write strategy over one phased attribute (see the module docs)."""

    mode = "sql"
    kind = "fill"
    #: a run of this job is checked with :meth:`left_behind` (fills are, repairs
    #: are not: their ranges done is their end, :func:`fourstep_sqla.verify` their check)
    checks_left_behind = False

    def __init__(
        self,
        spec: PhasedSpec,
        keys: KeyRange,
        rules: DialectRules,
        *,
        state_key: str,
        on_error: OnError,
    ) -> None:
        self.spec = spec
        table = spec.table
        assert table is not None
        self.table = table
        self.keys = keys
        self.rules = rules
        self.state_key = state_key
        self.on_error = on_error
        #: the sync triggers to keep quiet during this job's writes, when installed
        self.trigger_key: str | None = None
        #: seconds the last write held its row locks; -1: nothing written, steer
        #: on the batch (Python mode reads without locks, so only the write counts)
        self.last_write_seconds = 0.0

    def pending(self, with_forward: bool = True) -> ColumnElement[bool]:
        """The rows of a batch still to write.

        ``with_forward=False`` leaves out whatever evaluates the SQL transform:
        needed to list the rows of a batch the transform fails on.
        """
        raise NotImplementedError

    def batch(
        self,
        conn: Connection,
        run_id: str,
        lower: Key | None,
        hi: Key,
        prefetched: Prefetched | None = None,
    ) -> tuple[int, list[Key]]:
        """Write the batch ``lower < key <= hi`` in the open transaction: rows
        written and keys skipped."""
        raise NotImplementedError

    def count_pending(self, conn: Connection, upper: Key | None = None) -> int:
        """Rows this job would still write (up to ``upper``), read-only."""
        raise NotImplementedError

    def progress_total(self, conn: Connection, upper: Key | None = None) -> int:
        """The rows pending when a run starts, for its progress (``progress=``):
        counted before the first batch, so it must cost no pass of the transform
        over the table. :meth:`count_pending` unless a job says otherwise."""
        return self.count_pending(conn, upper)

    def _count(self, conn: Connection, pending: ColumnElement[bool], upper: Key | None) -> int:
        """One ``COUNT`` of the rows where ``pending`` holds, up to ``upper``."""
        bounded = [] if upper is None else [self.keys.between(None, upper)]
        return int(conn.execute(
            select(func.count()).select_from(self.table).where(pending, *bounded)
        ).scalar_one())

    def left_behind(self, conn: Connection, upper: Key, skipped: set[Key]) -> bool:
        """Whether a row with a key up to ``upper`` is still pending after the
        ranges of a run are done, apart from the ``skipped`` keys; read-only,
        cheap when there is none (it stops at the first). Catches a run resumed
        on columns added again, rows inserted past its upper bound, a writer
        clearing the new place behind it."""
        raise NotImplementedError

    def restart(self, conn: Connection) -> None:
        """Roll the batch back and begin it again, to redo it carefully."""
        conn.rollback()
        self.rules.begin_batch(conn)
        if self.trigger_key is not None:
            self.rules.quiet_triggers(conn, self.trigger_key)

    # -- failures ---------------------------------------------------------------------
    def settle(
        self, conn: Connection, run_id: str, updated: int, failed: list[tuple[Key, str]]
    ) -> tuple[int, list[Key]]:
        """Stop on failed rows, or record them and go on (``on_error``): the keys
        skipped, in the walk order like ``failed``'s."""
        if not failed:
            return updated, []
        if self.on_error == "stop":
            shown = ", ".join(f"{self.keys.declared_key(k)!r}: {e}" for k, e in failed[:5])
            more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
            raise BackfillError(
                f"{self.spec.key}: the forward transform {self.spec.forward.name!r} failed on "
                f"{len(failed)} row(s) of {self.table.description} — {shown}{more}. Nothing "
                f"of this batch was written. Fix those rows or the transform, or run with "
                f"on_error='skip' (--on-error skip) to record them and finish the rest."
            )
        for key, error in failed:
            # recorded in the model's key order, whatever order the run walks
            declared = self.keys.declared_key(key)
            log.warning("%s: skipped key %r: %s", self.spec.key, declared, error)
            row_key = encode_key(declared)
            conn.execute(
                skipped_table.delete().where(
                    skipped_table.c.key == self.state_key, skipped_table.c.row_key == row_key
                )
            )
            conn.execute(
                insert(skipped_table).values(
                    key=self.state_key,
                    row_key=row_key,
                    run_id=run_id,
                    error=error[:2000],
                    recorded_at=now(),
                )
            )
        return updated, [k for k, _ in failed]


# -- SQL mode ------------------------------------------------------------------------
class SQLFill(Job):
    """``new = forward(old)`` where every new column is NULL, in the database."""

    checks_left_behind = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._statements: dict[bool, Any] = {}

    def pending(self, with_forward: bool = True) -> ColumnElement[bool]:
        """New all NULL, old not all NULL, and ``forward(old)`` not empty.

        The last clause leaves alone rows whose result is empty, so a repeated
        run writes nothing; the built-ins answer it with a cheap test on the old
        value, other transforms by evaluating it a second time (~6% on 1M rows).
        """
        spec = self.spec
        clauses = [all_null(spec.new_columns), any_not_null(spec.old_columns)]
        if with_forward:
            present = spec.forward.present_sql(*spec.old_columns)
            if present is None:
                forward = spec.forward_sql(spec.old_columns, "the backfill")
                clauses.append(any_not_null(forward))
            else:
                clauses.extend(present)
        return and_(*clauses)

    def assignments(self) -> dict[Column[Any], Any]:
        spec = self.spec
        forward = spec.forward_sql(spec.old_columns, "the backfill")
        return dict(zip(spec.new_columns, forward))

    def update(self, where: ColumnElement[bool]) -> Any:
        return update(self.table).where(where, self.pending()).values(self.assignments())

    def batch(
        self,
        conn: Connection,
        run_id: str,
        lower: Key | None,
        hi: Key,
        prefetched: Prefetched | None = None,
    ) -> tuple[int, list[Key]]:
        has_lower = lower is not None
        statement = self._statements.get(has_lower)
        if statement is None:  # built once per shape, reused with new bounds
            statement = self.update(self.keys.between_params(has_lower))
            self._statements[has_lower] = statement
        try:
            result = conn.execute(statement, self.keys.params(lower, hi))
        except DBAPIError as exc:
            if not self.rules.is_data_error(exc):
                raise
            # a row's value broke the SQL transform: redo the batch finding which
            # rows, under savepoints (rare, so the fast path has none)
            self.restart(conn)
            keys = self.keys.keys_in(conn, lower, hi, self.pending(with_forward=False))
            updated, failed = self._bisect(conn, keys)
            return self.settle(conn, run_id, updated, failed)
        return int(result.rowcount), []

    def _bisect(self, conn: Connection, keys: list[Key]) -> tuple[int, list[tuple[Key, str]]]:
        """Update ``keys`` (consecutive keys) under savepoints, halving the list
        until every failing row stands alone."""
        if not keys:
            return 0, []
        try:
            with conn.begin_nested():
                where = self.keys.from_to(keys[0], keys[-1])
                result = conn.execute(self.update(where))
            return int(result.rowcount), []
        except DBAPIError as exc:
            if not self.rules.is_data_error(exc):
                raise
            if len(keys) == 1:
                return 0, [(keys[0], self.rules.reason(exc))]
            middle = len(keys) // 2
            left = self._bisect(conn, keys[:middle])
            right = self._bisect(conn, keys[middle:])
            return left[0] + right[0], left[1] + right[1]

    def count_pending(self, conn: Connection, upper: Key | None = None) -> int:
        """One COUNT; if the transform fails on some row, rows are counted without
        evaluating it."""
        try:
            value = self._count(conn, self.pending(), upper)
        except DBAPIError as exc:
            if not self.rules.is_data_error(exc):
                raise
            conn.rollback()
            value = self._count(conn, self.pending(with_forward=False), upper)
        conn.rollback()
        return value

    def left_behind(self, conn: Connection, upper: Key, skipped: set[Key]) -> bool:
        bounded = self.keys.between(None, upper)
        keys = self._keys_where(conn, [bounded, self.pending()], len(skipped) + 1)
        if keys is not None:
            return any(k not in skipped for k in keys)
        # the transform fails on some row: take the rows without evaluating it,
        # and look at each of those not skipped alone
        alone = 20
        candidates = self._keys_where(
            conn, [bounded, self.pending(with_forward=False)], len(skipped) + alone + 1
        )
        assert candidates is not None
        unknown = [k for k in candidates if k not in skipped]
        for key in unknown[:alone]:
            found = self._keys_where(conn, [self.keys.equals(key), self.pending()], 1)
            if found is None or found:  # a row the run would write, or fail on
                return True
        return len(unknown) > alone

    def _keys_where(
        self, conn: Connection, where: Sequence[ColumnElement[bool]], limit: int
    ) -> list[Key] | None:
        """The keys of up to ``limit`` rows where ``where`` holds, or None when the
        SQL transform failed on a row while looking."""
        try:
            rows = conn.execute(select(*self.keys.columns).where(*where).limit(limit)).all()
        except DBAPIError as exc:
            if not self.rules.is_data_error(exc):
                raise
            return None
        finally:
            conn.rollback()
        return [tuple(r) for r in rows]


class SQLRepair(SQLFill):
    """``new = forward(old)`` where the places disagree (missing or mismatched)."""

    kind = "repair"
    checks_left_behind = False

    def __init__(self, *args: Any, synced: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.synced = synced
        self.places = SQLPlaces.of(self.spec, "the repair")

    def pending(self, with_forward: bool = True) -> ColumnElement[bool]:
        scope = self.places.scope(self.synced)
        if not with_forward:
            return scope
        return and_(scope, self.places.disagrees())


# -- Python mode -----------------------------------------------------------------------
#: a check of one value: why it cannot be stored exactly, or None
OneCheck = Callable[[Any], "str | None"]
#: the same over a batch's values at once, in C loops: True when every value
#: passes; False means "look row by row" (it may be a false alarm)
EveryCheck = Callable[[list[Any]], bool]
_NONE = type(None)


def _types_within(allowed: frozenset[type]) -> EveryCheck:
    def every(values: list[Any]) -> bool:
        return set(map(type, values)) <= allowed

    return every


def _value_check(column: Column[Any]) -> tuple[OneCheck, EveryCheck | None] | None:
    """A check that a Python value is stored exactly as it is, and its batch form
    (None where there is none), or None when the column needs no check."""
    type_ = column.type
    name = column.name
    if isinstance(type_, (Enum, ARRAY, JSON, PickleType)):
        return None
    if isinstance(type_, String):
        length = type_.length

        def text(value: Any) -> str | None:
            if not isinstance(value, str):
                return f"{value!r} ({type(value).__name__}) is not text, for column {name}"
            if length is not None and len(value) > length:
                return (
                    f"{len(value)} characters do not fit column {name} "
                    f"{type_.compile()}: {value[:40]!r}"
                )
            return None

        def every_text(values: list[Any]) -> bool:
            if not set(map(type, values)) <= {str, _NONE}:
                return False
            return length is None or max(map(len, filter(None, values)), default=0) <= length

        return text, every_text
    if isinstance(type_, Boolean):

        def boolean(value: Any) -> str | None:
            if isinstance(value, bool):
                return None
            return f"{value!r} ({type(value).__name__}) is not a boolean, for column {name}"

        return boolean, _types_within(frozenset({bool, _NONE}))
    if isinstance(type_, Integer):

        def integer(value: Any) -> str | None:
            if isinstance(value, int) and not isinstance(value, bool):
                return None
            return f"{value!r} ({type(value).__name__}) is not an integer, for column {name}"

        return integer, _types_within(frozenset({int, _NONE}))
    if isinstance(type_, Float):

        def floating(value: Any) -> str | None:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return None
            return f"{value!r} ({type(value).__name__}) is not a number, for column {name}"

        return floating, _types_within(frozenset({int, float, _NONE}))
    if isinstance(type_, Numeric):
        precision, scale = type_.precision, type_.scale

        def numeric(value: Any) -> str | None:
            if isinstance(value, int) and not isinstance(value, bool):
                value = Decimal(value)
            if not isinstance(value, Decimal):
                return (
                    f"{value!r} ({type(value).__name__}) is not a Decimal, for column {name}: "
                    f"it would be rounded"
                )
            if not value.is_finite():
                return f"{value!r} does not fit column {name}"
            if scale is not None and value != round(value, scale):
                return f"{value!r} has more than {scale} decimals: column {name} would round it"
            if precision is not None and scale is not None:
                digits = len(value.quantize(Decimal(1)).copy_abs().as_tuple().digits)
                if value.copy_abs() >= 1 and digits > precision - scale:
                    return f"{value!r} does not fit column {name} NUMERIC({precision}, {scale})"
            return None

        return numeric, None
    return None


def _scalar(column: Column[Any]) -> bool:
    """A column that cannot hold a tuple: a tuple result is the wrong shape."""
    return not isinstance(column.type, (ARRAY, JSON, PickleType))


class PythonFill(Job):
    """``new = forward(old)`` computed in Python, written with compare-and-set."""

    mode = "python"
    checks_left_behind = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = self.spec
        self.width = len(self.keys.columns)
        checks = [(i, _value_check(c)) for i, c in enumerate(spec.new_columns)]
        self._checks = [(i, c[0]) for i, c in checks if c is not None]
        self._every = [(i, c[1]) for i, c in checks if c is not None]
        self._single_scalar = len(spec.new_columns) == 1 and _scalar(spec.new_columns[0])

    def pending(self, with_forward: bool = True) -> ColumnElement[bool]:
        spec = self.spec
        return and_(all_null(spec.new_columns), any_not_null(spec.old_columns))

    def read(self, conn: Connection, lower: Key | None, hi: Key) -> list[Any]:
        """The pending rows of a batch: primary key and old values."""
        return list(
            conn.execute(
                select(*self.keys.columns, *self.spec.old_columns)
                .where(self.keys.between(lower, hi), self.pending())
                .order_by(*self.keys.order_by())
            ).all()
        )

    def _check(self, values: Sequence[Any], checks: list[tuple[int, OneCheck]]) -> str | None:
        for i, check in checks:
            value = values[i]
            if value is not None:
                reason = check(value)
                if reason is not None:
                    return reason
        return None

    def compute(self, rows: Sequence[Any]) -> Computed:
        """``(pk..., old..., new...)`` per row to write, and the rows that failed.

        The pending predicate guarantees some old value is not NULL, so the
        transform is called on every row (the None pass-through never applies).
        The fast path is one comprehension; on any exception the chunk is redone
        row by row to name the failing keys.
        """
        spec = self.spec
        width = self.width
        python = spec.forward.python
        n_new = len(spec.new_columns)
        try:
            results: list[Any] | None = [python(*row[width:]) for row in rows]
        except Exception:
            results = None
        writes: list[tuple[Any, ...]] = []
        failed: list[tuple[Key, str]] = []
        if results is None:
            for row in rows:
                key = tuple(row[:width])
                try:
                    new = spec.forward_values(tuple(row[width:]), row=key)
                except FourStepError as exc:
                    cause = exc.__cause__ or exc
                    failed.append((key, f"{type(cause).__name__}: {cause}"))
                    continue
                if new.count(None) != n_new:  # forward(old) empty: nothing to write
                    writes.append((*row, *new))
        elif n_new == 1:
            if self._single_scalar:
                for row, res in zip(rows, results):
                    if isinstance(res, tuple):
                        raise TransformError(
                            f"{spec.describe()}: the forward transform {spec.forward.name!r} "
                            f"returned a tuple {res!r} for the one new column "
                            f"{spec.new_columns[0].name} (row {tuple(row[:width])!r}); "
                            f"return a single value"
                        )
            writes = [(*row, res) for row, res in zip(rows, results) if res is not None]
        else:
            if not all(type(res) is tuple and len(res) == n_new for res in results):
                results = [spec._widen(res, n_new, spec.forward, "forward") for res in results]
            empty = (None,) * n_new
            writes = [(*row, *res) for row, res in zip(rows, results) if res != empty]
        if self._checks and writes:
            start = len(writes[0]) - n_new
            # the batch's values checked at once; row by row only the columns
            # where that finds something (or that have no batch form)
            slow = [
                (i, check)
                for (i, check), (_, every) in zip(self._checks, self._every)
                if every is None or not every(list(map(itemgetter(start + i), writes)))
            ]
            if slow:
                kept = []
                for write in writes:
                    reason = self._check(write[start:], slow)
                    if reason is None:
                        kept.append(write)
                    else:
                        failed.append((tuple(write[:width]), f"ValueError: {reason}"))
                writes = kept
        return writes, failed

    def write(self, conn: Connection, writes: Sequence[tuple[Any, ...]], lower: Key | None,
              hi: Key, encoded: str | None = None) -> int:
        spec = self.spec
        return self.rules.update_rows(
            conn, self.table, self.keys.columns, spec.old_columns, spec.new_columns, writes,
            [self.keys.between(lower, hi), self.pending()], encoded,
        )

    def _write_finding_failures(
        self,
        conn: Connection,
        writes: list[tuple[Any, ...]],
        lower: Key | None,
        hi: Key,
    ) -> tuple[int, list[tuple[Key, str]]]:
        """Write ``writes``; on a data error, find the rows the database refuses by
        halving under savepoints (rare: the value checks catch most)."""
        try:
            with conn.begin_nested():
                return self.write(conn, writes, lower, hi), []
        except DBAPIError as exc:
            if not self.rules.is_data_error(exc):
                raise
            if len(writes) == 1:
                return 0, [(tuple(writes[0][: self.width]), self.rules.reason(exc))]
            middle = len(writes) // 2
            left = self._write_finding_failures(conn, writes[:middle], lower, hi)
            right = self._write_finding_failures(conn, writes[middle:], lower, hi)
            return left[0] + right[0], left[1] + right[1]

    def batch(
        self,
        conn: Connection,
        run_id: str,
        lower: Key | None,
        hi: Key,
        prefetched: Prefetched | None = None,
    ) -> tuple[int, list[Key]]:
        try:
            return self._sweep(conn, run_id, lower, hi, prefetched, careful=False)
        except DBAPIError as exc:
            if not self.rules.is_data_error(exc):
                raise
            # the database refused a value the checks let through: redo the batch,
            # finding the refused rows under savepoints (rare: no savepoint otherwise)
            self.restart(conn)
            return self._sweep(conn, run_id, lower, hi, None, careful=True)

    def _sweep(
        self,
        conn: Connection,
        run_id: str,
        lower: Key | None,
        hi: Key,
        prefetched: Prefetched | None,
        careful: bool,
    ) -> tuple[int, list[Key]]:
        width = self.width
        total_updated = 0
        skipped: list[Key] = []
        for _sweep in range(3):
            encoded: str | None = None
            if prefetched is not None:
                # read, computed and encoded while the previous batch was written; rows
                # that changed since are refused by the compare-and-set and swept below
                rows, (writes, failed), encoded = prefetched
                prefetched = None
            else:
                rows = self.read(conn, lower, hi)
                writes, failed = self.compute(rows)
            if skipped:
                encoded = None
                rows = [r for r in rows if tuple(r[:width]) not in skipped]
                writes = [w for w in writes if tuple(w[:width]) not in skipped]
                failed = [f for f in failed if f[0] not in skipped]
            if not rows:
                self.last_write_seconds = -1.0  # nothing written: steer on the batch
                return total_updated, skipped
            # raises on "stop" before anything of the batch is written
            skipped += self.settle(conn, run_id, 0, failed)[1]
            write_started = time.monotonic()
            if not writes:
                updated = 0
            elif careful:
                updated, refused = self._write_finding_failures(conn, writes, lower, hi)
                skipped += self.settle(conn, run_id, 0, refused)[1]
                gone = {k for k, _ in refused}
                writes = [w for w in writes if tuple(w[:width]) not in gone]
            else:
                updated = self.write(conn, writes, lower, hi, encoded)
            self.last_write_seconds = time.monotonic() - write_started
            total_updated += updated
            if updated == len(writes):
                return total_updated, skipped
            # compare-and-set skipped rows whose value moved: sweep them again
            log.info(
                "%s: %d row(s) changed under the batch, sweeping again",
                self.spec.key, len(writes) - updated,
            )
        return total_updated, skipped

    def progress_total(self, conn: Connection, upper: Key | None = None) -> int:
        """One COUNT of the pending predicate, the transform not run: rows whose
        ``forward(old)`` is empty (rare: the backfill leaves them alone) count
        too, so the progress may end short of its total."""
        try:
            return self._count(conn, self.pending(), upper)
        finally:
            conn.rollback()

    def count_pending(self, conn: Connection, upper: Key | None = None) -> int:
        """The pending rows read in key batches and the transform applied, so rows
        whose ``forward(old)`` is empty (which the backfill leaves alone) are not
        counted."""
        last = upper if upper is not None else self.keys.last_key(conn)
        count = 0
        lower: Key | None = None
        while last is not None and lower != last:
            hi = self.keys.batch_end(conn, lower, last, 50_000)
            writes, failed = self.compute(self.read(conn, lower, hi))
            count += len(writes) + len(failed)
            lower = hi
        conn.rollback()
        return count

    def left_behind(self, conn: Connection, upper: Key, skipped: set[Key]) -> bool:
        """First the keys alone (nothing pending, the usual answer, costs no row
        read out); when some are, the rows streamed and the transform applied: a
        row whose ``forward(old)`` is empty is left alone by the backfill, not
        behind."""
        width = self.width
        where = (self.keys.between(None, upper), self.pending())
        try:
            found = conn.execute(
                select(*self.keys.columns).where(*where).limit(len(skipped) + 1)
            ).all()
        finally:
            conn.rollback()
        if len(found) <= len(skipped) and all(tuple(k) in skipped for k in found):
            return False
        statement = select(*self.keys.columns, *self.spec.old_columns).where(*where)
        result = conn.execute(statement.execution_options(yield_per=2_000))
        try:
            for rows in result.partitions():
                writes, failed = self.compute(rows)
                if any(tuple(w[:width]) not in skipped for w in writes):
                    return True
                if any(key not in skipped for key, _ in failed):
                    return True
            return False
        finally:
            result.close()
            conn.rollback()


class PythonRepair(PythonFill):
    """The repair computed in Python: rows whose places disagree get ``new =
    forward(old)``, guarded by compare-and-set on the old and the new value(s)."""

    kind = "repair"
    checks_left_behind = False

    def __init__(
        self, *args: Any, synced: bool, marks: str | bool | None = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.synced = synced
        self.marks = marks

    def pending(self, with_forward: bool = True) -> ColumnElement[bool]:
        spec = self.spec
        if self.synced:
            return any_not_null([*spec.old_columns, *spec.new_columns])
        return any_not_null(spec.old_columns)

    def progress_total(self, conn: Connection, upper: Key | None = None) -> int:
        # the predicate is only the rows in scope: the places are compared in
        # Python, so the total is that pass (as before: a repair's rows are few)
        return self.count_pending(conn, upper)

    def read(self, conn: Connection, lower: Key | None, hi: Key) -> list[Any]:
        spec = self.spec
        where = [self.keys.between(lower, hi), self.pending()]
        if self.marks is not False:
            from .marks import new_written_last

            # rows whose new place was written last, alone (step-4 code): the truth
            home = self.marks if isinstance(self.marks, str) else None
            side = new_written_last(home, spec.key, self.keys.columns)
            where.append(or_(side.is_(None), side != "new"))
        return list(
            conn.execute(
                select(*self.keys.columns, *spec.old_columns, *spec.new_columns)
                .where(*where)
                .order_by(*self.keys.order_by())
            ).all()
        )

    def compute(self, rows: Sequence[Any]) -> Computed:
        """``(pk..., old..., new as read..., new = forward(old))`` per row to repair."""
        from .places import compare_values

        spec = self.spec
        width = self.width
        n_old = len(spec.old_columns)
        writes: list[tuple[Any, ...]] = []
        failed: list[tuple[Key, str]] = []
        for row in rows:
            key = tuple(row[:width])
            old = tuple(row[width : width + n_old])
            new = tuple(row[width + n_old :])
            if compare_values(spec, old, new, self.synced, key) not in (MISSING, MISMATCHED):
                continue
            try:
                target = spec.forward_values(old, row=key)
            except FourStepError as exc:
                cause = exc.__cause__ or exc
                failed.append((key, f"{type(cause).__name__}: {cause}"))
                continue
            reason = self._check(target, self._checks)
            if reason is not None:
                failed.append((key, f"ValueError: {reason}"))
                continue
            writes.append((*row, *target))
        return writes, failed

    def write(self, conn: Connection, writes: Sequence[tuple[Any, ...]], lower: Key | None,
              hi: Key, encoded: str | None = None) -> int:
        spec = self.spec
        return self.rules.update_rows(
            conn, self.table, self.keys.columns, [*spec.old_columns, *spec.new_columns],
            spec.new_columns, writes, [self.keys.between(lower, hi)], encoded,
        )

class ReadAhead:
    """Reads and computes the next Python-mode batch on its own connection.

    The transform runs in Python while the server writes the previous batch,
    so the two overlap instead of adding up. Reading takes no locks; the
    compare-and-set of the write refuses any row that changed in between.
    """

    def __init__(self, job: PythonFill, engine: Engine) -> None:
        self.job = job
        self.conn = engine.connect()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fourstep-read-ahead")
        #: (lower, upper, range upper) of the batch being read
        self.window: tuple[Key | None, Key, Key] | None = None
        self.future: Future[Prefetched] | None = None

    def _read(self, lower: Key | None, hi: Key) -> Prefetched:
        try:
            rows = self.job.read(self.conn, lower, hi)
        finally:
            self.conn.rollback()
        writes, failed = self.job.compute(rows)
        # encoded here too: on the write's thread it would hold up the next write
        encoded = self.job.rules.encode_rows(writes) if writes else None
        return rows, (writes, failed), encoded

    def start(self, lower: Key | None, hi: Key, range_upper: Key) -> None:
        self.window = (lower, hi, range_upper)
        self.future = self.pool.submit(self._read, lower, hi)

    def take(self) -> Prefetched | None:
        future, self.future, self.window = self.future, None, None
        try:
            return future.result() if future is not None else None
        except Exception:  # the batch will read for itself
            log.debug("read-ahead failed; the batch reads again", exc_info=True)
            return None

    def close(self) -> None:
        if self.future is not None:
            self.future.cancel()
        self.pool.shutdown(wait=True)
        self.conn.close()


def make_job(
    spec: PhasedSpec,
    keys: KeyRange,
    rules: DialectRules,
    *,
    state_key: str,
    on_error: OnError,
    repair: bool = False,
    synced: bool = False,
    marks: str | bool | None = False,
) -> Job:
    """The job for ``spec``: SQL where the transforms it needs have SQL forms.

    ``marks``: where its write marks live (:mod:`fourstep_sqla.marks`), False
    when it has none; a repair leaves alone the rows whose new place was
    written last.
    """
    options: dict[str, Any] = {"state_key": state_key, "on_error": on_error}
    job: Job
    if repair:
        if spec.forward.has_sql and spec.backward.has_sql and marks is False:
            job = SQLRepair(spec, keys, rules, synced=synced, **options)
        else:
            job = PythonRepair(spec, keys, rules, synced=synced, marks=marks, **options)
    elif spec.forward.has_sql:
        job = SQLFill(spec, keys, rules, **options)
    else:
        job = PythonFill(spec, keys, rules, **options)
    if synced or marks is not False:
        job.trigger_key = spec.key.removesuffix(":restore")
    return job
