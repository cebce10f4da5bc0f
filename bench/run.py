"""Benchmarks against a real redis-server that this script starts on a free port.

    python bench/run.py            # full mode
    python bench/run.py --quick    # smoke mode for CI (figures printed, nothing asserted)

Prints a table and writes the figures as JSON (``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actor_system import ActorSystem, Options  # noqa: E402
from adapters.redis import RedisBackend  # noqa: E402
from bench.actors import Due, Inc, actors, counter, timer  # noqa: E402


class CountingConnection(redis.Connection):
    """Counts round trips: one per command sent alone, one per pipeline."""

    round_trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        super().send_packed_command(command, check_health)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.01)
    sys.exit("redis-server did not start")


def make_system(port: int, **options: Any) -> ActorSystem:
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, connection_class=CountingConnection)
    opts = Options(**options)
    backend = RedisBackend(client=redis.Redis(connection_pool=pool), options=opts)
    return ActorSystem(backend, actors=actors, options=opts)


def throughput(port: int, messages: int, n_actors: int, **options: Any) -> dict[str, float]:
    """Preload a backlog, then drain it in this process: full turns with lease, state, commit."""
    redis.Redis(port=port).flushall()
    system = make_system(port, **options)
    refs = [counter.ref(str(i)) for i in range(n_actors)]
    batch = [(refs[i % n_actors], Inc()) for i in range(messages)]
    start = time.perf_counter()
    for i in range(0, messages, 1000):
        system.send_many(batch[i : i + 1000])
    enqueue_s = time.perf_counter() - start
    CountingConnection.round_trips = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    report = system.run_until_idle()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    assert report.messages == messages, report
    assert sum(system.state(r).count for r in refs) == messages  # type: ignore[attr-defined]
    return {
        "messages": messages,
        "actors": n_actors,
        "msgs_per_s": messages / elapsed,
        "enqueue_msgs_per_s": messages / enqueue_s,
        "round_trips_per_msg": CountingConnection.round_trips / messages,
        "cpu_us_per_msg": cpu / messages * 1e6,
        "turns": report.turns,
    }


def lateness(port: int, messages: int, spread_s: float) -> dict[str, float]:
    """Deferred messages due uniformly over ``spread_s``, drained by a live worker process."""
    redis.Redis(port=port).flushall()
    system = make_system(port)
    env = {**os.environ, "ACTOR_SYSTEM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "actor_system.cli", "--json", "--app", "bench.actors", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # the worker is up and idle
        refs = [timer.ref(str(i)) for i in range(20)]
        start = time.time() + 0.5
        for i in range(messages):
            due = start + spread_s * i / messages
            system.send(refs[i % 20], Due(due=due), delay=due - time.time())
        deadline = time.time() + spread_s + 30
        while time.time() < deadline:
            samples = [x for r in refs for x in system.state(r).samples]  # type: ignore[attr-defined]
            if len(samples) >= messages:
                break
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    samples.sort()
    n = len(samples)

    def pct(p: float) -> float:
        return samples[min(n - 1, int(p * n))] * 1000

    return {
        "messages": messages,
        "delivered": n,
        "early": sum(1 for x in samples if x < 0),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": samples[-1] * 1000,
    }


def import_time() -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import actor_system"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stderr
    line = next(ln for ln in out.splitlines() if re.search(r"\|\s+actor_system$", ln))
    return {"import_actor_system_ms": int(line.split("|")[1]) / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    n = 2_000 if args.quick else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            results = {
                "backlog_100_actors_batch_100": throughput(port, n, 100, batch=100),
                "backlog_100_actors_batch_1": throughput(
                    port, n // 4, 100, batch=1, actors_per_round=1
                ),
                "backlog_100_actors_batch_1_pipelined": throughput(
                    port, n // 4, 100, batch=1, actors_per_round=16
                ),
                "backlog_1_actor_batch_100": throughput(port, n, 1, batch=100),
                "deferred_lateness": lateness(
                    port, 200 if args.quick else 2_000, 2.0 if args.quick else 10.0
                ),
                "import": import_time(),
            }
        finally:
            proc.terminate()
            proc.wait(10)
    for name, figures in results.items():
        cells = "  ".join(
            f"{k}={v:,.3g}"
            if isinstance(v, float) and v < 10
            else f"{k}={v:,.1f}"
            if isinstance(v, float)
            else f"{k}={v:,}"
            for k, v in figures.items()
        )
        print(f"{name:38} {cells}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
