"""What the Lambda handler arms when it returns, driven by the manual clock."""

from __future__ import annotations

import logging
import sys

import pytest

from actor_system import ActorSystem, ConfigError, ManualClock
from actor_system.aws_lambda import LambdaOptions, classify, make_handler
from tests.actors import Add, counter


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms
        self.aws_request_id = "req"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class RecordingWaker:
    max_delay_s = 900

    def __init__(self) -> None:
        self.wakes: list[tuple[int, int]] = []
        self.continued: list[int] = []

    def wake_at(self, due_ms: int, now_ms: int) -> None:
        self.wakes.append((due_ms, now_ms))

    def continue_now(self, depth: int) -> None:
        self.continued.append(depth)


def test_one_wake_per_due_time_and_a_new_hop_beyond_fifteen_minutes() -> None:
    clock = ManualClock()
    system = ActorSystem.from_url("fakeredis://", actors=[counter], clock=clock)
    waker = RecordingWaker()
    handler = make_handler(system, LambdaOptions(waker, waker, margin_s=1.0))
    system.send(counter.ref("w"), Add(n=1), delay=3600)
    handler({"actor_system": "sweep"}, Context(5000))
    handler({"actor_system": "sweep"}, Context(5000))
    assert len(waker.wakes) == 1  # the second drain sees the wake already armed
    clock.advance(900)  # the first 15-minute hop fires: the drain arms the next one
    handler({"actor_system": "wake"}, Context(5000))
    assert len(waker.wakes) == 2
    due = waker.wakes[0][0]
    assert waker.wakes[1] == (due, int(clock.now() * 1000))
    system.send(counter.ref("w"), Add(n=1), delay=60)  # an earlier due time: armed at once
    handler({"actor_system": "sweep"}, Context(5000))
    assert len(waker.wakes) == 3
    assert waker.wakes[2][0] < due


def test_classify_knows_each_event_shape() -> None:
    assert classify({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}) == "sqs"
    assert classify({"source": "aws.events", "detail-type": "Scheduled Event"}) == "schedule"
    assert classify({"actor_system": "continue", "depth": 3}) == "continue"
    assert classify({"version": "2.0", "requestContext": {"http": {}}}) == "http"
    assert classify({"Records": [{"eventSource": "aws:s3"}]}) is None
    assert classify([1, 2]) is None


def test_works_under_powertools_logger_and_context(capsys) -> None:
    import json
    import time

    from aws_lambda_powertools import Logger

    from actor_system.testing import LambdaContext

    system = ActorSystem.from_url("fakeredis://", actors=[counter])
    system.send(counter.ref("p"), Add(n=5))
    logger = Logger(service="drain")
    handler = logger.inject_lambda_context(system.lambda_handler(environ={}), log_event=True)
    result = handler({"actor_system": "sweep"}, LambdaContext(time.time() + 5, "req-7", "drain"))
    assert result["messages"] == 1
    assert system.state(counter.ref("p")).count == 5  # type: ignore[attr-defined]
    logged = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{") and "function_request_id" in line
    ]
    assert logged[0]["function_request_id"] == "req-7"


def test_without_boto3_an_assumed_self_invoke_is_dropped_and_a_configured_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An emulator (serverless-offline) runs the function without boto3: the continuation
    the handler only assumes (a self-invoke, from AWS_LAMBDA_FUNCTION_NAME) is left out,
    and work left waits for the sweep; a waker or launcher the environment names still
    needs boto3 and says so."""
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    env = {"AWS_LAMBDA_FUNCTION_NAME": "drain"}
    with caplog.at_level(logging.WARNING, logger="actor_system"):
        options = LambdaOptions.from_env(env, margin_s=0.25, max_chain=10)
    assert options.continuation is None
    assert "no continuation" in caplog.text
    assert "needs boto3" in caplog.text
    for name, url in (
        ("ACTOR_SYSTEM_WAKER_URL", "sqs://wake"),
        ("ACTOR_SYSTEM_LONG_LANE_URL", "ecs://c/t?subnets=s"),
    ):
        with pytest.raises(ConfigError, match="needs boto3"):
            LambdaOptions.from_env({**env, name: url}, margin_s=0.25, max_chain=10)
