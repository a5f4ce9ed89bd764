"""Versioned tables: a SQLAlchemy-Continuum model's history moves with it.

The application is written the way Continuum's documentation writes one:
``make_versioned(user_cls=None)`` before the models, ``__versioned__`` on the
model (here with ``base_classes``, so that the app's ``__str__`` serves its
history objects too), ``sa.orm.configure_mappers()`` after them, and history
read through ``bill.versions`` and ``version_class(Bill)``. Continuum writes a
version row into ``bill_version`` at every flush that changes a bill.

The first test carries such an app through the four steps with the revisions
autogenerate writes, asserting the rows of ``bill`` and ``bill_version`` at
each step (version rows written at every step included) and what history
objects read, then downgrades past the drop and past step 1: every version
row keeps its text. The others pin one thing each.

Continuum keeps global state (``make_versioned`` registers listeners on every
mapper and session, its manager remembers one transaction class): a release
is imported as a new process would import it, after forgetting the previous
one's versioning, and every test leaves versioning removed as it found it.
"""

from __future__ import annotations

import gc
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
import sqlalchemy_continuum
from alembic import command
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    Unmapped,
    mapped_column,
    unmapped_column,
)
from sqlalchemy_continuum import (
    TransactionFactory,
    make_versioned,
    version_class,
    versioning_manager,
)
from test_migration_locks import Project

from fourstep_sqla import FourStepError, Phase, Transform, phased, registry
from fourstep_sqla.alembic.revision import write_revision

STEP_0 = '''
import sqlalchemy as sa
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy_continuum import make_versioned

make_versioned(user_cls=None)


class Base(DeclarativeBase):
    pass


class Described:
    def __str__(self) -> str:
        return f"bill {{self.id}} for {{self.name}}"


class Bill(Described, Base):
    __tablename__ = "bill"
    __versioned__ = {{"base_classes": (Base, Described)}}
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int | None]
    name: Mapped[str] = mapped_column(String(80))


sa.orm.configure_mappers()
'''

MODELS = '''
import sqlalchemy as sa
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column
from sqlalchemy_continuum import make_versioned

from fourstep_sqla import Phase, Transform, phased

make_versioned(user_cls=None)


class Base(DeclarativeBase):
    pass


class Described:
    def __str__(self) -> str:
        return f"bill {{self.id}} for {{' '.join(self.full_name)}}"


class Bill(Described, Base):
    __tablename__ = "bill"
    __versioned__ = {{"base_classes": (Base, Described)}}
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int | None]
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
{extra}

sa.orm.configure_mappers()
'''

MAPPED = 'legacy_name: Mapped[str | None] = mapped_column("name", String(80))'
UNMAPPED = 'legacy_name: Unmapped[str | None] = unmapped_column("name", String(80))'
KEYS = ["bill.full_name", "bill_version.full_name"]
OLD_COLUMN = re.compile(r"(?<!\w)name\b")  # the column, not first_name nor last_name


def _forget_continuum() -> None:
    """What a new process starts from: no versioning listeners, no transaction class."""
    if sa.event.contains(sa.orm.Mapper, "instrument_class",
                         versioning_manager.builder.instrument_versioned_classes):
        sqlalchemy_continuum.remove_versioning()
    versioning_manager.reset()
    versioning_manager.transaction_cls = TransactionFactory()


@pytest.fixture
def continuum() -> Iterator[list[str]]:
    """Continuum as each release's models module sets it up: its listeners and state
    are removed afterwards, and the releases' modules (listed here) forgotten, so the
    tests that run next in this process map and flush without it."""
    _forget_continuum()
    modules: list[str] = []
    yield modules
    _forget_continuum()
    for name in modules:
        sys.modules.pop(name, None)
    gc.collect()


