"""Property tests: values survive every phase, and lossless transforms invert.

For the three shapes of change (a rename, a type change and a split), one
model per phase 1-4 is declared on its own table (``prop_<shape>_p<phase>``).
For any value the transforms accept, writing the logical attribute and reading
it back gives the value again: on the pending instance, after commit + expire +
reload, in a fresh session, through ``select(Model.attr)`` and by filtering on
it. Then ``backward(forward(x)) == x`` for the lossless pairs, on the Python
callables and on the SQL callables evaluated by the database, and the Python and
SQL forms of the built-ins agree.

Runs on SQLite and PostgreSQL (the ``engine`` fixture); the example counts
keep the file well under 40 s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Integer, Text, insert, literal, select, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    Unmapped,
    aliased,
    mapped_column,
    unmapped_column,
)

from fourstep_sqla import Phase, Transform, phased

PHASES = tuple(Phase)

# Function-scoped fixtures (the engine) are shared by all examples of a test on
# purpose: tables are created once per test and each example writes new rows.
ROUND_TRIP = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
TRANSFORMS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ---------------------------------------------------------------------------
# values the transforms accept
# ---------------------------------------------------------------------------

# Text both databases store unchanged: no NUL (PostgreSQL refuses it), no surrogates.
_char = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(_char, max_size=30)
# a piece of a split name: non-empty; the first piece also without the separator
first_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00 "), min_size=1)
last_names = st.text(_char, min_size=1, max_size=30)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)

split_values = st.none() | st.tuples(first_names, st.none() | last_names)
rename_values = st.none() | texts
cast_values = st.none() | int32


# ---------------------------------------------------------------------------
# models: one per shape and phase
# ---------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


def _old_column(phase: Phase, name: str, type_: Any) -> tuple[Any, Any]:
    """(annotation, declaration) of an old column: unmapped at step 4."""
    if phase is Phase.STOP_WRITE_OLD:
        return Unmapped[Any], unmapped_column(name, type_, nullable=True)
    return Mapped[Any], mapped_column(name, type_, nullable=True)


def _new_column(type_: Any) -> tuple[Any, Any]:
    """(annotation, declaration) of a new column: always mapped, nullable."""
    return Mapped[Any], mapped_column(type_, nullable=True)


def _model(shape: str, phase: Phase) -> Any:
    """Declare ``prop_<shape>_p<phase>`` with a phased attribute ``value``."""
    namespace: dict[str, Any] = {
        "__tablename__": f"prop_{shape}_p{int(phase)}",
        "id": mapped_column(Integer, primary_key=True, autoincrement=False),
    }
    annotations: dict[str, Any] = {"id": Mapped[int]}
    if shape == "rename":
        annotations["mail"], namespace["mail"] = _old_column(phase, "mail", Text())
        annotations["email"], namespace["email"] = _new_column(Text())
        namespace["value"] = phased(
            old="mail",
            new="email",
            forward=Transform.identity(str),
            backward=Transform.identity(str),
            phase=phase,
        )
    elif shape == "cast":
        annotations["amount_text"], namespace["amount_text"] = _old_column(
            phase, "amount_text", Text()
        )
        annotations["amount"], namespace["amount"] = _new_column(Integer())
        namespace["value"] = phased(
            old="amount_text",
            new="amount",
            forward=Transform.cast(int, Integer()),
            backward=Transform.cast(str, Text()),
            phase=phase,
        )
    else:
        annotations["legacy_name"], namespace["legacy_name"] = _old_column(
            phase, "name", Text()
        )
        annotations["first_name"], namespace["first_name"] = _new_column(Text())
        annotations["last_name"], namespace["last_name"] = _new_column(Text())
        namespace["value"] = phased(
            old="legacy_name",
            new=("first_name", "last_name"),
            forward=Transform.split(" "),
            backward=Transform.join(" "),
            phase=phase,
        )
    namespace["__annotations__"] = annotations
    return type(f"Prop{shape.title()}P{int(phase)}", (Base,), namespace)


SHAPES: dict[str, tuple[st.SearchStrategy[Any], dict[Phase, Any]]] = {
    shape: (values, {phase: _model(shape, phase) for phase in PHASES})
    for shape, values in (
        ("rename", rename_values),
        ("cast", cast_values),
        ("split", split_values),
    )
}

#: per shape: the old attribute, the new attributes, values an old release
#: writes into the old column, and what they mean in the new shape
OLD_SIDE: dict[str, tuple[str, tuple[str, ...], st.SearchStrategy[Any]]] = {
    "rename": ("mail", ("email",), st.none() | texts),
    "cast": ("amount_text", ("amount",), st.none() | int32.map(str)),
    "split": (
        "legacy_name",
        ("first_name", "last_name"),
        # any text, and text made mostly of separators and empty pieces
        st.none() | texts | st.lists(st.sampled_from(["", " ", "  ", "a", "é b"])).map("".join),
    ),
}


def _meaning(shape: str, old: Any) -> Any:
    """The logical value of an old column value, computed independently."""
    if old is None:
        return None
    if shape == "rename":
        return old
    if shape == "cast":
        return int(old)
    first, _, last = old.partition(" ")
    if not first and not last:
        return None
    return (first or None, last or None)


def test_the_models_are_declared_as_intended() -> None:
    for shape, (_values, models) in SHAPES.items():
        old_attribute = OLD_SIDE[shape][0]
        for phase, model in models.items():
            spec = model.value.spec
            assert spec.phase is phase
            assert spec.key == f"prop_{shape}_p{int(phase)}.value"
            mapped = old_attribute in model.__mapper__.attrs
            assert mapped is (phase is not Phase.STOP_WRITE_OLD), (shape, phase)


@pytest.fixture
def db(engine: Engine) -> Engine:
    Base.metadata.create_all(engine)
    return engine


class _Keys:
    """Primary keys unique across the examples of one test."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


