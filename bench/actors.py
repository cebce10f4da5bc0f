"""Actors for the benchmarks: the same trivial work as the job queues get (a counter)."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from actor_system import ActorType, Context


class Count(BaseModel):
    count: int = 0


class Inc(BaseModel):
    pass


class Lateness(BaseModel):
    samples: list[float] = Field(default_factory=list)  # delivered - due, seconds


class Due(BaseModel):
    due: float


counter = ActorType("bench-counter", state=Count)
async_counter = ActorType("bench-async-counter", state=Count)  # the same work, async def
timer = ActorType("bench-timer", state=Lateness)


@counter.handler
def inc(ctx: Context[Count], msg: Inc) -> None:
    ctx.state.count += 1


@async_counter.handler
async def inc_async(ctx: Context[Count], msg: Inc) -> None:
    ctx.state.count += 1


@timer.handler
def due(ctx: Context[Lateness], msg: Due) -> None:
    ctx.state.samples.append(time.time() - msg.due)


actors = [counter, async_counter, timer]
