"""Retry policy (backoff as a deferred re-delivery, order kept or not, never-retried errors,
time limits), async handlers. On every store, with the manual clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, ConfigError, Context, ManualClock, RetryPolicy
from actor_system.testing import advance_and_drain, settle


class Log(BaseModel):
    log: list[str] = Field(default_factory=list)


class Call(BaseModel):
    text: str


class Bad(BaseModel):
    pass


class Slow(BaseModel):
    seconds: float


OUTAGE: dict[str, float] = {"until": 0.0}  # the flaky dependency is down until this time
CALLS: list[tuple[str, int]] = []


def flaky_service(ctx: Context[Log], text: str) -> None:
    CALLS.append((text, ctx.attempt))
    if ctx.now.timestamp() < OUTAGE["until"]:
        raise ConnectionError("payment service unavailable")


def make_actor(name: str, policy: RetryPolicy | None = None) -> ActorType[Log]:
    actor = ActorType(name, state=Log, retry=policy)

    @actor.handler
    def call(ctx: Context[Log], msg: Call) -> None:
        flaky_service(ctx, msg.text)
        ctx.state.log.append(msg.text)

    @actor.handler(retry=RetryPolicy(max_attempts=1))
    def bad(ctx: Context[Log], msg: Bad) -> None:
        raise RuntimeError("always")

    @actor.handler
    def slow(ctx: Context[Log], msg: Slow) -> None:
        time.sleep(msg.seconds)
        ctx.state.log.append("slow done")

    return actor


def test_a_dependency_down_for_one_and_a_half_seconds_is_survived_by_default(
    make_system, clock: ManualClock
) -> None:
    actor = make_actor("flaky")
    system: ActorSystem = make_system(actor)
    CALLS.clear()
    OUTAGE["until"] = clock.now() + 1.5
    ref = actor.ref("a")
    system.send_many([(ref, Call(text="pay")), (ref, Call(text="after"))])
    first = system.run_until_idle()
    assert (first.retries, first.messages) == (1, 0)  # failed once, now waits: no retry storm
    report = settle(system, clock)
    assert report.dead_letters == 0
    assert system.state(ref).log == ["pay", "after"]  # the actor waited: order kept
    attempts = [a for text, a in CALLS if text == "pay"]
    assert attempts[-1] <= 3
    assert attempts == list(range(1, len(attempts) + 1))
    assert CALLS[-1] == ("after", 1)


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    import random

    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=10.0, jitter=0.2)
    rng = random.Random(1)
    delays = [policy.delay_s(n, rng) for n in range(1, 7)]
    for n, d in enumerate(delays, 1):
        base = min(2 ** (n - 1), 10)
        assert 0.8 * base <= d <= 1.2 * base
    assert len({round(d, 6) for d in delays}) == 6  # jittered


def test_without_keep_order_the_messages_behind_proceed(make_system, clock: ManualClock) -> None:
    actor = make_actor("unordered", RetryPolicy(keep_order=False))
    system: ActorSystem = make_system(actor)
    OUTAGE["until"] = clock.now() + 1.5
    ref = actor.ref("b")
    system.send(ref, Call(text="pay"))
    OUTAGE["until"] = clock.now() + 1.5
    system.run_until_idle()
    OUTAGE["until"] = 0.0  # the next message goes through at once
    system.send(ref, Call(text="next"))
    system.run_until_idle()
    assert system.state(ref).log == ["next"]  # did not wait for the deferred retry
    advance_and_drain(system, clock, 5)  # deferred, perhaps through SQS or a schedule
    assert system.state(ref).log == ["next", "pay"]


def test_a_never_retried_error_goes_straight_to_the_dead_letters(
    make_system, clock: ManualClock
) -> None:
    actor = ActorType("strict", state=Log, retry=RetryPolicy(never_retry=(ValueError,)))

    @actor.handler
    def call(ctx: Context[Log], msg: Call) -> None:
        raise ValueError(f"bad amount {msg.text}")

    system: ActorSystem = make_system(actor)
    system.send(actor.ref("c"), Call(text="-5"))
    report = settle(system, clock)
    assert (report.retries, report.dead_letters) == (0, 1)
    [dead] = system.dead_letters()
    assert dead.attempts == 1
    assert dead.reason == "not retried (ValueError is in never_retry): ValueError: bad amount -5"


def test_a_handler_policy_overrides_the_actor_types(make_system, clock: ManualClock) -> None:
    actor = make_actor("override")
    system: ActorSystem = make_system(actor)
    system.send(actor.ref("d"), Bad())
    report = settle(system, clock)
    assert (report.retries, report.dead_letters) == (0, 1)  # max_attempts=1 for Bad only


def test_a_handler_past_its_time_limit_fails_and_is_retried(url: str, clock: ManualClock) -> None:
    actor = make_actor("limited", RetryPolicy(time_limit_s=0.2, max_attempts=2, backoff_s=0))
    system = ActorSystem.from_url(url, actors=[actor], clock=clock)
    ref = actor.ref("e")
    system.send(ref, Slow(seconds=5))
    started = time.monotonic()
    report = settle(system, clock)
    assert time.monotonic() - started < 4  # interrupted twice at 0.2 s, not 10 s of sleep
    assert (report.retries, report.dead_letters) == (1, 1)
    [dead] = system.dead_letters()
    assert "TimeoutError: the handler ran longer than its time_limit_s=0.2" in dead.reason
    assert system.state(ref).log == []


# -- async handlers -------------------------------------------------------------------------

SEEN_LOOPS: set[int] = set()


def make_async_actor(name: str) -> ActorType[Log]:
    actor = ActorType(name, state=Log, retry=RetryPolicy(time_limit_s=0.3))

    @actor.handler
    async def call(ctx: Context[Log], msg: Call) -> None:
        SEEN_LOOPS.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        if msg.text == "fail" and ctx.attempt == 1:
            raise ConnectionError("timeout talking to the API")
        ctx.state.log.append(f"{msg.text} attempt {ctx.attempt}")

    @actor.handler
    async def slow(ctx: Context[Log], msg: Slow) -> None:
        await asyncio.sleep(msg.seconds)

    return actor


def test_async_handlers_update_state_and_are_retried_like_sync_ones(
    make_system, clock: ManualClock
) -> None:
    actor = make_async_actor("async")
    system: ActorSystem = make_system(actor)
    ref = actor.ref("f")
    SEEN_LOOPS.clear()
    system.send_many([(ref, Call(text="ok")), (ref, Call(text="fail")), (ref, Call(text="z"))])
    report = settle(system, clock)
    assert report.retries == 1
    assert system.state(ref).log == ["ok attempt 1", "fail attempt 2", "z attempt 1"]
    assert len(SEEN_LOOPS) == 1  # one event loop for the runtime, reused


def test_an_async_handler_past_its_time_limit_is_retried_then_dead_lettered(
    url: str, clock: ManualClock
) -> None:
    actor = make_async_actor("async-slow")
    system = ActorSystem.from_url(url, actors=[actor], clock=clock, max_attempts=2)
    system.send(actor.ref("g"), Slow(seconds=30))
    report = settle(system, clock)
    assert (report.retries, report.dead_letters) == (1, 1)
    [dead] = system.dead_letters()
    assert "TimeoutError: the handler ran longer than its time_limit_s=0.3" in dead.reason
    system.close()


def test_a_handler_that_returns_an_awaitable_is_refused_at_registration() -> None:
    actor = ActorType("mistake", state=Log)
    with pytest.raises(ConfigError, match=r"returns an awaitable .* is not an async def"):

        @actor.handler
        def call(ctx: Context[Log], msg: Call) -> Coroutine[Any, Any, None]:
            return asyncio.sleep(0)


def test_a_sync_handler_returning_a_coroutine_fails_clearly(
    make_system, clock: ManualClock
) -> None:
    actor = ActorType("sneaky", state=Log, retry=RetryPolicy(max_attempts=1))

    async def work() -> None:
        return None

    @actor.handler
    def call(ctx: Context[Log], msg: Call):  # type: ignore[no-untyped-def]
        return work()  # unannotated: found out when it runs

    system: ActorSystem = make_system(actor)
    system.send(actor.ref("h"), Call(text="x"))
    settle(system, clock)
    [dead] = system.dead_letters()
    assert "returned an awaitable without being an async def" in dead.reason


EVENTS: list[str] = []


def test_an_async_handler_interrupted_by_the_budget_never_resumes_later(
    url: str, clock: ManualClock
) -> None:
    from actor_system import Budget

    actor = ActorType("async-budget", state=Log)

    @actor.handler
    async def slow(ctx: Context[Log], msg: Slow) -> None:
        EVENTS.append(f"start {ctx.attempt}")
        try:
            await asyncio.sleep(msg.seconds)
            EVENTS.append("slept")  # must never happen after the interruption
            ctx.state.log.append("slow done")
        except asyncio.CancelledError:
            EVENTS.append("cancelled")
            raise

    @actor.handler
    async def call(ctx: Context[Log], msg: Call) -> None:
        await asyncio.sleep(0)
        ctx.state.log.append(msg.text)

    EVENTS.clear()
    system = ActorSystem.from_url(url, actors=[actor], max_attempts=1)  # real clock: a budget
    ref = actor.ref("i")
    system.send(ref, Slow(seconds=3))
    system.worker(budget=Budget.seconds(0.5)).run()  # the guard interrupts the handler
    assert EVENTS == ["start 1", "cancelled"]
    system.send(actor.ref("j"), Call(text="later"))
    system.run_until_idle()  # the loop runs again: the interrupted task does not come back
    assert system.state(actor.ref("j")).log == ["later"]
    assert "slept" not in EVENTS
    assert system.state(ref).log == []
    system.close()


def test_an_actor_popped_before_its_retry_pause_is_not_taken_early(
    url: str, clock: ManualClock
) -> None:
    from actor_system.ports import Commit, Failed

    actor = make_actor("race")
    system = ActorSystem.from_url(url, actors=[actor], clock=clock)
    backend = system.backend
    ref = actor.ref("x")
    now = int(clock.now() * 1000)
    system.send(ref, Call(text="m1"))
    popped_x, _ = backend.poll(now, 10, 30_000)  # worker X takes the actor
    [claim] = backend.begin(popped_x, "X", 30_000, 10, now)
    assert claim is not None
    system.send(ref, Call(text="m2"))  # arrives during X's turn: the actor is ready again
    popped_y, _ = backend.poll(now, 10, 30_000)  # worker Y pops it
    assert popped_y == [ref.key]
    retry = Commit(claim.actor, "X", claim.fence, None, [Failed("boom")], pause_ms=now + 10_000)
    assert backend.commit([retry], now) == [0]  # X's message failed: the actor rests 10 s
    assert backend.begin(popped_y, "Y", 30_000, 10, now + 1) == [None]  # Y must not take it
    clock.advance(11)
    OUTAGE["until"] = 0.0
    system.run_until_idle()  # rested: Y's reservation expired, the pause ended
    assert system.state(ref).log == ["m1", "m2"]
