"""The envelope that carries a message, and its msgpack codec.

On the wire a mailbox entry is the 32-character hex message id followed by the msgpack body
[format version, target, type, payload, attempt, sent-at ms, due-at ms] and, for a message
whose sender wants its reply, an eighth field (see Envelope.reply), for a message sent
within a trace a ninth (see Envelope.trace; the eighth is then nil if nobody wants the reply),
and for an occurrence of a reminder a tenth (see Envelope.reminder; the eighth and ninth then
nil where unset), so that Lua scripts read the id (for de-duplication) without decoding
msgpack.

A message id is 128 bits in hex: 48 bits of send time in ms and a 16-bit sequence (so that
ids from one sender sort in send order: the delay queue breaks ties of equal due times by
id), 16 bits of a hash of the target actor (which picks the delay shard, so that one actor's
deferred messages share a shard and leave it in due order, and a cancel finds the shard from
the id alone), then 48 random bits. An id derived from an idempotency key is a hash in the
same layout.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import msgpack

from actor_system.errors import DecodeError, InvalidSend, MessageTooLarge

FORMAT_VERSION = 1
ID_LENGTH = 32
_FIELDS = 7  # an eighth, the reply field, and a ninth, the trace, are written only when set
_HEX_ID = re.compile(rb"[0-9a-f]{32}")
# The one message type of the runtime's own, never a handler's (a model name cannot hold
# ':'): it removes an ended actor's S3 object once its replay window has passed.
PURGE_TYPE = "actor-system:purge"
_PURGE_MARK = PURGE_TYPE.encode()  # a cheap test before decoding an entry
_HEX_ID_STR = re.compile(r"[0-9a-f]{32}")
# A traceparent is 55 characters (version 00 of W3C Trace Context); a tracestate longer than
# 512 is one that OpenTelemetry's propagator drops: longer values are not a trace context.
MAX_TRACE_CHARS = 512


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message on its way to an actor."""

    id: str
    target: str  # "type/id"
    type: str  # message type name
    payload: dict[str, Any]
    attempt: int
    sent_at_ms: int
    due_at_ms: int | None
    # Who wants the handler's reply: None nobody (a reply is still stored if the handler
    # returns one), "" a caller waiting on Redis (system.ask: a reply is always stored),
    # "type/id" an actor, which gets it as a Replied message.
    reply: str | None = None
    # The W3C trace context of the send (``traceparent``, and ``tracestate`` when there is
    # one), when it was made within a trace (see actor_system.tracing); None otherwise. On
    # the wire: the ninth field, [traceparent] or [traceparent, tracestate].
    trace: dict[str, str] | None = None
    # An occurrence of a reminder (actor_system.reminders): (its name, the generation of the
    # schedule that armed it, its due time in epoch ms). On the wire the tenth field.
    reminder: tuple[str, str, int] | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An encoded message ready for a mailbox (``due_ms`` is None) or the delay queue."""

    id: str
    target: str
    entry: bytes
    due_ms: int | None


class _Sequence:
    """(ms, sequence) pairs that only grow within this process, whatever the wall clock does:
    ids sent by one process sort in the order they were made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (0, 0)

    def next(self) -> tuple[int, int]:
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            last_ms, seq = self._last
            if now_ms > last_ms:
                self._last = (now_ms, 0)
            elif seq < 0xFFFF:
                self._last = (last_ms, seq + 1)
            else:  # 65,536 ids in one ms: borrow the next ms
                self._last = (last_ms + 1, 0)
            return self._last


# One per process, like uuid's node id: the order of ids is a property of the process.
_SEQUENCE = _Sequence()


def target_hash(target: str) -> str:
    """The 4 hex digits of an id that name its target's delay shard."""
    return f"{zlib.crc32(target.encode()) & 0xFFFF:04x}"


