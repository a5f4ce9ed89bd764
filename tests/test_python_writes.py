"""Python-mode batches, on SQLite, PostgreSQL and MariaDB: the rows a batch
computes reach the server (on PostgreSQL as one JSON document the table is
updated from, elsewhere as the parameters of one executemany UPDATE) and are
written under compare-and-set (``DialectRules.update_rows``).

What the trip must carry exactly: text that JSON or a text format gives meaning
to (tab, newline, backslash, ``\\N``, quotes, the empty string), Unicode, NULL,
integers at the ends of their range; rows that change under the batch
(compare-and-set, then the sweep, a second write in the same transaction); a
value the column refuses (found under savepoints); and a column whose type
is not text to PostgreSQL (an Enum: the document's text is cast to the enum
type; it used to be cast to VARCHAR, which PostgreSQL refuses to assign).
Rows are compared with Python's own result.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from sqlalchemy import BigInteger, Engine, Enum, Integer, String, Text, select, text, update
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased

pytestmark = pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")

AWKWARD = [
    "tab\there", "new\nline", "back\\slash", "\\N", "carriage\rreturn", "quote ' \" end",
    "日本 語", "emoji 🎉 x", "a  b", " lead", "trail ", "x", "\\. end", "comma, semi; pipe|",
]


def split(name: str, /) -> tuple[str | None, str | None]:
    first, _, last = name.partition(" ")
    return first or None, last or None


def split_model(table: str, old_type: Any = Text, new_type: Any = Text,
                forward: Any = None) -> Any:
    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = table
        id = mapped_column(BigInteger, primary_key=True, autoincrement=False)
        name = mapped_column(old_type, nullable=True)
        first_name = mapped_column(new_type, nullable=True)
        last_name = mapped_column(new_type, nullable=True)
        full_name = phased(old="name", new=("first_name", "last_name"),
                           forward=forward if forward is not None else Transform(split),
                           backward=Transform.join(" "),
                           phase=Phase.STOP_READ_OLD)

    return User


def _rows(engine: Engine, table: str) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        found = conn.execute(text(f"SELECT id, name, first_name, last_name FROM {table}"))
        return {int(r[0]): tuple(r[1:]) for r in found}


def test_awkward_text_arrives_exactly(engine: Engine) -> None:
    model = split_model("pw_awkward")
    model.metadata.create_all(engine)
    names = [f"{a} {b}" for a in AWKWARD for b in AWKWARD[:5]] + ["", " ", "solo"]
    with engine.begin() as conn:
        conn.execute(model.__table__.insert(), [{"id": i, "name": n} for i, n in enumerate(names)])

    report = backfill(engine, model.full_name, batch_size=25, target_ms=0)

    assert report.complete
    assert _rows(engine, "pw_awkward") == {
        i: (n, *split(n)) if split(n) != (None, None) else (n, None, None)
        for i, n in enumerate(names)
    }


def test_integers_at_the_ends_of_their_range(engine: Engine) -> None:
    class Base(DeclarativeBase):
        pass

    class Amount(Base):
        __tablename__ = "pw_ints"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        amount_text = mapped_column(String(30), nullable=True)
        amount = mapped_column(BigInteger, nullable=True)
        value = phased(old="amount_text", new="amount", forward=Transform(int),
                       backward=Transform(str), phase=Phase.STOP_READ_OLD)

    Base.metadata.create_all(engine)
    values = [0, -1, 1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1]
    with engine.begin() as conn:
        conn.execute(Amount.__table__.insert(),
                     [{"id": i, "amount_text": str(v)} for i, v in enumerate(values)])
    backfill(engine, Amount.value)
    with engine.connect() as conn:
        got = dict(conn.execute(select(Amount.id, Amount.amount)).all())
    assert got == dict(enumerate(values))


def test_rows_changed_under_the_batch_are_swept(
    server_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer changes the old value of some rows of a batch between the batch's
    read and its write (while the batch computes the row with key 7): the
    compare-and-set refuses them, and the sweep (a second write in the same
    transaction) writes their new value, never the stale one. The writer is
    done before the batch writes, so it waits for no lock of the batch's. (On
    SQLite the batch holds the write lock from its read on: no writer gets in.)"""
    engine = server_engine
    model = split_model("pw_swept")
    model.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(model.__table__.insert(),
                     [{"id": i, "name": f"Old{i} Name{i}"} for i in range(1, 201)])
    changed = threading.Event()

    def slow_split(name: str, /) -> tuple[str | None, str | None]:
        if name == "Old7 Name7" and not changed.is_set():
            changed.set()
            with engine.begin() as conn:  # another session, committed before the write
                users = model.__table__
                conn.execute(update(users).where(users.c.id % 7 == 0, users.c.id <= 20)
                             .values(name="New Value"))
        return split(name)

    model.full_name.spec.forward = Transform(slow_split)  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger="fourstep_sqla")
    try:
        backfill(engine, model.full_name, batch_size=1000, target_ms=0)
    finally:
        model.full_name.spec.forward = Transform(split)  # type: ignore[attr-defined]
    assert changed.is_set()
    assert any("2 row(s) changed under the batch, sweeping again" in r.getMessage()
               for r in caplog.records), caplog.text
    assert _rows(engine, "pw_swept") == {
        i: ("New Value", "New", "Value") if i in (7, 14) else (f"Old{i} Name{i}", f"Old{i}",
                                                             f"Name{i}")
        for i in range(1, 201)
    }


