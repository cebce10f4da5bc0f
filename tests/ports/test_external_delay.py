"""The ExternalDelay port's contract: ``offload`` holds deferred messages and returns the ids
it now holds, each copy once, leaving out a body over the store's size limit (it stays in
Redis); ``pending`` counts what is held; ``cancel`` removes a held message where the store
can (the Scheduler deletes its schedule; SQS cannot delete by id and answers False, leaving
it to the tombstone in Redis); nothing comes back through ``receive`` before its time;
``check`` passes for a store that exists and names one that does not. Then what each adapter
does of its own: SQS hands messages back through ``receive`` (``delete`` forgets them), the
Scheduler pushes each message to its target as the input of a schedule.

Every adapter runs the same tests against the moto server: a new adapter is one more entry of
``ADAPTERS``. moto honours SQS ``DelaySeconds`` and visibility timeouts in real time, so the
messages meant to come back are due now (DelaySeconds 0) and the others an hour out.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import boto3
import pytest

from actor_system.adapters.aws import AwsError
from actor_system.adapters.delay import (
    SCHEDULER_MAX_INPUT,
    SQS_MAX_BODY,
    SchedulerDelayQueue,
    SqsDelayQueue,
    deferred_in,
    encode_body,
)
from actor_system.envelope import Envelope, Outgoing, encode, new_id
from actor_system.ports import ExternalDelay, Received
from tests.aws import ROLE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from tests.aws import AwsResources

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000

# The port's members, read off the Protocol itself: a member added to the port is checked on
# every adapter without touching this file.
PORT_MEMBERS = frozenset(
    {n for n in vars(ExternalDelay) if not n.startswith("_")} | set(ExternalDelay.__annotations__)
)
ATTRIBUTES = frozenset({"hops", "near_s", "receive_every_s", "durable_s", "name"})


@dataclass(frozen=True)
class Adapter:
    """How to build one ExternalDelay adapter over a test's AWS resources, and what it does
    where adapters differ."""

    build: Callable[[AwsResources], ExternalDelay]
    missing: Callable[[AwsResources], ExternalDelay]  # over a resource that does not exist
    name: Callable[[AwsResources], str]
    hops: bool
    near_s: float  # by default
    max_body: int  # the longest body it takes
    cancels: bool  # cancel deletes a held message (else the Redis tombstone drops it)


def _sqs(aws: AwsResources) -> ExternalDelay:
    # Typed as the port: mypy checks here that each adapter satisfies ExternalDelay.
    return SqsDelayQueue(queue=aws.queue)


def _scheduler(aws: AwsResources) -> ExternalDelay:
    return SchedulerDelayQueue(group=aws.group, target_arn=aws.queue_arn, role_arn=ROLE)


ADAPTERS = {
    "sqs": Adapter(
        build=_sqs,
        missing=lambda aws: SqsDelayQueue(queue=f"{aws.queue}-missing"),
        name=lambda aws: f"sqs queue {aws.queue}",
        hops=True,
        near_s=60.0,
        max_body=SQS_MAX_BODY,
        cancels=False,
    ),
    "scheduler": Adapter(
        build=_scheduler,
        missing=lambda aws: SchedulerDelayQueue(
            group=f"{aws.group}-missing", target_arn=aws.queue_arn, role_arn=ROLE
        ),
        name=lambda aws: f"schedule group {aws.group}",
        hops=False,
        near_s=900.0,
        max_body=SCHEDULER_MAX_INPUT,
        cancels=True,
    ),
}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Adapter:
    return ADAPTERS[str(request.param)]


@pytest.fixture
def delay(adapter: Adapter, aws: AwsResources) -> Iterator[ExternalDelay]:
    built = adapter.build(aws)
    yield built
    pool = getattr(built, "_pool", None)  # the Scheduler's threads for concurrent creates
    if pool is not None:
        pool.shutdown()


def _conforms(delay: ExternalDelay) -> ExternalDelay:
    """Accepts only what mypy sees as an ExternalDelay."""
    return delay


def now_ms() -> int:
    return int(time.time() * 1000)


def message(actor: str, due_ms: int, *, text: str = "hello", mid: str | None = None) -> Outgoing:
    """A deferred message to ``logger/<actor>`` encoded as the runtime encodes it."""
    target = f"logger/{actor}"
    mid = mid or new_id(target)
    env = Envelope(mid, target, "Note", {"text": text}, 1, due_ms - HOUR_MS, due_ms)
    return Outgoing(mid, target, encode(env), due_ms)


def largest(limit: int, due_ms: int) -> Outgoing:
    """The message whose body is the longest that is not over ``limit``."""
    mid = new_id("logger/big")

    def sized(n: int) -> Outgoing:
        return message("big", due_ms, text="x" * n, mid=mid)

    n = limit * 3 // 4
    n -= (len(encode_body(sized(n))) - limit) * 3 // 4
    while len(encode_body(sized(n))) > limit:
        n -= 1
    while len(encode_body(sized(n + 1))) <= limit:
        n += 1
    return sized(n)


def decoded(received: Sequence[Received]) -> list[Outgoing | None]:
    return sorted((deferred_in(r.body) for r in received), key=lambda o: o.id if o else "")


# -- the adapter ----------------------------------------------------------------------------


def test_the_adapter_satisfies_the_port(
    delay: ExternalDelay, adapter: Adapter, aws: AwsResources
) -> None:
    assert _conforms(delay) is delay
    assert {"offload", "receive", "delete", "cancel", "pending", "check"} | ATTRIBUTES <= (
        PORT_MEMBERS
    )
    for member in PORT_MEMBERS - ATTRIBUTES:
        assert callable(getattr(delay, member)), member
    assert delay.hops is adapter.hops
    assert delay.near_s == adapter.near_s
    assert (delay.receive_every_s, delay.durable_s) == (1.0, 2.0)  # the defaults
    assert delay.name == adapter.name(aws)


# -- offload and pending --------------------------------------------------------------------


def test_offload_holds_deferred_messages_and_pending_counts_them(delay: ExternalDelay) -> None:
    now = now_ms()
    assert delay.pending() == 0
    assert delay.offload([], now) == []
    a, b = message("a", now + HOUR_MS), message("b", now + 2 * HOUR_MS)
    assert sorted(delay.offload([a, b], now)) == sorted([a.id, b.id])
    assert delay.pending() == 2
    c = message("c", now + 3 * HOUR_MS)
    assert delay.offload([c], now) == [c.id]
    assert delay.pending() == 3


def test_offload_holds_copies_of_one_message_once(delay: ExternalDelay) -> None:
    now = now_ms()
    a, b = message("a", now + HOUR_MS), message("b", now + HOUR_MS)
    assert sorted(delay.offload([a, b, a, replace(a)], now)) == sorted([a.id, b.id])
    assert delay.pending() == 2


def test_offload_leaves_out_a_body_over_the_size_limit(
    delay: ExternalDelay, adapter: Adapter, caplog: pytest.LogCaptureFixture
) -> None:
    now = now_ms()
    fits = largest(adapter.max_body, now + HOUR_MS)
    assert adapter.max_body - 4 < len(encode_body(fits)) <= adapter.max_body
    over = message("over", now + HOUR_MS, text="x" * (adapter.max_body * 3 // 4))
    assert len(encode_body(over)) > adapter.max_body
    small = message("small", now + HOUR_MS)
    taken = delay.offload([over, fits, small], now)
    assert sorted(taken) == sorted([fits.id, small.id])  # ``over`` stays in Redis
    assert delay.pending() == 2
    assert over.id in caplog.text  # and the log says which one


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_removes_a_held_message_where_the_store_can(
    delay: ExternalDelay, adapter: Adapter
) -> None:
    now = now_ms()
    gone, kept = message("a", now + HOUR_MS), message("b", now + HOUR_MS)
    assert sorted(delay.offload([gone, kept], now)) == sorted([gone.id, kept.id])
    # The Scheduler deletes the schedule; SQS cannot delete a message by id (False): the
    # tombstone in Redis drops the message when it lands.
    assert delay.cancel(gone.id) is adapter.cancels
    assert delay.pending() == (1 if adapter.cancels else 2)
    assert delay.cancel(gone.id) is False  # nothing (more) to remove
    assert delay.cancel(new_id("logger/never")) is False  # never held


# -- receive --------------------------------------------------------------------------------


def test_nothing_comes_back_before_its_time(delay: ExternalDelay) -> None:
    now = now_ms()
    assert delay.receive() == []
    held = delay.offload([message("a", now + HOUR_MS)], now)
    assert len(held) == 1
    assert delay.receive() == []
    delay.delete([])  # nothing to forget: no call, no error
    assert delay.pending() == 1


# -- check ----------------------------------------------------------------------------------


def test_check_passes_for_the_store_and_names_a_missing_one(
    delay: ExternalDelay, adapter: Adapter, aws: AwsResources
) -> None:
    delay.check()  # no error
    with pytest.raises(AwsError, match=rf"{aws.name}-missing failed: .*does not exist"):
        adapter.missing(aws).check()


# -- SQS ------------------------------------------------------------------------------------


def test_sqs_hands_back_near_messages_and_delete_forgets_them(aws: AwsResources) -> None:
    queue = SqsDelayQueue(queue=aws.queue)  # near 60 s: the last hop ends 30 s early
    now = now_ms()
    assert queue.delay_s(now, now) == 0
    assert queue.delay_s(now + 30_000, now) == 0
    assert queue.delay_s(now + HOUR_MS, now) == 900
    due_now = message("now", now)
    soon = message("soon", now + 30_000)  # back at once, to wait in the Redis sorted set
    far = message("far", now + HOUR_MS)  # 900 s in SQS first
    assert sorted(queue.offload([due_now, soon, far], now)) == sorted([due_now.id, soon.id, far.id])
    received = queue.receive()
    assert decoded(received) == sorted([due_now, soon], key=lambda o: o.id)
    assert all(r.receipt for r in received)
    # Received, not yet deleted: invisible for visibility_s, still counted.
    assert queue.visibility_s == 7  # ceil(durable_s = 2) + 5
    assert queue.receive() == []
    assert queue.pending() == 3
    queue.delete([r.receipt for r in received])
    assert queue.pending() == 1  # only the far one is left
    assert queue.receive() == []


def test_sqs_receive_takes_more_than_one_batch(aws: AwsResources) -> None:
    queue = SqsDelayQueue(queue=aws.queue)
    now = now_ms()
    items = [message(f"m{n}", now) for n in range(23)]
    assert sorted(queue.offload(items, now)) == sorted(i.id for i in items)
    received = queue.receive()
    assert decoded(received) == sorted(items, key=lambda o: o.id)
    queue.delete([r.receipt for r in received])  # 23 receipts: three DeleteMessageBatch calls
    assert queue.pending() == 0


def test_sqs_receive_hands_back_bodies_that_are_not_deferred_messages(
    aws: AwsResources,
) -> None:
    """A wake sharing the queue comes back too: the caller tells it apart (deferred_in)."""
    queue = SqsDelayQueue(queue=aws.queue)
    wake = json.dumps({"actor_system": "wake"})
    boto3.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody=wake)
    [got] = queue.receive()
    assert got.body == wake
    assert deferred_in(got.body) is None
    queue.delete([got.receipt])
    assert queue.pending() == 0


# -- EventBridge Scheduler ------------------------------------------------------------------


def test_scheduler_receive_returns_nothing_and_the_schedule_carries_the_message(
    aws: AwsResources,
) -> None:
    schedules = SchedulerDelayQueue(group=aws.group, target_arn=aws.queue_arn, role_arn=ROLE)
    now = now_ms()
    due = now + HOUR_MS + 1
    item = message("a", due)
    assert schedules.offload([item], now) == [item.id]
    assert schedules.receive() == []  # it pushes to its target instead
    found = boto3.client("scheduler").get_schedule(Name=f"deferred-{item.id}", GroupName=aws.group)
    assert deferred_in(found["Target"]["Input"]) == item
    at = datetime.fromtimestamp(math.ceil(due / 1000), UTC)
    assert found["ScheduleExpression"] == f"at({at:%Y-%m-%dT%H:%M:%S})"  # never early
    assert (found["Target"]["Arn"], found["Target"]["RoleArn"]) == (aws.queue_arn, ROLE)
    assert found["ActionAfterCompletion"] == "DELETE"
    assert found["FlexibleTimeWindow"] == {"Mode": "OFF"}


def test_scheduler_offload_again_under_the_same_id_moves_the_schedule(
    aws: AwsResources,
) -> None:
    """Retry(delay=...) re-defers a message under its id: the schedule takes the new time."""
    schedules = SchedulerDelayQueue(group=aws.group, target_arn=aws.queue_arn, role_arn=ROLE)
    now = now_ms()
    first = message("a", now + HOUR_MS)
    later = replace(first, due_ms=now + 2 * HOUR_MS)
    assert schedules.offload([first], now) == [first.id]
    assert schedules.offload([first], now) == [first.id]  # the same message again: done
    assert schedules.offload([later], now) == [first.id]
    assert schedules.pending() == 1
    found = boto3.client("scheduler").get_schedule(Name=f"deferred-{first.id}", GroupName=aws.group)
    assert deferred_in(found["Target"]["Input"]) == later


def test_scheduler_with_a_queue_receives_what_its_schedules_fired(aws: AwsResources) -> None:
    schedules = SchedulerDelayQueue(
        group=aws.group,
        target_arn=aws.queue_arn,
        role_arn=ROLE,
        queue=SqsDelayQueue(queue=aws.queue, receive_every_s=0.5, durable_s=1),
    )
    assert (schedules.receive_every_s, schedules.durable_s) == (0.5, 1)  # the queue's
    now = now_ms()
    item, far = message("a", now), message("b", now + HOUR_MS)
    assert sorted(schedules.offload([item, far], now)) == sorted([item.id, far.id])
    assert schedules.receive() == []  # nothing fired yet
    assert aws.fire_schedules(time.time()) == 1  # what the service does at the due time
    assert schedules.pending() == 1
    received = schedules.receive()
    assert decoded(received) == [item]
    schedules.delete([r.receipt for r in received])
    assert schedules.queue is not None
    assert schedules.queue.pending() == 0
    schedules.check()  # the group and the queue
