"""Sync triggers through real Alembic revisions, as autogenerate writes them.

A real environment (``env.py`` loading a models module at the phase under
test), ``alembic revision --autogenerate`` and ``alembic upgrade``/``downgrade``
through the command API, on SQLite and PostgreSQL:

- step 1 writes ``op.create_sync_triggers`` after the new columns (and
  nothing more once they exist); from then on raw SQL writers of either side
  are kept in step;
- the step-4 window: code at step 4 updates rows through the new place only,
  the drop still succeeds, and removes the triggers with the column; the
  downgrade restores every old value and the triggers;
- the drop gate refuses lossy rows (unless ``accept_lossy=True``) and rows
  written past the triggers (naming ``--repair``, which fixes them);
- ``context.configure(fourstep_sync_triggers=False)`` opts out;
- ``fourstep revision --step 1`` (``write_revision``) writes the same step-1
  operations.
"""

from __future__ import annotations

import secrets
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

import fourstep_sqla.alembic  # noqa: F401
from fourstep_sqla import backfill, verify
from fourstep_sqla.alembic.ops import DropRefusedError
from fourstep_sqla.registry import get
from fourstep_sqla.state import read_state
from fourstep_sqla.triggers import trigger_names, triggers_on, triggers_present

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
        fourstep_sync_triggers=config.attributes.get("sync_triggers", True),
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


class Person(Base):
    __tablename__ = "people"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
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

PYTHON_MODELS = MODELS.replace(
    "from fourstep_sqla import Phase, Transform, phased\n",
    "from fourstep_sqla import Phase, Transform, phased\n\n\n"
    "def python_split(name):\n"
    "    first, _, last = name.partition(' ')\n"
    "    return first or None, last or None\n\n\n"
    "def python_join(first, last):\n"
    "    parts = [p for p in (first, last) if p is not None]\n"
    "    return ' '.join(parts) if parts else None\n",
).replace('Transform.split(" ")', "Transform(python_split)").replace(
    'Transform.join(" ")', "Transform(python_join)"
)

MAPPED = 'legacy_name: Mapped[str | None] = mapped_column("name", String(80))'
UNMAPPED = 'legacy_name: Unmapped[str | None] = unmapped_column("name", String(80))'
KEY = "people.full_name"


