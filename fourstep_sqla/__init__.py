"""fourstep_sqla: move data between columns of a live database, in four steps.

1. write both the old and the new place (``Phase.WRITE_BOTH``);
2. read the new place, falling back to the old (``Phase.READ_NEW``);
3. backfill the new place and stop reading the old (``Phase.STOP_READ_OLD``);
4. stop writing the old place, then drop it (``Phase.STOP_WRITE_OLD``).

See :func:`phased` for the model side.
"""

from __future__ import annotations

from . import sync as _sync  # noqa: F401  (registers the flush-time dual-write hooks)
from . import versioned as _versioned  # noqa: F401  (version tables follow their models)
from .attribute import PhasedAttribute, phased
from .backfill import BackfillReport, backfill
from .check import DeployOrderError, check
from .errors import FourStepError
from .phase import Phase, read_phase
from .registry import load_models
from .transform import Transform
from .verify import VerifyResult, verify

__all__ = [
    "BackfillReport",
    "DeployOrderError",
    "FourStepError",
    "Phase",
    "PhasedAttribute",
    "Transform",
    "VerifyResult",
    "backfill",
    "check",
    "load_models",
    "phased",
    "read_phase",
    "verify",
]

__version__ = "0.1.0"
