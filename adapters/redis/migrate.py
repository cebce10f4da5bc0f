"""Move data from the key layout before partitions (0.x) into the partitioned one.

Before partitions, one Redis node held the ready set, leases, backoffs and dead letters under
single keys (``P:ready``, ``P:leases``, ``P:paused``, ``P:dlq``), each actor's keys under the
tag ``{type/id}``, and deferred messages in 16 delay shards ``P:{dqN}``. ``migrate`` moves
all of it to where the partitioned layout keeps it (keys.py), on the same node, and records
the partition count. Run it once with every worker stopped (``actor-system migrate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from actor_system.adapters.redis.keys import BUCKETS, Keys

_ACTOR_KEY = re.compile(rb"^(?P<actor>[^{}]+/[^{}]*)\}:(?P<suffix>[a-z]+)$")
_BY_ID = ("reply", "tomb", "cancelled")
_TRANSIENT = ("wake", "awake", "armed", "dqepoch")


@dataclass
class Moved:
    """What ``migrate`` moved."""

    actor_keys: int = 0
    ready: int = 0
    leases: int = 0
    paused: int = 0
    dead_letters: int = 0
    deferred: int = 0
    by_id: int = 0  # replies, tombstones and cancel receipts


def migrate(client: Any, keys: Keys) -> Moved:
    """Move every key of the old layout under ``keys.prefix`` into the partitioned layout and
    record the partition count. Safe to run again after an interruption: what was moved is
    not found under the old names any more."""
    p = keys.prefix
    moved = Moved()
    for name in client.scan_iter(match=f"{p}:{{*", count=1000):
        rest = name[len(p) + 2 :]
        found = _ACTOR_KEY.match(rest)
        if found is None:
            continue  # a delay shard, or already partitioned ({p<n>}, {g})
        actor, suffix = found["actor"].decode(), found["suffix"].decode()
        if suffix == "done":
            _done_set(client, name, keys, actor)
        else:
            client.rename(name, keys.actor(actor, suffix))
        moved.actor_keys += 1
    for old, into, field in (
        ("ready", keys.ready, "ready"),
        ("leases", keys.leases, "leases"),
        ("paused", keys.paused, "paused"),
    ):
        members = client.zrange(f"{p}:{old}", 0, -1, withscores=True)
        for actor, score in members:
            client.zadd(into(keys.part_of(actor.decode())), {actor: score})
        setattr(moved, field, len(members))
        client.delete(f"{p}:{old}")
    moved.dead_letters = _dead_letters(client, keys)
    moved.deferred = _deferred(client, keys)
    for kind in _BY_ID:
        for name in client.scan_iter(match=f"{p}:{kind}:*", count=1000):
            message_id = name.decode().rsplit(":", 1)[1]
            client.rename(name, getattr(keys, kind)(message_id))
            moved.by_id += 1
    for name in client.scan_iter(match=f"{p}:polled:*", count=1000):
        client.delete(name)
    client.delete(*[f"{p}:{name}" for name in _TRANSIENT])
    # Actors that were in a turn: their in-flight entries go back to their mailboxes when a
    # poll finds the lease expired (it is, or expires on its own clock).
    client.set(keys.layout, keys.partitions)
    return moved


def _done_set(client: Any, name: bytes, keys: Keys, actor: str) -> None:
    """An actor's processed ids: a sorted set of commit times before, now a set and the
    first and last of those times (commit.lua), expiring as the old key did."""
    members = client.zrange(name, 0, -1, withscores=True)
    ttl = client.pttl(name)
    done, times = keys.actor(actor, "done"), keys.actor(actor, "donetime")
    if members:
        client.sadd(done, *[m for m, _ in members])
        scores = [int(score) for _, score in members]
        client.set(times, f"{min(scores)} {max(scores)}")
        if ttl > 0:
            client.pexpire(done, ttl)
            client.pexpire(times, ttl)
    client.delete(name)


def _dead_letters(client: Any, keys: Keys) -> int:
    from actor_system.ports import DeadLetter

    old = f"{keys.prefix}:dlq"
    records = client.lrange(old, 0, -1)  # newest first; RPUSH keeps that order
    for record in records:
        try:
            actor = DeadLetter.from_record(record).actor
        except Exception:  # an unreadable record goes to partition 0, as new ones do
            actor = ""
        client.rpush(keys.dlq(keys.part_of(actor) if actor else 0), record)
    client.delete(old)
    return len(records)


def _deferred(client: Any, keys: Keys) -> int:
    """Each deferred message into its target's partition; its body into the bucket that
    promotion reads (by its target's partition, whatever partition its id names)."""
    p = keys.prefix
    bodies: dict[bytes, bytes] = {}
    buckets = list(client.scan_iter(match=f"{p}:{{dq*}}:m*", count=1000))
    for bucket in buckets:
        bodies.update(client.hgetall(bucket))
    dues = list(client.scan_iter(match=f"{p}:{{dq*}}:due", count=1000))
    n = 0
    for due in dues:
        for message_id, score in client.zrange(due, 0, -1, withscores=True):
            body = bodies.get(message_id)
            if body is None:
                continue  # promoted or cancelled meanwhile
            target = body.partition(b"\n")[0].decode()
            part = keys.part_of(target)
            bucket = int(message_id[20:23], 16) % BUCKETS
            client.hset(keys.part(part, f"m{bucket}"), message_id, body)
            client.zadd(keys.due(part), {message_id: score})
            n += 1
    if buckets or dues:
        client.delete(*buckets, *dues)
    return n
