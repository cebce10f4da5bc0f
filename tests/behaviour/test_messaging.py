"""Delivery, ordering, deferral, cancellation and idempotency, on fakeredis and redis-server."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from tests.actors import Add, CounterState, LogState, Note, counter, logger

if TYPE_CHECKING:
    from actor_system import ActorSystem, ManualClock


def test_counter_applies_every_message_once(make_system) -> None:
    system: ActorSystem = make_system(counter, batch=7)
    for i in range(50):
        system.send(counter.ref(f"c{i % 5}"), Add(n=1))
    report = system.run_until_idle()
    assert report.messages == 50
    assert report.dead_letters == 0
    for i in range(5):
        state = system.state(counter.ref(f"c{i}"))
        assert isinstance(state, CounterState)
        assert state.count == 10
        assert len(set(state.seen)) == 10


def test_batched_turn_processes_many_messages_in_one_turn(make_system) -> None:
    system: ActorSystem = make_system(counter, batch=100)
    system.send_many([(counter.ref("a"), Add(n=2))] * 60)
    report = system.run_until_idle()
    assert report.messages == 60
    assert report.turns == 1
    assert system.state(counter.ref("a")).count == 120


def test_messages_from_one_sender_arrive_in_order(make_system) -> None:
    system: ActorSystem = make_system(logger, batch=7)
    texts = [f"m{i}" for i in range(100)]
    for t in texts:
        system.send(logger.ref("x"), Note(text=t))
    system.run_until_idle()
    state = system.state(logger.ref("x"))
    assert isinstance(state, LogState)
    assert state.log == texts


def test_deferred_message_is_never_delivered_early(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(logger)
    ref = logger.ref("d")
    system.send(ref, Note(text="late"), delay=10)
    system.send(ref, Note(text="at"), at=clock_dt(clock, 20))
    system.send(ref, Note(text="td"), delay=timedelta(seconds=15))
    system.run_until_idle()
    assert system.state(ref).log == []
    clock.advance(9.999)
    system.run_until_idle()
    assert system.state(ref).log == []
    clock.advance(0.001)
    assert system.run_until_idle().promoted == 1
    assert system.state(ref).log == ["late"]
    clock.advance(5)
    system.run_until_idle()
    assert system.state(ref).log == ["late", "td"]
    clock.advance(4.999)
    system.run_until_idle()
    assert system.state(ref).log == ["late", "td"]
    clock.advance(0.001)
    system.run_until_idle()
    assert system.state(ref).log == ["late", "td", "at"]


def test_cancel_wins_against_a_message_not_yet_due(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(logger)
    ref = logger.ref("c")
    keep = system.send(ref, Note(text="kept"), delay=5)
    gone = system.send(ref, Note(text="cancelled"), delay=5)
    assert system.backend.pending() == 2
    assert system.cancel(gone) is True
    # A retried cancel (its first answer lost to a reset) still says the message is cancelled.
    assert system.cancel(gone) is True
    clock.advance(5)
    system.run_until_idle()
    assert system.state(ref).log == ["kept"]
    assert system.cancel(keep) is False  # already delivered
    assert system.backend.pending() == 0


def test_idempotency_key_delivers_once(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(counter)
    ref = counter.ref("i")
    first = system.send(ref, Add(n=5), idempotency_key="order-17")
    second = system.send(ref, Add(n=5), idempotency_key="order-17")
    assert first == second
    system.run_until_idle()
    third = system.send(ref, Add(n=5), idempotency_key="order-17")  # after processing
    system.run_until_idle()
    assert third == first
    assert system.state(ref).count == 5
    other = system.send(counter.ref("j"), Add(n=5), idempotency_key="order-17")
    assert other != first  # keys are per target actor


def test_deferred_idempotent_send_is_scheduled_once(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(counter)
    ref = counter.ref("k")
    for _ in range(3):
        system.send(ref, Add(n=1), delay=3, idempotency_key="tick-1")
    # SQS cannot refuse a second message with the same body: its copies are dropped when
    # they land, and its pending count is SQS's own (approximate) message count.
    delay = getattr(system.backend, "delay", None)
    copies = 3 if delay is not None and delay.hops else 1
    assert system.backend.pending() == copies
    clock.advance(3)
    assert system.run_until_idle().messages == 1
    assert system.state(ref).count == 1
    clock.advance(60)
    assert system.run_until_idle().messages == 0


def test_state_of_unknown_actor_is_the_default(make_system) -> None:
    system: ActorSystem = make_system(counter)
    assert system.state(counter.ref("nobody")) == CounterState()


def clock_dt(clock: ManualClock, seconds: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(clock.now() + seconds, UTC)


def test_a_due_deferred_message_goes_ahead_of_recent_sends_not_of_old_ones(
    make_system, clock: ManualClock
) -> None:
    """The ready set serves the oldest first, and an actor whose deferred message came due
    counts as ready a minute before its due time: ahead of a backlog sent since, behind
    anything that has waited longer (timed messages cannot starve immediate ones)."""
    system = make_system(counter)
    old, timed, recent = counter.ref("old"), counter.ref("timed"), counter.ref("recent")
    now_ms = round(clock.now() * 1000)
    system.send(old, Add(n=1))  # ready since now
    system.send(timed, Add(n=1), delay=120)
    clock.advance(100)
    system.send(recent, Add(n=1))  # ready since now + 100 s
    clock.advance(20)  # the deferred message is due: ready as of now + 60 s
    order = [system.backend.poll(now_ms + 120_000, 1, 30_000)[0] for _ in range(3)]
    assert order == [["counter/old"], ["counter/timed"], ["counter/recent"]]
