"""The built-ins' Python and SQL forms agree on every value, per dialect.

For each built-in transform (identity, cast, split, join) and each database
(SQLite, PostgreSQL, MariaDB/MySQL), hypothesis draws source values. The Python
form runs in Python; the SQL form runs in the database over a one-row temporary
table whose columns have the source types (so MariaDB's column collation, case-
insensitive and PAD SPACE, is the one a real table has). Both must accept with
equal results, or both must reject:

- Python raises ``ValueError`` (the library wraps it in ``TransformError``);
- the database raises an error of the data class: SQLite "integer overflow",
  PostgreSQL SQLSTATE 22xxx, MariaDB/MySQL error 1690 (SQLSTATE 22003), in a
  ``SELECT`` and in an ``UPDATE``.

Any other database error (a syntax error in the rendered SQL, say) fails the
test instead of counting as a rejection. Every measured case of the original
report is an explicit ``@example``. One connection per test, inside a
transaction that is rolled back; the whole file runs in well under a minute.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeEngine

from fourstep_sqla import Transform

DIALECTS = [
    pytest.param("sqlite"),
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]
_ENGINE_FIXTURE = {
    "sqlite": "sqlite_engine", "postgresql": "pg_schema_engine", "mysql": "mysql_db_engine",
}

# FOURSTEP_EXACT_EXAMPLES=5000 for a long hunt; the default keeps the file quick
EXACT = settings(
    max_examples=int(os.environ.get("FOURSTEP_EXACT_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# The database errors that mean "the value was rejected" (anything else fails the test).
_MYSQL_DATA_ERRORS = {1264, 1292, 1406, 1690}  # all SQLSTATE 22xxx


def _rejection(dialect: str, exc: DBAPIError) -> str:
    """The message of a data error, or re-raise: a rejection must be one."""
    orig = exc.orig
    if dialect == "sqlite":
        if isinstance(orig, sqlite3.OperationalError) and str(orig) == "integer overflow":
            return str(orig)
    elif dialect == "postgresql":
        if str(getattr(orig, "sqlstate", "")).startswith("22"):
            return str(orig).splitlines()[0]
    elif dialect == "mysql":
        args = getattr(orig, "args", ())
        if args and args[0] in _MYSQL_DATA_ERRORS:
            return f"{args[0]}: {args[1]}"
    raise exc


Outcome = tuple[str, tuple[Any, ...]]  # ("ok", values) or ("rejected", (message,))


def _python(transform: Transform[Any], values: Sequence[Any], width: int) -> Outcome:
    """What the library computes in Python (None passes through uncalled)."""
    if all(v is None for v in values):
        return ("ok", (None,) * width)
    try:
        result = transform.python(*values)
    except ValueError as exc:
        return ("rejected", (str(exc),))
    return ("ok", result if isinstance(result, tuple) else (result,))


class Probe:
    """A one-row temporary table on one connection: evaluates SQL forms on values."""

    def __init__(
        self,
        conn: Connection,
        sources: Sequence[TypeEngine[Any]],
        targets: Sequence[TypeEngine[Any]] = (),
        name: str = "fx_probe",
    ) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.table = Table(
            name,
            MetaData(),
            Column("id", Integer, primary_key=True, autoincrement=False),
            *(Column(f"s{i}", t) for i, t in enumerate(sources)),
            *(Column(f"t{i}", t) for i, t in enumerate(targets)),
            prefixes=["TEMPORARY"],
        )
        self.table.create(conn)
        conn.execute(insert(self.table).values(id=1))
        self.sources = [self.table.c[f"s{i}"] for i in range(len(sources))]
        self.targets = [self.table.c[f"t{i}"] for i in range(len(targets))]

    def _set(self, values: Sequence[Any]) -> None:
        self.conn.execute(
            update(self.table).values({c.name: v for c, v in zip(self.sources, values)})
        )

    def _attempt(self, statement: Any) -> tuple[bool, Any]:
        try:
            with self.conn.begin_nested():
                return True, self.conn.execute(statement)
        except DBAPIError as exc:
            return False, _rejection(self.dialect, exc)

    def select(self, expressions: Sequence[Any], values: Sequence[Any]) -> Outcome:
        """``SELECT expressions FROM probe`` with the source columns set to ``values``."""
        self._set(values)
        ok, result = self._attempt(select(*expressions))
        return ("ok", tuple(result.one())) if ok else ("rejected", (result,))

    def store(self, expressions: Sequence[Any], values: Sequence[Any]) -> Outcome:
        """``UPDATE probe SET targets = expressions``, then the targets read back."""
        self._set(values)
        assignment = {t.name: e for t, e in zip(self.targets, expressions)}
        ok, result = self._attempt(update(self.table).values(assignment))
        if not ok:
            return ("rejected", (result,))
        return ("ok", tuple(self.conn.execute(select(*self.targets)).one()))

    def sql(self, transform: Transform[Any], values: Sequence[Any]) -> Outcome:
        assert transform.sql is not None
        result = transform.sql(*self.sources[: len(values)])
        return self.select(result if isinstance(result, tuple) else (result,), values)


def _same(python: Outcome, sql: Outcome, what: Any) -> None:
    assert python[0] == sql[0], (what, python, sql)
    if python[0] == "ok":
        assert python[1] == sql[1], (what, python, sql)
        # equal and of the same kind: 5 is not '5', Decimal('5') is not 5.0
        assert [type(v) for v in python[1]] == [type(v) for v in sql[1]], (what, python, sql)


@pytest.fixture(params=DIALECTS)
def conn(request: pytest.FixtureRequest) -> Iterator[Connection]:
    """One connection per test, in a transaction rolled back at the end."""
    engine: Engine = request.getfixturevalue(_ENGINE_FIXTURE[request.param])
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()
            # MariaDB's temporary tables outlive the rollback (and the pool keeps them)
            for probe in connection.info.pop("fx_probes", {}).values():
                probe.table.drop(connection, checkfirst=True)
            if connection.in_transaction():
                connection.commit()


def _probe(conn: Connection, key: str, *args: Any) -> Probe:
    """The test's probe table ``fx_<key>``, created on the first example."""
    probes: dict[str, Probe] = conn.info.setdefault("fx_probes", {})
    if key not in probes:
        probes[key] = Probe(conn, *args, name=f"fx_{key}")
    return probes[key]


