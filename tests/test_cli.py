"""The ``fourstep`` command line, run as a real subprocess on SQLite and PostgreSQL.

Every test writes a models module into its ``tmp_path`` (``cli_models.py``: a
``users`` table whose ``name`` is split into ``first_name``/``last_name`` with a
SQL transform, and an ``orders`` table whose ``amount`` text becomes the
integer ``amount_cents`` with a Python-only transform that raises on
``"bad..."``), creates and seeds the tables from the test process with plain
Core tables (the test process never imports the models, so the registry of
this process stays untouched), then runs ``python -m fourstep_sqla.cli`` with
``cwd=tmp_path`` and reads its exit code, its JSON lines and the rows stored.

On PostgreSQL every test has its own schema, passed to the subprocess with the
libpq startup option ``?options=-csearch_path%3D<schema>`` in the URL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ENGINE_PARAMS
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    case,
    func,
    inspect,
    select,
    text,
    update,
)

from fourstep_sqla.state import progress_table, ranges_table

MODELS = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    legacy_name: Mapped[str | None] = mapped_column("name", String(200))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))

    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.STOP_READ_OLD,
    )


def parse_amount(text):
    if text.startswith("bad"):
        raise ValueError(f"cannot parse {text!r}")
    return int(text)


def format_amount(value):
    return str(value)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    amount_text: Mapped[str | None] = mapped_column("amount", String(50))
    amount_cents: Mapped[int | None]

    amount = phased(
        old="amount_text",
        new="amount_cents",
        forward=Transform(parse_amount),
        backward=Transform(format_amount),
        phase=Phase.STOP_READ_OLD,
    )
'''

USERS = "users.full_name"
ORDERS = "orders.amount"

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
)
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("amount", String(50)),
    Column("amount_cents", Integer),
)
touch_count = Table(
    "touch_count",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, nullable=False, server_default="0"),
)


# -- data --------------------------------------------------------------------------------
def user_name(i: int) -> str | None:
    if i % 100 == 0:
        return None  # nothing to move
    if i == 5:
        return " "  # forward() is empty: never pending, never missing
    if i % 50 == 0:
        return f"Solo{i}"  # one word: last_name stays NULL
    if i % 7 == 0:
        return f"First{i} Last{i} Jr"
    return f"First{i} Last{i}"


def split(name: str | None) -> tuple[str | None, str | None]:
    if name is None:
        return None, None
    pieces = [*name.split(" ", 1), ""]
    return pieces[0] or None, pieces[1] or None


def pending_users(n: int) -> int:
    return sum(1 for i in range(1, n + 1) if split(user_name(i)) != (None, None))


def seed_users(engine: Engine, n: int, *, touches: bool = False) -> None:
    with engine.begin() as conn:
        users.create(conn)
        conn.execute(users.insert(), [{"id": i, "name": user_name(i)} for i in range(1, n + 1)])
        if touches:
            _install_touch_trigger(conn, n)


def _install_touch_trigger(conn: Any, n: int) -> None:
    """Count, per row, every UPDATE that writes the new columns of ``users``."""
    touch_count.create(conn)
    conn.execute(touch_count.insert(), [{"id": i, "n": 0} for i in range(1, n + 1)])
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "CREATE FUNCTION count_touch() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN UPDATE touch_count SET n = n + 1 WHERE id = NEW.id; RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER users_touch AFTER UPDATE OF first_name, last_name ON users "
                "FOR EACH ROW EXECUTE FUNCTION count_touch()"
            )
        )
    elif conn.dialect.name == "mysql":
        # no UPDATE OF there: every row update counts (the backfill is the only writer)
        conn.execute(
            text(
                "CREATE TRIGGER users_touch AFTER UPDATE ON users FOR EACH ROW "
                "UPDATE touch_count SET n = n + 1 WHERE id = NEW.id"
            )
        )
    else:
        conn.execute(
            text(
                "CREATE TRIGGER users_touch AFTER UPDATE OF first_name, last_name ON users "
                "BEGIN UPDATE touch_count SET n = n + 1 WHERE id = NEW.id; END"
            )
        )


def seed_orders(engine: Engine, n: int, bad: Sequence[int] = ()) -> None:
    with engine.begin() as conn:
        orders.create(conn)
        conn.execute(
            orders.insert(),
            [
                {"id": i, "amount": f"bad{i}" if i in bad else str(i * 3)}
                for i in range(1, n + 1)
            ],
        )


def assert_users_backfilled(engine: Engine, n: int) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            select(users.c.id, users.c.name, users.c.first_name, users.c.last_name).order_by(
                users.c.id
            )
        ).all()
    assert len(rows) == n
    wrong = [r for r in rows if (r.first_name, r.last_name) != split(r.name)]
    assert not wrong, f"{len(wrong)} row(s) not backfilled correctly, e.g. {wrong[:3]}"


def touches(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(touch_count.c.n, touch_count.c.id)).all()
    return {r.id: r.n for r in rows}


# -- running the command -----------------------------------------------------------------
@dataclass
class Db:
    dialect: str
    engine: Engine
    url: str  # what the subprocess connects to (same database, same schema)
    path: Path  # the subprocess's working directory, with cli_models.py in it


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def one(self, event: str) -> dict[str, Any]:
        found = self.of(event)
        assert len(found) == 1, f"expected one {event!r} event: {self}"
        return found[0]

    def __str__(self) -> str:
        return (
            f"fourstep {' '.join(self.args)} -> {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


def cli_env(url: str | None, models: str | None = "cli_models") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOURSTEP_")}
    env.pop("PYTHONPATH", None)
    if url is not None:
        env["FOURSTEP_DATABASE_URL"] = url
    if models is not None:
        env["FOURSTEP_MODELS"] = models
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fourstep_sqla.cli", *args]


def run_cli(
    cwd: Path,
    *args: str,
    url: str | None,
    models: str | None = "cli_models",
    timeout: float = 120,
) -> Result:
    proc = subprocess.run(
        command(*args),
        cwd=cwd,
        env=cli_env(url, models),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return Result(list(args), proc.returncode, proc.stdout, proc.stderr, events)


def fourstep(db: Db, *args: str, timeout: float = 120) -> Result:
    return run_cli(db.path, *args, url=db.url, timeout=timeout)


def assert_usage_error(result: Result, *fragments: str) -> str:
    """Exit 2 with one line on stderr, ``fourstep: error: ...``, no traceback."""
    assert result.returncode == 2, str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, str(result)
    line = lines[0]
    assert line.startswith("fourstep: error: "), str(result)
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def _db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    (tmp_path / "cli_models.py").write_text(MODELS)
    if request.param in ("sqlite", "mariadb"):
        engine: Engine = request.getfixturevalue(
            "sqlite_engine" if request.param == "sqlite" else "mysql_db_engine"
        )
        url = engine.url.render_as_string(hide_password=False)
    else:
        engine = request.getfixturevalue("pg_schema_engine")
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        url = engine.url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    return Db(request.param, engine, url, tmp_path)


@pytest.fixture(params=ENGINE_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    return _db(request, tmp_path)


@pytest.fixture(params=ENGINE_PARAMS[1:])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    """PostgreSQL and MariaDB: several workers write at once there."""
    return _db(request, tmp_path)


# -- 1-3: status, backfill, verify -------------------------------------------------------
N_USERS = 3_000


def test_status_backfill_and_rerun(db: Db) -> None:
    seed_users(db.engine, N_USERS)
    seed_orders(db.engine, 500)
    pending = pending_users(N_USERS)

    before = fourstep(db, "status")
    assert before.returncode == 0, str(before)
    by_key = {e["key"]: e for e in before.of("status")}
    assert sorted(by_key) == [ORDERS, USERS]  # no key: every attribute of the module
    status = by_key[USERS]
    assert status["phase"] == "STOP_READ_OLD" and status["phase_number"] == 3
    assert status["mode"] == "sql"
    assert (status["rows_total"], status["rows_pending"]) == (N_USERS, pending)
    assert status["run_status"] is None and status["skipped"] == 0
    assert status["verified_at"] is None and status["verify_ok"] is None
    assert by_key[ORDERS]["mode"] == "python"
    assert (by_key[ORDERS]["rows_total"], by_key[ORDERS]["rows_pending"]) == (500, 500)

    dry = fourstep(db, "backfill", "--dry-run", USERS)
    assert dry.returncode == 0, str(dry)
    done = dry.one("done")
    assert done["dry_run"] is True and done["rows_left"] == pending and done["rows_updated"] == 0
    with db.engine.connect() as conn:
        written = select(users.c.id).where(users.c.first_name.is_not(None))
        assert conn.execute(written).first() is None
        assert not inspect(conn).has_table("fourstep_state")  # a dry run writes nothing

    first = fourstep(db, "backfill", "--batch-size", "500", USERS)
    assert first.returncode == 0, str(first)
    done = first.one("done")
    assert done["key"] == USERS and done["mode"] == "sql"
    assert done["rows_updated"] == pending
    assert done["complete"] is True and done["rows_left"] == 0 and done["skipped_keys"] == []
    assert done["batches"] >= 1 and done["seconds"] >= 0
    progress = first.of("progress")
    assert progress, "at least the first batch is reported"
    assert progress[0]["key"] == USERS and progress[0]["rows_pending_at_start"] == pending
    assert_users_backfilled(db.engine, N_USERS)

    after = fourstep(db, "status", USERS)
    assert after.returncode == 0, str(after)
    status = after.one("status")
    assert (status["rows_total"], status["rows_pending"]) == (N_USERS, 0)
    assert status["run_status"] == "complete" and status["rows_updated"] == pending

    again = fourstep(db, "backfill", USERS)
    assert again.returncode == 0, str(again)
    assert again.one("done")["rows_updated"] == 0
    assert again.one("done")["complete"] is True
    assert_users_backfilled(db.engine, N_USERS)

    python_mode = fourstep(db, "backfill", ORDERS)
    assert python_mode.returncode == 0, str(python_mode)
    assert python_mode.one("done")["mode"] == "python"
    assert python_mode.one("done")["rows_updated"] == 500
    with db.engine.connect() as conn:
        wrong = conn.execute(
            select(orders.c.id).where(orders.c.amount_cents.is_distinct_from(orders.c.id * 3))
        ).all()
    assert wrong == []


def test_verify_ok_then_tampered(db: Db) -> None:
    seed_users(db.engine, N_USERS)
    seed_orders(db.engine, 300)
    assert fourstep(db, "backfill").returncode == 0  # both attributes

    ok = fourstep(db, "verify")
    assert ok.returncode == 0, str(ok)
    results = {e["key"]: e for e in ok.of("verify")}
    assert sorted(results) == [ORDERS, USERS]
    assert results[USERS]["ok"] is True and results[USERS]["total"] == N_USERS
    assert (results[USERS]["missing"], results[USERS]["mismatched"]) == (0, 0)
    assert results[USERS]["sample_keys"] == [] and results[USERS]["mode"] == "sql"
    assert results[ORDERS]["ok"] is True and results[ORDERS]["mode"] == "python"

    with db.engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == 17).values(first_name="Tampered"))
        conn.execute(update(users).where(users.c.id == 23).values(first_name=None, last_name=None))
        conn.execute(update(orders).where(orders.c.id == 9).values(amount_cents=-1))

    bad = fourstep(db, "verify", USERS)
    assert bad.returncode == 1, str(bad)
    result = bad.one("verify")
    assert result["ok"] is False
    assert (result["missing"], result["mismatched"]) == (1, 1)
    assert result["sample_keys"] == [[17], [23]]

    python_bad = fourstep(db, "verify", ORDERS)
    assert python_bad.returncode == 1, str(python_bad)
    assert python_bad.one("verify")["sample_keys"] == [[9]]

    status = fourstep(db, "status", USERS).one("status")
    assert status["sync_triggers"] is False  # this table has none
    assert status["verify_ok"] is False and status["verified_at"] is not None
    assert (status["verify_missing"], status["verify_mismatched"]) == (1, 1)
    assert status["verify_total"] == N_USERS
    assert status["rows_pending"] == 1  # row 23


def test_repair_fixes_what_verify_found(db: Db) -> None:
    seed_users(db.engine, 400)
    assert fourstep(db, "backfill", USERS).returncode == 0
    with db.engine.begin() as conn:
        # old-only writes after the backfill, outside the ORM and without triggers
        conn.execute(update(users).where(users.c.id == 17).values(name="Ada King"))
        conn.execute(update(users).where(users.c.id == 23).values(first_name="Drift"))
    bad = fourstep(db, "verify", USERS)
    assert bad.returncode == 1 and bad.one("verify")["sample_keys"] == [[17], [23]]
    assert bad.one("verify")["synced"] is False
    notes = bad.one("verify")["notes"]
    assert any(f"fourstep backfill {USERS} --repair" in note for note in notes), notes
    assert any("[5]" in note and "accept_lossy" in note for note in notes), notes  # ' '

    dry = fourstep(db, "backfill", USERS, "--repair", "--dry-run")
    assert dry.returncode == 0 and dry.one("done")["rows_left"] == 2, str(dry)
    repaired = fourstep(db, "backfill", USERS, "--repair")
    assert repaired.returncode == 0, str(repaired)
    done = repaired.one("done")
    assert done["repair"] is True and done["rows_updated"] == 2 and done["complete"] is True
    assert fourstep(db, "verify", USERS).returncode == 0
    assert_users_backfilled(db.engine, 400)
    with db.engine.connect() as conn:
        assert conn.execute(select(users.c.name).where(users.c.id == 17)).scalar_one() == (
            "Ada King"
        )


def test_after_the_drop_step_4_is_done(db: Db) -> None:
    """The old column dropped (the model still declares it, at step 4): nothing to
    fill or compare, said as such, exit 0."""
    seed_users(db.engine, 50)
    assert fourstep(db, "backfill", USERS).returncode == 0
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE users DROP COLUMN name"))
    for command_ in ("backfill", "verify"):
        result = fourstep(db, command_, USERS)
        assert result.returncode == 0, str(result)
        assert "Traceback" not in result.stderr
        event = result.one("done" if command_ == "backfill" else "verify")
        assert event["dropped"] is True
    text_out = run_cli(db.path, "verify", USERS, url=db.url)
    assert "step 4 done: old column(s) dropped" in text_out.stdout
    status = fourstep(db, "status", USERS).one("status")
    assert status["note"] == "old column(s) dropped"


# -- 4: time budget ----------------------------------------------------------------------
def test_time_budget_then_resume(db: Db) -> None:
    seed_users(db.engine, N_USERS)
    pending = pending_users(N_USERS)
    slow = (
        "backfill", USERS, "--batch-size", "100", "--target-ms", "0", "--pause-ms", "50",
        "--max-seconds", "0.3",
    )
    cut = fourstep(db, *slow)
    assert cut.returncode == 3, str(cut)
    done = cut.one("done")
    assert done["complete"] is False
    assert done["rows_left"] > 0
    assert done["rows_updated"] > 0
    assert done["rows_updated"] + done["rows_left"] == pending
    status = fourstep(db, "status", USERS).one("status")
    assert status["run_status"] == "running"
    assert status["rows_pending"] == done["rows_left"]

    rest = fourstep(db, "backfill", USERS)
    assert rest.returncode == 0, str(rest)
    assert rest.one("done")["complete"] is True
    assert rest.one("done")["rows_updated"] == done["rows_left"]
    assert_users_backfilled(db.engine, N_USERS)


# -- 5: a transform that raises ----------------------------------------------------------
def test_on_error_stop_then_skip(db: Db) -> None:
    seed_orders(db.engine, 1_000, bad=(450, 777))
    fixed = ("--batch-size", "100", "--target-ms", "0")

    stop = fourstep(db, "backfill", ORDERS, "--on-error", "stop", *fixed)
    assert stop.returncode == 1, str(stop)
    assert "Traceback" not in stop.stderr
    line = stop.stderr.strip().splitlines()[-1]
    assert line.startswith("fourstep: error: orders.amount: backfill failed")
    assert "(450,)" in line and "cannot parse 'bad450'" in line
    assert stop.one("error")["key"] == ORDERS
    with db.engine.connect() as conn:
        done_ids = conn.execute(
            select(orders.c.id).where(orders.c.amount_cents.is_not(None)).order_by(orders.c.id)
        ).scalars().all()
    # the batches before the failing one are committed, nothing of the failing one
    # (at most 100 keys, ending at or after 450) nor after it
    assert done_ids == list(range(1, len(done_ids) + 1))
    assert 350 <= len(done_ids) < 450
    before_skip = len(done_ids)

    skip = fourstep(db, "backfill", ORDERS, "--on-error", "skip", *fixed)
    assert skip.returncode == 1, str(skip)
    done = skip.one("done")
    assert done["skipped_keys"] == [[450], [777]]
    assert done["complete"] is True and done["rows_updated"] == 1_000 - before_skip - 2
    with db.engine.connect() as conn:
        rows = conn.execute(select(orders.c.id, orders.c.amount_cents)).all()
    assert {r.id for r in rows if r.amount_cents is None} == {450, 777}
    assert all(r.amount_cents == r.id * 3 for r in rows if r.id not in (450, 777))

    status = fourstep(db, "status", ORDERS).one("status")
    assert status["skipped"] == 2 and status["rows_pending"] == 2


# -- 6: bad input ------------------------------------------------------------------------
def test_unknown_key_lists_known_keys(tmp_path: Path) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    result = run_cli(tmp_path, "status", "users.nope", url=f"sqlite:///{tmp_path / 'x.db'}")
    line = assert_usage_error(result, "'users.nope'", USERS, ORDERS)
    assert "known keys" in line


def test_unreachable_database_masks_the_password(tmp_path: Path) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test"
    for args in (("status",), ("backfill", USERS), ("verify",)):
        result = run_cli(tmp_path, *args, url=url)
        line = assert_usage_error(result, "postgresql+psycopg://postgres:***@127.0.0.1:1/test")
        assert "s3cret" not in result.stderr + result.stdout
        assert "cannot connect" in line
    via_flag = run_cli(tmp_path, "status", "--url", url, url=None)
    assert_usage_error(via_flag, "***", "--url")
    assert "s3cret" not in via_flag.stderr + via_flag.stdout


def test_models_module_that_fails_to_import(tmp_path: Path) -> None:
    (tmp_path / "broken_models.py").write_text("raise RuntimeError('boom at import')\n")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run_cli(tmp_path, "status", url=url, models="broken_models")
    assert_usage_error(result, "broken_models", "RuntimeError", "boom at import")
    missing = run_cli(tmp_path, "backfill", url=url, models="no_such.models")
    assert_usage_error(missing, "no_such.models", "ModuleNotFoundError")
    (tmp_path / "syntax_models.py").write_text("def broken(:\n")
    syntax = run_cli(tmp_path, "verify", url=url, models="syntax_models")
    assert_usage_error(syntax, "syntax_models", "SyntaxError")
    empty = run_cli(tmp_path, "status", url=url, models="json")
    assert_usage_error(empty, "'json'", "no phased attributes")


def test_missing_configuration(tmp_path: Path) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    no_url = run_cli(tmp_path, "status", url=None)
    assert_usage_error(no_url, "no database URL", "--url", "FOURSTEP_DATABASE_URL")
    no_models = run_cli(tmp_path, "status", url=f"sqlite:///{tmp_path / 'x.db'}", models=None)
    assert_usage_error(no_models, "no models module", "--models", "FOURSTEP_MODELS")
    missing_ini = run_cli(tmp_path, "status", "--config", "nope.ini", url=None)
    assert_usage_error(missing_ini, "nope.ini")
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    no_url_in_ini = run_cli(tmp_path, "status", url=None)
    assert_usage_error(no_url_in_ini, "alembic.ini", "sqlalchemy.url")
    bad_url = run_cli(tmp_path, "status", "--url", "not a url", url=None)
    assert_usage_error(bad_url, "invalid database URL")
    no_driver = run_cli(tmp_path, "status", "--url", "nosuchdb://u:pw@host/db", url=None)
    line = assert_usage_error(no_driver, "nosuchdb://u:***@host/db")
    assert ":pw@" not in line


def test_invalid_options(tmp_path: Path) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    cases = [
        (("backfill", "--batch-size", "0"), "--batch-size"),
        (("backfill", "--batch-size", "many"), "--batch-size"),
        (("backfill", "--workers", "-2"), "--workers"),
        (("backfill", "--on-error", "ignore"), "--on-error"),
        (("backfill", "--max-seconds", "0"), "--max-seconds"),
        (("backfill", "--pause-ms", "-1"), "--pause-ms"),
        (("verify", "--sample-size", "x"), "--sample-size"),
        (("status", "--frobnicate"), "--frobnicate"),
        (("frobnicate",), "frobnicate"),
        ((), "COMMAND"),
        (("revision", USERS), "--step"),
        (("revision", "--step", "5", USERS), "--step"),
        (("revision", "--step", "3", USERS), "alembic.ini"),
        (("revision", "--step", "3"), "exactly one KEY"),
    ]
    for args, fragment in cases:
        assert_usage_error(run_cli(tmp_path, *args, url=url), fragment)
    helped = run_cli(tmp_path, "backfill", "--help", url=url)
    assert helped.returncode == 0 and "--max-seconds" in helped.stdout


def test_url_from_alembic_ini(tmp_path: Path, sqlite_engine: Engine) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    seed_users(sqlite_engine, 200)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nscript_location = migrations\nsqlalchemy.url = sqlite:///%(here)s/test.db\n"
    )
    result = run_cli(tmp_path, "backfill", USERS, url=None)
    assert result.returncode == 0, str(result)
    assert result.one("done")["rows_updated"] == pending_users(200)
    other = tmp_path / "conf"
    other.mkdir()
    (other / "other.ini").write_text("[alembic]\nsqlalchemy.url = sqlite:///%(here)s/../test.db\n")
    status = run_cli(tmp_path, "status", USERS, "--config", "conf/other.ini", url=None)
    assert status.returncode == 0, str(status)
    assert status.one("status")["rows_pending"] == 0


# -- a terminal: rich table and progress bar ---------------------------------------------
def test_terminal_output(tmp_path: Path, sqlite_engine: Engine) -> None:
    import pty

    (tmp_path / "cli_models.py").write_text(MODELS)
    seed_users(sqlite_engine, 2_000)
    url = sqlite_engine.url.render_as_string(hide_password=False)

    def on_terminal(*args: str) -> tuple[int, str]:
        master, slave = pty.openpty()
        env = cli_env(url) | {"COLUMNS": "160", "TERM": "xterm"}
        proc = subprocess.Popen(
            command(*args), cwd=tmp_path, env=env, stdout=slave, stderr=subprocess.PIPE
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        proc.wait(timeout=60)
        return proc.returncode, b"".join(chunks).decode("utf-8", "replace")

    code, shown = on_terminal("backfill", USERS, "--batch-size", "200", "--target-ms", "0")
    assert code == 0, shown
    assert "rows/s" in shown and '"event"' not in shown
    assert f"{pending_users(2_000):,} row(s) written" in shown and "complete" in shown
    code, shown = on_terminal("status")
    assert code == 0, shown
    assert "users.full_name" in shown and "orders.amount" in shown and "pending" in shown
    code, shown = on_terminal("status", "--json")
    assert code == 0 and '"event": "status"' in shown


# -- 7: kill -9 at random moments, then finish -------------------------------------------
N_KILL = 20_000
BATCH = 200


@dataclass
class RunSnapshot:
    rows_updated: int
    batches: int
    done: bool
    #: batches of BATCH keys its ranges take when each is walked exactly once
    batches_needed: int


def _runs(engine: Engine) -> dict[str, RunSnapshot]:
    """What the progress tables say about every backfill run of users.full_name."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("fourstep_progress"):
            return {}
        p = progress_table.c
        progress = conn.execute(
            select(p.run_id, func.sum(p.rows_updated), func.sum(p.batches),
                   func.min(case((p.done, 1), else_=0)))
            .where(p.key == USERS).group_by(p.run_id)
        ).all()
        r = ranges_table.c
        ranges = conn.execute(
            select(r.run_id, r.lower_key, r.upper_key).where(r.key == USERS)
        ).all()
    needed: dict[str, int] = {}
    for run_id, lower, upper in ranges:
        low = json.loads(lower)[0] if lower is not None else 0  # ids start at 1
        high = json.loads(upper)[0]
        needed[run_id] = needed.get(run_id, 0) + -(-(high - low) // BATCH)
    return {
        str(r[0]): RunSnapshot(int(r[1]), int(r[2]), bool(r[3]), needed.get(r[0], -1))
        for r in progress
    }


def test_sigkill_at_random_moments_then_resume(db: Db) -> None:
    seed_users(db.engine, N_KILL, touches=True)
    pending = pending_users(N_KILL)
    rng = random.Random(20261127)
    args = (
        "backfill", USERS, "--batch-size", str(BATCH), "--target-ms", "0", "--pause-ms", "5",
        "--json",
    )
    runs: dict[str, RunSnapshot] = {}  # latest snapshot of every run seen
    order: list[str] = []  # run ids in the order they appeared
    kills = kills_before_done = 0
    for attempt in range(40):
        if kills >= 12:
            break
        proc = subprocess.Popen(
            command(*args),
            cwd=db.path,
            env=cli_env(db.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if attempt % 3 != 0:
            # most kills land while batches run: wait for the first one
            proc.stdout.readline()
        time.sleep(rng.uniform(0.05, 0.4))
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _out, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"backfill exited {proc.returncode}: {err}")
        for run_id, snapshot in _runs(db.engine).items():
            if run_id not in runs:
                order.append(run_id)
            runs[run_id] = snapshot
        if killed and (not order or not runs[order[0]].done):
            kills_before_done += 1
    assert kills >= 10
    # about 10 of them land before the first run completes here; later ones hit
    # runs that re-walk the keys and find nothing left (still a resume each)
    assert kills_before_done >= 3, f"only {kills_before_done} kill(s) hit unfinished work"

    final = fourstep(db, *args)
    assert final.returncode == 0, str(final)
    assert final.one("done")["complete"] is True
    for run_id, snapshot in _runs(db.engine).items():
        if run_id not in runs:
            order.append(run_id)
        runs[run_id] = snapshot

    assert_users_backfilled(db.engine, N_KILL)
    counts = touches(db.engine)
    assert max(counts.values()) == 1, "a row was written twice by the backfill"
    assert sum(counts.values()) == pending
    # the first run did all the work: each batch committed with its progress, so
    # its counters add up exactly, and no batch was done twice: its ranges, walked
    # in fixed batches of 200 keys, take exactly `batches_needed` batches however
    # often the run was killed (a batch in flight when killed is not counted)
    first = runs[order[0]]
    assert first.done
    assert first.rows_updated == pending, (
        "the run's progress counts fewer rows than it wrote: some batch committed its "
        "rows without its progress row (a kill fell between the two commits)"
    )
    assert first.batches == first.batches_needed
    for later in order[1:]:  # runs planned after the first one completed: nothing left
        assert runs[later].rows_updated == 0


# -- 8: several workers ------------------------------------------------------------------
@pytest.mark.parametrize("workers", [2, 4])
def test_workers_write_every_row_once(server_db: Db, workers: int) -> None:
    n = 20_000
    seed_users(server_db.engine, n, touches=True)
    pending = pending_users(n)
    result = fourstep(
        server_db, "backfill", USERS, "--workers", str(workers), "--batch-size", "500",
        "--target-ms", "0",
    )
    assert result.returncode == 0, str(result)
    done = result.one("done")
    assert done["complete"] is True and done["rows_updated"] == pending
    assert_users_backfilled(server_db.engine, n)
    counts = touches(server_db.engine)
    assert max(counts.values()) == 1
    assert sum(counts.values()) == pending
    (run,) = _runs(server_db.engine).values()
    assert run.rows_updated == pending and run.done
    verify = fourstep(server_db, "verify", USERS)
    assert verify.returncode == 0, str(verify)


# -- demo, revision, status --check ---------------------------------------------------
def test_demo_subprocess(db: Db) -> None:
    """``fourstep demo --url URL`` on each database."""
    result = subprocess.run(
        [*command("demo", "--url", db.url, "--rows", "300")], cwd=db.path,
        env=cli_env(None, models=None), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for step in ("Step 1 (WRITE_BOTH)", "Step 3 (STOP_READ_OLD)", "Step 4 (STOP_WRITE_OLD)",
                 "Downgrade s4 -> s3", "0 missing, 0 mismatched", "Done."):
        assert step in result.stdout


def test_revision_and_status_check(tmp_path: Path, sqlite_engine: Engine) -> None:
    import shutil

    from alembic import command as alembic_command

    (tmp_path / "cli_models.py").write_text(MODELS)
    seed_users(sqlite_engine, 300)
    url = sqlite_engine.url.render_as_string(hide_password=False)
    migrations = tmp_path / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(
        "from alembic import context\n"
        "from sqlalchemy import create_engine\n"
        "import fourstep_sqla.alembic  # noqa: F401\n"
        "engine = create_engine(context.config.get_main_option('sqlalchemy.url'))\n"
        "with engine.connect() as connection:\n"
        "    context.configure(connection=connection, transaction_per_migration=True)\n"
        "    with context.begin_transaction():\n"
        "        context.run_migrations()\n"
    )
    shutil.copy(Path(alembic_command.__file__).parent / "templates" / "generic" /
                "script.py.mako", migrations / "script.py.mako")
    (tmp_path / "alembic.ini").write_text(
        f"[alembic]\nscript_location = migrations\nsqlalchemy.url = {url}\n"
    )
    # the models are at step 3 but nothing was backfilled: the guard says so
    checked = run_cli(tmp_path, "status", "--check", USERS, url=None)
    assert checked.returncode == 1, str(checked)
    problem = checked.one("check")
    assert problem["ok"] is False and "backfill has not finished" in problem["problem"]
    written = run_cli(tmp_path, "revision", "--step", "3", USERS, "-m", "backfill", url=None)
    assert written.returncode == 0, str(written)
    body = Path(written.one("revision")["path"]).read_text()
    assert "op.backfill(" in body and "import fourstep_sqla.alembic" in body
    upgraded = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert_users_backfilled(sqlite_engine, 300)
    rechecked = run_cli(tmp_path, "status", "--check", USERS, url=None)
    assert rechecked.returncode == 0, str(rechecked)
    assert rechecked.one("check")["ok"] is True
