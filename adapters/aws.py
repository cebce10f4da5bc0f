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


# What to do about the errors a caller can act on, by AWS error code.
_HINTS = {
    "NoSuchBucket": "the bucket does not exist: create it or fix the URL",
    "AWS.SimpleQueueService.NonExistentQueue": "the queue does not exist: create it or fix the URL",
    "QueueDoesNotExist": "the queue does not exist: create it or fix the URL",
    "ResourceNotFoundException": "the resource does not exist: create it or fix the URL",
    "404": "the resource does not exist: create it or fix the URL",  # HEAD answers carry no code
    "403": "the IAM policy of these credentials does not allow this action here",
    "AccessDenied": "the IAM policy of these credentials does not allow this action here",
    "AccessDeniedException": "the IAM policy of these credentials does not allow this action here",
    "InvalidAccessKeyId": "the AWS credentials are not valid",
    "SignatureDoesNotMatch": "the AWS credentials are not valid",
    "ExpiredToken": "the AWS credentials have expired",
}
_THROTTLED = frozenset(
    ("Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "RequestThrottled")
)
_RETRIES = 5  # attempts in all: botocore retries throttling and 5xx with backoff, not the rest


class AwsError(BackendError):
    """An AWS call failed after botocore's retries; names the operation, the resource and
    the AWS error code, and says what to do where that is known."""

    def __init__(self, operation: str, resource: str, code: str, detail: str) -> None:
        hint = _HINTS.get(code)
        if code in _THROTTLED:
            hint = f"throttled after {_RETRIES} attempts: lower the rate or raise the quota"
        text = f"{operation} on {resource} failed: {code}: {detail}"
        super().__init__(f"{text} ({hint})" if hint else text)
        self.operation = operation
        self.resource = resource
        self.code = code


def aws_client(service: str, *, max_pool_connections: int = 10, quick: bool = False) -> Any:
    """A boto3 client with botocore's retry policy; boto3 is imported here, not at start-up.

    ``quick``: for the calls that start a drain (wakes, continuations), made in the last
    moments of an invocation: a connect gives up after 1 s and a call after 3 s, tried
    twice, so that an unreachable endpoint costs seconds, not botocore's default minutes.
    The endpoint comes from boto3's own ``AWS_ENDPOINT_URL`` (tests point it at a moto server).
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            f"the {service} adapter needs boto3: pip install 'actor-system[aws]'"
        ) from None
    from botocore.exceptions import BotoCoreError

    # Throttling and 5xx are retried with backoff by botocore's adaptive mode.
    timeouts = {"connect_timeout": 1, "read_timeout": 3} if quick else {}
    config = Config(
        retries={"mode": "adaptive", "total_max_attempts": 2 if quick else _RETRIES},
        max_pool_connections=max_pool_connections,
        **timeouts,
    )
    try:
        return boto3.client(service, config=config)
    except BotoCoreError as e:
        raise ConfigError(f"cannot create the {service} client: {e}") from None


def error_code(e: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError, else None."""
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code", "?"))


def aws_call(what: str, resource: str, fn: Any, **kwargs: Any) -> Any:
    """Call ``fn``; botocore errors become AwsError naming ``what`` and ``resource``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as e:
        raise as_aws_error(what, resource, e) from e


def as_aws_error(what: str, resource: str, e: Exception) -> AwsError:
    """The AwsError for a botocore exception raised by ``what`` on ``resource``."""
    code = error_code(e)
    if code is None:
        return AwsError(what, resource, type(e).__name__, str(e))
    message = getattr(e, "response", {}).get("Error", {}).get("Message") or str(e)
    return AwsError(what, resource, code, message)


class SqsQueue:
    """An SQS queue by name or URL; the client and the queue URL are resolved on first use,
    not at import (cold starts)."""

    quick = False  # see aws_client: True for the queue that starts drains

    def __init__(self, *, queue: str, client: Any = None) -> None:
        self.queue = queue
        self._client = client
        self._url = queue if queue.startswith(("https://", "http://")) else None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("sqs", quick=self.quick)
        return self._client

    @property
    def queue_url(self) -> str:
        if self._url is None:
            found = aws_call(
                "GetQueueUrl", self.queue, self.client.get_queue_url, QueueName=self.queue
            )
            self._url = str(found["QueueUrl"])
        return self._url


class SqsWaker(SqsQueue):
    """Wakes the drain function through its SQS wake queue (the function's SQS trigger)."""

    max_delay_s = MAX_SQS_DELAY_S
    quick = True

    def wake_at(self, due_ms: int, now_ms: int) -> None:
        """One wake message, visible at the due time (or after 15 minutes, the SQS maximum:
        the drain that wakes then arms the next hop)."""
        delay = min(max(math.ceil((due_ms - now_ms) / 1000), 0), MAX_SQS_DELAY_S)
        self._send({"actor_system": "wake", "due_ms": due_ms}, delay)

    def wake_now(self) -> None:
        """Start a drain now (a send found the system at rest)."""
        self._send({"actor_system": "wake"}, 0)

    def continue_now(self, depth: int) -> None:
        self._send({"actor_system": "continue", "depth": depth}, 0)

    def _send(self, body: dict[str, Any], delay_s: int) -> None:
        aws_call(
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
            self._client = aws_client("lambda", quick=True)
        return self._client

    def continue_now(self, depth: int) -> None:
        self._invoke({"actor_system": "continue", "depth": depth})

    def _invoke(self, event: dict[str, Any]) -> None:
        aws_call(
            "Invoke",
            self.function,
            self.client.invoke,
            FunctionName=self.function,
            InvocationType="Event",
            Payload=json.dumps(event).encode(),
        )


class LambdaWaker(LambdaContinuation):
    """Wakes the drain function by invoking it asynchronously: for sends that find the
    system at rest. It cannot wait (``max_delay_s`` 0): deferred messages are then woken
    for by the periodic sweep; use an SQS wake queue for both."""

    max_delay_s = 0

    def wake_now(self) -> None:
        self._invoke({"actor_system": "wake"})

    def wake_at(self, due_ms: int, now_ms: int) -> None:
        raise ConfigError("lambda:// wakers cannot wake later; use sqs://wake-queue")


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
            self._client = aws_client("scheduler")
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
            aws_call(
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
        except AwsError as e:
            if e.code != "ConflictException":
                raise

    def wake_now(self) -> None:
        self.near.wake_now()

    def continue_now(self, depth: int) -> None:
        self.near.continue_now(depth)


def waker_from_url(url: str) -> SqsWaker | SchedulerWaker | LambdaWaker:
    """``sqs://queue-name``, an SQS queue URL,
    ``scheduler://group?target=<function arn>&role=<role arn>&queue=<wake queue>`` or
    ``lambda://function`` (wakes on send only)."""
    parts = urlsplit(url)
    if parts.scheme == "lambda" and parts.netloc:
        return LambdaWaker(function=parts.netloc + parts.path)
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
        f"unknown waker URL {url!r}; expected sqs://queue-name, an SQS queue URL, "
        "scheduler://group?target=...&role=...&queue=... or lambda://function"
    )


class EcsLauncher:
    """Starts a long-work worker: one ECS task (Fargate by default) of the task definition
    whose command is ``actor-system worker --lane long``; it ends once the lane stays empty.
    """

    def __init__(
        self,
        *,
        cluster: str,
        task_definition: str,
        subnets: tuple[str, ...] = (),
        security_groups: tuple[str, ...] = (),
        public_ip: bool = False,
        launch_type: str = "FARGATE",
        client: Any = None,
    ) -> None:
        self.cluster = cluster
        self.task_definition = task_definition
        self.subnets = subnets
        self.security_groups = security_groups
        self.public_ip = public_ip
        self.launch_type = launch_type
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("ecs", quick=True)
        return self._client

    def start(self) -> str:
        """Run one task; returns its ARN. AwsError when ECS refuses it."""
        kwargs: dict[str, Any] = {
            "cluster": self.cluster,
            "taskDefinition": self.task_definition,
            "count": 1,
            "launchType": self.launch_type,
            "startedBy": "actor-system",
        }
        if self.subnets:
            kwargs["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(self.subnets),
                    "securityGroups": list(self.security_groups),
                    "assignPublicIp": "ENABLED" if self.public_ip else "DISABLED",
                }
            }
        resource = f"{self.cluster}/{self.task_definition}"
        answer = aws_call("RunTask", resource, self.client.run_task, **kwargs)
        failures = answer.get("failures") or []
        tasks = answer.get("tasks") or []
        if failures or not tasks:
            reason = "; ".join(f"{f.get('arn', '')} {f.get('reason', '')}" for f in failures)
            raise AwsError("RunTask", resource, "TaskNotStarted", reason or "no task started")
        return str(tasks[0]["taskArn"])


def launcher_from_url(url: str) -> EcsLauncher:
    """``ecs://<cluster>/<task definition>?subnets=a,b&security_groups=sg&public_ip=1``:
    Fargate tasks in those subnets (``launch_type=EC2`` for an EC2 cluster)."""
    parts = urlsplit(url)
    task = parts.path.strip("/")
    if parts.scheme != "ecs" or not parts.netloc or not task:
        raise ConfigError(
            f"unknown long-work launcher URL {url!r}; expected "
            "ecs://<cluster>/<task definition>?subnets=<ids>&security_groups=<ids>"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"subnets", "security_groups", "public_ip", "launch_type"})
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} in {url!r}")
    launch_type = query.get("launch_type") or "FARGATE"
    if launch_type not in ("FARGATE", "EC2", "EXTERNAL"):
        raise ConfigError(f"launch_type={launch_type!r} in {url!r}: FARGATE, EC2 or EXTERNAL")

    def ids(name: str) -> tuple[str, ...]:
        return tuple(s for s in query.get(name, "").split(",") if s)

    subnets = ids("subnets")
    if launch_type == "FARGATE" and not subnets:
        raise ConfigError(f"{url!r} names no subnets: a Fargate task needs subnets=<ids>")
    return EcsLauncher(
        cluster=parts.netloc,
        task_definition=task,
        subnets=subnets,
        security_groups=ids("security_groups"),
        public_ip=query.get("public_ip", "") in ("1", "true", "ENABLED"),
        launch_type=launch_type,
    )


def url_number(
    url: str, query: dict[str, str], name: str, default: float, *, positive: bool = False
) -> float:
    """A number of seconds from a store URL's query: ``default`` when absent; ConfigError
    naming the parameter and the URL when it is not a finite number >= 0 (> 0: positive)."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} in {url!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name}={raw!r} in {url!r} must be a number {bound}")
    return value
