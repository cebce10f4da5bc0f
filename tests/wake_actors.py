"""Actors of the wake and ingress tests: handlers that reply, fail and hold their lease."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from actor_system import ActorType, Context
from tests.actors import counter, logger, probe


class TallyState(BaseModel):
    total: int = 0
    seen: list[str] = Field(default_factory=list)


class Bump(BaseModel):
    n: int


class Total(BaseModel):
    total: int


class Fail(BaseModel):
    """Always raises ``why``."""

    why: str


class Hold(BaseModel):
    """Touches ``path`` (the lease is then held), sleeps ``seconds``, replies "held"."""

    path: str
    seconds: float


tally = ActorType("tally", state=TallyState)


@tally.handler
def bump(ctx: Context[TallyState], msg: Bump) -> Total:
    ctx.state.total += msg.n
    ctx.state.seen.append(ctx.message_id)
    return Total(total=ctx.state.total)


@tally.handler
def fail(ctx: Context[TallyState], msg: Fail) -> None:
    raise RuntimeError(msg.why)


@tally.handler
def hold(ctx: Context[TallyState], msg: Hold) -> str:
    Path(msg.path).touch()
    time.sleep(msg.seconds)
    return "held"


actors: list[ActorType[Any]] = [counter, logger, probe, tally]  # tests.actors' and tally
