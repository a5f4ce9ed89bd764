"""The backfill engine (step 3), on SQLite, PostgreSQL and MariaDB.

Every test seeds rows with Core statements on the table (old place only,
unless the test says otherwise), runs :func:`fourstep_sqla.backfill` and
reads back what the database stores. Expected new values are computed here,
independently of the library's transforms.

- :class:`TestModes`: SQL mode and Python mode fill every pending row for a
  split, a rename and a type change; rows written already or with an empty
  old place are left alone; a re-run is a no-op; batch counts.
- :class:`TestKeys`: composite, text, UUID and sparse integer primary keys;
  no primary key at all.
- :class:`TestUpperBound`: rows inserted after a run was planned are not
  part of it, and the run still finishes.
- :class:`TestResume`: a time budget, a crashing caller and a crash between
  a batch and its progress record; the next call resumes the same run.
- :class:`TestOnError`: Python transforms and SQL casts that fail on some
  rows, with ``on_error="stop"`` and ``"skip"``.
- :class:`TestExternalTransaction`: a Connection inside / outside a
  transaction.
- :class:`TestConcurrentWriters`: ORM writers (insert, update, delete) at
  steps 1 and 2 during a backfill; nothing lost, nothing overwritten. On
  SQLite the writers' engine gets a 30 s busy timeout and a 2 ms pause between
  operations (one writer at a time: without a pause they starve the backfill).
- :class:`TestWorkers`: several workers on PostgreSQL and MariaDB do every row
  exactly once (counted by a trigger).
- :class:`TestReadAhead`: Python mode on PostgreSQL reads the next batch while
  writing one (MariaDB does not).
- :class:`TestLockManners`: a row lock held elsewhere makes the batch give
  way (PostgreSQL: 100 ms; MariaDB: 1 s, its lock waits count whole seconds),
  retry a bounded number of times, then fail without writing.
- :class:`TestSQLiteBusy`: on SQLite a batch waits for another writer's
  transaction (busy timeout) like any writer.
- :class:`TestDryRun`: counts, writes nothing, records nothing.

Models are built per test with ``type()`` under a class name derived from
the table, so re-creating one never triggers the registry's "key moves"
warning (turned into an error here). Tables are prefixed ``bfe_``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    String,
    Table,
    Uuid,
    case,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased, verify
from fourstep_sqla.backfill import (
    BackfillError,
    BackfillProgress,
    BackfillReport,
    ExternalTransactionError,
)
from fourstep_sqla.errors import FourStepError
from fourstep_sqla.keys import NoPrimaryKeyError
from fourstep_sqla.state import progress_table, read_state, skipped_table, state_table

pytestmark = [
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
    # Python-only transforms are declared on purpose here (Python mode)
    pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning"),
]

Key = tuple[Any, ...]
Values = tuple[Any, ...]


# -- shapes of column move ------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """One kind of column move, with sample data and its expected result."""

    name: str
    attr: str
    #: (attribute name, column name, column type) of the old / new columns
    old: tuple[tuple[str, str, Any], ...]
    new: tuple[tuple[str, str, Any], ...]
    forward: Callable[[], Transform[Any]]
    backward: Callable[[], Transform[Any]]
    #: old value(s) stored for sample number i
    old_value: Callable[[int], Values]
    #: the new value(s) a correct forward transform gives for old value(s)
    expected: Callable[[Values], Values]
    #: new value(s) already written for sample i, different from expected
    written: Callable[[int], Values]

    @property
    def old_cols(self) -> tuple[str, ...]:
        return tuple(c for _, c, _ in self.old)

    @property
    def new_cols(self) -> tuple[str, ...]:
        return tuple(c for _, c, _ in self.new)


def _split_old(i: int) -> Values:
    if i % 7 == 0:
        return (f"Solo{i}",)
    if i % 11 == 0:
        return (f"Mary{i} Ann Smith",)
    return (f"First{i} Last{i}",)


def _split_expected(old: Values) -> Values:
    first, _, last = old[0].partition(" ")
    return (first or None, last or None)


SPLIT = Shape(
    name="split",
    attr="full_name",
    old=(("legacy_name", "name", String(100)),),
    new=(("first_name", "first_name", String(100)), ("last_name", "last_name", String(100))),
    forward=lambda: Transform.split(" "),
    backward=lambda: Transform.join(" "),
    old_value=_split_old,
    expected=_split_expected,
    # a partial write (last_name NULL) counts as written too
    written=lambda i: ("Kept", None) if i % 20 == 7 else ("Kept", f"K{i}"),
)

RENAME = Shape(
    name="rename",
    attr="contact",
    old=(("mail", "mail", String(100)),),
    new=(("email", "email", String(100)),),
    forward=lambda: Transform.identity(),
    backward=lambda: Transform.identity(),
    old_value=lambda i: (f"user{i}@example.org",),
    expected=lambda old: old,
    written=lambda i: (f"kept{i}@example.org",),
)

CAST = Shape(
    name="cast",
    attr="total",
    old=(("amount_text", "amount_text", String(20)),),
    new=(("amount", "amount", Integer()),),
    forward=lambda: Transform.cast(int, Integer()),
    backward=lambda: Transform.cast(str, String()),
    old_value=lambda i: (str(i * 13),),
    expected=lambda old: (int(old[0]),),
    written=lambda i: (-i,),
)

SHAPES = (SPLIT, RENAME, CAST)
MODES = ("sql", "python")

by_shape = pytest.mark.parametrize("shape", [pytest.param(s, id=s.name) for s in SHAPES])
by_mode = pytest.mark.parametrize("mode", MODES)

TENANTS = ("acme", "Beta", "zed co")
TEXT_KEYS = ("Zeta", "alpha", "Alpha", "a b", "a-b", "ab", "ä-umlaut", "ß", "日本", "O'Brien")
#: distinct under MariaDB's default collation too (case- and accent-insensitive,
#: ordered otherwise than the bytes: 'alpha' < 'Zeta')
TEXT_KEYS_CI = tuple(k for k in TEXT_KEYS if k != "Alpha")
#: a text key compared as binary on MariaDB/MySQL (as on PostgreSQL and SQLite)
BINARY_TEXT_KEY = String(40).with_variant(
    mysql.VARCHAR(40, collation="utf8mb4_bin"), "mysql", "mariadb"
)


def python_only(transform: Transform[Any]) -> Transform[Any]:
    """The same transform without its SQL form (forces Python mode)."""
    return Transform(transform.python, name=transform.name)


def make_model(
    table: str,
    shape: Shape = SPLIT,
    *,
    mode: str = "sql",
    phase: Phase = Phase.STOP_READ_OLD,
    pk: str = "int",
    forward: Transform[Any] | None = None,
) -> Any:
    """A fresh declarative model of ``shape`` on ``table``.

    ``pk``: ``int``, ``bigint``, ``text`` (binary on MariaDB), ``text_ci`` (the
    default collation), ``composite`` (tenant TEXT, id INT) or ``uuid``.
    ``mode="python"`` strips the SQL form of the forward transform.
    """

    class Base(DeclarativeBase):
        pass

    ns: dict[str, Any] = {"__tablename__": table, "__module__": __name__}
    if pk == "int":
        ns["id"] = mapped_column(Integer, primary_key=True, autoincrement=False)
    elif pk == "bigint":
        ns["id"] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    elif pk == "text":
        ns["code"] = mapped_column(BINARY_TEXT_KEY, primary_key=True)
    elif pk == "text_ci":
        ns["code"] = mapped_column(String(40), primary_key=True)
    elif pk == "composite":
        ns["tenant"] = mapped_column(String(20), primary_key=True)
        ns["id"] = mapped_column(Integer, primary_key=True, autoincrement=False)
    elif pk == "uuid":
        ns["id"] = mapped_column(Uuid, primary_key=True)
    else:  # pragma: no cover - a typo in a test
        raise ValueError(pk)
    for attr, col, type_ in shape.old + shape.new:
        ns[attr] = mapped_column(col, type_, nullable=True)
    fwd = forward if forward is not None else shape.forward()
    if mode == "python":
        fwd = python_only(fwd)
    ns[shape.attr] = phased(
        old=tuple(a for a, _, _ in shape.old),
        new=tuple(a for a, _, _ in shape.new),
        forward=fwd,
        backward=shape.backward(),
        phase=phase,
    )
    return type(f"Bfe_{table}", (Base,), ns)


@dataclass
class World:
    """A model and its table on one engine, with raw read/write helpers."""

    engine: Engine
    model: Any
    shape: Shape
    pk: str = "int"

    @classmethod
    def build(cls, engine: Engine, table: str, shape: Shape = SPLIT, **kw: Any) -> World:
        model = make_model(table, shape, **kw)
        model.metadata.create_all(engine)
        return cls(engine, model, shape, kw.get("pk", "int"))

    @property
    def table(self) -> Table:
        return self.model.__table__  # type: ignore[no-any-return]

    @property
    def attr(self) -> Any:
        return getattr(self.model, self.shape.attr)

    @property
    def state_key(self) -> str:
        return f"{self.table.name}.{self.shape.attr}"

    @property
    def key_cols(self) -> list[Column[Any]]:
        return list(self.table.primary_key.columns)

    def key_for(self, i: int) -> Key:
        """A distinct primary key for sample number ``i``."""
        if self.pk in ("int", "bigint"):
            return (i,)
        if self.pk in ("text", "text_ci"):
            keys = TEXT_KEYS if self.pk == "text" else TEXT_KEYS_CI
            return (f"{keys[i % len(keys)]}{i // len(keys)}",)
        if self.pk == "composite":
            return (TENANTS[i % len(TENANTS)], i // len(TENANTS))
        if self.pk == "uuid":
            # RFC 4122 version 4: MariaDB's UUID type refuses other variants
            return (uuid.UUID(int=random.Random(i).getrandbits(128), version=4),)
        raise ValueError(self.pk)

    def row(self, key: Key, old: Values | None, new: Values | None = None) -> dict[str, Any]:
        shape = self.shape
        old = old if old is not None else (None,) * len(shape.old)
        new = new if new is not None else (None,) * len(shape.new)
        values = dict(zip([c.name for c in self.key_cols], key))
        values.update(zip(shape.old_cols, old))
        values.update(zip(shape.new_cols, new))
        return values

    def insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)

    def seed_standard(self, samples: range | list[int]) -> dict[Key, Values]:
        """Seed a mix of rows; return the new values each must hold afterwards.

        Per sample ``i``: ``i % 10 == 3`` old and new empty; ``== 5`` old empty,
        new written; ``== 7`` both written (new differs from forward(old));
        everything else pending (old only).
        """
        shape = self.shape
        rows, expected = [], {}
        for i in samples:
            key = self.key_for(i)
            if i % 10 == 3:
                rows.append(self.row(key, None))
                expected[key] = (None,) * len(shape.new)
            elif i % 10 == 5:
                rows.append(self.row(key, None, shape.written(i)))
                expected[key] = shape.written(i)
            elif i % 10 == 7:
                rows.append(self.row(key, shape.old_value(i), shape.written(i)))
                expected[key] = shape.written(i)
            else:
                old = shape.old_value(i)
                rows.append(self.row(key, old))
                expected[key] = shape.expected(old)
        self.insert(rows)
        return expected

    def seed_pending(self, samples: range | list[int]) -> dict[Key, Values]:
        """Seed old-only rows; return the new values each must hold afterwards."""
        rows, expected = [], {}
        for i in samples:
            key, old = self.key_for(i), self.shape.old_value(i)
            rows.append(self.row(key, old))
            expected[key] = self.shape.expected(old)
        self.insert(rows)
        return expected

    def _read(self, cols: tuple[str, ...]) -> dict[Key, Values]:
        width = len(self.key_cols)
        with self.engine.connect() as conn:
            rows = conn.execute(select(*self.key_cols, *(self.table.c[c] for c in cols))).all()
        return {tuple(r[:width]): tuple(r[width:]) for r in rows}

    def new_values(self) -> dict[Key, Values]:
        """``{primary key: new column values}`` as stored."""
        return self._read(self.shape.new_cols)

    def old_values(self) -> dict[Key, Values]:
        return self._read(self.shape.old_cols)

    def written_keys(self) -> set[Key]:
        return {k for k, v in self.new_values().items() if any(x is not None for x in v)}


def _count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def planned_batches(engine: Engine, run_id: str | None, batch_size: int) -> int:
    """Batches a run of ``batch_size`` keys per batch takes over its planned ranges.

    An integer key is walked in batches of exactly ``batch_size`` key values
    (``lower < id <= lower + batch_size``) inside each range of the plan
    (PostgreSQL splits the key space into several ranges other processes can
    join; SQLite plans one).
    """
    with engine.connect() as conn:
        ranges = conn.execute(
            text(
                "SELECT lower_key, upper_key FROM fourstep_ranges WHERE run_id = :r "
                "ORDER BY range_no"
            ),
            {"r": run_id},
        ).all()
        first = conn.execute(text("SELECT min(id) FROM " + _table_of_run(conn, run_id))).scalar()
    total = 0
    for lower_text, upper_text in ranges:
        lower = json.loads(lower_text)[0] if lower_text else int(first) - 1
        upper = json.loads(upper_text)[0]
        total += math.ceil((upper - lower) / batch_size)
    return total


def _table_of_run(conn: Any, run_id: str | None) -> str:
    return str(
        conn.execute(
            text("SELECT table_name FROM fourstep_state WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()
    )


def assert_sensible(report: BackfillReport, *, mode: str, rows: int) -> None:
    assert report.complete is True
    assert report.rows_updated == rows
    assert report.rows_left == 0
    assert report.skipped_keys == []
    assert report.dry_run is False
    assert report.mode == mode
    assert isinstance(report.run_id, str) and report.run_id
    assert report.seconds > 0
    assert len(report.batch_seconds) == report.batches
    assert report.batches >= 1


# -- 1. SQL mode and Python mode -------------------------------------------------
class TestModes:
    @by_mode
    @by_shape
    def test_fills_every_pending_row(self, engine: Engine, shape: Shape, mode: str) -> None:
        world = World.build(engine, f"bfe_modes_{shape.name}_{mode}", shape, mode=mode)
        expected = world.seed_standard(range(1, 251))
        pending = sum(1 for i in range(1, 251) if i % 10 not in (3, 5, 7))
        old_before = world.old_values()

        report = backfill(engine, world.attr, batch_size=50, target_ms=0)

        assert_sensible(report, mode=mode, rows=pending)
        assert report.key == world.state_key
        if engine.dialect.name == "sqlite":
            assert report.batches == 5  # one range: 250 keys in batches of 50
        assert report.batches == planned_batches(engine, report.run_id, 50)
        assert world.new_values() == expected
        assert world.old_values() == old_before  # the old place is never touched
        state = read_state(engine, world.state_key)
        assert state is not None
        assert state.run_id == report.run_id
        assert state.run_status == "complete"
        assert state.run_finished_at is not None
        assert state.rows_updated == pending
        assert state.skipped == 0
        check = verify(engine, world.attr, record=False)
        assert check.missing == 0
        assert check.mismatched == 25  # the rows written on purpose with other values

    @by_mode
    @by_shape
    def test_rerun_is_a_no_op(self, engine: Engine, shape: Shape, mode: str) -> None:
        world = World.build(engine, f"bfe_rerun_{shape.name}_{mode}", shape, mode=mode)
        expected = world.seed_standard(range(1, 101))
        first = backfill(engine, world.state_key, batch_size=30, target_ms=0)
        assert first.complete and first.rows_updated > 0
        after_first = world.new_values()
        assert after_first == expected

        again = backfill(engine, world.state_key, batch_size=30, target_ms=0)

        assert again.complete is True
        assert again.rows_updated == 0
        assert again.rows_left == 0
        assert again.skipped_keys == []
        assert world.new_values() == after_first
        state = read_state(engine, world.state_key)
        assert state is not None and state.run_status == "complete"

    @by_mode
    @pytest.mark.parametrize(
        ("rows", "batch_size", "sizes"),
        [
            (250, 64, [64, 64, 64, 58]),
            (250, 250, [250]),
            # 4 ranges of 40 keys on PostgreSQL, one range on SQLite: the same batches
            (160, 10, [10] * 16),
        ],
    )
    def test_fixed_batch_size_with_target_zero(
        self, engine: Engine, mode: str, rows: int, batch_size: int, sizes: list[int]
    ) -> None:
        world = World.build(engine, f"bfe_batches_{mode}_{rows}_{batch_size}", SPLIT, mode=mode)
        expected = world.seed_pending(range(1, rows + 1))
        seen: list[BackfillProgress] = []

        report = backfill(
            engine, world.attr, batch_size=batch_size, target_ms=0, progress=seen.append
        )

        assert_sensible(report, mode=mode, rows=rows)
        assert report.batches == len(seen)
        assert [p.batches for p in seen] == list(range(1, len(seen) + 1))
        counts = [0, *[p.rows_updated for p in seen]]
        per_batch = [b - a for a, b in itertools.pairwise(counts)]
        if engine.dialect.name == "sqlite" or rows == 160:
            assert per_batch == sizes  # exactly batch_size keys per batch
        assert report.batches == planned_batches(engine, report.run_id, batch_size)
        assert max(per_batch) <= batch_size and sum(per_batch) == rows
        assert all(p.batch_size == batch_size for p in seen)
        assert all(p.rows_pending_at_start == rows for p in seen)
        assert world.new_values() == expected

    def test_batch_size_adapts_without_target_zero(self, sqlite_engine: Engine) -> None:
        """With a target duration far above the batch time, batches grow (x2 per step)."""
        world = World.build(sqlite_engine, "bfe_adaptive", SPLIT)
        expected = world.seed_pending(range(1, 3001))
        seen: list[BackfillProgress] = []

        report = backfill(
            sqlite_engine, world.attr, batch_size=100, target_ms=10_000, progress=seen.append
        )

        assert report.complete and report.rows_updated == 3000
        assert [p.batch_size for p in seen[:3]] == [100, 200, 400]
        assert report.batches < 3000 // 100
        assert world.new_values() == expected

    def test_empty_table(self, engine: Engine) -> None:
        world = World.build(engine, "bfe_empty", SPLIT)
        report = backfill(engine, world.attr)
        assert report.complete is True
        assert report.rows_updated == 0
        assert report.batches == 0


# -- 2. keys ----------------------------------------------------------------------
class TestKeys:
    @by_mode
    @pytest.mark.parametrize("pk", ["composite", "text", "text_ci", "uuid"])
    def test_non_integer_keys(self, engine: Engine, pk: str, mode: str) -> None:
        world = World.build(engine, f"bfe_keys_{pk}_{mode}", SPLIT, mode=mode, pk=pk)
        expected = world.seed_standard(range(200))
        pending = sum(1 for i in range(200) if i % 10 not in (3, 5, 7))

        report = backfill(engine, world.attr, batch_size=16, target_ms=0)

        assert_sensible(report, mode=mode, rows=pending)
        # the end of each batch is the key 16 rows further on
        assert report.batches == math.ceil(200 / 16)
        assert world.new_values() == expected
        check = verify(engine, world.attr, record=False)
        # the rows written on purpose with other values (i % 10 == 7) differ
        assert (check.total, check.missing, check.mismatched) == (200, 0, 20)

    @by_mode
    def test_integer_keys_with_gaps(self, engine: Engine, mode: str) -> None:
        """Clusters of keys thousands apart: every row, nothing else."""
        world = World.build(engine, f"bfe_gaps_{mode}", RENAME, mode=mode)
        ids = [*range(1, 41), *range(7_000, 7_040), *range(250_000, 250_030), 999_999]
        expected = world.seed_pending(ids)

        report = backfill(engine, world.attr, max_seconds=30)

        assert_sensible(report, mode=mode, rows=len(ids))
        assert world.new_values() == expected

    def test_dense_integer_keys_are_stepped_without_probes(self, engine: Engine) -> None:
        """After a batch that found rows, the next upper key is computed, not looked up;
        an empty batch (a gap) is followed by one probe to the next existing key."""
        world = World.build(engine, "bfe_dense_steps", RENAME)
        ids = [*range(1, 161), *range(5_001, 5_041)]
        expected = world.seed_pending(ids)
        probes: list[str] = []

        def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.startswith("SELECT min("):
                probes.append(statement)

        event.listen(engine, "before_cursor_execute", capture)
        try:
            report = backfill(engine, world.attr, batch_size=10, target_ms=0)
        finally:
            event.remove(engine, "before_cursor_execute", capture)

        assert_sensible(report, mode="sql", rows=len(ids))
        assert world.new_values() == expected
        # the first batch of the run, then one after the empty batch past key 160, then
        # at most one per range boundary that falls inside the gap
        assert 2 <= len(probes) <= 2 + 4, probes
        assert report.batches <= len(ids) // 10 + 4 + 2

    @by_mode
    def test_integer_keys_with_huge_gaps(self, engine: Engine, mode: str) -> None:
        """Sparse 64-bit keys (snowflake-style ids, sharded id ranges).

        A dozen rows spread up to 2**53: a backfill must finish in a handful of
        batches, not walk the empty key space. ``max_seconds`` only keeps a
        wrong engine from running for hours.
        """
        world = World.build(engine, f"bfe_huge_gaps_{mode}", RENAME, mode=mode, pk="bigint")
        ids = [1, 2, 3, 10**6, 10**6 + 1, 10**9, 10**12, 10**12 + 7, 2**40, 2**53 - 1]
        expected = world.seed_pending(ids)

        report = backfill(engine, world.attr, max_seconds=3)

        assert report.complete, (
            f"not finished after {report.batches} batches: {report.rows_left} rows left"
        )
        assert report.rows_updated == len(ids)
        assert report.batches < 100
        assert world.new_values() == expected

    def test_no_primary_key(self, engine: Engine) -> None:
        class Base(DeclarativeBase):
            pass

        table = Table(
            "bfe_nopk",
            Base.metadata,
            Column("id", Integer, nullable=False),
            Column("mail", String(100)),
            Column("email", String(100)),
        )
        model = type(
            "Bfe_bfe_nopk",
            (Base,),
            {
                "__table__": table,
                "__module__": __name__,
                "__mapper_args__": {"primary_key": [table.c.id]},
                "contact": phased(
                    old="mail",
                    new="email",
                    forward=Transform.identity(),
                    backward=Transform.identity(),
                    phase=Phase.STOP_READ_OLD,
                ),
            },
        )
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": 1, "mail": "a@example.org"}])

        with pytest.raises(NoPrimaryKeyError, match="bfe_nopk") as info:
            backfill(engine, model.contact)
        assert isinstance(info.value, FourStepError)
        with pytest.raises(NoPrimaryKeyError, match="bfe_nopk"):
            backfill(engine, model.contact, dry_run=True)
        with pytest.raises(NoPrimaryKeyError, match="bfe_nopk"):
            verify(engine, model.contact)
        assert _count(engine, "SELECT count(*) FROM bfe_nopk WHERE email IS NOT NULL") == 0
        assert read_state(engine, "bfe_nopk.contact") is None


# -- 3. the upper bound is fixed when a run starts ----------------------------------
class TestUpperBound:
    @by_mode
    def test_rows_inserted_after_planning_are_left_alone(self, engine: Engine, mode: str) -> None:
        world = World.build(engine, f"bfe_upper_{mode}", SPLIT, mode=mode)
        expected = world.seed_pending(range(1, 101))
        inserted: list[int] = []

        def insert_more(progress: BackfillProgress) -> None:
            # raw SQL, old place only, keys past the planned upper bound
            start = 1000 + 10 * len(inserted)
            ids = list(range(start, start + 10))
            with engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO " + world.table.name + " (id, name) VALUES (:id, :name)"),
                    [{"id": i, "name": f"Late{i} Comer{i}"} for i in ids],
                )
            inserted.extend(ids)

        report = backfill(engine, world.attr, batch_size=10, target_ms=0, progress=insert_more)

        assert report.complete is True
        assert report.rows_updated == 100
        assert len(inserted) == 10 * report.batches  # ten rows after each batch
        stored = world.new_values()
        assert {k: v for k, v in stored.items() if k[0] <= 100} == expected
        assert all(stored[(i,)] == (None, None) for i in inserted)
        # the next run picks them up
        check = verify(engine, world.attr, record=False)
        assert check.missing == len(inserted)
        again = backfill(engine, world.attr)
        assert again.complete and again.rows_updated == len(inserted)
        assert world.written_keys() == set(stored)


# -- 4. resume ----------------------------------------------------------------------
# 160 keys in batches of 10 give the same 16 batches on SQLite (one range) and on
# PostgreSQL (4 ranges of 40 keys each), so tests can name the keys of a batch.
N = 160


class TestResume:
    @by_mode
    def test_time_budget_then_resume(self, engine: Engine, mode: str) -> None:
        world = World.build(engine, f"bfe_budget_{mode}", SPLIT, mode=mode)
        expected = world.seed_pending(range(1, N + 1))

        first = backfill(
            engine, world.attr, batch_size=10, target_ms=0, pause_ms=60, max_seconds=0.25
        )

        assert first.complete is False
        assert 0 < first.rows_updated < N
        assert first.rows_left == N - first.rows_updated
        assert len(world.written_keys()) == first.rows_updated
        state = read_state(engine, world.state_key)
        assert state is not None
        assert state.run_status == "running"
        assert state.run_id == first.run_id
        assert state.rows_updated == first.rows_updated

        second = backfill(engine, world.attr, batch_size=10, target_ms=0)

        assert second.run_id == first.run_id
        assert second.complete is True
        assert second.rows_updated == N - first.rows_updated
        assert first.batches + second.batches == 16  # no batch done twice
        assert world.new_values() == expected
        state = read_state(engine, world.state_key)
        assert state is not None
        assert (state.run_status, state.rows_updated) == ("complete", N)

    @by_mode
    def test_crash_in_caller_then_resume(self, engine: Engine, mode: str) -> None:
        world = World.build(engine, f"bfe_crash_{mode}", SPLIT, mode=mode)
        expected = world.seed_pending(range(1, N + 1))

        def crash(progress: BackfillProgress) -> None:
            if progress.batches == 3:
                raise RuntimeError("boom: the deploy job was killed")

        with pytest.raises(RuntimeError, match="boom"):
            backfill(engine, world.attr, batch_size=10, target_ms=0, progress=crash)

        assert len(world.written_keys()) == 30
        state = read_state(engine, world.state_key)
        assert state is not None and state.run_status == "running"
        run_id = state.run_id

        again = backfill(engine, world.attr, batch_size=10, target_ms=0)

        assert again.run_id == run_id
        assert again.complete is True
        assert again.rows_updated == N - 30
        assert again.batches == 13
        assert world.new_values() == expected
        state = read_state(engine, world.state_key)
        assert state is not None and state.rows_updated == N

    @by_mode
    def test_crash_between_batch_and_progress(self, engine: Engine, mode: str) -> None:
        """Killed after a batch's UPDATE, before its progress record: nothing of it stays.

        The batch and its cursor commit together (module docs), so a resumed
        run redoes exactly that batch and the recorded row count is exact.
        """
        world = World.build(engine, f"bfe_atomic_{mode}", SPLIT, mode=mode)
        expected = world.seed_pending(range(1, N + 1))
        seen = {"progress_updates": 0}

        def die_on_second_progress(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE FOURSTEP_PROGRESS"):
                seen["progress_updates"] += 1
                if seen["progress_updates"] == 2:
                    raise RuntimeError("killed between the batch and its progress record")

        event.listen(engine, "before_cursor_execute", die_on_second_progress)
        try:
            with pytest.raises(RuntimeError, match="killed"):
                backfill(engine, world.attr, batch_size=10, target_ms=0)
        finally:
            event.remove(engine, "before_cursor_execute", die_on_second_progress)

        assert world.written_keys() == {(i,) for i in range(1, 11)}, (
            "the second batch was committed without its progress record"
        )
        again = backfill(engine, world.attr, batch_size=10, target_ms=0)
        assert again.complete is True
        assert again.rows_updated == N - 10
        assert world.new_values() == expected
        state = read_state(engine, world.state_key)
        assert state is not None and state.rows_updated == N


# -- 5. transforms that fail on some rows ---------------------------------------------
def picky_split(name: str) -> tuple[str | None, str | None]:
    if name.startswith("bad"):
        raise ValueError(f"cannot split {name!r}")
    first, _, last = name.partition(" ")
    return first or None, last or None


BAD_KEYS = (25, 26, 73)


def _skipped_rows(engine: Engine, key: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(skipped_table.c.row_key, skipped_table.c.error)
            .where(skipped_table.c.key == key)
        ).all()
    return {r.row_key: r.error for r in rows}


#: how the built-in cast's SQL rejects 'x25', per database: PostgreSQL with its own
#: error, SQLite with the runtime error that is its only way to raise, MariaDB/MySQL
#: with the out-of-range error the cast provokes on purpose
CAST_REJECTED = {
    "postgresql": "invalid input syntax",
    "sqlite": "integer overflow",
    "mysql": "BIGINT value is out of range",
}


class TestOnError:
    def _python_world(self, engine: Engine) -> tuple[World, dict[Key, Values]]:
        world = World.build(
            engine, "bfe_onerr_py", SPLIT, mode="python", forward=Transform(picky_split)
        )
        rows, expected = [], {}
        for i in range(1, N + 1):
            name = f"bad{i} row{i}" if i in BAD_KEYS else f"First{i} Last{i}"
            rows.append(world.row((i,), (name,)))
            expected[(i,)] = (None, None) if i in BAD_KEYS else (f"First{i}", f"Last{i}")
        world.insert(rows)
        return world, expected

    def _sql_world(self, engine: Engine) -> tuple[World, dict[Key, Values]]:
        world = World.build(engine, "bfe_onerr_sql", CAST)
        rows, expected = [], {}
        for i in range(1, N + 1):
            value = f"x{i}" if i in BAD_KEYS else str(i * 13)
            rows.append(world.row((i,), (value,)))
            expected[(i,)] = (None,) if i in BAD_KEYS else (i * 13,)
        world.insert(rows)
        return world, expected

    def _world(self, engine: Engine, mode: str) -> tuple[World, dict[Key, Values]]:
        if mode == "sql":
            return self._sql_world(engine)
        return self._python_world(engine)

    # the built-in cast rejects 'x25' on every database (CAST_REJECTED)
    @by_mode
    def test_stop_names_the_keys_and_writes_nothing_of_the_batch(
        self, engine: Engine, mode: str
    ) -> None:
        world, expected = self._world(engine, mode)

        with pytest.raises(BackfillError) as info:
            backfill(engine, world.attr, batch_size=10, target_ms=0, on_error="stop")

        message = str(info.value)
        assert "(25,)" in message and "(26,)" in message
        assert "(73,)" not in message  # a later batch, never reached
        if mode == "python":
            assert "ValueError" in message and "cannot split" in message
        else:
            assert CAST_REJECTED[engine.dialect.name] in message
            if engine.dialect.name == "sqlite":
                assert "rejected" in message
        # batches 1 and 2 committed, batch 3 (keys 21..30) rolled back entirely
        assert world.written_keys() == {(i,) for i in range(1, 21)}
        assert _skipped_rows(engine, world.state_key) == {}

        # fixing nothing and resuming with on_error="skip" finishes the run
        report = backfill(engine, world.attr, batch_size=10, target_ms=0, on_error="skip")
        assert report.complete is True
        assert report.ok is False
        assert report.rows_updated == N - 20 - 3  # keys 21..160 but 25, 26 and 73
        assert report.skipped_keys == [(25,), (26,), (73,)]
        assert world.new_values() == expected

    @by_mode
    def test_skip_records_exactly_the_failing_rows(self, engine: Engine, mode: str) -> None:
        world, expected = self._world(engine, mode)

        report = backfill(engine, world.attr, batch_size=10, target_ms=0, on_error="skip")

        assert report.complete is True
        assert report.ok is False
        assert report.rows_updated == N - 3
        assert report.skipped_keys == [(25,), (26,), (73,)]
        assert world.new_values() == expected
        skipped = _skipped_rows(engine, world.state_key)
        assert set(skipped) == {"[25]", "[26]", "[73]"}
        marker = "cannot split" if mode == "python" else CAST_REJECTED[engine.dialect.name]
        assert all(marker in error for error in skipped.values())
        state = read_state(engine, world.state_key)
        assert state is not None
        assert (state.run_status, state.skipped, state.rows_updated) == ("complete", 3, N - 3)

        # again: the same three rows fail and are recorded once each
        again = backfill(engine, world.attr, batch_size=10, target_ms=0, on_error="skip")
        assert again.complete is True
        assert again.rows_updated == 0
        assert again.skipped_keys == [(25,), (26,), (73,)]
        assert set(_skipped_rows(engine, world.state_key)) == {"[25]", "[26]", "[73]"}
        assert world.new_values() == expected

    @by_mode
    def test_rows_written_since_leave_the_skipped_list(self, engine: Engine, mode: str) -> None:
        """A skipped key stays listed (and counted by ``fourstep status``) only while
        its row is still to write: one fixed at its source and backfilled, or one
        the application wrote meanwhile, is forgotten; one still failing stays."""
        world, expected = self._world(engine, mode)
        backfill(engine, world.attr, batch_size=10, target_ms=0, on_error="skip")
        assert set(_skipped_rows(engine, world.state_key)) == {"[25]", "[26]", "[73]"}

        shape, table = world.shape, world.table
        key = world.key_cols[0]
        good = ("Fixed25 Row25",) if mode == "python" else (str(25 * 13),)
        written = ("By", "App") if mode == "python" else (73,)
        with engine.begin() as conn:
            conn.execute(table.update().where(key == 25).values(dict(zip(shape.old_cols, good))))
            conn.execute(
                table.update().where(key == 73).values(dict(zip(shape.new_cols, written)))
            )
        expected[(25,)] = ("Fixed25", "Row25") if mode == "python" else (25 * 13,)
        expected[(73,)] = written

        again = backfill(engine, world.attr, batch_size=10, target_ms=0, on_error="skip")

        assert again.complete is True
        assert again.rows_updated == 1
        assert again.skipped_keys == [(26,)]
        assert world.new_values() == expected
        assert set(_skipped_rows(engine, world.state_key)) == {"[26]"}
        state = read_state(engine, world.state_key)
        assert state is not None and state.skipped == 1

        # the last one written by the application: nothing is pending, and a run
        # finds that with one look (its finished-run path), forgetting the key too
        with engine.begin() as conn:
            conn.execute(
                table.update().where(key == 26).values(dict(zip(shape.new_cols, written)))
            )
        last = backfill(engine, world.attr, batch_size=10, target_ms=0, on_error="skip")
        assert (last.complete, last.rows_updated, last.batches) == (True, 0, 0)
        assert _skipped_rows(engine, world.state_key) == {}
        state = read_state(engine, world.state_key)
        assert state is not None and state.skipped == 0

    def test_bad_on_error_value(self, sqlite_engine: Engine) -> None:
        world = World.build(sqlite_engine, "bfe_onerr_arg", SPLIT)
        with pytest.raises(BackfillError, match="on_error"):
            backfill(sqlite_engine, world.attr, on_error="ignore")  # type: ignore[arg-type]


# -- 6. external transactions ----------------------------------------------------------
class TestExternalTransaction:
    def test_connection_in_a_transaction_is_refused(self, engine: Engine) -> None:
        world = World.build(engine, "bfe_ext_tx", SPLIT)
        world.seed_pending(range(1, 21))
        with engine.connect() as conn:
            conn.begin()
            with pytest.raises(ExternalTransactionError) as info:
                backfill(conn, world.attr)
            assert isinstance(info.value, BackfillError)
            assert "transaction" in str(info.value)
            conn.rollback()
            # an implicit (autobegun) transaction counts as well
            conn.execute(text("SELECT 1"))
            with pytest.raises(ExternalTransactionError):
                backfill(conn, world.attr)
            conn.rollback()
        assert world.written_keys() == set()

    def test_connection_outside_a_transaction_works(self, engine: Engine) -> None:
        world = World.build(engine, "bfe_ext_ok", SPLIT)
        expected = world.seed_pending(range(1, 101))
        with engine.connect() as conn:
            report = backfill(conn, world.attr, batch_size=25, target_ms=0)
            assert report.complete and report.rows_updated == 100
            # committed: another connection sees every row
            assert world.new_values() == expected
            # and the connection is handed back usable for the next call
            assert not conn.in_transaction()
            again = backfill(conn, world.attr)
            assert again.complete and again.rows_updated == 0


# -- 7. concurrent application writers -------------------------------------------------
@dataclass
class WriterLog:
    """What one writer thread did: the final logical value per key it touched."""

    final: dict[int, tuple[str | None, str | None] | None]
    ops: int = 0
    errors: list[str] | None = None


def _run_writer(
    engine: Engine,
    model: Any,
    number: int,
    writers: int,
    owned: list[int],
    next_ids: Iterator[int],
    done: threading.Event,
    min_ops: int,
    log: WriterLog,
    think: float = 0.0,
) -> None:
    """Insert, update (through the phased attribute) and delete rows this thread owns.

    ``think`` seconds between operations: SQLite has one writer at a time, and
    writers hammering it without a pause starve the backfill for seconds.
    """
    rng = random.Random(number)
    alive = list(owned)
    log.errors = []
    try:
        while not done.is_set() or log.ops < min_ops:
            log.ops += 1
            if think:
                time.sleep(think)
            op = rng.random()
            with Session(engine) as session:
                if op < 0.3 or not alive:
                    new_id = next(next_ids)
                    value = (f"New{number}", f"N{new_id}")
                    session.add(model(id=new_id, full_name=value))
                    session.commit()
                    alive.append(new_id)
                    log.final[new_id] = value
                elif op < 0.6:
                    target = rng.choice(alive)
                    value: tuple[str | None, str | None] = (f"Upd{number}", f"U{log.ops}")
                    if log.ops % 5 == 0:
                        value = (f"Solo{log.ops}", None)  # one name: last_name NULL
                    obj = session.get(model, target)
                    assert obj is not None
                    obj.full_name = value
                    session.commit()
                    log.final[target] = value
                elif op < 0.85:
                    target = rng.choice(alive)
                    value = (f"Stmt{number}", f"S{log.ops}")
                    session.execute(update(model).where(model.id == target).values(full_name=value))
                    session.commit()
                    log.final[target] = value
                else:
                    target = rng.choice(alive)
                    obj = session.get(model, target)
                    assert obj is not None
                    session.delete(obj)
                    session.commit()
                    alive.remove(target)
                    log.final[target] = None
    except Exception as exc:  # reported by the test
        log.errors.append(f"{type(exc).__name__}: {exc}")


def _explain(world: World, logs: list[WriterLog], keys: list[Key]) -> str:
    """Stored row and the writers' last values for ``keys`` (a failure message)."""
    stored_old, stored_new = world.old_values(), world.new_values()
    lines = []
    for key in keys:
        wrote = [log.final[key[0]] for log in logs if key[0] in log.final]
        lines.append(
            f"key {key}: old {stored_old.get(key)} new {stored_new.get(key)}; "
            f"last written {wrote[-1] if wrote else 'nothing (seeded row)'}"
        )
    return "\n".join(lines)


