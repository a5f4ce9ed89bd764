"""Sync triggers: the database keeps both places equal, whoever writes.

The phased attribute dual-writes every ORM path. Underneath, for transforms
with a SQL form, triggers created by the step-1 revision keep old and new in
step for every writer the ORM never sees: the previous release during a
rollout (it knows only the old column), raw SQL, Core statements on the
table, upserts, other services, and the step-4 release, which writes only the
new place until the drop:

- a write that sets only the old place sets the new one to ``forward(old)``
  (NULL included: clearing the old place clears the new one);
- a write that sets only the new place sets the old one to ``backward(new)``;
- a write that sets both, as the ORM does in steps 1-3, is left as written;
- an INSERT that gives only one side gets the other; an old column left at its
  server default counts as not given (step-4 code never writes it);
- the library's own writes (backfill, repair, restore) never touch the other
  place: they bypass the triggers (a session setting on PostgreSQL and
  MariaDB/MySQL, a marker row inside the batch's transaction on SQLite).

"Sets" means the columns an UPDATE assigns, not only the values that changed:
assigning NULL to a NULL new column clears the old one. PostgreSQL and SQLite
tell it with ``UPDATE OF``: a trigger per side fires when its columns are
assigned, and the other side counts as set when its value changed (a write
that assigns both sides with one of them unchanged is taken as a write of the
other side; the ORM's own writes always change both or neither).
MariaDB/MySQL have no ``UPDATE OF``: there a side counts as set when its value
changed (compared as binary strings), so assigning a column the value it
already holds is not seen, and ``UPDATE t SET old = old`` does not re-sync.

A transform that fails inside a trigger (a cast of a value it rejects) does
not fail the writer's statement on PostgreSQL and MariaDB/MySQL: the other
place is set to NULL, so the row shows up as pending in the backfill (which
names it) and as missing or mismatched in the drop gate. SQLite cannot catch
an error in a trigger: there the write fails.

The triggers are ordinary triggers: ``session_replication_role = replica``
(logical replication apply, restores) bypasses them on PostgreSQL, as it
should. ``SET fourstep.sync = 'off'`` (PostgreSQL) or ``SET @fourstep_sync =
'off'`` (MariaDB/MySQL) bypasses them for a session on purpose.

Python-only transforms get no triggers: writers outside the ORM are then not
kept in step (a :class:`~fourstep_sqla.errors.NoSyncTriggersWarning` says so
when such an attribute is declared), and the drop gate compares in Python.

Objects (names derived from the registry key, at most 63 characters):
PostgreSQL: one SQL function per target column for each direction
(``fs_<key>_<hash>_f0``, ``..._b0``; inlined by the planner), two PL/pgSQL
trigger functions and four triggers (``..._ins_bwd``, ``..._ins_fwd``,
``..._upd_new``, ``..._upd_old``). SQLite: three triggers and the marker
table ``fourstep_sync_off``. MariaDB/MySQL: two triggers (``..._ins``,
``..._upd``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Table,
    and_,
    literal,
    literal_column,
    or_,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from .attribute import PhasedSpec
from .errors import SyncTriggerError
from .exact import row_differs, same, same_row
from .frozen import transform_sql
from .keys import all_null, any_not_null

__all__ = ["SyncTriggers", "installed", "trigger_names"]

#: the SQLite marker table: a row for a key while the library writes (see module docs)
SQLITE_MARKER = "fourstep_sync_off"


# -- row references (NEW.col / OLD.col) ------------------------------------------------
class RowRef(ColumnElement[Any]):
    """``NEW.<col>`` or ``OLD.<col>`` inside a trigger."""

    inherit_cache = False

    def __init__(self, row: str, name: str, type_: TypeEngine[Any]) -> None:
        self.row = row
        self.name = name
        self.type = type_

    @property
    def _from_objects(self) -> list[Any]:
        return []


@compiles(RowRef)
def _row_ref(element: RowRef, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{element.row}.{compiler.preparer.quote(element.name)}"


def slug(key: str) -> str:
    digest = hashlib.sha1(key.encode()).hexdigest()[:6]
    readable = re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")[:36]
    return f"fs_{readable}_{digest}"


def trigger_names(key: str, dialect_name: str) -> list[str]:
    """The names of the triggers of ``key`` on ``dialect_name``."""
    base = slug(key)
    if dialect_name == "postgresql":
        return [f"{base}_ins_bwd", f"{base}_ins_fwd", f"{base}_upd_new", f"{base}_upd_old"]
    if dialect_name == "sqlite":
        return [f"{base}_ins", f"{base}_upd_new", f"{base}_upd_old"]
    return [f"{base}_ins", f"{base}_upd"]


@dataclass(frozen=True)
class SyncTriggers:
    """The sync triggers of one phased attribute, frozen like a revision.

    ``old`` / ``new``: the columns (name and type; an old column's
    ``server_default`` too); ``forward_sql`` / ``backward_sql``: per target
    column, the SQL text of the transform over the *bare* names of the source
    columns, as the Alembic renderer writes it (``{"first_name": "nullif(...)"}``).
    """

    key: str
    table_name: str
    old: tuple[Column[Any], ...]
    new: tuple[Column[Any], ...]
    forward_sql: Mapping[str, str]
    backward_sql: Mapping[str, str]
    schema: str | None = None
    primary_key: tuple[str, ...] = field(default=())
    #: PostgreSQL: the schema of the helper functions when the table names none
    #: (the current schema where they are created): trigger bodies call them by
    #: this name, whatever a writer's search_path is
    function_schema: str | None = None
    #: catch a transform's error per row (PostgreSQL, MariaDB/MySQL); False for
    #: transforms that never raise, which spares the per-row handler (on
    #: PostgreSQL a subtransaction, about 40% of a bulk UPDATE through the trigger)
    catch_errors: bool = True

    def check(self) -> None:
        """Both transforms' SQL is there for every target column."""
        for label, texts, targets in (
            ("forward", self.forward_sql, self.new),
            ("backward", self.backward_sql, self.old),
        ):
            missing = [c.name for c in targets if c.name not in texts]
            if missing:
                raise SyncTriggerError(
                    f"{self.key}: the {label} SQL has no expression for {', '.join(missing)}; "
                    f"sync triggers need the SQL form of both transforms"
                )

    @classmethod
    def of(cls, spec: PhasedSpec, dialect: Dialect) -> SyncTriggers:
        """The triggers of a live phased attribute, its transforms frozen for ``dialect``."""
        table = spec.table
        if table is None:
            raise SyncTriggerError(f"{spec.describe()} is not mapped yet")
        forward = transform_sql(spec, spec.forward, spec.old_columns, spec.new_columns, dialect)
        backward = transform_sql(
            spec, spec.backward, spec.new_columns, spec.old_columns, dialect
        )
        if forward is None or backward is None:
            raise SyncTriggerError(
                f"{spec.describe()}: sync triggers need the SQL form of both transforms; "
                f"{'forward' if forward is None else 'backward'} "
                f"{(spec.forward if forward is None else spec.backward).name!r} has none"
            )
        return cls(
            key=spec.key,
            table_name=table.name,
            schema=table.schema,
            old=tuple(spec.old_columns),
            new=tuple(spec.new_columns),
            forward_sql=forward,
            backward_sql=backward,
            primary_key=tuple(c.name for c in table.primary_key.columns),
            catch_errors=not (never_fails(spec.forward) and never_fails(spec.backward)),
        )

    @property
    def base(self) -> str:
        return slug(self.key)

    # -- rendering ------------------------------------------------------------------
    def create(self, dialect: Dialect) -> list[str]:
        """The statements that create the triggers, in order."""
        self.check()
        return _renderer(dialect, self).create()

    def drop(self, dialect: Dialect) -> list[str]:
        """The statements that drop the triggers (IF EXISTS), in order."""
        return _renderer(dialect, self).drop()


