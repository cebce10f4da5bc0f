"""dramatiq with its Redis broker. Delayed messages are held by the worker in memory until
their eta (an in-process delay queue)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import dramatiq
from common import URL, Queue, client, main
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)
r = client()


@dramatiq.actor(max_retries=0)
def inc() -> None:
    r.incr("bench:count")


@dramatiq.actor(max_retries=0)
def late(due: float) -> None:
    r.rpush("bench:late", time.time() - due)


def _enqueue(n: int) -> None:
    for _ in range(n):
        inc.send()


def _deferred(dues: Sequence[float]) -> None:
    for due in dues:
        late.send_with_options(args=(due,), delay=max(0, int((due - time.time()) * 1000)))


QUEUE = Queue(
    name="dramatiq",
    enqueue=_enqueue,
    enqueue_batched=_enqueue,  # no bulk enqueue API
    enqueue_deferred=_deferred,
    worker_cmd=lambda: [
        sys.executable,
        "-m",
        "dramatiq",
        "dramatiq_bench",
        "--processes",
        "1",
        "--threads",
        "8",
    ],
    timing="holds delayed messages in worker memory until due (in-process delay queue)",
    settings="one process, 8 threads (the default), prefetch 2 per thread (the default)",
)

if __name__ == "__main__":
    main(QUEUE)
