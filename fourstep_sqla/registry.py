"""The registry of phased attributes.

Every phased attribute registers itself when its model is mapped, under a key
that defaults to ``"<table>.<attribute>"`` (``"<schema>.<table>.<attribute>"``
for a schema-qualified table). The command line and the Alembic plugin find
them here, after importing a models module::

    from fourstep_sqla.registry import load_models
    for spec in load_models("myapp.models"):
        print(spec.key, spec.phase.name, spec.old, "->", spec.new)
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from .errors import FourStepWarning, RegistryError

if TYPE_CHECKING:
    from .attribute import PhasedSpec

__all__ = ["all_specs", "copies_of", "get", "load_models", "register", "resolve"]

_registry: dict[str, PhasedSpec] = {}


def register(spec: PhasedSpec) -> None:
    """Add ``spec`` under its key.

    A key claimed by another class replaces the older entry with a warning
    (a re-imported module, or two models of one table in different tests);
    give one of them ``key=`` to keep both.
    """
    key = spec.key
    previous = _registry.get(key)
    if previous is not None and previous is not spec and previous.owner is not None:
        old_owner = previous.owner
        new_owner = spec.owner
        same = (
            old_owner is not None
            and new_owner is not None
            and old_owner.__module__ == new_owner.__module__
            and old_owner.__qualname__ == new_owner.__qualname__
        )
        if not same:
            warnings.warn(
                f"phased attribute key {key!r} moves from {previous.describe()} "
                f"({previous.owner.__module__}) to {spec.describe()}; give one of them "
                f"phased(key=...) to keep both",
                FourStepWarning,
                stacklevel=2,
            )
    _registry[key] = spec


def all_specs() -> list[PhasedSpec]:
    """Every registered phased attribute whose model still exists, by key."""
    return [spec for key, spec in sorted(_registry.items()) if spec.owner is not None]


def copies_of(spec: PhasedSpec) -> list[PhasedSpec]:
    """The registered phased attributes whose tables hold copies of ``spec``'s rows
    (a version table's, see :mod:`fourstep_sqla.versioned`), by key."""
    return [s for s in all_specs() if s.copy_of is spec]


def get(key: str) -> PhasedSpec:
    """The phased attribute registered under ``key``."""
    spec = _registry.get(key)
    if spec is None or spec.owner is None:
        known = ", ".join(s.key for s in all_specs()) or "none registered"
        raise RegistryError(
            f"no phased attribute is registered under {key!r} (known: {known}); "
            f"import the models module first, or check the key (\"<table>.<attribute>\")"
        )
    return spec


def resolve(attribute: Any) -> PhasedSpec:
    """A spec from a key, a class-level attribute (``User.full_name``) or a descriptor."""
    from .attribute import PhasedAttribute, PhasedSpec

    if isinstance(attribute, PhasedSpec):
        return attribute
    if isinstance(attribute, str):
        return get(attribute)
    if isinstance(attribute, PhasedAttribute):
        return attribute.spec
    descriptor = getattr(attribute, "descriptor", None)
    if isinstance(descriptor, PhasedAttribute):
        return descriptor.spec
    raise RegistryError(
        f"{attribute!r} is not a phased attribute; pass e.g. User.full_name or a registry "
        f"key such as \"users.full_name\""
    )


def load_models(module: str) -> list[PhasedSpec]:
    """Import ``module`` (dotted name) and list the phased attributes it defines.

    An attribute belongs to the module when its model was defined in it (or a
    submodule) or is importable from it; one whose table holds copies of another's
    rows (a version table's) belongs where that other one does.
    """
    try:
        imported = importlib.import_module(module)
    except Exception as exc:
        raise RegistryError(
            f"cannot import models module {module!r}: {type(exc).__name__}: {exc}"
        ) from exc
    namespace = {id(v) for v in vars(imported).values() if isinstance(v, type)}
    found = []
    for spec in all_specs():
        owner = (spec.copy_of or spec).owner
        if owner is None:
            continue
        if (
            owner.__module__ == module
            or owner.__module__.startswith(module + ".")
            or id(owner) in namespace
        ):
            found.append(spec)
    return found
