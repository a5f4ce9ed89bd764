"""Bad declarations fail early, with the right error and a message to act on.

Every declaration error is raised while the model class statement runs (the
mapper is constructed then), never at the first query. Run-time misuse (a
Python-only transform where SQL is needed, a transform that raises, a value of
the wrong shape) raises its own :class:`~fourstep_sqla.FourStepError` subclass
naming the attribute.

Table names start with ``decl_`` and are unique in the suite: the registry
warns when two classes claim the same ``"<table>.<attribute>"`` key.
"""

from __future__ import annotations

import re
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, String, Text, insert, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    Unmapped,
    column_property,
    mapped_column,
    unmapped_column,
)

import fourstep_sqla
from fourstep_sqla import FourStepError, Phase, Transform, phased, read_phase
from fourstep_sqla import registry as fourstep_registry
from fourstep_sqla.errors import (
    DeclarationError,
    FourStepWarning,
    InconsistentWriteError,
    OldColumnNotNullError,
    OldColumnStillMappedError,
    PhaseError,
    RegistryError,
    SQLTransformRequiredError,
    TransformArityError,
    TransformError,
    UnknownColumnError,
)


@pytest.fixture
def Base() -> Iterator[type[DeclarativeBase]]:
    """A fresh declarative base per test, so a failed mapping cannot leak."""

    class Base(DeclarativeBase):
        pass

    yield Base
    Base.registry.dispose()


def _identity() -> Transform[Any]:
    return Transform.identity()


def _python_split(name: str) -> tuple[str, str | None]:
    first, _, last = name.partition(" ")
    return first, last or None


def _python_join(first: str | None, last: str | None) -> str | None:
    return " ".join(p for p in (first, last) if p is not None) or None


# ---------------------------------------------------------------------------
# the hierarchy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        DeclarationError,
        UnknownColumnError,
        TransformArityError,
        OldColumnStillMappedError,
        OldColumnNotNullError,
        PhaseError,
        SQLTransformRequiredError,
        TransformError,
        InconsistentWriteError,
        RegistryError,
    ],
)
def test_every_error_is_a_fourstep_error(error: type[Exception]) -> None:
    assert issubclass(error, fourstep_sqla.FourStepError)


@pytest.mark.parametrize(
    "error",
    [UnknownColumnError, TransformArityError, OldColumnStillMappedError, OldColumnNotNullError],
)
def test_declaration_errors_are_declaration_errors(error: type[Exception]) -> None:
    assert issubclass(error, DeclarationError)


# ---------------------------------------------------------------------------
# unknown old / new attribute names
# ---------------------------------------------------------------------------


def test_unknown_old_attribute_fails_when_the_class_is_defined(
    Base: type[DeclarativeBase],
) -> None:
    with pytest.raises(UnknownColumnError) as excinfo:

        class Account(Base):
            __tablename__ = "decl_unknown_old"
            id: Mapped[int] = mapped_column(primary_key=True)
            mail: Mapped[str | None]
            email: Mapped[str | None]
            address = phased(
                old="mial",
                new="email",
                forward=_identity(),
                backward=_identity(),
                phase=Phase.WRITE_BOTH,
            )

    message = str(excinfo.value)
    assert "Account.address" in message  # model and attribute
    assert "old='mial'" in message  # the side and the name given
    assert "id, mail, email" in message  # what it could have been
    assert "Name the attribute" in message  # what to do


def test_unknown_new_attribute_fails_when_the_class_is_defined(
    Base: type[DeclarativeBase],
) -> None:
    with pytest.raises(UnknownColumnError) as excinfo:

        class Account(Base):
            __tablename__ = "decl_unknown_new"
            id: Mapped[int] = mapped_column(primary_key=True)
            legacy_name: Mapped[str | None] = mapped_column("name")
            first_name: Mapped[str | None]
            last_name: Mapped[str | None]
            full_name = phased(
                old="legacy_name",
                new=("first_name", "surname"),
                forward=Transform.split(" "),
                backward=Transform.join(" "),
                phase=Phase.READ_NEW,
            )

    message = str(excinfo.value)
    assert "Account.full_name" in message
    assert "new='surname'" in message
    assert "last_name" in message
    assert "Name the attribute" in message


def test_naming_the_database_column_instead_of_the_attribute_is_unknown(
    Base: type[DeclarativeBase],
) -> None:
    """``legacy_name`` maps column ``name``: ``old="name"`` is the classic slip."""
    with pytest.raises(UnknownColumnError) as excinfo:

        class Person(Base):
            __tablename__ = "decl_db_column_name"
            id: Mapped[int] = mapped_column(primary_key=True)
            legacy_name: Mapped[str | None] = mapped_column("name")
            first_name: Mapped[str | None]
            last_name: Mapped[str | None]
            full_name = phased(
                old="name",
                new=("first_name", "last_name"),
                forward=Transform.split(" "),
                backward=Transform.join(" "),
                phase=Phase.WRITE_BOTH,
            )

    message = str(excinfo.value)
    assert "Person.full_name" in message
    assert "old='name'" in message
    assert "legacy_name" in message
    assert "not the database column" in message


