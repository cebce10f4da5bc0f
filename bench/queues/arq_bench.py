"""arq: asyncio job queue on Redis. The worker polls for due jobs every ``poll_delay``."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from arq import create_pool
from arq.connections import RedisSettings
from common import URL, Queue, main

SETTINGS = RedisSettings.from_dsn(URL)


async def inc(ctx: dict) -> None:
    await ctx["redis"].incr("bench:count")


async def late(ctx: dict, due: float) -> None:
    await ctx["redis"].rpush("bench:late", time.time() - due)


class WorkerSettings:
    functions = [inc, late]  # noqa: RUF012
    redis_settings = SETTINGS
    keep_result = 0
    # Not the defaults (max_jobs 10, poll_delay 0.5 s): arq's docs name both as the knobs for
    # many short jobs and for how soon a job is picked up.
    max_jobs = 100
    poll_delay = 0.05


async def _enqueue(n: int, concurrent: bool) -> None:
    pool = await create_pool(SETTINGS)
    if concurrent:
        for i in range(0, n, 500):
            await asyncio.gather(*(pool.enqueue_job("inc") for _ in range(min(500, n - i))))
    else:
        for _ in range(n):
            await pool.enqueue_job("inc")
    await pool.aclose()


async def _deferred(dues: Sequence[float]) -> None:
    pool = await create_pool(SETTINGS)
    for due in dues:
        await pool.enqueue_job("late", due, _defer_until=datetime.fromtimestamp(due, UTC))
    await pool.aclose()


QUEUE = Queue(
    name="arq",
    enqueue=lambda n: asyncio.run(_enqueue(n, False)),
    enqueue_batched=lambda n: asyncio.run(_enqueue(n, True)),
    enqueue_deferred=lambda dues: asyncio.run(_deferred(dues)),
    worker_cmd=lambda: [sys.executable, "-m", "arq", "arq_bench.WorkerSettings"],
    timing="polls the queue (poll_delay 0.05 s)",
    settings="one worker, max_jobs=100, poll_delay=0.05 s, keep_result=0",
)

if __name__ == "__main__":
    main(QUEUE)
