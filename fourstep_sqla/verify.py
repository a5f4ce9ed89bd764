"""Verification: does the new place hold everything the old one holds?

``verify(bind, User.full_name)`` walks the table in primary-key batches,
read-only, and sorts every row by how its places relate
(:mod:`fourstep_sqla.places`):

- **missing**: the old place has a value and nothing was written in the new
  place (the backfill has not reached it, or a writer outside the ORM wrote
  only the old column of a new row, without sync triggers);
- **mismatched**: the places disagree: the new place is neither
  ``forward(old)`` nor a value whose ``backward`` gives the old one back (an
  old-only write after the backfill that no trigger carried over);
- **lossy**: the new place is ``forward(old)``, but ``backward(forward(old))``
  is not the old value ('' split into NULL, NULL; a trailing separator):
  dropping the old place loses the difference;
- **unstable**: a new value that ``forward(backward(new))`` does not give back
  (('Mary Ann', 'Smith') -> 'Mary Ann Smith' -> ('Mary', 'Ann Smith')): after
  a downgrade past the drop, step-1 code would read it differently. A warning.

A row written through the phased attribute (``new = v``, ``old =
backward(v)``) is never missing or mismatched, whatever the phase that wrote
it. ``ok`` means no row missing and none mismatched; the drop gate
(``op.drop_old``) also refuses lossy rows unless told to accept them.

Rows whose old place is empty are compared only where the sync triggers of
the attribute are installed (detected, or ``synced=``): there a NULL old place
beside a new value means a write went past the triggers. Without them such a
row is what every row written at step 4 looks like, and is not compared.

Comparisons are NULL-safe and exact (binary strings on MariaDB/MySQL). They
run in SQL when both transforms have a SQL form, in Python otherwise. The
result, with up to ``sample_size`` sample keys, is recorded in the state table
for ``fourstep status``.
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

from .attribute import PhasedSpec
from .backfill import refuse_async
from .dialects import rules_for
from .errors import FourStepError
from .keys import KeyRange, key_columns
from .marks import new_written_last
from .places import LOSSY, MISMATCHED, MISSING, SQLPlaces, compare_values, unstable_value
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
    #: keys of missing and mismatched rows, in key order
    sample_keys: list[Key] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = "sql"
    #: rows whose round trip backward(forward(old)) loses the old value
    lossy: int = 0
    lossy_keys: list[Key] = field(default_factory=list)
    #: rows whose new value forward(backward(new)) does not give back
    unstable: int = 0
    unstable_keys: list[Key] = field(default_factory=list)
    #: the sync triggers keep both places in step (rows with an empty old place
    #: were compared too)
    synced: bool = False
    #: step 4 is done: the old column(s) are dropped, there is nothing to compare
    dropped: bool = False

    @property
    def ok(self) -> bool:
        """No row missing, none mismatched."""
        return self.missing == 0 and self.mismatched == 0


class _Checker:
    def __init__(
        self,
        conn: Connection,
        spec: PhasedSpec,
        sample_size: int,
        synced: bool,
        marks: str | bool | None = None,
    ) -> None:
        #: the write marks' home (see :mod:`fourstep_sqla.marks`), False: none
        self.marks = marks
        self.spec = spec
        table = spec.table
        assert table is not None
        self.table = table
        self.keys = KeyRange(table, key_columns(conn, table, spec.key))
        self.sample_size = sample_size
        self.synced = synced
        sql = spec.forward.has_sql and spec.backward.has_sql
        self.mode = "sql" if sql and marks is False else "python"

    def _sample(self, found: list[Key], keys: Any) -> None:
        """Keep up to ``sample_size`` walk-order ``keys``, in the model's order."""
        wanted = self.sample_size - len(found)
        if wanted > 0:
            found.extend(self.keys.declared_key(k) for k in list(keys)[:wanted])

    def check_sql(self, conn: Connection, in_range: Any, result: VerifyResult) -> None:
        """Sort the rows ``in_range`` selects, in SQL."""
        places = SQLPlaces.of(self.spec, "verify")
        scope = places.scope(self.synced)
        categories = {
            "missing": places.missing(),
            "mismatched": places.mismatched(),
            "lossy": places.lossy(),
        }
        counts = [
            func.coalesce(func.sum(case((scope & condition, 1), else_=0)), 0)
            for condition in categories.values()
        ]
        row = conn.execute(select(func.count(), *counts).where(in_range)).one()
        result.total += int(row[0])
        missing, mismatched, lossy = (int(v) for v in row[1:])
        result.missing += missing
        result.mismatched += mismatched
        result.lossy += lossy
        for count, condition, found in (
            (missing + mismatched, or_(categories["missing"], categories["mismatched"]),
             result.sample_keys),
            (lossy, categories["lossy"], result.lossy_keys),
        ):
            wanted = self.sample_size - len(found)
            if count and wanted > 0:
                self._sample(found, self._keys(conn, and_(in_range, scope, condition), wanted))
        rounds, unstable = places.round_trip(self.spec, and_(in_range, scope), "verify")
        count = conn.execute(
            select(func.count()).select_from(rounds).where(unstable)
        ).scalar_one()
        result.unstable += int(count)
        wanted = self.sample_size - len(result.unstable_keys)
        if count and wanted > 0:
            keys = [rounds.c[c.name] for c in self.keys.columns]
            rows = conn.execute(select(*keys).where(unstable).order_by(*keys).limit(wanted))
            self._sample(result.unstable_keys, [tuple(r) for r in rows])

    def _keys(self, conn: Connection, where: Any, limit: int) -> list[Key]:
        rows = conn.execute(
            select(*self.keys.columns).where(where).order_by(*self.keys.order_by()).limit(limit)
        )
        return [tuple(r) for r in rows]

    def check_sql_or_python(
        self, conn: Connection, lower: Key | None, upper: Key, result: VerifyResult
    ) -> None:
        """SQL, unless a SQL transform fails on a row of this batch (a value a cast
        rejects, left behind by ``on_error="skip"``): then this batch is compared
        in Python, where such rows count as missing or mismatched."""
        snapshot = (
            result.total, result.missing, result.mismatched, result.lossy, result.unstable,
            len(result.sample_keys), len(result.lossy_keys), len(result.unstable_keys),
        )
        rules = rules_for(conn)
        savepoint = conn.begin_nested() if rules.error_aborts_transaction else None
        try:
            self.check_sql(conn, self.keys.between(lower, upper), result)
        except DBAPIError as exc:
            if savepoint is not None:
                savepoint.rollback()
            if not rules.is_data_error(exc):
                raise
            (result.total, result.missing, result.mismatched, result.lossy,
             result.unstable) = snapshot[:5]
            del result.sample_keys[snapshot[5]:]
            del result.lossy_keys[snapshot[6]:]
            del result.unstable_keys[snapshot[7]:]
            sql_only = getattr(self.spec.forward.python, "sql_only", False) or getattr(
                self.spec.backward.python, "sql_only", False
            )
            if sql_only:
                raise FourStepError(
                    f"{self.spec.key}: a transform's SQL fails on a row with keys after "
                    f"{lower!r} up to {upper!r} ({rules.reason(exc)}) and this transform has "
                    f"no Python form to compare with; fix those rows"
                ) from exc
            log.warning("%s: SQL transform failed in keys (%r, %r], comparing in Python: %s",
                        self.spec.key, lower, upper, rules.reason(exc))
            self.check_python(conn, self.keys.between(lower, upper), result)
        else:
            if savepoint is not None:
                savepoint.commit()

    def check_python(self, conn: Connection, in_range: Any, result: VerifyResult) -> None:
        """Sort the rows ``in_range`` selects, in Python."""
        spec = self.spec
        width = len(self.keys.columns)
        n_old = len(spec.old_columns)
        n_new = len(spec.new_columns)
        columns: list[Any] = [*self.keys.columns, *spec.old_columns, *spec.new_columns]
        if self.marks is not False:
            home = self.marks if isinstance(self.marks, str) else None
            columns.append(new_written_last(home, spec.key, self.keys.columns))
        rows = conn.execute(
            select(*columns).where(in_range).order_by(*self.keys.order_by())
        )
        for row in rows:
            result.total += 1
            key = tuple(row[:width])
            old = tuple(row[width : width + n_old])
            new = tuple(row[width + n_old : width + n_old + n_new])
            category = compare_values(spec, old, new, self.synced, key)
            if category is None:
                continue
            if category in (MISSING, MISMATCHED) and self.marks is not False and row[-1] == "new":
                # the new place was written last, alone (step-4 code): it is the truth
                continue
            if category in (MISSING, MISMATCHED):
                if category == MISSING:
                    result.missing += 1
                else:
                    result.mismatched += 1
                self._sample(result.sample_keys, [key])
            elif category == LOSSY:
                result.lossy += 1
                self._sample(result.lossy_keys, [key])
            if unstable_value(spec, new, key):
                result.unstable += 1
                self._sample(result.unstable_keys, [key])


