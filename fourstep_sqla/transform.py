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
queries (see :func:`fourstep_sqla.attribute.forward_index`), and the text a
migration freezes runs as it is, in a trigger or another tool: no function is
registered on the connection.

Exact built-ins
---------------
On SQLite, PostgreSQL and MariaDB/MySQL the Python and the SQL form of a
built-in accept the same values and give the same results; neither invents a
value where the other refuses. :meth:`Transform.cast` is exact for the
combinations its docstring lists, e.g. text to ``Integer()``::

    Transform.cast(int, Integer())    # " 42 " -> 42; "12abc", "3.9", "1_000" raise

A value a cast rejects raises: in Python ``ValueError`` (which the library
reports as :class:`~fourstep_sqla.errors.TransformError`), in SQL a database
error when the expression is evaluated, never NULL nor a guess:

- PostgreSQL: its own data exception (SQLSTATE class 22), e.g. ``invalid input
  syntax for type integer: "not a decimal integer: 12abc"`` or ``value
  "2147483648" is out of range for type integer``;
- SQLite, which cannot raise from an expression: ``integer overflow``, from
  ``abs((-9223372036854775807 - 1) + 0 * length(col))`` in the branch only a
  rejected value takes;
- MariaDB/MySQL: error 1690 ``BIGINT value is out of range in 'abs(...)'``
  (SQLSTATE 22003) from the same expression, in a ``SELECT`` as in an
  ``UPDATE``, whatever the SQL mode (the database's own ``CAST`` would only
  warn in a ``SELECT``, and take ``'12abc'`` for 12).

:meth:`Transform.split` finds separators by exact (binary) comparison on every
dialect, also on MariaDB/MySQL, whose own comparisons follow the column's
collation (case-insensitive, PAD SPACE); positions count characters. Text
containing NUL is outside what SQLite's and PostgreSQL's text functions handle.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from decimal import Decimal
from functools import reduce
from typing import Any, Generic, TypeVar, overload

from sqlalchemy import and_, case, func, literal, null, or_, type_coerce
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import Grouping
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import (
    BigInteger,
    Boolean,
    Enum,
    Float,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    TypeEngine,
)

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


def _const(value: Any) -> Any:
    """A constant rendered inline (not a bound parameter), for index matching."""
    return literal(value, literal_execute=True)


# -- exact text comparisons ---------------------------------------------------
# SQLite's instr() and PostgreSQL's strpos() compare exactly; MariaDB/MySQL
# compare by the column's collation (case-insensitive, PAD SPACE: 'x' finds 'X',
# ' ' equals ''), so their forms below compare utf8mb4 text in binary.
_MYSQL = ("mysql", "mariadb")


def _mysql_binary(sql: str) -> str:
    """Text compared code point by code point, still counted in characters."""
    return f"CONVERT({sql} USING utf8mb4) COLLATE utf8mb4_bin"


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


@compiles(_position, *_MYSQL)
def _position_mysql(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return (
        f"locate({_mysql_binary(compiler.process(needle, **kw))}, "
        f"{_mysql_binary(compiler.process(haystack, **kw))})"
    )


class _empty_to_null(FunctionElement[Any]):
    """``value``, or NULL when it is the empty string (a space is not empty)."""

    inherit_cache = True
    name = "nullif"

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.type = value.type


@compiles(_empty_to_null)
def _empty_to_null_default(element: _empty_to_null, compiler: SQLCompiler, **kw: Any) -> str:
    (value,) = list(element.clauses)
    return compiler.process(func.nullif(value, _const("")), **kw)


@compiles(_empty_to_null, *_MYSQL)
def _empty_to_null_mysql(element: _empty_to_null, compiler: SQLCompiler, **kw: Any) -> str:
    # nullif(x, '') compares by x's collation, and PAD SPACE makes ' ' equal ''
    (value,) = list(element.clauses)
    expression = case((func.char_length(value) > _const(0), value), else_=null())
    return compiler.process(expression, **kw)


class _not_only_separators(FunctionElement[bool]):
    """``text`` is not ``separator`` repeated fewer than ``parts`` times ('' included)."""

    type = Boolean()
    inherit_cache = True
    name = "not_only_separators"
    _is_implicitly_boolean = True  # a condition as it is: no "= 1" where booleans are ints
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's cache key, as in its own classes)
        *FunctionElement._traverse_internals,
        ("separator", InternalTraversal.dp_string),
        ("parts", InternalTraversal.dp_plain_obj),
    ]

    def __init__(self, text: Any, separator: str, parts: int) -> None:
        super().__init__(text)
        self.separator = separator
        self.parts = parts


