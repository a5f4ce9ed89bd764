"""Backfill throughput and manners on PostgreSQL against one plain UPDATE, in one run.

    .venv/bin/python benchmarks/backfill.py [--rows 1000000] [--orm-rows 100000] [--url URL]

Builds one source table ``fourstep_bench.source`` (``id bigint`` primary key,
``name = 'First<i> Last<i>'``, ``first_name`` and ``last_name`` NULL) in a schema
of its own (created and dropped here; the fourstep state tables live there too),
then for each variant makes a fresh copy of it (``LIKE ... INCLUDING ALL``, insert,
``VACUUM ANALYZE``, ``CHECKPOINT``), so every variant starts from the same state,
and measures rows/s of:

1. one ``UPDATE t SET first_name = f1(name), last_name = f2(name) WHERE first_name IS
   NULL AND last_name IS NULL``, where f is the SQL ``Transform.split(" ")`` renders:
   the limit for that transform, baseline = 1.00;
2. fourstep SQL mode: ``backfill(engine, Model.full_name)``, default options, with
   ``Transform.split(" ")`` / ``Transform.join(" ")`` at ``Phase.STOP_READ_OLD``;
3. fourstep Python mode: the same with ``Transform(python_split)`` (no ``sql=``);
4. a hand-written ORM loop: keyset pages of 1,000 objects, first/last assigned in
   Python, one commit per page. It runs on a copy of the first ``--orm-rows`` rows
   (all of them when ``--orm-rows`` >= ``--rows``) and its rows/s is extrapolated.

Throughput is measured twice: first without the writer (on 2 cores the writer
competes for CPU during fourstep's batches but is blocked, idle, during the single
UPDATE), then with it, for the writer's latencies. Rows/s is the table's row count
over the wall time of the work itself. Each variant
runs in a spawned child process (so it has its own GIL and its own peak RSS), while a
writer thread in this process, on its own autocommit connection, dual-writes a random
row (``UPDATE t SET name = :n, first_name = :f, last_name = :l WHERE id = :id``, the
values the backfill would write) as fast as it can with a ~1 ms sleep; its latency
p50/p99/max is taken over the writes that started while the variant was working.

Also measured: the re-run of the finished SQL-mode backfill, ``verify()`` on the
finished table, the mean duration of the first 10% vs the last 10% of the SQL-mode
batches (``report.batch_seconds``), and the peak RSS of the SQL- and Python-mode
children (their own ``ru_maxrss``, cross-checked with ``RUSAGE_CHILDREN``); a run
stopped at about 10% and again at about 90% (as a kill leaves it), with the time
each resumed call takes to its first batch (issue 11: flat from early to late),
and a re-run of that run once finished; and the time a fresh call with
``progress=`` (as the command line makes it) takes to its first progress
report, in each mode. ``--rows 10000000`` runs on a 2-core,
24 GiB machine in about 12 minutes.

Targets (issue 3): SQL mode >= 0.95x the single UPDATE with writer p99 <= 10 ms;
Python mode >= 0.45x; SQL mode >= 10x the hand-written ORM loop; re-run <= 1 s;
last-10% batches <= 1.5x the first 10%; peak RSS <= 150 MB. Issue 11: Python mode
>= 0.75x without the writer. The quiet pass also prints each child's CPU time (user +
system, all its threads) per 1M rows: the client's own cost, which on a machine whose
cores the database shares is taken from the server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing as mp
import random
import resource
import threading
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from sqlalchemy import BigInteger, Engine, Text, create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased, verify
from fourstep_sqla.backfill import DEFAULT_FIRST_BATCH, DEFAULT_TARGET_MS

SCHEMA = "fourstep_bench"
ORM_PAGE = 1_000


class Base(DeclarativeBase):
    pass


def python_split(name: str, /) -> tuple[str | None, str | None]:
    """The Python-only forward transform (same result as ``Transform.split(" ")``)."""
    first, _, last = name.partition(" ")
    return first or None, last or None


def make_model(table: str, mode: str | None) -> Any:
    """A model mapped to ``fourstep_bench.<table>``; with ``full_name`` unless mode is None."""
    attrs: dict[str, Any] = {
        "__tablename__": table,
        "__table_args__": {"schema": SCHEMA},
        "id": mapped_column(BigInteger, primary_key=True, autoincrement=False),
        "name": mapped_column(Text),
        "first_name": mapped_column(Text),
        "last_name": mapped_column(Text),
    }
    if mode is not None:
        forward = Transform.split(" ") if mode == "sql" else Transform(python_split)
        attrs["full_name"] = phased(
            old="name",
            new=("first_name", "last_name"),
            forward=forward,
            backward=Transform.join(" "),
            phase=Phase.STOP_READ_OLD,
        )
    return type(f"Bench_{table}", (Base,), attrs)


def make_engine(url: str) -> Engine:
    # search_path: the state tables are created in the bench schema and dropped with it
    return create_engine(url, connect_args={"options": f"-c search_path={SCHEMA}"})


# -- the variants, each in a spawned child ----------------------------------------------
class _BatchLog(logging.Handler):
    """Collects the backfill's per-batch debug records: (upper key, rows updated, ms)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.batches: list[tuple[int, int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("%s: batch up to") and isinstance(record.args, tuple):
            _key, hi, updated, ms, _size = record.args
            self.batches.append((int(hi[0]), int(updated), float(ms)))