class _Renderer:
    def __init__(self, dialect: Dialect, triggers: SyncTriggers) -> None:
        self.dialect = dialect
        self.t = triggers
        self.prep = dialect.identifier_preparer

    def q(self, name: str) -> str:
        return str(self.prep.quote(name))

    def table(self) -> str:
        name = self.q(self.t.table_name)
        if self.t.schema:
            return f"{self.prep.quote_schema(self.t.schema)}.{name}"
        return name

    def qualified(self, name: str) -> str:
        """A function name in the table's schema (or the one it was created in)."""
        schema = self.t.schema or self.t.function_schema
        if schema:
            return f"{self.prep.quote_schema(schema)}.{self.q(name)}"
        return self.q(name)

    def sql(self, element: Any) -> str:
        return str(element.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True}))

    def ref(self, row: str, columns: Sequence[Column[Any]]) -> list[RowRef]:
        return [RowRef(row, c.name, c.type) for c in columns]

    def frozen(self, texts: Mapping[str, str], targets: Sequence[Column[Any]]) -> list[Any]:
        return [literal_column(f"({texts[c.name]})", type_=c.type) for c in targets]

    def old_unwritten(self, old: Sequence[Any]) -> ColumnElement[bool]:
        """Every old column (``old``: their references) NULL or at its server default:
        an INSERT that left it out, as step-4 code does."""
        parts = []
        for ref, column in zip(old, self.t.old):
            default = default_of(column)
            if default is None:
                parts.append(ref.is_(None))
            else:
                parts.append(or_(ref.is_(None), same(ref, default)))
        return and_(*parts)

    def create(self) -> list[str]:
        raise NotImplementedError

    def drop(self) -> list[str]:
        raise NotImplementedError


