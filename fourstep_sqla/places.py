"""How a row's old and new places relate: the definitions verify, the drop
gate and the repair share.

For one row, with ``F`` the forward and ``B`` the backward transform:

- **agrees**: ``old = B(new)``. The old value comes back from the new one, so
  dropping the old place loses nothing. A write through the phased attribute
  (``new = v, old = B(v)``), a write of the new place only that the sync
  triggers completed, and a backfilled row of a lossless transform all agree.
- **follows**: ``new = F(old)``, but the row does not agree: the new place was
  filled from the old one, and the round trip ``B(F(old))`` does not give the
  old value back ('' split into NULL, NULL; 'Ada ' with a trailing
  separator). Dropping the old place loses that difference: the drop refuses
  such *lossy* rows unless told to accept the loss.
- **missing**: neither, and every new column is NULL: nothing was written in
  the new place yet (not backfilled, or written by the old place only,
  outside the ORM and without triggers).
- **mismatched**: neither, with something in the new place: the two places
  disagree, e.g. an old-only write after the backfill that no trigger
  carried over. ``backfill(..., repair=True)`` rewrites ``new = F(old)``
  there.

Rows whose old place is empty are compared only where the sync triggers keep
both places in step (an old value cleared outside the ORM would otherwise go
unnoticed); without triggers a NULL old place beside a new value is what
every row written at step 4 looks like, and cannot be told from a clear.

All comparisons are NULL-safe and exact (:mod:`fourstep_sqla.exact`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from .attribute import PhasedSpec
from .errors import FourStepError
from .exact import row_differs, same_row
from .keys import all_null, any_not_null

__all__ = ["SQLPlaces", "compare_values"]

#: how a row's places relate (see the module docs)
AGREES, LOSSY, MISSING, MISMATCHED = "agrees", "lossy", "missing", "mismatched"


@dataclass(frozen=True)
class SQLPlaces:
    """The comparisons of one phased attribute as SQL expressions."""

    old: tuple[ColumnElement[Any], ...]
    new: tuple[ColumnElement[Any], ...]
    forward: tuple[ColumnElement[Any], ...]
    backward: tuple[ColumnElement[Any], ...]

    @classmethod
    def of(cls, spec: PhasedSpec, purpose: str) -> SQLPlaces:
        """Needs both transforms' SQL forms."""
        old = tuple(spec.old_columns)
        new = tuple(spec.new_columns)
        backward = spec.backward_sql(new, purpose)
        return cls(
            old=old,
            new=new,
            forward=spec.forward_sql(old, purpose),
            backward=tuple(type_coerce(b, c.type) for b, c in zip(backward, old)),
        )

    def scope(self, synced: bool) -> ColumnElement[bool]:
        """The rows compared at all (see the module docs)."""
        if synced:
            return or_(any_not_null(self.old), any_not_null(self.new))
        return any_not_null(self.old)

    def follows(self) -> ColumnElement[bool]:
        return same_row(self.new, self.forward)

    def disagrees(self) -> ColumnElement[bool]:
        """Neither agrees nor follows: missing or mismatched."""
        return and_(
            row_differs(self.old, self.backward), row_differs(self.new, self.forward)
        )

    def lossy(self) -> ColumnElement[bool]:
        return and_(row_differs(self.old, self.backward), self.follows())

    def missing(self) -> ColumnElement[bool]:
        return and_(self.disagrees(), all_null(self.new))

    def mismatched(self) -> ColumnElement[bool]:
        return and_(self.disagrees(), ~all_null(self.new))

    def round_trip(self, spec: PhasedSpec, where: ColumnElement[bool], purpose: str) -> Any:
        """``(keys..., new..., unstable)`` rows: whether ``F(B(new))`` differs from a
        non-empty ``new``, so that after a downgrade past the drop step-1 code
        would read the row differently.

        ``B(new)`` is computed in a subquery under the old columns' names, and
        ``F`` applied to that: this composes frozen transforms too, whose SQL
        text names its source columns bare.
        """
        table = spec.table
        assert table is not None
        keys = list(table.primary_key.columns)
        inner = (
            select(
                *keys,
                *self.new,
                *(b.label(c.name) for b, c in zip(self.backward, spec.old_columns)),
            )
            .where(where)
            .subquery("fourstep_round_trip")
        )
        again = spec.forward_sql([inner.c[c.name] for c in spec.old_columns], purpose)
        new = [inner.c[c.name] for c in spec.new_columns]
        return inner, and_(~all_null(new), row_differs(new, again))


def old_place_dropped(conn: Any, spec: PhasedSpec) -> bool:
    """Whether step 4 is done: an old column of ``spec`` is no longer in its table."""
    from sqlalchemy import inspect

    table = spec.table
    assert table is not None
    inspector = inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        return False
    present = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
    return any(c.name not in present for c in spec.old_columns)


def compare_values(
    spec: PhasedSpec, old: Sequence[Any], new: Sequence[Any], synced: bool, key: Any = None
) -> str | None:
    """How one row's places relate, in Python: a category, or None when the
    row is out of scope (see the module docs)."""
    old_empty = old.count(None) == len(old)
    new_empty = new.count(None) == len(new)
    if old_empty and (new_empty or not synced):
        return None
    try:
        back: tuple[Any, ...] | None = spec.backward_values(new, row=key)
    except FourStepError:
        back = None
    if back is not None and tuple(back) == tuple(old):
        return AGREES
    try:
        expected: tuple[Any, ...] | None = spec.forward_values(old, row=key)
    except FourStepError:
        expected = None
    if expected is not None and tuple(expected) == tuple(new):
        return LOSSY
    return MISSING if new_empty else MISMATCHED


def unstable_value(spec: PhasedSpec, new: Sequence[Any], key: Any = None) -> bool:
    """Whether ``F(B(new))`` differs from ``new`` (Python)."""
    if new.count(None) == len(new):
        return False
    try:
        again = spec.forward_values(spec.backward_values(new, row=key), row=key)
    except FourStepError:
        return True
    return tuple(again) != tuple(new)
