"""The AWS adapters against moto's HTTP server: S3 races and crashes, SQS hops and copies,
Scheduler schedules, and errors that name what failed.

What moto does not enforce as AWS does is said where a test depends on it: moto checks
``If-Match`` / ``If-None-Match`` on PutObject but not atomically between two requests in
flight (the races below are interleaved, not simultaneous, and the atomic check is S3's
part); it honours ``DelaySeconds`` in real time (tested below with short hops); it never
fires schedules (``tests/aws.py`` fires them as the service would).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import msgpack
import pytest
from pydantic import BaseModel

from actor_system import ActorSystem, ActorType, Context, ManualClock
from actor_system.adapters.aws import AwsError, aws_call, aws_client
from actor_system.adapters.composite import CompositeBackend
from actor_system.adapters.delay import SchedulerDelayQueue, encode_body
from actor_system.adapters.redis.backend import RedisBackend
from actor_system.adapters.s3 import S3StateStore, WriteConflict
from actor_system.budget import Budget
from actor_system.errors import BackendError
from tests.actors import Add, Note, Plan, actors, counter, logger, probe
from tests.aws import ROLE, AwsResources
from tests.integration.workers import start_worker
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


class Relay(BaseModel):
    n: int
    to: str


class RelayState(BaseModel):
    relayed: int = 0


relay = ActorType("relay", state=RelayState)


@relay.handler
def forward(ctx: Context[RelayState], msg: Relay) -> None:
    ctx.state.relayed += msg.n
    ctx.send(counter.ref(msg.to), Add(n=msg.n))


def s3_system(redis_url: str, aws: AwsResources, clock: ManualClock, **options: Any) -> Any:
    return ActorSystem.from_url(
        redis_url,
        actors=[counter, relay],
        state=f"s3://{aws.bucket}/actors",
        clock=clock,
        **options,
    )


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every conditional PUT's outcome: 'ok' or 'conflict'."""
    outcomes: list[str] = []
    write = S3StateStore.write

    def counted(self: S3StateStore, actor: str, obj: Any, etag: str | None) -> str:
        try:
            tag = write(self, actor, obj, etag)
        except WriteConflict:
            outcomes.append("conflict")
            raise
        outcomes.append("ok")
        return tag

    monkeypatch.setattr(S3StateStore, "write", counted)
    return outcomes


# -- S3 state -------------------------------------------------------------------------------


def test_state_object_is_readable_msgpack_under_the_prefix(redis_url: str, aws: Any) -> None:
    clock = ManualClock()
    system = s3_system(redis_url, aws, clock)
    ref = counter.ref("alice")
    ids = [system.send(ref, Add(n=n)) for n in (1, 2, 3)]
    system.run_until_idle()
    raw = boto3.client("s3").get_object(Bucket=aws.bucket, Key="actors/counter/alice")
    obj = msgpack.unpackb(raw["Body"].read(), raw=False)
    assert obj["version"] == 1  # one batch, one PUT
    assert msgpack.unpackb(obj["state"])["count"] == 6
    assert [bytes(i).hex() for i in obj["done"]] == ids
    assert system.state(ref).count == 6


