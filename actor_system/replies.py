"""Replies: what a handler returns to an asker, stored with its turn's commit and read by
``ask``. A plain send's return value is not kept.

A reply record is JSON, ``{"ok": true, "value": ...}`` or ``{"ok": false, "error": "..."}``
(the message was dead-lettered; the error is the dead letter's reason), so that the HTTP
ingress answers with it as it is. An actor that asks another gets the record as a
``Replied`` message instead (a turn never blocks on another actor).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError, to_jsonable_python

from actor_system.errors import ActorSystemError, DecodeError, MessageTooLarge


class Replied(BaseModel):
    """The reply to a message sent with ``ctx.send(..., reply_to=ctx.self)``, delivered to
    the sender as a message: register ``@actor.handler def on_reply(ctx, r: Replied)``.

    ``id`` is the id of the message it answers (what ``ctx.send`` returned); ``value`` is the
    handler's return value as JSON (a model's ``model_dump(mode="json")``) when ``ok``,
    ``error`` the dead letter's reason when the message could not be processed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    ok: bool
    value: Any = None
    error: str = ""


class NoReply(ActorSystemError, TimeoutError):
    """No reply within the time given: the message is not processed yet (it still will be),
    or it was processed longer ago than ``reply_ttl_s``. ``message_id`` says which message:
    ``system.reply(message_id)`` looks again later."""

    def __init__(self, message: str, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class HandlerFailed(ActorSystemError):
    """The message could not be processed: it was dead-lettered, and ``reason`` is why (the
    dead letter's reason: the handler's last error and how often it failed)."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(f"message {message_id} failed: {reason}")
        self.message_id = message_id
        self.reason = reason


class ReplyInvalid(ActorSystemError, TypeError):
    """A handler's reply to an asker cannot be stored (not JSON-compatible, too large, not
    the declared model): the message is dead-lettered at once, as trying again returns the
    same. A plain send's return value is never encoded, so it cannot fail this way."""


def encode_value(value: Any, max_bytes: int) -> bytes:
    """The record of a handler's return value; TypeError if it is not JSON-compatible,
    MessageTooLarge past ``max_bytes``. Raised inside the turn, either fails the message."""
    try:
        jsonable = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        jsonable = to_jsonable_python(jsonable)
        data = json.dumps({"ok": True, "value": jsonable}, allow_nan=False).encode()
    except (PydanticSerializationError, ValueError, TypeError) as e:
        raise TypeError(
            f"a handler's return value is its reply and must be a pydantic model or "
            f"JSON-compatible; {type(value).__name__} is not: {e}"
        ) from None
    if len(data) > max_bytes:
        raise MessageTooLarge(f"reply encodes to {len(data)} bytes, over {max_bytes}")
    return data


def encode_failure(reason: str) -> bytes:
    return json.dumps({"ok": False, "error": reason}).encode()


def decode(message_id: str, data: bytes) -> tuple[bool, Any]:
    """(ok, the value or the error text) of a stored record."""
    try:
        record = json.loads(data)
        return bool(record["ok"]), record["value"] if record["ok"] else record["error"]
    except (ValueError, KeyError, TypeError) as e:
        raise DecodeError(f"reply of {message_id} is corrupt: {e}", data) from None


def value_of(message_id: str, data: bytes, model: type[BaseModel] | None) -> Any:
    """The reply's value (validated into ``model`` when the handler declares one), or
    HandlerFailed with the reason."""
    ok, value = decode(message_id, data)
    if not ok:
        raise HandlerFailed(message_id, str(value))
    return value if model is None or value is None else model.model_validate(value)
