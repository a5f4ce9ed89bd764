"""Sync triggers keep old and new in step for writers outside the ORM.

Every write here is raw SQL on the table, as the previous release, a cron job
or another service would send it, on SQLite, PostgreSQL and MariaDB; the rows
are read back raw. The triggers are installed from the phased attribute with
:class:`fourstep_sqla.triggers.SyncTriggers` (what the step-1 revision does).

- :class:`TestInserts` / :class:`TestUpdates`: one side written fills the
  other; both written is left as written; NULL is a value (clearing one side
  clears the other); "written" means assigned, not changed, where the
  database can tell (PostgreSQL and SQLite: ``UPDATE OF``).
- :class:`TestLibraryWrites`: the backfill, the repair and a restore never
  touch the other place.
- :class:`TestFailures`: a value the forward transform rejects leaves the new
  place empty (PostgreSQL, MariaDB) or fails the write (SQLite, which cannot
  catch an error inside a trigger).
- :class:`TestLifecycle`: detection, replacement, removal, bypass.

Tables are prefixed ``trg_``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, String, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, backfill, phased, verify
from fourstep_sqla.triggers import SyncTriggers, create, drop, installed, trigger_names

pytestmark = pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning")

Row = tuple[Any, ...]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def db(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """SQLite, PostgreSQL (own schema) and MariaDB (own database)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_engine")
        return
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_schema_engine")
        return
    yield request.getfixturevalue("mysql_db_engine")  # a database of its own


def split_model(table: str, *, old_default: str | None = None) -> Any:
    class Base(DeclarativeBase):
        pass

    old_kw: dict[str, Any] = {}
    if old_default is not None:
        old_kw["server_default"] = old_default
    return type(
        f"Trg_{table}",
        (Base,),
        {
            "__tablename__": table,
            "__module__": __name__,
            "id": mapped_column(Integer, primary_key=True, autoincrement=False),
            "legacy_name": mapped_column("name", String(80), nullable=True, **old_kw),
            "first_name": mapped_column(String(40), nullable=True),
            "last_name": mapped_column(String(40), nullable=True),
            "note": mapped_column(String(40), nullable=True),
            "full_name": phased(
                old="legacy_name",
                new=("first_name", "last_name"),
                forward=Transform.split(" "),
                backward=Transform.join(" "),
                phase=Phase.WRITE_BOTH,
            ),
        },
    )


def cast_model(table: str) -> Any:
    class Base(DeclarativeBase):
        pass

    return type(
        f"Trg_{table}",
        (Base,),
        {
            "__tablename__": table,
            "__module__": __name__,
            "id": mapped_column(Integer, primary_key=True, autoincrement=False),
            "amount_text": mapped_column(String(20), nullable=True),
            "amount": mapped_column(Integer, nullable=True),
            "total": phased(
                old="amount_text",
                new="amount",
                forward=Transform.cast(int, Integer()),
                backward=Transform.cast(str, String()),
                phase=Phase.WRITE_BOTH,
            ),
        },
    )


def setup(engine: Engine, model: Any, attr: str = "full_name") -> Any:
    model.metadata.create_all(engine)
    spec = getattr(model, attr).spec
    with engine.begin() as conn:
        create(conn, SyncTriggers.of(spec, conn.dialect))
    return model


def run(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def rows(engine: Engine, table: str) -> dict[int, Row]:
    with engine.connect() as conn:
        result = conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))
        names = list(result.keys())
        out = {}
        for r in result:
            values = dict(zip(names, r))
            key = values.pop("id")
            out[key] = tuple(values.values())
        return out


def split_rows(engine: Engine, table: str) -> dict[int, Row]:
    """``{id: (name, first_name, last_name)}``."""
    return {k: v[:3] for k, v in rows(engine, table).items()}