@pytest.mark.parametrize("first", [True, False], ids=["first-write", "later-write"])
def test_two_holders_racing_exactly_one_commit_wins(
    redis_url: str, aws: Any, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    clock = ManualClock()
    a = s3_system(redis_url, aws, clock, lease_ms=1_000)
    b = s3_system(redis_url, aws, clock, lease_ms=1_000)
    ref = counter.ref("raced")
    if not first:  # the object exists: both writers use If-Match with the same ETag
        a.send(ref, Add(n=100))
        a.run_until_idle()
    for n in (1, 2):
        a.send(ref, Add(n=n))
    outcomes = record_writes(monkeypatch)

    # A claims the batch and reads the object, then stalls past its lease; B recovers the
    # actor, claims the same batch and reads the same object.
    now = int(clock.now() * 1000)
    assert a.backend.poll(now, 16, 1_000)[0] == [ref.key]
    (claim_a,) = a.backend.begin([ref.key], "token-a", 1_000, 100, now)
    clock.advance(2)
    now = int(clock.now() * 1000)
    assert b.backend.poll(now, 16, 1_000)[0] == [ref.key]
    (claim_b,) = b.backend.begin([ref.key], "token-b", 1_000, 100, now)
    assert claim_a is not None
    assert claim_b is not None
    assert [e for e, _ in claim_a.entries] == [e for e, _ in claim_b.entries]
    assert len(claim_b.entries) == 2
    assert claim_b.recovered == 2
    budget = Budget.unlimited(clock)
    turn_a = a.runtime._turn(claim_a, "token-a", time.monotonic(), budget)
    turn_b = b.runtime._turn(claim_b, "token-b", time.monotonic(), budget)

    # The stale holder writes S3 first (its lease is gone, so Redis refuses its commit);
    # B's conditional PUT then fails and B gives its batch back.
    assert a.backend.commit([turn_a[0]], now) == [None]
    assert b.backend.commit([turn_b[0]], now) == [None]
    assert outcomes == ["ok", "conflict"]

    # The batch is redelivered; the object lists both ids as processed by A's commit.
    report = b.run_until_idle()
    assert report.duplicates == 2
    assert report.messages == 0
    expected = 3 if first else 103
    assert b.state(ref).count == expected
    assert len(b.state(ref).seen) == len(set(b.state(ref).seen))
    b.send(ref, Add(n=10))
    b.run_until_idle()
    assert b.state(ref).count == expected + 10
    assert outcomes[-1] == "ok"


def test_crash_between_s3_put_and_redis_commit_applies_nothing_twice(
    redis_url: str, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    system = s3_system(redis_url, aws, clock, lease_ms=1_000)
    ids = [system.send(relay.ref("r"), Relay(n=n, to="dest")) for n in (1, 2, 3)]
    calls: list[int] = []
    redis_commit = RedisBackend.commit

    def die_after_s3(self: RedisBackend, commits: Any, now_ms: int) -> Any:
        calls.append(len(commits))
        if len(calls) == 1:  # the process dies here: S3 has the state, Redis has nothing
            raise SystemExit("killed between the S3 PUT and the Redis commit")
        return redis_commit(self, commits, now_ms)

    monkeypatch.setattr(RedisBackend, "commit", die_after_s3)
    with pytest.raises(SystemExit):
        system.run_until_idle()
    obj = S3StateStore(bucket=aws.bucket, prefix="actors").read("relay/r")
    assert obj.version == 1
    assert obj.done == ids
    assert len(obj.outbox) == 3

    clock.advance(2)  # the dead holder's lease expires
    fresh = s3_system(redis_url, aws, clock)
    report = fresh.run_until_idle()
    assert report.recovered == 3
    assert report.duplicates == 3
    assert fresh.state(relay.ref("r")).relayed == 6  # not 12
    assert fresh.state(counter.ref("dest")).count == 6  # the stored outbox, delivered once
    assert len(fresh.state(counter.ref("dest")).seen) == 3
    assert fresh.backend.dead_letter_count() == 0
    # Later turns carry on from the acknowledged version.
    fresh.send(relay.ref("r"), Relay(n=10, to="dest"))
    fresh.run_until_idle()
    assert fresh.state(counter.ref("dest")).count == 16


@pytest.mark.slow
def test_sigkilled_workers_with_s3_state_lose_nothing(redis_url: str, aws: Any) -> None:
    import random

    rng = random.Random(11)
    state_url = f"s3://{aws.bucket}/crash"
    system = ActorSystem.from_url(redis_url, actors=actors, state=state_url, lease_ms=500)
    refs = [counter.ref(f"k{i}") for i in range(10)]
    system.send_many([(r, Add(n=1, work_ms=25)) for _ in range(40) for r in refs])
    env_url = {"ACTOR_SYSTEM_STATE_URL": state_url}
    kills = 0

    def total() -> int:
        return sum(system.state(r).count for r in refs)

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_url.items():
            mp.setenv(k, v)
        while kills < 6:
            before = total()
            worker = start_worker(redis_url, "--lease-ms", "500", "--batch", "5")
            # Killed mid-run, not before it started: a cold start takes seconds on a busy
            # machine.
            wait_until(
                lambda b=before, w=worker: total() > b or w.poll() is not None, what="a commit"
            )
            time.sleep(rng.uniform(0.0, 0.5))
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=10)
            kills += 1

    mid_run = total()
    deadline = time.monotonic() + 60
    while total() < 400 and time.monotonic() < deadline:
        system.run_until_idle()
        time.sleep(0.1)
    print(f"kills={kills} processed_before_final_drain={mid_run} total={total()}")
    assert 0 < mid_run < 400
    for ref in refs:
        state = system.state(ref)
        assert state.count == 40, ref
        assert len(set(state.seen)) == 40, ref


def test_corrupt_state_object_dead_letters_with_the_reason(redis_url: str, aws: Any) -> None:
    clock = ManualClock()
    system = s3_system(redis_url, aws, clock)
    boto3.client("s3").put_object(Bucket=aws.bucket, Key="actors/counter/bad", Body=b"\x93junk")
    system.send(counter.ref("bad"), Add(n=1))
    system.send(counter.ref("good"), Add(n=1))
    system.run_until_idle()
    (dead,) = system.dead_letters()
    assert dead.actor == "counter/bad"
    assert "corrupt" in dead.reason
    assert system.state(counter.ref("good")).count == 1


def test_a_state_object_that_unpacks_but_is_not_one_never_runs_a_handler(
    redis_url: str, aws: Any
) -> None:
    """An object that is a msgpack map but not a state object (its commits do not account
    for its ids) must not read as an actor with default state: the message is dead-lettered
    with the reason, and nothing is written."""
    clock = ManualClock()
    system = s3_system(redis_url, aws, clock)
    body = msgpack.packb(
        {"f": 2, "state": b"", "version": 3, "done": [b"\x01" * 16], "commits": []}
    )
    s3 = boto3.client("s3")
    s3.put_object(Bucket=aws.bucket, Key="actors/counter/odd", Body=body)
    system.send(counter.ref("odd"), Add(n=1))
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters) == (0, 1)
    (dead,) = system.dead_letters()
    assert "S3 object" in dead.reason
    assert "is not a valid state object: 1 ids, the commits account for 0" in dead.reason
    assert s3.get_object(Bucket=aws.bucket, Key="actors/counter/odd")["Body"].read() == body


