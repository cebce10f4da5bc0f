"""A stand-in for Lambda's SQS event source mapping: a thread that long-polls a queue (on the
moto server) and invokes a LambdaHarness with each batch, deleting what the function
processed and leaving its ``batchItemFailures`` (and every record of a failed invocation)
to come back after the visibility timeout."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from collections.abc import Callable

    from actor_system.testing import LambdaHarness


def sqs_event(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The SQS event Lambda builds from received messages."""
    return {
        "Records": [
            {
                "eventSource": "aws:sqs",
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
            }
            for m in messages
        ]
    }


class SqsPoller:
    """Polls ``queue_url`` and invokes ``lam`` with batches of up to 10 messages, one
    invocation at a time (the harness is one execution environment: ``invoke`` takes the
    same lock, so a test may invoke it directly while the poller runs).

    ``on_batch`` is called with the bodies of each batch just before its invocation starts.
    """

    def __init__(
        self,
        lam: LambdaHarness,
        queue_url: str,
        *,
        visibility_timeout_s: int = 2,
        wait_s: int = 1,
        on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.lam = lam
        self.queue_url = queue_url
        self.visibility_timeout_s = visibility_timeout_s
        self.wait_s = wait_s
        self.on_batch = on_batch
        self.sqs = boto3.client("sqs")
        self.lock = threading.Lock()
        self.invocations = 0  # by the poller (not direct ``invoke`` calls)
        self.received = 0  # message receipts, redeliveries included
        self.bodies: list[dict[str, Any]] = []  # every received body, in order
        self.results: list[Any] = []  # every poller invocation's result, in order
        self.durations: list[float] = []  # seconds each poller invocation took
        self.errors: list[BaseException] = []
        self._busy = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-poller", daemon=True)

    # -- the harness ------------------------------------------------------------------------

    def invoke(self, event: Any) -> Any:
        """One invocation of the harness, serialized with the poller's."""
        with self.lock:
            return self.lam.invoke(event)

    # -- the polling thread -----------------------------------------------------------------

    def start(self) -> SqsPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current poll or invocation; re-raise what the thread hit."""
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the poller did not stop"
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> SqsPoller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                got = self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=self.wait_s,
                    VisibilityTimeout=self.visibility_timeout_s,
                )
                messages = got.get("Messages", [])
                if messages:
                    self._deliver(messages)
        except BaseException as e:  # reported by stop()
            self.errors.append(e)

    def _deliver(self, messages: list[dict[str, Any]]) -> None:
        bodies = [json.loads(m["Body"]) for m in messages]
        with self.lock:
            self._busy = True
            try:
                self.received += len(messages)
                self.bodies += bodies
                if self.on_batch is not None:
                    self.on_batch(bodies)
                started = time.monotonic()
                result = self.lam.invoke(sqs_event(messages))
                self.durations.append(time.monotonic() - started)
                self.invocations += 1
                self.results.append(result)
            finally:
                self._busy = False
        if not isinstance(result, dict) or "errorType" in result:
            return  # a failed invocation: the whole batch comes back
        failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )

    # -- what happened ----------------------------------------------------------------------

    def count(self, kind: str) -> int:
        """Received bodies of a kind: "wake" or "continue"."""
        return sum(1 for b in self.bodies if b.get("actor_system") == kind)

    def queue_depth(self) -> int:
        """Messages on the queue: visible, in flight and delayed."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return sum(int(v) for v in attrs.values())

    def quiet(self) -> bool:
        """Nothing on the queue and no invocation running (checked twice, around a look at
        the queue, so that a batch taken in between is seen)."""
        if self._busy:
            return False
        depth = self.queue_depth()
        return depth == 0 and not self._busy and not self.lock.locked()


def wait_quiet(poller: SqsPoller, timeout_s: float = 30.0) -> None:
    """Until the queue is empty and the function idle."""
    deadline = time.monotonic() + timeout_s
    while not poller.quiet():
        if poller.errors:
            raise poller.errors[0]
        assert time.monotonic() < deadline, "the wake queue did not drain"
        time.sleep(0.05)