def _scratch(conn: Connection, *args: Any) -> Probe:
    return _probe(conn, "scratch", *args)



# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------

# No NUL (PostgreSQL refuses it, SQLite's length() stops at it), no surrogates.
_char = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(_char, max_size=12)

WHITESPACE = " \t\n\x0b\x0c\r"  # what the casts accept around a number
_ws = st.text(st.sampled_from(WHITESPACE), max_size=2)
_sign = st.sampled_from(["", "+", "-"])
_zeros = st.sampled_from(["", "0", "000"])
_magnitudes = st.one_of(
    st.integers(0, 2**70),
    st.sampled_from([2**15, 2**31, 2**63]).flatmap(lambda b: st.integers(b - 3, b + 3)),
)
decimal_integers = st.builds(
    lambda a, s, z, n, b: f"{a}{s}{z}{n}{b}", _ws, _sign, _zeros, _magnitudes, _ws
)
# close to numbers: underscores, points, exponents, hex, Unicode digits and spaces
_near = WHITESPACE + "+-0123456789_.xXeE\u0663\uff11\u00a0\u2003\x1c a"
near_numbers = st.text(st.sampled_from(_near), max_size=12)
integer_texts = st.none() | decimal_integers | near_numbers | texts

INTEGER_TARGETS = [
    pytest.param(SmallInteger(), id="SmallInteger"),
    pytest.param(Integer(), id="Integer"),
    pytest.param(BigInteger(), id="BigInteger"),
]
MEASURED_INTEGER_TEXTS = [
    "", "x", "12abc", "3.9", "1_000", "0x1F", "0o17", "0b101", "\u0661\u0662", "\uff11\uff12",
    " 42 ", "\t-7\n", "+5", "-0", "0007", "\u00a05", "5\x1c", "1e3", "+", "-", " ", "1 2",
    "- 5", "+-5", "32767", "32768", "-32768", "-32769", "2147483647", "2147483648",
    "-2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "0" * 30 + "42", "NaN",
    "0" * 5000 + "42", "-" + "0" * 5000, "1" * 5000,
]


