"""Every Redis key actor-system uses, in one place (the schema is documented in lib.lua).

Every actor belongs to one of N partitions (a power of two), by the same 16-bit hash of its
key that every message id sent to it carries (``envelope.target_hash``). A partition's keys,
and the keys of each actor in it, share the hash tag ``{p<n>}``: on a Redis Cluster each
partition lives in one slot, so that every script touches one slot. The few keys shared by
all partitions (wake hints, the drain claim) share the tag ``{g}``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actor_system.reminders import is_member, member_parts

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actor_system.envelope import Outgoing

BUCKETS = 256  # hashes holding the bodies of one partition's deferred messages
REMINDER_BUCKETS = 256  # hashes of one partition's index of actors with reminders


def actor_hash(actor: str) -> int:
    """The 16-bit hash of an actor key that its messages' ids carry (envelope.target_hash)."""
    return zlib.crc32(actor.encode()) & 0xFFFF


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix, for ``partitions`` partitions."""

    prefix: str = "as"
    partitions: int = 64

    # -- which partition --------------------------------------------------------------------

    def part_of(self, actor: str) -> int:
        return actor_hash(actor) % self.partitions

    def part_of_id(self, message_id: str) -> int:
        """The partition of a message's target, from the target hash inside its id (or the
        actor a reminder's member names)."""
        if is_member(message_id):
            return self.part_of(member_parts(message_id)[0])
        return int(message_id[16:20], 16) % self.partitions

    # -- keys shared by all partitions ({g}) ------------------------------------------------

    def _g(self, name: str) -> str:
        return f"{self.prefix}:{{g}}:{name}"

    @property
    def layout(self) -> str:
        """The partition count the data was written with (refused at start if it differs)."""
        return self._g("partitions")

    @property
    def wake(self) -> str:
        """Wake-up tokens for idle workers (BLPOP)."""
        return self._g("wake")

    @property
    def hints(self) -> str:
        """Partition -> generation: partitions that got work since a poller last looked."""
        return self._g("hints")

    @property
    def gen(self) -> str:
        """The last generation given to a hint (each one new)."""
        return self._g("gen")

    @property
    def awake(self) -> str:
        return self._g("awake")

    @property
    def poke(self) -> str:
        """Set by a send that found a drain running: a drain deciding to rest looks again."""
        return self._g("poke")

    @property
    def armed(self) -> str:
        return self._g("armed")

    # -- one partition's keys ({p<n>}) ------------------------------------------------------

    def part(self, p: int, name: str) -> str:
        return f"{self.prefix}:{{p{p}}}:{name}"

    def ready(self, p: int) -> str:
        return self.part(p, "ready")

    def leases(self, p: int) -> str:
        return self.part(p, "leases")

    def paused(self, p: int) -> str:
        return self.part(p, "paused")

    def dlq(self, p: int) -> str:
        return self.part(p, "dlq")

    def due(self, p: int) -> str:
        return self.part(p, "due")

    def outboxes(self, p: int) -> str:
        return self.part(p, "outboxes")

    def long(self, p: int) -> str:
        """The long-work lane's actors, each from the ms a long-work worker may take it."""
        return self.part(p, "long")

    def reminders(self, p: int, bucket: int) -> str:
        """One of the partition's REMINDER_BUCKETS hashes of actors that have reminders
        (actor -> how many): small enough to stay compact listpacks (about 30 B an actor)
        up to a few million actors."""
        return self.part(p, f"rix:{bucket}")

    def reminder_bucket(self, actor: str) -> str:
        """The index hash that holds ``actor``'s count of reminders."""
        digest = zlib.crc32(b"rix\x00" + actor.encode())
        return self.reminders(self.part_of(actor), digest % REMINDER_BUCKETS)

    def reminder_actors(self, p: int) -> str:
        """How many of the partition's actors have reminders."""
        return self.part(p, "reminders:a")

    def reminder_count(self, p: int) -> str:
        """How many reminders the partition's actors have, all together."""
        return self.part(p, "reminders:n")

    def dashboard_secret(self) -> str:
        """The dashboards' shared secret (signs their CSRF tokens and sessions)."""
        return self._g("dashboard:secret")

    def history(self, minute_ms: int) -> str:
        """The dashboard's sums of one minute, over every process."""
        return self._g(f"h:{minute_ms}")

    @property
    def lane_present(self) -> str:
        return self._g("lane:present")

    @property
    def lane_launch(self) -> str:
        return self._g("lane:launch")

    def bucket(self, target: str, message_id: str) -> str:
        """The bucket hash of a deferred message to ``target`` (mkey in lib.lua)."""
        return self.bucket_at(self.part_of(target), message_id)

    def bucket_at(self, part: int, message_id: str) -> str:
        return self.part(part, f"m{int(message_id[20:23], 16) % BUCKETS}")

    def delivery_keys(self, items: Sequence[Outgoing], either: bool = False) -> list[str]:
        """Every key delivering ``items`` touches besides their partition's ready and paused
        sets (deliver in lib.lua), for a script to declare; ``either``: each may go to its
        mailbox or to the delay queue (land.lua decides by the time)."""
        keys: list[str] = []
        for item in items:
            if is_member(item.id):  # a reminder's member: the sorted set alone
                keys.append(self.due(self.part_of(item.target)))
                continue
            if either or item.due_ms is not None:
                keys += [self.due(self.part_of(item.target)), self.bucket(item.target, item.id)]
            if either or item.due_ms is None:
                keys += [self.actor(item.target, n) for n in ("mb", "done", "doneold")]
        return list(dict.fromkeys(keys))

    def delay_msg(self, message_id: str) -> str:
        """The bucket hash holding a deferred message's body (same rule as mkey in lib.lua)."""
        return self.bucket_at(self.part_of_id(message_id), message_id)

    def tomb(self, message_id: str) -> str:
        """A deferred message's tombstone: cancelled, or landed at a due time (lib.lua)."""
        return self.part(self.part_of_id(message_id), f"tomb:{message_id}")

    def cancelled(self, message_id: str) -> str:
        return self.part(self.part_of_id(message_id), f"cancelled:{message_id}")

    def reply(self, message_id: str) -> str:
        return self.part(self.part_of_id(message_id), f"reply:{message_id}")

    def actor(self, actor: str, suffix: str) -> str:
        return self.part(self.part_of(actor), f"{actor}:{suffix}")

    # -- script key lists -------------------------------------------------------------------

    def begin_keys(self, actor: str) -> list[str]:
        names = ("lease", "fence", "mb", "inflight", "state", "att", "done")
        p = self.part_of(actor)
        keys = [self.actor(actor, n) for n in names]
        extra = [self.leases(p), self.actor(actor, "err"), self.paused(p), self.ready(p)]
        return [*keys, *extra, self.actor(actor, "outbox"), self.actor(actor, "doneold")]

    def commit_keys(self, actor: str) -> list[str]:
        names = ("lease", "mb", "inflight", "state", "att", "done")
        p = self.part_of(actor)
        keys = [self.actor(actor, n) for n in names] + [self.leases(p), self.ready(p), self.dlq(p)]
        tail = [self.actor(actor, "outbox"), self.outboxes(p)]
        done = [self.actor(actor, "doneold"), self.actor(actor, "donetime")]
        rem = [self.reminder_bucket(actor), self.reminder_count(p), self.reminder_actors(p)]
        return [*keys, self.actor(actor, "err"), self.paused(p), *tail, *done, self.long(p), *rem]

    def poll_keys(self, p: int) -> list[str]:
        return [self.leases(p), self.ready(p), self.paused(p), self.due(p), self.outboxes(p)]

    def signal_keys(self) -> list[str]:
        return [self.hints, self.wake, self.awake, self.poke]
