"""A live worker process: stale leases, clean stop, and deferred delivery on time."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from actor_system import ActorSystem
from tests.actors import Add, Slow, Timed, actors, counter, probe
from tests.integration.workers import start_worker

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_frozen_holder_cannot_overwrite_state_of_the_next_holder(
    redis_url: str, tmp_path: Path
) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors, lease_ms=500)
    ref = probe.ref("stale")
    marker = tmp_path / "running"
    worker = start_worker(redis_url, "--lease-ms", "500")
    try:
        system.send(ref, Slow(path=str(marker), seconds=1.0))
        wait_for(marker.exists)
        worker.send_signal(signal.SIGSTOP)  # frozen inside the handler, holding the lease
        marker.unlink()
        time.sleep(0.7)  # the lease runs out while it is frozen
        report = system.run_until_idle()  # the next holder recovers and commits
        assert report.recovered == 1
        assert report.messages == 1
        assert system.state(ref).writer == os.getpid()  # type: ignore[attr-defined]
        worker.send_signal(signal.SIGCONT)  # the stale holder finishes and tries to commit
        time.sleep(1.5)
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=15)
    state = system.state(ref)
    assert state.writer == os.getpid()  # type: ignore[attr-defined]
    assert state.count == 1  # type: ignore[attr-defined]
    assert json.loads(out)["messages"] == 0  # its commit was refused


def test_worker_stops_cleanly_on_sigterm(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    worker = start_worker(redis_url)
    system.send_many([(counter.ref("t"), Add(n=1))] * 200)
    wait_for(lambda: system.state(counter.ref("t")).count == 200)  # type: ignore[attr-defined]
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=10)
    assert worker.returncode == 0, err
    assert json.loads(out)["messages"] == 200


def test_live_worker_delivers_deferred_messages_on_time_never_early(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    worker = start_worker(redis_url)
    ref = probe.ref("timing")
    try:
        time.sleep(0.5)  # let the worker reach its idle wait
        start = time.time()
        for i in range(40):
            delay = 0.2 + i * 0.05
            system.send(ref, Timed(due=start + delay), delay=delay)
        wait_for(lambda: len(system.state(ref).deliveries) == 40)  # type: ignore[attr-defined]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=10)
    lateness = sorted(done - due for due, done in system.state(ref).deliveries)  # type: ignore[attr-defined]
    print(f"lateness p50={lateness[20] * 1000:.1f}ms max={lateness[-1] * 1000:.1f}ms")
    assert lateness[0] >= 0  # never early
    assert lateness[-1] < 0.5  # well inside the 100 ms Redis blocking granularity + a turn
