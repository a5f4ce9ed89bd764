"""How close can *any* batched backfill come to one UPDATE? Raw SQL, no fourstep.

    .venv/bin/python benchmarks/batch_floor.py [--rows 1000000] [--batch 12000] [--reps 3]

``benchmarks/backfill.py`` compares fourstep's SQL mode with one ``UPDATE t SET
first = f1(name), last = f2(name)``. This script measures the floor under that
ratio: the same UPDATE cut into key-range batches and sent by hand through
psycopg, with nothing of fourstep in between, so the cost of batching itself
(an index range scan per batch, a statement and a commit per batch, a progress
row per batch) is separated from the cost of the engine.

Every variant runs on a fresh copy of one source table (``LIKE ... INCLUDING
ALL``, ``VACUUM ANALYZE``, ``CHECKPOINT``), in rounds, each round running every
variant once in the same order; the best time of each is compared with the best
time of the single UPDATE. The variants (all with ``synchronous_commit = off``,
as the backfill sets it):

- ``single``: the limit, one UPDATE of the whole table;
- ``one range``: one UPDATE with the range predicate ``id > 0 AND id <= n``;
- ``autocommit``: batches of ``--batch`` keys, each a statement of its own;
- ``+ pending``: the same with fourstep's full pending predicate (``name IS NOT
  NULL AND name NOT IN ('', ' ')``, the shortcut of ``Transform.split(" ")``);
- ``+ progress tx``: each batch in a transaction with an UPDATE of a progress
  row, as fourstep commits a batch with its progress (the floor for fourstep);
- ``+ forward twice``: the pending predicate testing ``forward(old)`` itself
  (what a transform without a shortcut costs);
- ``cte returning``: batch and progress in one statement, ``WITH b AS (UPDATE
  ... RETURNING 1) UPDATE progress ... (SELECT count(*) FROM b)``.

Measured here (2 cores, PostgreSQL 15, 1M rows, 12,000-key batches, several
runs): one range 0.97-1.00x, autocommit 0.95-0.97x, + pending 0.94-0.96x,
+ progress tx 0.92-0.95x, + forward twice 0.89-0.91x, cte returning 0.87-0.90x.
So a backfill that commits 40 ms batches with their progress cannot reach 0.95x
of one UPDATE on this machine; fourstep's SQL mode lands 1-3% under the
``+ progress tx`` line (the rest is planning the run, claiming ranges and Python).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import psycopg

SCHEMA = "fourstep_floor"
FIRST = (
    "nullif(CASE WHEN (strpos(name, ' ') > 0) THEN substr(name, 1, strpos(name, ' ') - 1) "
    "ELSE name END, '')"
)
LAST = "nullif(CASE WHEN (strpos(name, ' ') > 0) THEN substr(name, strpos(name, ' ') + 1) END, '')"
SET = f"first_name = {FIRST}, last_name = {LAST}"
NEW_EMPTY = "first_name IS NULL AND last_name IS NULL"
PENDING = f"{NEW_EMPTY} AND name IS NOT NULL AND name NOT IN ('', ' ')"
FORWARD_TWICE = f"{NEW_EMPTY} AND name IS NOT NULL AND ({FIRST} IS NOT NULL OR {LAST} IS NOT NULL)"


class Floor:
    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], rows: int, batch: int):
        self.conn = conn
        self.rows = rows
        self.batch = batch

    def sql(self, statement: str, params: tuple[object, ...] = ()) -> None:
        self.conn.execute(statement.encode(), params)  # type: ignore[arg-type]

    def build_source(self) -> None:
        self.sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        self.sql(f"CREATE SCHEMA {SCHEMA}")
        self.sql(
            f"CREATE TABLE {SCHEMA}.source (id bigint PRIMARY KEY, name text, "
            "first_name text, last_name text)"
        )
        self.sql(
            f"INSERT INTO {SCHEMA}.source SELECT i, 'First' || i || ' Last' || i, NULL, NULL "
            f"FROM generate_series(1, {self.rows}) i"
        )
        self.sql(
            f"CREATE TABLE {SCHEMA}.progress (k int PRIMARY KEY, cursor_key text, "
            "rows_updated bigint, batches int)"
        )
        self.sql(f"INSERT INTO {SCHEMA}.progress VALUES (1, NULL, 0, 0)")

    def fresh_copy(self) -> None:
        self.sql(f"DROP TABLE IF EXISTS {SCHEMA}.t")
        self.sql(f"CREATE TABLE {SCHEMA}.t (LIKE {SCHEMA}.source INCLUDING ALL)")
        self.sql(f"INSERT INTO {SCHEMA}.t SELECT * FROM {SCHEMA}.source")
        self.sql(f"VACUUM ANALYZE {SCHEMA}.t")
        self.sql("CHECKPOINT")

    def batches(self) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.batch, self.rows)) for lo in range(0, self.rows, self.batch)]

    # -- the variants --------------------------------------------------------------
    def single(self) -> None:
        self.sql(f"UPDATE {SCHEMA}.t SET {SET} WHERE {NEW_EMPTY}")

    def one_range(self) -> None:
        self.sql(f"UPDATE {SCHEMA}.t SET {SET} WHERE id > 0 AND id <= %s AND {NEW_EMPTY}",
                 (self.rows,))

    def autocommit(self, where: str = NEW_EMPTY) -> None:
        for lo, hi in self.batches():
            self.sql(f"UPDATE {SCHEMA}.t SET {SET} WHERE id > %s AND id <= %s AND {where}",
                     (lo, hi))

    def with_progress(self, where: str = PENDING) -> None:
        for lo, hi in self.batches():
            with self.conn.transaction():
                cur = self.conn.execute(
                    f"UPDATE {SCHEMA}.t SET {SET} WHERE id > %s AND id <= %s AND {where}".encode(),
                    (lo, hi),
                )
                self.sql(
                    f"UPDATE {SCHEMA}.progress SET cursor_key = %s, rows_updated = "
                    "rows_updated + %s, batches = batches + 1 WHERE k = 1",
                    (f"[{hi}]", cur.rowcount),
                )

    def cte_returning(self) -> None:
        for lo, hi in self.batches():
            self.sql(
                f"WITH b AS (UPDATE {SCHEMA}.t SET {SET} WHERE id > %s AND id <= %s AND "
                f"{PENDING} RETURNING 1) UPDATE {SCHEMA}.progress SET cursor_key = %s, "
                "rows_updated = rows_updated + (SELECT count(*) FROM b), "
                "batches = batches + 1 WHERE k = 1",
                (lo, hi, f"[{hi}]"),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="host=127.0.0.1 user=postgres dbname=test")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=12_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        floor = Floor(conn, args.rows, args.batch)
        floor.build_source()
        variants: list[tuple[str, Callable[[], None]]] = [
            ("single", floor.single),
            ("one range", floor.one_range),
            ("autocommit", floor.autocommit),
            ("+ pending", lambda: floor.autocommit(PENDING)),
            ("+ progress tx", floor.with_progress),
            ("+ forward twice", lambda: floor.with_progress(FORWARD_TWICE)),
            ("cte returning", floor.cte_returning),
        ]
        best: dict[str, float] = {}
        try:
            for rep in range(args.reps):
                for name, run in variants:
                    floor.fresh_copy()
                    started = time.perf_counter()
                    run()
                    seconds = time.perf_counter() - started
                    best[name] = min(best.get(name, seconds), seconds)
                    print(f"  round {rep + 1}: {name:<16} {seconds:6.3f} s", flush=True)
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE".encode())
    print(f"\n{args.rows:,} rows, batches of {args.batch:,} keys, best of {args.reps}:")
    for name, _run in variants:
        print(f"  {name:<16} {best[name]:6.3f} s   {best['single'] / best[name]:.3f}x")


if __name__ == "__main__":
    main()