def _examples(values: Sequence[Any], **fixed: Any) -> Any:
    """``@example`` for each value (with the other arguments fixed)."""

    def decorate(test: Any) -> Any:
        for value in reversed(values):
            test = example(value=value, **fixed)(test)
        return test

    return decorate


# ---------------------------------------------------------------------------
# identity
# ---------------------------------------------------------------------------


@EXACT
@given(value=st.none() | texts)
@example(value="")
@example(value=" ")
@example(value="A")
def test_identity(conn: Connection, value: str | None) -> None:
    probe = _probe(conn, "identity", [Text()])
    transform = Transform.identity()
    _same(_python(transform, [value], 1), probe.sql(transform, [value]), value)


# ---------------------------------------------------------------------------
# cast: text -> SmallInteger / Integer / BigInteger
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", INTEGER_TARGETS)
@EXACT
@given(value=integer_texts)
@_examples(MEASURED_INTEGER_TEXTS)
def test_cast_text_to_integer(conn: Connection, target: TypeEngine[Any], value: str | None) -> None:
    probe = _probe(conn, "text_to_integer", [Text()], [BigInteger()])
    transform = Transform.cast(int, target)
    python = _python(transform, [value], 1)
    _same(python, probe.sql(transform, [value]), value)
    if conn.dialect.name == "mysql":
        # MariaDB/MySQL only warn in a SELECT where an UPDATE raises: check both
        assert transform.sql is not None
        _same(python, probe.store([transform.sql(probe.sources[0])], [value]), value)


def test_cast_text_to_integer_errors_name_the_reason(conn: Connection) -> None:
    """The documented error per dialect, and PostgreSQL's own wording kept."""
    probe = _scratch(conn, [String(40)])
    transform = Transform.cast(int, Integer())
    outcome, (message,) = probe.sql(transform, ["x5"])
    assert outcome == "rejected"
    expected = {
        "sqlite": "integer overflow",
        "postgresql": "invalid input syntax for type integer",
        "mysql": "1690: BIGINT value is out of range",
    }[conn.dialect.name]
    assert expected in message
    outcome, (message,) = probe.sql(transform, ["2147483648"])
    assert outcome == "rejected"
    if conn.dialect.name == "postgresql":
        assert 'value "2147483648" is out of range for type integer' in message
    with pytest.raises(ValueError, match="not a decimal integer"):
        transform.python("x5")
    with pytest.raises(ValueError, match="out of range"):
        transform.python("2147483648")


# ---------------------------------------------------------------------------
# cast: integer -> text
# ---------------------------------------------------------------------------

TEXT_TARGETS = [
    pytest.param(Text(), id="Text"),
    pytest.param(String(), id="String"),
    pytest.param(String(5), id="String5"),
]


@pytest.mark.parametrize("target", TEXT_TARGETS)
@EXACT
@given(value=st.none() | st.integers(-(2**63), 2**63 - 1))
@example(value=5)
@example(value=-5)
@example(value=0)
@example(value=123456)  # longer than String(5): the SQL must not truncate
@example(value=-(2**63))
@example(value=2**63 - 1)
def test_cast_integer_to_text(conn: Connection, target: TypeEngine[Any], value: int | None) -> None:
    probe = _probe(conn, "integer_to_text", [BigInteger()])
    transform = Transform.cast(str, target)
    _same(_python(transform, [value], 1), probe.sql(transform, [value]), value)