class App:
    """The application at one release: its models module, imported as a new process does."""

    def __init__(self, project: Project, engine: Engine, modules: list[str], phase: str,
                 old: str = MAPPED, template: str = MODELS) -> None:
        _forget_continuum()
        project.models(phase, old, template=template)
        name = project.config.attributes["models"]
        modules.append(name)
        self.models: ModuleType = importlib.import_module(name)
        self.engine = engine

    @property
    def Bill(self) -> Any:
        return self.models.Bill

    def create(self, bill_id: int, **values: Any) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(self.Bill(id=bill_id, **values))

    def update(self, bill_id: int, **values: Any) -> None:
        with Session(self.engine) as session, session.begin():
            bill = session.get(self.Bill, bill_id)
            for key, value in values.items():
                setattr(bill, key, value)

    def history(self, bill_id: int) -> list[Any]:
        """What each version of the bill reads, oldest first (``bill.versions``)."""
        with Session(self.engine) as session:
            bill = session.get(self.Bill, bill_id)
            return [version.full_name for version in bill.versions]

    def printed(self, bill_id: int) -> list[str]:
        """The app's ``__str__`` of the bill's history objects."""
        with Session(self.engine) as session:
            bill = session.get(self.Bill, bill_id)
            return [str(version) for version in bill.versions]

    def versions_named(self, full_name: tuple[str, str]) -> list[tuple[int, int]]:
        """(bill id, transaction id) of the versions whose name is ``full_name``."""
        BillVersion = version_class(self.Bill)
        with Session(self.engine) as session:
            statement = (
                select(BillVersion.id, BillVersion.transaction_id)
                .where(BillVersion.full_name == full_name)
                .order_by(BillVersion.id, BillVersion.transaction_id)
            )
            return [(row[0], row[1]) for row in session.execute(statement)]


def _columns(engine: Engine, table: str) -> list[str]:
    present = {c["name"] for c in inspect(engine).get_columns(table)}
    return [c for c in ("name", "first_name", "last_name") if c in present]


def _bills(engine: Engine) -> dict[int, tuple[Any, ...]]:
    """id -> (name, first_name, last_name), the columns the table has."""
    columns = _columns(engine, "bill")
    with engine.connect() as conn:
        result = conn.execute(text(f"SELECT id, {', '.join(columns)} FROM bill ORDER BY id"))
        return {row[0]: tuple(row[1:]) for row in result}


