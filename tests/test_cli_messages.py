"""What the ``fourstep`` command line says: no password in it, no raw overflow,
and the real cause of a lost connection.

Every test runs the installed ``fourstep`` script (``.venv/bin/fourstep``) as a
real subprocess in ``tmp_path``, with a models module written there, and reads
its exit code, stdout and stderr. The passwords are made up and easy to grep
for; PostgreSQL (trust authentication) accepts a connection whatever password
the URL carries, so a URL with a password still reaches the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from test_cli import (
    MODELS,
    USERS,
    assert_users_backfilled,
    cli_env,
    seed_orders,
    seed_users,
    users,
)

FOURSTEP = Path(sys.executable).parent / "fourstep"


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def events(self, name: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]
        return [e for e in found if e.get("event") == name]

    def __str__(self) -> str:
        return (
            f"fourstep {' '.join(self.args)} -> {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


def fourstep(
    cwd: Path,
    *args: str,
    url: str | None,
    models: str | None = "cli_models",
    timeout: float = 120,
) -> Run:
    proc = subprocess.run(
        [str(FOURSTEP), *args],
        cwd=cwd,
        env=cli_env(url, models),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(list(args), proc.returncode, proc.stdout, proc.stderr)


def usage_error(run: Run, *fragments: str) -> str:
    """Exit 2, one line on stderr starting ``fourstep: error:``, no traceback."""
    assert run.returncode == 2, str(run)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, str(run)
    assert lines[0].startswith("fourstep: error: "), str(run)
    assert "Traceback" not in run.output, str(run)
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assert_hidden(run: Run, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in run.output, f"{secret!r} shown:\n{run}"


# -- the masking itself -------------------------------------------------------------------
def test_scrub_masks_every_form_of_a_known_password() -> None:
    from fourstep_sqla.scrub import scrub

    url = "mysql+pymysql://app:s%40fe%25Pw9@db.internal/shop"  # the password is s@fe%Pw9
    shown = {
        "as read": "login as app with s@fe%Pw9 refused",
        "as written": "value s%40fe%25Pw9 rejected",
        "as an .ini file holds it": "sqlalchemy.url: s%%40fe%%25Pw9",
        "from a bad '%' on": "found: '%25Pw9@db.internal/shop'",
        "in a URL of another host": "mysql://app:whatever@other/shop",
        "as a setting": "host=db password=s@fe%Pw9 dbname=shop",
        "as a keyword argument": "connect(**{'password': 's@fe%Pw9'})",
    }
    for how, message in shown.items():
        masked = scrub(message, [url])
        assert "***" in masked, (how, masked)
        assert "Pw9" not in masked and "whatever" not in masked, (how, masked)


def test_scrub_keeps_the_rest_of_the_message() -> None:
    from fourstep_sqla.scrub import scrub

    url = "postgresql+psycopg://postgres:postgres@127.0.0.1/test"
    assert (
        scrub("cannot connect to postgresql+psycopg://postgres:***@127.0.0.1/test", [url])
        == "cannot connect to postgresql+psycopg://***:***@127.0.0.1/test"
    )
    for untouched in (
        "password authentication failed for user \"app\"",
        "fe_sendauth: no password supplied",
        "see https://sqlalche.me/e/21/8s2b",
        "users.full_name: 12 row(s) pending",
    ):
        assert scrub(untouched, [url, "sqlite:///x.db", "mysql://u:a@h/db"]) == untouched


# -- alembic.ini ---------------------------------------------------------------------------
def test_a_single_percent_in_alembic_ini_does_not_print_the_password(tmp_path: Path) -> None:
    """configparser quotes the value from its bad '%' on: the password's tail."""
    (tmp_path / "cli_models.py").write_text(MODELS)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nscript_location = migrations\n"
        "sqlalchemy.url = postgresql+psycopg://app:p%40tPw9x@127.0.0.1/test\n"
    )
    run = fourstep(tmp_path, "status", url=None)
    usage_error(run, "alembic.ini", "sqlalchemy.url", "'%%'")
    assert_hidden(run, "tPw9x", "%40t")


