"""Deferred messages held outside Redis: SQS ``DelaySeconds`` hops or EventBridge Scheduler.

Both keep far-future messages out of Redis memory. A deferred message is written by the
turn's atomic commit into the Redis sorted set like any other, then moved out by the backend
(``actor_system.adapters.composite``), so a crash between the commit and the move loses
nothing. It comes back as a JSON body ``{"actor_system": "deferred", ...}`` (received from the
queue, or handed to the Lambda function by its SQS trigger or by a schedule) and *lands*: a
due message goes to its actor's mailbox, one not yet due goes back out (another SQS hop) or,
when it is near, to the sorted set, which promotes it at its exact due time. Nothing is
delivered early.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from actor_system.adapters.aws import (
    MAX_SQS_DELAY_S,
    AwsError,
    SqsQueue,
    aws_call,
    aws_client,
    url_number,
)
from actor_system.envelope import ID_LENGTH, Outgoing, is_message_id
from actor_system.errors import ConfigError, DecodeError
from actor_system.ports import ExternalDelay, Received

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("actor_system")

SQS_MAX_BODY = 256 * 1024
# The Scheduler API sets no maximum on a target's Input; its targets do (an SQS message, an
# asynchronous Lambda event): bodies over this stay in the Redis sorted set.
SCHEDULER_MAX_INPUT = 256 * 1024
_RECEIVE_CALLS = 10  # ReceiveMessage calls per collection at most (10 messages each)
# A landed message is deleted from SQS only after Redis has held the landing this long
# (appendfsync everysec writes within about a second), so that a Redis losing its last
# second does not lose a message that SQS has already forgotten.
DURABLE_S = 2.0
# Received messages stay invisible for durable_s plus this: time to land them and for the
# poll that deletes them to come round. One whose receiver dies is received again after it,
# so it is short: a message received near its due time and lost with its receiver comes back
# this much later (a receipt that expired first only makes a copy, which is dropped).
VISIBILITY_MARGIN_S = 5


@dataclass(frozen=True, slots=True)
class Held:
    """A received message left in SQS until Redis has held its landing for ``durable_s``."""

    receipt: str
    release_ms: int  # delete it from this time on, if Redis still has the landing
    item: Outgoing | None  # None: not a deferred message (a dead letter, a wake)


def encode_body(item: Outgoing) -> str:
    """The JSON body a deferred message travels in (the entry is binary msgpack)."""
    return json.dumps(
        {
            "actor_system": "deferred",
            "id": item.id,
            "target": item.target,
            "due_ms": item.due_ms,
            "entry": base64.b64encode(item.entry).decode("ascii"),
        },
        separators=(",", ":"),
    )


def decode_body(body: str | dict[str, Any]) -> Outgoing | None:
    """The deferred message in a body, None for a wake or a continuation (they may share
    the queue); DecodeError, keeping the bytes, for anything else that is not one."""
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    try:
        m = json.loads(body) if isinstance(body, str) else body
    except ValueError as e:
        raise DecodeError(f"delay-queue message is not JSON: {e}", raw) from None
    kind = m.get("actor_system") if isinstance(m, dict) else None
    if kind in ("wake", "continue"):
        return None
    if kind != "deferred":
        raise DecodeError("delay-queue message is not a deferred actor-system message", raw)
    mid, target, due, entry = m.get("id"), m.get("target"), m.get("due_ms"), m.get("entry")
    if not (is_message_id(mid) and isinstance(target, str) and "/" in target):
        raise DecodeError("deferred message lacks a valid id or target", raw)
    if type(due) is not int or not isinstance(entry, str):
        raise DecodeError("deferred message lacks a due time or an entry", raw)
    try:
        data = base64.b64decode(entry, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DecodeError(f"deferred message entry is not base64: {e}", raw) from None
    if data[:ID_LENGTH] != mid.encode():
        raise DecodeError("deferred message entry does not carry its id", raw)
    return Outgoing(mid, target, data, due)


def deferred_in(body: str) -> Outgoing | None:
    """The deferred message in a body; None for anything else (a wake, a malformed body)."""
    try:
        return decode_body(body)
    except DecodeError:
        return None


def distinct(items: Sequence[Outgoing]) -> list[Outgoing]:
    """Items without repeated (id, due time) pairs: copies of one message (SQS delivers at
    least once, and a crash between a send and the unstage sends twice) go out once."""
    return list({(i.id, i.due_ms): i for i in items}.values())


class SqsDelayQueue(SqsQueue):
    """Deferred messages as SQS messages with ``DelaySeconds`` = min(remaining, 900).

    One received more than ``near_s`` before its due time (a horizon beyond 15 minutes) is
    sent again with the remainder: chained hops, any horizon. Messages due within ``near_s``
    stay in (or return to) the Redis sorted set, which delivers them at their due time to the
    millisecond. ``receive_every_s``: how often a drain loop receives from the queue (an idle
    worker looks at least every ``poll_interval_s``; a Lambda function can get the messages
    from its SQS trigger instead). ``durable_s``: how long Redis must have held a landed
    message before it is deleted from SQS.
    """

    hops = True

    def __init__(
        self,
        *,
        queue: str,
        near_s: float = 60.0,
        max_hop_s: int = MAX_SQS_DELAY_S,
        receive_every_s: float = 1.0,
        durable_s: float = DURABLE_S,
        client: Any = None,
    ) -> None:
        if not 0 <= max_hop_s <= MAX_SQS_DELAY_S:
            raise ConfigError(f"max_hop={max_hop_s} must be between 0 and {MAX_SQS_DELAY_S}")
        if not 0 <= durable_s <= 3600:
            raise ConfigError(f"durable={durable_s} must be between 0 and 3600 seconds")
        super().__init__(queue=queue, client=client)
        self.near_s = near_s
        self.max_hop_s = int(max_hop_s)
        self.receive_every_s = receive_every_s
        self.durable_s = durable_s
        self.visibility_s = math.ceil(durable_s) + VISIBILITY_MARGIN_S

    @classmethod
    def from_url(cls, url: str) -> SqsDelayQueue:
        """``sqs://queue-name?near=60&max_hop=900&receive_every=1&durable=2`` (seconds)."""
        parts = urlsplit(url)
        if parts.scheme != "sqs" or not parts.netloc:
            raise ConfigError(f"delay URL {url!r} is not sqs://queue-name[?near=&max_hop=]")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - {"near", "max_hop", "receive_every", "durable"}
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(sorted(unknown))} in {url!r}")
        return cls(
            queue=parts.netloc + parts.path,
            near_s=url_number(url, query, "near", 60.0),
            max_hop_s=int(url_number(url, query, "max_hop", MAX_SQS_DELAY_S)),
            receive_every_s=url_number(url, query, "receive_every", 1.0),
            durable_s=url_number(url, query, "durable", DURABLE_S),
        )

    @property
    def name(self) -> str:
        return f"sqs queue {self.queue}"

    def delay_s(self, due_ms: int, now_ms: int) -> int:
        """The DelaySeconds of the next hop, at most max_hop_s: the last hop ends half of
        ``near_s`` before the due time, so the message waits out the rest in the sorted set
        and is delivered to the millisecond, not at SQS's one-second steps."""
        lead_ms = self.near_s * 500
        return min(max(math.ceil((due_ms - lead_ms - now_ms) / 1000), 0), self.max_hop_s)

    def offload(self, items: Sequence[Outgoing], now_ms: int) -> list[str]:
        """Send deferred messages; returns the ids SQS took (the others stay in Redis)."""
        taken: list[str] = []
        batch: list[tuple[Outgoing, str]] = []
        for item in distinct(items):
            body = encode_body(item)
            if len(body) > SQS_MAX_BODY:
                log.warning(
                    "deferred message %s encodes to %d bytes, over the SQS limit; it stays "
                    "in the Redis sorted set",
                    item.id,
                    len(body),
                )
                continue
            size = sum(len(b) for _, b in batch)
            if batch and (len(batch) == 10 or size + len(body) > SQS_MAX_BODY):
                taken += self._send_batch(batch, now_ms)  # 10 messages, 256 KiB in all
                batch = []
            batch.append((item, body))
        if batch:
            taken += self._send_batch(batch, now_ms)
        return taken

    def _send_batch(self, batch: list[tuple[Outgoing, str]], now_ms: int) -> list[str]:
        # Entry Ids are positions, not message ids: SQS refuses a whole batch whose Ids
        # repeat, and one message may be in a batch twice under two due times.
        entries = []
        for n, (item, body) in enumerate(batch):
            assert item.due_ms is not None
            delay = self.delay_s(item.due_ms, now_ms)
            entries.append({"Id": str(n), "MessageBody": body, "DelaySeconds": delay})
        sent = aws_call(
            "SendMessageBatch",
            self.queue,
            self.client.send_message_batch,
            QueueUrl=self.queue_url,
            Entries=entries,
        )
        for failed in sent.get("Failed", []):
            log.warning(
                "SQS refused deferred message %s (%s: %s); it stays in Redis",
                batch[int(failed["Id"])][0].id,
                failed.get("Code"),
                failed.get("Message"),
            )
        return [batch[int(s["Id"])][0].id for s in sent.get("Successful", [])]

    def receive(self) -> list[Received]:
        """The messages visible now (their delay is over), up to 100. They stay invisible
        for ``visibility_s`` whatever the queue's own timeout: long enough for their
        receipts to be used after ``durable_s``, short enough to come back soon after a crash."""
        got: list[Received] = []
        for _ in range(_RECEIVE_CALLS):
            answer = aws_call(
                "ReceiveMessage",
                self.queue,
                self.client.receive_message,
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                VisibilityTimeout=self.visibility_s,
            )
            messages = answer.get("Messages", [])
            got += [Received(m.get("Body", ""), m["ReceiptHandle"]) for m in messages]
            if len(messages) < 10:
                break
        return got

    def delete(self, receipts: Sequence[str]) -> None:
        for i in range(0, len(receipts), 10):
            entries = [
                {"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(receipts[i : i + 10])
            ]
            aws_call(
                "DeleteMessageBatch",
                self.queue,
                self.client.delete_message_batch,
                QueueUrl=self.queue_url,
                Entries=entries,
            )

    def cancel(self, message_id: str) -> bool:
        """SQS cannot delete a message by its body: the tombstone in Redis does it at landing."""
        return False

    def pending(self) -> int:
        """Messages in the queue (approximate, as SQS counts them; wakes included)."""
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesDelayed",
            "ApproximateNumberOfMessagesNotVisible",
        ]
        got = aws_call(
            "GetQueueAttributes",
            self.queue,
            self.client.get_queue_attributes,
            QueueUrl=self.queue_url,
            AttributeNames=names,
        )
        return sum(int(got["Attributes"].get(n, 0)) for n in names)

    def check(self) -> None:
        _ = self.queue_url


