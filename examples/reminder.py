"""Reminders: named deferred messages, one forgotten, and one that repeats on a grid.

Run: python -m examples.reminder [--redis-url redis://localhost:6379/0]
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, Budget, Context
from examples._cli import redis_url


class ReminderState(BaseModel):
    fired: list[str] = Field(default_factory=list)
    polls: int = 0


class Schedule(BaseModel):
    text: str
    in_s: float


class Cancel(BaseModel):
    text: str


class Remind(BaseModel):
    text: str


class Poll(BaseModel):
    pass


reminders = ActorType("reminders", state=ReminderState)


@reminders.handler
def schedule(ctx: Context[ReminderState], msg: Schedule) -> None:
    # Named by its text: scheduling the same text again replaces it, no id to keep.
    ctx.remind(msg.text, Remind(text=msg.text), delay=msg.in_s)
    if msg.text == "stretch":
        # A reminder that repeats: every 0.4 s on a fixed grid, three times.
        ctx.remind("poll", Poll(), every=0.4, times=3)


@reminders.handler
def cancel(ctx: Context[ReminderState], msg: Cancel) -> None:
    ctx.forget(msg.text)  # takes effect when this turn commits


@reminders.handler
def remind(ctx: Context[ReminderState], msg: Remind) -> None:
    ctx.state.fired.append(msg.text)
    # Printing is a side effect outside the state: at-least-once, like any HTTP call.
    assert ctx.occurrence is not None
    late_ms = (time.time() - ctx.occurrence.timestamp()) * 1000
    print(f"  reminder {msg.text!r} fired {late_ms:.1f} ms after its due time")


@reminders.handler
def poll(ctx: Context[ReminderState], msg: Poll) -> None:
    ctx.state.polls += 1
    assert ctx.occurrence is not None
    late_ms = (time.time() - ctx.occurrence.timestamp()) * 1000
    print(f"  poll {ctx.state.polls} of 3 fired {late_ms:.1f} ms after its grid time")


def main() -> None:
    system = ActorSystem.from_url(redis_url(__doc__ or ""), actors=[reminders])
    me = reminders.ref("me")
    system.send(me, Schedule(text="stretch", in_s=0.5))
    system.send(me, Schedule(text="standup", in_s=1.0))
    system.send(me, Schedule(text="tea", in_s=1.5))
    system.send(me, Cancel(text="standup"))
    print("reminders 'stretch' (0.5 s), 'standup' (1.0 s), 'tea' (1.5 s), 'poll' (every 0.4 s,")
    print("3 times); forgot 'standup'")
    # A worker drains for two seconds: no timer, the loop waits for the next due message.
    report = system.worker(budget=Budget.seconds(2.0)).run()
    state = system.state(me)
    left = [r.name for r in system.reminders(me)]
    print(
        f"fired: {state.fired}  polls: {state.polls}  reminders left: {left}  "  # type: ignore[attr-defined]
        f"({report.messages} messages in {report.turns} turns)"
    )
    system.close()


if __name__ == "__main__":
    main()
