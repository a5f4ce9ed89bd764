"""``flask fourstep`` beside ``flask db``: a Flask app carried through the four steps.

Every test writes a Flask application into its ``tmp_path`` as the Flask
tutorial lays one out: a package ``flaskr`` with an app factory
``create_app()``, Flask-SQLAlchemy's ``db`` and Flask-Migrate's ``migrate``
(``transaction_per_migration=True``), and ``flaskr/models.py``, rewritten for
each release. A release is a fresh import of the package (the modules of the
previous one are dropped from ``sys.modules``), as a deploy starts new
processes. The app is driven the way its developers drive it: ``flask db
init|migrate|upgrade|downgrade`` and ``flask fourstep ...`` through
``app.test_cli_runner()``, once through a real ``flask --app flaskr``
subprocess, and its own code writes and reads through ``db.session`` and
``Model.query``. No ``FOURSTEP_*`` variable is set anywhere: the commands take
the database, the models and the migrations directory from the app.

Two model styles: the classic ``db.Model`` with ``db.Column`` and
``SQLAlchemy(model_class=Base)`` with ``Mapped[...]`` annotations. On
PostgreSQL every test has its own schema, which the app's
``SQLALCHEMY_DATABASE_URI`` selects with ``?options=-csearch_path%3D<schema>``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import Result
from conftest import ENGINE_PARAMS
from flask import Flask
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fourstep_sqla import Phase, Transform, phased, registry
from fourstep_sqla.flask import fourstep

KEY = "users.full_name"

APP = '''
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
{base}

migrate = Migrate()


def create_app(test_config=None):
    app = Flask(__name__)
    app.config.from_mapping(SQLALCHEMY_DATABASE_URI={url!r})
    if test_config is not None:
        app.config.update(test_config)
    db.init_app(app)
    migrate.init_app(app, db, transaction_per_migration=True)

    from . import models  # noqa: F401

    return app
'''

CLASSIC_BASE = "\ndb = SQLAlchemy()\n"
TYPED_BASE = '''
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
'''

# the classic Flask-SQLAlchemy style: db.Model, db.Column
CLASSIC_STEP_0 = '''
from . import db


class User(db.Model):
    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)
'''

CLASSIC_PHASED = '''
from sqlalchemy.orm import Unmapped, unmapped_column

from fourstep_sqla import Phase, Transform, phased

from . import db


class User(db.Model):
    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    {old}
    first_name = db.Column(db.String(40))
    last_name = db.Column(db.String(40))

    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.{phase},
    )
'''
CLASSIC_MAPPED = 'legacy_name = db.Column("name", db.String(80), nullable=False)'
CLASSIC_UNMAPPED = 'legacy_name: Unmapped[str | None] = unmapped_column("name", db.String(80))'

# SQLAlchemy 2 style: SQLAlchemy(model_class=Base), Mapped[...] annotations
TYPED_STEP_0 = '''
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from . import db


class User(db.Model):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
'''

TYPED_PHASED = '''
from sqlalchemy import String
from sqlalchemy.orm import Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased

from . import db


class User(db.Model):
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
TYPED_MAPPED = 'legacy_name: Mapped[str] = mapped_column("name", String(80))'
TYPED_UNMAPPED = 'legacy_name: Unmapped[str | None] = unmapped_column("name", String(80))'

STYLES = {
    "classic": (CLASSIC_BASE, CLASSIC_STEP_0, CLASSIC_PHASED, CLASSIC_MAPPED, CLASSIC_UNMAPPED),
    "typed": (TYPED_BASE, TYPED_STEP_0, TYPED_PHASED, TYPED_MAPPED, TYPED_UNMAPPED),
}
PHASES = {1: "WRITE_BOTH", 2: "READ_NEW", 3: "STOP_READ_OLD", 4: "STOP_WRITE_OLD"}

FLASK = Path(sys.executable).parent / "flask"

# Flask-Migrate's env.py template calls db.get_engine() first, which
# Flask-SQLAlchemy 3.1 deprecates: the template's own business
pytestmark = pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")


# -- the application ---------------------------------------------------------------------
@dataclass
class Database:
    dialect: str
    engine: Engine  # the test's own look at the same database (and schema)
    url: str  # the app's SQLALCHEMY_DATABASE_URI


@pytest.fixture(params=ENGINE_PARAMS)
def database(request: pytest.FixtureRequest) -> Database:
    if request.param in ("sqlite", "mariadb"):
        engine: Engine = request.getfixturevalue(
            "sqlite_engine" if request.param == "sqlite" else "mysql_db_engine"
        )
        return Database(request.param, engine, engine.url.render_as_string(hide_password=False))
    engine = request.getfixturevalue("pg_schema_engine")
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    url = engine.url.update_query_dict({"options": f"-csearch_path={schema}"})
    return Database("postgresql", engine, url.render_as_string(hide_password=False))


@pytest.fixture
def sqlite_database(sqlite_engine: Engine) -> Database:
    url = sqlite_engine.url.render_as_string(hide_password=False)
    return Database("sqlite", sqlite_engine, url)


@pytest.fixture(autouse=True)
def _process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What running apps in this process changes, put back afterwards: the
    registry of phased attributes, the ``flaskr`` modules, and the loggers
    (Flask-Migrate's env.py calls ``logging.config.fileConfig()``, which
    disables every logger that exists already)."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    loggers = [logging.getLogger(), *(
        logger for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    )]
    saved = [(lg, lg.disabled, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for lg, disabled, level, propagate, handlers in saved:
        lg.disabled, lg.level, lg.propagate, lg.handlers = disabled, level, propagate, handlers
    _forget_flaskr()


def _forget_flaskr() -> None:
    for name in [n for n in sys.modules if n == "flaskr" or n.startswith("flaskr.")]:
        del sys.modules[name]


class FlaskProject:
    """A Flask project in ``tmp_path`` (the current directory), one release at a time."""

    def __init__(self, tmp_path: Path, db: Database, style: str,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp_path
        self.db = db
        self.base, self.step0, self.phased, self.mapped, self.unmapped = STYLES[style]
        self.package = tmp_path / "flaskr"
        self.package.mkdir()
        (self.package / "__init__.py").write_text(APP.format(base=self.base, url=db.url))
        monkeypatch.chdir(tmp_path)  # where a Flask developer runs `flask db ...`
        monkeypatch.syspath_prepend(str(tmp_path))
        self.apps: list[tuple[Flask, Any]] = []
        self.module: ModuleType | None = None
        self.app: Flask | None = None

    def release(self, step: int) -> Flask:
        """The app of ``step`` (0: before the change), freshly imported."""
        if step == 0:
            models = self.step0
        else:
            old = self.unmapped if step == 4 else self.mapped
            models = self.phased.format(old=old, phase=PHASES[step])
        (self.package / "models.py").write_text(models)
        _forget_flaskr()
        import flaskr  # type: ignore[import-not-found]

        self.module = flaskr
        app: Flask = flaskr.create_app()
        self.apps.append((app, flaskr.db))
        self.app = app
        return app

    @property
    def db_ext(self) -> Any:
        assert self.module is not None
        return self.module.db

    @property
    def models(self) -> Any:
        assert self.module is not None
        return self.module.models

    def flask(self, *args: str) -> Result:
        """``flask ARGS`` for the current release, in this process."""
        assert self.app is not None
        if args[0] == "fourstep":
            return self.app.test_cli_runner().invoke(fourstep, list(args[1:]))
        return self.app.test_cli_runner().invoke(args=list(args))

    def ok(self, *args: str) -> Result:
        result = self.flask(*args)
        assert result.exit_code == 0, show(args, result)
        return result

    def migrate(self, message: str) -> str:
        """``flask db migrate``: the text of the revision autogenerate wrote."""
        before = set(self.versions())
        self.ok("db", "migrate", "-m", message)
        (written,) = set(self.versions()) - before
        return written.read_text()

    def versions(self) -> list[Path]:
        return sorted((self.root / "migrations" / "versions").glob("*.py"))

    def init(self) -> None:
        """``flask db init``, then the one line fourstep asks of env.py."""
        self.ok("db", "init")
        env = self.root / "migrations" / "env.py"
        source = env.read_text()
        assert "from flask import current_app" in source  # Flask-Migrate's own template
        env.write_text(source.replace(
            "from alembic import context\n",
            "from alembic import context\n\nimport fourstep_sqla.alembic  # noqa: F401\n",
        ))

    def rows(self) -> dict[int, tuple[Any, ...]]:
        """``id -> (name, first_name, last_name)`` as stored (None where no such column)."""
        present = self.columns()
        listed = ", ".join(c if c in present else "NULL"
                           for c in ("name", "first_name", "last_name"))
        with self.db.engine.connect() as conn:
            found = conn.execute(text(f"SELECT id, {listed} FROM users ORDER BY id")).all()
        return {row[0]: tuple(row[1:]) for row in found}

    def columns(self) -> set[str]:
        with self.db.engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns("users")}

    def close(self) -> None:
        for app, db in self.apps:
            with app.app_context():
                db.engine.dispose()


def show(args: tuple[str, ...] | list[str], result: Result) -> str:
    return (
        f"flask {' '.join(args)} -> {result.exit_code}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}\nexception: {result.exception!r}"
    )


def events(output: str, kind: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [e for e in found if e.get("event") == kind]


def one(output: str, kind: str) -> dict[str, Any]:
    (found,) = events(output, kind)
    return found


@pytest.fixture
def project_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    made: list[FlaskProject] = []

    def make(db: Database, style: str) -> FlaskProject:
        project = FlaskProject(tmp_path, db, style, monkeypatch)
        made.append(project)
        return project

    yield make
    for project in made:
        project.close()


def split(name: str | None) -> tuple[str | None, str | None]:
    if name is None:
        return None, None
    first, _, last = name.partition(" ")
    return first or None, last or None


NAMES = [f"First{i} Last{i}" for i in range(1, 41)] + ["Ada Lovelace", "Solo"]


def step_0(project: FlaskProject) -> dict[str, int]:
    """Before the change: ``flask db init|migrate|upgrade`` and the app's rows."""
    app = project.release(0)
    project.init()
    assert "op.create_table('users'" in project.migrate("users")
    project.ok("db", "upgrade")
    with app.app_context():
        project.db_ext.session.add_all([project.models.User(name=n) for n in NAMES])
        project.db_ext.session.commit()
    rows = project.rows()
    assert sorted(name for name, _, _ in rows.values()) == sorted(NAMES)
    return {name: i for i, (name, _, _) in rows.items()}


