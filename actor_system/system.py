"""ActorSystem: wiring from URLs or the environment, and the calls a user makes."""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel

from actor_system import reminders, replies, stored_state, tracing
from actor_system.actor import ActorRef, ActorType, Registry, message_name
from actor_system.budget import Budget
from actor_system.envelope import (
    ID_LENGTH,
    Envelope,
    Outgoing,
    check_message_id,
    check_size,
    encode,
    new_id,
)
from actor_system.errors import (
    ActorBusy,
    ActorSystemError,
    ConfigError,
    DecodeError,
    InvalidSend,
    redact_url,
)
from actor_system.metrics import EmfMetrics
from actor_system.options import Options
from actor_system.ports import Commit, DeadLetter
from actor_system.runtime import DrainReport, Runtime
from actor_system.tracing import Tracing
from actor_system.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from opentelemetry.trace import TracerProvider

    from actor_system.metrics import MetricsHook
    from actor_system.ports import Backend, Clock, Continuation, Waker
    from actor_system.reminders import Reminder

S = TypeVar("S", bound=BaseModel)

log = logging.getLogger("actor_system")
# How long a wake is trusted to start a drain (P:awake): sends meanwhile start none.
_WAKE_MS = 30_000

ENV_PREFIX = "ACTOR_SYSTEM_"
_REDIS_SCHEMES = ("redis", "rediss", "unix", "fakeredis")


@dataclass(frozen=True, slots=True)
class Deferred:
    """A deferred message waiting in the delay queue."""

    id: str
    actor: str
    due: datetime
    type: str = "?"  # the message type; "?" where the stored message cannot be read