def test_cast_integer_to_short_text_raises_where_it_is_stored(conn: Connection) -> None:
    """The cast does not truncate: storing into a too-short column raises there."""
    probe = _scratch(conn, [BigInteger()], [String(5)])
    transform = Transform.cast(str, String(5))
    assert transform.sql is not None
    expression = [transform.sql(probe.sources[0])]
    assert probe.store(expression, [12345]) == ("ok", ("12345",))
    outcome = probe.store(expression, [123456])
    if conn.dialect.name == "sqlite":  # SQLite does not enforce VARCHAR lengths
        assert outcome == ("ok", ("123456",))
    else:
        assert outcome[0] == "rejected", outcome
        assert "too long" in outcome[1][0].lower(), outcome


# ---------------------------------------------------------------------------
# cast: text -> Numeric(p, s)
# ---------------------------------------------------------------------------

NUMERIC_TARGETS = [
    pytest.param(Numeric(12, 2), id="Numeric12_2"),
    pytest.param(Numeric(5, 0), id="Numeric5_0"),
    pytest.param(Numeric(4, 4), id="Numeric4_4"),
]
_fraction = st.text(st.sampled_from("0123456789"), max_size=6)
decimal_texts = st.builds(
    lambda a, s, i, dot, f, b: f"{a}{s}{i}{dot}{f}{b}",
    _ws,
    _sign,
    st.one_of(st.just(""), _zeros, st.integers(0, 10**14).map(str)),
    st.sampled_from(["", "."]),
    _fraction,
    _ws,
)
numeric_texts = st.none() | decimal_texts | near_numbers | texts
MEASURED_NUMERIC_TEXTS = [
    "1.005", "1.00", "1.50", "1.5", ".5", "5.", "-.5", "+0.10", "0", "-0", "-0.00", ".", "",
    "x", "1e3", "1E-2", "NaN", "Infinity", "-Infinity", "1_000.5", "0x1F", " 12.34 ",
    "\t-9999999999.99\n", "9999999999.99", "10000000000", "99999", "100000", "99999.0",
    "0.9999", "0.99995", "1.0000", "1", "\u0661.5", "1,5", "0" * 5000 + ".5", "." + "0" * 5000,
]


@pytest.mark.parametrize("target", NUMERIC_TARGETS)
@EXACT
@given(value=numeric_texts)
@_examples(MEASURED_NUMERIC_TEXTS)
def test_cast_text_to_numeric(conn: Connection, target: Numeric[Any], value: str | None) -> None:
    probe = _probe(conn, "text_to_numeric", [Text()], [Numeric(30, 10)])
    transform = Transform.cast(Decimal, target)
    python = _python(transform, [value], 1)
    _same(python, probe.sql(transform, [value]), value)
    if conn.dialect.name == "mysql":
        assert transform.sql is not None
        _same(python, probe.store([transform.sql(probe.sources[0])], [value]), value)


# ---------------------------------------------------------------------------
# split and join
# ---------------------------------------------------------------------------

SEPARATORS = [" ", ", ", "|", "x", "--", "aa", "é", "ß", "😀", "e\u0301"]
_tokens = st.sampled_from(
    ["a", "A", "x", "X", " ", "  ", ",", ", ", " ,", "|", "-", "é", "É", "e", "\u0301",
     "😀", "日本", "ß", "ss", "s", "\t", "aa", "a "]
)


def _split_text(separator: str) -> st.SearchStrategy[str]:
    pieces = st.lists(st.one_of(_tokens, st.just(separator)), max_size=8).map("".join)
    return st.one_of(pieces, texts)