@compiles(_not_only_separators)
def _not_only_separators_default(
    element: _not_only_separators, compiler: SQLCompiler, **kw: Any
) -> str:
    (text,) = list(element.clauses)
    repeated = [_const(element.separator * k) for k in range(element.parts)]
    return compiler.process(text.not_in(repeated), **kw)


@compiles(_not_only_separators, *_MYSQL)
def _not_only_separators_mysql(
    element: _not_only_separators, compiler: SQLCompiler, **kw: Any
) -> str:
    # REPLACE() matches exactly (case and spaces count); what is left is not
    # separators, or there are at least ``parts`` of them
    (text,) = list(element.clauses)
    left = func.char_length(func.replace(text, _const(element.separator), _const("")))
    long_enough = func.char_length(text) >= _const(element.parts * len(element.separator))
    return compiler.process(or_(left > _const(0), long_enough).self_group(), **kw)


# -- exact casts from text ----------------------------------------------------
#: Around a number every cast skips C's isspace() set, which is Python's
#: ``string.whitespace``: what PostgreSQL's own input functions skip, too.
_WHITESPACE = " \t\n\x0b\x0c\r"
_INTEGER_TEXT = re.compile(f"[{_WHITESPACE}]*([-+]?)([0-9]+)[{_WHITESPACE}]*")
_DECIMAL_TEXT = re.compile(f"[{_WHITESPACE}]*([-+]?)([0-9]*)(?:[.]([0-9]*))?[{_WHITESPACE}]*")
#: the MariaDB/MySQL patterns hold the characters themselves: a backslash
#: escape would depend on the server's NO_BACKSLASH_ESCAPES mode
_MYSQL_WHITESPACE = f"[{_WHITESPACE}]"


def _integer_bits(target: TypeEngine[Any]) -> int:
    """16, 32 or 64: the range of ``target`` (any other integer type: Integer's)."""
    if isinstance(target, SmallInteger):
        return 16
    if isinstance(target, BigInteger):
        return 64
    return 32


def _parse_integer(value: str, bits: int) -> int:
    """The Python form of text -> integer, the grammar the SQL forms test."""
    match = _INTEGER_TEXT.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a decimal integer")
    sign, digits = match.groups()
    high = 2 ** (bits - 1) - 1
    # lengths first: a megabyte of digits is out of range (and int() refuses
    # more than 4300 digits, even zeros before a 1)
    magnitude = digits.lstrip("0") or "0"
    if len(magnitude) > len(str(high)) or not -high - 1 <= int(sign + magnitude) <= high:
        raise ValueError(f"{value!r} is out of range for a {bits}-bit integer")
    return int(sign + magnitude)


def _parse_decimal(value: str, precision: int, scale: int) -> Decimal:
    """The Python form of text -> NUMERIC(precision, scale): exact or an error."""
    match = _DECIMAL_TEXT.fullmatch(value)
    if match is None or not (match.group(2) or match.group(3)):
        raise ValueError(f"{value!r} is not a plain decimal number")
    sign, whole, fraction = match.group(1), match.group(2).lstrip("0"), match.group(3) or ""
    fraction = fraction.rstrip("0")
    if len(fraction) > scale:
        raise ValueError(
            f"{value!r} has more than {scale} decimals: "
            f"NUMERIC({precision}, {scale}) would round it"
        )
    if len(whole) > precision - scale:
        raise ValueError(f"{value!r} is out of range for NUMERIC({precision}, {scale})")
    if not whole and not fraction:
        sign = ""  # no negative zero: the databases have none
    digits = f"{sign}{whole or '0'}"
    return Decimal(f"{digits}.{fraction.ljust(scale, '0')}" if scale else digits)


def _overflow(text: Any, length: Any) -> Any:
    """An expression that raises a data error when it is evaluated on a text.

    SQLite: ``integer overflow``; MariaDB/MySQL: error 1690 (SQLSTATE 22003).
    NULL stays NULL (``0 * length(NULL)`` is NULL), so the CASE needs no ``IS
    NULL`` branch, which SQLite 3.40 gets wrong in ``UPDATE ... RETURNING``; and
    an expression of the column is never evaluated ahead as a constant.
    """
    return func.abs(
        _const(-9223372036854775807) - _const(1) + _const(0) * length(text)
    )


def _digits_within(length: Any, digits: Any, negative: Any, bits: int) -> Any:
    """``digits`` (no sign, no leading zero) fit a ``bits``-bit integer.

    Compares lengths and digit strings, never REAL values: 9223372036854775807
    and ...808 are the same double.
    """
    high = str(2 ** (bits - 1) - 1)
    low = str(2 ** (bits - 1))  # the magnitude of the lowest value
    bound = case((negative, _const(low)), else_=_const(high))
    return or_(
        length(digits) < _const(len(high)),
        and_(length(digits) == _const(len(high)), digits <= bound),
    )


