"""Phased attributes on SQLModel table classes.

SQLModel table classes are pydantic models, and the plain declarations do not
survive its metaclass: pydantic refuses ``full_name = phased(...)`` (a
"non-annotated attribute"), cannot build a schema for ``Unmapped[...]``, and
its constructor, ``model_validate`` and ``sqlmodel_update`` only know pydantic
fields. This module's :func:`phased`, :data:`Unmapped` and
:func:`unmapped_column` are written exactly like the plain ones::

    from sqlmodel import Field, SQLModel
    from fourstep_sqla import Phase, Transform
    from fourstep_sqla.sqlmodel import Unmapped, phased, unmapped_column

    class UserBase(SQLModel):          # shared with the API schemas
        full_name: str                 # the logical field

    class User(UserBase, table=True):
        id: int | None = Field(default=None, primary_key=True)
        legacy_full_name: str | None = Field(default=None, sa_column_kwargs={"name": "full_name"})
        # at step 4: legacy_full_name: Unmapped[str | None] = unmapped_column("full_name")
        display_name: str | None = None
        full_name = phased(old="legacy_full_name", new="display_name",
                           forward=Transform.identity(), backward=Transform.identity(),
                           phase=Phase.WRITE_BOTH)

The logical field stays a pydantic field of the table class (inherited from
the base model), stored in the columns instead of the instance:

- the constructor, ``model_validate``, ``sqlmodel_update`` (a dict or a model)
  and assignment write through the phased attribute;
- ``model_dump()``, ``model_dump_json()`` and a FastAPI response carry the
  value read at the phase, and the JSON schema the field (in the serialization
  schema as always present, the way pydantic shows a computed field);
- SQLModel gives every field its default when it builds an instance; the
  columns of the move are given what a write through the attribute puts there
  instead, so its defaults are never taken for writes by the flush-time sync
  (a column written directly afterwards is, as with plain SQLAlchemy). When
  both an old and a new column are given, and no logical value, they must
  agree (:class:`~fourstep_sqla.errors.InconsistentWriteError` otherwise);
- at step 4 the old column is a column of the table that is neither a pydantic
  field nor mapped, nullable when its annotation says ``| None``.

How: SQLModel's metaclass sets what it finds as ``Relationship(sa_relationship=...)``
on the table class as it is, after pydantic has collected the fields and
before SQLAlchemy maps the class, the one moment a SQLAlchemy attribute can
take the place of a field. :func:`phased` and :func:`unmapped_column` return
such a declaration around the plain attribute, so pydantic never sees them and
SQLAlchemy sees exactly what the plain declarations give it. Once the class is
mapped, the table class's pydantic side is fitted: the field's assignment goes
to the attribute, its serialization reads the attribute, and validation and
the constructor complete the columns of the move.

Limits: the logical field must be declared in a base model (its type and
validation come from there); its type must be one SQLModel can map to a
column, as SQLModel builds one for every field of a table class before this
one is replaced (for a tuple of several new columns, give the base field
``sa_type=`` of any type, e.g. ``Field(default=None, sa_type=JSON)``); an
``Unmapped[...]`` annotation needs ``= unmapped_column(...)`` on its right.
Install with ``pip install fourstep-sqla[sqlmodel]``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import String, event
from sqlalchemy.orm import Mapper
from sqlalchemy.orm import Unmapped as Unmapped  # the plain one serves, see unmapped_column
from sqlalchemy.orm import unmapped_column as _sa_unmapped_column
from sqlalchemy.orm.properties import UnmappedColumn
from sqlalchemy.types import NullType

from .attribute import PhasedAttribute, PhasedSpec, is_sql
from .attribute import phased as _phased
from .errors import DeclarationError, InconsistentWriteError
from .phase import Phase
from .transform import Transform

try:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import core_schema
    from sqlmodel import SQLModel
    from sqlmodel.main import RelationshipInfo
    from sqlmodel.sql.sqltypes import AutoString
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fourstep_sqla.sqlmodel needs SQLModel: pip install 'fourstep-sqla[sqlmodel]'"
    ) from exc

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo
    from sqlalchemy.orm import RelationshipProperty

__all__ = ["Unmapped", "phased", "unmapped_column"]

T = TypeVar("T")


class _Declaration(RelationshipInfo):
    """A SQLAlchemy attribute that SQLModel's metaclass sets on the table class as is.

    SQLModel keeps ``Relationship(...)`` values away from pydantic and sets
    their ``sa_relationship`` on the class just before SQLAlchemy maps it.
    """

    def __init__(
        self, attribute: PhasedAttribute[Any] | UnmappedColumn[Any], typed: bool = True
    ) -> None:
        # SQLModel sets whatever it is given; it is typed for relationship() only
        super().__init__(sa_relationship=cast("RelationshipProperty[Any]", attribute))
        self.attribute = attribute
        #: whether an unmapped column was given its type (else the annotation gives it)
        self.typed = typed

    def __repr__(self) -> str:
        return f"fourstep_sqla.sqlmodel declaration of {self.attribute!r}"


def phased(
    *,
    old: str | Sequence[str],
    new: str | Sequence[str],
    forward: Transform[T],
    backward: Transform[Any],
    phase: Phase | int,
    key: str | None = None,
    value_type: Callable[..., T] | None = None,
) -> PhasedAttribute[T]:
    """:func:`fourstep_sqla.phased` for a SQLModel table class.

    Same arguments and the same attribute; the logical field of the same name
    must be declared (annotated) in a base model of the table class. Type
    checkers see the attribute itself, which is what the class holds once
    SQLModel's metaclass has run.
    """
    attribute = _phased(
        old=old, new=new, forward=forward, backward=backward, phase=phase, key=key,
        value_type=value_type,
    )
    return cast("PhasedAttribute[T]", _Declaration(attribute))


def unmapped_column(*args: Any, **kwargs: Any) -> UnmappedColumn[Any]:
    """:func:`sqlalchemy.orm.unmapped_column` for a SQLModel table class.

    Same arguments; declare the step-4 old column with it and
    :data:`Unmapped`: ``legacy: Unmapped[str | None] = unmapped_column("name")``.
    The column stays in the table (nullable as the annotation says) and is
    neither a pydantic field nor mapped. Without a type, ``str`` gives it
    SQLModel's ``AutoString``, the type its field had in the releases before.
    """
    column = _sa_unmapped_column(*args, **kwargs)
    typed = not isinstance(column.column.type, NullType)
    return cast("UnmappedColumn[Any]", _Declaration(column, typed=typed))


# -- installing the declarations ----------------------------------------------
#: phased attributes a SQLModel table class declared, between two mapper events
_declared: weakref.WeakKeyDictionary[type, tuple[PhasedAttribute[Any], ...]] = (
    weakref.WeakKeyDictionary()
)


@event.listens_for(Mapper, "instrument_class")
def _take_declarations(mapper: Mapper[Any], cls: type) -> None:
    """Name the attributes SQLModel set from our declarations, before they are bound."""
    stray = [name for name, value in vars(cls).items() if isinstance(value, _Declaration)]
    if stray:
        raise DeclarationError(
            f"{cls.__name__}.{stray[0]} is declared with fourstep_sqla.sqlmodel, which is for "
            f"SQLModel table classes (class {cls.__name__}(..., table=True)); on a "
            f"SQLAlchemy declarative model use fourstep_sqla.phased and "
            f"sqlalchemy.orm.unmapped_column"
        )
    for base in cls.__mro__[1:]:
        inherited = base.__dict__.get("__sqlmodel_relationships__") or {}
        for name, declaration in inherited.items():
            if isinstance(declaration, _Declaration):
                # SQLModel keeps it on that class only: it would silently be missing here
                raise DeclarationError(
                    f"{base.__name__}.{name} is declared with fourstep_sqla.sqlmodel on a "
                    f"model that is not a table; declare it on the table class "
                    f"{cls.__name__} (the logical field {name}: <type> stays in "
                    f"{base.__name__})"
                )
    relationships: dict[str, Any] | None = cls.__dict__.get("__sqlmodel_relationships__")
    if not relationships:
        return
    ours = {n: d for n, d in relationships.items() if isinstance(d, _Declaration)}
    if not ours:
        return
    for name in ours:  # fields or plain attributes from now on, not relationships
        del relationships[name]
    attributes: list[PhasedAttribute[Any]] = []
    for name, declaration in ours.items():
        if isinstance(declaration.attribute, PhasedAttribute):
            declaration.attribute.__set_name__(cls, name)
            attributes.append(declaration.attribute)
    for name, declaration in ours.items():
        if isinstance(declaration.attribute, UnmappedColumn):
            column = declaration.attribute.column
            if not declaration.typed and type(column.type) is String and not column.type.length:
                # SQLAlchemy types `str` as String(); SQLModel gave the field AutoString,
                # which the database and the drop's restore (VARCHAR(255) on MySQL) expect
                column.type = AutoString()
            for attribute in attributes:
                if name in attribute.spec.old:
                    # the plain declaration is found in the class body by __set_name__;
                    # SQLModel sets this one on the class only after the body has run
                    attribute.spec.retire(name, declaration.attribute.column)
    if attributes:
        _declared[cls] = tuple(attributes)


@event.listens_for(Mapper, "after_mapper_constructed")
def _fit_pydantic(mapper: Mapper[Any], cls: type) -> None:
    """Make the table class's pydantic side read and write through its phased attributes.

    Runs after :mod:`fourstep_sqla.attribute` has bound the attributes to the
    mapper (its listener was registered first), so bad declarations have
    already been reported there.
    """
    attributes = _declared.pop(cls, None)
    if attributes is None:
        return
    model = cast("type[SQLModel]", cls)
    fields = model.model_fields
    order = list(fields)
    for attribute in attributes:
        spec = attribute.spec
        name = _name(spec)
        if name not in fields:
            raise DeclarationError(
                f"{spec.describe()} has no pydantic field {name!r}: declare it in the base "
                f"model that {model.__name__} and the API schemas share "
                f"(class {model.__name__}Base(SQLModel): {name}: <type>), and keep only "
                f"{name} = phased(...) on the table class"
            )
        early = [c for c in _fields_of(spec, fields) if order.index(c) < order.index(name)]
        if early:
            raise DeclarationError(
                f"{spec.describe()}: the field {name!r} must come before the columns of the "
                f"move among {model.__name__}'s fields (SQLModel writes them in that order), "
                f"but {', '.join(early)} come first: declare {name} in a base model of "
                f"{model.__name__} and the columns on {model.__name__} itself"
            )
        model.__pydantic_setattr_handlers__[name] = _write_through(attribute)
    specs = tuple(a.spec for a in attributes)
    type.__setattr__(model, "__get_pydantic_core_schema__", _schema_hook(specs))
    # an annotation not resolvable yet leaves the class for pydantic to complete at first
    # use, as it would without us; the hook is in place by then
    model.model_rebuild(force=True, raise_errors=False)
    event.listen(model, "init", _constructor_completer(model, specs))


def _name(spec: PhasedSpec) -> str:
    assert spec.name is not None  # named by _take_declarations
    return spec.name


def _written_columns(spec: PhasedSpec) -> tuple[str, ...]:
    """Attribute names of the mapped columns a write through ``spec`` writes."""
    return spec.columns if spec.phase.writes_old else spec.new


def _fields_of(spec: PhasedSpec, fields: Collection[str]) -> list[str]:
    return [c for c in _written_columns(spec) if c in fields]


def _write_through(attribute: PhasedAttribute[Any]) -> Callable[[Any, str, Any], None]:
    """Pydantic's assignment handler for the logical field: the attribute writes it.

    Pydantic looks handlers up by field name in ``__pydantic_setattr_handlers__``
    before anything else; its own would store the value in the instance.
    """

    def write(model: Any, name: str, value: Any) -> None:
        attribute.__set__(model, value)
        model.__dict__.pop(name, None)  # model_validate put it there; the columns hold it
        model.__pydantic_fields_set__.add(name)

    return write


# -- completing what SQLModel writes ------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # values without a usable __eq__
        return False


def _complete(
    spec: PhasedSpec,
    data: Mapping[str, Any],
    given: Collection[str],
    default: Callable[[str], Any],
    fields: Collection[str],
) -> dict[str, Any]:
    """The logical field and the columns of ``spec`` not given, as written through it.

    SQLModel writes the logical field first (it comes from a base model), then
    every column, given or defaulted. Giving the columns that were not given
    what the write through the attribute put there makes them "not written"
    for the flush-time sync, exactly as if SQLModel had left them alone; a
    column given is written after, and wins, as a direct write does.
    """
    name = _name(spec)
    columns = _fields_of(spec, fields)
    old = [c for c in spec.old if c in columns]
    new = [c for c in spec.new if c in columns]

    def values(names: Sequence[str]) -> tuple[Any, ...]:
        return tuple(data[c] if c in data else default(c) for c in names)

    if name in given:
        value = data[name]
    elif any(c in given for c in columns):
        old_given = any(c in given for c in old)
        if any(c in given for c in new):
            new_values = values(spec.new)
            if old_given:
                _check_agreement(spec, values(spec.old), new_values)
            value = spec.shape(new_values)
        else:
            value = spec.shape(spec.forward_values(values(spec.old)))
    elif name in data:
        value = data[name]  # its default, filled in by validation
    else:
        value = default(name)
    if is_sql(value):
        return {}  # the attribute writes SQL expressions itself
    new_values = spec.unshape(value)
    completed: dict[str, Any] = {name: value}
    completed.update((c, v) for c, v in zip(spec.new, new_values) if c in new)
    if old:
        old_values = spec.backward_values(new_values)
        completed.update((c, v) for c, v in zip(spec.old, old_values) if c in old)
    return {k: v for k, v in completed.items() if k not in given or k == name}


def _check_agreement(spec: PhasedSpec, old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
    if _same(spec.forward_values(old), new) or _same(spec.backward_values(new), old):
        return
    raise InconsistentWriteError(
        f"{spec.describe()}: {spec.describe().split('.')[0]} was given both its old column(s) "
        f"{', '.join(spec.old)} = {old!r} and its new column(s) {', '.join(spec.new)} = "
        f"{new!r}, and they disagree (forward(old) = {spec.forward_values(old)!r}). Give one "
        f"side, or {_name(spec)} itself."
    )


def _field_default(fields: Mapping[str, FieldInfo]) -> Callable[[str], Any]:
    def default(name: str) -> Any:
        field = fields.get(name)
        if field is None or field.is_required():
            return None
        return field.get_default(call_default_factory=True)

    return default


def _constructor_completer(
    model: type[SQLModel], specs: tuple[PhasedSpec, ...]
) -> Callable[[Any, Any, MutableMapping[str, Any]], None]:
    """An ``init`` listener completing the constructor's keyword arguments.

    SQLAlchemy calls it before ``__init__``, whose keyword arguments it may
    change in place. A value equal to what SQLModel writes anyway (the field's
    default) is left out, so the fields set stay those the caller gave.
    """

    def complete(target: Any, args: Any, kwargs: MutableMapping[str, Any]) -> None:
        fields = model.model_fields
        default = _field_default(fields)
        given = set(kwargs)
        for spec in specs:
            completed = _complete(spec, kwargs, given, default, fields)
            for field, value in completed.items():
                if field in given or not _same(value, default(field)):
                    kwargs[field] = value

    return complete


def _validated_completer(specs: tuple[PhasedSpec, ...]) -> Callable[[Any], Any]:
    """A validator after pydantic's fields: completes what ``model_validate`` writes.

    It receives the validated fields (defaults included) and the names given,
    before SQLModel writes them to the instance in field order.
    """

    def complete(validated: Any) -> Any:
        data, _extra, given = validated
        for spec in specs:
            data.update(_complete(spec, data, given, lambda _name: None, data))
        return validated

    return complete


# -- the table class's pydantic schema ----------------------------------------
_MARK = "fourstep_sqla.sqlmodel"

_VALIDATOR_FUNCTIONS = ("function-before", "function-after", "function-wrap")
_Holder = (
    core_schema.ModelSchema
    | core_schema.BeforeValidatorFunctionSchema
    | core_schema.AfterValidatorFunctionSchema
    | core_schema.WrapValidatorFunctionSchema
)


def _schema_hook(
    specs: tuple[PhasedSpec, ...],
) -> classmethod[Any, [Any, GetCoreSchemaHandler], core_schema.CoreSchema]:
    """A ``__get_pydantic_core_schema__`` fitting the table class's schema to ``specs``.

    Pydantic calls it whenever it builds a schema that holds the class (the
    class's own, a FastAPI response, a ``TypeAdapter``), sometimes with the
    schema it fitted before: the mark makes the second time a no-op.
    """

    def __get_pydantic_core_schema__(
        cls: type[SQLModel], source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        holder, fields = _model_fields(cls, handler.resolve_ref_schema(schema))
        metadata = fields.setdefault("metadata", {})
        if metadata.get(_MARK):
            return schema
        metadata[_MARK] = True
        computed = list(fields.get("computed_fields", []))
        for spec in specs:
            name = _name(spec)
            field = fields["fields"][name]
            # serialized from the attribute, the way pydantic serializes a property
            field["serialization_exclude"] = True
            returned = field["schema"]
            if returned["type"] == "default":
                returned = returned["schema"]
            computed.append(core_schema.computed_field(
                name, returned, alias=field.get("serialization_alias"),
                metadata=field.get("metadata"),  # title, description, examples
            ))
        fields["computed_fields"] = computed
        holder["schema"] = core_schema.no_info_after_validator_function(
            _validated_completer(specs), fields
        )
        return schema

    return classmethod(__get_pydantic_core_schema__)


def _model_fields(
    cls: type[SQLModel], model: core_schema.CoreSchema
) -> tuple[_Holder, core_schema.ModelFieldsSchema]:
    """The model-fields schema in ``cls``'s model schema, and the schema holding it.

    Model validators of the class (and the completing validator, once added)
    wrap the fields; the completion goes right around the fields themselves.
    """
    if model["type"] != "model":
        raise DeclarationError(
            f"{cls.__name__}: pydantic built a {model['type']!r} schema for a SQLModel table "
            f"class, where fourstep_sqla.sqlmodel expects a model schema"
        )
    # each cast follows a test of the schema's "type", the tag of pydantic-core's union
    holder: _Holder = cast("core_schema.ModelSchema", model)
    inner = holder["schema"]
    while inner["type"] in _VALIDATOR_FUNCTIONS:
        holder = cast("_Holder", inner)
        inner = holder["schema"]
    if inner["type"] != "model-fields":
        raise DeclarationError(
            f"{cls.__name__}: its pydantic model schema holds {inner['type']!r} where "
            f"fourstep_sqla.sqlmodel expects the model's fields"
        )
    return holder, cast("core_schema.ModelFieldsSchema", inner)
