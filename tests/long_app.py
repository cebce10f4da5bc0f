"""A drain function whose jobs take longer than its invocations: the long-work lane's tests.
``ACTORS`` is what the long-work worker loads (ACTOR_SYSTEM_APP)."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, Context


class Jobs(BaseModel):
    done: list[str] = Field(default_factory=list)


class Job(BaseModel):
    tag: str
    seconds: float


job = ActorType("job", state=Jobs)


@job.handler
def work(ctx: Context[Jobs], msg: Job) -> None:
    starts = os.environ.get("LONG_APP_STARTS")
    if starts:
        with open(starts, "a") as f:  # every start, for the test to kill a worker mid-job
            f.write(f"{msg.tag} {os.getpid()}\n")
    time.sleep(msg.seconds)
    ctx.state.done.append(msg.tag)


ACTORS = [job]

if os.environ.get("ACTOR_SYSTEM_REDIS_URL"):
    system = ActorSystem.from_env(actors=ACTORS)
    handler = system.lambda_handler()
