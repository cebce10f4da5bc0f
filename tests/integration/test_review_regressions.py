"""Regression tests for the defects a review reproduced (each fixed by the commit "Fixes from
review"): the reply request of a retried message, what a sender's short budget does to other
messages, the awake mark of a Lambda drain that ends on its budget, wakes after a failure,
ask latency on a busy actor, unstorable return values nobody asked for, envelope and S3 object
compatibility, a caller that dies holding a lease, the Lambda margin and Lambda logging.

Redis behaviour runs on the session's real redis-server (``redis_url``: a flushed database);
fakeredis with a ManualClock where only the runtime's logic matters."""

from __future__ import annotations

import io
import logging
import math
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
from pydantic import BaseModel, Field

from actor_system import (
    ActorSystem,
    ActorSystemError,
    ActorType,
    BackendError,
    Budget,
    Context,
    ManualClock,
    NoReply,
    Replied,
    Retry,
    RetryPolicy,
)
from actor_system.adapters.redis import RedisBackend
from actor_system.adapters.s3 import Retained, StateObject
from actor_system.aws_lambda import (
    FIRST_MARGIN_S,
    LambdaOptions,
    configure_lambda_logging,
    make_handler,
)
from actor_system.envelope import FORMAT_VERSION, Envelope, Outgoing, decode, encode, new_id
from actor_system.logs import JsonFormatter
from actor_system.system import arm_wake
from actor_system.testing import LambdaContext, settle
from actor_system.worker import Worker
from tests.waiting import GENEROUS_S, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration


# -- shared pieces ----------------------------------------------------------------------------


class RecordingWaker:
    """A waker (and continuation) that records what it was asked to do; ``fail`` makes
    wake_now raise as a throttled SQS SendMessage would."""

    max_delay_s = 900
    client: Any = None

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.now = 0
        self.at: list[tuple[int, int]] = []
        self.continued: list[int] = []

    def wake_now(self) -> None:
        self.now += 1
        if self.fail:
            raise ActorSystemError("SQS SendMessage failed: ThrottlingException")

    def wake_at(self, due_ms: int, now_ms: int) -> None:
        self.at.append((due_ms, now_ms))

    def continue_now(self, depth: int) -> None:
        self.continued.append(depth)


def redis_of(system: ActorSystem) -> RedisBackend:
    assert isinstance(system.backend, RedisBackend)
    return system.backend


def awake_exists(system: ActorSystem) -> int:
    backend = redis_of(system)
    return int(backend.client.exists(backend.keys.awake))


def now_ms(system: ActorSystem) -> int:
    return int(system.clock.now() * 1000)


@pytest.fixture
def systems() -> Iterator[list[ActorSystem]]:
    """Systems a test builds, closed after it."""
    made: list[ActorSystem] = []
    yield made
    for system in made:
        system.close()


@pytest.fixture
def package_logger() -> Iterator[logging.Logger]:
    """The "actor_system" logger as a fresh process has it (only the package's NullHandler),
    restored after the test: configure_lambda_logging changes it for the whole process."""
    logger = logging.getLogger("actor_system")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = [h for h in saved[0] if isinstance(h, logging.NullHandler)]
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    yield logger
    logger.handlers, _, logger.propagate = saved
    logger.setLevel(saved[1])


class Ping(BaseModel):
    n: int


class Go(BaseModel):
    n: int


class Asked(BaseModel):
    asked: list[str] = Field(default_factory=list)
    got: list[dict[str, Any]] = Field(default_factory=list)


class Counted(BaseModel):
    n: int = 0


# -- r1: a retry through the delay queue keeps its reply request -------------------------------


