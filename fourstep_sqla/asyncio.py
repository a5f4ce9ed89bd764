"""Step 3 for asyncio applications: ``backfill``, ``verify`` and ``check`` as coroutines.

SQLAlchemy keeps its asyncio API apart (``sqlalchemy.ext.asyncio``); so does
this module. Each coroutine takes an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`
or an :class:`~sqlalchemy.ext.asyncio.AsyncConnection` and has the options and
the report of its synchronous namesake::

    from fourstep_sqla.asyncio import backfill, check, verify

    report = await backfill(async_engine, User.full_name)
    result = await verify(async_engine, User.full_name)
    await check(async_engine)            # at start-up: DeployOrderError if the order is wrong

How it runs, and why
--------------------
Each call is ``await connection.run_sync(...)`` around the one backfill engine
(:mod:`fourstep_sqla.backfill`): SQLAlchemy runs the synchronous code in a
greenlet on the event loop's thread, and every statement it sends through the
async driver (asyncpg, aiosqlite, ...) is awaited, so the loop serves other
requests at every round trip. The other way, the matching synchronous driver
in a worker thread, was not taken: it needs a second driver installed, it
would connect with the URL alone (without the engine's ``connect_args``,
``creator``, SSL context or pool), and it could not see an in-memory SQLite
database that exists on the caller's connection only. Here the batches run on
the caller's connection (an AsyncConnection), or on a connection of the
caller's engine, and nothing else is needed.

What that costs: nothing runs in a thread. The loop is held while Python
works between two round trips: building statements, and in Python mode the
transform over one batch (whose size steers toward ``target_ms``). Measured
on 100,000 rows (PostgreSQL 15 through asyncpg, SQLite through aiosqlite),
the loop's longest stall was 10-14 ms in SQL mode and 90-110 ms in Python
mode; asyncpg took 0.41-0.47 s against psycopg's 0.36-0.45 s in SQL mode and
0.92-0.95 s against 0.79-0.88 s in Python mode, which reads no batch ahead
here (that is a thread). The engine's waits, for ranges another process
holds and ``pause_ms`` between batches, sleep on the loop; the backoff before
retrying a batch that lost a lock (lock timeouts and deadlocks only, at most
about 3 s per retry) still sleeps on the loop's thread.

``workers=N`` opens N connections of the engine, each a worker on the event
loop sharing the run's key ranges the way several processes do (claims with
session-level locks); the report and the ``progress`` callback add them
up. Each worker holds two connections (its batches and its claims): size the
pool for ``2 * N``. On SQLite the ranges run one after another, on the one
connection, whatever ``workers`` says.

The plain :func:`fourstep_sqla.backfill`, :func:`~fourstep_sqla.verify` and
:func:`~fourstep_sqla.check` refuse an async engine or connection with a
:class:`AsyncBindError` that points here. The command line and Alembic take
async URLs too: see :func:`sync_url` and :mod:`fourstep_sqla.alembic`.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .attribute import PhasedSpec
from .backfill import (
    DEFAULT_TARGET_MS,
    AsyncBindError,
    BackfillError,
    BackfillProgress,
    BackfillReport,
    OnError,
    refuse_open_transaction,
    run_backfill,
)
from .backfill import pending_count as _pending_count
from .check import CheckProblem, DeployOrderError
from .check import problems as _problems
from .dialects import rules_for
from .errors import FourStepError
from .registry import resolve
from .state import ensure_state_tables
from .verify import VerifyResult
from .verify import verify as _verify

__all__ = [
    "AsyncBindError",
    "AsyncDriverError",
    "backfill",
    "check",
    "pending_count",
    "problems",
    "sync_url",
    "verify",
]

AsyncBind = AsyncEngine | AsyncConnection


class AsyncDriverError(FourStepError):
    """An async driver's URL where only a synchronous driver can serve, and its
    synchronous twin is not installed (or not known)."""


def _engine_of(bind: AsyncBind) -> AsyncEngine:
    return bind if isinstance(bind, AsyncEngine) else bind.engine


def _refuse_sync(bind: object, function: str) -> None:
    if not isinstance(bind, (AsyncEngine, AsyncConnection)):
        raise FourStepError(
            f"fourstep_sqla.asyncio.{function}() takes an AsyncEngine or AsyncConnection, "
            f"not {type(bind).__name__}: for an Engine or Connection call "
            f"fourstep_sqla.{function}() (no await)"
        )


@asynccontextmanager
async def _connection(bind: AsyncBind) -> AsyncIterator[AsyncConnection]:
    """The caller's connection, or a connection of the caller's engine for this call."""
    if isinstance(bind, AsyncConnection):
        yield bind
        return
    async with bind.connect() as conn:
        yield conn


async def backfill(
    bind: AsyncBind,
    attribute_or_key: Any,
    *,
    batch_size: int | None = None,
    target_ms: float = DEFAULT_TARGET_MS,
    pause_ms: float = 0.0,
    max_seconds: float | None = None,
    workers: int = 1,
    on_error: OnError = "stop",
    dry_run: bool = False,
    lock_timeout_ms: float | None = None,
    retries: int = 5,
    repair: bool = False,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillReport:
    """:func:`fourstep_sqla.backfill` on an AsyncEngine, or an AsyncConnection that
    is not inside a transaction (each batch commits on its own).

    The same options and the same :class:`~fourstep_sqla.backfill.BackfillReport`;
    ``workers=N`` runs N connections of the engine on the event loop (see the
    module docs). ``progress`` is called on the event loop's thread.
    """
    _refuse_sync(bind, "backfill")
    spec = resolve(attribute_or_key)
    if workers < 1:
        raise BackfillError(f"workers must be at least 1, not {workers}")
    options: dict[str, Any] = {
        "batch_size": batch_size, "target_ms": target_ms, "pause_ms": pause_ms,
        "max_seconds": max_seconds, "workers": workers, "on_error": on_error,
        "dry_run": dry_run, "lock_timeout_ms": lock_timeout_ms, "retries": retries,
        "repair": repair,
    }
    if workers == 1 or dry_run or not rules_for(_engine_of(bind).sync_engine).shares_ranges:
        async with _connection(bind) as conn:
            return await conn.run_sync(
                lambda sync: run_backfill(sync, spec, progress=progress, **options)
            )
    return await _with_workers(bind, spec, workers, options, progress)


async def _with_workers(
    bind: AsyncBind,
    spec: PhasedSpec,
    workers: int,
    options: dict[str, Any],
    progress: Callable[[BackfillProgress], None] | None,
) -> BackfillReport:
    """``workers`` connections, each working the run's ranges it claims."""
    started = time.monotonic()
    latest: dict[int, BackfillProgress] = {}

    def reporter(number: int) -> Callable[[BackfillProgress], None] | None:
        if progress is None:
            return None
        user = progress

        def report(snapshot: BackfillProgress) -> None:
            latest[number] = snapshot
            seen = latest.values()
            user(replace(
                snapshot,
                rows_updated=sum(p.rows_updated for p in seen),
                batches=sum(p.batches for p in seen),
                elapsed=time.monotonic() - started,
            ))

        return report

    async def worker(number: int) -> BackfillReport:
        def work(sync: Connection) -> BackfillReport:
            return run_backfill(sync, spec, progress=reporter(number), alone=True, **options)

        if number == 0 and isinstance(bind, AsyncConnection):
            return await bind.run_sync(work)  # the caller's connection is the first worker's
        async with _engine_of(bind).connect() as conn:
            return await conn.run_sync(work)

    # the state tables first, once: N workers creating them at once would collide
    async with _connection(bind) as conn:
        await conn.run_sync(refuse_open_transaction, spec.key)
        await conn.run_sync(ensure_state_tables)
        await conn.commit()
    tasks = [asyncio.ensure_future(worker(n)) for n in range(workers)]
    try:
        reports = await asyncio.gather(*tasks)
    except BaseException:
        # one worker failed: the others stop too (their batch in flight rolls back)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return _combined(reports, time.monotonic() - started)


