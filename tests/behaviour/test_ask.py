"""Replies: a handler's return value is its reply. ``ask``, ``reply``, Replied messages
between actors, replies committed with their turn, reply_ttl_s, ``send(process=...)``.

On every store with the manual clock, unless a test says otherwise. Under the manual clock a
retry's backoff never ends by itself, so the tests that fail a message on purpose dead-letter
it at the first attempt or retry it without backoff, or ``settle`` it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, Field

from actor_system import (
    ActorRef,
    ActorSystem,
    ActorType,
    Context,
    HandlerFailed,
    InvalidSend,
    ManualClock,
    NoReply,
    Replied,
    RetryPolicy,
    UnknownMessageType,
)
from actor_system.envelope import new_id
from actor_system.ports import Commit
from actor_system.runtime import DrainReport
from actor_system.testing import settle
from tests.waiting import wait_until

MakeSystem = Callable[..., ActorSystem]
M = TypeVar("M", bound=BaseModel)

START = "2026-01-01T00:00:00Z"  # the ManualClock's start, as a reply carries a datetime


class Tally(BaseModel):
    count: int = 0
    log: list[str] = Field(default_factory=list)


class Price(BaseModel):
    amount: int
    currency: str
    at: datetime


class Quote(BaseModel):
    amount: int


class Give(BaseModel):
    kind: str


class AsyncGive(BaseModel):
    n: int


class Bump(BaseModel):
    pass


class Quiet(BaseModel):
    pass


class Fail(BaseModel):
    pass


class Weird(BaseModel):
    kind: str  # "object" or "nan"


class Flaky(BaseModel):
    pass


VALUES: dict[str, Any] = {
    "dict": {"a": 1, "nested": {"b": [1, 2]}},
    "list": [1, "two", None, 3.5, True],
    "int": 42,
    "str": "hello",
    "none": None,
}
SUPPLIER_DOWN = {"flaky": True}  # the redrive test flips it


shop = ActorType("shop", state=Tally)


@shop.handler
def quote(ctx: Context[Tally], msg: Quote) -> Price:
    ctx.state.count += 1
    return Price(amount=msg.amount * ctx.state.count, currency="EUR", at=ctx.now)


@shop.handler
def give(ctx: Context[Tally], msg: Give) -> Any:  # no model: the reply is JSON values
    ctx.state.log.append(msg.kind)
    if msg.kind == "datetime":
        return ctx.now
    if msg.kind == "model":
        return Price(amount=1, currency="USD", at=ctx.now)
    return VALUES[msg.kind]


@shop.handler
async def agive(ctx: Context[Tally], msg: AsyncGive) -> dict[str, Any]:
    await asyncio.sleep(0)
    ctx.state.count += msg.n
    return {"async": True, "count": ctx.state.count}


@shop.handler
def bump(ctx: Context[Tally], msg: Bump) -> int:
    ctx.state.count += 1
    ctx.state.log.append(ctx.message_id)
    return ctx.state.count


@shop.handler
def quiet(ctx: Context[Tally], msg: Quiet) -> None:
    ctx.state.log.append("quiet")


@shop.handler(retry=RetryPolicy(max_attempts=1))
def fail(ctx: Context[Tally], msg: Fail) -> int:
    ctx.state.count += 1000
    raise RuntimeError("out of stock")


@shop.handler(retry=RetryPolicy(max_attempts=1))
def weird(ctx: Context[Tally], msg: Weird) -> Any:
    ctx.state.count += 100
    ctx.state.log.append("weird")
    return object() if msg.kind == "object" else float("nan")


@shop.handler(retry=RetryPolicy(max_attempts=1))
def flaky(ctx: Context[Tally], msg: Flaky) -> str:
    if SUPPLIER_DOWN["flaky"]:
        raise ConnectionError("supplier down")
    ctx.state.count += 1
    return "fixed"


def failing(name: str, policy: RetryPolicy | None = None) -> ActorType[Tally]:
    """An actor type whose only handler always raises, with ``policy`` (None: Options)."""
    actor = ActorType(name, state=Tally, retry=policy)

    @actor.handler
    def always(ctx: Context[Tally], msg: Fail) -> int:
        ctx.state.log.append(f"attempt {ctx.attempt}")
        raise RuntimeError(f"broken on attempt {ctx.attempt}")

    return actor


# -- actor to actor ---------------------------------------------------------------------------


class Asks(BaseModel):
    sent: list[str] = Field(default_factory=list)
    replies: list[Replied] = Field(default_factory=list)


class Order(BaseModel):
    what: str  # "work" or "fail"
    n: int = 0


class Work(BaseModel):
    n: int


buyer = ActorType("buyer", state=Asks)
supplier = ActorType("supplier", state=Tally)
mute = ActorType("mute", state=Tally)  # asks, but has no Replied handler


@buyer.handler
def order(ctx: Context[Asks], msg: Order) -> None:
    work: BaseModel = Work(n=msg.n) if msg.what == "work" else Fail()
    ctx.state.sent.append(ctx.send(supplier.ref("s"), work, reply_to=ctx.self))


@buyer.handler
def on_reply(ctx: Context[Asks], r: Replied) -> None:
    ctx.state.replies.append(r)


@supplier.handler
def supply(ctx: Context[Tally], msg: Work) -> dict[str, int]:
    ctx.state.count += msg.n
    return {"double": 2 * msg.n, "total": ctx.state.count}


@supplier.handler(retry=RetryPolicy(max_attempts=1))
def cannot_supply(ctx: Context[Tally], msg: Fail) -> None:
    raise RuntimeError("cannot supply")


@mute.handler(retry=RetryPolicy(max_attempts=1))
def mute_order(ctx: Context[Tally], msg: Order) -> None:
    ctx.state.count += 1
    ctx.send(supplier.ref("s"), Work(n=msg.n), reply_to=ctx.self)


# -- helpers ----------------------------------------------------------------------------------


def ms(clock: ManualClock) -> int:
    return int(clock.now() * 1000)


def state_of(system: ActorSystem, ref: ActorRef, model: type[M]) -> M:
    state = system.state(ref)
    assert isinstance(state, model)
    return state


def hold_lease(system: ActorSystem, ref: ActorRef, clock: ManualClock, token: str) -> int:
    """Take ``ref``'s lease as another drainer would (its mailbox empty: nothing claimed);
    returns the fence."""
    [claim] = system.backend.begin([ref.key], token, system.options.lease_ms, 100, ms(clock))
    assert claim is not None
    assert claim.entries == []
    return claim.fence


def record(system: ActorSystem, message_id: str) -> Any:
    """The stored reply record, decoded (None: no reply stored)."""
    data = system.backend.reply(message_id)
    return None if data is None else json.loads(data)


# -- ask: what comes back -------------------------------------------------------------------


def test_ask_returns_the_handlers_model_validated_from_its_stored_reply(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("models")
    first = system.ask(ref, Quote(amount=5), idempotency_key="q1")
    at = datetime.fromtimestamp(clock.now(), UTC)
    assert type(first) is Price
    assert first == Price(amount=5, currency="EUR", at=at)
    assert system.ask(ref, Quote(amount=5)) == Price(amount=10, currency="EUR", at=at)
    assert state_of(system, ref, Tally).count == 2
    # Stored as JSON under the message id; system.reply reads it back as JSON values.
    mid = new_id(ref.key, "q1")
    assert record(system, mid) == {
        "ok": True,
        "value": {"amount": 5, "currency": "EUR", "at": START},
    }
    assert system.reply(mid) == {"amount": 5, "currency": "EUR", "at": START}


def test_ask_returns_json_values_of_handlers_without_a_model(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("json")
    for kind, value in VALUES.items():
        got = system.ask(ref, Give(kind=kind))
        assert got == value
        assert type(got) is type(value)
    assert system.ask(ref, Give(kind="datetime")) == START
    # A model returned by a handler not annotated with it comes back as its JSON.
    assert system.ask(ref, Give(kind="model")) == {"amount": 1, "currency": "USD", "at": START}
    assert state_of(system, ref, Tally).log == [*VALUES, "datetime", "model"]
    assert system.run_until_idle().messages == 0  # every ask ran in the caller


def test_an_async_handlers_return_value_is_its_reply(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("async")
    assert system.ask(ref, AsyncGive(n=3)) == {"async": True, "count": 3}
    assert system.ask(ref, AsyncGive(n=4)) == {"async": True, "count": 7}
    assert state_of(system, ref, Tally).count == 7


def test_ask_refuses_bad_arguments_before_anything_is_stored(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop, supplier)
    ref = shop.ref("args")
    for timeout in (0, -1.0, True):
        with pytest.raises(InvalidSend, match="must be a number of seconds > 0"):
            system.ask(ref, Bump(), timeout=timeout)
    with pytest.raises(UnknownMessageType, match="has no handler for message type 'Work'"):
        system.ask(ref, Work(n=1))
    with pytest.raises(InvalidSend, match="is not a message id"):
        system.reply("not-an-id")
    assert system.stats()["mailbox_messages"] == 0
    assert system.run_until_idle().messages == 0


# -- ask: failures ----------------------------------------------------------------------------


def test_a_dead_lettered_ask_raises_handler_failed_with_the_dead_letters_reason(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("fails")
    with pytest.raises(HandlerFailed) as info:
        system.ask(ref, Fail())
    [dead] = system.dead_letters()
    assert dead.reason == "failed 1 times, last: RuntimeError: out of stock"
    assert info.value.reason == dead.reason
    assert info.value.message_id == dead.id
    assert str(info.value) == f"message {dead.id} failed: {dead.reason}"
    assert record(system, dead.id) == {"ok": False, "error": dead.reason}
    with pytest.raises(HandlerFailed) as again:
        system.reply(dead.id)
    assert (again.value.message_id, again.value.reason) == (dead.id, dead.reason)
    assert system.raw_state(ref) is None  # the failed handler's change is not committed


def test_a_resent_failed_ask_gets_the_same_failure_without_running_again(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("fails-once")
    with pytest.raises(HandlerFailed) as first:
        system.ask(ref, Fail(), idempotency_key="f")
    with pytest.raises(HandlerFailed) as second:
        system.ask(ref, Fail(), idempotency_key="f")
    assert (second.value.message_id, second.value.reason) == (
        first.value.message_id,
        first.value.reason,
    )
    assert len(system.dead_letters()) == 1  # it ran once


def test_options_max_attempts_one_fails_an_ask_at_once(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    actor = failing("fails-by-option")
    system = make_system(actor, max_attempts=1)
    with pytest.raises(HandlerFailed) as info:
        system.ask(actor.ref("o"), Fail())
    [dead] = system.dead_letters()
    assert (
        info.value.reason
        == dead.reason
        == "failed 1 times, last: RuntimeError: broken on attempt 1"
    )
    assert info.value.message_id == dead.id


def test_an_ask_retried_without_backoff_fails_after_its_last_attempt(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    actor = failing("fails-twice", RetryPolicy(max_attempts=2, backoff_s=0))
    system = make_system(actor)
    ref = actor.ref("t")  # the caller runs the retry too (no backoff: nothing to wait for)
    with pytest.raises(HandlerFailed) as info:
        system.ask(ref, Fail(), timeout=2.0)
    [dead] = system.dead_letters()
    assert dead.attempts == 2
    assert (
        info.value.reason
        == dead.reason
        == "failed 2 times, last: RuntimeError: broken on attempt 2"
    )
    assert info.value.message_id == dead.id


def test_an_ask_waiting_out_a_retry_backoff_gets_no_reply_until_the_clock_moves(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    actor = failing("fails-later", RetryPolicy(max_attempts=2, backoff_s=5, jitter=0))
    system = make_system(actor)
    ref = actor.ref("b")
    started = time.monotonic()
    with pytest.raises(NoReply) as info:
        system.ask(ref, Fail(), timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert isinstance(info.value, TimeoutError)
    mid = info.value.message_id
    assert system.dead_letters() == []  # the first attempt failed; the actor rests 5 s
    assert record(system, mid) is None
    report = settle(system, clock)  # the manual clock steps over the backoff
    assert (report.retries, report.dead_letters) == (0, 1)
    [dead] = system.dead_letters()
    assert dead.id == mid
    with pytest.raises(HandlerFailed) as failed:
        system.reply(mid)
    assert (
        failed.value.reason
        == dead.reason
        == "failed 2 times, last: RuntimeError: broken on attempt 2"
    )


# -- ask: no reply in time ----------------------------------------------------------------------


def test_an_ask_whose_actor_is_leased_elsewhere_raises_no_reply_then_reply_finds_it(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("busy")
    hold_lease(system, ref, clock, "another-drain")
    started = time.monotonic()
    with pytest.raises(NoReply) as info:
        system.ask(ref, Bump(), timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert isinstance(info.value, TimeoutError)
    mid = info.value.message_id
    assert len(mid) == 32
    assert f"no reply to message {mid} within 0.2s" in str(info.value)
    assert system.stats()["mailbox_messages"] == 1  # sent, and still queued
    assert system.raw_state(ref) is None
    with pytest.raises(NoReply) as none_yet:
        system.reply(mid)
    assert none_yet.value.message_id == mid
    clock.advance(system.options.lease_ms / 1000 + 0.001)  # the other holder's lease expires
    report = system.run_until_idle()
    assert report.messages == 1
    assert system.reply(mid) == 1
    assert state_of(system, ref, Tally).log == [mid]


def test_on_fakeredis_an_ask_drains_in_process_until_a_held_lease_expires() -> None:
    """The embedded store has no drain elsewhere: ask drains between looks (real time)."""
    system = ActorSystem.from_url("fakeredis://", actors=[shop], lease_ms=300)
    ref = shop.ref("wait")
    clock = system.clock
    [claim] = system.backend.begin([ref.key], "another-drain", 300, 100, int(clock.now() * 1000))
    assert claim is not None
    started = time.monotonic()
    assert system.ask(ref, Bump(), timeout=10) == 1
    assert 0.25 <= time.monotonic() - started < 5
    assert state_of(system, ref, Tally).count == 1
    system.close()


def test_on_redis_an_ask_waits_for_the_commit_of_a_drain_elsewhere(
    redis_url: str, clock: ManualClock
) -> None:
    asking = ActorSystem.from_url(redis_url, actors=[shop], clock=clock)
    draining = ActorSystem.from_url(redis_url, actors=[shop], clock=clock)
    ref = shop.ref("elsewhere")
    fence = hold_lease(asking, ref, clock, "another-drain")
    tried = threading.Event()
    run_actor = asking.runtime.run_actor

    def run_here(actor: str, budget: Any, ids: set[str]) -> tuple[DrainReport, list[Commit]]:
        result = run_actor(actor, budget, ids)
        tried.set()
        return result

    asking.runtime.run_actor = run_here  # type: ignore[method-assign]
    drained: list[DrainReport] = []

    def other_drain() -> None:
        assert tried.wait(10)  # the asker could not run the turn itself
        release = Commit(ref.key, "another-drain", fence, None, [])
        assert draining.backend.commit([release], ms(clock)) == [0]
        drained.append(draining.run_until_idle())

    thread = threading.Thread(target=other_drain)
    thread.start()
    started = time.monotonic()
    assert asking.ask(ref, Bump(), timeout=20) == 1
    assert time.monotonic() - started < 10
    thread.join(10)
    assert [d.messages for d in drained] == [1]  # the other drain ran it
    assert state_of(asking, ref, Tally).count == 1
    asking.close()
    draining.close()


def test_on_redis_an_ask_nobody_drains_gets_no_reply_even_after_the_lease_expires(
    redis_url: str,
) -> None:
    system = ActorSystem.from_url(redis_url, actors=[shop], lease_ms=200)  # Redis time
    ref = shop.ref("undrained")
    now_ms = int(system.clock.now() * 1000)
    [claim] = system.backend.begin([ref.key], "another-drain", 200, 100, now_ms)
    assert claim is not None
    with pytest.raises(NoReply) as info:
        system.ask(ref, Bump(), timeout=0.5)
    mid = info.value.message_id
    assert system.raw_state(ref) is None  # the asker does not drain a shared Redis
    assert system.run_until_idle().messages == 1
    assert system.reply(mid) == 1
    system.close()


# -- idempotency, plain sends -----------------------------------------------------------------


def test_asks_with_the_same_idempotency_key_run_once_and_get_the_first_reply(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("idem")
    assert system.ask(ref, Bump(), idempotency_key="order-1") == 1
    assert system.ask(ref, Bump(), idempotency_key="order-1") == 1  # a second run would say 2
    assert system.ask(ref, Bump(), idempotency_key="order-2") == 2
    assert system.ask(ref, Bump(), idempotency_key="order-1") == 1
    state = state_of(system, ref, Tally)
    assert state.count == 2
    assert state.log == [new_id(ref.key, "order-1"), new_id(ref.key, "order-2")]


def test_a_plain_sends_return_value_is_not_kept(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    """Only an asked message's reply is stored: keeping every return value would cost a
    Redis write and memory per message for nobody."""
    system = make_system(shop)
    ref = shop.ref("plain")
    valued = system.send(ref, Give(kind="dict"))
    modelled = system.send(ref, Quote(amount=7))
    assert system.run_until_idle().messages == 2
    for mid in (valued, modelled):
        with pytest.raises(NoReply) as info:
            system.reply(mid)
        assert info.value.message_id == mid
        assert system.backend.reply(mid) is None
    assert state_of(system, ref, Tally).log == ["dict"]


# -- replies that cannot be stored --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("object", "object is not: Unable to serialize unknown type: <class 'object'>"),
        ("nan", "float is not: Out of range float values are not JSON compliant"),
    ],
)
def test_an_asked_reply_that_is_not_json_dead_letters_the_message_at_once(
    make_system: MakeSystem, clock: ManualClock, kind: str, text: str
) -> None:
    """Asked, the same return value would fail every retry: the message is dead-lettered at
    once with the reason, and only its own changes are rolled back."""
    system = make_system(shop)
    ref = shop.ref(f"weird-{kind}")
    with pytest.raises(HandlerFailed) as info:
        system.ask(ref, Weird(kind=kind))
    [dead] = system.dead_letters()
    assert info.value.reason == dead.reason
    assert dead.reason == (
        "not retried (its reply cannot be stored): ReplyInvalid: a handler's return value is "
        f"its reply and must be a pydantic model or JSON-compatible; {text}"
    )
    assert dead.attempts == 1
    assert system.raw_state(ref) is None


@pytest.mark.parametrize("kind", ["object", "nan"])
def test_a_return_value_nobody_asked_for_that_cannot_be_stored_is_not_a_failure(
    make_system: MakeSystem, clock: ManualClock, kind: str
) -> None:
    """A plain send whose handler returns something unstorable: nobody asked, so the value
    is not even encoded; the message succeeds (its state commits, nothing is retried)."""
    system = make_system(shop)
    ref = shop.ref(f"unasked-{kind}")
    ids = system.send_many([(ref, Bump()), (ref, Weird(kind=kind)), (ref, Bump())])
    report = settle(system, clock)
    assert (report.messages, report.dead_letters, report.retries) == (3, 0, 0)
    state = state_of(system, ref, Tally)
    assert state.count == 102  # its own change commits with the others
    assert state.log == [ids[0], "weird", ids[2]]
    assert system.dead_letters() == []
    for mid in ids:
        with pytest.raises(NoReply):
            system.reply(mid)


def test_a_reply_over_max_message_bytes_fails_an_asked_message(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    actor = ActorType("big-reply", state=Tally)

    @actor.handler
    def big(ctx: Context[Tally], msg: Give) -> str:
        ctx.state.count += 1
        return "x" * 2_000

    system = make_system(actor, max_message_bytes=1_024)
    ref = actor.ref("big")
    with pytest.raises(HandlerFailed) as info:
        system.ask(ref, Give(kind="big"))
    assert info.value.reason == (
        "not retried (its reply cannot be stored): ReplyInvalid: reply encodes to 2025 bytes, "
        "over 1024"
    )
    assert system.raw_state(ref) is None
    mid = system.send(ref, Give(kind="big"))  # not asked: processed, the reply dropped
    assert system.run_until_idle().messages == 1
    assert state_of(system, ref, Tally).count == 1
    with pytest.raises(NoReply):
        system.reply(mid)


# -- redrive ------------------------------------------------------------------------------------


def test_redrive_replaces_the_failure_reply_with_the_next_tries(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("redrive")
    SUPPLIER_DOWN["flaky"] = True
    with pytest.raises(HandlerFailed) as info:
        system.ask(ref, Flaky())
    mid = info.value.message_id
    [dead] = system.dead_letters()
    assert dead.id == mid
    assert (
        dead.reason == info.value.reason == "failed 1 times, last: ConnectionError: supplier down"
    )
    SUPPLIER_DOWN["flaky"] = False
    try:
        assert system.redrive(dead)
        with pytest.raises(NoReply):
            system.reply(mid)  # the failure reply went with the dead letter
        assert system.run_until_idle().messages == 1
    finally:
        SUPPLIER_DOWN["flaky"] = True
    assert system.reply(mid) == "fixed"
    assert record(system, mid) == {"ok": True, "value": "fixed"}
    assert system.dead_letters() == []
    assert state_of(system, ref, Tally).count == 1


# -- actor to actor -----------------------------------------------------------------------------


def test_an_actor_gets_the_reply_of_the_actor_it_asked_as_a_replied_message(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(buyer, supplier)
    ref = buyer.ref("b")
    system.send(ref, Order(what="work", n=3))
    system.send(ref, Order(what="work", n=4))
    report = system.run_until_idle()
    assert report.messages == 6  # 2 orders, 2 works, 2 replies
    state = state_of(system, ref, Asks)
    first, second = state.sent
    assert state.replies == [
        Replied(id=first, ok=True, value={"double": 6, "total": 3}),
        Replied(id=second, ok=True, value={"double": 8, "total": 7}),
    ]
    assert state_of(system, supplier.ref("s"), Tally).count == 7
    # The reply went to the actor, not to a record under the message id.
    assert system.backend.reply(first) is None
    assert system.run_until_idle().messages == 0


def test_an_actor_asking_gets_replied_not_ok_with_the_reason_when_the_message_fails(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(buyer, supplier)
    ref = buyer.ref("b")
    system.send(ref, Order(what="fail"))
    report = settle(system, clock)
    assert (report.messages, report.dead_letters) == (2, 1)  # the order and the Replied
    [dead] = system.dead_letters()
    assert dead.reason == "failed 1 times, last: RuntimeError: cannot supply"
    state = state_of(system, ref, Asks)
    assert state.replies == [Replied(id=state.sent[0], ok=False, error=dead.reason)]
    assert dead.id == state.sent[0]
    assert system.backend.reply(dead.id) is None  # told to the actor instead


def test_asking_from_an_actor_type_without_a_replied_handler_fails_its_message(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(mute, supplier)
    ref = mute.ref("m")
    mid = system.send(ref, Order(what="work", n=1))
    report = settle(system, clock)
    assert (report.messages, report.dead_letters, report.retries) == (0, 1, 0)
    [dead] = system.dead_letters()
    assert dead.id == mid
    assert dead.reason == (
        "failed 1 times, last: UnknownMessageType: actor type 'mute' has no handler for "
        "message type 'Replied' (known: Order)"
    )
    assert system.raw_state(ref) is None
    assert system.raw_state(supplier.ref("s")) is None  # nothing was sent
    assert system.stats()["mailbox_messages"] == 0


# -- replies are part of the commit ------------------------------------------------------------


def test_a_turn_whose_lease_is_lost_before_its_commit_leaves_no_reply(
    make_system: MakeSystem,
    clock: ManualClock,
    stores: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system = make_system(shop)
    ref = shop.ref("lost")
    backend: Any = system.backend
    real_commit = backend.commit
    stolen: list[str] = []

    def commit_after_a_takeover(commits: list[Commit], now_ms: int) -> list[int | None]:
        if not stolen:  # another drainer took the lease while the handler ran
            backend.client.hset(backend.keys.actor(ref.key, "lease"), "t", "thief")
            stolen.append(commits[0].actor)
        return list(real_commit(commits, now_ms))

    monkeypatch.setattr(backend, "commit", commit_after_a_takeover)
    with pytest.raises(NoReply) as info:
        system.ask(ref, Bump(), timeout=0.2)
    mid = info.value.message_id
    assert stolen == [ref.key]
    assert system.backend.reply(mid) is None
    with pytest.raises(NoReply):
        system.reply(mid)
    clock.advance(system.options.lease_ms / 1000 + 0.001)  # the thief's lease expires
    report = system.run_until_idle()
    assert report.recovered == 1
    if stores.get("kind") == "s3":
        # The S3 object was written before the Redis commit was refused: the state stands
        # and the message counts as processed (it does not run again); the next holder
        # writes the reply the object kept, as it re-sends its outbox.
        assert (report.messages, report.duplicates) == (0, 1)
    else:
        assert report.messages == 1  # it runs again and that run commits
    assert state_of(system, ref, Tally).log == [mid]
    assert system.reply(mid) == 1  # the reply of the change that stands


def test_a_reply_is_gone_after_reply_ttl_s(url: str, clock: ManualClock) -> None:
    system = ActorSystem.from_url(url, actors=[shop], clock=clock, reply_ttl_s=0.3)
    ref = shop.ref("ttl")
    assert system.ask(ref, Bump(), idempotency_key="k") == 1
    mid = new_id(ref.key, "k")
    backend: Any = system.backend
    pttl = backend.client.pttl(backend.keys.reply(mid))
    assert 0 < pttl <= 300
    started = time.monotonic()
    wait_until(lambda: system.backend.reply(mid) is None, timeout_s=5, what="reply expiry")
    assert time.monotonic() - started < 2
    with pytest.raises(NoReply) as info:
        system.reply(mid)
    assert "reply_ttl_s=0.3s ago" in str(info.value)
    # The message itself is still remembered as processed: a resend does not run again.
    with pytest.raises(NoReply):
        system.ask(ref, Bump(), idempotency_key="k", timeout=0.2)
    assert state_of(system, ref, Tally).count == 1
    system.close()


def test_replies_are_kept_for_300_seconds_by_default(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=[shop])
    ref = shop.ref("default-ttl")
    assert system.ask(ref, Bump(), idempotency_key="k") == 1
    backend: Any = system.backend
    pttl = backend.client.pttl(backend.keys.reply(new_id(ref.key, "k")))
    assert 299_000 < pttl <= 300_000
    system.close()


# -- send(process=...) ------------------------------------------------------------------------


def test_send_with_process_runs_the_turn_before_it_returns(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref, other = shop.ref("now"), shop.ref("other")
    system.send(other, Bump())  # another actor's message is left to a drain
    mid = system.send(ref, Bump(), process=True)
    assert state_of(system, ref, Tally).log == [mid]
    assert system.raw_state(other) is None
    report = system.run_until_idle()
    assert (report.turns, report.messages) == (1, 1)  # only the other actor's
    assert state_of(system, ref, Tally).count == 1
    ids = system.send_many([(ref, Bump()), (other, Bump())], process=0.5)
    assert state_of(system, ref, Tally).log == [mid, ids[0]]
    assert state_of(system, other, Tally).count == 2
    assert system.run_until_idle().messages == 0
    with pytest.raises(InvalidSend, match="must be True, False or seconds > 0"):
        system.send(ref, Bump(), process=-1)


def test_send_with_process_to_an_actor_leased_elsewhere_leaves_it_to_a_drain(
    make_system: MakeSystem, clock: ManualClock
) -> None:
    system = make_system(shop)
    ref = shop.ref("held")
    hold_lease(system, ref, clock, "another-drain")
    mid = system.send(ref, Bump(), process=True)
    assert system.raw_state(ref) is None
    assert system.stats()["mailbox_messages"] == 1
    assert system.run_until_idle().messages == 0  # still held
    clock.advance(system.options.lease_ms / 1000 + 0.001)
    assert system.run_until_idle().messages == 1
    assert system.run_until_idle().messages == 0
    state = state_of(system, ref, Tally)
    assert (state.count, state.log) == (1, [mid])


class Misfit(BaseModel):
    pass


misfit = ActorType("misfit", state=Tally)


@misfit.handler(retry=RetryPolicy(max_attempts=1))
def misfit_quote(ctx: Context[Tally], msg: Misfit) -> Price:
    ctx.state.count += 1
    return {"amount": 1}  # type: ignore[return-value]  # not the Price it declares


def test_a_reply_that_does_not_fit_its_declared_model_fails_the_message(
    make_system: MakeSystem,
) -> None:
    """The handler declares its reply model: a reply that does not validate fails the
    message where it was made (dead letter, state rolled back), not in the asker."""
    system = make_system(misfit)
    ref = misfit.ref("m")
    with pytest.raises(HandlerFailed) as info:
        system.ask(ref, Misfit(), timeout=2.0)
    assert info.value.reason.startswith(
        "not retried (its reply cannot be stored): ReplyInvalid: the reply does not fit the "
        "Price the handler returns"
    )
    assert "'currency'" in info.value.reason
    assert state_of(system, ref, Tally).count == 0
    assert system.dead_letters()[0].reason == info.value.reason


def test_asking_again_for_a_plain_send_that_replied_nothing_answers_at_once(
    make_system: MakeSystem,
) -> None:
    """A send processed without asking, whose handler returned nothing, has no reply: an
    ask with the same idempotency key says so at once instead of waiting out its timeout."""
    system = make_system(shop)
    ref = shop.ref("late-asker")
    mid = system.send(ref, Quiet(), idempotency_key="k")
    system.run_until_idle()
    started = time.monotonic()
    with pytest.raises(NoReply, match="was processed before") as info:
        system.ask(ref, Quiet(), idempotency_key="k", timeout=5.0)
    assert time.monotonic() - started < 2.0
    assert info.value.message_id == mid
    assert state_of(system, ref, Tally).log == ["quiet"]  # not run again
