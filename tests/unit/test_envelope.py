"""The envelope codec: round trip, and a DecodeError that keeps the bytes for anything else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actor_system.envelope import FORMAT_VERSION, Envelope, decode, encode, new_id
from actor_system.errors import DecodeError


def make(**kw: object) -> Envelope:
    fields = {
        "id": new_id("t/1"),
        "target": "t/1",
        "type": "Add",
        "payload": {"n": 1},
        "attempt": 1,
        "sent_at_ms": 5,
        "due_at_ms": None,
    }
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_envelope_round_trips() -> None:
    env = make(due_at_ms=123, payload={"n": 1, "nested": {"a": [1, 2]}})
    assert decode(encode(env)) == env


def test_idempotency_key_gives_a_stable_id_per_target() -> None:
    assert new_id("t/1", "k") == new_id("t/1", "k")
    assert new_id("t/1", "k") != new_id("t/2", "k")
    assert len(new_id("t/1")) == 32


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"short", "too short"),
        (b"a" * 32 + b"\xc1", "undecodable msgpack"),
        (b"a" * 32 + msgpack.packb({"x": 1}), "array of at least 7 fields"),
        (b"a" * 32 + msgpack.packb([2, "t/1", "A", {}, 1, 0, None]), "version 2"),
        (b"z" * 32 + msgpack.packb([FORMAT_VERSION, "t/1", "A", {}, 1, 0, None]), "hex message id"),
        (b"a" * 32 + msgpack.packb([FORMAT_VERSION, "t/1", "A", [], 1, 0, None]), "wrong types"),
        (b"a" * 32 + msgpack.packb([FORMAT_VERSION, "t/1", "A", {}, 0, 0, None]), "wrong types"),
    ],
)
def test_malformed_entries_raise_decode_error_with_raw_bytes(raw: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        decode(raw)
    assert info.value.raw == raw


# No per-example deadline: a wall-clock limit that a busy CI machine can exceed; these
# properties are about what decode raises, not how fast.
@settings(deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_exception(raw: bytes) -> None:
    try:
        decode(raw)
    except DecodeError as e:
        caught = e
    else:
        return
    assert caught.raw == raw


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_truncated_envelopes_raise_decode_error(tail: bytes) -> None:
    full = encode(make(payload={"blob": tail.hex()}))
    for cut in (33, len(full) // 2, len(full) - 1):
        with pytest.raises(DecodeError):
            decode(full[:cut])


_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def body_of(entry: bytes) -> list[object]:
    fields: list[object] = msgpack.unpackb(entry[32:], raw=False)
    return fields


@pytest.mark.parametrize(
    ("reply", "trace", "tail"),
    [
        (None, None, []),
        ("", None, [""]),
        (None, {"traceparent": _TRACEPARENT}, [None, [_TRACEPARENT]]),
        ("t/2", {"traceparent": _TRACEPARENT}, ["t/2", [_TRACEPARENT]]),
        (
            None,
            {"traceparent": _TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"},
            [None, [_TRACEPARENT, "congo=t61rcWkgMzE"]],
        ),
    ],
)
def test_the_reply_and_trace_fields_are_written_only_when_set(
    reply: str | None, trace: dict[str, str] | None, tail: list[object]
) -> None:
    env = make(reply=reply, trace=trace)
    entry = encode(env)
    assert body_of(entry)[7:] == tail
    assert decode(entry) == env


def test_a_trace_costs_its_traceparent_and_four_bytes() -> None:
    plain = make()
    traced = make(id=plain.id, trace={"traceparent": _TRACEPARENT})
    assert len(encode(traced)) - len(encode(plain)) == len(_TRACEPARENT) + 4


@pytest.mark.parametrize(
    "field",
    [
        None,
        42,
        _TRACEPARENT,
        [],
        [42],
        [_TRACEPARENT, 7],
        [_TRACEPARENT, "a=b", "c=d"],
        [""],
        ["x" * 513],
        [_TRACEPARENT, "x" * 513],
        {"traceparent": _TRACEPARENT},
    ],
)
def test_a_malformed_trace_field_is_ignored(field: object) -> None:
    env = make(reply="t/2")
    raw = env.id.encode() + msgpack.packb([*body_of(encode(env)), field])
    assert decode(raw) == env


def test_fields_after_the_tenth_are_ignored() -> None:
    env = make(trace={"traceparent": _TRACEPARENT}, reminder=("tick", "0a1b", 1_700_000_000_000))
    raw = env.id.encode() + msgpack.packb([*body_of(encode(env)), "a later field", 1])
    assert decode(raw) == env


def test_an_occurrence_of_a_reminder_round_trips_without_reply_or_trace() -> None:
    env = make(reminder=("tick", "0a1b", 1_700_000_000_000))
    fields = body_of(encode(env))
    assert fields[7:] == [None, None, ["tick", "0a1b", 1_700_000_000_000]]
    assert decode(encode(env)) == env


@pytest.mark.parametrize(
    "field", [["tick", "0a1b"], ["tick", 1, 2], [None, "g", 1], "tick", ["t", "g", 1.5]]
)
def test_a_malformed_reminder_field_is_a_decode_error(field: object) -> None:
    env = make()
    raw = env.id.encode() + msgpack.packb([*body_of(encode(env)), None, None, field])
    with pytest.raises(DecodeError, match="wrong types"):
        decode(raw)