class _PostgreSQL(_Renderer):
    def _function(self, suffix: str) -> str:
        return self.qualified(f"{self.t.base}_{suffix}")

    def _helpers(self, direction: str) -> list[tuple[str, Column[Any], list[Column[Any]]]]:
        """(function, target column, source columns) per target of a direction."""
        forward = direction == "f"
        targets, sources = (self.t.new, self.t.old) if forward else (self.t.old, self.t.new)
        return [
            (self._function(f"{direction}{i}"), c, list(sources)) for i, c in enumerate(targets)
        ]

    def _call(self, function: str, sources: Sequence[Column[Any]], row: str) -> str:
        args = ", ".join(f"{row}.{self.q(c.name)}" for c in sources)
        return f"{function}({args})"

    def create(self) -> list[str]:
        statements = []
        for direction, texts in (("f", self.t.forward_sql), ("b", self.t.backward_sql)):
            for function, target, sources in self._helpers(direction):
                params = ", ".join(
                    f"{self.q(c.name)} {self.sql_type(c.type)}" for c in sources
                )
                statements.append(
                    f"CREATE OR REPLACE FUNCTION {function}({params}) "
                    f"RETURNS {self.sql_type(target.type)} LANGUAGE sql AS "
                    f"$fourstep$ SELECT {texts[target.name]} $fourstep$"
                )
        new_ref, old_ref = self.ref("NEW", self.t.new), self.ref("NEW", self.t.old)
        before_new, before_old = self.ref("OLD", self.t.new), self.ref("OLD", self.t.old)
        backward_of_new = [
            literal_column(self._call(function, sources, "NEW"), type_=target.type)
            for function, target, sources in self._helpers("b")
        ]
        for name, direction, targets in (
            ("forward", "f", self.t.new),
            ("backward", "b", self.t.old),
        ):
            assign = " ".join(
                f"NEW.{self.q(target.name)} := {self._call(function, sources, 'NEW')};"
                for function, target, sources in self._helpers(direction)
            )
            clear = " ".join(f"NEW.{self.q(c.name)} := NULL;" for c in targets)
            if self.t.catch_errors:
                # a value the transform rejects leaves the other place empty (pending)
                # instead of failing the writer's statement
                body = f"BEGIN {assign} EXCEPTION WHEN data_exception THEN {clear} END;"
            else:
                body = assign
            if direction == "f":
                # upd_old passes an argument: an old place that backward(new) gives
                # already is the ORM's write of v with new unchanged: leave it. Tested
                # here, not in WHEN: a WHEN is planned again for every statement
                agrees = self.sql(same_row(old_ref, backward_of_new))
                body = f"IF TG_NARGS > 0 AND {agrees} THEN RETURN NEW; END IF; {body}"
            statements.append(
                f"CREATE OR REPLACE FUNCTION {self._function(name)}() RETURNS trigger "
                f"LANGUAGE plpgsql AS $fourstep$ BEGIN {body} RETURN NEW; END $fourstep$"
            )
        awake = "current_setting('fourstep.sync', true) IS DISTINCT FROM 'off'"
        conditions = {
            "ins_bwd": and_(self.old_unwritten(old_ref), any_not_null(new_ref)),
            "ins_fwd": and_(all_null(new_ref), any_not_null(old_ref)),
            # the new side assigned, the old one not (unchanged): old := backward(new)
            "upd_new": same_row(old_ref, before_old),
            # the old side assigned, the new one not (unchanged): new := forward(old)
            "upd_old": same_row(new_ref, before_new),
        }
        events = {
            "ins_bwd": ("INSERT", "backward"),
            "ins_fwd": ("INSERT", "forward"),
            "upd_new": (f"UPDATE OF {', '.join(self.q(c.name) for c in self.t.new)}", "backward"),
            "upd_old": (f"UPDATE OF {', '.join(self.q(c.name) for c in self.t.old)}", "forward"),
        }
        # fired in name order: ins_bwd before ins_fwd, so a row whose old place is
        # filled by ins_fwd is not taken for one whose old place was left out
        for role, (event, function) in events.items():
            name = self.q(f"{self.t.base}_{role}")
            argument = "'unless_agreeing'" if role == "upd_old" else ""
            statements.append(f"DROP TRIGGER IF EXISTS {name} ON {self.table()}")
            statements.append(
                f"CREATE TRIGGER {name} BEFORE {event} ON {self.table()} FOR EACH ROW "
                f"WHEN ({awake} AND {self.sql(conditions[role])}) "
                f"EXECUTE FUNCTION {self._function(function)}({argument})"
            )
        return statements

    def sql_type(self, type_: TypeEngine[Any]) -> str:
        return str(type_.compile(dialect=self.dialect))

    def drop(self) -> list[str]:
        statements = [
            f"DROP TRIGGER IF EXISTS {self.q(name)} ON {self.table()}"
            for name in trigger_names(self.t.key, "postgresql")
        ]
        statements += [
            f"DROP FUNCTION IF EXISTS {self._function(name)}()" for name in ("forward", "backward")
        ]
        for direction in ("f", "b"):
            for function, _target, sources in self._helpers(direction):
                types = ", ".join(self.sql_type(c.type) for c in sources)
                statements.append(f"DROP FUNCTION IF EXISTS {function}({types})")
        return statements


