"""Workers SIGKILLed at random points while reminders run: every occurrence of a recurring
reminder with ``catchup="all"`` is applied exactly once, in order, on its grid, never before
it is due, and an ended reminder leaves nothing behind.

The actors are armed a chunk at a time, one chunk before each worker starts, so that
schedules are running (falling due, late and caught up) at every kill however long the
workers take to start on a busy machine; the last ones run on past the kills.

The worker processes load their actor types from tests/reminder_crash_actors.py (``--app``).
"""

from __future__ import annotations

import random
import signal
import time
from typing import TYPE_CHECKING

import pytest
import redis

from actor_system import ActorSystem
from tests.integration.workers import start_worker
from tests.reminder_crash_actors import Arm, actors, ticker
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.reminder_crash_actors import TickerState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "tests.reminder_crash_actors"
ACTORS = 200
TIMES = 60
EVERY_MS = 100
KILLS = 17
WORKER = ("--lease-ms", "500", "--batch", "20")


def test_sigkilled_workers_apply_each_reminder_occurrence_once_in_order(redis_url: str) -> None:
    rng = random.Random(11)
    system = ActorSystem.from_url(redis_url, actors=actors, lease_ms=500, batch=20)
    refs = [ticker.ref(f"r{i}") for i in range(ACTORS)]
    arm = Arm(every_s=EVERY_MS / 1000, times=TIMES)
    chunks = [refs[i::KILLS] for i in range(KILLS)]

    def states() -> list[TickerState]:
        return [system.state(r) for r in refs]  # type: ignore[misc]

    def applied() -> int:
        return sum(len(s.ticks) for s in states())

    def progress() -> int:
        """Turns committed: the arming ones and the occurrences applied."""
        return sum(len(s.armed) + len(s.ticks) for s in states())

    total = ACTORS * TIMES
    started = time.monotonic()
    kills = 0
    while kills < KILLS:
        system.send_many([(ref, arm) for ref in chunks[kills]])
        before = progress()
        worker = start_worker(redis_url, *WORKER, app=APP)
        # Kill it at a random point of its work, not while it is still starting: wait for its
        # first commit (an arming turn or an occurrence: there is always one to come).
        wait_until(lambda: progress() > before, what="the worker's first commit")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.6))
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=60)
        kills += 1
    kill_phase_s = time.monotonic() - started

    mid_run = applied()
    # What is left falls due by the end of the schedule (later if the kills set actors back).
    deadline = time.monotonic() + TIMES * EVERY_MS / 1000 + 30
    while applied() < total and time.monotonic() < deadline:
        system.run_until_idle()
        time.sleep(0.02)  # the next occurrences fall due; the dead holders' leases expire
    # Nothing is left to deliver: no copy of an occurrence waits behind a dead holder's lease.
    time.sleep(0.6)
    assert system.run_until_idle().messages == 0

    final = states()
    lateness_ms = sorted(ran_us / 1000 - due_ms for s in final for due_ms, ran_us, _ in s.ticks)
    print(
        f"kills={kills} applied_before_final_drain={mid_run}"
        f" total={sum(len(s.ticks) for s in final)} kill_phase_s={kill_phase_s:.1f}"
        f" median_lateness_ms={lateness_ms[len(lateness_ms) // 2] if lateness_ms else 0:.0f}"
        f" max_lateness_ms={lateness_ms[-1] if lateness_ms else 0:.0f}"
    )
    assert 0 < mid_run < total  # the kills really interrupted the schedules

    for ref, state in zip(refs, final, strict=True):
        assert len(state.armed) == 1, (ref, state.armed)  # armed once: never set again
        assert state.strays == [], (ref, state.strays)
        due = [d for d, _, _ in state.ticks]
        ran = [r for _, r, _ in state.ticks]
        assert len(due) == TIMES, (ref, due)
        first = due[0]
        # The first occurrence is `every` after the turn that armed it (ctx.now, to the ms).
        assert abs(first - EVERY_MS - state.armed[0] / 1000) <= 1, (ref, first, state.armed)
        # On the grid, in order, each once: no drift, nothing skipped or repeated.
        assert due == [first + k * EVERY_MS for k in range(TIMES)], (ref, due)
        # Never early, and applied in the order they fell due.
        early = [(d, r) for d, r in zip(due, ran, strict=True) if r < d * 1000]
        assert early == [], (ref, early)
        assert ran == sorted(ran), (ref, ran)
        # catchup="all" delivers each missed occurrence: none is folded into another.
        assert {m for _, _, m in state.ticks} == {0}, (ref, state.ticks)
        assert system.reminders(ref) == [], ref

    client = redis.Redis.from_url(redis_url)
    leftovers = list(client.scan_iter(match="as:*/*:inflight"))
    leftovers += list(client.scan_iter(match="as:*/*:mb"))
    assert leftovers == []
    stats = system.stats()
    assert stats["leases_held"] == 0
    assert stats["reminders"] == 0
    assert stats["actors_with_reminders"] == 0
    assert stats["pending_deferred"] == 0
    assert stats["mailbox_messages"] == stats["in_flight_messages"] == 0
    assert system.backend.dead_letter_count() == 0
    client.close()
    system.close()
