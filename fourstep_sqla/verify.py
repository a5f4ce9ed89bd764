"""Verification: is the new place complete and equal to ``forward(old)``?

``verify(bind, User.full_name)`` walks the table in primary-key batches,
read-only, and counts per row:

- **missing**: the old place has a value, ``forward(old)`` is not empty, and
  every new column is NULL (the backfill has not reached it, or a writer
  outside the ORM wrote only the old column of a new row);
- **mismatched**: the new place has a value that differs from ``forward(old)``
  (NULL-safe comparison, column by column).

Rows whose old place is empty are not compared: at step 4 every new row is
like that. Comparison runs in SQL when the forward transform has a SQL form,
in Python otherwise. The result, with up to ``sample_size`` sample keys, is
recorded in the state table for ``fourstep status`` and the drop gate.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from .attribute import PhasedSpec
from .errors import FourStepError
from .keys import KeyRange, all_null, any_not_null, primary_key_of
from .registry import resolve
from .state import encode_key, ensure_state_tables, now, state_table

__all__ = ["VerifyResult", "verify"]

log = logging.getLogger("fourstep_sqla.verify")

Key = tuple[Any, ...]


@dataclass
class VerifyResult:
    """The outcome of :func:`verify`."""

    key: str
    total: int = 0
    missing: int = 0
    mismatched: int = 0
    sample_keys: list[Key] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = "sql"

    @property
    def ok(self) -> bool:
        """No row missing, none mismatched."""
        return self.missing == 0 and self.mismatched == 0


class _Checker:
    def __init__(self, spec: PhasedSpec, sample_size: int) -> None:
        self.spec = spec
        table = spec.table
        assert table is not None
        self.table = table
        self.keys = KeyRange(table, primary_key_of(table, spec.key))
        self.sample_size = sample_size
        self.mode = "sql" if spec.forward.has_sql else "python"

    def sql_conditions(self) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
        spec = self.spec
        forward = spec.forward_sql(spec.old_columns, "verify")
        old_present = any_not_null(spec.old_columns)
        missing = and_(old_present, all_null(spec.new_columns), any_not_null(forward))
        differs = or_(*(n.is_distinct_from(f) for n, f in zip(spec.new_columns, forward)))
        mismatched = and_(old_present, ~all_null(spec.new_columns), differs)
        return missing, mismatched

    def check_sql(
        self, conn: Connection, lower: Key | None, upper: Key, result: VerifyResult
    ) -> None:
        missing, mismatched = self.sql_conditions()
        in_range = self.keys.between(lower, upper)
        row = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((missing, 1), else_=0)), 0),
                func.coalesce(func.sum(case((mismatched, 1), else_=0)), 0),
            ).where(in_range)
        ).one()
        result.total += int(row[0])
        result.missing += int(row[1])
        result.mismatched += int(row[2])
        wanted = self.sample_size - len(result.sample_keys)
        if wanted > 0 and (row[1] or row[2]):
            samples = conn.execute(
                select(*self.keys.columns)
                .where(in_range, or_(missing, mismatched))
                .order_by(*self.keys.order_by())
                .limit(wanted)
            )
            result.sample_keys.extend(tuple(r) for r in samples)

    def check_sql_or_python(
        self, conn: Connection, lower: Key | None, upper: Key, result: VerifyResult
    ) -> None:
        """SQL, unless the SQL transform fails on a row of this batch (a value a
        cast rejects, left behind by ``on_error="skip"``): then this batch is
        compared in Python, where such rows count as missing or mismatched."""
        if conn.dialect.name == "sqlite":
            self.check_sql(conn, lower, upper, result)
            return
        snapshot = (result.total, result.missing, result.mismatched, len(result.sample_keys))
        savepoint = conn.begin_nested()
        try:
            self.check_sql(conn, lower, upper, result)
        except DBAPIError as exc:
            savepoint.rollback()
            result.total, result.missing, result.mismatched = snapshot[:3]
            del result.sample_keys[snapshot[3]:]
            if getattr(self.spec.forward.python, "sql_only", False):
                raise FourStepError(
                    f"{self.spec.key}: the forward SQL fails on a row with keys after "
                    f"{lower!r} up to {upper!r} ({str(exc.orig).splitlines()[0]}) and this "
                    f"transform has no Python form to compare with; fix those rows"
                ) from exc
            log.warning("%s: forward SQL failed in keys (%r, %r], comparing in Python: %s",
                        self.spec.key, lower, upper, str(exc.orig).splitlines()[0])
            self.check_python(conn, lower, upper, result)
        else:
            savepoint.commit()

    def check_python(
        self, conn: Connection, lower: Key | None, upper: Key, result: VerifyResult
    ) -> None:
        spec = self.spec
        width = len(self.keys.columns)
        n_old = len(spec.old_columns)
        rows = conn.execute(
            select(*self.keys.columns, *spec.old_columns, *spec.new_columns)
            .where(self.keys.between(lower, upper))
            .order_by(*self.keys.order_by())
        )
        for row in rows:
            result.total += 1
            key = tuple(row[:width])
            old = tuple(row[width : width + n_old])
            new = tuple(row[width + n_old :])
            if old.count(None) == len(old):
                continue
            try:
                expected = spec.forward_values(old, row=key)
            except FourStepError:
                expected = None
            new_empty = new.count(None) == len(new)
            bad = False
            if new_empty:
                if expected is None or expected.count(None) != len(expected):
                    result.missing += 1
                    bad = True
            elif expected is None or tuple(expected) != new:
                result.mismatched += 1
                bad = True
            if bad and len(result.sample_keys) < self.sample_size:
                result.sample_keys.append(key)


def verify(
    bind: Engine | Connection,
    attribute_or_key: Any,
    *,
    batch_size: int = 50_000,
    sample_size: int = 10,
    record: bool = True,
    progress: Callable[[VerifyResult], None] | None = None,
) -> VerifyResult:
    """Compare ``forward(old)`` with ``new`` for every row (read-only).

    :param batch_size: rows per primary-key batch.
    :param sample_size: how many keys of bad rows to report.
    :param record: write the result into the state table.
    :param progress: called after every batch with the running result.
    """
    spec = resolve(attribute_or_key)
    if spec.table is None:
        raise FourStepError(f"{spec.describe()} is not mapped yet; import its model first")
    if not spec.old_columns:
        raise FourStepError(f"{spec.key}: the old column is gone; there is nothing to verify")
    checker = _Checker(spec, sample_size)
    result = VerifyResult(key=spec.key, mode=checker.mode)
    started = time.monotonic()
    owned = isinstance(bind, Engine)
    conn = bind.connect() if isinstance(bind, Engine) else bind
    try:
        upper = checker.keys.last_key(conn)
        lower: Key | None = None
        while upper is not None and lower != upper:
            hi = checker.keys.batch_end(conn, lower, upper, batch_size)
            if checker.mode == "sql":
                checker.check_sql_or_python(conn, lower, hi, result)
            else:
                checker.check_python(conn, lower, hi, result)
            lower = hi
            if progress is not None:
                progress(result)
        if owned:
            conn.rollback()
        result.seconds = time.monotonic() - started
        log.info(
            "%s: %d rows, %d missing, %d mismatched (%.2f s)",
            spec.key, result.total, result.missing, result.mismatched, result.seconds,
        )
        if record:
            if owned:
                with conn.begin():
                    _record(conn, spec, result)
            else:  # the caller's connection: its transaction, its commit
                _record(conn, spec, result)
        return result
    finally:
        if owned:
            conn.close()


def _record(conn: Connection, spec: PhasedSpec, result: VerifyResult) -> None:
    values = {
        "verified_at": now(),
        "verify_total": result.total,
        "verify_missing": result.missing,
        "verify_mismatched": result.mismatched,
        "verify_sample": json.dumps([json.loads(encode_key(k)) for k in result.sample_keys]),
        "updated_at": now(),
    }
    ensure_state_tables(conn)
    done = conn.execute(update(state_table).where(state_table.c.key == spec.key).values(**values))
    if done.rowcount:
        return
    assert spec.table is not None
    try:
        with conn.begin_nested():
            conn.execute(
                insert(state_table).values(key=spec.key, table_name=spec.table.fullname, **values)
            )
    except IntegrityError:  # inserted meanwhile by a backfill
        conn.execute(update(state_table).where(state_table.c.key == spec.key).values(**values))
