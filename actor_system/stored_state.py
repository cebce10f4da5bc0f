"""The stored form of an actor's state: versioned, migrated on read, unknown fields kept.

A stored state is a msgpack map of the model's fields (``model_dump(mode="json")``) plus
the reserved key ``"_v"``, the version of the state model that wrote it (pydantic fields
cannot start with ``_``, so it never clashes). Bytes without ``"_v"`` (all state stored
before versions existed) are version 1. The reserved key ``"_r"`` holds the actor's
reminders (actor_system.reminders), when it has any: committed with the state, in the same
write, wherever the state lives.

Reading runs the actor type's migrations from the stored version up to the current one,
then validates. Stored fields the current model does not declare are handed back as
``Loaded.unknown`` and written again by ``encode``, as protobuf keeps unknown fields: a
deploy that renames a field and is rolled back finds the old value. Only a migration (which
may delete keys) drops a field. Unknown fields are kept at the top level of the state only.

A stored state this deploy cannot read raises ``StateInvalid`` (``StateTooNew`` when a newer
deploy wrote it), which keeps the raw bytes: the caller must not overwrite that state.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import msgpack
from pydantic import AliasChoices, AliasPath, BaseModel, ValidationError

from actor_system.errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from actor_system.actor import ActorType

__all__ = [
    "REMINDERS_KEY",
    "VERSION_KEY",
    "Loaded",
    "StateInvalid",
    "StateTooNew",
    "decode",
    "encode",
    "raw",
    "reminders_of",
    "with_reminders",
]

S = TypeVar("S", bound=BaseModel)

VERSION_KEY = "_v"
REMINDERS_KEY = "_r"
# Stands for a stored object that could not be read (``unreadable``): [reason, too new].
UNREADABLE_KEY = "_x"
_INPUT_CHARS = 60  # how much of a rejected input an error line quotes


class StateInvalid(DecodeError):
    """A stored state this deploy cannot turn into its state model: it fails validation, or
    a migration failed or is missing. ``raw`` keeps the stored bytes, ``actor`` names the
    actor type, ``version`` is the stored version (None if unreadable) and ``errors`` holds
    pydantic's errors when validation failed."""

    def __init__(
        self,
        message: str,
        raw: bytes,
        *,
        actor: str,
        version: int | None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, raw)
        self.actor = actor
        self.version = version
        self.errors = errors or []


class StateTooNew(StateInvalid):
    """The stored state was written by a newer deploy (a higher version than this one
    knows): during a rolling deploy its messages may rather wait than be dead-lettered."""


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    """A decoded state: the model instance, the stored fields the model does not declare
    (give them back to ``encode``), and the version it was stored at."""

    state: S
    unknown: dict[str, Any]
    version: int
    reminders: dict[str, Any] = dataclasses.field(default_factory=dict)  # the stored "_r", as it is


@dataclass(frozen=True, slots=True)
class _Shape:
    """Which stored keys a state model reads, computed once per model class."""

    known: frozenset[str]  # field names, every alias that validates a field, computed fields
    derived: frozenset[str]  # computed fields: dumped, never read back, so not unknown
    rename: dict[str, str]  # stored key -> the key validation accepts (aliased fields)
    allow_extra: bool  # extra="allow": the model keeps undeclared fields itself
    plain: bool  # no renames, no computed fields: a mapping of known keys passes as is


_shapes: dict[type[BaseModel], _Shape] = {}
_local = threading.local()


def raw(data: bytes | None) -> dict[str, Any] | None:
    """The stored mapping as it is, ``"_v"`` included (None: no stored state); for
    operators, so it works whether or not the state validates. Raises DecodeError."""
    return None if data is None else _unpack(data, None)


def decode(actor: ActorType[S], data: bytes | None) -> Loaded[S]:
    """Decode stored state bytes (None: the model's defaults), migrating them from their
    stored version to ``actor.version``. Raises DecodeError if the bytes are not a msgpack
    map, StateTooNew if a newer deploy wrote them, StateInvalid otherwise."""
    model = actor.state_type
    if data is None:
        return Loaded(model(), {}, actor.version)
    mapping = _unpack(data, actor.name)
    failed = mapping.get(UNREADABLE_KEY)
    if isinstance(failed, list) and len(failed) == 2:
        error = StateTooNew if failed[1] else StateInvalid
        raise error(str(failed[0]), data, actor=actor.name, version=None)
    version = _stored_version(actor, mapping.pop(VERSION_KEY, 1), data)
    kept = mapping.pop(REMINDERS_KEY, None)
    reminders = kept if isinstance(kept, dict) else {}
    if version != actor.version:
        mapping = _migrate(actor, mapping, version, data)
    fields, unknown = _split(_shape(model), mapping)
    try:
        state = model.model_validate(fields)
    except ValidationError as e:
        raise _invalid(actor, version, data, e) from None  # the message holds its errors
    except Exception as e:
        raise _invalid(actor, version, data, e) from e
    return Loaded(state, unknown, version, reminders)


