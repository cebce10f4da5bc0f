"""Sends wake a drain at rest through the SQS wake queue, and the HTTP ingress processes in
its own invocation: Lambda played by LambdaHarness child processes, its SQS event source
mapping by tests.sqs_poller on the moto server, Redis by a real redis-server."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from actor_system import ActorSystem, ActorType, NoReply
from actor_system.actor import ActorRef
from actor_system.adapters.aws import SqsWaker
from actor_system.options import Options
from actor_system.testing import LambdaHarness
from tests.actors import Add, counter
from tests.sqs_poller import SqsPoller, wait_quiet
from tests.waiting import wait_until
from tests.wake_actors import Bump, Hold, tally
from tests.wake_actors import actors as wake_actors

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = str(Path(__file__).resolve().parents[2])
DRAIN_APP = "tests.lambda_app:handler"
WAKE_APP = "tests.wake_app:handler"
AWAKE = "as:{g}:awake"  # P:{g}:awake of the default prefix


@pytest.fixture
def wake_queue(aws_env: dict[str, str]) -> str:
    sqs = boto3.client("sqs")
    name = f"wake-{time.monotonic_ns()}"
    return str(sqs.create_queue(QueueName=name)["QueueUrl"])


def harness(
    redis_url: str,
    aws_env: dict[str, str],
    timeout_s: float,
    *,
    app: str = DRAIN_APP,
    function_name: str = "drain",
    **env: str,
) -> LambdaHarness:
    """A function of the module ``app``; ACTOR_SYSTEM_LAMBDA_MARGIN_S is left unset (the
    library's default floor applies)."""
    full = {**aws_env, "ACTOR_SYSTEM_REDIS_URL": redis_url, **env}
    lam = LambdaHarness(app, timeout_s=timeout_s, env=full, cwd=ROOT, function_name=function_name)
    lam.env.pop("ACTOR_SYSTEM_LAMBDA_MARGIN_S", None)
    return lam


def warm(lam: LambdaHarness) -> None:
    """Cold-start the environment before the test's clock starts (the init phase does not
    count against an invocation's timeout, and takes seconds on a busy machine)."""
    result = lam.invoke({"actor_system": "sweep"})
    assert "errorType" not in result, result
    assert result["messages"] == 0
    assert lam.cold_starts == 1


def sender(
    redis_url: str, wake_queue: str, actors: list[ActorType[Any]] = wake_actors
) -> ActorSystem:
    """Another function's system: it wakes the drain through the wake queue."""
    return ActorSystem.from_url(redis_url, actors=actors, waker=SqsWaker(queue=wake_queue))


def http_event(path: str, body: dict[str, Any], query: str = "") -> dict[str, Any]:
    event: dict[str, Any] = {
        "version": "2.0",
        "rawPath": path,
        "body": json.dumps(body),
        "isBase64Encoded": False,
        "requestContext": {"http": {"method": "POST", "path": path}},
    }
    if query:
        event["rawQueryString"] = query
    return event


def answer(response: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    assert response.get("errorType") is None, response
    return response["statusCode"], json.loads(response["body"])


def awake(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.exists(AWAKE))
    finally:
        client.close()


def test_a_send_to_an_idle_system_is_committed_through_one_wake(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = sender(redis_url, wake_queue)
    ref = counter.ref("idle")
    with harness(redis_url, aws_env, 5, ACTOR_SYSTEM_WAKER_URL=wake_queue) as lam:
        warm(lam)
        assert awake(redis_url) == 0  # the warm-up drain ended at rest
        with SqsPoller(lam, wake_queue) as poller:
            started = time.monotonic()
            mid = system.send(ref, Add(n=7))
            wait_until(
                lambda: system.state(ref).count == 7,  # type: ignore[attr-defined]
                timeout_s=20,
                what="the woken drain to commit",
            )
            latency_s = time.monotonic() - started
            wait_quiet(poller)
    print(f"wake latency: {latency_s * 1000:.0f} ms")
    assert latency_s < 10  # the sweep comes every 60 s; this did not wait for it
    assert poller.bodies == [{"actor_system": "wake"}]  # exactly one wake
    assert poller.invocations == 1
    [result] = poller.results
    assert result["messages"] == 1
    assert result["batchItemFailures"] == []
    assert system.state(ref).seen == [mid]  # type: ignore[attr-defined]
    assert lam.invocations == 2  # the warm-up sweep and the wake: no other drain ran
    assert awake(redis_url) == 0  # the woken drain ended at rest: the next send wakes again


def test_an_ingress_request_commits_in_its_own_invocation_without_a_wake(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = sender(redis_url, wake_queue)
    ref = counter.ref("x")
    env = {"ACTOR_SYSTEM_WAKER_URL": wake_queue}
    with harness(redis_url, aws_env, 3, function_name="ingress", **env) as ingress:
        warm(ingress)
        response = ingress.invoke(
            http_event("/actors/counter/x/messages", {"type": "Add", "payload": {"n": 5}})
        )
        state = system.state(ref)  # right after the answer: no drain runs in this test
        status, body = answer(response)
        assert status == 202
        assert list(body) == ["id"]
        assert state.count == 5  # type: ignore[attr-defined]
        assert state.seen == [body["id"]]  # type: ignore[attr-defined]
        # A second request to the same actor: its turn runs in its own invocation as well.
        status, again = answer(
            ingress.invoke(
                http_event("/actors/counter/x/messages", {"type": "Add", "payload": {"n": 2}})
            )
        )
        assert status == 202
        assert system.state(ref).count == 7  # type: ignore[attr-defined]
        assert system.state(ref).seen == [body["id"], again["id"]]  # type: ignore[attr-defined]
    sqs = boto3.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=wake_queue, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"  # no wake was sent
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "0"
    assert sqs.receive_message(QueueUrl=wake_queue, WaitTimeSeconds=1).get("Messages") is None
    stats = system.stats()
    assert (stats["ready_actors"], stats["leases_held"], stats["mailbox_messages"]) == (0, 0, 0)
    assert awake(redis_url) == 0


def test_ingress_wait_commit_answers_with_the_reply_or_the_dead_letter_reason(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = sender(redis_url, wake_queue)
    env = {"ACTOR_SYSTEM_WAKER_URL": wake_queue, "ACTOR_SYSTEM_MAX_ATTEMPTS": "1"}
    with harness(redis_url, aws_env, 3, app=WAKE_APP, function_name="ingress", **env) as ingress:
        warm(ingress)
        path = "/actors/tally/t1/messages"
        status, body = answer(
            ingress.invoke(
                http_event(path, {"type": "Bump", "payload": {"n": 4}}, query="wait=commit")
            )
        )
        assert status == 200
        assert body == {"id": body["id"], "reply": {"total": 4}}
        assert len(body["id"]) == 32
        # queryStringParameters (what API Gateway sends) work as well as rawQueryString.
        event = http_event(path, {"type": "Bump", "payload": {"n": 3}})
        event["queryStringParameters"] = {"wait": "commit", "timeout": "2"}
        status, second = answer(ingress.invoke(event))
        assert (status, second["reply"]) == (200, {"total": 7})
        assert system.reply(body["id"]) == {"total": 4}  # kept for system.reply too

        status, failed = answer(
            ingress.invoke(
                http_event(path, {"type": "Fail", "payload": {"why": "no way"}}, "wait=commit")
            )
        )
        assert status == 500
        dead = system.dead_letter(failed["id"])
        assert dead is not None
        assert dead.attempts == 1  # ACTOR_SYSTEM_MAX_ATTEMPTS=1: no retry
        assert "no way" in dead.reason
        assert failed == {"id": failed["id"], "error": dead.reason}
    assert system.state(tally.ref("t1")).total == 7  # type: ignore[attr-defined]
    assert boto3.client("sqs").receive_message(QueueUrl=wake_queue).get("Messages") is None


def test_ingress_wait_commit_gives_up_on_a_held_lease_and_the_holding_drain_replies(
    redis_url: str, aws_env: dict[str, str], wake_queue: str, tmp_path: Path
) -> None:
    system = sender(redis_url, wake_queue)
    ref = tally.ref("held")
    started_file = tmp_path / "holding"
    env = {"ACTOR_SYSTEM_WAKER_URL": wake_queue}
    # The drain must still have room for another turn after a 2 s handler: it starts one
    # only with more than margin + 2 x the longest handler left.
    with (
        harness(redis_url, aws_env, 8, app=WAKE_APP, **env) as drain,
        harness(redis_url, aws_env, 3, app=WAKE_APP, function_name="ingress", **env) as ingress,
    ):
        warm(drain)
        warm(ingress)
        with SqsPoller(drain, wake_queue) as poller:
            held = system.send(ref, Hold(path=str(started_file), seconds=2.0))
            wait_until(started_file.exists, timeout_s=20, what="the drain to hold the lease")
            began = time.monotonic()
            status, body = answer(
                ingress.invoke(
                    http_event(
                        "/actors/tally/held/messages",
                        {"type": "Bump", "payload": {"n": 6}},
                        "wait=commit&timeout=0.5",
                    )
                )
            )
            waited_s = time.monotonic() - began
            assert status == 202
            assert list(body) == ["id"]
            assert 0.5 <= waited_s < 1.9  # it waited its timeout, not for the lease
            # The drain holding the lease takes the message after its turn.
            assert system.reply(body["id"], timeout=20) == {"total": 6}
            with pytest.raises(NoReply):
                system.reply(held)  # a plain send: its return value is not kept
            wait_quiet(poller)
    assert poller.bodies == [{"actor_system": "wake"}]  # the ingress found the drain awake
    assert [r["messages"] for r in poller.results] == [2]
    assert system.state(ref).seen == [body["id"]]  # type: ignore[attr-defined]


def test_a_message_left_behind_a_caller_held_lease_is_drained_without_the_sweep(
    redis_url: str, aws_env: dict[str, str], wake_queue: str, tmp_path: Path
) -> None:
    system = sender(redis_url, wake_queue)
    ref = tally.ref("caller-held")
    started_file = tmp_path / "holding"
    with harness(redis_url, aws_env, 5, app=WAKE_APP, ACTOR_SYSTEM_WAKER_URL=wake_queue) as drain:
        warm(drain)
        with SqsPoller(drain, wake_queue) as poller:
            # Another caller (an ingress request, an ask) runs a 2 s turn of this actor.
            holder = threading.Thread(
                target=system.send,
                args=(ref, Hold(path=str(started_file), seconds=2.0)),
                kwargs={"process": 5.0},
            )
            holder.start()
            wait_until(started_file.exists, timeout_s=20, what="the caller to hold the lease")
            mid = system.send(ref, Bump(n=1))  # wakes a drain, which finds the lease held
            wait_until(lambda: poller.invocations == 1, timeout_s=20, what="the woken drain")
            holder.join()
            # No drain runs now; the message must not wait for the sweep.
            wait_until(
                lambda: system.state(ref).seen == [mid],  # type: ignore[attr-defined]
                timeout_s=5,
                what="the message left behind the caller's lease",
            )
            # A timed wake armed for the lease's expiry may still be pending: no need to
            # wait for it.
            assert not poller.errors


def test_a_burst_of_ten_thousand_sends_costs_a_handful_of_wakes(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = sender(redis_url, wake_queue)
    actors_n, per_actor = 100, 100
    messages = [(counter.ref(f"b{i % actors_n}"), Add(n=1)) for i in range(actors_n * per_actor)]
    with harness(redis_url, aws_env, 10, ACTOR_SYSTEM_WAKER_URL=wake_queue) as lam:
        warm(lam)
        with SqsPoller(lam, wake_queue) as poller:
            began = time.monotonic()
            ids: list[str] = []
            for i in range(0, len(messages), 500):
                ids += system.send_many(messages[i : i + 500])
            sent_s = time.monotonic() - began

            def processed() -> int:
                return sum(
                    system.state(counter.ref(f"b{i}")).count  # type: ignore[attr-defined]
                    for i in range(actors_n)
                )

            wait_until(lambda: processed() == len(messages), timeout_s=30, what="the burst")
            drained_s = time.monotonic() - began
            wait_quiet(poller)
    wakes = poller.count("wake")
    print(
        f"burst: sent 10000 in {sent_s:.2f}s, processed in {drained_s:.2f}s; wakes={wakes} "
        f"continuations={poller.count('continue')} invocations={poller.invocations}"
    )
    assert 1 <= wakes <= 5
    assert all(r.get("errorType") is None for r in poller.results), poller.results
    assert sum(r["messages"] for r in poller.results) == len(messages)  # by woken drains only
    seen: list[str] = []
    for i in range(actors_n):
        state = system.state(counter.ref(f"b{i}"))
        assert state.count == per_actor  # type: ignore[attr-defined]
        seen += state.seen  # type: ignore[attr-defined]
    assert sorted(seen) == sorted(ids)  # every message once
    assert awake(redis_url) == 0


def test_no_wake_up_is_lost_when_a_send_races_the_end_of_a_drain(
    redis_url: str, aws_env: dict[str, str], wake_queue: str
) -> None:
    system = sender(redis_url, wake_queue)
    started = threading.Event()

    def count(refs: list[ActorRef]) -> int:
        return sum(system.state(r).count for r in refs)  # type: ignore[attr-defined]

    # A drain that had work lingers (Options.linger_s, 0.5 s by default) before it rests:
    # shortened here so that twenty rounds fit in seconds; the race at the rest is the same.
    env = {"ACTOR_SYSTEM_WAKER_URL": wake_queue}
    if "linger_s" in {f.name for f in fields(Options)}:
        env["ACTOR_SYSTEM_LINGER_S"] = "0.1"
    with harness(redis_url, aws_env, 5, **env) as lam:
        warm(lam)
        with SqsPoller(lam, wake_queue, on_batch=lambda _: started.set()) as poller:
            # Calibrate: how long a woken one-message drain takes, from its batch to its answer.
            system.send(counter.ref("calibrate"), Add(n=1))
            wait_until(lambda: poller.invocations == 1, timeout_s=20, what="calibration")
            wait_quiet(poller)
            [drain_s] = poller.durations
            rounds = 20
            wakes_per_round = []
            for i in range(rounds):
                wakes = poller.count("wake")
                started.clear()
                # Odd rounds send twice to one actor, even rounds to two actors.
                first, second = counter.ref(f"r{i}"), counter.ref(f"r{i}" if i % 2 else f"s{i}")
                system.send(first, Add(n=1))
                assert started.wait(20), "no drain was woken"
                # From the start of the invocation to well past its end, across the rounds:
                # some sends land while the drain runs, some as it rests, some after it. Up to
                # three times the calibrated drain: on a loaded machine the end of an invocation
                # (thaw, answer, freeze) can take half a drain longer than the calibration saw.
                time.sleep(drain_s * 3 * i / rounds)
                system.send(second, Add(n=1))
                refs = list({first.key: first, second.key: second}.values())

                def both(refs: list[ActorRef] = refs) -> bool:
                    return count(refs) == 2

                wait_until(
                    both,
                    timeout_s=8,
                    what=f"round {i}'s messages (a lost wake-up leaves one to the sweep)",
                )
                wait_quiet(poller)
                wakes_per_round.append(poller.count("wake") - wakes)
    print(
        f"one-message drain {drain_s * 1000:.0f} ms; wakes per round {wakes_per_round}; "
        f"invocation ms {[round(d * 1000) for d in poller.durations]}"
    )
    assert all(r.get("errorType") is None for r in poller.results), poller.results
    assert all(r["batchItemFailures"] == [] for r in poller.results)
    assert sum(r["messages"] for r in poller.results) == 2 * rounds + 1  # no sweep ran
    assert poller.count("continue") == 0
    assert set(wakes_per_round) <= {1, 2}
    # Both sides of the end were exercised: a second send caught by the running drain (no
    # second wake), and one that came after it rested (woken again).
    assert 1 in wakes_per_round
    assert 2 in wakes_per_round
    assert awake(redis_url) == 0


@pytest.mark.parametrize("timeout_s", [1, 3])
def test_a_backlog_drains_through_continuations_within_short_function_timeouts(
    redis_url: str, aws_env: dict[str, str], wake_queue: str, timeout_s: float
) -> None:
    system = sender(redis_url, wake_queue)
    actors_n, total = 10, 300
    with harness(redis_url, aws_env, timeout_s, ACTOR_SYSTEM_WAKER_URL=wake_queue) as lam:
        warm(lam)
        with SqsPoller(lam, wake_queue) as poller:
            ids = system.send_many(
                [(counter.ref(f"k{i % actors_n}"), Add(n=1, work_ms=10)) for i in range(total)]
            )

            def processed() -> int:
                return sum(
                    system.state(counter.ref(f"k{i}")).count  # type: ignore[attr-defined]
                    for i in range(actors_n)
                )

            wait_until(lambda: processed() == total, timeout_s=40, what="the backlog")
            wait_quiet(poller)
    per_invocation = [r.get("messages") for r in poller.results]
    print(f"timeout {timeout_s}s: messages per invocation {per_invocation}")
    assert all(r.get("errorType") is None for r in poller.results), poller.results  # no kill
    assert poller.count("wake") == 1
    assert poller.count("continue") == poller.invocations - 1 >= 1  # more than one invocation
    assert sum(r["messages"] for r in poller.results) == total
    seen: list[str] = []
    for i in range(actors_n):
        seen += system.state(counter.ref(f"k{i}")).seen  # type: ignore[attr-defined]
    assert sorted(seen) == sorted(ids)  # every message exactly once


def test_a_timeout_too_short_to_drain_is_logged(
    redis_url: str,
    aws_env: dict[str, str],
    wake_queue: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    system = sender(redis_url, wake_queue)
    ref = counter.ref("short")
    system.send(ref, Add(n=1))
    env = {"ACTOR_SYSTEM_WAKER_URL": wake_queue, "ACTOR_SYSTEM_LOG_FORMAT": "json"}
    # 0.4 s: the margin is at most a quarter of the invocation, so its floor of 0.25 s
    # leaves room for a short handler; the log says the timeout is too short anyway.
    with harness(redis_url, aws_env, 0.4, **env) as lam:
        results = [lam.invoke({"actor_system": "sweep"}) for _ in range(3)]
    err = capfd.readouterr().err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert all(r.get("errorType") is None for r in results), results  # answered, not killed
    assert [r["messages"] for r in results] == [1, 0, 0]
    assert system.state(ref).count == 1  # type: ignore[attr-defined]
    assert lam.cold_starts == 1
    warnings = [r for r in records if "too short to drain" in r.get("message", "")]
    assert len(warnings) == 1, records  # once per environment
    [warning] = warnings
    assert warning["level"] == "WARNING"
    assert "raise the timeout to at least 3s" in warning["message"]
    assert warning["function_name"] == "drain"
    assert warning["cold_start"] is True
    # 0.2 s: less than the margin's floor: no turn can start; it says so and hands nothing
    # over (a continuation would find no more time).
    other = counter.ref("shorter")
    system.send(other, Add(n=1))
    with harness(redis_url, aws_env, 0.2, **env) as lam:
        assert lam.invoke({"actor_system": "sweep"})["messages"] == 0
    records = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line[:1] == "{"]
    no_time = [r for r in records if "no time to drain" in r.get("message", "")]
    assert [r["level"] for r in no_time] == ["ERROR", "INFO"]  # and the summary line
    assert len({r["function_request_id"] for r in no_time}) == 1
    assert system.state(other).count == 0  # type: ignore[attr-defined]
    assert (
        boto3.client("sqs").get_queue_attributes(
            QueueUrl=wake_queue, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "2"
    )  # the sender's two wakes, no continuation