def _check_round_trip(engine: Engine, model: Any, key: int, value: Any) -> None:
    phase = model.value.spec.phase
    where = f"{model.__name__} at {phase.name} with {value!r}"

    obj = model(id=key, value=value)
    assert obj.value == value, f"pending instance, {where}"

    with Session(engine) as session:
        session.add(obj)
        assert obj.value == value, f"pending in a session, {where}"
        session.flush()
        assert obj.value == value, f"flushed, {where}"
        session.commit()
        session.expire(obj)
        assert obj.value == value, f"expired and reloaded, {where}"
        session.expire_all()
        reloaded = session.get(model, key)
        assert reloaded is obj and reloaded.value == value, f"session.get, {where}"

    with Session(engine) as session:
        fresh = session.scalars(select(model).where(model.id == key)).one()
        assert fresh.value == value, f"fresh session, {where}"
        selected = session.execute(select(model.value).where(model.id == key)).scalar_one()
        assert selected == value, f"select(attr), {where}"
        found = session.scalars(select(model.id).where(model.value == value)).all()
        assert key in found, f"where(attr == value), {where}"
        found = session.scalars(select(model.id).filter_by(value=value)).all()
        assert key in found, f"filter_by(attr=value), {where}"
        alias = aliased(model)
        selected = session.execute(select(alias.value).where(alias.id == key)).scalar_one()
        assert selected == value, f"select(aliased.attr), {where}"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_set_then_get_returns_the_value_in_every_phase(db: Engine, shape: str) -> None:
    values, models = SHAPES[shape]
    keys = _Keys()

    @ROUND_TRIP
    @given(value=values)
    def check(value: Any) -> None:
        key = keys.next()
        for phase in PHASES:
            _check_round_trip(db, models[phase], key, value)

    check()


