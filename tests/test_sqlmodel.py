"""SQLModel applications: a phased attribute on a SQLModel table class, every phase.

The application is written the way SQLModel's documentation writes one: the
logical field (``full_name``) lives in a base model that the API schemas share,
the table class declares the old and the new columns and
``full_name = phased(...)``, and at step 4 the old column becomes
``legacy_full_name: Unmapped[str | None] = unmapped_column("full_name")``, all
imported from :mod:`fourstep_sqla.sqlmodel`. FastAPI routes create, read,
filter and update users through the API schemas (``model_validate``,
``sqlmodel_update``).

The first test carries such an app through the four steps with the revisions
autogenerate writes, asserting the database rows (old and new column) at each
step. The others each pin one thing measured broken on SQLModel before this
module existed: the class statement failing (pydantic's "non-annotated
attribute", ``DuplicateColumnError`` with the field in the base), the
constructor, ``model_validate`` and ``sqlmodel_update`` dropping the logical
field, assignment raising, ``model_dump()`` and the JSON schema leaving it out,
SQLModel's own field defaults counted as writes at flush
(``InconsistentWriteError``), and the step-4 ``Unmapped`` column refused by
pydantic or turned NOT NULL.

Table names start with ``sqlm_`` (the app's is ``users``, in databases of its
own): the registry warns when two classes claim one ``"<table>.<attribute>"``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry
from sqlmodel import AutoString, Field, Session, SQLModel
from test_migration_locks import Project

from fourstep_sqla import Phase, Transform
from fourstep_sqla.attribute import PhasedAttribute
from fourstep_sqla.errors import DeclarationError, InconsistentWriteError
from fourstep_sqla.sqlmodel import Unmapped, phased, unmapped_column

PHASES = [pytest.param(p, id=p.name) for p in Phase]
DUAL_WRITE = [pytest.param(p, id=p.name) for p in Phase if p.writes_old]

# ---------------------------------------------------------------------------
# the application, one models module per release (Alembic autogenerates from it)
# ---------------------------------------------------------------------------

STEP_0 = '''
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class Base(SQLModel, registry=registry()):
    """This release's metadata (the test imports every release into one process)."""


class UserBase(SQLModel):
    full_name: str


class User(UserBase, Base, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)


class UserCreate(UserBase):
    pass


class UserPublic(UserBase):
    id: int


class UserUpdate(SQLModel):
    full_name: str | None = None
'''

MODELS = '''
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from fourstep_sqla import Phase, Transform
from fourstep_sqla.sqlmodel import Unmapped, phased, unmapped_column


class Base(SQLModel, registry=registry()):
    """This release's metadata (the test imports every release into one process)."""


class UserBase(SQLModel):
    full_name: str


