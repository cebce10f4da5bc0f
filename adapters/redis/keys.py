"""Every Redis key actor-system uses, in one place (the schema is documented in lib.lua)."""

from __future__ import annotations

from dataclasses import dataclass

DELAY_BUCKETS = 1024


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix. Each actor's keys share the hash tag ``{type/id}``."""

    prefix: str = "as"
    delay_shards: int = 16

    @property
    def ready(self) -> str:
        return f"{self.prefix}:ready"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:wake"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def awake(self) -> str:
        return f"{self.prefix}:awake"

    def reply(self, message_id: str) -> str:
        return f"{self.prefix}:reply:{message_id}"

    @property
    def paused(self) -> str:
        return f"{self.prefix}:paused"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}:dlq"

    def tomb(self, message_id: str) -> str:
        """A deferred message's tombstone: cancelled, or landed at a due time (lib.lua)."""
        return f"{self.prefix}:tomb:{message_id}"

    def actor(self, actor: str, suffix: str) -> str:
        return f"{self.prefix}:{{{actor}}}:{suffix}"

    def shard_of(self, message_id: str) -> int:
        """The delay shard of a message: from the target hash inside its id (envelope.py),
        so that every deferred message of one actor is in one shard, in due order."""
        return int(message_id[16:20], 16) % self.delay_shards

    def delay_due(self, shard: int) -> str:
        return f"{self.prefix}:{{dq{shard}}}:due"

    def delay_msg(self, shard: int, message_id: str) -> str:
        """The bucket hash holding a deferred message (same rule as mkey in lib.lua)."""
        return f"{self.prefix}:{{dq{shard}}}:m{int(message_id[20:23], 16) % DELAY_BUCKETS}"

    def old_shard_of(self, message_id: str) -> int:
        """The shard of a message deferred before ids carried their target (still delivered
        and cancellable after an upgrade)."""
        return int(message_id[:8], 16) % self.delay_shards

    def old_delay_msg(self, shard: int, message_id: str) -> str:
        """The bucket by the rule before ids carried their target (old_mkey in lib.lua)."""
        return f"{self.prefix}:{{dq{shard}}}:m{int(message_id[8:11], 16) % DELAY_BUCKETS}"

    def begin_keys(self, actor: str) -> list[str]:
        names = ("lease", "fence", "mb", "inflight", "state", "att", "done")
        keys = [self.actor(actor, n) for n in names]
        return [*keys, self.leases, self.actor(actor, "err"), self.paused, self.ready]

    def commit_keys(self, actor: str) -> list[str]:
        names = ("lease", "mb", "inflight", "state", "att", "done")
        keys = [self.actor(actor, n) for n in names] + [self.leases, self.ready, self.dlq]
        return [*keys, self.actor(actor, "err"), self.paused]
