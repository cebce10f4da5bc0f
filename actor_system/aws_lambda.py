"""The AWS Lambda entry point: parse the event, drain within the remaining time, then hand
over to a fresh invocation or arm one wake for the next due message, and return.

Nothing is left running when the handler returns: the execution environment may be frozen
for minutes or thrown away, so the next drain is always started from outside (SQS, a
schedule or an async invocation), never by a timer of ours.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl

from actor_system import replies
from actor_system.actor import ActorRef
from actor_system.budget import Budget
from actor_system.errors import (
    ActorSystemError,
    BackendError,
    ConfigError,
    InvalidSend,
    MessageTooLarge,
    UnknownActorType,
    UnknownMessageType,
)
from actor_system.logs import configure, reset_request_context, set_request_context
from actor_system.payloads import InvalidPayload, parse_payload
from actor_system.system import arm_wake
from actor_system.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Mapping

    from actor_system.ports import Continuation, Launcher, Waker
    from actor_system.system import ActorSystem

log = logging.getLogger("actor_system")

_PATH = re.compile(r"^/actors/(?P<type>[^/]+)/(?P<id>[^/]+)/messages/?$")


# Before an invocation has measured what its end costs, this much is kept free.
FIRST_MARGIN_S = 0.4
_END_COSTS = 5  # invocations whose end cost the margin is sized from


@dataclass
class LambdaOptions:
    """How the handler hands over work. ``margin_s`` is the least time kept free at the end
    of every invocation; the margin used is sized from what ending an invocation costs
    here (the last commit and the hand-over, measured), see ``margin``. ``max_chain`` bounds
    continuations (AWS stops recursive loops after 16 hops unless the function allows them;
    this limit is what makes allowing them safe)."""

    waker: Waker | None = None
    continuation: Continuation | None = None
    margin_s: float = 0.25
    max_chain: int = 100
    launcher: Launcher | None = None  # starts a long-work worker (ACTOR_SYSTEM_LONG_LANE_URL)
    warned: set[str] = field(default_factory=set)
    # Seconds the end of the last invocations took: the slowest commit plus the hand-over.
    end_costs: list[float] = field(default_factory=list)

    def margin(self, remaining_s: float = math.inf) -> float:
        """Twice the costliest end of the last invocations (FIRST_MARGIN_S before any was
        measured), never below ``margin_s`` nor above a quarter of the ``remaining_s`` of
        the invocation: one slow end (a Redis stall) must not stop the next ones draining."""
        measured = max(self.end_costs) if self.end_costs else FIRST_MARGIN_S / 2
        return max(self.margin_s, min(2 * measured, remaining_s / 4))

    def measured(self, seconds: float) -> None:
        self.end_costs.append(seconds)
        del self.end_costs[:-_END_COSTS]

    @classmethod
    def from_env(
        cls, env: dict[str, str], margin_s: float, max_chain: int, waker: Waker | None = None
    ) -> LambdaOptions:
        """``ACTOR_SYSTEM_WAKER_URL`` (sqs://queue), ``ACTOR_SYSTEM_CONTINUE_URL``
        (lambda://function or sqs://queue; default: the wake queue, else a self-invoke) and
        ``ACTOR_SYSTEM_LONG_LANE_URL`` (ecs://cluster/task-definition?subnets=...: starts
        a long-work worker when the long-work lane has work and none runs)."""
        from actor_system.adapters.aws import LambdaContinuation, launcher_from_url, waker_from_url

        waker_url = env.get("ACTOR_SYSTEM_WAKER_URL")
        if waker is None and waker_url:
            waker = waker_from_url(waker_url)
        continue_url = env.get("ACTOR_SYSTEM_CONTINUE_URL", "")
        # A waker that can also continue (the SQS wake queue) is the default continuation.
        continuation: Continuation | None = None
        if waker is not None and hasattr(waker, "continue_now"):
            continuation = cast("Continuation", waker)
        if continue_url.startswith("lambda://"):
            continuation = LambdaContinuation(function=continue_url.removeprefix("lambda://"))
        elif continue_url:
            continuation = waker_from_url(continue_url)
        elif continuation is None and env.get("AWS_LAMBDA_FUNCTION_NAME"):
            continuation = LambdaContinuation(function=env["AWS_LAMBDA_FUNCTION_NAME"])
            try:
                _ = continuation.client
            except ConfigError as e:
                # Not configured, only assumed (an emulator such as serverless-offline runs
                # the function without boto3): work left goes to the next sweep instead.
                log.warning("no continuation: %s; work left waits for the next sweep", e)
                continuation = None
        launch_url = env.get("ACTOR_SYSTEM_LONG_LANE_URL", "")
        launcher: Launcher | None = launcher_from_url(launch_url) if launch_url else None
        # Create the clients now, in the init phase: at hand-over time the invocation has
        # only its margin left, less than a boto3 import takes.
        for part in (waker, continuation, launcher):
            if part is not None:
                _ = part.client
        return cls(waker, continuation, margin_s, max_chain, launcher=launcher)


def classify(event: Any) -> str | None:
    """The kind of an event: sqs, schedule, deferred, continue, http, or None if unknown."""
    if not isinstance(event, dict):
        return None
    records = event.get("Records")
    if (
        isinstance(records, list)
        and records
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    ):
        return "sqs"
    if event.get("actor_system") == "continue":
        return "continue"
    if event.get("actor_system") in ("sweep", "wake"):
        return "schedule"
    if event.get("actor_system") == "deferred":
        return "deferred"  # a deferred message handed over by its one-time schedule
    if event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event":
        return "schedule"
    if (
        event.get("version") == "2.0"
        and isinstance(event.get("requestContext"), dict)
        and ("http" in event["requestContext"])
    ):
        return "http"
    return None


def make_handler(system: ActorSystem, options: LambdaOptions) -> Any:
    """``handler(event, context)`` for the system; see ActorSystem.lambda_handler."""
    cold = [True]

    def handler(event: Any, context: Any) -> dict[str, Any]:
        if cold[0]:
            # At the first invocation rather than at import: a logger the user sets up
            # after building the handler (powertools) is found and left alone.
            configure_lambda_logging()
        token = set_request_context(**_request_fields(context, cold[0]))
        cold[0] = False
        try:
            return _handle(system, options, event, context)
        finally:
            reset_request_context(token)

    return handler


def configure_lambda_logging(environ: Mapping[str, str] | None = None) -> bool:
    """Give the package's logger a handler on Lambda, where nothing else does: AWS's runtime
    client logs the root logger at WARNING in plain text, so INFO records were dropped and
    ``ACTOR_SYSTEM_LOG_FORMAT`` had no effect. JSON lines by default (powertools' field
    names, with the request id), ``ACTOR_SYSTEM_LOG_FORMAT=text`` for plain text; the level
    from ``ACTOR_SYSTEM_LOG_LEVEL``, else ``AWS_LAMBDA_LOG_LEVEL``, else INFO. A logger the
    user has given handlers (``logging.config``, powertools'
    ``copy_config_to_registered_loggers``) is left as it is. Returns True if configured."""
    env = os.environ if environ is None else environ
    logger = logging.getLogger("actor_system")
    if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
        return False
    fmt = env.get("ACTOR_SYSTEM_LOG_FORMAT", "json").lower()
    level_name = env.get("ACTOR_SYSTEM_LOG_LEVEL") or env.get("AWS_LAMBDA_LOG_LEVEL") or "INFO"
    level = _LEVELS.get(level_name.strip().upper())
    problems = []
    if fmt not in ("json", "text"):
        problems.append(f"ACTOR_SYSTEM_LOG_FORMAT={fmt!r} is not json or text; using json")
        fmt = "json"
    if level is None:
        problems.append(f"log level {level_name!r} is not one of {', '.join(_LEVELS)}; using INFO")
        level = logging.INFO
    configure(fmt, level)
    logger.propagate = False  # the runtime's root handler would print every record again
    for problem in problems:
        logger.warning(problem)
    return True


# Lambda's log levels (TRACE is its finest: Python's DEBUG).
_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "CRITICAL": logging.CRITICAL,
}


def _request_fields(context: Any, cold_start: bool) -> dict[str, Any]:
    """The invocation's fields on every log record, named as powertools names them."""
    fields: dict[str, Any] = {
        "function_request_id": getattr(context, "aws_request_id", None),
        "cold_start": cold_start,
    }
    for name, attr in (
        ("function_name", "function_name"),
        ("function_arn", "invoked_function_arn"),
        ("function_memory_size", "memory_limit_in_mb"),
    ):
        value = getattr(context, attr, None)
        if value is not None:
            fields[name] = value
    trace = os.environ.get("_X_AMZN_TRACE_ID")
    if trace:
        fields["xray_trace_id"] = trace.split(";")[0].removeprefix("Root=")
    return fields


def _handle(
    system: ActorSystem, options: LambdaOptions, event: Any, context: Any
) -> dict[str, Any]:
    kind = classify(event)
    if kind is None:
        keys = sorted(event)[:10] if isinstance(event, dict) else type(event).__name__
        log.error(
            "unrecognized event shape (keys: %s); expected SQS, EventBridge/Scheduler, "
            "a continuation or an HTTP API v2 request",
            keys,
        )
        return {"ok": False, "error": "unrecognized event shape"}
    remaining_s = context.get_remaining_time_in_millis() / 1000 if context else math.inf
    margin_s = options.margin(remaining_s)
    if kind == "http":
        return ingress(system, event, context, margin_s)
    depth = _depth(event, kind)
    # The invocation's own time, on the local clock: the budget must hold even when Redis
    # (whose TIME is the system's clock) cannot be reached.
    budget = Budget.from_context(context, margin_s=margin_s)
    if budget.remaining_s() < 2 * margin_s:
        _warn_once(
            options,
            "timeout",
            f"the function's timeout leaves {budget.remaining_s():.2f}s per invocation, "
            f"{margin_s:.2f}s of which is kept for the commit and hand-over at its end: too "
            f"short to drain; raise the timeout to at least {max(3, 4 * margin_s):.0f}s",
        )
    worker = Worker(system.runtime, budget=budget, exit_when_idle=True)
    could_drain = budget.can_start_turn()
    system.runtime.slowest_commit_s = 0.0
    failures = {
        "batchItemFailures": [
            {"itemIdentifier": r.get("messageId", "")} for r in event.get("Records", [])
        ]
    }
    try:
        _land(system, event, kind)
        report = worker.run()
    except BackendError as e:
        log.error("drain failed: %s", e)
        if kind == "sqs":  # let SQS deliver the wake again later
            return failures
        raise
    drained_at = time.monotonic()
    # A long-work worker is started when this drain handed work over, or a sweep or a
    # continuation finds the lane holding some. A drain that handed work over at the end of
    # its time (an interrupted handler) leaves the start to a continuation, which has time.
    launcher = options.launcher if report.moved or kind == "schedule" or depth else None
    launch_later = launcher is not None and report.moved > 0 and budget.remaining_s() < LAUNCH_S
    try:
        _hand_over(system, options, worker, depth, budget, could_drain, launch_later)
        if launcher is not None and not launch_later:
            _launch(system, launcher, report.moved)
    except ActorSystemError as e:
        # The drained work is committed; only the next start is in doubt. SQS redelivers
        # the wake; otherwise the periodic sweep picks the work up.
        log.error("hand-over failed, the next drain waits for a redelivery or the sweep: %s", e)
        if kind == "sqs":
            return failures
    # What ending this invocation cost: the slowest commit of its drain and the hand-over.
    end_s = system.runtime.slowest_commit_s + time.monotonic() - drained_at
    options.measured(end_s)
    log.info(
        "%s drain: %d message(s) in %d turn(s), %d dead letter(s), %s; end took %.0f ms",
        kind,
        report.messages,
        report.turns,
        report.dead_letters,
        "nothing left"
        if worker.idle_at_exit
        else ("work left, handed over" if could_drain else "no time to drain"),
        end_s * 1000,
    )
    result: dict[str, Any] = {
        "turns": report.turns,
        "messages": report.messages,
        "dead_letters": report.dead_letters,
        "interrupted": report.interrupted,
        "moved": report.moved,
    }
    if kind == "sqs":
        result["batchItemFailures"] = []
    return result


# How long a started long-work worker has to come up and mark itself present before
# another is started (a Fargate task starts in well under a minute).
LAUNCH_MS = 180_000
# The time a start needs at the end of an invocation: RunTask on the quick client (a 1 s
# connect, a 3 s read, tried twice); with less, a continuation starts the worker.
LAUNCH_S = 8.0


def _launch(system: ActorSystem, launcher: Launcher, moved: int) -> None:
    """Start a long-work worker if the lane has work (this drain moved actors there, or a
    sweep finds some) and none runs or is on its way: one for a burst, not one per drain."""
    backend = system.backend
    if not moved and backend.lane_size() == 0:
        return
    if not backend.claim_launch(LAUNCH_MS, int(system.clock.now() * 1000)):
        return
    try:
        task = launcher.start()
    except ActorSystemError as e:
        # Tried again by a sweep once the claim lapses, not by every drain meanwhile.
        log.error(
            "could not start a long-work worker (tried again in %d s): %s", LAUNCH_MS // 1000, e
        )
        return
    log.info("started a long-work worker: %s", task)


def _land(system: ActorSystem, event: dict[str, Any], kind: str) -> None:
    """Deferred messages that arrive in the event (from an SQS delay queue that triggers
    the function, or from a schedule) go to their mailboxes first, or out for another hop."""
    if kind == "deferred":
        bodies: list[Any] = [event]
    elif kind == "sqs":
        bodies = [r.get("body") or "" for r in event["Records"]]
    else:
        return
    now_ms = int(system.clock.now() * 1000)
    landed = system.backend.accept_deferred(bodies, now_ms)
    if landed:
        log.info("%d deferred message(s) arrived with the event", landed)


def _depth(event: dict[str, Any], kind: str) -> int:
    """The continuation depth carried by a direct invocation or by wake-queue messages."""
    if kind == "continue":
        return int(event.get("depth", 0))
    if kind != "sqs":
        return 0
    depths = [0]
    for record in event["Records"]:
        try:
            body = json.loads(record.get("body") or "{}")
            if isinstance(body, dict) and body.get("actor_system") == "continue":
                depths.append(int(body.get("depth", 0)))
        except (ValueError, TypeError):
            pass  # not ours: _land dead-letters it with the reason, the one place that does
    return max(depths)


def _hand_over(
    system: ActorSystem,
    options: LambdaOptions,
    worker: Worker,
    depth: int,
    budget: Budget,
    could_drain: bool,
    launch_later: bool = False,
) -> None:
    backend = system.backend
    now_ms = int(system.clock.now() * 1000)
    if not could_drain:
        # No time to drain at all: a continuation would do the same, up to max_chain.
        log.error(
            "no time to drain in this invocation (margin %.2fs); the work waits for the next "
            "wake or sweep: raise the function's timeout",
            budget.margin_s,
        )
        return
    if not worker.idle_at_exit or launch_later:
        # The budget ended with work possibly left (or a long-work worker to start): continue
        # in a fresh invocation.
        if depth + 1 > options.max_chain:
            log.error(
                "continuation chain depth %d reached max_chain=%d; remaining work waits "
                "for the next wake or sweep",
                depth,
                options.max_chain,
            )
            return
        if options.continuation is not None:
            options.continuation.continue_now(depth + 1)
            return
        _warn_once(
            options,
            "continuation",
            "no continuation configured: work left at the end "
            "of a budget waits for the next wake or sweep",
        )
        return
    if options.waker is None or getattr(options.waker, "max_delay_s", 900) <= 0:
        if backend.next_due_ms() is not None:
            _warn_once(
                options,
                "waker",
                "no waker that can wait: deferred messages wait for the periodic sweep "
                "(set ACTOR_SYSTEM_WAKER_URL=sqs://wake-queue)",
            )
        return
    arm_wake(backend, options.waker, now_ms)


def _warn_once(options: LambdaOptions, key: str, message: str) -> None:
    if key not in options.warned:
        options.warned.add(key)
        log.warning(message)


def _response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body, default=str),
    }


