"""Workers SIGKILLed at random points lose no message and apply none twice."""

from __future__ import annotations

import random
import signal
import time

import pytest
import redis

from actor_system import ActorSystem
from tests.actors import Add, actors, counter
from tests.integration.workers import start_worker
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACTORS = 50
PER_ACTOR = 100
KILLS = 20


def test_sigkilled_workers_lose_nothing_and_apply_nothing_twice(redis_url: str) -> None:
    rng = random.Random(7)
    system = ActorSystem.from_url(redis_url, actors=actors, lease_ms=500, batch=20)
    refs = [counter.ref(f"k{i}") for i in range(ACTORS)]
    messages = [(ref, Add(n=1, work_ms=2)) for _ in range(PER_ACTOR) for ref in refs]
    for i in range(0, len(messages), 500):
        system.send_many(messages[i : i + 500])

    def total() -> int:
        return sum(system.state(r).count for r in refs)  # type: ignore[attr-defined]

    kills = 0
    while kills < KILLS:
        before = total()
        worker = start_worker(redis_url, "--lease-ms", "500", "--batch", "20")
        # Kill it at a random point of its work, not while it is still starting (which can
        # take longer than the whole window on a busy machine): wait for its first commit.
        wait_until(lambda: total() > before, what="the worker's first commit")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.6))
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=60)
        kills += 1

    mid_run = total()
    deadline = time.monotonic() + 120
    while total() < ACTORS * PER_ACTOR and time.monotonic() < deadline:
        system.run_until_idle()
        time.sleep(0.1)  # let the dead holders' leases expire

    print(f"kills={kills} processed_before_final_drain={mid_run} total={total()}")
    assert 0 < mid_run < ACTORS * PER_ACTOR  # the kills really interrupted the work
    for ref in refs:
        state = system.state(ref)
        assert state.count == PER_ACTOR, ref  # type: ignore[attr-defined]
        assert len(set(state.seen)) == PER_ACTOR  # type: ignore[attr-defined]
    client = redis.Redis.from_url(redis_url)
    leftovers = list(client.scan_iter(match="as:*/*:inflight"))
    leftovers += list(client.scan_iter(match="as:*/*:mb"))
    assert leftovers == []
    assert system.backend.stats()["leases_held"] == 0
    assert system.backend.dead_letter_count() == 0
