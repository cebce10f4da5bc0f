"""S3 state when Redis loses acknowledged writes: restored from an older snapshot (a failover
to a lagging replica, AOF ``everysec`` losing its last second) or flushed altogether.

Each S3 object keeps, for every commit of the last ``replay_window`` seconds, the ids it
processed and the messages it sent; the next holder of an actor whose object is ahead of
Redis's acknowledgement drops what those commits processed and sends again what they sent.
The tests run their own redis-server so that they can restore it from a snapshot, and the
moto server for S3.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import boto3
import msgpack
import pytest
from pydantic import BaseModel

from actor_system import ActorSystem, ActorType, Context, ManualClock
from actor_system.adapters.composite import CompositeBackend
from actor_system.adapters.s3 import S3StateStore, StateObject
from actor_system.envelope import new_id
from tests.actors import Add, counter
from tests.aws import AwsResources
from tests.conftest import Snapshots

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

WINDOW_S = 60


class Forward(BaseModel):
    n: int
    to: str
    delay: float = 0.0


class ForwardState(BaseModel):
    forwarded: int = 0


relay = ActorType("fwd", state=ForwardState)


@relay.handler
def forward(ctx: Context[ForwardState], msg: Forward) -> None:
    ctx.state.forwarded += msg.n
    ctx.send(counter.ref(msg.to), Add(n=msg.n), delay=msg.delay or None)


class ForwardAndEnd(BaseModel):
    n: int
    to: str


@relay.handler
def forward_and_end(ctx: Context[ForwardState], msg: ForwardAndEnd) -> None:
    ctx.state.forwarded += msg.n
    ctx.send(counter.ref(msg.to), Add(n=msg.n))
    ctx.delete()


@pytest.fixture
def server(snapshots: Snapshots) -> Snapshots:
    return snapshots


@pytest.fixture
def systems(server: Snapshots, aws: AwsResources) -> Iterator[Any]:
    made: list[ActorSystem] = []

    def make(clock: ManualClock, **options: Any) -> ActorSystem:
        system = ActorSystem.from_url(
            server.url,
            actors=[counter, relay],
            state=f"s3://{aws.bucket}/actors?replay_window={WINDOW_S}",
            clock=clock,
            **options,
        )
        made.append(system)
        return system

    yield make
    for s in made:
        s.close()


def objects(aws: AwsResources) -> S3StateStore:
    return S3StateStore(bucket=aws.bucket, prefix="actors")


def test_redis_restored_to_before_two_relay_turns_loses_no_send(
    server: Snapshots, aws: AwsResources, systems: Any
) -> None:
    clock = ManualClock()
    system = systems(clock, batch=1)  # one message per turn: two turns, two S3 versions
    a, b = relay.ref("a"), counter.ref("b")
    system.send(a, Forward(n=1, to="b", delay=10))
    system.send(a, Forward(n=10, to="b", delay=1))
    server.client().save()  # the snapshot: A's mailbox holds both, nothing has run
    system.run_until_idle()
    clock.advance(1)
    system.run_until_idle()  # B applies the second forward; the first waits in Redis
    (second,) = system.state(b).seen  # type: ignore[attr-defined]

    server.restore()  # Redis loses both turns and B's; S3 keeps all three commits
    fresh = systems(clock, batch=1)
    report = fresh.run_until_idle()
    assert report.messages == 0  # A's inputs are back, and dropped as processed
    assert report.duplicates == 3  # A's two, then B's copy of the second forward
    clock.advance(10)
    assert fresh.run_until_idle().messages == 1  # the first forward, sent again
    state = fresh.state(b)
    assert state.count == 11  # type: ignore[attr-defined]
    assert state.seen[0] == second  # type: ignore[attr-defined]
    assert len(set(state.seen)) == 2  # type: ignore[attr-defined]
    assert fresh.state(a).forwarded == 11  # type: ignore[attr-defined]


def test_redis_restored_to_before_a_delete_keeps_it_exactly_once(
    server: Snapshots, aws: AwsResources, systems: Any
) -> None:
    """ctx.delete() on S3 leaves a tombstone that keeps the turn's commit for the window:
    a Redis that loses the delete finds its message processed and its send made again."""
    clock = ManualClock()
    system = systems(clock)
    a, b = relay.ref("ends"), counter.ref("b")
    system.send(a, Forward(n=1, to="b"))
    system.run_until_idle()
    system.send(a, ForwardAndEnd(n=10, to="b"))
    server.client().save()  # the snapshot: A has forwarded 1, the ending message is queued
    system.run_until_idle()
    assert objects(aws).read(a.key).state is None  # the tombstone
    assert system.state(b).count == 11  # type: ignore[attr-defined]

    server.restore()  # Redis loses the delete and B's turn on what it sent
    fresh = systems(clock)
    report = fresh.run_until_idle()
    # The ending message is back and dropped as processed; so is B's copy of what it sent
    # again (B's object has its turn on it).
    assert (report.messages, report.duplicates) == (0, 2)
    assert fresh.state(b).count == 11  # type: ignore[attr-defined]
    assert fresh.state(a) == ForwardState()  # ended: the defaults
    assert fresh.dead_letters() == []
    # Two windows later the purge message, sent again with the rest, removes the tombstone.
    clock.advance(2 * WINDOW_S + fresh.options.lease_ms / 1000 + 1)
    fresh.run_until_idle()
    assert objects(aws).read(a.key).etag is None
    assert fresh.state(b).count == 11  # type: ignore[attr-defined]


def test_redis_flush_after_hundreds_of_messages_applies_nothing_twice(
    server: Snapshots, aws: AwsResources, systems: Any
) -> None:
    clock = ManualClock()
    system = systems(clock)
    a, b = relay.ref("a"), counter.ref("b")
    system.send(a, Forward(n=1000, to="b"))
    system.run_until_idle()
    system.send_many([(b, Add(n=1))] * 250)  # more than the 200 ids the old format kept
    system.run_until_idle()
    assert system.state(b).count == 1250  # type: ignore[attr-defined]

    server.client().flushall()
    system.send(a, Forward(n=1, to="b"))
    report = system.run_until_idle()
    state = system.state(b)
    assert state.count == 1251  # type: ignore[attr-defined]
    assert len(state.seen) == len(set(state.seen)) == 252  # type: ignore[attr-defined]
    assert report.messages == 2  # A's new message, then B applies only the new forward
    assert report.duplicates == 1  # B drops the forward A sent again


def test_lost_marker_on_an_old_object_sends_nothing_again(
    server: Snapshots, aws: AwsResources, systems: Any
) -> None:
    clock = ManualClock()
    system = systems(clock)
    a, b = relay.ref("a"), counter.ref("b")
    system.send(a, Forward(n=1000, to="b"))
    system.run_until_idle()
    clock.advance(3 * WINDOW_S)
    system.send_many([(b, Add(n=1))] * 250)  # B's later commits forget the old id
    system.run_until_idle()
    assert system.state(b).count == 1250  # type: ignore[attr-defined]

    # What the keys' expiry does to idle actors: A's acknowledged version and B's done set
    # go; A's S3 object, one version ahead of nothing, still holds its old outbox.
    client = server.client()
    keys = system.backend.keys  # type: ignore[attr-defined]
    assert (
        client.delete(keys.actor("fwd/a", "state")) + client.delete(keys.actor("counter/b", "done"))
        == 2
    )
    system.send(a, Forward(n=1, to="b"))
    report = system.run_until_idle()
    assert system.state(b).count == 1251  # type: ignore[attr-defined]
    assert (report.messages, report.duplicates) == (2, 0)


@pytest.mark.parametrize("age_s", [0, 3 * WINDOW_S], ids=["fresh", "old"])
def test_version_1_objects_still_load(
    server: Snapshots, aws: AwsResources, systems: Any, age_s: int
) -> None:
    clock = ManualClock(time.time())  # S3's LastModified dates a version-1 object's commit
    system = systems(clock)
    ref, dest = counter.ref("v1"), counter.ref("dest")
    processed = new_id(ref.key, "processed-before-the-upgrade")
    sent = system.registry.prepare(dest, Add(n=7), now_s=clock.now())
    legacy = {
        "f": 1,
        "version": 3,
        "state": msgpack.packb({"count": 5, "seen": [processed]}),
        "done": [bytes.fromhex(processed)],
        "outbox": [[sent.target, sent.id, sent.due_ms, sent.entry]],
        "cancels": [],
    }
    body = msgpack.packb(legacy, use_bin_type=True)
    boto3.client("s3").put_object(Bucket=aws.bucket, Key="actors/counter/v1", Body=body)
    assert system.state(ref).count == 5  # type: ignore[attr-defined]

    clock.advance(age_s)
    system.send(ref, Add(n=100), idempotency_key="processed-before-the-upgrade")
    system.send(ref, Add(n=1))
    report = system.run_until_idle()
    assert report.duplicates == 1
    assert system.state(ref).count == 6  # type: ignore[attr-defined]
    # Redis never acknowledged version 3: its outbox is sent again while it is recent.
    assert system.state(dest).count == (7 if age_s == 0 else 0)  # type: ignore[attr-defined]
    obj = objects(aws).read("counter/v1")
    assert obj.version == 4
    assert (processed in obj.done) == (age_s == 0)  # ids are kept for two windows
    raw = boto3.client("s3").get_object(Bucket=aws.bucket, Key="actors/counter/v1")
    assert msgpack.unpackb(raw["Body"].read())["f"] == 2


@pytest.mark.parametrize("recover_first", [False, True], ids=["turn", "recover-then-turn"])
def test_crash_before_the_redis_commit_is_delivered_long_after(
    server: Snapshots,
    aws: AwsResources,
    systems: Any,
    monkeypatch: pytest.MonkeyPatch,
    recover_first: bool,
) -> None:
    """The last commit's outbox is sent whatever its age when the messages it processed come
    back from the dead holder's in-flight list: Redis certainly never had that commit."""
    from actor_system.adapters.redis.backend import RedisBackend

    clock = ManualClock()
    system = systems(clock, lease_ms=1_000)
    system.send(relay.ref("r"), Forward(n=1, to="dest"))
    redis_commit = RedisBackend.commit

    def die(self: RedisBackend, commits: Any, now_ms: int) -> Any:
        monkeypatch.setattr(RedisBackend, "commit", redis_commit)
        raise SystemExit("killed between the S3 PUT and the Redis commit")

    monkeypatch.setattr(RedisBackend, "commit", die)
    with pytest.raises(SystemExit):
        system.run_until_idle()
    clock.advance(10 * WINDOW_S)  # nobody ran for ten minutes
    fresh = systems(clock)
    if recover_first:  # moves the in-flight message back but leaves the marker behind
        assert fresh.backend.recover(int(clock.now() * 1000)) == 0
    report = fresh.run_until_idle()
    expected = (0 if recover_first else 1, 1, 1)  # recovered, dropped, applied
    assert (report.recovered, report.duplicates, report.messages) == expected
    assert fresh.state(counter.ref("dest")).count == 1  # type: ignore[attr-defined]


