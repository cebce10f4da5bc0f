"""The ports the drain loop talks to; adapters implement them (see ``adapters/``).

A turn's lease, in-flight claim, state load and commit are one port, ``TurnStore``, because a
Redis backend does each of its steps in one atomic script: round trips, not Python, are the
cost of a turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from actor_system.envelope import ID_LENGTH, Outgoing
from actor_system.errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be processed, with why: what a turn decides and what the
    dead-letter queue keeps (``record`` is the stored form, exactly: what redrive and purge
    match on; empty until stored)."""

    id: str  # "" for bytes that never reached an actor
    actor: str
    reason: str
    attempts: int
    at_ms: int
    error: str  # the traceback's last characters, if an exception was the cause
    entry: bytes
    record: bytes = b""
    first_error: str = ""  # the first failure, when it failed more than once

    def encode(self) -> bytes:
        """The stored record: a msgpack map (other tools read it by field name)."""
        fields = {
            "reason": self.reason,
            "actor": self.actor,
            "id": self.id,
            "attempts": self.attempts,
            "at_ms": self.at_ms,
            "error": self.error,
            "first_error": self.first_error,
            "entry": self.entry,
        }
        return bytes(msgpack.packb(fields, use_bin_type=True))

    @classmethod
    def from_record(cls, record: bytes) -> DeadLetter:
        r = msgpack.unpackb(record, raw=False)
        return cls(
            r["id"],
            r["actor"],
            r["reason"],
            r["attempts"],
            r["at_ms"],
            r["error"],
            r["entry"],
            record,
            r.get("first_error", ""),
        )


# One outcome per claimed entry, decided by the turn and carried out by the commit; each
# adapter encodes them as it needs (the Redis one as a code byte per entry for commit.lua).
class Outcome:
    """What becomes of one claimed message."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Done(Outcome):
    """Processed: its id is recorded for dedup, the entry dropped."""


@dataclass(frozen=True, slots=True)
class Keep(Outcome):
    """Not run (the turn stopped before it): back to the head of the mailbox unchanged."""


@dataclass(frozen=True, slots=True)
class Withdraw(Outcome):
    """Re-sent through the delay queue (``Retry(delay=...)``): the entry goes, attempts +1
    travel in the re-sent envelope."""


@dataclass(frozen=True, slots=True)
class Failed(Outcome):
    """Failed, to be retried: back to the head of the mailbox, attempts + 1, the error kept
    if it is the message's first."""

    error: str


@dataclass(frozen=True, slots=True)
class Dead(Outcome):
    """Dead-lettered: the entry goes to the dead-letter queue with its record."""

    letter: DeadLetter


DONE = Done()
KEEP = Keep()
WITHDRAW = Withdraw()


@dataclass(frozen=True, slots=True)
class Claim:
    """What a turn starts from: the lease's fence, the state and the claimed entries."""

    actor: str
    fence: int
    state: bytes | None
    version: int
    entries: list[tuple[bytes, int]]  # (entry, earlier failed attempts)
    recovered: int  # entries taken back from a dead holder's in-flight list
    duplicates: int  # entries dropped at claim because their id was already processed
    first_errors: dict[str, str] = field(default_factory=dict)  # id -> first failure


@dataclass(slots=True)
class Commit:
    """What a turn writes back, atomically and only while its lease token is still current."""

    actor: str
    token: str
    fence: int
    state: bytes | None  # None: unchanged
    actions: list[Outcome]
    ids: list[str] = field(default_factory=list)  # the claimed messages' ids, action order
    outbox: list[Outgoing] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    state_is_default: bool = False  # the state equals the model's defaults: nothing to keep
    # How long and how many processed ids the actor's type keeps for dedup. The ids of Done
    # and Dead outcomes are recorded whatever these say; 0 leaves the set's trim and expiry
    # as they are (a commit that records no ids: a release, a recovery).
    done_window_ms: int = 0
    done_max: int = 0
    pause_ms: int = 0  # > 0: the actor is not taken again before this time (retry backoff)
    # (message id, reply record) to keep for ``reply_ttl_ms``; the first reply of an id stays.
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    reply_ttl_ms: int = 300_000
    delete: bool = False  # the actor ends: its state and every key of it go
    idle_ttl_ms: int = 0  # > 0: the actor's keys expire together this long after this commit
    # The actor's lane: "" as it is; "l" to the long-work lane (only long-work workers take
    # it, from the retry time if any); "e" a long-work worker's commit (back to the ordinary
    # lane once its mailbox is empty).
    lane: str = ""
    # How many reminders the actor has after this commit (-1: unchanged), for the index that
    # ``stats`` and ``actor-system reminders list`` read.
    reminders: int = -1


