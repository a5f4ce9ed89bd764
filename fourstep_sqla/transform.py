"""Transforms: how values move between the old and the new place.

A :class:`Transform` pairs a Python callable with an optional SQL callable.
Both take the *source* value(s) positionally, one argument per source column,
and return the target value, or a tuple when the target has several columns::

    def split_name(name: str) -> tuple[str, str | None]:
        first, _, last = name.partition(" ")
        return first, last or None

    forward = Transform(split_name, sql=split_name_sql)

The SQL callable receives column expressions and returns SQLAlchemy
expressions; with it, queries on the phased attribute and the backfill run in
the database. Without it everything still works in Python, and the library
says so where a SQL form is required (filtering on the attribute in steps 1-2).

``None`` passes through: when *every* source value is ``None`` the result is
``None`` (or a tuple of ``None``) and the callable is not called. When only
some sources are ``None`` the callable is called, as dropping the others
would lose data. The SQL callable is used as given, so it should yield NULL
for NULL input, as most SQL functions do.

Built-ins: :meth:`Transform.identity` (a rename), :meth:`Transform.cast`
(a type change), :meth:`Transform.split` and :meth:`Transform.join` (one text
column into several at a separator, and back). Their SQL renders constants
inline, so an expression index built from the same transform matches the
queries (see :func:`fourstep_sqla.attribute.forward_index`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from sqlalchemy import case, func, literal
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Integer, TypeEngine

__all__ = ["Transform"]

T = TypeVar("T")


def _positional_arity(func: Callable[..., Any]) -> tuple[int, int | None]:
    """Minimum and maximum (None: unbounded) positional arguments of ``func``."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return 0, None
    low = 0
    high: int | None = 0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            if param.default is param.empty:
                low += 1
            if high is not None:
                high += 1
        elif param.kind is param.VAR_POSITIONAL:
            high = None
    return low, high


def _accepts(func: Callable[..., Any], count: int) -> bool:
    low, high = _positional_arity(func)
    return low <= count and (high is None or count <= high)


class _position(FunctionElement[int]):
    """1-based position of ``needle`` in ``haystack``, 0 when absent."""

    type = Integer()
    inherit_cache = True
    name = "position"


@compiles(_position)
def _position_default(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)})"


