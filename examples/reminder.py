"""Reminders: deferred messages delivered by a live drain loop, and one cancelled.

Run: python -m examples.reminder [--redis-url redis://localhost:6379/0]
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, Budget, Context
from examples._cli import redis_url


class ReminderState(BaseModel):
    scheduled: dict[str, str] = Field(default_factory=dict)  # text -> deferred message id
    fired: list[str] = Field(default_factory=list)


class Schedule(BaseModel):
    text: str
    in_s: float


class Cancel(BaseModel):
    text: str


class Remind(BaseModel):
    text: str
    due: float  # epoch seconds, to show how late the drain loop delivered it


reminders = ActorType("reminders", state=ReminderState)


@reminders.handler
def schedule(ctx: Context[ReminderState], msg: Schedule) -> None:
    due = ctx.now.timestamp() + msg.in_s
    mid = ctx.send(ctx.self, Remind(text=msg.text, due=due), delay=msg.in_s)
    ctx.state.scheduled[msg.text] = mid


@reminders.handler
def cancel(ctx: Context[ReminderState], msg: Cancel) -> None:
    mid = ctx.state.scheduled.pop(msg.text, None)
    if mid is not None:
        ctx.cancel(mid)  # takes effect when this turn commits


@reminders.handler
def remind(ctx: Context[ReminderState], msg: Remind) -> None:
    ctx.state.scheduled.pop(msg.text, None)
    ctx.state.fired.append(msg.text)
    # Printing is a side effect outside the state: at-least-once, like any HTTP call.
    late_ms = (time.time() - msg.due) * 1000
    print(f"  reminder {msg.text!r} fired {late_ms:.1f} ms after its due time")


def main() -> None:
    system = ActorSystem.from_url(redis_url(__doc__ or ""), actors=[reminders])
    me = reminders.ref("me")
    system.send(me, Schedule(text="stretch", in_s=0.5))
    system.send(me, Schedule(text="standup", in_s=1.0))
    system.send(me, Schedule(text="tea", in_s=1.5))
    system.send(me, Cancel(text="standup"))
    print("scheduled 'stretch' (0.5 s), 'standup' (1.0 s), 'tea' (1.5 s); cancelled 'standup'")
    # A worker drains for two seconds: no timer, the loop waits for the next due message.
    report = system.worker(budget=Budget.seconds(2.0)).run()
    state = system.state(me)
    print(
        f"fired: {state.fired}  still scheduled: {list(state.scheduled)}  "  # type: ignore[attr-defined]
        f"({report.messages} messages in {report.turns} turns)"
    )
    system.close()


if __name__ == "__main__":
    main()
