"""Lock safety per migration, through every step as autogenerate writes it.

The application is a probe: a primary-key lookup every 10 ms on its own
connection, timing each one. Before each ``alembic upgrade`` / ``downgrade``
a long transaction starts that has read the table (it holds ACCESS SHARE
until it ends, 1.5 s later): every ``ALTER TABLE`` of the revision must wait
for it. A migration that queued its ACCESS EXCLUSIVE request behind it would
queue the probe too, for the whole 1.5 s; one that held a lock while waiting
for the next would do the same. With ``fourstep_sqla.alembic`` imported, the
probe's worst wait stays within about one ``lock_timeout`` (200 ms here), and
every revision succeeds once the blocker is gone.

The table has 1,000,000 rows, so a scan under an exclusive lock (the drop
gate, ``VALIDATE CONSTRAINT``) would show in the probe too.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, inspect, text

import fourstep_sqla.alembic  # noqa: F401
from fourstep_sqla.ddl import DDLLockTimeoutError
from fourstep_sqla.state import read_state
from fourstep_sqla.triggers import triggers_on

#: the probe times every wait of the application: run alone (make test)
pytestmark = pytest.mark.serial

TEMPLATE = Path(command.__file__).parent / "templates" / "generic" / "script.py.mako"
LOCK_MS = 200
ROWS = 1_000_000

ENV_PY = '''
import importlib
import sys

from alembic import context
from sqlalchemy import create_engine

import fourstep_sqla.alembic  # noqa: F401

config = context.config
sys.path.insert(0, config.get_main_option("models_path"))
models = importlib.import_module(
    config.attributes.get("models") or config.get_main_option("models")
)
engine = create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        transaction_per_migration=True,
        **config.attributes.get("configure", {}),
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

MODELS = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased
from fourstep_sqla.attribute import forward_index


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

{extra}
'''

MAPPED = 'legacy_name: Mapped[str | None] = mapped_column("name", String(80), index=True)'
UNMAPPED = 'legacy_name: Unmapped[str | None] = unmapped_column("name", String(80), index=True)'
FORWARD_INDEX = "forward_index(User.full_name)"


class Project:
    """An Alembic project whose models module moves through the steps."""

    def __init__(self, tmp_path: Path, engine: Engine, **configure: Any) -> None:
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
        self.config.attributes["configure"] = configure
        self.count = 0
        self.token = secrets.token_hex(4)  # fresh models modules: never from sys.modules

    def models(self, phase: str, old: str = MAPPED, extra: str = "",
               template: str = MODELS) -> None:
        self.count += 1
        name = f"lock_models_{self.token}_{self.count}"
        (self.models_dir / f"{name}.py").write_text(
            template.format(phase=phase, old=old, extra=extra)
        )
        self.config.attributes["models"] = name

    def ini(self) -> Path:
        """An ``alembic.ini`` for the command line, at the current models."""
        url = (self.config.get_main_option("sqlalchemy.url") or "").replace("%", "%%")
        ini = self.dir.parent / "alembic.ini"
        ini.write_text(
            "[alembic]\n"
            f"script_location = {self.dir}\n"
            f"sqlalchemy.url = {url}\n"
            f"models_path = {self.models_dir}\n"
            f"models = {self.config.attributes['models']}\n"
            "[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\n"
            "keys = generic\n[logger_root]\nlevel = WARNING\nhandlers = console\n"
            "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\n"
            "level = NOTSET\nformatter = generic\n[formatter_generic]\n"
            "format = %%(levelname)s %%(message)s\n"
        )
        return ini

    def revision(self) -> str:
        """Autogenerate the next revision (not applied); its ``upgrade()`` body."""
        script = command.revision(self.config, message=f"step {self.count}",
                                  autogenerate=True, rev_id=f"r{self.count:02d}")
        assert script is not None and not isinstance(script, list)
        body = Path(script.path).read_text()
        return body.split("def upgrade() -> None:")[1].split("def downgrade")[0]


class Probe(threading.Thread):
    """The application: a point lookup every 10 ms, timed."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(text("SELECT id FROM users WHERE id = 4242")).all()
                conn.commit()
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.01)

    def worst_since(self, mark: int) -> float:
        return max(self.latencies[mark:], default=0.0)