@compiles(_position, "postgresql")
def _position_postgresql(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"strpos({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)})"


def _const(value: Any) -> Any:
    """A constant rendered inline (not a bound parameter), for index matching."""
    return literal(value, literal_execute=True)


def _never_empty(*columns: Any) -> list[Any]:
    return []


def _reference(func: Callable[..., Any]) -> str | None:
    """``"module:qualname"`` of an importable function, else None."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}:{qualname}"


class Transform(Generic[T]):
    """A conversion from source value(s) to target value(s).

    :param python: callable taking the source values positionally.
    :param sql: optional callable taking source column expressions and
        returning a SQL expression (or a tuple of them).
    :param name: a label for messages and generated migrations; defaults to
        the Python callable's name.
    :param present: optional, with ``sql``: a callable taking the source
        column expressions and returning a list of cheap SQL conditions that
        together say ``sql(...)`` is not all NULL, wherever some source is not
        NULL (``[]``: it never is). The backfill uses it to leave alone rows
        whose result is empty without evaluating the transform twice per row;
        see :meth:`present_sql`.
    """

    __slots__ = ("_builtin", "_present", "name", "python", "sql")

    python: Callable[..., T]
    sql: Callable[..., Any] | None
    name: str

    def __init__(
        self,
        python: Callable[..., T],
        sql: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        present: Callable[..., list[Any]] | None = None,
    ) -> None:
        if not callable(python):
            raise TypeError(f"Transform() needs a callable, got {python!r}")
        if sql is not None and not callable(sql):
            raise TypeError(f"Transform(sql=...) needs a callable or None, got {sql!r}")
        self.python = python
        self.sql = sql
        self.name = name or getattr(python, "__name__", None) or repr(python)
        self._builtin: tuple[str, tuple[Any, ...]] | None = None
        #: see :meth:`present_sql`; None: unknown, evaluate the transform
        self._present: Callable[..., list[Any]] | None = present

    def __repr__(self) -> str:
        form = "python+sql" if self.sql is not None else "python only"
        return f"Transform({self.name}, {form})"

    @property
    def has_sql(self) -> bool:
        """Whether the transform can run in the database."""
        return self.sql is not None

    @property
    def reference(self) -> str | None:
        """``"module:function"`` of the Python callable, when importable."""
        return _reference(self.python)

    @property
    def builtin(self) -> tuple[str, tuple[Any, ...]] | None:
        """``(name, args)`` for built-in transforms, None for user ones."""
        return self._builtin

    def present_sql(self, *columns: Any) -> list[Any] | None:
        """Cheap SQL conditions that ``sql(*columns)`` is not all NULL.

        Valid where some source column is known not to be NULL (the backfill's
        pending predicate says so). An empty list: nothing to add (a rename, a
        cast or a join of non-NULL sources is never NULL); None: no shortcut is
        known, test the transform's own SQL. The built-ins know theirs, which
        spares the backfill a second evaluation of the transform per row (about
        6% of a batch on PostgreSQL).
        """
        return None if self._present is None else self._present(*columns)

    def accepts(self, count: int) -> bool:
        """Whether both callables take ``count`` positional source values."""
        if not _accepts(self.python, count):
            return False
        return self.sql is None or _accepts(self.sql, count)

    # -- built-ins ----------------------------------------------------------
    @overload
    @classmethod
    def identity(cls) -> Transform[Any]: ...

    @overload
    @classmethod
    def identity(cls, python_type: type[T]) -> Transform[T]: ...

    @classmethod
    def identity(cls, python_type: type[Any] | None = None) -> Transform[Any]:
        """The value unchanged: a rename (``mail`` -> ``email``).

        ``python_type`` only informs type checkers of the value type.
        """

        def identity(value: Any, /) -> Any:
            return value

        def identity_sql(column: Any, /) -> Any:
            return column

        transform: Transform[Any] = cls(
            identity, identity_sql, name="identity", present=_never_empty
        )
        transform._builtin = ("identity", ())
        return transform

    @classmethod
    def cast(
        cls, python: Callable[[Any], T], sql_type: TypeEngine[Any] | type[TypeEngine[Any]]
    ) -> Transform[T]:
        """A type change: ``python(value)`` in Python, ``CAST(col AS sql_type)`` in SQL.

        E.g. ``Transform.cast(int, Integer())`` for a text column holding
        numbers, and ``Transform.cast(str, Text())`` back.
        """
        target_type = sql_type() if isinstance(sql_type, type) else sql_type

        def cast_sql(column: Any, /) -> Any:
            return sql_cast(column, target_type)

        name = f"cast_{getattr(python, '__name__', 'value')}"

        def convert(value: Any, /) -> T:
            return python(value)

        convert.__name__ = convert.__qualname__ = name
        # CAST of a value is a value (or an error): never empty
        transform = cls(convert, cast_sql, name=name, present=_never_empty)
        transform._builtin = ("cast", (python, target_type))
        return transform

    @classmethod
    def split(cls, separator: str = " ", parts: int = 2) -> Transform[tuple[str | None, ...]]:
        """One text value into ``parts`` values at the first ``parts - 1`` separators.

        ``"Ada Lovelace"`` -> ``("Ada", "Lovelace")``; ``"Cher"`` -> ``("Cher", None)``;
        ``"Mary Ann Smith"`` -> ``("Mary", "Ann Smith")`` with two parts. An empty
        piece becomes None.
        """
        if not separator or parts < 2:
            raise ValueError("Transform.split() needs a non-empty separator and parts >= 2")

        def split(value: str, /) -> tuple[str | None, ...]:
            pieces = value.split(separator, parts - 1)
            pieces += [""] * (parts - len(pieces))
            return tuple(p or None for p in pieces)

        def split_sql(column: Any, /) -> tuple[Any, ...]:
            sep = _const(separator)
            width = _const(len(separator))
            results: list[Any] = []
            rest: Any = column
            for _ in range(parts - 1):
                pos = _position(rest, sep)
                head = case(
                    (pos > _const(0), func.substr(rest, _const(1), pos - _const(1))),
                    else_=rest,
                )
                tail = case((pos > _const(0), func.substr(rest, pos + width)), else_=None)
                results.append(func.nullif(head, _const("")))
                rest = tail
            results.append(func.nullif(rest, _const("")))
            return tuple(results)

        def split_present(column: Any, /) -> list[Any]:
            # every piece is empty only for '', sep, sep+sep, ... (parts - 1 of them)
            return [column.not_in([_const(separator * k) for k in range(parts)])]

        transform = Transform[tuple[str | None, ...]](
            split, split_sql, name="split", present=split_present
        )
        transform._builtin = ("split", (separator, parts))
        return transform

    @classmethod
    def join(cls, separator: str = " ") -> Transform[str | None]:
        """Several text values into one, ``separator`` between the non-None ones.

        The inverse of :meth:`split` for values without empty pieces.
        """

        def join(*values: str | None) -> str | None:
            present = [v for v in values if v is not None]
            return separator.join(present) if present else None

        def join_sql(*columns: Any) -> Any:
            result: Any = columns[0]
            for column in columns[1:]:
                result = case(
                    (result.is_(None), column),
                    (column.is_(None), result),
                    else_=result.concat(_const(separator)).concat(column),
                )
            return result

        # some source is not NULL, so the join is not empty
        transform = Transform[str | None](join, join_sql, name="join", present=_never_empty)
        transform._builtin = ("join", (separator,))
        return transform
