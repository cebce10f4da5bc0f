"""Actors that end: ``ctx.delete()``, ``system.delete(ref)`` and an idle expiry per actor type
(``idle_ttl_s``), on every store. With state in S3 the object becomes a tombstone that keeps
the replay window, removed with the actor's last Redis keys two windows later."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import BaseModel, Field

from actor_system import (
    ActorBusy,
    ActorSystem,
    ActorType,
    Context,
    ManualClock,
    RetryPolicy,
)
from tests.waiting import wait_until


class Order(BaseModel):
    items: list[str] = Field(default_factory=list)
    closed: bool = False


class AddItem(BaseModel):
    item: str


class Close(BaseModel):
    notify: str = ""


class CloseThenFail(BaseModel):
    pass


class Receipt(BaseModel):
    items: list[str]


class Inbox(BaseModel):
    receipts: list[list[str]] = Field(default_factory=list)


orders = ActorType("order", state=Order, retry=RetryPolicy(max_attempts=1))
inboxes = ActorType("inbox", state=Inbox)


@orders.handler
def add_item(ctx: Context[Order], msg: AddItem) -> None:
    ctx.state.items.append(msg.item)


@orders.handler
def close(ctx: Context[Order], msg: Close) -> None:
    if msg.notify:  # sent before the delete: delivered all the same
        ctx.send(inboxes.ref(msg.notify), Receipt(items=ctx.state.items))
    ctx.delete()


@orders.handler
def close_then_fail(ctx: Context[Order], msg: CloseThenFail) -> None:
    ctx.state.closed = True
    ctx.delete()
    raise RuntimeError("the delete goes with the failed attempt")


@inboxes.handler
def receipt(ctx: Context[Inbox], msg: Receipt) -> None:
    ctx.state.receipts.append(msg.items)


def actor_keys(system: ActorSystem, key: str) -> list[str]:
    """The Redis keys of one actor, but its fence and lease (which expire seconds after its
    last turn: the fence with the lease, the lease's receipt of the commit after 5 s)."""
    client: Any = system.backend.client  # type: ignore[attr-defined]
    pattern = system.backend.keys.actor(key, "*")  # type: ignore[attr-defined]
    found = sorted(k.decode() for k in client.scan_iter(match=pattern))
    return [k for k in found if not k.endswith((":fence", ":lease"))]


def on_s3(system: ActorSystem) -> bool:
    return getattr(system.backend, "state_store", None) is not None


def s3_object(system: ActorSystem, key: str) -> Any:
    """The actor's S3 object as read back (etag None: there is none)."""
    return system.backend.state_store.read(key)  # type: ignore[attr-defined]


def purge_after_the_window(system: ActorSystem, clock: ManualClock, key: str) -> None:
    """An ended actor on S3: its tombstone (no state, its last commit kept for the replay
    window) and Redis marker stay until the purge message two windows later removes both."""
    tomb = s3_object(system, key)
    assert tomb.etag is not None
    assert tomb.state is None
    assert tomb.commits
    assert actor_keys(system, key)  # the marker and processed ids, expiring like any others
    assert system.run_until_idle().messages == 0  # the purge message is not due yet
    assert s3_object(system, key).etag == tomb.etag
    window_s = system.backend.state_store.window_ms / 1000  # type: ignore[attr-defined]
    clock.advance(2 * window_s + system.options.lease_ms / 1000 + 1)
    system.run_until_idle()
    assert system.dead_letters() == []
    assert s3_object(system, key).etag is None
    assert actor_keys(system, key) == []


def test_ctx_delete_ends_the_actor_and_what_is_queued_starts_it_anew(
    make_system: Any, clock: ManualClock
) -> None:
    system: ActorSystem = make_system(orders, inboxes)
    ref = orders.ref("o-1")
    system.send_many(
        [
            (ref, AddItem(item="book")),
            (ref, AddItem(item="pen")),
            (ref, Close(notify="alice")),
            (ref, AddItem(item="late")),  # queued behind the delete
        ]
    )
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters) == (5, 0)
    assert system.state(inboxes.ref("alice")) == Inbox(receipts=[["book", "pen"]])
    # The message behind the delete started the actor again from the defaults.
    assert system.state(ref) == Order(items=["late"])
    end = orders.ref("o-2")
    system.send_many([(end, AddItem(item="x")), (end, Close())])
    system.run_until_idle()
    assert system.raw_state(end) is None
    if on_s3(system):
        purge_after_the_window(system, clock, end.key)
        # The actor that started anew keeps its object: its purge message found no tombstone.
        assert s3_object(system, ref.key).state is not None
        assert system.state(ref) == Order(items=["late"])
    assert actor_keys(system, end.key) == []  # nothing of it stays


