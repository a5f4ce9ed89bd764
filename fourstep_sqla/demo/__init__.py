"""``fourstep demo``: the whole Four Step Process on one table, narrated.

The example of the design: ``users.name`` split into ``first_name`` and
``last_name``. On an embedded SQLite file by default (any URL works, e.g. a
PostgreSQL database), the demo

1. creates the table as the "old release" had it and fills it;
2. runs each step's Alembic upgrade from the reference environment shipped
   in ``fourstep_sqla/demo/migrations`` and "deploys" the code of that step
   (the model at the step's phase), writing through the phased attribute;
3. shows the sync triggers at work for writers outside the ORM (the old
   release at step 1, which writes only ``name``; the step-4 release, which
   writes only ``first_name``/``last_name``);
4. backfills (step 3's migration) while a live writer keeps writing through
   the attribute, verifies, checks the deploy order, drops the old column;
5. downgrades one step to show the old column restored, value for value.

Every step says what it did and which rows it touched.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, String, create_engine, func, inspect, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    Unmapped,
    mapped_column,
    unmapped_column,
)

from ..backfill import backfill
from ..check import check
from ..phase import Phase
from ..transform import Transform
from ..verify import verify

__all__ = ["MIGRATIONS", "make_user_model", "run_demo"]

#: the reference Alembic environment (script_location)
MIGRATIONS = Path(__file__).parent / "migrations"

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson"]


def make_user_model(phase: Phase) -> Any:
    """The application's ``User`` model as the release at ``phase`` declares it."""
    from ..attribute import phased

    class Base(DeclarativeBase):
        pass

    retired = phase is Phase.STOP_WRITE_OLD
    old: Any = (
        unmapped_column("name", String(80)) if retired else mapped_column("name", String(80))
    )
    namespace: dict[str, Any] = {
        "__tablename__": "users",
        "__annotations__": {
            "id": Mapped[int],
            # step 4: the ORM no longer selects or writes it while the DROP runs
            "legacy_name": Unmapped[str | None] if retired else Mapped[str | None],
            "first_name": Mapped[str | None],
            "last_name": Mapped[str | None],
        },
        "id": mapped_column(primary_key=True),
        "legacy_name": old,
        "first_name": mapped_column(String(40)),
        "last_name": mapped_column(String(40)),
        "full_name": phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform.split(" "),
            backward=Transform.join(" "),
            phase=phase,
        ),
        "__module__": __name__,
        "__qualname__": "User",
    }
    return type("User", (Base,), namespace)


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class _Writer(threading.Thread):
    """The live application: writes through the phased attribute until stopped."""

    def __init__(self, engine: Engine, model: Any, first_id: int) -> None:
        super().__init__(name="demo-writer", daemon=True)
        self.engine, self.model, self.next_id = engine, model, first_id
        self.stop = threading.Event()
        self.inserted = self.updated = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            try:
                with Session(self.engine) as session:
                    user = self.model(id=self.next_id,
                                      full_name=(rng.choice(FIRST), rng.choice(LAST)))
                    session.add(user)
                    target = session.get(self.model, rng.randint(1, self.next_id - 1))
                    if target is not None:
                        target.full_name = (rng.choice(FIRST), rng.choice(LAST))
                        self.updated += 1
                    session.commit()
                    self.next_id += 1
                    self.inserted += 1
            except Exception as exc:  # shown at the end; the demo must not hide them
                self.errors.append(exc)
            time.sleep(0.002)


