"""Async applications: ``fourstep_sqla.asyncio`` and Alembic's async ``env.py``.

Written the way a FastAPI service on an async driver uses the library, on
PostgreSQL through asyncpg, on MariaDB through aiomysql and on SQLite through
aiosqlite (each PostgreSQL test gets a database of its own, so that the
asyncpg URL needs no ``search_path`` option):

- :func:`test_fastapi_app_backfills_while_it_serves`: a FastAPI app on an
  ``AsyncEngine`` reads and writes through ``AsyncSession``; its admin
  endpoint awaits ``backfill`` while requests keep being served by the same
  event loop (the loop's longest stall is measured and bounded); ``verify``
  and ``check`` as coroutines; the rows stored are asserted.
- :func:`test_options_and_reports`: the same options and the same reports as
  the synchronous functions: Python mode, ``on_error`` stop and skip,
  ``dry_run``, ``max_seconds`` then resume, ``repair``, ``progress``.
- :func:`test_workers_on_async_drivers`: ``workers=4`` are four connections of
  the engine sharing one run's ranges, every row written once.
- :func:`test_text_keys_on_async_drivers`: a text primary key (one statement
  per execute, as asyncpg demands).
- :func:`test_an_async_connection_is_the_only_connection`: an in-memory
  aiosqlite database behind ``NullPool`` exists on one connection only: the
  backfill and verify run on it, never on another one.
- :func:`test_the_plain_functions_point_to_the_asyncio_module`.
- :func:`test_async_alembic_env_carries_the_four_steps`: Alembic's async
  ``env.py`` template (``connection.run_sync(do_run_migrations)``), revisions
  written by autogenerate, every step up (sync triggers, concurrent index,
  backfill, drop) and down again (restore), rows asserted at each step.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from conftest import ENGINE_PARAMS
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import (
    Engine,
    Integer,
    String,
    cast,
    create_engine,
    func,
    insert,
    inspect,
    make_url,
    pool,
    select,
    text,
)
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import fourstep_sqla
from fourstep_sqla import Phase, Transform, phased
from fourstep_sqla.asyncio import backfill, check, pending_count, verify
from fourstep_sqla.backfill import BackfillError, BackfillProgress, ExternalTransactionError
from fourstep_sqla.check import DeployOrderError
from fourstep_sqla.errors import FourStepError
from fourstep_sqla.state import ranges_table, read_state
from fourstep_sqla.triggers import triggers_on

TEMPLATE = Path(command.__file__).parent / "templates" / "generic" / "script.py.mako"


# -- models of the application --------------------------------------------------------------
class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "aio_people"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
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


def parse_cents(value: str) -> int:
    if value.startswith("bad"):
        raise ValueError(f"cannot parse {value!r}")
    return int(value)


class Order(Base):
    __tablename__ = "aio_orders"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    amount_text: Mapped[str | None] = mapped_column("amount", String(40))
    amount_cents: Mapped[int | None] = mapped_column(Integer)

    amount = phased(
        old="amount_text",
        new="amount_cents",
        forward=Transform(parse_cents),  # Python only: Python mode
        backward=Transform(str),
        phase=Phase.STOP_READ_OLD,
    )


PEOPLE = Person.__table__
ORDERS = Order.__table__


def person_row(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"First{i} Last{i}"}


# -- databases ----------------------------------------------------------------------------
@dataclass
class Db:
    dialect: str
    url: str  # the async URL the application uses
    sync: Engine  # the same database, for the test's own assertions

    def engine(self, **kwargs: Any) -> AsyncEngine:
        return create_async_engine(self.url, **kwargs)


@pytest.fixture
def pg_db(pg_engine: Engine) -> Iterator[Db]:
    """A PostgreSQL database of its own, reached through asyncpg."""
    name = f"t_{secrets.token_hex(6)}"
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = pg_engine.url.set(database=name)
    sync = create_engine(url)
    try:
        yield Db("postgresql", url.set(drivername="postgresql+asyncpg").render_as_string(
            hide_password=False), sync)
    finally:
        sync.dispose()
        with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Db]:
    """A SQLite file, reached through aiosqlite."""
    path = tmp_path / "app.db"
    sync = create_engine(f"sqlite:///{path}")
    try:
        yield Db("sqlite", f"sqlite+aiosqlite:///{path}", sync)
    finally:
        sync.dispose()


@pytest.fixture
def mysql_db(mysql_db_engine: Engine) -> Db:
    """A MariaDB database of its own, reached through aiomysql."""
    url = mysql_db_engine.url.set(drivername="mysql+aiomysql")
    return Db("mysql", url.render_as_string(hide_password=False), mysql_db_engine)


_DBS = {"sqlite": "sqlite_db", "postgresql": "pg_db", "mariadb": "mysql_db"}


@pytest.fixture(params=ENGINE_PARAMS)
def db(request: pytest.FixtureRequest) -> Db:
    result: Db = request.getfixturevalue(_DBS[request.param])
    return result


@pytest.fixture(params=ENGINE_PARAMS[1:])
def server_db(request: pytest.FixtureRequest) -> Db:
    """PostgreSQL through asyncpg, MariaDB through aiomysql."""
    result: Db = request.getfixturevalue(_DBS[request.param])
    return result


def seed(db: Db, people: int = 0, orders: dict[int, str] | None = None) -> None:
    Base.metadata.create_all(db.sync)
    with db.sync.begin() as conn:
        if people:
            conn.execute(insert(PEOPLE), [person_row(i) for i in range(1, people + 1)])
        if orders:
            conn.execute(insert(ORDERS), [{"id": k, "amount": v} for k, v in orders.items()])


def people_rows(db: Db) -> dict[int, tuple[Any, ...]]:
    with db.sync.connect() as conn:
        rows = conn.execute(
            select(PEOPLE.c.id, PEOPLE.c.name, PEOPLE.c.first_name, PEOPLE.c.last_name)
        ).all()
    return {r.id: tuple(r[1:]) for r in rows}


# -- the FastAPI application ----------------------------------------------------------------
class NewPerson(BaseModel):
    id: int
    first_name: str
    last_name: str


def make_app(engine: AsyncEngine) -> FastAPI:
    """An application as FastAPI services write it: one AsyncEngine, a session per
    request, and an admin endpoint that runs step 3."""
    app = FastAPI()
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @app.get("/people/{person_id}")
    async def read_person(person_id: int) -> dict[str, Any]:
        async with sessions() as session:
            person = await session.get(Person, person_id)
            if person is None:
                raise HTTPException(status_code=404)
            return {"id": person.id, "full_name": person.full_name}

    @app.get("/people")
    async def find_people(first: str, last: str) -> list[int]:
        async with sessions() as session:
            found = await session.scalars(
                select(Person.id).where(Person.full_name == (first, last)).order_by(Person.id)
            )
            return list(found)

    @app.post("/people")
    async def create_person(body: NewPerson) -> dict[str, Any]:
        async with sessions() as session:
            session.add(Person(id=body.id, full_name=(body.first_name, body.last_name)))
            await session.commit()
        return {"id": body.id}

    @app.post("/admin/backfill")
    async def run_backfill() -> dict[str, Any]:
        report = await backfill(engine, Person.full_name, batch_size=300, target_ms=0)
        return {"rows_updated": report.rows_updated, "batches": report.batches,
                "complete": report.complete}

    @app.get("/admin/verify")
    async def run_verify() -> dict[str, Any]:
        result = await verify(engine, Person.full_name)
        return {"ok": result.ok, "total": result.total, "missing": result.missing}

    return app


N_PEOPLE = 12_000


@pytest.mark.serial  # times the event loop's stalls
def test_fastapi_app_backfills_while_it_serves(db: Db) -> None:
    seed(db, people=N_PEOPLE)  # rows written before step 1: the old place only

    async def scenario() -> dict[str, Any]:
        engine = db.engine()
        app = make_app(engine)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                # step-3 code before the backfill: the guard says so, as a coroutine
                with pytest.raises(DeployOrderError, match="backfill has not finished"):
                    await check(engine, Person.full_name)
                created = await client.post(
                    "/people", json={"id": N_PEOPLE + 1, "first_name": "Ada",
                                     "last_name": "Lovelace"})
                assert created.status_code == 200, created.text

                stalls: list[float] = []
                running = asyncio.Event()

                async def heartbeat() -> None:
                    last = time.monotonic()
                    while not running.is_set():
                        await asyncio.sleep(0.001)
                        now = time.monotonic()
                        stalls.append(now - last)
                        last = now

                beat = asyncio.create_task(heartbeat())
                started = time.monotonic()
                job = asyncio.create_task(client.post("/admin/backfill"))
                served = 0
                while not job.done():
                    answer = await client.get(f"/people/{N_PEOPLE + 1}")
                    assert answer.json()["full_name"] == ["Ada", "Lovelace"]
                    served += 1
                took = time.monotonic() - started
                running.set()
                await beat
                answer = await job
                assert answer.status_code == 200, answer.text
                report = answer.json()
                verified = (await client.get("/admin/verify")).json()
                # check passes now, for every phased attribute of the people table
                await check(engine, Person.full_name)
                first = (await client.get("/people/7")).json()
                found = (await client.get("/people", params={"first": "First9",
                                                             "last": "Last9"})).json()
                return {"report": report, "verified": verified, "served": served,
                        "took": took, "ticks": len(stalls),
                        "worst_stall": max(stalls, default=0.0), "first": first,
                        "found": found}
        finally:
            await engine.dispose()

    seen = asyncio.run(scenario())
    report = seen["report"]
    assert report == {"rows_updated": N_PEOPLE, "batches": report["batches"], "complete": True}
    assert report["batches"] >= N_PEOPLE // 300
    assert seen["verified"] == {"ok": True, "total": N_PEOPLE + 1, "missing": 0}
    assert seen["first"] == {"id": 7, "full_name": ["First7", "Last7"]}
    assert seen["found"] == [9]
    rows = people_rows(db)
    assert rows[1] == ("First1 Last1", "First1", "Last1")
    assert rows[N_PEOPLE] == (f"First{N_PEOPLE} Last{N_PEOPLE}", f"First{N_PEOPLE}",
                              f"Last{N_PEOPLE}")
    assert rows[N_PEOPLE + 1] == ("Ada Lovelace", "Ada", "Lovelace")
    assert all(r[1:] == tuple(r[0].split(" ")) for r in rows.values())
    state = read_state(db.sync, "aio_people.full_name")
    assert state is not None and state.backfilled
    # the event loop kept serving while the backfill ran: requests were answered
    # and the loop never stalled for more than a fraction of the whole run
    print(f"{db.dialect}: backfill of {N_PEOPLE} rows in {report['batches']} batches took "
          f"{seen['took']:.2f} s; {seen['served']} requests served meanwhile; "
          f"{seen['ticks']} loop ticks, longest stall {seen['worst_stall'] * 1000:.1f} ms")
    assert seen["served"] >= 5, seen
    assert seen["worst_stall"] < max(0.25, seen["took"] / 4), seen


def test_options_and_reports(db: Db) -> None:
    orders = {i: (f"bad{i}" if i in (17, 230) else str(i * 5)) for i in range(1, 601)}
    seed(db, people=500, orders=orders)
    with db.sync.begin() as conn:  # a row written past the ORM: new place disagrees
        conn.execute(PEOPLE.update().where(PEOPLE.c.id == 3).values(first_name="Wrong",
                                                                     last_name="Last3"))

    async def scenario() -> None:
        engine = db.engine()
        try:
            # dry run: counts, writes nothing
            dry = await backfill(engine, Order.amount, dry_run=True)
            assert dry.dry_run and dry.rows_left == 600 and dry.rows_updated == 0
            # Python mode, stop: the failing key is named, nothing of its batch written
            with pytest.raises(BackfillError, match=r"\(17,\)"):
                await backfill(engine, Order.amount, batch_size=100, target_ms=0)
            # a time budget that runs out, then the same run resumed, skipping bad rows
            seen: list[BackfillProgress] = []
            partial = await backfill(engine, "aio_orders.amount", batch_size=50, target_ms=0,
                                     pause_ms=30, max_seconds=0.2, on_error="skip",
                                     progress=seen.append)
            assert not partial.complete and partial.budget_exhausted
            assert 0 < partial.rows_left < 600
            rest = await backfill(engine, Order.amount, on_error="skip", progress=seen.append)
            assert rest.mode == "python" and rest.complete
            assert rest.run_id == partial.run_id
            # each call reports the keys it skipped; the run skipped both bad rows
            assert sorted({*partial.skipped_keys, *rest.skipped_keys}) == [(17,), (230,)]
            assert seen and seen[-1].key == "aio_orders.amount"
            # SQL mode on the people: verify finds the row written past the ORM...
            result = await verify(engine, Person.full_name, sample_size=5)
            assert result.missing == 500 - 1 and result.sample_keys[:1] == [(1,)]
            assert await pending_count(engine, Person.full_name) == 499
            filled = await backfill(engine, Person.full_name)
            assert filled.mode == "sql" and filled.rows_updated == 499 and filled.ok
            result = await verify(engine, Person.full_name)
            assert (result.ok, result.mismatched, result.sample_keys) == (False, 1, [(3,)])
            # ...and the repair rewrites it, as a run of its own
            repaired = await backfill(engine, Person.full_name, repair=True)
            assert repaired.repair and repaired.rows_updated == 1 and repaired.ok
            result = await verify(engine, Person.full_name, record=False)
            assert result.ok and result.total == 500
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    with db.sync.connect() as conn:
        cents = dict(conn.execute(select(ORDERS.c.id, ORDERS.c.amount_cents)).all())
    assert cents[17] is None and cents[230] is None
    assert all(cents[i] == i * 5 for i in cents if i not in (17, 230))
    assert people_rows(db)[3] == ("First3 Last3", "First3", "Last3")


def test_workers_on_async_drivers(server_db: Db) -> None:
    pg_db = server_db
    orders = {i: (f"bad{i}" if i == 2500 else str(i)) for i in range(1, 3001)}
    seed(pg_db, people=40_000, orders=orders)

    async def scenario() -> tuple[Any, list[BackfillProgress], int, Any]:
        engine = pg_db.engine()
        seen: list[BackfillProgress] = []
        try:
            report = await backfill(engine, Person.full_name, workers=4, batch_size=1000,
                                    target_ms=0, progress=seen.append)
            async with engine.connect() as conn:
                ranges = (await conn.execute(
                    select(func.count()).where(ranges_table.c.key == "aio_people.full_name")
                )).scalar_one()
            # one worker fails: the call raises, its siblings stop, nothing hangs
            with pytest.raises(BackfillError, match=r"\(2500,\)"):
                await backfill(engine, Order.amount, workers=3, batch_size=100, target_ms=0)
            skipped = await backfill(engine, Order.amount, workers=3, on_error="skip")
            return report, seen, ranges, skipped
        finally:
            await engine.dispose()

    report, seen, ranges, skipped = asyncio.run(scenario())
    assert skipped.complete and skipped.skipped_keys == [(2500,)]
    with pg_db.sync.connect() as conn:
        filled = conn.execute(select(func.count()).where(
            cast(ORDERS.c.amount_cents, String(20)) == ORDERS.c.amount)).scalar_one()
    assert filled == 2999
    assert report.complete and report.ok
    assert report.rows_updated == 40_000  # each row written once, by one worker
    assert report.batches == len(report.batch_seconds) >= 40
    assert ranges == 16  # planned for four workers: four ranges each
    # one progress stream for the whole call, summed over the workers
    assert [p.rows_updated for p in seen] == sorted(p.rows_updated for p in seen)
    assert seen[-1].rows_updated == 40_000 and seen[-1].batches == report.batches
    assert all(r[1:] == tuple(r[0].split(" ")) for r in people_rows(pg_db).values())


class Code(Base):
    __tablename__ = "aio_codes"

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
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


def test_text_keys_on_async_drivers(server_db: Db) -> None:
    pg_db = server_db
    Base.metadata.create_all(pg_db.sync)
    with pg_db.sync.begin() as conn:
        conn.execute(insert(Code.__table__), [{"code": f"k{i:05d}", "name": f"A{i} B{i}"}
                                              for i in range(1, 3001)])

    async def scenario() -> tuple[Any, Any]:
        engine = pg_db.engine()
        try:
            return (await backfill(engine, Code.full_name, batch_size=500, target_ms=0),
                    await verify(engine, Code.full_name))
        finally:
            await engine.dispose()

    report, result = asyncio.run(scenario())
    assert report.complete and report.rows_updated == 3000
    assert result.ok and result.total == 3000


def test_an_async_connection_is_the_only_connection() -> None:
    """``sqlite+aiosqlite://`` with ``NullPool``: the database lives on one connection;
    the coroutines given that AsyncConnection never open another one."""

    async def scenario() -> tuple[Any, Any, list[tuple[Any, ...]]]:
        engine = create_async_engine("sqlite+aiosqlite://", poolclass=pool.NullPool)
        try:
            async with engine.connect() as conn:
                await conn.run_sync(Base.metadata.create_all)
                await conn.execute(insert(PEOPLE), [person_row(i) for i in range(1, 2001)])
                # inside a transaction: the backfill commits batch by batch, so it says no
                with pytest.raises(ExternalTransactionError, match="commit first"):
                    await backfill(conn, Person.full_name)
                await conn.commit()
                report = await backfill(conn, Person.full_name, batch_size=250, target_ms=0)
                result = await verify(conn, Person.full_name)
                await conn.commit()  # the verification's record: the caller's transaction
                await check(conn, Person.full_name)
                rows = (await conn.execute(
                    select(PEOPLE.c.id, PEOPLE.c.first_name, PEOPLE.c.last_name)
                    .order_by(PEOPLE.c.id)
                )).all()
                state = (await conn.execute(text(
                    "SELECT run_status, verify_total FROM fourstep_state "
                    "WHERE key = 'aio_people.full_name'"
                ))).one()
                assert tuple(state) == ("complete", 2000)
            return report, result, [tuple(r) for r in rows]
        finally:
            await engine.dispose()

    report, result, rows = asyncio.run(scenario())
    assert report.complete and report.rows_updated == 2000 and report.batches >= 8
    assert result.ok and result.total == 2000
    assert rows[0] == (1, "First1", "Last1") and rows[-1] == (2000, "First2000", "Last2000")


def test_the_plain_functions_point_to_the_asyncio_module(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")

    def refused(call: Any, name: str) -> None:
        with pytest.raises(FourStepError) as caught:
            call()
        message = str(caught.value)
        assert f"await fourstep_sqla.asyncio.{name}(" in message, message
        assert "Async" in message

    async def scenario() -> None:
        try:
            for bind in (engine, await engine.connect()):
                refused(lambda b=bind: fourstep_sqla.backfill(b, Person.full_name), "backfill")
                refused(lambda b=bind: fourstep_sqla.verify(b, Person.full_name), "verify")
                refused(lambda b=bind: fourstep_sqla.check(b), "check")
                if bind is not engine:
                    await bind.close()  # type: ignore[union-attr]
            with pytest.raises(FourStepError, match=r"fourstep_sqla\.backfill"):
                await backfill(create_engine("sqlite://"), Person.full_name)  # type: ignore[arg-type]
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# -- Alembic's async env.py ---------------------------------------------------------------
#: Alembic's ``async`` template, as ``alembic init -t async`` writes it, with the
#: application's models and the fourstep operations imported
ASYNC_ENV_PY = '''
import asyncio
import importlib
import sys

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from alembic import context

import fourstep_sqla.alembic  # noqa: F401

config = context.config
sys.path.insert(0, config.get_main_option("models_path"))
models = importlib.import_module(config.attributes["models"])
target_metadata = models.Base.metadata


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)

    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )

    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)

    await connectable.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


run_migrations_online()
'''

MODELS = '''
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased
from fourstep_sqla.attribute import forward_index


class Base(DeclarativeBase):
    pass


def parse_score(text):
    return int(text)


def format_score(value):
    return str(value)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    {old}
    first_name: Mapped[str | None] = mapped_column(String(40))
    last_name: Mapped[str | None] = mapped_column(String(40))
    score: Mapped[int | None] = mapped_column(Integer)
    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.{phase},
    )
    # Python only: write marks instead of sync triggers, a backfill in Python mode
    points = phased(
        old="legacy_score",
        new="score",
        forward=Transform(parse_score),
        backward=Transform(format_score),
        phase=Phase.{phase},
    )

{extra}
'''

MAPPED = (
    'legacy_name: Mapped[str | None] = mapped_column("name", String(80), index=True)\n'
    '    legacy_score: Mapped[str | None] = mapped_column("score_text", String(20))'
)
UNMAPPED = (
    'legacy_name: Unmapped[str | None] = unmapped_column("name", String(80), index=True)\n'
    '    legacy_score: Unmapped[str | None] = unmapped_column("score_text", String(20))'
)
FORWARD_INDEX = "forward_index(User.full_name)"


class AsyncProject:
    """An Alembic project on the async template whose models move through the steps."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.dir = tmp_path / "migrations"
        (self.dir / "versions").mkdir(parents=True)
        (self.dir / "env.py").write_text(ASYNC_ENV_PY)
        shutil.copy(TEMPLATE, self.dir / "script.py.mako")
        self.models_dir = tmp_path / "models"
        self.models_dir.mkdir()
        self.config = Config()
        self.config.set_main_option("script_location", str(self.dir))
        self.config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        self.config.set_main_option("models_path", str(self.models_dir))
        self.count = 0
        self.token = secrets.token_hex(4)

    def models(self, phase: str, old: str = MAPPED, extra: str = "") -> Any:
        self.count += 1
        name = f"aio_models_{self.token}_{self.count}"
        (self.models_dir / f"{name}.py").write_text(
            MODELS.format(phase=phase, old=old, extra=extra))
        self.config.attributes["models"] = name
        sys.path.insert(0, str(self.models_dir))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(self.models_dir))

    def revision(self) -> str:
        """Autogenerate the next revision (through the async env.py); its upgrade()."""
        script = command.revision(self.config, message=f"step {self.count}",
                                  autogenerate=True, rev_id=f"r{self.count:02d}")
        assert script is not None and not isinstance(script, list)
        body = Path(script.path).read_text()
        return body.split("def upgrade() -> None:")[1].split("def downgrade")[0]