def _waiting_on(engine: Engine, blocker: str | None) -> bool:
    """Some lock request waits on ``users`` (the migration's, or a query queued
    behind it), or (PostgreSQL) for the ``blocker`` transaction to end, as a
    concurrent index build does."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            found = conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted "
                "AND (relation = to_regclass('users') "
                "OR (locktype = 'virtualxid' AND virtualxid = :blocker))"
            ), {"blocker": blocker}).scalar_one()
        else:
            found = conn.execute(text(
                "SELECT count(*) FROM information_schema.PROCESSLIST "
                "WHERE DB = DATABASE() AND STATE LIKE 'Waiting for table metadata lock%'"
            )).scalar_one()
    return bool(found)


def _under_a_blocker(engine: Engine, probe: Probe, migrate: Callable[[], None],
                     hold: float = 1.5) -> tuple[float, bool]:
    """Run ``migrate`` while a long transaction holds ACCESS SHARE on the table: it
    ends ``hold`` seconds after the migration is first seen waiting for a lock
    (however long the migration takes to get there), or when the migration ends
    without waiting. The probe's worst wait meanwhile, and whether it waited."""
    blocker = engine.connect()
    blocker.execute(text("SELECT id FROM users WHERE id = 1")).all()
    vxid = None
    if engine.dialect.name == "postgresql":
        vxid = blocker.execute(text(
            "SELECT virtualxid FROM pg_locks WHERE locktype = 'virtualxid' "
            "AND pid = pg_backend_pid()"
        )).scalar_one()
    mark = len(probe.latencies)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            migrate()
        except BaseException as exc:
            failed.append(exc)

    migration = threading.Thread(target=run)
    migration.start()
    waited = False
    try:
        deadline = time.monotonic() + 120
        while migration.is_alive() and time.monotonic() < deadline:
            if _waiting_on(engine, vxid):
                waited = True
                migration.join(hold)
                break
            time.sleep(0.01)
    finally:
        blocker.rollback()
        blocker.close()
        migration.join()
    if failed:
        raise failed[0]
    time.sleep(0.05)
    return probe.worst_since(mark), waited


def _fill(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text(
            "INSERT INTO users (id, name) SELECT g, 'First' || g || ' Last' || g "
            "FROM generate_series(1, :n) AS g"
        ), {"n": ROWS})
        conn.execute(text("CREATE INDEX ix_users_name ON users (name)"))
        conn.execute(text("ANALYZE users"))


def _indexes(engine: Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        return {
            r[0]: bool(r[1])
            for r in conn.execute(text(
                "SELECT c.relname, i.indisvalid FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = 'users'::regclass AND NOT i.indisprimary"
            ))
        }


def _row(engine: Engine, key: int) -> tuple[Any, ...]:
    present = {c["name"] for c in inspect(engine).get_columns("users")}
    columns = [c for c in ("id", "name", "first_name", "last_name") if c in present]
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT {', '.join(columns)} FROM users WHERE id = :k"),
                           {"k": key}).one()
    return tuple(row)


