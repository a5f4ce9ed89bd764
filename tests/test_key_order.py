"""Keys are walked in the order of the index that serves them (issue 11).

A model declares its composite key in whatever order reads well (``id``,
then ``tenant``); the table's primary key is what the DBA made it
(``PRIMARY KEY (tenant, id)``). The backfill and verify walk the key in the
database's order, so every batch is an index range scan:

- :class:`TestPlans`: the exact batch statements the runner sends (captured
  with a ``before_cursor_execute`` listener) are explained with the same
  parameters: PostgreSQL (``EXPLAIN (FORMAT JSON)``, 20k rows, ANALYZE) shows
  index scans and no sequential scan of the table; SQLite's query plan
  searches the primary key; MariaDB's is a range on it.
- :class:`TestRows`: every pending row gets its value exactly once (counted
  by a trigger), in SQL and Python mode, on every database.
- :class:`TestKeysShown`: skipped keys and verify's sample keys are tuples
  in the model's order; the run records the order it walks.
- :class:`TestResume`: a run planned by a version that walked the model's
  order is not resumed in the new one (its cursors would be misread): a new
  run, each row written once.
- :class:`TestNoIndex`: a model's primary key that no index serves is
  refused before anything runs, naming the index to create; a unique index
  on the key serves as well as a primary key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, String, event, text
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased, verify
from fourstep_sqla.errors import FourStepError
from fourstep_sqla.keys import NoKeyIndexError, NoPrimaryKeyError

pytestmark = [
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
    pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning"),
]

by_mode = pytest.mark.parametrize("mode", ["sql", "python"])

TENANTS = 200


def _upper(value: str | None) -> str | None:
    if value is not None and value.startswith("bad"):
        raise ValueError(f"refusing {value!r}")
    return None if value is None else value.upper()


def make_model(table: str, *, mode: str = "sql", order: tuple[str, ...] = ("id", "tenant")) -> Any:
    """A model on ``table`` declaring its key columns in ``order``; the move is
    ``mail`` -> ``email`` with an upper-casing forward transform."""

    class Base(DeclarativeBase):
        pass

    ns: dict[str, Any] = {"__tablename__": table, "__module__": __name__}
    for name in order:
        type_ = Integer if name == "id" else String(20)
        ns[name] = mapped_column(type_, primary_key=True, autoincrement=False)
    ns["mail"] = mapped_column(String(100))
    ns["email"] = mapped_column(String(100))
    sql = None if mode == "python" else (lambda mail: text_upper(mail))
    ns["contact"] = phased(
        old="mail",
        new="email",
        forward=Transform(_upper, sql=sql, name="upper"),
        backward=Transform(lambda v: None if v is None else v.lower(),
                           sql=lambda v: text_lower(v), name="lower"),
        phase=Phase.STOP_READ_OLD,
    )
    return type(f"Ko_{table}", (Base,), ns)


def text_upper(column: Any) -> Any:
    from sqlalchemy import func

    return func.upper(column)


def text_lower(column: Any) -> Any:
    from sqlalchemy import func

    return func.lower(column)


def create_table(engine: Engine, table: str, key: str | None = "PRIMARY KEY (tenant, id)") -> None:
    """The table as the DBA made it: key ``(tenant, id)``, columns ``id`` first."""
    extra = f", {key}" if key else ""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {table} (id INTEGER NOT NULL, tenant VARCHAR(20) NOT NULL, "
            f"mail VARCHAR(100), email VARCHAR(100){extra})"
        )


def tenant(i: int) -> str:
    return f"t{i % TENANTS:03d}"


def seed(engine: Engine, model: Any, rows: int) -> dict[tuple[str, int], str]:
    """``rows`` pending rows; returns ``{(tenant, id): expected email}``."""
    values = [{"id": i, "tenant": tenant(i), "mail": f"user{i}@example.org"}
              for i in range(rows)]
    with engine.begin() as conn:
        conn.execute(model.__table__.insert(), values)
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {model.__tablename__}")
    return {(v["tenant"], v["id"]): v["mail"].upper() for v in values}


def emails(engine: Engine, table: str) -> dict[tuple[str, int], str | None]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT tenant, id, email FROM {table}")).all()
    return {(r[0], int(r[1])): r[2] for r in rows}


def count_fills(engine: Engine, table: str) -> None:
    """Record in ``<table>_hits`` every update of a row (tenant, id)."""
    hits = f"{table}_hits"
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {hits} (tenant VARCHAR(20), id INTEGER)")
        if dialect == "postgresql":
            conn.exec_driver_sql(
                f"CREATE FUNCTION {hits}_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"INSERT INTO {hits} VALUES (NEW.tenant, NEW.id); RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER {hits}_t AFTER UPDATE ON {table} FOR EACH ROW "
                f"EXECUTE FUNCTION {hits}_f()"
            )
        elif dialect == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER {hits}_t AFTER UPDATE ON {table} FOR EACH ROW BEGIN "
                f"INSERT INTO {hits} VALUES (NEW.tenant, NEW.id); END"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE TRIGGER {hits}_t AFTER UPDATE ON {table} FOR EACH ROW "
                f"INSERT INTO {hits} VALUES (NEW.tenant, NEW.id)"
            )


def fills(engine: Engine, table: str) -> dict[tuple[str, int], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT tenant, id, count(*) FROM {table}_hits GROUP BY tenant, id")
        ).all()
    return {(r[0], int(r[1])): int(r[2]) for r in rows}


@contextmanager
def captured(engine: Engine, table: str, starts: tuple[str, ...]) -> Iterator[list[Any]]:
    """The statements on ``table`` beginning with one of ``starts`` that the
    engine's connections send, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        head = statement.lstrip().upper()
        if table in statement and head.startswith(starts):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", capture)