class _exact_cast(FunctionElement[Any]):
    """``CAST(text AS type)`` that accepts exactly what the Python form accepts."""

    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's cache key: the target type)
        *FunctionElement._traverse_internals,
        ("type", InternalTraversal.dp_type),
    ]

    def __init__(self, text: Any, target: TypeEngine[Any]) -> None:
        super().__init__(text)
        self.type = target

    @property
    def text(self) -> Any:
        return next(iter(self.clauses))

    def self_group(self, against: Any = None) -> Any:
        # it renders as CASE ... END, which (unlike a function call) an index on
        # PostgreSQL takes only in parentheses; SQLAlchemy takes it for atomic
        return Grouping(self) if against is None else self


class _text_to_integer(_exact_cast):
    inherit_cache = True
    name = "text_to_integer"


class _text_to_decimal(_exact_cast):
    inherit_cache = True
    name = "text_to_decimal"


@compiles(_text_to_integer)
@compiles(_text_to_decimal)
def _exact_cast_default(element: _exact_cast, compiler: SQLCompiler, **kw: Any) -> str:
    # dialects without an exact form: the database's own CAST
    return compiler.process(sql_cast(element.text, element.type), **kw)


# SQLite: trim(), GLOB and lengths; the rejected branch overflows.
def _sqlite_trimmed(text: Any) -> Any:
    return func.trim(text, func.char(*(_const(ord(c)) for c in _WHITESPACE)))


def _glob(value: Any, pattern: str, negate: bool = False) -> Any:
    return value.op("NOT GLOB" if negate else "GLOB")(_const(pattern))


@compiles(_text_to_integer, "sqlite")
def _text_to_integer_sqlite(element: _exact_cast, compiler: SQLCompiler, **kw: Any) -> str:
    text = element.text
    trimmed = _sqlite_trimmed(text)
    syntax = and_(
        _glob(trimmed, "*[0-9]"),
        _glob(func.substr(trimmed, _const(1), _const(1)), "[-+0-9]"),
        _glob(func.substr(trimmed, _const(2)), "*[^0-9]*", negate=True),
    )
    digits = func.ltrim(trimmed, _const("+-0"))
    fits = _digits_within(func.length, digits, _glob(trimmed, "-*"), _integer_bits(element.type))
    expression = case(
        (and_(syntax, fits), sql_cast(trimmed, element.type)),
        else_=_overflow(text, func.length),
    )
    return compiler.process(expression, **kw)


@compiles(_text_to_decimal, "sqlite")
def _text_to_decimal_sqlite(element: _exact_cast, compiler: SQLCompiler, **kw: Any) -> str:
    text = element.text
    target = element.type
    assert isinstance(target, Numeric)
    precision, scale = target.precision or 0, target.scale or 0
    trimmed = _sqlite_trimmed(text)
    syntax = and_(
        _glob(trimmed, "*[0-9]*"),
        _glob(func.substr(trimmed, _const(1), _const(1)), "[-+.0-9]"),
        _glob(func.substr(trimmed, _const(2)), "*[^.0-9]*", negate=True),
        _glob(trimmed, "*.*.*", negate=True),
    )
    # with a point appended, the first point ends the whole part (and never fails)
    marked = trimmed.concat(_const("."))
    point = func.instr(marked, _const("."))
    whole = func.ltrim(func.substr(marked, _const(1), point - _const(1)), _const("+-0"))
    fraction = func.rtrim(func.substr(marked, point + _const(1)), _const(".0"))
    fits = and_(
        func.length(whole) <= _const(precision - scale),
        func.length(fraction) <= _const(scale),
    )
    expression = case(
        (and_(syntax, fits), sql_cast(trimmed, target)),
        else_=_overflow(text, func.length),
    )
    return compiler.process(expression, **kw)


# PostgreSQL: a regular expression guards its own CAST (exact on range and
# scale), and a rejected value goes to its own CAST with a prefix no version
# of the input functions accepts (16 takes '1_000' and '0x1F' as integers).
def _postgresql_trimmed(text: Any) -> Any:
    whitespace = reduce(
        lambda left, right: left.concat(right),
        [_const(" "), *(func.chr(_const(ord(c))) for c in _WHITESPACE[1:])],
    )
    return func.btrim(text, whitespace)