def run_demo(url: str | None = None, echo: Callable[[str], None] = print, rows: int = 5000) -> int:
    """Walk the four steps on ``url`` (default: a new SQLite file). Returns 0 on success."""
    workdir = None
    if url is None:
        workdir = tempfile.mkdtemp(prefix="fourstep-demo-")
        url = f"sqlite:///{Path(workdir) / 'demo.db'}"
    engine = create_engine(url)
    config = _config(url)
    shown = engine.url.render_as_string(hide_password=True)

    def say(title: str, *lines: str) -> None:
        echo("")
        echo(title)
        for line in lines:
            echo(f"    {line}")

    def sample() -> list[str]:
        columns = {c["name"] for c in inspect(engine).get_columns("users")}
        wanted = [c for c in ("id", "name", "first_name", "last_name") if c in columns]
        # a renamed row, a row the old release wrote, and the one-word name
        with engine.connect() as conn:
            found = conn.execute(
                text(f"SELECT {', '.join(wanted)} FROM users WHERE id IN (1, 21, :last) "
                     "ORDER BY id"),
                {"last": rows},
            )
            return [", ".join(f"{k}={v!r}" for k, v in zip(wanted, r)) for r in found]

    def count(where: str) -> int:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM users WHERE {where}")).scalar_one())

    say(f"fourstep demo on {shown}: users.name -> first_name, last_name")

    # -- before: the old release ---------------------------------------------------
    command.upgrade(config, "s0")
    rng = random.Random(42)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (id, name) VALUES (:id, :name)"),
            [{"id": i, "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}"} for i in range(1, rows)],
        )
        conn.execute(text("INSERT INTO users (id, name) VALUES (:id, 'Cher')"), {"id": rows})
    say("Before: the old release wrote only users.name.",
        f"{rows} rows; e.g. {sample()[0]}")

    # -- step 1 ----------------------------------------------------------------------
    command.upgrade(config, "s1")
    user = make_user_model(Phase.WRITE_BOTH)
    check(engine, user.full_name)
    with Session(engine) as session:
        session.add_all(user(id=rows + i, full_name=("Grace", f"Hopper{i}")) for i in range(1, 51))
        session.execute(update(user).where(user.id <= 20).values(full_name=("Ada", "Lovelace")))
        session.commit()
    # the old release is still running during the rollout: it knows only name
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET name = 'Grace Brewster Hopper' WHERE id = 21"))
        conn.execute(text("INSERT INTO users (id, name) VALUES (:id, 'Margaret Hamilton')"),
                     {"id": rows + 51})
    say("Step 1 (WRITE_BOTH): migration s1 added first_name/last_name, relaxed name's "
        "NOT NULL and created the sync triggers; the deployed code writes both places.",
        "wrote 50 new users and renamed 20 through User.full_name; the old release, still "
        "running, updated row 21 and inserted one through name only (raw SQL), and the "
        "triggers filled first/last:",
        f"rows with both places written: {count('first_name IS NOT NULL')}; "
        f"rows only in the old place: {count('first_name IS NULL')}",
        *sample())

    # -- step 2 ----------------------------------------------------------------------
    command.upgrade(config, "s2")
    user = make_user_model(Phase.READ_NEW)
    with Session(engine) as session:
        old_only = session.scalars(
            select(user).where(user.first_name.is_(None)).order_by(user.id).limit(1)
        ).one()
        found = session.scalars(select(user.id).where(user.full_name == old_only.full_name)).all()
    say("Step 2 (READ_NEW): reads take the new place, falling back to forward(old).",
        f"row {old_only.id} is not backfilled yet, still reads {old_only.full_name!r},",
        f"and filtering on it finds ids {sorted(found)[:5]} "
        f"(new = :v OR (new IS NULL AND forward(old) = :v), index-friendly).")

    # -- step 3 ----------------------------------------------------------------------
    writer = _Writer(engine, user, first_id=rows + 1000)
    writer.start()
    started = time.monotonic()
    command.upgrade(config, "s3")
    elapsed = time.monotonic() - started
    time.sleep(0.2)
    writer.stop.set()
    writer.join()
    report = backfill(engine, "users.full_name")  # a repeat is a cheap no-op
    result = verify(engine, "users.full_name")
    user = make_user_model(Phase.STOP_READ_OLD)
    check(engine, user.full_name)
    say("Step 3 (STOP_READ_OLD): migration s3 backfilled in committed batches "
        f"({elapsed:.2f} s) while the live writer inserted {writer.inserted} and updated "
        f"{writer.updated} users through User.full_name ({len(writer.errors)} errors).",
        f"a second backfill run updated {report.rows_updated} rows ({report.batches} batches): "
        "nothing was left",
        f"verify: {result.total} rows, {result.missing} missing, {result.mismatched} mismatched",
        "check(engine) passes for code at STOP_READ_OLD: it is deployed.")

    # -- step 4 ----------------------------------------------------------------------
    user = make_user_model(Phase.STOP_WRITE_OLD)
    check(engine, user.full_name)
    with Session(engine) as session:
        session.add(user(id=rows + 100_000, full_name=("Edsger", "Dijkstra")))
        renamed = session.get(user, 1)
        assert renamed is not None
        renamed.full_name = ("Augusta Ada", "King")  # writes first/last only
        session.commit()
    gate = verify(engine, "users.full_name", record=False)
    before = _names(engine)
    with engine.connect() as conn:
        name_1 = conn.execute(text("SELECT name FROM users WHERE id = 1")).scalar_one()
    command.upgrade(config, "s4")
    say("Step 4 (STOP_WRITE_OLD): the code that no longer writes name was deployed first "
        "(two-release rule); it inserted a user and renamed row 1 through first/last only, "
        f"and the triggers kept name in step (row 1: name={name_1!r}).",
        f"the drop gate: {gate.missing} missing, {gate.mismatched} mismatched, "
        f"{gate.lossy} lossy, {gate.unstable} unstable (row 1 would read ('Augusta', "
        f"'Ada King') after a downgrade to step 1: a warning); migration s4 dropped name "
        f"and the triggers together.",
        f"columns now: {[c['name'] for c in inspect(engine).get_columns('users')]}",
        *sample())

    # -- and back ---------------------------------------------------------------------
    command.downgrade(config, "s3")
    after = _names(engine)
    restored = sum(1 for key, name in after.items() if before.get(key) == name)
    say("Downgrade s4 -> s3: name re-added and restored from first/last with the backward "
        "transform.",
        f"{restored} of {len(after)} rows hold exactly the name they had before the drop, "
        f"those written at step 4 included (the triggers gave them one).",
        *sample())
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(text("users"))).scalar_one()
    engine.dispose()
    ok = not writer.errors and result.ok and gate.ok and restored == len(after)
    say("Done." if ok else "Something went wrong: see above.",
        f"{total} rows; database kept at {shown}")
    return 0 if ok else 1


def _names(engine: Engine) -> dict[int, str | None]:
    """Each row's name: the old column, or backward(new) once it is dropped."""
    join = Transform.join(" ").python
    with engine.connect() as conn:
        if "name" in {c["name"] for c in inspect(engine).get_columns("users")}:
            return {int(r[0]): r[1] for r in conn.execute(text("SELECT id, name FROM users"))}
        rows = conn.execute(text("SELECT id, first_name, last_name FROM users"))
        return {int(r[0]): join(r[1], r[2]) for r in rows}
