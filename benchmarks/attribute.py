"""Cost of a phased attribute against plain mapped columns, in one run.

    .venv/bin/python benchmarks/attribute.py [--rows 1000000] [--pg-url URL] [--no-pg]

Prints ratios (phased / baseline) measured in the same process:

- instance get: ``user.contact`` (rename, phase 3) vs ``user.email``; ``user.full_name``
  (split, phases 1-3) vs ``(user.first_name, user.last_name)`` by hand;
- instance set: ``user.full_name = v`` (writes old and new) vs setting the three
  columns by hand;
- flush of 10,000 new objects built with the phased attribute vs the same objects
  with both places written by hand (SQLite file, and PostgreSQL when reachable);
- PostgreSQL, ``--rows`` rows: a step-2 equality filter vs the same filter on the
  new column alone, with the plan of each.

Targets (issue 2): get <= 2x, flush <= 1.2x, step-2 filter <= 2x with an index used.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Index, String, create_engine, event, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fourstep_sqla import Phase, Transform, phased, read_phase
from fourstep_sqla.attribute import forward_index


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    legacy_name: Mapped[str | None] = mapped_column("name", String(80))
    first_name: Mapped[str | None] = mapped_column(String(40))
    last_name: Mapped[str | None] = mapped_column(String(40))
    mail: Mapped[str | None] = mapped_column(String(80))
    email: Mapped[str | None] = mapped_column(String(80))

    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.STOP_READ_OLD,
    )
    contact = phased(
        old="mail",
        new="email",
        forward=Transform.identity(str),
        backward=Transform.identity(str),
        phase=Phase.STOP_READ_OLD,
    )


Index("ix_bench_users_new", User.first_name, User.last_name)
Index("ix_bench_users_email", User.email)
Index("ix_bench_users_mail", User.mail)
forward_index(User.full_name)


def best_of(fn: Callable[[], Any], repeat: int = 7) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed one)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ratio_line(label: str, phased_s: float, base_s: float, target: float | None) -> None:
    ratio = phased_s / base_s
    verdict = "" if target is None else ("  ok" if ratio <= target else f"  OVER {target}x")
    times = f"({phased_s * 1e3:8.2f} ms vs {base_s * 1e3:8.2f} ms)"
    print(f"{label:58} {ratio:6.2f}x  {times}{verdict}")


def bench_get_set() -> None:
    users = [
        User(id=i, full_name=(f"First{i}", f"Last{i}"), contact=f"u{i}@x.org")
        for i in range(10_000)
    ]
    loops = 20

    def get_contact() -> None:
        for _ in range(loops):
            for u in users:
                u.contact  # noqa: B018

    def get_email() -> None:
        for _ in range(loops):
            for u in users:
                u.email  # noqa: B018

    ratio_line("get rename (phase 3) vs plain column", best_of(get_contact), best_of(get_email), 2)
    split = Transform.split(" ").python
    join = Transform.join(" ").python

    def by_hand_1(u: User) -> Any:
        return split(u.legacy_name)

    def by_hand_2(u: User) -> Any:
        first, last = u.first_name, u.last_name
        if first is None and last is None:
            return split(u.legacy_name)
        return (first, last)

    def by_hand_3(u: User) -> Any:
        return (u.first_name, u.last_name)

    by_hand = {Phase.WRITE_BOTH: by_hand_1, Phase.READ_NEW: by_hand_2,
               Phase.STOP_READ_OLD: by_hand_3}
    for phase, read in by_hand.items():

        def get_full() -> None:
            with read_phase(phase, User.full_name):  # noqa: B023
                for _ in range(loops):
                    for u in users:
                        u.full_name  # noqa: B018

        def get_by_hand() -> None:
            for _ in range(loops):
                for u in users:
                    read(u)  # noqa: B023

        ratio_line(
            f"get split (phase {int(phase)}) vs the same read by hand",
            best_of(get_full),
            best_of(get_by_hand),
            2,
        )

    def set_full() -> None:
        for u in users:
            u.full_name = ("Ada", "Lovelace")

    def set_by_hand() -> None:
        for u in users:
            u.first_name = "Ada"
            u.last_name = "Lovelace"
            u.legacy_name = join("Ada", "Lovelace")

    ratio_line("set split (writes both) vs three columns by hand", best_of(set_full),
               best_of(set_by_hand), None)


def bench_flush(url: str, label: str) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    n = 10_000

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM bench_users"))

    def flush_phased() -> None:
        with Session(engine) as session:
            session.add_all(
                User(id=i, full_name=(f"First{i}", f"Last{i}"), contact=f"u{i}@x.org")
                for i in range(n)
            )
            session.commit()

    def flush_by_hand() -> None:
        with Session(engine) as session:
            session.add_all(
                User(
                    id=i,
                    first_name=f"First{i}",
                    last_name=f"Last{i}",
                    legacy_name=f"First{i} Last{i}",
                    mail=f"u{i}@x.org",
                    email=f"u{i}@x.org",
                )
                for i in range(n)
            )
            session.commit()

    def once(fn: Callable[[], None]) -> float:
        reset()
        gc.collect()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    once(flush_by_hand)  # warm-up: compiled cache, connection pool
    # interleaved, best of each: disk and server noise hits both alike
    phased_times, hand_times = [], []
    for _ in range(7):
        phased_times.append(once(flush_phased))
        hand_times.append(once(flush_by_hand))
    ratio_line(f"flush 10,000 new objects ({label}) vs both by hand", min(phased_times),
               min(hand_times), 1.2)
    Base.metadata.drop_all(engine)
    engine.dispose()


def plan_nodes(plan: dict[str, Any]) -> list[str]:
    nodes = [plan["Node Type"]]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def bench_pg_filter(url: str, rows: int) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    print(f"\nPostgreSQL: loading {rows:,} rows (half only in the old place) ...")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bench_users (id, name, first_name, last_name, mail, email) "
                "SELECT g, 'First' || g || ' Last' || g, "
                "CASE WHEN g % 2 = 0 THEN 'First' || g END, "
                "CASE WHEN g % 2 = 0 THEN 'Last' || g END, "
                "'u' || g || '@x.org', CASE WHEN g % 2 = 0 THEN 'u' || g || '@x.org' END "
                "FROM generate_series(1, :n) AS g"
            ),
            {"n": rows},
        )
        conn.execute(text("ANALYZE bench_users"))
    probes = list(range(2, rows, max(rows // 2000, 1)))[:2000]

    def run(build: Callable[[int], Any]) -> tuple[float, list[str]]:
        with Session(engine) as session:
            statements = [build(i) for i in probes]
            conn = session.connection()
            sent: list[tuple[str, Any]] = []

            def capture(c: Any, cur: Any, stmt: str, params: Any, *a: Any) -> None:
                sent.append((stmt, params))

            event.listen(conn, "before_cursor_execute", capture)
            session.execute(statements[0]).all()
            event.remove(conn, "before_cursor_execute", capture)
            raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sent[0][0], sent[0][1])
            value = raw.scalar_one()
            plan = value if isinstance(value, list) else json.loads(value)

            def go() -> None:
                for stmt in statements:
                    session.execute(stmt).all()

            return best_of(go, 5), plan_nodes(plan[0]["Plan"])

    with read_phase(Phase.READ_NEW, User.full_name, User.contact):
        step2_t, step2_plan = run(
            lambda i: select(User.id).where(User.full_name == (f"First{i}", f"Last{i}"))
        )
        step2r_t, step2r_plan = run(lambda i: select(User.id).where(User.contact == f"u{i}@x.org"))
    base_t, base_plan = run(
        lambda i: select(User.id).where(
            User.first_name == f"First{i}", User.last_name == f"Last{i}"
        )
    )
    baser_t, baser_plan = run(lambda i: select(User.id).where(User.email == f"u{i}@x.org"))
    ratio_line("step-2 split filter vs filter on new columns", step2_t, base_t, 2)
    print(f"    plans: step 2 {step2_plan}; new only {base_plan}")
    ratio_line("step-2 rename filter vs filter on new column", step2r_t, baser_t, 2)
    print(f"    plans: step 2 {step2r_plan}; new only {baser_plan}")
    Base.metadata.drop_all(engine)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    print("phased attribute vs plain mapped columns (ratio = phased / baseline)\n")
    bench_get_set()
    with tempfile.TemporaryDirectory() as tmp:
        bench_flush(f"sqlite:///{Path(tmp) / 'bench.db'}", "SQLite file")
    if not args.no_pg:
        bench_flush(args.pg_url, "PostgreSQL")
        bench_pg_filter(args.pg_url, args.rows)


if __name__ == "__main__":
    main()