def test_recover_after_a_total_loss_resends_recent_outboxes(
    server: Snapshots, aws: AwsResources, systems: Any
) -> None:
    clock = ManualClock()
    system = systems(clock)
    b = counter.ref("b")
    for i in range(3):
        system.send(relay.ref(f"old{i}"), Forward(n=10**i, to="b", delay=30))
    system.run_until_idle()
    clock.advance(3 * WINDOW_S)
    system.send(relay.ref("recent"), Forward(n=1000, to="b", delay=2 * WINDOW_S))
    system.run_until_idle()  # B applies the old forwards; the recent one waits in Redis
    assert system.state(b).count == 111  # type: ignore[attr-defined]
    clock.advance(WINDOW_S / 2)

    # Every deferred forward is gone and no mailbox holds anything: no chain restarts.
    server.client().flushall()
    backend = system.backend
    assert isinstance(backend, CompositeBackend)
    assert backend.recover(int(clock.now() * 1000)) == 1  # the send within the window
    assert backend.recover(int(clock.now() * 1000)) == 0  # acknowledged now
    clock.advance(2 * WINDOW_S)
    report = system.run_until_idle()
    assert (report.messages, report.duplicates) == (1, 0)
    assert system.state(b).count == 1111  # type: ignore[attr-defined]