def new_id(target: str, idempotency_key: str | None = None) -> str:
    """A fresh id that sorts after every earlier id of this process, or one derived from the
    caller's idempotency key (same key, same id)."""
    if idempotency_key is None:
        ms, seq = _SEQUENCE.next()
        return f"{ms & 0xFFFF_FFFF_FFFF:012x}{seq:04x}{target_hash(target)}{os.urandom(6).hex()}"
    digest = hashlib.blake2b(f"{target}\x00{idempotency_key}".encode(), digest_size=14).hexdigest()
    return f"{digest[:16]}{target_hash(target)}{digest[16:28]}"


def is_message_id(value: object) -> TypeGuard[str]:
    """True for a 32-character lowercase hex string, the form of every message id."""
    return isinstance(value, str) and _HEX_ID_STR.fullmatch(value) is not None


def check_message_id(value: object) -> str:
    """``value`` if it is a message id; InvalidSend naming it otherwise."""
    if not is_message_id(value):
        raise InvalidSend(f"{value!r} is not a message id (32 lowercase hex digits)")
    return value


def encode(env: Envelope) -> bytes:
    """Encode an envelope as a mailbox entry: the id, then the msgpack body (without the id,
    which the entry already carries: a pending message stores it once less)."""
    fields: list[Any] = [
        FORMAT_VERSION,
        env.target,
        env.type,
        env.payload,
        env.attempt,
        env.sent_at_ms,
        env.due_at_ms,
    ]
    if env.reply is not None or env.trace is not None or env.reminder is not None:
        fields.append(env.reply)
    if env.trace is not None or env.reminder is not None:
        fields.append(None if env.trace is None else _trace_field(env.trace))
    if env.reminder is not None:
        fields.append(list(env.reminder))
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return env.id.encode("ascii") + body


def decode(raw: bytes) -> Envelope:
    """Decode a mailbox entry; raises DecodeError (keeping ``raw``) on anything malformed."""
    if len(raw) <= ID_LENGTH:
        raise DecodeError(f"entry of {len(raw)} bytes is too short to hold an envelope", raw)
    prefix = raw[:ID_LENGTH]
    if _HEX_ID.fullmatch(prefix) is None:
        raise DecodeError("entry does not start with a 32-character hex message id", raw)
    if raw[ID_LENGTH] == 0:
        return _compact(raw)
    try:
        fields = msgpack.unpackb(raw[ID_LENGTH:], raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated exception types
        raise DecodeError(f"undecodable msgpack: {type(e).__name__}: {e}", raw) from e
    # Fields after the tenth are ignored: a later format may add some, and a deploy that
    # predates them must still run the message (the first seven keep their meaning; a deploy
    # that predates the ninth, the trace, or the tenth, the reminder, ignores it).
    if not isinstance(fields, list) or len(fields) < _FIELDS:
        raise DecodeError(f"envelope is not an array of at least {_FIELDS} fields", raw)
    version, target, mtype, payload, attempt, sent_at, due_at = fields[:_FIELDS]
    reply = fields[_FIELDS] if len(fields) > _FIELDS else None
    # A trace context that is not well formed is ignored, never a reason to dead-letter.
    trace = _trace_of(fields[_FIELDS + 1]) if len(fields) > _FIELDS + 1 else None
    reminder = fields[_FIELDS + 2] if len(fields) > _FIELDS + 2 else None
    if version != FORMAT_VERSION:
        raise DecodeError(f"unsupported envelope format version {version!r}", raw)
    checks = (
        isinstance(target, str) and "/" in target,
        isinstance(mtype, str) and bool(mtype),
        isinstance(payload, dict),
        type(attempt) is int and attempt >= 1,
        type(sent_at) is int,
        due_at is None or type(due_at) is int,
        reply is None or (isinstance(reply, str) and (reply == "" or "/" in reply)),
        reminder is None or _is_reminder(reminder),
    )
    if not all(checks):
        raise DecodeError("envelope fields have wrong types", raw)
    mid = prefix.decode("ascii")
    occurrence = None if reminder is None else (reminder[0], reminder[1], reminder[2])
    return Envelope(mid, target, mtype, payload, attempt, sent_at, due_at, reply, trace, occurrence)


def _compact(raw: bytes) -> Envelope:
    """A reminder's occurrence as promotion puts it into the mailbox (reminders.py): its id,
    actor, name and due time; the turn expands it from the schedule, which holds the
    message. Until then its type is empty and its generation ``"~"``."""
    try:
        target, rest = raw[ID_LENGTH + 1 :].decode().split("\n", 1)
        name, due = rest.rsplit("\n", 1)
        due_ms = int(due)
    except ValueError as e:
        raise DecodeError(f"compact reminder entry is malformed: {e}", raw) from e
    if "/" not in target or not name:
        raise DecodeError("compact reminder entry names no actor or no reminder", raw)
    mid = raw[:ID_LENGTH].decode("ascii")
    return Envelope(mid, target, "", {}, 1, due_ms, due_ms, None, None, (name, "~", due_ms))


def _is_reminder(field: object) -> bool:
    """A tenth field: [name, generation, due ms]."""
    return (
        isinstance(field, list)
        and len(field) == 3
        and isinstance(field[0], str)
        and isinstance(field[1], str)
        and type(field[2]) is int
    )


def _trace_field(trace: dict[str, str]) -> list[str]:
    """The ninth field: [traceparent], or [traceparent, tracestate] when there is one."""
    state = trace.get("tracestate")
    return [trace["traceparent"], state] if state else [trace["traceparent"]]


def _trace_of(field: object) -> dict[str, str] | None:
    """The trace context of a ninth field; None for anything that is not one (its values
    are checked when a trace is continued from them: actor_system.tracing)."""
    if not isinstance(field, list) or not 1 <= len(field) <= 2:
        return None
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_TRACE_CHARS for v in field):
        return None
    if len(field) == 1:
        return {"traceparent": field[0]}
    return {"traceparent": field[0], "tracestate": field[1]}


