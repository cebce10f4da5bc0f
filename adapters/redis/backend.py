"""The Redis implementation of every port, one Lua script per atomic step."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actor_system.adapters.redis.clock import RedisClock
from actor_system.adapters.redis.keys import REMINDER_BUCKETS, Keys
from actor_system.clock import SystemClock
from actor_system.envelope import Outgoing, decode
from actor_system.errors import BackendError, ConfigError, DecodeError, redact_url
from actor_system.ports import (
    Claim,
    Commit,
    Dead,
    DeadLetter,
    Done,
    Failed,
    Keep,
    Withdraw,
)
from actor_system.reminders import is_member, member_parts

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from actor_system.options import Options
    from actor_system.ports import Clock

log = logging.getLogger("actor_system")

_SCRIPTS = (
    "push",
    "signal",
    "hints",
    "poll",
    "begin",
    "commit",
    "flushed",
    "renew",
    "cancel",
    "redrive",
    "land",
    "unstage",
    "promote",
    "awake",
    "lane",
    "launch",
    "index",
)
# The rest of an actor in the long-work lane (lib.lua): past any real time.
LANE_MS = 2**50
# Scripts whose answer starts with their signals (lib.lua): applied by the script itself on
# a single node, returned for signal.lua on a cluster.
_SIGNALLING = frozenset({"push", "poll", "commit", "land", "redrive", "promote"})
_PUSH_CHUNK = 500  # messages per push script call, to bound one script's run time
# Due messages moved per poll, split over the partitions that have some due: Redis runs a
# pipeline's scripts back to back, so this bounds how long other clients wait behind one.
_PROMOTE_PER_POLL = 512
_FAKE_POLL_S = 0.005
_NOTHING_DUE = 2**62
# How long a committer has to deliver its outbox (sends to other partitions, on a cluster)
# before whoever polls the partition delivers it.
_OUTBOX_GRACE_MS = 10_000
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
# Tries of a pipeline whose connection reset (a lost answer); a refused connection fails
# each at once, a silent one after the socket timeout (each try after the first then waits
# for a connect, at most the connect timeout).
_TRIES_ON_RESET = 3

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def client_from_url(url: str) -> tuple[Any, bool]:
    """A client for ``redis://``, ``rediss://`` or ``fakeredis://``; the flag says whether the
    server supports blocking waits across processes (fakeredis lives in this process).
    ``?cluster=true`` makes a Redis Cluster client (redis-py's ``RedisCluster``, which follows
    MOVED and ASK); without it, a node that reports ``cluster_enabled:1`` is switched to one at
    the first call (``RedisBackend``). Raises ConfigError for a URL it cannot use: an unknown
    scheme or query parameter."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis", "rediss", "unix"):
        query = parse_qsl(parts.query)
        cluster = [v.lower() for k, v in query if k == "cluster"]
        if cluster and cluster[-1] not in _TRUE + _FALSE:
            raise ConfigError(f"?cluster= takes true or false, got {cluster[-1]!r}")
        if cluster:
            url = urlunsplit(
                parts._replace(query=urlencode([(k, v) for k, v in query if k != "cluster"]))
            )
            if cluster[-1] in _TRUE:
                if scheme == "unix":
                    raise ConfigError(
                        "?cluster=true needs a redis:// or rediss:// URL, not unix://"
                    )
                return cluster_client(url), True
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
    holder = getattr(client, "connection_pool", None) or getattr(client, "nodes_manager", None)
    kwargs = getattr(holder, "connection_kwargs", {})
    timeout = kwargs.get("socket_timeout")
    if isinstance(timeout, int | float) and timeout > 0:
        return min(_BLOCK_S, timeout / 2)
    return _BLOCK_S


def _script_routing() -> dict[str, Any]:
    """Where redis-py routes commands by policy (8.x), a policy for EVALSHA: keyed, by its
    first key. Without it a cluster pipeline asks a node (COMMAND GETKEYS), one round trip per
    script call, where each call's keys are right in its arguments."""
    try:
        from redis._parsers.commands import (
            CommandPolicies,
            RequestPolicy,
            ResponsePolicy,
        )
        from redis.commands.policies import BasePolicyResolver, StaticPolicyResolver
    except ImportError:  # redis-py before 8: pipelines read EVALSHA's keys themselves
        return {}
    keyed = CommandPolicies(
        request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED
    )

    class Scripts(BasePolicyResolver):
        def with_fallback(self, fallback: Any) -> Any:
            return Scripts(self._policies, fallback)

    policies = {"core": {"evalsha": keyed, "eval": keyed}}
    return {"policy_resolver": Scripts(policies, StaticPolicyResolver())}


_SCRIPT_ROUTING = _script_routing()


