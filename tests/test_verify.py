"""verify(): is the new place complete and equal to forward(old)?

Rows are seeded with Core statements on the table, in every state a row can
be in (correct, missing, mismatched, partially written, old place empty,
forward(old) empty), and the counts, sample keys and the state-table record
are checked on SQLite and PostgreSQL, in SQL mode and in Python mode (a
forward transform without ``sql=``).

- :class:`TestCounts`: total, missing, mismatched and sample keys; rows whose
  old place is empty are never counted; batches and non-integer keys.
- :class:`TestRecord`: ``record=True`` writes ``verify_*`` into the state
  table (``read_state``); ``record=False`` writes nothing.
- :class:`TestTransformErrors`: a forward transform that fails on a row makes
  that row missing (new empty) or mismatched (new written), not a crash.

Tables are prefixed ``bfe_v_``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import BigInteger, Engine, Integer, String, Uuid, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, mapped_column

from fourstep_sqla import Phase, Transform, VerifyResult, backfill, phased, verify
from fourstep_sqla.state import read_state

pytestmark = [
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
    # Python-only transforms are declared on purpose here (Python mode)
    pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning"),
]

by_mode = pytest.mark.parametrize("mode", ["sql", "python"])

Key = tuple[Any, ...]
Values = tuple[Any, ...]


def strict_split(name: str) -> tuple[str | None, str | None]:
    """A Python-only split that refuses names starting with 'bad'."""
    if name.startswith("bad"):
        raise ValueError(f"cannot split {name!r}")
    first, _, last = name.partition(" ")
    return first or None, last or None


def make_split(
    table: str, *, mode: str = "sql", pk: str = "int", forward: Transform[Any] | None = None
) -> Any:
    """A model moving ``name`` into ``first_name``/``last_name`` on ``table``."""

    class Base(DeclarativeBase):
        pass

    ns: dict[str, Any] = {"__tablename__": table, "__module__": __name__}
    if pk == "int":
        ns["id"] = mapped_column(Integer, primary_key=True, autoincrement=False)
    elif pk == "composite":
        ns["tenant"] = mapped_column(String(20), primary_key=True)
        ns["id"] = mapped_column(Integer, primary_key=True, autoincrement=False)
    elif pk == "uuid":
        ns["id"] = mapped_column(Uuid, primary_key=True)
    else:  # pragma: no cover - a typo in a test
        raise ValueError(pk)
    ns["legacy_name"] = mapped_column("name", String(100), nullable=True)
    ns["first_name"] = mapped_column(String(100), nullable=True)
    ns["last_name"] = mapped_column(String(100), nullable=True)
    fwd = forward if forward is not None else Transform.split(" ")
    if mode == "python":
        fwd = Transform(fwd.python, name=fwd.name)
    ns["full_name"] = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=fwd,
        backward=Transform.join(" "),
        phase=Phase.STOP_READ_OLD,
    )
    model = type(f"BfeV_{table}", (Base,), ns)
    return model


def create(engine: Engine, model: Any, rows: list[dict[str, Any]]) -> None:
    model.metadata.create_all(engine)
    if rows:
        with engine.begin() as conn:
            conn.execute(model.__table__.insert(), rows)


def split_row(
    key: int, name: str | None, first: str | None = None, last: str | None = None
) -> dict[str, Any]:
    return {"id": key, "name": name, "first_name": first, "last_name": last}


def stored(engine: Engine, model: Any) -> list[tuple[Any, ...]]:
    table = model.__table__
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key))]


def mixed_rows() -> list[dict[str, Any]]:
    """56 rows: 5 missing (41-45), 4 mismatched (46-49), the rest not counted.

    - 1-40: correct (new == forward(old));
    - 41-45: old written, new empty (missing);
    - 46-48: new differs from forward(old); 49: only first_name written (mismatched);
    - 50-52: old and new empty; 53-54: old empty, new written (step-4 style rows);
    - 55: old '' (forward gives nothing), new empty; 56: one name, last_name NULL.
    """
    rows = [split_row(i, f"F{i} L{i}", f"F{i}", f"L{i}") for i in range(1, 41)]
    rows += [split_row(i, f"F{i} L{i}") for i in range(41, 46)]
    rows += [split_row(i, f"F{i} L{i}", "X", "Y") for i in range(46, 49)]
    rows += [split_row(49, "F49 L49", "F49", None)]
    rows += [split_row(i, None) for i in range(50, 53)]
    rows += [split_row(i, None, f"New{i}", "Only") for i in range(53, 55)]
    rows += [split_row(55, ""), split_row(56, "Cher", "Cher", None)]
    return rows


BAD = [(i,) for i in range(41, 50)]


class TestCounts:
    @by_mode
    @pytest.mark.parametrize("batch_size", [7, 50_000])
    def test_counts_and_samples(self, engine: Engine, mode: str, batch_size: int) -> None:
        model = make_split(f"bfe_v_counts_{mode}_{batch_size}", mode=mode)
        create(engine, model, mixed_rows())
        before = stored(engine, model)

        result = verify(engine, model.full_name, batch_size=batch_size, record=False)

        assert isinstance(result, VerifyResult)
        assert result.key == f"bfe_v_counts_{mode}_{batch_size}.full_name"
        assert result.mode == mode
        assert result.total == 56
        assert result.missing == 5
        assert result.mismatched == 4
        assert result.ok is False
        assert result.sample_keys == BAD
        assert result.seconds >= 0
        assert stored(engine, model) == before  # read-only

    @by_mode
    def test_sample_size(self, engine: Engine, mode: str) -> None:
        model = make_split(f"bfe_v_sample_{mode}", mode=mode)
        create(engine, model, mixed_rows())
        result = verify(engine, model.full_name, batch_size=7, sample_size=3, record=False)
        assert (result.missing, result.mismatched) == (5, 4)
        assert result.sample_keys == BAD[:3]
        none = verify(engine, model.full_name, sample_size=0, record=False)
        assert (none.missing, none.mismatched, none.sample_keys) == (5, 4, [])

    @by_mode
    def test_rows_with_empty_old_are_not_counted(self, engine: Engine, mode: str) -> None:
        model = make_split(f"bfe_v_nullold_{mode}", mode=mode)
        rows = [split_row(i, None) for i in range(1, 6)]
        rows += [split_row(i, None, f"First{i}", f"Last{i}") for i in range(6, 11)]
        rows += [split_row(i, None, f"First{i}", None) for i in range(11, 13)]
        create(engine, model, rows)

        result = verify(engine, model.full_name, record=False)

        assert result.total == 12
        assert (result.missing, result.mismatched, result.sample_keys) == (0, 0, [])
        assert result.ok is True

    @by_mode
    def test_ok_after_backfill(self, engine: Engine, mode: str) -> None:
        model = make_split(f"bfe_v_after_{mode}", mode=mode)
        create(engine, model, [split_row(i, f"First{i} Last{i}") for i in range(1, 301)])
        assert verify(engine, model.full_name, record=False).missing == 300

        backfill(engine, model.full_name)
        result = verify(engine, model.full_name, batch_size=64)

        assert (result.total, result.missing, result.mismatched) == (300, 0, 0)
        assert result.ok is True

    def test_empty_table(self, engine: Engine) -> None:
        model = make_split("bfe_v_empty")
        create(engine, model, [])
        result = verify(engine, model.full_name)
        assert (result.total, result.missing, result.mismatched) == (0, 0, 0)
        assert result.ok is True

    @by_mode
    def test_composite_key(self, engine: Engine, mode: str) -> None:
        model = make_split(f"bfe_v_composite_{mode}", mode=mode, pk="composite")
        rows = []
        for tenant in ("acme", "Beta", "zed co"):
            for i in range(1, 21):
                row = split_row(i, f"F{i} L{i}", f"F{i}", f"L{i}")
                if i == 7:
                    row.update(first_name=None, last_name=None)  # missing
                if i == 13 and tenant == "Beta":
                    row.update(last_name="Other")  # mismatched
                rows.append({"tenant": tenant, **row})
        create(engine, model, rows)

        result = verify(engine, model.full_name, batch_size=8)

        assert (result.total, result.missing, result.mismatched) == (60, 3, 1)
        assert set(result.sample_keys) == {("acme", 7), ("Beta", 7), ("Beta", 13), ("zed co", 7)}
        recorded = read_state(engine, f"bfe_v_composite_{mode}.full_name")
        assert recorded is not None
        assert sorted(map(tuple, recorded.verify_sample)) == sorted(result.sample_keys)

    @by_mode
    def test_uuid_key(self, engine: Engine, mode: str) -> None:
        model = make_split(f"bfe_v_uuid_{mode}", mode=mode, pk="uuid")
        # RFC 4122 version 4: MariaDB's UUID type refuses other variants
        keys = sorted(uuid.UUID(int=(i * 7919) << 64 | i, version=4) for i in range(1, 41))
        rows = [
            {**split_row(0, f"F{i} L{i}", f"F{i}", f"L{i}"), "id": k} for i, k in enumerate(keys)
        ]
        rows[5].update(first_name=None, last_name=None)
        rows[30].update(first_name="Zed")
        create(engine, model, rows)

        result = verify(engine, model.full_name, batch_size=9)

        assert (result.total, result.missing, result.mismatched) == (40, 1, 1)
        assert result.sample_keys == [(keys[5],), (keys[30],)]
        recorded = read_state(engine, f"bfe_v_uuid_{mode}.full_name")
        assert recorded is not None
        assert recorded.verify_sample == [[{"uuid": str(keys[5])}], [{"uuid": str(keys[30])}]]

    @pytest.mark.timeout(5, method="signal")
    def test_sparse_integer_keys(self, engine: Engine) -> None:
        """Keys spread up to 2**53 (snowflake-style ids): a few rows, a few batches.

        The timeout only stops a verify that walks the empty key space.
        """

        class Base(DeclarativeBase):
            pass

        model = type(
            "BfeV_bfe_v_sparse",
            (Base,),
            {
                "__tablename__": "bfe_v_sparse",
                "__module__": __name__,
                "id": mapped_column(BigInteger, primary_key=True, autoincrement=False),
                "mail": mapped_column(String(100), nullable=True),
                "email": mapped_column(String(100), nullable=True),
                "contact": phased(
                    old="mail",
                    new="email",
                    forward=Transform.identity(),
                    backward=Transform.identity(),
                    phase=Phase.STOP_READ_OLD,
                ),
            },
        )
        ids = [1, 2, 10**6, 10**12, 2**40, 2**53 - 1]
        rows = [{"id": i, "mail": f"u{i}@example.org", "email": f"u{i}@example.org"} for i in ids]
        rows[3]["email"] = None
        create(engine, model, rows)

        result = verify(engine, model.contact, record=False)

        assert (result.total, result.missing, result.mismatched) == (6, 1, 0)
        assert result.sample_keys == [(10**12,)]


class TestRecord:
    @by_mode
    def test_record_writes_the_result(self, engine: Engine, mode: str) -> None:
        model = make_split(f"bfe_v_record_{mode}", mode=mode)
        create(engine, model, mixed_rows())
        key = f"bfe_v_record_{mode}.full_name"

        verify(engine, model.full_name, batch_size=10)

        state = read_state(engine, key)
        assert state is not None
        assert state.verified_at is not None
        assert (state.verify_total, state.verify_missing, state.verify_mismatched) == (56, 5, 4)
        assert state.verify_sample == [[k[0]] for k in BAD]
        assert state.verify_ok is False
        assert state.run_id is None  # no backfill recorded

        # fix the rows, verify again: the record follows
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE " + model.__table__.name + " SET first_name = NULL, last_name = NULL "
                    "WHERE id BETWEEN 46 AND 49"
                )
            )
        backfill(engine, model.full_name)
        result = verify(engine, model.full_name)
        assert result.ok
        state = read_state(engine, key)
        assert state is not None
        assert (state.verify_total, state.verify_missing, state.verify_mismatched) == (56, 0, 0)
        assert state.verify_sample == []
        assert state.verify_ok is True
        assert state.run_status == "complete"  # the backfill's record is kept

    def test_record_false_writes_nothing(self, engine: Engine) -> None:
        model = make_split("bfe_v_norecord")
        create(engine, model, mixed_rows())

        result = verify(engine, model.full_name, record=False)

        assert (result.missing, result.mismatched) == (5, 4)
        assert not inspect(engine).has_table("fourstep_state")
        assert read_state(engine, "bfe_v_norecord.full_name") is None

    def test_record_false_keeps_the_previous_record(self, engine: Engine) -> None:
        model = make_split("bfe_v_keep")
        create(engine, model, mixed_rows())
        verify(engine, model.full_name)
        first = read_state(engine, "bfe_v_keep.full_name")
        assert first is not None
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM bfe_v_keep WHERE id BETWEEN 41 AND 49"))

        result = verify(engine, model.full_name, record=False)

        assert result.ok is True
        again = read_state(engine, "bfe_v_keep.full_name")
        assert again == first

    def test_record_on_a_callers_connection(self, engine: Engine) -> None:
        """With a Connection, the record is part of the caller's transaction."""
        model = make_split("bfe_v_conn")
        create(engine, model, mixed_rows())
        with engine.connect() as conn:
            verify(conn, model.full_name)
            conn.rollback()
        assert read_state(engine, "bfe_v_conn.full_name") is None
        with engine.connect() as conn:
            verify(conn, model.full_name)
            conn.commit()
        state = read_state(engine, "bfe_v_conn.full_name")
        assert state is not None
        assert (state.verify_missing, state.verify_mismatched) == (5, 4)


