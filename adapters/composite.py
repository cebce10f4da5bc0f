"""Redis for mailboxes and leases, with state in S3 and/or deferred messages in SQS or
EventBridge Scheduler: ``ActorSystem.from_url(redis_url, state="s3://...", delay="sqs://...")``.

S3 state, one turn: Redis ``begin`` (lease, fence, claim) then one GET of the actor's object;
handlers run; one conditional PUT (state, processed ids, outbox) then Redis ``commit``, which
delivers the outbox, records the ids and stores the S3 version it acknowledges. A writer that
dies between the PUT and the Redis commit, or a Redis that loses acknowledged writes (or
whose acknowledgement expired), leaves the object ahead of that acknowledgement: the next
holder drops the messages the object's retained commits processed and delivers again what
they sent within the replay window (``adapters/s3.py``), so nothing is lost and nothing
applies twice. ``recover`` does the same for every recent object at once, for the actors no
message will wake after Redis lost everything.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from actor_system import reminders, stored_state
from actor_system.adapters.aws import AwsError
from actor_system.adapters.delay import Held, SqsDelayQueue, deferred_in
from actor_system.adapters.redis.backend import RedisBackend
from actor_system.envelope import ID_LENGTH, Outgoing, purge_message, purge_version
from actor_system.errors import DecodeError, InvalidSend, MessageTooLarge
from actor_system.ports import (
    DONE,
    KEEP,
    Claim,
    Commit,
    Outcome,
    Retained,
    StateObject,
    StateObjectTooNew,
    WriteConflict,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from actor_system.adapters.redis.keys import Keys
    from actor_system.options import Options
    from actor_system.ports import Clock, ExternalDelay, StateStore

log = logging.getLogger("actor_system")

T = TypeVar("T")
R = TypeVar("R")

_MARKER = b"s3:"  # Redis keeps the S3 version it acknowledged as the actor's state
_RECOVER_CHUNK = 100  # actors per begin and commit round trip in recover
_ELSEWHERE_S = 30.0  # how long the summary reuses its count of the external delay store
_OFFLOAD_SCAN = 100  # staged messages read per shard per offload
_SWEEP_EVERY_MS = 5_000  # look for messages a crashed process staged but did not move out
_DAY_MS = 24 * 3600 * 1000
_BACK_OFF_MS = 30_000  # after an AWS error, before moving or receiving messages again
_FORGET_TURN_MS = 3_600_000  # a turn begun and never committed is forgotten after this


@dataclass(slots=True)
class _S3Turn:
    """What begin read from S3 for one turn, kept until its commit."""

    obj: StateObject | None  # None: the object is corrupt (the turn dead-letters, writes nothing)
    ahead: bool  # Redis acknowledged an older version: the commit moves the marker on
    entries: list[tuple[bytes, int]]  # as claimed from Redis
    skipped: set[int] = field(default_factory=set)  # positions already processed per S3
    resend: list[Outgoing] = field(default_factory=list)  # sent by unacknowledged commits
    recancel: list[str] = field(default_factory=list)  # cancelled by them
    rereply: list[tuple[str, bytes]] = field(default_factory=list)  # their replies
    began_ms: int = 0  # when begin read it: a turn never committed is forgotten after an hour
    purge: int | None = None  # a purge message for this tombstone version was claimed
    purged: bool = False  # the commit ends the actor in Redis: remove its object after
    missing: bool = False  # its commit came without a begin here: given back, not written
    # Replayed commits armed or cancelled reminders' members: one member stands for every
    # occurrence of a name, so they are not replayed one by one; the schedule this commit
    # writes is armed whole instead (its last word, whatever order they came in).
    rearm: bool = False

    @property
    def etag(self) -> str | None:
        return self.obj.etag if self.obj is not None else None

    def replay(self, commits: Sequence[Retained]) -> None:
        """Deliver again what ``commits`` sent and cancelled, each id once."""
        sent = {o.id for o in self.resend}
        for c in commits:
            for o in c.outbox:
                if reminders.is_member(o.id):
                    self.rearm = True  # a reminder's member: armed from the schedule instead
                elif o.id not in sent:
                    sent.add(o.id)
                    self.resend.append(o)
            self.recancel += [
                x for x in c.cancels if x not in self.recancel and not reminders.is_member(x)
            ]
            self.rereply += c.replies  # Redis keeps the first reply of an id


def _acked(marker: bytes | None) -> int:
    if marker and marker.startswith(_MARKER):
        return int(marker[len(_MARKER) :])
    return 0


def _id(entry: bytes) -> str:
    return entry[:ID_LENGTH].decode("ascii", "replace")


def _unacknowledged(
    obj: StateObject, acked: int, entries: Sequence[tuple[bytes, int]], window_ms: int, now_ms: int
) -> list[Retained]:
    """The retained commits Redis did not acknowledge whose sends must be delivered again.

    Those of the last ``window_ms``: Redis may have lost their deliveries, and their receivers
    still know the ids they processed. Older ones are not sent again (their receivers may have
    forgotten, and an expired marker says nothing), except the last commit when a message it
    processed is back from a dead holder's in-flight list (attempts > 0): then its Redis
    commit never ran, so nobody received its sends, however long ago it was written.
    """
    late = [c for c in obj.commits if c.version > acked]
    recent = [c for c in late if now_ms - c.at_ms <= window_ms]
    if late and late[-1] not in recent:
        retried = {_id(e) for e, failed in entries if failed > 0}
        if not retried.isdisjoint(late[-1].done):
            recent.append(late[-1])
    return recent


class CompositeBackend:
    """The Redis backend with S3 state and/or an external delay queue around it.

    ``redis`` is the turn store: mailboxes, leases, dead letters, the Redis delay queue and,
    with S3 state, the marker of the S3 version Redis acknowledged. Every port method goes
    to it, with the S3 reads and writes of a turn and the moves to and from the external
    delay queue added around; it calls back into this backend through its ``hop`` only.
    """

    def __init__(
        self,
        *,
        client: Any = None,
        options: Options | None = None,
        blocking: bool = True,
        state: StateStore | None = None,
        delay: ExternalDelay | None = None,
        redis: RedisBackend | None = None,
    ) -> None:
        """Over a new RedisBackend of ``client``, ``options`` and ``blocking``, or over
        ``redis``, an existing one (then neither ``client`` nor ``options``), whose settings
        for the stores plugged in are set here."""
        if redis is not None and (client is not None or options is not None):
            raise TypeError("CompositeBackend takes redis= or client= and options=, not both")
        if redis is None and (client is None or options is None):
            raise TypeError("CompositeBackend needs client= and options=, or redis=")
        opts = redis.options if redis is not None else options
        assert opts is not None
        hop = self._hop if delay is not None else None
        # Cancels leave a tombstone for as long as a copy of the message may land from the
        # external queue.
        tombstone_ms = int(opts.max_delay_s * 1000) + _DAY_MS if delay is not None else 0
        # Redis keeps only the acknowledged S3 version: it may go with an idle actor's
        # other keys (an object ahead of no marker re-sends only within its window).
        state_ttl_ms = int(opts.done_window_s * 1000) if state is not None else 0
        if redis is None:
            redis = RedisBackend(
                client=client,
                options=opts,
                blocking=blocking,
                hop=hop,
                tombstone_ms=tombstone_ms,
                state_ttl_ms=state_ttl_ms,
            )
        else:
            redis.hop, redis.tombstone_ms, redis.state_ttl_ms = hop, tombstone_ms, state_ttl_ms
        self.redis = redis
        self.state_store = state
        self.delay = delay
        self._elsewhere: tuple[float, int] | None = None  # summary's count, when read
        # The S3 reads of turns begun and not yet committed, by (actor, token): several
        # callers may run turns on one backend at once (a drain, a send that processes in
        # the caller, a delete), each under its own token.
        self._turns: dict[tuple[str, str], _S3Turn] = {}
        self._turns_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._received_at = -(2**62)
        self._receive_more = False
        self._staged = True  # look once at start: a crashed process may have left some
        self._swept_at = 0
        self._offload_after = 0  # no offloading before this (back-off after an AWS error)
        self._held: list[Held] = []  # received and landed, deleted once Redis has them durably

    # -- the Redis backend's settings -----------------------------------------------------

    @property
    def client(self) -> Any:
        return self.redis.client

    @property
    def keys(self) -> Keys:
        return self.redis.keys

    @property
    def options(self) -> Options:
        return self.redis.options

    @property
    def blocking(self) -> bool:
        return self.redis.blocking

    @property
    def block_s(self) -> float:
        return self.redis.block_s

    # -- as the Redis backend does them ---------------------------------------------------

    def claim_drain(self, wake_ms: int) -> bool:
        return self.redis.claim_drain(wake_ms)

    def drop_wake(self) -> None:
        self.redis.drop_wake()

    def lease_expiry_ms(self) -> int | None:
        return self.redis.lease_expiry_ms()

    def rest(self) -> bool:
        return self.redis.rest()

    def wait_ready(self, timeout_s: float) -> bool:
        return self.redis.wait_ready(timeout_s)

    def poll_lane(self, now_ms: int, max_actors: int, lease_ms: int) -> tuple[list[str], int]:
        return self.redis.poll_lane(now_ms, max_actors, lease_ms)

    def lane_size(self) -> int:
        return self.redis.lane_size()

    def lane_present(self, worker: str, ttl_ms: int, now_ms: int) -> None:
        self.redis.lane_present(worker, ttl_ms, now_ms)

    def claim_launch(self, ttl_ms: int, now_ms: int) -> bool:
        return self.redis.claim_launch(ttl_ms, now_ms)

    def renew(self, actor: str, token: str, lease_ms: int, now_ms: int) -> bool:
        return self.redis.renew(actor, token, lease_ms, now_ms)

    def reply(self, message_id: str) -> bytes | None:
        return self.redis.reply(message_id)

    def wait_reply(self, message_id: str, timeout_s: float) -> bytes | None:
        return self.redis.wait_reply(message_id, timeout_s)

    def known_due_ms(self) -> int | None:
        return self.redis.known_due_ms()

    def next_due_ms(self) -> int | None:
        return self.redis.next_due_ms()

    def accept_deferred(self, bodies: Sequence[str | dict[str, Any]], now_ms: int) -> int:
        """Land bodies that came back from the external delay queue (or any other); far
        ones go out again for another hop (``_hop``)."""
        return self.redis.accept_deferred(bodies, now_ms)

    def land(self, items: Sequence[Outgoing], now_ms: int) -> tuple[int, int, int]:
        return self.redis.land(items, now_ms)

    def deferred(
        self, limit: int = 100, actor: str | None = None
    ) -> list[tuple[str, str, int, str]]:
        return self.redis.deferred(limit, actor)

    def reminder_actors(self, limit: int, actor_type: str | None = None) -> list[str]:
        return self.redis.reminder_actors(limit, actor_type)

    @property
    def where(self) -> str:
        stores = [self.redis.where]
        if self.state_store is not None:
            stores.append(f"state {self.state_store.name}")
        if self.delay is not None:
            stores.append(f"deferred {self.delay.name}")
        return " · ".join(stores)

    def dashboard_secret(self) -> bytes:
        return self.redis.dashboard_secret()

    def summary(self, top: int) -> dict[str, Any]:
        summary = self.redis.summary(top)
        if self.delay is not None:
            # Counting what SQS or the Scheduler holds costs AWS calls (up to 100 pages of
            # schedules): a dashboard refreshing every 2 s reads it every _ELSEWHERE_S.
            now = time.monotonic()
            cached = self._elsewhere
            if cached is None or now - cached[0] >= _ELSEWHERE_S:
                cached = self._elsewhere = (now, self._pending_elsewhere())
            summary["deferred_elsewhere"] = cached[1]
            summary["deferred_store"] = self.delay.name
        if self.state_store is not None:
            summary["state_store"] = self.state_store.name
        return summary

    def record_history(self, rows: dict[int, dict[str, int]], ttl_ms: int) -> None:
        self.redis.record_history(rows, ttl_ms)

    def history(self, first_minute_ms: int, minutes: int) -> list[dict[str, int]]:
        return self.redis.history(first_minute_ms, minutes)

    def timeline(
        self,
        now_ms: int,
        span_ms: int,
        buckets: int,
        actor_type: str | None = None,
        message_type: str | None = None,
    ) -> tuple[list[int], int]:
        return self.redis.timeline(now_ms, span_ms, buckets, actor_type, message_type)

    def deferred_page(
        self,
        after_ms: int,
        limit: int,
        actor_type: str | None = None,
        message_type: str | None = None,
        after_id: str = "",
    ) -> list[tuple[str, str, int, str]]:
        return self.redis.deferred_page(after_ms, limit, actor_type, message_type, after_id)

    def actor_view(self, actor: str, head: int) -> dict[str, Any]:
        view = self.redis.actor_view(actor, head)
        if self.state_store is not None:
            view["state"], view["version"] = self.load_state(actor)
        return view

    def dead_letters(self, limit: int) -> list[bytes]:
        return self.redis.dead_letters(limit)

    def dead_letter_count(self) -> int:
        return self.redis.dead_letter_count()

    def redrive(
        self, record: bytes, actor: str, message_id: str, entry: bytes, now_ms: int
    ) -> bool:
        return self.redis.redrive(record, actor, message_id, entry, now_ms)

    def remove_dead_letter(self, record: bytes) -> bool:
        return self.redis.remove_dead_letter(record)

    def claim_wake(self, due_ms: int, now_ms: int) -> bool:
        return self.redis.claim_wake(due_ms, now_ms)

    def server_clock(self) -> Clock:
        return self.redis.server_clock()

    # -- plumbing -------------------------------------------------------------------------

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R | Exception]:
        """``fn`` over ``items``, concurrently (one S3 call each); exceptions returned."""

        def safe(item: T) -> R | Exception:
            try:
                return fn(item)
            except Exception as e:
                return e

        if len(items) <= 1:
            return [safe(i) for i in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="actor-system")
        return list(self._pool.map(safe, items))

    # -- TurnStore: S3 state --------------------------------------------------------------

    def begin(
        self,
        actors: Sequence[str],
        token: str,
        lease_ms: int,
        batch: int,
        now_ms: int,
        lane: str = "",
    ) -> list[Claim | None]:
        claims = self.redis.begin(actors, token, lease_ms, batch, now_ms, lane)
        store = self.state_store
        if store is None:
            return claims
        with self._turns_lock:
            # Turns begun and never committed (their caller failed in between) go after an
            # hour: longer than any turn, however often it renews its lease.
            old = now_ms - _FORGET_TURN_MS
            self._turns = {k: t for k, t in self._turns.items() if t.began_ms > old}
        live = [c for c in claims if c is not None]
        objects = self._map(lambda c: store.read(c.actor), live)
        broken = [o for o in objects if isinstance(o, Exception) and not isinstance(o, DecodeError)]
        if broken:
            # Without its state no turn can run: give every claim of the round back now
            # rather than when the leases expire, and let the caller back off.
            release = [Commit(c.actor, token, c.fence, None, [KEEP] * len(c.entries)) for c in live]
            self.redis.commit(release, now_ms)
            raise broken[0]
        out: list[Claim | None] = []
        found = iter(zip(live, objects, strict=True))
        for claim in claims:
            if claim is None:
                out.append(None)
                continue
            _, obj = next(found)
            out.append(self._s3_claim(claim, obj, token, now_ms))
        return out

    def _s3_claim(
        self, claim: Claim, obj: StateObject | Exception, token: str, now_ms: int
    ) -> Claim:
        if isinstance(obj, Exception):
            # An object that cannot be read: the runtime gets state bytes that stand for it
            # (its own bytes might decode as a map, and a handler would run on default
            # state), so the messages are dead-lettered with the reason, or wait for a
            # deploy that reads a newer format; nothing is written.
            assert isinstance(obj, DecodeError)
            with self._turns_lock:
                self._turns[(claim.actor, token)] = _S3Turn(
                    None, False, claim.entries, began_ms=now_ms
                )
            return Claim(
                claim.actor, claim.fence,
                stored_state.unreadable(str(obj), too_new=isinstance(obj, StateObjectTooNew)),
                0, claim.entries,
                claim.recovered, claim.duplicates, claim.first_errors,
            )  # fmt: skip
        acked = _acked(claim.state)
        turn = _S3Turn(obj, obj.version > acked, claim.entries)
        done = set(obj.done)
        kept = []
        for pos, (entry, failed) in enumerate(claim.entries):
            purge = purge_version(entry)
            if _id(entry) in done:
                turn.skipped.add(pos)  # processed by a commit Redis may not have (any longer)
            elif purge is not None:
                turn.skipped.add(pos)  # the backend's own message, no handler's
                turn.purge = purge
            else:
                kept.append((entry, failed))
        if turn.ahead:
            assert self.state_store is not None
            window_ms = self.state_store.window_ms
            turn.replay(_unacknowledged(obj, acked, claim.entries, window_ms, now_ms))
        turn.began_ms = now_ms
        with self._turns_lock:
            self._turns[(claim.actor, token)] = turn
        return Claim(
            claim.actor,
            claim.fence,
            obj.state,
            obj.version,
            kept,
            claim.recovered,
            claim.duplicates + len(turn.skipped),
            claim.first_errors,
        )

    def commit(self, commits: Sequence[Commit], now_ms: int) -> list[int | None]:
        if self.delay is not None:
            commits = [replace(c, outbox=self._far_in_full(c.outbox, now_ms)) for c in commits]
        if self.state_store is None:
            results = self.redis.commit(commits, now_ms)
            self._note_staged(commits, now_ms)
            self._move_out(now_ms)
            return results
        plans = [self._plan(c, now_ms) for c in commits]
        writes = [(c, t, obj) for c, t, obj in plans if obj is not None]
        store = self.state_store
        puts = self._map(lambda w: store.write(w[0].actor, w[2], w[1].etag), writes)
        outcome = dict(zip([id(w[0]) for w in writes], puts, strict=True))
        final: list[Commit] = []
        lost: set[int] = set()
        for i, (c, turn, _) in enumerate(plans):
            if turn.missing and self._receipt(c) is None:
                lost.add(i)  # its messages go back unprocessed: the caller must know
            put = outcome.get(id(c))
            if isinstance(put, Exception):
                if isinstance(put, WriteConflict):
                    log.warning("%s was written by another holder; batch abandoned", put)
                else:
                    log.error("S3 commit of %s failed, batch abandoned: %s", c.actor, put)
                lost.add(i)
                # Given back whole: nor does the actor move to the long-work lane.
                give_back = self._redis_commit(c, None, [KEEP] * len(c.actions), [], [], replies=[])
                final.append(replace(give_back, lane="", reminders=-1))
                continue
            final.append(c)
        results = self.redis.commit(final, now_ms)
        self._note_staged(final, now_ms)
        self._move_out(now_ms)
        ended = [
            (c.actor, t.etag)
            for (c, t, _), r in zip(plans, results, strict=True)
            if t.purged and r is not None and t.etag is not None
        ]
        for actor, etag in ended:
            store.remove(actor, etag)
        return [None if i in lost else r for i, r in enumerate(results)]

    def _plan(self, c: Commit, now_ms: int) -> tuple[Commit, _S3Turn, StateObject | None]:
        """The Redis commit of a turn (actions for every claimed entry, the sends of
        unacknowledged commits, the acknowledged S3 version) and the S3 object to write
        first, if any."""
        with self._turns_lock:
            turn = self._turns.pop((c.actor, c.token), None)
        if turn is None:  # begin did not see this turn: write nothing, give it back
            log.error("commit of %s without its S3 read; batch abandoned", c.actor)
            keep: list[Outcome] = [KEEP] * len(c.actions)
            nothing = replace(
                self._redis_commit(c, None, keep, [], [], replies=[]), lane="", reminders=-1
            )
            return nothing, _S3Turn(None, False, [], missing=True), None
        actions = iter(c.actions)
        full = [DONE if pos in turn.skipped else next(actions) for pos in range(len(turn.entries))]
        obj = turn.obj
        if obj is None:  # corrupt object: dead letters only (and their Replied messages)
            return self._redis_commit(c, None, full, c.outbox, []), turn, None
        outbox = turn.resend + self._schedule_arms(c, turn, obj, now_ms) + c.outbox
        cancels = turn.recancel + c.cancels
        replies = turn.rereply + c.replies
        assert self.state_store is not None
        window_ms = self.state_store.window_ms
        if c.state is None and not c.delete:
            if self._purges(c, turn):
                # Two windows after the actor ended, nothing of its tombstone is needed any
                # longer: its Redis keys go with this commit, the object after it.
                turn.purged = True
                return self._redis_commit(c, None, full, [], [], ends=True), turn, None
            marker = _MARKER + str(obj.version).encode() if turn.ahead else None
            return self._redis_commit(c, marker, full, outbox, cancels, replies), turn, None
        processed = [
            _id(e)
            for pos, ((e, _), a) in enumerate(zip(turn.entries, full, strict=True))
            if a == DONE and pos not in turn.skipped
        ]
        if c.delete:
            # The actor ends (ctx.delete): the object becomes a tombstone, no state and its
            # commits kept for the replay window like any other version, so that a Redis
            # that loses this commit still finds what it processed and sent. A purge message
            # removes it once its ids are of no use (two windows); Redis keeps the marker and
            # the processed ids as after any commit, and they expire the same way.
            due = now_ms + 2 * window_ms + self.options.lease_ms
            outbox = [*outbox, purge_message(c.actor, obj.version + 1, now_ms, due)]
        # The new commit keeps everything its Redis commit sends, the sends it delivers again
        # included: if that Redis commit is lost too, the next holder finds them here.
        mine = Retained(obj.version + 1, now_ms, processed, outbox, cancels, replies)
        new = obj.successor(c.state, mine, window_ms)
        marker = _MARKER + str(new.version).encode()
        return self._redis_commit(c, marker, full, outbox, cancels, replies), turn, new

    def _receipt(self, c: Commit) -> int | None:
        """The version a commit under this token already wrote (its answer was lost and it
        is run again without a begin), from the lease's receipt; None if it wrote nothing."""
        token, version = self.redis._call(
            "commit", self.client.hmget, self.keys.actor(c.actor, "lease"), "t", "c"
        )
        if token is None or token.decode() != c.token or version is None:
            return None
        return int(version)

    @staticmethod
    def _purges(c: Commit, turn: _S3Turn) -> bool:
        """Whether this turn removes the actor: a purge message for the object's version
        arrived, the object is still that tombstone, no handler wrote state and nothing is
        to be delivered again (then the tombstone stays: it is all that knows)."""
        obj = turn.obj
        return (
            turn.purge is not None
            and obj is not None
            and obj.state is None
            and obj.etag is not None
            and obj.version == turn.purge
            and not (turn.resend or turn.recancel or turn.rereply)
            and all(a == DONE for a in c.actions)
        )

    @staticmethod
    def _redis_commit(
        c: Commit,
        marker: bytes | None,
        actions: list[Outcome],
        outbox: list[Outgoing],
        cancels: list[str],
        replies: list[tuple[str, bytes]] | None = None,
        *,
        ends: bool = False,
    ) -> Commit:
        """The turn's Redis commit, its dedup settings kept. Redis holds only the S3 marker
        as the state: never deleted as default state is (``state_is_default``), it expires
        with the state TTL instead. ``replies=[]``: the turn is given back, none of its
        replies may be seen. ``ends``: every Redis key of the actor goes (its object is
        removed next); an actor that ctx.delete() ended keeps its marker until then."""
        return replace(
            c,
            replies=c.replies if replies is None else replies,
            state=marker,
            actions=actions,
            outbox=outbox,
            cancels=cancels,
            state_is_default=False,
            delete=ends,
        )

    def load_state(self, actor: str) -> tuple[bytes | None, int]:
        if self.state_store is None:
            return self.redis.load_state(actor)
        obj = self.state_store.read(actor)
        return obj.state, obj.version

    def recover(self, now_ms: int) -> int:
        """After Redis lost writes (a restore, a failover, a flush), deliver again what every
        actor sent within the replay window and Redis no longer acknowledges; returns how
        many actors sent something again.

        An actor's next turn does this by itself; ``recover`` reaches the actors that nothing
        will wake, whose input Redis lost with the rest. It lists the objects written within
        two windows (ListObjectsV2) and runs for each a turn that claims nothing; an actor
        whose lease is held is skipped (its holder does it). Run it once Redis is back, from
        a process that is not draining with this backend at the same time.
        """
        store = self.state_store
        if store is None:
            return 0
        actors = list(store.actors(now_ms - 2 * store.window_ms))
        resent = 0
        for start in range(0, len(actors), _RECOVER_CHUNK):
            resent += self._recover(actors[start : start + _RECOVER_CHUNK], now_ms)
        return resent

    def _schedule_arms(
        self, c: Commit, turn: _S3Turn, obj: StateObject, now_ms: int
    ) -> list[Outgoing]:
        """For a turn that replays commits which armed reminders: each pending occurrence of
        the schedule the commit leaves (the state it writes, or the object's), armed again.
        Still pending or already processed, it is one occurrence (reminders.rearm)."""
        if not turn.rearm:
            return []
        turn.rearm = False
        try:
            kept = stored_state.reminders_of(c.state if c.state is not None else obj.state)
            return reminders.rearm(c.actor, kept, now_ms, self.options.max_message_bytes)
        except (DecodeError, InvalidSend, MessageTooLarge) as e:
            log.warning("reminders of %s not armed again: %s", c.actor, e)
            return []

    def rearm_reminders(self, now_ms: int) -> int:
        """Arm again the pending occurrence of every reminder that an S3 object holds: after
        Redis lost everything, the occurrences armed before the replay window are gone with
        it, and no commit is left to send them again. Lists every object (ListObjectsV2) and
        reads each, 16 at a time. Arming an occurrence that is still pending, or was already
        processed, delivers nothing twice (``reminders.rearm``). Returns how many were armed."""
        store = self.state_store
        if store is None:
            return 0
        max_bytes = self.options.max_message_bytes
        started = time.monotonic()
        listed = store.actors(0)  # read as it goes: the keys are not all held at once
        armed = 0
        while chunk := list(itertools.islice(listed, _RECOVER_CHUNK)):
            # The time of this chunk (a run reads every object): what is due, and how far
            # ahead an occurrence goes to the external delay store, are reckoned from it.
            now = now_ms + int((time.monotonic() - started) * 1000)
            items: list[Outgoing] = []
            counts: dict[str, int] = {}
            for actor, obj in zip(chunk, self._map(store.read, chunk), strict=True):
                if isinstance(obj, AwsError):
                    raise obj
                try:
                    if isinstance(obj, Exception):
                        raise obj
                    kept = stored_state.reminders_of(obj.state)
                    mine = reminders.rearm(actor, kept, now, max_bytes)
                except (DecodeError, InvalidSend, MessageTooLarge) as e:
                    # Its turns dead-letter its messages with the reason; the rest go on.
                    log.warning("reminders of %s not armed again: %s", actor, e)
                    continue
                if kept:
                    counts[actor] = len(reminders.load(kept))
                items += mine
            if items:
                # A live turn may arm a member after its object was read here: it stands.
                near = self._far_in_full(items, now) if self.delay is not None else items
                nx = [replace(i, entry=b"nx") if reminders.is_member(i.id) else i for i in near]
                self.push(nx, now)
            if counts:
                self.redis.index_reminders(counts)
            armed += len(items)
        return armed

    def _recover(self, actors: Sequence[str], now_ms: int) -> int:
        token = uuid.uuid4().hex
        claims = [c for c in self.begin(actors, token, self.options.lease_ms, 0, now_ms) if c]
        resent = 0
        for c in claims:
            with self._turns_lock:
                turn = self._turns[(c.actor, token)]
            resent += bool(turn.resend or turn.recancel or turn.rereply)
            if c.recovered:
                # A dead holder's messages went back to the mailbox unclaimed: leave the
                # marker behind, so that the turn that claims them still sees the object
                # ahead and sends its last commit again if they are among its ids.
                turn.ahead = False
        self.commit([Commit(c.actor, token, c.fence, None, []) for c in claims], now_ms)
        return resent

    # -- DelayQueue: SQS / Scheduler ------------------------------------------------------

    def _is_far(self, item: Outgoing, now_ms: int) -> bool:
        assert self.delay is not None
        return item.due_ms is not None and item.due_ms - now_ms > self.delay.near_s * 1000

    def _note_staged(self, commits: Sequence[Commit], now_ms: int) -> None:
        if self.delay is not None and any(
            self._is_far(o, now_ms) for c in commits for o in c.outbox
        ):
            self._staged = True

    def _far_in_full(self, items: Sequence[Outgoing], now_ms: int) -> list[Outgoing]:
        """``items`` with each reminder occurrence bound for the external delay queue in its
        full form (its own id and body): only the Redis sorted set holds a bare member."""
        return [
            Outgoing(i.entry[:ID_LENGTH].decode(), i.target, i.entry, i.due_ms)
            if reminders.is_member(i.id) and self._is_far(i, now_ms)
            else i
            for i in items
        ]

    def push(self, items: Sequence[Outgoing], now_ms: int, wake_ms: int = 0) -> tuple[int, bool]:
        if self.delay is None:
            return self.redis.push(items, now_ms, wake_ms)
        items = self._far_in_full(items, now_ms)
        far = [i for i in items if self._is_far(i, now_ms)]
        taken = set(self.delay.offload(far, now_ms)) if far else set()
        rest, wake = self.redis.push([i for i in items if i.id not in taken], now_ms, wake_ms)
        return rest + len(taken), wake

    def _move_out(self, now_ms: int) -> None:
        """Offload staged messages; on an AWS error they stay in the sorted set, which
        delivers them on time anyway, and the drain goes on without trying for a while."""
        if now_ms < self._offload_after:
            return
        try:
            self._offload_staged(now_ms)
        except AwsError as e:
            self._staged = True
            self._offload_after = now_ms + _BACK_OFF_MS
            log.error("moving deferred messages out failed, next try in 30 s: %s", e)

    def _offload_staged(self, now_ms: int) -> int:
        """Move far-future messages from the sorted set to the external delay queue."""
        if self.delay is None or not self._staged:
            return 0
        self._staged = False
        horizon = now_ms + int(self.delay.near_s * 1000)
        k = self.keys
        shards = self.redis._pipe(
            "offload",
            lambda pipe: [
                pipe.zrangebyscore(k.due(p), f"({horizon}", "+inf", 0, _OFFLOAD_SCAN, True)
                for p in range(k.partitions)
            ],
        )
        rows = [
            (p, mid.decode(), int(due))
            for p, found in enumerate(shards)
            for mid, due in found
            if mid[:1] != b"~"  # a reminder's member stays: it has no body to send
        ]
        if not rows:
            return 0
        values = self.redis._bodies([mid for _, mid, _ in rows])
        items = []
        for (_, mid, due), value in zip(rows, values, strict=True):
            if value:
                target, _, body = value.partition(b"\n")
                items.append(Outgoing(mid, target.decode(), mid.encode() + body, due))
        taken = set(self.delay.offload(items, now_ms))
        by_part: dict[int, list[Any]] = {}
        for p, mid, due in rows:
            if mid in taken:
                by_part.setdefault(p, []).extend([mid, due])
        calls = [
            (
                "unstage",
                # Every key it touches (a cluster slot being moved refuses it whole).
                [k.due(p)] + [x for m in args[0::2] for x in (k.bucket_at(p, m), k.tomb(m))],
                [k.prefix, p, *args],
            )
            for p, args in by_part.items()
        ]
        moved = sum(int(n) for n in self.redis._run(calls, "unstage"))
        if any(len(found) == _OFFLOAD_SCAN for found in shards):
            self._staged = True  # more left than one scan reads
        return moved

    def poll(
        self, now_ms: int, max_actors: int, lease_ms: int, awake_ms: int = 0, token: str = ""
    ) -> tuple[list[str], int]:
        landed = 0
        delay = self.delay
        if delay is not None:
            if now_ms - self._swept_at >= _SWEEP_EVERY_MS:
                self._swept_at = now_ms
                self._staged = True
            # Before moving out: unstage drops the landed tombstone that _release looks for.
            self._release(now_ms)
            self._move_out(now_ms)
            if self._receive_more or now_ms - self._received_at >= delay.receive_every_s * 1000:
                self._received_at = now_ms
                try:
                    landed = self._collect(now_ms)
                except AwsError as e:  # Redis work goes on; SQS keeps the messages
                    self._received_at = now_ms + _BACK_OFF_MS
                    log.error("receiving deferred messages failed, next try in 30 s: %s", e)
        actors, promoted = self.redis.poll(now_ms, max_actors, lease_ms, awake_ms, token)
        return actors, promoted + landed

    def _collect(self, now_ms: int) -> int:
        """Receive what the external queue has made visible and land it. What went out for
        another hop is deleted at once (SQS holds the new copy); the rest is held in SQS
        until Redis has kept its landing for ``durable_s`` (``_release``)."""
        delay = self.delay
        assert delay is not None
        received = delay.receive()
        self._receive_more = len(received) >= 100
        if not received:
            return 0
        found = [(r, deferred_in(r.body)) for r in received]
        # Bodies that are not deferred messages: dead letters with the reason, wakes skipped.
        self.redis.accept_deferred([r.body for r, item in found if item is None], now_ms)
        landed, hopped = self.redis._land_received(
            [item for _, item in found if item is not None], now_ms
        )
        release_ms = now_ms + int(delay.durable_s * 1000)
        self._held += [
            Held(r.receipt, release_ms, item)
            for r, item in found
            if item is None or item.id not in hopped
        ]
        delay.delete([r.receipt for r, item in found if item is not None and item.id in hopped])
        return landed

    def _release(self, now_ms: int) -> None:
        """Delete the held messages whose time has come if Redis still has their landing;
        one whose landing Redis lost (a restart or failover lost its last writes) lands
        again now and is held once more (SQS keeps it meanwhile: if this process dies, SQS
        delivers it again once its visibility timeout ends, and it lands then)."""
        delay = self.delay
        assert delay is not None
        due = [h for h in self._held if h.release_ms <= now_ms]
        if not due:
            return
        checked = [(h, h.item) for h in due if h.item is not None]
        keys = [self.keys.tomb(item.id) for _, item in checked]
        tombs = (
            self.redis._pipe("release", lambda pipe: [pipe.get(key) for key in keys])
            if keys
            else []
        )
        lost = {
            h.receipt: item.id
            for (h, item), tomb in zip(checked, tombs, strict=True)
            if not self._landing_kept(tomb, item)
        }
        self._held = [h for h in self._held if h.release_ms > now_ms]
        again = [(h, item) for h, item in checked if h.receipt in lost]
        if again:
            log.warning(
                "Redis lost the landing of %d deferred message(s); landing again", len(again)
            )
            self.redis.land([item for _, item in again], now_ms)
            release_ms = now_ms + int(delay.durable_s * 1000)
            self._held += [Held(h.receipt, release_ms, item) for h, item in again]
        try:
            delay.delete([h.receipt for h in due if h.receipt not in lost])
        except AwsError as e:  # they come back after their visibility timeout: copies, dropped
            log.error("deleting landed deferred messages failed: %s", e)

    @staticmethod
    def _landing_kept(tomb: bytes | None, item: Outgoing) -> bool:
        """Whether the tombstone land.lua wrote is still there: 'l:<due ms>' for this due
        time or a later one (a re-deferral under the id, which only a kept landing can have
        led to), or 'c' (cancelled since: nothing to deliver)."""
        if tomb == b"c":
            return True
        if tomb is None or not tomb.startswith(b"l:"):
            return False
        return item.due_ms is not None and int(tomb[2:]) >= item.due_ms

    def _hop(self, items: Sequence[Outgoing], now_ms: int) -> set[str]:
        """Send far ones out again for another SQS hop; the ids now held there."""
        delay = self.delay
        if delay is None or not delay.hops:
            return set()
        far = [i for i in items if self._is_far(i, now_ms)]
        return set(delay.offload(far, now_ms)) if far else set()

    def cancel(self, message_id: str) -> bool:
        removed, unknown = self.redis._cancel(message_id)
        if self.delay is None:
            return removed
        external = self.delay.cancel(message_id)
        # SQS cannot look a message up: an id neither cancelled nor landed may be there.
        return removed or external or (unknown and self.delay.hops)

    def pending(self) -> int:
        n = self.redis.pending()
        return n + (self._pending_elsewhere() if self.delay is not None else 0)

    def _pending_elsewhere(self) -> int:
        """Deferred messages the external store holds, less those held in the SQS queue
        after they landed (``_release``): Redis counts them now, or they were delivered."""
        assert self.delay is not None
        held = len(self._held) if isinstance(self.delay, SqsDelayQueue) else 0
        return max(self.delay.pending() - held, 0)

    def check(self) -> None:
        """Reach Redis and every AWS store once (``RedisBackend.check``; AwsError names the
        first store that is missing or refused: the bucket, the queue, the schedule group).
        Call it at start-up to fail early; nothing else calls AWS before a turn needs it."""
        self.redis.check()
        if self.state_store is not None:
            self.state_store.check()
        if self.delay is not None:
            self.delay.check()

    def stats(self) -> dict[str, Any]:
        stats = self.redis.stats()
        if self.delay is not None:
            stats["deferred_elsewhere"] = self._pending_elsewhere()
            stats["deferred_store"] = self.delay.name
        if self.state_store is not None:
            stats["state_store"] = self.state_store.name
        return stats

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.redis.close()
