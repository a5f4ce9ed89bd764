"""Filters on a phased attribute select exactly what instance reads say, NULL included.

For every phase 1-4 and every comparison against values (``==``, ``!=``,
``~(==)``, ``not_(==)``, ``~(!=)``, ``is_(None)``, ``is_not(None)``,
``in_()``, ``not_in()``, ``~in_()``, ``~not_in()``), the primary keys a
``SELECT ... WHERE`` returns are compared with the keys computed in Python
from ``obj.attr`` read at the same phase. The rows cover every state a row can
be in during a move: all new parts set, one part NULL, all NULL, old-only rows
not backfilled yet, new-only rows (old NULL), an empty old value, and rows
whose two places disagree (which tells which side a filter read).

The oracle is written by hand (``Row.forward`` is ``forward(old)`` computed
without the library) and instance reads are checked against it first, so a
filter and a read that were wrong in the same way would still fail.

Runs on SQLite, PostgreSQL and MariaDB (``engine``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, String, insert, not_, select
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, unmapped_column
from sqlalchemy.types import TypeEngine

from fourstep_sqla import Phase, Transform, phased, read_phase
from fourstep_sqla.errors import TransformError

pytestmark = pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning")


@dataclass(frozen=True)
class Row:
    """One seeded row: old and new column values, and ``forward(old)`` by hand."""

    id: int
    old: tuple[Any, ...]
    new: tuple[Any, ...]
    forward: tuple[Any, ...]
    #: what the row stands for, shown when a comparison disagrees
    why: str


@dataclass(frozen=True)
class Move:
    """A kind of column move, its rows and the values filters compare with."""

    name: str
    attr: str
    #: (attribute name, database column name) of the old / new columns
    old: tuple[tuple[str, str], ...]
    new: tuple[tuple[str, str], ...]
    old_type: Callable[[], TypeEngine[Any]]
    new_type: Callable[[], TypeEngine[Any]]
    forward: Callable[[], Transform[Any]]
    backward: Callable[[], Transform[Any]]
    rows: tuple[Row, ...]
    probes: tuple[Any, ...]
    lists: tuple[list[Any], ...]

    def shape(self, values: tuple[Any, ...]) -> Any:
        """The logical value of new column values, as the attribute documents it."""
        if len(self.new) == 1:
            return values[0]
        return None if all(v is None for v in values) else values

    def expected(self, row: Row, phase: Phase) -> Any:
        """What ``obj.attr`` reads at ``phase``, from the README's phase table."""
        if phase is Phase.WRITE_BOTH:
            return self.shape(row.forward)
        if phase is Phase.READ_NEW and all(v is None for v in row.new):
            return self.shape(row.forward)
        return self.shape(row.new)

    def __str__(self) -> str:
        return self.name


SPLIT = Move(
    name="split",
    attr="full_name",
    old=(("legacy_name", "name"),),
    new=(("first_name", "first_name"), ("last_name", "last_name")),
    old_type=lambda: String(100),
    new_type=lambda: String(100),
    forward=lambda: Transform.split(" "),
    backward=lambda: Transform.join(" "),
    rows=(
        Row(1, ("Ada Lovelace",), ("Ada", "Lovelace"), ("Ada", "Lovelace"), "all set"),
        Row(2, ("Ada",), ("Ada", None), ("Ada", None), "last part NULL"),
        Row(3, (" Lovelace",), (None, "Lovelace"), (None, "Lovelace"), "first part NULL"),
        Row(4, (None,), (None, None), (None, None), "all NULL"),
        Row(5, ("Ada Lovelace",), (None, None), ("Ada", "Lovelace"), "old only"),
        Row(6, ("Ada",), (None, None), ("Ada", None), "old only, one part"),
        Row(7, ("Grace Hopper",), ("Grace", "Hopper"), ("Grace", "Hopper"), "all set"),
        Row(8, ("Grace Hopper",), ("Ada", "Lovelace"), ("Grace", "Hopper"), "disagree"),
        Row(9, (None,), ("Ada", "Lovelace"), (None, None), "new only"),
        Row(10, (None,), ("Ada", None), (None, None), "new only, one part"),
        Row(11, ("",), (None, None), (None, None), "empty old"),
        Row(12, ("Ada Lovelace",), ("Ada", None), ("Ada", "Lovelace"), "disagree, part NULL"),
        Row(13, ("Ada",), ("Ada", "Lovelace"), ("Ada", None), "disagree, old one part"),
    ),
    probes=(
        ("Ada", "Lovelace"),
        ("Ada", None),
        (None, "Lovelace"),
        ("Grace", "Hopper"),
        ("Alan", "Turing"),  # no row has it
        None,
    ),
    lists=(
        [],
        [("Ada", "Lovelace")],
        [("Ada", "Lovelace"), ("Grace", "Hopper")],
        [("Ada", None), None],
        [None],
        [("Ada", "Lovelace"), ("Ada", None), (None, "Lovelace"), ("Grace", "Hopper"), None],
    ),
)