@pytest.mark.parametrize("shape", list(SHAPES))
@ROUND_TRIP
@given(data=st.data())
def test_assigning_over_an_earlier_value_in_every_phase(
    db: Engine, shape: str, data: st.DataObject
) -> None:
    """Update path: a loaded row assigned a new value reads that value back."""
    values, models = SHAPES[shape]
    before, after = data.draw(values, "before"), data.draw(values, "after")
    for phase, model in models.items():
        with Session(db) as session:
            key = (session.scalar(select(model.id).order_by(model.id.desc())) or 0) + 1
            session.add(model(id=key, value=before))
            session.commit()
            obj = session.get(model, key)
            obj.value = after
            assert obj.value == after, f"{phase.name}: pending update"
            session.commit()
        with Session(db) as session:
            reloaded = session.get(model, key)
            assert reloaded.value == after, f"{phase.name}: {before!r} -> {after!r}"


@pytest.mark.parametrize("shape", list(SHAPES))
@ROUND_TRIP
@given(data=st.data())
def test_insert_and_update_statements_round_trip_in_every_phase(
    db: Engine, shape: str, data: st.DataObject
) -> None:
    """``insert(Model)`` with a list of dicts and ``update(Model).values(attr=...)``."""
    values, models = SHAPES[shape]
    first, second, third = (data.draw(values, label) for label in ("first", "second", "third"))
    for phase, model in models.items():
        with Session(db) as session:
            key = (session.scalar(select(model.id).order_by(model.id.desc())) or 0) + 1
            session.execute(
                insert(model), [{"id": key, "value": first}, {"id": key + 1, "value": second}]
            )
            session.execute(update(model).where(model.id == key + 1).values(value=third))
            session.commit()
        with Session(db) as session:
            rows = session.execute(
                select(model.id, model.value).where(model.id >= key).order_by(model.id)
            ).all()
            assert [tuple(r) for r in rows] == [(key, first), (key + 1, third)], phase.name
            loaded = session.scalars(select(model).where(model.id >= key).order_by(model.id))
            assert [o.value for o in loaded] == [first, third], phase.name


@pytest.mark.parametrize("shape", list(SHAPES))
@ROUND_TRIP
@given(data=st.data())
def test_rows_of_an_old_release_read_in_every_phase(
    db: Engine, shape: str, data: st.DataObject
) -> None:
    """A row written before step 1 (old column only, outside the ORM).

    Steps 1-2 read forward(old), the same in Python and in SQL, and find it by
    filtering; steps 3-4 read the new place, still empty before the backfill.
    """
    old = data.draw(OLD_SIDE[shape][2], "old")
    meaning = _meaning(shape, old)
    for phase, model in SHAPES[shape][1].items():
        old_column = model.value.spec.old_columns[0]
        with db.begin() as conn:
            key = (conn.scalar(select(model.id).order_by(model.id.desc())) or 0) + 1
            conn.execute(model.__table__.insert().values({"id": key, old_column.name: old}))
        expected = meaning if phase.reads_old else None
        with Session(db) as session:
            obj = session.get(model, key)
            assert obj.value == expected, f"instance at {phase.name}: {old!r}"
            selected = session.execute(select(model.value).where(model.id == key)).scalar_one()
            assert selected == expected, f"select at {phase.name}: {old!r}"
            found = session.scalars(select(model.id).where(model.value == expected)).all()
            assert key in found, f"where at {phase.name}: {old!r}"


@pytest.mark.parametrize("shape", list(SHAPES))
@ROUND_TRIP
@given(data=st.data())
def test_direct_column_writes_are_synced_in_steps_1_to_3(
    db: Engine, shape: str, data: st.DataObject
) -> None:
    """Code writing the old column, or the new ones, leaves both places agreeing."""
    old_attribute, new_attributes, old_values = OLD_SIDE[shape]
    old = data.draw(old_values, "old")
    value = data.draw(SHAPES[shape][0], "value")
    for phase, model in SHAPES[shape][1].items():
        if not phase.writes_old:
            continue
        with Session(db) as session:
            key = (session.scalar(select(model.id).order_by(model.id.desc())) or 0) + 1
            session.add(model(id=key, **{old_attribute: old}))
            new_values = model.value.spec.unshape(value)
            session.add(model(id=key + 1, **dict(zip(new_attributes, new_values))))
            session.commit()
        with Session(db) as session:
            by_old, by_new = session.get(model, key), session.get(model, key + 1)
            assert by_old.value == _meaning(shape, old), f"old written at {phase.name}"
            assert by_new.value == value, f"new written at {phase.name}"
            written_old = getattr(by_new, old_attribute)
            assert _meaning(shape, written_old) == value, f"old synced at {phase.name}"