def test_a_state_object_of_a_newer_format_makes_its_messages_wait(redis_url: str, aws: Any) -> None:
    """A rolling deploy: an object written in a format newer than this deploy's is left
    alone and its messages wait, neither run on default state nor dead-lettered; a deploy
    that reads it (here: the object written in the known format) runs them."""
    clock = ManualClock()
    system = s3_system(redis_url, aws, clock)
    s3 = boto3.client("s3")
    newer = msgpack.packb({"f": 99, "state": b"", "version": 7})
    s3.put_object(Bucket=aws.bucket, Key="actors/counter/later", Body=newer)
    system.send(counter.ref("later"), Add(n=2))
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters) == (0, 0)
    assert system.dead_letters() == []
    assert s3.get_object(Bucket=aws.bucket, Key="actors/counter/later")["Body"].read() == newer
    s3.delete_object(Bucket=aws.bucket, Key="actors/counter/later")  # readable again
    clock.advance(60)  # past the wait
    assert system.run_until_idle().messages == 1
    assert system.state(counter.ref("later")).count == 2


def test_missing_bucket_is_a_clear_error_and_the_batch_waits(redis_url: str, aws: Any) -> None:
    clock = ManualClock()
    system = ActorSystem.from_url(
        redis_url, actors=[counter], state="s3://no-such-bucket/p", clock=clock
    )
    system.send(counter.ref("a"), Add(n=1))
    with pytest.raises(AwsError, match=r"GetObject on s3://no-such-bucket/p/counter/a failed: "
                       r"NoSuchBucket.*bucket does not exist") as info:  # fmt: skip
        system.run_until_idle()
    assert isinstance(info.value, BackendError)
    with pytest.raises(AwsError, match=r"HeadBucket on s3://no-such-bucket failed: 404.*does not"):
        system.backend.check()
    assert system.stats()["mailbox_messages"] == 1  # given back at once, not lost
    assert system.stats()["leases_held"] == 0