def test_an_unknown_interpolation_in_alembic_ini_does_not_print_the_value(
    tmp_path: Path,
) -> None:
    """configparser's InterpolationMissingOptionError quotes the whole raw value."""
    (tmp_path / "cli_models.py").write_text(MODELS)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nsqlalchemy.url = postgresql+psycopg://%(db_user)s:Gr8Secret@127.0.0.1/test\n"
    )
    run = fourstep(tmp_path, "status", url=None)
    usage_error(run, "alembic.ini", "sqlalchemy.url", "db_user")
    assert_hidden(run, "Gr8Secret")


def test_a_doubled_percent_in_alembic_ini_is_the_password(tmp_path: Path) -> None:
    """'%%' is a literal '%', as for Alembic; unreachable, the message masks it."""
    (tmp_path / "cli_models.py").write_text(MODELS)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nsqlalchemy.url = postgresql+psycopg://app:Pc%%40nt9x@127.0.0.1:1/test\n"
    )
    run = fourstep(tmp_path, "status", url=None)
    usage_error(run, "cannot connect", "postgresql+psycopg://app:***@127.0.0.1:1/test")
    assert_hidden(run, "Pc%40nt9x", "Pc@nt9x", "nt9x")


# -- the models module -------------------------------------------------------------------
LEAKY_IMPORT = """
import os
from sqlalchemy import make_url

url = os.environ["FOURSTEP_DATABASE_URL"]
raise RuntimeError(f"cannot reach {url} as app/{make_url(url).password}")
"""


def test_a_models_import_error_quoting_the_url_is_masked(tmp_path: Path) -> None:
    (tmp_path / "leaky_models.py").write_text(LEAKY_IMPORT)
    url = "postgresql+psycopg://app:Imp0rtSecret@127.0.0.1:1/test"
    via_env = fourstep(tmp_path, "status", url=url, models="leaky_models")
    line = usage_error(via_env, "leaky_models", "RuntimeError",
                       "postgresql+psycopg://app:***@127.0.0.1:1/test", "app/***")
    assert "cannot reach" in line
    assert_hidden(via_env, "Imp0rtSecret")
    via_flag = fourstep(tmp_path, "backfill", "--models", "leaky_models", url=url, models=None)
    usage_error(via_flag, "leaky_models", "app/***")
    assert_hidden(via_flag, "Imp0rtSecret")


INI_READING_IMPORT = """
from alembic.config import Config
from sqlalchemy import make_url

url = make_url(Config("alembic.ini").get_main_option("sqlalchemy.url"))
raise RuntimeError(f"login refused for {url.username} with {url.password}")
"""


def test_a_models_import_error_quoting_the_ini_password_is_masked(tmp_path: Path) -> None:
    """The alembic.ini URL is known before the models module is imported."""
    (tmp_path / "ini_models.py").write_text(INI_READING_IMPORT)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nsqlalchemy.url = postgresql+psycopg://app:s%%40fe%%25Pw@127.0.0.1:1/test\n"
    )
    run = fourstep(tmp_path, "status", url=None, models="ini_models")
    usage_error(run, "ini_models", "login refused for app with ***")
    assert_hidden(run, "s@fe%Pw", "fe%Pw")


NOISY_MODELS = MODELS.replace(
    'raise ValueError(f"cannot parse {text!r}")',
    'raise ValueError("lookup at postgresql://svc:Js0nS3cret@rates.internal/fx failed")',
) + """
import logging
import warnings

warnings.warn("legacy DSN postgresql://legacy:WarnS3cret@old-db/app is still configured")
logging.getLogger("fourstep_sqla.app").warning(
    "retrying mysql+pymysql://svc:L0gS3cret@db.internal/shop"
)
"""


