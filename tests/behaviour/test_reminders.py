"""Reminders on every store: the grid, catch-up, replacing, forgetting, failures, cron."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from actor_system import InvalidSend
from actor_system.testing import advance_and_drain
from tests.reminder_actors import (
    Arm,
    ArmThenFail,
    AsyncArm,
    Forget,
    Plan,
    ReminderState,
    Tick,
    async_timer,
    idle_timer,
    timer,
    unreadable_timer,
)

if TYPE_CHECKING:
    from actor_system import ActorRef, ActorSystem, ManualClock


def got(system: ActorSystem, ref: ActorRef) -> list[tuple[int, int]]:
    """(occurrence ms, missed) of each delivery, in order."""
    state = system.state(ref)
    assert isinstance(state, ReminderState)
    return [(g.occurrence_ms, g.missed) for g in state.got]


def pending(system: ActorSystem) -> int | None:
    """Pending occurrences (Tick messages) in the Redis delay queue; None where an external
    delay queue (SQS, Scheduler) holds them: SQS counts a cancelled message until it lands."""
    if system.stats().get("deferred_store"):
        return None
    # A pending occurrence is listed as "reminder:<name>" (the Redis delay queue holds its
    # member alone); one re-sent by Retry(delay=) is an ordinary "Tick".
    return sum(
        1 for d in system.deferred(1000) if d.type.startswith("reminder:") or d.type == "Tick"
    )


def armed(system: ActorSystem, ref: ActorRef, clock: ManualClock, **arm: Any) -> int:
    """Arm a reminder through a handler; returns the arming time in ms."""
    t0 = round(clock.now() * 1000)
    system.send(ref, Arm(**arm))
    system.run_until_idle()
    return t0


def test_every_stepped_second_by_second_delivers_on_the_grid(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("grid")
    t0 = armed(system, ref, clock, every=10)
    [r] = system.reminders(ref)
    assert (r.name, r.message_type, r.every, r.remaining) == (
        "tick",
        "Tick",
        timedelta(seconds=10),
        None,
    )
    assert r.due == datetime.fromtimestamp(t0 / 1000 + 10, UTC)
    for _ in range(100):
        advance_and_drain(system, clock, 1)
    assert got(system, ref) == [(t0 + 10_000 * k, 0) for k in range(1, 11)]
    state = system.state(ref)
    assert all(g.ran_ms >= g.occurrence_ms for g in state.got)  # type: ignore[attr-defined]
    [r] = system.reminders(ref)
    assert r.due == datetime.fromtimestamp(t0 / 1000 + 110, UTC)  # on the grid, in the future
    assert system.stats()["reminders"] == 1


def test_one_long_step_coalesces_the_missed_occurrences(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("coalesce")
    t0 = armed(system, ref, clock, every=10)
    report = advance_and_drain(system, clock, 100)
    assert got(system, ref) == [(t0 + 100_000, 9)]  # the latest folded in, 9 before it
    assert report.messages == 1
    [r] = system.reminders(ref)
    assert r.due == datetime.fromtimestamp(t0 / 1000 + 110, UTC)
    # Nine more seconds: nothing; one more: the next one on the grid, on time.
    advance_and_drain(system, clock, 9)
    assert len(got(system, ref)) == 1
    advance_and_drain(system, clock, 1)
    assert got(system, ref)[1:] == [(t0 + 110_000, 0)]


def test_catchup_all_delivers_each_missed_occurrence_in_order(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("all")
    t0 = armed(system, ref, clock, every=10, catchup="all")
    advance_and_drain(system, clock, 100)
    assert got(system, ref) == [(t0 + 10_000 * k, 0) for k in range(1, 11)]
    [r] = system.reminders(ref)
    assert r.due == datetime.fromtimestamp(t0 / 1000 + 110, UTC)


def test_replacing_from_its_own_handler_changes_the_period_from_the_next_occurrence(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("replace")
    system.send(ref, Plan(replace_after=2, replace_every=25))
    t0 = armed(system, ref, clock, every=10)
    for _ in range(80):
        advance_and_drain(system, clock, 1)
    # 10, 20 (replaced there: every 25 from 20), 45, 70.
    assert got(system, ref) == [(t0 + s * 1000, 0) for s in (10, 20, 45, 70)]
    [r] = system.reminders(ref)
    assert (r.every, r.due) == (timedelta(seconds=25), datetime.fromtimestamp(t0 / 1000 + 95, UTC))
    assert pending(system) in (None, 1)  # never two pending occurrences of a name


def test_forget_in_the_handler_of_its_own_occurrence_ends_it(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("forget-own")
    system.send(ref, Plan(forget_after=3))
    t0 = armed(system, ref, clock, every=10)
    for _ in range(10):
        advance_and_drain(system, clock, 10)
    assert got(system, ref) == [(t0 + s * 1000, 0) for s in (10, 20, 30)]
    assert system.state(ref).forgot == [True]  # type: ignore[attr-defined]
    assert system.reminders(ref) == []
    assert pending(system) in (None, 0)
    assert system.stats()["reminders"] == 0


def test_setting_a_name_again_replaces_it(make_system: Any, clock: ManualClock) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("again")
    armed(system, ref, clock, every=10, n=1)
    clock.advance(5)
    t1 = armed(system, ref, clock, every=30, n=2)
    [r] = system.reminders(ref)
    assert (r.every, r.due) == (timedelta(seconds=30), datetime.fromtimestamp(t1 / 1000 + 30, UTC))
    assert pending(system) in (None, 1)
    for _ in range(6):
        advance_and_drain(system, clock, 10)
    state = system.state(ref)
    seen = [(g.occurrence_ms, g.n) for g in state.got]  # type: ignore[attr-defined]
    assert seen == [(t1 + 30_000, 2), (t1 + 60_000, 2)]  # none of the first schedule


def test_times_caps_the_occurrences_and_until_ends_them(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    capped, bounded = timer.ref("times"), timer.ref("until")
    t0 = armed(system, capped, clock, every=10, times=3)
    [r] = system.reminders(capped)
    assert r.remaining == 3
    armed(system, bounded, clock, every=10, until_s=t0 / 1000 + 40)
    advance_and_drain(system, clock, 10)
    assert system.reminders(capped)[0].remaining == 2  # counting down
    for _ in range(9):
        advance_and_drain(system, clock, 10)
    assert got(system, capped) == [(t0 + s * 1000, 0) for s in (10, 20, 30)]
    assert got(system, bounded) == [(t0 + s * 1000, 0) for s in (10, 20, 30)]  # none at 40
    assert system.reminders(capped) == system.reminders(bounded) == []
    assert system.stats()["reminders"] == 0
    assert pending(system) in (None, 0)


def test_times_counts_the_occurrences_a_late_delivery_folds_in(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("times-fold")
    t0 = armed(system, ref, clock, every=10, times=5)
    advance_and_drain(system, clock, 35)
    assert got(system, ref) == [(t0 + 30_000, 2)]
    assert system.reminders(ref)[0].remaining == 2
    advance_and_drain(system, clock, 100)
    assert got(system, ref)[1:] == [(t0 + 50_000, 1)]  # 40 and 50: the last two
    assert system.reminders(ref) == []


def test_a_one_shot_reminder_fires_once_and_leaves_nothing(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("once")
    t0 = armed(system, ref, clock, delay=30)
    advance_and_drain(system, clock, 29.999)
    assert got(system, ref) == []  # never early
    advance_and_drain(system, clock, 0.001)
    assert got(system, ref) == [(t0 + 30_000, 0)]
    advance_and_drain(system, clock, 100)
    assert len(got(system, ref)) == 1
    assert system.reminders(ref) == []


def test_every_with_a_start_time_starts_there(make_system: Any, clock: ManualClock) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("start")
    t0 = armed(system, ref, clock, every=60, delay=5)
    for _ in range(3):
        advance_and_drain(system, clock, 60)
    assert got(system, ref) == [(t0 + s * 1000, 0) for s in (5, 65, 125)]


def test_a_failing_occurrence_does_not_stop_the_schedule(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer, max_attempts=2)
    ref = timer.ref("fails")
    system.send(ref, Plan(fail_n=[0]))
    t0 = armed(system, ref, clock, every=10, times=3, catchup="all")
    for _ in range(4):
        advance_and_drain(system, clock, 10)
        system.run_until_idle()
    # Every occurrence carries the same message (n=0), so each is dead-lettered after its
    # retries; the schedule still steps through all three.
    dead = system.dead_letters()
    assert len(dead) == 3
    assert all("occurrence 0 fails" in d.reason for d in dead)
    assert system.reminders(ref) == []
    system.send(ref, Plan())
    t1 = armed(system, ref, clock, every=10, times=2)
    for _ in range(3):
        advance_and_drain(system, clock, 10)
    assert got(system, ref) == [(t1 + 10_000, 0), (t1 + 20_000, 0)]
    assert t1 > t0


def test_an_occurrence_retried_through_the_delay_queue_stays_an_occurrence(
    make_system: Any, clock: ManualClock
) -> None:
    """Retry(delay=) re-sends the occurrence: delivered later as that occurrence, and the
    schedule moves on from it."""
    system: ActorSystem = make_system(timer)
    ref = timer.ref("retried")
    system.send(ref, Plan(retry_first=True))
    t0 = armed(system, ref, clock, every=10, times=2)
    advance_and_drain(system, clock, 10)
    assert got(system, ref) == []
    advance_and_drain(system, clock, 5)  # the retry: the first occurrence, on its grid time
    assert got(system, ref) == [(t0 + 10_000, 0)]
    [r] = system.reminders(ref)
    assert (r.due.timestamp() * 1000, r.remaining) == (t0 + 20_000, 1)
    advance_and_drain(system, clock, 5)
    advance_and_drain(system, clock, 5)
    assert got(system, ref) == [(t0 + 10_000, 0), (t0 + 20_000, 0)]
    assert system.reminders(ref) == []


def test_a_redriven_dead_occurrence_runs_as_it_was_and_leaves_the_schedule_alone(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer, max_attempts=1)
    ref = timer.ref("redriven")
    system.send(ref, Plan(fail_n=[0]))
    t0 = armed(system, ref, clock, every=10, times=3)
    advance_and_drain(system, clock, 10)
    [dead] = system.dead_letters()
    assert system.reminders(ref)[0].due.timestamp() * 1000 == t0 + 20_000  # moved on
    system.send(ref, Plan())  # fixed
    system.run_until_idle()
    assert system.redrive(dead) is True
    system.run_until_idle()
    assert got(system, ref) == [(t0 + 10_000, 0)]  # not dropped as stale
    [r] = system.reminders(ref)
    assert (r.due.timestamp() * 1000, r.remaining) == (t0 + 20_000, 2)  # untouched
    advance_and_drain(system, clock, 10)
    advance_and_drain(system, clock, 10)
    assert got(system, ref) == [(t0 + s * 1000, 0) for s in (10, 20, 30)]
    assert system.reminders(ref) == []


def test_an_occurrence_dead_lettered_by_a_turn_failing_outside_its_handler_moves_on(
    make_system: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No handler ran (the turn failed around it): the occurrence is dead-lettered at
    max_attempts and the schedule still moves on, written into the stored state as it was."""
    system: ActorSystem = make_system(timer, max_attempts=1)
    ref = timer.ref("broken")
    t0 = armed(system, ref, clock, every=10, times=3)
    runtime = system.runtime
    opened = runtime._open
    broken = [True]

    def failing(turn: Any, entry: bytes) -> Any:
        if broken[0]:
            raise RuntimeError("defect outside the handler")
        return opened(turn, entry)

    monkeypatch.setattr(runtime, "_open", failing)
    advance_and_drain(system, clock, 10)
    [dead] = system.dead_letters()
    assert "the turn failed 1 times, last: RuntimeError: defect outside the handler" in dead.reason
    [r] = system.reminders(ref)
    assert (r.due.timestamp() * 1000, r.remaining) == (t0 + 20_000, 2)
    assert pending(system) in (None, 1)
    broken[0] = False
    advance_and_drain(system, clock, 10)
    advance_and_drain(system, clock, 10)
    assert got(system, ref) == [(t0 + 20_000, 0), (t0 + 30_000, 0)]
    assert system.reminders(ref) == []


