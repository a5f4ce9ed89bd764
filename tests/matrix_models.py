"""Model factories and sample data for ``test_phased_matrix.py``.

Each *shape* (split, rename, type change, merge) has a factory that takes a
:class:`~fourstep_sqla.Phase` and returns a fresh ``DeclarativeBase`` and model,
plus hand-written samples (logical value, old column values, new column values)
that do not go through the library's transforms, so the tests compare the
library against an independent expectation.

Every shape has its own table (``mx_split``, ``mx_rename``, ``mx_cast``,
``mx_merge``) and the classes of one shape keep one qualified name, so
re-creating a model for every test never triggers the registry's "key moves"
warning. Every table also has a neutral ``note`` column, for statements that
touch the row but not the phased attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased

__all__ = ["SHAPES", "Sample", "Shape"]

#: ``Mapped[str]`` gets a length: MariaDB/MySQL have no VARCHAR without one
TEXT_LENGTH: dict[Any, Any] = {str: String(200)}


@dataclass(frozen=True)
class Sample:
    """One logical value and how it is stored in the old and the new place."""

    logical: Any
    old: tuple[Any, ...]
    new: tuple[Any, ...]


@dataclass(frozen=True)
class Shape:
    """A kind of column move, its model factory and its sample values."""

    name: str
    table: str
    #: logical (phased) attribute name
    attr: str
    #: attribute names of the old / new columns
    old: tuple[str, ...]
    new: tuple[str, ...]
    #: database column names of the old / new columns
    old_cols: tuple[str, ...]
    new_cols: tuple[str, ...]
    #: five samples whose logical values are distinct and sort unambiguously
    #: (distinct first characters, so no collation can reorder them)
    samples: tuple[Sample, ...]
    factory: Callable[[Phase], tuple[type[DeclarativeBase], type[Any]]]

    def make(self, phase: Phase) -> tuple[type[DeclarativeBase], type[Any]]:
        return self.factory(phase)

    def old_attrs(self, sample: Sample) -> dict[str, Any]:
        """``{old attribute: value}`` storing ``sample`` in the old place."""
        return dict(zip(self.old, sample.old))

    def new_attrs(self, sample: Sample) -> dict[str, Any]:
        """``{new attribute: value}`` storing ``sample`` in the new place."""
        return dict(zip(self.new, sample.new))

    @property
    def nulls_old(self) -> tuple[None, ...]:
        return (None,) * len(self.old)

    @property
    def nulls_new(self) -> tuple[None, ...]:
        return (None,) * len(self.new)

    def __str__(self) -> str:
        return self.name


# -- split: name -> first_name, last_name ----------------------------------------
def make_split(phase: Phase) -> tuple[type[DeclarativeBase], type[Any]]:
    class Base(DeclarativeBase):
        type_annotation_map = TEXT_LENGTH

    class SplitUser(Base):
        __tablename__ = "mx_split"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        if phase is Phase.STOP_WRITE_OLD:
            legacy_name: Unmapped[str | None] = unmapped_column("name")
        else:
            legacy_name: Mapped[str | None] = mapped_column("name")
        first_name: Mapped[str | None]
        last_name: Mapped[str | None]
        note: Mapped[str | None]

        full_name = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform.split(" "),
            backward=Transform.join(" "),
            phase=phase,
        )

    return Base, SplitUser


# -- rename: mail -> email -----------------------------------------------------
def make_rename(phase: Phase) -> tuple[type[DeclarativeBase], type[Any]]:
    class Base(DeclarativeBase):
        type_annotation_map = TEXT_LENGTH

    class RenameUser(Base):
        __tablename__ = "mx_rename"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        if phase is Phase.STOP_WRITE_OLD:
            mail: Unmapped[str | None] = unmapped_column(String(100))
        else:
            mail: Mapped[str | None] = mapped_column(String(100))
        email: Mapped[str | None] = mapped_column(String(100))
        note: Mapped[str | None]

        contact = phased(
            old="mail",
            new="email",
            forward=Transform.identity(),
            backward=Transform.identity(),
            phase=phase,
        )

    return Base, RenameUser


# -- type change: amount_text VARCHAR -> amount INTEGER --------------------------
def make_cast(phase: Phase) -> tuple[type[DeclarativeBase], type[Any]]:
    class Base(DeclarativeBase):
        type_annotation_map = TEXT_LENGTH

    class CastOrder(Base):
        __tablename__ = "mx_cast"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        if phase is Phase.STOP_WRITE_OLD:
            amount_text: Unmapped[str | None] = unmapped_column(String(20))
        else:
            amount_text: Mapped[str | None] = mapped_column(String(20))
        amount: Mapped[int | None] = mapped_column(Integer)
        note: Mapped[str | None]

        total = phased(
            old="amount_text",
            new="amount",
            forward=Transform.cast(int, Integer()),
            backward=Transform.cast(str, String()),
            phase=phase,
        )

    return Base, CastOrder


# -- merge: lat, lon FLOAT -> location VARCHAR "lat,lon" -------------------------
def merge_point(lat: float | None, lon: float | None) -> str | None:
    if lat is None or lon is None:
        return None
    return f"{lat!r},{lon!r}"


def merge_point_sql(lat: Any, lon: Any) -> Any:
    # CAST(float AS TEXT) gives the shortest round-trip form on PostgreSQL 12+
    # and SQLite alike for the samples (no integral floats: 2.0 renders "2").
    return sql_cast(lat, Text()).concat(",").concat(sql_cast(lon, Text()))


def unmerge_point(location: str) -> tuple[float, float]:
    lat, lon = location.split(",")
    return float(lat), float(lon)


def unmerge_point_sql(location: Any) -> tuple[Any, Any]:
    split_sql = Transform.split(",").sql
    assert split_sql is not None
    lat, lon = split_sql(location)
    return sql_cast(lat, Float()), sql_cast(lon, Float())


def make_merge(phase: Phase) -> tuple[type[DeclarativeBase], type[Any]]:
    class Base(DeclarativeBase):
        type_annotation_map = TEXT_LENGTH

    class MergePlace(Base):
        __tablename__ = "mx_merge"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        if phase is Phase.STOP_WRITE_OLD:
            lat: Unmapped[float | None] = unmapped_column(Float)
            lon: Unmapped[float | None] = unmapped_column(Float)
        else:
            lat: Mapped[float | None] = mapped_column(Float)
            lon: Mapped[float | None] = mapped_column(Float)
        location: Mapped[str | None] = mapped_column(String(60))
        note: Mapped[str | None]

        position = phased(
            old=("lat", "lon"),
            new="location",
            forward=Transform(merge_point, sql=merge_point_sql),
            backward=Transform(unmerge_point, sql=unmerge_point_sql),
            phase=phase,
        )

    return Base, MergePlace


def _split(first: str, last: str) -> Sample:
    return Sample((first, last), (f"{first} {last}",), (first, last))


def _rename(address: str) -> Sample:
    return Sample(address, (address,), (address,))


def _cast(amount: int) -> Sample:
    return Sample(amount, (str(amount),), (amount,))


def _merge(lat: float, lon: float) -> Sample:
    return Sample(f"{lat!r},{lon!r}", (lat, lon), (f"{lat!r},{lon!r}",))


SHAPES: tuple[Shape, ...] = (
    Shape(
        name="split",
        table="mx_split",
        attr="full_name",
        old=("legacy_name",),
        new=("first_name", "last_name"),
        old_cols=("name",),
        new_cols=("first_name", "last_name"),
        samples=(
            _split("Ada", "Lovelace"),
            _split("Grace", "Hopper"),
            _split("Edsger", "Dijkstra"),
            _split("Barbara", "Liskov"),
            _split("Claude", "Shannon"),
        ),
        factory=make_split,
    ),
    Shape(
        name="rename",
        table="mx_rename",
        attr="contact",
        old=("mail",),
        new=("email",),
        old_cols=("mail",),
        new_cols=("email",),
        samples=(
            _rename("ada@example.org"),
            _rename("grace@example.org"),
            _rename("edsger@example.org"),
            _rename("barbara@example.org"),
            _rename("claude@example.org"),
        ),
        factory=make_rename,
    ),
    Shape(
        name="cast",
        table="mx_cast",
        attr="total",
        old=("amount_text",),
        new=("amount",),
        old_cols=("amount_text",),
        new_cols=("amount",),
        # numeric order differs from text order ("100" < "42" < "7" < "9")
        samples=(_cast(7), _cast(42), _cast(100), _cast(9), _cast(1000)),
        factory=make_cast,
    ),
    Shape(
        name="merge",
        table="mx_merge",
        attr="position",
        old=("lat", "lon"),
        new=("location",),
        old_cols=("lat", "lon"),
        new_cols=("location",),
        samples=(
            _merge(1.5, 2.5),
            _merge(3.25, -4.5),
            _merge(5.5, 6.75),
            _merge(7.5, -8.25),
            _merge(2.25, 0.5),
        ),
        factory=make_merge,
    ),
)
