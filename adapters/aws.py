"""AWS wakers: start a drain later (SQS DelaySeconds) or now (SQS message, async self-invoke).

boto3 is imported only when one of these is built (Lambda cold starts); the endpoint can be
overridden with boto3's own ``AWS_ENDPOINT_URL`` (tests point it at a moto server).
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

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
        body = json.dumps({"actor_system": "wake", "due_ms": due_ms})
        _call(
            "SendMessage",
            self.queue,
            self.client.send_message,
            QueueUrl=self.queue_url,
            MessageBody=body,
            DelaySeconds=delay,
        )

    def continue_now(self, depth: int) -> None:
        body = json.dumps({"actor_system": "continue", "depth": depth})
        _call(
            "SendMessage",
            self.queue,
            self.client.send_message,
            QueueUrl=self.queue_url,
            MessageBody=body,
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


def waker_from_url(url: str) -> SqsWaker:
    """``sqs://queue-name`` or an SQS queue URL."""
    parts = urlsplit(url)
    if parts.scheme == "sqs" and parts.netloc:
        return SqsWaker(queue=parts.netloc + parts.path)
    if parts.scheme in ("https", "http") and len(parts.path.strip("/").split("/")) == 2:
        return SqsWaker(queue=url)  # a queue URL: /<account id>/<queue name>
    raise ConfigError(f"unknown waker URL {url!r}; expected sqs://queue-name or an SQS queue URL")