class _SQLite(_Renderer):
    def _awake(self) -> str:
        marker = self.q(SQLITE_MARKER)
        key = self.sql(literal(self.t.key))
        return f"NOT EXISTS (SELECT 1 FROM {marker} WHERE key = {key})"

    def _quiet(self, body: list[str]) -> str:
        """``body`` with the marker set, so the triggers its writes fire stay quiet."""
        marker = self.q(SQLITE_MARKER)
        key = self.sql(literal(self.t.key))
        return " ".join(
            [f"INSERT INTO {marker} (key) VALUES ({key});", *body,
             f"DELETE FROM {marker} WHERE key = {key};"]
        )

    def _update(self, targets: Sequence[Column[Any]], texts: Mapping[str, str],
                where: ColumnElement[bool]) -> str:
        # SQLite refuses qualified table names inside triggers; the bare names in
        # the frozen SQL refer to the row as written
        sets = ", ".join(f"{self.q(c.name)} = ({texts[c.name]})" for c in targets)
        key = and_(*(
            literal_column(self.q(name)) == literal_column(f"NEW.{self.q(name)}")
            for name in self.t.primary_key
        ))
        return f"UPDATE {self.q(self.t.table_name)} SET {sets} WHERE {self.sql(and_(key, where))};"

    def _bare(self, columns: Sequence[Column[Any]]) -> list[Any]:
        return [literal_column(self.q(c.name), type_=c.type) for c in columns]

    def create(self) -> list[str]:
        if not self.t.primary_key:
            raise SyncTriggerError(
                f"{self.t.key}: table {self.t.table_name} has no primary key; the SQLite sync "
                f"triggers find the written row by it"
            )
        marker = self.q(SQLITE_MARKER)
        table = self.table()
        old_bare, new_bare = self._bare(self.t.old), self._bare(self.t.new)
        backward = self.frozen(self.t.backward_sql, self.t.old)
        ins_body = self._quiet([
            self._update(self.t.old, self.t.backward_sql,
                         and_(self.old_unwritten(old_bare), any_not_null(new_bare))),
            self._update(self.t.new, self.t.forward_sql,
                         and_(all_null(new_bare), any_not_null(old_bare))),
        ])
        new_ref, old_ref = self.ref("NEW", self.t.new), self.ref("NEW", self.t.old)
        before_new, before_old = self.ref("OLD", self.t.new), self.ref("OLD", self.t.old)
        upd_new = self._quiet([self._update(self.t.old, self.t.backward_sql, literal(True))])
        upd_old = self._quiet([
            self._update(self.t.new, self.t.forward_sql, row_differs(old_bare, backward))
        ])
        awake = self._awake()
        names = trigger_names(self.t.key, "sqlite")
        new_cols = ", ".join(self.q(c.name) for c in self.t.new)
        old_cols = ", ".join(self.q(c.name) for c in self.t.old)
        return [
            f"CREATE TABLE IF NOT EXISTS {marker} (key VARCHAR(255) NOT NULL PRIMARY KEY)",
            *[f"DROP TRIGGER IF EXISTS {self.q(n)}" for n in names],
            f"CREATE TRIGGER {self.q(names[0])} AFTER INSERT ON {table} FOR EACH ROW "
            f"WHEN {awake} BEGIN {ins_body} END",
            f"CREATE TRIGGER {self.q(names[1])} AFTER UPDATE OF {new_cols} ON {table} "
            f"FOR EACH ROW WHEN {awake} AND {self.sql(same_row(old_ref, before_old))} "
            f"BEGIN {upd_new} END",
            f"CREATE TRIGGER {self.q(names[2])} AFTER UPDATE OF {old_cols} ON {table} "
            f"FOR EACH ROW WHEN {awake} AND {self.sql(same_row(new_ref, before_new))} "
            f"BEGIN {upd_old} END",
        ]

    def drop(self) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {self.q(n)}" for n in trigger_names(self.t.key, "sqlite")]