def _combined(reports: Sequence[BackfillReport], seconds: float) -> BackfillReport:
    """One report for the workers of one call."""
    first = reports[0]
    complete = all(r.complete for r in reports)
    skipped = sorted({tuple(k) for r in reports for k in r.skipped_keys}, key=repr)
    return BackfillReport(
        key=first.key,
        mode=first.mode,
        rows_updated=sum(r.rows_updated for r in reports),
        batches=sum(r.batches for r in reports),
        seconds=seconds,
        rows_left=0 if complete else max(r.rows_left for r in reports),
        skipped_keys=skipped,
        complete=complete,
        budget_exhausted=any(r.budget_exhausted for r in reports),
        dry_run=first.dry_run,
        run_id=next((r.run_id for r in reports if r.run_id is not None), None),
        batch_seconds=[s for r in reports for s in r.batch_seconds],
        repair=first.repair,
        dropped=first.dropped,
        # a range counts as held elsewhere only if every worker of this call found
        # it so: while one of them works, what the others wait for is this call's
        held_elsewhere=min(r.held_elsewhere for r in reports),
    )


async def pending_count(bind: AsyncBind, attribute_or_key: Any, *, repair: bool = False) -> int:
    """:func:`fourstep_sqla.backfill.pending_count` on an AsyncEngine or AsyncConnection."""
    _refuse_sync(bind, "pending_count")
    async with _connection(bind) as conn:
        count = await conn.run_sync(
            lambda sync: _pending_count(sync, attribute_or_key, repair=repair)
        )
        if isinstance(bind, AsyncEngine):
            await conn.rollback()
        return count