class Clock(Protocol):
    """Wall-clock time in epoch seconds; the manual clock drives tests."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class Mailbox(Protocol):
    """Per-actor FIFO inboxes and the index of actors with pending work."""

    def push(self, items: Sequence[Outgoing], now_ms: int, wake_ms: int = 0) -> tuple[int, bool]:
        """Deliver immediate items to mailboxes and deferred ones to the delay queue.
        Returns (how many were accepted: ids their actor already processed are dropped,
        whether the caller must start a drain: with ``wake_ms``, actors are ready and none
        runs or is on its way, a claim that then holds for ``wake_ms``)."""

    def claim_drain(self, wake_ms: int) -> bool:
        """True when actors are ready and no drain runs or is on its way: the caller starts
        one (the claim holds for ``wake_ms``)."""

    def drop_wake(self) -> None:
        """Forget a drain claimed for a wake that could not be sent."""

    def lease_expiry_ms(self) -> int | None:
        """When the earliest lease held expires, if any."""

    def rest(self) -> bool:
        """A drain with nothing to do may end: True if no actor is ready; False if work
        arrived meanwhile."""

    def poll(
        self, now_ms: int, max_actors: int, lease_ms: int, awake_ms: int = 0, token: str = ""
    ) -> tuple[list[str], int]:
        """Recover expired leases, promote due deferred messages, pop up to ``max_actors``
        ready actors and reserve them for ``lease_ms``. Returns (actor keys, promoted).
        ``awake_ms`` > 0: the poller counts as a running drain for that long. ``token``: the
        round's, under which a poll run again (a lost answer) gets the same actors."""

    def wait_ready(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for a hint that work arrived; True if woken early."""


class TurnStore(Protocol):
    """Leases, in-flight claims, state and the atomic commit of a turn."""

    def begin(
        self,
        actors: Sequence[str],
        token: str,
        lease_ms: int,
        batch: int,
        now_ms: int,
        lane: str = "",
    ) -> list[Claim | None]:
        """Take each actor's lease and claim up to ``batch`` entries; None where it is held.
        ``lane="long"``: a long-work worker's begin, which takes actors of that lane (an
        ordinary one gets None for them)."""

    def commit(self, commits: Sequence[Commit], now_ms: int) -> list[int | None]:
        """Apply each commit and release its lease; the new state version, or None when the
        lease was lost (nothing written)."""

    def renew(self, actor: str, token: str, lease_ms: int, now_ms: int) -> bool:
        """Extend a lease we hold; False if it is no longer ours."""

    def load_state(self, actor: str) -> tuple[bytes | None, int]:
        """The committed state bytes (None if never written) and version."""

    def reply(self, message_id: str) -> bytes | None:
        """The stored reply record of a processed message, if any (see replies.py)."""

    def wait_reply(self, message_id: str, timeout_s: float) -> bytes | None:
        """The reply record, waiting up to ``timeout_s`` for the commit that writes it."""


class LongLane(Protocol):
    """The long-work lane: actors whose work does not fit a Lambda invocation, taken only
    by workers without a time limit (``actor-system worker --lane long``)."""

    def poll_lane(self, now_ms: int, max_actors: int, lease_ms: int) -> tuple[list[str], int]:
        """Reserve up to ``max_actors`` actors of the lane for ``lease_ms``, those waiting
        longest first. Returns (actor keys, how many actors the lane holds)."""

    def lane_size(self) -> int:
        """How many actors the lane holds."""

    def lane_present(self, worker: str, ttl_ms: int, now_ms: int) -> None:
        """Long-work worker ``worker`` runs, until ``ttl_ms`` from now (renewed while it
        does; 0: it ends); the claim of the start that brought it ends."""

    def claim_launch(self, ttl_ms: int, now_ms: int) -> bool:
        """True when the caller should start a long-work worker: none runs and none was
        started within ``ttl_ms`` (this claim then holds for that long)."""


class DelayQueue(Protocol):
    """Deferred messages by due time."""

    def cancel(self, message_id: str) -> bool:
        """Cancel a deferred message not yet delivered: True if it was pending (and for an
        hour after, to a retried cancel), False if unknown or already delivered. A delay
        queue that cannot look a message up (SQS) answers True for an id it cannot rule out,
        and drops the message when it lands."""

    def known_due_ms(self) -> int | None:
        """The earliest due time this process already knows of, without a round trip (what
        its last poll learnt, 0 when it must look again; None: nothing is due). A drain
        sizes its rounds by it, so that a message due soon is promoted by the next poll, not
        after a long round."""

    def next_due_ms(self) -> int | None:
        """The earliest due time of the messages this store delivers itself (the Redis sorted
        set), if any: a drain arms its timed wake from it. Messages held by an external
        delay queue (SQS, Scheduler) are not counted: that queue brings them back near
        their due time, and they count from then."""

    def pending(self) -> int:
        """How many deferred messages wait, wherever they are held; an SQS queue counts a
        cancelled message until it lands at its due time and is dropped."""

    def accept_deferred(self, bodies: Sequence[str | dict[str, Any]], now_ms: int) -> int:
        """Land deferred-message bodies that came back from another delay queue (SQS, a
        schedule); malformed ones are dead-lettered. Returns how many were landed."""


class DeadLetters(Protocol):
    """Messages that could not be processed, each with its reason."""

    def dead_letters(self, limit: int) -> list[bytes]:
        """The newest records first (msgpack maps)."""

    def dead_letter_count(self) -> int: ...

    def redrive(
        self, record: bytes, actor: str, message_id: str, entry: bytes, now_ms: int
    ) -> bool:
        """Move a dead letter (its exact record) back to its actor's mailbox."""

    def remove_dead_letter(self, record: bytes) -> bool:
        """Delete a dead letter (its exact record)."""


