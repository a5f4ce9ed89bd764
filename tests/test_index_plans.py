"""A step-2 equality filter stays index-friendly on PostgreSQL.

``attr == v`` at ``Phase.READ_NEW`` renders ``new = :v OR (new IS NULL AND
forward(old) = :v)``. With an index on the new column(s) and one on the old
column (identity) or on ``forward(old)`` (:func:`forward_index`), the planner
answers it with index or bitmap scans, never a sequential scan. The tables
here are large enough (60k rows) for the planner to care.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, Index, Integer, String, event, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fourstep_sqla import Phase, Transform, phased, read_phase
from fourstep_sqla.attribute import forward_index

pytestmark = pytest.mark.postgres

ROWS = 60_000


def _plan_nodes(plan: dict[str, Any]) -> list[str]:
    nodes = [plan["Node Type"]]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


def _explain(session: Session, stmt: Any) -> list[str]:
    """The plan of ``stmt`` exactly as the driver sends it (SQL text and parameters)."""
    sent: list[tuple[str, Any]] = []
    connection = session.connection()

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append((statement, parameters))

    event.listen(connection, "before_cursor_execute", capture)
    try:
        session.execute(stmt).all()
    finally:
        event.remove(connection, "before_cursor_execute", capture)
    statement, parameters = sent[-1]
    row = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
    raw = row.scalar_one()
    plan = raw if isinstance(raw, list) else json.loads(raw)
    return _plan_nodes(plan[0]["Plan"])


class TestSplitStep2Filter:
    def _model(self) -> tuple[type[DeclarativeBase], Any]:
        class Base(DeclarativeBase):
            pass

        class Person(Base):
            __tablename__ = "plan_people"
            id: Mapped[int] = mapped_column(primary_key=True)
            legacy_name: Mapped[str | None] = mapped_column("name", String(80))
            first_name: Mapped[str | None] = mapped_column(String(40))
            last_name: Mapped[str | None] = mapped_column(String(40))
            full_name = phased(
                old="legacy_name",
                new=("first_name", "last_name"),
                forward=Transform.split(" "),
                backward=Transform.join(" "),
                phase=Phase.READ_NEW,
            )

        Index("ix_plan_people_new", Person.first_name, Person.last_name)
        forward_index(Person.full_name)
        return Base, Person

    def test_bitmap_or_of_two_indexes(self, pg_schema_engine: Engine) -> None:
        Base, Person = self._model()
        Base.metadata.create_all(pg_schema_engine)
        with pg_schema_engine.begin() as conn:
            # half the rows already in the new shape, half only in the old one
            conn.execute(
                text(
                    "INSERT INTO plan_people (id, name, first_name, last_name) "
                    "SELECT g, 'First' || g || ' Last' || g, "
                    "CASE WHEN g % 2 = 0 THEN 'First' || g END, "
                    "CASE WHEN g % 2 = 0 THEN 'Last' || g END "
                    "FROM generate_series(1, :n) AS g"
                ),
                {"n": ROWS},
            )
            conn.execute(text("ANALYZE plan_people"))
        with Session(pg_schema_engine) as session:
            for wanted, expected_id in ((("First7", "Last7"), 7), (("First8", "Last8"), 8)):
                stmt = select(Person.id).where(Person.full_name == wanted)
                nodes = _explain(session, stmt)
                assert "Seq Scan" not in nodes, nodes
                assert "BitmapOr" in nodes, nodes
                assert nodes.count("Bitmap Index Scan") == 2, nodes
                assert session.scalars(stmt).all() == [expected_id]
            # the same filter read at step 1 uses the forward index alone
            with read_phase(Phase.WRITE_BOTH, Person.full_name):
                stmt = select(Person.id).where(Person.full_name == ("First9", "Last9"))
            assert "Seq Scan" not in _explain(session, stmt)
            assert session.scalars(stmt).all() == [9]


class TestRenameAndCastStep2Filter:
    def _models(self) -> tuple[type[DeclarativeBase], Any, Any]:
        class Base(DeclarativeBase):
            pass

        class Account(Base):
            __tablename__ = "plan_accounts"
            id: Mapped[int] = mapped_column(primary_key=True)
            mail: Mapped[str | None] = mapped_column(String(80), index=True)
            email: Mapped[str | None] = mapped_column(String(80), index=True)
            contact = phased(
                old="mail",
                new="email",
                forward=Transform.identity(str),
                backward=Transform.identity(str),
                phase=Phase.READ_NEW,
            )

        class Order(Base):
            __tablename__ = "plan_orders"
            id: Mapped[int] = mapped_column(primary_key=True)
            amount_text: Mapped[str | None] = mapped_column(String(20))
            amount_int: Mapped[int | None] = mapped_column(Integer, index=True)
            amount = phased(
                old="amount_text",
                new="amount_int",
                forward=Transform.cast(int, Integer()),
                backward=Transform.cast(str, String()),
                phase=Phase.READ_NEW,
            )

        forward_index(Order.amount)
        return Base, Account, Order

    def test_rename_uses_old_and_new_indexes(self, pg_schema_engine: Engine) -> None:
        Base, Account, Order = self._models()
        Base.metadata.create_all(pg_schema_engine)
        with pg_schema_engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO plan_accounts (id, mail, email) "
                    "SELECT g, 'u' || g || '@x.org', "
                    "CASE WHEN g % 3 = 0 THEN 'u' || g || '@x.org' END "
                    "FROM generate_series(1, :n) AS g"
                ),
                {"n": ROWS},
            )
            conn.execute(
                text(
                    "INSERT INTO plan_orders (id, amount_text, amount_int) "
                    "SELECT g, g::text, CASE WHEN g % 3 = 0 THEN g END "
                    "FROM generate_series(1, :n) AS g"
                ),
                {"n": ROWS},
            )
            conn.execute(text("ANALYZE plan_accounts"))
            conn.execute(text("ANALYZE plan_orders"))
        with Session(pg_schema_engine) as session:
            for value, expected in (("u3@x.org", 3), ("u4@x.org", 4)):
                stmt = select(Account.id).where(Account.contact == value)
                nodes = _explain(session, stmt)
                assert "Seq Scan" not in nodes and "BitmapOr" in nodes, nodes
                assert session.scalars(stmt).all() == [expected]
            stmt = select(Account.id).where(Account.contact.in_(["u5@x.org", "u6@x.org"]))
            assert "Seq Scan" not in _explain(session, stmt)
            assert sorted(session.scalars(stmt).all()) == [5, 6]
            for value in (12, 13):
                stmt = select(Order.id).where(Order.amount == value)
                nodes = _explain(session, stmt)
                assert "Seq Scan" not in nodes and "BitmapOr" in nodes, nodes
                assert session.scalars(stmt).all() == [value]

    def test_coalesce_form_alone_would_scan(self, pg_schema_engine: Engine) -> None:
        """The control: ``coalesce(new, forward(old)) = v`` cannot use the indexes."""
        Base, Account, _ = self._models()
        Base.metadata.create_all(pg_schema_engine)
        with pg_schema_engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO plan_accounts (id, mail) "
                    "SELECT g, 'u' || g || '@x.org' FROM generate_series(1, :n) AS g"
                ),
                {"n": ROWS},
            )
            conn.execute(text("ANALYZE plan_accounts"))
        with Session(pg_schema_engine) as session:
            naive = select(Account.id).where(text("coalesce(email, mail) = 'u3@x.org'"))
            assert "Seq Scan" in _explain(session, naive)
