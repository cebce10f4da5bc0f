"""A live worker process: stale leases, clean stop, and deferred delivery on time."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from actor_system import ActorSystem, DrainReport
from tests.actors import Add, Slow, Timed, actors, counter, probe
from tests.integration.workers import start_worker
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def wait_started(system: ActorSystem, name: str) -> None:
    """Wait until the worker has started and delivered one message: it runs its loop."""
    ref = counter.ref(f"started-{name}")
    system.send(ref, Add(n=1))
    wait_until(lambda: system.state(ref).count == 1, what="the worker to start")  # type: ignore[attr-defined]


def test_frozen_holder_cannot_overwrite_state_of_the_next_holder(
    redis_url: str, tmp_path: Path
) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors, lease_ms=500)
    ref = probe.ref("stale")
    marker = tmp_path / "running"
    worker = start_worker(redis_url, "--lease-ms", "500")
    try:
        system.send(ref, Slow(path=str(marker), seconds=1.0))
        wait_until(marker.exists, what="the handler to start")
        worker.send_signal(signal.SIGSTOP)  # frozen inside the handler, holding the lease
        marker.unlink()
        time.sleep(0.7)  # the lease runs out while it is frozen

        def recovering_drain() -> DrainReport | None:
            report = system.run_until_idle()  # the next holder recovers and commits
            return report if report.recovered else None  # not yet if its clock reads behind

        report = wait_until(recovering_drain, what="the expired lease to be recovered")
        assert report.recovered == 1
        assert report.messages == 1
        assert system.state(ref).writer == os.getpid()  # type: ignore[attr-defined]
        # The stale holder finishes its handler and tries to commit; SIGTERM stops the
        # worker only after that round, so the attempt is made however slow the machine.
        worker.send_signal(signal.SIGCONT)
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    state = system.state(ref)
    assert state.writer == os.getpid()  # type: ignore[attr-defined]
    assert state.count == 1  # type: ignore[attr-defined]
    assert json.loads(out)["messages"] == 0  # its commit was refused
    assert b"lease of probe/stale lost" in err, err  # ...because it no longer held the lease


def test_worker_stops_cleanly_on_sigterm(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    worker = start_worker(redis_url)
    system.send_many([(counter.ref("t"), Add(n=1))] * 200)
    wait_until(lambda: system.state(counter.ref("t")).count == 200, what="200 messages")  # type: ignore[attr-defined]
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert json.loads(out)["messages"] == 200


def test_live_worker_delivers_deferred_messages_on_time_never_early(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    worker = start_worker(redis_url)
    ref = probe.ref("timing")
    try:
        wait_started(system, "timing")  # then it blocks in its idle wait
        for i in range(40):
            delay = 0.2 + i * 0.05
            # Due times read from the sender's clock just before each send (the send reads it
            # again, never earlier): exact for "never early", and a slow sending loop adds no
            # lateness.
            system.send(ref, Timed(due=system.clock.now() + delay), delay=delay)
        wait_until(lambda: len(system.state(ref).deliveries) == 40, what="40 deliveries")  # type: ignore[attr-defined]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    lateness = sorted(done - due for due, done in system.state(ref).deliveries)  # type: ignore[attr-defined]
    print(f"lateness p50={lateness[20] * 1000:.1f}ms max={lateness[-1] * 1000:.1f}ms")
    assert lateness[0] >= 0  # never early
    assert lateness[-1] < 0.5  # well inside the 100 ms Redis blocking granularity + a turn