def test_a_non_column_attribute_is_refused(Base: type[DeclarativeBase]) -> None:
    with pytest.raises(UnknownColumnError) as excinfo:

        class Sheet(Base):
            __tablename__ = "decl_non_column"
            id: Mapped[int] = mapped_column(primary_key=True)
            a: Mapped[int | None] = mapped_column()
            b: Mapped[int | None] = mapped_column()
            total = column_property(a + b)
            amount = phased(
                old="a",
                new="total",
                forward=_identity(),
                backward=_identity(),
                phase=Phase.WRITE_BOTH,
            )

    message = str(excinfo.value)
    assert "Sheet.amount" in message
    assert "'total'" in message


def test_an_unmapped_old_column_before_step_4_is_unknown_with_a_hint(
    Base: type[DeclarativeBase],
) -> None:
    with pytest.raises(UnknownColumnError) as excinfo:

        class Account(Base):
            __tablename__ = "decl_unmapped_too_early"
            id: Mapped[int] = mapped_column(primary_key=True)
            mail: Unmapped[str | None] = unmapped_column("mail")
            email: Mapped[str | None]
            address = phased(
                old="mail",
                new="email",
                forward=_identity(),
                backward=_identity(),
                phase=Phase.STOP_READ_OLD,
            )

    message = str(excinfo.value)
    assert "Account.address" in message
    assert "unmapped_column()" in message
    assert "Phase.STOP_WRITE_OLD" in message
    assert "mapped_column()" in message


def test_an_old_column_missing_altogether_at_step_4_is_unknown(
    Base: type[DeclarativeBase],
) -> None:
    with pytest.raises(UnknownColumnError) as excinfo:

        class Account(Base):
            __tablename__ = "decl_old_missing_step4"
            id: Mapped[int] = mapped_column(primary_key=True)
            email: Mapped[str | None]
            address = phased(
                old="mail",
                new="email",
                forward=_identity(),
                backward=_identity(),
                phase=Phase.STOP_WRITE_OLD,
            )

    message = str(excinfo.value)
    assert "Account.address" in message
    assert "'mail'" in message
    assert "unmapped_column(" in message


def test_a_phased_attribute_on_a_mixin_shared_by_two_models(
    Base: type[DeclarativeBase],
) -> None:
    class AddressMixin:
        mail: Mapped[str | None]
        email: Mapped[str | None]
        address = phased(
            old="mail",
            new="email",
            forward=_identity(),
            backward=_identity(),
            phase=Phase.WRITE_BOTH,
        )

    class Customer(AddressMixin, Base):
        __tablename__ = "decl_mixin_customers"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(DeclarationError) as excinfo:

        class Supplier(AddressMixin, Base):
            __tablename__ = "decl_mixin_suppliers"
            id: Mapped[int] = mapped_column(primary_key=True)

    message = str(excinfo.value)
    assert "Customer" in message and "Supplier" in message
    assert "Declare it on each model" in message


# ---------------------------------------------------------------------------
# transform arity
# ---------------------------------------------------------------------------


def _two_args(a: Any, b: Any) -> Any:
    return a


def _one_arg(a: Any) -> Any:
    return a


def test_forward_arity_must_match_the_old_columns(Base: type[DeclarativeBase]) -> None:
    with pytest.raises(TransformArityError) as excinfo:

        class Account(Base):
            __tablename__ = "decl_arity_forward"
            id: Mapped[int] = mapped_column(primary_key=True)
            mail: Mapped[str | None]
            email: Mapped[str | None]
            address = phased(
                old="mail",
                new="email",
                forward=Transform(_two_args),
                backward=_identity(),
                phase=Phase.WRITE_BOTH,
            )

    message = str(excinfo.value)
    assert "Account.address" in message
    assert "forward" in message
    assert "'_two_args'" in message
    assert "1 positional argument" in message
    assert "(mail)" in message  # the column(s) it should take
    assert "change its signature" in message