@pytest.mark.parametrize("how", ["retry_delay", "keep_order_false"])
def test_an_actor_that_asked_gets_its_replied_after_a_retried_copy_succeeds(how: str) -> None:
    svc = ActorType(f"rr-svc-{how}", state=Counted)
    asker = ActorType(f"rr-asker-{how}", state=Asked)
    policy = RetryPolicy(keep_order=False, backoff_s=0.2, jitter=0.0, max_attempts=3)
    attempts: list[int] = []  # outside the state: a failed attempt's changes roll back

    @svc.handler(retry=policy if how == "keep_order_false" else None)
    def ping(ctx: Context[Counted], m: Ping) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            if how == "retry_delay":
                raise Retry(delay=0.2)
            raise RuntimeError("flaky downstream")
        return m.n * 10

    @asker.handler
    def go(ctx: Context[Asked], m: Go) -> None:
        ctx.state.asked.append(ctx.send(svc.ref("a"), Ping(n=m.n), reply_to=ctx.self))

    @asker.handler
    def on_reply(ctx: Context[Asked], r: Replied) -> None:
        ctx.state.got.append(r.model_dump())

    clock = ManualClock()
    system = ActorSystem.from_url("fakeredis://", actors=[svc, asker], clock=clock)
    try:
        system.send(asker.ref("x"), Go(n=4))
        report = settle(system, clock)
        state = system.state(asker.ref("x"))
        assert isinstance(state, Asked)
        [mid] = state.asked
        assert state.got == [{"id": mid, "ok": True, "value": 40, "error": ""}]
        assert attempts == [1, 2]
        assert (report.retries, report.dead_letters) == (1, 0)
        assert system.dead_letters() == []
        # The reply went to the asking actor as a message, not to the reply key of a caller.
        with pytest.raises(NoReply):
            system.reply(mid)
    finally:
        system.close()


def test_an_ask_whose_handler_retries_with_a_delay_and_returns_none_gets_none(
    redis_url: str, systems: list[ActorSystem]
) -> None:
    svc = ActorType("rr-none", state=Counted)
    attempts: list[int] = []

    @svc.handler
    def do(ctx: Context[Counted], m: Ping) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry(delay=0.05)
        ctx.state.n += m.n

    system = ActorSystem.from_url(redis_url, actors=[svc])
    other = ActorSystem.from_url(redis_url, actors=[svc])  # a drain elsewhere
    systems += [system, other]
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            other.run_until_idle()
            stop.wait(0.01)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        assert system.ask(svc.ref("a"), Ping(n=3), timeout=5.0) is None
        elapsed_s = time.monotonic() - started
    finally:
        stop.set()
        thread.join(GENEROUS_S)
    assert elapsed_s < 5.0  # answered by the retried copy's commit, not timed out
    assert attempts == [1, 2]
    assert system.state(svc.ref("a")) == Counted(n=3)
    assert system.dead_letters() == []


# -- r2: a sender's short budget does not burn other messages' attempts ------------------------


class Slow(BaseModel):
    s: float


class Quick(BaseModel):
    pass


class Log(BaseModel):
    log: list[str] = Field(default_factory=list)


def test_processing_in_the_caller_does_not_count_attempts_of_a_slow_message_ahead(
    redis_url: str, systems: list[ActorSystem]
) -> None:
    a = ActorType("rr-slow", state=Log)
    started: list[int] = []
    finished: list[int] = []

    @a.handler
    def slow(ctx: Context[Log], m: Slow) -> None:
        started.append(ctx.attempt)
        time.sleep(m.s)
        finished.append(ctx.attempt)
        ctx.state.log.append("slow")

    @a.handler
    def quick(ctx: Context[Log], m: Quick) -> None:
        ctx.state.log.append("quick")

    system = ActorSystem.from_url(redis_url, actors=[a])
    systems.append(system)
    ref = a.ref("x")
    system.send(ref, Slow(s=0.5))  # a batch job at the head, not processed here
    for _ in range(5):  # five requests with a 0.2 s budget each: each cuts the slow one off
        system.send(ref, Quick(), process=0.2)
    assert system.dead_letters() == []
    assert started == [1] * 5  # each sender ran it, and none counted an attempt
    assert finished == []
    assert system.state(ref) == Log()
    report = system.run_until_idle()
    assert (report.messages, report.retries, report.dead_letters) == (6, 0, 0)
    assert started == [1] * 6
    assert finished == [1]  # the drain ran it as its first attempt
    assert system.state(ref) == Log(log=["slow"] + ["quick"] * 5)
    assert system.dead_letters() == []


# -- r3: a Lambda drain that ends on its budget rests by what Redis says -----------------------


class Work(BaseModel):
    s: float


def worked_actor(name: str) -> ActorType[Counted]:
    a = ActorType(name, state=Counted)

    @a.handler
    def work(ctx: Context[Counted], m: Work) -> None:
        time.sleep(m.s)
        ctx.state.n += 1

    return a


