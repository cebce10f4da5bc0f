"""Chaos run: workers SIGKILLed and frozen at random while a mixed workload is drained.

    python -m tests.chaos.run --url redis://127.0.0.1:6379/0 --messages 100000 --actors 1000

Prints the figures and exits 1 if any message was lost, applied twice, reordered or early,
or if anything is left in a mailbox, an in-flight list, a lease or the delay queue.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from actor_system import ActorSystem
from tests.chaos.actors import Due, Entry, LedgerState, Relay, actors, ledger, relay
from tests.integration.workers import worker_args


@dataclass
class Figures:
    messages: int = 0
    immediate: int = 0
    relayed: int = 0
    deferred: int = 0
    kills: int = 0
    freezes: int = 0
    lost: int = 0
    duplicated_or_reordered: int = 0
    early: int = 0
    max_late_ms: int = 0
    p99_late_ms: int = 0
    leftovers: dict[str, int] = field(default_factory=dict)
    drain_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated_or_reordered == 0
            and self.early == 0
            and not any(self.leftovers.values())
        )


class Workers:
    """Worker processes (the real CLI) that the chaos driver kills, freezes and restarts."""

    def __init__(self, url: str, n: int, lease_ms: int) -> None:
        self.args = worker_args(
            url, "--lease-ms", str(lease_ms), "--batch", "20", app="tests.chaos.actors"
        )
        self.procs = [self._start() for _ in range(n)]

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(10)
        self.procs[i] = self._start()

    def freeze(self, i: int, seconds: float) -> None:
        self.procs[i].send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        self.procs[i].send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def produce(
    system: ActorSystem, rng: random.Random, args: argparse.Namespace, expected: dict[str, Any]
) -> list[tuple[Any, Any, float | None]]:
    """The workload: immediate entries from several senders, relayed entries, deferred ones."""
    plan: list[tuple[Any, Any, float | None]] = []
    seqs: dict[tuple[str, str], int] = {}
    for i in range(args.messages):
        target = f"a{rng.randrange(args.actors)}"
        kind = rng.random()
        if kind < 0.6:
            sender = f"producer/{i % 4}"
            seqs[(sender, target)] = seqs.get((sender, target), 0) + 1
            plan.append(
                (ledger.ref(target), Entry(sender=sender, seq=seqs[(sender, target)]), None)
            )
        elif kind < 0.85:
            via = f"r{rng.randrange(max(args.actors // 10, 1))}"
            plan.append((relay.ref(via), Relay(target=target), None))
            expected["relayed"] += 1
        else:
            delay = rng.uniform(0.0, args.max_delay_s)
            due_ms = int((time.time() + delay) * 1000)  # recomputed at send time below
            plan.append((ledger.ref(target), Due(key=f"d{i}", due_ms=due_ms), delay))
            expected["deferred"][target] = expected["deferred"].get(target, 0) + 1
    expected["senders"] = seqs
    return plan


def send_all(
    system: ActorSystem, plan: list[tuple[Any, Any, float | None]], seconds: float
) -> None:
    """Send the plan spread over ``seconds``, immediate ones in batches, in plan order."""
    chunk = max(len(plan) // max(int(seconds / 0.05), 1), 1)
    for start in range(0, len(plan), chunk):
        immediate = []
        for ref, msg, delay in plan[start : start + chunk]:
            if delay is None:
                immediate.append((ref, msg))
                continue
            if immediate:
                system.send_many(immediate)
                immediate = []
            msg.due_ms = int((time.time() + delay) * 1000)
            system.send(ref, msg, delay=delay)
        if immediate:
            system.send_many(immediate)
        time.sleep(0.05)


def chaos(
    workers: Workers, rng: random.Random, until: float, lease_ms: int, figures: Figures
) -> None:
    while time.time() < until:
        time.sleep(rng.uniform(0.1, 0.4))
        i = rng.randrange(len(workers.procs))
        if rng.random() < 0.65:
            workers.kill(i)
            figures.kills += 1
        else:
            # Sometimes past the lease, so that a stale holder wakes up after recovery.
            workers.freeze(i, rng.uniform(0.05, 2.5 * lease_ms / 1000))
            figures.freezes += 1


def check(
    system: ActorSystem,
    client: redis.Redis,
    args: argparse.Namespace,
    expected: dict[str, Any],
    figures: Figures,
) -> bool:
    """True when every expected message has been applied (and nothing else)."""
    figures.lost = figures.duplicated_or_reordered = figures.early = figures.max_late_ms = 0
    relayed_applied = 0
    complete = True
    late: list[int] = []
    per_target: dict[str, dict[str, int]] = {}
    for (sender, target), n in expected["senders"].items():
        per_target.setdefault(target, {})[sender] = n
    for i in range(args.actors):
        target = f"a{i}"
        state = system.state(ledger.ref(target))
        assert isinstance(state, LedgerState)
        for sender, n in per_target.get(target, {}).items():
            got = state.last.get(sender, 0)
            figures.lost += max(n - got, 0)
            complete &= got >= n
        relayed_applied += sum(v for k, v in state.last.items() if k.startswith("relay/"))
        figures.duplicated_or_reordered += state.out_of_order
        want = expected["deferred"].get(target, 0)
        figures.lost += max(want - len(set(state.deferred)), 0)
        figures.duplicated_or_reordered += len(state.deferred) - len(set(state.deferred))
        complete &= len(state.deferred) >= want
        figures.early += state.early
        figures.max_late_ms = max(figures.max_late_ms, state.max_late_ms)
        late += state.late_ms
    late.sort()
    figures.p99_late_ms = late[min(len(late) - 1, int(0.99 * len(late)))] if late else 0
    figures.lost += max(expected["relayed"] - relayed_applied, 0)
    complete &= relayed_applied >= expected["relayed"]
    return complete


def leftovers(client: redis.Redis, system: ActorSystem) -> dict[str, int]:
    stats = system.stats()
    return {
        "mailbox_messages": stats["mailbox_messages"],
        "in_flight_messages": stats["in_flight_messages"],
        "leases": int(client.zcard("as:leases")),
        "lease_keys": len(list(client.scan_iter(match="as:*:lease"))),
        "pending_deferred": stats["pending_deferred"],
        "dead_letters": stats["dead_letters"],
    }


def run(args: argparse.Namespace) -> Figures:
    rng = random.Random(args.seed)
    client = redis.Redis.from_url(args.url)
    client.flushall()
    system = ActorSystem.from_url(args.url, actors=actors)
    figures = Figures(messages=args.messages)
    expected: dict[str, Any] = {"relayed": 0, "deferred": {}}
    plan = produce(system, rng, args, expected)
    figures.relayed = expected["relayed"]
    figures.deferred = sum(expected["deferred"].values())
    figures.immediate = args.messages - figures.relayed - figures.deferred
    workers = Workers(args.url, args.workers, args.lease_ms)
    try:
        producer = threading.Thread(target=send_all, args=(system, plan, args.seconds))
        producer.start()
        chaos(workers, rng, time.time() + args.seconds, args.lease_ms, figures)
        producer.join()
        start = time.time()
        while not check(system, client, args, expected, figures):
            if time.time() - start > args.drain_timeout_s:
                break
            time.sleep(0.25)
        figures.drain_s = time.time() - start
        # Leases of workers killed near the end expire; idle workers then recover them.
        time.sleep(args.lease_ms / 1000 + 2.5)
    finally:
        workers.stop()
    time.sleep(0.2)
    check(system, client, args, expected, figures)
    figures.leftovers = leftovers(client, system)
    return figures


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--url",
        default=os.environ.get("ACTOR_SYSTEM_REDIS_URL", ""),
        required="ACTOR_SYSTEM_REDIS_URL" not in os.environ,
    )
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--actors", type=int, default=1_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0, help="production and chaos time")
    p.add_argument("--max-delay-s", type=float, default=5.0)
    p.add_argument("--lease-ms", type=int, default=1_000)
    p.add_argument("--drain-timeout-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=1)
    return p


def main() -> None:
    figures = run(parser().parse_args())
    print(json.dumps(asdict(figures) | {"ok": figures.ok}, indent=2))
    sys.exit(0 if figures.ok else 1)


if __name__ == "__main__":
    main()
