"""The AWS adapters beside Redis in one run: S3 state vs Redis state, SQS vs the sorted set.

    python bench/aws.py            # full sizes
    python bench/aws.py --quick    # smoke sizes (also run by bench/run.py)

Starts its own redis-server and moto server (AWS on loopback: the call counts are what to
read, not the latencies, which on AWS are milliseconds per call, not tenths of one).
Counts AWS calls per turn with botocore's event hooks and Redis round trips per turn.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actor_system import ActorSystem, ManualClock, Options  # noqa: E402
from actor_system.adapters.composite import CompositeBackend  # noqa: E402
from actor_system.adapters.delay import SqsDelayQueue  # noqa: E402
from actor_system.adapters.redis import RedisBackend  # noqa: E402
from actor_system.adapters.s3 import S3StateStore  # noqa: E402
from bench.actors import Inc, actors, counter  # noqa: E402
from bench.ours import CountingConnection, _pct  # noqa: E402
from bench.run import free_port, start_redis  # noqa: E402


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client("s3").list_buckets()
            return proc, url
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def make(port: int, state: str | None = None, delay: str | None = None, **options: Any) -> Any:
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    opts = Options(**options)
    if state is None and delay is None:
        backend: Any = RedisBackend(client=client, options=opts)
    else:
        backend = CompositeBackend(
            client=client,
            options=opts,
            state=S3StateStore.from_url(state) if state else None,
            delay=SqsDelayQueue.from_url(delay) if delay else None,
        )
    return ActorSystem(backend, actors=actors, options=opts, clock=ManualClock())


def count_calls(client: Any) -> Counter[str]:
    calls: Counter[str] = Counter()

    def seen(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call", seen)
    return calls


def state_store(
    port: int, mode: str, n_actors: int, per_actor: int, trickle: int
) -> dict[str, Any]:
    """A backlog over ``n_actors`` (one batch each), then ``trickle`` single-message turns."""
    import boto3

    redis.Redis(port=port).flushall()
    state = None
    if mode == "s3":
        bucket = f"bench-{time.time_ns()}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        state = f"s3://{bucket}/actors"
    system = make(port, state=state, batch=max(per_actor, 1))
    calls = count_calls(system.backend.state_store.client) if state else Counter()
    refs = [counter.ref(str(i)) for i in range(n_actors)]
    messages = [(r, Inc()) for _ in range(per_actor) for r in refs]
    for i in range(0, len(messages), 1000):
        system.send_many(messages[i : i + 1000])
    calls.clear()
    CountingConnection.round_trips = 0
    tracemalloc.start()
    start = time.perf_counter()
    report = system.run_until_idle()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.messages == len(messages), report
    out: dict[str, Any] = {
        "messages": len(messages),
        "turns": report.turns,
        "msgs_per_s": len(messages) / elapsed,
        "redis_round_trips_per_turn": CountingConnection.round_trips / report.turns,
        "s3_get_per_turn": calls["GetObject"] / report.turns,
        "s3_put_per_turn": calls["PutObject"] / report.turns,
        "drain_peak_python_kb": peak / 1024,
    }
    samples = []
    for i in range(trickle):
        system.send(refs[i % n_actors], Inc())
        t0 = time.perf_counter()
        system.run_until_idle()
        samples.append((time.perf_counter() - t0) * 1000)
    out["turn_ms_p50"] = _pct(samples, 0.50)
    out["turn_ms_p99"] = _pct(samples, 0.99)
    r = redis.Redis(port=port)
    key = system.backend.keys.actor(refs[0].key, "state")
    out["redis_bytes_per_actor_state"] = r.memory_usage(key) or 0
    if state:
        obj = boto3.client("s3").head_object(Bucket=bucket, Key=f"actors/{refs[0].key}")
        out["s3_bytes_per_actor_object"] = obj["ContentLength"]
    system.close()
    return out


def deferred_memory(port: int, mode: str, n: int) -> dict[str, Any]:
    """Redis memory for ``n`` messages deferred by a day: sorted set vs SQS."""
    import boto3

    redis.Redis(port=port).flushall()
    delay = None
    if mode == "sqs":
        queue = f"bench-{time.time_ns()}"
        boto3.client("sqs").create_queue(QueueName=queue)
        delay = f"sqs://{queue}"
    system = make(port, delay=delay)
    calls = count_calls(system.backend.delay.client) if delay else Counter()
    r = redis.Redis(port=port)
    refs = [counter.ref(str(i % 100)) for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 100):
        items = [
            system.registry.prepare(ref, Inc(), now_s=system.clock.now(), delay=86_400)
            for ref in refs[i : i + 100]
        ]
        system.backend.push(items, int(system.clock.now() * 1000))
    elapsed = time.perf_counter() - start
    held = sum(r.memory_usage(k) or 0 for k in r.scan_iter(match="as:*", count=1000))
    system.close()
    return {
        "pending": n,
        "redis_bytes_per_pending": held / n,
        "send_msgs_per_s": n / elapsed,
        "aws_calls_per_msg": sum(calls.values()) / n,
    }


def measure(port: int, quick: bool) -> dict[str, Any]:
    n_actors, per_actor, trickle = (20, 10, 50) if quick else (200, 20, 500)
    deferred = 500 if quick else 2_000  # moto slows down as its queue grows
    res: dict[str, Any] = {}
    for mode in ("redis", "s3"):
        res[f"state_{mode}"] = state_store(port, mode, n_actors, per_actor, trickle)
    for mode in ("redis", "sqs"):
        res[f"deferred_{mode}"] = deferred_memory(port, mode, deferred)
    return res


def report(res: dict[str, Any]) -> str:
    r, s = res["state_redis"], res["state_s3"]
    dr, ds = res["deferred_redis"], res["deferred_sqs"]
    lines = [
        "state store            redis      s3 (moto)",
        f"  msgs/s (batch)       {r['msgs_per_s']:>9,.0f}  {s['msgs_per_s']:>9,.0f}",
        f"  turn p50/p99 ms      {r['turn_ms_p50']:>4.2f}/{r['turn_ms_p99']:<4.2f}  "
        f"{s['turn_ms_p50']:>4.2f}/{s['turn_ms_p99']:.2f}",
        f"  S3 GET / PUT per turn      -/-  {s['s3_get_per_turn']:.2f}/{s['s3_put_per_turn']:.2f}",
        f"  Redis round trips/turn {r['redis_round_trips_per_turn']:>7.2f}  "
        f"{s['redis_round_trips_per_turn']:>9.2f}",
        f"  peak Python KB (drain) {r['drain_peak_python_kb']:>7,.0f}  "
        f"{s['drain_peak_python_kb']:>9,.0f}",
        f"  Redis B/actor state    {r['redis_bytes_per_actor_state']:>7}  "
        f"{s['redis_bytes_per_actor_state']:>9} (+ {s['s3_bytes_per_actor_object']} B object)",
        "deferred (1 day)       sorted set  sqs (moto)",
        f"  Redis B/pending        {dr['redis_bytes_per_pending']:>7.0f}  "
        f"{ds['redis_bytes_per_pending']:>9.1f}",
        f"  sends/s                {dr['send_msgs_per_s']:>7,.0f}  {ds['send_msgs_per_s']:>9,.0f}",
        f"  AWS calls/message            -  {ds['aws_calls_per_msg']:>9.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, port = start_redis(tmp)
        moto, _ = start_moto()
        try:
            res = measure(port, args.quick)
        finally:
            moto.terminate()
            redis_proc.terminate()
            moto.wait(10)
            redis_proc.wait(10)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))


if __name__ == "__main__":
    main()
