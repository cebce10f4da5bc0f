"""The Lambda entry point under AWS's own runtime interface client (awslambdaric, the
bootstrap of the python3.12 base image), against a Runtime API that freezes the process
between invocations and kills it at the deadline (tests/runtime_api.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from actor_system import ActorSystem
from tests.actors import Add, counter
from tests.conftest import free_port
from tests.runtime_api import RuntimeApiFunction

pytest.importorskip("awslambdaric")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = str(Path(__file__).resolve().parents[2])
DRAIN = "tests.lambda_app.handler"
SLEEPY = "tests.lambda_sleep_app.handler"  # the drain, plus events that sleep or raise


def function(
    redis_url: str, aws_env: dict[str, str], timeout_s: float, handler: str = DRAIN, **env: str
) -> RuntimeApiFunction:
    full = {
        **aws_env,
        "ACTOR_SYSTEM_REDIS_URL": redis_url,
        "ACTOR_SYSTEM_LAMBDA_MARGIN_S": "1",
        **env,
    }
    return RuntimeApiFunction(handler, timeout_s=timeout_s, env=full, cwd=ROOT)


def sender(redis_url: str) -> ActorSystem:
    """A system outside the function, sending to and reading the counters."""
    return ActorSystem.from_url(redis_url, actors=[counter])


def process_state(pid: int) -> str | None:
    """The scheduler state of a process (``T``: stopped), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


def sqs_record(message_id: str) -> dict[str, Any]:
    return {"eventSource": "aws:sqs", "messageId": message_id, "body": '{"actor_system": "wake"}'}


def test_a_sweep_drains_what_was_sent_exactly_once(redis_url: str, aws_env: dict[str, str]) -> None:
    system = sender(redis_url)
    system.send_many([(counter.ref(f"r{i % 4}"), Add(n=i)) for i in range(20)])
    with function(redis_url, aws_env, 5) as lam:
        result = lam.invoke({"actor_system": "sweep"})
        assert (result["messages"], result["dead_letters"], result["interrupted"]) == (20, 0, 0)
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0  # nothing twice
    for k in range(4):
        state = system.state(counter.ref(f"r{k}"))
        assert state.count == sum(range(k, 20, 4))  # type: ignore[attr-defined]
        assert len(set(state.seen)) == len(state.seen) == 5  # type: ignore[attr-defined]
    stats = system.stats()
    assert stats["mailbox_messages"] == stats["in_flight_messages"] == stats["leases_held"] == 0
    system.close()


def test_an_sqs_event_reports_no_batch_item_failures(
    redis_url: str, aws_env: dict[str, str]
) -> None:
    system = sender(redis_url)
    system.send(counter.ref("sqs"), Add(n=3))
    with function(redis_url, aws_env, 5) as lam:
        result = lam.invoke({"Records": [sqs_record("m1")]})
    assert result["batchItemFailures"] == []
    assert result["messages"] == 1
    assert system.state(counter.ref("sqs")).count == 3  # type: ignore[attr-defined]
    system.close()


def test_the_process_is_frozen_between_invocations(redis_url: str, aws_env: dict[str, str]) -> None:
    system = sender(redis_url)
    with function(redis_url, aws_env, 5) as lam:
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0
        pid = lam.pid
        assert pid is not None
        assert process_state(pid) == "T"  # stopped as soon as invoke returned
        system.send(counter.ref("frozen"), Add(n=1))
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 1  # thawed, answered
        assert lam.pid == pid
        assert process_state(pid) == "T"
        assert (lam.cold_starts, lam.invocations) == (1, 2)  # one environment, reused
    assert process_state(pid) is None  # closed: killed and reaped
    system.close()


def test_a_handler_past_its_deadline_is_killed_and_the_next_invocation_cold_starts(
    redis_url: str, aws_env: dict[str, str]
) -> None:
    system = sender(redis_url)
    with function(redis_url, aws_env, 2, handler=SLEEPY) as lam:
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0  # init done
        first = lam.pid
        assert first is not None
        system.send(counter.ref("after-kill"), Add(n=7))
        started = time.monotonic()
        result = lam.invoke({"sleep_s": 30})
        elapsed = time.monotonic() - started
        assert result["errorType"] == "Sandbox.Timedout"
        assert result["requestId"] == lam.last_request_id
        assert 2 <= elapsed < 2 + 5  # at the deadline, not when the handler would answer
        assert process_state(first) is None  # killed
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 1  # a fresh environment
        assert lam.pid != first
        assert lam.cold_starts == 2
    assert system.state(counter.ref("after-kill")).count == 7  # type: ignore[attr-defined]
    system.close()


def test_an_unhandled_exception_is_reported_and_the_environment_kept(
    redis_url: str, aws_env: dict[str, str]
) -> None:
    with function(redis_url, aws_env, 5, handler=SLEEPY) as lam:
        error = lam.invoke({"raise": "handler failed"})
        assert error["errorType"] == "RuntimeError"
        assert error["errorMessage"] == "handler failed"
        assert error["requestId"] == lam.last_request_id
        assert any("lambda_sleep_app.py" in line for line in error["stackTrace"])
        assert "[ERROR] RuntimeError: handler failed" in lam.logs(lam.last_request_id)
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0  # still serving
        assert lam.cold_starts == 1


def test_with_redis_unreachable_an_sqs_event_fails_every_record_before_the_deadline(
    aws_env: dict[str, str],
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    records = [sqs_record(f"m{i}") for i in range(3)]
    with function(down, aws_env, 4) as lam:
        started = time.monotonic()
        answer = lam.invoke({"Records": records})
        elapsed = time.monotonic() - started
        assert answer.get("errorType") != "Sandbox.Timedout", answer
        assert answer == {"batchItemFailures": [{"itemIdentifier": f"m{i}"} for i in range(3)]}
        assert elapsed < 4
        assert lam.cold_starts == 1  # answered, not killed


def test_logs_are_json_lines_with_the_request_id(redis_url: str, aws_env: dict[str, str]) -> None:
    system = sender(redis_url)
    system.send_many([(counter.ref("logged"), Add(n=1)) for _ in range(3)])
    with function(redis_url, aws_env, 5, ACTOR_SYSTEM_LOG_FORMAT="json") as lam:
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 3
        request_id = lam.last_request_id
        output = lam.logs(request_id)  # what the function wrote during that invocation
    records = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the runtime's own text lines
        if isinstance(record, dict):
            records.append(record)
    assert any(
        r.get("level") == "INFO" and r.get("function_request_id") == request_id for r in records
    ), output
    system.close()


def test_the_handler_sees_the_context_lambda_gives(redis_url: str, aws_env: dict[str, str]) -> None:
    """Request id, deadline, function ARN and the variables Lambda sets, as awslambdaric's
    LambdaContext hands them to the handler."""
    with function(redis_url, aws_env, 3, handler=SLEEPY) as lam:
        started_ms = time.time() * 1000
        seen = lam.invoke({"context": True})
    assert seen["aws_request_id"] == lam.last_request_id
    assert seen["function_name"] == "drain"
    assert seen["invoked_function_arn"].endswith(":function:drain")
    assert seen["log_group_name"] == "/aws/lambda/drain"
    assert seen["memory_limit_in_mb"] == "512"
    deadline_ms = seen["now_ms"] + seen["remaining_ms"]
    assert started_ms + 3000 - 50 <= deadline_ms <= time.time() * 1000 + 3000
