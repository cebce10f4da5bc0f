"""Actors that set, replace and forget reminders, for the reminder tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from actor_system import ActorType, Context, Retry


class Tick(BaseModel):
    n: int = 0


class Arm(BaseModel):
    """Set the reminder ``name`` (every=None and cron=None: a one-shot after ``delay``)."""

    name: str = "tick"
    n: int = 0
    delay: float | None = None
    at_s: float | None = None  # epoch seconds
    every: float | None = None
    cron: str | None = None
    tz: str = "UTC"
    times: int | None = None
    until_s: float | None = None  # epoch seconds
    jitter: float | None = None
    catchup: str = "coalesce"


class Forget(BaseModel):
    name: str = "tick"


class Plan(BaseModel):
    """What the next occurrences' handler does: fail, replace its own reminder, forget it."""

    fail_n: list[int] = []  # occurrences whose Tick.n is one of these raise
    retry_first: bool = False  # each occurrence's first attempt raises Retry(delay=5)
    replace_after: int | None = None  # after this many deliveries: every=replace_every
    replace_every: float = 0.0
    forget_after: int | None = None  # after this many deliveries: ctx.forget(own name)
    remind_in_async: bool = False


class Got(BaseModel):
    name: str
    occurrence_ms: int
    missed: int
    ran_ms: int
    n: int


class ReminderState(BaseModel):
    got: list[Got] = []
    plan: Plan = Plan()
    forgot: list[bool] = []
    plain: int = 0  # messages that came from no reminder


def arm(ctx: Context[ReminderState], msg: Arm) -> None:
    at = None if msg.at_s is None else datetime.fromtimestamp(msg.at_s, UTC)
    until = None if msg.until_s is None else datetime.fromtimestamp(msg.until_s, UTC)
    kw: dict[str, Any] = {
        "delay": msg.delay,
        "at": at,
        "every": msg.every,
        "cron": msg.cron,
        "tz": msg.tz,
        "times": msg.times,
        "until": until,
        "jitter": msg.jitter,
        "catchup": msg.catchup,
    }
    ctx.remind(msg.name, Tick(n=msg.n), **kw)


def _tick(ctx: Context[ReminderState], msg: Tick) -> None:
    if ctx.reminder is None or ctx.occurrence is None:
        ctx.state.plain += 1
        return
    plan = ctx.state.plan
    if msg.n in plan.fail_n:
        raise RuntimeError(f"occurrence {msg.n} fails")
    if plan.retry_first and ctx.attempt == 1:
        raise Retry(delay=5)
    ctx.state.got.append(
        Got(
            name=ctx.reminder,
            occurrence_ms=round(ctx.occurrence.timestamp() * 1000),
            missed=ctx.missed,
            ran_ms=round(ctx.now.timestamp() * 1000),
            n=msg.n,
        )
    )
    delivered = len(ctx.state.got)
    if plan.replace_after is not None and delivered == plan.replace_after:
        ctx.remind(ctx.reminder, Tick(n=msg.n + 1), every=plan.replace_every)
        return
    if plan.forget_after is not None and delivered == plan.forget_after:
        ctx.state.forgot.append(ctx.forget(ctx.reminder))


timer = ActorType("timer", state=ReminderState)
timer.handler(arm)
timer.handler(_tick)


@timer.handler
def forget(ctx: Context[ReminderState], msg: Forget) -> None:
    ctx.state.forgot.append(ctx.forget(msg.name))


@timer.handler
def plan(ctx: Context[ReminderState], msg: Plan) -> None:
    ctx.state.plan = msg


class ArmThenFail(BaseModel):
    """Set a reminder, then raise: the reminder goes with the rest of the failed handler."""


@timer.handler
def arm_then_fail(ctx: Context[ReminderState], msg: ArmThenFail) -> None:
    ctx.remind("doomed", Tick(), every=10)
    raise RuntimeError("failed after ctx.remind")


class AsyncArm(BaseModel):
    every: float = 5.0


async_timer = ActorType("atimer", state=ReminderState)
async_timer.handler(_tick)


@async_timer.handler
async def async_arm(ctx: Context[ReminderState], msg: AsyncArm) -> None:
    ctx.remind("tick", Tick(), every=msg.every)


idle_timer = ActorType("itimer", state=ReminderState, idle_ttl_s=5)
idle_timer.handler(arm)
idle_timer.handler(_tick)


@idle_timer.handler
def idle_forget(ctx: Context[ReminderState], msg: Forget) -> None:
    ctx.state.forgot.append(ctx.forget(msg.name))


actors = [timer, async_timer, idle_timer]


class Unreadable(BaseModel):
    """A later deploy's state of ``timer`` that no stored ReminderState validates against."""

    got: int = 0


# The same actor type name as ``timer``, as a deploy whose state model rejects what is stored.
unreadable_timer = ActorType("timer", state=Unreadable, invalid_state="dead_letter")


@unreadable_timer.handler
def _tick_unreadable(ctx: Context[Unreadable], msg: Tick) -> None:
    raise AssertionError("never runs: the state does not validate")