class _MySQL(_Renderer):
    def _select_into(self, texts: Mapping[str, str], targets: Sequence[Column[Any]],
                     sources: Sequence[Column[Any]], prefix: str) -> str:
        values = ", ".join(f"({texts[c.name]})" for c in targets)
        into = ", ".join(f"@fourstep_{prefix}{i}" for i in range(len(targets)))
        row = ", ".join(f"NEW.{self.q(c.name)} AS {self.q(c.name)}" for c in sources)
        return f"SELECT {values} INTO {into} FROM (SELECT {row}) AS fourstep_row;"

    def _assign(self, targets: Sequence[Column[Any]], prefix: str) -> str:
        sets = ", ".join(
            f"NEW.{self.q(c.name)} = @fourstep_{prefix}{i}" for i, c in enumerate(targets)
        )
        return f"SET {sets};"

    def _guarded(self, statements: str, targets: Sequence[Column[Any]]) -> str:
        """``statements`` where a failing transform leaves ``targets`` NULL."""
        if not self.t.catch_errors:
            return statements
        clear = ", ".join(f"NEW.{self.q(c.name)} = NULL" for c in targets)
        return (
            "BEGIN DECLARE fourstep_failed INT DEFAULT 0; "
            "DECLARE CONTINUE HANDLER FOR SQLEXCEPTION SET fourstep_failed = 1; "
            f"{statements} IF fourstep_failed THEN SET {clear}; END IF; END;"
        )

    def _forward(self) -> str:
        return self._guarded(
            self._select_into(self.t.forward_sql, self.t.new, self.t.old, "f")
            + " " + self._assign(self.t.new, "f"),
            self.t.new,
        )

    def _backward(self) -> str:
        return self._guarded(
            self._select_into(self.t.backward_sql, self.t.old, self.t.new, "b")
            + " " + self._assign(self.t.old, "b"),
            self.t.old,
        )

    def create(self) -> list[str]:
        new_ref, old_ref = self.ref("NEW", self.t.new), self.ref("NEW", self.t.old)
        before_new, before_old = self.ref("OLD", self.t.new), self.ref("OLD", self.t.old)
        awake = "COALESCE(@fourstep_sync, '') <> 'off'"
        new_only = self.sql(
            and_(row_differs(new_ref, before_new), same_row(old_ref, before_old))
        )
        old_only = self.sql(
            and_(row_differs(old_ref, before_old), same_row(new_ref, before_new))
        )
        backward_check = self._select_into(self.t.backward_sql, self.t.old, self.t.new, "c")
        disagrees = self.sql(row_differs(
            old_ref,
            [literal_column(f"@fourstep_c{i}", type_=c.type) for i, c in enumerate(self.t.old)],
        ))
        names = trigger_names(self.t.key, "mysql")
        table = self.table()
        insert_body = (
            f"BEGIN IF {awake} THEN "
            f"IF {self.sql(and_(all_null(new_ref), any_not_null(old_ref)))} THEN "
            f"{self._forward()} "
            f"ELSEIF {self.sql(and_(self.old_unwritten(old_ref), any_not_null(new_ref)))} THEN "
            f"{self._backward()} END IF; END IF; END"
        )
        update_body = (
            f"BEGIN IF {awake} THEN "
            f"IF {new_only} THEN {self._backward()} "
            f"ELSEIF {old_only} THEN "
            f"BEGIN DECLARE CONTINUE HANDLER FOR SQLEXCEPTION SET @fourstep_c0 = NULL; "
            f"{backward_check} END; "
            f"IF {disagrees} THEN {self._forward()} END IF; "
            f"END IF; END IF; END"
        )
        return [
            *[f"DROP TRIGGER IF EXISTS {self.q(n)}" for n in names],
            f"CREATE TRIGGER {self.q(names[0])} BEFORE INSERT ON {table} FOR EACH ROW "
            f"{insert_body}",
            f"CREATE TRIGGER {self.q(names[1])} BEFORE UPDATE ON {table} FOR EACH ROW "
            f"{update_body}",
        ]

    def drop(self) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {self.q(n)}" for n in trigger_names(self.t.key, "mysql")]


