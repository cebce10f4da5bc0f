"""The Redis implementation of every port, one Lua script per atomic step."""

from __future__ import annotations

import logging
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from actor_system.adapters.redis.clock import RedisClock
from actor_system.adapters.redis.keys import Keys
from actor_system.clock import SystemClock
from actor_system.envelope import decode
from actor_system.errors import BackendError, ConfigError, DecodeError
from actor_system.ports import (
    Claim,
    Commit,
    Dead,
    DeadLetter,
    Done,
    Failed,
    Keep,
    Outcome,
    Withdraw,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actor_system.envelope import Outgoing
    from actor_system.options import Options
    from actor_system.ports import Clock

log = logging.getLogger("actor_system")

_SCRIPTS = (
    "push",
    "promote",
    "poll",
    "begin",
    "commit",
    "renew",
    "cancel",
    "redrive",
    "land",
    "unstage",
    "awake",
)
_PUSH_CHUNK = 500  # messages per push script call, to bound one script's run time
# Due messages moved per poll, split over the shards that have some due: Redis runs a
# pipeline's scripts back to back, so this bounds how long other clients wait behind one.
_PROMOTE_PER_POLL = 512
_FAKE_POLL_S = 0.005
_NOTHING_DUE = 2**62
_CONNECT_TIMEOUT_S = 2.0
# A Redis that accepted the connection but stopped answering (a hung or paused server) fails
# a call after this long instead of holding the drain until Lambda kills it.
_SOCKET_TIMEOUT_S = 10.0
_BLOCK_S = 5.0  # the longest blocking read: well inside the socket timeout
# How long a landed message's id is remembered, so that an SQS copy landing after it is
# dropped even before the actor has processed it (then its done set drops later copies).
_LANDED_MS = 3_600_000
# How long a cancel is remembered, so that a cancel retried after its answer was lost (a
# reset connection) still answers True.
_CANCEL_RECEIPT_MS = 3_600_000
_LOOK_AGAIN_MS = 5_000  # every shard is promoted at least this often, whatever the epoch
# Tries of a pipeline whose connection reset (a lost answer); a refused connection fails
# each at once, a silent one after the socket timeout (each try after the first then waits
# for a connect, at most the connect timeout).
_TRIES_ON_RESET = 3


# Until keys are partitioned by hash slot, every script touches keys of many slots.
CLUSTER_UNSUPPORTED = (
    "Redis Cluster is not supported yet: its scripts would fail with CROSSSLOT or MOVED, "
    "some after writing part of their effects. Point the URL at a single node, or at an "
    "ElastiCache (Redis OSS or Valkey) replication group with cluster mode disabled"
)


def client_from_url(url: str) -> tuple[redis.Redis, bool]:
    """A client for ``redis://``, ``rediss://`` or ``fakeredis://``; the flag says whether the
    server supports blocking waits across processes (fakeredis lives in this process).
    Raises ConfigError for a URL it cannot use: an unknown scheme or query parameter, or
    ``?cluster=true``."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis", "rediss", "unix"):
        query = parse_qsl(parts.query)
        cluster = [v for k, v in query if k == "cluster"]
        if cluster:
            if cluster[-1].lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"?cluster= takes true or false, got {cluster[-1]!r}")
            if cluster[-1].lower() in ("true", "1", "yes"):
                raise ConfigError(CLUSTER_UNSUPPORTED)
            rest = urlencode([(k, v) for k, v in query if k != "cluster"])
            url = urlunsplit(parts._replace(query=rest))
        try:
            # A Redis that cannot be reached (a security group, a wrong host) fails a connect
            # in seconds, not after the OS's minutes of SYN retries, and one that stops
            # answering fails a call in 10 s: a Lambda invocation can still answer before
            # its deadline. ?socket_connect_timeout= / ?socket_timeout= in the URL win.
            # TCP keepalive only where there is TCP: a unix socket's connection takes none.
            tcp = {"socket_keepalive": True} if scheme != "unix" else {}
            client = redis.Redis.from_url(
                url,
                health_check_interval=30,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                socket_timeout=_SOCKET_TIMEOUT_S,
                **tcp,
            )
        except ValueError as e:
            raise ConfigError(f"invalid Redis URL: {e}") from None
        _check_parameters(client)
        return client, True
    if scheme == "fakeredis":
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer()), False
    raise ConfigError(
        f"unknown URL scheme {scheme!r} for the Redis URL; expected redis://, rediss:// or "
        "fakeredis://"
    )


def block_seconds(client: Any) -> float:
    """The longest blocking read on ``client``: 5 s, or half its socket timeout when that is
    shorter (``?socket_timeout=`` in the URL), so that a wait for work ends well before the
    read times out. A longer wait is made of several."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    timeout = kwargs.get("socket_timeout")
    if isinstance(timeout, int | float) and timeout > 0:
        return min(_BLOCK_S, timeout / 2)
    return _BLOCK_S


def _check_parameters(client: redis.Redis) -> None:
    """Build one connection object (it does not connect) from the URL's parameters, so that
    one redis-py does not know fails here, naming it, rather than as a TypeError at the first
    command."""
    pool = client.connection_pool
    try:
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as e:
        found = re.search(r"keyword argument '(\w+)'", str(e))
        name = found.group(1) if found else str(e)
        raise ConfigError(f"unknown parameter {name!r} in the Redis URL") from None


def _load_script(name: str) -> str:
    folder = resources.files("actor_system.adapters.redis") / "scripts"
    return (folder / "lib.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


class RedisBackend:
    """Mailbox, TurnStore, DelayQueue and DeadLetters on one Redis (or fakeredis) client."""

    def __init__(self, *, client: redis.Redis, options: Options, blocking: bool = True) -> None:
        self.client = client
        self.options = options
        self.keys = Keys(options.prefix, options.delay_shards)
        self.blocking = blocking
        self._source = {name: _load_script(name) for name in _SCRIPTS}
        self._sha: dict[str, str] = {}
        self.block_s = block_seconds(client)
        self._shard_due: list[int | None] = [None] * self.keys.delay_shards
        self._epoch = -1
        self._looked_at = 0
        # Cancels leave a tombstone this long when deferred messages also live outside Redis.
        self.tombstone_ms = 0
        # How long the actor's state hash outlives its last write (0: for good; S3 state
        # keeps only a marker in Redis, which may expire).
        self.state_ttl_ms = 0

    @classmethod
    def from_url(cls, url: str, options: Options) -> RedisBackend:
        client, blocking = client_from_url(url)
        return cls(client=client, options=options, blocking=blocking)

    # -- plumbing -------------------------------------------------------------------------

    def _load_scripts(self) -> None:
        if self.blocking and self._cluster_enabled():
            # Before any script runs: on a cluster some would fail after writing part of
            # their effects.
            raise ConfigError(f"{CLUSTER_UNSUPPORTED} (the server reports cluster_enabled:1)")
        # All or nothing: a connection lost halfway must not leave some scripts unknown.
        loaded = {name: self.client.script_load(source) for name, source in self._source.items()}
        self._sha = loaded

    def _cluster_enabled(self) -> bool:
        """Whether the server runs in cluster mode. A user whose ACL denies INFO (often
        ``-@dangerous``), or a server that renamed it, is taken as a single node."""
        try:
            return bool(self.client.info("cluster").get("cluster_enabled"))
        except ResponseError:
            return False

    def _run(
        self, calls: Sequence[tuple[str, Sequence[Any], Sequence[Any]]], what: str
    ) -> list[Any]:
        """Run scripts in one pipelined round trip; reload them once if Redis lost them."""
        if not calls:
            return []
        lost = 0
        for _ in range(_TRIES_ON_RESET + 2):
            try:
                if not self._sha:
                    self._load_scripts()
                pipe = self.client.pipeline(transaction=False)
                for name, keys, args in calls:
                    pipe.evalsha(self._sha[name], len(keys), *keys, *args)
                return pipe.execute()
            except NoScriptError:
                # Every script is missing after a restart or SCRIPT FLUSH, so none ran. A new
                # dict, not clear(): another thread may be reading this one.
                self._sha = {}
            except RedisConnectionError as e:
                # The connection broke: the scripts may have run and only their answers been
                # lost. Each is safe to run again with the same arguments (a poll's and a
                # begin's token finds what the first run took), so another try, on a new
                # connection, costs a round trip instead of stranding a lease. A few: the
                # new connection's own handshake may be cut too.
                lost += 1
                if lost >= _TRIES_ON_RESET:
                    raise BackendError(f"Redis {what} failed: {type(e).__name__}: {e}") from e
            except RedisError as e:
                raise BackendError(f"Redis {what} failed: {type(e).__name__}: {e}") from e
        raise BackendError(f"Redis {what} failed: scripts could not be loaded")

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RedisError as e:
            raise BackendError(f"Redis {what} failed: {type(e).__name__}: {e}") from e

    def _deliveries(self, items: Sequence[Outgoing]) -> list[Any]:
        args: list[Any] = []
        for item in items:
            due = "" if item.due_ms is None else item.due_ms
            args += [item.target, item.id, due, self.keys.shard_of(item.id), item.entry]
        return args

    # -- Mailbox --------------------------------------------------------------------------

    def push(self, items: Sequence[Outgoing], now_ms: int, wake_ms: int = 0) -> tuple[int, bool]:
        calls = [
            (
                "push",
                [self.keys.ready, self.keys.awake],
                [
                    self.options.prefix,
                    now_ms,
                    wake_ms,
                    *self._deliveries(items[i : i + _PUSH_CHUNK]),
                ],
            )
            for i in range(0, len(items), _PUSH_CHUNK)
        ]
        results = self._run(calls, "push")
        return sum(int(n) for n, _ in results), any(wake for _, wake in results)

    def claim_drain(self, wake_ms: int) -> bool:
        """True if actors are ready and no drain is running or on its way: the caller
        starts one (P:awake is taken for ``wake_ms``)."""
        keys = [self.keys.ready, self.keys.awake]
        return bool(self._run([("awake", keys, ["wake", wake_ms])], "wake")[0])

    def drop_wake(self) -> None:
        """Forget a drain claimed for a wake that could not be sent."""
        keys = [self.keys.ready, self.keys.awake]
        self._run([("awake", keys, ["drop", 0])], "wake")

    def lease_expiry_ms(self) -> int | None:
        """When the earliest lease held expires (a dead holder's actor is recovered then)."""
        first = self._call("leases", self.client.zrange, self.keys.leases, 0, 0, False, True)
        return int(first[0][1]) if first else None

    def rest(self) -> bool:
        """A drain that found nothing to do may end: True if no actor is ready (the next
        send then wakes a drain), False if work arrived meanwhile (look again)."""
        keys = [self.keys.ready, self.keys.awake]
        return bool(self._run([("awake", keys, ["rest", 0])], "rest")[0])

    def poll(
        self, now_ms: int, max_actors: int, lease_ms: int, awake_ms: int = 0, token: str = ""
    ) -> tuple[list[str], int]:
        k = self.keys
        # Only shards whose earliest due time has come (or is unknown) are promoted; the
        # epoch returned by poll.lua says when another producer made that knowledge stale.
        shards = [s for s, due in enumerate(self._shard_due) if due is None or due <= now_ms]
        per_shard = max(16, _PROMOTE_PER_POLL // max(len(shards), 1))
        calls: list[tuple[str, Sequence[Any], Sequence[Any]]] = [
            (
                "promote",
                [k.delay_due(s), k.ready],
                [now_ms, per_shard, self.options.prefix, s],
            )
            for s in shards
        ]
        calls.append(
            (
                "poll",
                [k.leases, k.ready, k.paused],
                [now_ms, max_actors, self.options.prefix, lease_ms, awake_ms, token],
            )
        )
        *promoted, (epoch, *actors) = self._run(calls, "poll")
        for shard, (_, left) in zip(shards, promoted, strict=True):
            self._shard_due[shard] = _NOTHING_DUE if left < 0 else int(left)
        if epoch != self._epoch or now_ms - self._looked_at >= _LOOK_AGAIN_MS:
            # The epoch only grows, unless Redis lost its last writes (a restart from an
            # older snapshot, a failover): then it may repeat a value this poller has seen,
            # so every shard is looked at again now and then whatever the epoch says.
            self._epoch = epoch
            self._looked_at = now_ms
            self._shard_due = [None] * k.delay_shards
        return [a.decode() for a in actors], sum(n for n, _ in promoted)

    def wait_ready(self, timeout_s: float) -> bool:
        if not self.blocking:
            # fakeredis runs in this process: nobody else can push while we wait.
            time.sleep(min(timeout_s, _FAKE_POLL_S))
            return False
        wait_s = min(max(timeout_s, 0.001), self.block_s)
        got = self._call("wait", self.client.blpop, [self.keys.wake], wait_s)
        return got is not None

    # -- TurnStore ------------------------------------------------------------------------

    def begin(
        self, actors: Sequence[str], token: str, lease_ms: int, batch: int, now_ms: int
    ) -> list[Claim | None]:
        calls = [
            ("begin", self.keys.begin_keys(a), [token, lease_ms, now_ms, batch, a]) for a in actors
        ]
        claims: list[Claim | None] = []
        for actor, res in zip(actors, self._run(calls, "begin"), strict=True):
            if not res:
                claims.append(None)
                continue
            fence, state, version, recovered, dups, *flat = res
            entries = [(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 3)]
            errors = {
                flat[i][:32].decode("ascii", "replace"): flat[i + 2].decode("utf-8", "replace")
                for i in range(0, len(flat), 3)
                if flat[i + 2]
            }
            claims.append(
                Claim(
                    actor,
                    int(fence),
                    state or None,
                    int(version),
                    entries,
                    int(recovered),
                    int(dups),
                    errors,
                )
            )
        return claims

    def commit(self, commits: Sequence[Commit], now_ms: int) -> list[int | None]:
        o = self.options
        calls = []
        for c in commits:
            args: list[Any] = [
                c.token,
                c.actor,
                now_ms,
                c.state or b"",
                c.fence,
                c.done_window_ms,
                c.done_max,
                o.prefix,
                len(c.actions),
                *[_action(a) for a in c.actions],
                len(c.outbox),
                *self._deliveries(c.outbox),
            ]
            cancels = [(mid, s) for mid in c.cancels for s in self._shards_of(mid)]
            args.append(len(cancels))
            for mid, shard in cancels:
                args += [mid, shard]
            args += [
                self.tombstone_ms,
                -1 if c.state_is_default else self.state_ttl_ms,
                c.pause_ms,
                c.reply_ttl_ms,
                len(c.replies),
            ]
            for mid, record in c.replies:
                args += [mid, record]
            args += [1 if c.delete else 0, c.idle_ttl_ms]
            calls.append(("commit", self.keys.commit_keys(c.actor), args))
        return [int(r[1]) if r[0] == 1 else None for r in self._run(calls, "commit")]

    def reply(self, message_id: str) -> bytes | None:
        """The stored reply record of a message, if any."""
        found = self._call("reply", self.client.lindex, self.keys.reply(message_id), 0)
        return None if found is None else bytes(found)

    def wait_reply(self, message_id: str, timeout_s: float) -> bytes | None:
        """The reply record of a message, waiting up to ``timeout_s`` for its commit: a
        blocking move of the one-element list onto itself, which returns the record the
        moment it is written and leaves it for later readers (no polling)."""
        if not self.blocking or timeout_s <= 0:
            return self.reply(message_id)
        key = self.keys.reply(message_id)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            wait_s = min(max(left, 0.001), self.block_s)
            found = self._call("reply", self.client.blmove, key, key, wait_s)
            if found is not None:
                return bytes(found)
            if left <= self.block_s:
                return None

    def renew(self, actor: str, token: str, lease_ms: int, now_ms: int) -> bool:
        keys = [self.keys.actor(actor, "lease"), self.keys.leases]
        return bool(self._run([("renew", keys, [token, lease_ms, now_ms, actor])], "renew")[0])

    def load_state(self, actor: str) -> tuple[bytes | None, int]:
        data, version = self._call(
            "state read", self.client.hmget, self.keys.actor(actor, "state"), ["d", "v"]
        )
        return data, int(version or 0)

    # -- DelayQueue -----------------------------------------------------------------------

    def cancel(self, message_id: str) -> bool:
        removed, _ = self._cancel(message_id)
        return removed

    def _cancel(self, message_id: str) -> tuple[bool, bool]:
        """(removed from the sorted set, not known as cancelled or landed elsewhere)."""
        k = self.keys
        calls = [
            (
                "cancel",
                [k.delay_due(s), k.delay_msg(s, message_id), k.old_delay_msg(s, message_id)],
                # One tombstone per cancel: a second would read the first as "cancelled before".
                [
                    message_id,
                    self.tombstone_ms if n == 0 else 0,
                    self.options.prefix,
                    _CANCEL_RECEIPT_MS,
                ],
            )
            for n, s in enumerate(self._shards_of(message_id))
        ]
        results = self._run(calls, "cancel")
        return any(bool(r[0]) for r in results), bool(results[0][1])

    def _shards_of(self, message_id: str) -> list[int]:
        """Where a deferred message may be: its shard, and the one a message deferred before
        ids carried their target would be in (delivered and cancellable after an upgrade)."""
        new, old = self.keys.shard_of(message_id), self.keys.old_shard_of(message_id)
        return [new] if new == old else [new, old]

    def accept_deferred(self, bodies: Sequence[str | dict[str, Any]], now_ms: int) -> int:
        """Land deferred-message bodies received from SQS or handed over by a schedule
        (``actor_system.adapters.delay``): due ones into mailboxes, the others out again for
        another hop or into the sorted set. Malformed ones are dead-lettered with the reason;
        bodies of wakes and continuations are skipped. Returns how many reached their
        mailboxes."""
        from actor_system.adapters.delay import decode_body

        items: list[Outgoing] = []
        dead: list[bytes] = []
        for body in bodies:
            try:
                item = decode_body(body)
            except DecodeError as e:
                log.error("dead letter from the delay queue: %s", e)
                dead.append(dead_record(str(e), e.raw, now_ms))
                continue
            if item is not None:
                items.append(item)
        delivered, _ = self._land_received(items, now_ms)
        if dead:
            self._call("dead letter", self.client.lpush, self.keys.dlq, *dead)
        return delivered

    def _land_received(self, items: list[Outgoing], now_ms: int) -> tuple[int, set[str]]:
        """Land deferred messages received from another delay queue, or send far ones out for
        another hop; returns (how many reached their mailboxes, the ids sent out again)."""
        # SQS returns messages in no particular order: land them in due order (then id
        # order, which is send order for one sender), as the sorted set would deliver them.
        items.sort(key=lambda i: (i.due_ms or 0, i.id))
        hopped = self._hop(items, now_ms)
        delivered, _, _ = self.land([i for i in items if i.id not in hopped], now_ms)
        return delivered, hopped

    def _hop(self, items: Sequence[Outgoing], now_ms: int) -> set[str]:
        """Ids sent out again to another delay queue (none: Redis holds every message)."""
        return set()

    def land(self, items: Sequence[Outgoing], now_ms: int) -> tuple[int, int, int]:
        """Deliver deferred messages that come back from another delay queue: due ones to
        their mailboxes, the others to the sorted set at their exact due time, cancelled
        ones nowhere. Returns how many went to (mailboxes, the sorted set, nowhere)."""
        calls = [
            (
                "land",
                [self.keys.ready],
                [
                    self.options.prefix,
                    now_ms,
                    _LANDED_MS,
                    *self._deliveries(items[i : i + _PUSH_CHUNK]),
                ],
            )
            for i in range(0, len(items), _PUSH_CHUNK)
        ]
        totals = [0, 0, 0]
        for counts in self._run(calls, "land"):
            totals = [t + int(c) for t, c in zip(totals, counts, strict=True)]
        return totals[0], totals[1], totals[2]

    def known_due_ms(self) -> int | None:
        if any(d is None for d in self._shard_due):
            return 0  # a shard to look at again (a producer sent an earlier due time): now
        known = [d for d in self._shard_due if d is not None and d != _NOTHING_DUE]
        return min(known) if known else None

    def next_due_ms(self) -> int | None:
        """The earliest time something becomes due: a deferred message, or an actor waiting
        out a retry's backoff (P:paused)."""
        pipe = self.client.pipeline(transaction=False)
        for s in range(self.keys.delay_shards):
            pipe.zrange(self.keys.delay_due(s), 0, 0, withscores=True)
        pipe.zrange(self.keys.paused, 0, 0, withscores=True)
        *firsts, resting = self._call("next due", pipe.execute)
        self._shard_due = [int(f[0][1]) if f else _NOTHING_DUE for f in firsts]
        dues = [d for d in self._shard_due if d is not None and d != _NOTHING_DUE]
        dues += [int(resting[0][1])] if resting else []
        return min(dues) if dues else None

    def pending(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for s in range(self.keys.delay_shards):
            pipe.zcard(self.keys.delay_due(s))
        return int(sum(self._call("pending", pipe.execute)))

    def deferred(
        self, limit: int = 100, actor: str | None = None
    ) -> list[tuple[str, str, int, str]]:
        """Pending deferred messages as (id, actor key, due ms, message type), earliest
        first; with ``actor``, only that actor's (found among the earliest ``limit * 100`` of
        each shard)."""
        scan = limit if actor is None else limit * 100
        pipe = self.client.pipeline(transaction=False)
        for s in range(self.keys.delay_shards):
            pipe.zrange(self.keys.delay_due(s), 0, scan - 1, withscores=True)
        shards = self._call("deferred", pipe.execute)
        flat = iter(
            self._bodies([(s, mid.decode()) for s, rows in enumerate(shards) for mid, _ in rows])
        )
        values = [[next(flat) for _ in rows] for rows in shards]
        out = []
        for rows, vals in zip(shards, values, strict=True):
            for (mid, due), value in zip(rows, vals, strict=False):
                target, _, body = value.partition(b"\n") if value else (b"?", b"", b"")
                if actor is None or target.decode() == actor:
                    out.append((mid.decode(), target.decode(), int(due), _type_of(mid, body)))
        return sorted(out, key=lambda r: r[2])[:limit]

    def _bodies(self, rows: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """The stored bodies (``target \n entry without its id``) of deferred messages given
        as (shard, id), in one round trip; a message deferred before ids carried their
        target is in the bucket of the older rule."""
        pipe = self.client.pipeline(transaction=False)
        for s, mid in rows:
            pipe.hget(self.keys.delay_msg(s, mid), mid)
            pipe.hget(self.keys.old_delay_msg(s, mid), mid)
        got = self._call("deferred bodies", pipe.execute)
        return [new or old for new, old in zip(got[0::2], got[1::2], strict=True)]

    def stats(self) -> dict[str, Any]:
        """Counts for operators: ready actors, leases, mailbox depths (by SCAN), deferred."""
        k = self.keys
        depths: dict[str, int] = {}
        inflight: dict[str, int] = {}
        for suffix, into in (("mb", depths), ("inflight", inflight)):
            names = self._call("stats", self._scan, f"{k.prefix}:{{*}}:{suffix}")
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            for name, n in zip(names, self._call("stats", pipe.execute), strict=True):
                actor = name.decode()[len(k.prefix) + 2 : -len(suffix) - 2]
                into[actor] = int(n)
        return {
            "ready_actors": int(self._call("stats", self.client.zcard, k.ready)),
            "leases_held": int(self._call("stats", self.client.zcard, k.leases)),
            "mailbox_messages": sum(depths.values()),
            "in_flight_messages": sum(inflight.values()),
            "mailboxes": dict(sorted(depths.items(), key=lambda kv: -kv[1])),
            "pending_deferred": RedisBackend.pending(self),  # in the sorted set
            "next_due_ms": self.next_due_ms(),
            "dead_letters": self.dead_letter_count(),
        }

    def _scan(self, match: str) -> list[bytes]:
        return list(self.client.scan_iter(match=match, count=1000))

    # -- DeadLetters ----------------------------------------------------------------------

    def dead_letters(self, limit: int) -> list[bytes]:
        return list(self._call("dead letters", self.client.lrange, self.keys.dlq, 0, limit - 1))

    def dead_letter_count(self) -> int:
        return int(self._call("dead letters", self.client.llen, self.keys.dlq))

    def redrive(
        self, record: bytes, actor: str, message_id: str, entry: bytes, now_ms: int
    ) -> bool:
        """Move one dead letter (its exact record bytes) back to its actor's mailbox."""
        args = [self.options.prefix, now_ms, record, actor, message_id, entry]
        keys = [self.keys.dlq, self.keys.ready]
        return bool(self._run([("redrive", keys, args)], "redrive")[0])

    def remove_dead_letter(self, record: bytes) -> bool:
        """Delete one dead letter by its exact record bytes."""
        return bool(self._call("purge", self.client.lrem, self.keys.dlq, 1, record))

    def claim_wake(self, due_ms: int, now_ms: int) -> bool:
        key = f"{self.keys.prefix}:armed"
        armed = self._call("wake", self.client.get, key)
        if armed is not None and now_ms < int(armed) <= due_ms:
            return False  # an earlier (or the same) wake is already on its way
        ttl_ms = max(due_ms - now_ms, 0) + 60_000
        self._call("wake", self.client.set, key, due_ms, None, ttl_ms)
        return True

    def recover(self, now_ms: int) -> int:
        """Nothing to send again: with state in Redis, a lost commit took its sends along
        with its state change and its processed ids (they run again)."""
        return 0

    def server_clock(self) -> Clock:
        """Redis's own time for a server shared by processes; fakeredis lives in this
        process, whose clock is then the only one."""
        if not self.blocking:
            return SystemClock()
        return RedisClock(self.client)

    def close(self) -> None:
        self.client.close()


def _type_of(message_id: bytes, body: bytes) -> str:
    """The message type of a stored deferred body (the entry without its id); "?" if it
    cannot be read."""
    try:
        return decode(message_id + body).type
    except DecodeError:
        return "?"


def dead_record(reason: str, raw: bytes, now_ms: int) -> bytes:
    """A dead-letter record for bytes that never reached an actor (no actor, no id)."""
    return DeadLetter("", "", reason, 0, now_ms, "", raw, first_error=reason).encode()


def _action(outcome: Outcome) -> bytes:
    """An outcome as commit.lua takes it: a code byte, then the error text or the record."""
    match outcome:
        case Done():
            return b"d"
        case Keep():
            return b"k"
        case Withdraw():
            return b"w"
        case Failed(error=error):
            return b"r" + error.encode("utf-8", "replace")
        case Dead(letter=letter):
            return b"x" + letter.encode()
    raise TypeError(f"not an outcome: {outcome!r}")