RENAME = Move(
    name="rename",
    attr="contact",
    old=(("mail", "mail"),),
    new=(("email", "email"),),
    old_type=lambda: String(100),
    new_type=lambda: String(100),
    forward=Transform.identity,
    backward=Transform.identity,
    rows=(
        Row(1, ("ada@x.org",), ("ada@x.org",), ("ada@x.org",), "both set"),
        Row(2, (None,), (None,), (None,), "all NULL"),
        Row(3, ("ada@x.org",), (None,), ("ada@x.org",), "old only"),
        Row(4, ("grace@x.org",), ("ada@x.org",), ("grace@x.org",), "disagree"),
        Row(5, (None,), ("ada@x.org",), (None,), "new only"),
        Row(6, ("",), (None,), ("",), "empty old"),
        Row(7, ("grace@x.org",), ("grace@x.org",), ("grace@x.org",), "both set"),
    ),
    probes=("ada@x.org", "grace@x.org", "", "alan@x.org", None),
    lists=(
        [],
        ["ada@x.org"],
        ["ada@x.org", "grace@x.org"],
        ["", None],
        [None],
        ["ada@x.org", None],
    ),
)

CAST = Move(
    name="cast",
    attr="total",
    old=(("amount_text", "amount_text"),),
    new=(("amount", "amount"),),
    old_type=lambda: String(20),
    new_type=Integer,
    forward=lambda: Transform.cast(int, Integer()),
    backward=lambda: Transform.cast(str, String()),
    rows=(
        Row(1, ("7",), (7,), (7,), "both set"),
        Row(2, (None,), (None,), (None,), "all NULL"),
        Row(3, ("7",), (None,), (7,), "old only"),
        Row(4, ("42",), (7,), (42,), "disagree"),
        Row(5, (None,), (42,), (None,), "new only"),
    ),
    probes=(7, 42, 0, None),
    lists=([], [7], [7, 42], [None], [42, None]),
)

MOVES = (SPLIT, RENAME, CAST)
by_move = pytest.mark.parametrize("move", [pytest.param(m, id=m.name) for m in MOVES])

#: (declared phase, phase reads are pinned to with read_phase(), or None)
PHASES = [
    pytest.param(Phase.WRITE_BOTH, None, id="phase1"),
    pytest.param(Phase.READ_NEW, None, id="phase2"),
    pytest.param(Phase.STOP_READ_OLD, None, id="phase3"),
    pytest.param(Phase.STOP_WRITE_OLD, None, id="phase4"),
    pytest.param(Phase.STOP_READ_OLD, Phase.READ_NEW, id="phase3-pinned2"),
    pytest.param(Phase.WRITE_BOTH, Phase.STOP_READ_OLD, id="phase1-pinned3"),
]
by_phase = pytest.mark.parametrize(("phase", "pinned"), PHASES)


def make_model(move: Move, phase: Phase, table: str) -> Any:
    """A fresh model of ``move`` at ``phase`` on ``table``, its class named after it."""

    class Base(DeclarativeBase):
        pass

    # the old column stays in the table at step 4, unmapped, as the README says
    old_column = unmapped_column if phase is Phase.STOP_WRITE_OLD else mapped_column
    ns: dict[str, Any] = {
        "__tablename__": table,
        "__module__": __name__,
        "id": mapped_column(Integer, primary_key=True, autoincrement=False),
    }
    for attr, column in move.old:
        ns[attr] = old_column(column, move.old_type(), nullable=True)
    for attr, column in move.new:
        ns[attr] = mapped_column(column, move.new_type(), nullable=True)
    ns[move.attr] = phased(
        old=tuple(a for a, _ in move.old),
        new=tuple(a for a, _ in move.new),
        forward=move.forward(),
        backward=move.backward(),
        phase=phase,
    )
    class_name = "".join(part.capitalize() for part in table.split("_"))
    return type(class_name, (Base,), ns)


