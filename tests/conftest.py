"""Database fixtures shared by the whole suite.

- ``sqlite_engine``: a file-backed SQLite database per test.
- ``mysql_db_engine``: on MariaDB/MySQL, a database of its own per test.
- ``pg_engine`` / ``mysql_engine``: one engine per session; skipped when the
  server is not reachable, failed instead when ``CI`` is set.
- ``server_engine``: PostgreSQL and MariaDB (several writers at a time).
- ``engine`` (alias ``every_engine``): parametrized over SQLite, PostgreSQL and
  MariaDB; on PostgreSQL each test gets its own schema (first on
  ``search_path``), on MariaDB a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.schema import CreateSchema, DropSchema

pytest_plugins = ("pytester",)

POSTGRES_URL = os.environ.get(
    "FOURSTEP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("FOURSTEP_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

# Fail fast instead of hanging on a firewalled port.
_CONNECT_TIMEOUT_SECONDS = 5


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _connect_or_give_up(url: str, server: str, env_var: str) -> Engine:
    """Return a connected engine for ``url``, or skip (fail under CI) the test."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        engine = create_engine(url, connect_args={"connect_timeout": _CONNECT_TIMEOUT_SECONDS})
        with engine.connect():
            pass
    except Exception as exc:  # driver missing, refused, auth failure: all "unreachable"
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        return engine
    # Outside the except block, so the report is one line rather than a chained traceback.
    reason = (
        f"{server} not reachable at {shown} ({detail}): "
        f"start it with docker compose up -d or set {env_var}"
    )
    if _in_ci():
        pytest.fail(f"{reason} [CI is set, so this is an error, not a skip]", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    """A session-wide engine on the test PostgreSQL database."""
    engine = _connect_or_give_up(POSTGRES_URL, "PostgreSQL", "FOURSTEP_TEST_POSTGRES_URL")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def mysql_engine() -> Iterator[Engine]:
    """A session-wide engine on the test MariaDB/MySQL database."""
    engine = _connect_or_give_up(MYSQL_URL, "MariaDB/MySQL", "FOURSTEP_TEST_MYSQL_URL")
    yield engine
    engine.dispose()


@pytest.fixture
def mysql_db_engine(mysql_engine: Engine) -> Iterator[Engine]:
    """A MariaDB/MySQL engine on a database of its own, dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = create_engine(
        mysql_engine.url.set(database=name),
        connect_args={"connect_timeout": _CONNECT_TIMEOUT_SECONDS},
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with mysql_engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name}")


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite engine on a fresh file, so every connection sees the same data."""
    engine = create_engine(f"sqlite:///{tmp_path / 'test.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema_engine(pg_engine: Engine) -> Iterator[Engine]:
    """A PostgreSQL engine whose connections use a fresh schema ``t_<hex>``."""
    schema = f"t_{secrets.token_hex(6)}"
    with pg_engine.begin() as conn:
        conn.execute(CreateSchema(schema))
    # libpq startup option: the schema is the session default, so it survives
    # the pool's reset-on-return and covers every connection the engine opens.
    engine = create_engine(
        pg_engine.url,
        connect_args={
            "options": f"-csearch_path={schema}",
            "connect_timeout": _CONNECT_TIMEOUT_SECONDS,
        },
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with pg_engine.begin() as conn:
            conn.execute(DropSchema(schema, cascade=True))


ENGINE_PARAMS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mysql),
]
_ENGINE_FIXTURES = {
    "sqlite": "sqlite_engine",
    "postgresql": "pg_schema_engine",
    "mariadb": "mysql_db_engine",
}


@pytest.fixture(params=ENGINE_PARAMS)
def engine(request: pytest.FixtureRequest) -> Engine:
    """The same test on SQLite, PostgreSQL (isolated schema) and MariaDB (a
    database of its own)."""
    result: Engine = request.getfixturevalue(_ENGINE_FIXTURES[request.param])
    return result


@pytest.fixture(params=ENGINE_PARAMS)
def every_engine(request: pytest.FixtureRequest) -> Engine:
    """The same as ``engine``, under the name some tests use."""
    result: Engine = request.getfixturevalue(_ENGINE_FIXTURES[request.param])
    return result


@pytest.fixture(params=ENGINE_PARAMS[1:])
def server_engine(request: pytest.FixtureRequest) -> Engine:
    """PostgreSQL and MariaDB: the databases with several writers at a time (row
    locks, workers sharing a run), where SQLite has one."""
    result: Engine = request.getfixturevalue(_ENGINE_FIXTURES[request.param])
    return result


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the SQLite variants of tests marked ``postgresql_only_when(**params)``.

    Some behaviour exists only on PostgreSQL (SQLite's CAST never fails); such a
    combination is not collected rather than skipped, so that a skip always
    means an unreachable server (and under CI there is none).
    """
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("postgresql_only_when")
        callspec = getattr(item, "callspec", None)
        if marker is not None and callspec is not None:
            params = callspec.params
            if params.get("engine") == "sqlite" and all(
                params.get(k) == v for k, v in marker.kwargs.items()
            ):
                dropped.append(item)
                continue
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
