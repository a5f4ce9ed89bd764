"""What the database notes about rows, where no sync triggers keep the places in step.

Two small kinds of trigger, neither of which needs a transform's SQL form:

- **write marks** (:class:`WriteMarks`), from step 1 to the drop, for a phased
  attribute whose transforms are Python-only: for every row written on one
  side only, ``fourstep_marks`` keeps which side was written last (``new`` or
  ``old``). A row whose new place was written last, alone, is what step-4 code
  leaves behind when it updates through the attribute: the new place is the
  truth there, and the drop gate, verify and the repair leave such a row
  alone although its old place is stale. A row written last on the old side
  is a stale new place, and is reported (and repaired) as such. PostgreSQL,
  SQLite and MariaDB/MySQL; the library's own writes do not mark (they keep
  the triggers quiet as for the sync triggers).
- **the drop guard** (:class:`DropGuard`), PostgreSQL and MariaDB/MySQL, for
  the time of one drop without sync triggers: it notes the keys of rows whose
  old place is written while the gate scans the table, and only those are
  compared again under the DROP's lock.

Row keys are the primary key as a JSON array, built by the database itself
(:func:`row_key`) on both sides of every comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, and_, literal, or_
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import Column
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import String

from .exact import row_differs, same, same_row
from .keys import any_not_null
from .triggers import SQLITE_MARKER, RowRef, default_of, slug, triggers_on

__all__ = ["GUARD_TABLE", "MARKS_TABLE", "DropGuard", "WriteMarks", "marks_present", "row_key"]

MARKS_TABLE = "fourstep_marks"


# -- row keys --------------------------------------------------------------------------------
class _row_key(ColumnElement[str]):
    """The primary-key values of a row as JSON array text, built by the database."""

    inherit_cache = True
    type = String()

    def __init__(self, *columns: Any) -> None:
        self.columns = columns

    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's own convention)
        ("columns", InternalTraversal.dp_clauseelement_tuple)
    ]

    @property
    def _from_objects(self) -> list[Any]:
        return [f for c in self.columns for f in getattr(c, "_from_objects", [])]


def _args(element: _row_key, compiler: SQLCompiler, **kw: Any) -> str:
    return ", ".join(compiler.process(c, **kw) for c in element.columns)


@compiles(_row_key)
def _row_key_default(element: _row_key, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_array({_args(element, compiler, **kw)})"


@compiles(_row_key, "postgresql")
def _row_key_postgresql(element: _row_key, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(json_build_array({_args(element, compiler, **kw)}) AS TEXT)"


def _row_key_mysql(element: _row_key, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(JSON_ARRAY({_args(element, compiler, **kw)}) AS CHAR)"


compiles(_row_key, "mysql")(_row_key_mysql)
compiles(_row_key, "mariadb")(_row_key_mysql)


def row_key(columns: Sequence[Any]) -> ColumnElement[str]:
    """``columns`` (a row's primary key) as the JSON text the marks hold."""
    return _row_key(*columns)


def _sql(dialect: Dialect, element: Any) -> str:
    return str(element.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _names(key: str, dialect_name: str) -> list[str]:
    base = slug(key)
    if dialect_name in ("mysql", "mariadb"):
        return [f"{base}_mark_ins", f"{base}_mark_upd"]
    return [f"{base}_mark_ins", f"{base}_mark_new", f"{base}_mark_old"]


def marks_present(conn: Connection, key: str, table_name: str, schema: str | None) -> bool:
    """Whether the write marks of ``key`` are installed on ``table_name``."""
    if conn.dialect.name not in ("postgresql", "sqlite", "mysql", "mariadb"):
        return False
    return set(_names(key, conn.dialect.name)) <= triggers_on(conn, table_name, schema)


def home_of(conn: Connection, schema: str | None) -> str | None:
    """Where the marks live on PostgreSQL: the table's schema, or the current one."""
    if conn.dialect.name != "postgresql":
        return schema
    return schema or str(conn.exec_driver_sql("SELECT current_schema()").scalar_one())


# -- write marks -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WriteMarks:
    """The write-mark triggers of one phased attribute (see the module docs)."""

    key: str
    table_name: str
    schema: str | None
    old: tuple[Column[Any], ...]
    new: tuple[Column[Any], ...]
    primary_key: tuple[Column[Any], ...]
    #: PostgreSQL: the schema of the marks table and function
    home: str | None = None

    @classmethod
    def of(cls, conn: Connection, key: str, table: Table, old: Sequence[str],
           new: Sequence[str]) -> WriteMarks:
        return cls(key, table.name, table.schema, tuple(table.c[n] for n in old),
                   tuple(table.c[n] for n in new), tuple(table.primary_key.columns),
                   home_of(conn, table.schema))

    def names(self, dialect: Dialect) -> list[str]:
        return _names(self.key, dialect.name)

    def _q(self, dialect: Dialect, name: str, qualify: bool = True) -> str:
        prep = dialect.identifier_preparer
        if qualify and self.home and dialect.name == "postgresql":
            return f"{prep.quote_schema(self.home)}.{prep.quote(name)}"
        return str(prep.quote(name))

    def _table(self, dialect: Dialect) -> str:
        prep = dialect.identifier_preparer
        name = prep.quote(self.table_name)
        return f"{prep.quote_schema(self.schema)}.{name}" if self.schema else str(name)

    def _ref(self, row: str, columns: Sequence[Column[Any]]) -> list[RowRef]:
        return [RowRef(row, c.name, c.type) for c in columns]

    def _unwritten(self, row: str) -> ColumnElement[bool]:
        parts = []
        for ref, column in zip(self._ref(row, self.old), self.old):
            default = default_of(column)
            parts.append(ref.is_(None) if default is None else or_(ref.is_(None),
                                                                    same(ref, default)))
        return and_(*parts)

    def _conditions(self) -> dict[str, ColumnElement[bool]]:
        new, old = self._ref("NEW", self.new), self._ref("NEW", self.old)
        before_new, before_old = self._ref("OLD", self.new), self._ref("OLD", self.old)
        return {
            "ins": and_(self._unwritten("NEW"), any_not_null(new)),
            "new": and_(row_differs(new, before_new), same_row(old, before_old)),
            "old": and_(row_differs(old, before_old), same_row(new, before_new)),
            "new_assigned": same_row(old, before_old),
            "old_assigned": same_row(new, before_new),
        }

    def create(self, dialect: Dialect) -> list[str]:
        marks = self._q(dialect, MARKS_TABLE)
        key = _sql(dialect, literal(self.key))
        new_key = _sql(dialect, row_key(self._ref("NEW", self.primary_key)))
        table = self._table(dialect)
        names = self.names(dialect)
        conditions = self._conditions()
        k = self._q(dialect, "key", False)  # a reserved word on MariaDB/MySQL
        statements = [
            f"CREATE TABLE IF NOT EXISTS {marks} ({k} VARCHAR(255) NOT NULL, "
            f"row_key VARCHAR(512) NOT NULL, side VARCHAR(3) NOT NULL, "
            f"PRIMARY KEY ({k}, row_key))",
        ]
        new_cols = ", ".join(self._q(dialect, c.name, False) for c in self.new)
        old_cols = ", ".join(self._q(dialect, c.name, False) for c in self.old)
        if dialect.name == "postgresql":
            function = self._q(dialect, f"{slug(self.key)}_mark")
            awake = "current_setting('fourstep.sync', true) IS DISTINCT FROM 'off'"
            statements.append(
                f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
                f"$fourstep$ BEGIN INSERT INTO {marks} ({k}, row_key, side) VALUES ({key}, "
                f"{new_key}, TG_ARGV[0]) ON CONFLICT ({k}, row_key) DO UPDATE SET side = "
                f"EXCLUDED.side; RETURN NULL; END $fourstep$"
            )
            for name, event, condition, side in (
                (names[0], "INSERT", conditions["ins"], "new"),
                (names[1], f"UPDATE OF {new_cols}", conditions["new_assigned"], "new"),
                (names[2], f"UPDATE OF {old_cols}", conditions["old_assigned"], "old"),
            ):
                trigger = self._q(dialect, name, False)
                statements += [
                    f"DROP TRIGGER IF EXISTS {trigger} ON {table}",
                    f"CREATE TRIGGER {trigger} AFTER {event} ON {table} FOR EACH ROW WHEN "
                    f"({awake} AND {_sql(dialect, condition)}) EXECUTE FUNCTION "
                    f"{function}('{side}')",
                ]
            return statements
        if dialect.name == "sqlite":
            marker = self._q(dialect, SQLITE_MARKER)
            awake = f"NOT EXISTS (SELECT 1 FROM {marker} WHERE {k} = {key})"
            statements.insert(
                0, f"CREATE TABLE IF NOT EXISTS {marker} ({k} VARCHAR(255) NOT NULL PRIMARY KEY)"
            )

            def mark(side: str) -> str:
                return (f"INSERT OR REPLACE INTO {marks} ({k}, row_key, side) VALUES "
                        f"({key}, {new_key}, '{side}');")

            for name, event, condition, side in (
                (names[0], "INSERT", conditions["ins"], "new"),
                (names[1], f"UPDATE OF {new_cols}", conditions["new_assigned"], "new"),
                (names[2], f"UPDATE OF {old_cols}", conditions["old_assigned"], "old"),
            ):
                trigger = self._q(dialect, name, False)
                statements += [
                    f"DROP TRIGGER IF EXISTS {trigger}",
                    f"CREATE TRIGGER {trigger} AFTER {event} ON {table} FOR EACH ROW WHEN "
                    f"{awake} AND {_sql(dialect, condition)} BEGIN {mark(side)} END",
                ]
            return statements
        awake = "COALESCE(@fourstep_sync, '') <> 'off'"

        def upsert(side: str) -> str:
            return (f"INSERT INTO {marks} ({k}, row_key, side) VALUES ({key}, {new_key}, "
                    f"'{side}') ON DUPLICATE KEY UPDATE side = VALUES(side);")

        return [
            *statements,
            *[f"DROP TRIGGER IF EXISTS {self._q(dialect, n, False)}" for n in names],
            f"CREATE TRIGGER {self._q(dialect, names[0], False)} AFTER INSERT ON {table} "
            f"FOR EACH ROW BEGIN IF {awake} AND {_sql(dialect, conditions['ins'])} THEN "
            f"{upsert('new')} END IF; END",
            f"CREATE TRIGGER {self._q(dialect, names[1], False)} AFTER UPDATE ON {table} "
            f"FOR EACH ROW BEGIN IF {awake} THEN IF {_sql(dialect, conditions['new'])} THEN "
            f"{upsert('new')} ELSEIF {_sql(dialect, conditions['old'])} THEN "
            f"{upsert('old')} END IF; END IF; END",
        ]

    def drop(self, dialect: Dialect) -> list[str]:
        table = self._table(dialect)
        on = f" ON {table}" if dialect.name == "postgresql" else ""
        statements = [
            f"DROP TRIGGER IF EXISTS {self._q(dialect, n, False)}{on}" for n in self.names(dialect)
        ]
        if dialect.name == "postgresql":
            function = self._q(dialect, f"{slug(self.key)}_mark")
            statements.append(f"DROP FUNCTION IF EXISTS {function}()")
        return statements

    def clear(self, dialect: Dialect) -> list[str]:
        """Forget the marks (after the drop: the old place is gone)."""
        key = _sql(dialect, literal(self.key))
        k = self._q(dialect, "key", False)
        return [f"DELETE FROM {self._q(dialect, MARKS_TABLE)} WHERE {k} = {key}"]


def marks_table(home: str | None) -> Any:
    """``fourstep_marks`` as a table clause, to join against."""
    from sqlalchemy import column as column_clause
    from sqlalchemy import table as table_clause

    return table_clause(MARKS_TABLE, column_clause("key"), column_clause("row_key"),
                        column_clause("side"), schema=home)


def new_written_last(home: str | None, key: str, primary_key: Sequence[Any]) -> Any:
    """A scalar subquery: the side written last, alone, of the row (or NULL)."""
    from sqlalchemy import select

    marks = marks_table(home)
    return (
        select(marks.c.side)
        .where(marks.c.key == key, marks.c.row_key == row_key(primary_key))
        .scalar_subquery()
    )


GUARD_TABLE = "fourstep_guard"


@dataclass(frozen=True)
class DropGuard:
    """Records the keys of rows whose old place is written while a drop gate runs.

    Without sync triggers nothing carries a write of the old place into the
    new one between the gate's scan and the DROP. The guard, a small trigger
    committed before the gate starts, notes the primary key of every row
    inserted or whose old column(s) are assigned into ``fourstep_guard``; under
    the DROP's lock, only those rows are compared again, and any that would
    lose data makes the drop refuse. PostgreSQL, and MariaDB/MySQL, where
    "assigned" is "changed, compared as binary strings" (no ``UPDATE OF``
    there); SQLite holds its write lock from the gate to the DROP instead.
    """

    key: str
    table_name: str
    schema: str | None
    old: tuple[str, ...]
    primary_key: tuple[Column[Any], ...]
    #: where the guard's table and function live (the table's schema, or the
    #: current one when it names none; MariaDB/MySQL: the table's database)
    home: str | None = None
    #: the old columns, for the comparison of a MariaDB/MySQL trigger
    old_columns: tuple[Column[Any], ...] = ()

    @classmethod
    def of(cls, conn: Connection, key: str, table: Table, old: Sequence[str]) -> DropGuard:
        home = home_of(conn, table.schema)
        return cls(key, table.name, table.schema, tuple(old),
                   tuple(table.primary_key.columns), home, tuple(table.c[n] for n in old))

    @staticmethod
    def supported(dialect: Dialect) -> bool:
        """Where a drop without sync triggers installs a guard."""
        return dialect.name in ("postgresql", "mysql", "mariadb")

    def _trigger_names(self) -> list[str]:
        """MariaDB/MySQL: one trigger per event."""
        return [f"{slug(self.key)}_guard_ins", f"{slug(self.key)}_guard_upd"]

    def _q(self, dialect: Dialect, name: str) -> str:
        prep = dialect.identifier_preparer
        if self.home:
            return f"{prep.quote_schema(self.home)}.{prep.quote(name)}"
        return str(prep.quote(name))

    def guard_table(self, dialect: Dialect) -> str:
        """The quoted name of the table the guard notes keys in."""
        return self._q(dialect, GUARD_TABLE)

    def table(self, dialect: Dialect) -> str:
        """The guarded table's quoted name."""
        prep = dialect.identifier_preparer
        name = prep.quote(self.table_name)
        return f"{prep.quote_schema(self.schema)}.{name}" if self.schema else str(name)

    @staticmethod
    def table_statement(dialect: Dialect, home: str | None) -> str:
        """``CREATE TABLE IF NOT EXISTS fourstep_guard`` in ``home``. Every drop
        makes it, guard or not, so that a drop stopped midway and run again (which
        may need a guard the first run did not) ends with the same tables."""
        prep = dialect.identifier_preparer
        guard = str(prep.quote(GUARD_TABLE))
        if home:
            guard = f"{prep.quote_schema(home)}.{guard}"
        if dialect.name in ("mysql", "mariadb"):
            k = prep.quote("key")  # a reserved word there
            # 255 + 512 characters: the longest primary key there in utf8mb4
            return (f"CREATE TABLE IF NOT EXISTS {guard} ({k} VARCHAR(255) NOT NULL, "
                    f"row_key VARCHAR(512) NOT NULL, PRIMARY KEY ({k}, row_key))")
        return (f"CREATE TABLE IF NOT EXISTS {guard} (key VARCHAR(255) NOT NULL, "
                f"row_key TEXT NOT NULL, PRIMARY KEY (key, row_key))")

    def create(self, dialect: Dialect) -> list[str]:
        if dialect.name in ("mysql", "mariadb"):
            return self._create_mysql(dialect)
        prep = dialect.identifier_preparer
        guard = self._q(dialect, GUARD_TABLE)
        function = self._q(dialect, f"{slug(self.key)}_guard")
        trigger = prep.quote(f"{slug(self.key)}_guard")
        key = str(literal(self.key).compile(dialect=dialect,
                                            compile_kwargs={"literal_binds": True}))
        row_key = ", ".join(f"NEW.{prep.quote(c.name)}" for c in self.primary_key)
        old = ", ".join(prep.quote(n) for n in self.old)
        return [
            self.table_statement(dialect, self.home),
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$fourstep$ BEGIN INSERT INTO {guard} (key, row_key) VALUES ({key}, "
            f"json_build_array({row_key})::text) ON CONFLICT DO NOTHING; RETURN NULL; END "
            f"$fourstep$",
            f"DROP TRIGGER IF EXISTS {trigger} ON {self.table(dialect)}",
            f"CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OF {old} ON "
            f"{self.table(dialect)} FOR EACH ROW EXECUTE FUNCTION {function}()",
        ]

    def _create_mysql(self, dialect: Dialect) -> list[str]:
        prep = dialect.identifier_preparer
        guard = self._q(dialect, GUARD_TABLE)
        k = prep.quote("key")  # a reserved word there
        key = _sql(dialect, literal(self.key))
        new_key = _sql(dialect, row_key([RowRef("NEW", c.name, c.type) for c in self.primary_key]))
        changed = _sql(dialect, row_differs(
            [RowRef("NEW", c.name, c.type) for c in self.old_columns],
            [RowRef("OLD", c.name, c.type) for c in self.old_columns],
        ))
        note = (f"INSERT INTO {guard} ({k}, row_key) VALUES ({key}, {new_key}) "
                f"ON DUPLICATE KEY UPDATE row_key = row_key")
        inserted, updated = (self._q(dialect, n) for n in self._trigger_names())
        table = self.table(dialect)
        return [
            self.table_statement(dialect, self.home),
            f"DROP TRIGGER IF EXISTS {inserted}",
            f"DROP TRIGGER IF EXISTS {updated}",
            f"CREATE TRIGGER {inserted} AFTER INSERT ON {table} FOR EACH ROW {note}",
            f"CREATE TRIGGER {updated} AFTER UPDATE ON {table} FOR EACH ROW "
            f"BEGIN IF {changed} THEN {note}; END IF; END",
        ]

    def drop(self, dialect: Dialect) -> list[str]:
        prep = dialect.identifier_preparer
        guard = self._q(dialect, GUARD_TABLE)
        key = str(literal(self.key).compile(dialect=dialect,
                                            compile_kwargs={"literal_binds": True}))
        if dialect.name in ("mysql", "mariadb"):
            return [
                *(f"DROP TRIGGER IF EXISTS {self._q(dialect, n)}" for n in self._trigger_names()),
                f"DELETE FROM {guard} WHERE {prep.quote('key')} = {key}",
            ]
        return [
            f"DROP TRIGGER IF EXISTS {prep.quote(slug(self.key) + '_guard')} ON "
            f"{self.table(dialect)}",
            f"DROP FUNCTION IF EXISTS {self._q(dialect, slug(self.key) + '_guard')}()",
            f"DELETE FROM {guard} WHERE key = {key}",
        ]

    def written(self, table: Table, dialect: Dialect) -> ColumnElement[bool]:
        """The rows the guard noted: primary key IN (the recorded keys)."""
        from sqlalchemy import cast, func, select, tuple_
        from sqlalchemy import column as column_clause
        from sqlalchemy import table as table_clause
        from sqlalchemy.dialects.postgresql import JSONB

        guard = table_clause(GUARD_TABLE, column_clause("key"), column_clause("row_key"),
                             schema=self.home)
        keys = [table.c[c.name] for c in self.primary_key]
        if dialect.name in ("mysql", "mariadb"):
            parts = [
                cast(func.json_unquote(func.json_extract(guard.c.row_key, f"$[{i}]")), c.type)
                for i, c in enumerate(keys)
            ]
        else:
            parts = [
                cast(cast(guard.c.row_key, JSONB)[i].astext, c.type)
                for i, c in enumerate(keys)
            ]
        recorded = select(*parts).where(guard.c.key == self.key)
        target: Any = keys[0] if len(keys) == 1 else tuple_(*keys)
        condition: ColumnElement[bool] = target.in_(recorded)
        return condition


