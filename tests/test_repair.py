"""``backfill(..., repair=True)``: rows whose places disagree get ``new = forward(old)``.

Rows are seeded with Core statements in every state a row can be in (see
:mod:`fourstep_sqla.places`): agreeing (backfilled, or written through the
attribute at any phase, ``old = backward(new)``), lossy (``new =
forward(old)`` but the round trip loses something), missing (new empty) and
mismatched (an old-only write after the backfill left new stale). A repair
rewrites exactly the missing and mismatched ones, whichever mode, and a
second repair writes nothing; ``verify`` is ok afterwards.

- :class:`TestRepair`: the rows rewritten, left alone, the report and the
  state it records (a run of its own, not the backfill's).
- :class:`TestPythonWrites`: Python-computed values the column cannot hold
  exactly fail their row instead of being truncated, converted or encoded.

Tables are prefixed ``bfe_r_``.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, Integer, Numeric, String, select
from sqlalchemy.orm import DeclarativeBase, mapped_column
from test_backfill import make_model

from fourstep_sqla import Phase, Transform, backfill, phased, verify
from fourstep_sqla.backfill import BackfillError, pending_count
from fourstep_sqla.errors import TransformError
from fourstep_sqla.state import read_state

pytestmark = [
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
    # Python-only transforms are declared on purpose here (Python mode)
    pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning"),
]

by_mode = pytest.mark.parametrize("mode", ["sql", "python"])

Values = tuple[Any, ...]


def _rows() -> tuple[list[dict[str, Any]], dict[int, Values], set[int]]:
    """Rows in every state; the new values each must hold after a repair; the
    keys the repair rewrites."""
    rows: list[dict[str, Any]] = []
    after: dict[int, Values] = {}
    fixed: set[int] = set()

    def add(i: int, name: str | None, first: str | None, last: str | None,
            expected: Values | None = None) -> None:
        rows.append({"id": i, "name": name, "first_name": first, "last_name": last})
        after[i] = expected if expected is not None else (first, last)
        if expected is not None:
            fixed.add(i)

    for i in range(1, 11):
        add(i, f"First{i} Last{i}", f"First{i}", f"Last{i}")  # backfilled: agrees
    add(11, "Mary Ann Smith", "Mary Ann", "Smith")  # written through the attribute
    add(12, "Cher", "Cher", None)
    add(13, "", None, None)  # lossy: '' -> (None, None) -> None, left alone
    add(14, "Ada ", "Ada", None)  # lossy: trailing separator, left alone
    add(15, "Grace Hopper", None, None, ("Grace", "Hopper"))  # missing
    add(16, "Alan Turing", "Ada", "Lovelace", ("Alan", "Turing"))  # old-only write after
    add(17, "Alan Turing", "Alan", None, ("Alan", "Turing"))  # a partial stale new
    add(18, None, None, None)  # empty
    add(19, None, "Step", "Four")  # written at step 4 without triggers: not compared
    return rows, after, fixed


def _world(engine: Engine, table: str, mode: str) -> Any:
    model = make_model(table, mode=mode)
    model.metadata.create_all(engine)
    rows, after, fixed = _rows()
    with engine.begin() as conn:
        conn.execute(model.__table__.insert(), rows)
    return model, after, fixed


def _new_values(engine: Engine, model: Any) -> dict[int, Values]:
    t = model.__table__
    with engine.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(select(t.c.id, t.c.first_name,
                                                                 t.c.last_name))}


def _old_values(engine: Engine, model: Any) -> dict[int, Any]:
    t = model.__table__
    with engine.connect() as conn:
        return dict(conn.execute(select(t.c.id, t.c.name)).all())  # type: ignore[arg-type]


class TestRepair:
    @by_mode
    def test_rewrites_exactly_the_rows_that_disagree(self, engine: Engine, mode: str) -> None:
        model, after, fixed = _world(engine, f"bfe_r_rows_{mode}", mode)
        before_old = _old_values(engine, model)
        result = verify(engine, model.full_name, record=False, synced=False)
        assert (result.missing, result.mismatched) == (1, 2)
        assert result.sample_keys == [(15,), (16,), (17,)]
        assert (result.lossy, result.lossy_keys) == (2, [(13,), (14,)])
        assert pending_count(engine, model.full_name, repair=True) == 3
        # the plain backfill only fills empty new places: it cannot fix 16 and 17
        assert backfill(engine, model.full_name).rows_updated == 1
        assert verify(engine, model.full_name, record=False, synced=False).mismatched == 2

        report = backfill(engine, model.full_name, repair=True, batch_size=4, target_ms=0)

        assert report.repair is True and report.mode == mode
        assert report.complete and report.ok
        assert report.rows_updated == 2
        assert _new_values(engine, model) == after
        assert _old_values(engine, model) == before_old  # the old place is never written
        check = verify(engine, model.full_name, record=False, synced=False)
        assert check.ok and check.lossy == 2
        again = backfill(engine, model.full_name, repair=True)
        assert again.complete and again.rows_updated == 0
        assert pending_count(engine, model.full_name, repair=True) == 0
        assert fixed == {15, 16, 17}

    @by_mode
    def test_a_run_of_its_own(self, engine: Engine, mode: str) -> None:
        model, _after, _fixed = _world(engine, f"bfe_r_state_{mode}", mode)
        filled = backfill(engine, model.full_name)
        repaired = backfill(engine, model.full_name, repair=True)
        assert filled.run_id != repaired.run_id
        key = f"bfe_r_state_{mode}.full_name"
        state = read_state(engine, key)
        assert state is not None and state.run_id == filled.run_id
        assert state.run_status == "complete"
        repair_state = read_state(engine, f"{key}:repair")
        assert repair_state is not None and repair_state.run_id == repaired.run_id
        assert repair_state.rows_updated == 2

    def test_dry_run_counts(self, engine: Engine) -> None:
        model, _after, _fixed = _world(engine, "bfe_r_dry", "sql")
        report = backfill(engine, model.full_name, repair=True, dry_run=True)
        assert report.dry_run and report.rows_left == 3 and report.rows_updated == 0
        assert verify(engine, model.full_name, record=False, synced=False).mismatched == 2

    @by_mode
    def test_with_synced_places_an_empty_old_place_counts(
        self, engine: Engine, mode: str
    ) -> None:
        """Where the triggers keep the places in step, new beside an empty old place
        is a write past them: the old place wins (it was cleared)."""
        model, after, _fixed = _world(engine, f"bfe_r_synced_{mode}", mode)
        result = verify(engine, model.full_name, record=False, synced=True)
        assert (result.missing, result.mismatched) == (1, 3)
        assert (19,) in result.sample_keys
        # repair decides synced by looking for the triggers: none here, so 19 stays
        report = backfill(engine, model.full_name, repair=True)
        assert report.rows_updated == 3
        assert _new_values(engine, model)[19] == ("Step", "Four")
        del after


def _typed_model(table: str, new_type: Any, forward: Transform[Any]) -> Any:
    class Base(DeclarativeBase):
        pass

    return type(
        f"BfeR_{table}",
        (Base,),
        {
            "__tablename__": table,
            "__module__": __name__,
            "id": mapped_column(Integer, primary_key=True, autoincrement=False),
            "source": mapped_column(String(40), nullable=True),
            "target": mapped_column(new_type, nullable=True),
            "value": phased(
                old="source",
                new="target",
                forward=forward,
                backward=Transform.identity(),
                phase=Phase.STOP_READ_OLD,
            ),
        },
    )


def suffixed(value: str) -> str:
    return f"{value}-suffix-long" if value.startswith("long") else value


def pair(value: str) -> tuple[str, str]:
    return (value, value)


def decimal_of(value: str) -> Any:
    from decimal import Decimal

    return Decimal(value)


def as_int(value: str) -> int:
    return int(value)


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning")
class TestPythonWrites:
    def _seed(self, engine: Engine, model: Any, values: list[str]) -> None:
        model.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                model.__table__.insert(),
                [{"id": i, "source": v} for i, v in enumerate(values, start=1)],
            )

    def _targets(self, engine: Engine, model: Any) -> dict[int, Any]:
        t = model.__table__
        with engine.connect() as conn:
            return dict(conn.execute(select(t.c.id, t.c.target)).all())  # type: ignore[arg-type]

    def test_a_value_too_long_fails_its_row(self, engine: Engine) -> None:
        model = _typed_model("bfe_r_long", String(10), Transform(suffixed))
        self._seed(engine, model, ["long", "abc", "xyz"])

        with pytest.raises(BackfillError) as info:
            backfill(engine, model.value)
        assert "(1,)" in str(info.value) and "do not fit" in str(info.value)
        assert self._targets(engine, model) == {1: None, 2: None, 3: None}

        report = backfill(engine, model.value, on_error="skip")
        assert report.skipped_keys == [(1,)]
        assert self._targets(engine, model) == {1: None, 2: "abc", 3: "xyz"}

    def test_a_tuple_for_one_column_is_the_wrong_shape(self, engine: Engine) -> None:
        model = _typed_model("bfe_r_tuple", String(40), Transform(pair))
        self._seed(engine, model, ["abc"])
        with pytest.raises(TransformError, match="tuple"):
            backfill(engine, model.value)
        assert self._targets(engine, model) == {1: None}

    def test_more_decimals_than_the_scale_fails_the_row(self, engine: Engine) -> None:
        from decimal import Decimal

        model = _typed_model("bfe_r_numeric", Numeric(12, 2), Transform(decimal_of))
        self._seed(engine, model, ["1.50", "1.005", "12"])
        report = backfill(engine, model.value, on_error="skip")
        assert report.skipped_keys == [(2,)]
        assert self._targets(engine, model) == {1: Decimal("1.50"), 2: None, 3: Decimal("12")}

    def test_another_type_fails_the_row(self, engine: Engine) -> None:
        model = _typed_model("bfe_r_type", String(40), Transform(as_int))
        self._seed(engine, model, ["5"])
        report = backfill(engine, model.value, on_error="skip")
        assert report.skipped_keys == [(1,)]
        assert self._targets(engine, model) == {1: None}

    def test_a_value_the_database_refuses_fails_its_row(self, server_engine: Engine) -> None:
        """Out of an INTEGER's range: the checks let it through, PostgreSQL and MariaDB
        (strict mode) refuse it when the batch is written; the batch is redone finding
        that row."""
        engine = server_engine
        model = _typed_model("bfe_r_range", Integer(), Transform(huge))
        self._seed(engine, model, ["1", "2", "big", "4"])

        with pytest.raises(BackfillError) as info:
            backfill(engine, model.value, batch_size=10, target_ms=0)
        refused = {"postgresql": "out of range", "mysql": "1264: Out of range value"}
        assert "(3,)" in str(info.value) and refused[engine.dialect.name] in str(info.value)

        report = backfill(engine, model.value, on_error="skip")
        assert report.skipped_keys == [(3,)]
        assert self._targets(engine, model) == {1: 1, 2: 2, 3: None, 4: 4}


def huge(value: str) -> int:
    return 2**40 if value == "big" else int(value)
