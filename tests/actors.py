"""Actors shared by the tests (importable by worker subprocesses too)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from actor_system import ActorType, Context, Retry


class CounterState(BaseModel):
    count: int = 0
    seen: list[str] = Field(default_factory=list)


class Add(BaseModel):
    n: int


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