def plan_nodes(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """``(node type, relation)`` of every node of a PostgreSQL JSON plan."""
    nodes = [(plan["Node Type"], plan.get("Relation Name"))]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


def explain_pg(engine: Engine, statement: str, parameters: Any) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar_one()
    plan = raw if isinstance(raw, list) else json.loads(raw)
    return plan_nodes(plan[0]["Plan"])


def assert_index_range_scans_pg(
    engine: Engine, sent: list[Any], tables: set[str]
) -> None:
    """Every statement in ``sent`` scans ``tables`` through an index, never
    sequentially."""
    assert sent, "no batch statement was captured"
    for statement, parameters in sent:
        nodes = explain_pg(engine, statement, parameters)
        seq = [n for n in nodes if n[0] == "Seq Scan" and n[1] in tables]
        assert not seq, f"sequential scan in {nodes} of {statement} {parameters}"
        assert any(n[0] in INDEX_SCANS for n in nodes), f"{nodes}: {statement}"


def assert_index_range_scans(engine: Engine, sent: list[Any], table: str) -> None:
    """The same on any database: PostgreSQL's plan nodes, SQLite's query plan
    (a SEARCH of the key, no SCAN of the table), MariaDB's access type (range
    on the primary key)."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        assert_index_range_scans_pg(engine, sent, {table})
        return
    assert sent, "no batch statement was captured"
    for statement, parameters in sent:
        with engine.connect() as conn:
            if dialect == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                details = [str(r[-1]) for r in rows]
                assert any(d.startswith(f"SEARCH {table}") for d in details), details
                assert not any(d.startswith(f"SCAN {table}") for d in details), details
            else:
                result = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
                rows = [dict(zip(result.keys(), r)) for r in result.all()]
                mine = [r for r in rows if r["table"] == table]
                assert mine and all(r["type"] == "range" and r["key"] == "PRIMARY"
                                    for r in mine), rows


# -- plans ----------------------------------------------------------------------------
class TestPlans:
    @pytest.mark.postgres
    @by_mode
    def test_postgresql_batches_are_index_range_scans(
        self, pg_schema_engine: Engine, mode: str
    ) -> None:
        engine = pg_schema_engine
        table = f"ko_plan_{mode}"
        create_table(engine, table)
        model = make_model(table, mode=mode)
        expected = seed(engine, model, 20_000)

        # the batches: SQL mode's UPDATE; Python mode's read of the rows, and its
        # UPDATE ... FROM the computed rows
        reads = f"SELECT {table}.tenant, {table}.id, {table}.mail".upper()
        with captured(engine, table, ("UPDATE", reads)) as sent:
            report = backfill(engine, model.contact, batch_size=2_000, target_ms=0)
        assert report.complete and report.rows_updated == 20_000
        assert emails(engine, table) == expected
        assert_index_range_scans_pg(engine, sent, {table})

        # verify's batches: a count per batch in SQL, the rows read in Python
        with captured(engine, table, ("SELECT COUNT", reads)) as sent:
            result = verify(engine, model.contact, batch_size=2_000)
        assert result.ok and result.total == 20_000
        assert_index_range_scans_pg(engine, sent, {table})

    @pytest.mark.parametrize("engine_name", [
        "sqlite_engine", pytest.param("mysql_db_engine", marks=pytest.mark.mysql)])
    def test_sqlite_and_mariadb_batches_search_the_key(
        self, engine_name: str, request: pytest.FixtureRequest
    ) -> None:
        engine: Engine = request.getfixturevalue(engine_name)
        table = "ko_plan_other"
        create_table(engine, table)
        model = make_model(table)
        expected = seed(engine, model, 3_000)
        with captured(engine, table, ("UPDATE",)) as sent:
            report = backfill(engine, model.contact, batch_size=500, target_ms=0)
        assert report.complete and report.rows_updated == 3_000
        assert emails(engine, table) == expected
        assert_index_range_scans(engine, sent, table)


# -- rows -----------------------------------------------------------------------------
class TestRows:
    @by_mode
    def test_every_row_exactly_once(self, every_engine: Engine, mode: str) -> None:
        engine = every_engine
        table = f"ko_rows_{mode}"
        create_table(engine, table)
        model = make_model(table, mode=mode)
        expected = seed(engine, model, 2_500)
        count_fills(engine, table)

        report = backfill(engine, model.contact, batch_size=300, target_ms=0)

        assert report.complete and report.rows_updated == 2_500
        assert emails(engine, table) == expected
        assert fills(engine, table) == {k: 1 for k in expected}
        assert verify(engine, model.contact).ok

    @pytest.mark.postgres
    def test_workers_every_row_exactly_once(self, pg_schema_engine: Engine) -> None:
        engine = pg_schema_engine
        table = "ko_workers"
        create_table(engine, table)
        model = make_model(table)
        expected = seed(engine, model, 4_000)
        count_fills(engine, table)

        report = backfill(engine, model.contact, batch_size=200, target_ms=0, workers=2)

        assert report.complete and report.rows_updated == 4_000
        assert emails(engine, table) == expected
        assert fills(engine, table) == {k: 1 for k in expected}


# -- keys shown and recorded ---------------------------------------------------------
class TestKeysShown:
    def test_skipped_and_sample_keys_in_the_models_order(self, engine: Engine) -> None:
        table = "ko_shown"
        create_table(engine, table)
        model = make_model(table, mode="python")  # the bad row fails in Python
        seed(engine, model, 600)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET mail = 'bad one' WHERE id = 321"))

        report = backfill(engine, model.contact, on_error="skip", batch_size=100, target_ms=0)
        assert report.complete
        assert report.skipped_keys == [(321, tenant(321))]  # (id, tenant) as declared
        with engine.connect() as conn:
            row_key = conn.execute(text("SELECT row_key FROM fourstep_skipped")).scalar_one()
            order = conn.execute(text("SELECT run_key_order FROM fourstep_state")).scalar_one()
        assert json.loads(row_key) == [321, tenant(321)]
        assert json.loads(order) == ["tenant", "id"]  # the run walks the index's order
        # the skipped row is no row left behind: a second call is complete at once
        again = backfill(engine, model.contact, on_error="skip")
        assert again.complete and again.rows_updated == 0
        assert again.skipped_keys == [(321, tenant(321))]

        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET email = 'other' WHERE id IN (5, 404)"))
        result = verify(engine, model.contact, batch_size=100)
        assert result.mismatched == 2 and result.missing == 1  # the skipped row
        assert sorted(result.sample_keys) == sorted(
            [(5, tenant(5)), (321, tenant(321)), (404, tenant(404))]
        )


# -- a run of an older version --------------------------------------------------------
class TestResume:
    def test_run_walked_in_the_models_order_is_not_misread(
        self, engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        table = "ko_resume"
        create_table(engine, table)
        model = make_model(table)
        expected = seed(engine, model, 1_000)
        count_fills(engine, table)

        class Stop(Exception):
            pass

        def stop_after_two(progress: Any) -> None:
            if progress.batches == 2:
                raise Stop

        with pytest.raises(Stop):
            backfill(engine, model.contact, batch_size=100, target_ms=0, progress=stop_after_two)
        # make it a run of the version that walked (id, tenant): no recorded order,
        # its cursor in that order
        with engine.begin() as conn:
            conn.execute(text("UPDATE fourstep_state SET run_key_order = NULL"))
            for cursor in conn.execute(
                text("SELECT range_no, cursor_key FROM fourstep_progress WHERE cursor_key "
                     "IS NOT NULL")
            ).all():
                t, i = json.loads(cursor.cursor_key)
                conn.execute(
                    text("UPDATE fourstep_progress SET cursor_key = :c WHERE range_no = :r"),
                    {"c": json.dumps([i, t]), "r": cursor.range_no},
                )
        caplog.set_level(logging.WARNING, logger="fourstep_sqla.backfill")

        report = backfill(engine, model.contact, batch_size=100, target_ms=0)

        assert report.complete
        assert any("walked the key as (id, tenant)" in r.getMessage() for r in caplog.records)
        assert emails(engine, table) == expected
        assert fills(engine, table) == {k: 1 for k in expected}


# -- no index serves the key ----------------------------------------------------------
class TestNoIndex:
    def test_refused_before_anything_runs(self, every_engine: Engine) -> None:
        engine = every_engine
        table = "ko_noindex"
        create_table(engine, table, key=None)
        model = make_model(table)
        seed(engine, model, 50)

        for call in (lambda: backfill(engine, model.contact),
                     lambda: backfill(engine, model.contact, dry_run=True),
                     lambda: verify(engine, model.contact)):
            with pytest.raises(NoKeyIndexError) as caught:
                call()
            message = str(caught.value)
            assert isinstance(caught.value, NoPrimaryKeyError)
            assert isinstance(caught.value, FourStepError)
            assert table in message and "(id, tenant)" in message
            assert f"CREATE UNIQUE INDEX CONCURRENTLY {table}_fourstep_key ON {table} " \
                   "(id, tenant)" in message
        assert all(v is None for v in emails(engine, table).values())

    def test_a_unique_index_serves_the_key(self, every_engine: Engine) -> None:
        engine = every_engine
        table = "ko_unique"
        create_table(engine, table, key=None)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE UNIQUE INDEX {table}_key ON {table} (tenant, id)")
        model = make_model(table)
        expected = seed(engine, model, 500)
        report = backfill(engine, model.contact, batch_size=100, target_ms=0)
        assert report.complete and emails(engine, table) == expected
        with engine.connect() as conn:
            order = conn.execute(text("SELECT run_key_order FROM fourstep_state")).scalar_one()
        assert json.loads(order) == ["tenant", "id"]
