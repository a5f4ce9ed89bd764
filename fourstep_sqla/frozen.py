"""Transforms frozen into SQL text, and back: what a revision carries.

Migrations are frozen history: a revision must keep working after the models
move on, so it carries the SQL text of each transform rendered for the target
dialect (constants inline), over the *bare* names of the source columns, one
text per target column::

    {"first_name": "nullif(CASE WHEN (strpos(name, ' ') > 0) ...)", ...}

A Python-only transform is referenced as ``"module:function"`` instead.
:func:`transform_sql` freezes a live transform; :func:`frozen_transform`
rebuilds a :class:`~fourstep_sqla.transform.Transform` from what a revision
carries. The Alembic operations, their renderers and the sync triggers all use
these two.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, and_, literal_column
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import column as column_clause

from .attribute import PhasedSpec
from .errors import FourStepError
from .transform import Transform

__all__ = ["frozen_transform", "import_reference", "present_sql", "transform_sql"]


def transform_sql(
    spec: PhasedSpec,
    transform: Transform[Any],
    sources: tuple[Column[Any], ...],
    targets: tuple[Column[Any], ...],
    dialect: Dialect,
) -> dict[str, str] | None:
    """``{target column: SQL text}`` of ``transform`` for ``dialect`` (None without SQL)."""
    if transform.sql is None:
        return None
    arguments = [column_clause(c.name, c.type) for c in sources]
    result = transform.sql(*arguments)
    expressions = result if isinstance(result, tuple) else (result,)
    if len(expressions) != len(targets):
        raise FourStepError(
            f"{spec.describe()}: the SQL form of {transform.name!r} returned "
            f"{len(expressions)} expression(s) for {len(targets)} column(s)"
        )
    return {
        target.name: str(expr.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        for target, expr in zip(targets, expressions)
    }


def present_sql(
    transform: Transform[Any], sources: tuple[Column[Any], ...], dialect: Dialect
) -> str | None:
    """The frozen text of ``transform.present_sql`` (``""``: nothing to test; None: unknown)."""
    if transform.sql is None:
        return None
    conditions = transform.present_sql(*(column_clause(c.name, c.type) for c in sources))
    if conditions is None:
        return None
    if not conditions:
        return ""
    return str(
        and_(*conditions).compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    )


def import_reference(reference: str) -> Callable[..., Any]:
    """The callable named by ``"module:function"`` (dotted qualname allowed)."""
    module_name, _, qualname = reference.partition(":")
    if not module_name or not qualname:
        raise FourStepError(f"{reference!r} is not a 'module:function' reference")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise FourStepError(
            f"the migration references the Python transform {reference!r}, which does not "
            f"import ({type(exc).__name__}: {exc}); keep that function importable while "
            f"this migration may run"
        ) from exc
    if not callable(target):
        raise FourStepError(f"{reference!r} is not callable")
    return target  # type: ignore[no-any-return]


def frozen_transform(
    label: str,
    targets: Sequence[str],
    sql: Mapping[str, str] | None,
    python: str | None,
    present_sql: str | None = None,
) -> Transform[Any]:
    """A Transform rebuilt from what a revision carries: SQL text and/or a reference.

    ``present_sql``: the frozen :meth:`Transform.present_sql` of a built-in
    (``""``: nothing to test), which spares the backfill a second evaluation
    of the transform per row; None: the backfill tests the transform itself.
    """
    if not sql and not python:
        raise FourStepError(
            f"the {label} transform has neither SQL text nor a 'module:function' reference"
        )
    if sql is not None:
        missing = [t for t in targets if t not in sql]
        if missing:
            raise FourStepError(f"the {label} SQL has no expression for {', '.join(missing)}")
    texts = dict(sql or {})

    def from_sql(*columns: Any) -> Any:
        expressions: tuple[Any, ...] = tuple(literal_column(f"({texts[t]})") for t in targets)
        return expressions[0] if len(expressions) == 1 else expressions

    def no_python(*values: Any) -> Any:
        raise FourStepError(
            f"the {label} transform of this migration has no Python form; it runs in SQL only"
        )

    no_python.sql_only = True  # type: ignore[attr-defined]  # verify has no Python fallback
    callable_ = import_reference(python) if python else no_python
    present: Callable[..., list[Any]] | None = None
    if present_sql is not None and texts:
        conditions: list[Any] = [literal_column(f"({present_sql})")] if present_sql.strip() else []

        def present(*columns: Any) -> list[Any]:
            return list(conditions)

    return Transform(
        callable_,
        sql=from_sql if texts else None,
        name=f"{label}:{python or 'sql'}",
        present=present,
    )
