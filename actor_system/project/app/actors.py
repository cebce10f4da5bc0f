"""The actors of {{service}}. An example: a counter that resets itself five minutes after
each addition, through a deferred message (no timer, no sleeping function)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from actor_system import ActorType, Context


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
    ctx.send(ctx.self, Reset(), delay=timedelta(minutes=5))


@counter.handler
def reset(ctx: Context[CounterState], msg: Reset) -> None:
    ctx.state.count = 0
    ctx.state.resets += 1


ACTORS = [counter]
