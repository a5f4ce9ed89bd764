"""``alembic check`` reports pending fourstep operations the way it reports
Alembic's own: the same exit status, "New upgrade operations detected" with the
operations listed, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text
from test_migration_locks import FORWARD_INDEX, Project

ALEMBIC = str(Path(sys.executable).parent / "alembic")


def _check(project: Project) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ALEMBIC, "-c", str(project.ini()), "check"], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_alembic_check_at_every_step(engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text("CREATE INDEX ix_users_name ON users (name)"))
        conn.execute(text("INSERT INTO users (id, name) VALUES (1, 'Ada Lovelace')"))
    project = Project(tmp_path, engine)
    # Alembic's own pending operation (the new columns) sets the reference exit status
    project.models("WRITE_BOTH")
    own = _check(project)
    assert own.returncode != 0 and "New upgrade operations detected" in own.stdout + own.stderr
    project.revision()
    command.upgrade(project.config, "head")
    assert _check(project).returncode == 0
    from test_migration_locks import UNMAPPED

    extra = FORWARD_INDEX if engine.dialect.name == "postgresql" else ""
    for phase, old, pending in (
        ("READ_NEW", None, "fourstep_record_phase"),
        ("STOP_READ_OLD", None, "fourstep_backfill"),
        ("STOP_WRITE_OLD", UNMAPPED, "remove_fourstep_old_columns"),
    ):
        if old is None:
            project.models(phase, extra=extra)
        else:
            project.models(phase, old, extra=extra)
        found = _check(project)
        output = found.stdout + found.stderr
        assert found.returncode == own.returncode, output
        assert "New upgrade operations detected" in output and pending in output, output
        assert "Traceback" not in output, output
        project.revision()
        command.upgrade(project.config, "head")
        clean = _check(project)
        assert clean.returncode == 0, clean.stdout + clean.stderr