def _check_clean(project: Project) -> None:
    command.check(project.config)  # raises when autogenerate would write anything


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_every_step_and_its_downgrade_waits_politely(
    pg_schema_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fourstep_sqla")
    engine = pg_schema_engine
    _fill(engine)
    project = Project(tmp_path, engine, fourstep_lock_timeout_ms=LOCK_MS,
                      fourstep_lock_retries=30)
    probe = Probe(engine)
    probe.start()
    worst: dict[str, float] = {}
    waited: dict[str, bool] = {}
    steps = [
        ("WRITE_BOTH", MAPPED, ""),
        ("READ_NEW", MAPPED, FORWARD_INDEX),
        ("STOP_READ_OLD", MAPPED, FORWARD_INDEX),
        ("STOP_WRITE_OLD", UNMAPPED, FORWARD_INDEX),  # the model keeps the forward index
    ]
    try:
        for phase, old, extra in steps:
            project.models(phase, old, extra)
            upgrade = project.revision()
            if phase == "READ_NEW":
                assert "postgresql_concurrently=True" in upgrade, upgrade
                assert "op.record_phase(" in upgrade
            worst[f"up {phase}"], waited[f"up {phase}"] = _under_a_blocker(
                engine, probe, lambda: command.upgrade(project.config, "head"))
            _check_clean(project)
        assert read_state(engine, "users.full_name").recorded_phase == 4
        assert _row(engine, 4242) == (4242, "First4242", "Last4242")
        assert "ix_users_name" not in _indexes(engine)
        for target in ("r03", "r02", "r01", "base"):
            worst[f"down to {target}"], waited[f"down to {target}"] = _under_a_blocker(
                engine, probe, lambda t=target: command.downgrade(project.config, t))  # type: ignore[misc]
            if target == "r03":  # the drop undone: the old column and its indexes are back
                assert _row(engine, 4242) == (4242, "First4242 Last4242", "First4242",
                                              "Last4242")
                assert _indexes(engine) == {"ix_users_name": True,
                                            "ix_users_full_name_forward": True}
            if target == "r01":
                assert _indexes(engine) == {"ix_users_name": True}
    finally:
        probe.stop.set()
        probe.join()
    assert _row(engine, 4242) == (4242, "First4242 Last4242")
    columns = {c["name"]: c for c in inspect(engine).get_columns("users")}
    assert not columns["name"]["nullable"]
    assert read_state(engine, "users.full_name").recorded_phase == 0
    # each revision did wait for the blocker (it retried), and never held the probe
    # for longer than about one lock_timeout
    assert any("retry" in r.getMessage() for r in caplog.records)
    # every migration with an ALTER on the table waited for the blocker, and so did
    # the concurrent index drop (down to r01), under a lock the probe never waits
    # for; the concurrent build (step 2), the backfill and its reverse never wait
    # for an idle reader
    assert waited == {
        "up WRITE_BOTH": True, "up READ_NEW": False, "up STOP_READ_OLD": False,
        "up STOP_WRITE_OLD": True, "down to r03": True, "down to r02": False,
        "down to r01": True, "down to base": True,
    }, waited
    print("worst probe wait per migration (s):", worst)
    assert max(worst.values()) < (LOCK_MS + 250) / 1000, worst


@pytest.mark.postgres
def test_without_lock_safety_the_probe_waits_for_the_blocker(
    pg_schema_engine: Engine, tmp_path: Path
) -> None:
    """The control: the same step-1 revision with the lock safety turned off queues
    the probe behind the blocker, so the test above can tell."""
    engine = pg_schema_engine
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text("INSERT INTO users (id, name) VALUES (4242, 'Ada Lovelace')"))
    project = Project(tmp_path, engine, fourstep_lock_safety=False)
    project.models("WRITE_BOTH")
    project.revision()
    probe = Probe(engine)
    probe.start()
    try:
        stalled, waited = _under_a_blocker(
            engine, probe, lambda: command.upgrade(project.config, "head"), hold=1.0)
    finally:
        probe.stop.set()
        probe.join()
    assert waited and stalled > 0.7, stalled


