"""actor-system's side of the benchmarks, against a redis-server given by port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from actor_system import ActorSystem, ManualClock, Options
from actor_system.adapters.redis import RedisBackend
from bench.actors import Due, Inc, actors, counter, timer
from bench.queues.common import summarize

ROOT = Path(__file__).resolve().parent.parent


class CountingConnection(redis.Connection):
    """Counts round trips: one per command sent alone, one per pipeline."""

    round_trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        super().send_packed_command(command, check_health)


def make_system(port: int, clock: Any = None, **options: Any) -> ActorSystem:
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, connection_class=CountingConnection)
    opts = Options(**options)
    backend = RedisBackend(client=redis.Redis(connection_pool=pool), options=opts)
    return ActorSystem(backend, actors=actors, options=opts, clock=clock)


def enqueue(port: int, n: int) -> dict[str, float]:
    redis.Redis(port=port).flushall()
    system = make_system(port)
    ref = counter.ref("e")
    start = time.perf_counter()
    for _ in range(n):
        system.send(ref, Inc())
    single = n / (time.perf_counter() - start)
    msgs = [(ref, Inc())] * n
    start = time.perf_counter()
    for i in range(0, n, 1000):
        system.send_many(msgs[i : i + 1000])
    batched = n / (time.perf_counter() - start)
    return {"enqueue_msgs_per_s": single, "enqueue_batched_msgs_per_s": batched}


def throughput(
    port: int, messages: int, n_actors: int, actor: Any = counter, **options: Any
) -> dict[str, float]:
    """Preload a backlog, then drain it in this process: full turns with lease, state, commit."""
    redis.Redis(port=port).flushall()
    system = make_system(port, **options)
    refs = [actor.ref(str(i)) for i in range(n_actors)]
    batch = [(refs[i % n_actors], Inc()) for i in range(messages)]
    for i in range(0, messages, 1000):
        system.send_many(batch[i : i + 1000])
    admin = redis.Redis(port=port)
    admin.config_resetstat()  # the server's own counters: this drain's commands only
    CountingConnection.round_trips = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    report = system.run_until_idle()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    redis_us = sum(v["usec"] for v in admin.info("commandstats").values())
    admin.close()
    assert report.messages == messages, report
    assert sum(system.state(r).count for r in refs) == messages  # type: ignore[attr-defined]
    return {
        "messages": messages,
        "actors": n_actors,
        "msgs_per_s": messages / elapsed,
        "round_trips_per_msg": CountingConnection.round_trips / messages,
        "round_trips_per_turn": CountingConnection.round_trips / max(report.turns, 1),
        "cpu_us_per_msg": cpu / messages * 1e6,
        # Redis's time in commands (scripts included) per message: the ceiling of one node
        "redis_us_per_msg": redis_us / messages,
        "turns": report.turns,
    }


@contextmanager
def cli_worker(port: int, app: str = "bench.actors") -> Iterator[None]:
    """An ``actor-system worker`` process of ``app``'s actors on the benchmark's Redis,
    stopped by SIGTERM."""
    env = {**os.environ, "ACTOR_SYSTEM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "actor_system.cli", "--json", "--app", app, "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def _timed(system: ActorSystem, messages: int, start: float, spread_s: float) -> list[float]:
    """Send ``messages`` deferred messages due uniformly over ``spread_s`` from ``start``
    (over 20 timer actors) and wait for them, up to 30 s after the last due time (as the job
    queues' scenarios do); how late each ran, sorted."""
    refs = [timer.ref(str(i)) for i in range(20)]
    for i in range(messages):
        due = start + spread_s * i / messages
        system.send(refs[i % 20], Due(due=due), delay=due - time.time())
    samples: list[float] = []
    deadline = start + spread_s + 30
    while time.time() < deadline:
        samples = [x for r in refs for x in system.state(r).samples]  # type: ignore[attr-defined]
        if len(samples) >= messages:
            break
        time.sleep(0.2)
    return sorted(samples)


def lateness(port: int, messages: int, spread_s: float) -> dict[str, Any]:
    """Deferred messages due uniformly over ``spread_s``, drained by a live worker process."""
    redis.Redis(port=port).flushall()
    system = make_system(port)
    with cli_worker(port):
        time.sleep(1.5)  # the worker is up and idle
        samples = _timed(system, messages, time.time() + 1.0, spread_s)
    return {
        **summarize(samples, messages),
        "samples": samples,
        "timing": "Redis sorted set; idle worker blocks on Redis, then a live wait",
    }


def lateness_under_backlog(
    port: int, backlog_n: int, messages: int, spread_s: float
) -> dict[str, Any]:
    """Deferred messages due while one worker drains ``backlog_n`` immediate messages (over
    100 actors): each round promotes what is due before it claims more, so a backlog should
    delay a deferred message by about one round, not by the backlog. As the job queues'
    scenario of the same name: messages not run within 30 s of the last due time are lost
    for the measurement."""
    redis.Redis(port=port).flushall()
    system = make_system(port)
    refs = [counter.ref(str(i)) for i in range(100)]
    for i in range(0, backlog_n, 1000):
        system.send_many([(refs[j % 100], Inc()) for j in range(i, min(i + 1000, backlog_n))])
    with cli_worker(port):
        deadline = time.monotonic() + 60
        while system.state(refs[0]).count == 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)  # the worker is draining
        samples = _timed(system, messages, time.time() + 0.5, spread_s)
        drained = sum(system.state(r).count for r in refs)  # type: ignore[attr-defined]
    return {**summarize(samples, messages), "backlog": backlog_n, "backlog_done_by_then": drained}


