"""AWS wakers: start a drain later (SQS DelaySeconds) or now (SQS message, async self-invoke).

boto3 is imported only when one of these is built (Lambda cold starts); the endpoint can be
overridden with boto3's own ``AWS_ENDPOINT_URL`` (tests point it at a moto server).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from actor_system.errors import BackendError, ConfigError

MAX_SQS_DELAY_S = 900


def _client(service: str) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            f"the {service} waker needs boto3: pip install 'actor-system[aws]'"
        ) from None
    from botocore.exceptions import BotoCoreError

    # Throttling and 5xx are retried with backoff by botocore's adaptive mode.
    config = Config(retries={"mode": "adaptive", "max_attempts": 5})
    try:
        return boto3.client(service, config=config)
    except BotoCoreError as e:
        raise ConfigError(f"cannot create the {service} client: {e}") from None


def _call(what: str, resource: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        raise BackendError(f"{what} on {resource} failed: {code}: {e}") from e
    except BotoCoreError as e:
        raise BackendError(f"{what} on {resource} failed: {e}") from e


class SqsWaker:
    """Wakes the drain function through its SQS wake queue (the function's SQS trigger).

    The client and the queue URL are resolved on first use, not at import (cold starts).
    """

    max_delay_s = MAX_SQS_DELAY_S

    def __init__(self, *, queue: str, client: Any = None) -> None:
        self.queue = queue
        self._client = client
        self._url = queue if queue.startswith(("https://", "http://")) else None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client("sqs")
        return self._client

    @property
    def queue_url(self) -> str:
        if self._url is None:
            found = _call(
                "GetQueueUrl", self.queue, self.client.get_queue_url, QueueName=self.queue
            )
            self._url = str(found["QueueUrl"])
        return self._url

    def wake_at(self, due_ms: int, now_ms: int) -> None:
        """One wake message, visible at the due time (or after 15 minutes, the SQS maximum:
        the drain that wakes then arms the next hop)."""
        delay = min(max(math.ceil((due_ms - now_ms) / 1000), 0), MAX_SQS_DELAY_S)
        self._send({"actor_system": "wake", "due_ms": due_ms}, delay)

    def continue_now(self, depth: int) -> None:
        self._send({"actor_system": "continue", "depth": depth}, 0)

    def _send(self, body: dict[str, Any], delay_s: int) -> None:
        _call(
            "SendMessage",
            self.queue,
            self.client.send_message,
            QueueUrl=self.queue_url,
            MessageBody=json.dumps(body),
            DelaySeconds=delay_s,
        )


class LambdaContinuation:
    """Continues a drain in a fresh invocation of the same function (async self-invoke)."""

    def __init__(self, *, function: str, client: Any = None) -> None:
        self._client = client
        self.function = function

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client("lambda")
        return self._client

    def continue_now(self, depth: int) -> None:
        payload = json.dumps({"actor_system": "continue", "depth": depth}).encode()
        _call(
            "Invoke",
            self.function,
            self.client.invoke,
            FunctionName=self.function,
            InvocationType="Event",
            Payload=payload,
        )


class SchedulerWaker:
    """Wakes the drain function with a one-time EventBridge Scheduler schedule: for wakes
    beyond the SQS horizon (15 minutes), with one-minute granularity; nearer ones go
    through ``near`` (the SQS waker). Schedules delete themselves after they fire."""

    max_delay_s = 366 * 24 * 3600

    def __init__(
        self, *, group: str, target_arn: str, role_arn: str, near: SqsWaker, client: Any = None
    ) -> None:
        self.group = group
        self.target_arn = target_arn
        self.role_arn = role_arn
        self.near = near
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client("scheduler")
            _ = self.near.client
        return self._client

    def wake_at(self, due_ms: int, now_ms: int) -> None:
        if due_ms - now_ms <= MAX_SQS_DELAY_S * 1000:
            self.near.wake_at(due_ms, now_ms)
            return
        at = datetime.fromtimestamp(math.ceil(due_ms / 1000), UTC).strftime("%Y-%m-%dT%H:%M:%S")
        name = f"wake-{due_ms}"  # the same due time twice is the same schedule
        target = {
            "Arn": self.target_arn,
            "RoleArn": self.role_arn,
            "Input": json.dumps({"actor_system": "wake", "due_ms": due_ms}),
        }
        try:
            _call(
                "CreateSchedule",
                f"{self.group}/{name}",
                self.client.create_schedule,
                Name=name,
                GroupName=self.group,
                ScheduleExpression=f"at({at})",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                Target=target,
                ActionAfterCompletion="DELETE",
            )
        except BackendError as e:
            if "ConflictException" not in str(e):
                raise

    def continue_now(self, depth: int) -> None:
        self.near.continue_now(depth)


def waker_from_url(url: str) -> SqsWaker | SchedulerWaker:
    """``sqs://queue-name``, an SQS queue URL, or
    ``scheduler://group?target=<function arn>&role=<role arn>&queue=<wake queue>``."""
    parts = urlsplit(url)
    if parts.scheme == "sqs" and parts.netloc:
        return SqsWaker(queue=parts.netloc + parts.path)
    if parts.scheme in ("https", "http") and len(parts.path.strip("/").split("/")) == 2:
        return SqsWaker(queue=url)  # a queue URL: /<account id>/<queue name>
    if parts.scheme == "scheduler" and parts.netloc:
        query = dict(parse_qsl(parts.query))
        missing = [k for k in ("target", "role", "queue") if not query.get(k)]
        if missing:
            raise ConfigError(
                f"waker URL {url!r} lacks {', '.join(missing)}; expected "
                "scheduler://group?target=<function arn>&role=<role arn>&queue=<wake queue>"
            )
        near = SqsWaker(queue=query["queue"])
        return SchedulerWaker(
            group=parts.netloc, target_arn=query["target"], role_arn=query["role"], near=near
        )
    raise ConfigError(
        f"unknown waker URL {url!r}; expected sqs://queue-name, an SQS queue URL or "
        "scheduler://group?target=...&role=...&queue=..."
    )