class TestInserts:
    def test_one_side_fills_the_other(self, db: Engine) -> None:
        setup(db, split_model("trg_ins"))
        run(db, "INSERT INTO trg_ins (id, name) VALUES (1, 'Ada Lovelace'), (2, 'Cher')")
        run(db, "INSERT INTO trg_ins (id, first_name, last_name) VALUES (3, 'Mary Ann', 'Smith')")
        run(db, "INSERT INTO trg_ins (id, last_name) VALUES (4, 'Lovelace')")
        run(db, "INSERT INTO trg_ins (id, name) VALUES (5, '')")
        run(db, "INSERT INTO trg_ins (id, note) VALUES (6, 'nothing')")
        assert split_rows(db, "trg_ins") == {
            1: ("Ada Lovelace", "Ada", "Lovelace"),
            2: ("Cher", "Cher", None),
            3: ("Mary Ann Smith", "Mary Ann", "Smith"),
            4: ("Lovelace", None, "Lovelace"),
            5: ("", None, None),
            6: (None, None, None),
        }

    def test_both_sides_are_left_as_written(self, db: Engine) -> None:
        setup(db, split_model("trg_ins_both"))
        run(db, "INSERT INTO trg_ins_both (id, name, first_name, last_name) "
                "VALUES (1, 'Mary Ann Smith', 'Mary Ann', 'Smith'), (2, 'X Y', 'Q', 'R')")
        assert split_rows(db, "trg_ins_both") == {
            1: ("Mary Ann Smith", "Mary Ann", "Smith"),
            2: ("X Y", "Q", "R"),
        }

    def test_an_old_column_left_at_its_default_is_not_written(self, db: Engine) -> None:
        """Step-4 code never writes the old column: it gets its server default, which
        must not stand beside the new value."""
        setup(db, split_model("trg_ins_default", old_default="Nobody"))
        run(db, "INSERT INTO trg_ins_default (id, first_name, last_name) VALUES (1, 'Ada', 'L')")
        run(db, "INSERT INTO trg_ins_default (id, note) VALUES (2, 'old release')")
        run(db, "INSERT INTO trg_ins_default (id, name) VALUES (3, 'Grace Hopper')")
        assert split_rows(db, "trg_ins_default") == {
            1: ("Ada L", "Ada", "L"),
            2: ("Nobody", "Nobody", None),
            3: ("Grace Hopper", "Grace", "Hopper"),
        }


