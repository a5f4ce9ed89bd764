"""The smallest real phased attribute: ``users.name`` split into first/last name.

Runs on an embedded SQLite database and walks the read side of steps 1-3 on
the same rows, then shows step 4's mapping. ``make demo`` runs it.
"""

from __future__ import annotations

import sys

from sqlalchemy import create_engine, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fourstep_sqla import Phase, Transform, phased, read_phase


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    legacy_name: Mapped[str | None] = mapped_column("name")  # the old place
    first_name: Mapped[str | None]  # the new places
    last_name: Mapped[str | None]

    full_name = phased(
        old="legacy_name",
        new=("first_name", "last_name"),
        forward=Transform.split(" "),
        backward=Transform.join(" "),
        phase=Phase.WRITE_BOTH,
    )


def show(session: Session, title: str) -> None:
    print(f"\n{title}")
    rows = session.execute(text("SELECT id, name, first_name, last_name FROM users ORDER BY id"))
    for row in rows:
        print(
            f"  row {row.id}: name={row.name!r:20} first_name={row.first_name!r:10} "
            f"last_name={row.last_name!r}"
        )


def main(url: str = "sqlite://") -> None:
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        # rows written by the release before step 1: only the old column
        session.execute(
            text("INSERT INTO users (id, name) VALUES (1, 'Ada Lovelace'), (2, 'Cher')")
        )
        show(session, "Before step 1: rows that only have the old column")

        print("\nStep 1 (WRITE_BOTH): the application writes the logical attribute ...")
        session.add(User(id=3, full_name=("Grace", "Hopper")))
        session.execute(insert(User), [{"id": 4, "full_name": ("Alan", "Turing")}])
        session.execute(update(User).where(User.id == 1).values(full_name=("Ada", "King")))
        session.commit()
        show(session, "... and both places are written")

        for phase in (Phase.WRITE_BOTH, Phase.READ_NEW, Phase.STOP_READ_OLD):
            with read_phase(phase, User.full_name):
                stmt = select(User.id, User.full_name).order_by(User.id)
                print(f"\nReading at {phase.name}:")
                sql = stmt.compile(engine, compile_kwargs={"literal_binds": True})
                print(f"  SQL: {' '.join(str(sql).split())[:150]}...")
                for row in session.execute(stmt):
                    print(f"  {row.id}: {row.full_name!r}")
        print("\nRow 2 ('Cher') reads None at STOP_READ_OLD: the backfill (step 3) fills it first.")


if __name__ == "__main__":
    main(*sys.argv[1:])
