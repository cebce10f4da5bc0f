"""Reminders: named, replaceable, recurring deferred messages of one actor.

An actor's reminders are kept with its state, under the reserved key ``"_r"`` of the stored
state (stored_state.py): a reminder is set, replaced, moved on and removed by the same commit
that writes the state, wherever the state lives (Redis, S3), and a Redis that loses its last
writes loses it no more than it loses the state.

Each reminder has exactly one pending occurrence, a deferred message whose envelope carries
(name, generation, due ms). In the Redis delay queue it is the member ``~<actor>\n<name>``
alone, scored by its due time: the schedule keeps the message, and the turn expands the
compact entry promotion puts into the mailbox (``expand``). With a body it goes where a body
is needed (SQS, Scheduler, a traced occurrence), its id derived from the three, so that an
occurrence armed twice (a replayed commit) is one message either way. When an occurrence is
settled (processed, or dead-lettered: a failing occurrence never stops the schedule) the
same commit arms the next one, on the grid:

- ``every``: occurrence k is due at ``first + k * every``, whatever the lateness of earlier
  deliveries; ``cron``: the cron times in ``tz`` (cronsim: a local time skipped by a DST
  change fires once after the gap, a repeated one once); both shifted by the actor's
  ``jitter`` offset.
- Occurrences that fell due while nothing ran: ``catchup="coalesce"`` folds those due by the
  time of the delivery into it (``ctx.missed`` counts them, ``ctx.occurrence`` is the latest),
  ``catchup="all"`` delivers each, in order.
- ``times`` counts every occurrence, folded ones too; ``until`` ends the schedule before the
  first occurrence at or after it. An ended reminder leaves nothing behind.

Replacing a reminder (``remind`` with a name the actor has) or forgetting it gives the name a
new generation or none, and cancels the pending occurrence. An occurrence that was already
in the mailbox when that commit was made is dropped when it reaches the head of the mailbox,
without a handler: once a replace or a forget is committed, no occurrence of the old schedule
is delivered.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from actor_system.envelope import (
    ID_LENGTH,
    Envelope,
    Outgoing,
    check_size,
    decode,
    encode,
    new_id,
)
from actor_system.errors import DecodeError, InvalidSend

if TYPE_CHECKING:
    from collections.abc import Mapping

# The runtime's own message types that set and forget reminders from outside a turn
# (system.remind, system.forget); a model name cannot hold ':'.
REMIND_TYPE = "actor-system:remind"
FORGET_TYPE = "actor-system:forget"
CONTROL_TYPES = frozenset({REMIND_TYPE, FORGET_TYPE})
# The generation of a redriven dead occurrence: delivered as it was (ctx.reminder and
# ctx.occurrence set), never stale, never moving the schedule, which moved on when it died.
DETACHED = ""

_MAX_NAME = 200
# A cron reminder's catch-up counts each missed time up to this many, then jumps to the last
# one due (a minute cron stopped for more than two months: missed is then a lower bound).
_MAX_FOLD = 100_000

Catchup = Literal["coalesce", "all"]


@dataclass(frozen=True, slots=True)
class Reminder:
    """One reminder of an actor, as ``system.reminders`` lists it."""

    name: str
    message_type: str  # the message class's name
    due: datetime  # the next occurrence (aware, UTC)
    every: timedelta | None
    cron: str | None
    tz: str
    remaining: int | None  # occurrences left, the pending one included; None: no ``times``
    until: datetime | None
    jitter: timedelta  # this actor's offset within the jitter window
    catchup: Catchup


@dataclass(frozen=True, slots=True)
class Entry:
    """A reminder as the actor's stored state keeps it."""

    gen: str  # changes when the reminder is set again: older occurrences are stale
    type: str  # message type name
    due: int  # the pending occurrence, epoch ms (offset included)
    every: int | None = None  # ms
    cron: str | None = None
    tz: str = "UTC"
    remaining: int | None = None
    until: int | None = None  # epoch ms: no occurrence at or after it
    offset: int = 0  # the jitter offset, ms (already in ``due``)
    catchup: Catchup = "coalesce"
    # The message each occurrence carries (its JSON payload): with it, the pending
    # occurrence can be armed again from the schedule alone (``rearm``). None in entries
    # stored before it was kept.
    payload: dict[str, Any] | None = field(default=None, compare=False)

    def pack(self) -> list[Any]:
        row = [
            self.gen,
            self.type,
            self.due,
            self.every,
            self.cron,
            self.tz,
            self.remaining,
            self.until,
            self.offset,
            "a" if self.catchup == "all" else "c",
        ]
        return row if self.payload is None else [*row, self.payload]

    @classmethod
    def unpack(cls, row: Any) -> Entry | None:
        """None for anything that is not an entry (never raises: a reader skips it)."""
        try:
            gen, mtype, due, every, cron, tz, remaining, until, offset, catchup = row[:10]
            payload = row[10] if len(row) > 10 and isinstance(row[10], dict) else None
            return cls(
                str(gen),
                str(mtype),
                int(due),
                None if every is None else int(every),
                None if cron is None else str(cron),
                str(tz),
                None if remaining is None else int(remaining),
                None if until is None else int(until),
                int(offset),
                "all" if catchup == "a" else "coalesce",
                payload,
            )
        except (TypeError, ValueError, KeyError):
            return None

    def public(self, name: str) -> Reminder:
        return Reminder(
            name=name,
            message_type=self.type,
            due=_utc(self.due),
            every=None if self.every is None else timedelta(milliseconds=self.every),
            cron=self.cron,
            tz=self.tz,
            remaining=self.remaining,
            until=None if self.until is None else _utc(self.until),
            jitter=timedelta(milliseconds=self.offset),
            catchup=self.catchup,
        )

    # -- the schedule ---------------------------------------------------------------------

    def after(self, t: int) -> int | None:
        """The occurrence after the one due at ``t`` (None: the schedule ends there, by its
        kind or ``until``; ``remaining`` is the caller's)."""
        if self.every is not None:
            nxt: int | None = t + self.every
        elif self.cron is not None:
            nxt = _cron_after(self.cron, self.tz, t - self.offset)
            nxt = None if nxt is None else nxt + self.offset
        else:
            nxt = None  # a one-shot reminder
        if nxt is None or (self.until is not None and nxt >= self.until):
            return None
        return nxt

    def fold(self, t: int, now: int) -> tuple[int, int]:
        """(the latest occurrence due by ``now`` that a coalesced delivery of the one due at
        ``t`` folds in, how many it folds in besides ``t``)."""
        if self.catchup == "all" or now <= t:
            return t, 0
        cap = math.inf if self.remaining is None else self.remaining - 1
        if self.every is not None:
            n = min((now - t) // self.every, cap)
            if self.until is not None:
                n = min(n, max(0, math.ceil((self.until - t) / self.every) - 1))
            return t + int(n) * self.every, int(n)
        missed, latest = 0, t
        while missed < cap:
            nxt = self.after(latest)
            if nxt is None or nxt > now:
                break
            latest, missed = nxt, missed + 1
            if missed >= _MAX_FOLD and self.cron is not None:
                last = _cron_before(self.cron, self.tz, now - self.offset + 1)
                if last is not None and last + self.offset > latest:
                    latest = last + self.offset
                break
        return latest, missed

    def moved_on(self, delivered: int, missed: int) -> Entry | None:
        """The entry once the occurrence due at ``delivered`` (with ``missed`` folded in) is
        settled: the next one pending, or None when the schedule ends."""
        remaining = None if self.remaining is None else self.remaining - 1 - missed
        if remaining is not None and remaining <= 0:
            return None
        nxt = self.after(delivered)
        if nxt is None:
            return None
        return replace(self, due=nxt, remaining=remaining)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _cron_after(expr: str, tz: str, t: int) -> int | None:
    """The first time of ``expr`` in ``tz`` strictly after epoch ms ``t``."""
    start = datetime.fromtimestamp(t / 1000, ZoneInfo(tz))
    try:
        found = next(CronSim(expr, start))
    except StopIteration:  # e.g. "0 0 30 2 *": no such day
        return None
    return int(found.timestamp() * 1000)


def _cron_before(expr: str, tz: str, t: int) -> int | None:
    """The last time of ``expr`` in ``tz`` strictly before epoch ms ``t``."""
    start = datetime.fromtimestamp(t / 1000, ZoneInfo(tz))
    try:
        found = next(CronSim(expr, start, reverse=True))
    except StopIteration:
        return None
    return int(found.timestamp() * 1000)


# -- setting one ---------------------------------------------------------------------------


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidSend(f"{what}={value!r} must be seconds (int or float) or a timedelta")
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidSend(f"{what}={value!r} must be a finite number of seconds >= 0")
    return seconds


def _aware_ms(value: datetime, what: str) -> int:
    if not isinstance(value, datetime):
        raise InvalidSend(f"{what}={value!r} must be a timezone-aware datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidSend(f"{what}={value!r} is a naive datetime; pass a timezone-aware one")
    return math.ceil(value.timestamp() * 1000)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        raise InvalidSend(f"reminder name {name!r} must be a string of 1 to {_MAX_NAME} chars")
    return name


def jitter_offset(actor: str, name: str, window_ms: int) -> int:
    """The actor's deterministic offset within a jitter window: the same every time it is
    set, spread evenly over the window across actors."""
    if window_ms <= 0:
        return 0
    digest = hashlib.blake2b(f"{actor}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % window_ms


def plan(
    actor: str,
    name: str,
    message_type: str,
    now_ms: int,
    *,
    delay: float | timedelta | None = None,
    at: datetime | None = None,
    every: float | timedelta | None = None,
    cron: str | None = None,
    tz: str = "UTC",
    times: int | None = None,
    until: datetime | None = None,
    jitter: float | timedelta | None = None,
    catchup: str = "coalesce",
    max_delay_s: float = math.inf,
) -> Entry:
    """A new reminder's entry (its generation fresh), its first occurrence computed from
    ``now_ms``; InvalidSend naming the argument that is wrong."""
    check_name(name)
    if delay is None and at is None and every is None and cron is None:
        raise InvalidSend("a reminder needs one of delay=, at=, every= or cron=")
    if delay is not None and at is not None:
        raise InvalidSend("pass either delay= or at=, not both")
    if every is not None and cron is not None:
        raise InvalidSend("pass either every= or cron=, not both")
    if catchup not in ("coalesce", "all"):
        raise InvalidSend(f"catchup={catchup!r} must be 'coalesce' or 'all'")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise InvalidSend(f"times={times!r} must be an int >= 1")
    until_ms = None if until is None else _aware_ms(until, "until")
    window_ms = 0 if jitter is None else int(_seconds(jitter, "jitter") * 1000)
    offset = jitter_offset(actor, name, window_ms)
    if delay is not None:
        start: int | None = now_ms + math.ceil(_seconds(delay, "delay") * 1000)
    elif at is not None:
        start = _aware_ms(at, "at")
    else:
        start = None
    every_ms = None
    if every is not None:
        every_ms = math.ceil(_seconds(every, "every") * 1000)
        if every_ms < 1:
            raise InvalidSend(f"every={every!r} must be at least a millisecond")
        first = (now_ms + every_ms if start is None else start) + offset
    elif cron is not None:
        _check_cron(cron, tz)
        # The first cron time at or after the start (now: strictly after it).
        after = now_ms if start is None else start - 1
        found = _cron_after(cron, tz, after)
        if found is None:
            raise InvalidSend(f"cron={cron!r} never matches a date")
        first = found + offset
    else:
        assert start is not None
        first = start + offset
    if first - now_ms > max_delay_s * 1000:
        raise InvalidSend(
            f"the first occurrence is {(first - now_ms) / 1000:.0f}s away, over "
            f"max_delay_s={max_delay_s:.0f}"
        )
    if until_ms is not None and first >= until_ms:
        raise InvalidSend(f"until={until!r} is at or before the first occurrence")
    return Entry(
        gen=os.urandom(6).hex(),
        type=message_type,
        due=first,
        every=every_ms,
        cron=cron,
        tz=tz if cron is not None else "UTC",
        remaining=times,
        until=until_ms,
        offset=offset,
        catchup="all" if catchup == "all" else "coalesce",
    )


def _check_cron(expr: object, tz: object) -> None:
    if not isinstance(expr, str) or len(expr.split()) != 5:
        raise InvalidSend(f"cron={expr!r} must be a five-field cron expression")
    if not isinstance(tz, str):
        raise InvalidSend(f"tz={tz!r} must be an IANA time zone name such as 'Europe/Berlin'")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidSend(f"tz={tz!r} is not a known IANA time zone: {e}") from None
    try:
        CronSim(expr, datetime.now(zone))
    except CronSimError as e:
        raise InvalidSend(f"cron={expr!r} is not a valid cron expression: {e}") from None


# A pending occurrence in the Redis delay queue is the member ``~<actor>\n<name>`` alone
# (an actor id holds no line break), scored by its due time: no body, the schedule holds the
# message. At promotion, Lua puts a compact entry into the mailbox, ``<id>\0<actor>\n<name>
# \n<due ms>`` (lib.lua, occurrence_of); the turn expands it from the schedule.
MEMBER = "~"
# The generation a compact entry's envelope carries until it is expanded: it matches the
# schedule's entry of its name by the due time alone.
COMPACT = "~"


def member(target: str, name: str) -> str:
    """The delay-queue member of ``target``'s reminder ``name``: one pending at a time."""
    return f"{MEMBER}{target}\n{name}"


def is_member(message_id: str) -> bool:
    return message_id.startswith(MEMBER)


def member_parts(message_id: str) -> tuple[str, str]:
    """(actor, reminder name) of a delay-queue member (``member``)."""
    target, _, name = message_id[len(MEMBER) :].partition("\n")
    return target, name


def expand(entry: bytes, kept: Mapping[str, Entry], max_bytes: int) -> bytes | None:
    """The full mailbox entry of a compact occurrence, from the schedule's entry of its name
    (which holds the message); None when the schedule has moved on or is gone (stale). Any
    other entry as it is."""
    if not is_compact(entry):
        return entry
    env = decode(entry)
    assert env.reminder is not None
    name, _, due = env.reminder
    found = kept.get(name)
    if found is None or found.due != due or found.payload is None:
        return None
    full = Envelope(
        id=env.id,
        target=env.target,
        type=found.type,
        payload=found.payload,
        attempt=1,
        sent_at_ms=due,
        due_at_ms=due,
        reminder=(name, found.gen, due),
    )
    raw = encode(full)
    check_size(raw, max_bytes, f"reminder {name!r} of {env.target}")
    return raw


def is_compact(entry: bytes) -> bool:
    return len(entry) > ID_LENGTH and entry[ID_LENGTH] == 0


def pending_ids(target: str, name: str, entry: Entry) -> list[str]:
    """What cancels the pending occurrence of ``entry``: its member in the Redis delay
    queue, and its id where it went with a body (SQS, Scheduler, a traced occurrence)."""
    return [member(target, name), occurrence_id(target, name, entry.gen, entry.due)]


def occurrence_id(target: str, name: str, gen: str, due: int) -> str:
    """The id of an occurrence: the same for the same reminder, generation and due time."""
    return new_id(target, f"\x1freminder\x1f{name}\x1f{gen}\x1f{due}")


def occurrence(
    target: str,
    name: str,
    entry: Entry,
    payload: dict[str, Any],
    now_ms: int,
    max_bytes: int,
    trace: dict[str, str] | None = None,
) -> Outgoing:
    """The pending occurrence of ``entry``: into the delay queue if it is not due yet, the
    mailbox otherwise (its envelope keeps the due time either way). Into the Redis delay
    queue it goes as its member alone (``member``), the full entry kept in the item for a
    delay store outside Redis (and for a traced occurrence, whose context needs a body)."""
    mid = occurrence_id(target, name, entry.gen, entry.due)
    env = Envelope(
        id=mid,
        target=target,
        type=entry.type,
        payload=payload,
        attempt=1,
        sent_at_ms=now_ms,
        due_at_ms=entry.due,
        trace=trace,
        reminder=(name, entry.gen, entry.due),
    )
    raw = encode(env)
    check_size(raw, max_bytes, f"reminder {name!r} of {target}")
    if entry.due <= now_ms:
        return Outgoing(mid, target, raw, None)
    if trace is None and payload is not None and payload == entry.payload:
        return Outgoing(member(target, name), target, raw, entry.due)
    return Outgoing(mid, target, raw, entry.due)


def rearm(target: str, stored: Mapping[str, Any], now_ms: int, max_bytes: int) -> list[Outgoing]:
    """The pending occurrence of each reminder in a stored ``"_r"`` map, armed again from the
    schedule: after Redis lost it (``system.rearm_reminders()``). An occurrence still
    pending, or already processed, is the same message (its id comes from the reminder, its
    generation and due time): arming it again delivers nothing twice. Entries stored without
    their message are left out."""
    return [
        occurrence(target, name, entry, entry.payload, now_ms, max_bytes)
        for name, entry in load(stored).items()
        if entry.payload is not None
    ]


def detached(entry: bytes) -> bytes:
    """A dead-lettered occurrence made ready for a redrive (DETACHED); any other entry, or
    one that does not decode, as it is."""
    if is_compact(entry):
        return entry  # not expanded (its schedule had moved on): stale wherever it goes
    try:
        env = decode(entry)
    except DecodeError:
        return entry
    if env.reminder is None:
        return entry
    name, _, due = env.reminder
    return encode(replace(env, reminder=(name, DETACHED, due)))


def load(stored: Mapping[str, Any]) -> dict[str, Entry]:
    """The entries of a stored ``"_r"`` map (what cannot be read is left out)."""
    found = {}
    for name, row in stored.items():
        entry = Entry.unpack(row)
        if isinstance(name, str) and entry is not None:
            found[name] = entry
    return found


def store(entries: Mapping[str, Entry]) -> dict[str, Any]:
    return {name: e.pack() for name, e in entries.items()}


def remind_payload(name: str, entry: Entry, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload of a REMIND_TYPE message: the entry as set by the sender, and the message."""
    return {"name": name, "entry": entry.pack(), "payload": payload}


def public(stored: Mapping[str, Any]) -> list[Reminder]:
    """The reminders of a stored ``"_r"`` map, earliest due first."""
    entries = load(stored)
    return sorted((e.public(n) for n, e in entries.items()), key=lambda r: (r.due, r.name))