def test_a_drain_that_ends_on_its_budget_leaves_no_awake_mark_and_the_next_send_wakes(
    redis_url: str, systems: list[ActorSystem]
) -> None:
    a = worked_actor("rr-budget")
    waker = RecordingWaker()
    system = ActorSystem.from_url(redis_url, actors=[a], waker=waker)
    systems.append(system)
    ref = a.ref("x")
    system.send(ref, Work(s=0.3))
    assert waker.now == 1
    assert awake_exists(system) == 1  # the wake's claim
    # A 1 s Lambda budget: after a 0.3 s handler no turn fits (0.25 s margin + 2 x 0.3 s), so
    # the loop ends on its budget, not through the idle exit.
    budget = Budget.seconds(1.0, margin_s=0.25)
    worker = Worker(system.runtime, budget=budget, exit_when_idle=True)
    report = worker.run()
    assert report.messages == 1
    assert system.state(ref) == Counted(n=1)
    assert worker.idle_at_exit is True  # nothing ready, by what Redis says
    assert awake_exists(system) == 0  # senders know that no drain runs
    system.send(ref, Work(s=0.0))
    assert waker.now == 2  # exactly one more wake, for the new work
    assert awake_exists(system) == 1


def test_a_drain_that_ends_on_its_budget_with_work_left_keeps_its_mark_only_for_the_budget(
    redis_url: str, systems: list[ActorSystem]
) -> None:
    a = worked_actor("rr-left")
    waker = RecordingWaker()
    system = ActorSystem.from_url(redis_url, actors=[a], waker=waker)
    systems.append(system)
    ref = a.ref("x")
    system.send_many([(ref, Work(s=0.3)), (ref, Work(s=0.3))])
    assert waker.now == 1
    worker = Worker(system.runtime, budget=Budget.seconds(1.0, margin_s=0.25), exit_when_idle=True)
    report = worker.run()
    assert report.messages == 1  # the second did not fit the budget
    assert worker.idle_at_exit is False  # work left: the Lambda hands over
    backend = redis_of(system)
    # The last poll marked a drain as running for at most what was left of the budget (1 s),
    # not for 30 s: past it, senders wake a drain again.
    assert backend.client.pttl(backend.keys.awake) <= 1_000
    assert system.state(ref) == Counted(n=1)


# -- r4: a failure while processing in the caller still wakes; a failed wake drops its claim --


class Tick(BaseModel):
    pass


def ticked_actor(name: str) -> ActorType[Counted]:
    a = ActorType(name, state=Counted)

    @a.handler
    def tick(ctx: Context[Counted], m: Tick) -> None:
        ctx.state.n += 1

    return a