def test_backward_arity_must_match_the_new_columns(Base: type[DeclarativeBase]) -> None:
    with pytest.raises(TransformArityError) as excinfo:

        class Person(Base):
            __tablename__ = "decl_arity_backward"
            id: Mapped[int] = mapped_column(primary_key=True)
            legacy_name: Mapped[str | None] = mapped_column("name")
            first_name: Mapped[str | None]
            last_name: Mapped[str | None]
            full_name = phased(
                old="legacy_name",
                new=("first_name", "last_name"),
                forward=Transform.split(" "),
                backward=Transform(_one_arg),
                phase=Phase.WRITE_BOTH,
            )

    message = str(excinfo.value)
    assert "Person.full_name" in message
    assert "backward" in message
    assert "'_one_arg'" in message
    assert "2 positional argument" in message
    assert "first_name, last_name" in message


def test_sql_callable_arity_is_checked_too(Base: type[DeclarativeBase]) -> None:
    with pytest.raises(TransformArityError) as excinfo:

        class Account(Base):
            __tablename__ = "decl_arity_sql"
            id: Mapped[int] = mapped_column(primary_key=True)
            mail: Mapped[str | None]
            email: Mapped[str | None]
            address = phased(
                old="mail",
                new="email",
                forward=Transform(_one_arg, sql=_two_args, name="half_sql"),
                backward=_identity(),
                phase=Phase.WRITE_BOTH,
            )

    assert "Account.address" in str(excinfo.value)
    assert "'half_sql'" in str(excinfo.value)


def test_merge_arity_with_two_old_columns(Base: type[DeclarativeBase]) -> None:
    """Two old columns need a forward of two arguments: one is refused."""
    with pytest.raises(TransformArityError) as excinfo:

        class Place(Base):
            __tablename__ = "decl_arity_merge"
            id: Mapped[int] = mapped_column(primary_key=True)
            lat: Mapped[str | None]
            lon: Mapped[str | None]
            location: Mapped[str | None]
            where = phased(
                old=("lat", "lon"),
                new="location",
                forward=Transform(_one_arg),
                backward=Transform(_one_arg),
                phase=Phase.WRITE_BOTH,
            )

    message = str(excinfo.value)
    assert "Place.where" in message
    assert "2 positional argument" in message
    assert "lat, lon" in message


def test_matching_arities_are_accepted(Base: type[DeclarativeBase]) -> None:
    """Variadic and defaulted parameters satisfy the arity check."""

    def forward(a: Any, b: Any = None, /) -> Any:
        return a

    class Person(Base):
        __tablename__ = "decl_arity_ok"
        id: Mapped[int] = mapped_column(primary_key=True)
        legacy_name: Mapped[str | None] = mapped_column("name")
        first_name: Mapped[str | None]
        last_name: Mapped[str | None]
        full_name = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform(_python_split),
            backward=Transform.join(" "),  # *values
            phase=Phase.WRITE_BOTH,
        )
        nick = phased(
            old="legacy_name",
            new="first_name",
            forward=Transform(forward),
            backward=_identity(),
            phase=Phase.WRITE_BOTH,
            key="decl_arity_ok.nick_custom",
        )

    assert Person.full_name.spec.new_columns[1].name == "last_name"  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# step 4 declarations
# ---------------------------------------------------------------------------


def test_step_4_with_the_old_column_still_mapped(Base: type[DeclarativeBase]) -> None:
    with pytest.raises(OldColumnStillMappedError) as excinfo:

        class Account(Base):
            __tablename__ = "decl_still_mapped"
            id: Mapped[int] = mapped_column(primary_key=True)
            mail: Mapped[str | None]
            email: Mapped[str | None]
            address = phased(
                old="mail",
                new="email",
                forward=_identity(),
                backward=_identity(),
                phase=Phase.STOP_WRITE_OLD,
            )

    message = str(excinfo.value)
    assert "Account.address" in message
    assert "Account.mail" in message
    assert "Phase.STOP_WRITE_OLD" in message
    assert "Unmapped[" in message and "unmapped_column(" in message


@pytest.mark.parametrize(
    "declare",
    [
        pytest.param(lambda: unmapped_column("name", nullable=False), id="nullable=False"),
        # Unmapped[str] (not Optional) is inferred NOT NULL, like Mapped[str]
        pytest.param(lambda: unmapped_column("name"), id="inferred-from-Unmapped[str]"),
    ],
)
def test_step_4_with_a_not_null_old_column_without_default(
    Base: type[DeclarativeBase], declare: Any
) -> None:
    with pytest.raises(OldColumnNotNullError) as excinfo:

        class Person(Base):
            __tablename__ = "decl_not_null"
            id: Mapped[int] = mapped_column(primary_key=True)
            legacy_name: Unmapped[str] = declare()
            first_name: Mapped[str | None]
            last_name: Mapped[str | None]
            full_name = phased(
                old="legacy_name",
                new=("first_name", "last_name"),
                forward=Transform.split(" "),
                backward=Transform.join(" "),
                phase=Phase.STOP_WRITE_OLD,
            )

    message = str(excinfo.value)
    assert "Person.full_name" in message
    assert "decl_not_null.name" in message  # the table and column
    assert "NOT NULL" in message
    assert "server_default" in message and "nullable=True" in message  # the ways out


