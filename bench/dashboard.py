"""How fast each dashboard page answers against a large system, and what a dashboard
refreshing every two seconds costs a backlog.

    python -m bench.dashboard            # 100,000 actors, 1,000,000 deferred, 10,000 dead letters
    python -m bench.dashboard --quick    # a tenth of each

It starts its own redis-server (persistence off) and seeds it through the backend's push
(the same Lua as a send) and pipelines, not through the drain: actors with state, ready
actors with mailboxes, deferred messages over a week, dead letters. Each page is fetched over
real HTTP from uvicorn: the median and the worst of five fetches are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from actor_system import ActorSystem
from actor_system.dashboard import app
from actor_system.envelope import Envelope, Outgoing, encode, new_id
from actor_system.ports import DeadLetter
from bench.actors import actors
from bench.run import free_port, start_redis
from tests.dashboard_server import serving

PAGES = [
    "/",
    "/api/overview",
    "/deferred",
    "/deferred?range=week",
    "/deferred?range=day&message_type=Inc",
    "/actor?type=bench-counter&id=a17",
    "/dead-letters",
    "/dead-letters?reason=boom&type=Inc",
]


def seed(system: ActorSystem, actors_n: int, deferred_n: int, dead_n: int) -> dict[str, float]:
    backend: Any = system.backend
    client: redis.Redis = backend.client
    keys = backend.keys
    now_ms = int(time.time() * 1000)
    took: dict[str, float] = {}
    start = time.perf_counter()
    # Actors with a stored state (what a commit writes), in pipelines.
    state = b"\x82\xa5count\x01\xa2_v\x01"  # {"count": 1, "_v": 1}
    for i in range(0, actors_n, 5_000):
        pipe = client.pipeline(transaction=False)
        for j in range(i, min(i + 5_000, actors_n)):
            pipe.hset(keys.actor(f"bench-counter/a{j}", "state"), mapping={"d": state, "v": 1})
        pipe.execute()
    # A tenth of them ready with a message in the mailbox (the push script of a send).
    ready = [_item(f"bench-counter/a{j}", None) for j in range(0, actors_n, 10)]
    for i in range(0, len(ready), 2_000):
        backend.push(ready[i : i + 2_000], now_ms)
    took["actors_s"] = time.perf_counter() - start
    start = time.perf_counter()
    week = 7 * 86400_000
    batch: list[Outgoing] = []
    for n in range(deferred_n):
        target = f"bench-counter/a{n % actors_n}"
        due = now_ms + 60_000 + (n * 7919) % week
        batch.append(_item(target, due))
        if len(batch) == 5_000:
            backend.push(batch, now_ms)
            batch = []
    if batch:
        backend.push(batch, now_ms)
    took["deferred_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for n in range(dead_n):
        target = f"bench-counter/a{n % actors_n}"
        item = _item(target, None)
        letter = DeadLetter(
            item.id,
            target,
            "failed 1 times, last: RuntimeError: boom",
            1,
            now_ms,
            "Traceback ...\nRuntimeError: boom",
            item.entry,
        )
        pipe.lpush(keys.dlq(keys.part_of(target)), letter.encode())
        if n % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()
    took["dead_letters_s"] = time.perf_counter() - start
    return took


def _item(target: str, due: int | None) -> Outgoing:
    mid = new_id(target)
    env = Envelope(mid, target, "Inc", {}, 1, int(time.time() * 1000), due)
    return Outgoing(mid, target, encode(env), due)


def fetch(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
        assert r.status == 200
    return (time.perf_counter() - start) * 1000


def pages(base: str) -> dict[str, dict[str, float]]:
    out = {}
    for path in PAGES:
        fetch(base + path)  # warm
        times = [fetch(base + path) for _ in range(5)]
        out[path] = {"median_ms": statistics.median(times), "max_ms": max(times)}
    return out


@contextmanager
def dashboard_process(port: int) -> Iterator[tuple[str, int]]:
    """``actor-system dashboard --read-only`` in its own process, as an operator runs it:
    (its base URL, its pid) once it answers."""
    web = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "actor_system.cli",
            "--url",
            f"redis://127.0.0.1:{port}/0",
            "--app",
            "bench.actors",
            "dashboard",
            "--port",
            str(web),
            "--read-only",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                fetch(base + "/")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait()


def refresh_cost(port: int, fetches: int = 50) -> dict[str, float]:
    """What one live refresh of the overview costs, measured rather than inferred from two
    noisy rates: Redis's time in commands (``INFO commandstats``, reset first) and the
    dashboard process's CPU (``/proc``), per fetch of ``/api/overview``, against whatever
    the server holds."""
    with dashboard_process(port) as (base, pid):
        for _ in range(5):
            fetch(base + "/api/overview")
        admin = redis.Redis(port=port)
        admin.config_resetstat()
        cpu0 = _cpu_s(pid)
        times = [fetch(base + "/api/overview") for _ in range(fetches)]
        cpu_ms = (_cpu_s(pid) - cpu0) / fetches * 1000
        stats = admin.info("commandstats")
        redis_ms = sum(v["usec"] for v in stats.values()) / fetches / 1000
        calls = sum(v["calls"] for v in stats.values()) / fetches
        admin.close()
    return {
        "overview_redis_ms": redis_ms,
        "overview_redis_commands": calls,
        "overview_cpu_ms": cpu_ms,
        "overview_share_of_2s_pct": 100 * (redis_ms + cpu_ms) / 2000,
        "overview_fetch_ms": statistics.median(times),
    }


def backlog_cost(port: int, n: int, pairs: int) -> dict[str, Any]:
    """Messages per second a worker drains from a backlog of ``n``, without and with a
    dashboard process whose overview is fetched every two seconds, in ``pairs`` pairs of
    runs, alternately ordered (plain first, then watched first) so that a drift of the
    machine falls on both sides. The slowdown is the median of the pairs' own."""
    from bench.ours import throughput

    watching = threading.Event()
    stop = threading.Event()
    fetched: list[float] = []
    plain: list[float] = []
    watched: list[float] = []
    with dashboard_process(port) as (base, _):

        def refresh() -> None:
            while not stop.wait(2.0):
                if watching.is_set():
                    fetched.append(fetch(base + "/api/overview"))

        poller = threading.Thread(target=refresh, daemon=True)
        poller.start()
        throughput(port, n // 4, 100)  # warm: scripts loaded, code paths run
        try:
            for i in range(pairs):
                for watch in (False, True) if i % 2 == 0 else (True, False):
                    if watch:
                        watching.set()
                    rate = throughput(port, n, 100)["msgs_per_s"]
                    watching.clear()
                    (watched if watch else plain).append(rate)
        finally:
            stop.set()
            poller.join()
    slowdowns = [100 * (a - b) / a for a, b in zip(plain, watched, strict=True)]
    return {
        "backlog_msgs_per_s": statistics.median(plain),
        "backlog_with_dashboard_msgs_per_s": statistics.median(watched),
        "slowdown_pct": statistics.median(slowdowns),
        "slowdown_pct_pairs": slowdowns,
        "overview_fetches": len(fetched),
        "overview_fetch_ms_median": statistics.median(fetched) if fetched else 0.0,
    }


def history_cost(turns: int = 200_000) -> dict[str, float]:
    """What the charts' history costs a turn: ``History.record`` per committed turn (one
    message, one deferred lateness), in this process's CPU time; and what one flush writes
    (a minute's row: its HINCRBY fields and a PEXPIRE, one pipelined round trip)."""
    from actor_system.history import History
    from actor_system.metrics import TurnMetrics

    history = History()
    metrics = TurnMetrics("bench-counter", "bench-counter/1", 1, 0.001, 0, 0, (0.0042,))
    now = time.time()
    cpu0 = time.process_time()
    for i in range(turns):
        history.record(metrics, now + i * 1e-4)  # 20 s of turns: the rows of one minute or two
    record_us = (time.process_time() - cpu0) / turns * 1e6
    rows = history.take()
    fields = sum(len(row) for row in rows.values())
    return {
        "history_record_us_per_turn": record_us,
        "history_flush_commands_per_minute_row": fields / len(rows) + 1,
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    sizes = (100_000 // scale, 1_000_000 // scale, 10_000 // scale)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            system = ActorSystem.from_url(url, actors=actors)
            seeded = seed(system, *sizes)
            with serving(app(system)) as base:
                timed = pages(base)
            memory = redis.Redis(port=port).info("memory")["used_memory"]
            system.close()
            direct = refresh_cost(port)  # against the large system just seeded
            redis.Redis(port=port).flushall()
            sizes_backlog = (20_000, 2) if args.quick else (200_000, 8)
            cost = direct | history_cost() | backlog_cost(port, *sizes_backlog)
        finally:
            proc.terminate()
            proc.wait()
    result = {
        "actors": sizes[0],
        "deferred": sizes[1],
        "dead_letters": sizes[2],
        "seeded": seeded,
        "redis_used_memory_mb": memory / 2**20,
        "pages": timed,
        **cost,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{sizes[0]:,} actors, {sizes[1]:,} deferred messages, {sizes[2]:,} dead letters "
        f"(seeded in {sum(seeded.values()):.0f} s, Redis {memory / 2**20:.0f} MB)"
    )
    for path, t in timed.items():
        print(f"  {path:<42} median {t['median_ms']:7.1f} ms   max {t['max_ms']:7.1f} ms")
    print(
        f"backlog: {cost['backlog_msgs_per_s']:,.0f} msg/s alone, "
        f"{cost['backlog_with_dashboard_msgs_per_s']:,.0f} msg/s with the overview fetched every "
        f"2 s: slowdown {cost['slowdown_pct']:+.1f} % (median of the pairs: "
        + ", ".join(f"{x:+.1f}" for x in cost["slowdown_pct_pairs"])
        + f"; {cost['overview_fetches']} fetches, median "
        f"{cost['overview_fetch_ms_median']:.0f} ms)\n"
        f"one overview refresh, against the large system: {cost['overview_redis_ms']:.2f} ms "
        f"of Redis time in {cost['overview_redis_commands']:.0f} commands, "
        f"{cost['overview_cpu_ms']:.1f} ms of the dashboard's CPU: "
        f"{cost['overview_share_of_2s_pct']:.2f} % of a 2 s refresh period\n"
        f"the charts' history: {cost['history_record_us_per_turn']:.2f} us of CPU per turn "
        f"(no Redis command); a flush, every 5 s at most, writes "
        f"{cost['history_flush_commands_per_minute_row']:.0f} commands per minute row in one "
        f"round trip"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
