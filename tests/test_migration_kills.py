"""Every operation can be killed at any moment and run again (issue 9).

The revisions are the ones autogenerate writes for a split of ``users.name``
into ``first_name`` / ``last_name`` (steps 1 to 4, with ``forward_index`` at
steps 2-4 on PostgreSQL), generated once per dialect on a scratch database,
applying each. Then, for each migration worth killing:

==============  ======================  ===========================================
operation       command                 what it does that a kill can cut in two
==============  ======================  ===========================================
``backfill``    upgrade ``r03``         ``op.backfill``: committed batches
``drop``        upgrade ``r04``         ``op.drop_old``: gate, then the DROP (SQLite:
                                        a batch table copy)
``restore``     downgrade ``r03``       ``op.restore_old``: ADD COLUMN, values restored
                                        in batches, indexes rebuilt concurrently
``not_null``    downgrade ``base``      the NOT NULL restored (PostgreSQL: ``CHECK
                                        ... NOT VALID``, ``VALIDATE``, ``SET NOT
                                        NULL``; SQLite: a batch table copy)
==============  ======================  ===========================================

an uninterrupted ``alembic`` process runs it on the reference database (the
``engine`` fixture: a SQLite file, a PostgreSQL schema of its own, or a MariaDB
database of its own) and its end state is taken. Then, on twins brought to the
same starting point (SQLite: a copy of the reference's file; PostgreSQL and
MariaDB: a fresh schema or database built the same way), the same command
runs in a process that gets SIGKILL after a random delay, and then runs again
to completion. The delays come from a seeded
``random.Random``, one in each equal slice of the uninterrupted run's length,
counted from the moment ``env.py`` starts the migrations (a run that is over
before its kill is tried again on a new twin, sooner). The end state must be
the uninterrupted run's: every row (all columns), the columns and their
nullability (MariaDB: ``SHOW CREATE TABLE``, where DDL commits statement by
statement), the indexes (PostgreSQL: their definitions and ``indisvalid``),
the constraints, the sync triggers and their functions, the tables,
``alembic_version``, the recorded phase and the backfill run's status; and
nothing is left behind (no ``_alembic_tmp_*`` table, no INVALID index, no
``fourstep_nn_*`` check).

Each ``alembic -c <ini> upgrade|downgrade <rev>`` is a process of its own,
running Alembic's command line: forked from a launcher that has imported
Alembic and the library once (see ``LAUNCHER``), since a fresh interpreter
spends 0.8 s importing them, most of this file's time otherwise. On
PostgreSQL ``env.py`` names the version table with its schema, so that the
library's one-run-at-a-time advisory lock (named after the version table) is
this schema's, not shared with whatever else runs on the test database.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.schema import CreateSchema, DropSchema
from test_migration_locks import FORWARD_INDEX, MAPPED, UNMAPPED, Project

import fourstep_sqla.alembic  # noqa: F401
from fourstep_sqla.state import read_state

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the launcher forks")

KEY = "users.full_name"
ROWS = {"sqlite": 150_000, "postgresql": 100_000, "mysql": 30_000}
SEED = 9
MARK = "fourstep-kill-test: migrations start"
DONE = "fourstep-kill-test: migrations done"

# the migrations of test_migration_locks' Project, saying when they start (the kill's clock)
ENV_PY = f'''
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
        version_table_schema=config.get_main_option("version_table_schema"),
    )
    print({MARK!r}, file=sys.stderr, flush=True)
    with context.begin_transaction():
        context.run_migrations()
    print({DONE!r}, file=sys.stderr, flush=True)
engine.dispose()
'''


@dataclass(frozen=True)
class Operation:
    name: str
    start: str  # the revision the database is at before the command
    verb: str
    target: str
    kills: int  # one in each equal slice of the uninterrupted run's length


OPERATIONS = {
    op.name: op
    for op in (
        Operation("backfill", "r02", "upgrade", "r03", kills=3),
        # short runs whose steps are each a small share of it: more kills
        Operation("drop", "r03", "upgrade", "r04", kills=4),
        Operation("restore", "r04", "downgrade", "r03", kills=4),
        Operation("not_null", "r01", "downgrade", "base", kills=5),
    )
}


# -- the revisions, generated once per dialect ---------------------------------------
@dataclass(frozen=True)
class Scripts:
    dir: Path
    models_path: Path
    models: str  # the step-4 models module (env.py imports it; upgrades need no diff)


_SCRIPTS: dict[str, Scripts] = {}


def _scripts(dialect: str, new_database: Callable[[str], Database], tmp_path: Path) -> Scripts:
    """Autogenerate steps 1 to 4 on a scratch database (two rows), applying each."""
    if dialect in _SCRIPTS:
        return _SCRIPTS[dialect]
    scratch = new_database("scratch")
    _create_users(scratch.engine)
    with scratch.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name) VALUES (1, 'Ada Lovelace'), "
                          "(2, 'Cher')"))
    # Project names its models modules after the directory: one of its own per dialect
    project = Project(tmp_path / f"kills_{secrets.token_hex(4)}", scratch.engine)
    (project.dir / "env.py").write_text(ENV_PY)
    forward_index = FORWARD_INDEX if dialect == "postgresql" else ""
    for phase, old, extra in (("WRITE_BOTH", MAPPED, ""),
                              ("READ_NEW", MAPPED, forward_index),
                              ("STOP_READ_OLD", MAPPED, forward_index),
                              ("STOP_WRITE_OLD", UNMAPPED, forward_index)):
        project.models(phase, old, extra)
        upgrade = project.revision()
        assert upgrade.strip(), f"autogenerate wrote nothing for {phase}"
        command.upgrade(project.config, "head")
    bodies = "\n".join(p.read_text() for p in sorted((project.dir / "versions").glob("*.py")))
    for op_name in ("op.backfill(", "op.drop_old(", "op.restore_old(",
                    "op.restore_old_not_null("):
        assert op_name in bodies
    if dialect == "postgresql":
        assert "postgresql_concurrently=True" in bodies
    scratch.engine.dispose()
    _SCRIPTS[dialect] = Scripts(project.dir, project.models_dir,
                                str(project.config.attributes["models"]))
    return _SCRIPTS[dialect]


# -- databases: the reference and its twins --------------------------------------------
@dataclass
class Database:
    name: str
    engine: Engine
    url: str  # with the password, unescaped
    schema: str | None = None
    path: Path | None = None  # SQLite's file

    def config(self, scripts: Scripts) -> Config:
        config = Config()
        config.set_main_option("script_location", str(scripts.dir))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        config.set_main_option("models_path", str(scripts.models_path))
        if self.schema is not None:
            config.set_main_option("version_table_schema", self.schema)
        config.attributes["models"] = scripts.models
        return config

    def ini(self, scripts: Scripts, tmp_path: Path) -> Path:
        ini = tmp_path / f"alembic_{self.name}.ini"
        if not ini.exists():
            esc = self.url.replace("%", "%%")
            ini.write_text(
                "[alembic]\n"
                f"script_location = {scripts.dir}\n"
                f"sqlalchemy.url = {esc}\n"
                f"models_path = {scripts.models_path}\n"
                f"models = {scripts.models}\n"
                + (f"version_table_schema = {self.schema}\n" if self.schema else "")
            )
        return ini


class Databases:
    """Fresh databases of the reference's dialect: SQLite files, PostgreSQL schemas,
    MariaDB databases."""

    def __init__(self, reference: Engine, tmp_path: Path, pg_engine: Engine | None,
                 mysql_engine: Engine | None = None) -> None:
        self.dialect = reference.dialect.name
        self.tmp_path = tmp_path
        self.pg_engine = pg_engine
        self.mysql_engine = mysql_engine
        self.made: list[Database] = []
        if self.dialect == "mysql":
            self.reference = Database("reference", reference,
                                      reference.url.render_as_string(hide_password=False))
        elif self.dialect == "postgresql":
            with reference.connect() as conn:
                schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
            url = reference.url.update_query_dict({"options": f"-csearch_path={schema}",
                                                   "application_name": f"kills_{schema}"})
            self.reference = Database("reference", reference,
                                      url.render_as_string(hide_password=False), schema=schema)
        else:
            path = Path(str(reference.url.database))
            self.reference = Database("reference", reference, str(reference.url), path=path)

    def new(self, name: str, copy_of: Path | None = None) -> Database:
        if self.dialect == "sqlite":
            path = self.tmp_path / f"{name}.db"
            if copy_of is not None:
                shutil.copyfile(copy_of, path)
            db = Database(name, create_engine(f"sqlite:///{path}"), f"sqlite:///{path}",
                          path=path)
        elif self.dialect == "mysql":
            assert self.mysql_engine is not None and copy_of is None
            database = f"t_{secrets.token_hex(6)}"
            with self.mysql_engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {database}")
            url = self.mysql_engine.url.set(database=database)
            db = Database(name, create_engine(url), url.render_as_string(hide_password=False))
        else:
            assert self.pg_engine is not None and copy_of is None
            schema = f"t_{secrets.token_hex(6)}"
            with self.pg_engine.begin() as conn:
                conn.execute(CreateSchema(schema))
            pg_url = self.pg_engine.url.update_query_dict(
                {"options": f"-csearch_path={schema}", "application_name": f"kills_{schema}"})
            db = Database(name, create_engine(pg_url),
                          pg_url.render_as_string(hide_password=False), schema=schema)
        self.made.append(db)
        return db

    def close(self) -> None:
        for db in [*self.made, self.reference]:
            db.engine.dispose()
            if self.mysql_engine is not None:
                database = db.engine.url.database
                with self.mysql_engine.begin() as conn:
                    # a killed run's connection may linger for a moment
                    for (pid,) in conn.execute(text(
                            "SELECT id FROM information_schema.processlist WHERE db = :db "
                            "AND id <> CONNECTION_ID()"), {"db": database}).all():
                        conn.execute(text(f"KILL {int(pid)}"))
                    if db is not self.reference:  # the engine fixture drops its own
                        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")
            if db.schema is not None and self.pg_engine is not None:
                with self.pg_engine.begin() as conn:
                    # a killed run's backend may linger for a moment (ours: by their name)
                    conn.execute(text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :name"), {"name": f"kills_{db.schema}"})
                    if db is not self.reference:  # the engine fixture drops its own
                        conn.execute(DropSchema(db.schema, cascade=True))


@pytest.fixture
def databases(engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
              ) -> Iterator[Databases]:
    pg = request.getfixturevalue("pg_engine") if engine.dialect.name == "postgresql" else None
    server = request.getfixturevalue("mysql_engine") if engine.dialect.name == "mysql" else None
    made = Databases(engine, tmp_path, pg, server)
    try:
        yield made
    finally:
        made.close()


# -- data -------------------------------------------------------------------------------
def _create_users(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL)"
        ))
        conn.execute(text("CREATE INDEX ix_users_name ON users (name)"))


def _insert(engine: Engine, rows: int) -> None:
    """``rows`` users: 'First<n> Last<n>', every fifth one a single name 'Solo<n>'."""
    name = "CASE WHEN g % 5 = 0 THEN 'Solo' || g ELSE 'First' || g || ' Last' || g END"
    with engine.begin() as conn:
        if engine.dialect.name == "mysql":
            name = ("CASE WHEN g % 5 = 0 THEN concat('Solo', g) "
                    "ELSE concat('First', g, ' Last', g) END")
            depth = ("max_recursive_iterations" if getattr(engine.dialect, "is_mariadb", False)
                     else "cte_max_recursion_depth")
            conn.exec_driver_sql(f"SET SESSION {depth} = {rows + 1}")
            conn.execute(text(f"INSERT INTO users (id, name) WITH RECURSIVE s(g) AS (SELECT 1 "
                              f"UNION ALL SELECT g + 1 FROM s WHERE g < :n) "
                              f"SELECT g, {name} FROM s"), {"n": rows})
        elif engine.dialect.name == "postgresql":
            conn.execute(text(f"INSERT INTO users (id, name) SELECT g, {name} "
                              "FROM generate_series(1, :n) AS g"), {"n": rows})
            conn.execute(text("ANALYZE users"))
        else:
            conn.execute(text(f"WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 "
                              f"FROM s WHERE g < :n) INSERT INTO users (id, name) "
                              f"SELECT g, {name} FROM s"), {"n": rows})


def _build(db: Database, scripts: Scripts, rows: int, start: str) -> None:
    """The table and its rows, then the revisions up to ``start``, without a kill.

    On PostgreSQL and MariaDB a start point past step 2 gets its rows at step
    2, written through the sync triggers as step-2 code writes them (the step-3
    backfill then finds nothing to do): every twin is built afresh there, and
    that saves a backfill per twin.
    """
    _create_users(db.engine)
    config = db.config(scripts)
    late = db.engine.dialect.name != "sqlite" and start in ("r03", "r04")
    if late:
        command.upgrade(config, "r02")
    _insert(db.engine, rows)
    if start != "base":
        command.upgrade(config, start)
    db.engine.dispose()


# -- end states -------------------------------------------------------------------------
def _rows(db: Database) -> list[tuple[Any, ...]]:
    """Every row, all columns (in the order of their names), by key."""
    names = sorted(c["name"] for c in inspect(db.engine).get_columns("users"))
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT {', '.join(names)} FROM users ORDER BY id"))]


def _end_state(db: Database) -> dict[str, Any]:
    engine = db.engine
    engine.dispose()  # nothing cached from before the run
    insp = inspect(engine)
    columns = insp.get_columns("users")
    names = sorted(c["name"] for c in columns)
    facts: dict[str, Any] = {
        "columns": {c["name"]: (bool(c["nullable"]), str(c["type"])) for c in columns},
    }
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # the rows' digest, computed where they are (a row's text tells NULL from '')
            facts["rows (count, md5)"] = tuple(conn.execute(text(
                "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t.id)) "
                f"FROM (SELECT {', '.join(names)} FROM users) AS t")).one())
            schema = db.schema or ""
            facts["indexes"] = {
                r[0]: (bool(r[1]), r[2].replace(f"{schema}.", ""))
                for r in conn.execute(text(
                    "SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) "
                    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = 'users'::regclass"))
            }
            facts["constraints"] = sorted(
                (r[0], r[1], bool(r[2]), r[3])
                for r in conn.execute(text(
                    "SELECT conname, contype, convalidated, pg_get_constraintdef(oid) "
                    "FROM pg_constraint WHERE conrelid = 'users'::regclass")))
            facts["triggers"] = sorted(
                (r[0], bool(r[1])) for r in conn.execute(text(
                    "SELECT tgname, tgenabled <> 'D' FROM pg_trigger "
                    "WHERE tgrelid = 'users'::regclass AND NOT tgisinternal")))
            facts["functions"] = sorted(r[0] for r in conn.execute(text(
                "SELECT proname FROM pg_proc WHERE pronamespace = "
                "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())")))
            facts["tables"] = sorted(r[0] for r in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")))
        elif engine.dialect.name == "mysql":
            facts["rows (count, sha256)"] = _rows_digest(conn, names)
            # the whole table's definition: columns, nullability, indexes, checks
            facts["users DDL"] = conn.execute(text("SHOW CREATE TABLE users")).one()[1]
            facts["triggers"] = sorted(
                tuple(r) for r in conn.execute(text(
                    "SELECT trigger_name, event_manipulation, action_timing, action_statement "
                    "FROM information_schema.triggers WHERE trigger_schema = DATABASE()")))
            facts["tables"] = sorted(insp.get_table_names())
        else:
            digest = hashlib.sha256()
            count = 0
            for row in conn.execute(text(f"SELECT {', '.join(names)} FROM users ORDER BY id")):
                digest.update(repr(tuple(row)).encode())
                count += 1
            facts["rows (count, sha256)"] = (count, digest.hexdigest())
            master = conn.execute(text(
                "SELECT type, name, tbl_name, sql FROM sqlite_master")).all()
            facts["indexes"] = sorted(
                (name, sql) for kind, name, table, sql in master
                if kind == "index" and table == "users")
            facts["triggers"] = sorted(
                (name, sql) for kind, name, table, sql in master if kind == "trigger")
            facts["tables"] = sorted(name for kind, name, _t, _s in master if kind == "table")
            facts["users DDL"] = next(sql for kind, name, _t, sql in master
                                      if kind == "table" and name == "users")
        facts["alembic_version"] = (
            sorted(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version")))
            if insp.has_table("alembic_version") else None
        )
    state = read_state(engine, KEY)
    facts["recorded_phase"] = None if state is None else state.recorded_phase
    facts["backfill run status"] = None if state is None else state.run_status
    engine.dispose()
    return facts


def _rows_digest(conn: Any, names: list[str]) -> tuple[int, str]:
    """Every row's values, by key, as one digest (and how many there are)."""
    digest = hashlib.sha256()
    count = 0
    for row in conn.execute(text(f"SELECT {', '.join(names)} FROM users ORDER BY id")):
        digest.update(repr(tuple(row)).encode())
        count += 1
    return count, digest.hexdigest()