def test_step_4_not_null_old_column_with_server_default_is_accepted(
    Base: type[DeclarativeBase], sqlite_engine: Engine
) -> None:
    class Person(Base):
        __tablename__ = "decl_not_null_default"
        id: Mapped[int] = mapped_column(primary_key=True)
        legacy_name: Unmapped[str] = unmapped_column(
            "name", String(100), nullable=False, server_default=""
        )
        first_name: Mapped[str | None]
        last_name: Mapped[str | None]
        full_name = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform.split(" "),
            backward=Transform.join(" "),
            phase=Phase.STOP_WRITE_OLD,
        )

    spec = Person.full_name.spec  # type: ignore[attr-defined]
    assert [c.name for c in spec.old_columns] == ["name"]
    # the ORM neither maps nor writes it, and an INSERT succeeds
    assert "legacy_name" not in Person.__mapper__.attrs
    Base.metadata.create_all(sqlite_engine)
    with Session(sqlite_engine) as session:
        session.add(Person(id=1, full_name=("Ada", "Lovelace")))
        session.commit()
        row = session.execute(text("SELECT name, first_name, last_name FROM decl_not_null_default"))
        assert row.one() == ("", "Ada", "Lovelace")


def test_step_4_with_a_nullable_unmapped_old_column_is_accepted(
    Base: type[DeclarativeBase],
) -> None:
    class Account(Base):
        __tablename__ = "decl_step4_ok"
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Unmapped[str | None] = unmapped_column("mail")
        email: Mapped[str | None]
        address = phased(
            old="mail",
            new="email",
            forward=_identity(),
            backward=_identity(),
            phase=Phase.STOP_WRITE_OLD,
        )

    assert Account.address.spec.old_columns[0].name == "mail"  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Python-only transforms: SQL needed at steps 1-2, raised when the query is built
# ---------------------------------------------------------------------------


def _python_only_model(base: type[DeclarativeBase], table: str, phase: Phase) -> Any:
    class Person(base):  # type: ignore[valid-type,misc]
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        legacy_name: Mapped[str | None] = mapped_column("name")
        first_name: Mapped[str | None]
        last_name: Mapped[str | None]
        full_name = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform(_python_split),
            backward=Transform(_python_join),
            phase=phase,
        )
        legacy_code: Mapped[str | None] = mapped_column("code")
        code: Mapped[int | None] = mapped_column("code_int")
        number = phased(
            old="legacy_code",
            new="code",
            forward=Transform(int),
            backward=Transform(str),
            phase=phase,
        )

    return Person


@pytest.mark.parametrize("phase", [Phase.WRITE_BOTH, Phase.READ_NEW])
def test_python_only_forward_refuses_sql_reads_when_the_query_is_built(
    Base: type[DeclarativeBase], phase: Phase
) -> None:
    Person = _python_only_model(Base, f"decl_python_only_p{int(phase)}", phase)

    # declaring it and touching the class attribute is fine ...
    Person.full_name  # noqa: B018
    Person.number  # noqa: B018

    # ... building a statement that needs forward() in SQL is not: no session, no execute
    builders = {
        "select multi": lambda: select(Person.full_name),
        "where multi": lambda: select(Person).where(Person.full_name == ("Ada", "Lovelace")),
        "select": lambda: select(Person.number),
        "where": lambda: select(Person.id).where(Person.number == 3),
        "where >": lambda: select(Person.id).where(Person.number > 3),
        "order_by": lambda: select(Person.id).order_by(Person.number),
        "filter_by": lambda: select(Person).filter_by(number=3),
        "in_": lambda: select(Person.id).where(Person.number.in_([1, 2])),
    }
    for label, build in builders.items():
        with pytest.raises(SQLTransformRequiredError) as excinfo:
            build()
        message = str(excinfo.value)
        assert "Person." in message, label
        assert "forward" in message, label
        assert "sql=" in message, label  # what to do
        assert phase.name in message, label


def test_python_only_forward_sql_reads_work_at_step_3(
    Base: type[DeclarativeBase], sqlite_engine: Engine
) -> None:
    Person = _python_only_model(Base, "decl_python_only_p3", Phase.STOP_READ_OLD)
    Base.metadata.create_all(sqlite_engine)
    with Session(sqlite_engine) as session:
        session.add(Person(id=1, full_name=("Ada", "Lovelace"), number=7))
        session.add(Person(id=2, full_name=("Cher", None), number=9))
        session.commit()
        assert session.scalars(select(Person.full_name).order_by(Person.id)).all() == [
            ("Ada", "Lovelace"),
            ("Cher", None),
        ]
        found = session.scalars(select(Person.id).where(Person.full_name == ("Cher", None)))
        assert found.all() == [2]
        assert session.scalars(select(Person.id).where(Person.number > 8)).all() == [2]
        assert session.scalars(select(Person.id).order_by(Person.number.desc())).all() == [2, 1]
        # both places were written in Python
        rows = session.execute(text(f"SELECT name, code FROM {Person.__tablename__} ORDER BY id"))
        assert rows.all() == [("Ada Lovelace", "7"), ("Cher", "9")]


