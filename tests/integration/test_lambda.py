"""The Lambda entry point under an honest harness: a child process with a real deadline,
frozen with SIGSTOP between invocations and killed at its timeout; SQS through moto's server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from actor_system import ActorSystem
from actor_system.testing import LambdaHarness
from tests.actors import Add, Slow, Timed, actors, counter, probe
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def wake_queue(aws_env: dict[str, str]) -> str:
    sqs = boto3.client("sqs")
    name = f"wake-{time.monotonic_ns()}"
    return str(sqs.create_queue(QueueName=name)["QueueUrl"])


def harness(redis_url: str, aws_env: dict[str, str], timeout_s: float, **env: str) -> LambdaHarness:
    full = {
        **aws_env,
        "ACTOR_SYSTEM_REDIS_URL": redis_url,
        "ACTOR_SYSTEM_LAMBDA_MARGIN_S": "1",
        **env,
    }
    return LambdaHarness("tests.lambda_app:handler", timeout_s=timeout_s, env=full, cwd=ROOT)


def warm(lam: LambdaHarness) -> None:
    """Cold-start the environment before the test's clock starts: the init phase does not
    count against an invocation's timeout, and on a busy machine it can take seconds."""
    assert "errorType" not in lam.invoke({"actor_system": "sweep"})
    assert lam.cold_starts == 1


def sqs_event(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "Records": [
            {"eventSource": "aws:sqs", "messageId": m["MessageId"], "body": m["Body"]}
            for m in messages
        ]
    }


def receive(queue_url: str, timeout_s: float) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        if got.get("Messages"):
            for m in got["Messages"]:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            return list(got["Messages"])
        time.sleep(0.1)
    return []


def test_a_timer_armed_in_a_handler_does_not_fire_while_frozen(tmp_path: Path) -> None:
    fired = tmp_path / "fired"
    with LambdaHarness(
        "tests.lambda_timer_app:timer_handler",
        timeout_s=5,
        cwd=ROOT,
        env={"ACTOR_SYSTEM_REDIS_URL": "fakeredis://"},
    ) as lam:
        armed = lam.invoke({"path": str(fired)})["armed_at"]
        time.sleep(1.0)  # frozen well past the timer's 0.3 s
        assert not fired.exists()  # due 0.3 s after arming, but the environment is frozen
        # Thawed by the next invocation. The overdue timer thread needs a turn before the
        # environment is frozen again, which a busy machine may not give it during one short
        # invocation: invoke until it has run.

        def fired_at() -> str:  # the file's text, once written
            if not fired.exists():
                lam.invoke({"path": str(tmp_path / "other"), "linger_s": 0.2})
            return fired.read_text() if fired.exists() else ""

        at = wait_until(fired_at, what="the overdue timer to fire once thawed", every_s=0.1)
        assert float(at) - armed > 0.9  # it fired, late