def test_a_value_the_column_refuses_fails_its_row_only(server_engine: Engine) -> None:
    """The column is made VARCHAR(5) behind the model's back (it declares 50): the
    checks let 'Toolong' through, the database refuses it, and the batch is
    redone under savepoints to name that row."""
    engine = server_engine
    model = split_model("pw_refused", old_type=Text, new_type=String(50))
    model.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE pw_refused MODIFY first_name varchar(5)"
            if engine.dialect.name == "mysql"
            else "ALTER TABLE pw_refused ALTER COLUMN first_name TYPE varchar(5)"
        )
        conn.execute(model.__table__.insert(), [
            {"id": i, "name": "Toolong x" if i == 13 else f"A{i} B{i}"} for i in range(1, 41)
        ])
    report = backfill(engine, model.full_name, on_error="skip")
    assert report.skipped_keys == [(13,)]
    rows = _rows(engine, "pw_refused")
    assert rows[13] == ("Toolong x", None, None)
    assert all(rows[i] == (f"A{i} B{i}", f"A{i}", f"B{i}") for i in range(1, 41) if i != 13)


def test_an_enum_column_is_written(engine: Engine) -> None:
    """An Enum column is text to Python but a type of its own to PostgreSQL."""
    mood_type = Enum("happy", "sad", name="pw_mood")

    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = "pw_enum"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        mood_text = mapped_column(String(10), nullable=True)
        mood = mapped_column(mood_type, nullable=True)
        feeling = phased(old="mood_text", new="mood", forward=Transform(str.lower),
                         backward=Transform(str), phase=Phase.STOP_READ_OLD)

    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Person.__table__.insert(),
                     [{"id": 1, "mood_text": "HAPPY"}, {"id": 2, "mood_text": "Sad"}])
    backfill(engine, Person.feeling)
    with engine.connect() as conn:
        got = dict(conn.execute(select(Person.id, Person.mood)).all())
    assert got == {1: "happy", 2: "sad"}


class Shout(str):
    """Text of a subclass of str: stored as text, like any str."""


def _odd(value: int) -> Any:
    """What a careless transform returns for a few rows among thousands."""
    if value == 1000:
        return "x" * 11  # one character too many for String(10)
    if value == 2000:
        return 2000  # not text
    if value == 3000:
        return Shout("shout")  # text all the same
    if value == 4000:
        return None  # nothing to write
    return f"v{value}"


