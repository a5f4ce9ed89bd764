"""Static checks of the public typing, run by ``mypy tests/typing`` (strict).

Nothing here is executed by pytest: each ``assert_type`` is checked by mypy,
and tests/test_typing.py proves that a wrong type here makes mypy fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, Text, case, func, literal, select
from sqlalchemy.orm import DeclarativeBase, Mapped, QueryableAttribute, Session, mapped_column
from typing_extensions import assert_type

from fourstep_sqla import Phase, PhasedAttribute, Transform, phased


def split_name(name: str) -> tuple[str, str | None]:
    first, _, last = name.partition(" ")
    return first, last or None


def split_name_sql(name: ColumnElement[str]) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    position = func.instr(name, literal(" "))
    first = case((position > 0, func.substr(name, 1, position - 1)), else_=name)
    last = case((position > 0, func.substr(name, position + 1)), else_=None)
    return first, last


def join_name(first: str | None, last: str | None) -> str | None:
    return " ".join(p for p in (first, last) if p is not None) or None


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "typing_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    legacy_name: Mapped[str | None] = mapped_column("name")
    first_name: Mapped[str | None]
    last_name: Mapped[str | None]
    mail: Mapped[str | None]
    email: Mapped[str | None]
    amount_text: Mapped[str | None]
    amount: Mapped[int | None]

    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform(split_name, sql=split_name_sql),
        backward=Transform(join_name),
        phase=Phase.READ_NEW,
    )
    address = phased(
        old="mail",
        new="email",
        forward=Transform.identity(str),
        backward=Transform.identity(str),
        phase=Phase.WRITE_BOTH,
    )
    cents = phased(
        old="amount_text",
        new="amount",
        forward=Transform.cast(int, Integer()),
        backward=Transform.cast(str, Text()),
        phase=Phase.STOP_READ_OLD,
    )


# -- transforms ---------------------------------------------------------------
assert_type(Transform.identity(str), Transform[str])
assert_type(Transform.identity(), Transform[Any])
assert_type(Transform.cast(int, Integer()), Transform[int])
assert_type(Transform.cast(str, Text), Transform[str])
assert_type(Transform(split_name, sql=split_name_sql), Transform[tuple[str, str | None]])
assert_type(Transform.split(" "), Transform[tuple[str | None, ...]])
assert_type(Transform.join(" "), Transform[str | None])

# -- the declaration ------------------------------------------------------------
assert_type(
    phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform(split_name, sql=split_name_sql),
        backward=Transform(join_name),
        phase=Phase.READ_NEW,
    ),
    PhasedAttribute[tuple[str, str | None]],
)

# -- class level: a queryable attribute of the forward transform's value type ---
full_name_attribute: QueryableAttribute[tuple[str, str | None]] = User.full_name
address_attribute: QueryableAttribute[str] = User.address
cents_attribute: QueryableAttribute[int] = User.cents

assert_type(select(User.full_name), Select[tuple[str, str | None]])
assert_type(select(User.id, User.full_name), Select[int, tuple[str, str | None]])
assert_type(select(User.address), Select[str])
assert_type(select(User.cents), Select[int])
assert_type(User.full_name == ("Ada", "Lovelace"), ColumnElement[bool])
assert_type(User.cents > 3, ColumnElement[bool])


def rows(session: Session) -> None:
    assert_type(
        session.scalars(select(User.full_name)).all(), Sequence[tuple[str, str | None]]
    )
    assert_type(session.execute(select(User.cents)).scalar_one(), int)


# -- instance level: the value type itself ----------------------------------------
def instance(user: User) -> None:
    assert_type(user.full_name, tuple[str, str | None])
    assert_type(user.address, str)
    assert_type(user.cents, int)
    first, last = user.full_name
    assert_type(first, str)
    assert_type(last, str | None)
