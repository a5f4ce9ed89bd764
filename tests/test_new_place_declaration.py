"""A new column that fills itself is refused when the model is mapped (steps 1-3).

Until the backfill, "every new column NULL" is how a row says it was never
written in the new shape: step-2 reads fall back to the old place for it and
the backfill fills it. A new column that is NOT NULL, has a non-NULL server
default (or is computed, an identity, a ``FetchedValue``), a
``server_onupdate``, or a Python ``default=`` / ``onupdate=`` breaks that, so
:class:`~fourstep_sqla.errors.NewColumnDefaultError` is raised while the class
statement runs. At step 4 the backfill is done and the old place is neither
read nor written, so the new columns may be tightened then.

Models are built with ``type()`` under class names derived from their table
names (``npd_...``, unique in the suite), so the registry never warns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import (
    Computed,
    Engine,
    FetchedValue,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    null,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased
from fourstep_sqla.errors import DeclarationError, NewColumnDefaultError

pytestmark = pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning")

DUAL_WRITE = [
    pytest.param(p, id=p.name) for p in (Phase.WRITE_BOTH, Phase.READ_NEW, Phase.STOP_READ_OLD)
]


@pytest.fixture
def Base() -> Iterator[type[DeclarativeBase]]:
    """A fresh declarative base per test, so a refused mapping cannot leak."""

    class Base(DeclarativeBase):
        pass

    yield Base
    Base.registry.dispose()


def class_name(table: str) -> str:
    return "".join(part.capitalize() for part in table.split("_"))


def split_model(
    base: type[DeclarativeBase],
    table: str,
    phase: Phase,
    last_name: Any,
    annotation: Any = None,
) -> Any:
    """``name`` -> ``first_name``, ``last_name``, with ``last_name`` declared as given."""
    ns: dict[str, Any] = {
        "__tablename__": table,
        "__module__": __name__,
        "id": mapped_column(Integer, primary_key=True, autoincrement=False),
        "legacy_name": (
            unmapped_column("name", String(100), nullable=True)
            if phase is Phase.STOP_WRITE_OLD
            else mapped_column("name", String(100), nullable=True)
        ),
        "first_name": mapped_column(String(100), nullable=True),
        "last_name": last_name,
        "full_name": phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform.split(" "),
            backward=Transform.join(" "),
            phase=phase,
        ),
    }
    if annotation is not None:
        ns["__annotations__"] = {"last_name": annotation}
    return type(class_name(table), (base,), ns)


# -- refused ---------------------------------------------------------------------
#: (how last_name is declared, its annotation, what the message says is wrong)
REFUSED: list[Any] = [
    pytest.param(
        lambda: mapped_column(String(100), nullable=False), None, "is NOT NULL", id="nullable=False"
    ),
    pytest.param(lambda: mapped_column(String(100)), Mapped[str], "is NOT NULL", id="Mapped[str]"),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, server_default=""),
        None,
        "has server_default ''",
        id="server_default-empty",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, server_default=text("'-'")),
        None,
        "has server_default text(\"'-'\")",
        id="server_default-text",
    ),
    pytest.param(
        # a plain string is a quoted literal: DEFAULT 'NULL', the four letters
        lambda: mapped_column(String(100), nullable=True, server_default="NULL"),
        None,
        "has server_default 'NULL'",
        id="server_default-string-NULL",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, server_default=FetchedValue()),
        None,
        "has server_default FetchedValue() (the database fills it)",
        id="server_default-FetchedValue",
    ),
    pytest.param(
        lambda: mapped_column(String(100), Computed("upper(first_name)"), nullable=True),
        None,
        "has server_default Computed()",
        id="Computed",
    ),
    pytest.param(
        lambda: mapped_column(Integer, Identity()),
        None,
        "has server_default Identity()",
        id="Identity",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, server_onupdate=FetchedValue()),
        None,
        "has server_onupdate FetchedValue()",
        id="server_onupdate",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, default="-"),
        None,
        "has a Python default=",
        id="default",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, insert_default=lambda: "-"),
        None,
        "has a Python default=",
        id="insert_default-callable",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, onupdate="-"),
        None,
        "has onupdate=",
        id="onupdate",
    ),
]


@pytest.mark.parametrize("phase", DUAL_WRITE)
@pytest.mark.parametrize(("declare", "annotation", "problem"), REFUSED)
def test_a_new_column_that_fills_itself_is_refused_at_steps_1_to_3(
    Base: type[DeclarativeBase],
    phase: Phase,
    declare: Callable[[], Any],
    annotation: Any,
    problem: str,
) -> None:
    table = f"npd_refused_{phase.value}"
    with pytest.raises(NewColumnDefaultError) as excinfo:
        split_model(Base, table, phase, declare(), annotation)

    message = str(excinfo.value)
    assert f"{class_name(table)}.full_name is at Phase.{phase.name}" in message  # model, attr
    assert f"new column {table}.last_name ({class_name(table)}.last_name)" in message  # column
    assert problem in message  # what is wrong
    assert "first_name" not in message  # only the offending column is named
    # what to do
    assert "Declare it nullable with no server_default, default= or onupdate=" in message
    assert "`last_name: Mapped[... | None] = mapped_column()`" in message
    assert "until step 4 (Phase.STOP_WRITE_OLD), then tighten it in a later migration" in message


def test_every_problem_of_the_column_is_named(Base: type[DeclarativeBase]) -> None:
    declared = mapped_column(String(100), nullable=False, server_default="", onupdate="-")
    with pytest.raises(NewColumnDefaultError) as excinfo:
        split_model(Base, "npd_all_problems", Phase.READ_NEW, declared)
    message = str(excinfo.value)
    assert "is NOT NULL" in message
    assert "has server_default ''" in message
    assert "has onupdate=" in message


def test_a_single_column_move_is_checked_too(Base: type[DeclarativeBase]) -> None:
    ns: dict[str, Any] = {
        "__tablename__": "npd_rename",
        "__module__": __name__,
        "id": mapped_column(Integer, primary_key=True),
        "mail": mapped_column(String(100), nullable=True),
        "email": mapped_column(String(100), nullable=False, server_default=""),
        "address": phased(
            old="mail",
            new="email",
            forward=Transform.identity(),
            backward=Transform.identity(),
            phase=Phase.WRITE_BOTH,
        ),
    }
    with pytest.raises(NewColumnDefaultError, match=r"new column npd_rename\.email"):
        type(class_name("npd_rename"), (Base,), ns)


def test_the_error_is_a_declaration_error() -> None:
    assert issubclass(NewColumnDefaultError, DeclarationError)


# -- accepted --------------------------------------------------------------------
ACCEPTED: list[Any] = [
    pytest.param(lambda: mapped_column(String(100), nullable=True), id="nullable"),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, server_default=None),
        id="server_default=None",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, server_default=text("NULL")),
        id="server_default=text(NULL)",
    ),
    pytest.param(
        lambda: mapped_column(String(100), nullable=True, server_default=null()),
        id="server_default=null()",
    ),
    pytest.param(lambda: mapped_column(String(100), default=None), id="default=None"),
]


@pytest.mark.parametrize("phase", DUAL_WRITE)
@pytest.mark.parametrize("declare", ACCEPTED)
def test_a_nullable_new_column_without_default_is_accepted(
    Base: type[DeclarativeBase], sqlite_engine: Engine, phase: Phase, declare: Callable[[], Any]
) -> None:
    model = split_model(Base, f"npd_ok_{phase.value}", phase, declare())
    assert [c.name for c in model.full_name.spec.new_columns] == ["first_name", "last_name"]

    # and it works: a row of the previous release (old only) reads as forward(old)
    # at steps 1-2, and an ORM write with a None part stores NULL there
    Base.metadata.create_all(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(insert(model.__table__).values(id=1, name="Ada Lovelace"))
    with Session(sqlite_engine) as session:
        session.add(model(id=2, full_name=("Cher", None)))
        session.commit()
        read = {key: value for key, value in session.execute(select(model.id, model.full_name))}
        stored = session.execute(
            text(f"SELECT last_name FROM npd_ok_{phase.value} ORDER BY id")
        ).scalars()
        assert list(stored) == [None, None]
    old_only = ("Ada", "Lovelace") if phase.reads_old else None
    assert read == {1: old_only, 2: ("Cher", None)}


@pytest.mark.postgres
def test_the_null_default_postgresql_reflects_is_accepted(
    Base: type[DeclarativeBase], pg_schema_engine: Engine
) -> None:
    """``DEFAULT NULL`` comes back from PostgreSQL as ``NULL::character varying``."""
    with pg_schema_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE npd_reflected (id integer PRIMARY KEY, name varchar(100), "
                "first_name varchar(100), last_name varchar(100) DEFAULT NULL)"
            )
        )
        conn.execute(text("INSERT INTO npd_reflected (id, name) VALUES (1, 'Ada Lovelace')"))
    reflected = Table("npd_reflected", MetaData(), autoload_with=pg_schema_engine)
    reflected_default: Any = reflected.c.last_name.server_default
    assert reflected_default.arg.text == "NULL::character varying"

    declared = mapped_column(String(100), nullable=True, server_default=reflected_default.arg)
    model = split_model(Base, "npd_reflected", Phase.READ_NEW, declared)
    with Session(pg_schema_engine) as session:
        assert session.scalars(select(model.full_name)).one() == ("Ada", "Lovelace")


@pytest.mark.parametrize(
    "declare",
    [
        pytest.param(
            lambda: mapped_column(String(100), nullable=False, server_default="-"),
            id="NOT NULL with server_default",
        ),
        pytest.param(
            lambda: mapped_column(String(100), nullable=False, default="-"),
            id="NOT NULL with default",
        ),
    ],
)
def test_step_4_may_tighten_the_new_column(
    Base: type[DeclarativeBase], sqlite_engine: Engine, declare: Callable[[], Any]
) -> None:
    model = split_model(Base, "npd_step4", Phase.STOP_WRITE_OLD, declare())
    assert not model.__table__.c.last_name.nullable

    Base.metadata.create_all(sqlite_engine)
    with Session(sqlite_engine) as session:
        session.add(model(id=1, full_name=("Ada", "Lovelace")))
        session.commit()
        assert session.scalars(select(model.full_name)).one() == ("Ada", "Lovelace")


def test_old_columns_are_not_checked(Base: type[DeclarativeBase]) -> None:
    """The old place may be NOT NULL with a default at steps 1-3 (step 1 relaxes it)."""
    ns: dict[str, Any] = {
        "__tablename__": "npd_old_not_null",
        "__module__": __name__,
        "id": mapped_column(Integer, primary_key=True),
        "mail": mapped_column(String(100), nullable=False, server_default=""),
        "email": mapped_column(String(100), nullable=True),
        "address": phased(
            old="mail",
            new="email",
            forward=Transform.identity(),
            backward=Transform.identity(),
            phase=Phase.WRITE_BOTH,
        ),
    }
    model = type(class_name("npd_old_not_null"), (Base,), ns)
    assert model.address.spec.old_column_names == ("mail",)


def test_a_primary_key_column_is_not_checked(Base: type[DeclarativeBase]) -> None:
    """A key is NOT NULL (and may be an identity); it is never what a move moves."""
    ns: dict[str, Any] = {
        "__tablename__": "npd_key",
        "__module__": __name__,
        "id": mapped_column(Integer, Identity(), primary_key=True),
        "legacy_id": mapped_column(Integer, nullable=True),
        "key": phased(
            old="legacy_id",
            new="id",
            forward=Transform.identity(),
            backward=Transform.identity(),
            phase=Phase.WRITE_BOTH,
        ),
    }
    model = type(class_name("npd_key"), (Base,), ns)
    assert model.key.spec.new_column_names == ("id",)
