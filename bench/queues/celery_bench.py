"""celery with the Redis broker. ETA tasks are held by the worker and fired by in-process
timers: precise while the process runs, exactly what a frozen Lambda cannot do."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from celery import Celery
from common import URL, Queue, client, main

app = Celery("celery_bench", broker=URL)
app.conf.update(
    task_ignore_result=True,
    # The default prefetch multiplier (4): the optimizing guide's higher one for many short
    # tasks (64 tried) moved the backlog from about 940 to 1,302 jobs/s, within this
    # machine's noise, and ETA tasks are counted against it.
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
r = client()


@app.task
def inc() -> None:
    r.incr("bench:count")


@app.task
def late(due: float) -> None:
    r.rpush("bench:late", time.time() - due)


def _enqueue(n: int) -> None:
    for _ in range(n):
        inc.delay()


def _enqueue_batched(n: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            inc.apply_async(producer=producer)


def _deferred(dues: Sequence[float]) -> None:
    with app.producer_or_acquire() as producer:
        for due in dues:
            late.apply_async((due,), eta=datetime.fromtimestamp(due, UTC), producer=producer)


QUEUE = Queue(
    name="celery",
    enqueue=_enqueue,
    enqueue_batched=_enqueue_batched,
    enqueue_deferred=_deferred,
    worker_cmd=lambda: [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_bench",
        "worker",
        "-P",
        "solo",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "warning",
    ],
    timing="holds ETA tasks in worker memory, fired by in-process timers",
    settings="solo pool (one process, like one drain), prefetch multiplier 4, acks early",
)

if __name__ == "__main__":
    main(QUEUE)
