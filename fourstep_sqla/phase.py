"""The four phases, and the run-time override of the read phase.

``phase=`` on a phased attribute is a deploy-time constant: it says which step
of the Four Step Process this release of the code is at. Reads can be pinned to
another phase among 1-3 for the duration of a ``with`` block, which is how a
staged rollout reads the new place for some requests only::

    with read_phase(Phase.READ_NEW, User.full_name):
        rows = session.scalars(select(User).where(User.full_name == ("Ada", "Lovelace")))

The override applies to everything *built* inside the block: instance reads and
query construction. A statement built before the block keeps the phase it was
built with. Writes never follow the override: every release at steps 1-3
writes both places, whatever it reads. Step 4 changes the mapping (the old
column is unmapped), so it can neither be pinned nor pinned away from.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .errors import PhaseError

if TYPE_CHECKING:
    from .attribute import PhasedSpec

__all__ = ["Phase", "read_phase"]


class Phase(enum.IntEnum):
    """The step of the Four Step Process a phased attribute is at."""

    #: Step 1: write the old and the new place, read the old one.
    WRITE_BOTH = 1
    #: Step 2: write both, read the new place, falling back to the old one.
    READ_NEW = 2
    #: Step 3: write both, read the new place only (after the backfill).
    STOP_READ_OLD = 3
    #: Step 4: write and read the new place only; the old column is unmapped.
    STOP_WRITE_OLD = 4

    @property
    def writes_old(self) -> bool:
        """Whether code at this phase still writes the old place."""
        return self < Phase.STOP_WRITE_OLD

    @property
    def reads_old(self) -> bool:
        """Whether reads at this phase may look at the old place."""
        return self < Phase.STOP_READ_OLD


#: Overrides in force: ``None`` maps to the phase for every attribute.
_NO_OVERRIDES: Mapping[object, Phase] = {}
_overrides: ContextVar[Mapping[object, Phase]] = ContextVar(
    "fourstep_read_phase", default=_NO_OVERRIDES
)
_ALL = None


def _resolve_spec(attribute: Any) -> PhasedSpec:
    from .registry import resolve

    return resolve(attribute)


@contextmanager
def read_phase(phase: Phase | int, *attributes: Any) -> Iterator[None]:
    """Pin the read phase of ``attributes`` (all phased attributes when none
    is given) to ``phase`` for everything built inside the block.

    ``attributes`` are class-level phased attributes (``User.full_name``),
    registry keys (``"users.full_name"``) or the descriptors themselves.
    Only phases 1-3 can be pinned; an attribute declared at step 4 cannot be
    pinned at all, as its old column is no longer mapped.
    """
    try:
        target = Phase(phase)
    except ValueError:
        raise PhaseError(
            f"read_phase() got {phase!r}, which is not a phase; use Phase.WRITE_BOTH, "
            "Phase.READ_NEW or Phase.STOP_READ_OLD"
        ) from None
    if target is Phase.STOP_WRITE_OLD:
        raise PhaseError(
            "read_phase() cannot pin Phase.STOP_WRITE_OLD: step 4 changes the mapping "
            "(the old column is unmapped), so it is set with phase= in the model and "
            "deployed, never switched at run time"
        )
    specs = [_resolve_spec(a) for a in attributes]
    for spec in specs:
        if spec.phase is Phase.STOP_WRITE_OLD:
            raise PhaseError(
                f"read_phase() cannot pin {spec.describe()}: it is declared at "
                "Phase.STOP_WRITE_OLD, its old column is unmapped and cannot be read"
            )
    current = dict(_overrides.get())
    if specs:
        for spec in specs:
            current[spec] = target
    else:
        current = {_ALL: target}
    token = _overrides.set(current)
    try:
        yield
    finally:
        _overrides.reset(token)


def effective_read_phase(spec: PhasedSpec) -> Phase:
    """The phase reads of ``spec`` follow right now (declared or pinned)."""
    if spec.phase is Phase.STOP_WRITE_OLD:
        return spec.phase
    overrides = _overrides.get()
    if not overrides:
        return spec.phase
    pinned = overrides.get(spec)
    if pinned is None:
        pinned = overrides.get(_ALL)
    return spec.phase if pinned is None else pinned
