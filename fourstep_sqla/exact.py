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
from sqlalchemy.sql import coercions, roles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean, String

__all__ = ["differs", "row_differs", "same", "same_row"]


class _exact(ColumnElement[bool]):
    """``a`` and ``b`` are the same (``equal``) or differ: NULL-safe, exact."""

    inherit_cache = True
    type = Boolean()
    #: a comparison already: never rendered as ``(...) = 1`` in a WHERE
    _is_implicitly_boolean = True

    def __init__(self, a: Any, b: Any, equal: bool) -> None:
        self.a = coercions.expect(roles.ExpressionElementRole, a)
        self.b = coercions.expect(roles.ExpressionElementRole, b)
        self.equal = equal

    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's own convention)
        ("a", InternalTraversal.dp_clauseelement),
        ("b", InternalTraversal.dp_clauseelement),
        ("equal", InternalTraversal.dp_boolean),
    ]

    @property
    def _from_objects(self) -> list[Any]:
        return [*self.a._from_objects, *self.b._from_objects]

    def _negate(self) -> ColumnElement[bool]:
        return _exact(self.a, self.b, not self.equal)

    @property
    def textual(self) -> bool:
        return isinstance(self.a.type, String) or isinstance(self.b.type, String)


@compiles(_exact)
def _exact_default(element: _exact, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = compiler.process(element.a, **kw), compiler.process(element.b, **kw)
    return f"({a} IS {'NOT ' if element.equal else ''}DISTINCT FROM {b})"


@compiles(_exact, "sqlite")
def _exact_sqlite(element: _exact, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = compiler.process(element.a, **kw), compiler.process(element.b, **kw)
    return f"({a} IS {'' if element.equal else 'NOT '}{b})"


def _exact_mysql(element: _exact, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = compiler.process(element.a, **kw), compiler.process(element.b, **kw)
    if element.textual:
        a, b = f"CAST({a} AS BINARY)", f"CAST({b} AS BINARY)"
    return f"({a} <=> {b})" if element.equal else f"(NOT ({a} <=> {b}))"


compiles(_exact, "mysql")(_exact_mysql)
compiles(_exact, "mariadb")(_exact_mysql)


def differs(a: Any, b: Any) -> ColumnElement[bool]:
    """``a`` differs from ``b``: NULL-safe and exact on every dialect."""
    return _exact(a, b, equal=False)


def same(a: Any, b: Any) -> ColumnElement[bool]:
    """``a`` equals ``b``: NULL-safe and exact on every dialect."""
    return _exact(a, b, equal=True)


def row_differs(left: Sequence[Any], right: Sequence[Any]) -> ColumnElement[bool]:
    """Some column of ``left`` differs from its partner in ``right``."""
    parts = [differs(a, b) for a, b in zip(left, right)]
    return or_(*parts) if parts else false()


def same_row(left: Sequence[Any], right: Sequence[Any]) -> ColumnElement[bool]:
    """Every column of ``left`` equals its partner in ``right``."""
    return and_(*(same(a, b) for a, b in zip(left, right)))
