"""What the sync triggers cost on PostgreSQL, as ratios against no triggers, in one run.

    .venv/bin/python benchmarks/triggers.py [--rows 100000] [--single 3000] [--url URL]

Two tables of the same shape in a schema of their own (created and dropped
here): ``id bigint`` primary key, ``name`` (old place), ``first_name`` and
``last_name`` (new places), a ``note`` column, ``--rows`` rows backfilled. One
of them gets the sync triggers of ``Transform.split(" ")`` / ``Transform.join(" ")``
(what the step-1 revision creates). Every measurement alternates the two tables
(A B A B ...) so that drift of the machine falls on both, and reports the
ratio triggers / none (for the backfill: throughput with / without):

- single-row UPDATE latency, mean over ``--single`` statements on one
  autocommit connection (``synchronous_commit = off``: the WAL flush of every
  commit varies more on this machine than the triggers cost), for each kind of
  write: the old place only (the
  trigger computes the new one), the new place only (it computes the old
  one), both (what the ORM sends at steps 1-3: it checks and stays out), and
  another column (it does not fire);
- single-row INSERT latency, old place only and new place only;
- a bulk UPDATE of every row, old place only (``name = name || 'x'``) and new
  place only;
- ``fourstep_sqla.backfill`` of ``--rows`` rows with the triggers installed
  against without (the backfill keeps them quiet with a session setting).

Targets (issue 8): single row <= 1.3x, bulk <= 2x, backfill >= 0.9x.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import BigInteger, Engine, Text, create_engine, text
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased
from fourstep_sqla.triggers import SyncTriggers, create

SCHEMA = "fourstep_bench_triggers"


class Base(DeclarativeBase):
    pass


def make_model(table: str) -> Any:
    return type(f"BenchTrg_{table}", (Base,), {
        "__tablename__": table,
        "__table_args__": {"schema": SCHEMA},
        "id": mapped_column(BigInteger, primary_key=True, autoincrement=False),
        "name": mapped_column(Text),
        "first_name": mapped_column(Text),
        "last_name": mapped_column(Text),
        "note": mapped_column(Text),
        "full_name": phased(old="name", new=("first_name", "last_name"),
                            forward=Transform.split(" "), backward=Transform.join(" "),
                            phase=Phase.STOP_READ_OLD),
    })


MODELS = {"plain": make_model("plain"), "synced": make_model("synced")}


def fill(engine: Engine, rows: int, *, backfilled: bool) -> None:
    new = "'First' || g, 'Last' || g" if backfilled else "NULL, NULL"
    with engine.begin() as conn:
        for table in MODELS:
            conn.exec_driver_sql(f"TRUNCATE {SCHEMA}.{table}")
            conn.exec_driver_sql("SET LOCAL fourstep.sync = 'off'")
            conn.exec_driver_sql(
                f"INSERT INTO {SCHEMA}.{table} (id, name, first_name, last_name) "
                f"SELECT g, 'First' || g || ' Last' || g, {new} "
                f"FROM generate_series(1, {rows}) g"
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in MODELS:
            conn.exec_driver_sql(f"VACUUM ANALYZE {SCHEMA}.{table}")
        conn.exec_driver_sql("CHECKPOINT")


def mean_latency(conn: Any, statement: str, count: int, rows: int) -> float:
    """Mean seconds of ``statement`` (``:k`` a key, ``:n`` a number) over ``count`` runs."""
    stmt = text(statement)
    started = time.perf_counter()
    for i in range(count):
        conn.execute(stmt, {"k": (i * 7919) % rows + 1, "n": i})
    return (time.perf_counter() - started) / count


def alternate(measure: Callable[[str], float], rounds: int) -> tuple[float, float]:
    """Median of ``rounds`` measurements per table, taken A B A B ..."""
    plain, synced = [], []
    for _ in range(rounds):
        plain.append(measure("plain"))
        synced.append(measure("synced"))
    return statistics.median(plain), statistics.median(synced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    admin = create_engine(args.url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
    engine = create_engine(args.url, connect_args={"options": f"-c search_path={SCHEMA}"})
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            create(conn, SyncTriggers.of(MODELS["synced"].full_name.spec, conn.dialect))
        report: list[tuple[str, float, float, str]] = []
        rows = args.rows

        fill(engine, rows, backfilled=True)
        singles = {
            "UPDATE old place only": "UPDATE {t} SET name = 'A' || :n || ' B' WHERE id = :k",
            "UPDATE new place only": "UPDATE {t} SET first_name = 'A' || :n WHERE id = :k",
            "UPDATE both (ORM)": "UPDATE {t} SET name = 'C' || :n || ' D', "
                                 "first_name = 'C' || :n, last_name = 'D' WHERE id = :k",
            "UPDATE another column": "UPDATE {t} SET note = 'n' || :n WHERE id = :k",
        }
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # without the WAL flush of every commit: its variance on this disk is larger
            # than the triggers' cost, and it falls on both tables alike
            conn.exec_driver_sql("SET synchronous_commit = off")
            for label, sql in singles.items():
                mean_latency(conn, sql.format(t="plain"), 200, rows)  # warm up
                plain, synced = alternate(
                    lambda t, sql=sql: mean_latency(conn, sql.format(t=t), args.single, rows),
                    args.rounds,
                )
                report.append((f"single-row {label}", plain, synced, "<= 1.3x"))
            keys = itertools.count(rows * 10)
            for label, column in (("old place only", "name"), ("new place only", "first_name")):

                def insert(t: str, column: str = column) -> float:
                    stmt = text(f"INSERT INTO {t} (id, {column}) VALUES (:k, 'E' || :n || ' F')")
                    started = time.perf_counter()
                    for i in range(args.single):
                        conn.execute(stmt, {"k": next(keys), "n": i})
                    return (time.perf_counter() - started) / args.single

                plain, synced = alternate(insert, args.rounds)
                report.append((f"single-row INSERT {label}", plain, synced, "<= 1.3x"))

        fill(engine, rows, backfilled=True)
        bulks = {
            "old place only": "UPDATE {t} SET name = name || 'x'",
            "new place only": "UPDATE {t} SET last_name = last_name || 'x'",
        }
        for label, sql in bulks.items():
            def bulk(t: str, sql: str = sql) -> float:
                with engine.begin() as conn:
                    started = time.perf_counter()
                    conn.exec_driver_sql(sql.format(t=t))
                    elapsed = time.perf_counter() - started
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql(f"VACUUM {t}")
                return elapsed

            plain, synced = alternate(bulk, max(args.rounds // 2, 2))
            report.append((f"bulk UPDATE of {rows:,} rows, {label}", plain, synced, "<= 2x"))

        def run_backfill(t: str) -> float:
            fill(engine, rows, backfilled=False)
            started = time.perf_counter()
            done = backfill(engine, MODELS[t].full_name)
            elapsed = time.perf_counter() - started
            assert done.complete and done.rows_updated == rows, done
            return elapsed

        plain, synced = alternate(run_backfill, 3)
        report.append((f"backfill of {rows:,} rows (time)", plain, synced, "throughput >= 0.9x"))
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.dispose()

    print(f"{'measurement':<48} {'none':>11} {'triggers':>11} {'ratio':>7}  target")
    for label, plain, synced, target in report:
        unit, scale = ("ms", 1000.0) if plain < 1 else ("s", 1.0)
        ratio = synced / plain
        if label.startswith("backfill"):
            ratio = plain / synced  # throughput
        print(f"{label:<48} {plain * scale:>8.3f} {unit:<2} {synced * scale:>8.3f} {unit:<2} "
              f"{ratio:>6.2f}x  {target}")


if __name__ == "__main__":
    main()
