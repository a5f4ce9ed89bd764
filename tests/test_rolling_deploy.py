"""The proof of the promise: a rolling deploy through the four steps, with mixed writers.

At every transition (0->1, 1->2, 2->3, 3->4 code, then the drop) these run at
once, each on rows of its own, inserting, updating, deleting and writing
NULLs, while the migration of that transition runs:

- the ORM at both adjacent phases (the release going out and the one coming
  in; phase 0 is the release before step 1, which knows only ``name``);
- a raw-SQL writer that knows only the old column (another service, a cron
  job), until the drop removes it;
- a Core writer on ``Model.__table__`` that writes only the new columns once
  they exist (a new service), the old one before.

Every writer records what it wrote once its transaction committed. At the
end the drop has succeeded, every row holds the last value written to it, in
the new shape, and a downgrade past the drop restores the old place exactly.
On SQLite, PostgreSQL and MariaDB, through revisions that autogenerate writes.
"""

from __future__ import annotations

import importlib
import random
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import fourstep_sqla.alembic  # noqa: F401
from fourstep_sqla import verify
from fourstep_sqla.registry import get

pytestmark = pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")

TEMPLATE = Path(command.__file__).parent / "templates" / "generic" / "script.py.mako"

ENV_PY = '''
import importlib
import sys

from alembic import context
from sqlalchemy import create_engine

import fourstep_sqla.alembic  # noqa: F401

config = context.config
sys.path.insert(0, config.get_main_option("models_path"))
models = importlib.import_module(config.attributes["models"])
engine = create_engine(config.get_main_option("sqlalchemy.url"),
                       connect_args=config.attributes.get("connect_args", {}))
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=models.Base.metadata,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

MODELS_0 = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "people"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(80))
'''

MODELS = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "people"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    {old}
    first_name: Mapped[str | None] = mapped_column(String(40))
    last_name: Mapped[str | None] = mapped_column(String(40))
    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.{phase},
    )
