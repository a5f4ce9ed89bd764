"""Indexes through the four steps, without a lock that blocks writes.

Concurrent index operations
    ``op.create_index(..., postgresql_concurrently=True)`` and
    ``op.drop_index(..., postgresql_concurrently=True)`` cannot run inside a
    transaction block. With :mod:`fourstep_sqla.alembic` imported they run in
    an autocommit block of their own (online and in ``--sql`` output), so a
    revision runs exactly as autogenerate writes it. They can be run again:
    an index left INVALID by a build that was killed or failed is dropped
    (concurrently) and built again, a valid one of the same name is kept, a
    missing one is not dropped. Autogenerate writes them for the index
    :func:`~fourstep_sqla.attribute.forward_index` declares (step 2, and its
    downgrade) and for any index on an old column the model stops declaring
    before step 4.

Indexes on the old column(s) at step 4
    ``DROP COLUMN`` takes every index on the column with it (MariaDB/MySQL
    shrink a composite one instead). ``op.drop_old`` therefore records the
    exact definition of each index that depends on the old column(s) in
    ``fourstep_indexes`` and drops it explicitly in the DROP's own short
    transaction, under the ACCESS EXCLUSIVE lock the DROP takes anyway (a
    separate ``DROP INDEX CONCURRENTLY`` first would only add a window in which
    a refused or failed drop leaves the column without its index).
    ``op.restore_old`` builds them again, concurrently on PostgreSQL, once the
    old values are restored. Indexes that back a constraint (a UNIQUE
    constraint on the old column) are dropped with it and not restored: a
    warning names them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations
from alembic.operations import ops as alembic_ops
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
    text,
)

__all__ = [
    "INDEXES_TABLE",
    "OldIndex",
    "concurrent",
    "drop_statements",
    "forget",
    "mentions",
    "on_old_columns",
    "rebuild",
    "recall",
    "record",
    "regclass",
    "run_index_op",
]

log = logging.getLogger("fourstep_sqla.alembic.indexes")

INDEXES_METADATA = MetaData()
INDEXES_TABLE = "fourstep_indexes"

indexes_table = Table(
    INDEXES_TABLE,
    INDEXES_METADATA,
    Column("key", String(255), primary_key=True),
    Column("index_name", String(255), primary_key=True),
    Column("table_name", String(255), nullable=False),
    Column("definition", Text, nullable=False),
)


# -- concurrent index operations -------------------------------------------------------
def concurrent(operation: MigrateOperation) -> bool:
    """A PostgreSQL concurrent index operation (it needs an autocommit block)."""
    return _concurrent(operation)


def _concurrent(operation: MigrateOperation) -> bool:
    return isinstance(operation, (alembic_ops.CreateIndexOp, alembic_ops.DropIndexOp)) and bool(
        operation.kw.get("postgresql_concurrently")
    )


def _in_autocommit(operations: Operations) -> bool:
    connection = operations.get_context().connection
    if connection is None:
        return False
    return connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


def _pg_index_state(conn: Connection, name: str, schema: str | None) -> bool | None:
    """True: a valid index ``name``; False: an invalid one; None: none."""
    row = conn.execute(
        text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :name AND "
            "n.nspname = coalesce(:schema, current_schema())"
        ),
        {"name": name, "schema": schema},
    ).first()
    return None if row is None else bool(row[0])


#: transactions open at least this long when a concurrent build starts are named
LONG_TRANSACTION_SECONDS = 1.0


def _name_long_transactions(conn: Connection, name: str, table: str | None,
                            schema: str | None) -> None:
    """Say which transactions ``CREATE INDEX CONCURRENTLY`` will wait for.

    The build waits for every transaction that writes the table, and, before it
    ends, for every transaction of the database (on any table) that holds a
    snapshot older than its own: a report in REPEATABLE READ, a ``pg_dump``, a
    forgotten session. The application is not blocked meanwhile, but the
    migration looks hung: those open for a second or more as the build starts
    are named in a warning (pid, application, how long, state, the start of
    the query), so that whoever runs the migration knows what it waits for."""
    prep = conn.dialect.identifier_preparer
    qualified = prep.quote(table or "")
    if schema is not None:
        qualified = f"{prep.quote_schema(schema)}.{qualified}"
    try:
        rows = conn.execute(text(
            "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'no name'), a.state, "
            "round(extract(epoch FROM clock_timestamp() - a.xact_start))::bigint, "
            "left(regexp_replace(a.query, '\\s+', ' ', 'g'), 80) "
            "FROM pg_stat_activity a WHERE a.datname = current_database() "
            "AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend' "
            "AND a.xact_start < clock_timestamp() - make_interval(secs => :s) "
            "AND (a.backend_xmin IS NOT NULL OR EXISTS (SELECT 1 FROM pg_locks l "
            "WHERE l.pid = a.pid AND l.relation = to_regclass(:table))) "
            "ORDER BY a.xact_start LIMIT 5"
        ), {"s": LONG_TRANSACTION_SECONDS, "table": qualified}).all()
    except Exception:  # pg_stat_activity not readable: nothing to say
        log.debug("could not read pg_stat_activity", exc_info=True)
        return
    if rows:
        log.warning(
            "CREATE INDEX CONCURRENTLY %s waits for these open transactions to end "
            "(the application is not blocked meanwhile): %s",
            name,
            "; ".join(f"pid {pid} ({app}, open {age} s, {state}: {query!r})"
                      for pid, app, state, age, query in rows),
        )


def _drop_invalid(conn: Connection, name: str, schema: str | None) -> None:
    prep = conn.dialect.identifier_preparer
    qualified = prep.quote(name)
    if schema is not None:
        qualified = f"{prep.quote_schema(schema)}.{qualified}"
    conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")


def run_index_op(
    operations: Operations,
    operation: MigrateOperation,
    original: Callable[[Operations, MigrateOperation], Any],
) -> Any:
    """Run ``operation``; a PostgreSQL concurrent index operation in an
    autocommit block of its own, and so that it can be run again."""
    context = operations.get_context()
    if context.dialect.name != "postgresql" or not _concurrent(operation):
        return original(operations, operation)
    assert isinstance(operation, (alembic_ops.CreateIndexOp, alembic_ops.DropIndexOp))
    if context.as_sql:
        with context.autocommit_block():
            return original(operations, operation)
    if _in_autocommit(operations):
        return _run_concurrently(operations, operation, original)
    with context.autocommit_block():
        return _run_concurrently(operations, operation, original)


def _run_concurrently(
    operations: Operations,
    operation: alembic_ops.CreateIndexOp | alembic_ops.DropIndexOp,
    original: Callable[[Operations, MigrateOperation], Any],
) -> Any:
    conn = operations.get_bind()
    name = str(operation.index_name)
    state = _pg_index_state(conn, name, operation.schema)
    if isinstance(operation, alembic_ops.DropIndexOp):
        if state is None:
            log.info("index %s is not there (dropped already); nothing to drop", name)
            return None
        return original(operations, operation)
    if state is True:
        log.info("index %s exists already (an earlier run built it); kept", name)
        return None
    if state is False:
        log.warning("index %s was left INVALID by a build that stopped; dropping it and "
                    "building it again", name)
        _drop_invalid(conn, name, operation.schema)
    _name_long_transactions(conn, name, operation.table_name, operation.schema)
    try:
        return original(operations, operation)
    except BaseException:
        # a failed concurrent build leaves an INVALID index behind: not for the next run
        try:
            if _pg_index_state(conn, name, operation.schema) is False:
                _drop_invalid(conn, name, operation.schema)
        except Exception:
            log.debug("could not drop the invalid index %s", name, exc_info=True)
        raise


# -- indexes on the old columns ---------------------------------------------------------
class OldIndex:
    """One index that depends on an old column: its name and exact definition."""

    def __init__(self, name: str, definition: str, constraint: bool = False) -> None:
        self.name, self.definition, self.constraint = name, definition, constraint

    def __repr__(self) -> str:
        return f"OldIndex({self.name!r}, {self.definition!r})"


def _words(names: Sequence[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(?<![\w$])[\"`\[]?(?:{alternatives})[\"`\]]?(?![\w$])", re.IGNORECASE)


def mentions(index: Any, names: Sequence[str]) -> bool:
    """``index`` (a SQLAlchemy Index, model or reflected) uses one of the columns ``names``."""
    words = _words(names)
    for expression in index.expressions:
        name = getattr(expression, "name", None)
        if isinstance(expression, (Column, str)):
            if (name if name is not None else expression) in names:
                return True
            continue
        if words.search(str(expression)):
            return True
    return False


def on_old_columns(conn: Connection, table: Table, old: Sequence[str]) -> list[OldIndex]:
    """The indexes that depend on any of the ``old`` columns of ``table``."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return _pg_indexes(conn, table, old)
    if dialect == "sqlite":
        return _sqlite_indexes(conn, table, old)
    if dialect in ("mysql", "mariadb"):
        return _mysql_indexes(conn, table, old)
    return []