class Project:
    """An Alembic project in ``tmp_path`` whose models move through the phases."""

    def __init__(self, tmp_path: Path, engine: Engine, *, sync_triggers: bool = True) -> None:
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
        self.config.attributes["sync_triggers"] = sync_triggers
        self.count = 0
        self.token = secrets.token_hex(4)
        self.module: Any = None
        with engine.begin() as conn:
            conn.execute(text(
                "CREATE TABLE people (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
            ))
            conn.execute(text(
                "INSERT INTO people (id, name) VALUES "
                "(1, 'Ada Lovelace'), (2, 'Cher'), (3, 'Alan Mathison Turing')"
            ))

    def models(self, phase: str, old: str = MAPPED, template: str = MODELS) -> Any:
        import importlib
        import sys

        self.count += 1
        name = f"trg_models_{self.token}_{self.count}"
        (self.models_dir / f"{name}.py").write_text(template.format(phase=phase, old=old))
        self.config.attributes["models"] = name
        if str(self.models_dir) not in sys.path:
            sys.path.insert(0, str(self.models_dir))
        self.module = importlib.import_module(name)
        return self.module

    def autogenerate(self, apply: bool = True) -> tuple[str, str]:
        """Autogenerate a revision and apply it (or, ``apply=False``, remove it again);
        its ``upgrade()`` and ``downgrade()``."""
        script = command.revision(
            self.config, message=f"step {self.count}", autogenerate=True,
            rev_id=f"r{self.count:02d}_{secrets.token_hex(2)}",
        )
        assert script is not None and not isinstance(script, list)
        self.last = Path(script.path)
        self.head = script.revision
        body = self.last.read_text()
        if apply:
            command.upgrade(self.config, "head")
        else:
            self.last.unlink()
        up = body.split("def upgrade() -> None:")[1].split("def downgrade")[0]
        down = body.split("def downgrade() -> None:")[1]
        return up, down

    def rows(self) -> list[tuple[Any, ...]]:
        present = {c["name"] for c in inspect(self.engine).get_columns("people")}
        columns = [c for c in ("id", "name", "first_name", "last_name") if c in present]
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                text(f"SELECT {', '.join(columns)} FROM people ORDER BY id")
            )]

    def run(self, sql: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql))

    def synced(self) -> bool:
        with self.engine.connect() as conn:
            return triggers_present(conn, KEY, "people", None)

    def past_triggers(self, sql: str) -> None:
        """Write past the triggers, as a replication apply would."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            elif conn.dialect.name == "mysql":
                conn.exec_driver_sql("SET @fourstep_sync = 'off'")  # the session's switch
            else:
                conn.execute(text("INSERT INTO fourstep_sync_off (key) VALUES (:k)"), {"k": KEY})
            conn.execute(text(sql))
            if conn.dialect.name == "sqlite":
                conn.execute(text("DELETE FROM fourstep_sync_off WHERE key = :k"), {"k": KEY})
            elif conn.dialect.name == "mysql":
                conn.exec_driver_sql("SET @fourstep_sync = NULL")


SQLITE_STEP1 = '''\
    op.create_sync_triggers(
        'people.full_name',
        'people',
        old=[sa.Column('name', sa.String(length=80), nullable=True)],
        new=[sa.Column('first_name', sa.String(length=40), nullable=True), \
sa.Column('last_name', sa.String(length=40), nullable=True)],
'''


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
class TestLifecycle:
    def test_triggers_from_step_1_to_the_drop_and_back(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        project = Project(tmp_path, engine)

        # step 1: the new columns, then the triggers, in one revision
        project.models("WRITE_BOTH")
        up, down = project.autogenerate()
        assert up.index("op.add_column('people', sa.Column('last_name'") < up.index(
            "op.create_sync_triggers("
        )
        assert up.index("op.relax_old_not_null(") < up.index("op.create_sync_triggers(")
        if engine.dialect.name == "sqlite":
            assert SQLITE_STEP1 in up
        # MariaDB/MySQL: NULLIF compares under the collation ('' = ' '), so by length
        empty_to_null = "CASE WHEN (char_length(" if engine.dialect.name == "mysql" else "nullif("
        assert f"forward_sql={{'first_name': \"{empty_to_null}" in up
        assert "backward_sql={'name': " in up
        assert "catch_errors=False" in up  # split and join never raise: no per-row handler
        assert down.index("op.drop_sync_triggers(") < down.index("op.drop_column(")
        assert project.synced()
        assert project.autogenerate(apply=False)[0].count("op.") == 0  # nothing left

        # writers outside the ORM, at step 1: the previous release (old only) and
        # a new service (new only)
        project.run("INSERT INTO people (id, name) VALUES (4, 'Grace Hopper')")
        project.run("UPDATE people SET name = 'Ada King' WHERE id = 1")
        project.run("INSERT INTO people (id, first_name, last_name) VALUES (5, 'Edsger', 'D')")
        project.run("INSERT INTO people (id, name) VALUES (6, '')")
        assert project.rows() == [
            (1, "Ada King", "Ada", "King"),
            (2, "Cher", None, None),
            (3, "Alan Mathison Turing", None, None),
            (4, "Grace Hopper", "Grace", "Hopper"),
            (5, "Edsger D", "Edsger", "D"),
            (6, "", None, None),
        ]

        # step 3: the backfill fills the rest; '' stays '' (the old place untouched)
        project.models("READ_NEW")
        project.models("STOP_READ_OLD")
        up, _ = project.autogenerate()
        assert up.count("op.backfill(") == 1
        assert project.rows()[1:3] == [
            (2, "Cher", "Cher", None),
            (3, "Alan Mathison Turing", "Alan", "Mathison Turing"),
        ]
        assert project.rows()[5] == (6, "", None, None)

        # step 4 code is deployed: it updates rows through the new place only
        step4 = project.models("STOP_WRITE_OLD", old=UNMAPPED)
        with Session(engine) as session:
            person = session.get(step4.Person, 3)
            person.full_name = ("Alan", "Turing")
            session.add(step4.Person(id=7, full_name=("Barbara", "Liskov")))
            session.commit()
        result = verify(engine, get(KEY), record=False)
        assert result.synced and result.ok, result
        assert project.rows()[2] == (3, "Alan Turing", "Alan", "Turing")
        assert project.rows()[6] == (7, "Barbara Liskov", "Barbara", "Liskov")

        # the drop: refused for the lossy '' row until it is fixed
        with pytest.raises(DropRefusedError) as refused:
            project.autogenerate()
        message = str(refused.value)
        assert "1 row(s) hold an old value that backward(forward(old)) does not give back" in (
            message
        )
        assert "(6,)" in message and "accept_lossy=True" in message
        assert "name" in {c["name"] for c in inspect(engine).get_columns("people")}
        project.last.unlink()  # nothing of it was applied: write it again after the fix
        project.run("UPDATE people SET name = 'Zed' WHERE id = 6")
        up, down = project.autogenerate()
        assert "sync_triggers=True" in up and "sync_triggers=True" in down
        assert project.rows() == [
            (1, "Ada", "King"),
            (2, "Cher", None),
            (3, "Alan", "Turing"),
            (4, "Grace", "Hopper"),
            (5, "Edsger", "D"),
            (6, "Zed", None),
            (7, "Barbara", "Liskov"),
        ]
        assert not project.synced()
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                left = conn.execute(text(
                    "SELECT count(*) FROM pg_proc WHERE proname LIKE 'fs\\_people\\_%'"
                )).scalar_one()
            assert left == 0

        # downgrade past the drop: every old value back, the triggers too
        command.downgrade(project.config, "-1")
        assert project.synced()
        assert project.rows() == [
            (1, "Ada King", "Ada", "King"),
            (2, "Cher", "Cher", None),
            (3, "Alan Turing", "Alan", "Turing"),
            (4, "Grace Hopper", "Grace", "Hopper"),
            (5, "Edsger D", "Edsger", "D"),
            (6, "Zed", "Zed", None),
            (7, "Barbara Liskov", "Barbara", "Liskov"),
        ]
        project.run("UPDATE people SET first_name = 'Augusta' WHERE id = 1")
        assert project.rows()[0] == (1, "Augusta King", "Augusta", "King")
        command.downgrade(project.config, "base")
        assert project.rows()[0] == (1, "Augusta King")
        assert not project.synced()

    def test_a_write_past_the_triggers_is_refused_and_repaired(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        project = Project(tmp_path, engine)
        project.models("WRITE_BOTH")
        project.autogenerate()
        project.models("STOP_READ_OLD")
        project.autogenerate()
        project.past_triggers("UPDATE people SET name = 'Ada King' WHERE id = 1")
        project.models("STOP_WRITE_OLD", old=UNMAPPED)
        with pytest.raises(DropRefusedError) as refused:
            project.autogenerate()
        message = str(refused.value)
        assert "1 row(s) differ from forward(old)" in message and "(1,)" in message
        assert f"fourstep backfill {KEY} --repair" in message

        report = backfill(engine, get(KEY), repair=True)
        assert report.rows_updated == 1
        command.upgrade(project.config, "head")
        assert project.rows()[0] == (1, "Ada", "King")


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_accept_lossy(engine: Engine, tmp_path: Path) -> None:
    project = Project(tmp_path, engine)
    project.run("UPDATE people SET name = 'Cher ' WHERE id = 2")
    project.models("WRITE_BOTH")
    project.autogenerate()
    project.models("STOP_READ_OLD")
    project.autogenerate()
    project.models("STOP_WRITE_OLD", old=UNMAPPED)
    script = command.revision(project.config, message="drop", autogenerate=True, rev_id="drop")
    assert script is not None and not isinstance(script, list)
    path = Path(script.path)
    flag = "        sync_triggers=True,\n"
    path.write_text(path.read_text().replace(flag, flag + "        accept_lossy=True,\n", 1))
    command.upgrade(project.config, "head")
    assert project.rows()[1] == (2, "Cher", None)


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_opting_out(engine: Engine, tmp_path: Path) -> None:
    project = Project(tmp_path, engine, sync_triggers=False)
    project.models("WRITE_BOTH")
    up, _ = project.autogenerate()
    assert "create_sync_triggers" not in up
    assert not project.synced()
    # a revision that has the operation (written elsewhere) does nothing here
    (project.dir / "versions" / "explicit.py").write_text(textwrap.dedent(f'''\
        import sqlalchemy as sa
        from alembic import op
        import fourstep_sqla.alembic  # noqa: F401

        revision = "explicit"
        down_revision = "{project.head}"
        branch_labels = None
        depends_on = None


        def upgrade():
            op.create_sync_triggers(
                "{KEY}", "people", old=["name"], new=["first_name", "last_name"],
                forward_sql={{"first_name": "name", "last_name": "name"}},
                backward_sql={{"name": "first_name"}},
            )


        def downgrade():
            pass
    '''))
    command.upgrade(project.config, "head")
    assert not project.synced()
    project.run("INSERT INTO people (id, name) VALUES (4, 'Grace Hopper')")
    assert project.rows()[3] == (4, "Grace Hopper", None, None)


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_fourstep_revision_step_1_writes_what_autogenerate_writes(
    engine: Engine, tmp_path: Path
) -> None:
    from fourstep_sqla.alembic.revision import write_revision

    project = Project(tmp_path, engine)
    module = project.models("WRITE_BOTH")
    auto, _ = project.autogenerate(apply=False)
    for path in (project.dir / "versions").glob("*.py"):
        path.unlink()
    path = write_revision(project.config, module.Person.full_name.spec, 1, "step 1")
    written = Path(path).read_text().split("def upgrade() -> None:")[1].split("def downgrade")[0]
    for op in ("op.add_column('people', sa.Column('first_name'", "op.relax_old_not_null(",
               "op.create_sync_triggers(", "op.record_phase("):
        assert op in written, op
    assert written.split("op.create_sync_triggers(")[1].split(")\n")[0] == auto.split(
        "op.create_sync_triggers(")[1].split(")\n")[0]
    command.upgrade(project.config, "head")
    assert project.synced()


class TestDropRace:
    """A write of the old place that commits between the gate and the DROP."""

    def _at_step_4(self, engine: Engine, tmp_path: Path, sync_triggers: bool) -> Project:
        project = Project(tmp_path, engine, sync_triggers=sync_triggers)
        project.models("WRITE_BOTH")
        project.autogenerate()
        project.models("STOP_READ_OLD")
        project.autogenerate()
        project.models("STOP_WRITE_OLD", old=UNMAPPED)
        return project

    def _racing(self, monkeypatch: pytest.MonkeyPatch, project: Project, sql: str,
                outcome: list[str]) -> None:
        """Right after the gate, another connection writes the old place and commits."""
        from fourstep_sqla.alembic import ops

        gate = ops.drop_gate

        def gate_then_write(*args: Any) -> None:
            gate(*args)
            url = project.config.get_main_option("sqlalchemy.url")
            assert url is not None
            writer = create_engine(url, connect_args=_short_timeout(project.engine))
            try:
                with writer.begin() as conn:
                    conn.execute(text(sql))
                outcome.append("committed")
            except Exception as exc:  # SQLite: the drop holds the write lock
                outcome.append(f"refused: {type(exc).__name__}")
            finally:
                writer.dispose()

        monkeypatch.setattr(ops, "drop_gate", gate_then_write)

    @pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
    def test_carried_across_by_the_sync_triggers(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        project = self._at_step_4(engine, tmp_path, sync_triggers=True)
        outcome: list[str] = []
        self._racing(monkeypatch, project, "UPDATE people SET name = 'Ada King' WHERE id = 1",
                     outcome)
        if engine.dialect.name == "sqlite":
            project.autogenerate()
            assert outcome == ["refused: OperationalError"]  # it waited, then gave up
            assert project.rows()[0] == (1, "Ada", "Lovelace")
            return
        project.autogenerate()
        assert outcome == ["committed"]
        assert project.rows()[0] == (1, "Ada", "King")  # carried into the new place

    @pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
    def test_without_triggers_the_drop_refuses(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        project = self._at_step_4(engine, tmp_path, sync_triggers=False)
        outcome: list[str] = []
        self._racing(monkeypatch, project, "UPDATE people SET name = 'Ada King' WHERE id = 1",
                     outcome)
        if engine.dialect.name == "sqlite":
            project.autogenerate()
            assert outcome == ["refused: OperationalError"]
            assert project.rows()[0] == (1, "Ada", "Lovelace")
            return
        with pytest.raises(DropRefusedError) as refused:
            project.autogenerate()
        assert outcome == ["committed"]
        message = str(refused.value)
        assert "while the drop gate ran" in message and "(1,)" in message
        assert f"fourstep backfill {KEY} --repair" in message
        assert project.rows()[0] == (1, "Ada King", "Ada", "Lovelace")  # nothing dropped
        with engine.connect() as conn:  # the guard is gone again
            assert not [t for t in triggers_on(conn, "people", None) if "guard" in t]
        project.last.unlink()
        monkeypatch.undo()
        backfill(engine, get(KEY), repair=True)
        project.autogenerate()
        assert project.rows()[0] == (1, "Ada", "King")


def _short_timeout(engine: Engine) -> dict[str, Any]:
    return {"timeout": 1} if engine.dialect.name == "sqlite" else {}


@pytest.mark.mysql
@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_the_lifecycle_on_mariadb(mysql_db_engine: Engine, tmp_path: Path) -> None:
    """Step 1 to the drop and back on MariaDB, where DDL commits at once: the drop
    holds the table's write lock from DROP TRIGGER to DROP COLUMN."""
    engine = mysql_db_engine

    def clean() -> None:
        with engine.begin() as conn:
            for name in inspect(conn).get_table_names():
                if name in ("people", "alembic_version") or name.startswith("fourstep_"):
                    conn.exec_driver_sql(f"DROP TABLE `{name}`")

    clean()
    try:
        project = Project(tmp_path, engine)
        project.models("WRITE_BOTH")
        up, _ = project.autogenerate()
        assert "op.create_sync_triggers(" in up and "catch_errors=False" in up
        assert project.synced()
        project.run("UPDATE people SET name = 'Ada King' WHERE id = 1")
        project.run("INSERT INTO people (id, first_name, last_name) VALUES (4, 'Grace', 'H')")
        project.models("STOP_READ_OLD")
        project.autogenerate()
        step4 = project.models("STOP_WRITE_OLD", old=UNMAPPED)
        with Session(engine) as session:
            session.get(step4.Person, 3).full_name = ("Alan", "Turing")
            session.commit()
        assert project.rows() == [
            (1, "Ada King", "Ada", "King"),
            (2, "Cher", "Cher", None),
            (3, "Alan Turing", "Alan", "Turing"),
            (4, "Grace H", "Grace", "H"),
        ]
        result = verify(engine, get(KEY), record=False)
        assert result.synced and result.ok and result.lossy == 0
        project.autogenerate()
        assert project.rows() == [(1, "Ada", "King"), (2, "Cher", None), (3, "Alan", "Turing"),
                                  (4, "Grace", "H")]
        assert not project.synced()
        # made by every drop, guard or not: a drop run again after a kill (which
        # may need a guard) ends with the same tables
        assert "fourstep_guard" in inspect(engine).get_table_names()
        command.downgrade(project.config, "-1")
        assert project.synced()
        assert [r[:2] for r in project.rows()] == [
            (1, "Ada King"), (2, "Cher"), (3, "Alan Turing"), (4, "Grace H")
        ]
        command.downgrade(project.config, "base")
        assert project.rows()[0] == (1, "Ada King")
    finally:
        clean()


