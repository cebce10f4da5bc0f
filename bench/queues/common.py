"""The harness shared by the job-queue benchmarks; runs inside each queue's own venv.

Every job does the same trivial work as our counter actor: increment a counter in Redis
(``bench:count``), or record how late it ran (``bench:late``). Standard library and redis-py
only, since each queue pins its own redis-py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Queue:
    """What each queue provides to the harness."""

    name: str
    enqueue: Callable[[int], None]  # n immediate jobs, one call each
    enqueue_batched: Callable[[int], None]  # n immediate jobs, the queue's bulk API if any
    enqueue_deferred: Callable[[Sequence[float]], None]  # one job per due time (epoch s)
    worker_cmd: Callable[[], list[str]]
    timing: str  # how the queue times deferred jobs
    settings: str  # how the worker is configured here, and the documentation's advice behind it


def client() -> redis.Redis:
    return redis.Redis.from_url(URL)


def start_worker(q: Queue) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": HERE}
    return subprocess.Popen(
        q.worker_cmd(),
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def enqueue_rate(q: Queue, n: int) -> dict[str, float]:
    r = client()
    r.flushall()
    start = time.perf_counter()
    q.enqueue(n)
    single = n / (time.perf_counter() - start)
    r.flushall()
    start = time.perf_counter()
    q.enqueue_batched(n)
    batched = n / (time.perf_counter() - start)
    r.flushall()
    return {"enqueue_msgs_per_s": single, "enqueue_batched_msgs_per_s": batched}


def backlog(q: Queue, n: int) -> dict[str, float]:
    """Preload n jobs, start one worker, time from its first to its last completed job."""
    r = client()
    r.flushall()
    q.enqueue_batched(n)
    proc = start_worker(q)
    try:
        deadline = time.monotonic() + 300
        first: tuple[float, int] | None = None
        while True:
            done = int(r.get("bench:count") or 0)
            now = time.perf_counter()
            if first is None and done > 0:
                first = (now, done)
            if done >= n or time.monotonic() > deadline:
                break
            time.sleep(0.005)
    finally:
        stop_worker(proc)
    assert first is not None, f"{q.name}: no job completed"
    elapsed = now - first[0]
    return {"msgs_per_s": (done - first[1]) / elapsed if elapsed > 0 else 0.0, "done": done}


def timed(q: Queue, r: redis.Redis, n: int, start: float, spread_s: float) -> None:
    """Enqueue ``n`` deferred jobs due uniformly over ``spread_s`` from ``start`` and wait
    until they ran, up to 30 s after the last due time."""
    q.enqueue_deferred([start + spread_s * i / n for i in range(n)])
    deadline = start + spread_s + 30
    while r.llen("bench:late") < n and time.time() < deadline:
        time.sleep(0.05)


def late_samples(r: redis.Redis) -> list[float]:
    return sorted(float(x) for x in r.lrange("bench:late", 0, -1))


def lateness(q: Queue, n: int, spread_s: float) -> dict[str, float]:
    r = client()
    r.flushall()
    proc = start_worker(q)
    try:
        time.sleep(1.5)  # the worker is up and idle
        timed(q, r, n, time.time() + 1.0, spread_s)
    finally:
        stop_worker(proc)
    samples = late_samples(r)
    return summarize(samples, n) | {"samples": samples}


def lateness_under_backlog(q: Queue, backlog_n: int, n: int, spread_s: float) -> dict[str, float]:
    """Deferred jobs due while one worker drains ``backlog_n`` immediate jobs: how late they
    run when the worker is busy (a queue that promotes due jobs behind its backlog, or
    only between batches, shows it here). Jobs not run within 30 s of the last due time
    count as lost for this measurement."""
    r = client()
    r.flushall()
    q.enqueue_batched(backlog_n)
    proc = start_worker(q)
    try:
        deadline = time.monotonic() + 60
        while int(r.get("bench:count") or 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker is draining
        timed(q, r, n, time.time() + 0.5, spread_s)
        drained = int(r.get("bench:count") or 0)
    finally:
        stop_worker(proc)
    return summarize(late_samples(r), n) | {"backlog": backlog_n, "backlog_done_by_then": drained}


def summarize(samples: Sequence[float], n: int) -> dict[str, float]:
    k = len(samples)

    def pct(p: float) -> float:
        return samples[min(k - 1, int(p * k))] * 1000 if k else float("nan")

    return {
        "messages": n,
        "delivered": k,
        "lost": n - k,
        "early": sum(1 for x in samples if x < 0),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": samples[-1] * 1000 if k else float("nan"),
    }


def main(q: Queue) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["enqueue", "backlog", "lateness", "lateness_backlog"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=2.0)
    parser.add_argument("--backlog", type=int, default=50_000)
    args = parser.parse_args()
    if args.scenario == "enqueue":
        out = enqueue_rate(q, args.n)
    elif args.scenario == "backlog":
        out = backlog(q, args.n) | {"settings": q.settings}
    elif args.scenario == "lateness_backlog":
        out = lateness_under_backlog(q, args.backlog, args.n, args.spread)
    else:
        out = lateness(q, args.n, args.spread) | {"timing": q.timing}
    json.dump(out, sys.stdout)