class TestConcurrentWriters:
    @pytest.mark.parametrize("phase", [Phase.WRITE_BOTH, Phase.READ_NEW], ids=["step1", "step2"])
    def test_instance_loaded_before_the_backfill_written_after(
        self, engine: Engine, phase: Phase
    ) -> None:
        """The interleaving the writer threads below hit now and then, made deterministic.

        A request loads a row (new place empty), the backfill fills it, then the
        request assigns a value whose last_name is None: the row must hold exactly
        that value in both places, not the backfill's last_name.
        """
        world = World.build(engine, f"bfe_stale_{phase.value}", SPLIT, phase=phase)
        world.insert([world.row((1,), ("Ada Lovelace",)), world.row((2,), ("Grace Hopper",))])
        with Session(engine) as session:
            ada = session.get(world.model, 1)
            grace = session.get(world.model, 2)
            assert ada is not None and grace is not None
            report = backfill(engine, world.attr)
            assert report.rows_updated == 2
            ada.full_name = ("Cher", None)
            grace.full_name = ("Grace", "Brewster Hopper")
            session.commit()
        assert world.new_values() == {(1,): ("Cher", None), (2,): ("Grace", "Brewster Hopper")}
        assert world.old_values() == {(1,): ("Cher",), (2,): ("Grace Brewster Hopper",)}
        check = verify(engine, world.attr, record=False)
        assert (check.missing, check.mismatched) == (0, 0)

    @by_mode
    @pytest.mark.parametrize("phase", [Phase.WRITE_BOTH, Phase.READ_NEW], ids=["step1", "step2"])
    def test_writers_during_backfill(
        self, engine: Engine, tmp_path: Any, mode: str, phase: Phase
    ) -> None:
        table = f"bfe_conc_{phase.value}_{mode}"
        if engine.dialect.name == "sqlite":
            # One writer at a time: the backfill and the writers queue on SQLite's
            # database lock. The fixture's engine waits 5 s (pysqlite's default
            # busy timeout); give them 30 s so that a slow CI machine never turns
            # a wait into "database is locked" in a writer.
            engine = create_engine(engine.url, connect_args={"timeout": 30})
            writers, seeded, think = 2, 400, 0.002
        else:
            writers, seeded, think = 4, 2000, 0.0
        world = World.build(engine, table, SPLIT, mode=mode, phase=phase)
        # even keys seeded old-only; writers insert odd keys in the same key range
        seed_ids = list(range(2, 2 * seeded + 1, 2))
        expected_seed = world.seed_pending(seed_ids)
        id_lock = threading.Lock()
        odd = iter(range(1, 10**9, 2))

        def next_ids() -> Iterator[int]:
            while True:
                with id_lock:
                    value = next(odd)
                yield value

        done = threading.Event()
        logs = [WriterLog(final={}) for _ in range(writers)]
        threads = [
            threading.Thread(
                target=_run_writer,
                args=(
                    engine,
                    world.model,
                    n,
                    writers,
                    [i for i in seed_ids if i % (2 * writers) == 2 * n],
                    next_ids(),
                    done,
                    40,
                    logs[n],
                    think,
                ),
            )
            for n in range(writers)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.05)
            report = backfill(engine, world.attr, batch_size=25, target_ms=0, pause_ms=2)
        finally:
            done.set()
            for thread in threads:
                thread.join(60)
        errors = [e for log in logs for e in (log.errors or [])]
        assert errors == []
        assert report.complete is True
        assert all(log.ops >= 40 for log in logs)

        check = verify(engine, world.attr, record=False)
        assert (check.missing, check.mismatched) == (0, 0), _explain(world, logs, check.sample_keys)
        # exactly the values each writer wrote last, in both places
        expected = {k[0]: v for k, v in expected_seed.items()}
        for log in logs:
            expected.update(log.final)
        alive = {k: v for k, v in expected.items() if v is not None}
        stored_new = {k[0]: v for k, v in world.new_values().items()}
        stored_old = {k[0]: v for k, v in world.old_values().items()}
        assert stored_new == alive
        assert stored_old == {k: (" ".join(p for p in v if p),) for k, v in alive.items()}
        engine.dispose()


