"""Partitioned tables on PostgreSQL, first class (issue 11).

The parent is partitioned by list, range or hash on ``tenant`` and its
primary key ``(tenant, id)`` includes the partition key; the model declares
``id`` first (see :mod:`test_key_order`). Everything works on the parent:

- :class:`TestBackfillVerify`: every batch statement the runner sends (UPDATE,
  verify's count) is an index scan on each partition it touches, never a
  sequential scan, with 20k analysed rows; list and range partitions are
  pruned (a batch touches the partitions of its tenants, not all of them);
  every row is written exactly once, with one worker and with two; verify
  is ok, then names a row changed behind it, key in the model's order.
- :class:`TestAlembic`: real revisions create the sync triggers on the parent
  (writes through the parent and straight into a partition are kept in
  step), ``op.backfill`` fills the parent, ``op.drop_old``'s gate refuses a
  row written past the triggers (its key in the table's order), then drops
  the old column from the parent and every partition; the downgrade
  restores every value. Without sync triggers the drop's guard trigger goes
  on the parent, and is gone afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from test_alembic_ops import Env
from test_key_order import (
    INDEX_SCANS,
    TENANTS,
    captured,
    count_fills,
    emails,
    explain_pg,
    fills,
    make_model,
    seed,
    tenant,
)

from fourstep_sqla import backfill, verify
from fourstep_sqla.alembic.ops import DropRefusedError
from fourstep_sqla.triggers import triggers_present

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
]

KINDS = ["list", "range", "hash"]
PARTS = 4


def partition_ddl(table: str, kind: str) -> list[str]:
    """The parent, partitioned by ``kind`` on tenant, and its ``PARTS`` partitions."""
    statements = [
        f"CREATE TABLE {table} (id INTEGER NOT NULL, tenant VARCHAR(20) NOT NULL, "
        f"mail VARCHAR(100), email VARCHAR(100), PRIMARY KEY (tenant, id)) "
        f"PARTITION BY {kind.upper()} (tenant)"
    ]
    per = TENANTS // PARTS
    for p in range(PARTS):
        if kind == "list":
            names = ", ".join(f"'t{t:03d}'" for t in range(p * per, (p + 1) * per))
            bounds = f"IN ({names})"
        elif kind == "range":
            low = "MINVALUE" if p == 0 else f"'t{p * per:03d}'"
            high = "MAXVALUE" if p == PARTS - 1 else f"'t{(p + 1) * per:03d}'"
            bounds = f"FROM ({low}) TO ({high})"
        else:
            bounds = f"WITH (MODULUS {PARTS}, REMAINDER {p})"
        statements.append(f"CREATE TABLE {table}_p{p} PARTITION OF {table} FOR VALUES {bounds}")
    return statements


def create_partitioned(engine: Engine, table: str, kind: str) -> set[str]:
    with engine.begin() as conn:
        for statement in partition_ddl(table, kind):
            conn.exec_driver_sql(statement)
    return {table, *(f"{table}_p{p}" for p in range(PARTS))}


def assert_index_scans_on_partitions(
    engine: Engine, sent: list[Any], relations: set[str], pruned: bool
) -> None:
    """No sequential scan of the parent or a partition; index scans; with
    ``pruned``, some batch touches fewer partitions than there are."""
    assert sent, "no batch statement was captured"
    touched = []
    for statement, parameters in sent:
        nodes = explain_pg(engine, statement, parameters)
        seq = [n for n in nodes if n[0] == "Seq Scan" and n[1] in relations]
        assert not seq, f"sequential scan in {nodes} of {statement} {parameters}"
        assert any(n[0] in INDEX_SCANS for n in nodes), f"{nodes}: {statement}"
        touched.append(len({n[1] for n in nodes if n[1] in relations}))
    if pruned:
        assert min(touched) < PARTS, touched


class TestBackfillVerify:
    @pytest.mark.parametrize("kind", KINDS)
    def test_batches_scan_indexes_and_fill_each_row_once(
        self, pg_schema_engine: Engine, kind: str
    ) -> None:
        engine = pg_schema_engine
        table = f"kp_{kind}"
        relations = create_partitioned(engine, table, kind)
        model = make_model(table)
        expected = seed(engine, model, 20_000)
        count_fills(engine, table)

        with captured(engine, table, ("UPDATE",)) as sent:
            report = backfill(engine, model.contact, batch_size=2_000, target_ms=0)
        assert report.complete and report.rows_updated == 20_000
        assert emails(engine, table) == expected
        assert fills(engine, table) == {k: 1 for k in expected}
        assert_index_scans_on_partitions(engine, sent, relations, pruned=kind != "hash")

        with captured(engine, table, ("SELECT COUNT",)) as sent:
            result = verify(engine, model.contact, batch_size=2_000)
        assert result.ok and result.total == 20_000
        assert_index_scans_on_partitions(engine, sent, relations, pruned=kind != "hash")

        # a write straight into a partition, past the ORM (no triggers here)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table}_p1 SET mail = 'moved@example.org' "
                              f"WHERE id = (SELECT min(id) FROM {table}_p1)"))
            moved = conn.execute(text(f"SELECT id, tenant FROM {table} "
                                      f"WHERE mail = 'moved@example.org'")).one()
        result = verify(engine, model.contact)
        assert result.mismatched == 1 and result.sample_keys == [tuple(moved)]

    @pytest.mark.parametrize("kind", KINDS)
    def test_two_workers_each_row_once(self, pg_schema_engine: Engine, kind: str) -> None:
        engine = pg_schema_engine
        table = f"kp_w_{kind}"
        create_partitioned(engine, table, kind)
        model = make_model(table)
        expected = seed(engine, model, 6_000)
        count_fills(engine, table)

        report = backfill(engine, model.contact, batch_size=250, target_ms=0, workers=2)

        assert report.complete and report.rows_updated == 6_000
        assert emails(engine, table) == expected
        assert fills(engine, table) == {k: 1 for k in expected}
        with engine.connect() as conn:
            ranges = conn.execute(text("SELECT count(*) FROM fourstep_ranges WHERE run_id = :r"),
                                  {"r": report.run_id}).scalar_one()
        assert ranges >= 2


KEY = "kp_people.contact"
SYNC = '''
    op.create_sync_triggers(
        "kp_people.contact", "kp_people", old=["mail"], new=["email"],
        forward_sql={"email": "upper(mail)"}, backward_sql={"mail": "lower(email)"},
    )
'''
UNSYNC = SYNC.replace("create_sync_triggers", "drop_sync_triggers")
BACKFILL = '''
    op.backfill("kp_people.contact", "kp_people", old=["mail"], new=["email"],
                forward_sql={"email": "upper(mail)"}, batch_size=500)
'''
DROP = '''
    op.drop_old(
        "kp_people.contact", "kp_people", old=[sa.Column("mail", sa.String(100))],
        new=["email"], forward_sql={"email": "upper(mail)"},
        backward_sql={"mail": "lower(email)"}, sync_triggers=True,
    )
'''
RESTORE = DROP.replace("op.drop_old(", "op.restore_old(")


class TestAlembic:
    @pytest.mark.parametrize("kind", KINDS)
    def test_triggers_backfill_and_drop_gate_on_the_parent(
        self, pg_schema_engine: Engine, tmp_path: Path, kind: str
    ) -> None:
        engine = pg_schema_engine
        env = Env(tmp_path, engine)
        create = "\n".join(f"op.execute({s!r})" for s in partition_ddl("kp_people", kind))
        seed_rows = ("op.execute(\"INSERT INTO kp_people (id, tenant, mail) SELECT g, 't' || "
                     "lpad((g % 200)::text, 3, '0'), 'user' || g || '@example.org' "
                     "FROM generate_series(1, 3000) g\")")
        env.revision("s0", None, f"{create}\n{seed_rows}", 'op.drop_table("kp_people")')
        env.revision("s1", "s0", SYNC, UNSYNC, imports="import fourstep_sqla.alembic  # noqa")
        env.revision("s3", "s1", BACKFILL, "pass", imports="import fourstep_sqla.alembic  # noqa")
        env.revision("s4", "s3", DROP, RESTORE, imports="import fourstep_sqla.alembic  # noqa")

        command.upgrade(env.config, "s1")
        with engine.connect() as conn:
            assert triggers_present(conn, KEY, "kp_people", None)
        with engine.begin() as conn:
            # through the parent, old side only; straight into a partition; new side only
            conn.execute(text("INSERT INTO kp_people (id, tenant, mail) "
                              "VALUES (9001, 't007', 'ada@example.org')"))
            part = conn.execute(text("SELECT tableoid::regclass::text FROM kp_people "
                                     "WHERE id = 10")).scalar_one()
            conn.execute(text(f"UPDATE {part} SET mail = 'grace@example.org' WHERE id = 10"))
            conn.execute(text("UPDATE kp_people SET email = 'ALAN@EXAMPLE.ORG' WHERE id = 11"))
            rows = dict(conn.execute(text(
                "SELECT id, mail || ' ' || coalesce(email, '-') FROM kp_people "
                "WHERE id IN (9001, 10, 11, 12)")).all())
        assert rows == {9001: "ada@example.org ADA@EXAMPLE.ORG",
                        10: "grace@example.org GRACE@EXAMPLE.ORG",
                        11: "alan@example.org ALAN@EXAMPLE.ORG",
                        12: "user12@example.org -"}

        command.upgrade(env.config, "s3")
        with engine.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM kp_people "
                                     "WHERE email IS DISTINCT FROM upper(mail)")).scalar_one()
            order = conn.execute(text("SELECT run_key_order FROM fourstep_state "
                                      "WHERE key = :k"), {"k": KEY}).scalar_one()
        assert left == 0 and json.loads(order) == ["tenant", "id"]

        with engine.begin() as conn:  # a write past the triggers
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.execute(text("UPDATE kp_people SET mail = 'eve@example.org' WHERE id = 42"))
        with pytest.raises(DropRefusedError) as caught:
            command.upgrade(env.config, "s4")
        assert "1 row(s) differ" in str(caught.value)
        assert f"('{tenant(42)}', 42)" in str(caught.value)  # the table's key order
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.execute(text("UPDATE kp_people SET email = 'EVE@EXAMPLE.ORG' WHERE id = 42"))

        command.upgrade(env.config, "s4")
        for relation in ["kp_people", *(f"kp_people_p{p}" for p in range(PARTS))]:
            assert "mail" not in {c["name"] for c in inspect(engine).get_columns(relation)}
        with engine.connect() as conn:
            assert not triggers_present(conn, KEY, "kp_people", None)

        command.downgrade(env.config, "s3")
        with engine.connect() as conn:
            wrong = conn.execute(text("SELECT count(*) FROM kp_people "
                                      "WHERE mail IS DISTINCT FROM lower(email)")).scalar_one()
            total = conn.execute(text("SELECT count(*) FROM kp_people")).scalar_one()
            assert triggers_present(conn, KEY, "kp_people", None)
        assert wrong == 0 and total == 3001

    def test_drop_guard_without_triggers_on_the_parent(
        self, pg_schema_engine: Engine, tmp_path: Path
    ) -> None:
        """Without sync triggers the drop installs its guard trigger on the parent."""
        engine = pg_schema_engine
        env = Env(tmp_path, engine)
        create = "\n".join(f"op.execute({s!r})" for s in partition_ddl("kp_people", "range"))
        seed_rows = ("op.execute(\"INSERT INTO kp_people (id, tenant, mail) SELECT g, 't' || "
                     "lpad((g % 200)::text, 3, '0'), 'user' || g || '@example.org' "
                     "FROM generate_series(1, 2000) g\")")
        env.revision("s0", None, f"{create}\n{seed_rows}", 'op.drop_table("kp_people")')
        env.revision("s3", "s0", BACKFILL, "pass", imports="import fourstep_sqla.alembic  # noqa")
        drop = DROP.replace("sync_triggers=True", "sync_triggers=False")
        env.revision("s4", "s3", drop, drop.replace("op.drop_old(", "op.restore_old("),
                     imports="import fourstep_sqla.alembic  # noqa")
        command.upgrade(env.config, "s3")
        with engine.begin() as conn:  # an old-only writer, nothing keeps new in step
            conn.execute(text("UPDATE kp_people SET mail = 'eve@example.org' WHERE id = 42"))
        with pytest.raises(DropRefusedError) as caught:
            command.upgrade(env.config, "s4")
        assert f"('{tenant(42)}', 42)" in str(caught.value)
        with engine.begin() as conn:
            conn.execute(text("UPDATE kp_people SET email = 'EVE@EXAMPLE.ORG' WHERE id = 42"))
        command.upgrade(env.config, "s4")
        for relation in ["kp_people", *(f"kp_people_p{p}" for p in range(PARTS))]:
            assert "mail" not in {c["name"] for c in inspect(engine).get_columns(relation)}
        with engine.connect() as conn:
            guards = conn.execute(text(
                "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal "
                "AND tgrelid::regclass::text LIKE 'kp_people%'")).scalar_one()
        assert guards == 0