def seed(engine: Engine, model: Any, move: Move) -> None:
    """Insert every row with Core, so no phased write path is involved."""
    table = model.__table__
    columns = [c for _, c in move.old] + [c for _, c in move.new]
    rows = [
        {"id": row.id, **dict(zip(columns, row.old + row.new))} for row in move.rows
    ]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)


# -- the comparisons -------------------------------------------------------------
Build = Callable[[Any, Any], Any]
Test = Callable[[Any, Any], bool]

#: comparisons with one value: (SQL filter, what it means for an instance value)
SCALAR_COMPARISONS: dict[str, tuple[Build, Test]] = {
    "==": (lambda a, v: a == v, lambda got, v: got == v),
    "!=": (lambda a, v: a != v, lambda got, v: got != v),
    "~(==)": (lambda a, v: ~(a == v), lambda got, v: got != v),
    "not_(==)": (lambda a, v: not_(a == v), lambda got, v: got != v),
    "~(!=)": (lambda a, v: ~(a != v), lambda got, v: got == v),
}
#: comparisons with None only
NONE_COMPARISONS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool]]] = {
    "is_(None)": (lambda a: a.is_(None), lambda got: got is None),
    "is_not(None)": (lambda a: a.is_not(None), lambda got: got is not None),
    "~is_(None)": (lambda a: ~a.is_(None), lambda got: got is not None),
    "~is_not(None)": (lambda a: ~a.is_not(None), lambda got: got is None),
}
#: comparisons with a list of values
LIST_COMPARISONS: dict[str, tuple[Build, Test]] = {
    "in_": (lambda a, vs: a.in_(vs), lambda got, vs: got in vs),
    "not_in": (lambda a, vs: a.not_in(vs), lambda got, vs: got not in vs),
    "~in_": (lambda a, vs: ~a.in_(vs), lambda got, vs: got not in vs),
    "~not_in": (lambda a, vs: ~a.not_in(vs), lambda got, vs: got in vs),
}


def read_values(session: Session, model: Any, move: Move) -> dict[int, Any]:
    """``{id: obj.attr}`` for every row, read on loaded instances."""
    return {obj.id: getattr(obj, move.attr) for obj in session.scalars(select(model))}


def filtered(session: Session, model: Any, criterion: Any) -> set[int]:
    return set(session.scalars(select(model.id).where(criterion)))


def compare_everything(
    session: Session, model: Any, move: Move, values: dict[int, Any]
) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """Run every comparison in SQL and in Python: ``(got, want)`` keyed by a label."""
    attr = getattr(model, move.attr)
    got: dict[str, set[int]] = {}
    want: dict[str, set[int]] = {}

    def run(label: str, criterion: Any, test: Callable[[Any], bool]) -> None:
        got[label] = filtered(session, model, criterion)
        want[label] = {key for key, value in values.items() if test(value)}

    for value in move.probes:
        for name, (build, test) in SCALAR_COMPARISONS.items():
            run(f"attr {name} {value!r}", build(attr, value), lambda g, t=test, v=value: t(g, v))
    for name, (build_none, test_none) in NONE_COMPARISONS.items():
        run(f"attr.{name}", build_none(attr), test_none)
    for values_list in move.lists:
        for name, (build, test) in LIST_COMPARISONS.items():
            run(
                f"attr.{name}({values_list!r})",
                build(attr, values_list),
                lambda g, t=test, vs=values_list: t(g, vs),
            )
    return got, want


def check_agreement(
    engine: Engine, model: Any, move: Move, phase: Phase, pinned: Phase | None
) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """Create, seed, read and filter: ``(got, want)``, compared in one assertion."""
    model.metadata.create_all(engine)
    seed(engine, model, move)
    oracle = {row.id: move.expected(row, pinned or phase) for row in move.rows}
    pin = nullcontext() if pinned is None else read_phase(pinned, getattr(model, move.attr))

    with Session(engine) as session, pin:
        values = read_values(session, model, move)
        # the oracle is hand-written: instance reads must match it first
        assert values == oracle, "instance reads differ from the phase table"
        return compare_everything(session, model, move, values)


