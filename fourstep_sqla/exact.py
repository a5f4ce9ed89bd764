"""Exact, NULL-safe comparisons of old and new values in SQL.

Deciding that nothing would be lost needs comparisons that see every
difference: ``NULL`` against a value, case, trailing spaces. ``IS DISTINCT
FROM`` does on PostgreSQL and SQLite (``IS NOT``); on MariaDB/MySQL text
compares under the column's collation, usually case-insensitive and PAD
SPACE (``'ada' <=> 'Ada '`` is true), so there strings are compared as
binary strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, false, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean, String

__all__ = ["differs", "row_differs", "same", "same_row"]


class _differs(ColumnElement[bool]):
    """``a`` and ``b`` differ, NULL-safe, exactly (no collation)."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, a: ColumnElement[Any], b: ColumnElement[Any]) -> None:
        self.a = a
        self.b = b

    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's own convention)
        ("a", InternalTraversal.dp_clauseelement),
        ("b", InternalTraversal.dp_clauseelement),
    ]

    @property
    def _from_objects(self) -> list[Any]:
        return [*self.a._from_objects, *self.b._from_objects]

    @property
    def textual(self) -> bool:
        return isinstance(self.a.type, String) or isinstance(self.b.type, String)


@compiles(_differs)
def _differs_default(element: _differs, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.a.is_distinct_from(element.b), **kw)


def _differs_mysql(element: _differs, compiler: SQLCompiler, **kw: Any) -> str:
    a = compiler.process(element.a, **kw)
    b = compiler.process(element.b, **kw)
    if element.textual:
        return f"NOT (CAST({a} AS BINARY) <=> CAST({b} AS BINARY))"
    return f"NOT ({a} <=> {b})"


compiles(_differs, "mysql")(_differs_mysql)
compiles(_differs, "mariadb")(_differs_mysql)


def differs(a: Any, b: Any) -> ColumnElement[bool]:
    """``a`` differs from ``b``: NULL-safe and exact on every dialect."""
    return _differs(a, b)


def same(a: Any, b: Any) -> ColumnElement[bool]:
    """``a`` equals ``b``: NULL-safe and exact on every dialect."""
    return ~_differs(a, b)


def row_differs(left: Sequence[Any], right: Sequence[Any]) -> ColumnElement[bool]:
    """Some column of ``left`` differs from its partner in ``right``."""
    parts = [differs(a, b) for a, b in zip(left, right)]
    return or_(*parts) if parts else false()


def same_row(left: Sequence[Any], right: Sequence[Any]) -> ColumnElement[bool]:
    """Every column of ``left`` equals its partner in ``right``."""
    return and_(*(same(a, b) for a, b in zip(left, right)))