class Inspector(Protocol):
    """Read-only views for operators."""

    def deferred(
        self, limit: int = 100, actor: str | None = None
    ) -> list[tuple[str, str, int, str]]:
        """Pending deferred messages as (id, actor key, due ms, message type; "?" where the
        stored message cannot be read), earliest first: those in the Redis sorted set (an
        external delay queue's are counted by ``stats`` only)."""

    def stats(self) -> dict[str, Any]:
        """Counts: ready actors, leases, mailbox depths, in-flight, deferred, reminders, dead
        letters."""

    def reminder_actors(self, limit: int, actor_type: str | None = None) -> list[str]:
        """Up to ``limit`` actor keys that have reminders (of ``actor_type`` only), sorted."""

    # Bounded views for the dashboard: no scan of the keyspace, a round trip or two each.

    def summary(self, top: int) -> dict[str, Any]:
        """Counts (ready actors, leases, long lane, deferred, dead letters, reminders), the
        next due time and the deepest of the mailboxes next to run (``top``)."""

    def record_history(self, rows: dict[int, dict[str, int]], ttl_ms: int) -> None:
        """Add per-minute sums (actor_system.history) to the history kept ``ttl_ms``."""

    def history(self, first_minute_ms: int, minutes: int) -> list[dict[str, int]]:
        """The per-minute sums of ``minutes`` minutes from ``first_minute_ms``."""

    def timeline(
        self,
        now_ms: int,
        span_ms: int,
        buckets: int,
        actor_type: str | None = None,
        message_type: str | None = None,
    ) -> tuple[list[int], int]:
        """Deferred messages falling due per interval; (counts, sample per partition or 0)."""

    def deferred_page(
        self,
        after_ms: int,
        limit: int,
        actor_type: str | None = None,
        message_type: str | None = None,
        after_id: str = "",
    ) -> list[tuple[str, str, int, str]]:
        """Deferred messages after (``after_ms``, ``after_id``) in (due, id) order."""

    def actor_view(self, actor: str, head: int) -> dict[str, Any]:
        """Mailbox head and depth, in-flight entries, lease expiry, state and version."""


class Waker(Protocol):
    """Starts a drain at a later time, where nothing runs in between (Lambda)."""

    @property
    def client(self) -> Any: ...

    def wake_at(self, due_ms: int, now_ms: int) -> None: ...

    def wake_now(self) -> None: ...


class Launcher(Protocol):
    """Starts a long-work worker (a container without a time limit) when the long-work lane
    has work and none runs."""

    @property
    def client(self) -> Any: ...

    def start(self) -> str:
        """Start one worker; returns what names it (an ECS task ARN)."""


class Continuation(Protocol):
    """Starts a fresh drain now, to continue work the current budget could not finish."""

    @property
    def client(self) -> Any: ...

    def continue_now(self, depth: int) -> None: ...