def test_a_failure_while_processing_in_the_caller_still_wakes_a_drain(
    redis_url: str, systems: list[ActorSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = ticked_actor("rr-fail")
    waker = RecordingWaker()
    system = ActorSystem.from_url(redis_url, actors=[a], waker=waker)
    systems.append(system)

    def failing_run_actor(*args: Any) -> Any:
        raise BackendError("S3 GetObject failed: SlowDown")

    monkeypatch.setattr(system.runtime, "run_actor", failing_run_actor)
    with pytest.raises(BackendError, match="S3 GetObject failed: SlowDown"):
        system.send(a.ref("x"), Tick(), process=True)
    assert waker.now == 1  # the stored message gets a drain
    assert awake_exists(system) == 1
    backend = redis_of(system)
    ready = backend.keys.ready(backend.keys.part_of("rr-fail/x"))
    assert backend.client.zrange(ready, 0, -1) == [b"rr-fail/x"]
    monkeypatch.undo()
    assert system.run_until_idle().messages == 1
    assert system.state(a.ref("x")) == Counted(n=1)


def test_a_wake_that_cannot_be_sent_drops_its_claim_so_the_next_send_tries_again(
    redis_url: str, systems: list[ActorSystem]
) -> None:
    a = ticked_actor("rr-wakefail")
    waker = RecordingWaker(fail=True)
    system = ActorSystem.from_url(redis_url, actors=[a], waker=waker)
    systems.append(system)
    system.send(a.ref("x"), Tick())  # stored; the failed wake is logged, not raised
    assert waker.now == 1
    assert awake_exists(system) == 0
    system.send(a.ref("y"), Tick())
    assert waker.now == 2


# -- r5: ask on a busy actor returns once its own message is committed -------------------------


class Inc(BaseModel):
    pass


class Get(BaseModel):
    pass


def test_an_ask_on_a_busy_actor_returns_after_its_own_commit_not_its_timeout(
    redis_url: str, systems: list[ActorSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = ActorType("rr-busy", state=Counted)

    @a.handler
    def inc(ctx: Context[Counted], m: Inc) -> None:
        time.sleep(0.01)
        ctx.state.n += 1

    @a.handler
    def get(ctx: Context[Counted], m: Get) -> int:
        return ctx.state.n

    system = ActorSystem.from_url(redis_url, actors=[a], batch=20)
    feeder_system = ActorSystem.from_url(redis_url, actors=[a])  # another sender
    systems += [system, feeder_system]
    ref = a.ref("x")
    feeder_system.send_many([(ref, Inc())] * 10)  # ahead of the ask
    asked = threading.Event()
    fed = threading.Event()
    stop = threading.Event()

    def feed() -> None:
        """Keeps the actor busy behind the ask: 20 slow-ish messages every 20 ms, ten times
        what it can process."""
        asked.wait(GENEROUS_S)
        sent = 0
        while not stop.is_set():
            feeder_system.send_many([(ref, Inc())] * 20)
            sent += 20
            if sent >= 100:
                fed.set()
            stop.wait(0.02)

    real_run_actor = system.runtime.run_actor

    def run_actor_once_fed(*args: Any) -> Any:
        # The ask's message is in the mailbox: the other sender piles work behind it first.
        asked.set()
        assert fed.wait(GENEROUS_S)
        return real_run_actor(*args)

    monkeypatch.setattr(system.runtime, "run_actor", run_actor_once_fed)
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        value = system.ask(ref, Get(), timeout=4.0)
        elapsed_s = time.monotonic() - started
        state = system.state(ref)
    finally:
        stop.set()
        thread.join(GENEROUS_S)
    assert value == 10  # the ten sent before it
    assert elapsed_s < 2.0, f"the ask took {elapsed_s:.2f}s of its 4 s timeout"
    # One turn of batch=20 ran in the caller: the ten ahead, the ask and nine behind it.
    assert state == Counted(n=19)


# -- r6: an unstorable return value nobody asked for does not fail the message ----------------


class Weird(BaseModel):
    kind: str


@pytest.mark.parametrize("kind", ["obj", "nan", "big"])
def test_a_plain_send_whose_handler_returns_an_unstorable_value_is_processed_once(
    kind: str, caplog: pytest.LogCaptureFixture, package_logger: logging.Logger
) -> None:
    a = ActorType(f"rr-weird-{kind}", state=Counted)
    effects: list[int] = []

    @a.handler
    def weird(ctx: Context[Counted], msg: Weird) -> Any:
        effects.append(ctx.attempt)  # an external side effect
        ctx.state.n += 1
        if msg.kind == "obj":
            return object()  # e.g. a client's response object
        if msg.kind == "nan":
            return math.nan
        return "x" * 300_000  # over max_message_bytes (256 KiB)

    clock = ManualClock()
    system = ActorSystem.from_url("fakeredis://", actors=[a], clock=clock)
    try:
        ref = a.ref("w")
        with caplog.at_level(logging.WARNING, logger="actor_system"):
            mid = system.send(ref, Weird(kind=kind))
            report = settle(system, clock)
        assert (report.messages, report.retries, report.dead_letters) == (1, 0, 0)
        assert effects == [1]
        assert system.state(ref) == Counted(n=1)  # committed
        assert system.dead_letters() == []
        with pytest.raises(NoReply):
            system.reply(mid)  # only the reply is not kept
        # Nobody asked: the value is not even encoded, so nothing is said about it.
        assert not [r for r in caplog.records if "reply" in r.getMessage()]
    finally:
        system.close()


# -- r7/r8: envelope and S3 object compatibility -----------------------------------------------


def test_an_envelope_with_more_fields_than_known_decodes_and_ignores_them() -> None:
    mid = new_id("a/x")
    fields = [FORMAT_VERSION, "a/x", "M", {"k": 1}, 2, 1234, None, "asker/1", {"later": True}]
    env = decode(mid.encode() + msgpack.packb(fields, use_bin_type=True))
    assert env == Envelope(mid, "a/x", "M", {"k": 1}, 2, 1234, None, "asker/1")


def test_an_old_seven_field_envelope_decodes_without_a_reply_request() -> None:
    mid = new_id("a/x")
    fields = [FORMAT_VERSION, "a/x", "M", {}, 1, 0, None]
    raw = mid.encode() + msgpack.packb(fields, use_bin_type=True)
    env = decode(raw)
    assert env == Envelope(mid, "a/x", "M", {}, 1, 0, None, None)
    assert env.reply is None
    assert encode(env) == raw  # a message nobody asked about is written as before


def test_a_queued_entry_with_a_later_formats_extra_field_is_run_and_answered(
    systems: list[ActorSystem],
) -> None:
    a = ActorType("rr-future", state=Counted)

    @a.handler
    def ping(ctx: Context[Counted], m: Ping) -> int:
        ctx.state.n += m.n
        return ctx.state.n

    system = ActorSystem.from_url("fakeredis://", actors=[a], clock=ManualClock())
    systems.append(system)
    target = a.ref("x").key
    mid = new_id(target)
    fields = [FORMAT_VERSION, target, "Ping", {"n": 7}, 1, 0, None, "", "a ninth field"]
    entry = mid.encode() + msgpack.packb(fields, use_bin_type=True)
    assert system.backend.push([Outgoing(mid, target, entry, None)], now_ms(system))[0] == 1
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters) == (1, 0)
    assert system.state(a.ref("x")) == Counted(n=7)
    assert system.reply(mid) == 7


REPLY_ID = "ab" * 16


def test_an_s3_state_object_without_replies_decodes_with_none() -> None:
    # As a deploy that predates replies writes it: no "replies" key.
    raw = msgpack.packb(
        {
            "f": 2,
            "version": 1,
            "state": b"s",
            "done": [bytes.fromhex(REPLY_ID)],
            "commits": [[1, 5, 1, [], []]],
        },
        use_bin_type=True,
    )
    obj = StateObject.decode(raw, "etag", "s3://b/k", 0)
    assert obj == StateObject(b"s", 1, [Retained(1, 5, [REPLY_ID], [], [], [])], "etag")
    assert obj.commits[0].replies == []


def test_an_s3_state_object_with_replies_round_trips_and_old_readers_see_their_rows() -> None:
    record = b'{"ok": true, "value": 1}'
    obj = StateObject(b"st", 3, [Retained(3, 1000, [REPLY_ID], [], [], [(REPLY_ID, record)])])
    raw = obj.encode()
    back = StateObject.decode(raw, "etag", "s3://b/k", 0)
    assert back == StateObject(
        b"st", 3, [Retained(3, 1000, [REPLY_ID], [], [], [(REPLY_ID, record)])], "etag"
    )
    # Replies sit beside the commit rows: a reader that predates them unpacks rows of five.
    m = msgpack.unpackb(raw, raw=False)
    assert m["commits"] == [[3, 1000, 1, [], []]]
    assert m["replies"] == {"3": [[REPLY_ID, record]]}


# -- r9: the hand-over arms a wake at a dead caller's lease expiry -----------------------------


def test_the_hand_over_arms_a_wake_at_the_lease_expiry_of_a_caller_that_died(
    redis_url: str, systems: list[ActorSystem]
) -> None:
    a = ticked_actor("rr-dead")
    waker = RecordingWaker()
    lease_ms = 2_000
    system = ActorSystem.from_url(redis_url, actors=[a], waker=waker, lease_ms=lease_ms)
    systems.append(system)
    ref = a.ref("x")
    start_ms = now_ms(system)
    item = system.registry.prepare(ref, Tick(), now_s=start_ms / 1000)
    # The caller pushes (no wake: it processes itself), takes the lease, then dies.
    assert system.backend.push([item], start_ms, 0) == (1, False)
    [claim] = system.backend.begin([ref.key], "dead-token", lease_ms, 100, start_ms)
    assert claim is not None
    assert len(claim.entries) == 1
    expiry_ms = start_ms + lease_ms
    assert system.backend.lease_expiry_ms() == expiry_ms
    assert system.backend.next_due_ms() is None  # nothing else would arm a wake
    arm_wake(system.backend, waker, start_ms)
    assert waker.at == [(expiry_ms, start_ms)]
    assert waker.now == 0


def test_a_lambda_drain_at_rest_arms_a_wake_that_recovers_a_dead_callers_message(
    redis_url: str, systems: list[ActorSystem], package_logger: logging.Logger
) -> None:
    a = ticked_actor("rr-dead-drain")
    waker = RecordingWaker()
    lease_ms = 2_000
    system = ActorSystem.from_url(redis_url, actors=[a], waker=waker, lease_ms=lease_ms)
    systems.append(system)
    ref = a.ref("x")
    start_ms = now_ms(system)
    item = system.registry.prepare(ref, Tick(), now_s=start_ms / 1000)
    system.backend.push([item], start_ms, 0)
    assert system.backend.begin([ref.key], "dead-token", lease_ms, 100, start_ms)[0] is not None
    expiry_ms = start_ms + lease_ms
    # A drain runs meanwhile (woken for other work, or the sweep): nothing is ready.
    handler = make_handler(system, LambdaOptions(waker=waker, continuation=waker))
    result = handler({"actor_system": "wake"}, LambdaContext(time.time() + 3, "req", "drain"))
    assert result == {"turns": 0, "messages": 0, "dead_letters": 0, "interrupted": 0, "moved": 0}
    assert [due for due, _ in waker.at] == [expiry_ms]
    assert (waker.now, waker.continued) == (0, [])
    assert awake_exists(system) == 0
    # The armed wake's drain, at the expiry, recovers the message.
    wait_until(lambda: now_ms(system) >= expiry_ms, what="the lease to expire")
    report = system.run_until_idle()
    assert report.messages == 1
    assert system.state(ref) == Counted(n=1)


# -- LambdaOptions.margin ----------------------------------------------------------------------


def test_the_lambda_margin_is_capped_at_a_quarter_of_the_invocation() -> None:
    options = LambdaOptions(margin_s=0.25)
    assert FIRST_MARGIN_S == 0.4
    assert options.margin() == pytest.approx(0.4)  # before any measurement
    assert options.margin(remaining_s=10) == pytest.approx(0.4)
    options.measured(5.2)  # one slow end: a Redis stall
    assert options.margin(remaining_s=10) == pytest.approx(2.5)
    assert options.margin(remaining_s=100) == pytest.approx(10.4)
    # The floor applies below the quarter.
    assert options.margin(remaining_s=0.4) == pytest.approx(0.25)
    quick = LambdaOptions(margin_s=0.25)
    quick.measured(0.01)
    assert quick.margin(remaining_s=10) == pytest.approx(0.25)
    # Sized from the last five ends: the stall is forgotten after five ordinary ones.
    for _ in range(5):
        options.measured(0.3)
    assert options.margin(remaining_s=100) == pytest.approx(0.6)


# -- configure_lambda_logging ------------------------------------------------------------------


def test_lambdas_trace_level_sets_debug(package_logger: logging.Logger) -> None:
    assert configure_lambda_logging({"AWS_LAMBDA_LOG_LEVEL": "TRACE"}) is True
    assert package_logger.level == logging.DEBUG
    assert package_logger.propagate is False
    [handler] = [h for h in package_logger.handlers if not isinstance(h, logging.NullHandler)]
    assert isinstance(handler.formatter, JsonFormatter)


def test_a_bad_log_level_keeps_the_text_format_and_warns_naming_it(
    package_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)  # where the configured handler writes
    env = {"ACTOR_SYSTEM_LOG_FORMAT": "text", "ACTOR_SYSTEM_LOG_LEVEL": "LOUD"}
    assert configure_lambda_logging(env) is True
    [handler] = [h for h in package_logger.handlers if not isinstance(h, logging.NullHandler)]
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is stderr
    assert handler.formatter is not None
    assert not isinstance(handler.formatter, JsonFormatter)
    assert package_logger.level == logging.INFO
    [line] = stderr.getvalue().splitlines()
    assert " WARNING actor_system log level 'LOUD' is not one of " in line
    assert line.endswith("; using INFO")


def test_a_logger_that_already_has_a_handler_is_left_alone(
    package_logger: logging.Logger,
) -> None:
    own = logging.StreamHandler(io.StringIO())
    package_logger.addHandler(own)
    package_logger.setLevel(logging.ERROR)
    before = list(package_logger.handlers)
    env = {"AWS_LAMBDA_LOG_LEVEL": "TRACE", "ACTOR_SYSTEM_LOG_FORMAT": "text"}
    assert configure_lambda_logging(env) is False
    assert package_logger.handlers == before
    assert package_logger.level == logging.ERROR
    assert package_logger.propagate is True