split_cases = st.tuples(st.sampled_from(SEPARATORS), st.sampled_from([2, 3])).flatmap(
    lambda sp: st.tuples(st.just(sp[0]), st.just(sp[1]), st.none() | _split_text(sp[0]))
)
MEASURED_SPLITS = [
    (" ", 2, ""), (" ", 2, " "), (" ", 2, "  "), (" ", 3, "  "), (" ", 2, " a"), (" ", 2, "a "),
    (" ", 2, "a  b"), (" ", 3, "a b c d"), ("x", 2, "aXb"), ("x", 2, "X"), ("x", 2, "axb"),
    (", ", 2, "a,b, c"), (", ", 2, "a , b"), ("|", 3, "|a||b|"), ("aa", 2, "aaa"),
    ("aa", 2, "AAaa"), ("ß", 2, "ssß"), ("é", 2, "Éeé"), ("😀", 2, "日本😀語"),
    ("e\u0301", 2, "é e\u0301x"), (" ", 2, "日本 語"), (" ", 2, "\t a"),
]


@EXACT
@given(case=split_cases)
def test_split(conn: Connection, case: tuple[str, int, str | None]) -> None:
    separator, parts, value = case
    probe = _probe(conn, "split", [String(400)])
    transform = Transform.split(separator, parts)
    python = _python(transform, [value], parts)
    assert transform.sql is not None
    pieces = transform.sql(probe.sources[0])
    present = transform.present_sql(probe.sources[0])
    assert present is not None
    sql = probe.select([*pieces, and_(True, *present)], [value])
    assert sql[0] == "ok", (case, sql)
    _same(python, ("ok", sql[1][:parts]), case)
    if value is not None:  # the shortcut is valid where the source is not NULL
        assert bool(sql[1][parts]) == any(v is not None for v in python[1]), (case, sql)


for _case in reversed(MEASURED_SPLITS):
    test_split = example(case=_case)(test_split)


join_cases = st.tuples(st.sampled_from(SEPARATORS), st.sampled_from([2, 3])).flatmap(
    lambda sp: st.tuples(
        st.just(sp[0]), st.tuples(*[st.none() | _split_text(sp[0]) for _ in range(sp[1])])
    )
)


@EXACT
@given(case=join_cases)
@example(case=(" ", (None, None)))
@example(case=(" ", ("", None)))
@example(case=(" ", ("", "")))
@example(case=(" ", (" ", " ")))
@example(case=("x", ("X", "x")))
@example(case=(", ", ("a", None, "b")))
@example(case=("😀", ("日本", "é", None)))
def test_join(conn: Connection, case: tuple[str, tuple[str | None, ...]]) -> None:
    separator, values = case
    probe = _probe(conn, f"join{len(values)}", [String(400)] * len(values))
    transform = Transform.join(separator)
    _same(_python(transform, values, 1), probe.sql(transform, values), case)


