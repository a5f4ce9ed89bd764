"""Backfill over table shapes on PostgreSQL, each against one UPDATE of the same table.

    .venv/bin/python benchmarks/shapes.py [--rows 1000000] [--workers 1,2,4] [--repeat 1]
        [--shapes "integer key;..."] [--url URL]

Issue 11: keys are walked in the order of the index that serves them, and
partitioned tables are first class. For each shape a table of ``--rows`` rows
(``mail = 'user<g>@example.org'``, ``email`` NULL) is built fresh (created,
filled, ``VACUUM ANALYZE``) for every variant, in a schema of its own
(``fourstep_shapes``, dropped at the end; the state tables live there too):

- ``integer key``: ``id integer PRIMARY KEY``, the plain case;
- ``composite (tenant, id)``: ``PRIMARY KEY (tenant, id)`` (200 tenants), the
  model declaring ``tenant`` first;
- ``composite (id, tenant)``: the same table, the model declaring ``id`` first
  (the order the issue measured at 0.22x);
- ``list partitions`` / ``range partitions``: the same key, partitioned on
  ``tenant`` in 4 partitions (the model declaring ``id`` first);
- ``uuid key`` (random UUIDs) and ``text key`` (32 hex characters);
- ``integer, fillfactor 50``: the integer key on a table whose pages are half
  empty, so that an updated row's new version stays on its page (a HOT update:
  no new index entry, no table growth), against one UPDATE of the same table.

The baseline (1.00) is one ``UPDATE t SET email = upper(mail) WHERE email IS
NULL`` on a fresh copy of the same shape, in this process (for the integer key
also "2 sessions": the two halves as plain UPDATEs from two sessions at once,
PostgreSQL's own limit for two processes on this table); each backfill
(``backfill(engine, Model.contact, workers=N)``, default batch options, SQL
mode with ``upper``) is printed as rows/s over the baseline's rows/s. A
writer thread on its own autocommit connection updates a random row through
both places (``mail`` and ``email``) with a ~1 ms sleep while each variant
works; its p50/p99 are over the writes that started during the variant.
Each measured table is dropped at once, so that its dead row versions and
dirty pages do not weigh on the next measurement. This machine's timings
vary by up to 1.5x from run to run: ``--repeat 3`` runs every variant of a
shape three times in turn and prints medians and the ratio's range.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import random
import statistics
import threading
import time
from typing import Any

from sqlalchemy import Engine, Integer, String, Uuid, create_engine, func, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased

SCHEMA = "fourstep_shapes"
TENANTS = 200
PARTS = 4

#: shape -> (key columns as the model declares them, partitioning or None)
SHAPES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "integer key": (("id",), None),
    "integer, fillfactor 50": (("id",), None),
    "composite (tenant, id)": (("tenant", "id"), None),
    "composite (id, tenant)": (("id", "tenant"), None),
    "list partitions": (("id", "tenant"), "list"),
    "range partitions": (("id", "tenant"), "range"),
    "uuid key": (("uid",), None),
    "text key": (("code",), None),
}


def make_engine(url: str) -> Engine:
    return create_engine(url, connect_args={"options": f"-c search_path={SCHEMA}"},
                         pool_size=10)


def autocommit(engine: Engine, *statements: str, **params: Any) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def build(engine: Engine, table: str, shape: str, rows: int) -> None:
    """``table`` of ``shape`` with ``rows`` pending rows, vacuumed and analyzed."""
    _declared, partitioning = SHAPES[shape]
    if shape in ("integer key", "integer, fillfactor 50"):
        columns, key, values = "id integer NOT NULL", "id", "g"
    elif shape == "uuid key":
        columns, key, values = "uid uuid NOT NULL", "uid", "md5(g::text)::uuid"
    elif shape == "text key":
        columns, key, values = "code varchar(40) NOT NULL", "code", "md5(g::text)"
    else:
        columns, key = "id integer NOT NULL, tenant varchar(20) NOT NULL", "tenant, id"
        values = "g, 't' || lpad((g % 200)::text, 3, '0')"
    names = "id, tenant" if shape.startswith("composite") or partitioning else key
    partition = f" PARTITION BY {partitioning.upper()} (tenant)" if partitioning else ""
    if shape == "integer, fillfactor 50":
        partition = " WITH (fillfactor = 50)"
    statements = [
        f"DROP TABLE IF EXISTS {table} CASCADE",
        f"CREATE TABLE {table} ({columns}, mail varchar(100), email varchar(100), "
        f"PRIMARY KEY ({key})){partition}",
    ]
    per = TENANTS // PARTS
    for p in range(PARTS if partitioning else 0):
        if partitioning == "list":
            bounds = "IN (" + ", ".join(f"'t{t:03d}'" for t in range(p * per, (p + 1) * per)) + ")"
        else:
            low = "MINVALUE" if p == 0 else f"'t{p * per:03d}'"
            high = "MAXVALUE" if p == PARTS - 1 else f"'t{(p + 1) * per:03d}'"
            bounds = f"FROM ({low}) TO ({high})"
        statements.append(f"CREATE TABLE {table}_p{p} PARTITION OF {table} FOR VALUES {bounds}")
    statements += [
        f"INSERT INTO {table} ({names}, mail) SELECT {values}, 'user' || g || '@example.org' "
        f"FROM generate_series(1, :n) AS g",
        f"VACUUM ANALYZE {table}",
    ]
    autocommit(engine, *statements, n=rows)
    with contextlib.suppress(DBAPIError):
        autocommit(engine, "CHECKPOINT")


class Base(DeclarativeBase):
    pass


def make_model(table: str, shape: str) -> Any:
    declared, _ = SHAPES[shape]
    types = {"id": Integer, "tenant": String(20), "uid": Uuid, "code": String(40)}
    ns: dict[str, Any] = {"__tablename__": table}
    for name in declared:
        ns[name] = mapped_column(types[name], primary_key=True, autoincrement=False)
    ns["mail"] = mapped_column(String(100))
    ns["email"] = mapped_column(String(100))
    ns["contact"] = phased(
        old="mail", new="email",
        forward=Transform(str.upper, sql=func.upper, name="upper"),
        backward=Transform(str.lower, sql=func.lower, name="lower"),
        phase=Phase.STOP_READ_OLD,
    )
    return type(f"Shape_{table}", (Base,), ns)


class Writer(threading.Thread):
    """Dual-writes a random row, autocommit, ~``sleep_ms`` apart; records latencies."""

    def __init__(self, engine: Engine, table: str, shape: str, sleep_ms: float) -> None:
        super().__init__(daemon=True)
        declared, _ = SHAPES[shape]
        self.engine, self.table, self.sleep = engine, table, sleep_ms / 1000
        self.columns = declared
        with engine.connect() as conn:
            cols = ", ".join(declared)
            self.keys = [tuple(r) for r in conn.execute(
                text(f"SELECT {cols} FROM {table} TABLESAMPLE SYSTEM (5) LIMIT 5000"))]
        self.stopping = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        where = " AND ".join(f"{c} = :{c}" for c in self.columns)
        statement = text(f"UPDATE {self.table} SET mail = :m, email = :e WHERE {where}")
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            rng = random.Random(11)
            while not self.stopping.is_set():
                key = rng.choice(self.keys)
                mail = f"w{rng.random()}@example.org"
                params = dict(zip(self.columns, key), m=mail, e=mail.upper())
                started = time.time()
                conn.execute(statement, params)
                self.samples.append((started, time.time() - started))
                time.sleep(self.sleep)

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def latencies(self, start: float, end: float) -> list[float]:
        return sorted(d for s, d in self.samples if start <= s <= end)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    rank = max(math.ceil(q / 100 * len(values)) - 1, 0)
    return values[min(rank, len(values) - 1)]


def measure(engine: Engine, table: str, shape: str, sleep_ms: float,
            work: Any) -> tuple[float, list[float], Any]:
    writer = Writer(engine, table, shape, sleep_ms)
    writer.start()
    time.sleep(0.1)
    started = time.time()
    result = work()
    finished = time.time()
    writer.stop()
    return finished - started, writer.latencies(started, finished), result


def two_sessions(engine: Engine, table: str, rows: int, step: int = 10_000) -> None:
    """The integer-key table's two halves updated at once by two sessions, each in
    autocommitted statements of ``step`` keys: what two processes of PostgreSQL
    reach on this table without the library."""
    def half(lo: int, hi: int) -> None:
        for start in range(lo, hi, step):
            autocommit(engine, f"UPDATE {table} SET email = upper(mail) WHERE id > :a "
                               "AND id <= :b AND email IS NULL", a=start, b=min(start + step, hi))

    middle = rows // 2
    threads = [threading.Thread(target=half, args=(0, middle)),
               threading.Thread(target=half, args=(middle, rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def left(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            f"SELECT count(*) FROM {table} WHERE email IS DISTINCT FROM upper(mail)"
        )).scalar_one())


def run_variant(engine: Engine, table: str, shape: str, rows: int, sleep_ms: float,
                kind: str, workers: int) -> dict[str, Any]:
    """One measurement on a fresh table, dropped afterwards (its dead row versions
    and dirty pages would otherwise weigh on the next measurement)."""
    build(engine, table, shape, rows)
    model = make_model(table, shape) if kind == "backfill" else None

    def work() -> Any:
        if kind == "update":
            autocommit(engine, f"UPDATE {table} SET email = upper(mail) WHERE email IS NULL")
            return None
        if kind == "halves":
            two_sessions(engine, table, rows)
            return None
        assert model is not None
        return backfill(engine, model.contact, workers=workers)

    seconds, lat, report = measure(engine, table, shape, sleep_ms, work)
    wrong = left(engine, table) if report is not None else 0
    if report is not None and not report.complete:
        wrong = wrong or -1
    autocommit(engine, f"DROP TABLE {table} CASCADE")
    return {
        "seconds": seconds,
        "p50": percentile(lat, 50) * 1e3,
        "p99": percentile(lat, 99) * 1e3,
        "batches": report.batches if report is not None else None,
        "wrong": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--writer-sleep-ms", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over every variant of a shape (median and range printed)")
    parser.add_argument("--shapes", default=";".join(SHAPES),
                        help="shape names separated by semicolons (default: all)")
    args = parser.parse_args()
    rows = args.rows
    workers = [int(w) for w in args.workers.split(",")]
    shapes = [s.strip() for s in args.shapes.split(";")]
    logging.getLogger("fourstep_sqla").setLevel(logging.WARNING)

    admin = create_engine(args.url)
    autocommit(admin, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}")
    engine = make_engine(args.url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        print(f"fourstep backfill over table shapes on PostgreSQL {version}, {rows:,} rows "
              f"(ratio = backfill rows/s / one UPDATE's rows/s on the same shape)")
        print(f"writer: dual write of one random row, autocommit, {args.writer_sleep_ms:g} ms "
              f"sleep between writes")
        if args.repeat > 1:
            print(f"{args.repeat} rounds, each over every variant in turn: seconds and the "
                  f"writer's p50 / p99 are medians; [the ratio's range over the rounds, each "
                  f"against the median UPDATE]")
        print()
        header = (f"{'shape':22} {'variant':14} {'seconds':>8} {'rows/s':>10} {'ratio':>6}"
                  f"   writer p50 / p99 ms   batches")
        print(header)
        print("-" * len(header))
        for number, shape in enumerate(shapes):
            # one UPDATE first: the baseline; for the integer key also PostgreSQL's
            # own limit for two processes, the table's halves as plain UPDATEs from
            # two sessions at once, in 10,000-key statements
            variants = [("one UPDATE", "update", 1)]
            if shape.startswith("integer"):
                variants.append(("2 sessions", "halves", 2))
            variants += [(f"workers={n}", "backfill", n) for n in workers]
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
            for round_no in range(args.repeat):
                for name, kind, n in variants:
                    runs[name].append(run_variant(
                        engine, f"s{number}_{kind}_{n}_r{round_no}", shape, rows,
                        args.writer_sleep_ms,
                        kind, n,
                    ))
            base = rows / statistics.median(r["seconds"] for r in runs["one UPDATE"])
            for i, (name, kind, _n) in enumerate(variants):
                done = runs[name]
                seconds = statistics.median(r["seconds"] for r in done)
                rate = rows / seconds
                spread = ""
                if len(done) > 1:
                    ratios = sorted(rows / r["seconds"] / base for r in done)
                    spread = f" [{ratios[0]:.2f}-{ratios[-1]:.2f}]"
                p50 = statistics.median(r["p50"] for r in done)
                p99 = statistics.median(r["p99"] for r in done)
                batches = done[-1]["batches"]
                tail = "(plain SQL, no fourstep)" if kind == "halves" else (
                    f"{batches:7}" if batches is not None else "")
                wrong = [r["wrong"] for r in done if r["wrong"]]
                if wrong:
                    tail += f"  WRONG ({wrong[0]} rows left)"
                print(f"{shape if i == 0 else '':22} {name:14} {seconds:8.2f} {rate:10,.0f} "
                      f"{rate / base:6.2f}   {p50:7.2f} / {p99:7.2f}   {tail}{spread}")
    finally:
        engine.dispose()
        autocommit(admin, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.dispose()


if __name__ == "__main__":
    main()