# -- SQS delay queue ------------------------------------------------------------------------


def sqs_system(redis_url: str, aws: AwsResources, clock: Any, query: str) -> Any:
    return ActorSystem.from_url(
        redis_url, actors=actors, delay=f"sqs://{aws.queue}?{query}", clock=clock
    )


def test_twenty_minute_delay_hops_and_is_never_early(redis_url: str, aws: Any) -> None:
    clock = ManualClock()
    system = sqs_system(redis_url, aws, clock, "receive_every=0")  # near = 60 s
    aws.warp(system.backend.delay.client)
    ref = logger.ref("far")
    system.send(ref, Note(text="twenty minutes"), delay=1200)
    stats = system.stats()
    assert stats["pending_deferred"] == 0  # nothing kept in Redis
    assert stats["deferred_elsewhere"] == 1
    assert stats["deferred_store"] == f"sqs queue {aws.queue}"
    assert aws.delays == [900]
    clock.advance(900)
    system.run_until_idle()  # received before its due time: sent again with the remainder
    assert aws.delays == [900, 270]  # the last hop ends near / 2 = 30 s early
    clock.advance(270)
    system.run_until_idle()  # within `near`: waits in the sorted set for its exact time
    assert system.state(ref).log == []
    clock.advance(29.999)
    system.run_until_idle()
    assert system.state(ref).log == []
    assert [d.actor for d in system.deferred()] == [ref.key]
    clock.advance(0.001)
    assert system.run_until_idle().messages == 1
    assert system.state(ref).log == ["twenty minutes"]
    assert aws.delays == [900, 270]
    assert system.backend.delay.pending() == 0


@pytest.mark.slow
def test_real_sqs_delay_hops_deliver_on_time(redis_url: str, aws: Any) -> None:
    """Real time: moto keeps each hop invisible for its DelaySeconds (1 s here); the last
    one ends within `near` (2 s), and the sorted set delivers on the millisecond."""
    system = ActorSystem.from_url(
        redis_url,
        actors=actors,
        delay=f"sqs://{aws.queue}?near=2&max_hop=1&receive_every=0.05",
        poll_interval_s=0.05,
    )
    hops: list[int] = []
    system.backend.delay.client.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch",
        lambda params, **_: hops.extend(e["DelaySeconds"] for e in params["Entries"]),
    )
    ref = probe.ref("p")
    system.send(ref, Plan(delays=[4.2]))
    worker = system.worker()
    stopper = threading.Timer(60, worker.stop)
    stopper.start()
    deadline = time.monotonic() + 60
    thread = threading.Thread(target=worker.run)
    thread.start()
    while not system.state(ref).deliveries and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    thread.join(10)
    stopper.cancel()
    ((due, delivered),) = system.state(ref).deliveries
    print(f"hops={hops} late_ms={(delivered - due) * 1000:.0f}")
    assert delivered >= due  # never early
    assert delivered - due < 1.0  # from the sorted set, not at SQS's next second
    assert hops[:2] == [1, 1]  # 4.2 s in hops of 1 s, until 2 s or less are left


