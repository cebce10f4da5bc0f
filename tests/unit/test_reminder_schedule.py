"""The schedule of a reminder (grid, catch-up, limits), a year of a daily cron on the manual
clock, and the one wake a Lambda drain arms for the earliest occurrence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actor_system import ActorSystem, ManualClock
from actor_system.aws_lambda import LambdaOptions, make_handler
from actor_system.reminders import Entry, plan
from tests.reminder_actors import Arm, ReminderState, Tick, timer
from tests.unit.test_lambda_handover import Context, RecordingWaker

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def every(ms: int, **kw: object) -> Entry:
    return Entry(gen="g", type="Tick", due=T0 + ms, every=ms, **kw)  # type: ignore[arg-type]


@given(
    period=st.integers(1, 10**7),
    steps=st.integers(0, 300),
    within=st.floats(0, 1),
    times=st.none() | st.integers(1, 400),
    until_k=st.none() | st.integers(1, 400),
)
def test_a_late_delivery_folds_in_exactly_the_grid_points_due_by_then(
    period: int, steps: int, within: float, times: int | None, until_k: int | None
) -> None:
    late = steps * period + int(within * (period - 1))
    until = None if until_k is None else T0 + period * until_k + 1
    entry = every(period, remaining=times, until=until)
    now = entry.due + late
    latest, missed = entry.fold(entry.due, now)
    # The grid points due by now, the first one included, within times and until.
    due = [entry.due + k * period for k in range(late // period + 1)]
    due = [t for t in due if until is None or t < until][: times or None]
    assert (latest, missed) == (due[-1], len(due) - 1)
    nxt = entry.moved_on(latest, missed)
    ended = (times is not None and len(due) == times) or (
        until is not None and latest + period >= until
    )
    assert (nxt is None) == ended
    if nxt is not None:
        assert nxt.due == latest + period  # on the grid
        assert nxt.due > now  # and in the future
        assert nxt.remaining == (None if times is None else times - len(due))


def test_catchup_all_folds_nothing() -> None:
    entry = every(10_000, catchup="all")
    assert entry.fold(entry.due, entry.due + 95_000) == (entry.due, 0)
    nxt = entry.moved_on(entry.due, 0)
    assert nxt is not None
    assert nxt.due == entry.due + 10_000  # in the past: delivered at once, in order


def test_plan_starts_every_from_now_or_from_the_start_given() -> None:
    assert plan("t/1", "r", "Tick", T0, every=10).due == T0 + 10_000
    assert plan("t/1", "r", "Tick", T0, every=10, delay=3).due == T0 + 3_000
    at = datetime.fromtimestamp(T0 / 1000 + 7, UTC)
    assert plan("t/1", "r", "Tick", T0, every=timedelta(minutes=1), at=at).due == T0 + 7_000
    assert plan("t/1", "r", "Tick", T0, delay=0).due == T0  # due now: straight to the mailbox
    # A cron from a start: its first time at or after the start.
    start = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    assert plan("t/1", "r", "Tick", T0, cron="0 9 * * *", at=start).due == int(
        start.timestamp() * 1000
    )
    assert plan("t/1", "r", "Tick", T0, cron="0 9 * * *").due == int(start.timestamp() * 1000)


def test_a_cron_that_never_matches_is_refused() -> None:
    from actor_system import InvalidSend

    with pytest.raises(InvalidSend, match="cron='0 0 30 2 \\*'"):
        plan("t/1", "r", "Tick", T0, cron="0 0 30 2 *")


def test_the_manual_clock_steps_through_a_year_of_a_daily_cron_without_sleeping() -> None:
    clock = ManualClock(T0 / 1000)
    # Few partitions: each poll of the embedded store looks at every one.
    system = ActorSystem.from_url("fakeredis://", actors=[timer], clock=clock, partitions=2)
    ref = timer.ref("year")
    system.send(ref, Arm(cron="30 6 * * *", tz="America/New_York"))
    system.run_until_idle()
    delivered = 0
    while delivered < 365:
        due_ms = system.backend.next_due_ms()
        assert due_ms is not None
        clock.set(due_ms / 1000)
        delivered += system.run_until_idle().messages
    state = system.state(ref)
    assert isinstance(state, ReminderState)
    days = [datetime.fromtimestamp(g.occurrence_ms / 1000, UTC) for g in state.got]
    assert len(days) == 365
    assert len({d.date() for d in days}) == 365  # once a day
    # 06:30 in New York: 11:30 UTC in winter, 10:30 UTC in summer time.
    assert {(d.hour, d.minute) for d in days} == {(11, 30), (10, 30)}
    assert all(g.missed == 0 and g.ran_ms == g.occurrence_ms for g in state.got)
    assert clock.now() - T0 / 1000 < 366 * 86400
    system.close()


def test_the_lambda_drain_arms_one_wake_for_the_earliest_occurrence() -> None:
    clock = ManualClock(T0 / 1000)
    system = ActorSystem.from_url("fakeredis://", actors=[timer], clock=clock)
    waker = RecordingWaker()
    handler = make_handler(system, LambdaOptions(waker, waker, margin_s=1.0))
    system.send(timer.ref("a"), Arm(name="slow", every=600))
    system.send(timer.ref("b"), Arm(name="fast", every=120))
    handler({"actor_system": "sweep"}, Context(5000))
    assert [due for due, _ in waker.wakes] == [T0 + 120_000]  # the earliest occurrence
    handler({"actor_system": "sweep"}, Context(5000))
    assert len(waker.wakes) == 1  # armed already
    clock.advance(120)
    handler({"actor_system": "wake"}, Context(5000))
    # The occurrence ran and armed the next one (240 s), still the earliest: one new wake.
    assert [due for due, _ in waker.wakes] == [T0 + 120_000, T0 + 240_000]
    state = system.state(timer.ref("b"))
    assert isinstance(state, ReminderState)
    assert [(g.occurrence_ms, g.n) for g in state.got] == [(T0 + 120_000, Tick().n)]
    system.close()


def test_an_entry_keeps_its_message_and_reads_the_form_stored_before() -> None:
    from actor_system.reminders import Entry, rearm

    entry = Entry("g1", "Tick", 1_000, every=10_000, payload={"n": 3})
    row = entry.pack()
    assert row[-1] == {"n": 3}
    assert Entry.unpack(row) == entry
    assert Entry.unpack(row).payload == {"n": 3}  # type: ignore[union-attr]
    older = Entry.unpack(row[:10])  # stored before the message was kept
    assert older is not None
    assert older.payload is None
    items = rearm("timer/a", {"tick": row, "old": row[:10]}, 500, 256 * 1024)
    assert [(i.target, i.due_ms) for i in items] == [("timer/a", 1_000)]  # "old" cannot be