'''

PHASES = {1: "WRITE_BOTH", 2: "READ_NEW", 3: "STOP_READ_OLD", 4: "STOP_WRITE_OLD"}
MAPPED = 'legacy_name: Mapped[str | None] = mapped_column("name", String(80))'
UNMAPPED = 'legacy_name: Unmapped[str | None] = unmapped_column("name", String(80))'

Value = tuple[str | None, str | None] | None
GONE = "deleted"


def split(name: str | None) -> Value:
    if name is None:
        return None
    first, _, last = name.partition(" ")
    return (first or None, last or None)


def join(value: Value) -> str | None:
    if value is None:
        return None
    parts = [p for p in value if p is not None]
    return " ".join(parts) if parts else None


class Book:
    """What the writers committed: per row, the last value in the new shape and
    the value the old place must hold (lock-free enough: one writer per row)."""

    def __init__(self) -> None:
        self.new: dict[int, Any] = {}
        self.old: dict[int, Any] = {}
        self.lock = threading.Lock()

    def wrote_old(self, key: int, name: str | None) -> None:
        with self.lock:
            self.new[key], self.old[key] = split(name), name

    def wrote_new(self, key: int, value: Value) -> None:
        with self.lock:
            self.new[key], self.old[key] = value, join(value)

    def deleted(self, key: int) -> None:
        with self.lock:
            self.new[key] = self.old[key] = GONE


def name_for(rng: random.Random, n: int) -> str | None:
    pick = rng.random()
    if pick < 0.1:
        return None
    if pick < 0.25:
        return f"Solo{n}"
    if pick < 0.4:
        return f"Ann{n} Marie Smith"  # three words: the old-side round trip is exact
    return f"First{n} Last{n}"


def value_for(rng: random.Random, n: int) -> Value:
    pick = rng.random()
    if pick < 0.1:
        return None
    if pick < 0.2:
        return (f"Mary Ann{n}", "Smith")  # backward then forward does not give it back
    if pick < 0.3:
        return (None, f"Last{n}")
    return (f"F{n}", f"L{n}")


class Writer(threading.Thread):
    """Writes its own rows until told to stop; records what committed."""

    def __init__(self, name: str, keys: list[int], write: Callable[[int, str, Any], None],
                 book: Book, seed: int, values: Callable[[random.Random, int], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.keys = list(keys)
        self.live = set(keys)
        self.write = write
        self.book = book
        self.rng = random.Random(seed)
        self.values = values
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.done = 0
        self.ended: str | None = None

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            key = self.rng.choice(self.keys)
            roll = self.rng.random()
            if key not in self.live:
                action = "insert"
            elif roll < 0.08:
                action = "delete"
            else:
                action = "update"
            value = self.values(self.rng, n)
            try:
                self.write(key, action, value)
            except DBAPIError as exc:
                text_ = str(exc.orig).lower()
                if any(w in text_ for w in ("locked", "deadlock", "could not serialize",
                                            "lock wait timeout")):
                    time.sleep(0.01)
                    continue
                gone = ("no such column", "has no column named", "does not exist",
                        "unknown column")
                if any(g in text_ for g in gone):
                    self.ended = text_.splitlines()[0]  # the drop: this writer's end
                    return
                self.errors.append(exc)
                return
            except BaseException as exc:
                self.errors.append(exc)
                return
            if action == "delete":
                self.live.discard(key)
            else:
                self.live.add(key)
            self.done += 1
            time.sleep(0.002)


class Deploy:
    def __init__(self, tmp_path: Path, engine: Engine) -> None:
        self.engine = engine
        self.dir = tmp_path / "migrations"
        (self.dir / "versions").mkdir(parents=True)
        (self.dir / "env.py").write_text(ENV_PY)
        shutil.copy(TEMPLATE, self.dir / "script.py.mako")
        self.models_dir = tmp_path / "models"
        self.models_dir.mkdir()
        sys.path.insert(0, str(self.models_dir))
        url = engine.url
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
            url = url.update_query_dict({"options": f"-csearch_path={schema}"})
        self.url = url
        self.config = Config()
        self.config.set_main_option("script_location", str(self.dir))
        self.config.set_main_option(
            "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
        )
        self.config.set_main_option("models_path", str(self.models_dir))
        if engine.dialect.name == "sqlite":
            self.config.attributes["connect_args"] = {"timeout": 60}
        self.token = secrets.token_hex(4)
        self.count = 0
        self.writers_engine = self._writers_engine()
        self.book = Book()
        #: rows of the first table, per writer
        self.seeded: dict[str, list[int]] = {}

    def _writers_engine(self) -> Engine:
        if self.engine.dialect.name != "sqlite":
            return create_engine(self.url, pool_size=10)
        engine = create_engine(self.url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout = 60000")

        return engine

    def models(self, phase: int) -> Any:
        self.count += 1
        name = f"rolling_{self.token}_{self.count}"
        source = MODELS_0 if phase == 0 else MODELS.format(
            phase=PHASES[phase], old=UNMAPPED if phase == 4 else MAPPED
        )
        (self.models_dir / f"{name}.py").write_text(source)
        return importlib.import_module(name)

    def migrate(self, models: Any) -> None:
        self.config.attributes["models"] = models.__name__
        command.revision(self.config, message=f"to {self.count}", autogenerate=True,
                         rev_id=f"r{self.count:02d}")
        command.upgrade(self.config, "head")

    # -- writers -------------------------------------------------------------------
    def orm(self, models: Any, phase: int) -> Callable[[int, str, Any], None]:
        person = models.Person

        def write(key: int, action: str, value: Any) -> None:
            with Session(self.writers_engine) as session:
                if action == "delete":
                    obj = session.get(person, key)
                    if obj is not None:
                        session.delete(obj)
                    session.commit()
                    self.book.deleted(key)
                    return
                obj = session.get(person, key) if action == "update" else None
                if obj is None:
                    obj = person(id=key)
                    session.add(obj)
                if phase == 0:
                    obj.name = value
                else:
                    obj.full_name = value
                session.commit()
            if phase == 0:
                self.book.wrote_old(key, value)
            else:
                self.book.wrote_new(key, value)

        return write

    def raw_old(self) -> Callable[[int, str, Any], None]:
        def write(key: int, action: str, value: Any) -> None:
            with self.writers_engine.begin() as conn:
                if action == "delete":
                    conn.execute(text("DELETE FROM people WHERE id = :k"), {"k": key})
                elif action == "update":
                    conn.execute(text("UPDATE people SET name = :n WHERE id = :k"),
                                 {"n": value, "k": key})
                else:
                    conn.execute(text("INSERT INTO people (id, name) VALUES (:k, :n)"),
                                 {"k": key, "n": value})
            if action == "delete":
                self.book.deleted(key)
            else:
                self.book.wrote_old(key, value)

        return write

    def core_new(self, models: Any) -> Callable[[int, str, Any], None]:
        table = models.Person.__table__
        knows_new = "first_name" in table.c

        def write(key: int, action: str, value: Any) -> None:
            if knows_new:
                first, last = value if value is not None else (None, None)
                values: dict[str, Any] = {"first_name": first, "last_name": last}
            else:
                values = {"name": join(value)}
            with self.writers_engine.begin() as conn:
                if action == "delete":
                    conn.execute(table.delete().where(table.c.id == key))
                elif action == "update":
                    conn.execute(table.update().where(table.c.id == key).values(values))
                else:
                    conn.execute(table.insert().values(id=key, **values))
            if action == "delete":
                self.book.deleted(key)
            elif knows_new:
                self.book.wrote_new(key, value)
            else:
                self.book.wrote_old(key, join(value))

        return write

    def transition(
        self, before: Any, after: Any, phases: tuple[int, int], migrate: Any | None,
        seconds: float = 1.2,
    ) -> list[Writer]:
        """Writers at both phases, raw and Core writers, while ``migrate`` runs (if
        any); then the new release alone a little longer."""
        base = 10_000 * (phases[1] + 1)
        keys = {name: [base + 1000 * i + k for k in range(40)] + self.seeded[name]
                for i, name in enumerate(("older", "newer", "raw", "core"))}
        writers = [
            Writer("older", keys["older"], self.orm(before, phases[0]), self.book, 1,
                   name_for if phases[0] == 0 else value_for),
            Writer("newer", keys["newer"], self.orm(after, phases[1]), self.book, 2,
                   name_for if phases[1] == 0 else value_for),
            Writer("raw", keys["raw"], self.raw_old(), self.book, 3, name_for),
            Writer("core", keys["core"], self.core_new(after), self.book, 4, value_for),
        ]
        for writer in writers:
            writer.live = {k for k in writer.keys if self.book.new.get(k, GONE) != GONE}
            writer.start()
        time.sleep(seconds / 3)
        if migrate is not None:
            migrate()
        time.sleep(seconds)
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(60)
            assert not writer.is_alive(), f"{writer.name} did not stop"
            assert not writer.errors, f"{writer.name}: {writer.errors[0]!r}"
        return writers

    # -- reading back ------------------------------------------------------------------
    def stored(self) -> dict[int, tuple[Any, ...]]:
        present = {c["name"] for c in inspect(self.engine).get_columns("people")}
        columns = [c for c in ("name", "first_name", "last_name") if c in present]
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT id, {', '.join(columns)} FROM people")).all()
        return {r[0]: tuple(r[1:]) for r in rows}


def test_rolling_deploy_loses_nothing(engine: Engine, tmp_path: Path) -> None:
    deploy = Deploy(tmp_path, engine)
    rng = random.Random(7)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE people (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(80))"
        ))
        seeded = {name: list(range(100 * i + 1, 100 * i + 61)) for i, name in
                  enumerate(("older", "newer", "raw", "core"), start=1)}
        rows = []
        for keys in seeded.values():
            for key in keys:
                name = name_for(rng, key) or f"Seed{key}"
                rows.append({"k": key, "n": name})
                deploy.book.wrote_old(key, name)
        conn.execute(text("INSERT INTO people (id, name) VALUES (:k, :n)"), rows)
    deploy.seeded = seeded

    m0 = deploy.models(0)
    deploy.config.attributes["models"] = m0.__name__
    command.stamp(deploy.config, "base")
    m1 = deploy.models(1)
    # 0 -> 1: the step-1 revision (new columns, relaxed NOT NULL, triggers) while
    # the previous release writes; then the step-1 code rolls out beside it
    deploy.transition(m0, m0, (0, 0), lambda: deploy.migrate(m1))
    deploy.transition(m0, m1, (0, 1), None)
    m2 = deploy.models(2)
    deploy.transition(m1, m2, (1, 2), None)
    m3 = deploy.models(3)
    # 2 -> 3: the backfill runs inside the migration while both releases write
    deploy.transition(m2, m3, (2, 3), lambda: deploy.migrate(m3))
    m4 = deploy.models(4)
    deploy.transition(m3, m4, (3, 4), None)

    result = verify(engine, get("people.full_name"), record=False)
    assert result.synced and result.ok and result.lossy == 0, result

    # the drop, while the step-4 release, the old-only service and the Core writer go on
    writers = deploy.transition(m4, m4, (4, 4), lambda: deploy.migrate(m4))
    raw = next(w for w in writers if w.name == "raw")
    assert raw.ended is not None  # its column is gone: it stopped there
    assert sum(w.done for w in writers) > 100

    stored = deploy.stored()
    expected = {k: v for k, v in deploy.book.new.items() if v != GONE}
    got = {k: (None if v == (None, None) else v) for k, v in stored.items()}
    assert set(got) == set(expected), "rows appeared or vanished"
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, f"{len(wrong)} row(s) lost their last write, e.g. {list(wrong.items())[:5]}"

    # a downgrade past the drop restores the old place exactly
    command.downgrade(deploy.config, "-1")
    restored = deploy.stored()
    expected_old = {k: v for k, v in deploy.book.old.items() if v != GONE}
    wrong_old = {k: (restored[k][0], expected_old[k]) for k in expected_old
                 if restored[k][0] != expected_old[k]}
    assert not wrong_old, f"{len(wrong_old)} old value(s) not restored: {list(wrong_old)[:5]}"
    deploy.writers_engine.dispose()