def table_name(move: Move, phase: Phase, pinned: Phase | None, suffix: str = "") -> str:
    pin = f"_pin{pinned.value}" if pinned is not None else ""
    return f"fnull_{move.name}_p{phase.value}{pin}{suffix}"


# -- the tests -------------------------------------------------------------------
@by_move
@by_phase
def test_filters_agree_with_instance_reads(
    engine: Engine, move: Move, phase: Phase, pinned: Phase | None
) -> None:
    model = make_model(move, phase, table_name(move, phase, pinned))
    got, want = check_agreement(engine, model, move, phase, pinned)
    assert got == want


@pytest.mark.parametrize(
    ("phase", "criterion", "expected"),
    [
        # a row with a NULL part, or NULL as a whole, differs from a full name:
        # SQL's three-valued logic alone would leave 2, 3, 4 (and 6, 11) out
        pytest.param(
            Phase.STOP_READ_OLD,
            lambda a: a != ("Ada", "Lovelace"),
            {2, 3, 4, 5, 6, 7, 10, 11, 12},
            id="phase3-ne",
        ),
        pytest.param(
            Phase.READ_NEW,
            lambda a: ~(a == ("Ada", "Lovelace")),
            {2, 3, 4, 6, 7, 10, 11, 12},
            id="phase2-not-eq",
        ),
        pytest.param(
            Phase.WRITE_BOTH,
            lambda a: a.not_in([("Grace", "Hopper")]),
            {1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13},
            id="phase1-not-in",
        ),
        pytest.param(Phase.READ_NEW, lambda a: a == None, {4, 11}, id="phase2-eq-none"),  # noqa: E711
        pytest.param(
            Phase.STOP_WRITE_OLD, lambda a: a.is_(None), {4, 5, 6, 11}, id="phase4-is-none"
        ),
    ],
)
def test_null_parts_by_hand(
    sqlite_engine: Engine, phase: Phase, criterion: Callable[[Any], Any], expected: set[int]
) -> None:
    """A few answers written out, so the NULL cases are visible in the test itself."""
    model = make_model(SPLIT, phase, f"fnull_hand_p{phase.value}")
    model.metadata.create_all(sqlite_engine)
    seed(sqlite_engine, model, SPLIT)
    with Session(sqlite_engine) as session:
        assert filtered(session, model, criterion(model.full_name)) == expected


def test_step_2_equality_keeps_its_index_friendly_shape() -> None:
    """The NULL-safe negations do not change what ``==`` renders at step 2."""
    model = make_model(SPLIT, Phase.READ_NEW, "fnull_shape")
    sql = str(select(model.id).where(model.full_name == ("Ada", "Lovelace")))
    where = " ".join(sql.split("WHERE", 1)[1].split())
    assert where.startswith(
        "(fnull_shape.first_name IS NOT NULL OR fnull_shape.last_name IS NOT NULL) "
        "AND fnull_shape.first_name = :first_name_1 "
        "AND fnull_shape.last_name = :last_name_1 OR "
    )
    assert "DISTINCT" not in where


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda m: m.full_name.in_(select(m.first_name)),
            r"Fnull\w+\.full_name spans 2 columns: in_\(\) compares it with a list of values, "
            r"not with a SQL expression \(Select\)",
            id="in_-subquery",
        ),
        pytest.param(
            lambda m: m.full_name.not_in(select(m.first_name)),
            r"not with a SQL expression \(Select\)",
            id="not_in-subquery",
        ),
        pytest.param(
            lambda m: m.full_name > ("Ada", "Lovelace"),
            r"only ==, !=, in_\(\), not_in\(\), is_\(None\) and is_not\(None\) against values",
            id="ordering",
        ),
    ],
)
def test_several_columns_compare_as_a_whole_with_values_only(
    build: Callable[[Any], Any], message: str
) -> None:
    model = make_model(SPLIT, Phase.READ_NEW, "fnull_refused")
    with pytest.raises(TransformError, match=message):
        build(model)