def test_retention_keeps_outboxes_for_the_window_and_ids_for_two() -> None:
    from actor_system.adapters.s3 import Retained, StateObject
    from actor_system.envelope import Outgoing

    window_ms = WINDOW_S * 1000
    obj = StateObject()
    for at_s in (0, 45, 110, 150):
        sent = Outgoing(new_id("to", str(at_s)), "counter/x", b"entry", None)
        done = [new_id("from", str(at_s))]
        new = Retained(obj.version + 1, at_s * 1000, done, [sent], [sent.id])
        obj = obj.successor(b"state", new, window_ms)
    # At 150 s: the commit at 0 s is gone, the one at 45 s keeps only its ids.
    assert [(c.version, len(c.done), len(c.outbox), len(c.cancels)) for c in obj.commits] == [
        (2, 1, 0, 0),
        (3, 1, 1, 1),
        (4, 1, 1, 1),
    ]
    again = StateObject.decode(obj.encode(), "etag", "here", 0)
    assert again.commits == obj.commits
    assert again.done == obj.done
    assert again.version == 4


def test_replay_window_comes_from_the_url() -> None:
    from actor_system.errors import ConfigError

    assert S3StateStore.from_url("s3://b/p").window_ms == 60_000
    store = S3StateStore.from_url("s3://b/p/q?replay_window=2.5")
    assert (store.prefix, store.window_ms) == ("p/q", 2_500)
    with pytest.raises(ConfigError, match=r"replay_window='0' in .* must be a number > 0"):
        S3StateStore.from_url("s3://b/p?replay_window=0")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) window"):
        S3StateStore.from_url("s3://b/p?window=5")


