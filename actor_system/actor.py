"""Actor types, references, handler registration and the handler's context."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

from actor_system.envelope import Envelope, Outgoing, check_size, due_ms, encode, new_id
from actor_system.errors import ConfigError, InvalidSend, UnknownActorType, UnknownMessageType
from actor_system.policy import RetryPolicy
from actor_system.tracing import Tracing

if typing.TYPE_CHECKING:
    from types import EllipsisType

    from actor_system.options import Options

S = TypeVar("S", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

_TYPE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_ID = 256


@dataclass(frozen=True, slots=True)
class ActorRef:
    """The address of one actor: its type name and its id."""

    type: str
    id: str

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not _TYPE_NAME.match(self.type):
            raise InvalidSend(f"actor type {self.type!r} must match {_TYPE_NAME.pattern}")
        if not isinstance(self.id, str) or not 0 < len(self.id) <= _MAX_ID:
            raise InvalidSend(f"actor id {self.id!r} must be a string of 1 to {_MAX_ID} chars")
        if any(c in self.id for c in "{}\n\r\0"):
            raise InvalidSend(f"actor id {self.id!r} must not contain braces or line breaks")

    @property
    def key(self) -> str:
        return f"{self.type}/{self.id}"

    @classmethod
    def from_key(cls, key: str) -> ActorRef:
        type_name, _, actor_id = key.partition("/")
        return cls(type_name, actor_id)

    def __str__(self) -> str:
        return self.key


class _Sender(Protocol):
    def send(
        self,
        ref: ActorRef,
        msg: BaseModel,
        delay: float | timedelta | None,
        at: datetime | None,
        idempotency_key: str | None,
        reply_to: ActorRef | None = None,
    ) -> str: ...

    def cancel(self, message_id: str) -> None: ...

    def delete(self) -> None: ...

    def remind(self, name: str, msg: BaseModel, spec: dict[str, Any]) -> None: ...

    def forget(self, name: str) -> bool: ...


class Context(Generic[S]):
    """What a handler sees: its actor's state and ref, the message's id and attempt, the time,
    and ``send``/``cancel``/``remind``/``forget``, which take effect only when the turn
    commits. For a message fired by a reminder, ``reminder`` is its name, ``occurrence`` the
    due time of the occurrence delivered (of a coalesced delivery: the latest one folded in)
    and ``missed`` how many earlier occurrences were folded into it; for any other message
    None, None and 0."""

    __slots__ = (
        "_sender",
        "attempt",
        "message_id",
        "missed",
        "now",
        "occurrence",
        "reminder",
        "self",
        "state",
    )

    def __init__(
        self,
        state: S,
        self_ref: ActorRef,
        message_id: str,
        attempt: int,
        now: datetime,
        sender: _Sender,
    ) -> None:
        self.state = state
        self.self = self_ref
        self.message_id = message_id
        self.attempt = attempt
        self.now = now
        self._sender = sender
        self.reminder: str | None = None
        self.occurrence: datetime | None = None
        self.missed = 0

    def send(
        self,
        ref: ActorRef,
        msg: BaseModel,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        idempotency_key: str | None = None,
        reply_to: ActorRef | None = None,
    ) -> str:
        """Send ``msg`` to ``ref`` now, after ``delay`` or at ``at``; returns the message id.

        ``reply_to=ctx.self`` asks: what the receiving handler returns (or why the message
        failed) comes back to that actor as a ``Replied`` message carrying this id, sent
        with the receiver's commit. A turn never waits for another actor."""
        return self._sender.send(ref, msg, delay, at, idempotency_key, reply_to)

    def cancel(self, message_id: str) -> None:
        """Cancel a deferred message when this turn commits (no effect if already delivered)."""
        self._sender.cancel(message_id)

    def remind(
        self,
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
    ) -> None:
        """Set the reminder ``name`` of this actor when the turn commits: ``msg`` comes back
        to this actor after ``delay``, at ``at``, every ``every`` (from now, or from
        ``delay``/``at``) or at the times of the five-field ``cron`` in the IANA zone ``tz``.
        ``times`` caps the occurrences, ``until`` ends them (none at or after it), ``jitter``
        shifts this actor's schedule by a fixed offset within that window, ``catchup`` says
        what a late delivery does with the occurrences that fell due meanwhile: fold them
        into one (``"coalesce"``, counted by ``ctx.missed``) or deliver each (``"all"``).
        A reminder of the same name is replaced: its pending occurrence is cancelled, and one
        already queued is dropped undelivered (actor_system.reminders)."""
        spec = {
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
        self._sender.remind(name, msg, spec)

    def forget(self, name: str) -> bool:
        """Remove the reminder ``name`` when the turn commits (its pending occurrence is
        cancelled, or dropped undelivered if already queued); whether the actor had it."""
        return self._sender.forget(name)

    def delete(self) -> None:
        """End this actor when the turn commits: its state and every key of it go (sends and
        cancels made so far still happen). The turn stops after this message; messages still
        queued, and any that arrive later, start it again from the default state. Its dedup
        memory goes too: a copy of an earlier message that arrives later is processed anew."""
        self._sender.delete()


Handler = Callable[[Context[Any], Any], Any]  # None, or an awaitable for async def
# One step of a state migration: the stored mapping of version n -> that of version n + 1.
Migration = Callable[[dict[str, Any]], dict[str, Any]]


def _check_migrations(
    actor: str, version: int, migrations: Mapping[int, Migration]
) -> tuple[int, dict[int, Migration]]:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"version={version!r} of actor type {actor!r} must be an int >= 1")
    steps = dict(migrations)
    for n, fn in steps.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < version:
            raise ConfigError(
                f"migration key {n!r} of actor type {actor!r} must be a version from 1 to "
                f"{version - 1} (it migrates version n to n + 1)"
            )
        if not callable(fn):
            raise ConfigError(f"migration {n} of actor type {actor!r} is not callable")
    return version, steps


