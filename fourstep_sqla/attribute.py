"""``phased()``: one logical attribute over an old and a new place.

A phased attribute always speaks the **new shape**: a scalar when there is one
new column, a tuple (or an instance of ``value_type``) when there are several.
Application code is written once against that shape at step 1; the phase only
decides where bytes come from and go to::

    from fourstep_sqla import Phase, Transform, phased

    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        legacy_name: Mapped[str | None] = mapped_column("name")  # old place
        first_name: Mapped[str | None]                           # new places
        last_name: Mapped[str | None]

        full_name = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform(split_name, sql=split_name_sql),
            backward=Transform(join_name, sql=join_name_sql),
            phase=Phase.READ_NEW,
        )

======================  =========================  =====================================
phase                   writes                     reads
======================  =========================  =====================================
``WRITE_BOTH`` (1)      old and new                forward(old)
``READ_NEW`` (2)        old and new                new, else forward(old) when all new
                                                   columns are NULL
``STOP_READ_OLD`` (3)   old and new                new
``STOP_WRITE_OLD`` (4)  new                        new (old declared ``unmapped_column``)
======================  =========================  =====================================

Writes that stay dual-written in steps 1-3: instance assignment, constructor
keyword arguments, ``session.merge``, ``update(Model).values(attr=...)``,
``insert(Model).values(...)`` (one or many rows), ORM bulk INSERT/UPDATE with
lists of dictionaries, and direct writes to an old or new column attribute of
an instance (kept in sync at flush time, see :mod:`fourstep_sqla.sync`).

Comparisons and NULL
--------------------
A filter comparing the attribute with values selects exactly the rows whose
instance value, read at the same phase, passes the same test in Python, NULL
included. With several new columns the value is None when every new column is
NULL (at steps 1-2, when ``forward(old)`` is), a tuple otherwise, whose parts
may be None::

    User.full_name == ("Ada", None)         # first_name = 'Ada' AND last_name IS NULL
    User.full_name == None                  # the value is None (all new columns NULL)
    User.full_name != ("Ada", "Lovelace")   # also the ("Ada", None) and the None rows

- ``==``, ``filter_by()``, ``in_()`` and ``is_(None)`` match the rows whose
  value equals (is in the list, is) the value(s); a None part matches a NULL
  column. They stay index-friendly: ``new = :v`` at steps 3-4 and
  ``new = :v OR (new IS NULL AND forward(old) = :v)`` at step 2 (see
  :func:`forward_index`); a None in an ``in_()`` list adds an ``IS NULL`` test.
- ``!=``, ``not_in()``, ``is_not(None)`` and the negation (``~``, ``not_()``)
  of the comparisons above match every other row: a value that is NULL,
  wholly or in part, differs from every value that is not. They use
  ``IS DISTINCT FROM`` (SQLite ``IS NOT``, MySQL ``<=>``) and are not
  index-friendly, as ``!=`` rarely is.

This holds for a one-column attribute too, although a plain column's
``col != 'x'`` follows SQL's three-valued logic and leaves NULL rows out: the
attribute promises the answer ``obj.attr != 'x'`` gives in Python, and at step
2 a NULL in the new place means "read the old one", so three-valued logic would
make a row vanish from ``==`` and ``!=`` alike. ``==`` keeps the plain SQL
shape (NULL is not equal to a value either way), so no index is lost.

Comparisons with SQL expressions (another column, a subquery) and the ordering
operators on a one-column attribute (``<``, ``like()``...) follow SQL: the
values are not known when the query is built, and Python has no order with
None. ``~`` applies to the comparison it is given: ``~(User.full_name == v)``
is NULL-safe, ``~and_(User.full_name == v, ...)`` negates the conjunction by
SQL's rules.

New columns stay nullable, without defaults, until step 4
---------------------------------------------------------
Until the backfill, "every new column NULL" is how a row says it was never
written in the new shape: step-2 reads fall back to ``forward(old)`` for it
and the backfill fills it. At steps 1-3 a new column that fills itself is
refused when the model is mapped, with
:class:`~fourstep_sqla.errors.NewColumnDefaultError`:

- NOT NULL (``Mapped[str]`` without ``| None`` included): rows written before
  step 1, or by the previous release, hold NULL there;
- a ``server_default`` other than NULL (``text("NULL")`` and ``null()`` are
  accepted; ``server_default="NULL"`` is the quoted text ``'NULL'``), and
  ``Computed``, ``Identity`` or ``FetchedValue``: step-2 reads would return the
  default instead of the old value, and the backfill would skip the row;
- a ``server_onupdate``, or a Python ``onupdate=``: updating any column of a
  row not backfilled yet would write it;
- a Python ``default=`` (``insert_default=``): the ORM leaves a None out of an
  INSERT and applies the default instead, so ``User(full_name=("Cher", None))``
  would store the default as the last name.

Primary-key columns are never what a move moves and are not checked. At step 4
the backfill is done and the old place is neither read nor written, so the
new columns may be tightened then (NOT NULL, defaults), in the step-4
migration or a later one.

The attribute is a :class:`sqlalchemy.ext.hybrid.hybrid_property`, so it is
listed by ``inspect(User).all_orm_descriptors`` and type checkers see
``select(User.full_name)`` with the value type of the forward transform.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import and_, event, false, literal, or_, type_coerce
from sqlalchemy import func as sql_func
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.ext.hybrid import Comparator, hybrid_property
from sqlalchemy.orm import Bundle, ColumnProperty, Mapper
from sqlalchemy.orm.attributes import flag_modified
from sqlalchemy.orm.properties import UnmappedColumn
from sqlalchemy.sql import operators
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ClauseList, ColumnElement, Null, TextClause
from sqlalchemy.sql.schema import Column, DefaultClause, FetchedValue, Index, Table
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean

from .errors import (
    DeclarationError,
    NewColumnDefaultError,
    NoSyncTriggersWarning,
    OldColumnNotNullError,
    OldColumnStillMappedError,
    SQLTransformRequiredError,
    TransformArityError,
    TransformError,
    UnknownColumnError,
)
from .phase import Phase, _overrides, effective_read_phase
from .transform import Transform

if TYPE_CHECKING:
    from sqlalchemy.sql.operators import OperatorType

__all__ = ["PhasedAttribute", "PhasedSpec", "forward_index", "phased"]

T = TypeVar("T")

#: key in an instance's ``__dict__`` recording values written through the attribute
LOGICAL_WRITES = "_fourstep_logical_writes"


def _names(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        names: tuple[str, ...] = (value,)
    else:
        names = tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise DeclarationError(
            f"phased({what}=...) needs an attribute name or a non-empty sequence of "
            f"attribute names, got {value!r}"
        )
    if len(set(names)) != len(names):
        raise DeclarationError(f"phased({what}={value!r}) names a column twice")
    return names


def write_column(obj: Any, name: str, value: Any) -> None:
    """Set a column attribute and mark it modified even if the value looks unchanged.

    The instance may be stale: loaded before the backfill wrote the new place,
    it still holds NULL there. Assigning ``("Cher", None)`` would then leave
    ``last_name`` out of the UPDATE (unchanged, as far as the ORM knows) and the
    backfilled value would survive next to the new first name. Every column of
    the move is written whenever the logical value is.
    """
    setattr(obj, name, value)
    flag_modified(obj, name)


def is_sql(value: Any) -> bool:
    """Whether ``value`` is a SQL expression rather than a literal."""
    return isinstance(value, ClauseElement) or hasattr(value, "__clause_element__")


_NULL_DEFAULT = re.compile(r"\(*\s*null\s*\)*\s*(::.*)?", re.IGNORECASE | re.DOTALL)


def _is_null_default(default: FetchedValue) -> bool:
    """Whether a server default says NULL (``text("NULL")``, ``null()``, ``NULL::text``).

    A plain string is a quoted literal: ``server_default="NULL"`` is the text 'NULL'.
    """
    if type(default) is not DefaultClause:  # Computed, Identity, FetchedValue: a value
        return False
    arg = default.arg
    if isinstance(arg, Null):
        return True
    return isinstance(arg, TextClause) and _NULL_DEFAULT.fullmatch(arg.text.strip()) is not None


def _describe_default(default: FetchedValue) -> str:
    if type(default) is DefaultClause:
        arg = default.arg
        if isinstance(arg, str):
            return repr(arg)
        if isinstance(arg, TextClause):
            return f"text({arg.text!r})"
        return str(arg)
    return f"{type(default).__name__}() (the database fills it)"


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this library and SQLAlchemy:
    the model declaration that mapping is working for."""
    import os
    import sys

    import sqlalchemy

    skip = (
        os.path.dirname(os.path.abspath(__file__)) + os.sep,
        os.path.dirname(os.path.abspath(sqlalchemy.__file__)) + os.sep,
    )
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function reading ``names`` off an instance as a tuple, loading if needed."""
    if len(names) == 1:
        (name,) = names

        def get_one(obj: Any) -> tuple[Any, ...]:
            d = obj.__dict__
            return (d[name] if name in d else getattr(obj, name),)

        return get_one
    from_dict = itemgetter(*names)

    def get_many(obj: Any) -> tuple[Any, ...]:
        try:
            return from_dict(obj.__dict__)  # type: ignore[no-any-return]
        except KeyError:
            return tuple(getattr(obj, n) for n in names)

    return get_many


class PhasedSpec:
    """Everything known about one phased attribute.

    Built by :func:`phased`, bound to its model when the mapper is
    constructed; the registry, the backfill/verify engine and the Alembic
    operations all read it.
    """

    def __init__(
        self,
        *,
        old: tuple[str, ...],
        new: tuple[str, ...],
        forward: Transform[Any],
        backward: Transform[Any],
        phase: Phase,
        key: str | None,
        value_type: Callable[..., Any] | None,
    ) -> None:
        self.old = old
        self.new = new
        self.forward = forward
        self.backward = backward
        self.phase = phase
        self.explicit_key = key
        self.value_type = value_type
        self.name: str | None = None
        self._owner: weakref.ReferenceType[type] | None = None
        self._mapper: Mapper[Any] | None = None
        self.table: Table | None = None
        #: old column objects (mapped or not), in ``old`` order
        self.old_columns: tuple[Column[Any], ...] = ()
        #: new column objects, in ``new`` order
        self.new_columns: tuple[Column[Any], ...] = ()
        #: old columns declared with ``unmapped_column()`` found at class creation
        self._unmapped: dict[str, Column[Any]] = {}
        #: the phased attribute whose rows this one's table holds copies of, written
        #: by another library (a version table's, see :mod:`fourstep_sqla.versioned`);
        #: the flush-time sync leaves such copies as they are written
        self.copy_of: PhasedSpec | None = None
        self._readers = self._build_readers()
        #: the reader of the declared phase, used when nothing is pinned
        self.default_reader = self._readers[phase]

    # -- identity -----------------------------------------------------------
    @property
    def owner(self) -> type | None:
        """The mapped class the attribute is declared on."""
        return None if self._owner is None else self._owner()

    @property
    def mapper(self) -> Mapper[Any]:
        """The mapper of the owning class (available once it is mapped)."""
        if self._mapper is None:
            raise DeclarationError(f"{self.describe()} is not mapped yet")
        return self._mapper

    @property
    def key(self) -> str:
        """The registry key: ``"<table>.<attribute>"`` unless given explicitly."""
        if self.explicit_key:
            return self.explicit_key
        if self.table is None or self.name is None:
            raise DeclarationError(f"{self.describe()} is not mapped yet; it has no key")
        return f"{self.table.fullname}.{self.name}"

    @property
    def columns(self) -> tuple[str, ...]:
        """Attribute names of the old and the new columns."""
        return self.old + self.new

    @property
    def multi_new(self) -> bool:
        """Whether the new place has several columns (a tuple-shaped value)."""
        return len(self.new) > 1

    def describe(self) -> str:
        if self._owner is None and self.explicit_key and self.table is not None:
            return self.explicit_key  # a frozen spec (migrations): no model
        owner = self.owner
        model = owner.__name__ if owner is not None else "<unmapped class>"
        return f"{model}.{self.name or '<unnamed>'}"

    @classmethod
    def frozen(
        cls,
        *,
        key: str,
        table: Table,
        old: Sequence[str],
        new: Sequence[str],
        forward: Transform[Any],
        backward: Transform[Any],
        phase: Phase = Phase.STOP_READ_OLD,
    ) -> PhasedSpec:
        """A spec over a table and column names, without a model.

        Migrations are frozen history: they must not import today's models.
        The Alembic operations build their spec from the table (reflected or
        declared in the revision) and the transforms rendered into it.
        """
        spec = cls(
            old=tuple(old),
            new=tuple(new),
            forward=forward,
            backward=backward,
            phase=phase,
            key=key,
            value_type=None,
        )
        spec.name = key.rsplit(".", 1)[-1]
        spec.table = table
        missing = [n for n in (*spec.old, *spec.new) if n not in table.c]
        if missing:
            raise UnknownColumnError(
                f"{key}: table {table.description!r} has no column(s) {', '.join(missing)}"
            )
        spec.old_columns = tuple(table.c[n] for n in spec.old)
        spec.new_columns = tuple(table.c[n] for n in spec.new)
        return spec

    def reversed(self) -> PhasedSpec:
        """The same move backwards (new -> old), to restore a dropped old column."""
        if self.table is None:
            raise DeclarationError(f"{self.describe()} is not bound to a table")
        return PhasedSpec.frozen(
            key=f"{self.key}:restore",
            table=self.table,
            old=self.new_column_names,
            new=self.old_column_names,
            forward=self.backward,
            backward=self.forward,
        )

    @property
    def old_column_names(self) -> tuple[str, ...]:
        """Database names of the old columns."""
        return tuple(c.name for c in self.old_columns)

    @property
    def new_column_names(self) -> tuple[str, ...]:
        """Database names of the new columns."""
        return tuple(c.name for c in self.new_columns)

    def __repr__(self) -> str:
        return f"<PhasedSpec {self.describe()} phase={self.phase.name}>"

    # -- binding ------------------------------------------------------------
    def set_name(self, owner: type, name: str) -> None:
        self.name = name
        self._owner = weakref.ref(owner)
        for old_name in self.old:
            declared = owner.__dict__.get(old_name)
            if isinstance(declared, UnmappedColumn):
                self._unmapped[old_name] = declared.column

    def retire(self, old_name: str, column: Column[Any]) -> None:
        """Record ``column``, declared ``unmapped_column()``, as the old place
        ``old_name`` (done from the class body by :meth:`set_name`; a declarative
        layer that sets attributes on the class later, as SQLModel does, calls it)."""
        if old_name not in self.old:
            raise DeclarationError(f"{self.describe()}: {old_name!r} is not an old place")
        self._unmapped[old_name] = column

    def bind(self, mapper: Mapper[Any]) -> None:
        """Resolve column names against ``mapper``; raise on bad declarations."""
        table = mapper.local_table
        if not isinstance(table, Table):
            raise DeclarationError(
                f"{self.describe()}: phased attributes need a model mapped to a Table, "
                f"not {table!r}"
            )
        self.table = table
        self._mapper = mapper
        self.new_columns = tuple(self._mapped_column(mapper, n, "new") for n in self.new)
        if self.phase.writes_old:
            self.old_columns = tuple(self._mapped_column(mapper, n, "old") for n in self.old)
        else:
            self.old_columns = tuple(self._retired_column(mapper, n) for n in self.old)
        self._check_arity()
        self._warn_without_sql()
        if self.phase.writes_old:
            # at step 4 the backfill is done and the old place is neither read nor
            # written: the new columns may be tightened (NOT NULL, defaults) then
            for name, column in zip(self.new, self.new_columns):
                self._check_new_column(mapper, name, column)

    def _mapped_names(self, mapper: Mapper[Any]) -> str:
        names = [
            key for key, prop in mapper._props.items() if isinstance(prop, ColumnProperty)
        ]
        return ", ".join(names) or "(none)"

    def _mapped_column(self, mapper: Mapper[Any], name: str, side: str) -> Column[Any]:
        prop = mapper._props.get(name)
        if prop is None:
            hint = ""
            if side == "old" and name in self._unmapped:
                hint = (
                    " It is declared with unmapped_column(), which only step 4 "
                    "(Phase.STOP_WRITE_OLD) allows: map it with mapped_column() until then."
                )
            raise UnknownColumnError(
                f"{self.describe()}: {side}={name!r} is not a mapped column attribute of "
                f"{mapper.class_.__name__} (mapped columns: {self._mapped_names(mapper)})."
                f"{hint} Name the attribute, not the database column."
            )
        if not isinstance(prop, ColumnProperty) or len(prop.columns) != 1:
            raise UnknownColumnError(
                f"{self.describe()}: {side}={name!r} must be a single-column attribute of "
                f"{mapper.class_.__name__}, got {prop!r}"
            )
        column = prop.columns[0]
        if not isinstance(column, Column) or column.table is not mapper.local_table:
            raise UnknownColumnError(
                f"{self.describe()}: {side}={name!r} must be a column of table "
                f"{mapper.local_table.description!r}, got {column!r}"
            )
        return column

    def _retired_column(self, mapper: Mapper[Any], name: str) -> Column[Any]:
        model = mapper.class_.__name__
        if name in mapper._props:
            raise OldColumnStillMappedError(
                f"{self.describe()} is at Phase.STOP_WRITE_OLD but its old column "
                f"{model}.{name} is still mapped, so the ORM keeps selecting and writing "
                f"it while the DROP runs. Declare it as "
                f"`{name}: Unmapped[...] = unmapped_column(...)` (SQLAlchemy 2.1.5+)."
            )
        table = mapper.local_table
        assert isinstance(table, Table)
        column = self._unmapped.get(name)
        if column is None:
            column = table.c.get(name)
        if column is None:
            raise UnknownColumnError(
                f"{self.describe()}: old={name!r} is neither mapped nor declared on "
                f"{model}. At Phase.STOP_WRITE_OLD keep it in the table with "
                f"`{name}: Unmapped[...] = unmapped_column(...)` until the drop has run."
            )
        if not column.nullable and column.server_default is None and not column.primary_key:
            raise OldColumnNotNullError(
                f"{self.describe()} is at Phase.STOP_WRITE_OLD, which stops writing "
                f"{table.description}.{column.name}, but that column is NOT NULL without a "
                f"server default: every INSERT would fail. Relax it first (step 1 does: "
                f"ALTER COLUMN {column.name} DROP NOT NULL), declare it nullable=True, "
                f"or give it a server_default."
            )
        return column

    def _check_new_column(self, mapper: Mapper[Any], name: str, column: Column[Any]) -> None:
        """Refuse a new column that the database or the ORM fills by itself.

        Until the backfill, "every new column NULL" is how a row says it was
        never written in the new shape: step-2 reads fall back to the old place
        for it and the backfill fills it. A value put there by a default would
        be read instead of the old one, and the backfill would skip the row.
        """
        if column.primary_key:
            return  # the key is never what a move moves
        problems: list[str] = []
        if not column.nullable:
            problems.append(
                "is NOT NULL (an annotation Mapped[X] without `| None` makes it so), but a "
                "row not written in the new shape yet (before step 1, or by the previous "
                "release) must hold NULL there"
            )
        if column.server_default is not None and not _is_null_default(column.server_default):
            problems.append(
                f"has server_default {_describe_default(column.server_default)}: rows that do "
                f"not write it (old-only writers, and the ORM when a part is None) get that "
                f"instead of NULL, so step-2 reads return it rather than the old value"
            )
        if column.server_onupdate is not None:
            problems.append(
                f"has server_onupdate {_describe_default(column.server_onupdate)}: the "
                f"database writes it on UPDATE of a row not backfilled yet"
            )
        if column.default is not None:
            problems.append(
                "has a Python default= (insert_default=): the ORM leaves a None out of an "
                "INSERT and applies the default instead, so assigning a value with a None "
                "part, or not assigning it, stores the default"
            )
        if column.onupdate is not None:
            problems.append(
                "has onupdate=: the ORM writes it on every UPDATE of the row, including "
                "rows not backfilled yet"
            )
        if not problems:
            return
        model = mapper.class_.__name__
        table = mapper.local_table.description
        raise NewColumnDefaultError(
            f"{self.describe()} is at Phase.{self.phase.name}, but its new column "
            f"{table}.{column.name} ({model}.{name}) " + "; it ".join(problems) + ". "
            f"Until the backfill has run, all new columns NULL is how a row says it was "
            f"never written in the new shape. Declare it nullable with no server_default, "
            f"default= or onupdate= (`{name}: Mapped[... | None] = mapped_column()`) until "
            f"step 4 (Phase.STOP_WRITE_OLD), then tighten it in a later migration."
        )

    def _warn_without_sql(self) -> None:
        """Say so when no database triggers can keep the two places in step."""
        lacking = [
            f"{label} transform {t.name!r}"
            for label, t in (("forward", self.forward), ("backward", self.backward))
            if not t.has_sql
        ]
        if not lacking:
            return
        warnings.warn(
            f"{self.describe()}: the {' and the '.join(lacking)} ha"
            f"{'ve' if len(lacking) > 1 else 's'} no SQL form, so no database triggers keep "
            f"{', '.join(self.old)} and {', '.join(self.new)} in step for writers outside "
            f"this ORM model (the previous release during a rollout, raw SQL, Core "
            f"statements, other services): their writes of one place leave the other stale "
            f"until `fourstep verify` finds them and `fourstep backfill --repair` fixes them "
            f"(the step-1 revision installs write marks instead, so that the drop gate can "
            f"tell step-4 writes from stale rows). Give the transform(s) sql=..., or, when "
            f"every writer goes through this model, ignore "
            f"fourstep_sqla.errors.NoSyncTriggersWarning.",
            NoSyncTriggersWarning,
            stacklevel=_caller_level(),
        )

    def _check_arity(self) -> None:
        for label, transform, count, source in (
            ("forward", self.forward, len(self.old), "old"),
            ("backward", self.backward, len(self.new), "new"),
        ):
            if not transform.accepts(count):
                raise TransformArityError(
                    f"{self.describe()}: the {label} transform {transform.name!r} must take "
                    f"{count} positional argument(s), one per {source} column "
                    f"({', '.join(getattr(self, source))}); change its signature or the "
                    f"{source}= names."
                )

    # -- reading an instance -------------------------------------------------
    @property
    def readers(self) -> dict[Phase, Callable[[Any], Any]]:
        """Per read phase, a function from an instance to the logical value.

        Built once: instance reads are the hottest path of the library. They
        read the instance ``__dict__`` directly and fall back to ``getattr``
        (which loads expired or deferred attributes) only when a key is missing.
        """
        return self._readers

    def _build_readers(self) -> dict[Phase, Callable[[Any], Any]]:
        new_get = _values_getter(self.new)
        old_get = _values_getter(self.old)
        width = len(self.new)
        forward = self.forward_values
        shape = self.shape

        python = self.forward.python
        n_old = len(self.old)

        def read_old(obj: Any) -> Any:
            old = old_get(obj)
            if old.count(None) == n_old:
                return None
            try:
                result = python(*old)
            except Exception:
                return shape(forward(old))  # raises the TransformError naming the attribute
            if width == 1:
                return result
            if type(result) is tuple and len(result) == width:
                return shape(result)
            return shape(forward(old))

        if width == 1:
            (name,) = self.new

            def read_new(obj: Any) -> Any:
                d = obj.__dict__
                if name in d:
                    return d[name]
                return getattr(obj, name)

            def read_new_or_old(obj: Any) -> Any:
                d = obj.__dict__
                value = d[name] if name in d else getattr(obj, name)
                if value is None:
                    return forward(old_get(obj))[0]
                return value

        else:

            def read_new(obj: Any) -> Any:
                return shape(new_get(obj))

            def read_new_or_old(obj: Any) -> Any:
                values = new_get(obj)
                if values.count(None) == width:
                    return shape(forward(old_get(obj)))
                return shape(values)

        readers: dict[Phase, Callable[[Any], Any]] = {
            Phase.READ_NEW: read_new_or_old,
            Phase.STOP_READ_OLD: read_new,
            Phase.STOP_WRITE_OLD: read_new,
        }
        if self.phase.writes_old:
            readers[Phase.WRITE_BOTH] = read_old
        return readers

    # -- values in Python ---------------------------------------------------
    def forward_values(self, old_values: Sequence[Any], row: Any = None) -> tuple[Any, ...]:
        """``forward(*old)`` as a tuple of new column values (Python)."""
        return self._apply(self.forward, old_values, len(self.new), "forward", row)

    def backward_values(self, new_values: Sequence[Any], row: Any = None) -> tuple[Any, ...]:
        """``backward(*new)`` as a tuple of old column values (Python)."""
        return self._apply(self.backward, new_values, len(self.old), "backward", row)

    def _apply(
        self, transform: Transform[Any], values: Sequence[Any], width: int, label: str, row: Any
    ) -> tuple[Any, ...]:
        if values.count(None) == len(values):
            return (None,) * width
        try:
            result = transform.python(*values)
        except Exception as exc:
            where = f" for row {row!r}" if row is not None else ""
            raise TransformError(
                f"{self.describe()}: the {label} transform {transform.name!r} raised "
                f"{type(exc).__name__}: {exc} on {tuple(values)!r}{where}"
            ) from exc
        return self._widen(result, width, transform, label)

    def _widen(
        self, result: Any, width: int, transform: Transform[Any], label: str
    ) -> tuple[Any, ...]:
        if width == 1:
            return (result,)
        if type(result) is tuple and len(result) == width:
            return result
        if result is None:
            return (None,) * width
        try:
            values = tuple(result)
        except TypeError:
            values = ()
        if len(values) != width:
            raise TransformError(
                f"{self.describe()}: the {label} transform {transform.name!r} must return "
                f"a tuple of {width} values, got {result!r}"
            )
        return values

    def shape(self, new_values: tuple[Any, ...]) -> Any:
        """The logical value for new column values."""
        if len(new_values) == 1:
            return new_values[0]
        if new_values.count(None) == len(new_values):
            return None
        if self.value_type is not None:
            return self.value_type(*new_values)
        return tuple(new_values)

    def unshape(self, value: Any) -> tuple[Any, ...]:
        """New column values for a logical value (the inverse of :meth:`shape`)."""
        if not self.multi_new:
            return (value,)
        if value is None:
            return (None,) * len(self.new)
        composite = getattr(value, "__composite_values__", None)
        if composite is not None:
            values = tuple(composite())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            values = tuple(getattr(value, f.name) for f in dataclasses.fields(value))
        elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
            values = tuple(value)
        else:
            values = ()
        if len(values) != len(self.new):
            raise TransformError(
                f"{self.describe()} holds {len(self.new)} values "
                f"({', '.join(self.new)}); got {value!r}. Assign a tuple"
                + (f" or a {self.value_type.__name__}" if self.value_type is not None else "")
                + f" of {len(self.new)} values, or None."
            )
        return values

    # -- values in SQL ------------------------------------------------------
    def require_sql(self, transform: Transform[Any], purpose: str) -> Callable[..., Any]:
        if transform.sql is None:
            label = "forward" if transform is self.forward else "backward"
            raise SQLTransformRequiredError(
                f"{self.describe()}: {purpose} needs the SQL form of the {label} transform "
                f"{transform.name!r}, which has none. Give it one "
                f"(Transform({transform.name}, sql=...)), or at this phase filter and "
                f"sort on the columns themselves."
            )
        return transform.sql

    def forward_sql(self, old: Sequence[Any], purpose: str) -> tuple[ColumnElement[Any], ...]:
        """``forward.sql(*old)`` as a tuple of expressions, one per new column."""
        sql = self.require_sql(self.forward, purpose)
        result = self._widen(sql(*old), len(self.new), self.forward, "forward (SQL)")
        return tuple(
            type_coerce(expr, col.type) for expr, col in zip(result, self.new_columns)
        )

    def backward_sql(self, new: Sequence[Any], purpose: str) -> tuple[Any, ...]:
        """``backward.sql(*new)`` as a tuple of expressions, one per old column."""
        sql = self.require_sql(self.backward, purpose)
        args = [
            v if is_sql(v) else literal(v, type_=col.type)
            for v, col in zip(new, self.new_columns)
        ]
        return self._widen(sql(*args), len(self.old), self.backward, "backward (SQL)")


class PhasedAttribute(hybrid_property[T], Generic[T]):
    """The descriptor :func:`phased` returns: a hybrid property with a spec.

    Instance access returns the logical value; class access returns a SQL
    expression that follows the read phase (see :mod:`fourstep_sqla.phase`).
    """

    _fourstep: PhasedSpec

    @property
    def spec(self) -> PhasedSpec:
        """The :class:`PhasedSpec` behind this attribute."""
        return self._fourstep

    if not TYPE_CHECKING:  # keep hybrid_property's typed overloads for checkers

        def __get__(self, instance, owner):
            if instance is None:
                return super().__get__(instance, owner)
            # the instance read is the hot path: skip hybrid's generic dispatch
            if _overrides.get():
                spec = self._fourstep
                return spec.readers[effective_read_phase(spec)](instance)
            return self._fourstep.default_reader(instance)

    def __set_name__(self, owner: type, name: str) -> None:
        # hybrid_property finds its own name through ``__name__`` in the MRO
        self.__name__ = name
        self._fourstep.set_name(owner, name)

    def _copy(self, **kw: Any) -> hybrid_property[T]:
        copied = super()._copy(**kw)
        copied._fourstep = self._fourstep  # type: ignore[attr-defined]
        return copied


class _PhasedBundle(Bundle[Any]):
    """Selects the new columns of a multi-column attribute as one value."""

    spec: PhasedSpec

    def create_row_processor(self, query: Any, procs: Any, labels: Any) -> Any:
        shape = self.spec.shape

        def proc(row: Any) -> Any:
            return shape(tuple([p(row) for p in procs]))

        return proc


_ORDERING_OPS = frozenset(
    {operators.asc_op, operators.desc_op, operators.nulls_first_op, operators.nulls_last_op}
)


class _all_null(ColumnElement[bool]):
    """``a IS NULL AND b IS NULL ...``: whether a row has no value in the new place.

    On SQLite it renders ``coalesce(a, b, ...) IS NULL``: SQLite 3.38-3.45 gets
    ``col IS NULL`` wrong inside ``UPDATE ... RETURNING`` on tables that have a
    NOT NULL column, and ``coalesce()`` sidesteps it.
    """

    inherit_cache = True
    type = Boolean()

    def __init__(self, *columns: ColumnElement[Any]) -> None:
        self.columns = columns

    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's own convention)
        ("columns", InternalTraversal.dp_clauseelement_tuple)
    ]

    @property
    def _from_objects(self) -> list[Any]:
        return [f for c in self.columns for f in c._from_objects]


@compiles(_all_null)
def _all_null_default(element: _all_null, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(and_(*(c.is_(None) for c in element.columns)), **kw)


@compiles(_all_null, "sqlite")
def _all_null_sqlite(element: _all_null, compiler: SQLCompiler, **kw: Any) -> str:
    if len(element.columns) == 1:
        return _all_null_default(element, compiler, **kw)
    return compiler.process(sql_func.coalesce(*element.columns).is_(None), **kw)


def _negatable(positive: ColumnElement[bool], negative: ColumnElement[bool]) -> ColumnElement[bool]:
    """``positive``, whose negation (``~positive``, ``not_(positive)``) is ``negative``.

    The generic ``NOT (...)`` of a comparison that is NULL for some row is NULL
    too, and drops the very rows the negation should keep. ``negation_clause``
    is SQLAlchemy's own hook for a hand-built negation (the ORM uses it for
    ``relationship.contains()``); both sides are freshly built, never shared.
    """
    positive.negation_clause = negative
    negative.negation_clause = positive
    return positive


class PhasedComparator(Comparator[Any]):
    """Class-level behaviour of a phased attribute at one read phase."""

    def __init__(self, spec: PhasedSpec, cls: Any, phase: Phase) -> None:
        self.spec = spec
        self.cls = cls
        self.phase = phase
        self._built: tuple[tuple[ColumnElement[Any], ...], tuple[ColumnElement[Any], ...]] | None
        self._built = None

    # the parts: new column expressions and forward(old) expressions
    def _parts(self) -> tuple[tuple[ColumnElement[Any], ...], tuple[ColumnElement[Any], ...]]:
        if self._built is None:
            spec, cls = self.spec, self.cls
            new = tuple(getattr(cls, n).__clause_element__() for n in spec.new)
            fwd: tuple[ColumnElement[Any], ...] = ()
            if self.phase.reads_old:
                old = tuple(getattr(cls, n).__clause_element__() for n in spec.old)
                fwd = spec.forward_sql(
                    old, f"reading it in SQL at {self.phase.name} (select, where, order_by)"
                )
            self._built = (new, fwd)
        return self._built

    def value_columns(self) -> tuple[ColumnElement[Any], ...]:
        """One expression per new column giving the value read at this phase."""
        new, fwd = self._parts()
        if self.phase is Phase.WRITE_BOTH:
            return fwd
        if self.phase is Phase.READ_NEW:
            if len(new) == 1:
                return (type_coerce(sql_func.coalesce(new[0], fwd[0]), new[0].type),)
            from sqlalchemy import case

            none_written = _all_null(*new)
            return tuple(
                type_coerce(case((none_written, f), else_=n), n.type) for n, f in zip(new, fwd)
            )
        return new

    def __clause_element__(self) -> Any:
        columns = self.value_columns()
        if not self.spec.multi_new:
            return columns[0]
        bundle = _PhasedBundle(
            self.spec.name or "value",
            *(c.label(n) for c, n in zip(columns, self.spec.new)),
        )
        bundle.spec = self.spec
        return bundle.__clause_element__()  # type: ignore[no-untyped-call]

    # -- comparisons --------------------------------------------------------
    # A comparison with values is a pair: the index-friendly test (``==``,
    # ``in_()``) and its NULL-safe negation (``!=``, ``not_in()``, ``~``), so
    # that both agree with instance reads (see "Comparisons and NULL" above).
    def _matches(self, values: tuple[Any, ...]) -> ColumnElement[bool]:
        """Rows whose value at this phase is ``values`` (new column values)."""
        if self.phase is not Phase.READ_NEW:
            # ``c == None`` renders ``c IS NULL``: a None part matches a NULL part
            return and_(*(c == v for c, v in zip(self.value_columns(), values)))
        # index-friendly: (new IS NOT NULL AND new = :v) OR (new IS NULL AND forward(old) = :v)
        new, fwd = self._parts()
        fallback = and_(_all_null(*new), *(f == v for f, v in zip(fwd, values)))
        if all(v is None for v in values):
            return fallback
        written = or_(*(c.isnot(None) for c in new))
        new_match = and_(written, *(c == v for c, v in zip(new, values)))
        return or_(new_match, fallback)

    def _differs(self, values: tuple[Any, ...]) -> ColumnElement[bool]:
        """Rows whose value at this phase is not ``values``, NULL parts included.

        ``NOT (a = :x AND b = :y)`` is NULL, not true, when ``b`` is NULL, and
        would drop the row; ``IS DISTINCT FROM`` per part never is NULL. It is
        not sargable, which ``!=`` rarely is anyway.
        """
        return or_(
            *(
                c.is_not(None) if v is None else c.is_distinct_from(v)
                for c, v in zip(self.value_columns(), values)
            )
        )

    def _equal(self, other: Any) -> ColumnElement[bool]:
        values = self.spec.unshape(other)
        return _negatable(self._matches(values), self._differs(values))

    def _in(self, other: Any) -> ColumnElement[bool]:
        if is_sql(other):
            if self.spec.multi_new:
                raise TransformError(
                    f"{self.spec.describe()} spans {len(self.spec.new)} columns: in_() "
                    f"compares it with a list of values, not with a SQL expression "
                    f"({type(other).__name__}); compare the columns "
                    f"({', '.join(self.spec.new)}) with a subquery instead"
                )
            # a subquery: SQL's rules, as the values are not known here
            return self.value_columns()[0].in_(other)
        values = list(other)
        if not values:
            return false()  # whose negation, true(), keeps every row
        if self.spec.multi_new:
            shaped = [self.spec.unshape(v) for v in values]
            return _negatable(
                or_(*(self._matches(v) for v in shaped)),
                and_(*(self._differs(v) for v in shaped)),
            )
        listed = [v for v in values if v is not None]
        with_none = len(listed) < len(values)
        (value,) = self.value_columns()
        # NOT IN never holds for a NULL value: test it apart, both ways
        if with_none:
            outside: ColumnElement[bool] = value.is_not(None)
            if listed:
                outside = and_(outside, value.not_in(listed))
        else:
            outside = or_(value.is_(None), value.not_in(listed))
        return _negatable(self._in_listed(listed, with_none), outside)

    def _in_listed(self, listed: list[Any], with_none: bool) -> ColumnElement[bool]:
        """``value IN (listed)``, or NULL when ``with_none``; index-friendly at step 2."""
        terms: list[ColumnElement[bool]] = []
        if self.phase is not Phase.READ_NEW:
            (value,) = self.value_columns()
            if listed:
                terms.append(value.in_(listed))
            if with_none:
                terms.append(value.is_(None))
            return or_(*terms)
        (new,), (fwd,) = self._parts()
        if listed:
            terms.append(and_(new.isnot(None), new.in_(listed)))
            terms.append(and_(new.is_(None), fwd.in_(listed)))
        if with_none:
            terms.append(and_(new.is_(None), fwd.is_(None)))
        return or_(*terms)

    def operate(self, op: OperatorType, *other: Any, **kwargs: Any) -> ColumnElement[Any]:
        if len(other) == 1:
            (value,) = other
            if op is operators.in_op:
                return self._in(value)
            if op is operators.not_in_op:
                return ~self._in(value)
            if not is_sql(value):
                if op is operators.eq or (op is operators.is_ and value is None):
                    return self._equal(value)
                if op is operators.ne or (op is operators.is_not and value is None):
                    return ~self._equal(value)
        if self.spec.multi_new:
            if op in _ORDERING_OPS and not other:
                # ORDER BY attr.desc(): the modifier applies to each column
                return ClauseList(*(op(c) for c in self.value_columns()))  # type: ignore[return-value]
            raise TransformError(
                f"{self.spec.describe()} spans {len(self.spec.new)} columns "
                f"({', '.join(self.spec.new)}): only ==, !=, in_(), not_in(), is_(None) "
                f"and is_not(None) against values compare it as a whole; use the columns "
                f"for other operators and to compare with SQL expressions"
            )
        return op(self.value_columns()[0], *other, **kwargs)  # type: ignore[no-any-return]

    def reverse_operate(self, op: OperatorType, other: Any, **kwargs: Any) -> ColumnElement[Any]:
        if self.spec.multi_new:
            raise TransformError(
                f"{self.spec.describe()} spans several columns; compare it as "
                f"`{self.spec.describe()} == value`"
            )
        return op(other, self.value_columns()[0], **kwargs)  # type: ignore[no-any-return]


def phased(
    *,
    old: str | Sequence[str],
    new: str | Sequence[str],
    forward: Transform[T],
    backward: Transform[Any],
    phase: Phase | int,
    key: str | None = None,
    value_type: Callable[..., T] | None = None,
) -> PhasedAttribute[T]:
    """Declare a phased attribute that moves data from ``old`` to ``new``.

    :param old: attribute name(s) of the old column(s).
    :param new: attribute name(s) of the new column(s).
    :param forward: old value(s) -> new value(s).
    :param backward: new value(s) -> old value(s).
    :param phase: the step this release is at (:class:`Phase`).
    :param key: registry key; default ``"<table>.<attribute>"``.
    :param value_type: with several new columns, a class built from the new
        values positionally (a named tuple, a dataclass); default ``tuple``.
    """
    if not isinstance(forward, Transform) or not isinstance(backward, Transform):
        raise DeclarationError(
            "phased(forward=..., backward=...) take Transform objects, e.g. "
            "Transform(split_name, sql=split_name_sql) or Transform.identity()"
        )
    try:
        phase = Phase(phase)
    except ValueError:
        raise DeclarationError(f"phased(phase={phase!r}) is not a Phase (1-4)") from None
    old_names = _names(old, "old")
    new_names = _names(new, "new")
    overlap = set(old_names) & set(new_names)
    if overlap:
        raise DeclarationError(
            f"phased(): {', '.join(sorted(overlap))} is both old and new; the old and "
            f"new places must be different columns"
        )
    if value_type is not None and len(new_names) == 1:
        raise DeclarationError("phased(value_type=...) only applies to several new columns")
    spec = PhasedSpec(
        old=old_names,
        new=new_names,
        forward=forward,
        backward=backward,
        phase=phase,
        key=key,
        value_type=value_type,
    )

    def fget(obj: Any) -> Any:
        return spec.readers[effective_read_phase(spec)](obj)

    def fset(obj: Any, value: Any) -> None:
        new_values = spec.unshape(value)
        old_values: tuple[Any, ...] = ()
        if spec.phase.writes_old:
            if any(is_sql(v) for v in new_values):
                old_values = spec.backward_sql(new_values, "assigning a SQL expression")
            else:
                old_values = spec.backward_values(new_values)
        for name, v in zip(spec.new, new_values):
            write_column(obj, name, v)
        for name, v in zip(spec.old, old_values):
            write_column(obj, name, v)
        if old_values:
            # read back by the flush-time sync: these values need no re-check
            writes = obj.__dict__.setdefault(LOGICAL_WRITES, {})
            writes[spec] = (new_values, old_values)

    def expression(cls: Any) -> Any:
        return PhasedComparator(spec, cls, effective_read_phase(spec))

    def update_expression(cls: Any, value: Any) -> list[tuple[Any, Any]]:
        new_values = spec.unshape(value)
        pairs: list[tuple[Any, Any]] = [
            (getattr(cls, n), v) for n, v in zip(spec.new, new_values)
        ]
        if spec.phase.writes_old:
            if any(is_sql(v) for v in new_values):
                old_values = spec.backward_sql(new_values, "a SQL value in .values()")
            else:
                old_values = spec.backward_values(new_values)
            pairs.extend((getattr(cls, n), v) for n, v in zip(spec.old, old_values))
        return pairs

    def bulk_dml(cls: Any, mapping: Any, value: Any) -> None:
        new_values = spec.unshape(value)
        del mapping[spec.name]
        for name, v in zip(spec.new, new_values):
            mapping[name] = v
        if spec.phase.writes_old:
            for name, v in zip(spec.old, spec.backward_values(new_values, row=mapping)):
                mapping[name] = v

    fget.__name__ = "phased"
    attribute: PhasedAttribute[T] = PhasedAttribute(
        fget,
        fset,
        expr=expression,
        update_expr=update_expression,
        bulk_dml_setter=bulk_dml,
    )
    attribute._fourstep = spec
    attribute.__doc__ = (
        f"Phased attribute: {', '.join(old_names)} -> {', '.join(new_names)} "
        f"at {phase.name}."
    )
    return attribute


def phased_attributes_of(cls: type) -> list[PhasedAttribute[Any]]:
    """The phased attributes declared on ``cls`` and its bases."""
    found: dict[str, PhasedAttribute[Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, PhasedAttribute):
                found[name] = value
    return list(found.values())


@event.listens_for(Mapper, "after_mapper_constructed")
def _bind_on_mapping(mapper: Mapper[Any], class_: type) -> None:
    from .registry import register

    for attribute in phased_attributes_of(class_):
        spec = attribute.spec
        if spec._mapper is not None:
            if mapper.isa(spec._mapper):
                continue  # a subclass mapper inherits the base's binding
            raise DeclarationError(
                f"{spec.describe()} is already bound to {spec._mapper.class_.__name__}; a "
                f"phased attribute belongs to one mapped class. Declare it on each model "
                f"(not on a mixin shared by {class_.__name__})."
            )
        spec.bind(mapper)
        register(spec)


def forward_index(attribute: Any, name: str | None = None, **kwargs: Any) -> Index:
    """An index on ``forward(old)``, so a step-2 equality filter stays index-friendly.

    At step 2, ``attr == v`` renders ``new = :v OR (new IS NULL AND
    forward(old) = :v)``; with an index on the new column(s) and this one,
    PostgreSQL answers it with a bitmap OR of two index scans. For a rename
    (identity transform) an index on the old column is the same thing.

    The index is attached to the model's table, so Alembic autogenerate sees
    it: with :mod:`fourstep_sqla.alembic` imported, autogenerate creates it
    (and drops it on downgrade) with ``postgresql_concurrently=True``, run in
    an autocommit block of its own, so writes go on while it builds. Kept in
    the model at step 4, it is dropped with the old column and built again if
    the drop is downgraded. ``kwargs`` go to :class:`sqlalchemy.Index`.
    """
    from .registry import resolve

    spec = resolve(attribute)
    table = spec.table
    if table is None:
        raise DeclarationError(f"{spec.describe()} is not mapped yet; map the model first")
    if not spec.old_columns:
        raise DeclarationError(f"{spec.describe()} has no old column left to index")
    expressions = spec.forward_sql(spec.old_columns, "an index on forward(old)")
    if spec.forward.builtin is not None and spec.forward.builtin[0] == "identity":
        expressions = tuple(spec.old_columns)
    index_name = name or f"ix_{table.name}_{spec.name}_forward"
    info = {**kwargs.pop("info", {}), "fourstep_forward_index": spec.key}
    return Index(index_name, *expressions, info=info, **kwargs)
