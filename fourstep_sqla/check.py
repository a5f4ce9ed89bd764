"""The deploy-order guard: does this code fit this database?

Each step of the Four Step Process is a migration *and* a deploy, in an order
that matters. ``check(engine)`` compares every phased attribute's phase in code
with what the database has (its columns, and the state table) and raises
:class:`DeployOrderError` listing every problem when the code would break or
lose data:

- the new column(s) do not exist yet (the step-1 migration has not run);
- code at step 3 or 4 (reads the new place only) before the backfill finished;
- the old column is gone while code below step 4 still reads or writes it;
- code at step 4 (stops writing the old column) while that column is still
  NOT NULL without a default, so every INSERT would fail.

Call it at application start-up, or run ``fourstep status --check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, inspect

from .attribute import PhasedSpec
from .backfill import refuse_async
from .errors import FourStepError
from .phase import Phase
from .registry import all_specs, resolve
from .state import read_state

__all__ = ["CheckProblem", "DeployOrderError", "check", "problems"]


class DeployOrderError(FourStepError):
    """The code's phases and the database disagree in a way that breaks or loses data."""

    def __init__(self, found: list[CheckProblem]) -> None:
        self.problems = found
        lines = "\n".join(f"- {p.key}: {p.message}" for p in found)
        super().__init__(
            f"{len(found)} phased attribute problem(s) between this code and the database:\n"
            f"{lines}"
        )


@dataclass(frozen=True)
class CheckProblem:
    """One reason this code must not run against this database."""

    key: str
    message: str


def _problems_for(conn: Connection, spec: PhasedSpec) -> list[CheckProblem]:
    table = spec.table
    assert table is not None
    inspector = inspect(conn)
    key = spec.key
    if not inspector.has_table(table.name, schema=table.schema):
        return [CheckProblem(key, f"table {table.description} does not exist")]
    columns = {c["name"]: c for c in inspector.get_columns(table.name, schema=table.schema)}
    found: list[CheckProblem] = []
    missing_new = [c.name for c in spec.new_columns if c.name not in columns]
    if missing_new:
        found.append(CheckProblem(
            key,
            f"new column(s) {', '.join(missing_new)} do not exist: run the step-1 migration "
            f"(alembic upgrade) before deploying this code",
        ))
    old_present = [c.name for c in spec.old_columns if c.name in columns]
    if spec.phase < Phase.STOP_WRITE_OLD and len(old_present) < len(spec.old_columns):
        gone = [c.name for c in spec.old_columns if c.name not in columns]
        found.append(CheckProblem(
            key,
            f"old column(s) {', '.join(gone)} were dropped, but this code is at "
            f"{spec.phase.name} and still reads or writes them: deploy the step-4 code "
            f"(Phase.STOP_WRITE_OLD) first, or downgrade the drop",
        ))
    if spec.phase >= Phase.STOP_READ_OLD and not missing_new:
        state = read_state(conn, key)
        backfilled = state is not None and state.backfilled
        if not backfilled:
            found.append(CheckProblem(
                key,
                f"this code is at {spec.phase.name} and reads only the new column(s), but "
                f"the backfill has not finished, so rows not yet backfilled would read as "
                f"NULL: run `fourstep backfill {key}` (or the step-3 migration) first",
            ))
    if spec.phase is Phase.STOP_WRITE_OLD:
        for column in spec.old_columns:
            info = columns.get(column.name)
            if info is not None and not info["nullable"] and info.get("default") is None:
                found.append(CheckProblem(
                    key,
                    f"this code stops writing {table.description}.{column.name}, which is "
                    f"still NOT NULL without a default, so every INSERT would fail: run the "
                    f"step-1 migration (op.relax_old_not_null) first",
                ))
    return found


def problems(bind: Engine | Connection, *attributes: Any) -> list[CheckProblem]:
    """Every problem :func:`check` would raise for, without raising."""
    refuse_async(bind, "problems")
    specs = [resolve(a) for a in attributes] if attributes else all_specs()
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return [p for spec in specs for p in _problems_for(conn, spec)]
    return [p for spec in specs for p in _problems_for(bind, spec)]


def check(bind: Engine | Connection, *attributes: Any) -> None:
    """Raise :class:`DeployOrderError` if this code must not run on this database.

    Checks ``attributes`` (class attributes or registry keys), or every
    registered phased attribute when none is given. An asyncio application
    awaits :func:`fourstep_sqla.asyncio.check` instead.
    """
    refuse_async(bind, "check")
    found = problems(bind, *attributes)
    if found:
        raise DeployOrderError(found)