class TestUpdates:
    def _seed(self, db: Engine, table: str) -> None:
        setup(db, split_model(table))
        run(db, f"INSERT INTO {table} (id, name) VALUES "
                "(1, 'Ada Lovelace'), (2, 'Grace Hopper'), (3, 'Alan Turing'), (4, 'Cher')")

    def test_old_only(self, db: Engine) -> None:
        self._seed(db, "trg_up_old")
        run(db, "UPDATE trg_up_old SET name = 'Ada King' WHERE id = 1")
        run(db, "UPDATE trg_up_old SET name = NULL WHERE id = 2")
        run(db, "UPDATE trg_up_old SET name = 'Mary Ann Smith' WHERE id = 3")
        assert split_rows(db, "trg_up_old") == {
            1: ("Ada King", "Ada", "King"),
            2: (None, None, None),
            3: ("Mary Ann Smith", "Mary", "Ann Smith"),
            4: ("Cher", "Cher", None),
        }

    def test_new_only(self, db: Engine) -> None:
        self._seed(db, "trg_up_new")
        run(db, "UPDATE trg_up_new SET first_name = 'Augusta' WHERE id = 1")
        run(db, "UPDATE trg_up_new SET first_name = 'Mary Ann', last_name = 'Smith' "
                "WHERE id = 2")
        run(db, "UPDATE trg_up_new SET first_name = NULL, last_name = NULL WHERE id = 3")
        assert split_rows(db, "trg_up_new") == {
            1: ("Augusta Lovelace", "Augusta", "Lovelace"),
            2: ("Mary Ann Smith", "Mary Ann", "Smith"),
            3: (None, None, None),
            4: ("Cher", "Cher", None),
        }

    def test_assigning_null_to_a_null_new_place_is_a_write(self, db: Engine) -> None:
        setup(db, split_model("trg_up_null"))
        # the old release wrote the old place past the triggers (replica role, or
        # before they existed): the new place is still empty
        past_triggers(db, "trg_up_null.full_name",
                      "INSERT INTO trg_up_null (id, name) VALUES (1, 'Ada Lovelace')")
        assert split_rows(db, "trg_up_null")[1] == ("Ada Lovelace", None, None)
        run(db, "UPDATE trg_up_null SET first_name = NULL, last_name = NULL WHERE id = 1")
        if db.dialect.name in ("mysql", "mariadb"):
            # no UPDATE OF on MariaDB/MySQL: an assignment that changes nothing is
            # not seen (documented)
            assert split_rows(db, "trg_up_null")[1] == ("Ada Lovelace", None, None)
        else:
            assert split_rows(db, "trg_up_null")[1] == (None, None, None)

    def test_both_sides_are_left_as_written(self, db: Engine) -> None:
        self._seed(db, "trg_up_both")
        # what the ORM sends at steps 1-3: new = v, old = backward(v)
        run(db, "UPDATE trg_up_both SET name = 'Mary Ann Smith', first_name = 'Mary Ann', "
                "last_name = 'Smith' WHERE id = 1")
        # the same value again, with the new place unchanged
        run(db, "UPDATE trg_up_both SET name = 'Mary Ann Smith', first_name = 'Mary Ann', "
                "last_name = 'Smith' WHERE id = 1")
        # inconsistent, but both assigned and changed: as written
        run(db, "UPDATE trg_up_both SET name = 'X Y', first_name = 'Q', last_name = 'R' "
                "WHERE id = 2")
        assert split_rows(db, "trg_up_both") == {
            1: ("Mary Ann Smith", "Mary Ann", "Smith"),
            2: ("X Y", "Q", "R"),
            3: ("Alan Turing", "Alan", "Turing"),
            4: ("Cher", "Cher", None),
        }

    def test_old_rewritten_to_the_value_it_has_resyncs(self, db: Engine) -> None:
        """``SET name = name`` re-syncs a row whose new place drifted (PostgreSQL,
        SQLite: the old side is assigned)."""
        self._seed(db, "trg_up_resync")
        past_triggers(db, "trg_up_resync.full_name",
                      "UPDATE trg_up_resync SET first_name = 'Drift' WHERE id = 2")
        run(db, "UPDATE trg_up_resync SET name = name")
        expected = ("Grace Hopper", "Grace", "Hopper")
        if db.dialect.name in ("mysql", "mariadb"):
            expected = ("Grace Hopper", "Drift", "Hopper")  # not seen there (documented)
        assert split_rows(db, "trg_up_resync")[2] == expected

    def test_other_columns_touch_nothing(self, db: Engine) -> None:
        self._seed(db, "trg_up_other")
        before = split_rows(db, "trg_up_other")
        run(db, "UPDATE trg_up_other SET note = 'x'")
        assert split_rows(db, "trg_up_other") == before

    def test_upsert(self, db: Engine) -> None:
        self._seed(db, "trg_upsert")
        if db.dialect.name == "mysql":
            sql = ("INSERT INTO trg_upsert (id, name) VALUES (1, 'Ada King'), (9, 'New Row') "
                   "ON DUPLICATE KEY UPDATE name = VALUES(name)")
        else:
            sql = ("INSERT INTO trg_upsert (id, name) VALUES (1, 'Ada King'), (9, 'New Row') "
                   "ON CONFLICT (id) DO UPDATE SET name = excluded.name")
        run(db, sql)
        got = split_rows(db, "trg_upsert")
        assert got[1] == ("Ada King", "Ada", "King")
        assert got[9] == ("New Row", "New", "Row")


def past_triggers(engine: Engine, key: str, sql: str) -> None:
    """Run ``sql`` past the sync triggers of ``key``, the way each database allows
    (what a replication apply or a writer before the triggers would leave)."""
    with engine.begin() as conn:
        name = conn.dialect.name
        if name == "postgresql":
            conn.exec_driver_sql("SET LOCAL fourstep.sync = 'off'")
        elif name == "sqlite":
            conn.execute(text("INSERT INTO fourstep_sync_off (key) VALUES (:k)"), {"k": key})
        else:
            conn.exec_driver_sql("SET @fourstep_sync = 'off'")
        conn.execute(text(sql))
        if name == "sqlite":
            conn.execute(text("DELETE FROM fourstep_sync_off WHERE key = :k"), {"k": key})
        elif name != "postgresql":
            conn.exec_driver_sql("SET @fourstep_sync = NULL")


class TestLibraryWrites:
    def test_backfill_and_repair_never_touch_the_old_place(self, db: Engine) -> None:
        model = setup(db, split_model("trg_lib"))
        past_triggers(
            db, "trg_lib.full_name",
            "INSERT INTO trg_lib (id, name, first_name, last_name) VALUES "
            "(1, 'Ada ', NULL, NULL), (2, '', NULL, NULL), (3, ' Lovelace', NULL, NULL), "
            "(4, 'Alan Turing', 'Old', 'Value')",
        )
        report = backfill(db, model.full_name)
        assert report.rows_updated == 2
        repaired = backfill(db, model.full_name, repair=True)
        assert repaired.rows_updated == 1
        assert split_rows(db, "trg_lib") == {
            1: ("Ada ", "Ada", None),
            2: ("", None, None),
            3: (" Lovelace", None, "Lovelace"),
            4: ("Alan Turing", "Alan", "Turing"),
        }
        result = verify(db, model.full_name, record=False)
        assert result.synced is True
        assert result.ok and result.lossy == 3


