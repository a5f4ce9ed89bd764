"""Migrations on the migration's own connection, and async URLs on the command line.

Test suites often migrate at start-up on an in-memory SQLite database
(``sqlite://``): Flask-SQLAlchemy gives it a ``StaticPool`` (one connection
shared by everything), Alembic's cookbook hands env.py the one connection of
a ``NullPool`` engine (``config.attributes["connection"]``). Either way a new
connection from ``connection.engine`` is not that database. The revisions
here are written by autogenerate through Flask-Migrate on a file database,
as a developer writes them; then each suite's start-up creates the table
(``r00``), loads its fixture rows and upgrades to head, carrying the rows
through the four steps, and downgrades past the drop, restoring them:

- :func:`test_flask_suite_on_sqlite_memory`: a Flask app factory,
  Flask-SQLAlchemy's ``db.Model`` and Flask-Migrate's own ``env.py``.
- :func:`test_shared_connection_of_a_null_pool`: Alembic's cookbook env.py
  on the one connection of a ``sqlite://`` engine with ``NullPool``.

The command line given an async URL (``--url``, ``FOURSTEP_DATABASE_URL``,
alembic.ini) runs through the matching synchronous driver, as a real
subprocess (:func:`test_cli_with_an_asyncpg_url`,
:func:`test_cli_with_aiosqlite_urls`, :func:`test_cli_with_an_aiomysql_url`),
and says which package to install when that driver is missing
(:func:`test_cli_names_the_missing_sync_driver`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, inspect, pool, text

from fourstep_sqla.errors import FourStepWarning

# Flask-Migrate's own env.py template still calls db.get_engine()
pytestmark = pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")

FOURSTEP = Path(sys.executable).with_name("fourstep")

# -- the application's models, step by step ----------------------------------------------
FLASK_MODELS = '''
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Bill(db.Model):
    __tablename__ = "bill"
    id: Mapped[int] = mapped_column(primary_key=True)
    {body}
'''

STEP_0 = 'legacy_payer: Mapped[str] = mapped_column("payer", String(80))'
NEW = '''{old}
    payer_first: Mapped[str | None] = mapped_column(String(40))
    payer_last: Mapped[str | None] = mapped_column(String(40))
    payer = phased(
        old="legacy_payer",
        new=("payer_first", "payer_last"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.{phase},
    )'''
MAPPED = 'legacy_payer: Mapped[str | None] = mapped_column("payer", String(80))'
UNMAPPED = 'legacy_payer: Unmapped[str | None] = unmapped_column("payer", String(80))'
STEPS = [
    STEP_0,
    NEW.format(old=MAPPED, phase="WRITE_BOTH"),
    NEW.format(old=MAPPED, phase="READ_NEW"),
    NEW.format(old=MAPPED, phase="STOP_READ_OLD"),
    NEW.format(old=UNMAPPED, phase="STOP_WRITE_OLD"),
]
N_BILLS = 3_000


def payer(i: int) -> str:
    return f"Payer{i} Family{i}"


@contextmanager
def _logging_kept() -> Iterator[None]:
    """Flask-Migrate's env.py runs ``fileConfig``, which disables every logger that
    exists (the library's included): give them back to the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    before = {name: lg.disabled for name, lg in logging.Logger.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lg in logging.Logger.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.disabled = before.get(name, False)


@pytest.fixture(autouse=True)
def _logging_back() -> Iterator[None]:
    with _logging_kept():
        yield


@contextmanager
def _quiet() -> Iterator[None]:
    """Re-declaring the same phased attribute per step is expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FourStepWarning)
        yield


class FlaskProject:
    """A Flask app factory with Flask-SQLAlchemy and Flask-Migrate, its models
    module at any step (a fresh module per step, as each release has its own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.migrations = root / "migrations"
        self.models_dir = root / "models"
        self.models_dir.mkdir(parents=True)
        self.token = secrets.token_hex(4)
        self.count = 0

    def models(self, step: int) -> Any:
        self.count += 1
        name = f"flask_models_{self.token}_{self.count}"
        (self.models_dir / f"{name}.py").write_text(FLASK_MODELS.format(body=STEPS[step]))
        sys.path.insert(0, str(self.models_dir))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(self.models_dir))

    def app(self, models: Any, uri: str) -> Any:
        from flask import Flask
        from flask_migrate import Migrate

        app = Flask(f"bills_{self.count}")
        app.config["SQLALCHEMY_DATABASE_URI"] = uri
        models.db.init_app(app)
        Migrate(app, models.db, directory=str(self.migrations))
        return app


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five revisions, written by ``flask db migrate`` (autogenerate) on a file
    database, step by step, as a developer writes them."""
    import flask_migrate

    project = FlaskProject(tmp_path_factory.mktemp("authoring"))
    uri = f"sqlite:///{project.root / 'dev.db'}"
    with _quiet(), _logging_kept():
        for step in range(len(STEPS)):
            app = project.app(project.models(step), uri)
            with app.app_context():
                if step == 0:
                    flask_migrate.init()
                    # what the README asks of every env.py: the fourstep operations
                    env = project.migrations / "env.py"
                    env.write_text(env.read_text().replace(
                        "from alembic import context\n",
                        "from alembic import context\n\n"
                        "import fourstep_sqla.alembic  # noqa: F401\n",
                    ))
                flask_migrate.upgrade()
                flask_migrate.migrate(message=f"step {step}", rev_id=f"r{step:02d}")
                flask_migrate.upgrade()
    versions = project.migrations / "versions"
    written = {p.name: p.read_text() for p in versions.glob("r0*.py")}
    assert len(written) == 5, sorted(written)
    body = "\n".join(written.values())
    for op in ("op.create_sync_triggers(", "op.backfill(", "op.drop_old("):
        assert op in body, op
    return project.migrations


def _seed(conn: Connection) -> None:
    conn.execute(text("INSERT INTO bill (id, payer) VALUES (:id, :payer)"),
                 [{"id": i, "payer": payer(i)} for i in range(1, N_BILLS + 1)])


def _bills(conn: Connection) -> dict[int, tuple[Any, ...]]:
    present = {c["name"] for c in inspect(conn).get_columns("bill")}
    columns = [c for c in ("payer", "payer_first", "payer_last") if c in present]
    rows = conn.execute(text(f"SELECT id, {', '.join(columns)} FROM bill")).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _phase(conn: Connection) -> int:
    return int(conn.execute(text(
        "SELECT recorded_phase FROM fourstep_state WHERE key = 'bill.payer'")).scalar_one())


def test_flask_suite_on_sqlite_memory(revisions: Path, tmp_path: Path) -> None:
    """A Flask test suite's start-up on ``sqlite://``: Flask-SQLAlchemy's StaticPool,
    Flask-Migrate's env.py, every step's revision, then the app reads the rows."""
    import flask_migrate
    from sqlalchemy import select

    project = FlaskProject(tmp_path)
    shutil.copytree(revisions, project.migrations)
    with _quiet():
        models = project.models(4)  # the release under test: step 4
    app = project.app(models, "sqlite://")
    with app.app_context(), _quiet():
        db = models.db
        assert isinstance(db.engine.pool, pool.StaticPool)
        flask_migrate.upgrade(revision="r00")
        with db.engine.connect() as conn:
            _seed(conn)
            conn.commit()
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            rows = _bills(conn)
            assert _phase(conn) == 4
        assert len(rows) == N_BILLS
        assert rows[1] == ("Payer1", "Family1")
        assert all(r == tuple(payer(i).split(" ")) for i, r in rows.items())
        # the application at step 4 reads what the backfill wrote
        found = db.session.scalars(select(models.Bill).where(
            models.Bill.payer == ("Payer42", "Family42"))).all()
        assert [b.id for b in found] == [42]
        db.session.add(models.Bill(id=N_BILLS + 1, payer=("Ada", "Lovelace")))
        db.session.commit()
        db.session.close()
        # and back past the drop: the old column restored from the new ones
        flask_migrate.downgrade(revision="r03")
        with db.engine.connect() as conn:
            rows = _bills(conn)
            assert _phase(conn) == 3
        assert rows[1] == ("Payer1 Family1", "Payer1", "Family1")
        assert rows[N_BILLS + 1] == ("Ada Lovelace", "Ada", "Lovelace")
        assert all(r[0] == payer(i) for i, r in rows.items() if i <= N_BILLS)


COOKBOOK_ENV_PY = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

import fourstep_sqla.alembic  # noqa: F401

config = context.config


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


# Alembic's cookbook, "Sharing a Connection across one or more programmatic
# migration commands": a test suite hands env.py its own connection
connectable = config.attributes.get("connection", None)
if connectable is None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        do_run_migrations(connection)
else:
    do_run_migrations(connectable)
'''


def test_shared_connection_of_a_null_pool(revisions: Path, tmp_path: Path) -> None:
    """``sqlite://`` with NullPool: the database exists on that one connection only."""
    script = tmp_path / "migrations"
    shutil.copytree(revisions, script)
    (script / "env.py").write_text(COOKBOOK_ENV_PY)
    config = Config()
    config.set_main_option("script_location", str(script))
    engine = create_engine("sqlite://", poolclass=pool.NullPool)
    with engine.connect() as conn, _quiet():
        config.attributes["connection"] = conn
        command.upgrade(config, "r00")
        _seed(conn)
        conn.commit()
        command.upgrade(config, "head")
        rows = _bills(conn)
        assert _phase(conn) == 4
        assert all(r == tuple(payer(i).split(" ")) for i, r in rows.items())
        # each backfill batch committed with its progress, on this connection
        done = conn.execute(text(
            "SELECT count(*), sum(rows_updated) FROM fourstep_progress WHERE key = 'bill.payer'"
        )).one()
        assert tuple(done) == (1, N_BILLS)
        conn.execute(text("UPDATE bill SET payer_first = 'Grace', payer_last = 'Hopper' "
                          "WHERE id = 7"))
        conn.commit()
        command.downgrade(config, "r03")
        rows = _bills(conn)
        assert rows[7] == ("Grace Hopper", "Grace", "Hopper")
        assert rows[8] == ("Payer8 Family8", "Payer8", "Family8")
        assert _phase(conn) == 3
        command.downgrade(config, "base")
        assert not inspect(conn).has_table("bill")
        conn.commit()
    engine.dispose()


# -- the command line with async URLs -----------------------------------------------------
CLI_MODELS = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    legacy_name: Mapped[str | None] = mapped_column("name", String(80))
    first_name: Mapped[str | None] = mapped_column(String(40))
    last_name: Mapped[str | None] = mapped_column(String(40))
    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.STOP_READ_OLD,
    )
