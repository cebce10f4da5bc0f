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
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actor_system.actor import ActorRef
from actor_system.budget import Budget
from actor_system.errors import (
    ActorSystemError,
    BackendError,
    InvalidSend,
    MessageTooLarge,
    UnknownActorType,
    UnknownMessageType,
)
from actor_system.logs import reset_request_context, set_request_context
from actor_system.payloads import InvalidPayload, parse_payload
from actor_system.worker import Worker

if TYPE_CHECKING:
    from actor_system.ports import Continuation, Waker
    from actor_system.system import ActorSystem

log = logging.getLogger("actor_system")

_PATH = re.compile(r"^/actors/(?P<type>[^/]+)/(?P<id>[^/]+)/messages/?$")


@dataclass
class LambdaOptions:
    """How the handler hands over work. ``margin_s`` is kept free at the end of every
    invocation; ``max_chain`` bounds continuations (AWS stops recursive loops after 16 hops
    unless the function allows them; this limit is what makes allowing them safe)."""

    waker: Waker | None = None
    continuation: Continuation | None = None
    margin_s: float = 2.0
    max_chain: int = 100
    warned: set[str] = field(default_factory=set)

    @classmethod
    def from_env(cls, env: dict[str, str], margin_s: float, max_chain: int) -> LambdaOptions:
        """``ACTOR_SYSTEM_WAKER_URL`` (sqs://queue) and ``ACTOR_SYSTEM_CONTINUE_URL``
        (lambda://function or sqs://queue; default: the wake queue, else a self-invoke)."""
        from adapters.aws import LambdaContinuation, waker_from_url

        waker_url = env.get("ACTOR_SYSTEM_WAKER_URL")
        waker = waker_from_url(waker_url) if waker_url else None
        continue_url = env.get("ACTOR_SYSTEM_CONTINUE_URL", "")
        continuation: Continuation | None = waker
        if continue_url.startswith("lambda://"):
            continuation = LambdaContinuation(function=continue_url.removeprefix("lambda://"))
        elif continue_url:
            continuation = waker_from_url(continue_url)
        elif waker is None and env.get("AWS_LAMBDA_FUNCTION_NAME"):
            continuation = LambdaContinuation(function=env["AWS_LAMBDA_FUNCTION_NAME"])
        # Create the clients now, in the init phase: at hand-over time the invocation has
        # only its margin left, less than a boto3 import takes.
        for part in (waker, continuation):
            if part is not None:
                _ = part.client
        return cls(waker, continuation, margin_s, max_chain)


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
        token = set_request_context(
            function_request_id=getattr(context, "aws_request_id", None), cold_start=cold[0]
        )
        cold[0] = False
        try:
            return _handle(system, options, event, context)
        finally:
            reset_request_context(token)

    return handler


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
    if kind == "http":
        return ingress(system, event)
    depth = _depth(event, kind)
    # The invocation's own time, on the local clock: the budget must hold even when Redis
    # (whose TIME is the system's clock) cannot be reached.
    budget = Budget.from_context(context, margin_s=options.margin_s)
    worker = Worker(system.runtime, budget=budget, exit_when_idle=True)
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
    try:
        _hand_over(system, options, worker, depth)
    except ActorSystemError as e:
        # The drained work is committed; only the next start is in doubt. SQS redelivers
        # the wake; otherwise the periodic sweep picks the work up.
        log.error("hand-over failed, the next drain waits for a redelivery or the sweep: %s", e)
        if kind == "sqs":
            return failures
    result: dict[str, Any] = {
        "turns": report.turns,
        "messages": report.messages,
        "dead_letters": report.dead_letters,
        "interrupted": report.interrupted,
    }
    if kind == "sqs":
        result["batchItemFailures"] = []
    return result


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
            log.warning("wake-queue message %s is not ours; ignored", record.get("messageId"))
    return max(depths)


def _hand_over(system: ActorSystem, options: LambdaOptions, worker: Worker, depth: int) -> None:
    backend = system.backend
    now_ms = int(system.clock.now() * 1000)
    if not worker.idle_at_exit:
        # The budget ended with work possibly left: continue in a fresh invocation.
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
    next_due = backend.next_due_ms()
    if next_due is None:
        return
    if options.waker is None:
        _warn_once(
            options,
            "waker",
            "no waker configured: deferred messages wait for the "
            "periodic sweep (set ACTOR_SYSTEM_WAKER_URL=sqs://wake-queue)",
        )
        return
    # A wake fires at the due time or at the waker's horizon (SQS: 15 minutes), whichever
    # comes first; the drain it starts arms the next hop.
    horizon_ms = int(getattr(options.waker, "max_delay_s", 900) * 1000)
    fire_ms = min(next_due, now_ms + horizon_ms)
    if backend.claim_wake(fire_ms, now_ms):
        options.waker.wake_at(next_due, now_ms)


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


def ingress(system: ActorSystem, event: dict[str, Any]) -> dict[str, Any]:
    """``POST /actors/{type}/{id}/messages`` with ``{"type": ..., "payload": {...}}`` and
    optionally ``"delay"`` (seconds) and ``"idempotency_key"``. Authorization is left to API
    Gateway (IAM or a JWT authorizer).

    People type these requests, so unknown keys, in the body or in the payload, are answered
    with 400 naming them (see actor_system.payloads) instead of being dropped."""
    http = event["requestContext"]["http"]
    match = _PATH.match(event.get("rawPath") or http.get("path", ""))
    if match is None:
        return _response(404, {"error": "not found; POST /actors/{type}/{id}/messages"})
    if http.get("method") != "POST":
        return _response(405, {"error": "method not allowed; use POST"})
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
    return _deliver(system, match["type"], match["id"], body)


def _deliver(
    system: ActorSystem, actor: str, actor_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Validate the payload strictly and send it; answers as ``ingress`` documents."""
    try:
        ref = ActorRef(actor, actor_id)
        model, _ = system.registry.get(ref.type).resolve(body["type"])
        msg = parse_payload(model, body.get("payload", {}), strict=True)
        mid = system.send(
            ref, msg, delay=body.get("delay"), idempotency_key=body.get("idempotency_key")
        )
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