def env_without_fourstep() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FOURSTEP_", "FLASK_"))}
    env.pop("PYTHONPATH", None)
    return env


# -- the four steps ------------------------------------------------------------------------
def test_four_steps_with_flask_db_migrate_and_flask_fourstep(
    database: Database, project_factory: Any
) -> None:
    """The classic ``db.Model`` carried through the four steps, every revision
    written by ``flask db migrate`` and applied by ``flask db upgrade``; status,
    backfill and verify through ``flask fourstep``; the rows checked at each step."""
    project: FlaskProject = project_factory(database, "classic")
    ids = step_0(project)
    before = dict(project.rows())

    # step 1: write both; the new columns, the old NOT NULL relaxed, the sync triggers
    app = project.release(1)
    body = project.migrate("write both")
    for op in ("add_column(sa.Column('first_name'", "op.relax_old_not_null(",
               "op.create_sync_triggers(", "op.record_phase("):
        assert op in body, body
    project.ok("db", "upgrade")
    User = project.models.User
    with app.app_context():
        project.db_ext.session.add(User(full_name=("Grace", "Hopper")))
        project.db_ext.session.commit()
    with database.engine.begin() as conn:  # the previous release, still running
        conn.execute(text("INSERT INTO users (id, name) VALUES (1000, 'Alan Turing')"))
    rows = project.rows()
    for i, stored in before.items():
        assert rows[i] == (stored[0], None, None)  # not backfilled yet
    grace = next(i for i, row in rows.items() if row[0] == "Grace Hopper")
    assert rows[grace] == ("Grace Hopper", "Grace", "Hopper")  # the ORM wrote both
    assert rows[1000] == ("Alan Turing", "Alan", "Turing")  # the triggers filled the new
    status = one(project.ok("fourstep", "status").stdout, "status")
    assert (status["key"], status["phase_number"], status["recorded_phase"]) == (KEY, 1, 1)
    assert status["rows_pending"] == len(NAMES) and status["sync_triggers"] is True

    # step 2: read new, falling back to the old
    app = project.release(2)
    body = project.migrate("read new")
    assert "op.record_phase(" in body and "phase=2" in body, body
    project.ok("db", "upgrade")
    User = project.models.User
    with app.app_context():
        ada = User.query.filter(User.full_name == ("Ada", "Lovelace")).one()
        assert ada.id == ids["Ada Lovelace"] and ada.full_name == ("Ada", "Lovelace")
    status = one(project.ok("fourstep", "status", KEY).stdout, "status")
    assert (status["phase_number"], status["recorded_phase"]) == (2, 2)

    # step 3: backfill (`flask fourstep backfill` first, as CI runs it), verify
    app = project.release(3)
    body = project.migrate("backfill")
    assert "op.backfill(" in body, body
    dry = one(project.ok("fourstep", "backfill", "--dry-run").stdout, "done")
    assert dry["dry_run"] is True and dry["rows_left"] == len(NAMES)
    assert project.rows() == rows  # a dry run writes nothing
    done = one(project.ok("fourstep", "backfill", "--batch-size", "7", "--target-ms", "0")
               .stdout, "done")
    assert done["key"] == KEY and done["rows_updated"] == len(NAMES) and done["complete"]
    assert done["batches"] >= 6
    rows = project.rows()
    assert all((first, last) == split(name) for name, first, last in rows.values()), rows
    checked = one(project.ok("fourstep", "verify").stdout, "verify")
    assert checked["ok"] is True and checked["missing"] == checked["mismatched"] == 0
    assert checked["total"] == len(rows)
    # the real command line: the entry point, the app found with --app, no FOURSTEP_*
    real = subprocess.run(
        [str(FLASK), "--app", "flaskr", "fourstep", "status"], cwd=project.root,
        env=env_without_fourstep(), capture_output=True, text=True, timeout=120,
    )
    assert real.returncode == 0, real.stderr
    status = one(real.stdout, "status")
    assert (status["key"], status["phase_number"], status["rows_pending"]) == (KEY, 3, 0)
    assert status["verify_ok"] is True and status["rows_total"] == len(rows)
    project.ok("db", "upgrade")  # op.backfill: nothing left
    assert project.rows() == rows
    status = one(project.ok("fourstep", "status").stdout, "status")
    assert status["recorded_phase"] == 3
    with app.app_context():
        hopper = project.models.User.query.filter_by(first_name="Grace").one()
        assert hopper.full_name == ("Grace", "Hopper") and hopper.id == grace

    # step 4: the release that stops writing the old column, then the drop
    app = project.release(4)
    with app.app_context():
        project.db_ext.session.add(project.models.User(full_name=("Katherine", "Johnson")))
        project.db_ext.session.commit()
    rows = project.rows()
    (katherine,) = [i for i, row in rows.items() if row[1] == "Katherine"]
    assert rows[katherine] == ("Katherine Johnson", "Katherine", "Johnson")  # triggers
    body = project.migrate("drop old")
    assert "op.drop_old(" in body, body
    project.ok("db", "upgrade")
    assert "name" not in project.columns()
    after = project.rows()
    assert {i: (first, last) for i, (_, first, last) in after.items()} == {
        i: (first, last) for i, (_, first, last) in rows.items()
    }
    status = one(project.ok("fourstep", "status").stdout, "status")
    assert status["note"] == "old column(s) dropped" and status["recorded_phase"] == 4
    assert one(project.ok("fourstep", "verify").stdout, "verify")["dropped"] is True

    # and back: the downgrade past the drop restores every old value
    project.ok("db", "downgrade")
    assert project.rows() == rows