def test_warnings_log_lines_and_json_errors_are_masked(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    assert "Js0nS3cret" in NOISY_MODELS
    (tmp_path / "noisy_models.py").write_text(NOISY_MODELS)
    seed_orders(sqlite_engine, 20, bad=[7])
    url = sqlite_engine.url.render_as_string(hide_password=False)
    run = fourstep(tmp_path, "backfill", "orders.amount", "--json", url=url,
                   models="noisy_models")
    assert run.returncode == 1, str(run)
    assert "legacy:***@old-db" in run.stderr, str(run)  # the warning
    assert "svc:***@db.internal" in run.stderr, str(run)  # the forwarded log line
    (error,) = run.events("error")
    assert "svc:***@rates.internal" in error["error"], str(run)
    assert_hidden(run, "WarnS3cret", "L0gS3cret", "Js0nS3cret")


# -- numeric options ---------------------------------------------------------------------
HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    ("args", "option", "bounds"),
    [
        (("backfill", "--batch-size", HUGE), "--batch-size", ("1", "100000")),
        (("backfill", "--workers", HUGE), "--workers", ("1", "32")),
        (("backfill", "--workers", "33"), "--workers", ("1", "32")),
        (("backfill", "--target-ms", "1e308"), "--target-ms", ("0", "10000")),
        (("backfill", "--target-ms", "inf"), "--target-ms", ("0", "10000")),
        (("backfill", "--pause-ms", "1e300"), "--pause-ms", ("0", "60000")),
        (("backfill", "--pause-ms", "nan"), "--pause-ms", ("0", "60000")),
        (("backfill", "--max-seconds", "1e300"), "--max-seconds", ("604800",)),
        (("backfill", "--lock-timeout-ms", "0.5"), "--lock-timeout-ms", ("1", "60000")),
        (("backfill", "--lock-timeout-ms", HUGE), "--lock-timeout-ms", ("1", "60000")),
        (("verify", "--batch-size", HUGE), "--batch-size", ("1", "1000000")),
        (("verify", "--sample-size", HUGE), "--sample-size", ("1", "1000")),
        (("demo", "--rows", HUGE), "--rows", ("1", "1000000")),
        (("revision", "--step", HUGE, USERS), "--step", ()),
    ],
)
def test_numeric_options_out_of_range_are_usage_errors(
    tmp_path: Path, args: Sequence[str], option: str, bounds: Sequence[str]
) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    run = fourstep(tmp_path, *args, url=f"sqlite:///{tmp_path / 'x.db'}")
    usage_error(run, f"argument {option}", *bounds)
    assert "OverflowError" not in run.output and "out of range for" not in run.output