def _pg_indexes(conn: Connection, table: Table, old: Sequence[str]) -> list[OldIndex]:
    rows = conn.execute(
        text(
            "SELECT DISTINCT ic.relname, pg_get_indexdef(i.indexrelid), "
            "EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
            "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
            "JOIN pg_depend d ON d.objid = i.indexrelid AND d.classid = 'pg_class'::regclass "
            "AND d.refobjid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = d.refobjsubid "
            "WHERE i.indrelid = to_regclass(:table) AND a.attname = ANY(:old) "
            "ORDER BY 1"
        ),
        {"table": regclass(conn, table), "old": list(old)},
    ).all()
    return [OldIndex(r[0], r[1], bool(r[2])) for r in rows]


def regclass(conn: Connection, table: Table) -> str:
    """``table``'s name as the database quotes it, with its schema if it has one."""
    prep = conn.dialect.identifier_preparer
    quoted = prep.quote(table.name)
    return f"{prep.quote_schema(table.schema)}.{quoted}" if table.schema else quoted


def _sqlite_indexes(conn: Connection, table: Table, old: Sequence[str]) -> list[OldIndex]:
    rows = conn.execute(
        text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t "
             "AND sql IS NOT NULL ORDER BY name"),
        {"t": table.name},
    ).all()
    words = _words(old)
    found = []
    for name, sql in rows:
        on = sql.split(" ON ", 1)[-1] if " ON " in sql.upper() else sql
        body = on[on.find("("):] if "(" in on else on
        if words.search(body):
            found.append(OldIndex(name, sql))
    return found


