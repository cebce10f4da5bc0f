"""Actors shared by the tests (importable by worker subprocesses too)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from actor_system import ActorType, Context, Retry


class CounterState(BaseModel):
    count: int = 0
    seen: list[str] = Field(default_factory=list)


class Add(BaseModel):
    n: int
    work_ms: float = 0.0  # simulated work, so that crash tests kill workers mid-turn


class Note(BaseModel):
    """Appends its text: the order of ``log`` is the order of delivery."""

    text: str


class Boom(BaseModel):
    times: int = 1_000_000  # fail this many attempts


class Later(BaseModel):
    delay: float


class LogState(BaseModel):
    log: list[str] = Field(default_factory=list)
    count: int = 0


counter = ActorType("counter", state=CounterState)
logger = ActorType("logger", state=LogState)


@counter.handler
def add(ctx: Context[CounterState], msg: Add) -> None:
    if msg.work_ms:
        time.sleep(msg.work_ms / 1000)
    ctx.state.count += msg.n
    ctx.state.seen.append(ctx.message_id)


@logger.handler
def note(ctx: Context[LogState], msg: Note) -> None:
    ctx.state.log.append(msg.text)


@logger.handler
def boom(ctx: Context[LogState], msg: Boom) -> None:
    ctx.state.log.append(f"boom attempt {ctx.attempt}")
    if ctx.attempt <= msg.times:
        raise RuntimeError(f"boom on attempt {ctx.attempt}")


@logger.handler
def later(ctx: Context[LogState], msg: Later) -> None:
    ctx.state.count += 1
    if ctx.attempt == 1:
        raise Retry(delay=msg.delay)
    ctx.state.log.append(f"later attempt {ctx.attempt}")


class Slow(BaseModel):
    """Touches ``path`` (so a test knows the handler is running), then sleeps."""

    path: str
    seconds: float


class Timed(BaseModel):
    due: float  # epoch seconds the sender asked for


class ProbeState(BaseModel):
    writer: int = 0
    count: int = 0
    deliveries: list[tuple[float, float]] = Field(default_factory=list)  # (due, delivered)


class Plan(BaseModel):
    """Send this actor one Timed message per delay (seconds), from inside a handler."""

    delays: list[float]


probe = ActorType("probe", state=ProbeState)


@probe.handler
def plan(ctx: Context[ProbeState], msg: Plan) -> None:
    for delay in msg.delays:
        ctx.send(ctx.self, Timed(due=ctx.now.timestamp() + delay), delay=delay)


@probe.handler
def slow(ctx: Context[ProbeState], msg: Slow) -> None:
    Path(msg.path).touch()
    time.sleep(msg.seconds)
    ctx.state.writer = os.getpid()
    ctx.state.count += 1


@probe.handler
def timed(ctx: Context[ProbeState], msg: Timed) -> None:
    ctx.state.deliveries.append((msg.due, time.time()))


actors = [counter, logger, probe]
