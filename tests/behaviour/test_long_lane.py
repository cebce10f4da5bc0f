"""The long-work lane: work that does not fit a limited budget (a Lambda invocation) goes to
workers without a time limit, in order, each message applied once; the actor comes back to
the ordinary lane when its mailbox is empty. On fakeredis, a redis-server and a cluster."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, Budget, ConfigError, Context, ManualClock
from actor_system.runtime import DrainReport


class Log(BaseModel):
    log: list[str] = Field(default_factory=list)


class Note(BaseModel):
    text: str


class Crunch(BaseModel):
    text: str
    seconds: float = 0.0


FAILS: dict[str, int] = {}


def lane_types(name: str) -> tuple[ActorType[Log], ActorType[Log]]:
    """A type whose every message is long work, and one with a single long handler."""
    heavy = ActorType(f"{name}-heavy", state=Log, long_work=True)

    @heavy.handler
    def note(ctx: Context[Log], msg: Note) -> None:
        ctx.state.log.append(msg.text)

    mixed = ActorType(f"{name}-mixed", state=Log)

    @mixed.handler
    def quick(ctx: Context[Log], msg: Note) -> None:
        ctx.state.log.append(msg.text)

    @mixed.handler(long_work=True)
    def crunch(ctx: Context[Log], msg: Crunch) -> None:
        if FAILS.get(msg.text, 0) > 0:
            FAILS[msg.text] -= 1
            raise RuntimeError("flaky")
        time.sleep(msg.seconds)
        ctx.state.log.append(f"crunched {msg.text}")

    return heavy, mixed


def lambda_round(system: ActorSystem, clock: ManualClock) -> None:
    """One drain round on a limited budget, as a Lambda invocation runs it."""
    system.runtime.round(Budget(clock.now() + 60, clock=clock))


def test_a_long_work_type_runs_only_in_the_long_lane(url: str, clock: ManualClock) -> None:
    heavy, _ = lane_types("t1")
    system = ActorSystem.from_url(url, actors=[heavy], clock=clock)
    ref = heavy.ref("a")
    for text in ("one", "two"):
        system.send(ref, Note(text=text))
    lambda_round(system, clock)
    assert system.state(ref).log == []  # handed over unrun
    assert system.stats()["long_lane_actors"] == 1
    assert system.run_until_idle().messages == 0  # an ordinary drain does not take it
    report = system.run_until_idle(lane="long")
    assert report.messages == 2
    assert system.state(ref).log == ["one", "two"]
    assert system.stats()["long_lane_actors"] == 0
    system.close()


def test_a_long_handler_moves_its_message_and_those_after_it_in_order(
    url: str, clock: ManualClock
) -> None:
    _, mixed = lane_types("t2")
    system = ActorSystem.from_url(url, actors=[mixed], clock=clock)
    ref = mixed.ref("m")
    system.send(ref, Note(text="before"))
    system.send(ref, Crunch(text="big"))
    system.send(ref, Note(text="after"))
    lambda_round(system, clock)
    assert system.state(ref).log == ["before"]  # what came before the long one committed
    system.send(ref, Note(text="later"))  # arrives while the actor is in the lane
    assert system.run_until_idle().messages == 0
    assert system.state(ref).log == ["before"]
    assert system.run_until_idle(lane="long").messages == 3
    assert system.state(ref).log == ["before", "crunched big", "after", "later"]
    # Back in the ordinary lane: quick messages run in any drain again.
    system.send(ref, Note(text="quick"))
    assert system.run_until_idle().messages == 1
    assert system.stats()["long_lane_actors"] == 0
    system.close()


def test_a_retry_in_the_long_lane_stays_there_until_its_backoff_ends(
    url: str, clock: ManualClock
) -> None:
    _, mixed = lane_types("t3")
    FAILS["retried"] = 1
    system = ActorSystem.from_url(url, actors=[mixed], clock=clock)
    ref = mixed.ref("r")
    system.send(ref, Crunch(text="retried"))
    lambda_round(system, clock)
    report = system.run_until_idle(lane="long")
    assert report.retries == 1
    assert system.state(ref).log == []
    assert system.run_until_idle().messages == 0  # resting in the lane, not ordinary work
    assert system.run_until_idle(lane="long").messages == 0  # its backoff has not ended
    clock.advance(10)
    assert system.run_until_idle().messages == 0
    assert system.run_until_idle(lane="long").messages == 1
    assert system.state(ref).log == ["crunched retried"]
    system.close()


def test_a_handler_interrupted_long_after_times_goes_to_the_long_lane(url: str) -> None:
    """The guard interrupts a handler at the end of a limited budget; at the second
    interruption the message goes to the lane instead of the dead letters (max_attempts 2),
    where it runs to its end once."""
    slow = ActorType("t4-slow", state=Log)

    @slow.handler
    def crunch(ctx: Context[Log], msg: Crunch) -> None:
        time.sleep(msg.seconds)
        ctx.state.log.append(msg.text)

    system = ActorSystem.from_url(url, actors=[slow], long_after=2, max_attempts=2)
    ref = slow.ref("s")
    system.send(ref, Crunch(text="big", seconds=1.5))
    first = system.worker(budget=Budget.seconds(0.4)).run()
    assert (first.interrupted, first.moved) == (1, 0)
    second = system.worker(budget=Budget.seconds(0.4)).run()
    assert (second.interrupted, second.moved) == (1, 1)
    assert system.dead_letters() == []
    assert system.stats()["long_lane_actors"] == 1
    report = system.run_until_idle(lane="long")
    assert report.messages == 1
    assert system.state(ref).log == ["big"]
    system.close()


def test_without_long_after_an_interrupted_handler_is_dead_lettered_as_before(url: str) -> None:
    slow = ActorType("t5-slow", state=Log)

    @slow.handler
    def crunch(ctx: Context[Log], msg: Crunch) -> None:
        time.sleep(msg.seconds)

    system = ActorSystem.from_url(url, actors=[slow], max_attempts=2)
    system.send(slow.ref("s"), Crunch(text="big", seconds=1.5))
    for _ in range(2):
        system.worker(budget=Budget.seconds(0.4)).run()
    [dead] = system.dead_letters()
    assert "interrupted 2 times" in dead.reason
    assert system.stats()["long_lane_actors"] == 0
    system.close()


def test_one_launch_for_a_burst_and_none_while_a_worker_runs(url: str) -> None:
    system = ActorSystem.from_url(url, actors=[])
    backend = system.backend
    now = int(time.time() * 1000)
    assert backend.claim_launch(60_000, now)
    assert not any(backend.claim_launch(60_000, now) for _ in range(20))  # the burst's rest
    backend.lane_present("w1", 5_000, now)  # the started worker came up
    assert not backend.claim_launch(60_000, now)
    backend.lane_present("w2", 5_000, now)  # and another
    backend.lane_present("w1", 0, now)  # the first ends: the second still runs
    assert not backend.claim_launch(60_000, now)
    assert backend.claim_launch(60_000, now + 6_000)  # the second stopped renewing (killed)
    backend.lane_present("w2", 5_000, now)
    backend.lane_present("w2", 0, now)  # all ended: the next burst starts another at once
    assert backend.claim_launch(60_000, now)
    system.close()


def test_a_long_lane_worker_ends_when_idle_and_says_so(url: str) -> None:
    heavy, _ = lane_types("t6")
    system = ActorSystem.from_url(url, actors=[heavy], poll_interval_s=0.05)
    ref = heavy.ref("w")
    system.send(ref, Note(text="x"))
    system.runtime.round(Budget.seconds(30))  # handed over
    started = time.monotonic()
    report = system.worker(lane="long", idle_exit_s=0.3).run()
    assert report.messages == 1
    assert time.monotonic() - started < 10
    assert system.state(ref).log == ["x"]
    assert system.backend.claim_launch(1_000, int(time.time() * 1000))  # its presence went
    with pytest.raises(ConfigError, match="lane="):
        system.worker(lane="longer")  # type: ignore[arg-type]
    system.close()
    with pytest.raises(ConfigError, match="long_after=6 must be at most max_attempts=5"):
        ActorSystem.from_url(url, actors=[], long_after=6)


def test_the_lane_on_every_store(make_system: Any, clock: ManualClock) -> None:
    """State in S3 and deferred messages in SQS or Scheduler move through the lane alike."""
    _, mixed = lane_types("t7")
    system = make_system(mixed)
    ref = mixed.ref("s")
    system.send(ref, Note(text="before"))
    system.send(ref, Crunch(text="big"))
    system.send(ref, Note(text="after"), delay=5)
    lambda_round(system, clock)
    assert system.state(ref).log == ["before"]
    clock.advance(6)
    assert system.run_until_idle().messages == 0  # the deferred one waits behind it
    assert system.run_until_idle(lane="long").messages == 2
    assert system.state(ref).log == ["before", "crunched big", "after"]


def test_nothing_comes_due_for_an_actor_in_the_lane(url: str, clock: ManualClock) -> None:
    """Its rest in the lane is not a due time: no wake is armed for it, stats read."""
    heavy, _ = lane_types("t8")
    system = ActorSystem.from_url(url, actors=[heavy], clock=clock)
    system.send(heavy.ref("d"), Note(text="x"))
    lambda_round(system, clock)
    assert system.stats()["long_lane_actors"] == 1
    assert system.backend.next_due_ms() is None
    assert system.stats()["next_due_ms"] is None
    system.close()


def test_delete_ends_an_actor_resting_in_the_lane(url: str, clock: ManualClock) -> None:
    _, mixed = lane_types("t9")
    system = ActorSystem.from_url(url, actors=[mixed], clock=clock)
    ref = mixed.ref("x")
    system.send(ref, Note(text="kept"))
    system.run_until_idle()
    system.send(ref, Crunch(text="big"))
    lambda_round(system, clock)
    assert system.stats()["long_lane_actors"] == 1
    assert system.delete(ref, timeout=2)  # not "busy" for good
    # The long message waits behind the ending, in the lane, and starts the actor anew.
    assert system.run_until_idle(lane="long").messages == 1
    assert system.state(ref).log == ["crunched big"]
    assert system.stats()["long_lane_actors"] == 0
    system.close()


def test_a_senders_turn_leaves_long_work_to_a_drain(url: str, clock: ManualClock) -> None:
    """send(process=...) runs the turn in the caller on a short budget: it leaves the long
    message where it is, for a drain, which moves it (and starts a worker for it)."""
    _, mixed = lane_types("t10")
    system = ActorSystem.from_url(url, actors=[mixed], clock=clock)
    ref = mixed.ref("p")
    system.send(ref, Note(text="first"), process=True)
    system.send(ref, Crunch(text="big"), process=True)
    assert system.state(ref).log == ["first"]
    assert system.stats()["long_lane_actors"] == 0  # not moved by the sender
    assert system.stats()["ready_actors"] == 1  # ready for a drain
    lambda_round(system, clock)
    assert system.stats()["long_lane_actors"] == 1
    system.close()


def test_a_handler_longer_than_the_lease_keeps_it(redis_url: str) -> None:
    """The heartbeat renews the lease while a long handler runs: a second long-work worker
    meanwhile meets a held lease, and the message is applied once."""
    _, mixed = lane_types("t11")
    first = ActorSystem.from_url(redis_url, actors=[mixed], lease_ms=600)
    second = ActorSystem.from_url(redis_url, actors=[mixed], lease_ms=600)
    ref = mixed.ref("h")
    first.send(ref, Crunch(text="slow", seconds=2.0))
    first.runtime.round(Budget.seconds(30))  # moved to the lane
    done: list[DrainReport] = []
    runner = threading.Thread(target=lambda: done.append(first.run_until_idle(lane="long")))
    runner.start()
    time.sleep(0.2)
    conflicts = 0
    while runner.is_alive():
        report = second.run_until_idle(lane="long")
        assert report.messages == 0
        conflicts += report.lease_conflicts
        time.sleep(0.1)
    runner.join()
    assert done[0].messages == 1
    assert conflicts >= 1  # it did try, 3 leases into the handler
    assert first.state(ref).log == ["crunched slow"]
    first.close()
    second.close()