def test_python_only_forward_pinned_to_step_3_reads_in_sql(
    Base: type[DeclarativeBase],
) -> None:
    Person = _python_only_model(Base, "decl_python_only_pin", Phase.WRITE_BOTH)
    with read_phase(Phase.STOP_READ_OLD, Person.full_name, Person.number):
        select(Person.full_name).where(Person.number == 3)
    with read_phase(Phase.READ_NEW, Person.number), pytest.raises(SQLTransformRequiredError):
        select(Person.number)


@pytest.mark.parametrize("phase", [Phase.WRITE_BOTH, Phase.READ_NEW])
def test_python_only_forward_instance_reads_work_in_python(
    Base: type[DeclarativeBase], sqlite_engine: Engine, phase: Phase
) -> None:
    Person = _python_only_model(Base, f"decl_python_only_inst_p{int(phase)}", phase)
    Base.metadata.create_all(sqlite_engine)
    with sqlite_engine.begin() as conn:  # rows written before step 1: old columns only
        conn.execute(
            text(f"INSERT INTO {Person.__tablename__} (id, name, code) VALUES (1, 'Ada King', '5')")
        )
    with Session(sqlite_engine) as session:
        session.add(Person(id=2, full_name=("Grace", "Hopper"), number=6))
        session.commit()
        session.expire_all()
        ada = session.get(Person, 1)
        grace = session.get(Person, 2)
        assert ada is not None and grace is not None
        assert ada.full_name == ("Ada", "King")
        assert ada.number == 5
        assert grace.full_name == ("Grace", "Hopper")
        assert grace.number == 6
        # selecting the entity (not the attribute) needs no SQL transform
        assert len(session.scalars(select(Person)).all()) == 2


# ---------------------------------------------------------------------------
# read_phase()
# ---------------------------------------------------------------------------


def test_read_phase_cannot_pin_step_4() -> None:
    with pytest.raises(PhaseError) as excinfo, read_phase(Phase.STOP_WRITE_OLD):
        pass
    assert "STOP_WRITE_OLD" in str(excinfo.value)
    assert "phase=" in str(excinfo.value)  # what to do instead


@pytest.mark.parametrize("phase", [0, 4, 5, "2"])
def test_read_phase_refuses_what_is_not_a_phase_1_to_3(phase: Any) -> None:
    with pytest.raises(PhaseError), read_phase(phase):
        pass


def test_read_phase_on_a_step_4_attribute(Base: type[DeclarativeBase]) -> None:
    class Account(Base):
        __tablename__ = "decl_pin_step4"
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Unmapped[str | None] = unmapped_column("mail")
        email: Mapped[str | None]
        address = phased(
            old="mail",
            new="email",
            forward=_identity(),
            backward=_identity(),
            phase=Phase.STOP_WRITE_OLD,
        )

    for target in (Account.address, "decl_pin_step4.address"):
        for phase in (Phase.WRITE_BOTH, Phase.READ_NEW, Phase.STOP_READ_OLD):
            with pytest.raises(PhaseError) as excinfo, read_phase(phase, target):
                pass
            assert "Account.address" in str(excinfo.value)
            assert "STOP_WRITE_OLD" in str(excinfo.value)
    # pinning everything leaves a step-4 attribute at step 4
    with read_phase(Phase.WRITE_BOTH):
        assert "decl_pin_step4.mail" not in str(select(Account.address))


def test_read_phase_with_an_unknown_key() -> None:
    with pytest.raises(RegistryError), read_phase(Phase.READ_NEW, "decl_nowhere.nothing"):
        pass


# ---------------------------------------------------------------------------
# phased() arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"old": "email", "new": "email"}, id="old == new"),
        pytest.param({"old": ("a", "email"), "new": ("email", "b")}, id="overlap"),
        pytest.param({"forward": lambda v: v}, id="forward not a Transform"),
        pytest.param({"backward": str}, id="backward not a Transform"),
        pytest.param({"old": ""}, id="empty old name"),
        pytest.param({"new": ()}, id="no new names"),
        pytest.param({"old": ("a", "a")}, id="old named twice"),
        pytest.param({"phase": 7}, id="phase out of range"),
        pytest.param({"phase": "READ_NEW"}, id="phase as a string"),
        pytest.param({"value_type": tuple}, id="value_type with one new column"),
    ],
)
def test_phased_argument_errors(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "old": "mail",
        "new": "email",
        "forward": Transform.identity(),
        "backward": Transform.identity(),
        "phase": Phase.WRITE_BOTH,
    }
    arguments.update(kwargs)
    with pytest.raises(DeclarationError) as excinfo:
        phased(**arguments)
    assert isinstance(excinfo.value, FourStepError)
    assert "phased(" in str(excinfo.value)