def delay_scale(port: int, pending: int) -> dict[str, float]:
    """Memory per pending deferred message, then the rate at which they are promoted."""
    client = redis.Redis(port=port)
    client.flushall()
    clock = ManualClock()
    system = make_system(port, clock=clock)
    refs = [counter.ref(str(i)) for i in range(1000)]
    base = int(client.info("memory")["used_memory"])
    reg = system.registry
    chunk = 10_000
    for i in range(0, pending, chunk):
        items = [
            reg.prepare(refs[j % 1000], Inc(), now_s=clock.now(), delay=60 + j % 60)
            for j in range(i, min(i + chunk, pending))
        ]
        system.backend.push(items, int(clock.now() * 1000))
    used = int(client.info("memory")["used_memory"]) - base
    assert system.backend.pending() == pending
    clock.advance(200)
    # Immediate sends from another client while the whole batch is promoted: how long do
    # they wait behind the promotion scripts?
    baseline = _send_latencies(port, None)
    probe = subprocess.Popen(
        [sys.executable, "-m", "bench.ours", str(port)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    assert probe.stdin is not None
    probe.stdout.readline()  # the probe is sending
    start = time.perf_counter()
    promoted = 0
    while promoted < pending:
        _, n = system.backend.poll(int(clock.now() * 1000), 0, 1000)
        promoted += n
    promote_s = time.perf_counter() - start
    during = [float(x) for x in probe.communicate("stop\n", timeout=60)[0].split()]
    return {
        "pending": pending,
        "bytes_per_pending": used / pending,
        "promote_msgs_per_s": pending / promote_s,
        "immediate_send_p50_ms_idle": _pct(baseline, 0.5),
        "immediate_send_p99_ms_idle": _pct(baseline, 0.99),
        "immediate_send_p50_ms_during": _pct(during, 0.5),
        "immediate_send_p99_ms_during": _pct(during, 0.99),
        "immediate_send_max_ms_during": max(during, default=0.0),
    }


def _send_latencies(port: int, stop: threading.Event | None) -> list[float]:
    """Latency of immediate sends, every 2 ms until ``stop`` (or 200 sends without one)."""
    system = make_system(port)
    ref = counter.ref("probe")
    out: list[float] = []
    while (stop is None and len(out) < 200) or (stop is not None and not stop.is_set()):
        t0 = time.perf_counter()
        system.send(ref, Inc())
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.002)
    return out


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def import_times() -> dict[str, float]:
    """Wall time of fresh interpreters importing us and our unavoidable dependencies."""

    def best(code: str) -> float:
        runs = []
        for _ in range(7):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            runs.append(time.perf_counter() - start)
        return min(runs) * 1000

    empty = best("pass")
    deps = best("from pydantic import BaseModel; import redis, msgpack") - empty
    core = best("import actor_system") - empty
    handler = best("import actor_system, actor_system.adapters.redis, bench.actors") - empty
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import actor_system"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stderr
    line = next(ln for ln in out.splitlines() if re.search(r"\|\s+actor_system$", ln))
    boto = subprocess.run(
        [
            sys.executable,
            "-c",
            "import actor_system, actor_system.adapters.redis, sys; print('boto3' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.strip()
    return {
        "import_actor_system_ms": core,
        "import_deps_ms": deps,
        "ratio_to_deps": core / deps,
        "import_handler_module_ms": handler,
        "importtime_cumulative_ms": int(line.split("|")[1]) / 1000,
        "boto3_imported": boto == "True",
    }


if __name__ == "__main__":  # the probe process of delay_scale: sends until told to stop
    stop_event = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop_event.set()), daemon=True).start()
    print("ready", flush=True)
    print(" ".join(f"{x:.3f}" for x in _send_latencies(int(sys.argv[1]), stop_event)))