def _forward_sql(dialect: Any) -> tuple[str, str]:
    """The SQL of the transform under test, as fourstep renders it for ``dialect``.

    The limit is one UPDATE computing *the same* ``forward(old)``: the ratio then
    measures the engine (batches, commits, bookkeeping), not the transform.
    """
    from sqlalchemy.sql import column as column_clause

    first, last = Transform.split(" ").sql(column_clause("name", Text()))  # type: ignore[misc]
    return tuple(  # type: ignore[return-value]
        str(e.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        for e in (first, last)
    )


def _single_update(engine: Engine, table: str) -> dict[str, Any]:
    first, last = _forward_sql(engine.dialect)
    with engine.begin() as conn:
        result = conn.execute(
            text(
                f"UPDATE {SCHEMA}.{table} SET first_name = {first}, last_name = {last} "
                "WHERE first_name IS NULL AND last_name IS NULL"
            )
        )
        return {"rows_updated": result.rowcount}


def _fourstep(
    engine: Engine, table: str, mode: str, target_ms: float | None = None
) -> dict[str, Any]:
    model = make_model(table, mode)
    handler = _BatchLog()
    logger = logging.getLogger("fourstep_sqla.backfill")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    options = {} if target_ms is None else {"target_ms": target_ms}
    report = backfill(engine, model.full_name, **options)
    return {
        "rows_updated": report.rows_updated,
        "batches": report.batches,
        "complete": report.complete,
        "mode": report.mode,
        "batch_seconds": list(report.batch_seconds),
        "batch_log": handler.batches,
    }


def _orm_loop(engine: Engine, table: str) -> dict[str, Any]:
    model = make_model(table, None)
    updated = 0
    last = 0
    with Session(engine) as session:
        while True:
            page = session.scalars(
                select(model).where(model.id > last).order_by(model.id).limit(ORM_PAGE)
            ).all()
            if not page:
                break
            for obj in page:
                first, _, rest = obj.name.partition(" ")
                obj.first_name = first or None
                obj.last_name = rest or None
            last = page[-1].id
            updated += len(page)
            session.commit()
    return {"rows_updated": updated}


# -- the concurrent writer ---------------------------------------------------------------
class Writer(threading.Thread):
    """Dual-writes random rows of ``table`` on its own autocommit connection."""

    def __init__(self, engine: Engine, table: str, max_id: int, sleep_ms: float) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.engine = engine
        self.table = table
        self.max_id = max_id
        self.sleep = sleep_ms / 1000
        self.stop_event = threading.Event()
        #: (wall-clock start, latency in seconds) of every write
        self.samples: list[tuple[float, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        stmt = text(
            f"UPDATE {SCHEMA}.{self.table} SET name = :n, first_name = :f, last_name = :l "
            "WHERE id = :id"
        )
        rng = random.Random(42)
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                while not self.stop_event.is_set():
                    i = rng.randint(1, self.max_id)
                    params = {"id": i, "n": f"First{i} Last{i}", "f": f"First{i}", "l": f"Last{i}"}
                    wall = time.time()
                    start = time.perf_counter()
                    conn.execute(stmt, params)
                    self.samples.append((wall, time.perf_counter() - start))
                    time.sleep(self.sleep)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        if self.error is not None:
            raise SystemExit(f"the writer failed: {self.error!r}")

    def latencies(self, since: float, until: float) -> list[float]:
        return sorted(lat for wall, lat in self.samples if since <= wall <= until)


def _child(kind: str, url: str, table: str, pipe: Pipe, target_ms: float | None) -> None:
    try:
        engine = make_engine(url)
        with engine.connect() as conn:  # connect and warm up outside the measured window
            conn.execute(text("SELECT 1"))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pipe.send({"ready": True})
        pipe.recv()  # go: the writer is running
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.time()
        if kind == "update":
            info = _single_update(engine, table)
        elif kind == "orm":
            info = _orm_loop(engine, table)
        else:
            info = _fourstep(engine, table, kind, target_ms)
        finished = time.time()
        done = resource.getrusage(resource.RUSAGE_SELF)
        info.update(
            cpu_s=done.ru_utime - usage.ru_utime + done.ru_stime - usage.ru_stime,
            started=started,
            finished=finished,
            rss_before_kb=rss_before,
            rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        )
        engine.dispose()
        pipe.send(info)
    except BaseException as exc:
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        pipe.close()


class NoWriter:
    """Stands in for :class:`Writer` in the quiet throughput pass."""

    def start(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def stop(self) -> None:
        pass


def run_child(
    kind: str,
    url: str,
    table: str,
    writer: Writer | NoWriter,
    target_ms: float | None = None,
) -> dict[str, Any]:
    """Run one variant in a spawned child, with ``writer`` running while it works."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=_child, args=(kind, url, table, theirs, target_ms), name=f"bench-{kind}"
    )
    proc.start()
    theirs.close()
    try:
        info: dict[str, Any] = ours.recv()
        if "ready" in info:
            # start the writer only now (imports and connecting take a while), and let it
            # connect and settle before the work starts
            writer.start()
            time.sleep(0.1)
            ours.send("go")
            info = ours.recv()
    except EOFError:
        info = {"error": "the child died without a report"}
    finally:
        if writer.is_alive():
            writer.stop()
    proc.join()
    if "error" in info:
        raise SystemExit(f"{kind} on {table} failed: {info['error']}")
    info["rusage_children_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return info


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (0 when empty)."""
    if not values:
        return 0.0
    rank = max(math.ceil(q / 100 * len(values)) - 1, 0)
    return values[min(rank, len(values) - 1)]


# -- tables --------------------------------------------------------------------------------
def autocommit(engine: Engine, *statements: str, **params: Any) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def build_source(engine: Engine, rows: int) -> float:
    start = time.perf_counter()
    autocommit(
        engine,
        f"CREATE TABLE {SCHEMA}.source (id bigint PRIMARY KEY, name text NOT NULL, "
        "first_name text NULL, last_name text NULL)",
        f"INSERT INTO {SCHEMA}.source (id, name) "
        "SELECT g, 'First' || g || ' Last' || g FROM generate_series(1, :n) AS g",
        f"VACUUM ANALYZE {SCHEMA}.source",
        n=rows,
    )
    return time.perf_counter() - start


def fresh_copy(engine: Engine, table: str, rows: int) -> None:
    """``table`` as a copy of the first ``rows`` rows of the source, vacuumed and analyzed."""
    autocommit(
        engine,
        f"DROP TABLE IF EXISTS {SCHEMA}.{table}",
        f"CREATE TABLE {SCHEMA}.{table} (LIKE {SCHEMA}.source INCLUDING ALL)",
        f"INSERT INTO {SCHEMA}.{table} SELECT * FROM {SCHEMA}.source WHERE id <= :n",
        f"VACUUM ANALYZE {SCHEMA}.{table}",
        n=rows,
    )
    # the copy's WAL flushed now, not by a checkpoint in the middle of a variant
    with contextlib.suppress(DBAPIError):  # not allowed (not a superuser): carry on
        autocommit(engine, "CHECKPOINT")


def wrong_rows(engine: Engine, table: str) -> int:
    """Rows whose first/last differ from the split of name (0 when the variant is right)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    f"SELECT count(*) FROM {SCHEMA}.{table} WHERE "
                    "first_name IS DISTINCT FROM nullif(split_part(name, ' ', 1), '') OR "
                    "last_name IS DISTINCT FROM nullif(split_part(name, ' ', 2), '')"
                )
            ).scalar_one()
        )


class _Stop(Exception):
    """Raised by a progress callback: the run stops there, as if killed."""


def measure_resume(engine: Engine, rows: int) -> dict[str, float]:
    """Stop a SQL-mode run at about 10% and again at about 90% (an exception from
    the progress callback, as a kill would leave it), each time timing how long
    the resumed call takes to its first batch: planning and resuming should cost
    the same early and late. Then time a re-run of the finished run."""
    table = "bf_resume"
    fresh_copy(engine, table, rows)
    model = make_model(table, "sql")
    found: dict[str, float] = {}

    def stop_at(fraction: float, label: str | None, started: float) -> Any:
        def callback(progress: Any) -> None:
            if label is not None and f"{label}_s" not in found:
                found[f"{label}_s"] = time.perf_counter() - started
            if fraction < 1 and progress.rows_updated >= fraction * rows:
                raise _Stop

        return callback

    def call(fraction: float, label: str | None, done_before: int) -> int:
        started = time.perf_counter()
        with contextlib.suppress(_Stop):
            backfill(engine, model.full_name,
                     progress=stop_at(fraction - done_before / rows, label, started))
        with engine.connect() as conn:
            done = conn.execute(text(
                f"SELECT count(*) FROM {SCHEMA}.{table} WHERE first_name IS NOT NULL"
            )).scalar_one()
        return int(done)

    done = call(0.10, None, 0)
    found["early_at"] = done / rows
    done = call(0.90, "early", done)
    found["late_at"] = done / rows
    call(1.0, "late", done)
    start = time.perf_counter()
    backfill(engine, model.full_name)
    found["rerun_s"] = time.perf_counter() - start
    autocommit(engine, f"DROP TABLE {SCHEMA}.{table}")
    return found


def measure_first_progress(engine: Engine, rows: int, mode: str) -> float:
    """Seconds from a fresh call (with ``progress=``, as the command line makes
    it) to its first progress report: the count of the pending rows plus one
    batch. The run is stopped there."""
    table = f"bf_first_{mode}"
    fresh_copy(engine, table, rows)
    model = make_model(table, mode)
    seen: list[float] = []
    started = time.perf_counter()

    def callback(_progress: Any) -> None:
        seen.append(time.perf_counter() - started)
        raise _Stop

    with contextlib.suppress(_Stop):
        backfill(engine, model.full_name, progress=callback)
    autocommit(engine, f"DROP TABLE {SCHEMA}.{table}")
    return seen[0]


# -- output --------------------------------------------------------------------------------
def verdict(good: bool) -> str:
    return "ok" if good else "MISSED"


def target_line(label: str, figure: str, target: str, good: bool) -> None:
    print(f"  {label:50} {figure:>12}   target {target:<10} {verdict(good)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--orm-rows",
        type=int,
        default=100_000,
        help="rows of the prefix copy the hand-written ORM loop runs on (extrapolated)",
    )
    parser.add_argument("--writer-sleep-ms", type=float, default=1.0)
    parser.add_argument(
        "--target-ms",
        type=float,
        default=None,
        help=f"fourstep's target batch duration (default: the library's, {DEFAULT_TARGET_MS:g})",
    )
    args = parser.parse_args()
    rows = args.rows
    orm_rows = min(args.orm_rows, rows)

    admin = create_engine(args.url)
    autocommit(admin, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}")
    engine = make_engine(args.url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        print(
            f"fourstep backfill vs one UPDATE on PostgreSQL {version}, {rows:,} rows "
            f"(ratio = variant rows/s / single-UPDATE rows/s)"
        )
        print(
            f"writer: dual write of one random row per statement, autocommit, "
            f"{args.writer_sleep_ms:g} ms sleep between writes\n"
        )
        print(f"source table built in {build_source(engine, rows):.1f} s\n")

        variants = [
            ("update", "(1) single UPDATE", "bf_update", rows),
            ("sql", "(2) fourstep SQL mode", "bf_sql", rows),
            ("python", "(3) fourstep Python mode", "bf_python", rows),
            ("orm", "(4) hand-written ORM loop, 1k pages", "bf_orm", orm_rows),
        ]
        # throughput first, without the writer: on 2 cores the writer competes for CPU
        # only while it is not blocked, i.e. during fourstep but not during the single
        # UPDATE (which locks every row it writes until it commits)
        quiet: dict[str, float] = {}
        quiet_cpu: dict[str, float] = {}
        print("throughput without the writer (one run each; the client's CPU: the child "
              "process's user + system time per 1M rows):")
        for kind, label, table, n in variants[:3]:
            fresh_copy(engine, table, n)
            info = run_child(kind, args.url, table, NoWriter(), args.target_ms)
            quiet[kind] = n / (info["finished"] - info["started"])
            quiet_cpu[kind] = info["cpu_s"] / n * 1e6
            print(f"  {label:37} {quiet[kind]:>10,.0f} rows/s  "
                  f"{quiet[kind] / quiet['update']:5.2f}x   client CPU "
                  f"{quiet_cpu[kind]:5.2f} s")
        print()

        results: dict[str, dict[str, Any]] = {}
        header = (
            f"{'variant':37} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'vs (1)':>7}"
            f"   writer p50 / p99 / max ms  (writes)"
        )
        print(header)
        print("-" * len(header))
        for kind, label, table, n in variants:
            fresh_copy(engine, table, n)
            writer = Writer(engine, table, n, args.writer_sleep_ms)
            info = run_child(kind, args.url, table, writer, args.target_ms)
            seconds = info["finished"] - info["started"]
            info.update(
                table=table,
                rows=n,
                seconds=seconds,
                rate=n / seconds,
                writes=writer.latencies(info["started"], info["finished"]),
                wrong=wrong_rows(engine, table),
            )
            results[kind] = info
            base = results["update"]["rate"]
            lat = info["writes"]
            p50, p99, worst = (percentile(lat, q) * 1e3 for q in (50, 99, 100))
            print(
                f"{label:37} {n:>10,} {seconds:>8.2f} {info['rate']:>10,.0f} "
                f"{info['rate'] / base:>6.2f}x   {p50:7.2f} / {p99:8.2f} / {worst:8.1f}"
                f"  ({len(lat):,})"
            )

        print()
        for kind, label, _table, _n in variants:
            info = results[kind]
            extra = ""
            if kind in ("sql", "python"):
                extra = f", {info['batches']} batches, complete={info['complete']}"
            print(
                f"{label}: {info['rows_updated']:,} rows updated{extra}; "
                f"rows that differ from split(name): {info['wrong']}"
            )
        orm = results["orm"]
        if orm_rows < rows:
            print(
                f"(4) ran on a {orm_rows:,}-row prefix copy; its rows/s is extrapolated: "
                f"about {rows / orm['rate']:,.0f} s for {rows:,} rows"
            )

        # the finished SQL-mode table: re-run, verify
        sql_model = make_model("bf_sql", "sql")
        start = time.perf_counter()
        rerun = backfill(engine, sql_model.full_name)
        rerun_s = time.perf_counter() - start
        start = time.perf_counter()
        checked = verify(engine, sql_model.full_name)
        verify_s = time.perf_counter() - start
        print(
            f"\nre-run of the finished SQL-mode backfill: {rerun_s:.3f} s "
            f"({rerun.rows_updated} rows updated, {rerun.batches} batches)"
        )
        print(
            f"verify() on the finished table: {verify_s:.3f} s "
            f"({checked.total:,} rows, {checked.missing} missing, "
            f"{checked.mismatched} mismatched)"
        )

        # resuming a stopped run, early and late: what a call costs before its first batch
        resume = measure_resume(engine, rows)
        print(
            f"resume of a stopped SQL-mode run, time to its first batch: at "
            f"{resume['early_at']:.0%} done {resume['early_s'] * 1e3:.1f} ms, at "
            f"{resume['late_at']:.0%} done {resume['late_s'] * 1e3:.1f} ms "
            f"({resume['late_s'] / resume['early_s']:.2f}x)"
        )
        print(
            f"re-run of that finished run: {resume['rerun_s']:.3f} s; of the first finished "
            f"one: {rerun_s:.3f} s"
        )
        first_sql, first_py = (measure_first_progress(engine, rows, m) for m in ("sql", "python"))
        print(
            f"a fresh call with progress=, time to its first progress report (the count of "
            f"the pending rows, then one batch): SQL mode {first_sql * 1e3:.0f} ms, Python "
            f"mode {first_py * 1e3:.0f} ms"
        )

        # batch durations, start vs end of the SQL-mode run
        sql = results["sql"]
        batch_seconds: list[float] = sql["batch_seconds"]
        k = max(len(batch_seconds) // 10, 1)
        first_ms = sum(batch_seconds[:k]) / k * 1e3
        last_ms = sum(batch_seconds[-k:]) / k * 1e3
        drift = last_ms / first_ms if first_ms else float("inf")
        # the same batches per 1,000 keys (the first batches are small: the size adapts)
        sizes = []
        previous = 0
        for hi, _updated, ms in sql["batch_log"]:
            sizes.append((hi - previous, ms))
            previous = hi
        per_k = [ms / max(size, 1) * 1e3 for size, ms in sizes]
        print(
            f"SQL-mode batches: {len(batch_seconds)}; mean of the first {k}: {first_ms:.1f} ms, "
            f"of the last {k}: {last_ms:.1f} ms ({drift:.2f}x)"
        )
        if len(per_k) == len(batch_seconds):
            first_keys = sum(s for s, _ in sizes[:k]) / k
            last_keys = sum(s for s, _ in sizes[-k:]) / k
            print(
                f"  per 1,000 keys: first {sum(per_k[:k]) / k:.2f} ms, last "
                f"{sum(per_k[-k:]) / k:.2f} ms (mean batch {first_keys:,.0f} vs "
                f"{last_keys:,.0f} keys; the size starts at {DEFAULT_FIRST_BATCH:,} and adapts "
                f"to {args.target_ms or DEFAULT_TARGET_MS:g} ms)"
            )

        mb = 1e6 / 1024  # ru_maxrss is in KiB on Linux; MB = 10^6 bytes
        rss_sql = sql["rss_kb"] / mb
        rss_py = results["python"]["rss_kb"] / mb
        print("peak RSS of each child (MB; 'before': after imports and connecting):")
        for kind, label, _t, _n in variants:
            info = results[kind]
            print(
                f"  {label:37} {info['rss_kb'] / mb:6.1f}  (before {info['rss_before_kb'] / mb:.1f}"
                f"; RUSAGE_CHILDREN so far {info['rusage_children_kb'] / mb:.1f})"
            )

        base = results["update"]["rate"]
        sql_ratio = sql["rate"] / base
        py_ratio = results["python"]["rate"] / base
        sql_p99 = percentile(sql["writes"], 99) * 1e3
        vs_orm = sql["rate"] / orm["rate"]
        print("\ntargets")
        quiet_sql = quiet["sql"] / quiet["update"]
        target_line("SQL mode vs single UPDATE (no writer)", f"{quiet_sql:.2f}x", ">= 0.95x",
                    quiet_sql >= 0.95)
        target_line("SQL mode vs single UPDATE", f"{sql_ratio:.2f}x", ">= 0.95x", sql_ratio >= 0.95)
        target_line(
            "writer p99 during the SQL-mode backfill",
            f"{sql_p99:.2f} ms",
            "<= 10 ms",
            sql_p99 <= 10,
        )
        quiet_py = quiet["python"] / quiet["update"]
        target_line("Python mode vs single UPDATE (no writer)", f"{quiet_py:.2f}x", ">= 0.45x",
                    quiet_py >= 0.45)
        target_line(
            "Python mode vs single UPDATE", f"{py_ratio:.2f}x", ">= 0.45x", py_ratio >= 0.45
        )
        target_line("Python mode vs single UPDATE (no writer, issue 11)", f"{quiet_py:.2f}x",
                    ">= 0.75x", quiet_py >= 0.75)
        target_line(
            "SQL mode vs hand-written ORM loop" + (" (extrapolated)" if orm_rows < rows else ""),
            f"{vs_orm:.1f}x",
            ">= 10x",
            vs_orm >= 10,
        )
        target_line("re-run of the finished backfill", f"{rerun_s:.3f} s", "<= 1 s", rerun_s <= 1)
        target_line(
            "last-10% vs first-10% batch duration (SQL)",
            f"{drift:.2f}x",
            "<= 1.5x",
            drift <= 1.5,
        )
        target_line("peak RSS, SQL-mode backfill", f"{rss_sql:.0f} MB", "<= 150 MB", rss_sql <= 150)
        target_line(
            "peak RSS, Python-mode backfill", f"{rss_py:.0f} MB", "<= 150 MB", rss_py <= 150
        )
        correct = all(r["wrong"] == 0 for r in results.values())
        print(
            f"\nverify() {'ok' if checked.ok else 'NOT OK'}; every variant's rows equal "
            f"split(name): {'yes' if correct else 'NO'}"
        )
    finally:
        engine.dispose()
        autocommit(admin, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.dispose()


if __name__ == "__main__":
    main()