class Backend(Mailbox, TurnStore, LongLane, DelayQueue, DeadLetters, Inspector, Protocol):
    """Everything the drain loop needs from its stores."""

    def claim_wake(self, due_ms: int, now_ms: int) -> bool:
        """True if a wake firing at ``due_ms`` should be armed: none firing earlier is armed."""

    def recover(self, now_ms: int) -> int:
        """Send again what state stores outside Redis know was sent and Redis lost."""

    def rearm_reminders(self, now_ms: int) -> int:
        """Arm again the pending occurrences of the reminders that state stores outside Redis
        hold; how many were armed."""

    def server_clock(self) -> Clock:
        """The clock every process sharing these stores agrees on (the default clock)."""

    def check(self) -> None:
        """Reach every store once: ConfigError for what no retry fixes (credentials, a
        database, TLS on one side only), BackendError or AwsError when one is unreachable."""

    def close(self) -> None: ...


# -- state kept outside the turn store (S3) ------------------------------------------------

# The stored form of a StateObject (encode/decode): format 2 keeps the commits of two
# windows, format 1 (still read) the last commit's outbox and the last 200 ids.
FORMAT_VERSION = 2
_HEX = frozenset("0123456789abcdef")


class WriteConflict(Exception):
    """A conditional PUT lost: another holder wrote the object since we read it."""


@dataclass(slots=True)
class Retained:
    """One commit as the object keeps it: its outbox and replies for one window, its ids for
    two."""

    version: int
    at_ms: int  # when it was committed, by the runtime's clock (Redis TIME on redis://)
    done: list[str]  # ids of the messages it processed
    outbox: list[Outgoing] = field(default_factory=list)  # everything its Redis commit sent
    cancels: list[str] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)  # (message id, record)

    def pack(self) -> list[Any]:
        outbox = [[o.target, o.id, o.due_ms, o.entry] for o in self.outbox]
        return [self.version, self.at_ms, len(self.done), outbox, self.cancels]

    @classmethod
    def unpack(cls, row: list[Any], done: list[str]) -> Retained:
        version, at_ms, _, outbox, cancels = row
        sent = [Outgoing(str(o[1]), str(o[0]), bytes(o[3]), o[2]) for o in outbox]
        return cls(int(version), int(at_ms), done, sent, [str(c) for c in cancels])


@dataclass(slots=True)
class StateObject:
    """What one actor's S3 object holds, and the ETag it was read with (None: absent)."""

    state: bytes | None = None
    version: int = 0
    commits: list[Retained] = field(default_factory=list)  # oldest first
    etag: str | None = None

    @property
    def done(self) -> list[str]:
        """The ids every retained commit processed, oldest first."""
        return [i for c in self.commits for i in c.done]

    @property
    def outbox(self) -> list[Outgoing]:
        """What the last commit sent."""
        return self.commits[-1].outbox if self.commits else []

    def successor(self, state: bytes | None, commit: Retained, window_ms: int) -> StateObject:
        """The next version (``state`` None: a tombstone, the actor ended): ``commit``
        appended; older commits keep their outbox for one window (counted back from
        ``commit``) and their ids for two."""
        kept = []
        for c in self.commits:
            age = commit.at_ms - c.at_ms
            if age <= window_ms:
                kept.append(c)
            elif age <= 2 * window_ms:
                kept.append(Retained(c.version, c.at_ms, c.done))
        return StateObject(state, commit.version, [*kept, commit])

    def encode(self) -> bytes:
        # "done" holds the ids of all commits in order (each row says how many are its own):
        # ids stay one flat list of 16-byte strings, readable by other tools as before.
        return bytes(
            msgpack.packb(
                {
                    "f": FORMAT_VERSION,
                    "version": self.version,
                    "state": self.state,
                    "done": [_pack_id(i) for i in self.done],
                    "commits": [c.pack() for c in self.commits],
                    # Beside the commit rows, not in them: a deploy that predates replies
                    # reads the rows as before and ignores this key.
                    "replies": {
                        str(c.version): [[i, r] for i, r in c.replies]
                        for c in self.commits
                        if c.replies
                    },
                },
                use_bin_type=True,
            )
        )

    @classmethod
    def decode(cls, raw: bytes, etag: str, where: str, modified_ms: int) -> StateObject:
        """Decode either format; ``modified_ms`` (LastModified) dates a version-1 commit."""
        try:
            m = msgpack.unpackb(raw, raw=False)
            if isinstance(m, dict) and type(m.get("f")) is int and m["f"] > FORMAT_VERSION:
                raise StateObjectTooNew(
                    f"S3 object {where} has format version {m['f']}, newer than this "
                    f"deploy's {FORMAT_VERSION}: a newer deploy wrote it",
                    raw,
                )
            if not isinstance(m, dict) or m.get("f") not in (1, FORMAT_VERSION):
                raise ValueError(f"not a state object of format version 1 or {FORMAT_VERSION}")
            done = [_unpack_id(i) for i in m["done"]]
            if m["f"] == 1:  # the last commit's outbox, the ids of the last few commits
                rows = [[m["version"], modified_ms, len(done), m["outbox"], m["cancels"]]]
            else:
                rows = m["commits"]
            commits = _split(rows, done)
            kept = m.get("replies") or {}
            for c in commits:
                c.replies = [(str(i), bytes(r)) for i, r in kept.get(str(c.version), [])]
            return cls(m["state"], int(m["version"]), commits, etag)
        except StateObjectTooNew:
            raise
        except Exception as e:
            raise DecodeError(f"S3 object {where} is not a valid state object: {e}", raw) from e


