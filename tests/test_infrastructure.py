"""The shared fixtures do what the rest of the suite relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, inspect, select, text

HERE = Path(__file__).parent


def _items_table() -> Table:
    return Table(
        "items",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(50), nullable=False),
    )


def test_engine_round_trip(engine: Engine) -> None:
    items = _items_table()
    items.create(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), [{"id": 1, "name": "alpha"}, {"id": 2, "name": "beta"}])

    # A second connection sees the committed rows (file-backed SQLite, real server).
    with engine.connect() as conn:
        rows = conn.execute(select(items.c.id, items.c.name).order_by(items.c.id)).all()
    assert [tuple(row) for row in rows] == [(1, "alpha"), (2, "beta")]


@pytest.mark.postgres
def test_pg_schema_engine_is_isolated(pg_engine: Engine, pg_schema_engine: Engine) -> None:
    with pg_schema_engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    assert schema.startswith("t_")

    # Unqualified DDL lands in the per-test schema, not in public.
    _items_table().create(pg_schema_engine)
    assert inspect(pg_engine).has_table("items", schema=schema)
    assert not inspect(pg_engine).has_table("items", schema="public")

    # Every pooled connection carries the same search_path.
    with pg_schema_engine.connect() as first, pg_schema_engine.connect() as second:
        paths = {c.execute(text("show search_path")).scalar_one() for c in (first, second)}
    assert paths == {schema}


@pytest.mark.postgres
def test_pg_schema_is_dropped_after_the_test(pg_engine: Engine, pytester: pytest.Pytester) -> None:
    """Run a test using the fixture in a child pytest, then look for its schema."""
    pytester.makeconftest((HERE / "conftest.py").read_text())
    schema_file = pytester.path / "schema.txt"
    pytester.makepyfile(
        test_child=f"""
        from sqlalchemy import text

        def test_records_schema(pg_schema_engine):
            with pg_schema_engine.begin() as conn:
                schema = conn.execute(text("select current_schema()")).scalar_one()
                conn.execute(text("create table t (x int)"))
            with open({str(schema_file)!r}, "w") as f:
                f.write(schema)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)

    schema = schema_file.read_text()
    assert schema.startswith("t_")
    assert schema not in inspect(pg_engine).get_schema_names()
