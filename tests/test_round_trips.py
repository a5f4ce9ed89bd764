"""Round trips the README promises: every step downgrades without losing a value,
or the drop refuses up front, naming the rows it would lose.

For the built-in transforms and values chosen to trip them ('' and ' ' split
into NULLs, separators at the edges or doubled, numbers written with zeros,
signs or spaces), a table walks the four steps as autogenerate writes them.
A row is *lossy* when ``backward(forward(old))`` is not ``old`` (computed here
with the Python forms, which agree with the SQL ones): while one exists the
drop refuses and names exactly those rows; once they are fixed, the drop and
the downgrade to the start give every other value back exactly, NOT NULL
included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from test_migration_locks import Project

from fourstep_sqla import Transform
from fourstep_sqla.alembic.ops import DropRefusedError

SPLIT = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    {old}
    first: Mapped[str | None] = mapped_column(String(40))
    last: Mapped[str | None] = mapped_column(String(40))
    value = phased(
        old="legacy", new=("first", "last"),
        forward=Transform.split(" "), backward=Transform.join(" "), phase=Phase.{phase},
    )
{extra}
'''

CAST = '''
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Unmapped, mapped_column, unmapped_column

from fourstep_sqla import Phase, Transform, phased


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    {old}
    number: Mapped[int | None] = mapped_column(Integer)
    value = phased(
        old="legacy", new="number",
        forward=Transform.cast(int, Integer()), backward=Transform.cast(str, String(20)),
        phase=Phase.{phase},
    )
{extra}
'''

def _cases() -> dict[str, tuple[str, str, Any, Any, list[str]]]:
    from sqlalchemy import Integer, String

    return {
        "split": (
            SPLIT, "VARCHAR(80)", Transform.split(" "), Transform.join(" "),
            ["Ada Lovelace", "Cher", "", " ", "Ada ", " Ada", "Mary Ann Smith", "A  B", "  "],
        ),
        "cast": (
            CAST, "VARCHAR(20)", Transform.cast(int, Integer()),
            Transform.cast(str, String(20)),
            ["12", "007", " 12", "+5", "-3", "0", "-0", "2147483647"],
        ),
    }


def _python(transform: Any, value: Any) -> Any:
    """The Python form, sources positional, None when every source is None."""
    sources = value if isinstance(value, tuple) else (value,)
    if all(v is None for v in sources):
        return None
    return transform.python(*sources)


@pytest.mark.parametrize("case", ["split", "cast"])
@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_downgrades_keep_every_value_or_the_drop_refuses_up_front(
    engine: Engine, tmp_path: Path, case: str
) -> None:
    template, old_type, forward, backward, values = _cases()[case]
    mapped = 'legacy: Mapped[str | None] = mapped_column("old_value", String(80))'
    unmapped = 'legacy: Unmapped[str | None] = unmapped_column("old_value", String(80))'
    # "rows", a reserved word on MariaDB/MySQL: quoted as the library must quote it
    rows = engine.dialect.identifier_preparer.quote("rows")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {rows} (id INTEGER NOT NULL PRIMARY KEY, "
                          f"old_value {old_type} NOT NULL)"))
        for key, value in enumerate(values, start=1):
            conn.execute(text(f"INSERT INTO {rows} (id, old_value) VALUES (:k, :v)"),
                         {"k": key, "v": value})
    lossy = {
        key for key, value in enumerate(values, start=1)
        if _python(backward, _python(forward, value)) != value
    }
    assert lossy  # the case does exercise the refusal
    project = Project(tmp_path, engine)
    for phase, old in (("WRITE_BOTH", mapped), ("READ_NEW", mapped), ("STOP_READ_OLD", mapped),
                       ("STOP_WRITE_OLD", unmapped)):
        project.models(phase, old, template=template)
        project.revision()
        if phase != "STOP_WRITE_OLD":
            command.upgrade(project.config, "head")
    with pytest.raises(DropRefusedError) as refused:
        command.upgrade(project.config, "head")
    message = str(refused.value)
    assert f"{len(lossy)} row(s) hold an old value that backward(forward(old)) does not give " \
           f"back" in message, message
    for key in sorted(lossy)[:5]:
        assert f"({key},)" in message
    assert "accept_lossy=True" in message
    # nothing was dropped
    assert "old_value" in {c["name"] for c in inspect(engine).get_columns("rows")}
    # fix the lossy rows in the old place (the sync triggers carry the fix across),
    # then the whole round trip gives every value back
    kept = {key: value for key, value in enumerate(values, start=1) if key not in lossy}
    with engine.begin() as conn:
        for key in lossy:
            conn.execute(text(f"DELETE FROM {rows} WHERE id = :k"), {"k": key})
    command.upgrade(project.config, "head")
    assert "old_value" not in {c["name"] for c in inspect(engine).get_columns("rows")}
    command.downgrade(project.config, "base")
    columns = {c["name"]: c for c in inspect(engine).get_columns("rows")}
    assert set(columns) == {"id", "old_value"} and not columns["old_value"]["nullable"]
    with engine.connect() as conn:
        assert dict(conn.execute(text(f"SELECT id, old_value FROM {rows}")).all()) == kept
