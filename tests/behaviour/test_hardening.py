"""Nothing a message or a handler does stops the drain; replaced and frozen states commit;
deferred messages keep their order; idle actors leave no keys. On every store."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from actor_system import ActorSystem, ActorType, Context, InvalidSend, ManualClock, Retry
from actor_system.envelope import is_message_id, new_id
from actor_system.testing import settle
from actor_system.worker import Worker

# -- actors of these tests ----------------------------------------------------------------


class Tally(BaseModel):
    total: int = 0
    log: list[str] = Field(default_factory=list)


class Put(BaseModel):
    n: int
    text: str = ""


class CancelBad(BaseModel):
    pass


class RetryFar(BaseModel):
    pass


class Swap(BaseModel):
    n: int


class Wrong(BaseModel):
    pass


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)
    total: int = 0


class Step(BaseModel):
    text: str


class Fail(BaseModel):
    pass


SIDE_EFFECTS: list[str] = []  # what handlers did outside their state, in order

tally = ActorType("tally", state=Tally)
frozen = ActorType("frozen", state=Frozen)


@tally.handler
def put(ctx: Context[Tally], msg: Put) -> None:
    ctx.state.total += msg.n
    if msg.text:
        ctx.state.log.append(msg.text)


@tally.handler
def cancel_bad(ctx: Context[Tally], msg: CancelBad) -> None:
    ctx.cancel("g" * 32)


@tally.handler
def retry_far(ctx: Context[Tally], msg: RetryFar) -> None:
    raise Retry(delay=10**9)


@tally.handler
def step(ctx: Context[Tally], msg: Step) -> None:
    SIDE_EFFECTS.append(msg.text)
    ctx.state.log.append(msg.text)
    ctx.send(ctx.self, Put(n=0, text=f"sent by {msg.text}"))


@tally.handler
def fail(ctx: Context[Tally], msg: Fail) -> None:
    SIDE_EFFECTS.append("fail")
    ctx.state.log.append("fail")
    ctx.send(ctx.self, Put(n=0, text="sent by fail"))
    raise RuntimeError("payment service down")


@frozen.handler
def swap(ctx: Context[Frozen], msg: Swap) -> None:
    ctx.state = ctx.state.model_copy(update={"total": ctx.state.total + msg.n})


@frozen.handler
def wrong(ctx: Context[Frozen], msg: Wrong) -> None:
    ctx.state = Tally(total=1)  # type: ignore[assignment]


def dead_reasons(system: ActorSystem) -> list[str]:
    return [d.reason for d in system.dead_letters()]


# -- 1. nothing a message or a handler does stops the drain ------------------------------


def test_bad_cancel_in_a_handler_dead_letters_that_message_and_the_round_goes_on(
    make_system, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(tally, max_attempts=2)
    system.send(tally.ref("a"), CancelBad())
    system.send(tally.ref("a"), Put(n=1))
    system.send(tally.ref("b"), Put(n=5))
    report = settle(system, clock)
    assert report.dead_letters == 1
    [reason] = dead_reasons(system)
    assert "InvalidSend" in reason
    assert "'gggggggggggggggggggggggggggggggg' is not a message id" in reason
    assert system.state(tally.ref("a")).total == 1
    assert system.state(tally.ref("b")).total == 5


def test_state_that_cannot_be_stored_dead_letters_the_message_that_made_it(
    make_system, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(tally, max_attempts=2)
    ref = tally.ref("big")
    system.send(ref, Put(n=2**64 - 1))
    system.send(ref, Put(n=2**64 - 1))  # the sum no longer fits msgpack's 64 bits
    system.send(ref, Put(n=-5))
    system.send(tally.ref("other"), Put(n=3))
    report = settle(system, clock)
    assert report.dead_letters == 1
    [reason] = dead_reasons(system)
    assert "cannot be stored" in reason
    assert "OverflowError" in reason
    assert system.state(ref).total == 2**64 - 1 - 5
    assert system.state(tally.ref("other")).total == 3


def test_retry_beyond_max_delay_dead_letters_with_the_reason(make_system) -> None:
    system: ActorSystem = make_system(tally)
    system.send(tally.ref("r"), RetryFar())
    system.send(tally.ref("r"), Put(n=1))
    report = system.run_until_idle()
    assert report.dead_letters == 1
    [reason] = dead_reasons(system)
    assert reason.startswith("Retry(delay=1000000000) cannot be honoured: InvalidSend")
    assert "max_delay_s" in reason
    assert system.state(tally.ref("r")).total == 1


def test_a_turn_failing_outside_its_handlers_is_retried_then_dead_lettered(
    make_system, monkeypatch: pytest.MonkeyPatch
) -> None:
    system: ActorSystem = make_system(tally, max_attempts=3)
    runtime = system.runtime
    opened = runtime._open

    def broken_for_x(turn: Any, entry: bytes) -> Any:
        if turn.claim.actor == "tally/x":
            raise RuntimeError("defect outside the handler")
        return opened(turn, entry)

    monkeypatch.setattr(runtime, "_open", broken_for_x)
    system.send(tally.ref("x"), Put(n=1))
    system.send(tally.ref("y"), Put(n=2))
    report = system.run_until_idle()
    assert report.retries == 2
    assert report.dead_letters == 1
    [dead] = system.dead_letters()
    assert dead.actor == "tally/x"
    assert "the turn failed 3 times, last: RuntimeError: defect outside the handler" in (
        dead.reason
    )
    assert system.state(tally.ref("y")).total == 2


def test_a_worker_survives_a_failing_round(make_system, monkeypatch: pytest.MonkeyPatch) -> None:
    system: ActorSystem = make_system(tally)
    real_round = system.runtime.round
    calls = {"n": 0}

    def flaky_round(budget: Any, awake_ms: int = 0) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("defect in the drain loop")
        return real_round(budget, awake_ms)

    monkeypatch.setattr(system.runtime, "round", flaky_round)
    system.send(tally.ref("w"), Put(n=4))
    worker = Worker(system.runtime, exit_when_idle=True)
    worker.run()
    assert calls["n"] >= 2
    assert system.state(tally.ref("w")).total == 4


def test_bad_ids_and_huge_delays_are_invalid_sends(make_system) -> None:
    system: ActorSystem = make_system(tally)
    with pytest.raises(InvalidSend, match="is not a message id"):
        system.cancel("g" * 32)
    with pytest.raises(InvalidSend, match="is not a message id"):
        system.cancel("A" * 32)
    with pytest.raises(InvalidSend, match="exceeds max_delay_s"):
        system.send(tally.ref("a"), Put(n=1), delay=10**400)
    with pytest.raises(InvalidSend, match="exceeds max_delay_s"):
        system.send(tally.ref("a"), Put(n=1), delay=10**9)
    assert system.stats()["mailbox_messages"] == 0


# -- 2. a replaced state is committed; a failure replays nothing -------------------------


def test_a_replaced_frozen_state_is_committed(make_system) -> None:
    system: ActorSystem = make_system(frozen)
    ref = frozen.ref("f")
    for n in (1, 2, 3):
        system.send(ref, Swap(n=n))
    system.run_until_idle()
    system.send(ref, Swap(n=4))
    system.run_until_idle()
    assert system.state(ref) == Frozen(total=10)


def test_a_state_replaced_by_another_type_is_a_handler_failure(make_system) -> None:
    system: ActorSystem = make_system(frozen, max_attempts=1)
    ref = frozen.ref("w")
    system.send(ref, Swap(n=1))
    system.send(ref, Wrong())
    system.send(ref, Swap(n=2))
    system.run_until_idle()
    [reason] = dead_reasons(system)
    assert "ctx.state must be a Frozen" in reason
    assert "left a Tally" in reason
    assert system.state(ref) == Frozen(total=3)


def test_a_failure_does_not_run_the_handlers_before_it_again(
    make_system, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(tally, max_attempts=2)
    ref = tally.ref("p")
    SIDE_EFFECTS.clear()
    system.send_many([(ref, Step(text="c1")), (ref, Step(text="c2")), (ref, Fail())])
    system.send(ref, Step(text="c3"))
    settle(system, clock)
    assert SIDE_EFFECTS == ["c1", "c2", "fail", "fail", "c3"]
    state = system.state(ref)
    # The failed handler's state change and sends were rolled back, the others kept.
    assert state.log == ["c1", "c2", "c3", "sent by c1", "sent by c2", "sent by c3"]


# -- 3. deferred messages keep their order ----------------------------------------------


def test_deferred_messages_due_together_arrive_in_due_then_send_order(
    make_system, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(tally)
    ref = tally.ref("order")
    # Due one second apart, sent in reverse; then 30 sharing one due time, in send order.
    for i in reversed(range(30)):
        system.send(ref, Put(n=0, text=f"m{i:02d}"), delay=i + 1)
    for i in range(30):
        system.send(ref, Put(n=0, text=f"t{i:02d}"), delay=45)
    clock.advance(60)  # a quiet minute: one poll finds all 60 due
    system.run_until_idle()
    log = system.state(ref).log
    assert log == [f"m{i:02d}" for i in range(30)] + [f"t{i:02d}" for i in range(30)]


def test_ids_sort_in_send_order_and_carry_their_target_shard() -> None:
    ids = [new_id("tally/a") for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5000
    assert all(is_message_id(i) for i in ids)
    assert {i[16:20] for i in ids} == {new_id("tally/a")[16:20]}
    keyed = new_id("tally/a", "order-1")
    assert keyed == new_id("tally/a", "order-1") != new_id("tally/b", "order-1")
    assert keyed[16:20] == ids[0][16:20]


# -- 7. keys that never go away ----------------------------------------------------------


def test_idempotency_window_is_per_actor_type(url: str, clock: ManualClock) -> None:
    # The Redis dedup set; S3 state keeps processed ids of its own (tests/integration).
    short = ActorType("short", state=Tally, done_window_s=60)

    @short.handler
    def add(ctx: Context[Tally], msg: Put) -> None:
        ctx.state.total += msg.n

    system = ActorSystem.from_url(url, actors=[short, tally], clock=clock)
    for ref in (short.ref("a"), tally.ref("a")):
        system.send(ref, Put(n=1), idempotency_key="k")
        system.run_until_idle()
    clock.advance(120)
    for ref in (short.ref("a"), tally.ref("a")):
        system.send(ref, Put(n=1), idempotency_key="k")
        system.send(ref, Put(n=10))  # a commit trims the done set to its window
        system.run_until_idle()
        system.send(ref, Put(n=1), idempotency_key="k")
        system.run_until_idle()
    # The short window forgot the key after 60 s (so the second send applied); the system
    # default (24 h) still drops it.
    assert system.state(short.ref("a")).total == 12
    assert system.state(tally.ref("a")).total == 11


def test_the_last_done_max_ids_are_remembered_and_older_ones_go(url: str) -> None:
    # Two generations of at most done_max ids: the last done_max are always among them.
    few = ActorType("few", state=Tally, done_max=3)

    @few.handler
    def add(ctx: Context[Tally], msg: Put) -> None:
        ctx.state.total += msg.n

    system = ActorSystem.from_url(url, actors=[few])
    ref = few.ref("a")
    for k in range(1, 8):
        system.send(ref, Put(n=1), idempotency_key=f"k{k}")
        system.run_until_idle()  # one turn, one commit, per id
    assert system.state(ref).total == 7
    for k in (5, 6, 7):
        system.send(ref, Put(n=100), idempotency_key=f"k{k}")
    system.run_until_idle()
    assert system.state(ref).total == 7  # the last three are remembered
    system.send(ref, Put(n=1000), idempotency_key="k1")
    system.run_until_idle()
    assert system.state(ref).total == 1007  # the first went with its generation
    client, keys = system.backend.client, system.backend.keys
    if hasattr(client, "scard"):
        kept = client.scard(keys.actor(ref.key, "done")) + client.scard(
            keys.actor(ref.key, "doneold")
        )
        assert 3 <= kept <= 6


def test_invalid_dedup_options_of_an_actor_type_are_config_errors() -> None:
    from actor_system import ConfigError

    with pytest.raises(ConfigError, match="done_window_s=0"):
        ActorType("bad", state=Tally, done_window_s=0)
    with pytest.raises(ConfigError, match="done_max=-1"):
        ActorType("bad", state=Tally, done_max=-1)


def test_a_delay_queue_body_with_a_non_hex_id_is_dead_lettered(make_system) -> None:
    import base64
    import json

    system: ActorSystem = make_system(tally)
    good = system.registry.prepare(tally.ref("d"), Put(n=1), now_s=system.clock.now())
    bad_id = "g" * 32
    body = {
        "actor_system": "deferred",
        "id": bad_id,
        "target": "tally/d",
        "due_ms": 0,
        "entry": base64.b64encode(bad_id.encode() + good.entry[32:]).decode(),
    }
    fine = dict(body, id=good.id, entry=base64.b64encode(good.entry).decode())
    landed = system.backend.accept_deferred([json.dumps(body), json.dumps(fine)], 0)
    assert landed == 1
    [dead] = system.dead_letters()
    assert dead.reason == "deferred message lacks a valid id or target"
    system.run_until_idle()
    assert system.state(tally.ref("d")).total == 1


def test_every_commit_keeps_the_actor_types_dedup_window(url: str, clock: ManualClock) -> None:
    import msgpack

    week = ActorType("week", state=Tally, done_window_s=7 * 86400, invalid_state="wait")

    @week.handler
    def add(ctx: Context[Tally], msg: Put) -> None:
        ctx.state.total += msg.n

    system = ActorSystem.from_url(url, actors=[week], clock=clock)
    ref = week.ref("w")
    system.send(ref, Put(n=1), idempotency_key="pay-1")
    system.run_until_idle()
    client, keys = system.backend.client, system.backend.keys
    good = client.hget(keys.actor(ref.key, "state"), "d")
    bad = msgpack.packb({"total": "many", "log": [], "_v": 1})
    client.hset(keys.actor(ref.key, "state"), "d", bad)
    clock.advance(2 * 86400)  # past the system's 24 h default, well inside the type's week
    system.send(ref, Put(n=5))
    system.run_until_idle()  # a turn that only waits (the state is unreadable): KEEP
    client.hset(keys.actor(ref.key, "state"), "d", good)  # a deploy that can read it
    client.zadd(keys.paused(keys.part_of(ref.key)), {ref.key: 0})
    clock.advance(1)  # pollers look at every partition once a poll interval
    system.run_until_idle()
    system.send(ref, Put(n=1), idempotency_key="pay-1")  # a late copy of the payment
    system.run_until_idle()
    assert system.state(ref).total == 6
