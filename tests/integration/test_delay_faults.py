"""The external delay queue under faults, against the moto server and a real redis-server:
copies of one message in one receive, a hop entry SQS refuses, Redis losing a landing after
it was received from SQS, and a re-deferral while the message's fired schedule still exists.

moto makes a received message visible again after its visibility timeout in real time, as
SQS does; the durability delay before a landed message is deleted runs on the ManualClock.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from actor_system import ActorSystem, ManualClock
from actor_system.adapters.delay import SchedulerDelayQueue
from tests.actors import Add, Later, Note, actors, counter, logger
from tests.aws import ROLE, AwsResources
from tests.conftest import Snapshots

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.integration


@pytest.fixture
def server(snapshots: Snapshots) -> Snapshots:
    return snapshots


def sqs_system(url: str, aws: AwsResources, clock: ManualClock, query: str) -> ActorSystem:
    system = ActorSystem.from_url(
        url, actors=actors, delay=f"sqs://{aws.queue}?{query}", clock=clock
    )
    aws.warp(system.backend.delay.client)
    return system


def in_queue(aws: AwsResources) -> tuple[int, int]:
    """(visible, received and not deleted) messages in the queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    got = boto3.client("sqs").get_queue_attributes(QueueUrl=aws.queue_url, AttributeNames=names)
    return int(got["Attributes"][names[0]]), int(got["Attributes"][names[1]])


def peek(aws: AwsResources) -> list[str]:
    """The bodies visible now, left visible."""
    got = boto3.client("sqs").receive_message(
        QueueUrl=aws.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    )
    return [m["Body"] for m in got.get("Messages", [])]


def refuse_once(client: Any, message_id: str) -> list[str]:
    """Make SQS answer the next batch entry that carries ``message_id`` with Failed (the
    other entries are sent); returns the refused bodies."""
    send = client.send_message_batch
    refused: list[str] = []

    def partly(**kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        mine = [] if refused else [e for e in entries if message_id in e["MessageBody"]]
        rest = [e for e in entries if e not in mine]
        answer = send(**{**kwargs, "Entries": rest}) if rest else {"Successful": []}
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in mine]
        answer["Failed"] = answer.get("Failed", []) + failed
        refused.extend(e["MessageBody"] for e in mine)
        return answer

    client.send_message_batch = partly
    return refused


def test_two_copies_in_one_receive_hop_once_and_both_are_deleted(
    redis_url: str, aws: AwsResources
) -> None:
    clock = ManualClock()
    system = sqs_system(redis_url, aws, clock, "receive_every=0")  # near = 60 s
    ref = logger.ref("copies")
    system.send(ref, Note(text="once"), delay=1200)
    (body,) = peek(aws)
    # A crash after SendMessageBatch and before the unstage sent the message a second time.
    boto3.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody=body)
    clock.advance(900)
    system.run_until_idle()  # both copies in one receive, both still far: one hop
    assert aws.delays == [900, 270]
    assert in_queue(aws) == (1, 0)  # the hop; both received copies deleted
    clock.advance(270)
    system.run_until_idle()
    clock.advance(30)
    assert system.run_until_idle().messages == 1
    assert system.state(ref).log == ["once"]
    clock.advance(2)  # durable_s
    system.run_until_idle()
    assert in_queue(aws) == (0, 0)


def test_refused_hop_entry_is_delivered_after_it_goes_out_again(
    redis_url: str, aws: AwsResources
) -> None:
    clock = ManualClock()
    system = sqs_system(redis_url, aws, clock, "receive_every=0")  # near = 60 s
    ref = logger.ref("refused")
    kept = system.send(ref, Note(text="refused once"), delay=1200)
    system.send(ref, Note(text="hopped"), delay=1210)
    refused = refuse_once(system.backend.delay.client, kept)
    clock.advance(900)
    system.run_until_idle()  # the hop of `kept` is refused: it lands in the sorted set
    assert len(refused) == 1
    assert [d.id for d in system.deferred()] == [kept]
    clock.advance(5)  # the next sweep moves it out to SQS again
    system.run_until_idle()
    assert system.deferred() == []
    clock.advance(295)  # due: it comes back and must not be taken for a copy
    system.run_until_idle()
    clock.advance(10)
    system.run_until_idle()
    assert system.state(ref).log == ["refused once", "hopped"]
    # A copy of a delivered message is still dropped (SQS delivers at least once).
    boto3.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody=refused[0])
    clock.advance(1)
    assert system.run_until_idle().messages == 0
    assert system.state(ref).log == ["refused once", "hopped"]