async def verify(
    bind: AsyncBind,
    attribute_or_key: Any,
    *,
    batch_size: int = 50_000,
    sample_size: int = 10,
    record: bool = True,
    synced: bool | None = None,
    progress: Callable[[VerifyResult], None] | None = None,
) -> VerifyResult:
    """:func:`fourstep_sqla.verify` on an AsyncEngine or AsyncConnection.

    With an AsyncEngine the result is recorded and committed, as with an Engine;
    with an AsyncConnection it is written in the connection's transaction, which
    the caller commits.
    """
    _refuse_sync(bind, "verify")
    spec = resolve(attribute_or_key)

    def run(sync: Connection) -> VerifyResult:
        return _verify(sync, spec, batch_size=batch_size, sample_size=sample_size,
                       record=record, synced=synced, progress=progress)

    async with _connection(bind) as conn:
        result = await conn.run_sync(run)
        if isinstance(bind, AsyncEngine):
            await conn.commit()
        return result


async def problems(bind: AsyncBind, *attributes: Any) -> list[CheckProblem]:
    """:func:`fourstep_sqla.check.problems` on an AsyncEngine or AsyncConnection."""
    _refuse_sync(bind, "problems")
    async with _connection(bind) as conn:
        found = await conn.run_sync(lambda sync: _problems(sync, *attributes))
        if isinstance(bind, AsyncEngine):
            await conn.rollback()
        return found


async def check(bind: AsyncBind, *attributes: Any) -> None:
    """:func:`fourstep_sqla.check` on an AsyncEngine or AsyncConnection: raise
    :class:`~fourstep_sqla.check.DeployOrderError` if this code must not run on
    this database (at start-up, e.g. in a FastAPI lifespan)."""
    _refuse_sync(bind, "check")
    found = await problems(bind, *attributes)
    if found:
        raise DeployOrderError(found)


# -- async URLs where only a synchronous driver serves ------------------------------------
def _pip(package: str) -> str:
    return f"pip install {shlex.quote(package)}"


#: an async driver -> its synchronous twins, preferred first: (drivername, how to get it)
_SYNC_TWINS: dict[str, tuple[tuple[str, str], ...]] = {
    "postgresql+asyncpg": (("postgresql+psycopg", _pip("psycopg[binary]")),
                           ("postgresql+psycopg2", _pip("psycopg2-binary"))),
    "postgresql+psycopg_async": (("postgresql+psycopg", _pip("psycopg[binary]")),),
    "sqlite+aiosqlite": (("sqlite", "a Python built with its sqlite3 module"),),
    "mysql+aiomysql": (("mysql+pymysql", _pip("pymysql")),),
    "mysql+asyncmy": (("mysql+pymysql", _pip("pymysql")),),
    "mariadb+aiomysql": (("mariadb+pymysql", _pip("pymysql")),),
    "mariadb+asyncmy": (("mariadb+pymysql", _pip("pymysql")),),
    "oracle+oracledb_async": (("oracle+oracledb", _pip("oracledb")),),
    "mssql+aioodbc": (("mssql+pyodbc", _pip("pyodbc")),),
}
#: asyncpg's URL options and libpq's names for them; asyncpg-only ones are dropped
_ASYNCPG_QUERY = {"ssl": "sslmode", "timeout": "connect_timeout"}
_ASYNCPG_ONLY = {"prepared_statement_cache_size", "prepared_statement_name_func",
                 "command_timeout"}


def sync_url(url: URL | str) -> URL:
    """The URL of the synchronous driver that matches ``url``'s async one:
    ``postgresql+asyncpg`` -> ``postgresql+psycopg`` (else ``+psycopg2``),
    ``sqlite+aiosqlite`` -> ``sqlite``, ``mysql+aiomysql``/``+asyncmy`` ->
    ``mysql+pymysql``; ``url`` itself when its driver is synchronous.

    What runs synchronously (the command line) uses it. asyncpg's ``ssl`` and
    ``timeout`` options become libpq's ``sslmode`` and ``connect_timeout``.
    Raises :class:`AsyncDriverError` naming the package to install when no
    twin is installed.
    """
    url = make_url(url)
    if not url.get_dialect().is_async:
        return url
    name = f"{url.get_backend_name()}+{url.get_driver_name()}"
    twins = _SYNC_TWINS.get(name)
    if twins is None:
        raise AsyncDriverError(
            f"{name} is an async driver, this needs a synchronous one, and none is known to "
            f"match it: give the URL of a synchronous driver for the same database"
        )
    query: dict[str, Any] = dict(url.query)
    if name == "postgresql+asyncpg":
        query = {_ASYNCPG_QUERY.get(k, k): v for k, v in query.items()
                 if k not in _ASYNCPG_ONLY}
    for drivername, _ in twins:
        candidate = url.set(drivername=drivername, query=query)
        try:
            candidate.get_dialect().import_dbapi()
        except ImportError:
            continue
        return candidate
    drivername, remedy = twins[0]
    raise AsyncDriverError(
        f"{name} is an async driver, and this needs a synchronous one: {drivername}, "
        f"which is not installed: {remedy} (or give the URL of a synchronous driver)"
    )
