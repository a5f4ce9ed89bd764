"""The backfill's cheap "forward(old) is not empty" test (``Transform.present_sql``).

The SQL-mode backfill leaves alone rows whose ``forward(old)`` is empty (all
NULL), so that a repeated run writes nothing. For the built-in transforms that
test is a cheap condition on the old value instead of a second evaluation of the
transform on every row. These tests hold the shortcut to the truth three ways:
the transform's own SQL, its Python form, and what a real backfill writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    case,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased
from fourstep_sqla.keys import any_not_null

SINGLE_VALUES = (
    None, "", " ", "  ", "   ", "a", " a", "a ", "a b", "a  b", "--", "----", "------",
    "--a", "a--", "a--b--c", "-", "—", " -- ", "\t", "日本 語",
)
SPLITS = (
    ("split ' '", Transform.split(" ")),
    ("split ' ' x3", Transform.split(" ", 3)),
    ("split '--'", Transform.split("--")),
    ("split '--' x3", Transform.split("--", 3)),
    ("identity", Transform.identity()),
)
PAIRS = (
    (None, None), ("", None), (None, ""), ("", ""), ("a", None), (None, "b"), (" ", " "),
    ("a", "b"),
)


def _table(name: str, width: int) -> Table:
    return Table(
        name,
        MetaData(),
        # ids from 0: MariaDB/MySQL would take an auto-increment 0 for "the next one"
        Column("id", Integer, primary_key=True, autoincrement=False),
        *(Column(f"c{i}", Text) for i in range(width)),
    )


def _three_ways(
    engine: Engine, name: str, transform: Transform[Any], rows: list[tuple[Any, ...]]
) -> Iterator[tuple[tuple[Any, ...], bool, bool, bool]]:
    """Per row: (old values, full SQL says present, shortcut says present, Python says)."""
    width = len(rows[0])
    table = _table(name, width)
    table.metadata.create_all(engine)
    olds = [table.c[f"c{i}"] for i in range(width)]
    assert transform.sql is not None
    full = transform.sql(*olds)
    forward = full if isinstance(full, tuple) else (full,)
    shortcut = transform.present_sql(*olds)
    assert shortcut is not None, f"{transform.name} has no shortcut"
    some_old = any_not_null(olds)
    with engine.begin() as conn:
        conn.execute(
            insert(table),
            [{"id": n, **{f"c{i}": v for i, v in enumerate(r)}} for n, r in enumerate(rows)],
        )
        found = conn.execute(
            select(
                table.c.id,
                case((and_(some_old, any_not_null(forward)), True), else_=False),
                case((and_(some_old, *shortcut), True), else_=False),
            ).order_by(table.c.id)
        ).all()
    for n, by_sql, by_shortcut in found:
        old = rows[n]
        if all(v is None for v in old):
            by_python = False
        else:
            result = transform.python(*old)
            values = result if isinstance(result, tuple) else (result,)
            by_python = any(v is not None for v in values)
        yield old, bool(by_sql), bool(by_shortcut), by_python


@pytest.mark.parametrize(("label", "transform"), SPLITS, ids=[s[0] for s in SPLITS])
def test_shortcut_agrees_with_the_transform_one_column(
    engine: Engine, label: str, transform: Transform[Any]
) -> None:
    name = "shortcut_" + "".join(ch if ch.isalnum() else "_" for ch in label)
    rows = [(v,) for v in SINGLE_VALUES]
    seen = list(_three_ways(engine, name, transform, rows))
    assert len(seen) == len(rows)
    for old, by_sql, by_shortcut, by_python in seen:
        assert by_sql == by_shortcut == by_python, (label, old, by_sql, by_shortcut, by_python)
    # the values that matter are in the list: some are empty, some are not
    assert {s[1] for s in seen} == {True, False}


def test_shortcut_agrees_with_the_transform_join(engine: Engine) -> None:
    rows = [tuple(p) for p in PAIRS]
    for old, by_sql, by_shortcut, by_python in _three_ways(
        engine, "shortcut_join", Transform.join(" "), rows
    ):
        assert by_sql == by_shortcut == by_python, (old, by_sql, by_shortcut, by_python)


def test_shortcut_agrees_with_the_transform_cast(engine: Engine) -> None:
    rows = [(v,) for v in (None, "0", "-3", "42", "7")]
    transform = Transform.cast(int, Integer())
    for old, by_sql, by_shortcut, _python in _three_ways(engine, "shortcut_cast", transform, rows):
        assert by_sql == by_shortcut, (old, by_sql, by_shortcut)
        assert by_shortcut == (old[0] is not None)


def test_user_transforms_have_no_shortcut() -> None:
    plain = Transform(str.upper, lambda c: c)
    assert plain.present_sql(Column("x", Text)) is None
    assert Transform(str.upper).present_sql(Column("x", Text)) is None


# -- what the backfill does with it ----------------------------------------------------
def _model(table: str, forward: Transform[Any]) -> Any:
    class Base(DeclarativeBase):
        pass

    ns: dict[str, Any] = {
        "__tablename__": table,
        "id": mapped_column(Integer, primary_key=True, autoincrement=False),
        "name": mapped_column(Text, nullable=True),
        "first_name": mapped_column(Text, nullable=True),
        "last_name": mapped_column(Text, nullable=True),
        "full_name": phased(
            old="name",
            new=("first_name", "last_name"),
            forward=forward,
            backward=Transform.join(" "),
            phase=Phase.STOP_READ_OLD,
        ),
    }
    return type(f"Shortcut_{table}", (Base,), ns)


@contextmanager
def _where_of_updates(engine: Engine, table: str) -> Iterator[list[str]]:
    """The WHERE clauses of the UPDATE statements sent for ``table``."""
    seen: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(f"UPDATE {table.upper()} "):
            seen.append(statement.split(" WHERE ", 1)[1])

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)


NAMES = {1: "Ada Lovelace", 2: "", 3: " ", 4: "  ", 5: "Cher", 6: None, 7: " Lovelace"}
# split(" "): '' and ' ' give (None, None): nothing to write; '  ' gives (None, ' ')
WRITTEN = {
    1: ("Ada", "Lovelace"), 4: (None, " "), 5: ("Cher", None), 7: (None, "Lovelace"),
}


def _seed(engine: Engine, model: Any) -> None:
    model.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(model.__table__), [{"id": k, "name": v} for k, v in NAMES.items()])


def _new_values(engine: Engine, table: str) -> dict[int, tuple[Any, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, first_name, last_name FROM {table}")).all()
    return {r[0]: (r[1], r[2]) for r in rows}


#: how split(" ")'s SQL finds the separator, per database
SPACE_AT = {"postgresql": "strpos(", "sqlite": "instr(", "mysql": "locate("}
#: the built-in's shortcut: NOT IN ('', ' '), or lengths where '' = ' ' = '  '
#: (MariaDB/MySQL's PAD SPACE collations)
SHORTCUT = {"postgresql": "NOT IN", "sqlite": "NOT IN", "mysql": "CHAR_LENGTH(REPLACE("}


def test_backfill_uses_the_shortcut_and_skips_empty_rows(engine: Engine) -> None:
    model = _model("shortcut_bf", Transform.split(" "))
    _seed(engine, model)
    position = SPACE_AT[engine.dialect.name]
    with _where_of_updates(engine, "shortcut_bf") as wheres:
        report = backfill(engine, model.full_name)
        again = backfill(engine, model.full_name)

    assert report.complete and report.rows_updated == len(WRITTEN)
    assert again.complete and again.rows_updated == 0
    values = _new_values(engine, "shortcut_bf")
    assert {k: v for k, v in values.items() if v != (None, None)} == WRITTEN
    assert wheres, "no batch UPDATE was seen"
    for clause in wheres:
        # the transform is evaluated once per row (in SET), never in the WHERE
        assert position not in clause, clause
        assert SHORTCUT[engine.dialect.name] in clause.upper(), clause


def test_backfill_without_a_shortcut_still_tests_the_transform(engine: Engine) -> None:
    split = Transform.split(" ")
    # the same SQL and Python, but not the built-in: no shortcut is known
    custom = Transform(split.python, split.sql, name="my_split")
    model = _model("shortcut_custom", custom)
    _seed(engine, model)
    position = SPACE_AT[engine.dialect.name]
    with _where_of_updates(engine, "shortcut_custom") as wheres:
        report = backfill(engine, model.full_name)
        again = backfill(engine, model.full_name)

    assert report.rows_updated == len(WRITTEN) and again.rows_updated == 0
    values = _new_values(engine, "shortcut_custom")
    assert {k: v for k, v in values.items() if v != (None, None)} == WRITTEN
    assert wheres and all(position in clause for clause in wheres)


def test_a_user_transform_can_give_its_own_shortcut(engine: Engine) -> None:
    split = Transform.split(" ")
    assert split.sql is not None

    def first_and_last(column: Any) -> tuple[Any, ...]:
        return split.sql(column)  # type: ignore[misc,no-any-return]

    custom = Transform(
        split.python,
        first_and_last,
        name="my_split",
        present=lambda column: [column.not_in(["", " "])],
    )
    model = _model("shortcut_user", custom)
    _seed(engine, model)
    position = SPACE_AT[engine.dialect.name]
    with _where_of_updates(engine, "shortcut_user") as wheres:
        report = backfill(engine, model.full_name)

    written = dict(WRITTEN)
    if engine.dialect.name == "mysql":
        # the shortcut is the user's SQL, compared under the column's collation: PAD
        # SPACE finds '  ' (row 4) in ('', ' '), so that row is left alone there
        # (the README's MariaDB/MySQL section says to compare by length or binary)
        del written[4]
    assert report.rows_updated == len(written)
    values = _new_values(engine, "shortcut_user")
    assert {k: v for k, v in values.items() if v != (None, None)} == written
    assert wheres and all(position not in clause for clause in wheres)