def test_sqs_copies_and_cancel_and_bad_bodies(redis_url: str, aws: Any) -> None:
    clock = ManualClock()
    system = sqs_system(redis_url, aws, clock, "near=0&receive_every=0")
    aws.warp(system.backend.delay.client)
    sqs = boto3.client("sqs")
    ref = counter.ref("c")
    kept = system.send(ref, Add(n=1), delay=30)
    gone = system.send(ref, Add(n=100), delay=30)
    assert system.cancel(gone) is True
    # SQS delivers at least once: a second copy of the kept message, and bodies not ours.
    body = next(b for b in _bodies(sqs, aws.queue_url) if kept in b)
    sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)
    sqs.send_message(QueueUrl=aws.queue_url, MessageBody="not json")
    sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"actor_system": "wake"}))
    clock.advance(30)
    system.run_until_idle()
    assert system.state(ref).count == 1
    assert system.cancel(kept) is False  # landed already
    sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)  # a late copy
    clock.advance(1)
    assert system.run_until_idle().messages == 0
    assert system.state(ref).count == 1
    (dead,) = system.dead_letters()
    assert "not JSON" in dead.reason
    assert dead.entry == b"not json"
    assert _bodies(sqs, aws.queue_url) == []  # everything received was deleted


def _bodies(sqs: Any, url: str) -> list[str]:
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    return [m["Body"] for m in got.get("Messages", [])]


def test_retry_delay_through_sqs_reuses_the_id_and_is_not_dropped(redis_url: str, aws: Any) -> None:
    from tests.actors import Later

    clock = ManualClock()
    system = sqs_system(redis_url, aws, clock, "near=0&receive_every=0")
    aws.warp(system.backend.delay.client)
    ref = logger.ref("l")
    system.send(ref, Later(delay=20), delay=10)
    clock.advance(10)
    system.run_until_idle()  # attempt 1 raises Retry(delay=20): out to SQS again, same id
    assert system.state(ref).log == []
    clock.advance(20)
    system.run_until_idle()
    assert system.state(ref).log == ["later attempt 2"]


# -- EventBridge Scheduler delay queue ------------------------------------------------------


def scheduler_system(redis_url: str, aws: AwsResources, clock: ManualClock) -> Any:
    url = (
        f"scheduler://{aws.group}?target={aws.queue_arn}&role={ROLE}&queue={aws.queue}"
        "&receive_every=0"
    )
    return ActorSystem.from_url(redis_url, actors=actors, delay=url, clock=clock)


def test_scheduler_schedule_expression_target_cancel_and_resend(redis_url: str, aws: Any) -> None:
    clock = ManualClock()  # 2026-01-01T00:00:00Z
    system = scheduler_system(redis_url, aws, clock)
    ref = counter.ref("s")
    mid = system.send(ref, Add(n=1), delay=3600.2, idempotency_key="hourly")
    system.send(ref, Add(n=1), delay=3600.2, idempotency_key="hourly")  # the same schedule
    near = system.send(ref, Add(n=5), delay=60)  # within 15 minutes: the sorted set
    (schedule,) = aws.schedules()
    assert schedule["Name"] == SchedulerDelayQueue.schedule_name(mid)
    assert schedule["ScheduleExpression"] == "at(2026-01-01T01:00:01)"  # rounded up
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["ActionAfterCompletion"] == "DELETE"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Target"]["Arn"] == aws.queue_arn
    assert schedule["Target"]["RoleArn"] == ROLE
    assert json.loads(schedule["Target"]["Input"])["id"] == mid
    assert [d.id for d in system.deferred()] == [near]

    assert system.cancel(mid) is True
    assert aws.schedules() == []
    assert system.cancel(mid) is True  # the same answer when retried (a lost first answer)

    other = system.send(ref, Add(n=10), delay=7200)
    clock.advance(7199)
    aws.fire_schedules(clock.now())  # fired a second early: it waits in the sorted set
    system.run_until_idle()
    assert system.state(ref).count == 5
    assert [d.id for d in system.deferred()] == [other]
    clock.advance(1)
    system.run_until_idle()
    assert system.state(ref).count == 15
    assert aws.schedules() == []


