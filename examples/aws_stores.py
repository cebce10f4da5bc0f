"""Actor state in S3 and deferred messages in SQS, with Redis for mailboxes and leases.

Run: python -m examples.aws_stores [--redis-url redis://localhost:6379/0]

Without ``AWS_ENDPOINT_URL`` it starts a local moto server (``pip install -e '.[dev]'``) and
creates the bucket and the queue there; with it (or on AWS) it uses the ones named below.
SQS hops are capped at 2 s here so that a 5-second reminder shows its hops.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, Budget, Context
from examples._cli import redis_url

BUCKET = "actor-system-example"
QUEUE = "actor-system-deferred"


class Plan(BaseModel):
    text: str
    in_s: float


class Due(BaseModel):
    text: str
    due: float


class Diary(BaseModel):
    planned: int = 0
    done: list[str] = Field(default_factory=list)


diary = ActorType("diary", state=Diary)


@diary.handler
def plan(ctx: Context[Diary], msg: Plan) -> None:
    ctx.state.planned += 1
    ctx.send(ctx.self, Due(text=msg.text, due=ctx.now.timestamp() + msg.in_s), delay=msg.in_s)


@diary.handler
def due(ctx: Context[Diary], msg: Due) -> None:
    ctx.state.done.append(msg.text)
    print(f"  {msg.text!r} delivered {(time.time() - msg.due) * 1000:.1f} ms after its due time")


def local_aws() -> subprocess.Popen[bytes] | None:
    """A moto server on a free port, unless AWS_ENDPOINT_URL already points somewhere."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="example",
        AWS_SECRET_ACCESS_KEY="example",
        AWS_DEFAULT_REGION="us-east-1",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    url = redis_url(__doc__ or "")
    moto = local_aws()
    try:
        import boto3

        if moto is not None:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            boto3.client("sqs").create_queue(QueueName=QUEUE)
        system = ActorSystem.from_url(
            url,
            actors=[diary],
            state=f"s3://{BUCKET}/actors",
            delay=f"sqs://{QUEUE}?near=1&max_hop=2&receive_every=0.1",
            poll_interval_s=0.1,
        )
        hops: list[int] = []
        system.backend.delay.client.meta.events.register(  # type: ignore[attr-defined]
            "provide-client-params.sqs.SendMessageBatch",
            lambda params, **_: hops.extend(e["DelaySeconds"] for e in params["Entries"]),
        )
        ref = diary.ref("ada")
        system.send(ref, Plan(text="water the plants", in_s=5))
        print("planned a reminder 5 s ahead; draining for 7 s ...")
        system.worker(budget=Budget.seconds(7, clock=system.clock)).run()
        head = boto3.client("s3").head_object(Bucket=BUCKET, Key=f"actors/{ref.key}")
        state = system.state(ref)
        print(f"state in s3://{BUCKET}/actors/{ref.key} ({head['ContentLength']} B): {state}")
        print(f"SQS hops (DelaySeconds): {hops}")
        assert state.done == ["water the plants"], state  # type: ignore[attr-defined]
        system.close()
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)


if __name__ == "__main__":
    main()