class SchedulerDelayQueue:
    """One EventBridge Scheduler one-time schedule per deferred message.

    The schedule is ``at(<due time, UTC, rounded up to the second>)`` with
    ``ActionAfterCompletion: DELETE``, named after the message id (a re-send is the same
    schedule), and its target gets the message body as input: the drain function (direct
    invocation) or an SQS queue, from which a drain loop receives (``queue=``). Scheduler
    fires within about a minute of the time, so messages due within ``near_s`` (15 minutes
    by default) stay in the Redis sorted set, and one that arrives before its due time waits
    there. Prefer it over the sorted set for long horizons and huge numbers of far-future
    messages: they cost no Redis memory and no drain work until they fire.
    """

    hops = False

    def __init__(
        self,
        *,
        group: str,
        target_arn: str,
        role_arn: str,
        queue: SqsDelayQueue | None = None,
        near_s: float = 900.0,
        client: Any = None,
    ) -> None:
        self.group = group
        self.target_arn = target_arn
        self.role_arn = role_arn
        self.queue = queue
        self.near_s = near_s
        self.receive_every_s = queue.receive_every_s if queue else 1.0
        self.durable_s = queue.durable_s if queue else DURABLE_S
        self._client = client
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_url(cls, url: str) -> SchedulerDelayQueue:
        """``scheduler://group?target=<arn>&role=<arn>[&queue=<queue name>][&near=900]``
        (``receive_every`` and ``durable`` as for the SQS queue, which they apply to)."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        missing = [k for k in ("target", "role") if not query.get(k)]
        if parts.scheme != "scheduler" or not parts.netloc or missing:
            raise ConfigError(
                f"delay URL {url!r} is not scheduler://group?target=<function or queue arn>"
                "&role=<role arn>[&queue=<queue name>]"
                + (f" (missing {', '.join(missing)})" if missing else "")
            )
        unknown = set(query) - {"target", "role", "queue", "near", "receive_every", "durable"}
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(sorted(unknown))} in {url!r}")
        queue = None
        if query.get("queue"):
            queue = SqsDelayQueue(
                queue=query["queue"],
                receive_every_s=url_number(url, query, "receive_every", 1.0),
                durable_s=url_number(url, query, "durable", DURABLE_S),
            )
        return cls(
            group=parts.netloc,
            target_arn=query["target"],
            role_arn=query["role"],
            queue=queue,
            near_s=url_number(url, query, "near", 900.0),
        )

    @property
    def name(self) -> str:
        return f"schedule group {self.group}"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("scheduler")
        return self._client

    @staticmethod
    def schedule_name(message_id: str) -> str:
        return f"deferred-{message_id}"

    @staticmethod
    def expression(due_ms: int) -> str:
        """``at(...)`` in UTC, rounded up to the second: never before the due time."""
        at = datetime.fromtimestamp(math.ceil(due_ms / 1000), UTC)
        return f"at({at.strftime('%Y-%m-%dT%H:%M:%S')})"

    def offload(self, items: Sequence[Outgoing], now_ms: int) -> list[str]:
        """One schedule per message, created concurrently (one API call each); returns the
        ids now held by a schedule. The first error other than a conflict is raised."""
        fit = []
        for item in distinct(items):
            body = encode_body(item)
            if len(body) > SCHEDULER_MAX_INPUT:
                log.warning(
                    "deferred message %s is over the schedule input limit; it stays in the "
                    "Redis sorted set",
                    item.id,
                )
            else:
                fit.append((item, body))
        if len(fit) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(16, thread_name_prefix="actor-system")
            results = list(self._pool.map(self._create, fit))
        else:
            results = [self._create(i) for i in fit]
        errors = [r for r in results if isinstance(r, Exception)]
        if errors and len(errors) == len(results):
            raise errors[0]
        for e in errors:
            log.error("%s; the message stays in the Redis sorted set", e)
        return [i.id for (i, _), r in zip(fit, results, strict=True) if r is None]

    def _create(self, item_body: tuple[Outgoing, str]) -> AwsError | None:
        item, body = item_body
        assert item.due_ms is not None
        error: AwsError | None = None
        for _ in range(2):  # once more if the schedule is deleted (it fired) between our calls
            try:
                self._put(self.schedule_name(item.id), item.due_ms, body)
                return None
            except AwsError as e:
                if e.code != "ResourceNotFoundException":
                    return e
                error = e
        return error

    def _put(self, name: str, due_ms: int, body: str) -> None:
        """Create the schedule. If one of that name exists and is for the same due time, it
        is this message sent again: done. Otherwise it is an earlier due time of the same id
        (``Retry(delay=...)`` re-defers under the id while the fired schedule still exists):
        it gets the new time and body, or the re-deferred message would be lost."""
        resource = f"{self.group}/{name}"
        definition: dict[str, Any] = {
            "Name": name,
            "GroupName": self.group,
            "ScheduleExpression": self.expression(due_ms),
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": {"Arn": self.target_arn, "RoleArn": self.role_arn, "Input": body},
            "ActionAfterCompletion": "DELETE",
        }
        try:
            aws_call("CreateSchedule", resource, self.client.create_schedule, **definition)
            return
        except AwsError as e:
            if e.code != "ConflictException":
                raise
        found = aws_call(
            "GetSchedule", resource, self.client.get_schedule, Name=name, GroupName=self.group
        )
        if _due_of(found) != due_ms:
            aws_call("UpdateSchedule", resource, self.client.update_schedule, **definition)

    def receive(self) -> list[Received]:
        return self.queue.receive() if self.queue else []

    def delete(self, receipts: Sequence[str]) -> None:
        if self.queue:
            self.queue.delete(receipts)

    def cancel(self, message_id: str) -> bool:
        """Delete the message's schedule; False if there is none (fired or never made)."""
        name = self.schedule_name(message_id)
        try:
            aws_call(
                "DeleteSchedule",
                f"{self.group}/{name}",
                self.client.delete_schedule,
                Name=name,
                GroupName=self.group,
            )
        except AwsError as e:
            if e.code == "ResourceNotFoundException":
                return False
            raise
        return True

    def pending(self) -> int:
        """Schedules waiting in the group (counted up to 10,000)."""
        n = 0
        token: str | None = None
        for _ in range(100):
            kwargs: dict[str, Any] = {"GroupName": self.group, "MaxResults": 100}
            if token:
                kwargs["NextToken"] = token
            page = aws_call("ListSchedules", self.group, self.client.list_schedules, **kwargs)
            n += len(page.get("Schedules", []))
            token = page.get("NextToken")
            if not token:
                break
        return n

    def check(self) -> None:
        aws_call("GetScheduleGroup", self.group, self.client.get_schedule_group, Name=self.group)
        if self.queue:
            self.queue.check()


def _due_of(schedule: dict[str, Any]) -> int | None:
    """The due time in a schedule's input, None if it holds no deferred message."""
    try:
        body = json.loads(schedule.get("Target", {}).get("Input", ""))
    except ValueError:
        return None
    due = body.get("due_ms") if isinstance(body, dict) else None
    return due if type(due) is int else None


def delay_from_url(url: str) -> ExternalDelay:
    scheme = urlsplit(url).scheme
    if scheme == "sqs":
        return SqsDelayQueue.from_url(url)
    if scheme == "scheduler":
        return SchedulerDelayQueue.from_url(url)
    raise ConfigError(
        f"unknown delay URL {url!r}; expected redis (the default), sqs://queue-name or "
        "scheduler://group?target=...&role=..."
    )
