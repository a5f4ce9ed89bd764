"""The state tables: what the database knows about each phased attribute.

Written by the backfill and verify engine (and, later, the Alembic ops), read
by ``fourstep status``, the drop gate and the start-up check. Three small
tables, created on first use:

``fourstep_state``
    one row per phased attribute (registry key): the phase recorded by the
    last migration, the current or last backfill run (its id, status, the key
    upper bound fixed when it started, the identity of the columns it fills
    where the database gives one), and the last verification (when, total,
    missing, mismatched, sample keys).
``fourstep_ranges``
    the key ranges of a backfill run, with each range's cursor. A worker
    claims a range with a session-level lock on a lease connection (see
    :mod:`fourstep_sqla.runner`); the cursor lives in ``fourstep_progress`` so that batches,
    committed on the worker's own connection, never wait on the lease.
``fourstep_progress``
    per range: the last key done, rows updated, batches, done. Updated in the
    same transaction as each batch, so a run killed at any moment resumes
    exactly where its last committed batch ended.
``fourstep_skipped``
    keys a transform failed on with ``on_error="skip"``, and the error.

Columns added by later versions (``run_place``, ``run_key_order``) are added to tables an older
version created by :func:`ensure_state_tables`, idempotently; readers that
may run first (:func:`read_state`, the start-up check) name their columns and
never need them.

Keys (primary key values) are stored as JSON arrays, one item per primary-key
column, in the column's Python form (str for anything json cannot carry):
skipped keys in the model's primary-key order, a run's cursors and bounds in
the order the run walks the key (``run_key_order``, see :mod:`fourstep_sqla.keys`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)

__all__ = [
    "STATE_METADATA",
    "AttributeState",
    "decode_key",
    "encode_key",
    "ensure_state_tables",
    "read_state",
]

STATE_METADATA = MetaData()

state_table = Table(
    "fourstep_state",
    STATE_METADATA,
    Column("key", String(255), primary_key=True),
    Column("table_name", String(255), nullable=False),
    Column("recorded_phase", Integer),
    Column("run_id", String(36)),
    Column("run_status", String(16)),  # running | complete | failed
    Column("run_upper_bound", Text),
    # the identity of the columns the run fills, where the database gives one
    # (PostgreSQL: "<table oid>:<attnum>,..."); a run on other columns is not resumed
    Column("run_place", Text),
    # the key columns the run walks, in its order (JSON list); cursors and bounds
    # are tuples in that order. NULL: a run of a version that walked the model's order
    Column("run_key_order", Text),
    Column("run_started_at", DateTime(timezone=True)),
    Column("run_finished_at", DateTime(timezone=True)),
    Column("verified_at", DateTime(timezone=True)),
    Column("verify_total", BigInteger),
    Column("verify_missing", BigInteger),
    Column("verify_mismatched", BigInteger),
    Column("verify_sample", Text),
    Column("updated_at", DateTime(timezone=True)),
)

ranges_table = Table(
    "fourstep_ranges",
    STATE_METADATA,
    Column("key", String(255), primary_key=True),
    Column("run_id", String(36), primary_key=True),
    Column("range_no", Integer, primary_key=True),
    Column("lower_key", Text),  # exclusive; NULL: from the first key
    Column("upper_key", Text, nullable=False),  # inclusive
)

progress_table = Table(
    "fourstep_progress",
    STATE_METADATA,
    Column("key", String(255), primary_key=True),
    Column("run_id", String(36), primary_key=True),
    Column("range_no", Integer, primary_key=True),
    Column("cursor_key", Text),  # last key done (inclusive); NULL: nothing yet
    Column("done", Boolean, nullable=False, default=False),
    Column("rows_updated", BigInteger, nullable=False, default=0),
    Column("batches", Integer, nullable=False, default=0),
    Column("updated_at", DateTime(timezone=True)),
)

skipped_table = Table(
    "fourstep_skipped",
    STATE_METADATA,
    Column("key", String(255), primary_key=True),
    # 255 + 512 characters: the longest primary key MariaDB/MySQL allow in utf8mb4
    Column("row_key", String(512), primary_key=True),
    Column("run_id", String(36)),
    Column("error", Text),
    Column("recorded_at", DateTime(timezone=True)),
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


#: columns of the state tables that the first versions did not create
ADDED_COLUMNS = (state_table.c.run_place, state_table.c.run_key_order)


def ensure_state_tables(bind: Engine | Connection) -> None:
    """Create the state tables when missing, and the columns later versions
    added when an older version created the tables (idempotent)."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            _ensure(conn)
    else:
        _ensure(bind)


