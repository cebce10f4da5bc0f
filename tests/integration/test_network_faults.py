"""Network faults between a worker and Redis, injected by a TCP proxy (tests/faultproxy.py):
answers lost after the command took effect, latency, a silent network, reset connections.
Messages are sent straight to Redis; only the worker's traffic crosses the proxy. Every
message is applied once and in order, nothing is left claimed, and an answer lost does not
strand an actor until its lease (30 s) expires."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

from actor_system import ActorSystem, ActorType, BackendError
from tests.chaos.actors import Entry, LedgerState, ledger, relay
from tests.faultproxy import FaultProxy
from tests.integration.workers import start_worker
from tests.waiting import GENEROUS_S, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from actor_system.runtime import DrainReport
    from tests.conftest import RedisServer

pytestmark = pytest.mark.integration

ACTOR_TYPES: list[ActorType[Any]] = [ledger, relay]  # tests.chaos.actors, as workers load it

ACTORS = 10
PER_ACTOR = 30
TOTAL = ACTORS * PER_ACTOR
SOCKET_TIMEOUT_S = 2  # ?socket_timeout= in the worker's URL: a silent Redis fails a call soon
OUTAGE_S = 3.0
SEEDS = (20240611, 1, 2)  # of the answers dropped, one drain each
# The library runs a script again once, at once, when its answer is lost; a round that
# fails all the same is resumed under its token by the next one, so what it polled or claimed
# does not wait out the lease.
# Small turns and rounds: many round trips per drain, so many chances for a fault to land.
SMALL_ROUNDS: dict[str, Any] = {"batch": 2, "actors_per_round": 4}
# Once healed, a worker is back within its socket timeout and backoff (at most 5 s): well
# under the 30 s lease that a stranded actor would wait out.
RECOVERY_S = SOCKET_TIMEOUT_S + 8.0


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", redis_server.port) as p:
        yield p


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[Any]:
    """``direct(db)``: a system straight on a flushed database of the session's redis-server;
    each test has databases of its own among 1..15 (the ``redis_url`` fixture's is 0)."""
    systems: list[ActorSystem] = []

    def make(db: int) -> ActorSystem:
        client = redis.Redis(port=redis_server.port, db=db)
        client.flushdb()
        client.close()
        system = ActorSystem.from_url(
            f"redis://127.0.0.1:{redis_server.port}/{db}", actors=ACTOR_TYPES
        )
        systems.append(system)
        return system

    yield make
    for s in systems:
        s.close()


class InProcessWorker:
    """A drain loop on a thread of this process, connected through the proxy."""

    def __init__(self, url: str, *, start: bool = True, **options: Any) -> None:
        self.system = ActorSystem.from_url(url, actors=ACTOR_TYPES, **options)
        self.worker = self.system.worker()
        self.report: DrainReport | None = None
        self.thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self.started = 0.0
        self.stopped = False
        if start:
            self.start()

    def warm(self) -> None:
        """Connect, read the server's clock and load the scripts, before any fault: from
        then on the worker's requests, and so the answers a seed drops, are the same each
        run."""
        self.system.clock.now()
        self.system.cancel(uuid.uuid4().hex)

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        self.report = self.worker.run()

    def stop(self) -> float:
        """Stop the loop; returns how long it took."""
        began = time.monotonic()
        self.worker.stop()
        if self.started:
            self.thread.join(GENEROUS_S)
        took = time.monotonic() - began
        assert not self.thread.is_alive(), "the worker did not stop"
        self.stopped = True
        self.system.close()
        return took


@pytest.fixture
def spawn() -> Iterator[Any]:
    """``spawn(url, **options)``: an in-process worker, stopped at the end of the test
    whatever happened (a failed test must not leave a drain loop running)."""
    started: list[InProcessWorker] = []

    def make(url: str, **options: Any) -> InProcessWorker:
        worker = InProcessWorker(url, **options)
        started.append(worker)
        return worker

    yield make
    left = [w for w in started if not w.stopped]
    for w in left:
        w.worker.stop()
    for w in left:
        if w.started:
            w.thread.join(GENEROUS_S)
        w.system.close()


def send_workload(system: ActorSystem, per_actor: int = PER_ACTOR) -> int:
    """``per_actor`` numbered entries to each ledger, in one round trip; returns the count."""
    system.send_many(
        [
            (ledger.ref(f"a{i}"), Entry(sender="p", seq=seq))
            for seq in range(1, per_actor + 1)
            for i in range(ACTORS)
        ]
    )
    return per_actor * ACTORS


def ledgers(system: ActorSystem) -> list[LedgerState]:
    states = [system.state(ledger.ref(f"a{i}")) for i in range(ACTORS)]
    return [s for s in states if isinstance(s, LedgerState)]


def applied(system: ActorSystem) -> int:
    return sum(s.applied for s in ledgers(system))


def settled(system: ActorSystem) -> dict[str, Any] | None:
    """Redis's counts once nothing is queued, claimed, leased or dead; None before."""
    stats = system.stats()
    busy = (
        "ready_actors",
        "leases_held",
        "mailbox_messages",
        "in_flight_messages",
        "dead_letters",
        "pending_deferred",
    )
    return None if any(stats[k] for k in busy) else stats


def assert_exactly_once(system: ActorSystem, per_actor: int = PER_ACTOR) -> None:
    states = ledgers(system)
    assert [s.applied for s in states] == [per_actor] * ACTORS, "lost or duplicated"
    assert [s.out_of_order for s in states] == [0] * ACTORS, "out of order"
    assert all(s.last == {"p": per_actor} for s in states)
    # Leases, in-flight claims, ready marks: all gone once the last turn committed.
    wait_until(lambda: settled(system), 10, "no message queued, in flight or leased")


def drain_time(system: ActorSystem, started: float, total: int, limit_s: float) -> float:
    """Seconds from ``started`` until ``total`` messages were applied, waiting up to
    ``limit_s`` from now (long enough that a stall is measured, not cut short); infinite if
    they were not."""
    try:
        wait_until(lambda: applied(system) >= total, limit_s, f"{total} messages applied")
    except AssertionError:
        return math.inf
    return time.monotonic() - started


def secs(took: float) -> str:
    return "not done" if took == math.inf else f"{took:.2f}s"


def assert_live(
    took: float, bound_s: float, what: str, system: ActorSystem, per_actor: int = PER_ACTOR
) -> None:
    """The drain ended within ``bound_s``; if it ended at all, exactly once."""
    if took < math.inf:
        assert_exactly_once(system, per_actor)
    done = "not done" if took == math.inf else f"done after {took:.1f}s"
    assert took <= bound_s, (
        f"{what}: {done} (bound {bound_s:.1f}s), {applied(system)}/{per_actor * ACTORS} "
        f"applied: an actor waited out its lease; {system.stats()}"
    )


def warm_drain(
    proxy: FaultProxy, spawn: Any, system: ActorSystem, db: int, seed: int | None, limit_s: float
) -> tuple[float, dict[str, int], InProcessWorker]:
    """Drain the workload already sent to ``db`` with a worker through the proxy, losing 5 %
    of the answers with ``seed`` (none without): (seconds, the proxy's counters for this
    drain, the stopped worker). Faults start after the worker connected and loaded its
    scripts (a reset during that load is test_reset_while_a_new_client_loads_its_scripts)."""
    worker = spawn(proxy.url(db), start=False, **SMALL_ROUNDS)
    worker.warm()
    before = proxy.counters()
    if seed is not None:
        proxy.reset_after_answer(0.05, rng_seed=seed)
    worker.start()
    took = drain_time(system, worker.started, TOTAL, limit_s)
    proxy.heal()
    worker.stop()
    after = proxy.counters()
    return took, {k: after[k] - before[k] for k in after}, worker


def test_answers_lost_after_the_command_took_effect(
    proxy: FaultProxy, direct: Any, spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 % of Redis's answers dropped and their connections reset (the command ran, the
    worker never learns it; now and then the retry's answer too): every message applied
    once and in order, and a drain takes at most twice a clean one plus a few seconds."""
    system = direct(1)
    send_workload(system)
    clean_s, clean, _ = warm_drain(proxy, spawn, system, 1, None, GENEROUS_S)
    assert clean_s < math.inf, "the clean drain did not end"
    assert_exactly_once(system)
    bound_s = 2 * clean_s + 5.0
    with capsys.disabled():
        print(f"\n[answers lost] clean drain {clean_s:.2f}s ({clean['requests']} requests)")
    for db, seed in zip((2, 10, 11), SEEDS, strict=True):
        system = direct(db)
        send_workload(system)
        took, counters, worker = warm_drain(proxy, spawn, system, db, seed, bound_s + 5)
        with capsys.disabled():
            print(
                f"[answers lost] seed {seed}: {secs(took)} (bound {bound_s:.2f}s), "
                f"{counters['requests']} requests, {counters['answers_dropped']} answers "
                f"dropped; worker report: {worker.report}"
            )
        assert counters["answers_dropped"] >= 3, "the fault did not happen often enough"
        assert_live(took, bound_s, f"seed {seed}, {clean_s:.2f}s clean", system)


def test_latency_on_every_chunk(
    proxy: FaultProxy, direct: Any, spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    system = direct(3)
    proxy.latency(0.02)
    worker = spawn(proxy.url(3), batch=10)
    send_workload(system)
    sent_at = time.monotonic()
    took = drain_time(system, sent_at, TOTAL, GENEROUS_S)
    worker.stop()
    with capsys.disabled():
        print(f"\n[latency 20 ms per chunk] drained {TOTAL} messages in {took:.2f}s")
    assert took < math.inf, "the drain did not end"
    assert_exactly_once(system)


def test_silent_network_while_the_worker_waits_idle(
    proxy: FaultProxy, direct: Any, spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    system = direct(4)
    worker = spawn(proxy.url(4, socket_timeout=SOCKET_TIMEOUT_S))
    wait_until(lambda: proxy.counters()["requests"] >= 10, what="the worker polling")
    time.sleep(0.3)  # idle: blocked on Redis for new work
    proxy.blackhole()
    began = time.monotonic()
    total = send_workload(system, per_actor=5)
    time.sleep(OUTAGE_S)
    assert applied(system) == 0, "the worker reached Redis through the black hole"
    proxy.heal()
    healed = time.monotonic()
    took = drain_time(system, healed, total, GENEROUS_S)
    stop_s = worker.stop()
    with capsys.disabled():
        print(
            f"\n[black hole while idle] {time.monotonic() - began:.1f}s outage + drain; "
            f"done {took:.2f}s after healing; stopped in {stop_s:.2f}s"
        )
    assert_live(took, RECOVERY_S, "after healing", system, per_actor=5)


def test_idle_waits_fit_under_a_short_socket_timeout(
    proxy: FaultProxy, direct: Any, spawn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A poll interval longer than the URL's socket timeout: the worker's blocking waits are
    cut to half the timeout, so an idle worker neither times out nor reconnects, and still
    picks up a send at once."""
    system = direct(10)
    worker = spawn(proxy.url(10, socket_timeout=1), poll_interval_s=4)
    assert worker.system.backend.block_s == 0.5
    wait_until(lambda: proxy.counters()["requests"] >= 5, what="the worker polling")
    accepted = proxy.counters()["accepted"]
    time.sleep(3.0)  # idle: six blocking waits, each well under the 1 s timeout
    total = send_workload(system, per_actor=1)
    assert drain_time(system, time.monotonic(), total, GENEROUS_S) < GENEROUS_S
    worker.stop()
    assert proxy.counters()["accepted"] == accepted  # not one reconnect
    assert not [r for r in caplog.records if "backend" in r.getMessage()]


def script_sha(worker: InProcessWorker, name: str) -> bytes:
    """The SHA of one of the worker's Lua scripts (loaded by ``warm``), as its EVALSHA
    requests carry it."""
    backend: Any = worker.system.backend
    return str(backend._sha[name]).encode()


def outage_mid_drain(
    proxy: FaultProxy, system: ActorSystem, worker: InProcessWorker, script: str, fault: str
) -> tuple[int, float]:
    """Once the drain is under way, go ``fault`` right after the worker's next ``script``
    request reached Redis (it runs, its answer is lost), for OUTAGE_S; then heal. Returns
    (messages applied when it struck, seconds from healing until the drain was done)."""
    wait_until(lambda: applied(system) >= 40, what="the drain under way")
    proxy.arm(script_sha(worker, script), fault)
    wait_until(lambda: not proxy.armed, what=f"a {script} going into the {fault}")
    at_outage = applied(system)
    time.sleep(OUTAGE_S)
    proxy.heal()
    healed = time.monotonic()
    return at_outage, drain_time(system, healed, TOTAL, RECOVERY_S + 5)


def test_silent_network_after_a_claim(
    proxy: FaultProxy, direct: Any, spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The network goes silent just after a begin reached Redis: the claim was taken (a
    lease under the round's token), the worker's read times out. Once the network is back
    the worker takes its claim up again, not 30 s later when the lease expires."""
    system = direct(5)
    send_workload(system)
    worker = spawn(proxy.url(5, socket_timeout=SOCKET_TIMEOUT_S), start=False, **SMALL_ROUNDS)
    worker.warm()
    proxy.latency(0.005)  # a drain long enough to cut into
    worker.start()
    at_outage, took = outage_mid_drain(proxy, system, worker, "begin", "blackhole")
    worker.stop()
    with capsys.disabled():
        print(
            f"\n[black hole after a begin] {at_outage}/{TOTAL} applied when it went silent; "
            f"{secs(took)} after healing; worker report: {worker.report}"
        )
    assert at_outage < TOTAL, "the drain ended before the outage: nothing was tested"
    assert_live(took, RECOVERY_S, "after healing", system)


def test_workers_stop_while_their_connection_hangs(
    proxy: FaultProxy, direct: Any, spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """worker.stop() and SIGTERM end a worker within its socket timeout and a little more,
    even while its Redis call hangs on a silent network."""
    direct(6)
    url = proxy.url(6, socket_timeout=SOCKET_TIMEOUT_S)
    proc = start_worker(url, app="tests.chaos.actors")
    try:
        inproc = spawn(url)
        # Both polling: the subprocess's first requests come after its imports.
        wait_until(lambda: proxy.connections() >= 2, what="both workers connected")
        time.sleep(0.5)
        proxy.blackhole()
        time.sleep(0.5)  # their calls now hang
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stop_s = inproc.stop()
        _, err = proc.communicate(timeout=GENEROUS_S)
        sigterm_s = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proxy.heal()
    with capsys.disabled():
        print(f"\n[stop while hanging] worker.stop() {stop_s:.2f}s, SIGTERM {sigterm_s:.2f}s")
    assert proc.returncode == 0, err.decode()
    assert stop_s <= SOCKET_TIMEOUT_S + 3
    assert sigterm_s <= SOCKET_TIMEOUT_S + 3


def test_connections_reset_and_refused_after_a_poll(
    proxy: FaultProxy, direct: Any, spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every connection is reset just after a poll ran (its actors reserved for the round),
    and new ones are refused for a while: once they are accepted again the worker gets on
    with those actors, not 30 s later when the reservation expires."""
    system = direct(7)
    send_workload(system)
    worker = spawn(proxy.url(7), start=False, **SMALL_ROUNDS)
    worker.warm()
    proxy.latency(0.005)
    worker.start()
    resets_before = proxy.counters()["resets"]
    at_outage, took = outage_mid_drain(proxy, system, worker, "poll", "drop_all")
    refused = proxy.counters()["resets"] - resets_before - 1
    worker.stop()
    with capsys.disabled():
        print(
            f"\n[drop_all after a poll] {at_outage}/{TOTAL} applied at the reset, {refused} "
            f"connections refused; {secs(took)} after healing; worker report: "
            f"{worker.report}"
        )
    assert at_outage < TOTAL, "the drain ended before the outage: nothing was tested"
    assert refused >= 1, "the worker did not try to reconnect during the outage"
    assert_live(took, RECOVERY_S, "after healing", system)


def test_cancel_retried_after_its_answer_was_lost(proxy: FaultProxy, direct: Any) -> None:
    """The cancel took effect but its answer was lost: asked again, it says True (the
    cancel receipt), and the message is never delivered."""
    system = direct(8)
    via = ActorSystem.from_url(proxy.url(8), actors=ACTOR_TYPES)
    try:
        mid = system.send(ledger.ref("c"), Entry(sender="p", seq=1), delay=1.0)
        due = time.monotonic() + 1.0
        # Scripts loaded and the connection open: the next request is the cancel itself.
        assert via.cancel(uuid.uuid4().hex) is False
        proxy.reset_after_answer(1.0, limit=1)
        try:
            first: bool | None = via.cancel(mid)  # True if the library itself tried again
        except BackendError:
            first = None  # the caller tries again
        assert proxy.counters()["answers_dropped"] == 1
        assert proxy.mode == "normal"
        assert system.stats()["pending_deferred"] == 0, "the lost cancel did not take effect"
        assert first is not False, "a cancel that took effect answered False"
        assert via.cancel(mid) is True  # the retry learns that it was cancelled
        assert via.cancel(mid) is True
    finally:
        via.close()
    time.sleep(max(due - time.monotonic(), 0) + 0.3)
    system.run_until_idle()
    state = system.state(ledger.ref("c"))
    assert isinstance(state, LedgerState)
    assert state.applied == 0, "a cancelled message was delivered"
    assert system.stats()["dead_letters"] == 0


def test_reset_while_a_new_client_loads_its_scripts(proxy: FaultProxy, direct: Any) -> None:
    """A client loads its Lua scripts one SCRIPT LOAD at a time on first use; a connection
    lost after some of them must not leave it unable to run the others."""
    system = direct(9)
    via = ActorSystem.from_url(proxy.url(9), actors=ACTOR_TYPES)
    try:
        via.clock.now()  # connected (TIME): the next requests are the SCRIPT LOADs
        proxy.reset_after_answer(1.0, limit=1, skip=2)  # the third one's answer is lost
        with contextlib.suppress(BackendError):  # the caller tries again
            via.cancel(uuid.uuid4().hex)
        assert proxy.counters()["answers_dropped"] == 1
        assert via.cancel(uuid.uuid4().hex) is False
        system.send(ledger.ref("s"), Entry(sender="p", seq=1))
        via.run_until_idle()
    finally:
        via.close()
    state = system.state(ledger.ref("s"))
    assert isinstance(state, LedgerState)
    assert state.applied == 1