def test_a_delete_in_a_failed_attempt_does_not_happen(make_system: Any) -> None:
    system: ActorSystem = make_system(orders, inboxes)
    ref = orders.ref("kept")
    system.send_many([(ref, AddItem(item="a")), (ref, CloseThenFail())])
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters) == (1, 1)
    assert system.state(ref) == Order(items=["a"])  # rolled back to before the failure


def test_system_delete_ends_an_actor_under_its_lease(make_system: Any, clock: ManualClock) -> None:
    system: ActorSystem = make_system(orders, inboxes)
    ref = orders.ref("d")
    system.send(ref, AddItem(item="a"))
    system.run_until_idle()
    system.send(ref, AddItem(item="queued"))
    assert system.delete(ref) is True
    assert system.delete(ref) is False  # nothing left to delete
    assert system.raw_state(ref) is None
    assert system.run_until_idle().messages == 1  # the queued message starts it anew
    assert system.state(ref) == Order(items=["queued"])
    # A turn holding the lease: the delete waits for it, then gives up.
    token = "another-drain"
    [claim] = system.backend.begin([ref.key], token, 60_000, 0, int(clock.now() * 1000))
    assert claim is not None
    with pytest.raises(ActorBusy, match="busy"):
        system.delete(ref, timeout=0.2)
    assert system.state(ref) == Order(items=["queued"])


def test_idle_actors_of_a_type_with_idle_ttl_expire_together(url: str) -> None:
    """On the wall clock: Redis expires keys by its own time."""
    brief = ActorType("brief", state=Order, idle_ttl_s=0.5)

    @brief.handler
    def add(ctx: Context[Order], msg: AddItem) -> None:
        ctx.state.items.append(msg.item)

    system = ActorSystem.from_url(url, actors=[brief])
    idle, busy = brief.ref("idle"), brief.ref("busy")
    system.send_many([(idle, AddItem(item="a")), (busy, AddItem(item="a"))])
    system.run_until_idle()
    assert actor_keys(system, idle.key)  # state and processed ids
    client: Any = system.backend.client  # type: ignore[attr-defined]
    state_key = system.backend.keys.actor(idle.key, "state")  # type: ignore[attr-defined]
    assert 0 < client.pttl(state_key) <= 500
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # busy keeps having turns: its keys stay
        system.send(busy, AddItem(item="b"))
        system.run_until_idle()
        time.sleep(0.1)
    wait_until(lambda: actor_keys(system, idle.key) == [], timeout_s=5, what="idle keys")
    assert system.raw_state(idle) is None
    assert len(system.state(busy).items) >= 5  # type: ignore[attr-defined]
    system.close()


def test_a_purge_message_for_an_actor_without_a_tombstone_is_dropped(
    make_system: Any, clock: ManualClock
) -> None:
    """The runtime's own purge message (an S3 delete sends it) has no handler: on a store
    without the tombstone it names (state in Redis, or the actor started anew) it is done,
    never a dead letter, and the messages around it run."""
    from actor_system.envelope import purge_message

    system: ActorSystem = make_system(orders, inboxes)
    ref = orders.ref("purged")
    now_ms = round(clock.now() * 1000)
    system.send(ref, AddItem(item="before"))
    system.backend.push([purge_message(ref.key, 7, now_ms, now_ms)], now_ms)  # due now
    system.send(ref, AddItem(item="after"))
    report = system.run_until_idle()
    assert (report.messages, report.dead_letters) == (2, 0)
    assert system.state(ref) == Order(items=["before", "after"])
    assert system.dead_letters() == []
