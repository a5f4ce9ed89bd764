"""Write marks: without SQL transforms, the database still notes which place was
written last, so the drop gate can tell a step-4 write from a stale row.

On SQLite, PostgreSQL and MariaDB, with a Python-only split (no sync triggers
possible): raw writes of one side are marked (``fourstep_marks``), the
library's own writes are not, ``verify`` and the repair leave rows whose new
place was written last alone and report those whose old place was.

Tables are prefixed ``mrk_``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, String, select, text
from sqlalchemy.orm import DeclarativeBase, Session, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, backfill, phased, verify
from fourstep_sqla.marks import WriteMarks, marks_present, marks_table

pytestmark = [
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
    pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning"),
]


def python_split(name: str) -> tuple[str | None, str | None]:
    first, _, last = name.partition(" ")
    return first or None, last or None


def python_join(first: str | None, last: str | None) -> str | None:
    parts = [p for p in (first, last) if p is not None]
    return " ".join(parts) if parts else None


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def db(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_engine")
        return
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_schema_engine")
        return
    yield request.getfixturevalue("mysql_db_engine")  # a database of its own


def model(table: str, phase: Phase = Phase.STOP_READ_OLD) -> Any:
    class Base(DeclarativeBase):
        pass

    retired = phase is Phase.STOP_WRITE_OLD
    return type(f"Mrk_{table}", (Base,), {
        "__tablename__": table,
        "__module__": __name__,
        "__annotations__": {"legacy": Unmapped[str | None]} if retired else {},
        "id": mapped_column(Integer, primary_key=True, autoincrement=False),
        "legacy": (unmapped_column if retired else mapped_column)("name", String(80),
                                                                  nullable=True),
        "first_name": mapped_column(String(40), nullable=True),
        "last_name": mapped_column(String(40), nullable=True),
        "full_name": phased(old="legacy", new=("first_name", "last_name"),
                            forward=Transform(python_split), backward=Transform(python_join),
                            phase=phase),
    })


def install(engine: Engine, table: str) -> Any:
    step3 = model(table)
    step3.metadata.create_all(engine)
    spec = step3.full_name.spec
    with engine.begin() as conn:
        marks = WriteMarks.of(conn, spec.key, step3.__table__, ["name"],
                              ["first_name", "last_name"])
        for statement in marks.create(conn.dialect):
            conn.exec_driver_sql(statement)
    return step3


def run(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def marks(engine: Engine, key: str) -> dict[str, str]:
    table = marks_table(None)
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.row_key, table.c.side).where(table.c.key == key))
        return {r[0]: r[1] for r in rows}


def keys(found: dict[str, str]) -> dict[int, str]:
    import json

    return {json.loads(k)[0]: v for k, v in found.items()}


def test_one_sided_writes_are_marked_the_library_is_not(db: Engine) -> None:
    step3 = install(db, "mrk_sides")
    key = step3.full_name.spec.key
    with db.connect() as conn:
        assert marks_present(conn, key, "mrk_sides", None)
    run(db, "INSERT INTO mrk_sides (id, name) VALUES (1, 'Ada Lovelace'), (2, 'Cher'), "
            "(3, 'Alan Turing')")
    assert marks(db, key) == {}  # an INSERT of the old side only: nothing to tell
    assert backfill(db, step3.full_name).rows_updated == 3
    assert marks(db, key) == {}  # the backfill's own writes are not marked
    run(db, "UPDATE mrk_sides SET first_name = 'Augusta' WHERE id = 1")  # step-4 code
    run(db, "UPDATE mrk_sides SET name = 'Cher Bono' WHERE id = 2")  # an old-only writer
    run(db, "UPDATE mrk_sides SET name = 'Alan M Turing', first_name = 'Alan', "
            "last_name = 'M Turing' WHERE id = 3")  # both: nothing to mark
    run(db, "INSERT INTO mrk_sides (id, first_name, last_name) VALUES (4, 'Grace', 'H')")
    assert keys(marks(db, key)) == {1: "new", 2: "old", 4: "new"}
    run(db, "UPDATE mrk_sides SET name = 'Ada King' WHERE id = 1")  # the old side last
    assert keys(marks(db, key))[1] == "old"


def test_verify_and_repair_follow_the_side_written_last(db: Engine) -> None:
    step3 = install(db, "mrk_gate")
    run(db, "INSERT INTO mrk_gate (id, name) VALUES (1, 'Ada Lovelace'), (2, 'Cher'), "
            "(3, 'Alan Turing')")
    backfill(db, step3.full_name)
    step4 = model("mrk_gate", Phase.STOP_WRITE_OLD)
    with Session(db) as session:  # step-4 code updates through the attribute
        obj = session.get(step4, 1)
        assert obj is not None
        obj.full_name = ("Augusta", "King")
        session.commit()
    run(db, "UPDATE mrk_gate SET name = 'Cher Bono' WHERE id = 2")  # an old-only writer

    result = verify(db, step3.full_name, record=False)
    assert (result.missing, result.mismatched, result.sample_keys) == (0, 1, [(2,)])
    report = backfill(db, step3.full_name, repair=True)
    assert report.rows_updated == 1
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT id, name, first_name, last_name FROM mrk_gate ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "Ada Lovelace", "Augusta", "King"),  # the new place is the truth: left alone
        (2, "Cher Bono", "Cher", "Bono"),  # repaired from the old place
        (3, "Alan Turing", "Alan", "Turing"),
    ]
    assert verify(db, step3.full_name, record=False).ok


def test_dropped_with_their_table_rows_forgotten(db: Engine) -> None:
    step3 = install(db, "mrk_drop")
    spec = step3.full_name.spec
    run(db, "INSERT INTO mrk_drop (id, first_name) VALUES (1, 'A')")
    with db.begin() as conn:
        written = WriteMarks.of(conn, spec.key, step3.__table__, ["name"],
                                ["first_name", "last_name"])
        for statement in written.drop(conn.dialect) + written.clear(conn.dialect):
            conn.exec_driver_sql(statement)
        assert not marks_present(conn, spec.key, "mrk_drop", None)
    assert marks(db, spec.key) == {}
    run(db, "INSERT INTO mrk_drop (id, first_name) VALUES (2, 'B')")
    assert marks(db, spec.key) == {}