def test_deferred_message_due_inside_the_budget_arrives_on_time(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    ref = probe.ref("lambda-on-time")
    with harness(redis_url, aws_env, 5, ACTOR_SYSTEM_WAKER_URL=wake_queue) as lam:
        warm(lam)
        system.send(ref, Timed(due=system.clock.now() + 1.5), delay=1.5)  # the sender's clock
        result = lam.invoke({"actor_system": "sweep"})
    assert result["messages"] == 1, result
    [(asked, delivered)] = system.state(ref).deliveries  # type: ignore[attr-defined]
    assert delivered >= asked  # never early
    assert delivered - asked < 1.0  # waited for in the invocation (the figure: bench/)


def test_deferred_message_beyond_the_budget_is_woken_through_sqs(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    ref = probe.ref("lambda-wake")
    with harness(redis_url, aws_env, 3, ACTOR_SYSTEM_WAKER_URL=wake_queue) as lam:
        warm(lam)
        due = system.clock.now() + 4  # the sender's clock, which the send reads again
        system.send(ref, Timed(due=due), delay=4)
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0  # no second wake
        woken = receive(wake_queue, 60)
        assert len(woken) == 1
        assert json.loads(woken[0]["Body"])["actor_system"] == "wake"
        # Held back by DelaySeconds (whole seconds), not delivered at once; measured from the
        # due time, so slow invocations before the receive cannot fail it.
        assert time.time() > due - 1.5
        result = lam.invoke(sqs_event(woken))
        assert result["batchItemFailures"] == []
        if result["messages"] == 0:  # woken a little early (SQS works in whole seconds)
            result = lam.invoke(sqs_event(woken))
    [(asked, delivered)] = system.state(ref).deliveries  # type: ignore[attr-defined]
    assert delivered >= asked  # never early
    assert lam.cold_starts == 1


def test_handler_overrunning_the_budget_is_interrupted_before_the_kill(
    redis_url: str, aws_env: dict[str, str], wake_queue: str, tmp_path: Path
) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    ref = probe.ref("lambda-slow")
    with harness(redis_url, aws_env, 3, ACTOR_SYSTEM_WAKER_URL=wake_queue) as lam:
        warm(lam)  # so that ``elapsed`` is the invocation alone, not the init phase
        system.send(ref, Slow(path=str(tmp_path / "started"), seconds=30))
        started = time.time()
        result = lam.invoke({"actor_system": "sweep"})
        elapsed = time.time() - started
    assert result.get("interrupted") == 1, result  # the guard fired, not Lambda's timeout
    assert elapsed < 3
    stats = system.stats()
    assert stats["mailbox_messages"] == 1  # back in the mailbox
    assert stats["in_flight_messages"] == 0
    assert stats["leases_held"] == 0  # the lease was released
    attempts = system.backend.client.hvals(system.backend.keys.actor("probe/lambda-slow", "att"))
    assert attempts == [b"1"]  # the next delivery is attempt 2


def test_work_left_at_the_end_of_the_budget_continues_in_a_fresh_invocation(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    system.send_many([(counter.ref(f"c{i}"), Add(n=1, work_ms=100)) for i in range(40)])
    with harness(
        redis_url, aws_env, 3, ACTOR_SYSTEM_WAKER_URL=wake_queue, ACTOR_SYSTEM_MAX_CHAIN="2"
    ) as lam:
        first = lam.invoke({"actor_system": "sweep"})
        assert 0 < first["messages"] < 40
        hop = receive(wake_queue, 60)
        assert [json.loads(m["Body"]) for m in hop] == [{"actor_system": "continue", "depth": 1}]
        second = lam.invoke(sqs_event(hop))
        hop = receive(wake_queue, 60)
        assert [json.loads(m["Body"])["depth"] for m in hop] == [2]
        third = lam.invoke(sqs_event(hop))
        assert receive(wake_queue, 1.5) == []  # max_chain=2: the chain stops here
    done = sum(system.state(counter.ref(f"c{i}")).count for i in range(40))  # type: ignore[attr-defined]
    assert done == first["messages"] + second["messages"] + third["messages"]


def test_unknown_event_shape_is_rejected_without_a_crash(
    redis_url: str, aws_env: dict[str, str]
) -> None:
    with harness(redis_url, aws_env, 3) as lam:
        assert lam.invoke({"hello": "world"}) == {"ok": False, "error": "unrecognized event shape"}
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0  # still alive
        assert lam.cold_starts == 1


def http_event(path: str, body: str, method: str = "POST") -> dict[str, Any]:
    return {
        "version": "2.0",
        "rawPath": path,
        "body": body,
        "isBase64Encoded": False,
        "requestContext": {"http": {"method": method, "path": path}},
    }


def test_http_ingress_validates_and_bounds_input(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors, max_message_bytes=1_000)
    handler = system.lambda_handler(environ={})
    ok = handler(
        http_event("/actors/counter/h1/messages", json.dumps({"type": "Add", "payload": {"n": 4}})),
        None,
    )
    assert ok["statusCode"] == 202
    assert len(json.loads(ok["body"])["id"]) == 32
    bad = handler(
        http_event(
            "/actors/counter/h1/messages", json.dumps({"type": "Add", "payload": {"n": "x"}})
        ),
        None,
    )
    assert bad["statusCode"] == 400
    assert json.loads(bad["body"])["details"][0]["loc"] == ["n"]
    assert (
        handler(http_event("/actors/ghost/h1/messages", '{"type": "Add"}'), None)["statusCode"]
        == 404
    )
    assert (
        handler(http_event("/actors/counter/h1/messages", '{"type": "Nope"}'), None)["statusCode"]
        == 404
    )
    big = json.dumps({"type": "Add", "payload": {"n": 1, "pad": "x" * 5_000}})
    assert handler(http_event("/actors/counter/h1/messages", big), None)["statusCode"] == 413
    assert (
        handler(http_event("/actors/counter/h1/messages", "{not json"), None)["statusCode"] == 400
    )
    assert (
        handler(http_event("/actors/counter/h1/messages", "{}", "GET"), None)["statusCode"] == 405
    )
    assert handler(http_event("/other", "{}"), None)["statusCode"] == 404
    system.run_until_idle()
    assert system.state(counter.ref("h1")).count == 4  # type: ignore[attr-defined]


def test_self_invoke_continuation_calls_the_lambda_api(aws_env: dict[str, str]) -> None:
    import io
    import zipfile

    from actor_system import BackendError
    from actor_system.adapters.aws import LambdaContinuation, SqsWaker

    role = boto3.client("iam").create_role(
        RoleName=f"drain-{time.monotonic_ns()}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("h.py", "def handler(event, context):\n    return event\n")
    name = f"drain-{time.monotonic_ns()}"
    boto3.client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="h.handler",
        Code={"ZipFile": code.getvalue()},
    )
    LambdaContinuation(function=name).continue_now(3)  # accepted (202), async
    with pytest.raises(BackendError, match=r"Invoke on missing-fn failed: ResourceNotFound"):
        LambdaContinuation(function="missing-fn").continue_now(1)
    with pytest.raises(BackendError, match=r"GetQueueUrl on no-such-queue failed"):
        SqsWaker(queue="no-such-queue").wake_at(0, 0)


def drive(lam: LambdaHarness, queue_url: str, until: Any, timeout_s: float) -> list[float]:
    """Play the Lambda service: deliver wake-queue messages to the function as they become
    visible. Returns how long each invocation left unused of its time."""
    unused = []
    deadline = time.time() + timeout_s
    while not until() and time.time() < deadline:
        woken = receive(queue_url, 0.2)
        if woken:
            started = time.time()
            result = lam.invoke(sqs_event(woken))
            assert "errorType" not in result, result
            unused.append(lam.timeout_s - (time.time() - started))
    return unused


def test_deferred_messages_sent_by_a_frozen_environment_arrive_on_time(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    from tests.actors import Plan

    system = ActorSystem.from_url(redis_url, actors=actors)
    ref = probe.ref("lambda-plan")
    delays = [0.2, 0.5, 1.0, 1.7, 2.5, 3.2, 4.0, 5.0]
    system.send(ref, Plan(delays=delays))
    with harness(redis_url, aws_env, 2, ACTOR_SYSTEM_WAKER_URL=wake_queue) as lam:
        first = lam.invoke({"actor_system": "sweep"})  # sends them, delivers what fits
        assert first["messages"] >= 2
        done = lambda: len(system.state(ref).deliveries) == len(delays)  # type: ignore[attr-defined]  # noqa: E731
        unused = drive(lam, wake_queue, done, 60)
        assert lam.cold_starts == 1  # one environment, frozen between invocations
    late = sorted(d - due for due, d in system.state(ref).deliveries)  # type: ignore[attr-defined]
    assert len(late) == len(delays)
    assert late[0] >= 0  # never early
    # At most about one wake late (SQS delays are whole seconds), with room for a busy
    # machine; the lateness figures belong to bench/.
    assert late[-1] < 3.0
    print(
        f"lateness ms: {[round(x * 1000) for x in late]}; unused per invocation s: "
        f"{[round(u, 2) for u in unused]}"
    )


@pytest.mark.timeout(400)
def test_two_hundred_invocations_around_the_timeout_lose_nothing(
    redis_url: str, aws_env: dict[str, str], tmp_path: Path, wake_queue: str
) -> None:
    import random

    rng = random.Random(4)
    system = ActorSystem.from_url(redis_url, actors=actors)
    durations = [rng.uniform(0.02, 0.9) for _ in range(60)]
    for i, seconds in enumerate(durations):
        system.send(probe.ref(f"slow{i % 6}"), Slow(path=str(tmp_path / "s"), seconds=seconds))
    kills = interrupted = 0
    with harness(
        redis_url,
        aws_env,
        0.8,
        ACTOR_SYSTEM_LAMBDA_MARGIN_S="0.25",
        ACTOR_SYSTEM_LEASE_MS="2000",
        ACTOR_SYSTEM_MAX_ATTEMPTS="3",
        ACTOR_SYSTEM_WAKER_URL=wake_queue,
    ) as lam:
        for _ in range(200):
            result = lam.invoke({"actor_system": "sweep"})
            assert result.get("errorType") in (None, "Sandbox.Timedout"), result
            kills += result.get("errorType") == "Sandbox.Timedout"
            interrupted += result.get("interrupted", 0)
    processed = sum(system.state(probe.ref(f"slow{i}")).count for i in range(6))  # type: ignore[attr-defined]
    dead = system.dead_letters(100)
    print(
        f"invocations=200 kills={kills} interrupted={interrupted} processed={processed} "
        f"dead_lettered={len(dead)} cold_starts={lam.cold_starts}"
    )
    assert kills == 0
    assert interrupted > 0
    assert processed + len(dead) == len(durations)  # every message accounted for, once
    assert all("needs more than the time budget" in d.reason for d in dead)
    stats = system.stats()
    assert stats["mailbox_messages"] == stats["in_flight_messages"] == 0


def test_wakes_beyond_fifteen_minutes_become_one_time_schedules(
    aws_env: dict[str, str], wake_queue: str
) -> None:
    from actor_system.adapters.aws import SchedulerWaker, SqsWaker, waker_from_url

    scheduler = boto3.client("scheduler")
    group = f"actors-{time.monotonic_ns()}"
    scheduler.create_schedule_group(Name=group)
    waker = waker_from_url(
        f"scheduler://{group}?target=arn:aws:lambda:us-east-1:123456789012:function:drain"
        f"&role=arn:aws:iam::123456789012:role/scheduler&queue={wake_queue}"
    )
    assert isinstance(waker, SchedulerWaker)
    now_ms = int(time.time() * 1000)
    due_ms = now_ms + 3 * 3600 * 1000
    waker.wake_at(due_ms, now_ms)
    waker.wake_at(due_ms, now_ms)  # the same wake twice: one schedule (named by due time)
    [listed] = scheduler.list_schedules(GroupName=group)["Schedules"]
    schedule = scheduler.get_schedule(Name=listed["Name"], GroupName=group)
    assert schedule["ScheduleExpression"].startswith("at(")
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert json.loads(schedule["Target"]["Input"]) == {"actor_system": "wake", "due_ms": due_ms}
    waker.wake_at(now_ms + 60_000, now_ms)  # near: through the SQS queue instead
    assert len(scheduler.list_schedules(GroupName=group)["Schedules"]) == 1
    assert len(receive(wake_queue, 0.5)) == 0  # not visible yet: DelaySeconds=60
    attrs = boto3.client("sqs").get_queue_attributes(
        QueueUrl=wake_queue, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )
    assert attrs["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "1"
    assert isinstance(waker.near, SqsWaker)


def test_concurrent_environments_drain_one_backlog_exactly_once(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    import threading

    system = ActorSystem.from_url(redis_url, actors=actors)
    system.send_many([(counter.ref(f"k{i % 20}"), Add(n=1, work_ms=10)) for i in range(300)])
    envs = [
        harness(
            redis_url,
            aws_env,
            1.5,
            ACTOR_SYSTEM_WAKER_URL=wake_queue,
            ACTOR_SYSTEM_LAMBDA_MARGIN_S="0.5",
        )
        for _ in range(3)
    ]
    results: list[dict[str, Any]] = []
    worked: set[int] = set()

    def run(index: int, lam: LambdaHarness) -> None:
        for _ in range(4):
            result = lam.invoke({"actor_system": "sweep"})
            results.append(result)
            if result.get("messages"):
                worked.add(index)

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(envs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lam in envs:
        lam.close()
    assert all("errorType" not in r for r in results), results
    states = [system.state(counter.ref(f"k{i}")) for i in range(20)]
    assert sum(s.count for s in states) == 300  # type: ignore[attr-defined]
    assert all(len(set(s.seen)) == len(s.seen) == 15 for s in states)  # type: ignore[attr-defined]
    assert sum(r["messages"] for r in results) == 300
    assert len(worked) >= 2  # the environments really drained side by side


def test_sqs_delay_queue_as_the_functions_trigger_hops_then_delivers_on_time(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    """The wake queue doubles as the delay queue; the test plays the SQS event source
    mapping. Hops of at most 1 s stand in for SQS's 15 minutes."""
    delay_url = f"sqs://{wake_queue.rsplit('/', 1)[1]}?near=1&max_hop=1"
    system = ActorSystem.from_url(redis_url, actors=actors, delay=delay_url)
    ref = probe.ref("lambda-hops")
    env = {"ACTOR_SYSTEM_WAKER_URL": wake_queue, "ACTOR_SYSTEM_DELAY_URL": delay_url}
    invocations = 0
    with harness(redis_url, aws_env, 3, **env) as lam:
        warm(lam)  # a cold start in the middle would swallow hops
        # Long enough for three hops even when each one comes back late on a busy machine.
        system.send(ref, Timed(due=system.clock.now() + 6.5), delay=6.5)
        assert system.deferred() == []  # held by SQS, not by Redis
        deadline = time.time() + 60
        while not system.state(ref).deliveries and time.time() < deadline:  # type: ignore[attr-defined]
            records = receive(wake_queue, 3)
            if records:
                result = lam.invoke(sqs_event(records))
                assert result["batchItemFailures"] == []
                invocations += 1
    [(asked, delivered)] = system.state(ref).deliveries  # type: ignore[attr-defined]
    print(f"invocations={invocations} late_ms={(delivered - asked) * 1000:.0f}")
    assert delivered >= asked  # never early
    assert invocations >= 3  # the hops came back through the trigger
    assert lam.cold_starts == 1


def test_with_redis_unreachable_a_drain_answers_before_its_deadline(
    aws_env: dict[str, str],
) -> None:
    from tests.conftest import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    records = [
        {"messageId": f"m{i}", "eventSource": "aws:sqs", "body": '{"actor_system": "wake"}'}
        for i in range(3)
    ]
    with harness(down, aws_env, 3) as lam:
        warm_started = time.monotonic()
        answer = lam.invoke({"Records": records})
        assert answer == {"batchItemFailures": [{"itemIdentifier": f"m{i}"} for i in range(3)]}
        swept = lam.invoke({"actor_system": "sweep"})  # retries Redis within its budget only
        assert "errorType" not in swept, swept  # answered, not "Task timed out"
        assert swept["messages"] == 0
        assert lam.cold_starts == 1  # never killed (a kill discards the environment)
    assert time.monotonic() - warm_started < 3 * 3
