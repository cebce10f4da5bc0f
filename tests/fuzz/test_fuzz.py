"""Fuzzed input: whatever arrives, the drain loop goes on, bad input is dead-lettered with a
reason or refused with a precise error, and no other message is lost."""

from __future__ import annotations

import contextlib
import math
from datetime import datetime, timedelta

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actor_system import (
    ActorSystem,
    ConfigError,
    InvalidSend,
    ManualClock,
    MessageTooLarge,
)
from actor_system.envelope import FORMAT_VERSION
from tests.actors import Add, Note, counter, logger

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)

HEX_ID = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)

envelopes = st.one_of(
    st.binary(max_size=400),  # arbitrary bytes
    st.builds(lambda mid, body: mid.encode() + body, HEX_ID, st.binary(max_size=200)),
    st.builds(  # well-formed msgpack with wrong shapes, types, versions and payloads
        lambda mid, fields: mid.encode() + msgpack.packb(fields),
        HEX_ID,
        st.lists(json_values, max_size=9),
    ),
    st.builds(  # plausible envelopes: right shape, fuzzed fields
        lambda mid, version, target, mtype, payload, attempt: (
            mid.encode() + msgpack.packb([version, target, mtype, payload, attempt, 0, None])
        ),
        HEX_ID,
        st.sampled_from([FORMAT_VERSION, FORMAT_VERSION, 0, 2, "1"]),
        st.sampled_from(["counter/f", "counter/f", "ghost/f", "counter/other", "nope"]),
        st.sampled_from(["Add", "Add", "Note", "Nope", ""]),
        st.one_of(st.fixed_dictionaries({"n": st.integers(-5, 5)}), json_values),
        st.sampled_from([1, 1, 0, -1, "x"]),
    ),
)


@FUZZ
@given(junk=st.lists(envelopes, min_size=1, max_size=6))
def test_fuzzed_entries_never_stop_the_drain_or_lose_good_messages(junk: list[bytes]) -> None:
    system = ActorSystem.from_url(
        "fakeredis://", actors=[counter, logger], max_attempts=2, max_message_bytes=300
    )
    ref = counter.ref("f")
    keys = system.backend.keys
    good = []
    for i, raw in enumerate(junk):
        good.append(system.send(ref, Add(n=1)))
        system.backend.client.rpush(keys.actor("counter/f", "mb"), raw)
        system.backend.client.zadd(keys.ready(keys.part_of("counter/f")), {"counter/f": i})
        gen = system.backend.client.incr(keys.gen)
        system.backend.client.hset(keys.hints, keys.part_of("counter/f"), gen)
    good.append(system.send(ref, Add(n=1)))
    report = system.run_until_idle()
    assert report.idle
    assert set(good) <= set(system.state(ref).seen)  # type: ignore[attr-defined]
    dead = system.dead_letters(100)
    # Every entry is accounted for: processed (a valid fuzzed Add counts too), dead-lettered
    # with a reason, or dropped as a duplicate id.
    assert report.messages + len(dead) + report.duplicates == len(junk) + len(good)
    assert all(d.reason for d in dead)
    stats = system.stats()
    assert stats["mailbox_messages"] == 0
    assert stats["in_flight_messages"] == 0


@FUZZ
@given(
    delay=st.one_of(
        st.floats(),
        st.integers(-(10**12), 10**12),
        st.text(max_size=5),
        st.timedeltas(min_value=timedelta(days=-800), max_value=timedelta(days=800)),
    )
)
def test_fuzzed_delays_are_accepted_or_refused_precisely(delay: object) -> None:
    clock = ManualClock()
    system = ActorSystem.from_url("fakeredis://", actors=[counter], clock=clock)
    try:
        system.send(counter.ref("d"), Add(n=1), delay=delay)  # type: ignore[arg-type]
    except InvalidSend:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        ok = (
            isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and math.isfinite(seconds)
            and 0 <= seconds <= system.options.max_delay_s
        )
        assert not ok, f"refused a valid delay {delay!r}"
        return
    first = system.run_until_idle().messages
    clock.advance(system.options.max_delay_s + 1)
    assert first + system.run_until_idle().messages == 1


@FUZZ
@given(
    at=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2100, 1, 1),
        timezones=st.none() | st.timezones(),
    )
)
def test_fuzzed_times_are_accepted_or_refused_precisely(at: datetime) -> None:
    clock = ManualClock()
    system = ActorSystem.from_url("fakeredis://", actors=[counter], clock=clock)
    try:
        system.send(counter.ref("t"), Add(n=1), at=at)
    except InvalidSend as e:
        refused = str(e)
    else:
        assert at.tzinfo is not None
        return
    assert at.tzinfo is None or at.utcoffset() is None or "max_delay_s" in refused


@FUZZ
@given(text=st.text(max_size=2_000))
def test_fuzzed_message_sizes_are_sent_or_refused_as_too_large(text: str) -> None:
    system = ActorSystem.from_url("fakeredis://", actors=[logger], max_message_bytes=1_000)
    try:
        system.send(logger.ref("s"), Note(text=text))
    except MessageTooLarge:
        assert len(text.encode()) > 900
        return
    assert system.run_until_idle().messages == 1
    assert system.state(logger.ref("s")).log == [text]  # type: ignore[attr-defined]


@FUZZ
@given(
    url=st.text(max_size=40),
    key=st.sampled_from(["BATCH", "LEASE_MS", "PREFIX", "NOPE"]),
    value=st.text(max_size=10),
)
def test_fuzzed_urls_and_settings_raise_config_errors_only(url: str, key: str, value: str) -> None:
    with contextlib.suppress(ConfigError):
        ActorSystem.from_url(url, actors=[counter])
    env = {"ACTOR_SYSTEM_REDIS_URL": "fakeredis://", f"ACTOR_SYSTEM_{key}": value}
    with contextlib.suppress(ConfigError):
        ActorSystem.from_env(actors=[counter], environ=env)
