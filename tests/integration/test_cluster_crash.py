"""On a real three-master Redis Cluster (tests/cluster.py): workers SIGKILLed at random points
lose no message and apply none twice, relay chains that cross partitions (at once and
deferred, through the senders' outboxes) apply each hop once, deferred messages are cancelled
in every partition, and slots that hold work move to another master while workers drain.

The worker processes load their actor types from this module (``--app``)."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import pytest
import redis
from pydantic import BaseModel, Field
from redis.crc import key_slot

from actor_system import ActorRef, ActorSystem, ActorType, BackendError, Context
from tests.actors import Add, counter
from tests.actors import actors as shared_actors
from tests.integration.workers import start_worker, worker_args
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.cluster import RedisCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "tests.integration.test_cluster_crash"


class Hop(BaseModel):
    """One step of a relay chain: the actor ``route[step]`` records it, then sends the next
    step to ``route[step + 1]`` after ``delays[step + 1]`` seconds (0: at once)."""

    chain: int
    step: int
    route: list[str]
    delays: list[float]


class HopState(BaseModel):
    applied: list[str] = Field(default_factory=list)  # "chain/step", one per hop applied


class Schedule(BaseModel):
    """Send each target one deferred Add, keeping the ids."""

    targets: list[str]
    delay: float


class CancelEveryOther(BaseModel):
    """Cancel every other message that Schedule sent, from a turn."""


class SchedulerState(BaseModel):
    sent: list[str] = Field(default_factory=list)


hop = ActorType("hop", state=HopState)
scheduler = ActorType("scheduler", state=SchedulerState)


@hop.handler
def on_hop(ctx: Context[HopState], msg: Hop) -> None:
    ctx.state.applied.append(f"{msg.chain}/{msg.step}")
    step = msg.step + 1
    if step < len(msg.route):
        nxt = msg.model_copy(update={"step": step})
        ctx.send(hop.ref(msg.route[step]), nxt, delay=msg.delays[step] or None)


@scheduler.handler
def schedule(ctx: Context[SchedulerState], msg: Schedule) -> None:
    for target in msg.targets:
        ctx.state.sent.append(ctx.send(counter.ref(target), Add(n=1), delay=msg.delay))


@scheduler.handler
def cancel_every_other(ctx: Context[SchedulerState], msg: CancelEveryOther) -> None:
    for message_id in ctx.state.sent[::2]:
        ctx.cancel(message_id)


actors: list[ActorType[Any]] = [*shared_actors, hop, scheduler]


# -- the cluster ----------------------------------------------------------------------------


def node_client(cluster: RedisCluster, i: int) -> redis.Redis:
    return redis.Redis(port=cluster.nodes[i].port)


def slot_owner(cluster: RedisCluster, slot: int) -> int:
    """The index of the master that serves ``slot``, as the first node sees it."""
    ports = [n.port for n in cluster.nodes]
    with node_client(cluster, 0) as client:
        for start, end, primary, *_ in client.cluster("slots"):
            if start <= slot <= end:
                return ports.index(int(primary[1]))
    raise AssertionError(f"slot {slot} is served by no master")


def slots_of(cluster: RedisCluster, node: int) -> list[int]:
    """The slots ``node`` serves, ascending, as the first node sees it."""
    port = cluster.nodes[node].port
    with node_client(cluster, 0) as client:
        ranges = client.cluster("slots")
    found = [s for start, end, primary, *_ in ranges if int(primary[1]) == port
             for s in range(start, end + 1)]  # fmt: skip
    return sorted(found)


def master_of(cluster: RedisCluster, system: ActorSystem, actor: str) -> int:
    backend: Any = system.backend
    return slot_owner(cluster, key_slot(backend.keys.actor(actor, "state").encode()))


def leftovers(cluster: RedisCluster) -> list[bytes]:
    """Mailboxes, in-flight lists and undelivered outboxes left on any master."""
    found: list[bytes] = []
    for i in range(len(cluster.nodes)):
        with node_client(cluster, i) as client:
            for suffix in ("inflight", "mb", "outbox"):
                found += client.scan_iter(match=f"as:{{p*}}:*/*:{suffix}", count=1000)
            found += client.scan_iter(match="as:{p*}:outboxes", count=1000)
    return found


def assert_nothing_left(cluster: RedisCluster, system: ActorSystem) -> None:
    assert leftovers(cluster) == []
    stats = system.backend.stats()
    assert (stats["leases_held"], stats["ready_actors"], stats["pending_deferred"]) == (0, 0, 0)
    assert system.backend.dead_letter_count() == 0


def kill_at_random(
    url: str, progress: Callable[[], int], kills: int, rng: random.Random, *, app: str
) -> int:
    """Start a worker and SIGKILL it at a random point after its first commit, ``kills``
    times; returns the progress when the last one died."""
    for _ in range(kills):
        before = progress()
        worker = start_worker(url, "--lease-ms", "500", "--batch", "20", app=app)
        wait_until(lambda: progress() > before, what="the worker's first commit")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.6))
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=60)
    return progress()


def drain(
    system: ActorSystem, progress: Callable[[], int], expected: int, timeout_s: float = 90
) -> None:
    """Drain in this process until ``progress`` reaches ``expected``: dead holders' leases
    expire, and outboxes their committers did not deliver go to whoever polls after the
    grace time."""
    deadline = time.monotonic() + timeout_s
    while progress() < expected and time.monotonic() < deadline:
        system.run_until_idle()
        time.sleep(0.1)


# -- SIGKILL --------------------------------------------------------------------------------

ACTORS = 50
PER_ACTOR = 60
KILLS = 12


def test_sigkilled_workers_on_a_cluster_lose_nothing_and_apply_nothing_twice(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    rng = random.Random(7)
    system = ActorSystem.from_url(cluster_url, actors=actors, lease_ms=500, batch=20)
    refs = [counter.ref(f"k{i}") for i in range(ACTORS)]
    assert {master_of(redis_cluster, system, r.key) for r in refs} == {0, 1, 2}
    messages = [(ref, Add(n=1, work_ms=2)) for _ in range(PER_ACTOR) for ref in refs]
    sent: dict[str, list[str]] = {r.key: [] for r in refs}
    for i in range(0, len(messages), 500):
        chunk = messages[i : i + 500]
        for (ref, _), message_id in zip(chunk, system.send_many(chunk), strict=True):
            sent[ref.key].append(message_id)

    def total() -> int:
        return sum(system.state(r).count for r in refs)  # type: ignore[attr-defined]

    mid_run = kill_at_random(cluster_url, total, KILLS, rng, app="tests.actors")
    drain(system, total, ACTORS * PER_ACTOR)

    print(f"kills={KILLS} processed_before_final_drain={mid_run} total={total()}")
    assert 0 < mid_run < ACTORS * PER_ACTOR  # the kills really interrupted the work
    for ref in refs:
        state = system.state(ref)
        assert state.count == PER_ACTOR, ref  # type: ignore[attr-defined]
        assert sorted(state.seen) == sorted(sent[ref.key]), ref  # type: ignore[attr-defined]
    assert_nothing_left(redis_cluster, system)
    system.close()


# -- relay chains ---------------------------------------------------------------------------

STEPS = 6  # steps 2 and 4 deferred, 1, 3 and 5 at once
HOP_DELAY_S = 0.2
DELAYS = [HOP_DELAY_S if step % 2 == 0 else 0.0 for step in range(STEPS)]
CHAINS = 80
POOL = 24
RELAY_KILLS = 10


def chain_routes(
    rng: random.Random, pool: list[ActorRef], chains: int, backend: Any
) -> list[list[str]]:
    """Routes of ``STEPS`` actors from ``pool``, each in another partition than the one
    before."""
    part = {r.id: backend.keys.part_of(r.key) for r in pool}
    routes = []
    for _ in range(chains):
        route = [rng.choice(pool).id]
        while len(route) < STEPS:
            nxt = rng.choice(pool).id
            if part[nxt] != part[route[-1]]:
                route.append(nxt)
        routes.append(route)
    return routes


def start_chains(
    system: ActorSystem, routes: list[list[str]], stagger_s: float
) -> dict[str, list[str]]:
    """Send each chain its first step, chain c after c * ``stagger_s`` seconds (work for the
    whole run); returns the hops each actor must apply."""
    expected: dict[str, list[str]] = {}
    for chain, route in enumerate(routes):
        for step, actor in enumerate(route):
            expected.setdefault(hop.ref(actor).key, []).append(f"{chain}/{step}")
        first = Hop(chain=chain, step=0, route=route, delays=DELAYS)
        system.send(hop.ref(route[0]), first, delay=chain * stagger_s or None)
    return expected


def apart(kind: ActorType[Any], prefix: str, backend: Any, n: int) -> list[str]:
    """``n`` actor ids of ``kind``, each in a partition of its own."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < n:
        actor_id = f"{prefix}{i}"
        chosen.setdefault(backend.keys.part_of(kind.ref(actor_id).key), actor_id)
        i += 1
    return list(chosen.values())