def test_old_equal_to_new_names_the_column() -> None:
    with pytest.raises(DeclarationError, match=r"\bemail\b"):
        phased(
            old="email",
            new="email",
            forward=Transform.identity(),
            backward=Transform.identity(),
            phase=Phase.WRITE_BOTH,
        )


def test_non_transform_forward_says_what_to_pass() -> None:
    with pytest.raises(DeclarationError, match=r"Transform"):
        phased(
            old="mail",
            new="email",
            forward=str.lower,  # type: ignore[arg-type]
            backward=Transform.identity(),
            phase=Phase.WRITE_BOTH,
        )


def test_phase_accepts_a_plain_int(Base: type[DeclarativeBase]) -> None:
    class Account(Base):
        __tablename__ = "decl_int_phase"
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Mapped[str | None]
        email: Mapped[str | None]
        address = phased(
            old="mail", new="email", forward=_identity(), backward=_identity(), phase=2
        )

    assert Account.address.spec.phase is Phase.READ_NEW  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# transforms failing at run time, values of the wrong shape
# ---------------------------------------------------------------------------


def _picky_join(first: str | None, last: str | None) -> str | None:
    if first == "boom":
        raise ValueError("no explosions in names")
    return _python_join(first, last)


def _picky_split(name: str) -> tuple[str, str | None]:
    if name.startswith("boom"):
        raise ValueError("no explosions in names")
    return _python_split(name)


@pytest.fixture
def Picky(Base: type[DeclarativeBase], sqlite_engine: Engine) -> Any:
    class Picky(Base):
        __tablename__ = "decl_picky"
        id: Mapped[int] = mapped_column(primary_key=True)
        legacy_name: Mapped[str | None] = mapped_column("name")
        first_name: Mapped[str | None]
        last_name: Mapped[str | None]
        full_name = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform(_picky_split, sql=Transform.split(" ").sql),
            backward=Transform(_picky_join, sql=Transform.join(" ").sql),
            phase=Phase.READ_NEW,
        )

    Base.metadata.create_all(sqlite_engine)
    return Picky


def _assert_names_the_attribute(error: BaseException, transform: str) -> None:
    message = str(error)
    assert "Picky.full_name" in message
    assert f"'{transform}'" in message
    assert "ValueError" in message and "no explosions in names" in message
    assert isinstance(error.__cause__, ValueError)


def test_backward_raising_on_assignment(Picky: Any) -> None:
    person = Picky(id=1)
    with pytest.raises(TransformError) as excinfo:
        person.full_name = ("boom", "Lovelace")
    _assert_names_the_attribute(excinfo.value, "_picky_join")
    assert "backward" in str(excinfo.value)
    with pytest.raises(TransformError):
        Picky(id=2, full_name=("boom", None))


def test_backward_raising_in_update_values(Picky: Any) -> None:
    with pytest.raises(TransformError) as excinfo:
        update(Picky).values(full_name=("boom", "x"))
    _assert_names_the_attribute(excinfo.value, "_picky_join")