class TestFailures:
    def test_a_rejected_value_leaves_the_new_place_empty(self, db: Engine) -> None:
        setup(db, cast_model("trg_cast"), "total")
        run(db, "INSERT INTO trg_cast (id, amount_text) VALUES (1, '12')")
        if db.dialect.name == "sqlite":
            # SQLite cannot catch an error inside a trigger: the write fails
            with pytest.raises(DBAPIError):
                run(db, "INSERT INTO trg_cast (id, amount_text) VALUES (2, 'x')")
            with pytest.raises(DBAPIError):
                run(db, "UPDATE trg_cast SET amount_text = 'twelve' WHERE id = 1")
            assert rows(db, "trg_cast") == {1: ("12", 12)}
            return
        run(db, "INSERT INTO trg_cast (id, amount_text) VALUES (2, 'x')")
        run(db, "UPDATE trg_cast SET amount_text = 'twelve' WHERE id = 1")
        assert rows(db, "trg_cast") == {1: ("twelve", None), 2: ("x", None)}


class TestLifecycle:
    def test_installed_replaced_and_dropped(self, db: Engine) -> None:
        model = split_model("trg_life")
        model.metadata.create_all(db)
        spec = model.full_name.spec
        with db.connect() as conn:
            assert installed(conn, spec) is False
        setup(db, model)
        setup(db, model)  # again: replaced, not duplicated
        with db.connect() as conn:
            assert installed(conn, spec) is True
            triggers = SyncTriggers.of(spec, conn.dialect)
        with db.begin() as conn:
            drop(conn, triggers)
            drop(conn, triggers)  # again: nothing left to drop, no error
        with db.connect() as conn:
            assert installed(conn, spec) is False
            if db.dialect.name == "postgresql":
                functions = conn.execute(text(
                    "SELECT count(*) FROM pg_proc WHERE proname LIKE 'fs\\_trg\\_life%'"
                )).scalar_one()
                assert functions == 0
        run(db, "INSERT INTO trg_life (id, name) VALUES (1, 'Ada Lovelace')")
        assert split_rows(db, "trg_life") == {1: ("Ada Lovelace", None, None)}

    def test_names_fit_every_database(self) -> None:
        key = "a_very_long_schema_name.a_table_with_a_long_name.and_a_long_attribute_name"
        for dialect in ("postgresql", "sqlite", "mysql"):
            names = trigger_names(key, dialect)
            assert all(len(n) <= 63 for n in names)
            assert len(set(names)) == len(names)
        assert trigger_names("users.a", "sqlite") != trigger_names("users_a", "sqlite")

    @pytest.mark.postgres
    def test_replica_role_bypasses_them(self, pg_schema_engine: Engine) -> None:
        engine = pg_schema_engine
        setup(engine, split_model("trg_replica"))
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.exec_driver_sql("INSERT INTO trg_replica (id, name) VALUES (1, 'Ada Lovelace')")
        assert split_rows(engine, "trg_replica") == {1: ("Ada Lovelace", None, None)}


def loud(value: str) -> str:
    return value.upper()


def test_a_python_only_transform_says_so_where_it_is_declared() -> None:
    from fourstep_sqla.errors import NoSyncTriggersWarning

    class Base(DeclarativeBase):
        pass

    with pytest.warns(NoSyncTriggersWarning) as caught:
        type("Trg_trg_python", (Base,), {
            "__tablename__": "trg_python",
            "__module__": __name__,
            "id": mapped_column(Integer, primary_key=True),
            "name": mapped_column(String(20), nullable=True),
            "shout": mapped_column(String(20), nullable=True),
            "loud_name": phased(old="name", new="shout", forward=Transform(loud),
                                backward=Transform.identity(), phase=Phase.WRITE_BOTH),
        })
    message = str(caught[0].message)
    assert "Trg_trg_python.loud_name" in message and "'loud'" in message
    assert "no SQL form" in message and "sql=" in message
    assert caught[0].filename == __file__  # points at the declaration