# -- 8. workers (PostgreSQL) -------------------------------------------------------
def _count_updates_trigger(engine: Engine, table: str) -> None:
    """Record in bfe_hits every row update that fills first_name (and every update)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE bfe_hits (id INTEGER NOT NULL, kind VARCHAR(10) NOT NULL)"
        )
        if engine.dialect.name == "mysql":
            # one trigger per event there: it notes both kinds
            conn.exec_driver_sql(
                f"CREATE TRIGGER bfe_hits AFTER UPDATE ON {table} FOR EACH ROW BEGIN "
                "IF OLD.first_name IS NULL AND NEW.first_name IS NOT NULL THEN "
                "INSERT INTO bfe_hits VALUES (NEW.id, 'fill'); END IF; "
                "INSERT INTO bfe_hits VALUES (NEW.id, 'any'); END"
            )
            return
        conn.exec_driver_sql(
            "CREATE FUNCTION bfe_count_fill() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN INSERT INTO bfe_hits VALUES (NEW.id, TG_ARGV[0]); RETURN NEW; END $$"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER bfe_fill AFTER UPDATE ON {table} FOR EACH ROW "
            "WHEN (OLD.first_name IS NULL AND NEW.first_name IS NOT NULL) "
            "EXECUTE FUNCTION bfe_count_fill('fill')"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER bfe_any AFTER UPDATE ON {table} FOR EACH ROW "
            "EXECUTE FUNCTION bfe_count_fill('any')"
        )


def _hits(engine: Engine, kind: str) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, count(*) FROM bfe_hits WHERE kind = :k GROUP BY id"), {"k": kind}
        ).all()
    return {int(r[0]): int(r[1]) for r in rows}


class TestWorkers:
    """Several workers share a run where the database has several writers."""

    @by_mode
    @pytest.mark.parametrize("workers", [2, 4])
    def test_every_row_exactly_once(
        self, server_engine: Engine, workers: int, mode: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        engine = server_engine
        world = World.build(engine, f"bfe_workers_{workers}_{mode}", SPLIT, mode=mode)
        expected = world.seed_standard(range(1, 3001))
        pending = {(i,) for i in range(1, 3001) if i % 10 not in (3, 5, 7)}
        _count_updates_trigger(engine, world.table.name)
        caplog.set_level(logging.DEBUG, logger="fourstep_sqla.backfill")

        report = backfill(engine, world.attr, batch_size=50, target_ms=0, workers=workers)

        assert_sensible(report, mode=mode, rows=len(pending))
        assert world.new_values() == expected
        fills, updates = _hits(engine, "fill"), _hits(engine, "any")
        assert {(k,) for k in fills} == pending
        assert set(fills.values()) == {1}
        assert updates == fills  # no row updated twice, none of the others touched
        with engine.connect() as conn:
            ranges = conn.execute(
                text("SELECT count(*) FROM fourstep_ranges WHERE run_id = :r"),
                {"r": report.run_id},
            ).scalar_one()
            progress = conn.execute(
                select(func.count(), func.sum(progress_table.c.rows_updated),
                       func.min(case((progress_table.c.done, 1), else_=0)))
                .where(progress_table.c.run_id == report.run_id)
            ).one()
        assert ranges >= workers
        assert tuple(progress) == (ranges, len(pending), 1)
        busy = {r.threadName for r in caplog.records if "batch up to" in r.getMessage()}
        assert len(busy) >= 2, f"only {busy} worked"

    def test_workers_resume_a_stopped_run(self, server_engine: Engine) -> None:
        engine = server_engine
        world = World.build(engine, "bfe_workers_resume", SPLIT)
        expected = world.seed_pending(range(1, 2001))
        _count_updates_trigger(engine, world.table.name)

        first = backfill(
            engine,
            world.attr,
            batch_size=20,
            target_ms=0,
            pause_ms=30,
            max_seconds=0.3,
            workers=4,
        )
        assert first.complete is False
        assert first.rows_left == 2000 - first.rows_updated

        second = backfill(engine, world.attr, batch_size=20, target_ms=0, workers=2)

        assert second.run_id == first.run_id
        assert second.complete is True
        assert first.rows_updated + second.rows_updated == 2000
        assert world.new_values() == expected
        fills = _hits(engine, "fill")
        assert len(fills) == 2000 and set(fills.values()) == {1}
        assert _hits(engine, "any") == fills


@pytest.mark.postgres
class TestReadAhead:
    """Python mode on PostgreSQL reads the next batch while the current one is written."""

    def test_every_batch_but_the_first_is_read_ahead_across_ranges(
        self, pg_schema_engine: Engine
    ) -> None:
        engine = pg_schema_engine
        world = World.build(engine, "bfe_read_ahead", SPLIT, mode="python")
        expected = world.seed_pending(range(1, N + 1))
        reads: list[str] = []  # the thread of every read of the table's pending rows
        table = world.table.name

        def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            # the pending rows of a batch: key and old value, not probes or counts
            if statement.startswith(f"SELECT {table}.id, {table}.name \nFROM {table} "):
                reads.append(threading.current_thread().name)

        event.listen(engine, "before_cursor_execute", capture)
        try:
            report = backfill(engine, world.attr, batch_size=10, target_ms=0)
        finally:
            event.remove(engine, "before_cursor_execute", capture)

        assert_sensible(report, mode="python", rows=N)
        assert world.new_values() == expected
        assert report.batches == planned_batches(engine, report.run_id, 10)
        with engine.connect() as conn:
            ranges = conn.execute(
                text("SELECT count(*) FROM fourstep_ranges WHERE run_id = :r"),
                {"r": report.run_id},
            ).scalar_one()
        assert ranges > 1, "the run should span several ranges for this test to mean much"
        ahead = [name for name in reads if name.startswith("fourstep-read-ahead")]
        # the first batch is read by the worker itself; every later one, including the
        # first batch of each new range, was read ahead (the end-of-run count is not
        # a read of rows: count_pending is not called without a progress callback)
        assert len(reads) - len(ahead) == 1, reads
        assert len(ahead) == report.batches - 1


# -- 9. lock manners (PostgreSQL, MariaDB) ----------------------------------------------
@pytest.mark.serial  # times the waits
class TestLockManners:
    @by_mode
    def test_gives_way_then_fails_after_bounded_retries(
        self, server_engine: Engine, mode: str
    ) -> None:
        engine = server_engine
        world = World.build(engine, f"bfe_lock_fail_{mode}", SPLIT, mode=mode)
        world.seed_pending(range(1, 201))
        with engine.connect() as locker:
            locker.execute(text(f"SELECT 1 FROM {world.table.name} WHERE id = 5 FOR UPDATE"))
            started = time.monotonic()
            with pytest.raises(BackfillError) as info:
                backfill(
                    engine,
                    world.attr,
                    batch_size=50,
                    target_ms=0,
                    lock_timeout_ms=100,
                    retries=2,
                )
            elapsed = time.monotonic() - started
            message = str(info.value)
            assert "2 retries" in message
            assert "lock" in message.lower()
            # three waits of 100 ms; on MariaDB of 1 s each (whole seconds), not its
            # default 50 s
            bound = 8 if engine.dialect.name == "mysql" else 5
            assert elapsed < bound, f"took {elapsed:.1f} s with a 100 ms lock timeout"
            assert world.written_keys() == set()  # nothing of the first batch
            locker.rollback()
        state = read_state(engine, world.state_key)
        assert state is not None and state.rows_updated == 0

    @by_mode
    def test_completes_once_the_lock_is_released(self, server_engine: Engine, mode: str) -> None:
        engine = server_engine
        world = World.build(engine, f"bfe_lock_ok_{mode}", SPLIT, mode=mode)
        expected = world.seed_pending(range(1, 201))
        with engine.connect() as locker:
            locker.execute(text(f"SELECT 1 FROM {world.table.name} WHERE id = 5 FOR UPDATE"))
            release = threading.Timer(0.3, locker.rollback)
            release.start()
            try:
                report = backfill(
                    engine,
                    world.attr,
                    batch_size=50,
                    target_ms=0,
                    lock_timeout_ms=100,
                    retries=5,
                )
            finally:
                release.join()
        assert report.complete is True
        assert report.rows_updated == 200
        assert world.new_values() == expected


class TestSQLiteBusy:
    @by_mode
    def test_waits_for_another_writer(self, sqlite_engine: Engine, mode: str) -> None:
        """SQLite: a batch waits for a concurrent write transaction (busy timeout).

        After the first batch another connection takes the database's write lock
        for 0.3 s. Every SQLite writer waits for it up to its busy timeout (5 s,
        pysqlite's default), so the backfill must too, even without retries: a
        batch that first reads inside a deferred ``BEGIN`` and then writes gets
        SQLITE_BUSY at once instead (SQLite skips the busy handler there).
        """
        world = World.build(sqlite_engine, f"bfe_busy_{mode}", SPLIT, mode=mode)
        expected = world.seed_pending(range(1, N + 1))
        database = sqlite_engine.url.database
        assert database is not None
        other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        timers: list[threading.Timer] = []

        def lock_after_first_batch(progress: BackfillProgress) -> None:
            if progress.batches == 1:
                other.execute("BEGIN IMMEDIATE")
                other.execute("UPDATE " + world.table.name + " SET name = name WHERE id = 0")
                timers.append(threading.Timer(0.3, other.execute, ("COMMIT",)))
                timers[0].start()

        started = time.monotonic()
        try:
            report = backfill(
                sqlite_engine,
                world.attr,
                batch_size=40,
                target_ms=0,
                retries=0,
                progress=lock_after_first_batch,
            )
        finally:
            for timer in timers:
                timer.join()
            other.close()
        assert len(timers) == 1
        assert time.monotonic() - started >= 0.25
        assert report.complete is True
        assert report.rows_updated == N
        assert world.new_values() == expected


# -- 11. dry run ---------------------------------------------------------------------------
class TestDryRun:
    @by_mode
    def test_counts_and_writes_nothing(self, engine: Engine, mode: str) -> None:
        world = World.build(engine, f"bfe_dry_{mode}", SPLIT, mode=mode)
        world.seed_standard(range(1, 101))
        pending = sum(1 for i in range(1, 101) if i % 10 not in (3, 5, 7))
        before = world.new_values()

        report = backfill(engine, world.attr, dry_run=True)

        assert report.dry_run is True
        assert report.rows_left == pending
        assert report.rows_updated == 0
        assert report.batches == 0
        assert world.new_values() == before
        assert not inspect(engine).has_table("fourstep_state")
        assert read_state(engine, world.state_key) is None

    @by_mode
    def test_count_matches_what_a_real_run_writes(self, engine: Engine, mode: str) -> None:
        """Rows whose forward(old) is empty ('' splits into two NULLs) are not pending."""
        world = World.build(engine, f"bfe_dry_empty_{mode}", SPLIT, mode=mode)
        world.seed_pending(range(1, 41))
        world.insert([world.row((i,), ("",)) for i in range(41, 46)])

        dry = backfill(engine, world.attr, dry_run=True)
        missing = verify(engine, world.attr, record=False).missing
        real = backfill(engine, world.attr)

        assert real.rows_updated == 40
        assert missing == 40
        assert dry.rows_left == real.rows_updated

    def test_no_state_row_next_to_others(self, engine: Engine) -> None:
        other = World.build(engine, "bfe_dry_other", SPLIT)
        other.seed_pending(range(1, 11))
        backfill(engine, other.attr)
        world = World.build(engine, "bfe_dry_second", RENAME)
        world.seed_pending(range(1, 11))

        report = backfill(engine, world.attr, dry_run=True)

        assert report.rows_left == 10
        assert read_state(engine, world.state_key) is None
        assert world.written_keys() == set()
        with engine.connect() as conn:
            keys = conn.execute(select(state_table.c.key)).scalars().all()
        assert keys == [other.state_key]