@pytest.mark.postgres
def test_a_revision_fails_clearly_and_whole_after_its_retries(
    pg_schema_engine: Engine, tmp_path: Path
) -> None:
    engine = pg_schema_engine
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text("INSERT INTO users (id, name) VALUES (4242, 'Ada Lovelace')"))
    project = Project(tmp_path, engine, fourstep_lock_timeout_ms=100, fourstep_lock_retries=2)
    project.models("WRITE_BOTH")
    project.revision()
    blocker = engine.connect()
    blocker.execute(text("SELECT * FROM users")).all()
    try:
        with pytest.raises(DDLLockTimeoutError, match="after 2 retries") as caught:
            command.upgrade(project.config, "head")
    finally:
        blocker.close()
    message = str(caught.value)
    assert "Nothing of this revision was applied" in message
    assert "ADD COLUMN" in message
    # whole: no column, no trigger, no recorded phase, no version
    assert {c["name"] for c in inspect(engine).get_columns("users")} == {"id", "name"}
    assert read_state(engine, "users.full_name") is None
    if inspect(engine).has_table("alembic_version"):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 0
    command.upgrade(project.config, "head")  # and once the blocker is gone it goes through
    assert read_state(engine, "users.full_name").recorded_phase == 1


TWO_ATTRIBUTES = '''
from sqlalchemy import Integer, String
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
    score: Mapped[int | None] = mapped_column(Integer)
    full_name = phased(
        old="legacy_name", new=("first_name", "last_name"),
        forward=Transform.split(" "), backward=Transform.join(" "), phase=Phase.{phase},
    )
    points = phased(
        old="legacy_score", new="score",
        forward=Transform.cast(int, Integer()), backward=Transform.cast(str, String()),
        phase=Phase.{phase},
    )
'''


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_every_drop_gate_runs_before_the_first_ddl(every_engine: Engine, tmp_path: Path) -> None:
    """Two phased attributes of one table at step 4: both gates scan before either
    DROP, so neither scans under the other's exclusive lock; then each drop's DDL
    runs whole, one after the other (on MariaDB the second one used to run inside
    the first one's LOCK TABLES)."""
    engine = every_engine
    project = Project(tmp_path, engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, "
                          "name VARCHAR(80), score_text VARCHAR(20))"))
        conn.execute(text("INSERT INTO users VALUES (1, 'Ada Lovelace', '12'), (2, 'Cher', '7')"))

    def models(phase: str, old: str) -> None:
        project.count += 1
        name = f"two_models_{project.token}_{project.count}"
        (project.models_dir / f"{name}.py").write_text(TWO_ATTRIBUTES.format(phase=phase, old=old))
        project.config.attributes["models"] = name

    mapped = ('legacy_name: Mapped[str | None] = mapped_column("name", String(80))\n'
              '    legacy_score: Mapped[str | None] = mapped_column("score_text", String(20))')
    unmapped = ('legacy_name: Unmapped[str | None] = unmapped_column("name", String(80))\n'
                '    legacy_score: Unmapped[str | None] = unmapped_column("score_text", '
                'String(20))')
    for phase in ("WRITE_BOTH", "STOP_READ_OLD"):
        models(phase, mapped)
        project.revision()
        command.upgrade(project.config, "head")
    models("STOP_WRITE_OLD", unmapped)
    upgrade = project.revision()
    assert upgrade.count("op.drop_old(") == 2
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        command.upgrade(project.config, "head")
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    first_ddl = next(i for i, s in enumerate(statements)
                     if s.upper().startswith(("ALTER TABLE", "DROP TRIGGER", "DROP INDEX",
                                              "CREATE TABLE _ALEMBIC_TMP")))
    gates = [i for i, s in enumerate(statements)
             if s.upper().startswith("SELECT") and "users" in s and "score_text" in s]
    gates += [i for i, s in enumerate(statements)
              if s.upper().startswith("SELECT") and "users" in s and " name" in s
              and "score_text" not in s]
    assert gates and max(gates) < first_ddl, "\n".join(
        f"{i} {s[:100]}" for i, s in enumerate(statements))
    assert {c["name"] for c in inspect(engine).get_columns("users")} == {
        "id", "first_name", "last_name", "score"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, first_name, last_name, score FROM users "
                                 "ORDER BY id")).all() == [(1, "Ada", "Lovelace", 12),
                                                          (2, "Cher", None, 7)]