def test_flask_fourstep_revision_lands_in_flask_migrate_directory(
    database: Database, project_factory: Any
) -> None:
    """``flask fourstep revision --step N KEY`` writes into the app's Flask-Migrate
    directory, through its env.py in the app context; ``flask db upgrade`` applies
    it; autogenerate then finds nothing left to do. ``SQLAlchemy(model_class=Base)``."""
    project: FlaskProject = project_factory(database, "typed")
    step_0(project)
    before = dict(project.rows())
    for step in (1, 2, 3):
        project.release(step)
        written = project.ok("fourstep", "revision", "--step", str(step), KEY,
                             "-m", f"fourstep step {step}")
        event = one(written.stdout, "revision")
        path = Path(event["path"])
        assert (event["key"], event["step"]) == (KEY, step)
        assert path.parent == project.root / "migrations" / "versions"
        body = path.read_text()
        assert "import fourstep_sqla.alembic" in body
        expected = {1: "op.create_sync_triggers(", 2: "op.record_phase(", 3: "op.backfill("}
        assert expected[step] in body, body
        if step == 3:  # nothing backfilled yet: the guard says so
            checked = project.flask("fourstep", "status", "--check")
            assert checked.exit_code == 1, show(["fourstep", "status", "--check"], checked)
        project.ok("db", "upgrade")
        if step < 3:
            assert project.rows() == {i: (name, None, None) for i, (name, _, _) in
                                      before.items()}
    rows = project.rows()
    assert rows == {i: (name, *split(name)) for i, (name, _, _) in before.items()}
    checked = project.ok("fourstep", "status", "--check")
    assert one(checked.stdout, "check")["ok"] is True
    assert one(checked.stdout, "status")["recorded_phase"] == 3
    # autogenerate agrees: nothing left to write for step 3. A new process, as
    # `flask db migrate` is: Flask-Migrate's env.py keeps the hook that drops an
    # empty revision in the app's configure_args, bound to its first run's options
    project.release(3)
    count = len(project.versions())
    project.ok("db", "migrate", "-m", "nothing")
    assert len(project.versions()) == count