def verify(
    bind: Engine | Connection,
    attribute_or_key: Any,
    *,
    batch_size: int = 50_000,
    sample_size: int = 10,
    record: bool = True,
    synced: bool | None = None,
    progress: Callable[[VerifyResult], None] | None = None,
) -> VerifyResult:
    """Sort every row by how its old and new places relate (read-only).

    :param batch_size: rows per primary-key batch.
    :param sample_size: how many keys of bad rows to report per kind.
    :param record: write the result into the state table.
    :param synced: whether the sync triggers keep both places in step (rows
        with an empty old place are then compared too); None: look in the
        database.
    :param progress: called after every batch with the running result.

    An asyncio application awaits :func:`fourstep_sqla.asyncio.verify` instead,
    with its AsyncEngine or AsyncConnection.
    """
    spec = resolve(attribute_or_key)
    refuse_async(bind, "verify", spec.key)
    if spec.table is None:
        raise FourStepError(f"{spec.describe()} is not mapped yet; import its model first")
    if not spec.old_columns:
        raise FourStepError(f"{spec.key}: the old column is gone; there is nothing to verify")
    started = time.monotonic()
    owned = isinstance(bind, Engine)
    conn = bind.connect() if isinstance(bind, Engine) else bind
    try:
        from .places import old_place_dropped

        if old_place_dropped(conn, spec):
            if owned:
                conn.rollback()
            log.info("%s: step 4 done: old column(s) dropped; nothing to verify", spec.key)
            return VerifyResult(key=spec.key, mode="sql", dropped=True,
                                seconds=time.monotonic() - started)
        if synced is None:
            from .triggers import installed

            synced = installed(conn, spec)
        checker = _Checker(conn, spec, sample_size, synced, written_marks(conn, spec))
        result = VerifyResult(key=spec.key, mode=checker.mode, synced=synced)
        upper = checker.keys.last_key(conn)
        lower: Key | None = None
        while upper is not None and lower != upper:
            hi = checker.keys.batch_end(conn, lower, upper, batch_size)
            if checker.mode == "sql":
                checker.check_sql_or_python(conn, lower, hi, result)
            else:
                checker.check_python(conn, checker.keys.between(lower, hi), result)
            lower = hi
            if progress is not None:
                progress(result)
        if owned:
            conn.rollback()
        result.seconds = time.monotonic() - started
        log.info(
            "%s: %d rows, %d missing, %d mismatched, %d lossy, %d unstable (%.2f s)",
            spec.key, result.total, result.missing, result.mismatched, result.lossy,
            result.unstable, result.seconds,
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


def verify_rows(
    conn: Connection, spec: PhasedSpec, where: Any, *, synced: bool, sample_size: int = 10
) -> VerifyResult:
    """Sort only the rows ``where`` selects, in one statement, read-only: what the
    drop re-checks under its lock for the rows written while the gate ran."""
    checker = _Checker(conn, spec, sample_size, synced, written_marks(conn, spec))
    result = VerifyResult(key=spec.key, mode=checker.mode, synced=synced)
    if checker.mode == "sql":
        checker.check_sql(conn, where, result)
    else:
        checker.check_python(conn, where, result)
    return result


def written_marks(conn: Connection, spec: PhasedSpec) -> str | bool | None:
    """The home of ``spec``'s write marks (None: the default schema), or False
    when it has none."""
    from .marks import home_of, marks_present

    table = spec.table
    assert table is not None
    key = spec.key.removesuffix(":restore")
    if not marks_present(conn, key, table.name, table.schema):
        return False
    return home_of(conn, table.schema)


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
