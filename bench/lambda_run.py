"""Lambda figures under the harness (a child process frozen between invocations), against a
redis-server and a moto server that this script starts:

    python bench/lambda_run.py

- cold import of the handler module, with and without a waker configured (boto3 lazy);
- time left unused by invocations that ran out of budget (the margin actually kept);
- wake precision: deferred messages delivered inside an invocation (sorted set, live wait)
  versus after an SQS wake (DelaySeconds in whole seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from actor_system import ActorSystem  # noqa: E402
from actor_system.testing import LambdaHarness  # noqa: E402
from bench.run import free_port, start_redis  # noqa: E402
from tests.actors import Add, Plan, actors, counter, probe  # noqa: E402


def import_ms(env: dict[str, str]) -> tuple[float, bool]:
    code = (
        "import time, sys; t = time.perf_counter(); import tests.lambda_app; "
        "print((time.perf_counter() - t) * 1000, 'boto3' in sys.modules)"
    )
    runs = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        runs.append((float(out[0]), out[1] == "True"))
    return min(runs)


def with_servers(run: Callable[[int, int], None]) -> None:
    """``run(redis port, moto port)`` against a redis-server and a moto server of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        moto_port = free_port()
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            run(port, moto_port)
        finally:
            moto.terminate()
            proc.terminate()


def aws_env(moto_port: int) -> dict[str, str]:
    """boto3's settings for the moto server, also set in this process's environment."""
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(aws)
    return aws


def main() -> None:
    with_servers(run)


def run(port: int, moto_port: int) -> None:
    time.sleep(1.5)
    url = f"redis://127.0.0.1:{port}/0"
    aws = aws_env(moto_port)
    queue = boto3.client("sqs").create_queue(QueueName="wake")["QueueUrl"]
    base = {**os.environ, "ACTOR_SYSTEM_REDIS_URL": url, "AWS_LAMBDA_FUNCTION_NAME": "drain"}
    bare, bare_boto = import_ms({**base, "AWS_LAMBDA_FUNCTION_NAME": ""})
    woken, woken_boto = import_ms({**base, "ACTOR_SYSTEM_WAKER_URL": queue})
    print(
        f"cold import of the handler module: {bare:.0f} ms without a waker (boto3 imported: "
        f"{bare_boto}), {woken:.0f} ms with an SQS waker (boto3 imported: {woken_boto})"
    )

    system = ActorSystem.from_url(url, actors=actors)
    env = {
        **aws,
        "ACTOR_SYSTEM_REDIS_URL": url,
        "ACTOR_SYSTEM_WAKER_URL": queue,
        "ACTOR_SYSTEM_LAMBDA_MARGIN_S": "1",
    }
    sqs = boto3.client("sqs")

    def receive() -> list[dict]:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        for m in got:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        return got

    def event(msgs: list[dict]) -> dict:
        return {
            "Records": [
                {"eventSource": "aws:sqs", "messageId": m["MessageId"], "body": m["Body"]}
                for m in msgs
            ]
        }

    # Budget use: a backlog of 200 messages of 50 ms each, drained through continuations.
    system.send_many([(counter.ref(f"b{i % 20}"), Add(n=1, work_ms=50)) for i in range(200)])
    unused = []
    with LambdaHarness("tests.lambda_app:handler", timeout_s=3, env=env, cwd=str(ROOT)) as lam:
        pending: dict = {"actor_system": "sweep"}
        while pending is not None:
            started = time.time()
            result = lam.invoke(pending)
            left = 3 - (time.time() - started)
            pending = None
            for _ in range(20):
                msgs = receive()
                if msgs:
                    pending = event(msgs)
                    break
                time.sleep(0.05)
            if pending is not None:  # it handed over: it ran until its budget ended
                unused.append(left)
            assert result.get("errorType") is None, result
        kills = lam.invocations - len(unused) - 1
    print(
        f"backlog of 200 x 50 ms through {lam.invocations} invocations of 3 s: time left "
        f"unused when the budget ended: min {min(unused):.2f} s, max {max(unused):.2f} s "
        f"(margin 1 s); hard kills: {kills if kills > 0 else 0}"
    )

    # Wake precision: due times inside the first invocation's budget, then beyond it.
    ref = probe.ref("precision")
    delays = [0.3, 0.6, 0.9, 1.2, 1.5, 3.5, 4.5, 6.0, 8.0]
    system.send(ref, Plan(delays=delays))
    with LambdaHarness("tests.lambda_app:handler", timeout_s=3, env=env, cwd=str(ROOT)) as lam:
        lam.invoke({"actor_system": "sweep"})
        deadline = time.time() + 30
        while len(system.state(ref).deliveries) < len(delays) and time.time() < deadline:
            msgs = receive()
            if msgs:
                lam.invoke(event(msgs))
            time.sleep(0.05)
    rows = sorted(system.state(ref).deliveries)
    inside = [round((d - due) * 1000, 1) for due, d in rows[:5]]
    woken = [round((d - due) * 1000) for due, d in rows[5:]]
    print(f"lateness inside the invocation (sorted set, live wait) ms: {inside}")
    print(f"lateness after an SQS wake (DelaySeconds, whole seconds) ms: {woken}")
    print(json.dumps({"import_ms": bare, "unused_s": [round(u, 3) for u in unused]}))


if __name__ == "__main__":
    main()