def test_scheduler_can_target_the_drain_function_directly(redis_url: str, aws: Any) -> None:
    """A schedule whose target is the function hands the message over as the event."""
    clock = ManualClock()
    system = scheduler_system(redis_url, aws, clock)
    ref = counter.ref("direct")
    system.send(ref, Add(n=2), delay=3600)
    (schedule,) = aws.schedules()
    handler = system.lambda_handler(waker=None, continuation=None, environ={})
    clock.advance(3600)
    result = handler(json.loads(schedule["Target"]["Input"]), _context())
    assert result["messages"] == 1
    assert system.state(ref).count == 2


def test_sqs_records_with_deferred_messages_land_in_lambda(redis_url: str, aws: Any) -> None:
    clock = ManualClock()
    system = ActorSystem.from_url(redis_url, actors=actors, clock=clock)
    ref = counter.ref("lam")
    item = system.registry.prepare(ref, Add(n=3), now_s=clock.now(), delay=3600)
    records = [
        {"eventSource": "aws:sqs", "messageId": "1", "body": encode_body(item)},
        {"eventSource": "aws:sqs", "messageId": "2", "body": encode_body(item)},  # a copy
    ]
    handler = system.lambda_handler(waker=None, continuation=None, environ={})
    result = handler({"Records": records}, _context())
    assert result["messages"] == 0  # not due yet: waiting in the sorted set
    assert [d.id for d in system.deferred()] == [item.id]
    clock.advance(3600)
    result = handler({"Records": records[:1]}, _context())
    assert result["messages"] == 1
    assert result["batchItemFailures"] == []
    assert system.state(ref).count == 3


def _context() -> Any:
    from actor_system.testing import LambdaContext

    return LambdaContext(time.time() + 10, "request", "drain")


# -- errors ---------------------------------------------------------------------------------


def test_missing_queue_and_schedule_group_name_the_resource(redis_url: str, aws: Any) -> None:
    clock = ManualClock()
    system = ActorSystem.from_url(
        redis_url, actors=actors, delay="sqs://no-such-queue", clock=clock
    )
    with pytest.raises(AwsError, match=r"GetQueueUrl on no-such-queue failed: .*does not exist"):
        system.send(counter.ref("x"), Add(n=1), delay=3600)
    assert system.deferred() == []  # nothing stored in Redis either: the caller knows
    url = f"scheduler://no-such-group?target={aws.queue_arn}&role={ROLE}"
    system = ActorSystem.from_url(redis_url, actors=actors, delay=url, clock=clock)
    # moto answers CreateSchedule in a missing group with a 500 (AWS: 404); the group check
    # that the adapter offers (GetScheduleGroup) gets the service's answer from moto too.
    with pytest.raises(AwsError, match=r"GetScheduleGroup on no-such-group failed: "
                       r"ResourceNotFoundException.*does not exist"):  # fmt: skip
        system.backend.delay.check()


