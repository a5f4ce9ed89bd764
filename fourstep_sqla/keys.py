"""Primary-key ranges: how the backfill and verify engine walks a table.

Both engines walk the primary key in order, one batch at a time, with a
keyset predicate on the key itself (``pk > :lower AND pk <= :upper``; a row
value comparison for composite keys), so every batch is an index range scan
whatever has been done before, and memory stays flat. The end of each batch
is the key ``batch_size`` rows further on, found with an index-only
``ORDER BY pk LIMIT 1 OFFSET n``.

**The order of the index, not of the model.** A composite key is walked in
the column order of the index that serves it, as the database has it
(:func:`key_columns`): the primary key constraint's, else a unique index on
exactly the key's columns, else an index that starts with them. A model
declaring ``id`` before ``tenant`` on a table whose primary key is
``(tenant, id)`` is walked as ``(tenant, id)``: walked in the model's order,
the row value comparison matches no index and every batch scans the table.
Where no index serves the key, :class:`NoKeyIndexError` says so before
anything runs, with the ``CREATE UNIQUE INDEX CONCURRENTLY`` that fixes it.

A composite batch also bounds the leading column on its own
(``tenant >= :lo AND tenant <= :hi`` beside the row values), which the row
comparison implies: PostgreSQL prunes the partitions of a table partitioned
on that column, and MariaDB/MySQL get a range on it.

Keys the user sees (skipped keys, verify's sample keys) are tuples in the
model's primary-key order, as ``Session.get`` takes them
(:meth:`KeyRange.declared_key`); only a run's cursors and bounds are in the
walk order, which the run records (see :mod:`fourstep_sqla.runner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Integer, and_, bindparam, func, inspect, or_, select, tuple_
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import Column, Table

from .errors import FourStepError

__all__ = ["KeyRange", "NoKeyIndexError", "NoPrimaryKeyError", "key_columns", "primary_key_of"]


class NoPrimaryKeyError(FourStepError):
    """The table has no primary key to walk in batches."""


class NoKeyIndexError(NoPrimaryKeyError):
    """The model declares a primary key that no index of the database serves:
    every batch would scan the whole table."""


def primary_key_of(table: Table, key: str) -> tuple[Column[Any], ...]:
    columns = tuple(table.primary_key.columns)
    if not columns:
        raise NoPrimaryKeyError(
            f"{key}: table {table.description!r} has no primary key. The backfill and "
            f"verify walk the table in primary-key ranges; add a primary key (or a unique "
            f"NOT NULL key declared as primary_key=True on the model)."
        )
    return columns


def key_columns(conn: Connection, table: Table, key: str) -> tuple[Column[Any], ...]:
    """The primary key columns of ``table`` in the order of the index that
    serves them, as the database has it (read-only).

    The primary key constraint's column order (PostgreSQL ``conkey``, SQLite's
    ``pk`` ordinals, MariaDB/MySQL's ``ORDINAL_POSITION``) when it is on the
    model's key columns; else a unique index on exactly them; else an index
    whose leading columns are them. None of these: :class:`NoKeyIndexError`,
    naming the index to create. A table the database does not have (yet)
    keeps the model's order: the statements fail on their own.
    """
    declared = primary_key_of(table, key)
    names = {c.name for c in declared}
    inspector = inspect(conn)
    try:
        constrained = inspector.get_pk_constraint(table.name, schema=table.schema).get(
            "constrained_columns"
        ) or []
    except NoSuchTableError:
        return declared
    candidates: list[list[str]] = [list(constrained)]
    indexes = [
        (bool(ix.get("unique")), [n for n in ix.get("column_names", []) if n])
        for ix in inspector.get_indexes(table.name, schema=table.schema)
    ]
    candidates += [list(u["column_names"]) for u in
                   inspector.get_unique_constraints(table.name, schema=table.schema)]
    candidates += [cols for unique, cols in indexes if unique]
    for cols in candidates:
        if len(cols) == len(names) and set(cols) == names:
            return tuple(table.c[n] for n in cols)
    for _unique, cols in indexes:
        if set(cols[: len(names)]) == names:
            return tuple(table.c[n] for n in cols[: len(names)])
    column_list = ", ".join(c.name for c in declared)
    raise NoKeyIndexError(
        f"{key}: no index of {table.description!r} serves its primary key ({column_list}) as "
        f"the model declares it (the database's primary key is "
        f"{'(' + ', '.join(constrained) + ')' if constrained else 'missing'}): every batch of "
        f"the backfill and verify would scan the whole table. Add one before running, e.g. "
        f"CREATE UNIQUE INDEX CONCURRENTLY {table.name}_fourstep_key ON "
        f"{table.fullname} ({column_list}) (PostgreSQL; CREATE UNIQUE INDEX ... elsewhere), "
        f"or declare the key the table has on the model."
    )


class KeyRange:
    """Key arithmetic over the primary key columns of one table.

    ``columns``: the walk order (:func:`key_columns`); the model's order is
    ``table.primary_key``'s, in which keys are shown and recorded.
    """

    def __init__(self, table: Table, columns: Sequence[Column[Any]]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.single = len(self.columns) == 1
        declared = tuple(table.primary_key.columns)
        if {c.name for c in declared} != {c.name for c in self.columns}:
            declared = self.columns
        self.declared = declared
        walk_at = {c.name: i for i, c in enumerate(self.columns)}
        #: position in a walk-order key of each declared column
        self._to_declared = tuple(walk_at[c.name] for c in declared)
        declared_at = {c.name: i for i, c in enumerate(declared)}
        self._to_walk = tuple(declared_at[c.name] for c in self.columns)
        #: the model declares the key in another order than the index walks it
        self.reordered = self._to_declared != tuple(range(len(self.columns)))

    @property
    def names(self) -> list[str]:
        """The walk order, by column name (what a run records)."""
        return [c.name for c in self.columns]

    def declared_key(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """A walk-order key in the model's primary-key order."""
        if not self.reordered or len(key) != len(self.columns):
            return key
        return tuple(key[i] for i in self._to_declared)

    def walk_key(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """A key in the model's order, in the walk order."""
        if not self.reordered or len(key) != len(self.columns):
            return key
        return tuple(key[i] for i in self._to_walk)

    def _key_expr(self) -> Any:
        return self.columns[0] if self.single else tuple_(*self.columns)

    def _key_value(self, key: tuple[Any, ...]) -> Any:
        return key[0] if self.single else tuple_(*key)

    def between(self, lower: tuple[Any, ...] | None, upper: tuple[Any, ...]) -> ColumnElement[bool]:
        """``lower < pk <= upper`` (``lower`` None: from the start).

        Composite keys also bound their leading column alone (implied by the
        row values): partition pruning on PostgreSQL, a range on MariaDB/MySQL.
        """
        expr = self._key_expr()
        composite = len(self.columns) > 1
        clauses = []
        if lower is not None:
            clauses.append(expr > self._key_value(lower))
            if composite:
                clauses.append(self.columns[0] >= lower[0])
        clauses.append(expr <= self._key_value(upper))
        if composite:
            clauses.append(self.columns[0] <= upper[0])
        return clauses[0] if len(clauses) == 1 else and_(*clauses)

    def from_to(self, first: tuple[Any, ...], last: tuple[Any, ...]) -> ColumnElement[bool]:
        """``first <= pk <= last``."""
        expr = self._key_expr()
        clauses = [expr >= self._key_value(first), expr <= self._key_value(last)]
        if len(self.columns) > 1:
            lead = self.columns[0]
            clauses += [lead >= first[0], lead <= last[0]]
        return and_(*clauses)

    def between_params(self, has_lower: bool) -> ColumnElement[bool]:
        """:meth:`between` over bound parameters ``lo_i`` / ``hi_i``.

        A statement built once with it is reused for every batch: only the
        parameters change, so neither the expression nor its cache key is
        rebuilt per batch.
        """
        lower = tuple(bindparam(f"lo_{i}", type_=c.type) for i, c in enumerate(self.columns))
        upper = tuple(bindparam(f"hi_{i}", type_=c.type) for i, c in enumerate(self.columns))
        return self.between(lower if has_lower else None, upper)

    @staticmethod
    def params(lower: tuple[Any, ...] | None, upper: tuple[Any, ...]) -> dict[str, Any]:
        """The parameters of :meth:`between_params` for one batch."""
        values = {f"hi_{i}": v for i, v in enumerate(upper)}
        if lower is not None:
            values.update({f"lo_{i}": v for i, v in enumerate(lower)})
        return values

    def equals(self, key: tuple[Any, ...]) -> ColumnElement[bool]:
        return and_(*(c == v for c, v in zip(self.columns, key)))

    def order_by(self, descending: bool = False) -> list[Any]:
        return [c.desc() if descending else c for c in self.columns]

    def last_key(self, conn: Connection) -> tuple[Any, ...] | None:
        row = conn.execute(
            select(*self.columns).order_by(*self.order_by(descending=True)).limit(1)
        ).first()
        return None if row is None else tuple(row)

    def first_key(self, conn: Connection) -> tuple[Any, ...] | None:
        row = conn.execute(select(*self.columns).order_by(*self.order_by()).limit(1)).first()
        return None if row is None else tuple(row)

    @property
    def integer(self) -> bool:
        """A single integer key: batches are computed, not looked up."""
        return self.single and isinstance(self.columns[0].type, Integer)

    def batch_end(
        self,
        conn: Connection,
        lower: tuple[Any, ...] | None,
        upper: tuple[Any, ...],
        size: int,
        *,
        dense: bool = False,
    ) -> tuple[Any, ...]:
        """The key ``size`` rows after ``lower`` (capped at ``upper``).

        ``dense``: the caller found rows right after ``lower`` last time; for
        an integer key the end is then ``lower + size``, without a probe.

        For a single integer key this is ``next + size - 1``, where ``next`` is
        the first key after ``lower`` (one index probe): gaps in the keys only
        make a batch cheaper (its size adapts to its duration anyway), and a
        sparse key space (snowflake ids) is jumped over. Other keys are looked
        up with an index-only
        ``OFFSET``; on PostgreSQL the planner is kept on the index even when
        stale statistics make it underestimate the range (a fresh table).
        """
        if self.integer:
            if dense and lower is not None:
                # any end is correct: the probe only jumps over gaps
                return (min(int(lower[0]) + size, int(upper[0])),)
            column = self.columns[0]
            following = select(func.min(column)).where(self.between(lower, upper))
            first = conn.execute(following).scalar()
            if first is None:
                return upper
            return (min(int(first) + size - 1, int(upper[0])),)
        if conn.dialect.name == "postgresql":
            # one statement per execute: asyncpg refuses several
            conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            conn.exec_driver_sql("SET LOCAL enable_sort = off")
        row = conn.execute(
            select(*self.columns)
            .where(self.between(lower, upper))
            .order_by(*self.order_by())
            .limit(1)
            .offset(max(size - 1, 0))
        ).first()
        return upper if row is None else tuple(row)

    def keys_in(
        self, conn: Connection, lower: tuple[Any, ...] | None, upper: tuple[Any, ...], *where: Any
    ) -> list[tuple[Any, ...]]:
        rows = conn.execute(
            select(*self.columns)
            .where(self.between(lower, upper), *where)
            .order_by(*self.order_by())
        )
        return [tuple(r) for r in rows]

    def split(
        self, conn: Connection, upper: tuple[Any, ...], parts: int
    ) -> list[tuple[tuple[Any, ...] | None, tuple[Any, ...]]]:
        """``parts`` contiguous ranges covering everything up to ``upper``."""
        if parts <= 1:
            return [(None, upper)]
        column = self.columns[0]
        bounds: list[tuple[Any, ...]] = []
        if self.single and isinstance(column.type, Integer):
            first = self.first_key(conn)
            assert first is not None
            low, high = int(first[0]), int(upper[0])
            step = max((high - low + 1) // parts, 1)
            bounds = [(low + step * i - 1,) for i in range(1, parts) if low + step * i - 1 < high]
        else:
            total = conn.execute(
                select(func.count()).select_from(self.table).where(self.between(None, upper))
            ).scalar_one()
            step = max(total // parts, 1)
            for i in range(1, parts):
                if step * i >= total:
                    break
                row = conn.execute(
                    select(*self.columns)
                    .where(self.between(None, upper))
                    .order_by(*self.order_by())
                    .limit(1)
                    .offset(step * i - 1)
                ).first()
                if row is not None:
                    bounds.append(tuple(row))
        ranges: list[tuple[tuple[Any, ...] | None, tuple[Any, ...]]] = []
        lower: tuple[Any, ...] | None = None
        for bound in bounds:
            ranges.append((lower, bound))
            lower = bound
        ranges.append((lower, upper))
        return ranges


def any_not_null(columns: Sequence[Any]) -> ColumnElement[bool]:
    return or_(*(c.isnot(None) for c in columns))


def all_null(columns: Sequence[Any]) -> ColumnElement[bool]:
    return and_(*(c.is_(None) for c in columns))