def test_numeric_options_at_their_bounds_are_accepted(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    seed_users(sqlite_engine, 300)
    url = sqlite_engine.url.render_as_string(hide_password=False)
    run = fourstep(
        tmp_path, "backfill", USERS, "--batch-size", "100000", "--workers", "32",
        "--target-ms", "10000", "--pause-ms", "0", "--max-seconds", "604800",
        "--lock-timeout-ms", "60000", url=url,
    )
    assert run.returncode == 0, str(run)
    (done,) = run.events("done")
    assert done["complete"] is True
    small = fourstep(
        tmp_path, "backfill", USERS, "--batch-size", "1", "--workers", "1", "--target-ms", "0",
        "--pause-ms", "60000", "--max-seconds", "0.001", "--lock-timeout-ms", "1", "--dry-run",
        url=url,
    )
    assert small.returncode == 0, str(small)
    checked = fourstep(tmp_path, "verify", USERS, "--batch-size", "1000000",
                       "--sample-size", "1000", url=url)
    assert checked.returncode == 0, str(checked)


# -- a terminated backend ------------------------------------------------------------------
N_ROWS = 4_000
SLOW_COMMIT = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF mod(NEW.id, 100) = 1 THEN PERFORM pg_sleep(0.3); END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER users_slow_commit AFTER UPDATE ON users
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


def _terminate_when(
    admin: Engine, app: str, condition: str, stop: threading.Event, hits: list[int]
) -> None:
    """Terminate the backends of ``app`` in ``condition`` as soon as there is one."""
    with admin.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        while not stop.is_set():
            killed = conn.execute(
                text(
                    f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    f"WHERE application_name = :app AND {condition}"
                ),
                {"app": app},
            ).scalar_one()
            if killed:
                hits.append(killed)
                return
            time.sleep(0.005)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("moment", "workers"),
    [
        # the batch's COMMIT (a deferred trigger makes it last): SQLAlchemy
        # then refuses the connection with PendingRollbackError
        ("commit", "1"),
        ("commit", "2"),
        # idle between two batches: the next statement finds the connection gone
        ("between batches", "1"),
    ],
)
def test_a_terminated_backend_is_named_and_the_backfill_resumes(
    tmp_path: Path, pg_schema_engine: Engine, pg_engine: Engine, moment: str, workers: str
) -> None:
    (tmp_path / "cli_models.py").write_text(MODELS)
    engine = pg_schema_engine
    seed_users(engine, N_ROWS)
    with engine.begin() as conn:
        conn.exec_driver_sql(SLOW_COMMIT)
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    app = f"fourstep_{schema}"
    url = (
        engine.url.set(password="Term1nat3dPw")
        .update_query_dict({"options": f"-csearch_path={schema}", "application_name": app})
        .render_as_string(hide_password=False)
    )
    condition = (
        "state = 'active' AND query = 'COMMIT'"
        if moment == "commit"
        else "state = 'idle' AND query = 'COMMIT' "
        "AND state_change < now() - interval '50 milliseconds'"
    )
    stop = threading.Event()
    hits: list[int] = []
    killer = threading.Thread(
        target=_terminate_when, args=(pg_engine, app, condition, stop, hits)
    )
    killer.start()
    try:
        run = fourstep(
            tmp_path, "backfill", USERS, "--json", "--batch-size", "100", "--target-ms", "0",
            "--pause-ms", "200" if moment != "commit" else "0", "--workers", workers, url=url,
        )
    finally:
        stop.set()
        killer.join()
    assert hits, f"no backend was terminated: {run}"
    assert run.returncode == 1, str(run)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fourstep: error: "), str(run)
    line = lines[0]
    assert "PendingRollbackError" not in run.output and "Can't reconnect" not in run.output, line
    assert "terminated" in line or "closed the connection" in line, line
    assert "run the same command again" in line and "resume" in line, line
    (error,) = run.events("error")
    assert error["error"] == line.removeprefix("fourstep: error: ")
    assert_hidden(run, "Term1nat3dPw")

    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER users_slow_commit ON users")
        written = conn.execute(
            select(func.count()).select_from(users).where(users.c.first_name.is_not(None))
        ).scalar_one()
    assert written < N_ROWS  # stopped part way
    again = fourstep(tmp_path, "backfill", USERS, "--json", url=url)
    assert again.returncode == 0, str(again)
    assert_users_backfilled(engine, N_ROWS)


def _kill_idle_when(admin: Engine, database: str, stop: threading.Event,
                    hits: list[int]) -> None:
    """MariaDB: KILL every connection to ``database`` once all of them have been
    idle for 50 ms (the batches' one is then between two batches) and rows are
    written: the lease's too, the batch connection among them."""
    with admin.connect() as conn:
        while not stop.is_set():
            rows = conn.execute(text(
                "SELECT id, command = 'Sleep' AND time_ms > 50 FROM "
                "information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()"
            ), {"db": database}).all()
            filled = conn.execute(text(
                f"SELECT count(*) FROM {database}.users WHERE first_name IS NOT NULL"
            )).scalar_one()
            conn.rollback()
            if len(rows) >= 2 and all(idle for _id, idle in rows) and filled:
                for pid, _idle in rows:
                    conn.exec_driver_sql(f"KILL CONNECTION {int(pid)}")
                hits.append(len(rows))
                return
            time.sleep(0.005)


