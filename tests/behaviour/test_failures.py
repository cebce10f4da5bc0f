"""Retries, dead letters, bad input and lease recovery, on fakeredis and redis-server."""

from __future__ import annotations

import msgpack

from actor_system import ActorSystem, ManualClock
from actor_system.envelope import Envelope, encode
from actor_system.testing import settle
from tests.actors import Add, Boom, Later, Note, counter, logger


def raw_push(system: ActorSystem, actor: str, entry: bytes) -> None:
    """Put bytes straight into a mailbox, as a foreign or broken producer would."""
    keys = system.backend.keys
    system.backend.client.rpush(keys.actor(actor, "mb"), entry)
    system.backend.client.zadd(keys.ready(keys.part_of(actor)), {actor: 0})
    system.backend.client.hset(
        keys.hints, keys.part_of(actor), system.backend.client.incr(keys.gen)
    )


def ms(clock: ManualClock) -> int:
    return int(clock.now() * 1000)


def envelope(mid: str, target: str, mtype: str, payload: dict) -> bytes:
    return encode(Envelope(mid, target, mtype, payload, 1, 0, None))


def test_failing_handler_is_retried_then_dead_lettered(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(logger, max_attempts=3)
    ref = logger.ref("b")
    mid = system.send(ref, Boom())
    system.send(ref, Note(text="after"))
    report = settle(system, clock)
    assert report.retries == 2
    assert report.dead_letters == 1
    # The failed attempts' state changes were rolled back; the next message still ran.
    assert system.state(ref).log == ["after"]
    [dead] = system.dead_letters()
    assert dead.id == mid
    assert dead.actor == "logger/b"
    assert dead.attempts == 3
    assert "failed 3 times" in dead.reason
    assert "RuntimeError: boom on attempt 3" in dead.reason
    assert "Traceback" in dead.error
    assert "RuntimeError: boom on attempt 1" in dead.first_error  # kept from the first try
    assert "boom on attempt 3" in dead.error


def test_handler_that_fails_once_succeeds_on_retry(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(logger, max_attempts=3)
    ref = logger.ref("b1")
    system.send(ref, Note(text="before"))
    system.send(ref, Boom(times=1))
    system.send(ref, Note(text="after"))
    report = settle(system, clock)
    assert report.retries == 1
    assert report.dead_letters == 0
    assert system.state(ref).log == ["before", "boom attempt 2", "after"]


def test_retry_with_delay_redelivers_after_the_delay(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(logger)
    ref = logger.ref("r")
    system.send(ref, Later(delay=30))
    assert system.run_until_idle().retries == 1
    assert system.state(ref).count == 0  # rolled back
    clock.advance(29.9)
    system.run_until_idle()
    assert system.state(ref).log == []
    clock.advance(0.1)
    system.run_until_idle()
    assert system.state(ref).log == ["later attempt 2"]
    assert system.state(ref).count == 1


def test_bad_input_is_dead_lettered_and_nothing_else_is_lost(make_system) -> None:
    system: ActorSystem = make_system(logger, counter, max_message_bytes=2_000)
    good = logger.ref("g")
    system.send(good, Note(text="1"))
    raw_push(system, "logger/g", b"\x00garbage that is not an envelope at all, really")
    system.send(good, Note(text="2"))
    raw_push(system, "logger/g", envelope("a" * 32, "logger/g", "Nope", {}))
    raw_push(system, "logger/g", envelope("b" * 32, "logger/g", "Note", {"text": 5}))
    raw_push(system, "logger/g", envelope("c" * 32, "logger/g", "Note", {"text": "x" * 3000}))
    raw_push(system, "logger/g", b"d" * 32 + msgpack.packb([99, "logger/g"]))
    raw_push(system, "ghost/1", envelope("e" * 32, "ghost/1", "Note", {"text": "?"}))
    system.send(good, Note(text="3"))
    report = system.run_until_idle()
    assert system.state(good).log == ["1", "2", "3"]
    assert report.dead_letters == 6
    reasons = {d.id: d.reason for d in system.dead_letters()}
    assert len(reasons) == 6
    assert "DecodeError: entry does not start with a 32-character hex" in reasons[""]
    assert "UnknownMessageType" in reasons["a" * 32]
    assert "payload fails validation for Note" in reasons["b" * 32]
    assert "MessageTooLarge" in reasons["c" * 32]
    assert "array of at least 7 fields" in reasons["d" * 32]
    assert "UnknownActorType" in reasons["e" * 32]
    entries = {d.id: d.entry for d in system.dead_letters()}
    assert entries["a" * 32].startswith(b"a" * 32)  # the raw bytes are kept


def test_expired_lease_is_recovered_and_nothing_is_applied_twice(
    make_system, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(counter, lease_ms=1_000, batch=3)
    ref = counter.ref("crash")
    for _ in range(5):
        system.send(ref, Add(n=1))
    # A drainer takes the lease and claims a batch, then dies before committing.
    [claim] = system.backend.begin(["counter/crash"], "dead-token", 1_000, 3, ms(clock))
    assert claim is not None
    assert len(claim.entries) == 3
    assert system.run_until_idle().messages == 0  # the lease is still held
    clock.advance(1.001)
    report = system.run_until_idle()
    assert report.recovered == 3
    assert report.messages == 5
    state = system.state(ref)
    assert state.count == 5
    assert len(set(state.seen)) == 5


def test_stale_holder_cannot_commit_over_newer_state(make_system, clock: ManualClock) -> None:
    from actor_system.ports import DONE, Commit

    system: ActorSystem = make_system(counter, lease_ms=1_000)
    ref = counter.ref("stale")
    system.send(ref, Add(n=1))
    [claim] = system.backend.begin(["counter/stale"], "old-token", 1_000, 10, ms(clock))
    assert claim is not None
    clock.advance(2)  # the old holder is frozen past its lease
    system.run_until_idle()
    assert system.state(ref).count == 1
    stale = Commit("counter/stale", "old-token", claim.fence, b"\x81\xa5count\xcd\x03\xe7", [DONE])
    assert system.backend.commit([stale], ms(clock)) == [None]
    assert system.state(ref).count == 1


def test_redelivered_message_id_is_dropped(make_system) -> None:
    system: ActorSystem = make_system(counter)
    ref = counter.ref("dup")
    mid = system.send(ref, Add(n=1))
    system.run_until_idle()
    raw = envelope(mid, "counter/dup", "Add", {"n": 1})
    raw_push(system, "counter/dup", raw)  # a re-flushed outbox after a crash
    report = system.run_until_idle()
    assert report.duplicates == 1
    assert system.state(ref).count == 1


def test_actor_popped_by_a_drainer_that_dies_is_not_stranded(
    make_system, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(counter, lease_ms=1_000)
    ref = counter.ref("popped")
    system.send(ref, Add(n=1))
    actors, _ = system.backend.poll(ms(clock), 16, 1_000)  # popped, then the drainer dies
    assert actors == ["counter/popped"]
    assert system.run_until_idle().messages == 0  # reserved while its lease could be taken
    clock.advance(1.001)
    assert system.run_until_idle().messages == 1
    assert system.state(ref).count == 1


def test_a_turn_over_max_outbox_fails_with_a_clear_reason(make_system) -> None:
    from pydantic import BaseModel

    from actor_system import ActorType, Context

    class Fan(BaseModel):
        n: int

    class Empty(BaseModel):
        pass

    fan = ActorType("fan", state=Empty)

    @fan.handler
    def spread(ctx: Context[Empty], msg: Fan) -> None:
        for i in range(msg.n):
            ctx.send(counter.ref(f"f{i}"), Add(n=1))

    system: ActorSystem = make_system(fan, counter, max_outbox=5, max_attempts=1)
    system.send(fan.ref("ok"), Fan(n=5))
    system.send(fan.ref("big"), Fan(n=6))
    report = system.run_until_idle()
    assert report.dead_letters == 1
    [dead] = system.dead_letters()
    assert dead.actor == "fan/big"
    assert "at most max_outbox=5 messages" in dead.reason
    assert sum(system.state(counter.ref(f"f{i}")).count for i in range(6)) == 5  # only "ok"
