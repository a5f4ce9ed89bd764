"""Autogenerate emits the Four Step operations, and nothing once each step is done.

"Compare and run": a real Alembic environment whose ``env.py`` loads a models
module at the phase under test; ``alembic revision --autogenerate`` (the
command API) writes a revision, the test asserts its ``upgrade()`` text, runs
it, checks the rows, and autogenerates again to prove nothing more is emitted.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import textwrap
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, text

import fourstep_sqla.alembic  # noqa: F401
from fourstep_sqla.state import read_state

TEMPLATE = Path(command.__file__).parent / "templates" / "generic" / "script.py.mako"

ENV_PY = '''
import importlib
import sys

from alembic import context
from sqlalchemy import create_engine

import fourstep_sqla.alembic  # noqa: F401

config = context.config
sys.path.insert(0, config.get_main_option("models_path"))
models = importlib.import_module(config.attributes["models"])
engine = create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
'''

MODELS = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    {old}
    first_name: Mapped[str | None] = mapped_column(String(40))
    last_name: Mapped[str | None] = mapped_column(String(40))
    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.{phase},
    )
'''

MAPPED = 'legacy_name: Mapped[str | None] = mapped_column("name", String(80))'
UNMAPPED = 'legacy_name: Unmapped[str | None] = unmapped_column("name", String(80))'


class Project:
    def __init__(self, tmp_path: Path, engine: Engine) -> None:
        self.engine = engine
        self.dir = tmp_path / "migrations"
        (self.dir / "versions").mkdir(parents=True)
        (self.dir / "env.py").write_text(ENV_PY)
        shutil.copy(TEMPLATE, self.dir / "script.py.mako")
        self.models_dir = tmp_path / "models"
        self.models_dir.mkdir()
        url = engine.url
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
            url = url.update_query_dict({"options": f"-csearch_path={schema}"})
        self.config = Config()
        self.config.set_main_option("script_location", str(self.dir))
        self.config.set_main_option(
            "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
        )
        self.config.set_main_option("models_path", str(self.models_dir))
        self.count = 0
        self.revisions = 0
        self.token = secrets.token_hex(4)

    def models(self, phase: str, old: str = MAPPED) -> None:
        self.count += 1
        name = f"models_{self.token}_{self.count}"  # fresh module: not from sys.modules
        (self.models_dir / f"{name}.py").write_text(MODELS.format(phase=phase, old=old))
        self.config.attributes["models"] = name

    def autogenerate(self) -> str:
        """Autogenerate a revision, apply it, and return its ``upgrade()`` body."""
        self.revisions += 1
        script = command.revision(
            self.config, message=f"step {self.count}", autogenerate=True,
            rev_id=f"r{self.revisions:02d}",
        )
        assert script is not None and not isinstance(script, list)
        body = Path(script.path).read_text()
        command.upgrade(self.config, "head")
        return body.split("def upgrade() -> None:")[1].split("def downgrade")[0]

    def rows(self) -> list[tuple[object, ...]]:
        present = {c["name"] for c in inspect(self.engine).get_columns("users")}
        columns = [c for c in ("id", "name", "first_name", "last_name") if c in present]
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                text(f"SELECT {', '.join(columns)} FROM users ORDER BY id")
            )]


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_autogenerate_walks_the_four_steps(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alembic")
    project = Project(tmp_path, engine)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text("INSERT INTO users (id, name) VALUES (1, 'Ada Lovelace'), (2, 'Cher')"))

    # step 1: the new columns, and the old column relaxed (not Alembic's alter_column)
    project.models("WRITE_BOTH")
    upgrade = project.autogenerate()
    assert "op.add_column('users', sa.Column('first_name', sa.String(length=40)" in upgrade
    assert "op.add_column('users', sa.Column('last_name', sa.String(length=40)" in upgrade
    assert textwrap.dedent("""\
        op.relax_old_not_null(
            'users.full_name',
            'users',
            ['name'],
            existing_type=sa.String(length=80),
        )""") in textwrap.dedent(upgrade.split("\n", 2)[2])
    assert "alter_column" not in upgrade
    # the phase is recorded last, after the columns and the sync triggers
    assert upgrade.rstrip().split("op.")[-1].startswith(
        "record_phase(\n        'users.full_name',\n        'users',\n        phase=1,\n"
        "        previous=0,\n    )"
    ), upgrade
    assert {c["name"]: c["nullable"] for c in inspect(engine).get_columns("users")}["name"]
    assert read_state(engine, "users.full_name").recorded_phase == 1
    assert project.autogenerate().count("op.") == 0  # nothing left at step 1

    # step 2 changes no schema, but records the phase
    project.models("READ_NEW")
    upgrade = project.autogenerate()
    assert upgrade.count("op.") == 1 and "phase=2,\n        previous=1," in upgrade
    assert read_state(engine, "users.full_name").recorded_phase == 2
    assert project.autogenerate().count("op.") == 0

    # step 3: the backfill, once
    project.models("STOP_READ_OLD")
    upgrade = project.autogenerate()
    assert upgrade.count("op.") == 1 and "op.backfill(\n        'users.full_name'," in upgrade
    assert project.rows() == [(1, "Ada Lovelace", "Ada", "Lovelace"), (2, "Cher", "Cher", None)]
    assert project.autogenerate().count("op.") == 0

    # step 4: the drop, once, and no add_column churn for the unmapped column after it
    project.models("STOP_WRITE_OLD", old=UNMAPPED)
    upgrade = project.autogenerate()
    assert upgrade.count("op.") == 1 and "op.drop_old(\n        'users.full_name'," in upgrade
    assert project.rows() == [(1, "Ada", "Lovelace"), (2, "Cher", None)]
    assert project.autogenerate().count("op.") == 0

    # and every step downgrades without losing a value
    command.downgrade(project.config, "base")
    assert project.rows() == [(1, "Ada Lovelace"), (2, "Cher")]
    # the library's own tables were never taken for removed ones
    assert any("Detected" in r.getMessage() for r in caplog.records)  # Alembic did log
    assert not [r.getMessage() for r in caplog.records if "fourstep_" in r.getMessage()]
