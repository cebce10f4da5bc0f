"""Actors of the reminder crash test (importable by worker subprocesses too)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from actor_system import ActorType, Context

REMINDER = "tick"


class TickerState(BaseModel):
    armed: list[int] = Field(default_factory=list)  # epoch µs of each turn that armed it
    # One row per delivered occurrence, in the order they were applied:
    # (ctx.occurrence as epoch ms, ctx.now as epoch µs, ctx.missed).
    ticks: list[tuple[int, int, int]] = Field(default_factory=list)
    # ctx.reminder of any delivery that did not name the reminder armed here.
    strays: list[str | None] = Field(default_factory=list)


class Arm(BaseModel):
    """Set the reminder: ``Tick`` every ``every_s`` seconds, ``times`` times, all delivered."""

    every_s: float
    times: int


class Tick(BaseModel):
    pass


ticker = ActorType("ticker", state=TickerState)


def epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def epoch_us(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


@ticker.handler
def arm(ctx: Context[TickerState], msg: Arm) -> None:
    ctx.state.armed.append(epoch_us(ctx.now))
    ctx.remind(REMINDER, Tick(), every=msg.every_s, times=msg.times, catchup="all")


@ticker.handler
def tick(ctx: Context[TickerState], msg: Tick) -> None:
    if ctx.reminder != REMINDER or ctx.occurrence is None:
        ctx.state.strays.append(ctx.reminder)
        return
    ctx.state.ticks.append((epoch_ms(ctx.occurrence), epoch_us(ctx.now), ctx.missed))


actors = [ticker]