def _versions(engine: Engine) -> dict[int, list[tuple[Any, ...]]]:
    """id -> its version rows' (name, first_name, last_name), in transaction order."""
    columns = _columns(engine, "bill_version")
    found: dict[int, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        result = conn.execute(text(
            f"SELECT id, {', '.join(columns)} FROM bill_version ORDER BY id, transaction_id"
        ))
        for row in result:
            found.setdefault(row[0], []).append(tuple(row[1:]))
    return found


def _migrate(project: Project) -> str:
    upgrade = project.revision()
    if project.count == 1:
        _make_transaction_sequence(project)
    command.upgrade(project.config, "head")
    command.check(project.config)  # nothing left for autogenerate: the models fit the database
    return upgrade


def _make_transaction_sequence(project: Project) -> None:
    """The app's first revision makes Continuum's ``transaction_id_seq`` on MariaDB.

    Continuum's transaction table takes its ids from that sequence; autogenerate
    compares no sequences, so it writes none. On PostgreSQL the BIGSERIAL it
    writes happens to make one of that very name; on MariaDB a Continuum user
    adds it to the first revision by hand, as here.
    """
    if project.engine.dialect.name != "mysql":
        return
    (path,) = (project.dir / "versions").glob("r01_*.py")
    body = path.read_text()
    first = "def upgrade() -> None:\n"
    assert first in body, body
    body = body.replace(first, first + "    op.execute(sa.schema.CreateSequence("
                        "sa.Sequence('transaction_id_seq')))\n", 1)
    path.write_text(body)


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_a_versioned_model_and_its_history_go_through_the_four_steps(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, continuum: list[str]
) -> None:
    project = Project(tmp_path, engine)
    monkeypatch.syspath_prepend(str(project.models_dir))

    # step 0: name is a plain column; Continuum keeps its history in bill_version
    app = App(project, engine, continuum, "", template=STEP_0)
    _migrate(project)
    app.create(1, name="Ada Lovelace")
    app.create(2, name="Alan Turing")
    assert _bills(engine) == {1: ("Ada Lovelace",), 2: ("Alan Turing",)}
    assert _versions(engine) == {1: [("Ada Lovelace",)], 2: [("Alan Turing",)]}

    # step 1: name moves to first_name + last_name, in bill and in bill_version
    app = App(project, engine, continuum, "WRITE_BOTH")
    # what the command line lists for the models module: the version table's twin too
    assert [s.key for s in registry.load_models(app.models.__name__)] == KEYS
    upgrade = _migrate(project)
    assert "op.add_column('bill_version', sa.Column('first_name'" in upgrade, upgrade
    for key in KEYS:
        assert f"op.create_sync_triggers(\n        '{key}'" in upgrade, upgrade
        assert f"op.record_phase(\n        '{key}'" in upgrade, upgrade
    app.create(3, full_name=("Grace", "Hopper"))
    app.update(1, full_name=("Ada", "King"))
    app.update(2, amount=5)  # a row not written in the new shape yet: copied as it is
    bills = {
        1: ("Ada King", "Ada", "King"),
        2: ("Alan Turing", None, None),
        3: ("Grace Hopper", "Grace", "Hopper"),
    }
    versions = {
        1: [("Ada Lovelace", None, None), ("Ada King", "Ada", "King")],
        # Continuum's copy gives the old place only: the triggers fill the new one
        2: [("Alan Turing", None, None), ("Alan Turing", "Alan", "Turing")],
        3: [("Grace Hopper", "Grace", "Hopper")],
    }
    assert (_bills(engine), _versions(engine)) == (bills, versions)
    assert app.history(1) == [("Ada", "Lovelace"), ("Ada", "King")]
    assert app.history(2) == [("Alan", "Turing"), ("Alan", "Turing")]
    assert app.printed(1) == ["bill 1 for Ada Lovelace", "bill 1 for Ada King"]

    # step 2: reads the new place, falling back to the old one, in history too
    app = App(project, engine, continuum, "READ_NEW")
    upgrade = _migrate(project)
    for key in KEYS:
        assert f"op.record_phase(\n        '{key}'" in upgrade, upgrade
    app.update(3, full_name=("Grace", "Murray"))
    bills[3] = ("Grace Murray", "Grace", "Murray")
    versions[3].append(("Grace Murray", "Grace", "Murray"))
    assert (_bills(engine), _versions(engine)) == (bills, versions)
    assert app.history(2) == [("Alan", "Turing"), ("Alan", "Turing")]
    assert [bill for bill, _ in app.versions_named(("Alan", "Turing"))] == [2, 2]
    assert app.history(3) == [("Grace", "Hopper"), ("Grace", "Murray")]

    # step 3: the backfill fills the version table too; reads stop using the old place
    app = App(project, engine, continuum, "STOP_READ_OLD")
    upgrade = _migrate(project)
    for key in KEYS:
        assert f"op.backfill(\n        '{key}'" in upgrade, upgrade
    bills[2] = ("Alan Turing", "Alan", "Turing")
    versions[1][0] = ("Ada Lovelace", "Ada", "Lovelace")
    versions[2][0] = ("Alan Turing", "Alan", "Turing")
    assert (_bills(engine), _versions(engine)) == (bills, versions)
    assert app.history(1) == [("Ada", "Lovelace"), ("Ada", "King")]
    app.update(2, full_name=("Alan", "Mathison"))
    bills[2] = ("Alan Mathison", "Alan", "Mathison")
    versions[2].append(("Alan Mathison", "Alan", "Mathison"))
    assert (_bills(engine), _versions(engine)) == (bills, versions)

    # step 4: the release that stops writing the old column runs before the drop; the
    # version class leaves bill_version.name unmapped too, the triggers fill it
    app = App(project, engine, continuum, "STOP_WRITE_OLD", old=UNMAPPED)
    BillVersion = version_class(app.Bill)
    assert "name" not in {c.key for c in inspect(BillVersion).column_attrs}
    app.create(4, full_name=("Barbara", "Liskov"))
    app.update(1, full_name=("Augusta", "King"))
    bills[1] = ("Augusta King", "Augusta", "King")
    bills[4] = ("Barbara Liskov", "Barbara", "Liskov")
    versions[1].append(("Augusta King", "Augusta", "King"))
    versions[4] = [("Barbara Liskov", "Barbara", "Liskov")]
    assert (_bills(engine), _versions(engine)) == (bills, versions)
    assert app.history(1) == [("Ada", "Lovelace"), ("Ada", "King"), ("Augusta", "King")]
    upgrade = _migrate(project)
    for key in KEYS:
        assert f"op.drop_old(\n        '{key}'" in upgrade, upgrade
    assert _columns(engine, "bill") == _columns(engine, "bill_version") == [
        "first_name", "last_name"]
    app.create(5, full_name=("Katherine", "Johnson"))
    app.update(4, full_name=("Barbara", "Huberman"))
    assert _bills(engine) == {
        1: ("Augusta", "King"), 2: ("Alan", "Mathison"), 3: ("Grace", "Murray"),
        4: ("Barbara", "Huberman"), 5: ("Katherine", "Johnson"),
    }
    assert _versions(engine) == {
        1: [("Ada", "Lovelace"), ("Ada", "King"), ("Augusta", "King")],
        2: [("Alan", "Turing"), ("Alan", "Turing"), ("Alan", "Mathison")],
        3: [("Grace", "Hopper"), ("Grace", "Murray")],
        4: [("Barbara", "Liskov"), ("Barbara", "Huberman")],
        5: [("Katherine", "Johnson")],
    }
    assert app.history(4) == [("Barbara", "Liskov"), ("Barbara", "Huberman")]
    assert app.printed(5) == ["bill 5 for Katherine Johnson"]
    assert [bill for bill, _ in app.versions_named(("Ada", "King"))] == [1]

    # a downgrade past the drop restores the version rows' old place, those written
    # after the drop included; past step 1 every version row keeps its text
    command.downgrade(project.config, "r04")
    bills[4] = ("Barbara Huberman", "Barbara", "Huberman")
    bills[5] = ("Katherine Johnson", "Katherine", "Johnson")
    versions[4].append(("Barbara Huberman", "Barbara", "Huberman"))
    versions[5] = [("Katherine Johnson", "Katherine", "Johnson")]
    assert (_bills(engine), _versions(engine)) == (bills, versions)
    command.downgrade(project.config, "r01")
    assert _bills(engine) == {bill: (row[0],) for bill, row in bills.items()}
    assert _versions(engine) == {
        bill: [(row[0],) for row in rows] for bill, rows in versions.items()
    }
    assert _versions(engine)[5] == [("Katherine Johnson",)]


# ---------------------------------------------------------------------------
# focused: one thing each, on models declared in the test
# ---------------------------------------------------------------------------


def _declare(phase: Phase, table: str, versioned: dict[str, Any] | None = None) -> Any:
    """A versioned model at ``phase`` on ``table`` (a registry of its own per call),
    its version class built as Continuum builds it."""
    make_versioned(user_cls=None)

    class Base(DeclarativeBase):
        pass

    if phase.writes_old:

        class Bill(Base):
            __tablename__ = table
            __versioned__: ClassVar[dict[str, Any]] = dict(versioned or {})
            id: Mapped[int] = mapped_column(primary_key=True)
            amount: Mapped[int | None]
            legacy_name: Mapped[str | None] = mapped_column("name", sa.String(80))
            first_name: Mapped[str | None] = mapped_column(sa.String(40))
            last_name: Mapped[str | None] = mapped_column(sa.String(40))
            full_name = phased(old="legacy_name", new=("first_name", "last_name"),
                               forward=Transform.split(" "), backward=Transform.join(" "),
                               phase=phase)

    else:

        class Bill(Base):  # type: ignore[no-redef]
            __tablename__ = table
            __versioned__: ClassVar[dict[str, Any]] = dict(versioned or {})
            id: Mapped[int] = mapped_column(primary_key=True)
            amount: Mapped[int | None]
            legacy_name: Unmapped[str | None] = unmapped_column("name", sa.String(80))
            first_name: Mapped[str | None] = mapped_column(sa.String(40))
            last_name: Mapped[str | None] = mapped_column(sa.String(40))
            full_name = phased(old="legacy_name", new=("first_name", "last_name"),
                               forward=Transform.split(" "), backward=Transform.join(" "),
                               phase=phase)

    sa.orm.configure_mappers()
    return Bill


@pytest.mark.parametrize("phase", [pytest.param(p, id=p.name) for p in Phase])
def test_the_version_class_reads_through_a_twin_of_the_attribute(
    engine: Engine, phase: Phase, continuum: list[str]
) -> None:
    """The twin: the same move on the version table, under its own key; Continuum's
    copies are kept as written (a row not written in the new shape yet has a version
    row without its new place); at step 4 Continuum neither reads nor writes the
    version table's old column."""
    table = f"vbill_{phase.name.lower()}"
    Bill = _declare(phase, table)
    BillVersion = version_class(Bill)
    spec = registry.get(f"{table}.full_name")
    twin = registry.get(f"{table}_version.full_name")
    assert BillVersion.full_name.spec is twin and twin.owner is BillVersion
    assert (twin.old, twin.new, twin.forward, twin.backward, twin.phase, twin.copy_of) == (
        spec.old, spec.new, spec.forward, spec.backward, phase, spec)
    assert twin.table is BillVersion.__table__
    assert twin.old_columns == (BillVersion.__table__.c[
        "legacy_name" if phase.writes_old else "name"],)

    Bill.metadata.create_all(engine)
    backfilled = ("Ada", "Lovelace") if phase >= Phase.STOP_READ_OLD else (None, None)
    with engine.begin() as conn:  # written before step 1 (and backfilled from step 3 on)
        conn.execute(text(f"INSERT INTO {table} (id, name, first_name, last_name) "
                          f"VALUES (1, 'Ada Lovelace', :first, :last)"),
                     {"first": backfilled[0], "last": backfilled[1]})
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if f"{table}_version" in statement:
            statements.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session, session.begin():
            session.get(Bill, 1).amount = 5
            session.add(Bill(id=2, full_name=("Grace", "Hopper")))
        with Session(engine) as session:
            history = {
                bill.id: [(v.full_name, str(v.amount)) for v in bill.versions]
                for bill in session.scalars(select(Bill).order_by(Bill.id))
            }
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert history == {1: [(("Ada", "Lovelace"), "5")], 2: [(("Grace", "Hopper"), "None")]}
    with engine.connect() as conn:
        copies = conn.execute(text(
            f"SELECT id, name, first_name, last_name FROM {table}_version ORDER BY id"
        )).all()
    copied = phase.writes_old  # at step 4 not written (no sync triggers here: create_all)
    assert copies == [(1, "Ada Lovelace" if copied else None, *backfilled),
                      (2, "Grace Hopper" if copied else None, "Grace", "Hopper")]
    # Continuum's INSERTs and SELECTs (the history, the validity update) name the old
    # column of the version table at steps 1-3, never at step 4
    assert {s.split()[0] for s in statements} == {"INSERT", "SELECT"}
    assert all(bool(OLD_COLUMN.search(s)) is phase.writes_old for s in statements), statements


def test_versioning_takes_the_whole_move_or_none_of_it(continuum: list[str]) -> None:
    """Some of the move's columns excluded from versioning: refused with what to do;
    all of its new columns excluded: the history is left as Continuum keeps it."""
    from fourstep_sqla.versioned import VersionTableError

    with pytest.raises(VersionTableError) as raised:
        _declare(Phase.WRITE_BOTH, "vbill_part", {"exclude": ["last_name"]})
    assert isinstance(raised.value, FourStepError)
    message = str(raised.value)
    for part in ("Bill.full_name", "vbill_part_version", "no copy of last_name",
                 "Bill.__versioned__['exclude']",
                 "all of legacy_name, first_name, last_name or none of them"):
        assert part in message, message

    _forget_continuum()
    Bill = _declare(Phase.WRITE_BOTH, "vbill_out", {"exclude": ["first_name", "last_name"]})
    assert "vbill_out_version.full_name" not in {s.key for s in registry.all_specs()}
    assert not hasattr(version_class(Bill), "full_name")


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_fourstep_revision_writes_the_version_table_with_the_model(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, continuum: list[str]
) -> None:
    """``fourstep revision --step N bill.full_name`` (without autogenerate) carries
    bill_version along, as autogenerate does: without its new columns Continuum's
    first write at step 1 would fail."""
    project = Project(tmp_path, engine)
    monkeypatch.syspath_prepend(str(project.models_dir))
    App(project, engine, continuum, "", template=STEP_0)
    _migrate(project)
    app = App(project, engine, continuum, "WRITE_BOTH")
    path = write_revision(project.config, registry.get("bill.full_name"), 1, "step 1")
    upgrade = Path(path).read_text().split("def downgrade")[0]
    assert "op.add_column('bill_version', sa.Column('first_name'" in upgrade, upgrade
    for key in KEYS:
        assert f"op.create_sync_triggers(\n        '{key}'" in upgrade, upgrade
    command.upgrade(project.config, "head")
    app.create(1, full_name=("Ada", "Lovelace"))
    assert _versions(engine) == {1: [("Ada Lovelace", "Ada", "Lovelace")]}
    command.check(project.config)
