"""Chaos run: workers SIGKILLed and frozen at random while a mixed workload is drained.

    python -m tests.chaos.run --url redis://127.0.0.1:6379/0 --messages 100000 --actors 1000

Prints the figures and exits 1 if any message was lost, applied twice, reordered or early,
or if anything is left in a mailbox, an in-flight list, a lease or the delay queue.

With ``--redis-loss-every-s`` the run also makes Redis lose its last writes, again and again:
it snapshots the server (``SAVE``), lets the workload run on for up to 1.5 s, then SIGKILLs
the server and restarts it from that snapshot, as a failover to a lagging replica or an AOF
``everysec`` crash would. Meant with S3 state and an SQS delay queue (``--state``,
``--delay``), the stores that survive it; the producer sends each message with an
idempotency key and, like any producer whose acknowledged sends may be lost, sends again
what it sent since the snapshot. ``--own-redis`` starts the redis-server it controls.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import redis

from actor_system import ActorSystem, BackendError
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
    redis_losses: int = 0
    resent: int = 0  # sends made again after Redis lost them (same ids)
    lost: int = 0
    duplicated_or_reordered: int = 0
    deferred_reordered: int = 0  # from one sender, a due time run after a later one
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
            and self.deferred_reordered == 0
            and self.early == 0
            and not any(self.leftovers.values())
        )


class Workers:
    """Worker processes (the real CLI) that the chaos driver kills, freezes and restarts."""

    def __init__(self, url: str, n: int, lease_ms: int, env: dict[str, str]) -> None:
        self.args = worker_args(
            url, "--lease-ms", str(lease_ms), "--batch", "20", app="tests.chaos.actors"
        )
        self.env = {**os.environ, **env}
        self.procs = [self._start() for _ in range(n)]

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env
        )

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
            # due_ms is set at send time below, by the system's clock, as the runtime does.
            due = Due(key=f"d{i}", due_ms=0, sender=f"producer/{i % 4}")
            plan.append((ledger.ref(target), due, delay))
            expected["deferred"][target] = expected["deferred"].get(target, 0) + 1
    expected["senders"] = seqs
    return plan


class Producer:
    """Sends the plan; with ``keyed``, each message under an idempotency key and logged, so
    that what Redis lost can be sent again under the same ids, in the same order."""

    def __init__(self, system: ActorSystem, keyed: bool) -> None:
        self.system = system
        self.keyed = keyed
        self.lock = threading.Lock()  # held while sending, and by a Redis loss
        self.log: list[tuple[Any, Any, int | None, str]] = []  # ref, msg, due ms, key

    def send_all(self, plan: list[tuple[Any, Any, float | None]], seconds: float) -> None:
        """Send the plan spread over ``seconds``, immediate ones in batches, in plan order."""
        chunk = max(len(plan) // max(int(seconds / 0.05), 1), 1)
        for start in range(0, len(plan), chunk):
            with self.lock:
                self._send(plan[start : start + chunk], start)
            time.sleep(0.05)

    def _send(self, part: list[tuple[Any, Any, float | None]], first: int) -> None:
        immediate: list[tuple[Any, Any]] = []
        for n, (ref, msg, delay) in enumerate(part, first):
            due_ms = None
            if delay is not None:
                # Sent with at=: the due time in the payload is exactly the runtime's.
                due_ms = msg.due_ms = math.ceil((self.system.clock.now() + delay) * 1000)
            if delay is None and not self.keyed:
                immediate.append((ref, msg))
                continue
            if immediate:
                self.system.send_many(immediate)
                immediate = []
            self.log.append((ref, msg, due_ms, f"k{n}"))
            self._resend(self.log[-1])
        if immediate:
            self.system.send_many(immediate)

    def _resend(self, logged: tuple[Any, Any, int | None, str]) -> None:
        ref, msg, due_ms, key = logged
        at = None if due_ms is None else datetime.fromtimestamp(due_ms / 1000, UTC)
        self.system.send(ref, msg, at=at, idempotency_key=key if self.keyed else None)

    def send_again(self, since: int) -> int:
        """Send again, in order, what was sent after the first ``since`` (caller holds lock)."""
        for logged in self.log[since:]:
            for _ in range(100):  # the restarted server may still be loading
                try:
                    self._resend(logged)
                    break
                except BackendError:
                    time.sleep(0.05)
        return len(self.log) - since


class Restartable(Protocol):
    """A redis-server the run may crash and restart (tests/conftest.py RedisServer)."""

    proc: subprocess.Popen[bytes] | None

    def start(self) -> None: ...


def lose_last_writes(
    server: Restartable,
    client: redis.Redis,
    producer: Producer,
    rng: random.Random,
    until: float,
    every_s: float,
    figures: Figures,
) -> None:
    """Roll Redis back to a snapshot taken up to 1.5 s earlier, again and again; then the
    producer sends again what it sent since the snapshot."""
    while time.time() + every_s < until:
        time.sleep(rng.uniform(0.5, every_s))
        with producer.lock:
            client.save()
            since = len(producer.log)
        time.sleep(rng.uniform(0.3, 1.5))  # acknowledged writes that the crash will lose
        with producer.lock:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            server.start()  # from the snapshot: everything after it is gone
            figures.redis_losses += 1
            figures.resent += producer.send_again(since)


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
        figures.deferred_reordered += state.deferred_out_of_order
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


# What a run must leave behind once everything is delivered.
NOTHING_LEFT = {
    "mailbox_messages": 0,
    "in_flight_messages": 0,
    "leases": 0,
    "lease_keys": 0,
    "pending_deferred": 0,
    "dead_letters": 0,
}


def leftovers(client: redis.Redis, system: ActorSystem) -> dict[str, int]:
    stats = system.stats()
    return {
        "mailbox_messages": stats["mailbox_messages"],
        "in_flight_messages": stats["in_flight_messages"],
        "leases": system.backend.stats()["leases_held"],
        # A lease held still (a commit's 5 s receipt, 'c', is not one).
        "lease_keys": sum(
            not client.hexists(key, "c") for key in client.scan_iter(match="as:{p*}:*/*:lease")
        ),
        "pending_deferred": stats["pending_deferred"],
        "dead_letters": stats["dead_letters"],
    }


def run(args: argparse.Namespace, server: Restartable | None = None) -> Figures:
    """The run; ``server`` is the redis-server behind ``args.url`` when Redis is to lose
    its last writes (``args.redis_loss_every_s``)."""
    rng = random.Random(args.seed)
    stores = {"state": args.state, "delay": args.delay}
    system = ActorSystem.from_url(args.url, actors=actors, **stores)
    # The system's own client: a Redis Cluster's when the URL names a cluster node (flushed
    # and scanned on every primary).
    client = system.backend.client  # type: ignore[attr-defined]
    client.flushall()
    figures = Figures(messages=args.messages)
    expected: dict[str, Any] = {"relayed": 0, "deferred": {}}
    plan = produce(system, rng, args, expected)
    figures.relayed = expected["relayed"]
    figures.deferred = sum(expected["deferred"].values())
    figures.immediate = args.messages - figures.relayed - figures.deferred
    env = {
        f"ACTOR_SYSTEM_{name.upper()}_URL": url for name, url in stores.items() if url is not None
    }
    workers = Workers(args.url, args.workers, args.lease_ms, env)
    losing = args.redis_loss_every_s > 0
    if losing and server is None:
        raise SystemExit("--redis-loss-every-s needs a redis-server of the run's (--own-redis)")
    producer = Producer(system, keyed=losing)
    until = time.time() + args.seconds
    threads = [threading.Thread(target=producer.send_all, args=(plan, args.seconds))]
    if losing:
        assert server is not None
        loss_args = (server, client, producer, rng, until, args.redis_loss_every_s, figures)
        threads.append(threading.Thread(target=lose_last_writes, args=loss_args))
    try:
        for t in threads:
            t.start()
        chaos(workers, rng, until, args.lease_ms, figures)
        for t in threads:
            t.join()
        start = time.time()
        while not check(system, client, args, expected, figures):
            if time.time() - start > args.drain_timeout_s:
                break
            time.sleep(0.25)
        figures.drain_s = time.time() - start
        # Leases of workers killed near the end expire; idle workers then recover them.
        time.sleep(args.lease_ms / 1000 + 2.5)
        # Copies that killed workers had received come back from SQS after their visibility
        # timeout; the workers land them (and drop them) before the leftovers are counted.
        while args.delay and system.stats()["pending_deferred"]:
            if time.time() - start > args.drain_timeout_s:
                break
            time.sleep(0.5)
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
        help="the Redis to use (flushed!), unless --own-redis",
    )
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--actors", type=int, default=1_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0, help="production and chaos time")
    p.add_argument("--max-delay-s", type=float, default=5.0)
    p.add_argument("--lease-ms", type=int, default=1_000)
    p.add_argument("--drain-timeout-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--state", help="state URL, e.g. s3://bucket/prefix (AWS_* from the env)")
    p.add_argument("--delay", help="delay URL, e.g. sqs://queue?near=2&max_hop=1")
    p.add_argument(
        "--redis-loss-every-s",
        type=float,
        default=0.0,
        help="roll Redis back to a snapshot about this often (needs --own-redis)",
    )
    p.add_argument(
        "--own-redis", action="store_true", help="start a redis-server of the run's (--url unused)"
    )
    return p


def main() -> None:
    args = parser().parse_args()
    if not args.url and not args.own_redis:
        parser().error("pass --url (or set ACTOR_SYSTEM_REDIS_URL), or --own-redis")
    if args.own_redis:
        import tempfile

        from tests.conftest import RedisServer

        server = RedisServer(pathlib.Path(tempfile.mkdtemp()))
        server.start()
        args.url = server.url
        try:
            figures = run(args, server)
        finally:
            server.stop()
    else:
        figures = run(args)
    print(json.dumps(asdict(figures) | {"ok": figures.ok}, indent=2))
    sys.exit(0 if figures.ok else 1)


if __name__ == "__main__":
    main()