@pytest.mark.postgres
def test_a_writer_with_another_search_path(pg_schema_engine: Engine, pg_engine: Engine) -> None:
    """The trigger bodies call their helper functions by schema, not by search_path."""
    engine = pg_schema_engine
    setup(engine, split_model("trg_path"))
    with engine.connect() as conn:
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    with pg_engine.begin() as conn:  # search_path: public
        conn.exec_driver_sql(f'INSERT INTO "{schema}".trg_path (id, name) VALUES (1, \'Ada L\')')
        conn.exec_driver_sql(f'UPDATE "{schema}".trg_path SET first_name = \'Bo\' WHERE id = 1')
    assert split_rows(engine, "trg_path") == {1: ("Bo L", "Bo", "L")}


def quoted_model(schema: str | None) -> Any:
    """Names that need quoting: a table with a space, a reserved word as the old
    column, a new column with a space and capitals, a capitalised key."""

    class Base(DeclarativeBase):
        pass

    args: dict[str, Any] = {"schema": schema} if schema else {}
    return type("Trg_quoted", (Base,), {
        "__tablename__": "Order Items",
        "__table_args__": args,
        "__module__": __name__,
        "id": mapped_column("ID", Integer, primary_key=True, autoincrement=False),
        "legacy": mapped_column("select", String(20), nullable=True),
        "amount": mapped_column("Amount Int", Integer, nullable=True),
        "quantity": phased(old="legacy", new="amount", forward=Transform.cast(int, Integer()),
                           backward=Transform.cast(str, String(20)), phase=Phase.WRITE_BOTH),
    })


def test_names_that_need_quoting(db: Engine) -> None:
    model = quoted_model(None)
    setup(db, model, "quantity")
    q = db.dialect.identifier_preparer.quote
    table, old, new, key = q("Order Items"), q("select"), q("Amount Int"), q("ID")
    run(db, f"INSERT INTO {table} ({key}, {old}) VALUES (1, '12')")
    run(db, f"INSERT INTO {table} ({key}, {new}) VALUES (2, 34)")
    run(db, f"UPDATE {table} SET {old} = '56' WHERE {key} = 1")
    run(db, f"UPDATE {table} SET {new} = 78 WHERE {key} = 2")
    with db.connect() as conn:
        got = conn.execute(text(f"SELECT {key}, {old}, {new} FROM {table} ORDER BY {key}"))
        assert [tuple(r) for r in got] == [(1, "56", 56), (2, "78", 78)]
    with db.begin() as conn:
        drop(conn, SyncTriggers.of(model.quantity.spec, conn.dialect))
        assert installed(conn, model.quantity.spec) is False
    if db.dialect.name in ("mysql", "mariadb"):
        with db.begin() as conn:
            conn.exec_driver_sql("DROP TABLE `Order Items`")


@pytest.mark.postgres
def test_names_that_need_quoting_in_a_schema(pg_engine: Engine) -> None:
    schema = f"Sales Dept {secrets.token_hex(3)}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        model = quoted_model(schema)
        setup(pg_engine, model, "quantity")
        table = f'"{schema}"."Order Items"'
        run(pg_engine, f'INSERT INTO {table} ("ID", "select") VALUES (1, \'12\')')
        run(pg_engine, f'UPDATE {table} SET "Amount Int" = 9 WHERE "ID" = 1')
        with pg_engine.connect() as conn:
            got = conn.execute(text(f'SELECT "select", "Amount Int" FROM {table}')).one()
        assert tuple(got) == ("9", 9)
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.mysql
def test_mariadb_compares_exactly_not_by_collation(mysql_db_engine: Engine) -> None:
    """'ada lovelace' beside ('Ada', 'Lovelace'), or a trailing space, is a difference
    the case-insensitive, PAD SPACE collation would hide: the drop would lose it."""
    engine = mysql_db_engine
    model = split_model("trg_collation")
    model.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO trg_collation (id, name, first_name, last_name) VALUES "
                "(1, 'ada lovelace', 'Ada', 'Lovelace'), (2, 'F5 L5', 'F5', 'L5 '), "
                "(3, 'Grace Hopper', 'Grace', 'Hopper')"
            ))
        result = verify(engine, model.full_name, record=False, synced=False)
        assert (result.mismatched, result.sample_keys) == (2, [(1,), (2,)])
        repaired = backfill(engine, model.full_name, repair=True)
        assert repaired.rows_updated == 2
        assert split_rows(engine, "trg_collation") == {
            1: ("ada lovelace", "ada", "lovelace"),
            2: ("F5 L5", "F5", "L5"),
            3: ("Grace Hopper", "Grace", "Hopper"),
        }
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE trg_collation")