def unreadable(reason: str, *, too_new: bool) -> bytes:
    """Stored state bytes standing for a stored object that could not be read at all (an S3
    object that is corrupt, or in a newer format): ``decode`` raises StateInvalid with
    ``reason`` for them (StateTooNew with ``too_new``), so the turn dead-letters its messages
    or lets them wait, and never runs a handler on default state. They hold no reminders,
    and nothing writes them back."""
    return _pack({UNREADABLE_KEY: [reason, too_new]})


def reminders_of(data: bytes | None) -> dict[str, Any]:
    """The stored reminders of state bytes, without validating the state (for readers that
    need no actor type: ``system.reminders``, the CLI). Raises DecodeError."""
    if data is None:
        return {}
    kept = _unpack(data, None).get(REMINDERS_KEY)
    return kept if isinstance(kept, dict) else {}


def with_reminders(data: bytes, reminders: Mapping[str, Any]) -> bytes:
    """Stored state bytes with their reminders replaced (none: the key goes), the rest as it
    is: a turn whose handler failed still moves its reminders on."""
    mapping = _unpack(data, None)
    if reminders:
        mapping[REMINDERS_KEY] = dict(reminders)
    else:
        mapping.pop(REMINDERS_KEY, None)
    return _pack(mapping)


def _invalid(actor: ActorType[Any], version: int, data: bytes, e: Exception) -> StateInvalid:
    # A validator may raise something other than ValidationError (a TypeError, a KeyError):
    # that too is a stored state this deploy cannot read, not a failure of the turn.
    if isinstance(e, ValidationError):
        errors = cast("list[dict[str, Any]]", e.errors(include_url=False))
        why = _one_line(errors)
    else:
        errors, why = [], f"{type(e).__name__}: {e}".replace("\n", " ")
    return StateInvalid(
        f"stored state of actor type {actor.name!r} (version {version}) does not validate "
        f"against {actor.state_type.__name__}: {why}",
        data,
        actor=actor.name,
        version=version,
        errors=errors,
    )


def encode(
    actor: ActorType[Any],
    state: BaseModel,
    unknown: Mapping[str, Any],
    reminders: Mapping[str, Any] | None = None,
) -> bytes:
    """The stored form of ``state``: its fields, the ``unknown`` ones of ``decode`` (a
    current field of the same name wins), ``"_v"`` and the actor's ``reminders`` (stored
    form) if it has any. Raises TypeError when the state cannot be stored, e.g. an int
    beyond 64 bits (the cause is chained)."""
    try:
        fields = state.model_dump(mode="json")
        if unknown:
            for key, value in unknown.items():
                fields.setdefault(key, value)
        fields[VERSION_KEY] = actor.version
        if reminders:
            fields[REMINDERS_KEY] = dict(reminders)
        return _pack(fields)
    except (OverflowError, TypeError, ValueError) as e:
        raise TypeError(
            f"the state {type(state).__name__} of actor type {actor.name!r} cannot be "
            f"stored: {type(e).__name__}: {e}"
        ) from e


def _pack(mapping: dict[str, Any]) -> bytes:
    # A Packer per thread: packb builds one per call, which costs more than the rest of
    # encode's own work (the backlog path encodes once per message).
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        return cast(bytes, packer.pack(mapping))
    except BaseException:
        packer.reset()  # leave nothing of a failed (or interrupted) pack in its buffer
        raise


def _unpack(data: bytes, actor: str | None) -> dict[str, Any]:
    try:
        mapping = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise DecodeError(f"{_what(actor)} is corrupt: {type(e).__name__}: {e}", data) from e
    if not isinstance(mapping, dict):
        raise DecodeError(f"{_what(actor)} is corrupt: a {type(mapping).__name__}, not a map", data)
    return mapping


def _what(actor: str | None) -> str:
    return "stored state" if actor is None else f"stored state of actor type {actor!r}"


