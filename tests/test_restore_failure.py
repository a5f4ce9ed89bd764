"""A downgrade past the drop whose backward transform fails on a row says so as
a restore, names the row, and can be run again once the row is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from test_migration_locks import Project

from fourstep_sqla.backfill import BackfillError

MODELS = '''
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    {old}
    code: Mapped[str | None] = mapped_column(String(10))
    number = phased(
        old="legacy_code", new="code",
        forward=Transform.cast(str, String(10)), backward=Transform.cast(int, Integer()),
        phase=Phase.{phase},
    )
{extra}
'''
MAPPED = 'legacy_code: Mapped[int | None] = mapped_column("code_int", Integer)'
UNMAPPED = 'legacy_code: Unmapped[int | None] = unmapped_column("code_int", Integer)'


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_a_failing_restore_says_what_to_do_and_resumes(engine: Engine, tmp_path: Path) -> None:
    project = Project(tmp_path, engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, "
                          "code_int INTEGER)"))
        conn.execute(text("INSERT INTO items (id, code_int) VALUES (1, 12), (2, 7)"))
    for phase, old in (("WRITE_BOTH", MAPPED), ("STOP_READ_OLD", MAPPED),
                       ("STOP_WRITE_OLD", UNMAPPED)):
        project.models(phase, old, template=MODELS)
        project.revision()
        command.upgrade(project.config, "head")
    # written after the drop: a code that is no number
    with engine.begin() as conn:
        conn.execute(text("UPDATE items SET code = 'A7' WHERE id = 2"))
    with pytest.raises(BackfillError) as caught:
        command.downgrade(project.config, "r02")
    message = str(caught.value)
    assert message.startswith("items.number: restoring code_int of items from the new "
                              "column(s) failed: ")
    assert "backward transform" in message and "(2,)" in message
    assert "on_error" not in message and "--on-error" not in message
    assert "run the downgrade again" in message
    # fixed, the downgrade carries on
    with engine.begin() as conn:
        conn.execute(text("UPDATE items SET code = '77' WHERE id = 2"))
    command.downgrade(project.config, "r02")
    assert "code_int" in {c["name"] for c in inspect(engine).get_columns("items")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, code_int, code FROM items ORDER BY id")
                            ).all() == [(1, 12, "12"), (2, 77, "77")]