def message_name(model: type[BaseModel]) -> str:
    """The name under which a message type travels."""
    return model.__name__


class ActorType(Generic[S]):
    """A kind of actor: a state model and one handler per message type.

    ``version`` / ``migrations``: the version of the state model, and for each older version
    ``n`` a function from the stored mapping of version ``n`` to that of version ``n + 1``.
    ``invalid_state``: what a stored state that does not validate does to its messages:
    ``"dead_letter"`` them with the reason, or ``"wait"`` (retried every 30 s) for a deploy
    that can read it; the state itself is never overwritten. A state stored by a newer
    version always waits.
    ``done_window_s`` / ``done_max``: how long and how many processed message ids each actor
    of this type remembers, so that a copy (or a send with the same idempotency key) is
    dropped; defaults are the system's ``Options``.
    ``idle_ttl_s``: an actor of this type that has had no turn for this long is gone, its
    state and dedup memory expiring together (its next message starts from the defaults);
    None keeps actors until ``ctx.delete()`` or ``system.delete``.
    ``long_work``: every message of this type needs more time than a Lambda invocation has:
    its actors are run only by workers without a time limit (the long-work lane,
    ``actor-system worker --lane long``); a Lambda drain hands them over unrun.
    """

    def __init__(
        self,
        name: str,
        *,
        state: type[S],
        version: int = 1,
        migrations: Mapping[int, Migration] | None = None,
        retry: RetryPolicy | None = None,
        invalid_state: Literal["dead_letter", "wait"] = "dead_letter",
        done_window_s: float | None = None,
        done_max: int | None = None,
        idle_ttl_s: float | None = None,
        long_work: bool = False,
    ) -> None:
        if not isinstance(name, str) or not _TYPE_NAME.match(name):
            raise ConfigError(f"actor type name {name!r} must match {_TYPE_NAME.pattern}")
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise ConfigError(f"state of actor type {name!r} must be a pydantic model class")
        try:
            state()
        except Exception as e:
            raise ConfigError(
                f"state model {state.__name__} of actor type {name!r} must be constructible "
                f"with no arguments (give every field a default): {e}"
            ) from e
        for option, value in (
            ("done_window_s", done_window_s),
            ("done_max", done_max),
            ("idle_ttl_s", idle_ttl_s),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ConfigError(f"{option}={value!r} of actor type {name!r} must be > 0")
        self.version, self.migrations = _check_migrations(name, version, migrations or {})
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry= of actor type {name!r} must be a RetryPolicy")
        self.retry = retry or RetryPolicy()
        if invalid_state not in ("dead_letter", "wait"):
            raise ConfigError(
                f"invalid_state={invalid_state!r} of actor type {name!r}: 'dead_letter' or 'wait'"
            )
        self.invalid_state = invalid_state
        self._retry_of: dict[str, RetryPolicy] = {}  # per message type, when a handler says
        self.long_work = bool(long_work)
        self._long_of: set[str] = set()  # message types whose handler is marked long_work
        self.name = name
        self.state_type = state
        # How long and how many processed ids (and so idempotency keys) each actor of this
        # type remembers for dedup; None: the system's Options.
        self.done_window_s = done_window_s
        self.done_max = None if done_max is None else int(done_max)
        # An actor idle this long is gone: its keys expire together (None: kept for good).
        self.idle_ttl_s = idle_ttl_s
        self._handlers: dict[str, tuple[type[BaseModel], Handler]] = {}
        self._reply_of: dict[str, type[BaseModel]] = {}  # from a handler's return annotation

    @typing.overload
    def handler(self, fn: F, *, retry: RetryPolicy | None = None, long_work: bool = False) -> F: ...

    @typing.overload
    def handler(
        self, fn: None = None, *, retry: RetryPolicy | None = None, long_work: bool = False
    ) -> Callable[[F], F]: ...

    def handler(
        self, fn: F | None = None, *, retry: RetryPolicy | None = None, long_work: bool = False
    ) -> F | Callable[[F], F]:
        """Register ``fn(ctx, msg)`` (or ``async def``); the annotation of ``msg`` picks the
        message type. ``@actor.handler(retry=RetryPolicy(...))`` overrides the actor type's
        retry policy for this message type; ``long_work=True``: this handler needs more time
        than a Lambda invocation has, and its messages (with the actor's later ones, in
        order) are run by a worker without a time limit (the long-work lane)."""
        # Annotations may name classes local to the caller (string annotations under
        # `from __future__ import annotations`); resolve them in the caller's scope too.
        caller = sys._getframe(1).f_locals
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(
                f"retry= of a handler of actor type {self.name!r} must be a RetryPolicy"
            )
        if fn is None:
            return lambda f: self._register(f, retry, caller, long_work)
        return self._register(fn, retry, caller, long_work)

    def is_long_work(self, type_name: str) -> bool:
        """Whether messages of this type go to the long-work lane."""
        return self.long_work or type_name in self._long_of

    def policy(self, type_name: str) -> RetryPolicy:
        """The retry policy of a message type: its handler's, else the actor type's."""
        return self._retry_of.get(type_name, self.retry)

    def _register(
        self, fn: F, retry: RetryPolicy | None, caller: dict[str, Any], long_work: bool = False
    ) -> F:
        _check_not_awaitable(self.name, fn)
        model = _message_annotation(self.name, fn, caller)
        key = message_name(model)
        if key in self._handlers:
            previous = self._handlers[key][1]
            raise ConfigError(
                f"actor type {self.name!r} already has a handler for {key} "
                f"({previous.__qualname__}); {fn.__qualname__} cannot also handle it"
            )
        self._handlers[key] = (model, fn)
        returns = _reply_annotation(fn, caller)
        if returns is not None:
            self._reply_of[key] = returns
        if retry is not None:
            self._retry_of[key] = retry
        if long_work:
            self._long_of.add(key)
        return fn

    def ref(self, actor_id: str) -> ActorRef:
        """The reference of the actor of this type with the given id."""
        return ActorRef(self.name, actor_id)

    def resolve(self, type_name: str) -> tuple[type[BaseModel], Handler]:
        """The message model and handler for a message type name."""
        try:
            return self._handlers[type_name]
        except KeyError:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise UnknownMessageType(
                f"actor type {self.name!r} has no handler for message type {type_name!r} "
                f"(known: {known})"
            ) from None

    def reply_model(self, type_name: str) -> type[BaseModel] | None:
        """The model a handler's reply is read back into (its return annotation, when that
        is a pydantic model); None: the reply is returned as JSON values."""
        return self._reply_of.get(type_name)

    @property
    def message_types(self) -> list[str]:
        return sorted(self._handlers)

    def __repr__(self) -> str:
        return f"ActorType({self.name!r}, state={self.state_type.__name__})"


def _check_not_awaitable(actor: str, fn: Callable[..., Any]) -> None:
    """A plain function annotated to return an awaitable would hand the runtime a coroutine
    it never awaits: refuse it (``async def`` handlers are awaited)."""
    if inspect.iscoroutinefunction(fn):
        return
    try:
        returns = typing.get_type_hints(fn).get("return")
    except Exception:  # unresolvable annotations are reported by _message_annotation
        return
    origin = typing.get_origin(returns) or returns
    if isinstance(origin, type) and issubclass(origin, Awaitable):
        raise ConfigError(
            f"handler {getattr(fn, '__qualname__', fn)!r} of actor type {actor!r} returns an "
            f"awaitable ({returns!r}) but is not an async def: write `async def` so that the "
            "runtime awaits it"
        )


def _reply_annotation(fn: Callable[..., Any], localns: dict[str, Any]) -> type[BaseModel] | None:
    try:
        returns = typing.get_type_hints(fn, localns=localns).get("return")
    except Exception:  # unresolvable annotations are reported by _message_annotation
        return None
    if isinstance(returns, type) and issubclass(returns, BaseModel):
        return returns
    return None


def _message_annotation(
    actor: str, fn: Callable[..., Any], localns: dict[str, Any]
) -> type[BaseModel]:
    where = f"handler {getattr(fn, '__qualname__', fn)!r} of actor type {actor!r}"
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise ConfigError(f"{where} must take exactly two parameters (ctx, msg)")
    try:
        hints = typing.get_type_hints(fn, localns=localns)
    except Exception as e:
        raise ConfigError(f"{where} has annotations that cannot be resolved: {e}") from e
    model = hints.get(params[1].name)
    if model is None:
        raise ConfigError(f"{where} needs a message annotation, e.g. `msg: MyMessage`")
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{where}: message annotation {model!r} is not a pydantic model")
    return model


class Registry:
    """The actor types of one system, and the encoding of outgoing messages."""

    def __init__(
        self, actors: Iterable[ActorType[Any]], options: Options, tracing: Tracing | None = None
    ) -> None:
        self.options = options
        # Sends made while a span is current carry its trace context (when tracing is on).
        self.tracing = tracing or Tracing()
        self._types: dict[str, ActorType[Any]] = {}
        for actor in actors:
            if not isinstance(actor, ActorType):
                raise ConfigError(f"actors must be ActorType instances, got {actor!r}")
            if actor.name in self._types:
                raise ConfigError(f"actor type {actor.name!r} is registered twice")
            self._types[actor.name] = actor

    def get(self, type_name: str) -> ActorType[Any]:
        try:
            return self._types[type_name]
        except KeyError:
            known = ", ".join(sorted(self._types)) or "none"
            raise UnknownActorType(
                f"actor type {type_name!r} is not registered with this system (known: {known})"
            ) from None

    def __iter__(self) -> typing.Iterator[ActorType[Any]]:
        return iter(self._types.values())

    def _model(self, ref: ActorRef, msg: BaseModel) -> type[BaseModel]:
        """The message model ``ref``'s type handles ``msg`` as; InvalidSend,
        UnknownActorType or UnknownMessageType otherwise."""
        if not isinstance(ref, ActorRef):
            raise InvalidSend(f"target must be an ActorRef (use actor.ref(id)), got {ref!r}")
        if not isinstance(msg, BaseModel):
            raise InvalidSend(f"message must be a pydantic model instance, got {msg!r}")
        model, _ = self.get(ref.type).resolve(message_name(type(msg)))
        if type(msg) is not model:
            raise UnknownMessageType(
                f"{type(msg).__qualname__} is not the {model.__qualname__} that actor type "
                f"{ref.type!r} handles under the name {model.__name__!r}"
            )
        return model

    def message_type(self, ref: ActorRef, msg: BaseModel) -> str:
        """The name ``ref``'s actor type handles ``msg`` under (checked as a send is)."""
        return message_name(self._model(ref, msg))

    def prepare(
        self,
        ref: ActorRef,
        msg: BaseModel,
        *,
        now_s: float,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        idempotency_key: str | None = None,
        message_id: str | None = None,
        attempt: int = 1,
        reply: str | None = None,
        trace: dict[str, str] | EllipsisType | None = ...,
        reminder: tuple[str, str, int] | None = None,
    ) -> Outgoing:
        """Validate and encode one send; raises before anything reaches a backend.

        ``reply``: who wants the handler's reply (Envelope.reply); an actor key must name an
        actor type that handles ``Replied``. ``trace``: the trace context it carries
        (Envelope.trace); by default the current span's, when tracing is on."""
        model = self._model(ref, msg)
        if reply:
            from actor_system.replies import Replied

            self.get(ActorRef.from_key(reply).type).resolve(Replied.__name__)
        due = due_ms(now_s, delay, at, self.options.max_delay_s)
        target = ref.key
        mid = message_id or new_id(target, idempotency_key)
        env = Envelope(
            id=mid,
            target=target,
            type=message_name(model),
            payload=msg.model_dump(mode="json"),
            attempt=attempt,
            sent_at_ms=int(now_s * 1000),
            due_at_ms=due,
            reply=reply,
            trace=self.tracing.carrier() if trace is ... else trace,
            reminder=reminder,
        )
        entry = encode(env)
        check_size(entry, self.options.max_message_bytes, f"message {env.type} to {target}")
        return Outgoing(mid, target, entry, due)


def utc(now_s: float) -> datetime:
    return datetime.fromtimestamp(now_s, UTC)