# ---------------------------------------------------------------------------
# transforms: lossless pairs invert, Python and SQL agree
# ---------------------------------------------------------------------------

identity = Transform.identity(str)
to_text = Transform.cast(str, Text())
to_int = Transform.cast(int, Integer())
split = Transform.split(" ")
join = Transform.join(" ")


def _sql(transform: Transform[Any]) -> Callable[..., Any]:
    assert transform.sql is not None, f"{transform!r} has no SQL form"
    return transform.sql


def _evaluate(engine: Engine, *expressions: Any) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(select(*expressions)).one())


def _names_from_parts(first: str, last: str | None) -> str:
    return first if last is None else f"{first} {last}"


@given(value=texts)
def test_identity_is_lossless_in_python(value: str) -> None:
    assert identity.python(identity.python(value)) == value


@given(number=int32)
def test_cast_int_to_text_to_int_is_lossless_in_python(number: int) -> None:
    assert to_int.python(to_text.python(number)) == number


@given(parts=st.tuples(first_names, st.none() | last_names))
def test_split_join_are_inverse_in_python(parts: tuple[str, str | None]) -> None:
    name = _names_from_parts(*parts)
    assert join.python(*split.python(name)) == name
    assert split.python(join.python(*parts)) == parts


@TRANSFORMS
@given(value=texts)
def test_identity_is_lossless_in_sql(engine: Engine, value: str) -> None:
    expr = _sql(identity)(_sql(identity)(literal(value, Text())))
    assert _evaluate(engine, expr) == (value,)


@TRANSFORMS
@given(number=int32)
def test_cast_int_to_text_to_int_is_lossless_in_sql(engine: Engine, number: int) -> None:
    as_text = _sql(to_text)(literal(number, Integer()))
    assert _evaluate(engine, as_text, _sql(to_int)(as_text)) == (str(number), number)


@TRANSFORMS
@given(parts=st.tuples(first_names, st.none() | last_names))
def test_split_join_are_inverse_in_sql(engine: Engine, parts: tuple[str, str | None]) -> None:
    name = _names_from_parts(*parts)
    pieces = _sql(split)(literal(name, Text()))
    assert _evaluate(engine, *pieces) == parts
    assert _evaluate(engine, _sql(join)(*pieces)) == (name,)
    joined = _sql(join)(*(literal(p, Text()) for p in parts))
    assert _evaluate(engine, joined, *_sql(split)(joined)) == (name, *parts)


@TRANSFORMS
@given(value=texts)
def test_split_agrees_in_python_and_sql(engine: Engine, value: str) -> None:
    """What the backfill computes in SQL is what reads compute in Python."""
    assert _evaluate(engine, *_sql(split)(literal(value, Text()))) == split.python(value)


@TRANSFORMS
@given(parts=st.tuples(st.none() | texts, st.none() | texts))
def test_join_agrees_in_python_and_sql(
    engine: Engine, parts: tuple[str | None, str | None]
) -> None:
    joined = _sql(join)(*(literal(p, Text()) for p in parts))
    assert _evaluate(engine, joined) == (join.python(*parts),)


@TRANSFORMS
@given(number=int32)
def test_cast_agrees_in_python_and_sql(engine: Engine, number: int) -> None:
    assert _evaluate(engine, _sql(to_text)(literal(number, Integer()))) == (
        to_text.python(number),
    )
    assert _evaluate(engine, _sql(to_int)(literal(str(number), Text()))) == (
        to_int.python(str(number)),
    )
