"""Payloads typed by people (the HTTP ingress, ``actor-system send``), validated strictly.

pydantic ignores keys a model does not know by default, so a misspelt field (``pay_within``
for ``pay_within_s``) would be dropped and the message sent with the field's default. Here
such keys are rejected, with their names and the known ones, before pydantic runs. Nested
models are checked too where the field's annotation says which model a value is: a model,
an optional model, or a list, set, var-length tuple or dict of one. Values under a union of
several models, a nested collection (``list[list[M]]``) or an ``AliasPath`` are left to
pydantic's own ``extra`` setting.

A model that sets ``extra`` itself gets what it asked for: ``"allow"`` keeps unknown keys,
``"ignore"`` drops them, ``"forbid"`` rejects them (named, as an unset ``extra`` is here).
Only pydantic's unset default, a silent ``"ignore"``, is made strict.

Messages decoded from a mailbox are not checked here: they were sent by actors, possibly of
another deploy, and stay lenient so that during a rolling deploy a field added by the new
code does not dead-letter the messages the old code still reads.
"""

from __future__ import annotations

import types
import typing
from collections import deque
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, AliasPath, BaseModel, RootModel, ValidationError

from actor_system.actor import message_name
from actor_system.errors import InvalidSend

if typing.TYPE_CHECKING:
    from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)

# Problems named in an error message; ``details`` keeps them all.
_SHOWN = 10


class InvalidPayload(InvalidSend):
    """A payload does not fit its message model. ``details`` lists each problem as pydantic
    does (``type``, ``loc``, ``msg``, ``input``), so that an HTTP answer can carry them."""

    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = details


def parse_payload(model: type[M], payload: object, *, strict: bool = True) -> M:
    """Validate ``payload`` (a decoded JSON object) into ``model``.

    With ``strict``, keys the model does not know are rejected (see the module docstring);
    without it the model's own ``extra`` setting applies. Raises InvalidPayload, an
    InvalidSend, with every problem in one line.
    """
    name = message_name(model)
    if not isinstance(payload, dict):
        got = _json_type(payload)
        problem = f"must be a JSON object, got {got}"
        msg = f"Input should be a JSON object, got {got}"
        detail = {"type": "model_type", "loc": [], "msg": msg, "input": payload}
        raise InvalidPayload(f"invalid {name} payload: {problem}", [detail])
    if strict:
        unknown = unknown_fields(model, payload)
        if unknown:
            raise InvalidPayload(_describe(name, model, unknown), [u.detail() for u in unknown])
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        errors = [dict(err) for err in e.errors(include_url=False, include_context=False)]
        raise InvalidPayload(f"invalid {name} payload: {_one_line(errors)}", errors) from None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A key that ``owner`` (the message model or one nested in it) does not know."""

    loc: tuple[str | int, ...]
    owner: type[BaseModel]
    value: Any

    @property
    def path(self) -> str:
        return _dotted(self.loc)

    def detail(self) -> dict[str, Any]:
        # pydantic's own error type for this, so clients that read pydantic errors cope.
        known = ", ".join(_schema(self.owner).names) or "none"
        return {
            "type": "extra_forbidden",
            "loc": list(self.loc),
            "msg": f"Unknown field (known: {known})",
            "input": self.value,
        }


def unknown_fields(model: type[BaseModel], payload: Mapping[Any, Any]) -> list[Unknown]:
    """The keys of ``payload``, nested ones included, that their model would not read."""
    found: list[Unknown] = []
    # Breadth first over the data, not the models: a self-referencing model ends where the
    # data ends, and no depth can exhaust the interpreter's stack.
    todo: deque[tuple[type[BaseModel], Mapping[Any, Any], tuple[str | int, ...]]] = deque(
        [(model, payload, ())]
    )
    while todo:
        owner, data, loc = todo.popleft()
        schema = _schema(owner)
        for key, value in data.items():
            if key not in schema.keys:
                if schema.closed:
                    found.append(Unknown((*loc, key), owner, value))
                continue
            shape = schema.keys[key]
            if shape is not None:
                todo.extend(shape.children(value, (*loc, key)))
    return found


@dataclass(frozen=True, slots=True)
class _Shape:
    """How a field's value holds a nested model: itself, as items, or as mapping values."""

    kind: Literal["one", "items", "values"]
    model: type[BaseModel]

    def children(
        self, value: Any, loc: tuple[str | int, ...]
    ) -> list[tuple[type[BaseModel], Mapping[Any, Any], tuple[str | int, ...]]]:
        # A value of the wrong kind is left for pydantic to report.
        if self.kind == "one":
            return [(self.model, value, loc)] if isinstance(value, dict) else []
        pairs: list[tuple[str | int, Any]]
        if self.kind == "items" and isinstance(value, list):
            pairs = list(enumerate(value))
        elif self.kind == "values" and isinstance(value, dict):
            pairs = list(value.items())
        else:
            return []
        return [(self.model, v, (*loc, k)) for k, v in pairs if isinstance(v, dict)]