def test_checks_find_the_odd_values_of_a_large_batch(engine: Engine) -> None:
    """The values of a batch are checked at once; the row-by-row checks run only
    where that finds something, and still name exactly the rows that fail (on
    SQLite, which stores any text whatever its declared length, only the checks
    keep the too-long value out)."""

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "pw_many"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        number = mapped_column(Integer, nullable=True)
        label = mapped_column(String(10), nullable=True)
        code = phased(old="number", new="label", forward=Transform(_odd),
                      backward=Transform(int), phase=Phase.STOP_READ_OLD)

    Base.metadata.create_all(engine)
    n = 5000
    with engine.begin() as conn:
        conn.execute(Item.__table__.insert(), [{"id": i, "number": i} for i in range(1, n + 1)])

    # batches of 1,500 keys: the too-long text and the integer in batches of their own
    report = backfill(engine, Item.code, on_error="skip", batch_size=1500, target_ms=0)

    assert sorted(report.skipped_keys) == [(1000,), (2000,)]
    with engine.connect() as conn:
        got = dict(conn.execute(select(Item.id, Item.label)).all())
    expected = {i: f"v{i}" for i in range(1, n + 1)}
    expected.update({1000: None, 2000: None, 3000: "shout", 4000: None})
    assert got == expected


def _counted_model(table: str, calls: list[int]) -> Any:
    """A split whose Python transform counts its calls."""

    def counted_split(name: str, /) -> tuple[str | None, str | None]:
        calls[0] += 1
        return split(name)

    return split_model(table, forward=Transform(counted_split))


def test_the_progress_total_does_not_run_the_transform(engine: Engine) -> None:
    """With ``progress=`` (the command line always passes one) the rows pending
    at the start are counted before the first batch: in Python mode by one COUNT
    of the pending predicate, not by reading every row and running the
    transform over the whole table (a pass as long as a good part of the
    backfill itself, before its first batch, at every start and resume)."""
    calls = [0]
    user = _counted_model("pw_progress", calls)
    user.metadata.create_all(engine)
    n = 300
    with engine.begin() as conn:
        conn.execute(user.__table__.insert(), [
            {"id": i, "name": f"First{i} Last{i}"} for i in range(1, n + 1)])
        conn.execute(user.__table__.insert(), [{"id": n + 1, "name": "Done Already",
                                                "first_name": "Done", "last_name": "Already"}])
    seen: list[Any] = []

    report = backfill(engine, user.full_name, batch_size=100, target_ms=0,
                      progress=seen.append)

    assert report.complete and report.rows_updated == n
    assert seen and all(p.rows_pending_at_start == n for p in seen)
    assert calls[0] == n  # each pending row once, by its batch


def test_the_rows_left_when_the_budget_runs_out_do_not_run_the_transform(
    engine: Engine,
) -> None:
    """A time budget that runs out: the rows left are counted by one COUNT, not
    by a pass of the transform over them, which would overrun the budget by as
    long as a good part of the backfill (a CI job with ``--max-seconds`` pays it
    at every call)."""
    calls = [0]
    user = _counted_model("pw_budget", calls)
    user.metadata.create_all(engine)
    n = 3000
    with engine.begin() as conn:
        conn.execute(user.__table__.insert(), [
            {"id": i, "name": f"First{i} Last{i}"} for i in range(1, n + 1)])

    report = backfill(engine, user.full_name, batch_size=100, target_ms=0,
                      max_seconds=0.0001)

    assert not report.complete and report.budget_exhausted
    assert report.rows_left == n - report.rows_updated
    # the batches it wrote, and at most one read ahead
    assert calls[0] <= report.rows_updated + 100, (calls, report)


def test_status_counts_pending_rows_without_the_transform(engine: Engine) -> None:
    """``pending_count(..., exact=False)``, what ``fourstep status`` shows: one
    COUNT; the exact count runs the transform over every pending row."""
    from fourstep_sqla.backfill import pending_count

    calls = [0]
    user = _counted_model("pw_status", calls)
    user.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(user.__table__.insert(), [
            {"id": i, "name": f"First{i} Last{i}"} for i in range(1, 201)])
        conn.execute(user.__table__.insert(), [{"id": 201, "name": ""}])  # forward: empty

    assert pending_count(engine, user.full_name, exact=False) == 201
    assert calls[0] == 0
    assert pending_count(engine, user.full_name) == 200
    assert calls[0] == 201
