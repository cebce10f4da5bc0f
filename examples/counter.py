"""A counter actor: immediate messages, and a deferred reset five minutes later.

Run: python -m examples.counter [--redis-url redis://localhost:6379/0]
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from actor_system import ActorSystem, ActorType, Context, ManualClock
from examples._cli import redis_url


class CounterState(BaseModel):
    count: int = 0
    resets: int = 0


class Add(BaseModel):
    n: int


class Reset(BaseModel):
    pass


counter = ActorType("counter", state=CounterState)


@counter.handler
def add(ctx: Context[CounterState], msg: Add) -> None:
    ctx.state.count += msg.n
    # Deferred: delivered by the drain loop once due, never by an in-process timer.
    ctx.send(ctx.self, Reset(), delay=timedelta(minutes=5))


@counter.handler
def reset(ctx: Context[CounterState], msg: Reset) -> None:
    ctx.state.count = 0
    ctx.state.resets += 1


def main() -> None:
    clock = ManualClock()  # five minutes pass in an instant
    system = ActorSystem.from_url(redis_url(__doc__ or ""), actors=[counter], clock=clock)
    alice = counter.ref("alice")
    for n in (1, 2, 3):
        system.send(alice, Add(n=n))
    report = system.run_until_idle()
    print(f"after 3 adds: {system.state(alice)}  ({report.messages} messages, {report.turns} turn)")
    clock.advance(299)
    system.run_until_idle()
    print(f"after 4m59s:  {system.state(alice)}  (reset not due yet)")
    clock.advance(1)
    report = system.run_until_idle()
    print(
        f"after 5m:     {system.state(alice)}  (deferred resets delivered: "
        f"{report.messages} messages)"
    )
    system.close()


if __name__ == "__main__":
    main()
