"""rq with its scheduler. Scheduled jobs are moved to the queue by a scheduler that polls."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from common import URL, Queue, client, main
from rq import Queue as RQueue

r = client()
MODULE = "rq_bench"  # workers import jobs by module path, never from __main__


def inc() -> None:
    r.incr("bench:count")


def late(due: float) -> None:
    r.rpush("bench:late", time.time() - due)


def _queue() -> RQueue:
    return RQueue(connection=client())


def _enqueue(n: int) -> None:
    q = _queue()
    for _ in range(n):
        q.enqueue(f"{MODULE}.inc", result_ttl=0)


def _enqueue_batched(n: int) -> None:
    q = _queue()
    for i in range(0, n, 500):
        jobs = [RQueue.prepare_data(f"{MODULE}.inc", result_ttl=0) for _ in range(min(500, n - i))]
        q.enqueue_many(jobs)


def _deferred(dues: Sequence[float]) -> None:
    q = _queue()
    for due in dues:
        q.enqueue_at(datetime.fromtimestamp(due, UTC), f"{MODULE}.late", due, result_ttl=0)


QUEUE = Queue(
    name="rq",
    enqueue=_enqueue,
    enqueue_batched=_enqueue_batched,
    enqueue_deferred=_deferred,
    worker_cmd=lambda: [
        os.path.join(os.path.dirname(sys.executable), "rq"),
        "worker",
        "--with-scheduler",
        "--url",
        URL,
        "--quiet",
    ],
    timing="scheduler polls for due jobs (about once a second), forks a process per job",
    settings="one worker with its scheduler, the default forking worker (rq's production default)",
)

if __name__ == "__main__":
    main(QUEUE)
