"""The drain loop: promote due messages, take ready actors, run their turns, commit.

A turn follows DESIGN.md: lease + claim + state load in one script (``begin``), handlers run
in order with their sends kept in an outbox, then state, processed ids, outbox and lease
release in one script (``commit``) that refuses to write if the lease is no longer ours.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from actor_system import reminders, replies, stored_state, tracing
from actor_system.actor import ActorRef, ActorType, Context, Handler, Registry, utc
from actor_system.budget import timeout_guard
from actor_system.envelope import (
    ID_LENGTH,
    PURGE_TYPE,
    Envelope,
    Outgoing,
    check_message_id,
    check_size,
    decode,
    is_message_id,
)
from actor_system.errors import (
    ActorSystemError,
    BudgetExhausted,
    DecodeError,
    InvalidSend,
    LeaseLost,
    MessageTooLarge,
    Retry,
    TimeLimitExceeded,
    UnknownMessageType,
)
from actor_system.history import KEEP_MS, History
from actor_system.metrics import MetricsHook, TurnMetrics
from actor_system.ports import (
    DONE,
    KEEP,
    WITHDRAW,
    Backend,
    Claim,
    Clock,
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
    from collections.abc import Coroutine, Iterator, Mapping
    from datetime import datetime, timedelta
    from types import EllipsisType

    from actor_system.budget import Budget
    from actor_system.options import Options

log = logging.getLogger("actor_system")

_GROUP_COMMIT_S = 0.02
# How long a long-work worker counts as running after it last said so (P:{g}:lane:present):
# no other is started meanwhile. Renewed every round and, during a long handler, by the
# heartbeat.
PRESENT_MS = 30_000
_STATE_WAIT_S = 30  # a state this deploy cannot read, when it waits: retried this often


@dataclass(slots=True)
class DrainReport:
    """What a drain did: committed turns and messages, and what went wrong."""

    turns: int = 0
    messages: int = 0
    dead_letters: int = 0
    retries: int = 0
    duplicates: int = 0
    promoted: int = 0
    recovered: int = 0
    lease_conflicts: int = 0
    leases_lost: int = 0
    interrupted: int = 0
    moved: int = 0  # actors moved to the long-work lane
    # Turns of a sender (process=, ask, the ingress) that left long work to a drain.
    left_long: int = 0
    idle: bool = True
    lane_waiting: int = 0  # a long-work round: actors in the lane when it polled
    # Occurrences of reminders that were replaced or forgotten after they were queued:
    # dropped undelivered (actor_system.reminders).
    stale_occurrences: int = 0

    def add(self, other: DrainReport) -> None:
        for f in fields(self):
            if f.name == "lane_waiting":
                self.lane_waiting = other.lane_waiting
            elif f.name != "idle":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Outbox:
    """Sends, cancels and reminders made by handlers during a turn; written by the commit."""

    def __init__(
        self,
        registry: Registry,
        now_s: float,
        actor: str = "",
        kept: dict[str, reminders.Entry] | None = None,
    ) -> None:
        self._registry = registry
        self._now_s = now_s
        self.actor = actor
        self.items: list[Outgoing] = []
        self.cancels: list[str] = []
        self.deleted = False  # the running handler called ctx.delete()
        self.traced = False  # the turn is traced: sends carry the current span's context
        # The actor's reminders as the turn leaves them (the turn's savepoints copy it).
        self.reminders: dict[str, reminders.Entry] = {} if kept is None else kept

    def remind(self, name: str, msg: BaseModel, spec: dict[str, Any]) -> None:
        if not self.actor:
            raise InvalidSend("reminders are set from a handler or with system.remind")
        ref = ActorRef.from_key(self.actor)
        model_name = self._registry.message_type(ref, msg)
        now_ms = int(self._now_s * 1000)
        entry = reminders.plan(
            self.actor,
            name,
            model_name,
            now_ms,
            max_delay_s=self._registry.options.max_delay_s,
            **spec,
        )
        self.set_reminder(name, entry, msg.model_dump(mode="json"), now_ms)

    def set_reminder(
        self, name: str, entry: reminders.Entry, payload: dict[str, Any], now_ms: int
    ) -> None:
        """Set (or replace) a reminder and arm its first occurrence."""
        limit = self._registry.options.max_outbox
        if len(self.items) >= limit:
            raise InvalidSend(f"a turn may send at most max_outbox={limit} messages")
        entry = replace(entry, payload=payload)  # the schedule keeps its message
        first = reminders.occurrence(
            self.actor,
            name,
            entry,
            payload,
            now_ms,
            self._registry.options.max_message_bytes,
            trace=self._registry.tracing.carrier() if self.traced else None,
        )
        self.forget(name)
        self.reminders[name] = entry
        self.items.append(first)

    def forget(self, name: str) -> bool:
        old = self.reminders.pop(reminders.check_name(name), None)
        if old is None:
            return False
        self.cancels += reminders.pending_ids(self.actor, name, old)
        return True

    def delete(self) -> None:
        self.deleted = True

    def send(
        self,
        ref: ActorRef,
        msg: BaseModel,
        delay: float | timedelta | None,
        at: datetime | None,
        idempotency_key: str | None,
        reply_to: ActorRef | None = None,
    ) -> str:
        limit = self._registry.options.max_outbox
        if len(self.items) >= limit:
            raise InvalidSend(f"a turn may send at most max_outbox={limit} messages")
        if reply_to is not None and not isinstance(reply_to, ActorRef):
            raise InvalidSend(f"reply_to must be an ActorRef (e.g. ctx.self), got {reply_to!r}")
        item = self._registry.prepare(
            ref,
            msg,
            now_s=self._now_s,
            delay=delay,
            at=at,
            idempotency_key=idempotency_key,
            reply=None if reply_to is None else reply_to.key,
            trace=... if self.traced else None,
        )
        self.items.append(item)
        return item.id

    def cancel(self, message_id: str) -> None:
        self.cancels.append(check_message_id(message_id))

    def truncate(self, items: int, cancels: int) -> None:
        """Drop what was added after a savepoint (a failed handler's sends)."""
        del self.items[items:]
        del self.cancels[cancels:]


@dataclass(slots=True)
class _Turn:
    claim: Claim
    ref: ActorRef
    actor: ActorType[Any]
    now_s: float
    token: str
    leased_at: float  # monotonic time the lease was last taken or renewed
    budget: Budget
    actions: list[Outcome] = field(default_factory=list)
    ran: int = 0  # handlers that succeeded
    lateness: list[float] = field(default_factory=list)
    # The savepoint after the last handler that succeeded: its encoded state (None: nothing
    # ran, the stored state stands) and the outbox size. A failed or interrupted handler
    # rolls back to it; no handler ever runs twice in one turn.
    saved: tuple[bytes | None, int, int] = (None, 0, 0)
    # (message id, reply record) of the handlers that succeeded, written by the commit.
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    pause_ms: int = 0  # the actor is not taken again before this time (a retry's backoff)
    deleted: bool = False  # a handler that succeeded called ctx.delete(): the actor ends
    in_caller: bool = False  # run by a sender (run_actor) on its short budget, not a drain
    trace: tracing.Turn | None = None  # the turn's span, when tracing is on
    report: DrainReport = field(default_factory=DrainReport)
    # Stored fields the state model does not declare: every commit writes them back.
    unknown: dict[str, Any] = field(default_factory=dict)
    lane: str = ""  # "l": the actor goes to the long-work lane (Commit.lane)
    long_round: bool = False  # run by a long-work worker: its presence is kept with the lease
    # The actor's reminders as loaded, and as of the savepoint (what the commit writes).
    loaded_reminders: dict[str, reminders.Entry] = field(default_factory=dict)
    saved_reminders: dict[str, reminders.Entry] = field(default_factory=dict)


class _Interrupted(Exception):
    def __init__(self, index: int, env: Envelope) -> None:
        self.index = index
        self.env = env


@dataclass(frozen=True, slots=True)
class _Failure:
    """A message whose handler (or the encoding of the state it left) raised."""

    index: int
    env: Envelope
    error: BaseException


# What leaves a message settled for its sender: processed, dead-lettered, or re-sent later.
_SETTLED = (Done, Dead, Withdraw)

# Input that can never be processed: straight to the dead letters, no retry.
_BAD_INPUT = (DecodeError, MessageTooLarge, UnknownMessageType, ValidationError)

# A turn ready to commit: the commit, its counts, its metrics (None when nothing ran).
_Done = tuple[Commit, DrainReport, TurnMetrics | None]


class _Heartbeat:
    """Renews the lease of the turn whose handler is running, from a thread of its own: a
    handler may run longer than a lease (long work), and the drain renews it only between
    handlers. A long-work worker's presence is renewed with it. The thread starts with the
    first handler and does nothing between handlers (a frozen Lambda environment is frozen
    between invocations, never inside a handler)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._turn: _Turn | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    @contextmanager
    def during(self, turn: _Turn) -> Iterator[None]:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="actor-system-heartbeat", daemon=True
            )
            self._thread.start()
        self._turn = turn
        try:
            yield
        finally:
            self._turn = None

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        rt = self._runtime
        lease_ms = rt.options.lease_ms
        while not self._closed.wait(lease_ms / 6000):
            turn = self._turn
            if turn is None or (time.monotonic() - turn.leased_at) * 1000 < lease_ms / 3:
                continue
            try:
                if rt.backend.renew(turn.claim.actor, turn.token, lease_ms, rt._now_ms()):
                    turn.leased_at = time.monotonic()
                if turn.long_round:
                    rt.present(PRESENT_MS)
            except ActorSystemError as e:  # the drain's own renewal or commit will tell
                log.warning("could not renew the lease of %s: %s", turn.claim.actor, e)


class Runtime:
    """Runs rounds of turns against a backend."""

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        clock: Clock,
        options: Options,
        on_turn: MetricsHook | None = None,
    ) -> None:
        self.on_turn = on_turn
        self.registry = registry
        self.backend = backend
        self.clock = clock
        self.options = options
        self._defaults: dict[str, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async: dict[Handler, bool] = {}  # handler -> async def, asked once
        self._rng = random.Random()  # jitter of retry delays
        self.slowest_commit_s = 0.0  # the longest commit round trip (sizes Lambda's margin)
        self._turn_s = 0.0  # an actor's turn, wall time (moving average): sizes rounds
        self._unfinished: str | None = None  # the token of a round a backend error cut short
        self._heartbeat = _Heartbeat(self)
        self.id = uuid.uuid4().hex  # names this process's long-work worker (its presence)
        self.history = History()  # per-minute sums for the dashboard, written now and then

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def present(self, ttl_ms: int) -> None:
        """This process's long-work worker runs for ``ttl_ms`` more (0: it has ended)."""
        self.backend.lane_present(self.id, ttl_ms, self._now_ms())

    def round(
        self, budget: Budget, awake_ms: int = 0, lane: Literal["", "long"] = ""
    ) -> DrainReport:
        """One round: poll for ready actors, run their turns, group-commit them.
        ``awake_ms``: the poll marks a drain as running for that long (Lambda wakes).
        ``lane="long"``: the long-work lane's actors instead (actor-system worker --lane
        long): those whose work does not fit a limited budget."""
        report = DrainReport()
        opts = self.options
        # A round that failed on the backend (a broken connection, twice) is resumed under
        # its token: its poll gets the same actors back, its begins find their own leases,
        # so what it took is not left reserved to nobody until the lease expires.
        token = self._unfinished or uuid.uuid4().hex
        self._unfinished = token
        now_ms = self._now_ms()
        if lane == "long":
            actors, report.lane_waiting = self.backend.poll_lane(
                now_ms, opts.actors_per_round, opts.lease_ms
            )
        else:
            actors, report.promoted = self.backend.poll(
                now_ms, self._round_size(now_ms), opts.lease_ms, awake_ms, token
            )
        if actors:
            report.idle = False
            started = time.monotonic()
            self._turns(actors, budget, report, token=token, lane=lane)
            per_actor = (time.monotonic() - started) / len(actors)
            self._turn_s = per_actor if not self._turn_s else 0.8 * self._turn_s + 0.2 * per_actor
        self._unfinished = None
        return report

    def _round_size(self, now_ms: int) -> int:
        """How many ready actors a round takes: ``actors_per_round``, fewer when a deferred
        message is due before so many turns would end (each round's poll promotes what is
        due, so a round that ends by then keeps the message on time under a backlog)."""
        size = self.options.actors_per_round
        due = self.backend.known_due_ms()
        if due is None or not self._turn_s:
            return size
        if due == 0:
            # Not known yet (a producer sent an earlier due time somewhere): this poll
            # looks; a quarter round meanwhile, not one actor, so that a steady stream of
            # deferred sends does not shrink every round.
            return max(1, size // 4)
        room_s = (due - now_ms) / 1000
        return max(1, min(size, int(room_s / self._turn_s)))

    def run_actor(
        self, actor: str, budget: Budget, ids: set[str]
    ) -> tuple[DrainReport, list[Commit]]:
        """Run turns of one actor here and now (a sender processing its own messages
        ``ids``), under the same lease and commit as any drain, until those are settled
        (processed, dead-lettered or re-sent for later), the mailbox is empty, the lease is
        held elsewhere or the budget ends. Returns what was done (``idle`` False: work may be
        left, which stays ready for a drain) and the commits that were written."""
        report = DrainReport(idle=False)
        committed: list[Commit] = []
        waiting = set(ids)
        while budget.can_start_turn():
            turn = DrainReport()
            claimed = self._turns([actor], budget, turn, committed, in_caller=True)
            report.add(turn)
            if (
                turn.lease_conflicts
                or turn.leases_lost
                or turn.interrupted
                or turn.left_long
                or not committed
            ):
                break  # held elsewhere (that holder goes on), or out of time
            last = committed[-1]
            waiting.difference_update(
                i for i, a in zip(last.ids, last.actions, strict=False) if isinstance(a, _SETTLED)
            )
            if last.pause_ms or not waiting:
                break  # resting out a retry's backoff (a timed wake takes it), or done
            went_back = any(isinstance(a, Failed | Keep) for a in last.actions)
            if claimed < self.options.batch and not went_back:
                report.idle = True  # the mailbox is empty
                break
        return report, committed

    def _turns(
        self,
        actors: list[str],
        budget: Budget,
        report: DrainReport,
        committed: list[Commit] | None = None,
        in_caller: bool = False,
        token: str = "",
        lane: str = "",
    ) -> int:
        """Begin, run and commit the turns of ``actors``; returns how many messages were
        claimed. ``committed`` collects the commits that were written. ``token``: the lease
        token (the round's, which its poll remembered), a fresh one if not given. ``lane``:
        "long" for a long-work round."""
        token = token or uuid.uuid4().hex
        claims = self.backend.begin(
            actors, token, self.options.lease_ms, self.options.batch, self._now_ms(), lane
        )
        claimed = sum(len(c.entries) for c in claims if c is not None)
        leased_at = time.monotonic()
        pending: list[_Done] = []
        flushed_at = leased_at
        for claim in claims:
            if claim is None:
                report.lease_conflicts += 1
                continue
            report.recovered += claim.recovered
            report.duplicates += claim.duplicates
            if not budget.can_start_turn():
                pending.append((self._abandon(claim, token), DrainReport(), None))
                continue
            try:
                pending.append(self._turn(claim, token, leased_at, budget, in_caller, lane))
            except LeaseLost as e:
                report.leases_lost += 1
                log.warning("%s; its batch will be redelivered", e)
            except Exception as e:
                # The one boundary for whatever a turn did not expect: that turn's messages
                # are retried (then dead-lettered) with the error; the round goes on.
                pending.append(self._broken(claim, token, e))
            # Group commit: fast turns share one round trip, slow ones are not held back.
            if time.monotonic() - flushed_at > _GROUP_COMMIT_S:
                self._flush(pending, report, committed, lane)
                flushed_at = time.monotonic()
        self._flush(pending, report, committed, lane)
        return claimed

    def _flush(
        self,
        pending: list[_Done],
        report: DrainReport,
        committed: list[Commit] | None,
        lane: str = "",
    ) -> None:
        if not pending:
            return
        started = time.monotonic()
        if lane == "long":
            for c, _, _ in pending:
                c.lane = "e"  # back to the ordinary lane once its mailbox is empty
        results = self.backend.commit([c for c, _, _ in pending], self._now_ms())
        self.slowest_commit_s = max(self.slowest_commit_s, time.monotonic() - started)
        for (commit, turn_report, metrics), version in zip(pending, results, strict=True):
            if version is None:
                report.leases_lost += 1
                log.warning(
                    "lease of %s lost before commit; its batch will be redelivered", commit.actor
                )
                continue
            if committed is not None:
                committed.append(commit)
            report.add(turn_report)
            if metrics is not None:
                self.history.record(metrics, self.clock.now())
                if self.on_turn is not None:
                    self._emit(metrics)
        pending.clear()
        if self.history.due():
            self.flush_history()

    def flush_history(self) -> None:
        """Write this process's per-minute sums (one pipelined round trip); kept for the
        next flush if Redis cannot take them now."""
        rows = self.history.take()
        if not rows:
            return
        try:
            self.backend.record_history(rows, KEEP_MS)
        except ActorSystemError as e:
            log.warning("could not write the dashboard's history: %s", e)
            self.history.give_back(rows)

    def _emit(self, metrics: TurnMetrics) -> None:
        try:
            self.on_turn(metrics)  # type: ignore[misc]
        except Exception:  # a broken metrics sink must not stop the drain
            log.exception("metrics hook failed for %s", metrics.actor)

    def _keep_lease(self, turn: _Turn) -> None:
        """Renew the lease when a third of it has passed; LeaseLost if it is gone."""
        lease_ms = self.options.lease_ms
        if (time.monotonic() - turn.leased_at) * 1000 < lease_ms / 3:
            return
        if not self.backend.renew(turn.claim.actor, turn.token, lease_ms, self._now_ms()):
            raise LeaseLost(f"lease of {turn.claim.actor} lost during its turn")
        turn.leased_at = time.monotonic()

    def _commit(self, turn: _Turn, outbox: Outbox) -> Commit:
        """The turn's commit: the state and outbox of its savepoint, one action per entry."""
        data, n_items, n_cancels = turn.saved
        outbox.truncate(n_items, n_cancels)
        bare = self._bare(turn.claim, turn.token, turn.actions, turn.pause_ms, turn.actor)
        kept = turn.saved_reminders
        count = len(kept) if kept != turn.loaded_reminders else -1
        idle_ms = bare.idle_ttl_ms
        if turn.deleted:
            data = None  # nothing to write: every key of the actor goes
            # Its reminders go with it: their pending occurrences too.
            for n, e in kept.items():
                outbox.cancels += reminders.pending_ids(turn.claim.actor, n, e)
            count = 0
        else:
            idle_ms = _idle_ms(kept, idle_ms, int(turn.now_s * 1000))
        # A reminder's member is one per name, armed and cancelled in any order within the
        # turn (commit.lua delivers before it cancels): what the turn leaves decides. A name
        # it keeps is armed and not cancelled; one it drops is cancelled and not armed.
        final = set() if turn.deleted else set(kept)
        items = [
            i
            for i in outbox.items
            if not reminders.is_member(i.id) or reminders.member_parts(i.id)[1] in final
        ]
        cancels = [
            c
            for c in outbox.cancels
            if not reminders.is_member(c) or reminders.member_parts(c)[1] not in final
        ]
        return replace(
            bare,
            lane=turn.lane,
            state=data,
            delete=turn.deleted,
            outbox=items + bare.outbox,
            cancels=cancels,
            replies=turn.replies + bare.replies,
            state_is_default=data is not None and data == self._default_state(turn.actor),
            reminders=count,
            idle_ttl_ms=idle_ms,
        )

    def _bare(
        self,
        claim: Claim,
        token: str,
        actions: list[Outcome],
        pause_ms: int = 0,
        actor: ActorType[Any] | None = None,
    ) -> Commit:
        """A commit of actions only (state unchanged), with the dedup window of the actor's
        type (looked up unless given): every commit that records processed ids trims them to
        that window. Dead-lettered messages get their failure replies."""
        window_s, keep = self.options.done_window_s, self.options.done_max
        try:
            actor = actor or self.registry.get(ActorRef.from_key(claim.actor).type)
            window_s, keep = actor.done_window_s or window_s, actor.done_max or keep
        except ActorSystemError:  # an unknown type: the system's window
            pass
        records, out = self._dead_replies(actions)
        return Commit(
            claim.actor,
            token,
            claim.fence,
            None,
            actions,
            ids=[e[:ID_LENGTH].decode("ascii", "replace") for e, _ in claim.entries],
            outbox=out,
            done_window_ms=int(window_s * 1000),
            done_max=keep,
            pause_ms=pause_ms,
            replies=records,
            reply_ttl_ms=int(self.options.reply_ttl_s * 1000),
            idle_ttl_ms=int((actor.idle_ttl_s or 0) * 1000) if actor is not None else 0,
        )

    def _interrupted(self, turn: _Turn, stop: _Interrupted, outbox: Outbox) -> Commit:
        """The guard stopped a handler: commit the messages before it (its savepoint); it
        goes back with its attempt raised, the rest unchanged."""
        claim = turn.claim
        log.warning(
            "handler on %s interrupted: the invocation's time budget ran out; the message "
            "goes back to the mailbox",
            claim.actor,
            extra={"actor": claim.actor},
        )
        index = stop.index
        entry, failed = claim.entries[index]
        attempt = failed + 1  # the envelope's own count is not needed to bound retries here
        again: Outcome
        long_after = self.options.long_after
        if turn.in_caller:
            # A sender's short budget ran out (process=, ask, the ingress): not the handler's
            # fault; a drain runs it with its own budget, no attempt counted.
            again = KEEP
        elif long_after and attempt >= long_after:
            # It does not fit an invocation: to the long-work lane, where a worker without a
            # time limit runs it (and the actor's later messages, in order).
            log.warning(
                "%s goes to the long-work lane: its handler was interrupted %d times",
                claim.actor,
                attempt,
                extra={"actor": claim.actor},
            )
            again = Failed("interrupted: the handler ran out of time")
            turn.lane = "l"
            turn.report.moved = 1
        elif attempt >= self._max_attempts(turn.actor, stop.env.type):
            reason = f"interrupted {attempt} times: the handler needs more than the time budget"
            again = self._dead(claim, entry, attempt, reason, None)
            turn.report.dead_letters += 1
        else:
            again = Failed("interrupted: the handler ran out of time")
        del turn.actions[index:]
        turn.actions += [again] + [KEEP] * (len(claim.entries) - index - 1)
        turn.report.interrupted = 1
        outbox.truncate(turn.saved[1], turn.saved[2])
        outbox.reminders = dict(turn.saved_reminders)
        if isinstance(again, Dead):
            self._dead_occurrence(turn, entry, outbox)
        return self._commit(turn, outbox)

    def _max_attempts(self, actor: ActorType[Any], message_type: str) -> int:
        """The max_attempts of a message type: its retry policy's, else the system's."""
        return actor.policy(message_type).max_attempts or self.options.max_attempts

    def _abandon(self, claim: Claim, token: str) -> Commit:
        return self._bare(claim, token, [KEEP] * len(claim.entries))

    def _expanded(self, claim: Claim, kept: dict[str, reminders.Entry]) -> Claim:
        """``claim`` with its compact reminder occurrences (as promotion puts them into the
        mailbox) expanded into full entries from the schedule, which holds their message;
        those whose schedule moved on or went stay compact (stale: dropped undelivered)."""
        if not any(reminders.is_compact(e) for e, _ in claim.entries):
            return claim
        entries = []
        for entry, failed in claim.entries:
            try:
                full = reminders.expand(entry, kept, self.options.max_message_bytes)
            except ActorSystemError:  # too large now (max_message_bytes lowered), malformed
                full = None
            entries.append((entry if full is None else full, failed))
        return replace(claim, entries=entries)

    def _stored_reminders(self, claim: Claim) -> dict[str, reminders.Entry]:
        """The schedules in the stored bytes, read without validating the state; none if
        they cannot be unpacked."""
        try:
            return reminders.load(stored_state.reminders_of(claim.state))
        except DecodeError:
            return {}

    def _unloadable(self, claim: Claim, token: str, error: ActorSystemError) -> _Done:
        """Nothing can run for this actor (unknown type, unreadable state): dead-letter its
        messages with the reason; the stored state is left as it is."""
        kept = self._stored_reminders(claim)
        claim = self._expanded(claim, kept)
        reason = f"{type(error).__name__}: {error}"
        actions: list[Outcome] = [
            self._dead(claim, entry, n + 1, reason, None) for entry, n in claim.entries
        ]
        report = DrainReport(turns=1, dead_letters=len(actions))
        dead = [entry for entry, _ in claim.entries]
        return self._moved_on(claim, self._bare(claim, token, actions), dead, kept), report, None

    def _broken(self, claim: Claim, token: str, error: Exception) -> _Done:
        """A turn that failed outside every handler: nothing of it is written; each claimed
        message is retried with the error, or dead-lettered at max_attempts."""
        log.error("turn of %s failed: %r", claim.actor, error, exc_info=error)
        kept: dict[str, reminders.Entry] = {}
        try:
            kept = self._stored_reminders(claim)
            claim = self._expanded(claim, kept)
        except Exception:  # the fallback of a failed turn must not fail: dead as they are
            log.exception("occurrences of %s not expanded", claim.actor)
        report = DrainReport(turns=1)
        actions: list[Outcome] = []
        dead: list[bytes] = []
        for entry, failed in claim.entries:
            if failed + 1 >= self.options.max_attempts:
                reason = f"the turn failed {failed + 1} times, last: {_reason(error)}"
                actions.append(self._dead(claim, entry, failed + 1, reason, error))
                dead.append(entry)
                report.dead_letters += 1
            else:
                actions.append(Failed(_error_text(error)))
                report.retries += 1
        return self._moved_on(claim, self._bare(claim, token, actions), dead, kept), report, None

    def _moved_on(
        self, claim: Claim, bare: Commit, dead: list[bytes], kept: dict[str, reminders.Entry]
    ) -> Commit:
        """``bare`` with the reminders of its dead-lettered occurrences moved on, for a turn
        that ran no handler (an unreadable state, a turn that failed outside every handler):
        a failing occurrence never stops its schedule. The schedule is read from the stored
        bytes (``kept``, read without validating the state) and written back into them, the
        rest as it was; state that cannot even be unpacked is left alone, and its reminders
        with it."""
        try:
            if not kept or claim.state is None:
                return bare
            now_ms = self._now_ms()
            outbox = Outbox(self.registry, now_ms / 1000, claim.actor, dict(kept))
            moved = [self._settle_dead(now_ms / 1000, entry, outbox) for entry in dead]
            if not any(moved):
                return bare
            data = stored_state.with_reminders(claim.state, reminders.store(outbox.reminders))
        except Exception as e:  # this is the fallback of a failed turn: it must not fail
            log.error("reminders of %s not moved on: %r", claim.actor, e, exc_info=e)
            return bare
        return replace(
            bare,
            state=data,
            outbox=outbox.items + bare.outbox,
            reminders=len(outbox.reminders),
            idle_ttl_ms=_idle_ms(outbox.reminders, bare.idle_ttl_ms, now_ms),
        )

    def _turn(
        self,
        claim: Claim,
        token: str,
        leased_at: float,
        budget: Budget,
        in_caller: bool = False,
        lane: str = "",
    ) -> _Done:
        try:
            ref = ActorRef.from_key(claim.actor)
            actor = self.registry.get(ref.type)
            loaded = stored_state.decode(actor, claim.state)
        except stored_state.StateInvalid as e:
            too_new = isinstance(e, stored_state.StateTooNew)
            if not too_new and actor.invalid_state == "dead_letter":
                return self._unloadable(claim, token, e)
            # A newer deploy wrote it (a rolling deploy), or the actor type asks to wait for a
            # deploy that can read it: leave the state and the messages alone, look again later.
            log.warning("%s; its messages wait %d s", e, _STATE_WAIT_S)
            pause_ms = math.ceil((self.clock.now() + _STATE_WAIT_S) * 1000)
            commit = self._bare(claim, token, [KEEP] * len(claim.entries), pause_ms)
            return commit, DrainReport(turns=1), None
        except ActorSystemError as e:
            return self._unloadable(claim, token, e)
        if actor.long_work and budget.limited and claim.entries:
            # Long work: a worker without a time limit takes the actor and its messages. A
            # sender's turn leaves that to the drain it wakes, which starts such a worker.
            keep = self._bare(claim, token, [KEEP] * len(claim.entries))
            if in_caller:
                return keep, DrainReport(left_long=1), None
            return replace(keep, lane="l"), DrainReport(moved=1), None
        started = time.monotonic()
        claim = self._expanded(claim, reminders.load(loaded.reminders))
        turn = _Turn(claim, ref, actor, self.clock.now(), token, leased_at, budget)
        turn.unknown = loaded.unknown
        turn.in_caller = in_caller
        turn.long_round = lane == "long"
        turn.report.turns = 1
        turn.loaded_reminders = reminders.load(loaded.reminders)
        turn.saved_reminders = dict(turn.loaded_reminders)
        outbox = Outbox(self.registry, turn.now_s, claim.actor, dict(turn.loaded_reminders))
        turn.trace = self.registry.tracing.turn(claim.actor, ref.type, claim.entries)
        outbox.traced = turn.trace is not None
        try:
            failure = self._run_handlers(turn, loaded.state, outbox)
            if failure is not None:
                self._after_failure(turn, failure, outbox)
        except _Interrupted as stop:
            return self._interrupted(turn, stop, outbox), turn.report, None
        finally:
            if turn.trace is not None:
                turn.trace.end(turn.report)
        metrics = TurnMetrics(
            actor_type=ref.type,
            actor=claim.actor,
            messages=turn.report.messages,
            duration_s=time.monotonic() - started,
            retries=turn.report.retries,
            dead_letters=turn.report.dead_letters,
            lateness_s=tuple(turn.lateness),
        )
        return self._commit(turn, outbox), turn.report, metrics

    def _run_handlers(self, turn: _Turn, state: BaseModel, outbox: Outbox) -> _Failure | None:
        seen: set[str] = set()
        now = utc(turn.now_s)
        for index, (entry, failed) in enumerate(turn.claim.entries):
            if reminders.is_compact(entry):
                # An occurrence whose schedule moved on, or went, since it was armed.
                turn.actions.append(DONE)
                turn.report.stale_occurrences += 1
                continue
            try:
                opened = self._open(turn, entry)
            except _BAD_INPUT as e:
                turn.actions.append(self._dead(turn.claim, entry, failed + 1, _reason(e), None))
                turn.report.dead_letters += 1
                self._dead_occurrence(turn, entry, outbox)
                continue
            if opened is None:
                # The runtime's own purge message: an S3 backend removes the object of an
                # ended actor with it; without state in S3 (the system was moved off it)
                # there is nothing to remove.
                turn.actions.append(DONE)
                continue
            if isinstance(opened, Envelope):  # system.remind or system.forget
                if opened.id in seen:
                    turn.actions.append(DONE)
                    turn.report.duplicates += 1
                else:
                    seen.add(opened.id)
                    self._run_control(turn, opened, entry, failed, outbox)
                continue
            env, msg, fn = opened
            if env.id in seen:
                turn.actions.append(DONE)
                turn.report.duplicates += 1
                continue
            if turn.ran and not turn.budget.can_start_turn():
                # Not enough time for another handler: commit what is done, keep the rest.
                turn.actions.extend([KEEP] * (len(turn.claim.entries) - index))
                return None
            if turn.budget.limited and turn.actor.is_long_work(env.type):
                # A handler marked for long work: this message and those after it go to the
                # long-work lane, in order; what ran before it is committed. A sender's turn
                # leaves the move to the drain it wakes, which starts a worker for it.
                turn.actions.extend([KEEP] * (len(turn.claim.entries) - index))
                if turn.in_caller:
                    turn.report.left_long = 1
                else:
                    turn.lane = "l"
                    turn.report.moved = 1
                return None
            seen.add(env.id)
            fold = None
            if env.reminder is not None:
                fold = self._occurrence(turn.now_s, env, outbox)
                if fold is None:
                    # Replaced or forgotten after it was queued: dropped undelivered.
                    turn.actions.append(DONE)
                    turn.report.stale_occurrences += 1
                    continue
            self._keep_lease(turn)
            outbox.deleted = False
            ctx: Context[Any] = Context(state, turn.ref, env.id, env.attempt + failed, now, outbox)
            if fold is not None and env.reminder is not None:
                ctx.reminder = env.reminder[0]
                ctx.occurrence = utc(fold[0] / 1000)
                ctx.missed = fold[1]
            limit_s = turn.actor.policy(env.type).time_limit_s
            # The handler's span (tracing on) is current while it runs: its sends carry it.
            span = None if turn.trace is None else turn.trace.handler(env, ctx.attempt, turn.now_s)
            error: BaseException | None = None
            started = time.monotonic()
            try:
                with self._heartbeat.during(turn):
                    if self._is_async(fn):
                        time_s = turn.budget.handler_time_s()
                        result = self._call_async(fn, ctx, msg, time_s, limit_s)
                    else:
                        with timeout_guard(turn.budget.handler_time_s(), limit_s):
                            result = self._call(fn, ctx, msg)
                state = self._state_after(turn.actor, ctx)
                if fold is not None:
                    self._move_on(turn.now_s, env, fold, outbox)
                saved = stored_state.encode(
                    turn.actor, state, turn.unknown, reminders.store(outbox.reminders)
                )
                reply = self._reply(turn, env, result, outbox)
            except BudgetExhausted as e:
                error = e
                raise _Interrupted(index, env) from e
            except TimeLimitExceeded as e:
                error = TimeoutError(str(e))
                return _Failure(index, env, error)
            except Exception as e:
                error = e
                return _Failure(index, env, e)
            finally:
                if span is not None:
                    span.end(error)
            turn.saved = (saved, len(outbox.items), len(outbox.cancels))
            turn.saved_reminders = dict(outbox.reminders)
            if reply is not None:
                turn.replies.append((env.id, reply))
            turn.budget.observe_handler(time.monotonic() - started)
            turn.actions.append(DONE)
            turn.ran += 1
            turn.report.messages += 1
            if env.due_at_ms is not None:
                turn.lateness.append(turn.now_s - env.due_at_ms / 1000)
            if outbox.deleted:
                # The actor ends with this commit; what is queued behind starts it anew.
                turn.deleted = True
                turn.actions.extend([KEEP] * (len(turn.claim.entries) - index - 1))
                return None
        return None

    def _reply(self, turn: _Turn, env: Envelope, result: Any, outbox: Outbox) -> bytes | None:
        """The reply record to store for a handler's return value when its sender asked
        (``system.ask``, ``?wait=commit``); an actor that asked gets a Replied message in
        this turn's outbox instead. A plain send's return value is not kept: storing every
        one would cost a Redis write and memory per message for nobody."""
        if env.reply is None:
            return None
        try:
            model = turn.actor.reply_model(env.type)
            if model is not None and result is not None and not isinstance(result, model):
                # The handler declares its reply: one that does not fit fails here, with the
                # message, rather than in the asker when it reads it back.
                try:
                    result = model.model_validate(result)
                except ValidationError as e:
                    raise TypeError(
                        f"the reply does not fit the {model.__name__} the handler returns: "
                        f"{e.errors(include_url=False)}"
                    ) from None
            record = replies.encode_value(result, self.options.max_message_bytes)
        except (TypeError, MessageTooLarge) as e:
            raise replies.ReplyInvalid(str(e)) from None
        if not env.reply:
            return record
        _, value = replies.decode(env.id, record)
        outbox.items.append(
            self._replied(turn.now_s, env, replies.Replied(id=env.id, ok=True, value=value))
        )
        return None

    def _replied(
        self,
        now_s: float,
        env: Envelope,
        reply: replies.Replied,
        trace: dict[str, str] | EllipsisType | None = ...,
    ) -> Outgoing:
        """The Replied message for the actor that asked; its id is derived from the asked
        message's, so a copy is dropped like any other. ``trace``: the trace it continues
        (by default the current span's: the handler's that replies)."""
        assert env.reply
        return self.registry.prepare(
            ActorRef.from_key(env.reply),
            reply,
            now_s=now_s,
            idempotency_key=f"reply:{env.id}",
            trace=trace,
        )

    def _dead_replies(
        self, actions: list[Outcome]
    ) -> tuple[list[tuple[str, bytes]], list[Outgoing]]:
        """Failure replies for the dead-lettered messages that were asked among ``actions``:
        a record under the message id (what ``ask`` and ``reply`` raise HandlerFailed with),
        or a Replied message to the actor that asked."""
        records: list[tuple[str, bytes]] = []
        out: list[Outgoing] = []
        for action in actions:
            if not isinstance(action, Dead) or not action.letter.id:
                continue
            dead = action.letter
            try:
                env = decode(dead.entry)
            except DecodeError:
                continue
            if env.reply is None:
                continue  # nobody asked: the dead letter itself says why
            if env.reply == "":
                records.append((dead.id, replies.encode_failure(dead.reason)))
                continue
            failed = replies.Replied(id=env.id, ok=False, error=dead.reason)
            try:
                # In the trace of the failed message: the asker's handler continues it.
                out.append(self._replied(self.clock.now(), env, failed, env.trace))
            except (ActorSystemError, ValidationError) as e:
                log.error("the failure of %s cannot be replied to %s: %s", env.id, env.reply, e)
        return records, out

    @staticmethod
    def _call(fn: Handler, ctx: Context[Any], msg: BaseModel) -> Any:
        """Run a plain handler, returning its reply; one that hands back an awaitable fails
        clearly."""
        result = fn(ctx, msg)
        if result is not None and inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited on purpose: no warning, a clear failure instead
            raise TypeError(
                f"handler {getattr(fn, '__qualname__', fn)!r} returned an awaitable without "
                "being an async def; write `async def` so that the runtime awaits it"
            )
        return result

    def _call_async(
        self,
        fn: Handler,
        ctx: Context[Any],
        msg: BaseModel,
        budget_s: float,
        limit_s: float | None,
    ) -> Any:
        """Run an ``async def`` handler on this runtime's event loop. Its deadline (the
        budget's or its own time limit, whichever comes first) is asyncio's: a signal raised
        inside the event loop could be swallowed by a callback or leave the task behind."""
        wait_s = min(budget_s, math.inf if limit_s is None else limit_s)
        if wait_s <= 0:
            raise BudgetExhausted("no time left in the budget to run a handler")
        expired: list[bool] = []

        async def bounded() -> Any:
            if not math.isfinite(wait_s):
                return await fn(ctx, msg)
            async with asyncio.timeout(wait_s) as deadline:
                try:
                    return await fn(ctx, msg)
                finally:
                    expired.append(deadline.expired())

        try:
            return self._run_async(bounded())
        except TimeoutError:
            if not (expired and expired[0]):
                raise  # the handler's own timeout: a failure like any other
            if limit_s is None or budget_s <= limit_s:
                raise BudgetExhausted(f"handler interrupted after {wait_s:.3f}s") from None
            raise TimeLimitExceeded(
                f"the handler ran longer than its time_limit_s={limit_s:g}"
            ) from None

    def _run_async(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Run one async handler to its end. Interrupted by the budget's guard, its task is
        cancelled before the exception goes on: it never resumes in a later turn."""
        loop = self._event_loop()
        task = loop.create_task(work)
        try:
            return loop.run_until_complete(task)
        except BaseException:
            if not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            raise

    def _is_async(self, fn: Handler) -> bool:
        found = self._async.get(fn)
        if found is None:
            found = self._async[fn] = inspect.iscoroutinefunction(fn)
        return found

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """One event loop per runtime, for async handlers, made on first use."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop

    def close(self) -> None:
        """Close the event loop of async handlers, if one was made, and stop renewing."""
        self._heartbeat.close()
        self.flush_history()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _open(
        self, turn: _Turn, entry: bytes
    ) -> tuple[Envelope, BaseModel, Handler] | Envelope | None:
        """Decode an entry and validate its payload; raises one of _BAD_INPUT. None for a
        purge message (PURGE_TYPE), which has no handler; the envelope alone for a message
        that sets or forgets a reminder (reminders.CONTROL_TYPES)."""
        check_size(entry, self.options.max_message_bytes, "mailbox entry")
        env = decode(entry)
        if env.target != turn.claim.actor:
            raise DecodeError(
                f"envelope addressed to {env.target!r} found in the mailbox of "
                f"{turn.claim.actor!r}",
                entry,
            )
        if env.type == PURGE_TYPE:
            return None
        if env.type in reminders.CONTROL_TYPES:
            return env
        model, fn = turn.actor.resolve(env.type)
        return env, model.model_validate(env.payload), fn

    # -- reminders ------------------------------------------------------------------------

    def _occurrence(self, now_s: float, env: Envelope, outbox: Outbox) -> tuple[int, int] | None:
        """(the occurrence delivered, how many earlier ones it folds in) for an occurrence
        of a reminder the actor has as it was armed; None for a stale one (the reminder was
        replaced or forgotten after this occurrence was queued)."""
        assert env.reminder is not None
        name, gen, due = env.reminder
        if gen == reminders.DETACHED:
            return due, 0  # a redriven dead letter: delivered as it was, the schedule untouched
        entry = outbox.reminders.get(name)
        if entry is None or _other_gen(entry, gen) or entry.due != due:
            log.debug("stale occurrence %s of reminder %r of %s dropped", env.id, name, env.target)
            return None
        return entry.fold(due, int(now_s * 1000))

    def _move_on(self, now_s: float, env: Envelope, fold: tuple[int, int], outbox: Outbox) -> None:
        """Arm the next occurrence of the reminder whose occurrence ``env`` was settled (or
        remove the reminder when its schedule ends), unless the handler replaced or forgot
        it meanwhile."""
        assert env.reminder is not None
        name, gen, due = env.reminder
        entry = outbox.reminders.get(name)
        if entry is None or _other_gen(entry, gen) or entry.due != due:
            return  # replaced or forgotten by the handler: its own choice stands
        nxt = entry.moved_on(*fold)
        if nxt is None:
            del outbox.reminders[name]
            return
        if nxt.payload is None:  # a schedule stored before it kept its message
            nxt = replace(nxt, payload=env.payload)
        outbox.reminders[name] = nxt
        outbox.items.append(
            reminders.occurrence(
                outbox.actor,
                name,
                nxt,
                env.payload,
                int(now_s * 1000),
                self.options.max_message_bytes,
            )
        )

    def _dead_occurrence(self, turn: _Turn, entry: bytes, outbox: Outbox) -> None:
        """A dead-lettered occurrence still moves its reminder on: a failing occurrence
        never stops the schedule. The savepoint takes the change."""
        if self._settle_dead(turn.now_s, entry, outbox):
            self._save_reminders(turn, outbox)

    def _settle_dead(self, now_s: float, entry: bytes, outbox: Outbox) -> bool:
        """Move on, in ``outbox``, the reminder whose occurrence ``entry`` is dead-lettered;
        False if it is none's (a plain message, a redriven or a stale occurrence)."""
        try:
            env = decode(entry)
        except DecodeError:
            return False
        if env.reminder is None or env.reminder[1] == reminders.DETACHED:
            return False
        fold = self._occurrence(now_s, env, outbox)
        if fold is None:
            return False
        self._move_on(now_s, env, fold, outbox)
        return True

    def _save_reminders(self, turn: _Turn, outbox: Outbox) -> None:
        """A savepoint of the reminders alone: the state as of the last one, with them."""
        base = turn.saved[0] or turn.claim.state or self._default_state(turn.actor)
        data = stored_state.with_reminders(base, reminders.store(outbox.reminders))
        turn.saved = (data, len(outbox.items), len(outbox.cancels))
        turn.saved_reminders = dict(outbox.reminders)

    def _run_control(
        self, turn: _Turn, env: Envelope, entry: bytes, failed: int, outbox: Outbox
    ) -> None:
        """Carry out a system.remind or system.forget: a turn's step without a handler."""
        payload = env.payload
        try:
            name = reminders.check_name(payload.get("name"))
            value: Any
            if env.type == reminders.FORGET_TYPE:
                value = outbox.forget(name)
            else:
                found = reminders.Entry.unpack(payload.get("entry"))
                if found is None:
                    raise InvalidSend(f"reminder {name!r}: its schedule cannot be read")
                model, _ = turn.actor.resolve(found.type)
                message = model.model_validate(payload.get("payload"))
                outbox.set_reminder(
                    name, found, message.model_dump(mode="json"), int(turn.now_s * 1000)
                )
                value = found.pack()
            reply = (
                replies.encode_value(value, self.options.max_message_bytes)
                if env.reply == ""
                else None
            )
        except (*_BAD_INPUT, InvalidSend) as e:
            outbox.truncate(turn.saved[1], turn.saved[2])
            outbox.reminders = dict(turn.saved_reminders)
            turn.actions.append(self._dead(turn.claim, entry, failed + 1, _reason(e), None))
            turn.report.dead_letters += 1
            return
        self._save_reminders(turn, outbox)
        if reply is not None:
            turn.replies.append((env.id, reply))
        turn.actions.append(DONE)
        turn.ran += 1
        turn.report.messages += 1

    @staticmethod
    def _state_after(actor: ActorType[Any], ctx: Context[Any]) -> BaseModel:
        """The state a handler left: ``ctx.state``, mutated or replaced (frozen models)."""
        state: BaseModel = ctx.state
        fits = isinstance(state, actor.state_type)
        if not fits:
            raise TypeError(
                f"ctx.state must be a {actor.state_type.__name__} for actor type "
                f"{actor.name!r}, the handler left a {type(state).__name__}"
            )
        return state

    def _after_failure(self, turn: _Turn, failure: _Failure, outbox: Outbox) -> None:
        """Retry, re-send or dead-letter the failed message; the state and outbox roll back
        to the savepoint of the message before it, and the messages after it stay queued."""
        entries = turn.claim.entries
        entry, failed = entries[failure.index]
        _, n_items, n_cancels = turn.saved
        outbox.truncate(n_items, n_cancels)
        outbox.reminders = dict(turn.saved_reminders)
        action = self._failed_action(turn, failure, entry, failed, outbox)
        turn.actions.append(action)
        turn.actions.extend([KEEP] * (len(entries) - failure.index - 1))
        turn.saved = (turn.saved[0], len(outbox.items), len(outbox.cancels))
        if isinstance(action, Dead):
            self._dead_occurrence(turn, entry, outbox)

    def _failed_action(
        self, turn: _Turn, failure: _Failure, entry: bytes, failed: int, outbox: Outbox
    ) -> Outcome:
        env, error = failure.env, failure.error
        attempt = env.attempt + failed
        policy = turn.actor.policy(env.type)
        max_attempts = self._max_attempts(turn.actor, env.type)
        if isinstance(error, replies.ReplyInvalid):
            # The same return value again: retrying cannot help its asker.
            turn.report.dead_letters += 1
            reason = f"not retried (its reply cannot be stored): {_reason(error)}"
            return self._dead(turn.claim, entry, attempt, reason, error)
        if isinstance(error, policy.never_retry):
            turn.report.dead_letters += 1
            reason = f"not retried ({type(error).__name__} is in never_retry): {_reason(error)}"
            return self._dead(turn.claim, entry, attempt, reason, error)
        if attempt >= max_attempts:
            turn.report.dead_letters += 1
            reason = f"failed {attempt} times, last: {_reason(error)}"
            return self._dead(turn.claim, entry, attempt, reason, error)
        asked = error.delay if isinstance(error, Retry) else 0.0
        explicit = asked > 0
        delay_s = asked if explicit else policy.delay_s(attempt, self._rng)
        if explicit or (delay_s > 0 and not policy.keep_order):
            # Through the delay queue: the messages behind it proceed meanwhile.
            try:
                self._resend_later(turn, outbox, env, delay_s, failed)
            except (ActorSystemError, ValidationError) as e:
                turn.report.dead_letters += 1
                reason = f"Retry(delay={delay_s!r}) cannot be honoured: {_reason(e)}"
                return self._dead(turn.claim, entry, attempt, reason, error)
            turn.report.retries += 1
            return WITHDRAW
        if not isinstance(error, Retry):
            log.warning(
                "handler for %s on %s failed (attempt %d of %d), retry in %.1fs: %r",
                env.type,
                turn.claim.actor,
                attempt,
                max_attempts,
                delay_s,
                error,
                extra={
                    "actor": turn.claim.actor,
                    "message_id": env.id,
                    "attempt": attempt,
                    "message_type": env.type,
                },
            )
        # The actor waits: the message goes back to the head of its mailbox and the actor
        # is not taken again before the retry time (a deferred re-delivery, no sleep).
        turn.pause_ms = math.ceil((turn.now_s + delay_s) * 1000) if delay_s > 0 else 0
        turn.report.retries += 1
        return Failed(_error_text(error))

    def _resend_later(
        self, turn: _Turn, outbox: Outbox, env: Envelope, delay: float, failed: int
    ) -> None:
        """Re-send a message through the delay queue under its id; its envelope carries every
        attempt so far (the Redis count of this copy is dropped with it)."""
        model, _ = turn.actor.resolve(env.type)
        again = self.registry.prepare(
            turn.ref,
            model.model_validate(env.payload),
            now_s=turn.now_s,
            delay=delay,
            message_id=env.id,
            attempt=env.attempt + failed + 1,
            reply=env.reply,  # whoever asked still gets the reply of the copy
            trace=env.trace,  # and it stays in the trace it was sent in
            reminder=env.reminder,  # and an occurrence stays one: it moves its schedule on
        )
        outbox.items.append(again)

    def _default_state(self, actor: ActorType[Any]) -> bytes:
        """The encoded defaults of an actor type's state: a commit that leaves them lets
        the backend drop the actor's state (an idle actor then keeps no keys)."""
        found = self._defaults.get(actor.name)
        if found is None:
            found = self._defaults[actor.name] = stored_state.encode(actor, actor.state_type(), {})
        return found

    def _dead(
        self, claim: Claim, entry: bytes, attempts: int, reason: str, error: BaseException | None
    ) -> Dead:
        prefix = entry[:ID_LENGTH].decode("ascii", "replace")
        mid = prefix if is_message_id(prefix) else ""
        log.error(
            "dead letter %s for %s: %s",
            mid,
            claim.actor,
            reason,
            extra={"actor": claim.actor, "message_id": mid, "attempt": attempts},
        )
        return Dead(
            DeadLetter(
                id=mid,
                actor=claim.actor,
                reason=reason,
                attempts=attempts,
                at_ms=self._now_ms(),
                error=_traceback(error, 4000) if error else "",
                entry=entry,
                first_error=claim.first_errors.get(mid, reason),
            )
        )


def _traceback(e: BaseException, limit: int) -> str:
    """The last ``limit`` characters of the formatted traceback: type, message and where."""
    return "".join(traceback.format_exception(e))[-limit:]


def _error_text(e: BaseException) -> str:
    """The first error kept for a message being retried."""
    return _traceback(e, 2000)


def _other_gen(entry: reminders.Entry, gen: str) -> bool:
    """Whether an occurrence armed with ``gen`` is of another setting than ``entry``'s (a
    compact one, not expanded, is matched by its due time alone)."""
    return gen != reminders.COMPACT and entry.gen != gen


def _idle_ms(kept: Mapping[str, reminders.Entry], idle_ms: int, now_ms: int) -> int:
    """The idle TTL of an actor's keys as a commit leaves its reminders: an actor with
    reminders is not idle before its last pending occurrence."""
    if not kept or not idle_ms:
        return idle_ms
    last_due = max(e.due for e in kept.values())
    return max(idle_ms, last_due - now_ms + idle_ms)


def _reason(e: BaseException) -> str:
    if isinstance(e, ValidationError):
        return f"payload fails validation for {e.title}: {e.errors(include_url=False)}"
    return f"{type(e).__name__}: {e}"