class _Refusing(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with one fixed error."""

    status = 503
    code = "SlowDown"
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        body = f"<Error><Code>{self.code}</Code><Message>no</Message></Error>".encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "code", "attempts", "hint"),
    [
        (503, "SlowDown", 5, "throttled after 5 attempts"),  # 5xx: the same retry path
        (403, "AccessDenied", 1, "IAM policy"),
    ],
)
def test_throttling_and_5xx_are_retried_other_errors_are_not(
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    code: str,
    attempts: int,
    hint: str | None,
) -> None:
    handler = type("H", (_Refusing,), {"status": status, "code": code, "seen": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    client = aws_client("s3")
    try:
        store = S3StateStore(bucket="b", prefix="p", client=client)
        with pytest.raises(AwsError) as info:
            store.read("counter/x")
    finally:
        client.close()
        server.shutdown()
        server.server_close()
    assert info.value.code == code
    assert info.value.operation == "GetObject"
    assert "s3://b/p/counter/x" in str(info.value)
    assert handler.seen == attempts
    if hint:
        assert hint in str(info.value)


def test_aws_call_maps_client_errors(aws_env: dict[str, str]) -> None:
    sqs = aws_client("sqs")
    with pytest.raises(AwsError, match="does not exist") as info:
        aws_call("GetQueueUrl", "nope", sqs.get_queue_url, QueueName="nope")
    assert info.value.resource == "nope"


def test_boto3_is_imported_only_when_an_aws_store_is_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from actor_system import ActorSystem; from tests.actors import actors; "
        "ActorSystem.from_url('fakeredis://', actors=actors); "
        "a = 'boto3' in sys.modules; "
        "ActorSystem.from_url('fakeredis://', actors=actors, state='s3://b/p', "
        "delay='sqs://q'); "
        "print(a, 'boto3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # not even at construction: on first call


def test_check_reaches_every_store(redis_url: str, aws: Any) -> None:
    system = ActorSystem.from_url(
        redis_url,
        actors=actors,
        state=f"s3://{aws.bucket}/actors",
        delay=f"scheduler://{aws.group}?target={aws.queue_arn}&role={ROLE}&queue={aws.queue}",
    )
    assert isinstance(system.backend, CompositeBackend)
    system.backend.check()  # bucket, schedule group and queue all there: no error
    boto3.client("sqs").delete_queue(QueueUrl=aws.queue_url)
    fresh = ActorSystem.from_url(
        redis_url,
        actors=actors,
        delay=f"scheduler://{aws.group}?target={aws.queue_arn}&role={ROLE}&queue={aws.queue}",
    )
    with pytest.raises(AwsError, match=f"GetQueueUrl on {aws.queue} failed"):
        fresh.backend.check()
    boto3.client("sqs").create_queue(QueueName=aws.queue)  # for the fixture's clean-up


def test_sqs_outage_keeps_deferred_messages_in_redis_on_time(
    redis_url: str, aws: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    system = sqs_system(redis_url, aws, clock, "near=0&receive_every=0")
    system.send(probe.ref("o"), Plan(delays=[120]))
    boto3.client("sqs").delete_queue(QueueUrl=aws.queue_url)
    system.run_until_idle()  # the commit stages the Timed message; moving it out fails
    system.run_until_idle()  # within the back-off: no second try
    assert caplog.text.count("moving deferred messages out failed, next try in 30 s") == 1
    assert caplog.text.count("receiving deferred messages failed, next try in 30 s") == 1
    assert [d.actor for d in system.deferred()] == ["probe/o"]  # kept in the sorted set
    clock.advance(119.999)
    system.run_until_idle()
    assert system.state(probe.ref("o")).deliveries == []
    clock.advance(0.001)
    assert system.run_until_idle().messages == 1
    boto3.client("sqs").create_queue(QueueName=aws.queue)  # for the fixture's clean-up


@pytest.mark.slow
def test_sigkilled_workers_with_an_sqs_delay_queue_deliver_each_message_once(
    redis_url: str, aws: Any
) -> None:
    import random

    rng = random.Random(5)
    delay_url = f"sqs://{aws.queue}?near=0&max_hop=1&receive_every=0.05"
    system = ActorSystem.from_url(redis_url, actors=actors, delay=delay_url, poll_interval_s=0.05)
    refs = [probe.ref(f"p{i}") for i in range(20)]
    system.send_many([(r, Plan(delays=[0.5, 2.5, 8.0])) for r in refs])
    kills = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTOR_SYSTEM_DELAY_URL", delay_url)
        mp.setenv("ACTOR_SYSTEM_POLL_INTERVAL_S", "0.05")
        while kills < 5:
            worker = start_worker(redis_url, "--lease-ms", "500")
            time.sleep(rng.uniform(0.6, 1.2))
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=10)
            kills += 1

    def delivered() -> int:
        return sum(len(system.state(r).deliveries) for r in refs)

    mid_run = delivered()
    worker = system.worker()
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 30
    while delivered() < 60 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # room for a late copy to show up
    worker.stop()
    thread.join(10)
    print(f"kills={kills} delivered_before_final_drain={mid_run} total={delivered()}")
    assert mid_run < 60
    for ref in refs:
        deliveries = system.state(ref).deliveries
        assert len(deliveries) == 3, ref  # each once: none lost, no copy applied
        assert all(at >= due for due, at in deliveries), ref  # never early