def _left_behind(db: Database) -> list[str]:
    """What a stopped run must not leave: a batch copy, an INVALID index, a NOT NULL check."""
    found: list[str] = []
    with db.engine.connect() as conn:
        if db.engine.dialect.name == "postgresql":
            found += [f"INVALID index {r[0]}" for r in conn.execute(text(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND NOT i.indisvalid"))]
            found += [f"check constraint {r[0]}" for r in conn.execute(text(
                "SELECT conname FROM pg_constraint c JOIN pg_namespace n "
                "ON n.oid = c.connamespace WHERE n.nspname = current_schema() "
                "AND conname LIKE 'fourstep_nn_%'"))]
        found += [f"table {name}" for name in inspect(conn).get_table_names()
                  if name.startswith("_alembic_tmp_")]
    db.engine.dispose()
    return found


def _differences(twin: Database, got: dict[str, Any], reference: Database,
                 want: dict[str, Any]) -> list[str]:
    problems = [
        f"{name}: got {got.get(name)!r}, the uninterrupted run gives {value!r}"
        for name, value in want.items()
        if got.get(name) != value
    ]
    if any(name.startswith("rows") and got.get(name) != value for name, value in want.items()):
        got_rows, want_rows = _rows(twin), _rows(reference)
        differing = [(g, w) for g, w in zip(got_rows, want_rows) if g != w]
        problems.append(
            f"rows: {len(got_rows)} (the uninterrupted run: {len(want_rows)}), {len(differing)} "
            f"of them differ; e.g. " + "; ".join(f"got {g!r}, want {w!r}"
                                                 for g, w in differing[:5])
        )
    return problems


# -- running alembic, and killing it ---------------------------------------------------------
# A process that has imported what every ``alembic`` run imports forks one child per
# command, which runs Alembic's command line (``alembic.config.main``, what the
# ``alembic`` script calls) with the given arguments and exits: the child is the
# process that gets SIGKILL. Starting the ``alembic`` script afresh costs about
# 0.8 s of imports, some 70 times over in this file.
CUT = "fourstep-cut-test:"

# A request is the command's arguments, or {"argv": [...], "cut_at": n}: then the child
# counts the statements it sends that write, says each one (n = 0) or sends itself
# SIGKILL just before the n-th (test_migration_cuts), and says how many it sent.
LAUNCHER = r"""
import json, os, re, signal, sys, traceback

import alembic.config
import fourstep_sqla.alembic  # noqa: F401
import sqlalchemy.dialects.sqlite  # noqa: F401
from sqlalchemy import event
from sqlalchemy.engine import Engine
try:
    import psycopg  # noqa: F401
    import sqlalchemy.dialects.postgresql  # noqa: F401
except ImportError:
    pass
try:
    import pymysql  # noqa: F401
    import sqlalchemy.dialects.mysql  # noqa: F401
except ImportError:
    pass

WRITE = re.compile(
    r"^\s*(INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|TRUNCATE|LOCK|UNLOCK|RENAME|COMMENT)\b",
    re.IGNORECASE,
)


def count_writes(cut_at, seen):
    @event.listens_for(Engine, "before_cursor_execute")
    def cut(conn, cursor, statement, parameters, context, executemany):
        if WRITE.match(statement):
            seen[0] += 1
            if not cut_at:
                print("CUT write", " ".join(statement.split())[:100], flush=True)
            if seen[0] == cut_at:
                print("CUT before", seen[0], " ".join(statement.split())[:120], flush=True)
                os.kill(os.getpid(), signal.SIGKILL)


for request in sys.stdin:
    asked = json.loads(request)
    argv, cut_at = (asked, None) if isinstance(asked, list) else (asked["argv"], asked["cut_at"])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        seen = [0]
        if cut_at is not None:
            count_writes(cut_at, seen)
        code = 0
        try:
            alembic.config.main(argv=argv, prog="alembic")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        if cut_at is not None:
            print("CUT writes", seen[0], flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    print("pid", pid, flush=True)
    with os.fdopen(read, errors="replace") as output:
        for line in output:
            print("out", line.rstrip("\n"), flush=True)
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
""".replace("CUT", CUT)


@dataclass
class Run:
    returncode: int  # -9: killed
    output: str
    seconds: float  # from env.py's first mark to its second (or to the end of the process)
    killed: bool = False


class Launcher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alembic(self, ini: Path, verb: str, target: str,
                kill_after: float | None = None) -> Run:
        """``alembic -c ini verb target`` in a process of its own; with ``kill_after``,
        SIGKILL that many seconds after env.py starts the migrations (unless it is
        over by then)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(["-c", str(ini), verb, target]) + "\n")
        self.proc.stdin.flush()
        first = self.proc.stdout.readline().split()
        assert first[:1] == ["pid"], f"the launcher said {first!r}"
        pid = int(first[1])
        lines: list[str] = []
        started, ended = threading.Event(), threading.Event()
        marks: list[float] = []
        done: list[float] = []
        code: list[int] = []

        def follow() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                kind, _, line = raw.rstrip("\n").partition(" ")
                if kind == "exit":
                    code.append(int(line))
                    break
                if line == MARK and not marks:
                    marks.append(time.monotonic())
                    started.set()
                elif line == DONE:
                    done.append(time.monotonic())
                lines.append(line)
            ended.set()
            started.set()  # over without the mark: nothing to wait for

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        killed = False
        if kill_after is not None:
            started.wait(120)
            if marks:
                time.sleep(max(0.0, marks[0] + kill_after - time.monotonic()))
            if not ended.is_set():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                except ProcessLookupError:
                    pass  # it ended (and was reaped) right after the check: not killed
        if not ended.wait(240):
            os.kill(pid, signal.SIGKILL)
            ended.wait(30)
            pytest.fail(f"alembic {verb} {target} did not end in 4 minutes:\n"
                        + "\n".join(lines[-30:]))
        finished = time.monotonic()
        reader.join(10)
        seconds = (done[0] if done else finished) - marks[0] if marks else 0.0
        return Run(code[0] if code else -1, "\n".join(lines), seconds, killed)


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    made = Launcher()
    try:
        yield made
    finally:
        made.close()


def _where(db: Database) -> str:
    """Where a kill left the database, in a few words (for the report)."""
    engine = db.engine
    engine.dispose()
    parts: list[str] = []
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # the killed run's backend, while it finishes the statement it was running
            busy = [r[0] for r in conn.execute(text(
                "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 70) "
                "FROM pg_stat_activity WHERE application_name = :name "
                "AND pid <> pg_backend_pid() AND state = 'active' "
                "AND backend_type = 'client backend'"),
                {"name": f"kills_{db.schema}"})]
            if busy:
                parts.append("its backend still running: " + " | ".join(busy))
        insp = inspect(conn)
        if insp.has_table("alembic_version"):
            versions = [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
            parts.append(f"at {','.join(versions) or 'base'}")
        present = {c["name"] for c in insp.get_columns("users")}
        parts.append("columns " + ",".join(sorted(present)))
        for column in ("name", "first_name"):
            if column in present:
                empty = conn.execute(text(
                    f"SELECT count(*) FROM users WHERE {column} IS NULL")).scalar_one()
                parts.append(f"{empty} rows with {column} NULL")
    engine.dispose()
    left = _left_behind(db)
    if left:
        parts.append("left: " + ", ".join(left))
    return "; ".join(parts)


# -- the test -------------------------------------------------------------------------------
def _starting_points(databases: Databases, scripts: Scripts, rows: int, start: str
                     ) -> Callable[[str], Database]:
    """A factory of twins at ``start``, as the reference was before its run."""
    reference = databases.reference
    if databases.dialect == "sqlite":
        assert reference.path is not None
        reference.engine.dispose()
        snapshot = databases.tmp_path / "start.db"
        shutil.copyfile(reference.path, snapshot)
        return lambda name: databases.new(name, copy_of=snapshot)

    def fresh(name: str) -> Database:
        db = databases.new(name)
        _build(db, scripts, rows, start)
        return db

    return fresh


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_a_killed_operation_run_again_ends_as_an_uninterrupted_one(
    engine: Engine, databases: Databases, launcher: Launcher, tmp_path: Path, operation: str
) -> None:
    op = OPERATIONS[operation]
    dialect = engine.dialect.name
    rows = ROWS[dialect]
    scripts = _scripts(dialect, databases.new, tmp_path)
    reference = databases.reference
    _build(reference, scripts, rows, op.start)
    twin_at_start = _starting_points(databases, scripts, rows, op.start)

    # the uninterrupted run: how long it takes, and where it ends
    clean = launcher.alembic(reference.ini(scripts, tmp_path), op.verb, op.target)
    assert clean.returncode == 0, clean.output
    want = _end_state(reference)
    assert not _left_behind(reference)
    assert want["alembic_version"] == ([] if op.target == "base" else [op.target])

    rng = random.Random(f"{SEED}-{dialect}-{operation}")
    report: list[str] = [f"{dialect} {operation}: uninterrupted run {clean.seconds:.2f} s"]
    failures: list[str] = []
    for i in range(op.kills):
        delay = clean.seconds * (i + rng.random()) / op.kills
        for attempt in range(3):
            if attempt:  # over before the kill (faster than the measured run): sooner
                report.append(f"  (over before a SIGKILL after {delay:.2f} s: trying sooner)")
                delay /= 2
            twin = twin_at_start(f"kill{i}_{attempt}")
            ini = twin.ini(scripts, tmp_path)
            killed = launcher.alembic(ini, op.verb, op.target, kill_after=delay)
            if killed.killed:
                break
        where = _where(twin) if killed.killed else "finished before the kill"
        again = launcher.alembic(ini, op.verb, op.target)
        line = (f"  SIGKILL after {delay:.2f} s ({where}); run again: exit "
                f"{again.returncode} in {again.seconds:.2f} s")
        report.append(line)
        if again.returncode != 0:
            failures.append(f"{line}\n    the re-run failed:\n{_tail(again.output)}")
            continue
        problems = _differences(twin, _end_state(twin), reference, want)
        problems += [f"left behind: {what}" for what in _left_behind(twin)]
        if problems:
            failures.append(f"{line}\n    " + "\n    ".join(problems)
                            + f"\n    re-run output:\n{_tail(again.output)}")
    print("\n".join(report))
    assert not failures, "\n".join([report[0], *failures])


def _tail(output: str, lines: int = 25) -> str:
    return "\n".join("      " + line for line in output.strip().splitlines()[-lines:])
