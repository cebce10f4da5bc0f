"""AWS resources on the moto server for one test, and the two things moto does not do.

moto honours SQS ``DelaySeconds`` in real time, while behaviour tests move a ManualClock:
``attach`` records the delay each message asked for and makes it visible at once (the
adapter sends a message received before its due time out again, the case it guards against
anyway). moto stores EventBridge schedules but never fires them: ``fire_schedules`` does
what the service does, sending each due schedule's input to its target queue and deleting
the schedule (ActionAfterCompletion DELETE); it fires up to a second early, which also checks
that an early arrival waits for its due time.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from actor_system import ActorSystem, ManualClock

ROLE = "arn:aws:iam::123456789012:role/actor-system-scheduler"


@dataclass
class AwsResources:
    name: str
    bucket: str
    queue: str
    queue_url: str
    queue_arn: str
    group: str
    delays: list[int] = field(default_factory=list)  # DelaySeconds asked for, in order
    fired: int = 0

    @classmethod
    def create(cls, test_name: str) -> AwsResources:
        slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:30]
        name = f"{slug}-{uuid.uuid4().hex[:8]}"
        s3, sqs, scheduler = (boto3.client(n) for n in ("s3", "sqs", "scheduler"))
        s3.create_bucket(Bucket=name)
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        scheduler.create_schedule_group(Name=name)
        return cls(name, name, name, url, arn["Attributes"]["QueueArn"], name)

    def urls(self, kind: str) -> dict[str, str]:
        if kind == "s3":
            return {"state": f"s3://{self.bucket}/actors"}
        if kind == "sqs":
            return {"delay": f"sqs://{self.queue}?near=0&receive_every=0"}
        return {
            "delay": f"scheduler://{self.group}?target={self.queue_arn}&role={ROLE}"
            f"&queue={self.queue}&near=0&receive_every=0"
        }

    def attach(self, system: ActorSystem, clock: ManualClock, kind: str) -> None:
        delay = getattr(system.backend, "delay", None)
        if kind == "sqs":
            self.warp(delay.client)  # type: ignore[union-attr]
        elif kind == "scheduler":
            receive = delay.receive  # type: ignore[union-attr]

            def fire_then_receive() -> Any:
                self.fire_schedules(clock.now())
                return receive()

            delay.receive = fire_then_receive  # type: ignore[union-attr]

    def warp(self, client: Any) -> None:
        """Record each DelaySeconds asked for and make the message visible now."""

        def squash(params: dict[str, Any], **_: Any) -> None:
            for entry in params.get("Entries", [params]):
                if "DelaySeconds" in entry:
                    self.delays.append(entry["DelaySeconds"])
                    entry["DelaySeconds"] = 0

        for op in ("SendMessage", "SendMessageBatch"):
            client.meta.events.register(f"provide-client-params.sqs.{op}", squash)

    def fire_schedules(self, now_s: float) -> int:
        scheduler, sqs = boto3.client("scheduler"), boto3.client("sqs")
        fired = 0
        for page in scheduler.get_paginator("list_schedules").paginate(GroupName=self.group):
            for row in page["Schedules"]:
                s = scheduler.get_schedule(Name=row["Name"], GroupName=self.group)
                at = datetime.strptime(s["ScheduleExpression"], "at(%Y-%m-%dT%H:%M:%S)")
                if at.replace(tzinfo=UTC).timestamp() > now_s + 1:
                    continue
                assert s["Target"]["Arn"] == self.queue_arn
                sqs.send_message(QueueUrl=self.queue_url, MessageBody=s["Target"]["Input"])
                scheduler.delete_schedule(Name=row["Name"], GroupName=self.group)
                fired += 1
        self.fired += fired
        return fired

    def schedules(self) -> list[dict[str, Any]]:
        scheduler = boto3.client("scheduler")
        names = [
            row["Name"]
            for page in scheduler.get_paginator("list_schedules").paginate(GroupName=self.group)
            for row in page["Schedules"]
        ]
        return [scheduler.get_schedule(Name=n, GroupName=self.group) for n in names]

    def cleanup(self) -> None:
        s3 = boto3.client("s3")
        for obj in s3.list_objects_v2(Bucket=self.bucket).get("Contents", []):
            s3.delete_object(Bucket=self.bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=self.bucket)
        boto3.client("sqs").delete_queue(QueueUrl=self.queue_url)
        boto3.client("scheduler").delete_schedule_group(Name=self.group)
