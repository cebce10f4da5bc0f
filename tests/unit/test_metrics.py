"""Per-turn metrics through the hook, and their CloudWatch EMF form."""

from __future__ import annotations

import io
import json

from actor_system import ActorSystem, ManualClock
from actor_system.metrics import EmfMetrics, TurnMetrics
from tests.actors import Add, Boom, counter, logger


def test_hook_receives_one_record_per_committed_turn_with_lateness() -> None:
    seen: list[TurnMetrics] = []
    clock = ManualClock()
    system = ActorSystem.from_url(
        "fakeredis://",
        actors=[counter, logger],
        clock=clock,
        on_turn=seen.append,
        max_attempts=2,
    )
    system.send(counter.ref("m"), Add(n=1))
    system.send(counter.ref("m"), Add(n=1), delay=10)
    system.send(logger.ref("b"), Boom())
    system.run_until_idle()
    clock.advance(12.5)  # the deferred message runs 2.5 s after its due time
    system.run_until_idle()
    by_actor: dict[str, list[TurnMetrics]] = {}
    for m in seen:
        by_actor.setdefault(m.actor, []).append(m)
    assert [m.messages for m in by_actor["counter/m"]] == [1, 1]
    assert by_actor["counter/m"][0].lateness_s == ()
    assert by_actor["counter/m"][1].lateness_s == (2.5,)
    assert sum(m.retries for m in by_actor["logger/b"]) == 1
    assert sum(m.dead_letters for m in by_actor["logger/b"]) == 1


def test_a_failing_hook_does_not_stop_the_drain() -> None:
    def broken(m: TurnMetrics) -> None:
        raise RuntimeError("sink down")

    system = ActorSystem.from_url("fakeredis://", actors=[counter], on_turn=broken)
    system.send(counter.ref("x"), Add(n=1))
    assert system.run_until_idle().messages == 1
    assert system.state(counter.ref("x")).count == 1  # type: ignore[attr-defined]


def test_emf_document_declares_every_metric_it_carries() -> None:
    out = io.StringIO()
    EmfMetrics("Test", stream=out)(TurnMetrics("counter", "counter/a", 3, 0.0125, 1, 0, (0.002,)))
    doc = json.loads(out.getvalue())
    [spec] = doc["_aws"]["CloudWatchMetrics"]
    assert spec["Namespace"] == "Test"
    assert spec["Dimensions"] == [["ActorType"]]
    names = [m["Name"] for m in spec["Metrics"]]
    assert names == ["Messages", "TurnDuration", "Retries", "DeadLetters", "DeferredLateness"]
    assert all(name in doc for name in names)
    assert doc["ActorType"] == "counter"
    assert doc["TurnDuration"] == 12.5
    assert doc["DeferredLateness"] == [2.0]


def test_from_env_on_lambda_defaults_to_emf() -> None:
    env = {"ACTOR_SYSTEM_REDIS_URL": "fakeredis://", "AWS_LAMBDA_FUNCTION_NAME": "drain"}
    assert isinstance(
        ActorSystem.from_env(actors=[counter], environ=env).runtime.on_turn, EmfMetrics
    )
    env.pop("AWS_LAMBDA_FUNCTION_NAME")
    assert ActorSystem.from_env(actors=[counter], environ=env).runtime.on_turn is None


def test_json_log_lines_carry_request_context_and_extras() -> None:
    import logging

    from actor_system.logs import JsonFormatter, reset_request_context, set_request_context

    record = logging.LogRecord("actor_system", logging.ERROR, "f.py", 7, "dead %s", ("x",), None)
    record.actor = "counter/a"
    token = set_request_context(function_request_id="req-1", cold_start=True)
    try:
        doc = json.loads(JsonFormatter("svc").format(record))
    finally:
        reset_request_context(token)
    assert doc["message"] == "dead x"
    assert doc["service"] == "svc"
    assert doc["function_request_id"] == "req-1"
    assert doc["cold_start"] is True
    assert doc["actor"] == "counter/a"
    assert "function_request_id" not in json.loads(JsonFormatter().format(record))