class StateObjectTooNew(DecodeError):
    """An S3 state object in a format newer than this deploy's: its messages wait (a rolling
    deploy) rather than being dead-lettered."""


def _split(rows: list[list[Any]], done: list[str]) -> list[Retained]:
    """Each commit row with its own slice of the flat id list."""
    commits = []
    start = 0
    for row in rows:
        end = start + int(row[2])
        commits.append(Retained.unpack(row, done[start:end]))
        start = end
    if start != len(done):
        raise ValueError(f"{len(done)} ids, the commits account for {start}")
    return commits


def _pack_id(message_id: str) -> bytes | str:
    """16 bytes for a lowercase hex id (every id the runtime makes); any other id as it is,
    so that it reads back unchanged."""
    if len(message_id) == ID_LENGTH and set(message_id) <= _HEX:
        return bytes.fromhex(message_id)
    return message_id


def _unpack_id(raw: Any) -> str:
    return raw.hex() if isinstance(raw, bytes) else str(raw)


class StateStore(Protocol):
    """Each actor's state as one versioned object beside the turn store (S3), written only
    over the version it was read at, and the commits of a replay window with it: what lets
    the turn store lose its last writes without an effect lost or applied twice
    (``adapters/composite.py`` composes it with the Redis turn store)."""

    window_ms: int  # how long a commit's sends are kept for replay (its ids twice as long)

    @property
    def name(self) -> str:
        """What ``stats`` calls the store (``s3://bucket/prefix``)."""

    def where(self, actor: str) -> str:
        """Where the actor's object lives, for errors and logs."""

    def read(self, actor: str) -> StateObject:
        """The actor's object, or an empty one (etag None) if it was never written."""

    def write(self, actor: str, obj: StateObject, etag: str | None) -> str:
        """Write ``obj`` if the object is still at ``etag`` (None: still absent); returns the
        new etag, or raises WriteConflict when another writer came first."""

    def remove(self, actor: str, etag: str) -> bool:
        """Remove the object if it is still at ``etag``; whether it went (never raises)."""

    def actors(self, since_ms: int) -> Iterator[str]:
        """The actor keys of the objects written since ``since_ms``."""

    def check(self) -> None:
        """Raise a clear error if the store cannot be used (missing, no access)."""


# -- deferred messages held outside the turn store (SQS, EventBridge Scheduler) -------------


@dataclass(frozen=True, slots=True)
class Received:
    """A deferred message handed back by an external delay queue: its JSON body and how to
    delete it there."""

    body: str
    receipt: str


class ExternalDelay(Protocol):
    """Deferred messages held outside the turn store until near their due time. A commit
    writes them into the Redis delay queue; the backend then offloads them here, and what
    comes back (``receive``, or a Lambda trigger's event) lands in Redis: due messages in
    mailboxes, near ones in the sorted set, far ones out again."""

    hops: bool  # True: a message comes back early and is sent out again (SQS's 15 minutes)
    near_s: float  # messages due within this stay in the Redis sorted set
    receive_every_s: float  # how often a drain loop calls ``receive``
    durable_s: float  # how long Redis must have held a landing before ``delete``

    @property
    def name(self) -> str:
        """What ``stats`` calls the queue (``sqs:...``, ``scheduler:...``)."""

    def offload(self, items: Sequence[Outgoing], now_ms: int) -> list[str]:
        """Hold deferred messages; returns the ids now held (the others stay in Redis)."""

    def receive(self) -> list[Received]:
        """Messages handed back to be landed (none for a queue that pushes them itself)."""

    def delete(self, receipts: Sequence[str]) -> None:
        """Forget received messages once Redis holds their landing durably."""

    def cancel(self, message_id: str) -> bool:
        """Remove a held message where the store can (True if it went); a tombstone in
        Redis drops a copy that still lands."""

    def pending(self) -> int:
        """About how many messages are held (-1 if unknown)."""

    def check(self) -> None:
        """Raise a clear error if the store cannot be used (missing, no access)."""