def _ensure(conn: Connection) -> None:
    from sqlalchemy import inspect

    from .dialects import rules_for

    STATE_METADATA.create_all(conn, checkfirst=True)
    for column in ADDED_COLUMNS:
        table = column.table
        assert isinstance(table, Table)
        present = {c["name"] for c in inspect(conn).get_columns(table.name, table.schema)}
        if column.name not in present:
            rules_for(conn).add_column(conn, table, column)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return str(value)


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        if tag == "decimal":
            return Decimal(text)
        if tag == "uuid":
            return uuid.UUID(text)
        if tag == "datetime":
            return dt.datetime.fromisoformat(text)
        if tag == "date":
            return dt.date.fromisoformat(text)
        if tag == "hex":
            return bytes.fromhex(text)
    return value


def encode_key(values: Sequence[Any]) -> str:
    """A primary-key tuple as JSON text for the state tables."""
    return json.dumps([_jsonable(v) for v in values], separators=(",", ":"))


def decode_key(text: str | None) -> Any:
    """The inverse of :func:`encode_key` (None stays None)."""
    if text is None:
        return None
    return tuple(_from_jsonable(v) for v in json.loads(text))


@dataclass(frozen=True)
class AttributeState:
    """What the state table records for one phased attribute."""

    key: str
    recorded_phase: int | None
    run_id: str | None
    run_status: str | None
    run_started_at: dt.datetime | None
    run_finished_at: dt.datetime | None
    rows_updated: int
    skipped: int
    verified_at: dt.datetime | None
    verify_total: int | None
    verify_missing: int | None
    verify_mismatched: int | None
    verify_sample: list[Any]

    @property
    def backfilled(self) -> bool:
        """A backfill run completed, or a migration recorded step 3 or later."""
        return self.run_status == "complete" or (
            self.recorded_phase is not None and self.recorded_phase >= 3
        )

    @property
    def verify_ok(self) -> bool | None:
        """True/False after a verification, None before any."""
        if self.verified_at is None:
            return None
        return not self.verify_missing and not self.verify_mismatched


def read_state(bind: Engine | Connection, key: str) -> AttributeState | None:
    """The recorded state of ``key``, or None when nothing was recorded yet."""
    from sqlalchemy import func, inspect

    def go(conn: Connection) -> AttributeState | None:
        if not inspect(conn).has_table("fourstep_state"):
            return None
        c = state_table.c
        # the columns named, not the table's: tables of an older version lack
        # the ones added since, and this may run before anything adds them
        row = conn.execute(
            select(
                c.recorded_phase, c.run_id, c.run_status, c.run_started_at, c.run_finished_at,
                c.verified_at, c.verify_total, c.verify_missing, c.verify_mismatched,
                c.verify_sample,
            ).where(c.key == key)
        ).first()
        if row is None:
            return None
        rows_updated = 0
        if row.run_id is not None:
            rows_updated = conn.execute(
                select(func.coalesce(func.sum(progress_table.c.rows_updated), 0)).where(
                    progress_table.c.key == key, progress_table.c.run_id == row.run_id
                )
            ).scalar_one()
        skipped = conn.execute(
            select(func.count()).select_from(skipped_table).where(skipped_table.c.key == key)
        ).scalar_one()
        return AttributeState(
            key=key,
            recorded_phase=row.recorded_phase,
            run_id=row.run_id,
            run_status=row.run_status,
            run_started_at=row.run_started_at,
            run_finished_at=row.run_finished_at,
            rows_updated=int(rows_updated),
            skipped=int(skipped),
            verified_at=row.verified_at,
            verify_total=row.verify_total,
            verify_missing=row.verify_missing,
            verify_mismatched=row.verify_mismatched,
            verify_sample=json.loads(row.verify_sample) if row.verify_sample else [],
        )

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return go(conn)
    return go(bind)


def record_phase(conn: Connection, key: str, table_name: str, phase: int) -> None:
    """Record that the database reached ``phase`` for ``key`` (in ``conn``'s transaction)."""
    from sqlalchemy import insert, update
    from sqlalchemy.exc import IntegrityError

    STATE_METADATA.create_all(conn, checkfirst=True)
    done = conn.execute(
        update(state_table)
        .where(state_table.c.key == key)
        .values(recorded_phase=phase, updated_at=now())
    )
    if done.rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(
                insert(state_table).values(
                    key=key, table_name=table_name, recorded_phase=phase, updated_at=now()
                )
            )
    except IntegrityError:
        conn.execute(
            update(state_table)
            .where(state_table.c.key == key)
            .values(recorded_phase=phase, updated_at=now())
        )