'''
N_USERS = 2_000


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def events(self, kind: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]
        return [e for e in found if e.get("event") == kind]

    def __str__(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def fourstep(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    """``.venv/bin/fourstep ARGS`` as a user runs it, in ``cwd`` (cli_models.py there)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOURSTEP_")}
    environment["FOURSTEP_MODELS"] = "cli_models"
    environment.update(env or {})
    proc = subprocess.run([str(FOURSTEP), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _users_table(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80), "
            "first_name VARCHAR(40), last_name VARCHAR(40))"))
        conn.execute(text("INSERT INTO users (id, name) VALUES (:id, :name)"),
                     [{"id": i, "name": f"First{i} Last{i}"} for i in range(1, N_USERS + 1)])


def _filled(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM users WHERE first_name IS NOT NULL")).scalar_one())


@pytest.fixture
def pg_database(pg_engine: Engine) -> Iterator[Engine]:
    """A PostgreSQL database of its own (an asyncpg URL takes no search_path option)."""
    name = f"t_{secrets.token_hex(6)}"
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = create_engine(pg_engine.url.set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.postgres
def test_cli_with_an_asyncpg_url(pg_database: Engine, tmp_path: Path) -> None:
    (tmp_path / "cli_models.py").write_text(CLI_MODELS)
    _users_table(pg_database)
    url = pg_database.url.set(drivername="postgresql+asyncpg").render_as_string(
        hide_password=False)
    status = fourstep(tmp_path, "status", "--url", url, "--json")
    assert status.returncode == 0, str(status)
    [row] = status.events("status")
    assert (row["key"], row["rows_total"], row["rows_pending"]) == (
        "users.full_name", N_USERS, N_USERS)
    assert "Traceback" not in status.stderr
    done = fourstep(tmp_path, "backfill", "--url", url, "--json", "--workers", "2")
    assert done.returncode == 0, str(done)
    [report] = done.events("done")
    assert report["complete"] and report["rows_updated"] == N_USERS
    assert _filled(pg_database) == N_USERS
    verified = fourstep(tmp_path, "verify", "--json",
                        env={"FOURSTEP_DATABASE_URL": url})
    assert verified.returncode == 0, str(verified)
    assert verified.events("verify")[0]["ok"]
    checked = fourstep(tmp_path, "status", "--check", "--url", url, "--json")
    assert checked.returncode == 0, str(checked)


def _alembic_ini(path: Path, url: str) -> None:
    path.write_text("[alembic]\nscript_location = migrations\n"
                    f"sqlalchemy.url = {url.replace('%', '%%')}\n")


def test_cli_with_aiosqlite_urls(tmp_path: Path) -> None:
    (tmp_path / "cli_models.py").write_text(CLI_MODELS)
    database = tmp_path / "app.db"
    engine = create_engine(f"sqlite:///{database}")
    _users_table(engine)
    # from the environment
    status = fourstep(tmp_path, "status", "--json",
                      env={"FOURSTEP_DATABASE_URL": f"sqlite+aiosqlite:///{database}"})
    assert status.returncode == 0, str(status)
    assert status.events("status")[0]["rows_pending"] == N_USERS
    # from alembic.ini, as an async FastAPI project keeps it
    _alembic_ini(tmp_path / "alembic.ini", f"sqlite+aiosqlite:///{database}")
    done = fourstep(tmp_path, "backfill", "--json")
    assert done.returncode == 0, str(done)
    assert _filled(engine) == N_USERS
    engine.dispose()


@pytest.mark.mysql
def test_cli_with_an_aiomysql_url(mysql_db_engine: Engine, tmp_path: Path) -> None:
    """The URL runs through PyMySQL (whether aiomysql is installed or not)."""
    (tmp_path / "cli_models.py").write_text(CLI_MODELS)
    _users_table(mysql_db_engine)
    url = mysql_db_engine.url.set(drivername="mysql+aiomysql").render_as_string(
        hide_password=False)
    _alembic_ini(tmp_path / "alembic.ini", url)
    done = fourstep(tmp_path, "backfill", "--json")
    assert done.returncode == 0, str(done)
    assert _filled(mysql_db_engine) == N_USERS


def test_cli_names_the_missing_sync_driver(tmp_path: Path) -> None:
    (tmp_path / "cli_models.py").write_text(CLI_MODELS)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    # an environment without psycopg (nor psycopg2): asyncpg only
    (hidden / "sitecustomize.py").write_text(
        "import sys\nsys.modules['psycopg'] = None\nsys.modules['psycopg2'] = None\n")
    url = "postgresql+asyncpg://app:s3cret@127.0.0.1:5432/app"
    run = fourstep(tmp_path, "status", "--url", url, env={"PYTHONPATH": str(hidden)})
    assert run.returncode == 2, str(run)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fourstep: error: "), str(run)
    assert "postgresql+asyncpg" in lines[0] and "pip install" in lines[0], lines[0]
    assert "psycopg" in lines[0] and "s3cret" not in run.stderr, lines[0]
    # another async driver whose synchronous twin is not installed here
    run = fourstep(tmp_path, "status", "--url", "oracle+oracledb_async://u:p@h/db")
    assert run.returncode == 2, str(run)
    assert "pip install oracledb" in run.stderr and "Traceback" not in run.stderr, str(run)