# The keys of an ingress request body; any other is a typo that would be dropped silently.
_BODY_KEYS = ("delay", "idempotency_key", "payload", "type")


def ingress(
    system: ActorSystem, event: dict[str, Any], context: Any = None, margin_s: float = 0.25
) -> dict[str, Any]:
    """``POST /actors/{type}/{id}/messages`` with ``{"type": ..., "payload": {...}}`` and
    optionally ``"delay"`` (seconds) and ``"idempotency_key"``. Authorization is left to API
    Gateway (IAM or a JWT authorizer).

    The actor's turn runs in this invocation when it can (within its remaining time less
    ``margin_s``); what is left goes to a drain. 202 ``{"id"}``. With
    ``?wait=commit`` (and ``&timeout=<s>``, default 10) the answer waits for the commit: 200
    ``{"id", "reply"}`` with the handler's return value, 500 ``{"id", "error"}`` if the
    message was dead-lettered, 202 ``{"id"}`` if the time ran out first (or the message is
    deferred: nothing to wait for).

    People type these requests, so unknown keys, in the body or in the payload, are answered
    with 400 naming them (see actor_system.payloads) instead of being dropped."""
    http = event["requestContext"]["http"]
    match = _PATH.match(event.get("rawPath") or http.get("path", ""))
    if match is None:
        return _response(404, {"error": "not found; POST /actors/{type}/{id}/messages"})
    if http.get("method") != "POST":
        return _response(405, {"error": "method not allowed; use POST"})
    query = _query(event)
    unknown = sorted(set(query) - {"wait", "timeout"})
    if unknown or query.get("wait", "commit") != "commit":
        return _response(400, {"error": "query parameters: wait=commit and timeout=<seconds>"})
    try:
        timeout_s = float(query.get("timeout", _WAIT_S))
        if not 0 < timeout_s <= _MAX_WAIT_S:
            raise ValueError
    except ValueError:
        return _response(400, {"error": f"timeout must be seconds in (0, {_MAX_WAIT_S:g}]"})
    if context is not None:
        timeout_s = min(timeout_s, context.get_remaining_time_in_millis() / 1000 - margin_s)
    if timeout_s <= 0:
        return _response(503, {"error": "no time left in this invocation"})
    raw = event.get("body") or ""
    limit = system.options.max_message_bytes
    if len(raw) > 2 * limit:  # bound the work before decoding anything
        return _response(413, {"error": f"body over max_message_bytes={limit}"})
    try:
        text = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
        body = json.loads(text)
    except ValueError as e:
        return _response(400, {"error": f"body is not JSON: {e}"})
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return _response(400, {"error": 'body must be {"type": "<MessageType>", "payload": {...}}'})
    extra = [key for key in body if key not in _BODY_KEYS]
    if extra:
        noun = "field" if len(extra) == 1 else "fields"
        names = ", ".join(repr(k) for k in extra)
        known = ", ".join(_BODY_KEYS)
        return _response(400, {"error": f"unknown body {noun} {names}; known: {known}"})
    wait = "wait" in query
    return _deliver(system, match["type"], match["id"], body, timeout_s, wait)


