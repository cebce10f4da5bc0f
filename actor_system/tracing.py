"""OpenTelemetry tracing, optional: on when the application configures a tracer provider.

The core imports only ``opentelemetry-api``, and only once the application has imported it
itself (to configure a provider): without it, or without a provider (the API's default
proxy or no-op one), every hook below answers None after a dictionary lookup or two and no
span is made. A provider configured after ``actor_system`` was imported is found by the
next turn or send; ``ActorSystem(..., tracer_provider=...)`` gives one system a provider of
its own instead of the global one.

What is traced:

* ``actor-system send <MessageType>`` (PRODUCER): ``system.send``, ``send_many`` and ``ask``;
* ``actor-system turn <actor type>`` (CONSUMER): one turn of one actor, linked to the trace
  context of each message it claimed (OpenTelemetry's messaging conventions for a batch);
* ``actor-system handle <MessageType>`` (CONSUMER): one handler call, a child of the
  context its message was sent in (of the turn's span when it was sent outside any trace),
  linked to the turn's span.

A message sent while a span is current carries the W3C trace context of that span (the
envelope's ninth field, Envelope.trace): a handler's span is current while it runs, so its
sends, deferred or not, and its replies continue its trace.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from actor_system.envelope import MAX_TRACE_CHARS, decode
from actor_system.errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from opentelemetry.context import Context as OtelContext
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Link, Span, Tracer, TracerProvider

    from actor_system.envelope import Envelope, Outgoing
    from actor_system.runtime import DrainReport

log = logging.getLogger("actor_system")


SYSTEM = "actor-system"
_API = "opentelemetry.trace"  # imported by whoever configures a provider
_NOTHING: AbstractContextManager[None] = nullcontext()
_MISSING = object()
_w3c: TextMapPropagator | None = None


class Tracing:
    """The tracing of one system: its own tracer provider, else the global one."""

    __slots__ = ("_provider", "_tracer")

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = None

    def tracer(self) -> Tracer | None:
        """The tracer, None while tracing is off. Cheap: a lookup in ``sys.modules`` while
        OpenTelemetry is not imported, a look at the API's global provider while none is
        set; a provider, once found, stays (the global one is set once per process)."""
        found = self._tracer
        if found is None:
            provider = self._provider if self._provider is not None else _global_provider()
            if provider is not None:
                found = self._tracer = provider.get_tracer("actor_system", _version())
        return found

    def carrier(self) -> dict[str, str] | None:
        """The W3C trace context of the current span for a message sent now (its
        ``traceparent``, and ``tracestate`` if any); None outside a trace or tracing off."""
        if self.tracer() is None:
            return None
        return current_carrier()

    def sending(self, what: object) -> AbstractContextManager[Span | None]:
        """A PRODUCER span around a send from outside a turn, current while the message is
        prepared (so it carries the span's context); ``what`` is the message, or the
        (ref, message) pairs of ``send_many``. Yields None when tracing is off."""
        tracer = self.tracer()
        if tracer is None:
            return _NOTHING
        from opentelemetry.trace import SpanKind

        name = _message_type(what)
        try:
            span = tracer.start_as_current_span(
                f"{SYSTEM} send {name}" if name else f"{SYSTEM} send",
                kind=SpanKind.PRODUCER,
                attributes={"messaging.system": SYSTEM, "messaging.operation.type": "send"},
            )
        except Exception:
            log.exception("tracing a send failed; it goes without a span")
            return _NOTHING
        return _guarded(span)

    def turn(
        self, actor: str, actor_type: str, entries: Sequence[tuple[bytes, int]]
    ) -> Turn | None:
        """The span of a turn, made current until its ``end``; None when tracing is off."""
        tracer = self.tracer()
        if tracer is None:
            return None
        try:
            return Turn(tracer, actor, actor_type, entries)
        except Exception:
            # A broken provider or sampler must not fail the turn: it runs untraced.
            log.exception("tracing a turn of %s failed; it runs without a span", actor)
            return None


def sent(span: Span, items: Sequence[Outgoing]) -> None:
    """Describe the messages a send span sent, once they are prepared."""
    if not span.is_recording():
        return
    if len(items) == 1:
        span.set_attribute("messaging.message.id", items[0].id)
    else:
        span.set_attribute("messaging.batch.message_count", len(items))
    targets = {i.target for i in items}
    if len(targets) == 1:
        target = targets.pop()
        span.set_attributes(
            {
                "messaging.destination.name": target,
                "actor_system.actor": target,
                "actor_system.actor_type": target.partition("/")[0],
            }
        )


class Turn:
    """The span of one turn, current while its handlers run."""

    __slots__ = ("_contexts", "_handler", "_token", "actor", "actor_type", "span", "tracer")

    def __init__(
        self, tracer: Tracer, actor: str, actor_type: str, entries: Sequence[tuple[bytes, int]]
    ) -> None:
        from opentelemetry import context
        from opentelemetry.trace import SpanKind, set_span_in_context

        self.tracer = tracer
        self.actor = actor
        self.actor_type = actor_type
        # The contexts of the turn's messages by their trace fields (a batch often shares
        # one: a send_many, a handler's sends): each parsed once.
        self._contexts: dict[tuple[str, str], OtelContext | None] = {}
        self.span = tracer.start_span(
            f"{SYSTEM} turn {actor_type}",
            kind=SpanKind.CONSUMER,
            links=self._links(entries),
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.destination.name": actor,
                "messaging.batch.message_count": len(entries),
                "actor_system.actor": actor,
                "actor_system.actor_type": actor_type,
            },
        )
        self._token = context.attach(set_span_in_context(self.span))
        self._handler: Handling | None = None

    def handler(self, env: Envelope, attempt: int, now_s: float) -> Handling | None:
        """The span of one handler call, current until its ``end``: a child of the context
        the message was sent in, else of the turn; None if the tracer fails (the handler
        runs untraced)."""
        try:
            return self._handler_span(env, attempt, now_s)
        except Exception:
            log.exception("tracing a handler of %s failed; it runs without a span", self.actor)
            return None

    def _handler_span(self, env: Envelope, attempt: int, now_s: float) -> Handling:
        from opentelemetry.trace import Link, SpanKind

        parent = self._context_of(env.trace)
        attributes: dict[str, str | int | float] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": self.actor,
            "messaging.message.id": env.id,
            "actor_system.actor": self.actor,
            "actor_system.actor_type": self.actor_type,
            "actor_system.message_type": env.type,
            "actor_system.attempt": attempt,
        }
        if env.due_at_ms is not None:
            # How late a deferred message runs: its due time to this turn's time.
            attributes["actor_system.lateness_s"] = round(now_s - env.due_at_ms / 1000, 6)
        span = self.tracer.start_span(
            f"{SYSTEM} handle {env.type}",
            context=parent,  # None: the current context, the turn's
            kind=SpanKind.CONSUMER,
            links=None if parent is None else [Link(self.span.get_span_context())],
            attributes=attributes,
        )
        self._handler = Handling(span)
        return self._handler

    def _context_of(self, carrier: dict[str, str] | None) -> OtelContext | None:
        if carrier is None:
            return None
        key = (carrier["traceparent"], carrier.get("tracestate", ""))
        if key not in self._contexts:
            self._contexts[key] = _context_of(carrier)
        return self._contexts[key]

    def _links(self, entries: Sequence[tuple[bytes, int]]) -> list[Link]:
        """One link per distinct trace context among the turn's messages."""
        from opentelemetry.trace import Link, get_current_span

        links: dict[tuple[int, int], Link] = {}
        for entry, _ in entries:
            try:
                carrier = decode(entry).trace
            except DecodeError:
                continue  # dead-lettered by the turn
            found = self._context_of(carrier)
            if found is not None:
                span_context = get_current_span(found).get_span_context()
                key = (span_context.trace_id, span_context.span_id)
                links.setdefault(key, Link(span_context))
        return list(links.values())

    def end(self, report: DrainReport) -> None:
        """End the turn's span with what it did (a handler's span left open by an exception
        that is not an Exception ends with it)."""
        from opentelemetry import context

        try:
            if self._handler is not None:
                self._handler.end(None)
            if self.span.is_recording():
                self.span.set_attributes(
                    {
                        "actor_system.messages": report.messages,
                        "actor_system.retries": report.retries,
                        "actor_system.dead_letters": report.dead_letters,
                    }
                )
            context.detach(self._token)
            self.span.end()
        except Exception:  # the turn is done: a failing exporter must not undo it
            log.exception("ending the span of a turn of %s failed", self.actor)


class Handling:
    """The span of one handler call; ``end`` with what it raised, if anything."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        from opentelemetry import context
        from opentelemetry.trace import set_span_in_context

        self.span = span
        self._token: Any = context.attach(set_span_in_context(span))

    def end(self, error: BaseException | None) -> None:
        if self._token is None:
            return  # ended already
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        token, self._token = self._token, None
        try:
            if error is not None:
                self.span.record_exception(error)
                self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            context.detach(token)
            self.span.end()
        except Exception:  # the handler is done: a failing exporter must not undo it
            log.exception("ending the span of a handler failed")


@contextmanager
def _guarded(span: AbstractContextManager[Span]) -> Iterator[Span | None]:
    """``span`` as a context, except that a tracer failing to start or end it costs the
    send its span, never the send."""
    try:
        entered = span.__enter__()
    except Exception:
        log.exception("tracing a send failed; it goes without a span")
        yield None
        return
    try:
        yield entered
    except BaseException as e:
        if not span.__exit__(type(e), e, e.__traceback__):
            raise
    else:
        try:
            span.__exit__(None, None, None)
        except Exception:
            log.exception("ending the span of a send failed")


def current_carrier() -> dict[str, str] | None:
    """The W3C trace context of the current span; None outside a trace."""
    if _API not in sys.modules:
        return None
    from opentelemetry.trace import get_current_span

    if not get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    state = carrier.get("tracestate")
    if state is not None and len(state) > MAX_TRACE_CHARS:
        del carrier["tracestate"]  # what a receiver would drop: not worth its bytes
    return carrier if "traceparent" in carrier else None


def log_ids() -> tuple[str, str] | None:
    """The trace and span ids of the current span in hex, for a log record; None outside
    a trace (or without OpenTelemetry)."""
    if _API not in sys.modules:
        return None
    from opentelemetry.trace import get_current_span

    found = get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return f"{found.trace_id:032x}", f"{found.span_id:016x}"


def _global_provider() -> TracerProvider | None:
    """The global tracer provider if the application configured one, else None."""
    api = sys.modules.get(_API)
    if api is None:
        return None  # not imported, so not configured (redis-py imports it if installed)
    # Until set_tracer_provider, the API's module global is None: known without the
    # environment lookup of get_tracer_provider, which would cost a microsecond per turn
    # and per send. An API without that global takes the public way every time.
    if getattr(api, "_TRACER_PROVIDER", _MISSING) is None and not _provider_in_environment():
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # nobody configured one: tracing is off
    return provider


@cache
def _provider_in_environment() -> bool:
    """Whether OTEL_PYTHON_TRACER_PROVIDER names a provider, which the API loads on the first
    get_tracer_provider: read once per process."""
    from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER

    return OTEL_PYTHON_TRACER_PROVIDER in os.environ


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("actor-system")
    except PackageNotFoundError:
        return "0"


def _propagator() -> TextMapPropagator:
    global _w3c
    if _w3c is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _w3c = TraceContextTextMapPropagator()
    return _w3c


def _context_of(carrier: dict[str, str] | None) -> OtelContext | None:
    """The context a message's trace fields continue; None if it has none or they are not
    a valid trace context (ignored: a message is never failed for them)."""
    if carrier is None:
        return None
    from opentelemetry.trace import get_current_span

    try:
        found = _propagator().extract(carrier)
    except Exception:  # values the propagator chokes on: no trace to continue
        return None
    return found if get_current_span(found).get_span_context().is_valid else None


def _message_type(what: object) -> str:
    """The message type a send span is named after: the message's, or the one type of all
    the (ref, message) pairs of a ``send_many``; "" when there is none."""
    if isinstance(what, BaseModel):
        return type(what).__name__
    if not isinstance(what, list | tuple):
        return ""
    names = {type(p[1]).__name__ for p in what if isinstance(p, tuple) and len(p) == 2}
    return names.pop() if len(names) == 1 else ""