def _mysql_indexes(conn: Connection, table: Table, old: Sequence[str]) -> list[OldIndex]:
    prep = conn.dialect.identifier_preparer
    quoted = regclass(conn, table)
    create = conn.exec_driver_sql(f"SHOW CREATE TABLE {quoted}").one()[1]
    words = _words(old)
    found = []
    for line in create.splitlines():
        match = re.match(r"\s*((?:UNIQUE |FULLTEXT |SPATIAL )?KEY) `((?:[^`]|``)+)` (.*?),?$",
                         line)
        if match and words.search(match.group(3)):
            kind, name, body = match.groups()
            name = name.replace("``", "`")
            found.append(OldIndex(
                name, f"ALTER TABLE {quoted} ADD {kind} {prep.quote(name)} {body}",
            ))
    return found


def record(conn: Connection, key: str, table: Table, found: Sequence[OldIndex]) -> None:
    """Remember ``found`` for ``key`` (in ``conn``'s transaction), for the restore."""
    INDEXES_METADATA.create_all(conn, checkfirst=True)
    conn.execute(delete(indexes_table).where(indexes_table.c.key == key))
    for index in found:
        conn.execute(insert(indexes_table).values(
            key=key, index_name=index.name, table_name=table.name, definition=index.definition,
        ))


def recall(conn: Connection, key: str) -> list[OldIndex]:
    """The indexes :func:`record` remembered for ``key`` (none when never recorded)."""
    if not inspect(conn).has_table(INDEXES_TABLE):
        return []
    rows = conn.execute(
        select(indexes_table.c.index_name, indexes_table.c.definition)
        .where(indexes_table.c.key == key)
        .order_by(indexes_table.c.index_name)
    ).all()
    return [OldIndex(r[0], r[1]) for r in rows]


def forget(conn: Connection, key: str) -> None:
    if inspect(conn).has_table(INDEXES_TABLE):
        conn.execute(delete(indexes_table).where(indexes_table.c.key == key))


def drop_statements(conn: Connection, table: Table, found: Sequence[OldIndex]) -> list[str]:
    """Dropping ``found`` explicitly, before the DROP COLUMN, in its transaction."""
    prep = conn.dialect.identifier_preparer
    dialect = conn.dialect.name
    statements = []
    for index in found:
        if index.constraint and dialect == "postgresql":
            continue  # goes with its constraint, with the column
        if dialect == "postgresql":
            name = prep.quote(index.name)
            if table.schema:
                name = f"{prep.quote_schema(table.schema)}.{name}"
            statements.append(f"DROP INDEX IF EXISTS {name}")
        elif dialect in ("mysql", "mariadb"):
            statements.append(f"ALTER TABLE {regclass(conn, table)} DROP INDEX "
                              f"{prep.quote(index.name)}")
    return statements


def rebuild(conn: Connection, table: Table, found: Sequence[OldIndex]) -> None:
    """Build ``found`` again (``conn`` in autocommit: concurrently on PostgreSQL)."""
    dialect = conn.dialect.name
    present = {ix["name"] for ix in inspect(conn).get_indexes(table.name, schema=table.schema)}
    for index in found:
        if index.constraint:
            log.warning("%s backed a constraint on the old column: it was dropped with the "
                        "column and is not restored; add the constraint again if you need "
                        "it", index.name)
            continue
        if dialect == "postgresql":
            state = _pg_index_state(conn, index.name, table.schema)
            if state is True:
                continue
            if state is False:
                _drop_invalid(conn, index.name, table.schema)
            statement = re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY ",
                               index.definition, count=1)
            try:
                conn.exec_driver_sql(statement)
            except BaseException:
                if _pg_index_state(conn, index.name, table.schema) is False:
                    _drop_invalid(conn, index.name, table.schema)
                raise
        elif index.name not in present:
            conn.exec_driver_sql(index.definition)
        log.info("index %s built again", index.name)