def test_an_occurrence_of_an_actor_whose_state_this_deploy_cannot_read_moves_on(
    make_system: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy whose state model rejects the stored state dead-letters the occurrence with
    the reason and moves the schedule on, leaving the state's own fields as they were: once
    a deploy that reads it is back, the next occurrence runs on the grid."""
    system: ActorSystem = make_system(timer, max_attempts=1)
    ref = timer.ref("unreadable")
    t0 = armed(system, ref, clock, every=10)
    advance_and_drain(system, clock, 10)
    assert got(system, ref) == [(t0 + 10_000, 0)]
    # A deploy whose "timer" has another state model, on the same stores.
    types = system.registry._types
    monkeypatch.setitem(types, "timer", unreadable_timer)
    advance_and_drain(system, clock, 10)
    [dead] = system.dead_letters()
    assert dead.reason.startswith("StateInvalid: stored state of actor type 'timer'")
    [r] = system.reminders(ref)
    assert r.due.timestamp() * 1000 == t0 + 30_000
    monkeypatch.setitem(types, "timer", timer)  # the deploy that reads it again
    advance_and_drain(system, clock, 10)
    assert got(system, ref) == [(t0 + 10_000, 0), (t0 + 30_000, 0)]
    [r] = system.reminders(ref)
    assert r.due.timestamp() * 1000 == t0 + 40_000


def test_an_occurrence_of_a_type_this_deploy_lacks_is_dead_lettered_and_moves_on(
    make_system: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    system: ActorSystem = make_system(timer, max_attempts=1)
    ref = timer.ref("retired")
    t0 = armed(system, ref, clock, every=10)
    types = system.registry._types
    monkeypatch.delitem(types, "timer")  # a deploy without the type
    advance_and_drain(system, clock, 10)
    [dead] = system.dead_letters()
    assert dead.reason.startswith("UnknownActorType: actor type 'timer' is not registered")
    [r] = system.reminders(ref)
    assert r.due.timestamp() * 1000 == t0 + 20_000
    # Forgotten by a deploy that has the type: what retiring it takes.
    monkeypatch.setitem(types, "timer", timer)
    assert system.forget(ref, "tick") is True
    assert system.reminders(ref) == []


def test_a_reminder_set_by_a_handler_that_fails_is_not_set(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer, max_attempts=1)
    ref = timer.ref("rolled-back")
    system.send(ref, ArmThenFail())
    system.run_until_idle()
    assert [d.reason for d in system.dead_letters()] == [
        "failed 1 times, last: RuntimeError: failed after ctx.remind"
    ]
    assert system.reminders(ref) == []
    assert pending(system) in (None, 0)
    advance_and_drain(system, clock, 30)
    assert got(system, ref) == []


def test_replace_races_an_occurrence_already_in_the_mailbox(
    make_system: Any, clock: ManualClock
) -> None:
    """One outcome: an occurrence queued before the replace commits is dropped when it
    reaches the head of the mailbox, without its handler; the new schedule goes on."""
    system: ActorSystem = make_system(timer, batch=1)
    ref = timer.ref("race")
    # Both sends are queued first. The first arms an occurrence due now: it goes to the
    # mailbox at that commit, behind the second, which replaces the reminder.
    system.send(ref, Arm(n=1, delay=0))
    system.send(ref, Arm(n=2, delay=10))
    report = system.run_until_idle()
    assert report.stale_occurrences == 1
    assert got(system, ref) == []
    t1 = round(clock.now() * 1000)
    advance_and_drain(system, clock, 10)
    state = system.state(ref)
    assert [(g.occurrence_ms, g.n) for g in state.got] == [(t1 + 10_000, 2)]  # type: ignore[attr-defined]


def test_system_forget_races_an_occurrence_already_in_the_mailbox(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer, batch=1)
    ref = timer.ref("race-forget")
    system.send(ref, Arm(delay=0))
    assert system.forget(ref, "tick") is True  # runs the queued Arm first, then forgets
    report = system.run_until_idle()
    assert report.stale_occurrences == 1
    assert got(system, ref) == []
    assert system.reminders(ref) == []
    assert system.forget(ref, "tick") is False


def test_system_remind_sets_replaces_and_deduplicates(make_system: Any, clock: ManualClock) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("outside")
    t0 = round(clock.now() * 1000)
    r = system.remind(ref, "tick", Tick(n=7), every=timedelta(minutes=1), times=2)
    assert (r.name, r.message_type, r.remaining) == ("tick", "Tick", 2)
    assert r.due == datetime.fromtimestamp(t0 / 1000 + 60, UTC)
    assert system.reminders(ref) == [r]
    # The same call again (a retry after a lost answer): dropped, nothing new armed.
    clock.advance(1)
    again = system.remind(ref, "tick", Tick(n=7), every=timedelta(minutes=1), times=2)
    assert again == r
    assert system.reminders(ref) == [r]
    assert pending(system) in (None, 1)
    advance_and_drain(system, clock, 59)
    advance_and_drain(system, clock, 60)
    state = system.state(ref)
    assert [(g.occurrence_ms, g.n) for g in state.got] == [(t0 + 60_000, 7), (t0 + 120_000, 7)]  # type: ignore[attr-defined]
    # Different arguments replace it.
    system.remind(ref, "tick", Tick(n=8), delay=5)
    assert [x.every for x in system.reminders(ref)] == [None]
    assert system.forget(ref, "tick") is True
    assert system.reminders(ref) == []
    assert pending(system) in (None, 0)


def test_several_reminders_of_one_actor_keep_their_own_schedules(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("several")
    t0 = round(clock.now() * 1000)
    system.remind(ref, "fast", Tick(), every=10)
    system.remind(ref, "slow", Tick(), every=25)
    assert [r.name for r in system.reminders(ref)] == ["fast", "slow"]
    assert system.stats()["reminders"] == 2
    for _ in range(5):
        advance_and_drain(system, clock, 10)
    state = system.state(ref)
    seen = [(g.name, g.occurrence_ms - t0) for g in state.got]  # type: ignore[attr-defined]
    assert [s for n, s in seen if n == "fast"] == [10_000, 20_000, 30_000, 40_000, 50_000]
    assert [s for n, s in seen if n == "slow"] == [25_000, 50_000]
    system.send(ref, Forget(name="fast"))
    system.run_until_idle()
    assert [r.name for r in system.reminders(ref)] == ["slow"]
    assert system.stats()["reminders"] == 1


def test_deleting_the_actor_removes_its_reminders(make_system: Any, clock: ManualClock) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("deleted")
    armed(system, ref, clock, every=10)
    assert system.delete(ref) is True
    assert system.reminders(ref) == []
    assert system.stats()["reminders"] == 0
    assert pending(system) in (None, 0)
    advance_and_drain(system, clock, 30)
    assert got(system, ref) == []


def test_an_async_handler_sets_a_reminder(make_system: Any, clock: ManualClock) -> None:
    system: ActorSystem = make_system(async_timer)
    ref = async_timer.ref("a")
    t0 = round(clock.now() * 1000)
    system.send(ref, AsyncArm(every=5))
    system.run_until_idle()
    advance_and_drain(system, clock, 5)
    assert got(system, ref) == [(t0 + 5000, 0)]


def test_jitter_is_a_fixed_offset_per_actor_within_the_window(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    t0 = clock.now()
    refs = [timer.ref(f"j{i}") for i in range(20)]
    for ref in refs:
        system.send(ref, Arm(every=60, jitter=30))
    system.run_until_idle()
    offsets = {}
    for ref in refs:
        [r] = system.reminders(ref)
        offsets[ref.id] = r.jitter
        assert timedelta(0) <= r.jitter < timedelta(seconds=30)
        assert r.due.timestamp() == pytest.approx(t0 + 60 + r.jitter.total_seconds())
    assert len(set(offsets.values())) > 10  # spread over the window
    # Set again: the same offset (deterministic per actor and name).
    system.send(refs[0], Arm(every=60, jitter=30))
    system.run_until_idle()
    assert system.reminders(refs[0])[0].jitter == offsets["j0"]
    for _ in range(3):
        advance_and_drain(system, clock, 30)
    for ref in refs:
        [(occurrence, _)] = got(system, ref)[:1]
        assert occurrence / 1000 == pytest.approx(t0 + 60 + offsets[ref.id].total_seconds())


def test_cron_in_berlin_fires_once_a_day_at_nine_local_across_both_dst_changes(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("berlin")
    clock.set(datetime(2026, 3, 25, 12, tzinfo=UTC).timestamp())
    system.send(ref, Arm(cron="0 9 * * *", tz="Europe/Berlin", times=7))
    system.run_until_idle()
    for _ in range(7 * 4):
        advance_and_drain(system, clock, 6 * 3600)
    spring = [datetime.fromtimestamp(ms / 1000, UTC) for ms, _ in got(system, ref)]
    # CET (UTC+1) until Sunday 29 March, CEST (UTC+2) from then on.
    assert [(d.day, d.hour, d.minute) for d in spring] == [
        (26, 8, 0),
        (27, 8, 0),
        (28, 8, 0),
        (29, 7, 0),
        (30, 7, 0),
        (31, 7, 0),
        (1, 7, 0),
    ]
    assert all(m == 0 for _, m in got(system, ref))
    fall = timer.ref("berlin-fall")
    clock.set(datetime(2026, 10, 22, 12, tzinfo=UTC).timestamp())
    system.send(fall, Arm(cron="0 9 * * *", tz="Europe/Berlin", times=6))
    system.run_until_idle()
    for _ in range(6 * 4):
        advance_and_drain(system, clock, 6 * 3600)
    days = [datetime.fromtimestamp(ms / 1000, UTC) for ms, _ in got(system, fall)]
    assert [(d.day, d.hour) for d in days] == [(23, 7), (24, 7), (25, 8), (26, 8), (27, 8), (28, 8)]


def test_cron_across_dst_fires_a_skipped_time_once_after_the_gap_and_a_repeated_one_once(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("two-thirty")
    clock.set(datetime(2026, 3, 28, 12, tzinfo=UTC).timestamp())
    system.send(ref, Arm(cron="30 2 * * *", tz="Europe/Berlin", times=2))
    system.run_until_idle()
    for _ in range(8):
        advance_and_drain(system, clock, 6 * 3600)
    spring = [datetime.fromtimestamp(ms / 1000, UTC) for ms, _ in got(system, ref)]
    # 02:30 does not exist on 29 March: once, at 03:00 CEST (01:00 UTC); then 00:30 UTC.
    assert [(d.day, d.hour, d.minute) for d in spring] == [(29, 1, 0), (30, 0, 30)]
    fall = timer.ref("two-thirty-fall")
    clock.set(datetime(2026, 10, 24, 12, tzinfo=UTC).timestamp())
    system.send(fall, Arm(cron="30 2 * * *", tz="Europe/Berlin", times=2))
    system.run_until_idle()
    for _ in range(8):
        advance_and_drain(system, clock, 6 * 3600)
    days = [datetime.fromtimestamp(ms / 1000, UTC) for ms, _ in got(system, fall)]
    # 02:30 happens twice on 25 October: once (the first, CEST); then 01:30 UTC (CET).
    assert [(d.day, d.hour, d.minute) for d in days] == [(25, 0, 30), (26, 1, 30)]


def test_reminders_survive_a_state_model_change(make_system: Any, clock: ManualClock) -> None:
    """The schedule is stored beside the state's fields: a migration never sees or drops it."""
    from actor_system import ActorSystem, ActorType
    from tests.reminder_actors import _tick

    class V2(ReminderState):
        label: str = ""

    def add_label(old: dict[str, Any]) -> dict[str, Any]:
        assert "_r" not in old
        return {**old, "label": "migrated"}

    system: ActorSystem = make_system(timer)
    ref = timer.ref("evolve")
    t0 = armed(system, ref, clock, every=10)
    timer2 = ActorType("timer", state=V2, version=2, migrations={1: add_label})
    timer2.handler(_tick)
    later = ActorSystem(system.backend, actors=[timer2], clock=clock)  # the next deploy
    advance_and_drain(later, clock, 10)
    state = later.state(ref)
    assert isinstance(state, V2)
    assert state.label == "migrated"
    assert [(g.occurrence_ms, g.missed) for g in state.got] == [(t0 + 10_000, 0)]
    assert [r.name for r in later.reminders(ref)] == ["tick"]
    assert later.raw_state(ref)["_v"] == 2  # type: ignore[index]


# -- arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({}, "one of delay=, at=, every= or cron="),
        ({"delay": 1, "at": datetime.now(UTC)}, "either delay= or at="),
        ({"every": 1, "cron": "* * * * *"}, "either every= or cron="),
        ({"cron": "61 * * * *"}, "not a valid cron"),
        ({"cron": "* * * *"}, "five-field"),
        ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"every": 0}, "at least a millisecond"),
        ({"every": -1}, "finite number of seconds >= 0"),
        ({"every": "10"}, "must be seconds"),
        ({"delay": 1, "times": 0}, "times=0 must be an int >= 1"),
        ({"every": 1, "until": datetime(2030, 1, 1)}, "naive datetime"),
        ({"every": 1, "catchup": "some"}, "'coalesce' or 'all'"),
        ({"every": 1, "until": datetime(2000, 1, 1, tzinfo=UTC)}, "at or before the first"),
        ({"delay": 10**12}, "max_delay_s"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_stored(
    make_system: Any, kw: dict[str, Any], match: str
) -> None:
    system: ActorSystem = make_system(timer)
    ref = timer.ref("bad")
    with pytest.raises(InvalidSend, match=match):
        system.remind(ref, "tick", Tick(), **kw)
    assert system.stats()["mailbox_messages"] == 0
    assert system.reminders(ref) == []


def test_a_bad_name_or_message_is_refused(make_system: Any) -> None:
    from actor_system import UnknownMessageType

    system: ActorSystem = make_system(timer)
    ref = timer.ref("bad")
    with pytest.raises(InvalidSend, match="reminder name"):
        system.remind(ref, "", Tick(), delay=1)
    with pytest.raises(UnknownMessageType):
        system.remind(ref, "x", AsyncArm(), delay=1)


def test_a_pending_occurrence_in_redis_is_its_member_alone(url: str, clock: ManualClock) -> None:
    """The Redis delay queue holds a reminder's pending occurrence as the member
    ``~<actor>\\n<name>`` with no body (the schedule holds the message): one per reminder,
    listed as ``reminder:<name>``, and not cancellable by id (forget the reminder)."""
    from actor_system import ActorSystem

    system = ActorSystem.from_url(url, actors=[timer], clock=clock)
    ref = timer.ref("layout")
    t0 = armed(system, ref, clock, every=60, n=7)
    backend: Any = system.backend
    keys = backend.keys
    part = keys.part_of(ref.key)
    member = f"~{ref.key}\ntick"
    assert backend.client.zrange(keys.due(part), 0, -1, withscores=True) == [
        (member.encode(), float(t0 + 60_000))
    ]
    bodies = sum(backend.client.hlen(keys.part(part, f"m{b}")) for b in range(256))
    assert bodies == 0
    [d] = system.deferred()
    assert (d.type, d.actor) == ("reminder:tick", ref.key)
    with pytest.raises(InvalidSend):
        system.cancel(member)
    # Promoted, it is a compact entry whose id names the actor's partition, as every id does.
    clock.advance(60)
    system.backend.poll(round(clock.now() * 1000), 0, 1000)
    [entry] = backend.client.lrange(keys.actor(ref.key, "mb"), 0, -1)
    assert entry[32:33] == b"\x00"
    assert keys.part_of_id(entry[:32].decode()) == part
    system.run_until_idle()
    advance_and_drain(system, clock, 60)
    state = system.state(ref)
    assert isinstance(state, ReminderState)
    assert [(g.occurrence_ms - t0, g.n) for g in state.got] == [(60_000, 7), (120_000, 7)]
    assert backend.client.zcard(keys.due(part)) == 1  # the next one, the same member
    system.close()


def test_an_actor_with_reminders_outlives_its_idle_ttl_until_its_next_occurrence(
    url: str, clock: ManualClock
) -> None:
    from actor_system import ActorSystem

    system = ActorSystem.from_url(url, actors=[idle_timer], clock=clock)
    ref = idle_timer.ref("idle")
    system.send(ref, Arm(every=3600))
    system.run_until_idle()
    backend: Any = system.backend
    key = backend.keys.actor(ref.key, "state")
    assert 3600_000 < backend.client.pttl(key) <= 3605_000  # until the occurrence, then idle
    system.send(ref, Forget())
    system.run_until_idle()
    assert 0 < backend.client.pttl(key) <= 5000  # no reminder: idle as its type says
    system.close()


def test_a_schedule_moved_on_without_a_handler_keeps_its_actor_alive(
    url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle TTL rule holds for a turn that ran no handler too: the state that holds the
    moved-on schedule lives until the next occurrence. And a failure while moving the
    schedule on leaves the turn's messages dead-lettered rather than stopping the drain."""
    from actor_system import ActorSystem
    from actor_system.reminders import Entry

    system = ActorSystem.from_url(url, actors=[idle_timer], clock=clock, max_attempts=1)
    ref = idle_timer.ref("idle-broken")
    system.send(ref, Arm(every=3600))
    system.run_until_idle()
    runtime = system.runtime

    def failing(turn: Any, entry: bytes) -> Any:
        raise RuntimeError("defect outside the handler")

    monkeypatch.setattr(runtime, "_open", failing)
    advance_and_drain(system, clock, 3600)
    assert len(system.dead_letters()) == 1
    backend: Any = system.backend
    key = backend.keys.actor(ref.key, "state")
    assert 3600_000 < backend.client.pttl(key) <= 3605_000  # until the next occurrence
    [r] = system.reminders(ref)
    assert r.due.timestamp() == pytest.approx(clock.now() + 3600, abs=1)

    def fold_fails(self: Entry, t: int, now: int) -> tuple[int, int]:
        raise ValueError("a schedule that cannot be computed")

    monkeypatch.setattr(Entry, "fold", fold_fails)
    advance_and_drain(system, clock, 3600)  # the drain goes on: the message is dead
    assert len(system.dead_letters()) == 2
    system.close()


def test_a_reminder_a_month_ahead_waits_in_the_external_delay_store(
    make_system: Any, clock: ManualClock, stores: dict[str, Any]
) -> None:
    """With SQS or Scheduler as the delay store, a far occurrence costs the drains nothing
    until it is near: it is not in the Redis sorted set they poll."""
    if stores.get("kind") not in ("sqs", "scheduler"):
        pytest.skip("a delay store outside Redis")
    system: ActorSystem = make_system(timer)
    ref = timer.ref("month")
    t0 = armed(system, ref, clock, every=timedelta(days=30).total_seconds())
    stats = system.stats()
    assert stats["pending_deferred"] == 0  # nothing in Redis for a drain to look at
    assert stats["deferred_elsewhere"] >= 1
    assert system.backend.next_due_ms() is None
    clock.advance(30 * 86400)
    system.run_until_idle()  # the store hands it back once near; landed and delivered
    system.run_until_idle()
    assert got(system, ref) == [(t0 + 30 * 86400_000, 0)]
