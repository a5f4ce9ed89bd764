"""Flush-time dual-write sync.

In steps 1-3 a release must write both places whatever the code touched. The
phased attribute itself writes both; this module covers code that writes one
of the column attributes directly (``user.legacy_name = "Ada Lovelace"`` or
``user.first_name = "Ada"``): just before each flush, for every new or
changed instance of a model with phased attributes,

- old written, new not: new := forward(old);
- new written (some or all of its columns), old not: old := backward(new),
  with any new column not written taken from forward(old) while the row has
  not been backfilled yet (all new columns NULL), so a partial write never
  loses the rest of the old value;
- both written: accepted when they agree (forward(old) == new or
  backward(new) == old) and refused with :class:`InconsistentWriteError`
  otherwise, before anything is sent to the database.

The sync writes plain attribute values, which do not trigger another sync.

ORM statements that name an old or new column directly instead of the phased
attribute are completed the same way in ``do_orm_execute``: bulk lists of
dictionaries (``session.execute(insert(User), [dicts])``) and
``insert/update(User).values(legacy_name=...)``, single or multi-row. Literal
values go through the Python transform, SQL expressions through the SQL one.
A statement that writes only some of several old columns (or new ones) is
left as it is.

Not covered: Core statements on ``Model.__table__``, raw SQL, other services.
Use the sync triggers of the Alembic integration for those.
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql.dml import ValuesBase
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from .attribute import LOGICAL_WRITES, PhasedSpec, is_sql, phased_attributes_of, write_column
from .errors import InconsistentWriteError

if TYPE_CHECKING:
    from sqlalchemy.orm import ORMExecuteState
    from sqlalchemy.orm.state import InstanceState

__all__ = ["sync_instance"]

# weak: models defined and dropped at run time (tests, reloads) must not be kept alive
_specs_by_class: weakref.WeakKeyDictionary[type, tuple[PhasedSpec, ...]] = (
    weakref.WeakKeyDictionary()
)


def _dual_written_specs(cls: type) -> tuple[PhasedSpec, ...]:
    specs = _specs_by_class.get(cls)
    if specs is None:
        specs = tuple(
            a.spec
            for a in phased_attributes_of(cls)
            if a.spec.phase.writes_old and a.spec._mapper is not None
            and a.spec.copy_of is None  # copies (version rows) are kept as written
        )
        _specs_by_class[cls] = specs
    return specs


def _history(state: InstanceState[Any], name: str) -> tuple[bool, Any, Any]:
    """(written, current value, value before this flush or NO_VALUE if unknown)."""
    attr_state = state.attrs[name]
    history = attr_state.history
    if history.added:
        previous = history.deleted[0] if history.deleted else NO_VALUE
        if state.key is None:  # pending: nothing was there before
            previous = None
        return True, history.added[0], previous
    value = attr_state.value
    return False, value, value


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    try:
        return bool(a == b)
    except Exception:  # values without a usable __eq__ (SQL expressions)
        return a is b


def sync_instance(state: InstanceState[Any], spec: PhasedSpec) -> None:
    """Make old and new of ``spec`` agree on one instance (see module docs)."""
    obj = state.obj()
    if obj is None:
        return
    changed = state.committed_state  # keys of attributes set since load
    if not any(n in changed for n in spec.columns):
        return
    logical = obj.__dict__.get(LOGICAL_WRITES)
    if logical and spec in logical:
        rec_new, rec_old = logical[spec]
        d = obj.__dict__
        if all(d.get(n) is v for n, v in zip(spec.new, rec_new)) and all(
            d.get(n) is v for n, v in zip(spec.old, rec_old)
        ):
            del logical[spec]  # written through the attribute and untouched since
            return
    old_hist = [_history(state, n) for n in spec.old]
    new_hist = [_history(state, n) for n in spec.new]
    old_now = tuple(h[1] for h in old_hist)
    new_now = tuple(h[1] for h in new_hist)
    old_written = any(h[0] for h in old_hist)
    new_written = any(h[0] for h in new_hist)

    if logical and spec in logical:
        rec_new, rec_old = logical.pop(spec)
        new_kept = _same(new_now, rec_new)
        old_kept = _same(old_now, rec_old)
        if new_kept and old_kept:
            return
        # written again directly after the logical write: that write wins
        old_written, new_written = not old_kept, not new_kept

    if any(is_sql(v) for v in old_now + new_now):
        return  # SQL expressions are evaluated by the database; nothing to compare
    if old_written and not new_written:
        for name, value in zip(spec.new, spec.forward_values(old_now, row=state.key)):
            write_column(obj, name, value)
    elif new_written and not old_written:
        before = tuple(h[2] for h in new_hist)
        partial = not all(h[0] for h in new_hist)
        if partial and all(b is None or b is NO_VALUE for b in before):
            # the row was never written in the new shape: complete it from old
            filled = spec.forward_values(old_now, row=state.key)
            merged = tuple(
                h[1] if h[0] else f for h, f in zip(new_hist, filled)
            )
            for name, h, value in zip(spec.new, new_hist, merged):
                if not h[0]:
                    write_column(obj, name, value)
            new_now = merged
        for name, value in zip(spec.old, spec.backward_values(new_now, row=state.key)):
            write_column(obj, name, value)
    elif old_written and new_written:
        if _same(spec.forward_values(old_now, row=state.key), new_now):
            return
        if _same(spec.backward_values(new_now, row=state.key), old_now):
            return
        raise InconsistentWriteError(
            f"{spec.describe()}: row {state.key[1] if state.key else '(new)'!r} of "
            f"{spec.table.description if spec.table is not None else '?'} had both its old "
            f"column(s) {', '.join(spec.old)} = {old_now!r} and its new column(s) "
            f"{', '.join(spec.new)} = {new_now!r} written, and they disagree "
            f"(forward(old) = {spec.forward_values(old_now)!r}). Write one side, or "
            f"assign {spec.describe()} itself. Nothing was flushed."
        )


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    candidates = list(session.new) + list(session.dirty)
    if not candidates:
        return
    with session.no_autoflush:
        for obj in candidates:
            specs = _dual_written_specs(type(obj))
            if not specs:
                continue
            state = inspect(obj)
            if state.deleted:
                continue
            for spec in specs:
                sync_instance(state, spec)


def _complete_mapping(spec: PhasedSpec, mapping: MutableMapping[str, Any]) -> None:
    has_old = [n in mapping for n in spec.old]
    has_new = [n in mapping for n in spec.new]
    if all(has_old) and not any(has_new):
        values = spec.forward_values([mapping[n] for n in spec.old], row=mapping)
        mapping.update(zip(spec.new, values))
    elif all(has_new) and not any(has_old):
        values = spec.backward_values([mapping[n] for n in spec.new], row=mapping)
        mapping.update(zip(spec.old, values))


@event.listens_for(Session, "do_orm_execute")
def _complete_orm_dml(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update):
        return
    mapper = state.bind_mapper
    if mapper is None:
        return
    specs = _dual_written_specs(mapper.class_)
    if not specs:
        return
    params = state.parameters
    if params:
        _complete_bulk_parameters(state, specs, params)
    statement = state.statement
    if isinstance(statement, ValuesBase):
        completed = _complete_values(statement, specs)
        if completed is not statement:
            state.statement = completed


def _complete_bulk_parameters(
    state: ORMExecuteState, specs: tuple[PhasedSpec, ...], params: Any
) -> None:
    """Bulk INSERT/UPDATE with lists of dicts naming old or new columns directly."""
    rows: list[Any] = params if isinstance(params, list) else [params]
    if not rows or not isinstance(rows[0], MutableMapping):
        return
    names = {n for s in specs for n in s.columns}
    if not any(names.intersection(row) for row in rows):
        return
    completed: list[dict[str, Any]] = [dict(row) for row in rows]
    for row in completed:
        for spec in specs:
            if spec.name in row:
                continue  # the hybrid's bulk_dml hook does this one
            _complete_mapping(spec, row)
    state.parameters = completed if isinstance(params, list) else completed[0]


def _value_of(value: Any) -> Any:
    """A literal for a plain bound value, else the SQL expression itself."""
    plain = isinstance(value, BindParameter) and not value.callable
    if plain and not isinstance(value.value, ClauseElement):
        return value.value
    return value


def _complete_row(spec: PhasedSpec, row: dict[Any, Any], by_column: dict[Any, Any]) -> bool:
    """Add the other side to one ``.values()`` row keyed by Column; True if changed."""
    old = [by_column.get(c, _ABSENT) for c in spec.old_columns]
    new = [by_column.get(c, _ABSENT) for c in spec.new_columns]
    old_all = _ABSENT not in old
    new_none = all(v is _ABSENT for v in new)
    new_all = _ABSENT not in new
    old_none = all(v is _ABSENT for v in old)
    if old_all and new_none:
        values = [_value_of(v) for v in old]
        if any(is_sql(v) for v in values):
            targets = spec.forward_sql(values, "an old column set to a SQL value in .values()")
        else:
            targets = spec.forward_values(values)
        row.update(zip(spec.new_columns, targets))
        return True
    if new_all and old_none:
        values = [_value_of(v) for v in new]
        if any(is_sql(v) for v in values):
            sources = spec.backward_sql(values, "a new column set to a SQL value in .values()")
        else:
            sources = spec.backward_values(values)
        row.update(zip(spec.old_columns, sources))
        return True
    return False


def _complete_values(statement: ValuesBase, specs: tuple[PhasedSpec, ...]) -> ValuesBase:
    """``insert/update(Model).values(old_col=...)``: write the new side too (and back)."""
    multi = statement._multi_values
    single = statement._values
    if not multi and not single:
        return statement

    def keyed(row: Any) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, value in row.items():
            column = _column_for(key, specs)
            if column is not None:
                out[column] = value
        return out

    if single:
        by_column = keyed(single)
        additions: dict[Any, Any] = {}
        for spec in specs:
            _complete_row(spec, additions, by_column)
        return statement.values(additions) if additions else statement
    rows = [dict(row) for block in multi for row in block]
    changed = False
    for row in rows:
        by_column = keyed(row)
        extra: dict[Any, Any] = {}
        for spec in specs:
            changed |= _complete_row(spec, extra, by_column)
        row.update(extra)
    if not changed:
        return statement
    if len({frozenset(str(getattr(k, "name", k)) for k in row) for row in rows}) > 1:
        raise InconsistentWriteError(
            f"multi-row .values() on {specs[0].describe().split('.')[0]} writes old or new "
            f"columns directly in some rows only; write the phased attribute, or the same "
            f"columns in every row"
        )
    # a multi-row VALUES is rebuilt wholesale: Insert.values() only appends blocks
    rebuilt = statement._clone()
    rebuilt._multi_values = (rows,)
    return rebuilt


def _column_for(key: Any, specs: tuple[PhasedSpec, ...]) -> Any:
    """The phased spec column a ``.values()`` key refers to, or None."""
    for spec in specs:
        for name, column in zip(spec.columns, spec.old_columns + spec.new_columns):
            if isinstance(key, str):
                if key == name:
                    return column
            elif getattr(key, "table", None) is column.table and getattr(key, "name", None) == (
                column.name
            ):
                return column
    return None


_ABSENT = object()