def cluster_client(url: str) -> RedisCluster:
    """A Redis Cluster client for a URL naming any node (the others are discovered), with the
    same timeouts as a single node's; ConfigError for a URL it cannot use."""
    try:
        client = RedisCluster.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_keepalive=True,
            **_SCRIPT_ROUTING,
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid Redis Cluster URL: {e}") from None
    except RedisError as e:
        raise BackendError(f"Redis Cluster at {url!r} cannot be reached: {e}") from e
    return client


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
    """Mailbox, TurnStore, DelayQueue and DeadLetters on one Redis, Redis Cluster or fakeredis.

    The same scripts run on both: each touches one partition's slot (lib.lua). On a single node
    they run in one pipeline and apply their signals themselves (``fused``); on a cluster a
    turn's sends to other partitions go through its outbox and signals through signal.lua.
    """

    def __init__(
        self,
        *,
        client: Any,
        options: Options,
        blocking: bool = True,
        hop: Callable[[Sequence[Outgoing], int], set[str]] | None = None,
        tombstone_ms: int = 0,
        state_ttl_ms: int = 0,
    ) -> None:
        self._client = client
        self.options = options
        self.keys = Keys(options.prefix, options.partitions)
        self.blocking = blocking
        self._source = {name: _load_script(name) for name in _SCRIPTS}
        self._sha: dict[str, str] = {}
        self._url: str | None = None
        self._detected = isinstance(client, RedisCluster) or not blocking
        self.block_s = block_seconds(client)
        n = self.keys.partitions
        # When each partition next needs a poll's upkeep (a deferred message comes due, a
        # lease expires, a backoff ends), as this process last learnt; None: look now.
        self._next: list[int | None] = [None] * n
        # The oldest ready time in each partition the last poll left ready actors in: pops go
        # to the partitions with the oldest first, so that the oldest ready actors are served
        # first over all partitions (as within one).
        self._heads: dict[int, int] = {}
        self._seen_hints: dict[int, int] = {}  # hints to drop (found empty at that generation)
        self._looked: dict[int, int] = {}  # the hint generation of each partition's last poll
        self._swept_ms = 0
        self._last_poll: tuple[str, set[int]] = ("", set())
        self._signals: list[str] = []  # to apply with the next round trip (cluster)
        self._lock = threading.Lock()
        # Cancels leave a tombstone this long when deferred messages also live outside Redis.
        self.tombstone_ms = tombstone_ms
        # How long the actor's state hash outlives its last write (0: for good; S3 state
        # keeps only a marker in Redis, which may expire).
        self.state_ttl_ms = state_ttl_ms
        # Sends deferred messages received from another delay queue out again for another
        # hop, returning the ids it sent (None: Redis holds every message).
        self.hop = hop

    @classmethod
    def from_url(cls, url: str, options: Options) -> RedisBackend:
        client, blocking = client_from_url(url)
        backend = cls(client=client, options=options, blocking=blocking)
        backend._url = url
        return backend

    @property
    def client(self) -> Any:
        """The client; a single-node client pointed at a cluster node becomes a cluster client
        at the first call."""
        if not self._detected:
            self._detect()
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value
        self._detected = isinstance(value, RedisCluster) or not self.blocking

    @property
    def fused(self) -> bool:
        """Whether scripts may reach every partition's keys (one node): they then run in one
        pipeline and apply their signals themselves."""
        return not isinstance(self.client, RedisCluster)

    def _detect(self) -> None:
        with self._lock:
            if self._detected:
                return
            try:
                cluster = self._cluster_enabled()
            except BackendError:
                # Not reachable yet: the caller's own command fails and says why; the next
                # call looks again.
                return
            if cluster:
                if self._url is None:
                    raise ConfigError(
                        "this Redis is a cluster node: pass a redis.cluster.RedisCluster "
                        "client, or a URL"
                    )
                self._client = cluster_client(self._url)
            self._detected = True

    # -- plumbing -------------------------------------------------------------------------

    def _load_scripts(self) -> None:
        self._check_layout()
        # All or nothing: a connection lost halfway must not leave some scripts unknown. On a
        # cluster, SCRIPT LOAD goes to every primary.
        loaded = {name: self.client.script_load(source) for name, source in self._source.items()}
        self._sha = loaded

    def _check_layout(self) -> None:
        """The partition count is fixed per deployment (it places every key): the first start
        records it, and one that differs is refused. Data of the layout before partitions
        (keys without a partition tag) is refused too, naming the command that moves it."""
        k, n = self.keys, self.keys.partitions
        pipe = self.client.pipeline(transaction=False)
        pipe.setnx(k.layout, n)
        pipe.get(k.layout)
        fresh, found = pipe.execute()
        if int(found) != n:
            raise ConfigError(
                f"this Redis (prefix {k.prefix!r}) holds data written with {int(found)} "
                f"partitions, and this process is set up with {n} (ACTOR_SYSTEM_PARTITIONS): "
                "the partition count is fixed per deployment"
            )
        if fresh and self.fused and old_layout(self.client, k.prefix):
            self.client.delete(k.layout)
            raise ConfigError(
                f"this Redis (prefix {k.prefix!r}) holds data in the key layout of "
                "actor-system 0.x, before partitions: stop every worker and run "
                "`actor-system migrate` once to move it"
            )

    def _cluster_enabled(self) -> bool:
        """Whether the server runs in cluster mode. A user whose ACL denies INFO (often
        ``-@dangerous``), or a server that renamed it, is taken as a single node."""
        try:
            return bool(self._client.info("cluster").get("cluster_enabled"))
        except ResponseError:
            return False
        except RedisError as e:
            raise BackendError(f"Redis connect failed: {type(e).__name__}: {e}") from e

    def _run(
        self,
        calls: Sequence[tuple[str, Sequence[Any], Sequence[Any]]],
        what: str,
        *,
        signals_too: bool = True,
    ) -> list[Any]:
        """Run scripts in one pipelined round trip (on a cluster, one per node, in parallel);
        load them where Redis lost them and run again only those. Signals returned by the
        scripts (cluster) go with the next round trip (``signals_too``)."""
        if not calls:
            return []
        calls = list(calls)
        signals: list[str] = []
        if signals_too:
            with self._lock:
                signals, self._signals = self._signals, []
        if signals:
            calls.append(("signal", self.keys.signal_keys(), [self.keys.prefix, 0, *signals]))
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        lost = 0
        for _ in range(_TRIES_ON_RESET + 3):
            try:
                if not self._sha:
                    self._load_scripts()
                pipe = self._pipeline()
                for i in todo:
                    name, keys, args = calls[i]
                    pipe.execute_command("EVALSHA", self._sha[name], len(keys), *keys, *args)
                answers = pipe.execute(raise_on_error=False)
            except RedisConnectionError as e:
                # The connection broke: the scripts may have run and only their answers been
                # lost. Each is safe to run again with the same arguments (a poll's and a
                # begin's token finds what the first run took), so another try, on a new
                # connection, costs a round trip instead of stranding a lease. A few: the
                # new connection's own handshake may be cut too.
                lost += 1
                if lost >= _TRIES_ON_RESET:
                    self._keep_signals(signals)
                    raise BackendError(f"Redis {what} failed: {type(e).__name__}: {e}") from e
                continue
            except RedisError as e:
                self._keep_signals(signals)
                raise BackendError(f"Redis {what} failed: {type(e).__name__}: {e}") from e
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(i)  # not run: a restarted or new node (failover, reshard)
                elif isinstance(answer, RedisConnectionError):
                    missing.append(i)  # its node's connection broke; safe to run again
                    lost += 1
                elif isinstance(answer, Exception):
                    self._keep_signals(signals)
                    raise BackendError(
                        f"Redis {what} failed: {type(answer).__name__}: {answer}"
                    ) from answer
                else:
                    results[i] = answer
            if not missing:
                break
            if lost >= _TRIES_ON_RESET:
                self._keep_signals(signals)
                raise BackendError(f"Redis {what} failed: connections kept breaking")
            if any(isinstance(answers[todo.index(i)], NoScriptError) for i in missing):
                self._sha = {}  # a new dict, not clear(): another thread may be reading it
            todo = missing
        else:
            raise BackendError(f"Redis {what} failed: scripts could not be loaded")
        if signals:
            results.pop()
        out = []
        fresh: list[str] = []
        for (name, _, _), answer in zip(calls, results, strict=False):
            if name in _SIGNALLING:
                sig = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
                if len(sig) > 1:
                    fresh.append(sig)
                answer = answer[1:]
            out.append(answer)
        self._keep_signals(fresh)
        for sig in fresh:
            for token in sig.split()[1:]:
                if token[0] != "l":  # left over by this process's poll, which knows of it
                    self._next[int(token[1:])] = None  # this process looks there next poll
        return out

    def _keep_signals(self, signals: Sequence[str]) -> None:
        if signals:
            with self._lock:
                self._signals.extend(signals)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RedisError as e:
            raise BackendError(f"Redis {what} failed: {type(e).__name__}: {e}") from e

    def _pipe(self, what: str, build: Any) -> list[Any]:
        """Plain commands in one pipelined round trip (on a cluster, one per node)."""
        try:
            pipe = self._pipeline()
            build(pipe)
            return list(pipe.execute())
        except RedisError as e:
            raise BackendError(f"Redis {what} failed: {type(e).__name__}: {e}") from e

    def _pipeline(self) -> Any:
        """A pipeline; on a cluster, one that routes script calls by their first key."""
        pipe = self.client.pipeline(transaction=False)
        resolver = _SCRIPT_ROUTING.get("policy_resolver")
        if resolver is not None and hasattr(pipe, "_policy_resolver"):
            # redis-py 8 builds a cluster pipeline with its own default policies, whatever
            # the client's: without ours, every EVALSHA costs a COMMAND GETKEYS first.
            pipe._policy_resolver = resolver
        return pipe

    def _signal_now(self, wake_ms: int) -> bool:
        """Apply pending signals now (a cluster): True if the caller must start a drain."""
        with self._lock:
            signals, self._signals = self._signals, []
        if not signals:
            return False
        args = [self.keys.prefix, wake_ms, *signals]
        try:
            return bool(self._run_plain("signal", self.keys.signal_keys(), args))
        except BackendError:
            self._keep_signals(signals)
            raise

    def _run_plain(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One script, without the pending signals (it may be the one applying them)."""
        return self._run([(name, keys, args)], name, signals_too=False)[0]

    def _deliveries(self, items: Sequence[Outgoing]) -> list[Any]:
        args: list[Any] = []
        for item in items:
            due = "" if item.due_ms is None else item.due_ms
            part = self.keys.part_of(item.target)
            args += [item.target, part, item.id, due, item.entry]
        return args

    def _groups(self, items: Sequence[Outgoing]) -> list[list[Outgoing]]:
        """Items in chunks a script takes: by partition on a cluster (in order within each)."""
        if self.fused:
            return [list(items[i : i + _PUSH_CHUNK]) for i in range(0, len(items), _PUSH_CHUNK)]
        by_part: dict[int, list[Outgoing]] = {}
        for item in items:
            by_part.setdefault(self.keys.part_of(item.target), []).append(item)
        return [
            group[i : i + _PUSH_CHUNK]
            for group in by_part.values()
            for i in range(0, len(group), _PUSH_CHUNK)
        ]

    def _parts(self) -> range:
        return range(self.keys.partitions)

    def _push_keys(self, group: Sequence[Outgoing], either: bool = False) -> list[str]:
        """The keys a push (or land, ``either``: a message may go either way) of one
        partition's items declares: its ready set first, then on a cluster every key it
        touches (a slot being moved then refuses the script whole: lib.lua)."""
        k = self.keys
        part = k.part_of(group[0].target)
        if self.fused:
            return [k.ready(part)]
        return [k.ready(part), k.paused(part), *k.delivery_keys(group, either)]

    # -- Mailbox --------------------------------------------------------------------------

    def push(self, items: Sequence[Outgoing], now_ms: int, wake_ms: int = 0) -> tuple[int, bool]:
        fused = self.fused
        inline = "1" if fused else "0"
        calls = [
            (
                "push",
                self._push_keys(group),
                [self.keys.prefix, inline, now_ms, wake_ms, *self._deliveries(group)],
            )
            for group in self._groups(items)
        ]
        results = self._run(calls, "push")
        n = sum(int(r[0]) for r in results)
        if fused:
            return n, any(int(r[1]) for r in results)
        return n, self._signal_now(wake_ms)

    def _any_ready(self) -> str:
        """'' on a single node (awake.lua counts), else '1'/'0' counted here."""
        if self.fused:
            return ""
        counts = self._pipe("ready", lambda p: [p.zcard(self.keys.ready(n)) for n in self._parts()])
        return "1" if any(int(c) for c in counts) else "0"

    def _awake(self, mode: str, wake_ms: int, ready: str) -> bool:
        k = self.keys
        args = [k.prefix, mode, wake_ms, ready, k.partitions]
        return bool(self._run_plain("awake", [k.awake, k.poke], args))

    def claim_drain(self, wake_ms: int) -> bool:
        """True if actors are ready and no drain is running or on its way: the caller
        starts one (P:{g}:awake is taken for ``wake_ms``)."""
        self._signal_now(0)
        return self._awake("wake", wake_ms, self._any_ready())

    def drop_wake(self) -> None:
        """Forget a drain claimed for a wake that could not be sent."""
        self._awake("drop", 0, "0")

    def lease_expiry_ms(self) -> int | None:
        """When the earliest lease held expires (a dead holder's actor is recovered then)."""
        firsts = self._pipe(
            "leases",
            lambda p: [p.zrange(self.keys.leases(n), 0, 0, withscores=True) for n in self._parts()],
        )
        found = [int(f[0][1]) for f in firsts if f]
        return min(found) if found else None

    def rest(self) -> bool:
        """A drain that found nothing to do may end: True if no actor is ready (the next
        send then wakes a drain), False if work arrived meanwhile (look again)."""
        self._signal_now(0)
        if not self.fused:
            # Poke cleared before counting: a send that finds the drain still running after
            # the count pokes it again, and the rest below then looks again.
            self._call("rest", self.client.delete, self.keys.poke)
        return self._awake("rest", 0, self._any_ready())

    def poll(
        self, now_ms: int, max_actors: int, lease_ms: int, awake_ms: int = 0, token: str = ""
    ) -> tuple[list[str], int]:
        # On a cluster the hints call marks this poller as a running drain (P:{g}:awake, in
        # the same slot); a single node's poll.lua does it in passing.
        hints = self._hints(0 if self.fused else awake_ms)
        promoted = 0
        if not self.fused:
            # Due messages first (a cluster promotes in promote.lua), so that this poll pops
            # their actors.
            due = [p for p, when in enumerate(self._next) if when is not None and when <= now_ms]
            for p, n in self._promote(now_ms, due, _PROMOTE_PER_POLL).items():
                promoted += n
                self._heads.setdefault(p, now_ms - 60_000)  # promoted: ready a minute early
        fresh = {p: gen for p, gen in hints.items() if self._looked.get(p) != gen}
        pops = self._share(list(self._heads), max_actors, fresh)
        parts = self._to_poll(now_ms, hints, token, set(pops))
        promote = max(16, _PROMOTE_PER_POLL // max(len(parts), 1))
        actors, n_promoted, left, popped = self._poll_pass(
            now_ms, parts, pops, lease_ms, token, promote, hints, awake_ms
        )
        promoted += n_promoted
        if not self.fused:
            # Due times this poll learnt of (a partition it had not looked at yet).
            due = [p for p in parts if (self._next[p] or _NOTHING_DUE) <= now_ms]
            for p, n in self._promote(now_ms, due, promote).items():
                promoted += n
                left[p] = left.get(p, 0) + n
                self._heads.setdefault(p, now_ms - 60_000)
        # Ready actors where none was known (a hint, a sweep, a message that came due): taken
        # now, oldest first, so that a poll that returns none means none is ready.
        # Not those that popped some (under the token, a poll run again returns what it
        # popped: the second pass would get the first's actors).
        room = max_actors - len(actors)
        unpopped = sorted(p for p in left if p not in popped)
        if room > 0 and unpopped:
            second = self._share(unpopped, room)
            got, _, _, _ = self._poll_pass(now_ms, sorted(second), second, lease_ms, token, 0, {})
            actors += got
        return actors, promoted

    def _promote(self, now_ms: int, parts: list[int], most: int) -> dict[int, int]:
        """Promote due deferred messages of ``parts`` on a cluster: their ids and actors read
        first, then promote.lua per partition declaring every key it touches. Returns how
        many each partition promoted."""
        if not parts:
            return {}
        k = self.keys
        found = self._pipe(
            "promote",
            lambda pipe: [pipe.zrangebyscore(k.due(p), "-inf", now_ms, 0, most) for p in parts],
        )
        due = {p: [m.decode() for m in ids] for p, ids in zip(parts, found, strict=True) if ids}
        if not due:
            return {}
        # A reminder's member names its actor; any other id's body does.
        rows = [(p, m) for p, ids in due.items() for m in ids if not is_member(m)]
        bodies = self._pipe(
            "promote", lambda pipe: [pipe.hget(k.bucket_at(p, m), m) for p, m in rows]
        )
        targets = {
            m: body.partition(b"\n")[0].decode()
            for (_, m), body in zip(rows, bodies, strict=True)
            if body
        }
        targets |= {m: member_parts(m)[0] for ids in due.values() for m in ids if is_member(m)}
        calls = []
        for p, ids in due.items():
            buckets = [k.bucket_at(p, m) for m in ids if not is_member(m)]
            keys = [k.due(p), k.ready(p), k.paused(p), *buckets]
            for m in ids:
                if m in targets:
                    keys += [k.actor(targets[m], n) for n in ("mb", "done", "doneold")]
            calls.append(("promote", list(dict.fromkeys(keys)), [k.prefix, "0", p, now_ms, *ids]))
        results = self._run(calls, "promote")
        return {p: int(r[0]) for p, r in zip(due, results, strict=True) if int(r[0])}

    def _poll_pass(
        self,
        now_ms: int,
        parts: list[int],
        pops: dict[int, int],
        lease_ms: int,
        token: str,
        promote: int,
        hints: dict[int, int],
        awake_ms: int = 0,
    ) -> tuple[list[str], int, dict[int, int], set[int]]:
        """One poll.lua per partition in one round trip: (actors popped, messages promoted,
        ready actors left per partition that has some, the partitions that popped some)."""
        k = self.keys
        inline = "1" if self.fused else "0"
        common = [k.prefix, inline, now_ms, lease_ms, token]
        # A cluster promotes in promote.lua, which declares the keys of the messages' actors.
        common += [promote if self.fused else 0, _OUTBOX_GRACE_MS, awake_ms if self.fused else 0]
        if self.fused:
            # One script for all of them: the names are built in it.
            groups = [parts[i : i + 64] for i in range(0, len(parts), 64)]
            if not groups and awake_ms > 0:
                groups = [[]]  # no partition to look at, but the running drain to mark
            calls: list[tuple[str, Sequence[Any], Sequence[Any]]] = [
                ("poll", [], [*common, *[x for p in group for x in (p, pops.get(p, 0))]])
                for group in groups
            ]
        else:
            memo = [token] if token else []
            groups = [[p] for p in parts]
            calls = [
                (
                    "poll",
                    k.poll_keys(p) + [k.part(p, f"polled:{t}") for t in memo],
                    [*common, p, pops.get(p, 0)],
                )
                for p in parts
            ]
        results = self._run(calls, "poll")
        actors: list[str] = []
        stale: list[str] = []
        promoted = 0
        left: dict[int, int] = {}
        popped: set[int] = set()
        for group, flat in zip(groups, results, strict=True):
            at = 0
            for p in group:
                n_promoted, next_ms, n_left, head, n_popped, n_stale = flat[at : at + 6]
                names = flat[at + 6 : at + 6 + int(n_popped) + int(n_stale)]
                at += 6 + int(n_popped) + int(n_stale)
                promoted += int(n_promoted)
                self._next[p] = _NOTHING_DUE if int(next_ms) < 0 else int(next_ms)
                if int(n_left) > 0:
                    self._heads[p] = int(head)
                    left[p] = int(n_left)
                else:
                    self._heads.pop(p, None)
                    if p in hints:
                        self._seen_hints[p] = hints[p]
                if p in hints:
                    self._looked[p] = hints[p]
                actors += [a.decode() for a in names[: int(n_popped)]]
                stale += [a.decode() for a in names[int(n_popped) :]]
                if int(n_popped):
                    popped.add(p)
        if stale:
            self._deliver_outboxes(stale, now_ms)
        return actors, promoted, left, popped

    def _hints(self, awake_ms: int = 0) -> dict[int, int]:
        """The partitions with hints, after dropping those this process found empty;
        ``awake_ms`` > 0: the caller counts as a running drain for that long."""
        with self._lock:
            seen, self._seen_hints = self._seen_hints, {}
        args = [awake_ms, *[x for p, gen in seen.items() for x in (p, gen)]]
        k = self.keys
        try:
            flat = self._run_plain("hints", [k.hints, k.wake, k.awake], args)
        except BackendError:
            with self._lock:
                self._seen_hints.update(seen)
            raise
        return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def _to_poll(
        self, now_ms: int, hints: dict[int, int], token: str, popping: set[int]
    ) -> list[int]:
        """The partitions this poll looks at: those it pops from, those hinted since this
        process last looked, those whose upkeep is due, those a round under the same token
        polled (a resumed round gets its actors back) and, every poll interval, all of them
        (a hint lost to a crash or a failover costs at most that)."""
        n = self.keys.partitions
        sweep = now_ms - self._swept_ms >= self.options.poll_interval_s * 1000
        if sweep:
            self._swept_ms = now_ms
            chosen = set(range(n))
        else:
            fresh = {p for p, gen in hints.items() if self._looked.get(p) != gen}
            chosen = popping | fresh
            chosen |= {p for p, due in enumerate(self._next) if due is None or due <= now_ms}
        last_token, last_parts = self._last_poll
        if token and token == last_token:
            chosen |= last_parts
        self._last_poll = (token, chosen)
        return sorted(chosen)

    def _share(
        self, parts: list[int], max_actors: int, hinted: dict[int, int] | None = None
    ) -> dict[int, int]:
        """How many ready actors to pop from each partition: ``max_actors`` in all, from the
        partitions known to have ready actors, those whose oldest waited longest first, then
        from those ``hinted`` since this process looked (oldest hint first) whose oldest is
        not known yet (the poll learns it)."""
        known = sorted((p for p in parts if p in self._heads), key=lambda p: self._heads[p])
        gens = hinted or {}
        unknown = sorted((p for p in gens if p not in self._heads), key=lambda p: gens[p])
        chosen = (known + unknown)[:max_actors]
        if not chosen or max_actors <= 0:
            return {}
        each, extra = divmod(max_actors, len(chosen))
        return {p: each + (1 if i < extra else 0) for i, p in enumerate(chosen)}

    def wait_ready(self, timeout_s: float) -> bool:
        if not self.blocking:
            # fakeredis runs in this process: nobody else can push while we wait.
            time.sleep(min(timeout_s, _FAKE_POLL_S))
            return False
        wait_s = min(max(timeout_s, 0.001), self.block_s)
        got = self._call("wait", self.client.blpop, [self.keys.wake], wait_s)
        return got is not None

    # -- outboxes (a cluster: a turn's sends to other partitions) --------------------------

    def _record(self, item: Outgoing) -> bytes:
        due = b"" if item.due_ms is None else str(item.due_ms).encode()
        part = str(self.keys.part_of(item.target)).encode()
        return b"s" + item.target.encode() + b"\n" + part + b"\n" + due + b"\n" + item.entry

    def _deliver_outboxes(self, actors: Sequence[str], now_ms: int) -> None:
        """Deliver the outboxes of actors whose committer did not (it died, or lost the
        answer), as a poll hands them out."""
        lists = self._pipe(
            "outbox",
            lambda p: [p.lrange(self.keys.actor(a, "outbox"), 0, -1) for a in actors],
        )
        self._flush({a: list(records) for a, records in zip(actors, lists, strict=True)}, now_ms)

    def _flush(self, outboxes: dict[str, list[bytes]], now_ms: int) -> None:
        """Deliver outbox records (sends and cancels for other partitions), then drop them
        from their outboxes. Safe to run twice: receivers drop ids they already hold (the
        delay queue) or processed (the done set), and begin.lua drops a second copy."""
        outboxes = {a: r for a, r in outboxes.items() if r}
        if not outboxes:
            return
        items: list[Outgoing] = []
        cancels: list[str] = []
        for records in outboxes.values():
            for record in records:
                if record[:1] == b"c":
                    cancels.append(record[1:].decode())
                    continue
                target, _, due, entry = record[1:].split(b"\n", 3)
                items.append(
                    Outgoing(entry[:32].decode(), target.decode(), entry, int(due) if due else None)
                )
        calls = [
            (
                "push",
                self._push_keys(group),
                [self.keys.prefix, "0", now_ms, 0, *self._deliveries(group)],
            )
            for group in self._groups(items)
        ]
        calls += [self._cancel_call(mid, self.tombstone_ms, 0) for mid in cancels]
        self._run(calls, "outbox delivery")
        done = [
            (
                "flushed",
                [self.keys.actor(a, "outbox"), self.keys.outboxes(self.keys.part_of(a))],
                [a, records[-1]],
            )
            for a, records in outboxes.items()
        ]
        self._run(done, "outbox delivery")

    # -- TurnStore ------------------------------------------------------------------------

    def begin(
        self,
        actors: Sequence[str],
        token: str,
        lease_ms: int,
        batch: int,
        now_ms: int,
        lane: str = "",
    ) -> list[Claim | None]:
        flag = "l" if lane == "long" else ""
        calls = [
            ("begin", self.keys.begin_keys(a), [token, lease_ms, now_ms, batch, a, flag])
            for a in actors
        ]
        claims: list[Claim | None] = []
        outboxes: dict[str, list[bytes]] = {}
        for actor, res in zip(actors, self._run(calls, "begin"), strict=True):
            if not res:
                claims.append(None)
                continue
            fence, state, version, recovered, dups, n_outbox, *flat = res
            if int(n_outbox):
                outboxes[actor] = list(flat[: int(n_outbox)])
                flat = flat[int(n_outbox) :]
            n = int(flat[0])
            taken = flat[1 : n + 1]
            failed = flat[n + 1 :]
            tries = [0] * n
            errors = {}
            for i in range(0, len(failed), 3):
                at = int(failed[i]) - 1
                tries[at] = int(failed[i + 1])
                if failed[i + 2]:
                    mid = taken[at][:32].decode("ascii", "replace")
                    errors[mid] = failed[i + 2].decode("utf-8", "replace")
            entries = list(zip(taken, tries, strict=True))
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
        # What earlier turns sent to other partitions goes before anything this turn sends.
        self._flush(outboxes, now_ms)
        return claims

    def commit(self, commits: Sequence[Commit], now_ms: int) -> list[int | None]:
        k = self.keys
        fused = self.fused
        inline = "1" if fused else "0"
        calls = []
        remote: dict[str, list[bytes]] = {}
        for c in commits:
            part = k.part_of(c.actor)
            local = [i for i in c.outbox if fused or k.part_of(i.target) == part]
            records = [
                self._record(i) for i in c.outbox if not fused and k.part_of(i.target) != part
            ]
            cancels = [m for m in c.cancels if fused or k.part_of_id(m) == part]
            records += [
                b"c" + m.encode() for m in c.cancels if not fused and k.part_of_id(m) != part
            ]
            if records:
                remote[c.actor] = records
            args: list[Any] = [
                k.prefix,
                inline,
                c.token,
                c.actor,
                now_ms,
                c.state or b"",
                c.fence,
                c.done_window_ms,
                c.done_max,
                part,
                *_outcomes(c),
                len(local),
                *self._deliveries(local),
                len(records),
                *records,
                _OUTBOX_GRACE_MS,
                len(cancels),
            ]
            for mid in cancels:
                args += [mid, k.part_of_id(mid)]
            args += [
                self.tombstone_ms,
                -1 if c.state_is_default else self.state_ttl_ms,
                c.pause_ms,
                c.reply_ttl_ms,
                len(c.replies),
            ]
            for mid, record in c.replies:
                args += [mid, record]
            args += [1 if c.delete else 0, c.idle_ttl_ms, c.lane, c.reminders]
            keys = k.commit_keys(c.actor)
            if not fused:
                # Every other key the commit touches, declared (lib.lua): its local sends',
                # its cancels' and its replies'.
                keys += k.delivery_keys(local)
                keys += [k.due(part)] if cancels else []
                bodied = [m for m in cancels if not is_member(m)]
                keys += [x for m in bodied for x in (k.delay_msg(m), k.tomb(m))]
                keys += [k.part(part, f"reply:{mid}") for mid, _ in c.replies]
            calls.append(("commit", keys, args))
            known = self._next[part]
            if c.pause_ms and known is not None:
                self._next[part] = min(known, c.pause_ms)  # this process polls it then
        results = self._run(calls, "commit")
        versions = [int(r[1]) if int(r[0]) == 1 else None for r in results]
        self._flush(
            {
                c.actor: remote[c.actor]
                for c, v in zip(commits, versions, strict=True)
                if v is not None and c.actor in remote
            },
            now_ms,
        )
        return versions

    # -- the long-work lane ------------------------------------------------------------------

    def poll_lane(self, now_ms: int, max_actors: int, lease_ms: int) -> tuple[list[str], int]:
        """Reserve up to ``max_actors`` actors of the long-work lane for ``lease_ms``, those
        waiting longest first. Returns (actor keys, how many actors the lane holds)."""
        k = self.keys
        parts = list(self._parts())
        found = self._pipe(
            "lane",
            lambda pipe: [
                x
                for p in parts
                for x in (
                    pipe.zcard(k.long(p)),
                    pipe.zrangebyscore(k.long(p), "-inf", now_ms, 0, max_actors, withscores=True),
                )
            ],
        )
        waiting = sum(int(n) for n in found[0::2])
        due = sorted(
            (score, p, actor.decode())
            for p, rows in zip(parts, found[1::2], strict=True)
            for actor, score in rows
        )[:max_actors]
        if not due:
            return [], waiting
        common = [k.prefix, now_ms, lease_ms]
        if self.fused:
            calls: list[tuple[str, Sequence[Any], Sequence[Any]]] = [
                ("lane", [], [*common, *[x for _, p, a in due for x in (p, a)]])
            ]
        else:
            by_part: dict[int, list[str]] = {}
            for _, p, a in due:
                by_part.setdefault(p, []).append(a)
            calls = [
                ("lane", [k.long(p)], [*common, *[x for a in actors for x in (p, a)]])
                for p, actors in by_part.items()
            ]
        results = self._run(calls, "lane")
        return [a.decode() for got in results for a in got], waiting

    def lane_size(self) -> int:
        """How many actors the long-work lane holds."""
        k = self.keys
        counts = self._pipe("lane", lambda pipe: [pipe.zcard(k.long(p)) for p in self._parts()])
        return sum(int(n) for n in counts)

    def lane_present(self, worker: str, ttl_ms: int, now_ms: int) -> None:
        """Long-work worker ``worker`` runs, until ``ttl_ms`` from now (renewed while it
        does; 0: it ends); the claim of the start that brought it ends."""
        k = self.keys
        if ttl_ms > 0:
            # Its expiry, each worker its own: one that ends does not hide the others.
            self._pipe(
                "lane",
                lambda pipe: [
                    pipe.zadd(k.lane_present, {worker: now_ms + ttl_ms}),
                    pipe.zremrangebyscore(k.lane_present, "-inf", now_ms),
                    # The worker a drain started has arrived: the next one may start as soon
                    # as this one ends, not when the start's claim lapses.
                    pipe.delete(k.lane_launch),
                ],
            )
        else:
            self._call("lane", self.client.zrem, k.lane_present, worker)

    def claim_launch(self, ttl_ms: int, now_ms: int) -> bool:
        """True when the caller should start a long-work worker: none runs and none was
        started within ``ttl_ms`` (this claim then holds for that long)."""
        k = self.keys
        calls = [("launch", [k.lane_present, k.lane_launch], [ttl_ms, now_ms])]
        [started] = self._run(calls, "launch")
        return bool(int(started))

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
        keys = [self.keys.actor(actor, "lease"), self.keys.leases(self.keys.part_of(actor))]
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

    def _cancel_call(
        self, message_id: str, tombstone_ms: int, receipt_ms: int
    ) -> tuple[str, list[str], list[Any]]:
        k = self.keys
        keys = [
            k.due(k.part_of_id(message_id)),
            k.delay_msg(message_id),
            k.cancelled(message_id),
            k.tomb(message_id),
        ]
        return ("cancel", keys, [message_id, tombstone_ms, receipt_ms])

    def _cancel(self, message_id: str) -> tuple[bool, bool]:
        """(removed from the sorted set, not known as cancelled or landed elsewhere)."""
        call = self._cancel_call(message_id, self.tombstone_ms, _CANCEL_RECEIPT_MS)
        removed, unknown = self._run([call], "cancel")[0]
        return bool(removed), bool(unknown)

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
            self._call("dead letter", self.client.lpush, self.keys.dlq(0), *dead)
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
        """Ids sent out again to another delay queue by ``hop`` (none without one: Redis
        holds every message)."""
        return set() if self.hop is None else self.hop(items, now_ms)

    def land(self, items: Sequence[Outgoing], now_ms: int) -> tuple[int, int, int]:
        """Deliver deferred messages that come back from another delay queue: due ones to
        their mailboxes, the others to the sorted set at their exact due time, cancelled
        ones nowhere. Returns how many went to (mailboxes, the sorted set, nowhere)."""
        inline = "1" if self.fused else "0"
        calls = [
            (
                "land",
                self._push_keys(group, either=True)
                + ([] if self.fused else [self.keys.tomb(i.id) for i in group]),
                [self.keys.prefix, inline, now_ms, _LANDED_MS, *self._deliveries(group)],
            )
            for group in self._groups(items)
        ]
        totals = [0, 0, 0]
        for counts in self._run(calls, "land"):
            totals = [t + int(c) for t, c in zip(totals, counts, strict=True)]
        if not self.fused:
            self._signal_now(0)
        return totals[0], totals[1], totals[2]

    def known_due_ms(self) -> int | None:
        if any(d is None for d in self._next):
            return 0  # a partition to look at (this process has not yet): now
        known = [d for d in self._next if d is not None and d != _NOTHING_DUE]
        return min(known) if known else None

    def next_due_ms(self) -> int | None:
        """The earliest time something becomes due: a deferred message, or an actor waiting
        out a retry's backoff (P:paused)."""
        k = self.keys

        def build(pipe: Any) -> None:
            for n in self._parts():
                pipe.zrange(k.due(n), 0, 0, withscores=True)
                # Not an actor resting in the long-work lane (LANE_MS): nothing comes due.
                pipe.zrangebyscore(k.paused(n), "-inf", f"({LANE_MS}", 0, 1, withscores=True)

        firsts = self._pipe("next due", build)
        dues = [int(f[0][1]) for f in firsts if f]
        return min(dues) if dues else None

    def pending(self) -> int:
        counts = self._pipe("pending", lambda p: [p.zcard(self.keys.due(n)) for n in self._parts()])
        return int(sum(counts))

    def deferred(
        self, limit: int = 100, actor: str | None = None
    ) -> list[tuple[str, str, int, str]]:
        """Pending deferred messages as (id, actor key, due ms, message type), earliest
        first; with ``actor``, only that actor's (found among the earliest ``limit * 100`` of
        its partition)."""
        k = self.keys
        parts = list(self._parts()) if actor is None else [k.part_of(actor)]
        scan = limit if actor is None else limit * 100
        shards = self._pipe(
            "deferred", lambda p: [p.zrange(k.due(n), 0, scan - 1, withscores=True) for n in parts]
        )
        ids = [mid.decode() for rows in shards for mid, _ in rows]
        bodies = iter(self._bodies(ids))
        out = []
        for rows in shards:
            for mid, due in rows:
                value = next(bodies)
                target, _, body = value.partition(b"\n") if value else (b"?", b"", b"")
                if actor is None or target.decode() == actor:
                    out.append((mid.decode(), target.decode(), int(due), _type_of(mid, body)))
        return sorted(out, key=lambda r: r[2])[:limit]

    def _bodies(self, ids: Sequence[str]) -> list[bytes | None]:
        """The stored bodies (``target \\n entry without its id``) of deferred messages, in
        one round trip."""
        if not ids:
            return []
        stored = iter(
            self._pipe(
                "deferred bodies",
                lambda p: [p.hget(self.keys.delay_msg(m), m) for m in ids if not is_member(m)],
            )
        )
        # A reminder's member has no body: its actor, and the name the type shows.
        return [_member_body(m) if is_member(m) else next(stored) for m in ids]

    def stats(self) -> dict[str, Any]:
        """Counts for operators: ready actors, leases, mailbox depths (by SCAN of every
        primary), deferred."""
        k = self.keys
        depths: dict[str, int] = {}
        inflight: dict[str, int] = {}
        for suffix, into in (("mb", depths), ("inflight", inflight)):
            names = self._call("stats", self._scan, f"{k.prefix}:{{p*}}:*/*:{suffix}")
            lengths = self._pipe("stats", lambda p, names=names: [p.llen(n) for n in names])
            for name, n in zip(names, lengths, strict=True):
                key = name.decode()
                actor = key[key.index("}:") + 2 : -len(suffix) - 1]
                into[actor] = int(n)

        def counts(pipe: Any) -> None:
            for n in self._parts():
                pipe.zcard(k.ready(n))
                pipe.zcard(k.leases(n))
                pipe.zcard(k.long(n))
                pipe.get(k.reminder_actors(n))
                pipe.get(k.reminder_count(n))

        got = self._pipe("stats", counts)
        return {
            "ready_actors": int(sum(got[0::5])),
            "leases_held": int(sum(got[1::5])),
            "long_lane_actors": int(sum(got[2::5])),
            "reminders": sum(int(n or 0) for n in got[4::5]),
            "actors_with_reminders": sum(int(n or 0) for n in got[3::5]),
            "mailbox_messages": sum(depths.values()),
            "in_flight_messages": sum(inflight.values()),
            "mailboxes": dict(sorted(depths.items(), key=lambda kv: -kv[1])),
            "pending_deferred": RedisBackend.pending(self),  # in the sorted sets
            "next_due_ms": self.next_due_ms(),
            "dead_letters": self.dead_letter_count(),
        }

    # -- bounded views (the dashboard) -----------------------------------------------------

    @property
    def where(self) -> str:
        """The server's URL without its password (for pages and logs)."""
        return redact_url(self._url) if self._url else "embedded fakeredis"

    def dashboard_secret(self) -> bytes:
        """A random secret kept in Redis, the same for every dashboard of this system (each
        Lambda container, each process behind a balancer): a form rendered by one is
        accepted by another. Set once, by the first dashboard that asks."""
        import secrets

        key = self.keys.dashboard_secret()
        self._call("dashboard", self.client.set, key, secrets.token_hex(32), nx=True)
        got = self._call("dashboard", self.client.get, key)  # this one's, or the first's
        return got if isinstance(got, bytes) else str(got).encode()

    def summary(self, top: int) -> dict[str, Any]:
        """Counts without a scan, in one pipelined round trip per node, and the mailbox
        depths of up to ``top`` actors next in each partition's ready order, deepest first."""
        k = self.keys
        parts = list(self._parts())

        def build(pipe: Any) -> None:
            for n in parts:
                pipe.zcard(k.ready(n))
                pipe.zcard(k.leases(n))
                pipe.zcard(k.long(n))
                pipe.zcard(k.due(n))
                pipe.llen(k.dlq(n))
                pipe.get(k.reminder_count(n))
                pipe.get(k.reminder_actors(n))
                if top:
                    pipe.zrange(k.ready(n), 0, top - 1)

        got = self._pipe("summary", build)
        width = 8 if top else 7
        rows = [got[i : i + width] for i in range(0, len(got), width)]
        ready = [_text(m) for r in rows for m in (r[7] if top else [])]
        depths = (
            self._pipe("summary", lambda p: [p.llen(k.actor(a, "mb")) for a in ready])
            if ready
            else []
        )
        ranked = sorted(zip(ready, (int(d) for d in depths), strict=True), key=lambda r: -r[1])
        return {
            "ready_actors": sum(int(r[0]) for r in rows),
            "leases_held": sum(int(r[1]) for r in rows),
            "long_lane_actors": sum(int(r[2]) for r in rows),
            "deferred": sum(int(r[3]) for r in rows),
            "dead_letters": sum(int(r[4]) for r in rows),
            "reminders": sum(int(r[5] or 0) for r in rows),
            "actors_with_reminders": sum(int(r[6] or 0) for r in rows),
            "top": ranked[:top],
            "next_due_ms": self.next_due_ms(),
        }

    def record_history(self, rows: dict[int, dict[str, int]], ttl_ms: int) -> None:
        """Add per-minute sums to the history (one pipelined round trip)."""
        k = self.keys

        def build(pipe: Any) -> None:
            for minute, row in rows.items():
                key = k.history(minute)
                for field, n in row.items():
                    pipe.hincrby(key, field, n)
                pipe.pexpire(key, ttl_ms)

        self._pipe("history", build)

    def history(self, first_minute_ms: int, minutes: int) -> list[dict[str, int]]:
        """The sums of ``minutes`` minutes from ``first_minute_ms`` (empty where none)."""
        k = self.keys
        got = self._pipe(
            "history",
            lambda p: [p.hgetall(k.history(first_minute_ms + i * 60_000)) for i in range(minutes)],
        )
        return [{_text(f): int(v) for f, v in row.items()} for row in got]

    def timeline(
        self,
        now_ms: int,
        span_ms: int,
        buckets: int,
        actor_type: str | None = None,
        message_type: str | None = None,
    ) -> tuple[list[int], int]:
        """How many deferred messages fall due in each of ``buckets`` equal intervals from
        ``now_ms`` over ``span_ms`` (what is overdue counts in the first). Returns (counts,
        0), or with a filter, counted over the first ``sample // partitions`` due of each
        partition: (counts, that many): a filter reads each message it looks at."""
        k = self.keys
        parts = list(self._parts())
        step = max(1, span_ms // buckets)
        end = now_ms + step * buckets
        if actor_type is None and message_type is None:

            def build(pipe: Any) -> None:
                for n in parts:
                    for i in range(buckets):
                        low = "-inf" if i == 0 else now_ms + i * step
                        pipe.zcount(k.due(n), low, f"({now_ms + (i + 1) * step}")

            got = self._pipe("timeline", build)
            counts = [0] * buckets
            for j, c in enumerate(got):
                counts[j % buckets] += int(c)
            return counts, 0
        per = max(10, _FILTER_SAMPLE // len(parts))
        rows = self._filtered(parts, "-inf", end, per, actor_type, message_type)
        counts = [0] * buckets
        for _, _, due, _ in rows:
            counts[min(buckets - 1, max(0, (due - now_ms) // step))] += 1
        return counts, per

    def deferred_page(
        self,
        after_ms: int,
        limit: int,
        actor_type: str | None = None,
        message_type: str | None = None,
        after_id: str = "",
    ) -> list[tuple[str, str, int, str]]:
        """Up to ``limit`` deferred messages after the cursor (``after_ms``, ``after_id``) in
        (due, id) order (0: from the earliest), as (id, actor key, due ms, message type); a
        filter looks through ``limit * 10`` of each partition."""
        parts = list(self._parts())
        k = self.keys
        low: Any = "-inf"
        ties = 0
        if after_ms:
            # Those due in the cursor's own millisecond are read again (and those up to
            # after_id dropped below): none falls between two pages.
            low = after_ms
            counts = self._pipe(
                "deferred", lambda p: [p.zcount(k.due(n), after_ms, after_ms) for n in parts]
            )
            ties = max(int(c) for c in counts)

        def later(mid: str, due: int) -> bool:
            return not after_ms or (due, mid) > (after_ms, after_id)

        if actor_type is None and message_type is None:
            # The earliest of every partition's head, then the bodies of those shown only.
            heads = self._pipe(
                "deferred",
                lambda p: [
                    p.zrangebyscore(
                        k.due(n), low, "+inf", start=0, num=limit + ties, withscores=True
                    )
                    for n in parts
                ],
            )
            pairs = sorted(
                (
                    (mid.decode(), int(due))
                    for rows in heads
                    for mid, due in rows
                    if later(mid.decode(), int(due))
                ),
                key=lambda r: (r[1], r[0]),
            )[:limit]
            out = []
            for (mid, due), value in zip(pairs, self._bodies([m for m, _ in pairs]), strict=True):
                target, _, body = value.partition(b"\n") if value else (b"?", b"", b"")
                out.append(
                    (mid, target.decode(errors="replace"), due, _type_of(mid.encode(), body))
                )
            return out
        per = max(10, _FILTER_SAMPLE // len(parts)) + ties
        rows = self._filtered(parts, low, "+inf", per, actor_type, message_type)
        rows = [r for r in rows if later(r[0], r[2])]
        return sorted(rows, key=lambda r: (r[2], r[0]))[:limit]

    def _filtered(
        self,
        parts: list[int],
        low: Any,
        high: Any,
        per: int,
        actor_type: str | None,
        message_type: str | None,
    ) -> list[tuple[str, str, int, str]]:
        k = self.keys
        heads = self._pipe(
            "deferred",
            lambda p: [
                p.zrangebyscore(k.due(n), low, high, start=0, num=per, withscores=True)
                for n in parts
            ],
        )
        pairs = [(mid.decode(), int(due)) for rows in heads for mid, due in rows]
        bodies = self._bodies([m for m, _ in pairs])
        out = []
        for (mid, due), value in zip(pairs, bodies, strict=True):
            target, _, body = value.partition(b"\n") if value else (b"?", b"", b"")
            actor = target.decode(errors="replace")
            if actor_type is not None and actor.partition("/")[0] != actor_type:
                continue
            kind = _type_of(mid.encode(), body)
            if message_type is not None and kind != message_type:
                continue
            out.append((mid, actor, due, kind))
        return out

    def actor_view(self, actor: str, head: int) -> dict[str, Any]:
        """One actor as the store holds it: its mailbox's first ``head`` entries and depth,
        its in-flight entries, its lease's expiry, its state and version."""
        k = self.keys
        part = k.part_of(actor)

        def build(pipe: Any) -> None:
            pipe.lrange(k.actor(actor, "mb"), 0, head - 1)
            pipe.llen(k.actor(actor, "mb"))
            pipe.lrange(k.actor(actor, "inflight"), 0, 999)
            pipe.zscore(k.leases(part), actor)
            pipe.hmget(k.actor(actor, "state"), ["d", "v"])

        mb, depth, inflight, lease, (data, version) = self._pipe("actor", build)
        return {
            "mailbox": [bytes(e) for e in mb],
            "mailbox_depth": int(depth),
            "inflight": [bytes(e) for e in inflight],
            "lease_expires_ms": None if lease is None else int(lease),
            "state": data,
            "version": int(version or 0),
        }

    def reminder_actors(self, limit: int, actor_type: str | None = None) -> list[str]:
        """Up to ``limit`` actors that have reminders (of ``actor_type`` only, if given), from
        the index each commit keeps: no scan of the keyspace."""
        k = self.keys
        prefix = None if actor_type is None else f"{actor_type}/"
        found: list[str] = []
        for n in self._parts():
            # A partition's index hashes in one round trip: each a small listpack.
            rows = self._pipe(
                "reminders",
                lambda p, n=n: [p.hkeys(k.reminders(n, b)) for b in range(REMINDER_BUCKETS)],
            )
            actors = (_text(a) for row in rows for a in row)
            found += [a for a in actors if prefix is None or a.startswith(prefix)]
            if len(found) >= limit:
                break
        return sorted(found)[:limit]

    def _scan(self, match: str) -> list[bytes]:
        """Keys matching ``match`` on the node, or on every primary of a cluster."""
        return list(self.client.scan_iter(match=match, count=1000))

    # -- DeadLetters ----------------------------------------------------------------------

    def dead_letters(self, limit: int) -> list[bytes]:
        """The newest ``limit`` records over every partition."""
        lists = self._pipe(
            "dead letters",
            lambda p: [p.lrange(self.keys.dlq(n), 0, limit - 1) for n in self._parts()],
        )
        records = [bytes(r) for rows in lists for r in rows]
        records.sort(key=_newest, reverse=True)
        return records[:limit]

    def dead_letter_count(self) -> int:
        counts = self._pipe(
            "dead letters", lambda p: [p.llen(self.keys.dlq(n)) for n in self._parts()]
        )
        return int(sum(counts))

    def redrive(
        self, record: bytes, actor: str, message_id: str, entry: bytes, now_ms: int
    ) -> bool:
        """Move one dead letter (its exact record bytes) back to its actor's mailbox."""
        k = self.keys
        part = k.part_of(actor)
        if self._dlq_of(record) != part:
            # Kept in another partition (bytes that never reached an actor): the record goes
            # from there and the message to its actor, one after the other.
            if not self.remove_dead_letter(record):
                return False
            self.push([Outgoing(message_id, actor, entry, None)], now_ms)
            return True
        args = [
            k.prefix,
            "1" if self.fused else "0",
            now_ms,
            record,
            actor,
            message_id,
            entry,
            part,
        ]
        moved = bool(
            self._run([("redrive", self._redrive_keys(actor, message_id), args)], "redrive")[0][0]
        )
        if not self.fused:
            self._signal_now(0)
        return moved

    def _redrive_keys(self, actor: str, message_id: str) -> list[str]:
        k, part = self.keys, self.keys.part_of(actor)
        keys = [k.dlq(part), k.actor(actor, "mb")]
        if not self.fused:
            keys += [k.actor(actor, "done"), k.actor(actor, "doneold"), k.actor(actor, "att")]
            keys += [k.ready(part)]
            keys += [k.paused(part), k.part(part, f"reply:{message_id}")]
        return keys

    def _dlq_of(self, record: bytes) -> int:
        """The partition whose dead-letter list holds a record: its actor's (0 for none)."""
        try:
            actor = DeadLetter.from_record(record).actor
        except Exception:
            return 0
        return self.keys.part_of(actor) if actor else 0

    def remove_dead_letter(self, record: bytes) -> bool:
        """Delete one dead letter by its exact record bytes."""
        key = self.keys.dlq(self._dlq_of(record))
        return bool(self._call("purge", self.client.lrem, key, 1, record))

    def claim_wake(self, due_ms: int, now_ms: int) -> bool:
        key = self.keys.armed
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

    def rearm_reminders(self, now_ms: int) -> int:
        """Nothing to arm again: with state in Redis, the schedules go with their occurrences."""
        return 0

    def index_reminders(self, counts: dict[str, int]) -> None:
        """Set how many reminders these actors have in their partitions' indexes (``stats``,
        ``reminders list``), as the schedules armed again from state outside Redis say."""
        k = self.keys
        by_part: dict[int, list[Any]] = {}
        buckets: dict[int, list[str]] = {}
        for actor, n in counts.items():
            by_part.setdefault(k.part_of(actor), []).extend((actor, n))
            buckets.setdefault(k.part_of(actor), []).append(k.reminder_bucket(actor))
        calls = [
            ("index", [k.reminder_count(p), k.reminder_actors(p), *buckets[p]], by_part[p])
            for p in by_part
        ]
        self._run(calls, "reminder index", signals_too=False)

    def server_clock(self) -> Clock:
        """Redis's own time for a server shared by processes; fakeredis lives in this
        process, whose clock is then the only one."""
        if not self.blocking:
            return SystemClock()
        return RedisClock(self.client)

    def check(self) -> None:
        """Reach Redis once. Raises ConfigError for what no retry fixes (the credentials, the
        database index, TLS on one side only), BackendError when Redis cannot be reached (a
        drain retries that)."""
        if self._url is not None:
            check_url(self._url)
            return
        try:
            self.client.ping()
        except RedisError as e:
            problem = config_problem(e)
            if problem is not None:
                raise ConfigError(f"Redis: {problem}") from e
            raise BackendError(f"Redis cannot be reached: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self._client.close()


def old_layout(client: Any, prefix: str) -> bool:
    """Whether a single node holds data in the key layout before partitions: its shared keys,
    or any actor's keys (an actor at rest keeps only its state); scanned once per deployment,
    when the partitioned layout is not recorded yet."""
    names = ["ready", "leases", "paused", "dlq"] + [f"{{dq{s}}}:due" for s in range(16)]
    if client.exists(*[f"{prefix}:{name}" for name in names]):
        return True
    return next(iter(client.scan_iter(match=f"{prefix}:{{*/*}}:*", count=1000)), None) is not None


# How many deferred messages a filtered view of the dashboard reads at most, spread over the
# partitions (each one a body to fetch and decode).
_FILTER_SAMPLE = 2_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _newest(record: bytes) -> tuple[int, str]:
    """The order of dead letters over partitions: by time, then by message id (send order,
    for one sender's messages dead-lettered in the same ms)."""
    try:
        letter = DeadLetter.from_record(record)
    except Exception:
        return (0, "")
    return (int(letter.at_ms), letter.id)


def _member_body(member: str) -> bytes:
    """What a listing shows of a reminder's pending occurrence: its actor, then the marker
    ``_type_of`` reads as ``reminder:<name>``."""
    target, name = member_parts(member)
    return f"{target}\n\x00{name}".encode()


def _type_of(message_id: bytes, body: bytes) -> str:
    """The message type of a stored deferred body (the entry without its id); "?" if it
    cannot be read; ``reminder:<name>`` for a reminder's occurrence (its message is in the
    actor's schedule)."""
    if body[:1] == b"\x00":
        return f"reminder:{body[1:].decode(errors='replace')}"
    try:
        return decode(message_id + body).type
    except DecodeError:
        return "?"


def dead_record(reason: str, raw: bytes, now_ms: int) -> bytes:
    """A dead-letter record for bytes that never reached an actor (no actor, no id)."""
    return DeadLetter("", "", reason, 0, now_ms, "", raw, first_error=reason).encode()


def _outcomes(c: Commit) -> list[Any]:
    """A commit's outcomes as commit.lua takes them: a letter per in-flight entry, the
    entries' ids (when the caller knows them: the in-flight list is then not read back),
    and the error or record of each retry and dead letter, in order."""
    codes, details = bytearray(), []
    for outcome in c.actions:
        match outcome:
            case Done():
                codes += b"d"
            case Keep():
                codes += b"k"
            case Withdraw():
                codes += b"w"
            case Failed(error=error):
                codes += b"r"
                details.append(error.encode("utf-8", "replace"))
            case Dead(letter=letter):
                codes += b"x"
                details.append(letter.encode())
            case _:
                raise TypeError(f"not an outcome: {outcome!r}")
    ids = c.ids if len(c.ids) == len(c.actions) else []
    return [bytes(codes), len(ids), *ids, len(details), *details]


def check_url(url: str) -> None:
    """Reach the Redis of ``url`` once, in seconds, on a connection of its own (a client's
    retries are for what may pass, which a wrong setting never does). Raises ConfigError for
    what no retry fixes (the credentials, the database index, TLS on one side only; the URL
    shown without its password), BackendError when it cannot be reached."""
    if urlsplit(url).scheme == "fakeredis":
        return
    url = _without_cluster(url)
    client_from_url(url)  # ConfigError for a URL no client takes (connects to nothing)
    where = redact_url(url)
    try:
        with _one_try_client(url) as client:
            client.ping()
        return
    except RedisError as e:
        error = e
    problem = config_problem(error)
    if problem is None and isinstance(error, RedisConnectionError | RedisTimeoutError):
        problem = tls_mismatch(url)
    if problem is not None:
        raise ConfigError(f"Redis at {where}: {problem}") from error
    raise BackendError(
        f"Redis at {where} cannot be reached: {type(error).__name__}: {error}"
    ) from error


def _without_cluster(url: str) -> str:
    """``url`` without its ?cluster= (a single node's client of the same server)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query)
    if not any(k == "cluster" for k, _ in pairs):
        return url  # unchanged: urlunsplit would turn unix:///path into unix:/path
    query = urlencode([(k, v) for k, v in pairs if k != "cluster"])
    return urlunsplit(parts._replace(query=query))


def _one_try_client(url: str, timeout_s: float = 3.0) -> redis.Redis:
    """A client of ``url`` (any ?cluster= left out) that tries each command once."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        _without_cluster(url),
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


_BAD_CREDENTIALS = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password")
_NO_DATABASE = ("DB index is out of range", "invalid DB index", "SELECT is not allowed")


def config_problem(error: RedisError) -> str | None:
    """What in the configuration a Redis error points at, if no retry can fix it."""
    text = str(error)
    if isinstance(error, AuthenticationError) or any(m in text for m in _BAD_CREDENTIALS):
        return f"it refused the credentials ({text}); check the user and password of the URL"
    if any(m in text for m in _NO_DATABASE):
        return (
            f"it has no such database ({text}); the URL's /N names one of its databases (only "
            "0 on a cluster)"
        )
    if text.startswith("DENIED"):
        return f"it refuses this client ({text[:120]})"
    return None


def tls_mismatch(url: str, timeout_s: float = 2.0) -> str | None:
    """Why the first command to ``url`` failed, when the server speaks the other protocol:
    TLS where the URL says redis://, plain Redis where it says rediss://. A look of its own
    on a new connection; None when the server is not reached or the look shows nothing."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    host, port = parts.hostname or "localhost", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            if parts.scheme == "rediss":
                sock.sendall(b"PING\r\n")
                if sock.recv(64)[:1] in (b"+", b"-"):
                    return "it answers without TLS: use redis://, not rediss://"
                return None
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(sock, server_hostname=host):
                return (
                    "it speaks TLS (ElastiCache with encryption in transit, say): use "
                    "rediss://, not redis://"
                )
    except (OSError, ssl.SSLError):
        return None
