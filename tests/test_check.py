"""check(engine): the deploy-order guard, against databases at each step."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text
from test_alembic_ops import Env, _model

from fourstep_sqla import DeployOrderError, FourStepError, Phase, check
from fourstep_sqla.check import problems


def _spec(phase: Phase) -> object:
    return _model(phase).full_name


class TestCheck:
    def test_each_step_of_the_lifecycle(self, engine: Engine, tmp_path: Path) -> None:
        env = Env(tmp_path, engine)
        env.all_steps()
        command.upgrade(env.config, "s0")
        # step-1 code deployed before the step-1 migration
        with pytest.raises(DeployOrderError, match="first_name, last_name do not exist"):
            check(engine, _spec(Phase.WRITE_BOTH))
        command.upgrade(env.config, "s1")
        check(engine, _spec(Phase.WRITE_BOTH))
        check(engine, _spec(Phase.READ_NEW))
        # step-3 code before the backfill: unfilled rows would read as NULL
        with pytest.raises(DeployOrderError, match="backfill has not finished") as caught:
            check(engine, _spec(Phase.STOP_READ_OLD))
        assert "fourstep backfill users.full_name" in str(caught.value)
        assert isinstance(caught.value, FourStepError)
        command.upgrade(env.config, "s3")
        check(engine, _spec(Phase.STOP_READ_OLD))
        check(engine, _spec(Phase.STOP_WRITE_OLD))
        command.upgrade(env.config, "s4")
        # the drop ran while step-3 code still reads and writes the old column
        with pytest.raises(DeployOrderError, match="were dropped"):
            check(engine, _spec(Phase.STOP_READ_OLD))
        check(engine, _spec(Phase.STOP_WRITE_OLD))

    def test_step4_code_on_a_not_null_old_column(self, engine: Engine, tmp_path: Path) -> None:
        env = Env(tmp_path, engine)
        env.all_steps()
        command.upgrade(env.config, "s1")
        command.upgrade(env.config, "s3")
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("ALTER TABLE users ALTER COLUMN name SET NOT NULL"))
            else:  # SQLite cannot alter a column: rebuild the table NOT NULL
                conn.execute(text("ALTER TABLE users RENAME TO users_old"))
                conn.execute(text(
                    "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(80) NOT NULL, "
                    "first_name VARCHAR(40), last_name VARCHAR(40))"
                ))
                conn.execute(text("INSERT INTO users SELECT id, name, first_name, last_name "
                                  "FROM users_old"))
                conn.execute(text("DROP TABLE users_old"))
        found = problems(engine, _spec(Phase.STOP_WRITE_OLD))
        assert len(found) == 1
        assert "still NOT NULL without a default" in found[0].message
        assert found[0].key == "users.full_name"
        check(engine, _spec(Phase.STOP_READ_OLD))