_WAIT_S = 10.0  # ?wait=commit without &timeout=
_MAX_WAIT_S = 900.0


def _query(event: dict[str, Any]) -> dict[str, str]:
    params = event.get("queryStringParameters")
    if isinstance(params, dict):
        return {str(k): str(v) for k, v in params.items()}
    return dict(parse_qsl(event.get("rawQueryString") or ""))


def _deliver(
    system: ActorSystem,
    actor: str,
    actor_id: str,
    body: dict[str, Any],
    timeout_s: float,
    wait: bool,
) -> dict[str, Any]:
    """Validate the payload strictly, send it and process it here; answers as ``ingress``
    documents."""
    try:
        ref = ActorRef(actor, actor_id)
        model, _ = system.registry.get(ref.type).resolve(body["type"])
        msg = parse_payload(model, body.get("payload", {}), strict=True)
        key = body.get("idempotency_key")
        if wait and body.get("delay") is None:
            item = system.registry.prepare(
                ref, msg, now_s=system.clock.now(), idempotency_key=key, reply=""
            )
            try:
                ok, value = replies.decode(item.id, system.await_reply(item, timeout_s))
            except replies.NoReply:
                return _response(202, {"id": item.id})
            if not ok:
                return _response(500, {"id": item.id, "error": value})
            return _response(200, {"id": item.id, "reply": value})
        mid = system.send(ref, msg, delay=body.get("delay"), idempotency_key=key, process=timeout_s)
    except (UnknownActorType, UnknownMessageType) as e:
        return _response(404, {"error": str(e)})
    except InvalidPayload as e:
        return _response(400, {"error": str(e), "details": e.details})
    except MessageTooLarge as e:
        return _response(413, {"error": str(e)})
    except InvalidSend as e:
        return _response(400, {"error": str(e)})
    except ActorSystemError as e:
        log.error("ingress failed: %s", e)
        return _response(503, {"error": "temporarily unavailable"})
    return _response(202, {"id": mid})