def test_the_recover_command_resends_after_a_flush(
    server: Snapshots, aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from actor_system.cli import main

    state_url = f"s3://{aws.bucket}/actors?replay_window={WINDOW_S}"
    system = ActorSystem.from_url(server.url, actors=[counter, relay], state=state_url)
    b = counter.ref("cli-b")
    system.send(relay.ref("cli"), Forward(n=7, to="cli-b", delay=600))
    system.run_until_idle()  # the forward waits in the sorted set, 10 minutes ahead
    server.client().flushall()  # ... and is gone with everything else
    monkeypatch.setenv("ACTOR_SYSTEM_STATE_URL", state_url)
    runner = CliRunner()
    got = runner.invoke(main, ["--json", "--url", server.url, "recover"])
    assert got.exit_code == 0, got.output
    assert '"actors_resent": 1' in got.output
    assert [d.actor for d in system.deferred()] == ["counter/cli-b"]
    assert system.state(b).count == 0  # type: ignore[attr-defined]
    plain = runner.invoke(main, ["--json", "--url", server.url, "recover"])
    assert '"actors_resent": 0' in plain.output  # acknowledged now: nothing more to send


def test_remove_takes_only_the_object_it_read(aws: AwsResources) -> None:
    store = objects(aws)
    first = store.write("fwd/x", StateObject(b"state", 1), None)
    second = store.write("fwd/x", StateObject(b"newer", 2), first)
    assert store.remove("fwd/x", first) is False  # written again since: it stays
    assert store.read("fwd/x").state == b"newer"
    assert store.remove("fwd/x", second) is True
    assert store.read("fwd/x").etag is None


def test_redis_restored_to_before_an_occurrence_keeps_the_reminder_exactly_once(
    server: Snapshots, aws: AwsResources
) -> None:
    """A reminder's schedule lives in the S3 object: a Redis that loses the turn of an
    occurrence (and the next occurrence it armed) gets the occurrence back, drops it as
    processed, and the next one is sent again from the object's commits."""
    from tests.reminder_actors import Arm, ReminderState, timer

    clock = ManualClock()
    make = _reminder_systems(server, aws, clock)
    system = make()
    ref = timer.ref("remind")
    t0 = round(clock.now() * 1000)
    system.send(ref, Arm(every=10))
    system.run_until_idle()
    clock.advance(10)
    system.run_until_idle()  # the first occurrence; the second is armed
    server.client().save()  # the snapshot: the second occurrence pending
    clock.advance(10)
    system.run_until_idle()  # the second occurrence; the third is armed
    system.close()

    server.restore()  # Redis loses the second occurrence's turn and the third occurrence
    fresh = make()
    report = fresh.run_until_idle()
    assert (report.messages, report.duplicates) == (0, 1)  # the second, dropped
    clock.advance(10)
    assert fresh.run_until_idle().messages == 1  # the third, sent again by the replay
    clock.advance(10)
    assert fresh.run_until_idle().messages == 1
    state = fresh.state(ref)
    assert isinstance(state, ReminderState)
    assert [g.occurrence_ms - t0 for g in state.got] == [10_000, 20_000, 30_000, 40_000]
    [r] = fresh.reminders(ref)
    assert r.due.timestamp() * 1000 == t0 + 50_000
    fresh.close()


def test_a_redis_that_lost_everything_gets_the_reminders_back_from_s3(
    server: Snapshots, aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An occurrence armed long before Redis lost everything is past the replay window: no
    commit sends it again, and ``recover`` alone cannot. ``recover --reminders`` arms every
    schedule's pending occurrence again from the objects, and arming one twice delivers it
    once."""
    from click.testing import CliRunner

    from actor_system.cli import main
    from tests.reminder_actors import Arm, ReminderState, timer

    clock = ManualClock()
    make = _reminder_systems(server, aws, clock)
    state_url = f"s3://{aws.bucket}/actors?replay_window={WINDOW_S}"
    system = make()
    ref = timer.ref("remind-flushed")
    t0 = round(clock.now() * 1000)
    system.send(ref, Arm(every=3600))
    system.run_until_idle()
    system.close()
    clock.advance(3000)  # 50 minutes: the arming commit is far outside the replay window
    server.client().flushall()

    fresh = make()
    assert fresh.recover() == 0  # no commit within the window to send again
    clock.advance(600)
    assert fresh.run_until_idle().messages == 0  # the occurrence went with Redis
    monkeypatch.setenv("ACTOR_SYSTEM_STATE_URL", state_url)
    runner = CliRunner()
    got = runner.invoke(main, ["--json", "--url", server.url, "recover", "--reminders"])
    assert got.exit_code == 0, got.output
    assert '"reminders_rearmed": 1' in got.output
    stats = fresh.stats()  # the index that went with Redis is back too
    assert (stats["reminders"], stats["actors_with_reminders"]) == (1, 1)
    assert fresh.rearm_reminders() == 1  # the same occurrence again: one message
    assert fresh.stats()["reminders"] == 1
    assert fresh.run_until_idle().messages == 1
    assert fresh.rearm_reminders() == 1  # the next one, pending already: still one
    clock.advance(3600)
    assert fresh.run_until_idle().messages == 1
    state = fresh.state(ref)
    assert isinstance(state, ReminderState)
    assert [g.occurrence_ms - t0 for g in state.got] == [3600_000, 7200_000]
    [r] = fresh.reminders(ref)
    assert r.due.timestamp() * 1000 == t0 + 3 * 3600_000
    fresh.close()


def _reminder_systems(server: Snapshots, aws: AwsResources, clock: ManualClock) -> Any:
    """A maker of systems of the reminder test actors on ``server``, with S3 state."""
    from tests.reminder_actors import timer

    state_url = f"s3://{aws.bucket}/actors?replay_window={WINDOW_S}"

    def make() -> ActorSystem:
        return ActorSystem.from_url(server.url, actors=[timer], state=state_url, clock=clock)

    return make


def test_redis_restored_to_before_two_occurrences_keeps_the_schedule(
    server: Snapshots, aws: AwsResources
) -> None:
    """Two turns each armed the reminder's next occurrence under its one member; Redis lost
    both. The replay arms the schedule the object holds (the later arm), not the first one
    it finds, so the reminder goes on, each occurrence once."""
    from tests.reminder_actors import Arm, ReminderState, timer

    clock = ManualClock()
    make = _reminder_systems(server, aws, clock)
    system = make()
    ref = timer.ref("remind-twice")
    t0 = round(clock.now() * 1000)
    system.send(ref, Arm(every=10))
    system.run_until_idle()
    server.client().save()  # the first occurrence pending
    for _ in range(2):
        clock.advance(10)
        system.run_until_idle()
    system.close()

    server.restore()
    fresh = make()
    fresh.run_until_idle()
    for _ in range(3):
        clock.advance(10)
        fresh.run_until_idle()
    state = fresh.state(ref)
    assert isinstance(state, ReminderState)
    assert [g.occurrence_ms - t0 for g in state.got] == [10_000, 20_000, 30_000, 40_000, 50_000]
    fresh.close()


def test_rearming_leaves_a_later_arm_of_a_live_turn_alone(
    server: Snapshots, aws: AwsResources
) -> None:
    """recover --reminders arms a member only where there is none: a turn that armed the
    next occurrence after the object was read keeps it."""
    from tests.reminder_actors import Arm, timer

    clock = ManualClock()
    make = _reminder_systems(server, aws, clock)
    system = make()
    ref = timer.ref("remind-live")
    system.send(ref, Arm(every=10))
    system.run_until_idle()
    backend: Any = system.backend
    keys = backend.redis.keys
    due_key, member = keys.due(keys.part_of(ref.key)), f"~{ref.key}\ntick"
    [(_, score)] = server.client().zrange(due_key, 0, -1, withscores=True)
    server.client().zadd(due_key, {member: score + 10_000})  # as a live turn would
    assert system.rearm_reminders() == 1
    assert server.client().zscore(due_key, member) == score + 10_000
    system.close()