class TestTransformErrors:
    def test_python_transform_that_raises(self, engine: Engine) -> None:
        model = make_split("bfe_v_raises", mode="python", forward=Transform(strict_split))
        rows = [split_row(i, f"F{i} L{i}", f"F{i}", f"L{i}") for i in range(1, 21)]
        rows[4] = split_row(5, "bad row")  # cannot be computed, new empty: missing
        rows[14] = split_row(15, "bad row", "bad", "other")  # new written, differs: mismatched
        # written through the attribute (old = backward(new)): nothing would be lost,
        # but forward(backward(new)) fails, so a downgrade past the drop could not
        # read it: unstable, not mismatched
        rows[9] = split_row(10, "bad row", "bad", "row")
        create(engine, model, rows)

        result = verify(engine, model.full_name, record=False)

        assert (result.total, result.missing, result.mismatched) == (20, 1, 1)
        assert result.sample_keys == [(5,), (15,)]
        assert (result.unstable, result.unstable_keys) == (2, [(10,), (15,)])

    def test_sql_cast_that_fails(self, server_engine: Engine) -> None:
        """A value the SQL cast rejects counts like a failing Python transform
        (PostgreSQL and MariaDB: SQLite's CAST never fails).

        This is the state ``backfill(on_error="skip")`` leaves behind; verify is
        what the user runs next, and it must report those rows.
        """
        engine = server_engine

        class Base(DeclarativeBase):
            pass

        model = type(
            "BfeV_bfe_v_cast",
            (Base,),
            {
                "__tablename__": "bfe_v_cast",
                "__module__": __name__,
                "id": mapped_column(Integer, primary_key=True, autoincrement=False),
                "amount_text": mapped_column(String(20), nullable=True),
                "amount": mapped_column(Integer, nullable=True),
                "total": phased(
                    old="amount_text",
                    new="amount",
                    forward=Transform.cast(int, Integer()),
                    backward=Transform.cast(str, String()),
                    phase=Phase.STOP_READ_OLD,
                ),
            },
        )
        rows = [{"id": i, "amount_text": str(i), "amount": i} for i in range(1, 21)]
        rows[4] = {"id": 5, "amount_text": "x5", "amount": None}
        rows[11] = {"id": 12, "amount_text": "twelve", "amount": None}
        create(engine, model, rows)

        result = verify(engine, model.total, record=False)

        assert (result.total, result.missing, result.mismatched) == (20, 2, 0)
        assert result.sample_keys == [(5,), (12,)]
