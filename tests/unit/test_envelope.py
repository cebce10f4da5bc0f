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