def test_landed_message_is_deleted_from_sqs_only_after_durable_s(
    redis_url: str, aws: AwsResources
) -> None:
    clock = ManualClock()
    system = sqs_system(redis_url, aws, clock, "near=0&receive_every=0&durable=2")
    ref = counter.ref("durable")
    system.send(ref, Add(n=1), delay=30)
    clock.advance(30)
    assert system.run_until_idle().messages == 1
    assert in_queue(aws) == (0, 1)  # delivered, and still held in SQS
    clock.advance(1.999)
    system.run_until_idle()
    assert in_queue(aws) == (0, 1)
    clock.advance(0.001)
    system.run_until_idle()
    assert in_queue(aws) == (0, 0)
    assert system.state(ref).count == 1


def test_redis_losing_a_landing_gets_the_message_again_from_sqs(
    server: Snapshots, aws: AwsResources, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    system = sqs_system(server.url, aws, clock, "near=0&receive_every=0&durable=1")
    system.backend.delay.visibility_s = 1  # back 1 s after a receive
    ref = counter.ref("lost")
    mid = system.send(ref, Add(n=1), delay=30)  # held by SQS alone
    server.client().save()  # the snapshot Redis will come back with
    clock.advance(30)
    assert system.run_until_idle().messages == 1  # landed and applied, then Redis loses both
    server.restore()
    assert system.state(ref).count == 0
    clock.advance(1)
    deadline = time.monotonic() + 20
    while system.state(ref).count == 0 and time.monotonic() < deadline:
        system.run_until_idle()  # SQS kept it, and this process lands it again
        time.sleep(0.05)
    assert system.state(ref).count == 1
    assert system.state(ref).seen == [mid]
    assert "Redis lost the landing of 1 deferred message(s); landing again" in caplog.text
    clock.advance(1)
    system.run_until_idle()  # this landing Redis kept: deleted now
    assert in_queue(aws) == (0, 0)
    assert system.state(ref).count == 1


def test_retry_delay_while_the_fired_schedule_exists_moves_the_schedule(
    redis_url: str, aws: AwsResources
) -> None:
    clock = ManualClock()
    url = (
        f"scheduler://{aws.group}?target={aws.queue_arn}&role={ROLE}&queue={aws.queue}"
        "&near=0&receive_every=0"
    )
    system = ActorSystem.from_url(redis_url, actors=actors, delay=url, clock=clock)
    updates: list[str] = []
    system.backend.delay.client.meta.events.register(
        "before-call.scheduler.UpdateSchedule", lambda params, **_: updates.append("update")
    )
    ref = logger.ref("retry")
    mid = system.send(ref, Later(delay=7200), delay=3600, idempotency_key="k")
    assert system.send(ref, Later(delay=7200), delay=3600, idempotency_key="k") == mid
    assert updates == []  # the same message sent again: its schedule stays as it is
    (first,) = aws.schedules()
    first_due = json.loads(first["Target"]["Input"])["due_ms"]
    clock.advance(3600)
    # The schedule fires; the service has not deleted it yet when the retry re-defers.
    boto3.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody=first["Target"]["Input"])
    system.run_until_idle()  # attempt 1 raises Retry(delay=7200): same id, new due time
    assert system.state(ref).log == []
    (schedule,) = aws.schedules()
    due = json.loads(schedule["Target"]["Input"])["due_ms"]
    assert due - first_due == 7_200_000
    assert schedule["ScheduleExpression"] == SchedulerDelayQueue.expression(due)
    assert updates == ["update"]
    assert system.deferred() == []  # held by the schedule alone
    clock.advance(7200)
    assert aws.fire_schedules(clock.now()) == 1
    system.run_until_idle()
    assert system.state(ref).log == ["later attempt 2"]
