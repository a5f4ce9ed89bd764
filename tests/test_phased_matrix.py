"""The phase x write path x read path matrix, on SQLite, PostgreSQL and MariaDB.

Four shapes of column move (see ``matrix_models``): split (``name`` ->
``first_name``, ``last_name``), rename (``mail`` -> ``email``), type change
(``amount_text`` -> ``amount``) and merge (``lat``, ``lon`` -> ``location``).
Every test checks the rows actually stored, read back with raw SQL.

- :class:`TestWrites`: every ORM write path, at every phase: steps 1-3 write
  both places, step 4 only the new one (the old column is left untouched).
- :class:`TestReads`: every read path at every phase, over rows written
  before step 1 (old only), rows written in both places, and rows whose two
  places disagree (which tells which side was read).
- :class:`TestReadPhase`: ``read_phase()`` pins what is built inside the block.
- :class:`TestSync`: flush-time sync of direct column writes, and refused
  inconsistent writes.
- :class:`TestStep4DroppedColumn`: step 4 runs with the old column dropped.

Models come from ``tests/matrix_models.py`` (imported as a top-level module, as
``tests/`` has no ``__init__.py`` and pytest puts it on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from matrix_models import SHAPES, Sample, Shape
from sqlalchemy import Engine, insert, literal, select, text, update
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Session, aliased

from fourstep_sqla import Phase, read_phase
from fourstep_sqla.errors import InconsistentWriteError, PhaseError

pytestmark = [
    pytest.mark.filterwarnings("error::fourstep_sqla.errors.FourStepWarning"),
    # Python-only transforms are declared on purpose here (Python mode)
    pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.NoSyncTriggersWarning"),
]

DUAL_WRITE = (Phase.WRITE_BOTH, Phase.READ_NEW, Phase.STOP_READ_OLD)
PINNABLE = DUAL_WRITE

by_shape = pytest.mark.parametrize("shape", [pytest.param(s, id=s.name) for s in SHAPES])
dual_write_phases = pytest.mark.parametrize(
    "phase", [pytest.param(p, id=p.name) for p in DUAL_WRITE]
)

OldNew = tuple[tuple[Any, ...], tuple[Any, ...]]


@dataclass
class World:
    """One shape's model at one phase, with its table created on ``engine``."""

    engine: Engine
    shape: Shape
    phase: Phase
    base: type[DeclarativeBase]
    model: type[Any]

    @classmethod
    def build(cls, engine: Engine, shape: Shape, phase: Phase) -> World:
        base, model = shape.make(phase)
        base.metadata.create_all(engine)
        return cls(engine, shape, phase, base, model)

    @property
    def attr(self) -> Any:
        """The class-level phased attribute (``Model.full_name``)."""
        return getattr(self.model, self.shape.attr)

    def session(self) -> Session:
        return Session(self.engine)

    def seed(self, rows: dict[int, OldNew]) -> None:
        """INSERT rows with raw SQL: ``{id: (old values, new values)}``."""
        shape = self.shape
        columns = ("id", *shape.old_cols, *shape.new_cols)
        sql = text(
            f"INSERT INTO {shape.table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        params = [dict(zip(columns, (key, *old, *new))) for key, (old, new) in rows.items()]
        with self.engine.begin() as conn:
            conn.execute(sql, params)

    def rows(self, *, with_old: bool = True) -> dict[int, OldNew]:
        """``{id: (old values, new values)}`` of every row, read with raw SQL."""
        shape = self.shape
        old_cols = shape.old_cols if with_old else ()
        columns = ("id", *old_cols, *shape.new_cols)
        sql = text(f"SELECT {', '.join(columns)} FROM {shape.table} ORDER BY id")
        with self.engine.connect() as conn:
            result = conn.execute(sql).all()
        width = len(old_cols)
        return {row[0]: (tuple(row[1 : 1 + width]), tuple(row[1 + width :])) for row in result}

    def drop_old_columns(self) -> None:
        """What the step-4 migration does: ALTER TABLE ... DROP COLUMN <old>."""
        with self.engine.begin() as conn:
            for column in self.shape.old_cols:
                conn.execute(text(f"ALTER TABLE {self.shape.table} DROP COLUMN {column}"))


def update_returning(
    w: World, s: Session, stmt: Any, where: Any, *columns: Any
) -> list[tuple[Any, ...]]:
    """``stmt.returning(*columns)``'s rows; where the database has no UPDATE ...
    RETURNING (MariaDB/MySQL refuse it), the same UPDATE then a SELECT of the
    updated rows in the same transaction, after checking that it is refused."""
    if w.engine.dialect.update_returning:
        return [tuple(row) for row in s.execute(stmt.returning(*columns))]
    with pytest.raises(ProgrammingError, match="RETURNING"):
        s.execute(stmt.returning(*columns))
    s.rollback()
    s.execute(stmt)
    return [tuple(row) for row in s.execute(select(*columns).where(where))]


# =============================================================================
# write paths: each writes samples to the table, where row 1 holds sample A in
# both places beforehand, and returns {id: sample written}
# =============================================================================
WritePath = Callable[[World, Sample, Sample], dict[int, Sample]]


def w_assign_new_instance(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        obj = w.model(id=2)
        setattr(obj, w.shape.attr, b.logical)
        s.add(obj)
        s.commit()
    return {2: b}


def w_assign_loaded_instance(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        obj = s.get(w.model, 1)
        setattr(obj, w.shape.attr, b.logical)
        s.commit()
    return {1: b}


def w_constructor(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.add_all([w.model(id=2, **{w.shape.attr: b.logical}), w.model(id=3)])
        setattr(s.get(w.model, 3), w.shape.attr, c.logical)
        s.commit()
    return {2: b, 3: c}


def w_merge_detached(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        obj = s.get(w.model, 1)
    # the session is closed: obj is detached, with its attributes loaded
    setattr(obj, w.shape.attr, b.logical)
    with w.session() as s:
        s.merge(obj)
        s.commit()
    return {1: b}


def w_merge_transient(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.merge(w.model(id=1, **{w.shape.attr: b.logical}))  # existing row
        s.merge(w.model(id=2, **{w.shape.attr: c.logical}))  # new row
        s.commit()
    return {1: b, 2: c}


def w_update_values(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.execute(update(w.model).where(w.model.id == 1).values(**{w.shape.attr: b.logical}))
        s.commit()
    return {1: b}


def sql_value(w: World, sample: Sample) -> Any:
    """``sample`` as SQL expressions (bound literals), one per new column."""
    values = tuple(
        literal(v, type_=getattr(w.model, name).type) for name, v in zip(w.shape.new, sample.new)
    )
    return values if len(values) > 1 else values[0]


def w_update_values_sql(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    """A SQL value: the old place gets ``backward.sql(...)``, run by the database."""
    stmt = update(w.model).where(w.model.id == 1).values(**{w.shape.attr: sql_value(w, b)})
    with w.session() as s:
        s.execute(stmt)
        s.commit()
    return {1: b}


def w_assign_sql_loaded_instance(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        obj = s.get(w.model, 1)
        setattr(obj, w.shape.attr, sql_value(w, b))
        s.commit()
    return {1: b}


def w_insert_values(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.execute(insert(w.model).values(id=2, **{w.shape.attr: b.logical}))
        s.commit()
    return {2: b}


def w_insert_values_multi(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    attr = w.shape.attr
    with w.session() as s:
        s.execute(insert(w.model).values([{"id": 2, attr: b.logical}, {"id": 3, attr: c.logical}]))
        s.commit()
    return {2: b, 3: c}


def w_bulk_insert(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    attr = w.shape.attr
    with w.session() as s:
        s.execute(insert(w.model), [{"id": 2, attr: b.logical}, {"id": 3, attr: c.logical}])
        s.commit()
    return {2: b, 3: c}


def w_bulk_update(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.execute(update(w.model), [{"id": 1, w.shape.attr: b.logical}])
        s.commit()
    return {1: b}


def w_old_attr_new_instance(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.add(w.model(id=2, **w.shape.old_attrs(b)))
        s.commit()
    return {2: b}


def w_old_attr_loaded_instance(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        obj = s.get(w.model, 1)
        for name, value in w.shape.old_attrs(b).items():
            setattr(obj, name, value)
        s.commit()
    return {1: b}


def w_new_attr_new_instance(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.add(w.model(id=2, **w.shape.new_attrs(b)))
        s.commit()
    return {2: b}


def w_new_attr_loaded_instance(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        obj = s.get(w.model, 1)
        for name, value in w.shape.new_attrs(b).items():
            setattr(obj, name, value)
        s.commit()
    return {1: b}


def w_bulk_insert_old_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    rows = [{"id": 2, **w.shape.old_attrs(b)}, {"id": 3, **w.shape.old_attrs(c)}]
    with w.session() as s:
        s.execute(insert(w.model), rows)
        s.commit()
    return {2: b, 3: c}


def w_bulk_update_old_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.execute(update(w.model), [{"id": 1, **w.shape.old_attrs(b)}])
        s.commit()
    return {1: b}


def w_bulk_insert_new_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    rows = [{"id": 2, **w.shape.new_attrs(b)}, {"id": 3, **w.shape.new_attrs(c)}]
    with w.session() as s:
        s.execute(insert(w.model), rows)
        s.commit()
    return {2: b, 3: c}


def w_bulk_update_new_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.execute(update(w.model), [{"id": 1, **w.shape.new_attrs(b)}])
        s.commit()
    return {1: b}


def w_update_values_old_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    stmt = update(w.model).where(w.model.id == 1).values(**w.shape.old_attrs(b))
    with w.session() as s:
        s.execute(stmt)
        s.commit()
    return {1: b}


def w_update_values_new_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    stmt = update(w.model).where(w.model.id == 1).values(**w.shape.new_attrs(b))
    with w.session() as s:
        s.execute(stmt)
        s.commit()
    return {1: b}


def w_insert_values_old_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.execute(insert(w.model).values(id=2, **w.shape.old_attrs(b)))
        s.commit()
    return {2: b}


def w_insert_values_new_names(w: World, b: Sample, c: Sample) -> dict[int, Sample]:
    with w.session() as s:
        s.execute(insert(w.model).values(id=2, **w.shape.new_attrs(b)))
        s.commit()
    return {2: b}


#: write paths that speak the logical attribute or the new columns: every phase
WRITE_PATHS: dict[str, WritePath] = {
    "assign_new_instance": w_assign_new_instance,
    "assign_loaded_instance": w_assign_loaded_instance,
    "constructor": w_constructor,
    "merge_detached": w_merge_detached,
    "merge_transient": w_merge_transient,
    "update_values": w_update_values,
    "update_values_sql": w_update_values_sql,
    "assign_sql_loaded_instance": w_assign_sql_loaded_instance,
    "insert_values": w_insert_values,
    "insert_values_multi": w_insert_values_multi,
    "bulk_insert": w_bulk_insert,
    "bulk_update": w_bulk_update,
    "new_attr_new_instance": w_new_attr_new_instance,
    "new_attr_loaded_instance": w_new_attr_loaded_instance,
    "bulk_insert_new_names": w_bulk_insert_new_names,
    "bulk_update_new_names": w_bulk_update_new_names,
    "update_values_new_names": w_update_values_new_names,
    "insert_values_new_names": w_insert_values_new_names,
}
#: write paths naming the old columns: only while they are mapped (steps 1-3)
OLD_WRITE_PATHS: dict[str, WritePath] = {
    "old_attr_new_instance": w_old_attr_new_instance,
    "old_attr_loaded_instance": w_old_attr_loaded_instance,
    "bulk_insert_old_names": w_bulk_insert_old_names,
    "bulk_update_old_names": w_bulk_update_old_names,
    "update_values_old_names": w_update_values_old_names,
    "insert_values_old_names": w_insert_values_old_names,
}
WRITE_CASES = [
    pytest.param(phase, path, id=f"{phase.name}-{name}")
    for phase in Phase
    for name, path in {**WRITE_PATHS, **OLD_WRITE_PATHS}.items()
    if phase.writes_old or name in WRITE_PATHS
]


def expected_after_write(w: World, seeded: dict[int, Sample], written: dict[int, Sample]) -> Any:
    """Rows after ``written`` went over ``seeded``: both places at steps 1-3;
    at step 4 the new place only, the old column keeps what it had (NULL for
    an inserted row)."""
    expected = {key: (sample.old, sample.new) for key, sample in seeded.items()}
    for key, sample in written.items():
        old_before = expected[key][0] if key in expected else w.shape.nulls_old
        expected[key] = (sample.old if w.phase.writes_old else old_before, sample.new)
    return expected


@by_shape
class TestWrites:
    """Every write path stores the right values in the right places."""

    @pytest.mark.parametrize(("phase", "path"), WRITE_CASES)
    def test_write_path(self, engine: Engine, shape: Shape, phase: Phase, path: WritePath) -> None:
        w = World.build(engine, shape, phase)
        a, b, c = shape.samples[:3]
        w.seed({1: (a.old, a.new)})

        written = path(w, b, c)

        assert w.rows() == expected_after_write(w, {1: a}, written)

    @pytest.mark.parametrize("phase", [pytest.param(p, id=p.name) for p in Phase])
    def test_update_returning_the_written_value(
        self, engine: Engine, shape: Shape, phase: Phase
    ) -> None:
        w = World.build(engine, shape, phase)
        a, b = shape.samples[:2]
        w.seed({1: (a.old, a.new)})

        stmt = update(w.model).where(w.model.id == 1).values(**{shape.attr: b.logical})
        with w.session() as s:
            returned = update_returning(w, s, stmt, w.model.id == 1, w.model.id, w.attr)
            s.commit()

        assert returned == [(1, b.logical)]
        assert w.rows() == expected_after_write(w, {1: a}, {1: b})


# =============================================================================
# read paths: over SEED, each returns (what was read, what the phase should read)
# =============================================================================
def seed_for_reads(w: World) -> None:
    """1: written before step 1 (old only); 2: both places; 3: both places but
    disagreeing (old C, new D), which tells which side a read used; 4: NULL."""
    shape = w.shape
    a, b, c, d = shape.samples[:4]
    w.seed(
        {
            1: (a.old, shape.nulls_new),
            2: (b.old, b.new),
            3: (c.old, d.new),
            4: (shape.nulls_old, shape.nulls_new),
        }
    )


def expected_reads(shape: Shape, phase: Phase) -> dict[int, Any]:
    """The logical value of each seeded row as read at ``phase``."""
    a, b, c, d = (s.logical for s in shape.samples[:4])
    if phase is Phase.WRITE_BOTH:  # forward(old)
        return {1: a, 2: b, 3: c, 4: None}
    if phase is Phase.READ_NEW:  # new, else forward(old) while all new are NULL
        return {1: a, 2: b, 3: d, 4: None}
    return {1: None, 2: b, 3: d, 4: None}  # new only


def _ids_where(expected: dict[int, Any], test: Callable[[Any], bool]) -> list[int]:
    return sorted(key for key, value in expected.items() if test(value))


def _probe_values(shape: Shape) -> list[Any]:
    """Values to compare with: A, B, C, D and None."""
    return [s.logical for s in shape.samples[:4]] + [None]


ReadPath = Callable[[World, Session, dict[int, Any]], tuple[Any, Any]]


def r_get(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    got = {key: getattr(s.get(w.model, key), w.shape.attr) for key in exp}
    return got, exp


def r_select_attr(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    got = {key: s.scalars(select(w.attr).where(w.model.id == key)).one() for key in exp}
    return got, exp


def r_select_with_id(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    rows = s.execute(select(w.model.id, w.attr).order_by(w.model.id)).all()
    return [tuple(row) for row in rows], sorted(exp.items())


def r_where_eq(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    got, want = {}, {}
    for value in _probe_values(w.shape):
        stmt = select(w.model.id).where(w.attr == value).order_by(w.model.id)
        got[repr(value)] = list(s.scalars(stmt))
        want[repr(value)] = _ids_where(exp, lambda v, value=value: v == value)
    return got, want


def r_where_ne(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    # the instance reads' answer, NULL included: a None value differs from a value
    value = w.shape.samples[1].logical
    stmt = select(w.model.id).where(w.attr != value).order_by(w.model.id)
    want = _ids_where(exp, lambda v: v != value)
    return list(s.scalars(stmt)), want


def r_where_not_eq(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    """``~(attr == v)``: the negation of the (step-2 OR-shaped) equality."""
    got, want = {}, {}
    for value in [x.logical for x in w.shape.samples[:4]]:
        stmt = select(w.model.id).where(~(w.attr == value)).order_by(w.model.id)
        got[repr(value)] = list(s.scalars(stmt))
        want[repr(value)] = _ids_where(exp, lambda v, x=value: v != x)
    return got, want


def r_where_not_in(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    """``~attr.in_([...])``: the negation of the (step-2 OR-shaped) IN."""
    b, c = (x.logical for x in w.shape.samples[1:3])
    stmt = select(w.model.id).where(~w.attr.in_([b, c])).order_by(w.model.id)
    want = _ids_where(exp, lambda v: v not in (b, c))
    return list(s.scalars(stmt)), want


def r_not_in(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    b, c = (x.logical for x in w.shape.samples[1:3])
    stmt = select(w.model.id).where(w.attr.not_in([b, c])).order_by(w.model.id)
    want = _ids_where(exp, lambda v: v not in (b, c))
    return list(s.scalars(stmt)), want


def r_select_entity_where(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    got, want = {}, {}
    for value in _probe_values(w.shape):
        stmt = select(w.model).where(w.attr == value).order_by(w.model.id)
        got[repr(value)] = [(o.id, getattr(o, w.shape.attr)) for o in s.scalars(stmt)]
        want[repr(value)] = [(k, exp[k]) for k in _ids_where(exp, lambda v, x=value: v == x)]
    return got, want


def r_filter_by(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    got, want = {}, {}
    for value in _probe_values(w.shape):
        stmt = select(w.model).filter_by(**{w.shape.attr: value}).order_by(w.model.id)
        got[repr(value)] = [o.id for o in s.scalars(stmt)]
        want[repr(value)] = _ids_where(exp, lambda v, x=value: v == x)
    return got, want


def r_order_by(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    # where NULLs sort differs between databases: compare the non-NULL rows
    ids = s.scalars(select(w.model.id).order_by(w.attr, w.model.id)).all()
    got = [key for key in ids if exp[key] is not None]
    want = sorted((key for key in exp if exp[key] is not None), key=lambda k: exp[k])
    return got, want


def r_order_by_desc(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    ids = s.scalars(select(w.model.id).order_by(w.attr.desc(), w.model.id)).all()
    got = [key for key in ids if exp[key] is not None]
    want = sorted((key for key in exp if exp[key] is not None), key=lambda k: exp[k])
    return got, want[::-1]


def r_aliased(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    alias = aliased(w.model)
    alias_attr = getattr(alias, w.shape.attr)
    got, want = {}, {}
    for value in _probe_values(w.shape):
        stmt = select(alias.id, alias_attr).where(alias_attr == value).order_by(alias.id)
        got[repr(value)] = [tuple(row) for row in s.execute(stmt)]
        want[repr(value)] = [(k, exp[k]) for k in _ids_where(exp, lambda v, x=value: v == x)]
    return got, want


def r_aliased_join(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    """A self-join on the attribute: both sides read through the phase."""
    alias = aliased(w.model)
    stmt = (
        select(w.model.id, alias.id)
        .join(alias, getattr(alias, w.shape.attr) == w.attr)
        .order_by(w.model.id, alias.id)
    )
    # a phased attribute spanning several columns compares as a whole with ==
    # on values; comparing two column sets is done through the columns
    want = [
        (k1, k2)
        for k1 in sorted(exp)
        for k2 in sorted(exp)
        if exp[k1] is not None and exp[k1] == exp[k2]
    ]
    return [tuple(row) for row in s.execute(stmt)], want


def r_in(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    a, b, c, d = (x.logical for x in w.shape.samples[:4])
    got, want = {}, {}
    for values in ([a, d], [b, c], [a, b, c, d]):
        stmt = select(w.model.id).where(w.attr.in_(values)).order_by(w.model.id)
        got[repr(values)] = list(s.scalars(stmt))
        want[repr(values)] = _ids_where(exp, lambda v, xs=values: v in xs)
    return got, want


def r_update_returning(w: World, s: Session, exp: dict[int, Any]) -> tuple[Any, Any]:
    """UPDATE of an unrelated column, RETURNING the attribute as the phase reads it."""
    where = w.model.id.in_(list(exp))
    stmt = update(w.model).where(where).values(note="touched")
    got = sorted(update_returning(w, s, stmt, where, w.model.id, w.attr))
    s.rollback()
    return got, sorted(exp.items())


#: the read paths every phase must follow
READ_PATHS: dict[str, ReadPath] = {
    "get": r_get,
    "select_attr": r_select_attr,
    "select_with_id": r_select_with_id,
    "where_eq": r_where_eq,
    "select_entity_where": r_select_entity_where,
    "filter_by": r_filter_by,
    "order_by": r_order_by,
    "aliased": r_aliased,
    "in": r_in,
    "update_returning": r_update_returning,
}
#: further operators on the attribute, checked at the declared phase only
EXTRA_READ_PATHS: dict[str, ReadPath] = {
    "where_ne": r_where_ne,
    "where_not_eq": r_where_not_eq,
    "where_not_in": r_where_not_in,
    "order_by_desc": r_order_by_desc,
}
#: a self-join (two column sets) and not_in(): only for one new column (with
#: several, the library documents ==, != and in_() against values only)
SINGLE_COLUMN_READ_PATHS: dict[str, ReadPath] = {
    "aliased_join": r_aliased_join,
    "not_in": r_not_in,
}


def read_paths_for(shape: Shape, *, extra: bool) -> dict[str, ReadPath]:
    paths = dict(READ_PATHS)
    if extra:
        paths.update(EXTRA_READ_PATHS)
        if len(shape.new) == 1:
            paths.update(SINGLE_COLUMN_READ_PATHS)
    return paths


def check_read_paths(
    subtests: pytest.Subtests,
    w: World,
    exp: dict[int, Any],
    paths: dict[str, ReadPath],
    label: str = "",
) -> None:
    """Run every read path as a subtest, each in a fresh transaction."""
    for name, path in paths.items():
        with w.session() as s, subtests.test(msg=f"{label}{name}"):
            got, want = path(w, s, exp)
            assert got == want


class TestReads:
    """Every read path reads the place(s) its phase says, over rows of every age."""

    @by_shape
    @pytest.mark.parametrize("phase", [pytest.param(p, id=p.name) for p in Phase])
    def test_read_paths(
        self, engine: Engine, subtests: pytest.Subtests, shape: Shape, phase: Phase
    ) -> None:
        w = World.build(engine, shape, phase)
        seed_for_reads(w)
        before = w.rows()

        check_read_paths(
            subtests, w, expected_reads(shape, phase), read_paths_for(shape, extra=True)
        )

        assert w.rows() == before  # reading wrote nothing


# =============================================================================
# read_phase(): the run-time pin of the read phase among steps 1-3
# =============================================================================
@by_shape
class TestReadPhase:
    """``read_phase(Phase.X, Model.attr)`` changes what is built inside the block."""

    @pytest.mark.parametrize("declared", [pytest.param(p, id=f"decl{p.value}") for p in PINNABLE])
    @pytest.mark.parametrize("pinned", [pytest.param(p, id=f"pin{p.value}") for p in PINNABLE])
    def test_pinned_reads(
        self,
        engine: Engine,
        subtests: pytest.Subtests,
        shape: Shape,
        declared: Phase,
        pinned: Phase,
    ) -> None:
        w = World.build(engine, shape, declared)
        seed_for_reads(w)

        with read_phase(pinned, w.attr):
            check_read_paths(subtests, w, expected_reads(shape, pinned), READ_PATHS, "inside ")
        check_read_paths(subtests, w, expected_reads(shape, declared), READ_PATHS, "after ")

    @pytest.mark.parametrize("declared", [pytest.param(p, id=f"decl{p.value}") for p in PINNABLE])
    @pytest.mark.parametrize("pinned", [pytest.param(p, id=f"pin{p.value}") for p in PINNABLE])
    def test_pin_by_key_for_all_and_for_loaded_instances(
        self, sqlite_engine: Engine, shape: Shape, declared: Phase, pinned: Phase
    ) -> None:
        w = World.build(sqlite_engine, shape, declared)
        seed_for_reads(w)
        exp = expected_reads(shape, pinned)

        def read_all(s: Session) -> dict[int, Any]:
            return {key: value for key, value in s.execute(select(w.model.id, w.attr))}

        with w.session() as s:
            loaded = s.scalars(select(w.model)).all()  # loaded before the block
            with read_phase(pinned, f"{shape.table}.{shape.attr}"):
                by_key = read_all(s)
                instances = {o.id: getattr(o, shape.attr) for o in loaded}
            with read_phase(pinned):
                for_all = read_all(s)
            instances_after = {o.id: getattr(o, shape.attr) for o in loaded}

        assert by_key == exp
        assert instances == exp
        assert for_all == exp
        assert instances_after == expected_reads(shape, declared)

    @pytest.mark.parametrize(
        ("declared", "pinned"),
        [
            pytest.param(d, p, id=f"decl{d.value}-pin{p.value}")
            for d in PINNABLE
            for p in PINNABLE
            if d is not p
        ],
    )
    def test_statement_keeps_the_phase_it_was_built_with(
        self, engine: Engine, shape: Shape, declared: Phase, pinned: Phase
    ) -> None:
        w = World.build(engine, shape, declared)
        seed_for_reads(w)
        probe = shape.samples[2].logical  # C: old of row 3, read at step 1 only

        def build() -> tuple[Any, Any]:
            return (
                select(w.model.id, w.attr).order_by(w.model.id),
                select(w.model.id).where(w.attr == probe).order_by(w.model.id),
            )

        before_block = build()
        with read_phase(pinned, w.attr):
            inside_block = build()
        with w.session() as s:
            with read_phase(pinned, w.attr):
                ran_inside = [list(s.execute(stmt)) for stmt in before_block]
            ran_after = [list(s.execute(stmt)) for stmt in inside_block]

        def want(phase: Phase) -> list[Any]:
            exp = expected_reads(shape, phase)
            return [sorted(exp.items()), [(k,) for k in _ids_where(exp, lambda v: v == probe)]]

        assert [[tuple(r) for r in rows] for rows in ran_inside] == want(declared)
        assert [[tuple(r) for r in rows] for rows in ran_after] == want(pinned)

    def test_step4_cannot_be_pinned(self, shape: Shape) -> None:
        _, step3 = shape.make(Phase.STOP_READ_OLD)
        attr3 = getattr(step3, shape.attr)
        with pytest.raises(PhaseError), read_phase(Phase.STOP_WRITE_OLD, attr3):
            pass
        _, step4 = shape.make(Phase.STOP_WRITE_OLD)
        attr4 = getattr(step4, shape.attr)
        with pytest.raises(PhaseError), read_phase(Phase.READ_NEW, attr4):
            pass


# =============================================================================
# flush-time sync of direct column writes
# =============================================================================
split_only = pytest.mark.parametrize(
    "shape", [pytest.param(s, id=s.name) for s in SHAPES if s.name == "split"]
)


class TestSync:
    """Direct writes to one side are completed at flush; contradictions are refused."""

    @split_only
    @dual_write_phases
    def test_partial_new_write_on_row_from_before_step1_keeps_rest_of_old(
        self, engine: Engine, shape: Shape, phase: Phase
    ) -> None:
        w = World.build(engine, shape, phase)
        w.seed({1: (("Ada Lovelace",), (None, None))})

        with w.session() as s:
            s.get(w.model, 1).first_name = "Augusta"
            s.commit()

        assert w.rows() == {1: (("Augusta Lovelace",), ("Augusta", "Lovelace"))}

    @split_only
    @dual_write_phases
    def test_partial_new_write_on_backfilled_row(
        self, engine: Engine, shape: Shape, phase: Phase
    ) -> None:
        w = World.build(engine, shape, phase)
        w.seed({1: (("Ada Lovelace",), ("Ada", "Lovelace"))})

        with w.session() as s:
            s.get(w.model, 1).last_name = "King"
            s.commit()

        assert w.rows() == {1: (("Ada King",), ("Ada", "King"))}

    @split_only
    @dual_write_phases
    def test_partial_new_write_on_expired_row_keeps_other_new_column(
        self, engine: Engine, shape: Shape, phase: Phase
    ) -> None:
        """After a commit expired the instance, the written-before state of the
        new columns is unknown; the unwritten one must come from the row, not
        from forward(old) (old and new disagree here, as verify() may report)."""
        w = World.build(engine, shape, phase)
        w.seed({1: (("Ada Lovelace",), ("Ada", "King"))})

        with w.session() as s:
            obj = s.get(w.model, 1)
            s.commit()  # expires obj
            obj.first_name = "Augusta"
            s.commit()

        assert w.rows() == {1: (("Augusta King",), ("Augusta", "King"))}

    @split_only
    def test_partial_new_write_at_step4_touches_new_only(
        self, engine: Engine, shape: Shape
    ) -> None:
        w = World.build(engine, shape, Phase.STOP_WRITE_OLD)
        w.seed({1: (("Ada Lovelace",), ("Ada", "Lovelace"))})

        with w.session() as s:
            s.get(w.model, 1).last_name = "King"
            s.commit()

        assert w.rows() == {1: (("Ada Lovelace",), ("Ada", "King"))}

    @by_shape
    @dual_write_phases
    @pytest.mark.parametrize("target", ["loaded", "new"])
    def test_inconsistent_write_is_refused_and_nothing_flushed(
        self, engine: Engine, shape: Shape, phase: Phase, target: str
    ) -> None:
        w = World.build(engine, shape, phase)
        a, b, c, d = shape.samples[:4]
        w.seed({1: (a.old, a.new)})

        in_transaction = text(f"SELECT id FROM {shape.table} ORDER BY id")
        with w.session() as s:
            obj = s.get(w.model, 1)
            s.add(w.model(id=5, **{shape.attr: d.logical}))  # a valid pending row
            if target == "loaded":
                for name, value in {**shape.old_attrs(b), **shape.new_attrs(c)}.items():
                    setattr(obj, name, value)
            else:
                s.add(w.model(id=2, **shape.old_attrs(b), **shape.new_attrs(c)))
            with pytest.raises(InconsistentWriteError):
                s.flush()
            # nothing reached the database, not even in the open transaction
            assert s.connection().execute(in_transaction).scalars().all() == [1]
            s.rollback()

        assert w.rows() == {1: (a.old, a.new)}

    @by_shape
    @dual_write_phases
    def test_consistent_write_of_both_sides_is_accepted(
        self, engine: Engine, shape: Shape, phase: Phase
    ) -> None:
        w = World.build(engine, shape, phase)
        a, b, c = shape.samples[:3]
        w.seed({1: (a.old, a.new)})

        with w.session() as s:
            obj = s.get(w.model, 1)
            for name, value in {**shape.old_attrs(b), **shape.new_attrs(b)}.items():
                setattr(obj, name, value)
            s.add(w.model(id=2, **shape.old_attrs(c), **shape.new_attrs(c)))
            s.commit()

        assert w.rows() == {1: (b.old, b.new), 2: (c.old, c.new)}

    @by_shape
    @dual_write_phases
    @pytest.mark.parametrize("side", ["old", "new"])
    def test_direct_write_after_logical_write_wins(
        self, engine: Engine, shape: Shape, phase: Phase, side: str
    ) -> None:
        w = World.build(engine, shape, phase)
        a, b, c = shape.samples[:3]
        w.seed({1: (a.old, a.new)})

        with w.session() as s:
            obj = s.get(w.model, 1)
            setattr(obj, shape.attr, b.logical)
            direct = shape.old_attrs(c) if side == "old" else shape.new_attrs(c)
            for name, value in direct.items():
                setattr(obj, name, value)
            s.commit()

        assert w.rows() == {1: (c.old, c.new)}


# =============================================================================
# step 4 after the migration dropped the old column
# =============================================================================
class TestStep4DroppedColumn:
    """At step 4 the ORM never selects, inserts or updates the old column."""

    @by_shape
    @pytest.mark.parametrize("path", [pytest.param(p, id=n) for n, p in WRITE_PATHS.items()])
    def test_step4_writes_with_the_old_column_dropped(
        self, engine: Engine, shape: Shape, path: WritePath
    ) -> None:
        """Nothing written at step 4 names the old column: every write path
        works once the migration has dropped it."""
        w = World.build(engine, shape, Phase.STOP_WRITE_OLD)
        a, b, c = shape.samples[:3]
        w.seed({1: (a.old, a.new)})
        w.drop_old_columns()

        written = path(w, b, c)

        want = {1: ((), a.new), **{key: ((), v.new) for key, v in written.items()}}
        assert w.rows(with_old=False) == want

    @by_shape
    def test_step4_reads_with_the_old_column_dropped(
        self, engine: Engine, subtests: pytest.Subtests, shape: Shape
    ) -> None:
        """Nothing read at step 4 names the old column."""
        w = World.build(engine, shape, Phase.STOP_WRITE_OLD)
        seed_for_reads(w)
        w.drop_old_columns()

        check_read_paths(
            subtests,
            w,
            expected_reads(shape, Phase.STOP_WRITE_OLD),
            read_paths_for(shape, extra=False),
        )