def test_relay_chains_across_partitions_apply_each_hop_once_under_sigkill(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    rng = random.Random(11)
    system = ActorSystem.from_url(cluster_url, actors=actors, lease_ms=500, batch=20)
    backend: Any = system.backend
    pool = [hop.ref(f"h{i}") for i in range(POOL)]
    routes = chain_routes(rng, pool, CHAINS, backend)
    hops = [(hop.ref(a).key, hop.ref(b).key) for route in routes for a, b in pairwise(route)]
    assert len(hops) == CHAINS * (STEPS - 1)
    assert all(backend.keys.part_of(a) != backend.keys.part_of(b) for a, b in hops)
    masters = {r.key: master_of(redis_cluster, system, r.key) for r in pool}
    crossing = [a for a, b in hops if masters[a] != masters[b]]
    assert len(crossing) > len(hops) // 2  # most hops also go to another master
    expected = start_chains(system, routes, stagger_s=0.15)

    def applied() -> int:
        return sum(len(system.state(r).applied) for r in pool)  # type: ignore[attr-defined]

    mid_run = kill_at_random(cluster_url, applied, RELAY_KILLS, rng, app=APP)
    drain(system, applied, CHAINS * STEPS)

    print(f"kills={RELAY_KILLS} hops_before_final_drain={mid_run} total={applied()}")
    assert 0 < mid_run < CHAINS * STEPS
    for ref in pool:
        got = system.state(ref).applied  # type: ignore[attr-defined]
        assert sorted(got) == sorted(expected.get(ref.key, [])), ref
    assert_nothing_left(redis_cluster, system)
    system.close()


def test_outboxes_their_committers_left_are_delivered_by_a_poller_once(
    redis_cluster: RedisCluster, cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committer that dies right after its commit leaves its outbox undelivered; one that
    dies after delivering it leaves it undropped: a poller delivers both after the grace time,
    and each hop (at once and deferred) is applied once."""
    fresh = ActorSystem.from_url(cluster_url, actors=actors)
    backend: Any = fresh.backend
    keys = backend.keys
    quiet_sender, *quiet_receivers, half_sender, half_now, half_later = apart(hop, "o", backend, 6)
    senders = {quiet_sender: quiet_receivers, half_sender: [half_now, half_later]}

    quiet = ActorSystem.from_url(cluster_url, actors=actors)
    monkeypatch.setattr(quiet.backend, "_flush", lambda outboxes, now_ms: None)
    half = ActorSystem.from_url(cluster_url, actors=actors)
    run = half.backend._run  # type: ignore[attr-defined]
    monkeypatch.setattr(
        half.backend,
        "_run",
        lambda calls, what, **how: run([c for c in calls if c[0] != "flushed"], what, **how),
    )
    expected: dict[str, list[str]] = {}
    chain = 0
    for dying, (sender, receivers) in zip((quiet, half), senders.items(), strict=True):
        for receiver, delay in zip(receivers, (0.0, 0.3), strict=True):
            first = Hop(chain=chain, step=0, route=[sender, receiver], delays=[0.0, delay])
            dying.send(hop.ref(sender), first, process=True)
            expected[receiver] = [f"{chain}/1"]
            chain += 1
        applied_here = dying.state(hop.ref(sender)).applied  # type: ignore[attr-defined]
        assert applied_here == [f"{chain - 2}/0", f"{chain - 1}/0"]  # both turns committed

    def applied() -> int:
        return sum(len(fresh.state(hop.ref(r)).applied) for r in expected)  # type: ignore[attr-defined]

    # Nothing applied yet: the quiet outbox waits, the half one reached its receivers' mailbox
    # and delay queue.
    assert applied() == 0
    waiting = [keys.actor(hop.ref(a).key, "outbox") for a in senders]
    waiting += [keys.outboxes(keys.part_of(hop.ref(a).key)) for a in senders]
    waiting.append(keys.actor(hop.ref(half_now).key, "mb"))
    assert sorted(k.decode() for k in leftovers(redis_cluster)) == sorted(waiting)
    assert backend.pending() == 1

    def settled() -> bool:
        fresh.run_until_idle()
        stats = fresh.backend.stats()
        return not leftovers(redis_cluster) and not stats["pending_deferred"] and applied() >= 4

    started = time.monotonic()
    wait_until(settled, timeout_s=60, what="the outboxes delivered", every_s=0.1)
    print(f"outboxes delivered after {time.monotonic() - started:.1f}s")
    for receiver, hops in expected.items():
        assert fresh.state(hop.ref(receiver)).applied == hops, receiver  # type: ignore[attr-defined]
    assert_nothing_left(redis_cluster, fresh)
    for system in (fresh, quiet, half):
        system.close()


# -- cancel ---------------------------------------------------------------------------------

CANCEL_DELAY_S = 4.0


def test_deferred_messages_are_cancelled_in_every_partition(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    system = ActorSystem.from_url(cluster_url, actors=actors)
    backend: Any = system.backend
    partitions = backend.keys.partitions
    targets: dict[int, str] = {}
    i = 0
    while len(targets) < partitions:
        targets.setdefault(backend.keys.part_of(counter.ref(f"t{i}").key), f"t{i}")
        i += 1
    start = time.monotonic()

    # From outside: two deferred messages to each target, the first cancelled by id.
    kept: dict[str, set[str]] = {t: set() for t in targets.values()}
    cancelled: set[str] = set()
    for target in targets.values():
        first, second = (
            system.send(counter.ref(target), Add(n=1), delay=CANCEL_DELAY_S) for _ in range(2)
        )
        assert system.cancel(first) is True
        cancelled.add(first)
        kept[target].add(second)

    # From a turn: one deferred message to each target (63 of them in other partitions,
    # through the outbox), then every other one cancelled by a later turn.
    planner = scheduler.ref("s")
    system.send(planner, Schedule(targets=list(targets.values()), delay=CANCEL_DELAY_S))
    system.run_until_idle()
    system.send(planner, CancelEveryOther())
    system.run_until_idle()
    from_turn = system.state(planner).sent  # type: ignore[attr-defined]
    assert len(from_turn) == partitions
    cancelled |= set(from_turn[::2])
    for target, message_id in zip(targets.values(), from_turn, strict=True):
        if message_id not in cancelled:
            kept[target].add(message_id)
    cancelled_parts = {backend.keys.part_of_id(m) for m in cancelled}
    assert cancelled_parts == set(range(partitions))

    pending = {d.id for d in system.deferred(limit=1000)}
    assert time.monotonic() - start < CANCEL_DELAY_S  # none came due before this count
    assert pending == set().union(*kept.values())
    assert len(pending) == partitions + partitions // 2

    wanted = len(pending)

    def delivered() -> int:
        return sum(system.state(counter.ref(t)).count for t in targets.values())  # type: ignore[attr-defined]

    time.sleep(max(start + CANCEL_DELAY_S - time.monotonic(), 0))
    drain(system, delivered, wanted)
    assert delivered() == wanted
    for target in targets.values():
        seen = system.state(counter.ref(target)).seen  # type: ignore[attr-defined]
        assert sorted(seen) == sorted(kept[target]), target
    assert system.cancel(next(iter(pending))) is False  # delivered: nothing to cancel
    assert_nothing_left(redis_cluster, system)
    system.close()


# -- moving slots ---------------------------------------------------------------------------

MOVED_PER_MASTER = 2  # partitions with work moved off each master
ACTORS_PER_MOVED = 5
OTHER_ACTORS = 20
RESHARD_PER_ACTOR = 60
RESHARD_DEFERRED = 5  # per actor, due while the slots move
RESHARD_CHAINS = 30


def node_ids(cluster: RedisCluster) -> list[str]:
    ids = []
    for i in range(len(cluster.nodes)):
        with node_client(cluster, i) as client:
            found = client.cluster("myid")
            ids.append(found.decode() if isinstance(found, bytes) else str(found))
    return ids


def setslot(cluster: RedisCluster, node: int, slot: int, *how: str) -> None:
    with node_client(cluster, node) as client:
        client.execute_command("CLUSTER", "SETSLOT", slot, *how)


def begin_move(cluster: RedisCluster, slot: int, src: int, dst: int) -> None:
    """Mark ``slot`` as moving from master ``src`` to master ``dst`` (no key moved yet)."""
    ids = node_ids(cluster)
    setslot(cluster, dst, slot, "IMPORTING", ids[src])
    setslot(cluster, src, slot, "MIGRATING", ids[dst])


def end_move(cluster: RedisCluster, slot: int, src: int, dst: int, pause_s: float = 0.0) -> int:
    """Move the slot's keys one at a time, then give the slot to ``dst`` on every master, as
    ``redis-cli --cluster reshard`` does; returns how many keys moved. A key that cannot move
    (the importing master holds one of that name already) fails the test, the slot left with
    ``src``."""
    ids = node_ids(cluster)
    moved = 0
    with node_client(cluster, src) as source:
        while True:
            keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
            if not keys:
                break
            port = cluster.nodes[dst].port
            try:
                source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
            except redis.ResponseError as e:
                setslot(cluster, src, slot, "STABLE")
                setslot(cluster, dst, slot, "STABLE")
                raise AssertionError(
                    f"slot {slot} cannot move: {keys[0]!r} is on both masters ({e})"
                ) from None
            moved += len(keys)
            time.sleep(pause_s)
    for node in (dst, src, *(i for i in range(len(ids)) if i not in (src, dst))):
        setslot(cluster, node, slot, "NODE", ids[dst])
    wait_until(lambda: cluster_ok(cluster), what="cluster_state:ok on every master")
    return moved


def cluster_ok(cluster: RedisCluster) -> bool:
    for i in range(len(cluster.nodes)):
        with node_client(cluster, i) as client:
            if client.cluster("info").get("cluster_state") != "ok":
                return False
    return True


def pick(
    kind: ActorType[Any], prefix: str, backend: Any, wanted: dict[int, int], others: int = 0
) -> list[str]:
    """Actor ids of ``kind``: ``wanted[p]`` in each partition p, and ``others`` in partitions
    not in ``wanted``."""
    left, chosen = dict(wanted), []
    i = 0
    while any(left.values()) or others:
        actor_id = f"{prefix}{i}"
        p = backend.keys.part_of(kind.ref(actor_id).key)
        if left.get(p):
            left[p] -= 1
            chosen.append(actor_id)
        elif p not in wanted and others:
            others -= 1
            chosen.append(actor_id)
        i += 1
    return chosen


def send_until_stored(system: ActorSystem, ref: ActorRef, msg: BaseModel, **how: Any) -> str:
    """Send under an idempotency key, again after each failure, as a producer must (``how``
    carries the key)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return system.send(ref, msg, **how)
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Sending:
    """``send_until_stored`` in a thread of its own, while the test moves a slot."""

    def __init__(self, system: ActorSystem, ref: ActorRef, msg: BaseModel, how: Any) -> None:
        self.result: list[str] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(send_until_stored(system, ref, msg, **how))
        )
        self.thread.start()

    def wait(self) -> str:
        self.thread.join(60)
        assert self.result, "the send was never stored"
        return self.result[0]


@pytest.mark.timeout(180)
def test_slots_with_work_move_to_another_master_while_workers_drain(
    redis_cluster: RedisCluster, cluster_url: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    system = ActorSystem.from_url(cluster_url, actors=actors)
    backend: Any = system.backend
    keys = backend.keys

    def slot_of(p: int) -> int:
        return key_slot(keys.ready(p).encode())

    # Two partitions of each master move to the next master, and so does the {g} slot of the
    # keys all partitions share (wake-ups, hints).
    moved_parts = []
    for node in range(3):
        mine = [p for p in range(keys.partitions) if slot_owner(redis_cluster, slot_of(p)) == node]
        moved_parts += mine[:MOVED_PER_MASTER]
    wanted = dict.fromkeys(moved_parts, ACTORS_PER_MOVED)
    refs = [counter.ref(a) for a in pick(counter, "r", backend, wanted, OTHER_ACTORS)]
    pool = [hop.ref(a) for a in pick(hop, "h", backend, dict.fromkeys(moved_parts, 2), 6)]
    slots = [slot_of(p) for p in moved_parts] + [key_slot(keys.wake.encode())]
    moves = [(slot, slot_owner(redis_cluster, slot)) for slot in slots]

    # A backlog, deferred messages due while the slots move, and relay chains that go in and
    # out of the moving partitions, started over the first seconds.
    sent: dict[str, list[str]] = {r.key: [] for r in refs}
    messages = [(ref, Add(n=1, work_ms=2)) for _ in range(RESHARD_PER_ACTOR) for ref in refs]
    for i in range(0, len(messages), 500):
        chunk = messages[i : i + 500]
        for (ref, _), message_id in zip(chunk, system.send_many(chunk), strict=True):
            sent[ref.key].append(message_id)
    for ref in refs:
        for k in range(RESHARD_DEFERRED):
            sent[ref.key].append(system.send(ref, Add(n=1), delay=1.0 + k + rng.random()))
    routes = chain_routes(rng, pool, RESHARD_CHAINS, backend)
    expected_hops = start_chains(system, routes, stagger_s=0.15)

    # Sends go on while the slots move, at once and deferred.
    stop = threading.Event()
    live: list[tuple[str, str, str]] = []  # (actor, id, "at once" or "deferred")
    errors: list[BaseException] = []

    def produce() -> None:
        sender = ActorSystem.from_url(cluster_url, actors=actors)
        n = 0
        try:
            while not stop.is_set():
                ref = rng.choice(refs)
                n += 1
                delay = 0.5 if n % 2 else None
                how = {"delay": delay, "idempotency_key": f"live{n}"}
                message_id = send_until_stored(sender, ref, Add(n=1), **how)
                live.append((ref.key, message_id, "deferred" if delay else "at once"))
                time.sleep(0.01)
        except BaseException as e:
            errors.append(e)
        finally:
            sender.close()

    def total() -> int:
        return sum(system.state(r).count for r in refs)  # type: ignore[attr-defined]

    def hops_applied() -> int:
        return sum(len(system.state(r).applied) for r in pool)  # type: ignore[attr-defined]

    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = []
    for log in logs:
        with log.open("wb") as out:
            args = worker_args(cluster_url, "--lease-ms", "2000", "--batch", "20", app=APP)
            workers.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: total() > 0, what="the workers' first commits")
        before = total()
        started = time.monotonic()
        moved = 0
        for slot, src in moves:
            begin_move(redis_cluster, slot, src, (src + 1) % 3)
            moved += end_move(redis_cluster, slot, src, (src + 1) % 3, pause_s=0.01)
        move_s = time.monotonic() - started
        after = total()
        stop.set()
        producer.join(60)
        assert errors == []
        for ref_key, message_id, _ in live:
            sent[ref_key].append(message_id)
        expected = sum(len(ids) for ids in sent.values())
        for slot, src in moves:
            assert slot_owner(redis_cluster, slot) == (src + 1) % 3
        drain_or_give_up = time.monotonic() + 60
        while time.monotonic() < drain_or_give_up:
            if total() >= expected and hops_applied() >= len(routes) * STEPS:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        producer.join(60)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(60)
        wait_until(lambda: cluster_ok(redis_cluster), what="cluster_state:ok on every master")

    output = "\n".join(log.read_text() for log in logs)
    print(
        f"moved {len(moves)} slots ({moved} keys) in {move_s:.1f}s, drained {before}..{after} "
        f"of {expected} meanwhile, {len(live)} live sends; counted {total()} of {expected}, "
        f"{hops_applied()} of {len(routes) * STEPS} hops"
    )
    print(output[-3000:])
    assert moved > 0
    assert before < after < expected  # the workers drained while the slots moved
    seen = {r.key: system.state(r).seen for r in refs}  # type: ignore[attr-defined]
    kind = {message_id: f"live, {how}" for _, message_id, how in live}
    missing = Counter(
        kind.get(m, "before the move") for r in refs for m in set(sent[r.key]) - set(seen[r.key])
    )
    doubled = sum(len(ids) - len(set(ids)) for ids in seen.values())
    assert (dict(missing), doubled) == ({}, 0)
    for ref in refs:
        assert sorted(seen[ref.key]) == sorted(sent[ref.key]), ref
    for ref in pool:
        got = system.state(ref).applied  # type: ignore[attr-defined]
        assert sorted(got) == sorted(expected_hops.get(ref.key, [])), ref
    assert_nothing_left(redis_cluster, system)
    system.close()


DUE_S = 1.5


def test_deferred_sends_into_a_moving_slot_are_delivered_once(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    """A producer's deferred send retried under its idempotency key, and a committed turn's
    deferred send to another partition, both into a slot marked MIGRATING (none of its keys
    moved yet) whose partition has ready actors and deferred messages."""
    system = ActorSystem.from_url(cluster_url, actors=actors)
    backend: Any = system.backend
    target = counter.ref("m0")
    p = backend.keys.part_of(target.key)
    [receiver] = pick(hop, "d", backend, {p: 1})
    [forwarder] = pick(hop, "s", backend, {p: 0}, 1)
    slot = key_slot(backend.keys.ready(p).encode())
    src = slot_owner(redis_cluster, slot)
    ids = [system.send(target, Add(n=1)), system.send(target, Add(n=1), delay=DUE_S)]
    start = time.monotonic()

    begin_move(redis_cluster, slot, src, (src + 1) % 3)
    try:
        # Refused (TRYAGAIN) while the partition's keys are split between the two masters:
        # sent again until the move ends, and stored once.
        how = {"delay": DUE_S, "idempotency_key": "during-the-move"}
        sender = Sending(system, target, Add(n=1), how)
        chain = Hop(chain=0, step=0, route=[forwarder, receiver], delays=[0.0, DUE_S])
        with contextlib.suppress(BackendError):  # the commit is written; its outbox waits
            system.send(hop.ref(forwarder), chain, process=True)
        time.sleep(0.3)
    finally:
        end_move(redis_cluster, slot, src, (src + 1) % 3)
    ids.append(sender.wait())
    assert system.state(hop.ref(forwarder)).applied == ["0/0"]  # type: ignore[attr-defined]
    # The forwarder's next turn delivers what its outbox still holds.
    system.send(hop.ref(forwarder), Hop(chain=1, step=0, route=[forwarder], delays=[0.0]))
    system.run_until_idle()

    def delivered() -> int:
        got = system.state(target).count + len(system.state(hop.ref(receiver)).applied)  # type: ignore[attr-defined]
        return int(got)

    time.sleep(max(start + DUE_S - time.monotonic(), 0))
    drain(system, delivered, 4, timeout_s=15)
    got = system.state(target).seen, system.state(hop.ref(receiver)).applied  # type: ignore[attr-defined]
    assert (sorted(got[0]), got[1]) == (sorted(ids), ["0/1"])
    assert_nothing_left(redis_cluster, system)
    system.close()


def test_a_deferred_send_into_a_moving_slot_with_no_ready_actor_lets_the_slot_move(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    """No actor of the partition is ready (only a deferred message waits): a send while the
    slot is marked for moving is refused (its declared keys are split between the masters),
    never run on the importing master beside the source's keys, so the slot can move; sent
    again, it is stored once."""
    system = ActorSystem.from_url(cluster_url, actors=actors)
    backend: Any = system.backend
    target = counter.ref("n0")
    slot = key_slot(backend.keys.ready(backend.keys.part_of(target.key)).encode())
    src = slot_owner(redis_cluster, slot)
    ids = [system.send(target, Add(n=1), delay=DUE_S)]
    start = time.monotonic()

    begin_move(redis_cluster, slot, src, (src + 1) % 3)
    try:
        how = {"delay": DUE_S, "idempotency_key": "during-the-move"}
        sender = Sending(system, target, Add(n=1), how)
        time.sleep(0.3)
    finally:
        end_move(redis_cluster, slot, src, (src + 1) % 3)
    ids.append(sender.wait())

    def delivered() -> int:
        return int(system.state(target).count)  # type: ignore[attr-defined]

    time.sleep(max(start + DUE_S - time.monotonic(), 0))
    drain(system, delivered, 2, timeout_s=15)
    assert sorted(system.state(target).seen) == sorted(ids)  # type: ignore[attr-defined]
    assert_nothing_left(redis_cluster, system)
    system.close()


def test_redis_cli_reshard_of_busy_slots_while_workers_drain(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    """``redis-cli --cluster reshard`` moves 1,500 slots (the partitions among them hold
    mailboxes, deferred messages and states) from one master to another while two workers
    drain: every message applied once, none left."""
    from tests.cluster import cli_binary

    system = ActorSystem.from_url(cluster_url, actors=actors)
    backend: Any = system.backend
    ids = node_ids(redis_cluster)
    src = 0
    dst = 1
    refs = [counter.ref(f"r{i}") for i in range(120)]
    first = slots_of(redis_cluster, src)[:1500]  # reshard takes the source's lowest slots
    moving = [r for r in refs if key_slot(backend.keys.actor(r.key, "mb").encode()) in first]
    assert moving, "no actor in the slots that move"
    sent: dict[str, list[str]] = {r.key: [] for r in refs}
    for _ in range(15):
        batch = [(r, Add(n=1, work_ms=1)) for r in refs]
        for (ref, _), message_id in zip(batch, system.send_many(batch), strict=True):
            sent[ref.key].append(message_id)
    for ref in refs:
        sent[ref.key].append(system.send(ref, Add(n=1), delay=1.0))
    workers = [start_worker(cluster_url, "--batch", "5", app="tests.actors") for _ in range(2)]
    try:
        time.sleep(0.3)
        host = f"127.0.0.1:{redis_cluster.nodes[src].port}"
        done = subprocess.run(
            [cli_binary(), "--cluster", "reshard", host, "--cluster-from", ids[src],
             "--cluster-to", ids[dst], "--cluster-slots", "1500", "--cluster-yes"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        def total() -> int:
            return sum(system.state(r).count for r in refs)  # type: ignore[attr-defined]

        wait_until(lambda: total() >= 16 * len(refs), timeout_s=90, what="the drain")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
    assert set(first) <= set(slots_of(redis_cluster, dst))
    for ref in refs:
        state = system.state(ref)
        assert sorted(state.seen) == sorted(sent[ref.key]), ref  # type: ignore[attr-defined]
    assert_nothing_left(redis_cluster, system)
    wait_until(lambda: cluster_ok(redis_cluster), what="cluster_state:ok")
    system.close()