# ---------------------------------------------------------------------------
# the frozen text (constants inline) runs as the expression does
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transform", "source", "value", "expected"),
    [
        (Transform.cast(int, Integer()), String(40), " -42 ", (-42,)),
        (Transform.cast(str, String(3)), BigInteger(), 123456, ("123456",)),
        (Transform.cast(Decimal, Numeric(12, 2)), String(40), "1.5", (Decimal("1.50"),)),
        (Transform.split("x"), String(40), "aXbxc", ("aXb", "c")),
    ],
    ids=["text_to_integer", "integer_to_text", "text_to_numeric", "split"],
)
def test_frozen_text_runs(
    conn: Connection, transform: Transform[Any], source: Any, value: Any, expected: Any
) -> None:
    probe = _scratch(conn, [source])
    assert transform.sql is not None
    result = transform.sql(probe.sources[0])
    expressions = result if isinstance(result, tuple) else (result,)
    frozen = [
        str(e.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        for e in expressions
    ]
    probe._set([value])
    # the text alone, through the driver: no parameter, no function of ours
    got = tuple(conn.exec_driver_sql(f"SELECT {', '.join(frozen)} FROM fx_scratch").one())
    if isinstance(expected[0], Decimal):  # SQLite gives a REAL back to a textual query
        got = tuple(Decimal(str(v)) for v in got)
    assert got == expected


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_an_expression_index_can_be_built_on_each_form(
    request: pytest.FixtureRequest, dialect: str
) -> None:
    """Deterministic (IMMUTABLE) functions only, and valid index syntax (CASE in
    parentheses): what :func:`~fourstep_sqla.attribute.forward_index` builds.
    MariaDB has no expression indexes."""
    engine: Engine = request.getfixturevalue(_ENGINE_FIXTURE[dialect])
    transforms = {
        "int": Transform.cast(int, Integer()),
        "dec": Transform.cast(Decimal, Numeric(12, 2)),
        "txt": Transform.cast(str, String(5)),
        "split": Transform.split(", ", 3),
        "join": Transform.join("|"),
    }
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            probe = Probe(connection, [String(40), BigInteger(), String(40)])
            text_column, number_column, other_column = probe.sources
            for name, transform in transforms.items():
                assert transform.sql is not None
                sources = {"txt": [number_column], "join": [text_column, other_column]}
                result = transform.sql(*sources.get(name, [text_column]))
                for i, expression in enumerate(result if isinstance(result, tuple) else [result]):
                    Index(f"ix_fx_{name}_{i}", expression).create(connection)
            probe._set(["1", 2, "3"])
            assert connection.execute(select(probe.table.c.id)).all() == [(1,)]
        finally:
            transaction.rollback()


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_update_returning_evaluates_like_select(
    request: pytest.FixtureRequest, dialect: str
) -> None:
    """``UPDATE ... RETURNING`` (an ORM update reading the attribute back) gives
    what Python gives, NULL rows included. SQLite 3.40 evaluates ``x IS NULL`` as
    false there for some rows, so no built-in may lean on ``IS NULL``."""
    engine: Engine = request.getfixturevalue(_ENGINE_FIXTURE[dialect])
    table = Table(
        "fx_returning",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("a", String(40)),
        Column("b", String(40)),
        Column("note", String(10)),
    )
    rows = [("7", "y"), (None, "y"), ("42", None), (None, None), (" -5 ", "x y")]
    transforms: dict[str, tuple[Transform[Any], int]] = {
        "cast": (Transform.cast(int, Integer()), 1),
        "decimal": (Transform.cast(Decimal, Numeric(12, 2)), 1),
        "join": (Transform.join(" "), 2),
        "join3": (Transform.join("|"), 3),
        "split": (Transform.split(" "), 1),
    }
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            table.create(connection)
            connection.execute(
                insert(table), [{"id": i, "a": a, "b": b} for i, (a, b) in enumerate(rows)]
            )
            for name, (transform, width) in transforms.items():
                assert transform.sql is not None
                sources = [table.c.a, table.c.b, table.c.a][:width]
                result = transform.sql(*sources)
                expressions = result if isinstance(result, tuple) else (result,)
                statement = (
                    update(table)
                    .where(table.c.id.in_(range(len(rows))))
                    .values(note=name)
                    .returning(table.c.id, *expressions)
                )
                got = {r[0]: tuple(r[1:]) for r in connection.execute(statement)}
                for i, (a, b) in enumerate(rows):
                    values = [a, b, a][:width]
                    _same(_python(transform, values, len(expressions)), ("ok", got[i]), name)
        finally:
            transaction.rollback()
            if dialect == "sqlite":  # pysqlite runs DDL outside the transaction
                with engine.begin() as cleanup:
                    table.drop(cleanup, checkfirst=True)


def test_sqlite_overflow_is_raised_only_where_the_branch_is_taken(sqlite_engine: Engine) -> None:
    """The fact the SQLite form rests on: no constant folding of the rejected branch."""
    with sqlite_engine.connect() as connection:
        trick = "abs(-9223372036854775807 - 1)"
        assert connection.execute(text(f"SELECT CASE WHEN 1 = 0 THEN {trick} ELSE 5 END")).one()
        with pytest.raises(DBAPIError, match="integer overflow"):
            connection.execute(text(f"SELECT CASE WHEN 1 = 1 THEN {trick} ELSE 5 END")).one()