@compiles(_text_to_integer, "postgresql")
def _text_to_integer_postgresql(element: _exact_cast, compiler: SQLCompiler, **kw: Any) -> str:
    text = element.text
    syntax = _postgresql_trimmed(text).op("~")(_const("^[-+]?[0-9]+$"))
    rejected = sql_cast(_const("not a decimal integer: ").concat(text), element.type)
    expression = case((syntax, sql_cast(text, element.type)), else_=rejected)
    return compiler.process(expression, **kw)


@compiles(_text_to_decimal, "postgresql")
def _text_to_decimal_postgresql(element: _exact_cast, compiler: SQLCompiler, **kw: Any) -> str:
    text = element.text
    target = element.type
    assert isinstance(target, Numeric)
    syntax = _postgresql_trimmed(text).op("~")(_const("^[-+]?([0-9]+([.][0-9]*)?|[.][0-9]+)$"))
    value = sql_cast(text, target)
    # the assignment to numeric(p, s) rounds: accept only what it keeps as it is
    unrounded = sql_cast(text, Numeric()) == value
    label = f"not an exact numeric({target.precision}, {target.scale}): "
    rejected = sql_cast(_const(label).concat(text), Numeric())
    expression = case((and_(syntax, unrounded), value), else_=rejected)
    return compiler.process(expression, **kw)


# MariaDB/MySQL: regular expressions (PCRE on MariaDB, ICU on MySQL 8) on the
# raw text; the rejected branch overflows, so a SELECT raises as an UPDATE does.
def _mysql_regexp(text: Any, pattern: str) -> Any:
    return text.op("REGEXP")(_const(pattern))


def _mysql_unspaced(text: Any) -> Any:
    return func.regexp_replace(text, _const(_MYSQL_WHITESPACE), _const(""))


@compiles(_text_to_integer, *_MYSQL)
def _text_to_integer_mysql(element: _exact_cast, compiler: SQLCompiler, **kw: Any) -> str:
    text = element.text
    space = _MYSQL_WHITESPACE
    syntax = _mysql_regexp(text, f"^{space}*[-+]?[0-9]+{space}*$")
    # valid text less its leading spaces, sign and zeros, and its trailing spaces
    digits = func.regexp_replace(text, _const("^[^1-9]+|[^0-9]"), _const(""))
    negative = func.locate(_const("-"), text) > _const(0)
    fits = _digits_within(func.char_length, digits, negative, _integer_bits(element.type))
    expression = case(
        (and_(syntax, fits), sql_cast(_mysql_unspaced(text), element.type)),
        else_=_overflow(text, func.char_length),
    )
    return compiler.process(expression, **kw)


@compiles(_text_to_decimal, *_MYSQL)
def _text_to_decimal_mysql(element: _exact_cast, compiler: SQLCompiler, **kw: Any) -> str:
    text = element.text
    target = element.type
    assert isinstance(target, Numeric)
    precision, scale = target.precision or 0, target.scale or 0
    space = _MYSQL_WHITESPACE
    # at most precision - scale digits before the point (leading zeros aside) and
    # scale after it (trailing zeros aside): what DECIMAL(p, s) keeps unrounded
    exact = (
        f"^{space}*[-+]?0*[0-9]{{0,{precision - scale}}}([.][0-9]{{0,{scale}}}0*)?{space}*$"
    )
    syntax = and_(_mysql_regexp(text, exact), _mysql_regexp(text, "[0-9]"))
    expression = case(
        (syntax, sql_cast(_mysql_unspaced(text), target)),
        else_=_overflow(text, func.char_length),
    )
    return compiler.process(expression, **kw)


def _exact_integer(python: Any, target: TypeEngine[Any]) -> bool:
    return python is int and isinstance(target, Integer)


def _exact_decimal(python: Any, target: TypeEngine[Any]) -> bool:
    return (
        python is Decimal
        and isinstance(target, Numeric)
        and not isinstance(target, Float)
        and target.asdecimal
        and target.precision is not None
        and target.scale is not None
        and 0 <= target.scale <= target.precision
    )


def _unbounded_text(target: TypeEngine[Any]) -> TypeEngine[Any] | None:
    """The text type to CAST to for ``target``, without its length (None: not text).

    ``CAST(x AS VARCHAR(10))`` truncates silently on PostgreSQL (and MySQL); an
    unbounded CAST lets the assignment to a short column raise instead.
    """
    if not isinstance(target, String) or isinstance(target, Enum):
        return None
    return Text() if isinstance(target, Text) else String()