def test_backward_raising_in_a_bulk_insert(Picky: Any, sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as session, pytest.raises(TransformError) as excinfo:
        session.execute(
            insert(Picky),
            [{"id": 1, "full_name": ("Ada", None)}, {"id": 2, "full_name": ("boom", "x")}],
        )
    _assert_names_the_attribute(excinfo.value, "_picky_join")
    with Session(sqlite_engine) as session:
        assert session.scalars(select(Picky.id)).all() == []


def test_forward_raising_on_a_direct_write_at_flush(Picky: Any, sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as session:
        session.add(Picky(id=1, legacy_name="boom town"))
        with pytest.raises(TransformError) as excinfo:
            session.flush()
        _assert_names_the_attribute(excinfo.value, "_picky_split")
        assert "forward" in str(excinfo.value)
        session.rollback()
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM decl_picky")).scalar_one() == 0


def test_forward_raising_on_an_instance_read(Picky: Any, sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.execute(text("INSERT INTO decl_picky (id, name) VALUES (1, 'boom box')"))
    with Session(sqlite_engine) as session:
        person = session.get(Picky, 1)
        with pytest.raises(TransformError) as excinfo:
            person.full_name  # noqa: B018
    _assert_names_the_attribute(excinfo.value, "_picky_split")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(("Ada",), id="one value"),
        pytest.param(("Ada", "Byron", "Lovelace"), id="three values"),
        pytest.param((), id="empty tuple"),
        pytest.param("Ada Lovelace", id="a string"),
        pytest.param(42, id="not iterable"),
    ],
)
def test_wrong_number_of_values_for_a_multi_column_attribute(Picky: Any, value: Any) -> None:
    person = Picky(id=1)
    with pytest.raises(TransformError) as excinfo:
        person.full_name = value
    message = str(excinfo.value)
    assert "Picky.full_name" in message
    assert "first_name, last_name" in message
    assert "2 values" in message
    assert repr(value) in message
    # nothing was half-written
    assert (person.legacy_name, person.first_name, person.last_name) == (None, None, None)


@pytest.mark.parametrize("build", ["constructor", "update", "insert", "where"])
def test_wrong_number_of_values_in_other_write_paths(Picky: Any, build: str) -> None:
    value = ("Ada", "Byron", "Lovelace")
    with pytest.raises(TransformError, match=r"Picky\.full_name"):
        if build == "constructor":
            Picky(id=1, full_name=value)
        elif build == "update":
            update(Picky).values(full_name=value)
        elif build == "insert":
            insert(Picky).values(full_name=value)
        else:
            select(Picky.id).where(Picky.full_name == value)


def test_forward_returning_the_wrong_width(Base: type[DeclarativeBase]) -> None:
    def three(name: str) -> tuple[str, str, str]:
        return name, name, name

    class Person(Base):
        __tablename__ = "decl_wrong_width"
        id: Mapped[int] = mapped_column(primary_key=True)
        legacy_name: Mapped[str | None] = mapped_column("name")
        first_name: Mapped[str | None]
        last_name: Mapped[str | None]
        full_name = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform(three),
            backward=Transform.join(" "),
            phase=Phase.WRITE_BOTH,
        )

    person = Person(id=1, legacy_name="Ada")
    with pytest.raises(TransformError) as excinfo:
        person.full_name  # noqa: B018
    assert "Person.full_name" in str(excinfo.value)
    assert "'three'" in str(excinfo.value)
    assert "2 values" in str(excinfo.value)


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------


def test_registry_get_by_table_and_attribute(Base: type[DeclarativeBase]) -> None:
    class Account(Base):
        __tablename__ = "decl_reg_accounts"
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Mapped[str | None]
        email: Mapped[str | None]
        address = phased(
            old="mail",
            new="email",
            forward=_identity(),
            backward=_identity(),
            phase=Phase.READ_NEW,
        )

    spec = fourstep_registry.get("decl_reg_accounts.address")
    assert spec is Account.address.spec  # type: ignore[attr-defined]
    assert spec.owner is Account
    assert spec.name == "address"
    assert spec.key == "decl_reg_accounts.address"
    assert spec.phase is Phase.READ_NEW
    assert (spec.old, spec.new) == (("mail",), ("email",))
    assert spec in fourstep_registry.all_specs()
    assert fourstep_registry.resolve(Account.address) is spec
    assert fourstep_registry.resolve("decl_reg_accounts.address") is spec


def test_registry_explicit_and_schema_qualified_keys(Base: type[DeclarativeBase]) -> None:
    class Account(Base):
        __tablename__ = "decl_reg_schema"
        __table_args__ = ({"schema": "decl_s"},)
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Mapped[str | None]
        email: Mapped[str | None]
        legacy_code: Mapped[str | None]
        code: Mapped[int | None]
        address = phased(
            old="mail", new="email", forward=_identity(), backward=_identity(), phase=1
        )
        number = phased(
            old="legacy_code",
            new="code",
            forward=Transform.cast(int, Integer()),
            backward=Transform.cast(str, Text()),
            phase=1,
            key="decl_custom.number_key",
        )

    assert fourstep_registry.get("decl_s.decl_reg_schema.address").owner is Account
    assert fourstep_registry.get("decl_custom.number_key").owner is Account
    with pytest.raises(RegistryError):
        fourstep_registry.get("decl_reg_schema.number")


def test_registry_unknown_key_lists_the_known_ones(Base: type[DeclarativeBase]) -> None:
    class Account(Base):
        __tablename__ = "decl_reg_known"
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Mapped[str | None]
        email: Mapped[str | None]
        address = phased(
            old="mail", new="email", forward=_identity(), backward=_identity(), phase=1
        )

    with pytest.raises(RegistryError) as excinfo:
        fourstep_registry.get("decl_reg_known.adress")
    message = str(excinfo.value)
    assert "'decl_reg_known.adress'" in message
    assert "decl_reg_known.address" in message  # a known key, listed
    assert "<table>.<attribute>" in message