def never_fails(transform: Any) -> bool:
    """Whether a transform's SQL never raises: the built-in identity, split and join
    (a cast rejects values; a user transform may raise)."""
    builtin = getattr(transform, "builtin", None)
    return builtin is not None and builtin[0] in ("identity", "split", "join")


def default_of(column: Column[Any]) -> Any:
    """An old column's server default as an expression, or None."""
    arg = getattr(column.server_default, "arg", None)
    if arg is None:
        return None
    if isinstance(arg, str):  # server_default="x" is the string 'x'
        return literal(arg)
    sql_text = getattr(arg, "text", None)
    if sql_text is not None:  # text(...), and what reflection gives
        return literal_column(f"({sql_text})")
    return arg


def _renderer(dialect: Dialect, triggers: SyncTriggers) -> _Renderer:
    if dialect.name == "postgresql":
        return _PostgreSQL(dialect, triggers)
    if dialect.name == "sqlite":
        return _SQLite(dialect, triggers)
    if dialect.name in ("mysql", "mariadb"):
        return _MySQL(dialect, triggers)
    raise SyncTriggerError(
        f"{triggers.key}: sync triggers are not available on {dialect.name}; opt out with "
        f"context.configure(fourstep_sync_triggers=False) and keep every writer on the ORM"
    )