def _is_text(expression: Any) -> bool:
    return isinstance(getattr(expression, "type", None), String)


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

        Exact on SQLite, PostgreSQL and MariaDB/MySQL (both forms accept the
        same values with the same results, and both reject the rest: Python
        raises ``ValueError``, SQL a database error, see the module docs):

        - ``Transform.cast(int, SmallInteger() | Integer() | BigInteger())``
          from a text column (a ``String`` type): optional whitespace (space,
          tab, newline, vertical tab, form feed, carriage return), an optional
          sign, ASCII digits, optional whitespace, within the range of the
          *target* type (16, 32, 64 bits; ``Integer()`` is 32-bit on SQLite
          too, any other integer type is held to ``Integer``'s range).
          Rejected: everything else, e.g. ``''``, ``'12abc'``, ``'3.9'``,
          ``'1_000'``, ``'0x1F'``, ``'1e3'``, Unicode digits or spaces, and
          values out of range, which Python's ``int()`` or the database's own
          ``CAST`` would take or round.
        - ``Transform.cast(str, Text() | String(n))`` from an integer column:
          ``str(5) == '5'``. The SQL casts to text *without* the length
          (``CAST(x AS VARCHAR)``; ``CAST(x AS CHAR)`` on MySQL), so a value
          too long for the new column raises where it is stored (PostgreSQL,
          MariaDB in strict mode) instead of being truncated; the Python form
          does not know that length. From a text column it is exact as well.
        - ``Transform.cast(Decimal, Numeric(p, s))`` from a text column: a
          plain decimal number (optional whitespace and sign, digits with an
          optional point: ``'12'``, ``'-1.50'``, ``'.5'``, ``'5.'``) that
          ``NUMERIC(p, s)`` holds without rounding: at most ``s`` decimals
          (trailing zeros aside) and ``p - s`` digits before the point. The
          result has ``s`` decimals (``Decimal('1.50')``). Rejected: exponents,
          NaN, Infinity, underscores, ``'1.005'`` for ``Numeric(12, 2)`` (which
          PostgreSQL's assignment would round to 1.01). On SQLite, which stores
          REAL, exact up to ``p = 15``.

        Any other combination (another ``python`` callable, a source column
        that is not text for ``int``/``Decimal``, floats, booleans, dates,
        ``Numeric`` without precision and scale, ``Enum``) is the plain
        ``python(value)`` and ``CAST(col AS sql_type)``, which may disagree:
        ``int(3.9)`` is 3 where PostgreSQL's ``CAST(3.9 AS INTEGER)`` is 4,
        and SQLite's ``CAST('x' AS INTEGER)`` is 0.
        """
        target_type = sql_type() if isinstance(sql_type, type) else sql_type
        name = f"cast_{getattr(python, '__name__', 'value')}"

        if _exact_integer(python, target_type):
            bits = _integer_bits(target_type)

            def convert(value: Any, /) -> Any:
                return _parse_integer(value, bits) if isinstance(value, str) else python(value)

            def cast_sql(column: Any, /) -> Any:
                if _is_text(column):
                    return _text_to_integer(column, target_type)
                return sql_cast(column, target_type)

        elif _exact_decimal(python, target_type):
            assert isinstance(target_type, Numeric)
            precision, scale = target_type.precision or 0, target_type.scale or 0

            def convert(value: Any, /) -> Any:
                if isinstance(value, str):
                    return _parse_decimal(value, precision, scale)
                return python(value)

            def cast_sql(column: Any, /) -> Any:
                if _is_text(column):
                    return _text_to_decimal(column, target_type)
                return sql_cast(column, target_type)

        else:
            unbounded = _unbounded_text(target_type) if python is str else None

            def convert(value: Any, /) -> Any:
                return python(value)

            def cast_sql(column: Any, /) -> Any:
                if unbounded is not None:
                    return type_coerce(sql_cast(column, unbounded), target_type)
                return sql_cast(column, target_type)

        convert.__name__ = convert.__qualname__ = name
        # a rejected value raises rather than becoming NULL: never empty
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
                results.append(_empty_to_null(head))
                rest = tail
            results.append(_empty_to_null(rest))
            return tuple(results)

        def split_present(column: Any, /) -> list[Any]:
            # every piece is empty only for '', sep, sep+sep, ... (parts - 1 of them)
            return [_not_only_separators(column, separator, parts)]

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
            # coalesce, not CASE ... IS NULL: SQLite 3.40 evaluates IS NULL wrongly
            # in UPDATE ... RETURNING; NULL || x is NULL on every dialect
            result: Any = columns[0]
            for column in columns[1:]:
                result = func.coalesce(
                    result.concat(_const(separator)).concat(column), result, column
                )
            return result

        # some source is not NULL, so the join is not empty
        transform = Transform[str | None](join, join_sql, name="join", present=_never_empty)
        transform._builtin = ("join", (separator,))
        return transform
