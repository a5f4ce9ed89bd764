"""Versioned tables: a model's history moves through the four steps with it.

SQLAlchemy-Continuum (2.x) keeps the history of a model declared with
``__versioned__ = {}`` in a version table (``bill_version`` beside ``bill``)
that holds a copy of every column, written from the ORM at each flush, and
reads it through a version class (``version_class(Bill)``, ``bill.versions``).
A phased attribute on such a model carries the version table along, with
nothing to declare beyond what Continuum users already write::

    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from sqlalchemy_continuum import make_versioned, version_class

    from fourstep_sqla import Phase, Transform, phased

    make_versioned(user_cls=None)


    class Base(DeclarativeBase):
        pass


    class Bill(Base):
        __tablename__ = "bill"
        __versioned__ = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        legacy_name: Mapped[str | None] = mapped_column("name")
        first_name: Mapped[str | None]
        last_name: Mapped[str | None]
        full_name = phased(old="legacy_name", new=("first_name", "last_name"),
                           forward=Transform.split(" "), backward=Transform.join(" "),
                           phase=Phase.WRITE_BOTH)


    sa.orm.configure_mappers()

    version_class(Bill).full_name                  # the same move, on bill_version
    [v.full_name for v in bill.versions]           # history reads the logical value

When Continuum builds a version class (at ``configure_mappers()``, which its
documentation has every models module call: the version tables exist for
Alembic and the command line only from then on), each phased attribute of its
model gets a twin on it: the same
``old``, ``new``, transforms and phase, registered under
``"<version table>.<attribute>"`` (``"bill_version.full_name"``). The twin is
an ordinary phased attribute of the version table, so everything the Four
Step Process does for the model it does for the history too:

- **reads**: a version object reads ``full_name`` as the model does at the
  same phase, and ``select(BillVersion).where(BillVersion.full_name == v)``
  filters as ``Bill.full_name`` does;
- **autogenerate** (with :mod:`fourstep_sqla.alembic` imported) writes the
  version table's operations beside the model's: its new columns (Continuum
  copies them into ``bill_version``), its sync triggers, ``op.record_phase``,
  ``op.backfill``, and at step 4 ``op.drop_old``, whose gate verifies the
  version rows (a lossy or stale version row refuses the drop as a row of the
  model would; ``fourstep backfill bill_version.full_name --repair`` repairs)
  and whose downgrade restores ``old = backward(new)`` in every one of them,
  the rows written at step 4 included;
- **the command line**: ``fourstep status|backfill|verify`` list
  ``bill_version.full_name`` with the model's attributes (a models module's
  phased attributes include their version twins, as ``flask fourstep``'s do),
  and ``fourstep revision --step N bill.full_name`` writes the version
  table's operations into the same revision; ``check(engine)`` checks both.

How version rows are written at each step
-----------------------------------------
Continuum writes a version row by copying the model's mapped columns. At steps
1-3 both places are mapped, so each version row is a copy of its row; the
flush-time sync (:mod:`fourstep_sqla.sync`) leaves these copies as Continuum
wrote them, so a row not backfilled yet has a version row without its new
place, like itself. Where the version table has sync triggers they complete
the copy in the database as they do any INSERT that gives one side only. At
step 4 the model's old column is ``unmapped_column()``; Continuum still copies
it into the version table (it copies the table's columns), and would map it
on the version class and write NULL there. The twin leaves it unmapped on the
version class too, so Continuum writes the new place only and the version
table's sync triggers keep the old place in step until the drop, exactly as
for the model.

Not covered
-----------
- ``native_versioning=True`` (Continuum's own PostgreSQL triggers write the
  version rows, naming the columns in their SQL): not carried.
- A move whose columns are only partly versioned (``__versioned__ =
  {"exclude": [...]}`` names some of them) fails at mapper configuration with
  :class:`VersionTableError`; excluding all of them leaves the history out.
- ``version.revert()`` copies the version row's columns into the model: at
  steps 1-2, reverting to a version written before step 1 (its new place
  stays empty until the version table's backfill) is refused with
  :class:`~fourstep_sqla.errors.InconsistentWriteError`, nothing flushed;
  assign ``bill.full_name = version.full_name`` instead, or revert from step 3.
- ``read_phase(phase, Bill.full_name)`` pins the model's attribute only: name
  ``version_class(Bill).full_name`` too, or pin every attribute (no argument).
- sqlalchemy-history, Continuum's fork, records which model a version class
  belongs to only after mapping it, so its version classes get no twin.
"""

from __future__ import annotations

import warnings
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.schema import Column, Table

from .attribute import PhasedAttribute, PhasedSpec, phased, phased_attributes_of
from .errors import DeclarationError, NoSyncTriggersWarning
from .registry import register

__all__ = ["VersionTableError", "version_parent"]


class VersionTableError(DeclarationError):
    """A phased attribute cannot be carried into its model's version table."""


def version_parent(cls: type) -> type | None:
    """The model whose history ``cls`` holds, if ``cls`` is a version class that
    SQLAlchemy-Continuum built, else None.

    Continuum puts ``__version_parent__`` and ``__versioning_manager__`` in the
    class it builds, then moves the first into its manager's
    ``parent_class_map``: both are looked at, so this answers before and after
    Continuum's own mapper listeners have run.
    """
    namespace = vars(cls)
    parent = namespace.get("__version_parent__")
    if parent is None:
        manager = namespace.get("__versioning_manager__")
        parents = getattr(manager, "parent_class_map", None)
        if isinstance(parents, dict):
            parent = parents.get(cls)
    return parent if isinstance(parent, type) else None