def test_registry_resolve_refuses_what_is_not_phased(Base: type[DeclarativeBase]) -> None:
    class Account(Base):
        __tablename__ = "decl_reg_resolve"
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Mapped[str | None]

    with pytest.raises(RegistryError, match="not a phased attribute"):
        fourstep_registry.resolve(Account.mail)


def test_registry_warns_when_two_classes_claim_a_key() -> None:
    def declare(base: type[DeclarativeBase], key: str | None) -> type:
        class Account(base):  # type: ignore[valid-type,misc]
            __tablename__ = "decl_reg_twice"
            id: Mapped[int] = mapped_column(primary_key=True)
            mail: Mapped[str | None]
            email: Mapped[str | None]
            address = phased(
                old="mail",
                new="email",
                forward=_identity(),
                backward=_identity(),
                phase=1,
                key=key,
            )

        return Account

    class First(DeclarativeBase):
        pass

    class Second(DeclarativeBase):
        pass

    class Third(DeclarativeBase):
        pass

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first = declare(First, None)
        # Same module and qualname: a re-import, replaced silently. Renamed: warned.
        second_cls: Any = None

        def declare_other(base: type[DeclarativeBase]) -> type:
            class OtherAccount(base):  # type: ignore[valid-type,misc]
                __tablename__ = "decl_reg_twice"
                id: Mapped[int] = mapped_column(primary_key=True)
                mail: Mapped[str | None]
                email: Mapped[str | None]
                address = phased(
                    old="mail",
                    new="email",
                    forward=_identity(),
                    backward=_identity(),
                    phase=1,
                )

            return OtherAccount

        with pytest.warns(FourStepWarning, match=r"decl_reg_twice\.address"):
            second_cls = declare_other(Second)
        assert fourstep_registry.get("decl_reg_twice.address").owner is second_cls
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            third = declare(Third, "decl_reg_twice.address_v2")
        assert fourstep_registry.get("decl_reg_twice.address_v2").owner is third
        assert first is not third
    finally:
        for base in (First, Second, Third):
            base.registry.dispose()


_MODELS_MODULE = """
from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "decl_loaded_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    legacy_name: Mapped[str | None] = mapped_column("name")
    first_name: Mapped[str | None]
    last_name: Mapped[str | None]
    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.READ_NEW,
    )


class Order(Base):
    __tablename__ = "decl_loaded_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    mail: Mapped[str | None]
    email: Mapped[str | None]
    contact = phased(
        old="mail",
        new="email",
        forward=Transform.identity(str),
        backward=Transform.identity(str),
        phase=Phase.WRITE_BOTH,
    )


class Plain(Base):
    __tablename__ = "decl_loaded_plain"
    id: Mapped[int] = mapped_column(primary_key=True)
"""


@pytest.fixture
def models_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "decl_registry_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_MODELS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name
    module = sys.modules.pop(name, None)
    if module is not None:
        module.Base.registry.dispose()


def test_load_models_lists_the_modules_phased_attributes(models_module: str) -> None:
    specs = fourstep_sqla.load_models(models_module)
    assert sorted(s.key for s in specs) == [
        "decl_loaded_orders.contact",
        "decl_loaded_users.full_name",
    ]
    module = sys.modules[models_module]
    by_key = {s.key: s for s in specs}
    assert by_key["decl_loaded_users.full_name"].owner is module.User
    assert by_key["decl_loaded_orders.contact"].phase is Phase.WRITE_BOTH
    # and the registry now resolves them
    assert fourstep_registry.get("decl_loaded_users.full_name") is module.User.full_name.spec
    # loading again is idempotent
    assert sorted(s.key for s in fourstep_sqla.load_models(models_module)) == sorted(by_key)


def test_load_models_does_not_list_other_modules(
    models_module: str, Base: type[DeclarativeBase]
) -> None:
    class Elsewhere(Base):
        __tablename__ = "decl_loaded_elsewhere"
        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Mapped[str | None]
        email: Mapped[str | None]
        address = phased(
            old="mail", new="email", forward=_identity(), backward=_identity(), phase=1
        )

    keys = {s.key for s in fourstep_sqla.load_models(models_module)}
    assert "decl_loaded_elsewhere.address" not in keys
    assert keys == {"decl_loaded_orders.contact", "decl_loaded_users.full_name"}


def test_load_models_of_a_missing_module() -> None:
    with pytest.raises(RegistryError) as excinfo:
        fourstep_sqla.load_models("decl_no_such_models_module")
    message = str(excinfo.value)
    assert "'decl_no_such_models_module'" in message
    assert re.search(r"ModuleNotFoundError", message)