N_USERS = 5_000


def _users(sync: Engine) -> dict[int, tuple[Any, ...]]:
    present = {c["name"] for c in inspect(sync).get_columns("users")}
    columns = [c for c in ("name", "first_name", "last_name", "score_text", "score")
               if c in present]
    with sync.connect() as conn:
        rows = conn.execute(text(f"SELECT id, {', '.join(columns)} FROM users")).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _indexes(sync: Engine) -> set[str]:
    if sync.dialect.name == "sqlite":  # SQLAlchemy reflects no expression index there
        with sync.connect() as conn:
            return set(conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'users'"
            )).scalars())
    return {ix["name"] for ix in inspect(sync).get_indexes("users") if ix["name"]}


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_async_alembic_env_carries_the_four_steps(db: Db, tmp_path: Path) -> None:
    sync = db.sync
    with sync.begin() as conn:
        conn.execute(text(
            "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80) NOT NULL, "
            "score_text VARCHAR(20))"))
        conn.execute(text("CREATE INDEX ix_users_name ON users (name)"))
        conn.execute(text("INSERT INTO users (id, name, score_text) VALUES (:id, :name, :s)"),
                     [{"id": i, "name": f"First{i} Last{i}", "s": str(i * 3)}
                      for i in range(1, N_USERS + 1)])
    project = AsyncProject(tmp_path, db.url)

    async def write_through_the_model(models: Any, key: int) -> None:
        engine = db.engine()
        try:
            async with AsyncSession(engine) as session:
                session.add(models.User(id=key, full_name=("Ada", "Lovelace"), points=36))
                await session.commit()
        finally:
            await engine.dispose()

    # step 1: new columns, the old one relaxed, sync triggers
    models = project.models("WRITE_BOTH")
    upgrade = project.revision()
    for op in ("op.create_sync_triggers(", "op.create_write_marks(", "op.record_phase("):
        assert op in upgrade, upgrade
    command.upgrade(project.config, "head")
    command.check(project.config)
    with sync.begin() as conn:  # a writer outside the ORM: the trigger keeps the new place
        conn.execute(text("UPDATE users SET name = 'Grace Hopper' WHERE id = 2"))
    asyncio.run(write_through_the_model(models, N_USERS + 1))
    rows = _users(sync)
    assert rows[1] == ("First1 Last1", None, None, "3", None)
    assert rows[2] == ("Grace Hopper", "Grace", "Hopper", "6", None)
    assert rows[N_USERS + 1] == ("Ada Lovelace", "Ada", "Lovelace", "36", 36)

    # step 2: read new, and (PostgreSQL) an index for the new shape, built concurrently;
    # autogenerate cannot compare expression indexes on SQLite
    forward = FORWARD_INDEX if db.dialect == "postgresql" else ""
    project.models("READ_NEW", extra=forward)
    upgrade = project.revision()
    assert "op.record_phase(" in upgrade, upgrade
    command.upgrade(project.config, "head")
    command.check(project.config)
    if forward:
        assert "ix_users_full_name_forward" in _indexes(sync)

    # step 3: the backfill, in committed batches on the migration's engine
    models = project.models("STOP_READ_OLD", extra=forward)
    upgrade = project.revision()
    assert "op.backfill(" in upgrade, upgrade
    command.upgrade(project.config, "head")
    command.check(project.config)
    rows = _users(sync)
    assert all(r[1:3] == tuple(r[0].split(" ")) for r in rows.values()), "not backfilled"
    assert all(r[4] == int(r[3]) for r in rows.values()), "not backfilled (Python mode)"
    state = read_state(sync, "users.full_name")
    assert state is not None and state.backfilled and state.recorded_phase == 3

    async def guard(models: Any) -> None:
        engine = db.engine()
        try:
            await check(engine, models.User.full_name, models.User.points)
            assert (await verify(engine, models.User.full_name)).ok
            assert (await verify(engine, models.User.points)).ok
        finally:
            await engine.dispose()

    asyncio.run(guard(models))

    # step 4: the gate, then the old column dropped with its triggers and index
    project.models("STOP_WRITE_OLD", old=UNMAPPED, extra=forward)
    upgrade = project.revision()
    assert "op.drop_old(" in upgrade, upgrade
    command.upgrade(project.config, "head")
    command.check(project.config)
    assert {"name", "score_text"}.isdisjoint(c["name"] for c in inspect(sync).get_columns("users"))
    assert "ix_users_name" not in _indexes(sync)
    assert _users(sync)[2] == ("Grace", "Hopper", 6)
    assert read_state(sync, "users.full_name").recorded_phase == 4  # type: ignore[union-attr]

    # and back: the drop undone restores every old value and its index
    command.downgrade(project.config, "r03")
    rows = _users(sync)
    assert rows[2] == ("Grace Hopper", "Grace", "Hopper", "6", 6)
    assert rows[N_USERS] == (f"First{N_USERS} Last{N_USERS}", f"First{N_USERS}",
                             f"Last{N_USERS}", str(N_USERS * 3), N_USERS * 3)
    assert {"ix_users_name", *(["ix_users_full_name_forward"] if forward else [])} <= (
        _indexes(sync))
    for target in ("r02", "r01", "base"):
        command.downgrade(project.config, target)
    rows = _users(sync)
    assert rows[2] == ("Grace Hopper", "6") and rows[N_USERS + 1] == ("Ada Lovelace", "36")
    assert read_state(sync, "users.full_name").recorded_phase == 0  # type: ignore[union-attr]
    columns = {c["name"]: c for c in inspect(sync).get_columns("users")}
    assert not columns["name"]["nullable"]
    with sync.connect() as conn:
        assert triggers_on(conn, "users", None) == set()
    # the URL the test handed Alembic is the async one: nothing here ran synchronously
    assert make_url(db.url).get_dialect().is_async
