"""The reference Alembic environment (fourstep_sqla/demo/migrations) and the demo."""

from __future__ import annotations

import runpy
import tempfile
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, text
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

from fourstep_sqla import Phase, registry
from fourstep_sqla.alembic.render import present_sql, transform_sql
from fourstep_sqla.demo import MIGRATIONS, make_user_model, run_demo
from fourstep_sqla.state import read_state


def _config(engine: Engine) -> Config:
    url = engine.url
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
        url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _rows(engine: Engine) -> list[tuple[Any, ...]]:
    present = {c["name"] for c in inspect(engine).get_columns("users")}
    columns = [c for c in ("id", "name", "first_name", "last_name") if c in present]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            text(f"SELECT {', '.join(columns)} FROM users ORDER BY id")
        )]


def test_every_step_up_and_down_keeps_the_data(engine: Engine) -> None:
    config = _config(engine)
    command.upgrade(config, "s0")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO users (id, name) VALUES (1, 'Ada Lovelace'), (2, 'Cher'), "
            "(3, 'Alan Mathison Turing')"
        ))
    command.upgrade(config, "head")
    assert _rows(engine) == [(1, "Ada", "Lovelace"), (2, "Cher", None),
                             (3, "Alan", "Mathison Turing")]
    state = read_state(engine, "users.full_name")
    assert state is not None and state.recorded_phase == 4
    for target, phase in (("s3", 3), ("s2", 2), ("s1", 1), ("s0", 0)):
        command.downgrade(config, target)
        assert read_state(engine, "users.full_name").recorded_phase == phase  # type: ignore[union-attr]
        assert [r[:2] for r in _rows(engine)] == [
            (1, "Ada Lovelace"), (2, "Cher"), (3, "Alan Mathison Turing")
        ]
    command.upgrade(config, "head")
    command.downgrade(config, "base")


def test_demo_runs_on_an_embedded_sqlite_file_by_default(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, without a URL (``fourstep demo --url URL`` on each database:
    ``tests/test_cli.py::test_demo_subprocess``)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lines: list[str] = []
    assert run_demo(echo=lines.append, rows=500) == 0
    assert lines[1].startswith("fourstep demo on sqlite:///")
    output = "\n".join(lines)
    for step in ("Step 1 (WRITE_BOTH)", "Step 2 (READ_NEW)", "Step 3 (STOP_READ_OLD)",
                 "Step 4 (STOP_WRITE_OLD)", "Downgrade s4 -> s3", "Done."):
        assert step in output
    assert "0 missing, 0 mismatched" in output
    assert "(0 errors)" in output


@pytest.mark.parametrize("revision", ["s1_write_both", "s3_backfill", "s4_drop_old"])
@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect(),
                                     mysql.dialect(), mysql.dialect(is_mariadb=True)],
                         ids=["sqlite", "postgresql", "mysql", "mariadb"])
def test_the_reference_revisions_carry_what_the_renderer_writes(
    revision: str, dialect: Dialect
) -> None:
    """Each dialect's frozen SQL is the renderer's, so the demo shows what autogenerate
    writes for that database."""
    spec = registry.resolve(make_user_model(Phase.WRITE_BOTH).full_name)
    module = runpy.run_path(str(MIGRATIONS / "versions" / f"{revision}.py"))
    name = dialect.name
    assert module["FORWARD_SQL"][name] == transform_sql(
        spec, spec.forward, spec.old_columns, spec.new_columns, dialect
    )
    if "BACKWARD_SQL" in module:
        assert module["BACKWARD_SQL"][name] == transform_sql(
            spec, spec.backward, spec.new_columns, spec.old_columns, dialect
        )
    if "PRESENT_SQL" in module:
        assert module["PRESENT_SQL"][name] == present_sql(spec.forward, spec.old_columns, dialect)