def _stored_version(actor: ActorType[Any], found: object, data: bytes) -> int:
    if type(found) is int and 1 <= found <= actor.version:
        return found  # the common case, before any message is formatted
    where = f"stored state of actor type {actor.name!r}"
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise StateInvalid(
            f"{where} has version {found!r} under {VERSION_KEY!r}, not an int >= 1",
            data,
            actor=actor.name,
            version=None,
        )
    if found > actor.version:
        raise StateTooNew(
            f"{where} is version {found}; this deploy knows versions up to {actor.version}",
            data,
            actor=actor.name,
            version=found,
        )
    return found


def _migrate(
    actor: ActorType[Any], mapping: dict[str, Any], version: int, data: bytes
) -> dict[str, Any]:
    """Run migrations ``version`` -> ... -> ``actor.version`` over the stored mapping."""
    for n in range(version, actor.version):
        step = actor.migrations.get(n)
        where = f"migration {n} -> {n + 1} of actor type {actor.name!r}"
        if step is None:
            known = ", ".join(map(str, sorted(actor.migrations))) or "none"
            raise StateInvalid(
                f"stored state of actor type {actor.name!r} is version {version} but there "
                f"is no migration {n} -> {n + 1} (migrations from: {known})",
                data,
                actor=actor.name,
                version=version,
            )
        try:
            out = step(mapping)
        except Exception as e:
            raise StateInvalid(
                f"{where} failed on a version {version} state: {type(e).__name__}: {e}",
                data,
                actor=actor.name,
                version=version,
            ) from e
        if not isinstance(out, dict):
            raise StateInvalid(
                f"{where} returned a {type(out).__name__}, not a dict",
                data,
                actor=actor.name,
                version=version,
            )
        out.pop(VERSION_KEY, None)  # encode writes the version; a copy here means nothing
        mapping = out
    return mapping


def _split(shape: _Shape, mapping: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the model validates, the fields it does not declare)."""
    if shape.plain and (shape.allow_extra or shape.known.issuperset(mapping)):
        return mapping, {}  # the common case: every key is a field, passed as is
    if shape.allow_extra:
        unknown: dict[str, Any] = {}
    else:
        unknown = {k: v for k, v in mapping.items() if k not in shape.known}
    fields = {
        shape.rename.get(k, k): v
        for k, v in mapping.items()
        if k not in unknown and k not in shape.derived
    }
    return fields, unknown


def _shape(model: type[BaseModel]) -> _Shape:
    found = _shapes.get(model)
    if found is None:
        found = _shapes[model] = _compute_shape(model)
    return found


def _compute_shape(model: type[BaseModel]) -> _Shape:
    known: set[str] = set()
    rename: dict[str, str] = {}
    for name, field in model.model_fields.items():
        accepted = _alias_keys(field.validation_alias)
        # State is dumped by field name (or by alias with serialize_by_alias); a model that
        # validates by alias only would silently default a value stored under its name.
        target = _plain_alias(field.validation_alias) or name
        for stored in (name, field.alias):
            if isinstance(stored, str) and stored != target:
                rename[stored] = target
        known.update([name, *accepted])
        if isinstance(field.alias, str):
            known.add(field.alias)
    derived = frozenset(model.model_computed_fields)
    return _Shape(
        known=frozenset(known) | derived,
        derived=derived,
        rename=rename,
        allow_extra=model.model_config.get("extra") == "allow",
        plain=not (rename or derived),
    )


def _alias_keys(alias: str | AliasPath | AliasChoices | None) -> list[str]:
    """The top-level keys a validation alias reads (an AliasPath reads its first key)."""
    if alias is None:
        return []
    if isinstance(alias, str):
        return [alias]
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    keys = []
    for choice in choices:
        first = choice if isinstance(choice, str) else choice.path[0]
        if isinstance(first, str):
            keys.append(first)
    return keys


def _plain_alias(alias: str | AliasPath | AliasChoices | None) -> str | None:
    """The first plain key a validation alias accepts (a path cannot take a flat value)."""
    if isinstance(alias, AliasChoices):
        return next((c for c in alias.choices if isinstance(c, str)), None)
    return alias if isinstance(alias, str) else None


def _one_line(errors: list[dict[str, Any]]) -> str:
    """pydantic's errors as ``loc: msg (input ...)`` joined by "; ", on one line."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(state)"
        text = f"{loc}: {err.get('msg', '')}"
        if "input" in err and err.get("type") != "missing":
            shown = repr(err["input"])
            if len(shown) > _INPUT_CHARS:
                shown = shown[: _INPUT_CHARS - 3] + "..."
            text += f" (input {shown})"
        parts.append(text)
    return "; ".join(parts).replace("\n", " ").replace("\r", " ")