class ActorSystem:
    """A set of actor types bound to their stores; see ``from_url`` and ``from_env``."""

    def __init__(
        self,
        backend: Backend,
        *,
        actors: Iterable[ActorType[Any]],
        clock: Clock | None = None,
        options: Options | None = None,
        on_turn: MetricsHook | None = None,
        waker: Waker | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.options = options or Options()
        # Starts a drain when a send finds the system at rest (Lambda); None: drains run on
        # their own (workers) or only on their schedule.
        self.waker = waker
        # OpenTelemetry: this provider's tracer, else the global provider's once one is set.
        self.registry = Registry(actors, self.options, Tracing(tracer_provider))
        self.backend = backend
        # One time authority for every process: the store's (Redis TIME), unless the caller
        # drives time itself (ManualClock in tests).
        self.clock: Clock = clock or backend.server_clock()
        self.runtime = Runtime(self.registry, backend, self.clock, self.options, on_turn)

    @classmethod
    def from_url(
        cls,
        url: str = "fakeredis://",
        *,
        actors: Iterable[ActorType[Any]],
        state: str | None = None,
        delay: str | None = None,
        clock: Clock | None = None,
        on_turn: MetricsHook | None = None,
        waker: Waker | None = None,
        tracer_provider: TracerProvider | None = None,
        **options: Any,
    ) -> ActorSystem:
        """Connect to ``redis://``, ``rediss://`` or the embedded ``fakeredis://``.

        ``state="s3://bucket/prefix"`` keeps actor state in S3; ``delay="sqs://queue"`` or
        ``delay="scheduler://group?target=<arn>&role=<arn>"`` keeps far-future deferred
        messages in SQS or EventBridge Scheduler (boto3 is imported only then). Redis is the
        default for both (``None``). ``waker`` starts a drain when a send finds the system at
        rest (see ``actor_system.adapters.aws.waker_from_url``). ``tracer_provider``: the
        OpenTelemetry provider of this system's spans (default: the global one, when set).
        Other keyword arguments are ``Options`` fields (``batch=``, ``lease_ms=``, ...).
        """
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in _REDIS_SCHEMES:
            raise ConfigError(
                f"unknown URL scheme {scheme!r} in {redact_url(url)!r}; expected redis://, "
                "rediss:// or fakeredis://"
            )
        opts = Options.from_mapping(options)
        backend = _backend(url, opts, state, delay)
        return cls(
            backend,
            actors=actors,
            clock=clock,
            options=opts,
            on_turn=on_turn,
            waker=waker,
            tracer_provider=tracer_provider,
        )

    @classmethod
    def from_env(
        cls,
        *,
        actors: Iterable[ActorType[Any]],
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        on_turn: MetricsHook | None = None,
    ) -> ActorSystem:
        """Read ``ACTOR_SYSTEM_REDIS_URL`` (required), ``ACTOR_SYSTEM_STATE_URL``,
        ``ACTOR_SYSTEM_DELAY_URL``, ``ACTOR_SYSTEM_WAKER_URL`` (sqs://wake-queue or
        lambda://drain-function: sends wake a drain at rest) and one
        ``ACTOR_SYSTEM_<OPTION>`` per Options field.

        On Lambda (``AWS_LAMBDA_FUNCTION_NAME`` set) turn metrics default to CloudWatch EMF.
        """
        env = os.environ if environ is None else environ
        url = env.get(f"{ENV_PREFIX}REDIS_URL")
        if not url:
            raise ConfigError(f"{ENV_PREFIX}REDIS_URL is not set; e.g. redis://host:6379/0")
        types = {f.name: f.type for f in fields(Options)}
        options: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX) or key in _URL_VARS:
                continue
            name = key.removeprefix(ENV_PREFIX).lower()
            if name not in types:
                raise ConfigError(
                    f"unknown setting {key}; known: "
                    + ", ".join(sorted(f"{ENV_PREFIX}{n.upper()}" for n in (*types, "redis_url")))
                )
            options[name] = _parse_option(key, raw, str(types[name]))
        if on_turn is None and env.get("AWS_LAMBDA_FUNCTION_NAME"):
            on_turn = EmfMetrics()
        waker: Waker | None = None
        if env.get(f"{ENV_PREFIX}WAKER_URL"):
            from actor_system.adapters.aws import waker_from_url  # no boto3 until the first wake

            waker = waker_from_url(env[f"{ENV_PREFIX}WAKER_URL"])
        try:
            return cls.from_url(
                url,
                actors=actors,
                clock=clock,
                on_turn=on_turn,
                waker=waker,
                state=env.get(f"{ENV_PREFIX}STATE_URL"),
                delay=env.get(f"{ENV_PREFIX}DELAY_URL"),
                **options,
            )
        except ConfigError as e:
            raise ConfigError(f"{e} (from {ENV_PREFIX}* environment variables)") from None

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        ref: ActorRef,
        msg: BaseModel,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        idempotency_key: str | None = None,
        process: bool | float = False,
    ) -> str:
        """Send ``msg`` to ``ref`` now, after ``delay`` (seconds or timedelta) or at ``at``.

        Returns the message id. The same ``idempotency_key`` to the same actor yields the
        same id, and the actor processes it once. Raises InvalidSend, UnknownActorType,
        UnknownMessageType or MessageTooLarge before anything is stored.

        ``process=True`` (or a number of seconds; True: ``Options.process_s``) runs the
        actor's turn here, under the same lease and commit as any drain, and leaves what it
        cannot finish in that time to one. Without it, a send that finds the system at rest
        starts a drain through the waker, when there is one.
        """
        with self.registry.tracing.sending(msg) as span:
            item = self.registry.prepare(
                ref,
                msg,
                now_s=self.clock.now(),
                delay=delay,
                at=at,
                idempotency_key=idempotency_key,
            )
            if span is not None:
                tracing.sent(span, [item])
            self._deliver([item], self._process_s(process))
        return item.id

    def send_many(
        self, messages: Sequence[tuple[ActorRef, BaseModel]], *, process: bool | float = False
    ) -> list[str]:
        """Send several immediate messages in one round trip; returns their ids in order."""
        with self.registry.tracing.sending(messages) as span:
            now_s = self.clock.now()
            items = [self.registry.prepare(ref, msg, now_s=now_s) for ref, msg in messages]
            if span is not None:
                tracing.sent(span, items)
            self._deliver(items, self._process_s(process))
        return [i.id for i in items]

    def ask(
        self,
        ref: ActorRef,
        msg: BaseModel,
        *,
        timeout: float = 10.0,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send ``msg`` and return the handler's reply (its return value; a model when the
        handler's return annotation is one, else JSON values), committed with its turn.

        The turn runs here when it can (``process=True``), else a drain's commit is awaited
        on Redis (a blocking read, no polling). Raises HandlerFailed with the dead letter's
        reason if the message cannot be processed, NoReply (a TimeoutError carrying the
        message id, for ``reply``) after ``timeout`` seconds. A resend with the same
        ``idempotency_key`` gets the first reply.
        """
        with self.registry.tracing.sending(msg) as span:
            item = self._asked(ref, msg, timeout, idempotency_key)
            if span is not None:
                tracing.sent(span, [item])
            data = self.await_reply(item, timeout)
            model = self.registry.get(ref.type).reply_model(message_name(type(msg)))
            return replies.value_of(item.id, data, model)

    def _asked(
        self, ref: ActorRef, msg: BaseModel, timeout: float, idempotency_key: str | None
    ) -> Outgoing:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise InvalidSend(f"timeout={timeout!r} must be a number of seconds > 0")
        return self.registry.prepare(
            ref, msg, now_s=self.clock.now(), idempotency_key=idempotency_key, reply=""
        )

    def await_reply(self, item: Outgoing, timeout: float) -> bytes:
        """Deliver a message prepared with ``reply=""``, process it here within ``timeout``
        and return its reply record, or wait for the drain that commits it; NoReply after
        ``timeout``."""
        deadline = time.monotonic() + timeout
        accepted, committed = self._deliver([item], timeout)
        for record in committed:
            found = dict(record.replies).get(item.id)
            if found is not None:
                return found
        if not accepted:  # a resend of a message its actor processed: its reply or nothing
            data = self.backend.reply(item.id)
            if data is not None:
                return data
            raise replies.NoReply(
                f"message {item.id} was processed before (a resend with the same "
                "idempotency_key) and has no reply: it was sent without asking (only an "
                f"asked message's reply is kept), or its reply expired (reply_ttl_s="
                f"{self.options.reply_ttl_s:g}s)",
                item.id,
            )
        while True:
            left = deadline - time.monotonic()
            data = self.backend.wait_reply(item.id, max(left, 0.0))
            if data is not None:
                return data
            if left <= 0:
                raise replies.NoReply(
                    f"no reply to message {item.id} within {timeout:g}s: not processed yet "
                    f"(it still will be; system.reply({item.id!r}) looks again), or "
                    f"processed more than reply_ttl_s={self.options.reply_ttl_s:g}s ago",
                    item.id,
                )
            if not getattr(self.backend, "blocking", True):
                # The embedded store (fakeredis) lives in this process: nothing else drains
                # it, so drain here between looks.
                self.run_until_idle()
                time.sleep(min(0.005, max(left, 0)))

    def reply(self, message_id: str, *, timeout: float = 0.0) -> Any:
        """The reply of an asked message (``ask``, ``?wait=commit``) as JSON values, waiting
        up to ``timeout`` for it: for an ask that timed out, or a 202 of the ingress.
        HandlerFailed if it was dead-lettered, NoReply if there is none (not processed yet,
        never asked, or processed longer ago than ``reply_ttl_s``)."""
        mid = check_message_id(message_id)
        data = self.backend.wait_reply(mid, timeout)
        if data is None:
            raise replies.NoReply(
                f"no reply to message {mid}: not processed yet, sent without asking (only an "
                f"asked message's reply is kept), or processed more than "
                f"reply_ttl_s={self.options.reply_ttl_s:g}s ago",
                mid,
            )
        return replies.value_of(mid, data, None)

    def _process_s(self, process: bool | float) -> float:
        if process is True:
            return self.options.process_s
        if process is False:
            return 0.0
        if not isinstance(process, int | float) or not process > 0:
            raise InvalidSend(f"process={process!r} must be True, False or seconds > 0")
        return float(process)

    def _deliver(self, items: Sequence[Outgoing], process_s: float) -> tuple[int, list[Commit]]:
        """Push ``items``; with ``process_s``, run their actors' turns here for up to that
        long. Then start a drain if work is left and none runs. Returns how many items were
        accepted and the commits written here."""
        waker = self.waker
        # Processing here: no drain yet; it is started below only for what is left.
        wake_ms = _WAKE_MS if waker is not None and not process_s else 0
        accepted, wake = self.backend.push(items, self._now_ms(), wake_ms)
        if waker is not None and any(i.due_ms is not None for i in items):
            self._wake(lambda w: arm_wake(self.backend, w, self._now_ms()))
        targets = list(dict.fromkeys(i.target for i in items if i.due_ms is None))
        if not process_s or not targets or not accepted:
            if wake:
                self._wake(lambda w: w.wake_now())
            return accepted, []
        budget = Budget.seconds(process_s)
        committed: list[Commit] = []
        ids = {i.id for i in items}
        try:
            for target in targets:
                committed += self.runtime.run_actor(target, budget, ids)[1]
        finally:
            # Whatever is ready now needs a drain if none runs (also when processing here
            # failed): work this caller left, and sends that arrived while it held the lease
            # (a drain woken for them found the lease held and may have ended since).
            self._drain_what_is_ready()
        if waker is not None and (
            any(c.pause_ms for c in committed)
            or any(o.due_ms is not None for c in committed for o in c.outbox)
        ):
            self._wake(lambda w: arm_wake(self.backend, w, self._now_ms()))
        return accepted, committed

    def _drain_what_is_ready(self) -> None:
        """Start a drain if actors are ready and none runs (one atomic check, a round trip;
        nothing without a waker). A failure is logged, not raised: it must not hide what
        the caller is raising, and the sweep covers a missed wake."""
        if self.waker is None:
            return
        try:
            needed = self.backend.claim_drain(_WAKE_MS)
        except ActorSystemError as e:
            log.error("could not check whether a drain runs; the periodic sweep will: %s", e)
            return
        if needed:
            self._wake(lambda w: w.wake_now())

    def _wake(self, start: Callable[[Waker], None]) -> None:
        """Start a drain; the message is stored either way, so a failure is logged (the
        periodic sweep delivers it) rather than raised."""
        assert self.waker is not None
        try:
            start(self.waker)
        except ActorSystemError as e:
            log.error("could not start a drain; the periodic sweep will: %s", e)
            # The claim taken for that wake would keep the next senders from trying again.
            try:
                self.backend.drop_wake()
            except ActorSystemError as again:
                log.error("could not drop the wake claim: %s", again)

    def cancel(self, message_id: str) -> bool:
        """Cancel a deferred message not yet due; False if unknown or already delivered.

        Idempotent in its answer: a cancel retried after a lost answer (a connection reset)
        still returns True for an hour (the receipt ``P:cancelled:<id>``). Sending the same
        id again (an idempotency key) after cancelling it, and having that copy delivered,
        is not told apart from the cancel within that hour."""
        return self.backend.cancel(check_message_id(message_id))

    def delete(self, ref: ActorRef, *, timeout: float = 10.0) -> bool:
        """End an actor now, as ``ctx.delete()`` in a turn would: its state and every key of
        it go, under its lease (waiting up to ``timeout`` for a running turn to end). Messages
        still queued stay and start it anew from the default state. Returns whether it had
        state. Raises ActorBusy if its lease stays held."""
        if not isinstance(ref, ActorRef):
            raise InvalidSend(f"delete needs an ActorRef (actor.ref(id)), got {ref!r}")
        deadline = time.monotonic() + timeout
        lease_ms = self.options.lease_ms
        while True:
            token = uuid.uuid4().hex
            # lane "long": an actor resting in the long-work lane is taken too, and leaves
            # the lane unless messages wait behind the ending.
            [claim] = self.backend.begin([ref.key], token, lease_ms, 0, self._now_ms(), "long")
            if claim is not None:
                end = Commit(
                    ref.key,
                    token,
                    claim.fence,
                    None,
                    [],
                    delete=True,
                    lane="e",
                    cancels=_occurrences(ref.key, claim.state),
                    reminders=0,
                )
                if self.backend.commit([end], self._now_ms())[0] is not None:
                    return claim.state is not None
            if time.monotonic() >= deadline:
                raise ActorBusy(f"actor {ref.key} is busy: a turn holds its lease; try again")
            time.sleep(0.05)

    # -- reminders -------------------------------------------------------------------------

    def remind(
        self,
        ref: ActorRef,
        name: str,
        msg: BaseModel,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        every: float | timedelta | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        times: int | None = None,
        until: datetime | None = None,
        jitter: float | timedelta | None = None,
        catchup: Literal["coalesce", "all"] = "coalesce",
        idempotency_key: str | None = None,
        timeout: float = 10.0,
    ) -> Reminder:
        """Set the reminder ``name`` of ``ref`` from outside a handler, as ``ctx.remind``
        does in one (same arguments; the schedule counts from now). It is a message to the
        actor, applied in its turn, in order with its other messages; this call waits up to
        ``timeout`` for that commit (processing it here when it can, as ``ask`` does) and
        returns the reminder as set. NoReply after ``timeout``: it is still applied later.

        The message's id is derived from the arguments (or ``idempotency_key``): the same
        call repeated within the actor's dedup window is dropped and arms nothing new."""
        spec: dict[str, Any] = {
            "delay": delay,
            "at": at,
            "every": every,
            "cron": cron,
            "tz": tz,
            "times": times,
            "until": until,
            "jitter": jitter,
            "catchup": catchup,
        }
        type_name = self.registry.message_type(ref, msg)
        entry = reminders.plan(
            ref.key,
            name,
            type_name,
            self._now_ms(),
            max_delay_s=self.options.max_delay_s,
            **spec,
        )
        payload = msg.model_dump(mode="json")
        if idempotency_key is None:
            given = {k: _given(v) for k, v in spec.items()}
            idempotency_key = (
                f"{reminders.REMIND_TYPE}\x1f{name}\x1f{type_name}\x1f{payload}\x1f{given}"
            )
        body = reminders.remind_payload(name, entry, payload)
        item = self._control(ref, reminders.REMIND_TYPE, body, timeout, idempotency_key)
        value = replies.value_of(item.id, self.await_reply(item, timeout), None)
        found = reminders.Entry.unpack(value)
        if found is None:
            raise DecodeError(f"the reply to reminder {name!r} is not a reminder", b"")
        return found.public(name)

    def forget(self, ref: ActorRef, name: str, *, timeout: float = 10.0) -> bool:
        """Remove the reminder ``name`` of ``ref`` (its pending occurrence is cancelled, one
        already queued is dropped undelivered); whether the actor had it. Applied in the
        actor's turn, in order with its other messages, as ``remind``; NoReply after
        ``timeout`` (it is still applied later)."""
        body = {"name": reminders.check_name(name)}
        item = self._control(ref, reminders.FORGET_TYPE, body, timeout, None)
        return bool(replies.value_of(item.id, self.await_reply(item, timeout), None))

    def reminders(self, ref: ActorRef) -> list[Reminder]:
        """The reminders of ``ref``, the earliest due first. Needs no registered actor type.
        Raises DecodeError if the actor's stored state is corrupt."""
        if not isinstance(ref, ActorRef):
            raise InvalidSend(f"reminders needs an ActorRef (actor.ref(id)), got {ref!r}")
        data, _ = self.backend.load_state(ref.key)
        return reminders.public(stored_state.reminders_of(data))

    def _control(
        self,
        ref: ActorRef,
        kind: str,
        payload: dict[str, Any],
        timeout: float,
        idempotency_key: str | None,
    ) -> Outgoing:
        """A system.remind or system.forget message, asked (its commit replies)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise InvalidSend(f"timeout={timeout!r} must be a number of seconds > 0")
        if not isinstance(ref, ActorRef):
            raise InvalidSend(f"target must be an ActorRef (use actor.ref(id)), got {ref!r}")
        self.registry.get(ref.type)
        target = ref.key
        mid = new_id(target, idempotency_key)
        now_ms = self._now_ms()
        env = Envelope(mid, target, kind, payload, 1, now_ms, None, reply="")
        entry = encode(env)
        check_size(entry, self.options.max_message_bytes, f"{kind} message to {target}")
        return Outgoing(mid, target, entry, None)

    # -- reading ---------------------------------------------------------------------------

    def state(self, ref: ActorRef) -> BaseModel:
        """The last committed state of an actor (its model's defaults if it has none),
        migrated to the current version. Raises StateInvalid (with the raw bytes) if this
        deploy cannot read it, DecodeError if the stored bytes are corrupt."""
        actor = self.registry.get(ref.type)
        data, _ = self.backend.load_state(ref.key)
        state: BaseModel = stored_state.decode(actor, data).state
        return state

    def raw_state(self, ref: ActorRef) -> dict[str, Any] | None:
        """The stored mapping of an actor's state as it is, its version under ``"_v"``
        (absent: version 1), whether or not it validates; None if it has no stored state.
        Needs no registered actor type. Raises DecodeError if the bytes are not a map."""
        data, _ = self.backend.load_state(ref.key)
        return stored_state.raw(data)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""
        return [DeadLetter.from_record(r) for r in self.backend.dead_letters(limit)]

    def dead_letter(self, message_id: str) -> DeadLetter | None:
        """The newest dead letter of a message id, if any."""
        for record in self.backend.dead_letters(self.backend.dead_letter_count()):
            d = DeadLetter.from_record(record)
            if d.id == message_id:
                return d
        return None

    def redrive(self, dead: DeadLetter) -> bool:
        """Put a dead letter back in its actor's mailbox with a fresh attempt count; False
        if it is gone, or never reached an actor (bytes from a delay queue that were not a
        message: purge those)."""
        if not dead.actor or len(dead.id) != ID_LENGTH:
            return False
        # An occurrence of a reminder runs as it was; its schedule moved on when it died.
        entry = reminders.detached(dead.entry)
        moved = self.backend.redrive(dead.record, dead.actor, dead.id, entry, self._now_ms())
        if moved:
            self._drain_what_is_ready()
        return moved

    def purge(self, dead: DeadLetter) -> bool:
        """Delete one dead letter."""
        return self.backend.remove_dead_letter(dead.record)

    def deferred(self, limit: int = 100, actor: ActorRef | None = None) -> list[Deferred]:
        """Pending deferred messages, earliest first (of one actor with ``actor``)."""
        rows = self.backend.deferred(limit, None if actor is None else actor.key)
        return [
            Deferred(mid, key, datetime.fromtimestamp(due / 1000, UTC), kind)
            for mid, key, due, kind in rows
        ]

    def stats(self) -> dict[str, Any]:
        """Mailbox depths, in-flight messages, leases, deferred and dead-letter counts."""
        return self.backend.stats()

    def recover(self) -> int:
        """After Redis lost writes (a restore, a failover, a flush): send again what actors
        with state elsewhere (S3) sent within their replay window and Redis no longer
        acknowledges; returns how many actors sent something again (0 with Redis state,
        where nothing outside Redis knows more). Each actor's next turn does the same for
        itself; this reaches the actors no message will wake."""
        return self.backend.recover(self._now_ms())

    def rearm_reminders(self) -> int:
        """After Redis lost everything, with state in S3: arm again the pending occurrence of
        every reminder the objects hold (those armed before the replay window are gone, and
        no commit is left to send them). Reads every object once; arming an occurrence that
        is still pending or was processed delivers nothing twice. Returns how many were
        armed (0 with Redis state, whose schedules went with their occurrences)."""
        return self.backend.rearm_reminders(self._now_ms())

    # -- draining --------------------------------------------------------------------------

    def run_until_idle(
        self, *, max_rounds: int = 1_000_000, lane: Literal["", "long"] = ""
    ) -> DrainReport:
        """Drain everything that is due now, then return what was done. ``lane="long"``:
        the long-work lane's actors instead (those a limited budget handed over).

        Deferred messages not yet due stay queued: with a ManualClock, ``advance`` it and
        call again.
        """
        report = DrainReport()
        budget = Budget.unlimited(self.clock)
        try:
            for _ in range(max_rounds):
                done = self.runtime.round(budget, lane=lane)
                report.add(done)
                if done.idle:
                    return report
            report.idle = False
            return report
        finally:
            self.runtime.flush_history()

    def worker(
        self,
        *,
        budget: Budget | None = None,
        lane: Literal["", "long"] = "",
        idle_exit_s: float | None = None,
    ) -> Worker:
        """A long-running drain loop (``.run()``), stopped by SIGTERM/SIGINT or ``.stop()``.
        ``lane="long"``: it drains the long-work lane only, and ends once that has stayed
        empty ``idle_exit_s`` (None: never)."""
        if lane not in ("", "long"):
            raise ConfigError(f"lane={lane!r}: '' (the ordinary lane) or 'long'")
        return Worker(self.runtime, budget=budget, lane=lane, idle_exit_s=idle_exit_s)

    def lambda_handler(
        self,
        *,
        waker: Waker | None = None,
        continuation: Continuation | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Callable[[Any, Any], dict[str, Any]]:
        """The AWS Lambda entry point: ``handler = system.lambda_handler()``.

        Accepts SQS wake-queue events (partial batch failures), EventBridge / Scheduler
        events, continuations and API Gateway HTTP API v2 requests. Without ``waker`` and
        ``continuation`` they come from ``ACTOR_SYSTEM_WAKER_URL`` and
        ``ACTOR_SYSTEM_CONTINUE_URL``.
        """
        from actor_system.aws_lambda import LambdaOptions, make_handler

        o = self.options
        if waker is not None and self.waker is None:
            self.waker = waker  # sends through this system (the ingress) wake with it too
        if waker is None and continuation is None:
            env = dict(os.environ if environ is None else environ)
            lambda_options = LambdaOptions.from_env(env, o.lambda_margin_s, o.max_chain, self.waker)
        else:
            lambda_options = LambdaOptions(waker, continuation, o.lambda_margin_s, o.max_chain)
        return make_handler(self, lambda_options)  # type: ignore[no-any-return]

    def dashboard_handler(
        self, *, environ: Mapping[str, str] | None = None
    ) -> Callable[[Any, Any], dict[str, Any]]:
        """The dashboard's Lambda entry point (serverless.yml's optional ``dashboard``
        function): ``dashboard = system.dashboard_handler()``. It serves the dashboard under
        ``/dashboard`` of the HTTP API; ``ACTOR_SYSTEM_DASHBOARD_TOKEN``, if set, is required
        besides the API's authorizer, and ``ACTOR_SYSTEM_DASHBOARD_READ_ONLY=true`` turns
        actions off. The dashboard's libraries (the ``dashboard`` extra and Mangum) are
        imported at the first request, so that the module's other functions never load them.
        """
        env = dict(os.environ if environ is None else environ)
        token = env.get(f"{ENV_PREFIX}DASHBOARD_TOKEN") or None
        flag = env.get(f"{ENV_PREFIX}DASHBOARD_READ_ONLY", "").strip().lower()
        if flag not in ("", "0", "1", "false", "true", "no", "yes"):
            raise ConfigError(f"{ENV_PREFIX}DASHBOARD_READ_ONLY={flag!r}: expected true or false")
        read_only = flag in ("1", "true", "yes")
        served: list[Callable[[Any, Any], dict[str, Any]]] = []

        def handler(event: Any, context: Any) -> dict[str, Any]:
            if not served:
                from actor_system.dashboard.aws_lambda import make_handler

                served.append(make_handler(self, token=token, read_only=read_only))
            return served[0](event, context)

        return handler

    def close(self) -> None:
        """Close the backend's connections and the event loop of async handlers."""
        self.runtime.close()
        self.backend.close()

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)


