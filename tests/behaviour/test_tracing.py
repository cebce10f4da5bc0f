"""OpenTelemetry tracing: sends carry the trace context, turns and handlers are spans, JSON logs
carry the trace id; on fakeredis and redis-server (the deferred follow-up on every store).

The spans go to a provider of the tests' own, given to each system (``tracer_provider=``):
the global provider, which can be set once per process, is set only in a subprocess.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from pydantic import BaseModel

from actor_system import ActorSystem, ActorType, Context, ManualClock
from actor_system.envelope import ID_LENGTH, Envelope, Outgoing, decode, encode
from actor_system.logs import JsonFormatter
from tests.actors import Boom, Later, LogState, Note, logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("tests")
log = logging.getLogger("tests.tracing")


class Forward(BaseModel):
    text: str
    to: str
    delay: float | None = None


class ForwardAsync(BaseModel):
    text: str
    to: str


relay = ActorType("relay", state=LogState)


@relay.handler
def forward(ctx: Context[LogState], msg: Forward) -> None:
    log.info("relaying %s", msg.text)
    ctx.send(logger.ref(msg.to), Note(text=msg.text), delay=msg.delay)


@relay.handler
async def forward_async(ctx: Context[LogState], msg: ForwardAsync) -> None:
    ctx.send(logger.ref(msg.to), Note(text=msg.text))


@pytest.fixture(autouse=True)
def _spans() -> Iterator[None]:
    EXPORTER.clear()
    yield
    EXPORTER.clear()


@pytest.fixture
def traced(url: str, clock: ManualClock) -> Iterator[Callable[..., ActorSystem]]:
    """A system on fakeredis or redis-server whose spans go to EXPORTER."""
    systems: list[ActorSystem] = []

    def make(*actors: ActorType[Any], **options: Any) -> ActorSystem:
        system = ActorSystem.from_url(
            url, actors=actors, clock=clock, tracer_provider=PROVIDER, **options
        )
        systems.append(system)
        return system

    yield make
    for s in systems:
        s.close()


def spans(name: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


def one(name: str) -> ReadableSpan:
    [found] = spans(name)
    return found


def ids(span: ReadableSpan | SpanContext | None) -> tuple[int, int]:
    """(trace id, span id) of a span or span context."""
    assert span is not None
    context = span if isinstance(span, SpanContext) else span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


def traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def fields(item: Outgoing) -> list[Any]:
    body: list[Any] = msgpack.unpackb(item.entry[ID_LENGTH:], raw=False)
    return body


def handle_attributes(actor: str, mid: str, mtype: str, attempt: int = 1) -> dict[str, Any]:
    return {
        "messaging.system": "actor-system",
        "messaging.operation.type": "process",
        "messaging.destination.name": actor,
        "messaging.message.id": mid,
        "actor_system.actor": actor,
        "actor_system.actor_type": actor.partition("/")[0],
        "actor_system.message_type": mtype,
        "actor_system.attempt": attempt,
    }


def test_a_message_sent_inside_a_span_is_handled_in_its_trace(traced) -> None:
    system: ActorSystem = traced(logger)
    with TRACER.start_as_current_span("request") as request:
        mid = system.send(logger.ref("a"), Note(text="hi"))
    report = system.run_until_idle()
    assert report.messages == 1
    assert system.state(logger.ref("a")).log == ["hi"]

    send, turn, handle = (
        one("actor-system send Note"),
        one("actor-system turn logger"),
        one("actor-system handle Note"),
    )
    trace_id = request.get_span_context().trace_id
    # The send is the request's child, the handler the send's: one trace.
    assert send.kind == SpanKind.PRODUCER
    assert ids(send.parent) == ids(request)
    assert dict(send.attributes or {}) == {
        "messaging.system": "actor-system",
        "messaging.operation.type": "send",
        "messaging.message.id": mid,
        "messaging.destination.name": "logger/a",
        "actor_system.actor": "logger/a",
        "actor_system.actor_type": "logger",
    }
    assert handle.kind == SpanKind.CONSUMER
    assert ids(handle.parent) == ids(send)
    assert handle.get_span_context().trace_id == trace_id
    assert dict(handle.attributes or {}) == handle_attributes("logger/a", mid, "Note")
    assert handle.status.status_code == StatusCode.UNSET
    assert handle.events == ()
    # The turn, run outside any span, starts its own trace, linked to its message's
    # context; the handler links back to it.
    assert turn.kind == SpanKind.CONSUMER
    assert turn.parent is None
    assert [ids(link.context) for link in turn.links] == [ids(send)]
    assert [ids(link.context) for link in handle.links] == [ids(turn)]
    assert dict(turn.attributes or {}) == {
        "messaging.system": "actor-system",
        "messaging.operation.type": "process",
        "messaging.destination.name": "logger/a",
        "messaging.batch.message_count": 1,
        "actor_system.actor": "logger/a",
        "actor_system.actor_type": "logger",
        "actor_system.messages": 1,
        "actor_system.retries": 0,
        "actor_system.dead_letters": 0,
    }
    assert len(EXPORTER.get_finished_spans()) == 4


def test_send_many_and_ask_are_send_spans_that_their_handlers_continue(traced) -> None:
    system: ActorSystem = traced(logger)
    with TRACER.start_as_current_span("request") as request:
        system.send_many([(logger.ref("m1"), Note(text="1")), (logger.ref("m2"), Note(text="2"))])
        system.run_until_idle()
        assert system.ask(logger.ref("m1"), Note(text="3")) is None
    many, ask = spans("actor-system send Note")
    assert (many.kind, ask.kind) == (SpanKind.PRODUCER, SpanKind.PRODUCER)
    assert (ids(many.parent), ids(ask.parent)) == (ids(request), ids(request))
    assert dict(many.attributes or {}) == {
        "messaging.system": "actor-system",
        "messaging.operation.type": "send",
        "messaging.batch.message_count": 2,
    }
    assert (ask.attributes or {})["messaging.destination.name"] == "logger/m1"
    handled = spans("actor-system handle Note")
    assert [ids(h.parent) for h in handled] == [ids(many), ids(many), ids(ask)]
    assert {h.get_span_context().trace_id for h in handled} == {request.get_span_context().trace_id}


def test_a_message_carries_the_trace_context_as_its_ninth_field(traced) -> None:
    system: ActorSystem = traced(logger)
    ref = logger.ref("n")
    now_s = system.clock.now()
    plain = system.registry.prepare(ref, Note(text="x"), now_s=now_s)
    with TRACER.start_as_current_span("request") as request:
        inside = system.registry.prepare(ref, Note(text="x"), now_s=now_s)
    # No context, no ninth field: the entry is the size it always was.
    assert len(fields(plain)) == 7
    assert decode(plain.entry).trace is None
    # Inside a span: the eighth (no reply) is nil, the ninth [traceparent], 59 bytes more.
    assert fields(inside)[7:] == [None, [traceparent(request)]]
    assert len(inside.entry) - len(plain.entry) == 59
    assert decode(inside.entry).trace == {"traceparent": traceparent(request)}


def test_tracing_off_sends_no_trace_context_and_makes_no_spans(url: str, clock) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    system = ActorSystem.from_url(url, actors=[logger], clock=clock)
    try:
        with TRACER.start_as_current_span("request"):
            item = system.registry.prepare(logger.ref("o"), Note(text="x"), now_s=clock.now())
            system.send(logger.ref("o"), Note(text="y"))
        system.run_until_idle()
        assert len(fields(item)) == 7
        assert system.state(logger.ref("o")).log == ["y"]
        assert [s.name for s in EXPORTER.get_finished_spans()] == ["request"]
    finally:
        system.close()


def test_a_tracestate_travels_with_the_traceparent(traced) -> None:
    system: ActorSystem = traced(logger)
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("congo", "t61rcWkgMzE")]),
    )
    with trace.use_span(NonRecordingSpan(remote)):
        item = system.registry.prepare(logger.ref("s"), Note(text="x"), now_s=system.clock.now())
        system.send(logger.ref("s"), Note(text="x"))
    assert fields(item)[7:] == [
        None,
        ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "congo=t61rcWkgMzE"],
    ]
    system.run_until_idle()
    handle = one("actor-system handle Note")
    assert handle.get_span_context().trace_id == remote.trace_id
    assert handle.get_span_context().trace_state.to_header() == "congo=t61rcWkgMzE"


def test_a_handlers_send_continues_its_trace(traced) -> None:
    system: ActorSystem = traced(relay, logger)
    with TRACER.start_as_current_span("request") as request:
        system.send(relay.ref("r"), Forward(text="hop", to="t"))
    system.run_until_idle()
    assert system.state(logger.ref("t")).log == ["hop"]
    first, second = one("actor-system handle Forward"), one("actor-system handle Note")
    assert ids(first.parent) == ids(one("actor-system send Forward"))
    assert ids(second.parent) == ids(first)
    trace_id = request.get_span_context().trace_id
    assert {first.get_span_context().trace_id, second.get_span_context().trace_id} == {trace_id}


def test_an_async_handlers_send_continues_its_trace(traced) -> None:
    system: ActorSystem = traced(relay, logger)
    with TRACER.start_as_current_span("request"):
        system.send(relay.ref("ra"), ForwardAsync(text="hop", to="ta"))
    system.run_until_idle()
    assert system.state(logger.ref("ta")).log == ["hop"]
    sender = one("actor-system handle ForwardAsync")
    assert ids(one("actor-system handle Note").parent) == ids(sender)


def test_a_deferred_follow_up_is_in_the_same_trace(make_system, clock: ManualClock) -> None:
    system: ActorSystem = make_system(relay, logger, tracer_provider=PROVIDER)
    with TRACER.start_as_current_span("request") as request:
        system.send(relay.ref("d"), Forward(text="later", to="d", delay=30))
    system.run_until_idle()
    assert spans("actor-system handle Note") == []
    clock.advance(31)
    system.run_until_idle()
    assert system.state(logger.ref("d")).log == ["later"]
    first, follow_up = one("actor-system handle Forward"), one("actor-system handle Note")
    assert ids(follow_up.parent) == ids(first)
    assert follow_up.get_span_context().trace_id == request.get_span_context().trace_id
    assert dict(follow_up.attributes or {}) == {
        **handle_attributes("logger/d", follow_up.attributes["messaging.message.id"], "Note"),
        "actor_system.lateness_s": 1.0,  # due 30 s after the send, run at 31 s
    }


def test_a_raising_handler_records_the_exception_and_an_error_status(traced) -> None:
    system: ActorSystem = traced(logger, max_attempts=1)
    with TRACER.start_as_current_span("request"):
        mid = system.send(logger.ref("b"), Boom())
    report = system.run_until_idle()
    assert report.dead_letters == 1
    handle, turn = one("actor-system handle Boom"), one("actor-system turn logger")
    assert handle.status.status_code == StatusCode.ERROR
    assert handle.status.description == "RuntimeError: boom on attempt 1"
    [event] = handle.events
    assert event.name == "exception"
    attributes = dict(event.attributes or {})
    assert (attributes["exception.type"], attributes["exception.message"]) == (
        "RuntimeError",
        "boom on attempt 1",
    )
    assert dict(handle.attributes or {}) == handle_attributes("logger/b", mid, "Boom")
    assert turn.status.status_code == StatusCode.UNSET
    assert (turn.attributes or {})["actor_system.dead_letters"] == 1
    assert (turn.attributes or {})["actor_system.messages"] == 0


def test_a_retry_through_the_delay_queue_stays_in_the_trace(traced, clock: ManualClock) -> None:
    system: ActorSystem = traced(logger)
    with TRACER.start_as_current_span("request") as request:
        mid = system.send(logger.ref("l"), Later(delay=5))
    system.run_until_idle()
    clock.advance(5)
    system.run_until_idle()
    assert system.state(logger.ref("l")).log == ["later attempt 2"]
    first, again = spans("actor-system handle Later")
    send = one("actor-system send Later")
    assert first.status.status_code == StatusCode.ERROR
    assert first.status.description == "Retry: retry requested"
    assert again.status.status_code == StatusCode.UNSET
    assert (ids(first.parent), ids(again.parent)) == (ids(send), ids(send))
    assert again.get_span_context().trace_id == request.get_span_context().trace_id
    assert dict(again.attributes or {}) == {
        **handle_attributes("logger/l", mid, "Later", attempt=2),
        "actor_system.lateness_s": 0.0,
    }


_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_NO_IDS = "00-00000000000000000000000000000000-0000000000000000-01"


@pytest.mark.parametrize(
    ("bad", "decoded"),
    [
        (42, None),
        (_TP, None),  # not in a list
        ([], None),
        ([1, 2], None),
        ([_TP, "s", "extra"], None),
        (["x" * 600], None),
        ({"traceparent": _TP}, None),
        # well formed, but no trace context: the propagator finds none when continuing it
        (["not a traceparent"], {"traceparent": "not a traceparent"}),
        ([_NO_IDS], {"traceparent": _NO_IDS}),
        (["01-zz"], {"traceparent": "01-zz"}),
    ],
)
def test_a_malformed_trace_field_is_ignored_and_the_message_processed(
    traced, bad: Any, decoded: dict[str, str] | None
) -> None:
    system: ActorSystem = traced(logger)
    env = Envelope("0" * 31 + "1", "logger/m", "Note", {"text": "m"}, 1, 0, None)
    body = msgpack.unpackb(encode(env)[ID_LENGTH:], raw=False)
    raw = env.id.encode() + msgpack.packb([*body, None, bad], use_bin_type=True)
    assert decode(raw).trace == decoded
    system.backend.push([Outgoing(env.id, env.target, raw, None)], int(system.clock.now() * 1000))
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters) == (1, 0)
    assert system.state(logger.ref("m")).log == ["m"]
    # Nothing to continue: the handler is a child of its turn, in the turn's trace.
    handle, turn = one("actor-system handle Note"), one("actor-system turn logger")
    assert ids(handle.parent) == ids(turn)
    assert handle.links == ()
    assert turn.links == ()


def test_json_logs_carry_the_trace_id_inside_a_handler(traced) -> None:
    system: ActorSystem = traced(relay, logger)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with TRACER.start_as_current_span("request"):
            system.send(relay.ref("j"), Forward(text="logged", to="j"))
        system.run_until_idle()
        log.info("outside")
    finally:
        log.removeHandler(handler)
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    handle = one("actor-system handle Forward")
    trace_id, span_id = ids(handle)
    assert (inside["message"], inside["trace_id"], inside["span_id"]) == (
        "relaying logged",
        f"{trace_id:032x}",
        f"{span_id:016x}",
    )
    assert outside["message"] == "outside"
    assert "trace_id" not in outside
    assert "span_id" not in outside


_WITHOUT = textwrap.dedent(
    """
    import json, logging, sys

    sys.modules["opentelemetry"] = None  # as if not installed: every import of it fails

    from actor_system import ActorSystem, ManualClock
    from actor_system.logs import configure
    from tests.actors import Note, logger

    configure("json")
    system = ActorSystem.from_url("fakeredis://", actors=[logger], clock=ManualClock())
    with system.registry.tracing.sending(Note(text="x")) as span:
        item = system.registry.prepare(logger.ref("w"), Note(text="x"), now_s=0)
    system.send(logger.ref("w"), Note(text="sent"))
    system.run_until_idle()
    logging.getLogger("actor_system").info("no trace")
    print(json.dumps({
        "off": system.registry.tracing.tracer() is None and span is None,
        "trace": system.registry.tracing.carrier(),
        "log": system.state(logger.ref("w")).log,
    }))
    """
)

_GLOBAL = textwrap.dedent(
    """
    import json, sys

    from actor_system import ActorSystem, ManualClock
    from tests.actors import Note, logger

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    system = ActorSystem.from_url("fakeredis://", actors=[logger], clock=ManualClock())
    with trace.get_tracer("app").start_as_current_span("request"):
        system.send(logger.ref("g"), Note(text="before"))
    system.run_until_idle()
    off = system.registry.tracing.tracer() is None

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with trace.get_tracer("app").start_as_current_span("request"):
        system.send(logger.ref("g"), Note(text="after"))
    system.run_until_idle()
    names = sorted(s.name for s in exporter.get_finished_spans())
    print(json.dumps({"off": off, "names": names, "log": system.state(logger.ref("g")).log}))
    """
)


def run_python(code: str) -> tuple[Any, str]:
    """Run ``code`` in a Python process of its own; its JSON output and its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_without_opentelemetry_installed_tracing_is_off() -> None:
    out, err = run_python(_WITHOUT)
    assert out == {"off": True, "trace": None, "log": ["sent"]}
    [logged] = [json.loads(line) for line in err.splitlines()]
    assert logged["message"] == "no trace"
    assert "trace_id" not in logged


def test_a_global_provider_set_after_import_turns_tracing_on() -> None:
    """In a process of its own (the global provider is set once per process)."""
    out, _ = run_python(_GLOBAL)
    assert out == {
        "off": True,
        "names": [
            "actor-system handle Note",
            "actor-system send Note",
            "actor-system turn logger",
            "request",
        ],
        "log": ["before", "after"],
    }


class _BrokenTracer:
    """A tracer whose every span fails to start, like a misconfigured sampler."""

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sampler exploded")

    start_as_current_span = start_span


class _BrokenProvider(TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _BrokenTracer()


def test_a_failing_tracer_does_not_fail_the_turn(
    url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    system = ActorSystem.from_url(
        url, actors=[logger], clock=clock, tracer_provider=_BrokenProvider()
    )
    system.send_many([(logger.ref("b"), Note(text="one")), (logger.ref("b"), Note(text="two"))])
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters, report.retries) == (2, 0, 0)
    assert system.state(logger.ref("b")).log == ["one", "two"]  # type: ignore[attr-defined]
    assert "runs without a span" in caplog.text
    system.close()
