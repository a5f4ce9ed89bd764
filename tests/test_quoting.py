"""Names that need quoting, through every operation.

A table with a space and mixed case, a reserved word as the old column, a
mixed-case new column with a space, a mixed-case primary key, and on
PostgreSQL a schema-qualified table in a schema whose name needs quoting:
ORM writes and reads, backfill, verify, check, and the Alembic revisions of
steps 1, 3 and 4 (upgrade and downgrade).
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, Integer, String, inspect, select, text
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    Unmapped,
    mapped_column,
    unmapped_column,
)
from test_alembic_ops import ENV_PY, Env

from fourstep_sqla import Phase, Transform, backfill, check, phased, verify
from fourstep_sqla.alembic.revision import write_revision

SCHEMA = "Sales Dept"
TABLE = "Order Items"


def _model(phase: Phase, schema: str | None) -> Any:
    class Base(DeclarativeBase):
        pass

    args: dict[str, Any] = {"schema": schema} if schema else {}
    old: Any
    if phase is Phase.STOP_WRITE_OLD:
        old = unmapped_column("select", String(20))
        old_type: Any = Unmapped[str | None]
    else:
        old = mapped_column("select", String(20))
        old_type = Mapped[str | None]
    namespace = {
        "__tablename__": TABLE,
        "__table_args__": args,
        "__annotations__": {"id": Mapped[int], "legacy": old_type, "amount": Mapped[int | None]},
        "id": mapped_column("ID", primary_key=True),
        "legacy": old,
        "amount": mapped_column("Amount Int", Integer),
        "quantity": phased(
            old="legacy",
            new="amount",
            forward=Transform.cast(int, Integer()),
            backward=Transform.cast(str, String(20)),
            phase=phase,
            key="order_items.quantity",
        ),
    }
    return type("OrderItem", (Base,), namespace)


def _quoted_table(engine: Engine, schema: str | None) -> str:
    prep = engine.dialect.identifier_preparer
    name = prep.quote(TABLE)
    return f"{prep.quote(schema)}.{name}" if schema else name


@pytest.fixture
def schema(engine: Engine) -> Any:
    if engine.dialect.name != "postgresql":
        yield None
        return
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    yield SCHEMA
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{SCHEMA}" CASCADE'))


def test_every_operation_with_names_that_need_quoting(
    engine: Engine, schema: str | None, tmp_path: Path
) -> None:
    table = _quoted_table(engine, schema)
    # the database's own quotes (backticks on MariaDB/MySQL)
    key, old, new = (engine.dialect.identifier_preparer.quote(n)
                     for n in ("ID", "select", "Amount Int"))
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} ({key} INTEGER NOT NULL PRIMARY KEY, "
                          f"{old} VARCHAR(20) NOT NULL)"))
        conn.execute(text(f"INSERT INTO {table} ({key}, {old}) VALUES (1, '10'), (2, '20')"))

    env = Env(tmp_path, engine)
    (env.dir / "env.py").write_text(ENV_PY)
    shutil.copy(Path(command.__file__).parent / "templates" / "generic" / "script.py.mako",
                env.dir / "script.py.mako")
    schema_arg = repr(schema)
    env.revision("q1", None, textwrap.dedent(f"""
        op.add_column({TABLE!r}, sa.Column("Amount Int", sa.Integer()), schema={schema_arg})
        op.relax_old_not_null("order_items.quantity", {TABLE!r}, ["select"],
                              existing_type=sa.String(20), schema={schema_arg})
    """), textwrap.dedent(f"""
        op.restore_old_not_null("order_items.quantity", {TABLE!r}, ["select"],
                                existing_type=sa.String(20), schema={schema_arg})
        op.drop_column({TABLE!r}, "Amount Int", schema={schema_arg})
    """), imports="import fourstep_sqla.alembic  # noqa: F401")
    command.upgrade(env.config, "q1")

    # step 1-2 code: ORM writes reach both places, reads follow the phase
    model = _model(Phase.READ_NEW, schema)
    with Session(engine) as session:
        session.add(model(id=3, quantity=30))
        session.commit()
        assert session.scalars(select(model.id).where(model.quantity == 20)).all() == [2]
        assert session.get(model, 1).quantity == 10
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT {key}, {old}, {new} FROM {table} "
                                 f"ORDER BY {key}")).all() == [
            (1, "10", None), (2, "20", None), (3, "30", 30)]

    # the engine directly, then the step-3 revision (a no-op by then) and verify
    model = _model(Phase.STOP_READ_OLD, schema)
    report = backfill(engine, model.quantity)
    assert report.rows_updated == 2 and report.complete
    result = verify(engine, model.quantity)
    assert result.ok and result.total == 3
    write_revision(env.config, model.quantity.descriptor.spec, 3, "backfill")
    command.upgrade(env.config, "head")
    check(engine, model.quantity)

    # step 4: drop, and the downgrade restores the old column
    model = _model(Phase.STOP_WRITE_OLD, schema)
    check(engine, model.quantity)
    write_revision(env.config, model.quantity.descriptor.spec, 4, "drop")
    command.upgrade(env.config, "head")
    columns = [c["name"] for c in inspect(engine).get_columns(TABLE, schema=schema)]
    assert columns == ["ID", "Amount Int"]
    command.downgrade(env.config, "-1")
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT {key}, {old}, {new} FROM {table} "
                                 f"ORDER BY {key}")).all() == [
            (1, "10", 10), (2, "20", 20), (3, "30", 30)]
    command.downgrade(env.config, "base")
    columns = [c["name"] for c in inspect(engine).get_columns(TABLE, schema=schema)]
    assert columns == ["ID", "select"]