@dataclass(frozen=True, slots=True)
class _Schema:
    """What one model reads: each accepted key with how to descend into its value."""

    closed: bool  # an unknown key at this level is an error
    keys: dict[str, _Shape | None]
    names: tuple[str, ...]  # the accepted keys in field order, for messages


_SCHEMAS: dict[type[BaseModel], _Schema] = {}


def _schema(model: type[BaseModel]) -> _Schema:
    """The schema of ``model``, remembered once its annotations are resolved (a model with
    forward references is complete only after its first validation or model_rebuild)."""
    schema = _SCHEMAS.get(model)
    if schema is None:
        schema = _read_schema(model)
        if getattr(model, "__pydantic_complete__", False):
            _SCHEMAS[model] = schema
    return schema


def _read_schema(model: type[BaseModel]) -> _Schema:
    if issubclass(model, RootModel):  # its input is the value itself, not an object of fields
        return _Schema(closed=False, keys={}, names=())
    config = model.model_config
    by_name = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    by_alias = config.get("validate_by_alias", True) is not False
    keys: dict[str, _Shape | None] = {}
    for name, field in model.model_fields.items():
        shape = _shape(field.annotation)
        for key, direct in _field_keys(name, field, by_name=by_name, by_alias=by_alias):
            keys.setdefault(key, shape if direct else None)
    # "extra" unset is pydantic's silent "ignore": the case this module exists for.
    closed = config.get("extra") in (None, "forbid")
    return _Schema(closed=closed, keys=keys, names=tuple(keys))


def _field_keys(
    name: str, field: FieldInfo, *, by_name: bool, by_alias: bool
) -> list[tuple[str, bool]]:
    """The top-level keys pydantic reads for a field, each with whether its value is the
    field's value (an AliasPath's first key holds something the path digs into)."""
    alias = field.validation_alias if field.validation_alias is not None else field.alias
    if alias is None or not by_alias:
        return [(name, True)]
    keys: list[tuple[str, bool]] = []
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    for choice in choices:
        if isinstance(choice, AliasPath):
            first = choice.path[0] if choice.path else None
            if isinstance(first, str):
                keys.append((first, len(choice.path) == 1))
        else:
            keys.append((choice, True))
    if by_name:
        keys.append((name, True))
    return keys


def _shape(annotation: Any) -> _Shape | None:
    """Where a nested model sits in a field's annotation, if that is unambiguous."""
    annotation = _strip(annotation)
    model = _model(annotation)
    if model is not None:
        return _Shape("one", model)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if not isinstance(origin, type):
        return None
    if issubclass(origin, Mapping) and len(args) == 2:
        inner = _model(_strip(args[1]))
        return _Shape("values", inner) if inner else None
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        inner = _model(_strip(args[0])) if variadic else None
        return _Shape("items", inner) if inner else None
    if issubclass(origin, Sequence | AbstractSet) and len(args) == 1:
        inner = _model(_strip(args[0]))
        return _Shape("items", inner) if inner else None
    return None


def _strip(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X, and ``X | None`` -> X; any other union stays as it is."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Union or origin is types.UnionType:
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _describe(name: str, model: type[BaseModel], unknown: list[Unknown]) -> str:
    """``unknown field 'pay_within' for message PayWithin; known: pay_within_s``, and for a
    nested model ``...; known in Line: qty, sku``."""
    paths = ", ".join(repr(u.path) for u in unknown[:_SHOWN])
    if len(unknown) > _SHOWN:
        paths += f" and {len(unknown) - _SHOWN} more"
    noun = "field" if len(unknown) == 1 else "fields"
    parts = [f"unknown {noun} {paths} for message {name}"]
    for owner in dict.fromkeys(u.owner for u in unknown):
        known = ", ".join(_schema(owner).names) or "none"
        where = "known" if owner is model else f"known in {owner.__name__}"
        parts.append(f"{where}: {known}")
    return "; ".join(parts)


def _one_line(errors: list[dict[str, Any]]) -> str:
    shown = [f"{_dotted(e['loc']) or '(payload)'}: {e['msg']}" for e in errors[:_SHOWN]]
    more = f"; and {len(errors) - _SHOWN} more" if len(errors) > _SHOWN else ""
    return "; ".join(shown) + more


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