def _bound_specs(parent: type) -> list[tuple[str, PhasedSpec]]:
    """(name, spec) of the parent's phased attributes that are bound to a table."""
    found = []
    for attribute in phased_attributes_of(parent):
        spec = attribute.spec
        if spec.table is not None and spec.name is not None:
            found.append((spec.name, spec))
    return found


def _copies(columns: tuple[Column[Any], ...], table: Table) -> list[Column[Any] | None]:
    """The version table's copy of each of ``columns`` (by database name), or None."""
    by_name = {c.name: c for c in table.c}
    return [by_name.get(c.name) for c in columns]


def _table_of(mapper: Mapper[Any]) -> Table | None:
    table = mapper.local_table
    return table if isinstance(table, Table) else None


def _carried(version_cls: type, table: Table) -> list[tuple[str, PhasedSpec]]:
    """(name, spec) of the phased attributes of ``version_cls``'s model that its
    version table carries; raise :class:`VersionTableError` for one it cannot."""
    parent = version_parent(version_cls)
    if parent is None:
        return []
    inherited = {
        a.spec.copy_of for a in phased_attributes_of(version_cls) if a.spec.copy_of is not None
    }
    carried = []
    for name, spec in _bound_specs(parent):
        if spec in inherited:
            continue  # a version class of a subclass: its base version class has it
        old = _copies(spec.old_columns, table)
        new = _copies(spec.new_columns, table)
        if all(c is None for c in new):
            # the new columns are excluded from versioning (``__versioned__["exclude"]``):
            # there is no history of the new shape to read, the version table keeps its own
            continue
        model = parent.__name__
        missing = [
            original.name
            for original, copy in zip((*spec.old_columns, *spec.new_columns), (*old, *new))
            if copy is None
        ]
        if missing:
            raise VersionTableError(
                f"{spec.describe()} moves {', '.join(spec.old_column_names)} to "
                f"{', '.join(spec.new_column_names)}, but the version table "
                f"{table.description} has no copy of {', '.join(missing)} (excluded from "
                f"versioning), so {version_cls.__name__} can neither read {name} at every "
                f"phase nor follow the move. In {model}.__versioned__['exclude'], name all "
                f"of {', '.join(spec.columns)} or none of them."
            )
        if name in vars(version_cls) or name in table.c:
            raise VersionTableError(
                f"{spec.describe()}: the version class {version_cls.__name__} already has "
                f"an attribute {name!r}, so the phased attribute that reads {model}'s "
                f"history cannot be added there; rename that attribute (in "
                f"{model}.__versioned__['base_classes'] or the version table)"
            )
        carried.append((name, spec))
    return carried


@event.listens_for(Mapper, "instrument_class")
def _leave_retired_copies_unmapped(mapper: Mapper[Any], class_: type) -> None:
    """Check what a version class can carry, and at step 4 keep the version
    table's copy of the old column out of its mapping.

    Continuum maps every column of the version table, the copy of the model's
    ``unmapped_column()`` included; mapped, it would be selected and written
    (as NULL) while the drop runs and after. This event comes before the
    mapper maps the table's columns (an error here leaves no half-built mapper
    for a later ``configure_mappers()``); declarative's own ``unmapped_column()``
    works by the same ``exclude_properties``, which is why it is extended here.
    """
    table = _table_of(mapper)
    if table is None or version_parent(class_) is None:
        return
    retired: set[Column[Any]] = set()
    for _, spec in _carried(class_, table):
        if not spec.phase.writes_old:
            retired.update(c for c in _copies(spec.old_columns, table) if c is not None)
    if retired:
        excluded: Any = mapper.exclude_properties
        mapper.exclude_properties = set(excluded or ()) | retired


@event.listens_for(Mapper, "after_mapper_constructed")
def _twin_phased_attributes(mapper: Mapper[Any], class_: type) -> None:
    """Give a Continuum version class the phased attributes of its model."""
    table = _table_of(mapper)
    if table is None or version_parent(class_) is None:
        return
    for name, spec in _carried(class_, table):
        register(_twin(spec, name, class_, mapper, table))


def _twin(
    spec: PhasedSpec, name: str, version_cls: type, mapper: Mapper[Any], table: Table
) -> PhasedSpec:
    """Declare and bind the twin of ``spec`` on ``version_cls``."""
    attribute: PhasedAttribute[Any] = phased(
        old=spec.old,
        new=spec.new,
        forward=spec.forward,
        backward=spec.backward,
        phase=spec.phase,
        value_type=spec.value_type,
    )
    twin = attribute.spec
    twin.copy_of = spec
    setattr(version_cls, name, attribute)
    attribute.__set_name__(version_cls, name)
    if not spec.phase.writes_old:
        for old_name, column in zip(spec.old, _copies(spec.old_columns, table)):
            if column is not None:
                twin.retire(old_name, column)
    with warnings.catch_warnings():
        # the model's declaration has said so already, where the user can act on it
        warnings.simplefilter("ignore", NoSyncTriggersWarning)
        twin.bind(mapper)
    return twin