# Read by from_env itself or by the CLI, not Options fields.
_URL_VARS = {
    f"{ENV_PREFIX}{n}"
    for n in (
        "REDIS_URL",
        "STATE_URL",
        "DELAY_URL",
        "APP",
        "LOG_FORMAT",
        "LOG_LEVEL",
        "WAKER_URL",
        "CONTINUE_URL",
        "LONG_LANE_URL",
        "DASHBOARD_TOKEN",
        "DASHBOARD_READ_ONLY",
    )
}


def _given(value: Any) -> Any:
    """An argument of system.remind as its dedup key holds it."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _occurrences(actor: str, state: bytes | None) -> list[str]:
    """What cancels the pending occurrences of the reminders kept in ``state``."""
    try:
        kept = reminders.load(stored_state.reminders_of(state))
    except DecodeError:
        return []
    return [i for n, e in kept.items() for i in reminders.pending_ids(actor, n, e)]


def arm_wake(backend: Backend, waker: Waker, now_ms: int) -> None:
    """Arm one wake for the earliest due time (a deferred message, a retry's backoff, a
    lease's expiry), at the due time or the waker's horizon (SQS: 15 minutes), whichever
    comes first, unless an earlier one is armed; the drain it starts arms the next."""
    dues = [d for d in (backend.next_due_ms(), backend.lease_expiry_ms()) if d is not None]
    horizon_ms = int(getattr(waker, "max_delay_s", 900) * 1000)
    if not dues or horizon_ms <= 0:
        return
    # A lease's expiry counts: a holder that died mid-turn (a caller killed while it ran
    # the turn itself) leaves its actor to whoever polls after it, and nothing else would.
    next_due = min(dues)
    if backend.claim_wake(min(next_due, now_ms + horizon_ms), now_ms):
        waker.wake_at(next_due, now_ms)


def _backend(url: str, options: Options, state: str | None, delay: str | None) -> Backend:
    from actor_system.adapters.redis import RedisBackend

    for name, value in (("state", state), ("delay", delay)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}= must be a URL string, not {type(value).__name__}")
    state_scheme = urlsplit(state).scheme if state else "redis"
    delay_scheme = urlsplit(delay).scheme if delay else "redis"
    if state_scheme not in ("redis", "s3"):
        raise ConfigError(
            f"state URL {redact_url(state or '')!r} is not supported; expected s3://bucket/prefix "
            "or none (Redis)"
        )
    if delay_scheme not in ("redis", "sqs", "scheduler"):
        raise ConfigError(
            f"delay URL {redact_url(delay or '')!r} is not supported; expected sqs://queue-name, "
            "scheduler://group?target=...&role=... or none (the Redis sorted set)"
        )
    if state_scheme == "redis" and delay_scheme == "redis":
        return RedisBackend.from_url(url, options)
    from actor_system.adapters.composite import CompositeBackend
    from actor_system.adapters.delay import delay_from_url
    from actor_system.adapters.s3 import S3StateStore

    return CompositeBackend(
        redis=RedisBackend.from_url(url, options),  # the URL: a cluster node is found from it
        state=S3StateStore.from_url(state) if state and state_scheme == "s3" else None,
        delay=delay_from_url(delay) if delay and delay_scheme != "redis" else None,
    )


def _parse_option(key: str, raw: str, type_name: str) -> Any:
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {type_name}") from None
    return raw
