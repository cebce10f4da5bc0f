"""Idle actors leave no keys in Redis: only state that differs from the defaults stays."""

from __future__ import annotations

import time

import pytest
import redis

from actor_system import ActorSystem, ActorType, Context
from tests.behaviour.test_hardening import Put, Tally

pytestmark = pytest.mark.integration

order = ActorType("order", state=Tally, done_window_s=1.0)


@order.handler
def put(ctx: Context[Tally], msg: Put) -> None:
    ctx.state.total += msg.n


def actor_keys(client: redis.Redis) -> list[str]:
    found = client.scan_iter(match="as:{p*}:order/*:*", count=1000)
    return sorted(k.decode() for k in found)


def test_two_hundred_idle_actors_leave_only_the_state_that_is_not_default(
    redis_url: str,
) -> None:
    system = ActorSystem.from_url(redis_url, actors=[order], lease_ms=500)
    client = redis.Redis.from_url(redis_url)
    # An actor per order: 190 end where they started (paid, then settled), 10 keep a total.
    for i in range(200):
        ref = order.ref(f"o{i}")
        system.send(ref, Put(n=5), idempotency_key=f"pay-{i}")
        if i >= 10:
            system.send(ref, Put(n=-5))
    system.run_until_idle()
    assert len(actor_keys(client)) > 200  # state, done sets and fences while busy
    deadline = time.monotonic() + 30
    while len(actor_keys(client)) > 10:
        assert time.monotonic() < deadline, f"keys left: {actor_keys(client)[:20]}"
        time.sleep(0.05)
    keys = system.backend.keys  # type: ignore[attr-defined]
    assert actor_keys(client) == sorted(keys.actor(f"order/o{i}", "state") for i in range(10))
    assert [system.state(order.ref(f"o{i}")).total for i in (0, 9, 10, 199)] == [5, 5, 0, 0]
    # The dedup window has passed with the keys: a late copy of a payment applies again,
    # as documented (idempotency keys dedup within done_window_s).
    system.send(order.ref("o0"), Put(n=5), idempotency_key="pay-0")
    system.run_until_idle()
    assert system.state(order.ref("o0")).total == 10