@pytest.mark.mysql
def test_a_killed_connection_is_named_and_the_backfill_resumes_on_mariadb(
    tmp_path: Path, mysql_db_engine: Engine, mysql_engine: Engine
) -> None:
    """MariaDB's ``KILL CONNECTION`` between two batches: the next statement finds
    the connection gone (client error 2013/2006), named as such; the run resumes."""
    (tmp_path / "cli_models.py").write_text(MODELS)
    engine = mysql_db_engine
    seed_users(engine, N_ROWS)
    engine.dispose()  # every connection to the database is then the command's
    url = engine.url.render_as_string(hide_password=False)
    stop = threading.Event()
    hits: list[int] = []
    killer = threading.Thread(target=_kill_idle_when,
                              args=(mysql_engine, str(engine.url.database), stop, hits))
    killer.start()
    try:
        run = fourstep(tmp_path, "backfill", USERS, "--json", "--batch-size", "100",
                       "--target-ms", "0", "--pause-ms", "200", url=url)
    finally:
        stop.set()
        killer.join()
    assert hits, f"no connection was killed: {run}"
    assert run.returncode == 1, str(run)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fourstep: error: "), str(run)
    line = lines[0]
    assert "PendingRollbackError" not in run.output and "Can't reconnect" not in run.output, line
    assert "terminated" in line or "closed the connection" in line, line
    assert "run the same command again" in line and "resume" in line, line

    with engine.connect() as conn:
        written = conn.execute(
            select(func.count()).select_from(users).where(users.c.first_name.is_not(None))
        ).scalar_one()
    assert written < N_ROWS  # stopped part way
    again = fourstep(tmp_path, "backfill", USERS, "--json", url=url)
    assert again.returncode == 0, str(again)
    assert_users_backfilled(engine, N_ROWS)


@pytest.mark.postgres
def test_a_terminated_backend_reaches_a_library_caller_as_itself(
    tmp_path: Path, pg_schema_engine: Engine, pg_engine: Engine
) -> None:
    """``backfill()`` called from Python: the error is the server's, not the
    ``PendingRollbackError`` that undoing the session's settings used to raise."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    from fourstep_sqla import FourStepError, backfill, load_models

    (tmp_path / "lib_models.py").write_text(MODELS)
    sys.path.insert(0, str(tmp_path))
    try:
        load_models("lib_models")
    finally:
        sys.path.remove(str(tmp_path))
    seed_users(pg_schema_engine, N_ROWS)
    with pg_schema_engine.begin() as conn:
        conn.exec_driver_sql(SLOW_COMMIT)
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    app = f"fourstep_lib_{schema}"
    engine = create_engine(pg_schema_engine.url.update_query_dict(
        {"options": f"-csearch_path={schema}", "application_name": app}))
    stop = threading.Event()
    hits: list[int] = []
    killer = threading.Thread(target=_terminate_when, args=(
        pg_engine, app, "state = 'active' AND query = 'COMMIT'", stop, hits))
    killer.start()
    try:
        # named by the engine (a failed batch) or raised as the driver's own error,
        # depending on the statement the termination hits
        with pytest.raises((FourStepError, OperationalError)) as caught:
            backfill(engine, USERS, batch_size=100, target_ms=0)
    finally:
        stop.set()
        killer.join()
        engine.dispose()
    assert hits
    message = str(caught.value)
    assert ("terminating connection" in message
            or "server closed the connection" in message), message
    if isinstance(caught.value, FourStepError):
        assert "run the backfill again" in message, message
    assert "PendingRollback" not in message and "reconnect" not in message, message


def test_demo_on_an_unreachable_database_is_a_configuration_error(tmp_path: Path) -> None:
    run = fourstep(tmp_path, "demo", "--url",
                   "postgresql+psycopg://app:D3moSecret@127.0.0.1:1/nowhere", url=None,
                   models=None, timeout=60)
    usage_error(run, "cannot connect to the database")
    assert_hidden(run, "D3moSecret")