def due_ms(
    now_s: float,
    delay: float | timedelta | None,
    at: datetime | None,
    max_delay_s: float,
) -> int | None:
    """The due time in epoch ms for a deferred send, or None for an immediate one."""
    if delay is not None and at is not None:
        raise InvalidSend("pass either delay= or at=, not both")
    if at is not None:
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidSend(f"at={at!r} is a naive datetime; pass a timezone-aware one")
        seconds = at.timestamp() - now_s
        if seconds <= 0:
            return None
    elif delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise InvalidSend(f"delay={delay!r} must be seconds (int or float) or a timedelta")
        try:
            seconds = float(seconds)
        except OverflowError:  # an int beyond a float's range
            raise InvalidSend(
                f"delay of about 10**{len(str(seconds)) - 1} seconds exceeds "
                f"max_delay_s={max_delay_s:.0f}"
            ) from None
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidSend(f"delay={delay!r} must be a finite number of seconds >= 0")
        if seconds == 0:
            return None
    else:
        return None
    if seconds > max_delay_s:
        raise InvalidSend(f"delay of {seconds:.0f}s exceeds max_delay_s={max_delay_s:.0f}")
    return math.ceil((now_s + seconds) * 1000)


def check_size(entry: bytes, max_bytes: int, what: str) -> None:
    """Raise MessageTooLarge when an encoded entry is over the limit."""
    if len(entry) > max_bytes:
        raise MessageTooLarge(
            f"{what} encodes to {len(entry)} bytes, over max_message_bytes={max_bytes}"
        )


def purge_message(target: str, version: int, now_ms: int, due_ms: int) -> Outgoing:
    """The message that removes ``target``'s S3 object if it is still the tombstone of
    ``version`` when it arrives; its id is derived from both, so a copy sent again is
    dropped like any other."""
    mid = new_id(target, f"{PURGE_TYPE}:{version}")
    env = Envelope(mid, target, PURGE_TYPE, {"version": version}, 1, now_ms, due_ms)
    return Outgoing(mid, target, encode(env), due_ms)


def purge_version(entry: bytes) -> int | None:
    """The tombstone version a purge entry is for; None for every other entry."""
    if _PURGE_MARK not in entry:
        return None
    try:
        env = decode(entry)
    except DecodeError:
        return None
    version = env.payload.get("version") if env.type == PURGE_TYPE else None
    return version if type(version) is int else None