# -- what is said when something is wrong ---------------------------------------------------
def foreign_model() -> str:
    """A phased attribute on a model of its own Base, outside the app; its key."""

    class OtherBase(DeclarativeBase):
        pass

    class Other(OtherBase):
        __tablename__ = "others"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str | None]
        nickname: Mapped[str | None]
        alias = phased(old="name", new="nickname", forward=Transform.identity(),
                       backward=Transform.identity(), phase=Phase.WRITE_BOTH)

    return Other.alias.spec.key  # type: ignore[no-any-return]


def plain_fourstep(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fourstep_sqla.cli", *args], cwd=cwd,
        env=env_without_fourstep(), capture_output=True, text=True, timeout=120,
    )


def assert_points_at_flask(result: subprocess.CompletedProcess[str], command: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fourstep: error: "), line
    assert "this is a Flask-Migrate environment" in line, line
    assert f"run `flask fourstep {command}" in line, line


def test_plain_fourstep_says_to_run_flask_fourstep(
    sqlite_database: Database, project_factory: Any
) -> None:
    """Pointed at Flask-Migrate's env.py, which runs only inside the app, the plain
    ``fourstep`` says which command runs there, instead of failing in env.py."""
    project: FlaskProject = project_factory(sqlite_database, "classic")
    step_0(project)
    project.release(3)
    root = project.root
    migrations = root / "migrations"
    # where the developer stands: the project root, no alembic.ini of its own
    assert_points_at_flask(plain_fourstep(root, "revision", "--step", "3", KEY), "revision")
    assert_points_at_flask(plain_fourstep(root, "status"), "status")
    assert_points_at_flask(plain_fourstep(root, "backfill", KEY), "backfill")
    # Flask-Migrate's alembic.ini, named or from inside the directory
    config = ("--config", str(migrations / "alembic.ini"))
    assert_points_at_flask(
        plain_fourstep(root, "revision", *config, "--url", sqlite_database.url,
                       "--models", "flaskr.models", "--step", "3", KEY), "revision")
    assert_points_at_flask(plain_fourstep(root, "verify", *config), "verify")
    assert_points_at_flask(plain_fourstep(migrations, "revision", "--step", "3", KEY),
                           "revision")
    # given the database and the models, status needs no env.py: it runs
    ran = plain_fourstep(root, "status", "--url", sqlite_database.url, "--models",
                         "flaskr.models")
    assert ran.returncode == 0, ran.stderr
    assert one(ran.stdout, "status")["key"] == KEY


def test_flask_fourstep_usage_errors(sqlite_database: Database, project_factory: Any) -> None:
    """Configuration and usage errors: exit 2, one line, what to do."""
    project: FlaskProject = project_factory(sqlite_database, "classic")
    project.release(1)

    def usage_error(*args: str) -> str:
        result = project.flask("fourstep", *args)
        assert result.exit_code == 2, show(["fourstep", *args], result)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("fourstep: error: ") and "Traceback" not in result.stderr
        return line

    line = usage_error("status", "users.fullname")
    assert "'users.fullname'" in line and KEY in line and "flaskr" in line
    # a phased attribute of another Base in the same process is not the app's
    other = foreign_model()
    assert [e["key"] for e in events(project.ok("fourstep", "status").stdout, "status")] == [KEY]
    line = usage_error("status", other)
    assert f"unknown key {other!r}; known keys (the Flask app 'flaskr'): {KEY}" in line
    # -v logs to stderr for the command's length only: the app's process goes on
    ours = logging.getLogger("fourstep_sqla")
    before = (list(ours.handlers), ours.level, ours.propagate)
    project.ok("fourstep", "status", "-vv")
    assert (list(ours.handlers), ours.level, ours.propagate) == before
    # the database and the models are the app's: no --url, --models or --config here
    assert "--url" in usage_error("status", "--url", "sqlite://")
    line = usage_error("backfill", "--batch-size", "0")
    assert "--batch-size" in line and "see 'flask fourstep backfill --help'" in line
    # no `flask db init` yet: revision says so
    line = usage_error("revision", "--step", "1", KEY)
    assert "flask db init" in line and "migrations" in line
    # help comes from the same options as the plain command, under its Flask name
    helped = project.ok("fourstep", "backfill", "--help")
    assert "flask fourstep backfill" in helped.stdout and "--max-seconds" in helped.stdout
    assert "--url" not in helped.stdout
    listed = project.ok("fourstep", "--help")
    for command in ("status", "backfill", "verify", "revision"):
        assert command in listed.stdout
