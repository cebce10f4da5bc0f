"""Redis for mailboxes and leases, with state in S3 and/or deferred messages in SQS or
EventBridge Scheduler: ``ActorSystem.from_url(redis_url, state="s3://...", delay="sqs://...")``.

S3 state, one turn: Redis ``begin`` (lease, fence, claim) then one GET of the actor's object;
handlers run; one conditional PUT (state, processed ids, outbox) then Redis ``commit``, which
delivers the outbox, records the ids and stores the S3 version it acknowledges. A writer that
dies between the PUT and the Redis commit leaves the object one version ahead of that
acknowledgement: the next holder drops the messages the object lists as processed and
delivers the object's outbox itself, so nothing is lost and nothing applies twice.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from actor_system.envelope import ID_LENGTH, Outgoing
from actor_system.errors import DecodeError
from actor_system.ports import DONE, KEEP, Claim, Commit
from adapters.aws import AwsError
from adapters.redis.backend import RedisBackend
from adapters.s3 import StateObject, WriteConflict, trim

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis

    from actor_system.options import Options
    from adapters.delay import ExternalDelay
    from adapters.s3 import S3StateStore

log = logging.getLogger("actor_system")

T = TypeVar("T")
R = TypeVar("R")

_MARKER = b"s3:"  # Redis keeps the S3 version it acknowledged as the actor's state
_OFFLOAD_SCAN = 100  # staged messages read per shard per offload
_SWEEP_EVERY_MS = 5_000  # look for messages a crashed process staged but did not move out
_DAY_MS = 24 * 3600 * 1000
_BACK_OFF_MS = 30_000  # after an AWS error, before moving or receiving messages again


@dataclass(slots=True)
class _S3Turn:
    """What begin read from S3 for one turn, kept until its commit."""

    obj: StateObject | None  # None: the object is corrupt (the turn dead-letters, writes nothing)
    carry: bool  # the object's outbox was never acknowledged in Redis: deliver it now
    entries: list[tuple[bytes, int]]  # as claimed from Redis
    skipped: set[int] = field(default_factory=set)  # positions already processed per S3

    @property
    def etag(self) -> str | None:
        return self.obj.etag if self.obj is not None else None


def _acked(marker: bytes | None) -> int:
    if marker and marker.startswith(_MARKER):
        return int(marker[len(_MARKER) :])
    return 0


class CompositeBackend(RedisBackend):
    """The Redis backend with S3 state and/or an external delay queue plugged in."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        options: Options,
        blocking: bool = True,
        state: S3StateStore | None = None,
        delay: ExternalDelay | None = None,
    ) -> None:
        super().__init__(client=client, options=options, blocking=blocking)
        self.state_store = state
        self.delay = delay
        if delay is not None:
            self.tombstone_ms = int(options.max_delay_s * 1000) + _DAY_MS
        self._turns: dict[tuple[str, str], _S3Turn] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._received_at = -(2**62)
        self._receive_more = False
        self._staged = True  # look once at start: a crashed process may have left some
        self._swept_at = 0
        self._offload_after = 0  # no offloading before this (back-off after an AWS error)

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
        self, actors: Sequence[str], token: str, lease_ms: int, batch: int, now_ms: int
    ) -> list[Claim | None]:
        claims = super().begin(actors, token, lease_ms, batch, now_ms)
        store = self.state_store
        if store is None:
            return claims
        self._turns = {k: t for k, t in self._turns.items() if k[1] == token}
        live = [c for c in claims if c is not None]
        objects = self._map(lambda c: store.read(c.actor), live)
        broken = [o for o in objects if isinstance(o, Exception) and not isinstance(o, DecodeError)]
        if broken:
            # Without its state no turn can run: give every claim of the round back now
            # rather than when the leases expire, and let the caller back off.
            release = [Commit(c.actor, token, c.fence, None, [KEEP] * len(c.entries)) for c in live]
            super().commit(release, now_ms)
            raise broken[0]
        out: list[Claim | None] = []
        found = iter(zip(live, objects, strict=True))
        for claim in claims:
            if claim is None:
                out.append(None)
                continue
            _, obj = next(found)
            out.append(self._s3_claim(claim, obj, token))
        return out

    def _s3_claim(self, claim: Claim, obj: StateObject | Exception, token: str) -> Claim:
        if isinstance(obj, Exception):
            # A corrupt object: hand the runtime its bytes, which it cannot decode either,
            # so the messages are dead-lettered with the reason; nothing is written.
            assert isinstance(obj, DecodeError)
            self._turns[(claim.actor, token)] = _S3Turn(None, False, claim.entries)
            return Claim(
                claim.actor, claim.fence, obj.raw or b"\xc1", 0, claim.entries,
                claim.recovered, claim.duplicates, claim.first_errors,
            )  # fmt: skip
        turn = _S3Turn(obj, obj.version > _acked(claim.state), claim.entries)
        done = set(obj.done)
        kept = []
        for pos, (entry, failed) in enumerate(claim.entries):
            if entry[:ID_LENGTH].decode("ascii", "replace") in done:
                turn.skipped.add(pos)  # processed by a commit Redis never acknowledged
            else:
                kept.append((entry, failed))
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
        if self.state_store is None:
            results = super().commit(commits, now_ms)
            self._note_staged(commits, now_ms)
            self._move_out(now_ms)
            return results
        plans = [self._plan(c) for c in commits]
        writes = [(c, t, obj) for c, t, obj in plans if obj is not None]
        store = self.state_store
        puts = self._map(lambda w: store.write(w[0].actor, w[2], w[1].etag), writes)
        outcome = dict(zip([id(w[0]) for w in writes], puts, strict=True))
        final: list[Commit] = []
        lost: set[int] = set()
        for i, (c, turn, _) in enumerate(plans):
            put = outcome.get(id(c))
            if isinstance(put, Exception):
                if isinstance(put, WriteConflict):
                    log.warning("%s was written by another holder; batch abandoned", put)
                else:
                    log.error("S3 commit of %s failed, batch abandoned: %s", c.actor, put)
                lost.add(i)
                final.append(Commit(c.actor, c.token, c.fence, None, [KEEP] * len(turn.entries)))
                continue
            final.append(c)
        results = super().commit(final, now_ms)
        self._note_staged(final, now_ms)
        self._move_out(now_ms)
        return [None if i in lost else r for i, r in enumerate(results)]

    def _plan(self, c: Commit) -> tuple[Commit, _S3Turn, StateObject | None]:
        """The Redis commit of a turn (actions for every claimed entry, the carried outbox,
        the acknowledged S3 version) and the S3 object to write first, if any."""
        turn = self._turns.pop((c.actor, c.token), None)
        if turn is None:  # begin did not see this turn: write nothing, give it back
            log.error("commit of %s without its S3 read; batch abandoned", c.actor)
            return (
                Commit(c.actor, c.token, c.fence, None, [KEEP] * len(c.actions)),
                _S3Turn(None, False, [(b"", 0)] * len(c.actions)),
                None,
            )
        actions = iter(c.actions)
        full = [DONE if pos in turn.skipped else next(actions) for pos in range(len(turn.entries))]
        obj = turn.obj
        if obj is None:  # corrupt object: dead letters only
            return Commit(c.actor, c.token, c.fence, None, full), turn, None
        outbox = (obj.outbox if turn.carry else []) + c.outbox
        cancels = (obj.cancels if turn.carry else []) + c.cancels
        if c.state is None:
            marker = _MARKER + str(obj.version).encode() if turn.carry else None
            return Commit(c.actor, c.token, c.fence, marker, full, outbox, cancels), turn, None
        processed = [
            e[:ID_LENGTH].decode("ascii")
            for pos, ((e, _), a) in enumerate(zip(turn.entries, full, strict=True))
            if a == DONE and pos not in turn.skipped
        ]
        keep = max(2 * self.options.batch, 200)
        new = StateObject(
            c.state, obj.version + 1, trim(obj.done + processed, keep), outbox, cancels
        )
        marker = _MARKER + str(new.version).encode()
        return Commit(c.actor, c.token, c.fence, marker, full, outbox, cancels), turn, new

    def load_state(self, actor: str) -> tuple[bytes | None, int]:
        if self.state_store is None:
            return super().load_state(actor)
        obj = self.state_store.read(actor)
        return obj.state, obj.version

    # -- DelayQueue: SQS / Scheduler ------------------------------------------------------

    def _is_far(self, item: Outgoing, now_ms: int) -> bool:
        assert self.delay is not None
        return item.due_ms is not None and item.due_ms - now_ms > self.delay.near_s * 1000

    def _note_staged(self, commits: Sequence[Commit], now_ms: int) -> None:
        if self.delay is not None and any(
            self._is_far(o, now_ms) for c in commits for o in c.outbox
        ):
            self._staged = True

    def push(self, items: Sequence[Outgoing], now_ms: int) -> None:
        if self.delay is None:
            super().push(items, now_ms)
            return
        far = [i for i in items if self._is_far(i, now_ms)]
        taken = set(self.delay.offload(far, now_ms)) if far else set()
        super().push([i for i in items if i.id not in taken], now_ms)

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
        pipe = self.client.pipeline(transaction=False)
        for s in range(k.delay_shards):
            pipe.zrangebyscore(k.delay_due(s), f"({horizon}", "+inf", 0, _OFFLOAD_SCAN, True)
        shards = self._call("offload", pipe.execute)
        rows = [(s, mid.decode(), int(due)) for s, found in enumerate(shards) for mid, due in found]
        if not rows:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for s, mid, _ in rows:
            pipe.hget(k.delay_msg(s, mid), mid)
        values = self._call("offload", pipe.execute)
        items = []
        for (_, mid, due), value in zip(rows, values, strict=True):
            if value:
                target, _, body = value.partition(b"\n")
                items.append(Outgoing(mid, target.decode(), mid.encode() + body, due))
        taken = set(self.delay.offload(items, now_ms))
        args: list[Any] = [self.options.prefix]
        for s, mid, due in rows:
            if mid in taken:
                args += [mid, s, due]
        moved = int(self._run([("unstage", [k.ready], args)], "unstage")[0]) if taken else 0
        if any(len(found) == _OFFLOAD_SCAN for found in shards):
            self._staged = True  # more left than one scan reads
        return moved

    def poll(self, now_ms: int, max_actors: int, lease_ms: int) -> tuple[list[str], int]:
        landed = 0
        delay = self.delay
        if delay is not None:
            if now_ms - self._swept_at >= _SWEEP_EVERY_MS:
                self._swept_at = now_ms
                self._staged = True
            self._move_out(now_ms)
            if self._receive_more or now_ms - self._received_at >= delay.receive_every_s * 1000:
                self._received_at = now_ms
                try:
                    landed = self._collect(now_ms)
                except AwsError as e:  # Redis work goes on; SQS keeps the messages
                    self._received_at = now_ms + _BACK_OFF_MS
                    log.error("receiving deferred messages failed, next try in 30 s: %s", e)
        actors, promoted = super().poll(now_ms, max_actors, lease_ms)
        return actors, promoted + landed

    def _collect(self, now_ms: int) -> int:
        """Receive what the external queue has made visible, land it, delete it."""
        assert self.delay is not None
        received = self.delay.receive()
        self._receive_more = len(received) >= 100
        if not received:
            return 0
        landed = self.accept_deferred([r.body for r in received], now_ms)
        self.delay.delete([r.receipt for r in received])
        return landed

    def _hop(self, items: Sequence[Outgoing], now_ms: int) -> set[str]:
        """Send far ones out again for another SQS hop; the ids now held there."""
        delay = self.delay
        if delay is None or not delay.hops:
            return set()
        far = [i for i in items if self._is_far(i, now_ms)]
        return set(delay.offload(far, now_ms)) if far else set()

    def cancel(self, message_id: str) -> bool:
        removed, unknown = self._cancel(message_id)
        if self.delay is None:
            return removed
        external = self.delay.cancel(message_id)
        # SQS cannot look a message up: an id neither cancelled nor landed may be there.
        return removed or external or (unknown and self.delay.hops)

    def pending(self) -> int:
        n = super().pending()
        return n + (self.delay.pending() if self.delay is not None else 0)

    def check(self) -> None:
        """Reach every AWS store once: AwsError names the first that is missing or refused
        (the bucket, the queue, the schedule group). Call it at start-up if you like to
        fail early; nothing else calls AWS before the first turn needs it."""
        if self.state_store is not None:
            self.state_store.check()
        if self.delay is not None:
            self.delay.check()

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        if self.delay is not None:
            stats["deferred_elsewhere"] = self.delay.pending()
            stats["deferred_store"] = self.delay.name
        if self.state_store is not None:
            stats["state_store"] = f"s3://{self.state_store.bucket}/{self.state_store.prefix}"
        return stats

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        super().close()