def _version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())


@pytest.mark.mysql
@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_revisions_stopped_after_a_committed_statement_run_again_on_mariadb(
    mysql_db_engine: Engine, tmp_path: Path
) -> None:
    """MariaDB commits each DDL statement at once: a process killed in the middle
    of a revision leaves what it did, and the revision runs again over it. The
    kill is played here by running by hand the statements that had committed,
    ``alembic_version`` left where it was: the step-4 revision after its DROP
    TRIGGERs, then after its DROP COLUMN, and the step-1 downgrade between its
    two DROP TRIGGERs."""
    engine = mysql_db_engine
    project = Project(tmp_path, engine)
    project.models("WRITE_BOTH")
    project.autogenerate()
    project.models("STOP_READ_OLD")
    project.autogenerate()
    project.models("STOP_WRITE_OLD", old=UNMAPPED)
    step4 = command.revision(project.config, message="step 4", autogenerate=True,
                             rev_id="r99_step4")
    assert step4 is not None and not isinstance(step4, list)
    assert "op.drop_old(" in Path(step4.path).read_text()
    step3 = _version(engine)

    slug_ = trigger_names(KEY, "mysql")[0].removesuffix("_ins")
    # killed after its DROP TRIGGERs, before its DROP COLUMN: the run again has no
    # triggers to carry late writes, so it installs a guard, and ends with the
    # tables an uninterrupted drop leaves (fourstep_guard, empty, included)
    for trigger in (f"{slug_}_ins", f"{slug_}_upd"):
        project.run(f"DROP TRIGGER `{trigger}`")
    command.upgrade(project.config, "head")
    assert _version(engine) == "r99_step4"
    with engine.connect() as conn:
        assert triggers_on(conn, "people", None) == set()
        assert conn.execute(text("SELECT count(*) FROM fourstep_guard")).scalar_one() == 0
    command.downgrade(project.config, "-1")
    assert project.synced()

    # killed right after the DROP (the triggers went before it, under the same lock)
    for trigger in (f"{slug_}_ins", f"{slug_}_upd"):
        project.run(f"DROP TRIGGER `{trigger}`")
    project.run("ALTER TABLE people DROP COLUMN name")
    assert _version(engine) == step3
    command.upgrade(project.config, "head")
    assert _version(engine) == "r99_step4"
    state = read_state(engine, KEY)
    assert state is not None and state.recorded_phase == 4
    assert [c["name"] for c in inspect(engine).get_columns("people")] == [
        "id", "first_name", "last_name"]

    # back to step 1, then its downgrade killed between its two DROP TRIGGERs
    command.downgrade(project.config, "-2")
    assert project.synced()
    project.run(f"DROP TRIGGER `{slug_}_ins`")
    command.downgrade(project.config, "base")
    with engine.connect() as conn:
        assert triggers_on(conn, "people", None) == set()
        assert {c["name"] for c in inspect(conn).get_columns("people")} == {"id", "name"}
    assert [r[:2] for r in project.rows()][:2] == [(1, "Ada Lovelace"), (2, "Cher")]


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_the_drop_names_rows_a_downgrade_would_read_differently(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    project = Project(tmp_path, engine)
    project.models("WRITE_BOTH")
    project.autogenerate()
    project.models("STOP_READ_OLD")
    project.autogenerate()
    step4 = project.models("STOP_WRITE_OLD", old=UNMAPPED)
    with Session(engine) as session:
        session.get(step4.Person, 2).full_name = ("Mary Ann", "Smith")
        session.commit()
    caplog.set_level(logging.WARNING, logger="fourstep_sqla.alembic")
    project.autogenerate()
    warned = [r.getMessage() for r in caplog.records if "forward(backward(new))" in r.getMessage()]
    assert len(warned) == 1 and "(2,)" in warned[0] and KEY in warned[0], caplog.text
    command.downgrade(project.config, "-1")
    assert project.rows()[1] == (2, "Mary Ann Smith", "Mary Ann", "Smith")


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_a_restore_that_failed_runs_again(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The downgrade of a drop, stopped after its column was added back: the next
    downgrade restores the values instead of failing on the existing column."""
    from fourstep_sqla.alembic import ops

    project = Project(tmp_path, engine)
    project.models("WRITE_BOTH")
    project.autogenerate()
    project.models("STOP_READ_OLD")
    project.autogenerate()
    project.models("STOP_WRITE_OLD", old=UNMAPPED)
    project.autogenerate()

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed during the restore")

    monkeypatch.setattr(ops, "backfill", killed)
    with pytest.raises(RuntimeError, match="killed"):
        command.downgrade(project.config, "-1")
    assert "name" in {c["name"] for c in inspect(engine).get_columns("people")}
    monkeypatch.undo()
    command.downgrade(project.config, "-1")
    assert [r[:2] for r in project.rows()] == [
        (1, "Ada Lovelace"), (2, "Cher"), (3, "Alan Mathison Turing")
    ]
    assert project.synced()


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_sqlite_drop_after_a_copy_that_was_stopped(sqlite_engine: Engine, tmp_path: Path) -> None:
    """A batch copy killed midway leaves _alembic_tmp_people; the next drop goes on."""
    project = Project(tmp_path, sqlite_engine)
    project.models("WRITE_BOTH")
    project.autogenerate()
    project.models("STOP_READ_OLD")
    project.autogenerate()
    project.run("CREATE TABLE _alembic_tmp_people (id INTEGER, first_name VARCHAR(40))")
    project.models("STOP_WRITE_OLD", old=UNMAPPED)
    project.autogenerate()
    assert project.rows() == [(1, "Ada", "Lovelace"), (2, "Cher", None),
                              (3, "Alan", "Mathison Turing")]
    assert not inspect(sqlite_engine).has_table("_alembic_tmp_people")


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_alembic_check_reports_pending_fourstep_operations(
    engine: Engine, tmp_path: Path
) -> None:
    from alembic.util import AutogenerateDiffsDetected

    project = Project(tmp_path, engine)
    for phase, old, expected in (
        ("WRITE_BOTH", MAPPED, ("add_fourstep_sync_triggers", "fourstep_relax_old_not_null")),
        ("STOP_READ_OLD", MAPPED, ("fourstep_backfill",)),
        ("STOP_WRITE_OLD", UNMAPPED, ("remove_fourstep_old_columns",)),
    ):
        project.models(phase, old=old)
        project.config.attributes["models"] = project.module.__name__
        with pytest.raises(AutogenerateDiffsDetected) as pending:
            command.check(project.config)
        message = str(pending.value)
        assert "New upgrade operations detected" in message
        for name in expected:
            assert name in message and KEY in message, message
        project.autogenerate()
        command.check(project.config)  # nothing left: no error


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_python_only_transforms_get_write_marks(engine: Engine, tmp_path: Path) -> None:
    """No SQL form, so no sync triggers: the write marks let the drop go ahead after
    step-4 code updated rows through the attribute, and still refuse a row an
    old-only writer left stale."""
    project = Project(tmp_path, engine)
    project.models("WRITE_BOTH", template=PYTHON_MODELS)
    up, down = project.autogenerate()
    assert "op.create_write_marks(" in up and "op.create_sync_triggers" not in up
    assert "op.drop_write_marks(" in down
    project.models("STOP_READ_OLD", template=PYTHON_MODELS)
    up, _ = project.autogenerate()
    assert "forward='trg_models_" in up and ":python_split'" in up
    step4 = project.models("STOP_WRITE_OLD", old=UNMAPPED, template=PYTHON_MODELS)
    with Session(engine) as session:  # step-4 code: the new place only
        session.get(step4.Person, 1).full_name = ("Augusta", "King")
        session.commit()
    project.run("UPDATE people SET name = 'Cher Bono' WHERE id = 2")  # a stale new place
    with pytest.raises(DropRefusedError) as refused:
        project.autogenerate()
    assert "(2,)" in str(refused.value) and "(1,)" not in str(refused.value)
    project.last.unlink()
    backfill(engine, get(KEY), repair=True)
    up, down = project.autogenerate()
    assert "sync_triggers=True" in down
    assert project.rows() == [(1, "Augusta", "King"), (2, "Cher", "Bono"),
                              (3, "Alan", "Mathison Turing")]
    command.downgrade(project.config, "-1")
    assert [r[:2] for r in project.rows()] == [
        (1, "Augusta King"), (2, "Cher Bono"), (3, "Alan Mathison Turing")
    ]