class User(UserBase, Base, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    {old}
    display_name: str | None = None
    full_name = phased(
        old="legacy_full_name",
        new="display_name",
        forward=Transform.identity(),
        backward=Transform.identity(),
        phase=Phase.{phase},
    )


class UserCreate(UserBase):
    pass


class UserPublic(UserBase):
    id: int


class UserUpdate(SQLModel):
    full_name: str | None = None
{extra}'''

MAPPED = (
    'legacy_full_name: str | None = Field(default=None, sa_column_kwargs={"name": "full_name"})'
)
UNMAPPED = 'legacy_full_name: Unmapped[str | None] = unmapped_column("full_name")'

APP = '''
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import Engine
from sqlmodel import Session, select

from {models} import User, UserCreate, UserPublic, UserUpdate


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI()

    def get_session():
        with Session(engine) as session:
            yield session

    @app.post("/users/", response_model=UserPublic)
    def create_user(user: UserCreate, session: Session = Depends(get_session)):
        db_user = User.model_validate(user)
        session.add(db_user)
        session.commit()
        session.refresh(db_user)
        return db_user

    @app.get("/users/", response_model=list[UserPublic])
    def read_users(full_name: str | None = None, session: Session = Depends(get_session)):
        statement = select(User).order_by(User.id)
        if full_name is not None:
            statement = statement.where(User.full_name == full_name)
        return session.exec(statement).all()

    @app.get("/users/{{user_id}}", response_model=UserPublic)
    def read_user(user_id: int, session: Session = Depends(get_session)):
        user = session.get(User, user_id)
        if not user:
            raise HTTPException(status_code=404, detail="User not found")
        return user

    @app.patch("/users/{{user_id}}", response_model=UserPublic)
    def update_user(user_id: int, user: UserUpdate, session: Session = Depends(get_session)):
        db_user = session.get(User, user_id)
        if not db_user:
            raise HTTPException(status_code=404, detail="User not found")
        db_user.sqlmodel_update(user.model_dump(exclude_unset=True))
        session.add(db_user)
        session.commit()
        session.refresh(db_user)
        return db_user

    return app
'''


class Release:
    """One release of the application: its models module and its FastAPI app."""

    def __init__(self, project: Project, engine: Engine, phase: str, template: str,
                 old: str = MAPPED) -> None:
        project.models(phase, old, template=template)
        models = project.config.attributes["models"]
        (project.models_dir / f"app_{models}.py").write_text(APP.format(models=models))
        self.module = importlib.import_module(f"app_{models}")
        self.client = TestClient(self.module.create_app(engine))

    def create(self, full_name: str) -> int:
        response = self.client.post("/users/", json={"full_name": full_name})
        assert response.status_code == 200, response.text
        assert response.json()["full_name"] == full_name
        return int(response.json()["id"])

    def read(self, user_id: int) -> str:
        response = self.client.get(f"/users/{user_id}")
        assert response.status_code == 200, response.text
        return str(response.json()["full_name"])

    def find(self, full_name: str) -> list[int]:
        response = self.client.get("/users/", params={"full_name": full_name})
        assert response.status_code == 200, response.text
        return [user["id"] for user in response.json()]

    def rename(self, user_id: int, full_name: str) -> None:
        response = self.client.patch(f"/users/{user_id}", json={"full_name": full_name})
        assert response.status_code == 200, response.text
        assert response.json()["full_name"] == full_name


def _rows(engine: Engine, table: str = "users") -> dict[int, tuple[Any, ...]]:
    present = {c["name"] for c in inspect(engine).get_columns(table)}
    columns = [c for c in ("full_name", "display_name") if c in present]
    with engine.connect() as conn:
        result = conn.execute(text(f"SELECT id, {', '.join(columns)} FROM {table} ORDER BY id"))
        return {row[0]: tuple(row[1:]) for row in result}


def _migrate(project: Project) -> str:
    upgrade = project.revision()
    command.upgrade(project.config, "head")
    command.check(project.config)  # nothing left for autogenerate: the models fit the database
    return upgrade


@pytest.mark.filterwarnings("ignore::fourstep_sqla.errors.FourStepWarning")
def test_a_fastapi_app_goes_through_the_four_steps(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = Project(tmp_path, engine)
    # what SQLModel's documentation has every Alembic user do: revisions name its types
    mako = project.dir / "script.py.mako"
    mako.write_text(mako.read_text().replace(
        "import sqlalchemy as sa\n", "import sqlalchemy as sa\nimport sqlmodel\n"))
    monkeypatch.syspath_prepend(str(project.models_dir))

    # step 0: full_name is a plain column, NOT NULL
    release = Release(project, engine, "", STEP_0)
    _migrate(project)
    ada = release.create("Ada Lovelace")
    alan = release.create("Alan Turing")
    assert _rows(engine) == {ada: ("Ada Lovelace",), alan: ("Alan Turing",)}

    # step 1: the column moves to display_name; the API keeps speaking full_name
    previous, release = release, Release(project, engine, "WRITE_BOTH", MODELS)
    upgrade = _migrate(project)
    assert "op.add_column('users'" in upgrade and "display_name" in upgrade
    assert "op.relax_old_not_null(" in upgrade and "op.create_sync_triggers(" in upgrade
    assert {c["name"]: c for c in inspect(engine).get_columns("users")}["full_name"]["nullable"]
    grace = release.create("Grace Hopper")
    assert release.read(alan) == "Alan Turing"  # forward(old): not backfilled yet
    release.rename(ada, "Ada King")
    assert _rows(engine) == {
        ada: ("Ada King", "Ada King"),
        alan: ("Alan Turing", None),
        grace: ("Grace Hopper", "Grace Hopper"),
    }
    assert release.find("Alan Turing") == [alan]
    # migrate, then deploy: the previous release, still running, writes the old column only
    linus = previous.create("Linus Torvalds")
    assert _rows(engine)[linus] == ("Linus Torvalds", "Linus Torvalds")
    assert release.read(linus) == "Linus Torvalds"

    # step 2: reads the new column, falling back to the old one
    release = Release(project, engine, "READ_NEW", MODELS)
    assert "op.record_phase(" in _migrate(project)
    assert release.read(alan) == "Alan Turing"
    assert release.find("Alan Turing") == [alan]
    edsger = release.create("Edsger Dijkstra")
    release.rename(grace, "Grace Brewster Hopper")
    assert _rows(engine) == {
        ada: ("Ada King", "Ada King"),
        alan: ("Alan Turing", None),
        grace: ("Grace Brewster Hopper", "Grace Brewster Hopper"),
        linus: ("Linus Torvalds", "Linus Torvalds"),
        edsger: ("Edsger Dijkstra", "Edsger Dijkstra"),
    }

    # step 3: the backfill fills the new column; reads stop using the old one
    release = Release(project, engine, "STOP_READ_OLD", MODELS)
    assert "op.backfill(" in _migrate(project)
    assert _rows(engine)[alan] == ("Alan Turing", "Alan Turing")
    assert release.read(alan) == "Alan Turing"
    release.rename(alan, "Alan Mathison Turing")
    assert _rows(engine)[alan] == ("Alan Mathison Turing", "Alan Mathison Turing")

    # step 4: the release that stops writing the old column runs before the drop ...
    release = Release(project, engine, "STOP_WRITE_OLD", MODELS, old=UNMAPPED)
    barbara = release.create("Barbara Liskov")
    release.rename(edsger, "E. W. Dijkstra")
    # ... the sync triggers still keep the old column in step for the previous release
    assert _rows(engine)[barbara] == ("Barbara Liskov", "Barbara Liskov")
    assert _rows(engine)[edsger] == ("E. W. Dijkstra", "E. W. Dijkstra")
    upgrade = _migrate(project)
    assert "op.drop_old(" in upgrade and "sa.String()" not in upgrade  # restored as declared
    assert {c["name"] for c in inspect(engine).get_columns("users")} == {"id", "display_name"}
    assert _rows(engine) == {
        ada: ("Ada King",),
        alan: ("Alan Mathison Turing",),
        grace: ("Grace Brewster Hopper",),
        linus: ("Linus Torvalds",),
        edsger: ("E. W. Dijkstra",),
        barbara: ("Barbara Liskov",),
    }
    katherine = release.create("Katherine Johnson")
    release.rename(ada, "Augusta Ada King")
    assert _rows(engine)[katherine] == ("Katherine Johnson",)
    assert release.read(ada) == "Augusta Ada King"
    assert release.find("Barbara Liskov") == [barbara]


# ---------------------------------------------------------------------------
# focused: one measured failure each, on models declared the same way
# ---------------------------------------------------------------------------


@dataclass
class Models:
    Base: Any
    User: Any
    UserCreate: Any
    UserPublic: Any
    UserUpdate: Any


def declare(phase: Phase, table: str) -> Models:
    """The application's models at ``phase`` (a registry of their own per call)."""

    class Base(SQLModel, registry=registry()):
        pass

    class UserBase(SQLModel):
        full_name: str | None = Field(default=None, description="The name shown")

    if phase.writes_old:

        class User(UserBase, Base, table=True):
            __tablename__ = table
            id: int | None = Field(default=None, primary_key=True)
            legacy_full_name: str | None = Field(
                default=None, sa_column_kwargs={"name": "full_name"}
            )
            display_name: str | None = None
            full_name = phased(
                old="legacy_full_name",
                new="display_name",
                forward=Transform.identity(),
                backward=Transform.identity(),
                phase=phase,
            )

    else:

        class User(UserBase, Base, table=True):
            __tablename__ = table
            id: int | None = Field(default=None, primary_key=True)
            legacy_full_name: Unmapped[str | None] = unmapped_column("full_name")
            display_name: str | None = None
            full_name = phased(
                old="legacy_full_name",
                new="display_name",
                forward=Transform.identity(),
                backward=Transform.identity(),
                phase=phase,
            )

    class UserCreate(UserBase):
        pass

    class UserPublic(UserBase):
        id: int

    class UserUpdate(SQLModel):
        full_name: str | None = None

    return Models(Base, User, UserCreate, UserPublic, UserUpdate)


@pytest.fixture
def table(engine: Engine, request: pytest.FixtureRequest) -> str:
    """A table as step 3 leaves it: the old column (relaxed to NULL) and the new one."""
    name = f"sqlm_{request.function.__name__.removeprefix('test_')[:40]}"
    with engine.begin() as conn:
        conn.execute(text(
            f"CREATE TABLE {name} (id INTEGER NOT NULL PRIMARY KEY, "
            f"full_name VARCHAR(80), display_name VARCHAR(80))"
        ))
    return name


def _one_row(engine: Engine, table: str, full_name: str | None, display_name: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {table} VALUES (1, :old, :new)"),
                     {"old": full_name, "new": display_name})


def _expected(phase: Phase, value: str, old: str | None = None) -> tuple[str | None, str]:
    """The row a write of ``value`` through the attribute leaves (old, new), where the
    old column held ``old`` (no sync triggers here: step 4 leaves it as it was)."""
    return (value if phase.writes_old else old, value)


@pytest.mark.parametrize("phase", PHASES)
def test_the_table_class_declares_with_the_logical_field_in_the_shared_base(
    phase: Phase,
) -> None:
    # before: pydantic refused `full_name = phased(...)` ("non-annotated attribute"), and
    # with the field inherited SQLModel built a second "full_name" column
    # (DuplicateColumnError)
    User = declare(phase, "sqlm_declares").User
    assert sorted(c.name for c in User.__table__.c) == ["display_name", "full_name", "id"]
    assert all(c.nullable for c in User.__table__.c if c.name != "id")
    assert isinstance(inspect(User).all_orm_descriptors["full_name"], PhasedAttribute)
    assert "full_name" in User.model_fields
    assert ("legacy_full_name" in User.model_fields) is phase.writes_old
    read_from = "full_name" if phase is Phase.WRITE_BOTH else "display_name"
    where = str(select(User).where(User.full_name == "Ada Lovelace")).split("WHERE")[1]
    assert f"sqlm_declares.{read_from} = " in where


@pytest.mark.parametrize("phase", PHASES)
def test_the_constructor_writes_through_the_attribute(
    engine: Engine, table: str, phase: Phase
) -> None:
    models = declare(phase, table)
    user = models.User(id=1, full_name="Ada Lovelace")
    assert user.full_name == "Ada Lovelace"
    assert user.display_name == "Ada Lovelace"
    with Session(engine) as session:
        session.add(user)
        session.commit()
    assert _rows(engine, table) == {1: _expected(phase, "Ada Lovelace")}


@pytest.mark.parametrize("phase", PHASES)
def test_model_validate_writes_through_the_attribute(
    engine: Engine, table: str, phase: Phase
) -> None:
    models = declare(phase, table)
    from_dict = models.User.model_validate({"id": 1, "full_name": "Ada Lovelace"})
    from_schema = models.User.model_validate(models.UserCreate(full_name="Grace Hopper"),
                                             update={"id": 2})
    assert (from_dict.full_name, from_schema.full_name) == ("Ada Lovelace", "Grace Hopper")
    with Session(engine) as session:
        session.add_all([from_dict, from_schema])
        session.commit()
    assert _rows(engine, table) == {
        1: _expected(phase, "Ada Lovelace"),
        2: _expected(phase, "Grace Hopper"),
    }


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("given", ["dict", "model"])
def test_sqlmodel_update_writes_through_the_attribute(
    engine: Engine, table: str, phase: Phase, given: str
) -> None:
    models = declare(phase, table)
    _one_row(engine, table, "Ada Lovelace", "Ada Lovelace")
    update = models.UserUpdate(full_name="Ada King")
    with Session(engine) as session:
        user = session.get(models.User, 1)
        user.sqlmodel_update(update.model_dump(exclude_unset=True) if given == "dict" else update)
        assert user.full_name == "Ada King"
        session.commit()
    assert _rows(engine, table) == {1: _expected(phase, "Ada King", old="Ada Lovelace")}


@pytest.mark.parametrize("phase", PHASES)
def test_assignment_writes_through_the_attribute(
    engine: Engine, table: str, phase: Phase
) -> None:
    models = declare(phase, table)
    # not backfilled yet (before step 3): the value is read from the old column
    _one_row(engine, table, "Ada Lovelace", "Ada Lovelace" if phase >= 3 else None)
    with Session(engine) as session:
        user = session.get(models.User, 1)
        user.full_name = "Ada King"
        assert (user.full_name, user.display_name) == ("Ada King", "Ada King")
        assert "full_name" in user.model_fields_set
        session.commit()
    assert _rows(engine, table) == {1: _expected(phase, "Ada King", old="Ada Lovelace")}


@pytest.mark.parametrize("phase", PHASES)
def test_model_dump_and_the_schemas_carry_the_logical_field(
    engine: Engine, table: str, phase: Phase
) -> None:
    models = declare(phase, table)
    _one_row(engine, table, "Ada Lovelace", "Ada Lovelace" if phase >= 3 else None)
    built = models.User(id=2, full_name="Grace Hopper")
    assert built.model_dump()["full_name"] == "Grace Hopper"
    assert '"full_name":"Grace Hopper"' in built.model_dump_json()
    built.display_name = "Grace Brewster Hopper"  # a column written directly: read live
    assert built.model_dump()["full_name"] == (
        "Grace Hopper" if phase is Phase.WRITE_BOTH else "Grace Brewster Hopper"
    )
    with Session(engine) as session:
        loaded = session.get(models.User, 1)
        assert loaded.model_dump()["full_name"] == "Ada Lovelace"
        assert models.UserPublic.model_validate(loaded).full_name == "Ada Lovelace"
    for mode in ("validation", "serialization"):
        schema = models.User.model_json_schema(mode=mode)
        assert schema["properties"]["full_name"]["description"] == "The name shown", mode

    app = FastAPI()

    @app.get("/users/{user_id}", response_model=models.User)
    def read_user(user_id: int) -> Any:
        with Session(engine) as session:
            return session.get(models.User, user_id)

    client = TestClient(app)
    assert client.get("/users/1").json()["full_name"] == "Ada Lovelace"
    response_schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert any("full_name" in s.get("properties", {}) for s in response_schema.values())


@pytest.mark.parametrize("phase", DUAL_WRITE)
def test_sqlmodel_defaults_are_not_writes(engine: Engine, table: str, phase: Phase) -> None:
    # before: SQLModel gives every field its default, so display_name=None counted as
    # a write next to legacy_full_name="Ada", and the flush raised InconsistentWriteError
    models = declare(phase, table)
    User = models.User
    reassigned = User(id=5, full_name="Someone Else")
    reassigned.legacy_full_name = "Barbara Liskov"  # written directly after: that write wins
    late = User(id=4)
    late.legacy_full_name = "Edsger Dijkstra"
    with Session(engine) as session:
        session.add_all([
            User(id=1, legacy_full_name="Ada Lovelace"),
            User(id=2, display_name="Grace Hopper"),
            User.model_validate({"id": 3, "legacy_full_name": "Alan Turing"}),
            late,
            reassigned,
            User(id=6),
        ])
        session.commit()
    assert _rows(engine, table) == {
        1: ("Ada Lovelace", "Ada Lovelace"),
        2: ("Grace Hopper", "Grace Hopper"),
        3: ("Alan Turing", "Alan Turing"),
        4: ("Edsger Dijkstra", "Edsger Dijkstra"),
        5: ("Barbara Liskov", "Barbara Liskov"),
        6: (None, None),
    }


@pytest.mark.parametrize("phase", DUAL_WRITE)
def test_old_and_new_columns_given_apart_must_agree(phase: Phase) -> None:
    User = declare(phase, "sqlm_agree").User
    assert User(legacy_full_name="Ada", display_name="Ada").full_name == "Ada"
    for build in (
        lambda: User(legacy_full_name="Ada Lovelace", display_name="Grace Hopper"),
        lambda: User.model_validate(
            {"legacy_full_name": "Ada Lovelace", "display_name": "Grace Hopper"}
        ),
    ):
        with pytest.raises(InconsistentWriteError, match=r"legacy_full_name.*display_name"):
            build()


def test_step_4_declares_the_old_column_unmapped_and_nullable(engine: Engine, table: str) -> None:
    # before: pydantic could not build a schema for Unmapped[...]; with ClassVar instead,
    # SQLModel made the column NOT NULL and the declaration failed (OldColumnNotNullError)
    models = declare(Phase.STOP_WRITE_OLD, table)
    User = models.User
    old = User.__table__.c.full_name
    assert old.nullable and old.name == "full_name"
    assert isinstance(old.type, AutoString)  # the type SQLModel gave the field before
    assert "legacy_full_name" not in User.model_fields
    # the ORM never selects (nor inserts, nor updates) the old column while it is dropped
    assert f"{table}.full_name" not in str(select(User).compile(engine))
    with Session(engine) as session:
        session.add(User(id=1, full_name="Ada Lovelace"))
        session.commit()
        user = session.scalars(select(User).where(User.full_name == "Ada Lovelace")).one()
        user.sqlmodel_update({"full_name": "Ada King"})
        session.commit()
    assert _rows(engine, table) == {1: (None, "Ada King")}


def test_misdeclarations_say_what_to_do() -> None:
    class Base(SQLModel, registry=registry()):
        pass

    with pytest.raises(DeclarationError, match=r"(?s)NoField\.full_name.*base model"):

        class NoField(Base, table=True):
            __tablename__ = "sqlm_no_field"
            id: int | None = Field(default=None, primary_key=True)
            legacy_full_name: str | None = None
            display_name: str | None = None
            full_name = phased(
                old="legacy_full_name", new="display_name", forward=Transform.identity(),
                backward=Transform.identity(), phase=Phase.WRITE_BOTH,
            )

    class NotATable(SQLModel):
        legacy_full_name: str | None = None
        display_name: str | None = None
        full_name = phased(
            old="legacy_full_name", new="display_name", forward=Transform.identity(),
            backward=Transform.identity(), phase=Phase.WRITE_BOTH,
        )

    with pytest.raises(DeclarationError, match=r"(?s)NotATable\.full_name.*on the table class"):

        class Inherits(NotATable, Base, table=True):
            __tablename__ = "sqlm_inherits"
            id: int | None = Field(default=None, primary_key=True)

    class Plain(DeclarativeBase):
        pass

    with pytest.raises(DeclarationError, match=r"(?s)PlainUser\.full_name.*fourstep_sqla\.phased"):

        class PlainUser(Plain):
            __tablename__ = "sqlm_plain"
            id: Mapped[int] = mapped_column(primary_key=True)
            legacy_full_name: Mapped[str | None]
            display_name: Mapped[str | None]
            full_name = phased(
                old="legacy_full_name", new="display_name", forward=Transform.identity(),
                backward=Transform.identity(), phase=Phase.WRITE_BOTH,
            )

    Plain.registry.dispose()
