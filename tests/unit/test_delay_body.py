"""The JSON body a deferred message travels in through SQS or a schedule."""

from __future__ import annotations

import base64
import json

import pytest

from actor_system.adapters.delay import decode_body, encode_body
from actor_system.envelope import Outgoing
from actor_system.errors import DecodeError

ITEM = Outgoing("a" * 32, "counter/x", b"a" * 32 + b"\x97body", 1_767_225_600_000)


def test_body_round_trips_and_is_json() -> None:
    body = encode_body(ITEM)
    assert json.loads(body)["actor_system"] == "deferred"
    assert decode_body(body) == ITEM
    assert decode_body(json.loads(body)) == ITEM  # as a schedule's event


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": "short"}, "valid id or target"),
        ({"target": 7}, "valid id or target"),
        ({"due_ms": "soon"}, "due time"),
        ({"entry": "***"}, "not base64"),
        ({"entry": base64.b64encode(b"b" * 40).decode()}, "does not carry its id"),
    ],
)
def test_malformed_bodies_raise_with_the_reason_and_keep_the_bytes(
    change: dict[str, object], reason: str
) -> None:
    body = json.dumps({**json.loads(encode_body(ITEM)), **change})
    with pytest.raises(DecodeError, match=reason) as info:
        decode_body(body)
    assert info.value.raw == body.encode()


def test_wakes_are_not_landed_but_anything_else_is_examined() -> None:
    assert decode_body(json.dumps({"actor_system": "wake", "due_ms": 1})) is None
    assert decode_body({"actor_system": "continue", "depth": 1}) is None
    # anything else is dead-lettered with the reason, not dropped
    with pytest.raises(DecodeError, match="not JSON"):
        decode_body("not json")
    with pytest.raises(DecodeError, match="not a deferred actor-system message"):
        decode_body(json.dumps({"something": "else"}))
    assert decode_body(encode_body(ITEM)) == ITEM
