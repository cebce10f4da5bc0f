"""Redis faults: dropped connections, a crashed and restarted server, a failover from a
read-only replica. Workers reconnect with backoff; nothing is lost beyond what the server's
persistence setting itself loses, and nothing is applied twice."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from actor_system import ActorSystem, BackendError
from tests.chaos.actors import Entry, LedgerState, actors, ledger
from tests.conftest import RedisServer
from tests.integration.workers import start_worker
from tests.waiting import GENEROUS_S, wait_until

pytestmark = pytest.mark.integration

ACTORS = 20


def send_with_retry(system: ActorSystem, target: str, seq: int) -> None:
    """At-least-once sending with a stable idempotency key: exactly once in effect."""
    deadline = time.monotonic() + GENEROUS_S
    while True:
        try:
            system.send(
                ledger.ref(target), Entry(sender="p", seq=seq), idempotency_key=f"{target}:{seq}"
            )
            return
        except BackendError:
            if time.monotonic() > deadline:
                raise AssertionError("Redis did not come back") from None
            time.sleep(0.05)


def ledgers(system: ActorSystem) -> list[LedgerState]:
    deadline = time.monotonic() + GENEROUS_S
    while True:
        try:
            states = [system.state(ledger.ref(f"a{i}")) for i in range(ACTORS)]
            return [s for s in states if isinstance(s, LedgerState)]
        except BackendError:
            if time.monotonic() > deadline:
                raise AssertionError("Redis did not come back") from None
            time.sleep(0.05)


def wait_applied(system: ActorSystem, total: int, timeout: float = 120) -> list[LedgerState]:
    deadline = time.monotonic() + timeout
    while True:
        states = ledgers(system)
        if sum(s.applied for s in states) >= total or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


def run_workload(server: RedisServer, fault, per_actor: int = 60) -> tuple[int, list[LedgerState]]:
    system = ActorSystem.from_url(server.url, actors=actors)
    workers = [start_worker_chaos(server.url) for _ in range(2)]
    try:
        sent = 0
        for seq in range(1, per_actor + 1):
            for i in range(ACTORS):
                send_with_retry(system, f"a{i}", seq)
                sent += 1
            if seq == per_actor // 2:
                fault()
            time.sleep(0.01)
        states = wait_applied(system, sent)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.communicate(timeout=60)
    return sent, states


def start_worker_chaos(url: str) -> subprocess.Popen[bytes]:
    return start_worker(url, "--lease-ms", "1000", app="tests.chaos.actors")


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest):
    fsync = getattr(request, "param", "always")
    s = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", fsync)
    # RedisServer's base arguments turn AOF off; the later --appendonly yes wins.
    s.start()
    yield s
    s.stop()


def test_dropped_connections_lose_nothing(server: RedisServer) -> None:
    admin = redis.Redis(port=server.port)

    def drop_all() -> None:
        for _ in range(5):
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            time.sleep(0.1)

    sent, states = run_workload(server, drop_all)
    assert sum(s.applied for s in states) == sent
    assert sum(s.out_of_order for s in states) == 0


def test_server_crash_with_appendfsync_always_loses_nothing(server: RedisServer) -> None:
    def crash_and_restart() -> None:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        time.sleep(0.5)  # workers see the outage and back off
        server.start()

    sent, states = run_workload(server, crash_and_restart)
    assert sum(s.applied for s in states) == sent
    assert sum(s.out_of_order for s in states) == 0
    assert all(s.last["p"] == 60 for s in states)


@pytest.mark.parametrize("server", ["everysec"], indirect=True)
def test_server_crash_with_appendfsync_everysec_never_applies_twice(server: RedisServer) -> None:
    def crash_and_restart() -> None:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        time.sleep(0.5)
        server.start()

    sent, states = run_workload(server, crash_and_restart)
    # Up to a second of acknowledged writes may be gone with the crash (sends, or turns with
    # their state): each actor's history is still a prefix, never a duplicate or a gap.
    assert sum(s.out_of_order for s in states) == 0
    applied = sum(s.applied for s in states)
    print(f"everysec crash: sent={sent} applied={applied} lost={sent - applied}")
    assert applied <= sent


def test_worker_on_a_read_only_replica_waits_for_failover(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "p")
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    primary.start()
    replica = RedisServer(tmp_path / "r")
    replica.args += ["--replicaof", "127.0.0.1", str(primary.port)]
    replica.start()
    try:
        system = ActorSystem.from_url(primary.url, actors=actors)
        for seq in range(1, 11):
            system.send(ledger.ref("a0"), Entry(sender="p", seq=seq))
        replica_client = redis.Redis(port=replica.port)
        mailbox = system.backend.keys.actor("ledger/a0", "mb")  # type: ignore[attr-defined]
        wait_until(lambda: replica_client.exists(mailbox), what="the replica to sync")
        worker = start_worker_chaos(replica.url)

        def readonly_errors() -> int:
            stats = replica_client.info("errorstats").get("errorstat_READONLY", {})
            return int(stats.get("count", 0))

        # READONLY errors: the worker backs off and keeps trying (a second error after the
        # first), rather than a fixed sleep that a slow start can outlast.
        wait_until(lambda: readonly_errors() >= 2, what="the worker to retry after READONLY")
        assert worker.poll() is None
        replica_client.execute_command("REPLICAOF", "NO", "ONE")  # the failover
        promoted = ActorSystem.from_url(replica.url, actors=actors)
        wait_until(
            lambda: promoted.state(ledger.ref("a0")).applied >= 10,  # type: ignore[attr-defined]
            what="the worker to drain the promoted replica",
            every_s=0.1,
        )
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0
        assert b"READONLY" in err or b"read only" in err.lower()
        state = promoted.state(ledger.ref("a0"))
        assert state.out_of_order == 0  # type: ignore[attr-defined]
    finally:
        replica.stop()
        primary.stop()