def test_two_upgrades_at_once_take_turns(server_engine: Engine, tmp_path: Path) -> None:
    """Two deploys run ``alembic upgrade head`` at the same moment: the second waits
    for the first (PostgreSQL's advisory lock, MariaDB's GET_LOCK), says so, then
    finds the database at head."""
    engine = server_engine
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        if engine.dialect.name == "mysql":
            conn.exec_driver_sql("SET SESSION max_recursive_iterations = 200001")
            conn.execute(text(
                "INSERT INTO users (id, name) WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL "
                "SELECT g + 1 FROM s WHERE g < 200000) SELECT g, concat('A', g, ' B', g) FROM s"
            ))
        else:
            conn.execute(text("INSERT INTO users (id, name) SELECT g, 'A' || g || ' B' || g "
                              "FROM generate_series(1, 200000) AS g"))
    project = Project(tmp_path, engine)
    project.models("WRITE_BOTH")
    project.revision()
    command.upgrade(project.config, "head")
    project.models("STOP_READ_OLD")
    project.revision()
    # two processes, as two deploys would be (Alembic's op and context are process-wide)
    ini = project.ini()
    alembic = str(Path(sys.executable).parent / "alembic")
    runs = []
    for _ in range(2):
        runs.append(subprocess.Popen([alembic, "-c", str(ini), "upgrade", "head"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))
        time.sleep(0.3)
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    # whichever started second (process start-up order is not ours to pick) waited
    assert sum("another migration run is in progress" in o for o in outputs) == 1, outputs
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE first_name IS NULL")
                            ).scalar_one() == 0
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "r02"


@pytest.mark.mysql
@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_mariadb_waits_with_a_short_lock_wait_timeout(
    mysql_db_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MariaDB queues reads behind an ALTER waiting for its metadata lock too:
    ``lock_wait_timeout`` is 1 s for the run (not a day) and the operation is
    retried, so the probe waits about a second, not as long as the blocker."""
    caplog.set_level(logging.WARNING, logger="fourstep_sqla")
    engine = mysql_db_engine
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text("INSERT INTO users (id, name) VALUES (4242, 'Ada Lovelace'), "
                          "(1, 'Grace Hopper')"))
    project = Project(tmp_path, engine)
    project.models("WRITE_BOTH")
    project.revision()
    probe = Probe(engine)
    probe.start()
    try:
        worst, waited = _under_a_blocker(
            engine, probe, lambda: command.upgrade(project.config, "head"), hold=3.5)
    finally:
        probe.stop.set()
        probe.join()
    assert waited and any("retry" in r.getMessage() for r in caplog.records)
    assert worst < 1.6, worst
    assert read_state(engine, "users.full_name").recorded_phase == 1
    assert _row(engine, 4242) == (4242, "Ada Lovelace", None, None)  # step 1 fills nothing


@pytest.mark.mysql
@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_mariadb_runs_a_revision_stopped_midway_again(
    mysql_db_engine: Engine, tmp_path: Path
) -> None:
    """DDL commits at once on MariaDB: a step-1 downgrade killed after some of its
    operations left them done, and the revision runs again from its start over
    them (PostgreSQL and SQLite roll the whole revision back instead)."""
    engine = mysql_db_engine
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text("INSERT INTO users (id, name) VALUES (1, 'Ada Lovelace')"))
    project = Project(tmp_path, engine)
    project.models("WRITE_BOTH")
    project.revision()
    command.upgrade(project.config, "head")
    # what the downgrade had done when it was stopped: dropped the triggers (and the
    # NOT NULL came back), then dropped one of the new columns
    with engine.begin() as conn:
        triggers = sorted(triggers_on(conn, "users", None))
        assert triggers
        for name in triggers:
            conn.exec_driver_sql(f"DROP TRIGGER `{name}`")
        conn.exec_driver_sql("ALTER TABLE users DROP COLUMN last_name")

    command.downgrade(project.config, "base")

    assert [c["name"] for c in inspect(engine).get_columns("users")] == ["id", "name"]
    assert _row(engine, 1) == (1, "Ada Lovelace")
    assert not inspect(engine).get_columns("users")[1]["nullable"]
