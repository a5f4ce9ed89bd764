"""Primary-key ranges: how the backfill and verify engine walks a table.

Both engines walk the primary key in order, one batch at a time, with a
keyset predicate on the key itself (``pk > :lower AND pk <= :upper``; a row
value comparison for composite keys), so every batch is an index range scan
whatever has been done before, and memory stays flat. The end of each batch
is the key ``batch_size`` rows further on, found with an index-only
``ORDER BY pk LIMIT 1 OFFSET n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Integer, and_, bindparam, func, or_, select, tuple_
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import Column, Table

from .errors import FourStepError

__all__ = ["KeyRange", "NoPrimaryKeyError", "primary_key_of"]


class NoPrimaryKeyError(FourStepError):
    """The table has no primary key to walk in batches."""


def primary_key_of(table: Table, key: str) -> tuple[Column[Any], ...]:
    columns = tuple(table.primary_key.columns)
    if not columns:
        raise NoPrimaryKeyError(
            f"{key}: table {table.description!r} has no primary key. The backfill and "
            f"verify walk the table in primary-key ranges; add a primary key (or a unique "
            f"NOT NULL key declared as primary_key=True on the model)."
        )
    return columns


class KeyRange:
    """Key arithmetic over the primary key columns of one table."""

    def __init__(self, table: Table, columns: Sequence[Column[Any]]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.single = len(self.columns) == 1

    def _key_expr(self) -> Any:
        return self.columns[0] if self.single else tuple_(*self.columns)

    def _key_value(self, key: tuple[Any, ...]) -> Any:
        return key[0] if self.single else tuple_(*key)

    def between(self, lower: tuple[Any, ...] | None, upper: tuple[Any, ...]) -> ColumnElement[bool]:
        """``lower < pk <= upper`` (``lower`` None: from the start)."""
        expr = self._key_expr()
        upper_clause = expr <= self._key_value(upper)
        if lower is None:
            return upper_clause  # type: ignore[no-any-return]
        return and_(expr > self._key_value(lower), upper_clause)

    def from_to(self, first: tuple[Any, ...], last: tuple[Any, ...]) -> ColumnElement[bool]:
        """``first <= pk <= last``."""
        expr = self._key_expr()
        return and_(expr >= self._key_value(first), expr <= self._key_value(last))

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