# -- what the database has --------------------------------------------------------------
def installed(conn: Connection, spec: PhasedSpec) -> bool:
    """Whether every sync trigger of ``spec`` (a PhasedSpec) exists on its table."""
    table = spec.table
    if table is None:
        return False
    return triggers_present(conn, spec.key.removesuffix(":restore"), table.name, table.schema)


def triggers_present(conn: Connection, key: str, table_name: str, schema: str | None) -> bool:
    """Whether every sync trigger of ``key`` exists on ``table_name``."""
    name = conn.dialect.name
    if name not in ("postgresql", "sqlite", "mysql", "mariadb"):
        return False
    return set(trigger_names(key, name)) <= triggers_on(conn, table_name, schema)


def triggers_on(conn: Connection, table_name: str, schema: str | None) -> set[str]:
    """The names of the (user) triggers on ``table_name``."""
    name = conn.dialect.name
    if name == "postgresql":
        prep = conn.dialect.identifier_preparer
        qualified = prep.quote(table_name)
        if schema:
            qualified = f"{prep.quote_schema(schema)}.{qualified}"
        rows = conn.execute(
            text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:t) "
                "AND NOT tgisinternal"
            ),
            {"t": qualified},
        ).scalars()
    elif name == "sqlite":
        rows = conn.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
            {"t": table_name},
        ).scalars()
    elif name in ("mysql", "mariadb"):
        rows = conn.execute(
            text(
                "SELECT trigger_name FROM information_schema.triggers WHERE "
                "event_object_schema = COALESCE(:s, DATABASE()) AND event_object_table = :t"
            ),
            {"t": table_name, "s": schema},
        ).scalars()
    else:
        return set()
    return set(rows)


def from_table(
    key: str,
    table: Table,
    old: Sequence[str],
    new: Sequence[str],
    forward_sql: Mapping[str, str],
    backward_sql: Mapping[str, str],
    catch_errors: bool = True,
) -> SyncTriggers:
    """The triggers of ``key`` for a table as the database has it (reflected)."""
    missing = [n for n in (*old, *new) if n not in table.c]
    if missing:
        raise SyncTriggerError(
            f"{key}: table {table.description} has no column(s) {', '.join(missing)}"
        )
    return SyncTriggers(
        key=key,
        table_name=table.name,
        schema=table.schema,
        old=tuple(table.c[n] for n in old),
        new=tuple(table.c[n] for n in new),
        forward_sql=dict(forward_sql),
        backward_sql=dict(backward_sql),
        primary_key=tuple(c.name for c in table.primary_key.columns),
        catch_errors=catch_errors,
    )


def placed(conn: Connection, triggers: SyncTriggers) -> SyncTriggers:
    """``triggers`` with their PostgreSQL functions placed in ``conn``'s current
    schema when the table names none, so trigger bodies never depend on the
    search_path of the session that writes."""
    if conn.dialect.name != "postgresql" or triggers.schema or triggers.function_schema:
        return triggers
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    return dataclasses.replace(triggers, function_schema=schema)


def create(conn: Connection, triggers: SyncTriggers) -> None:
    """Create (or replace) the triggers on ``conn``, in its transaction."""
    for statement in placed(conn, triggers).create(conn.dialect):
        conn.exec_driver_sql(statement)


def drop(conn: Connection, triggers: SyncTriggers) -> None:
    """Drop the triggers on ``conn`` (those that exist), in its transaction."""
    for statement in placed(conn, triggers).drop(conn.dialect):
        conn.exec_driver_sql(statement)


