"""Precise errors at registration, start and send time, before anything is stored."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import BaseModel

from actor_system import (
    ActorSystem,
    ActorType,
    ConfigError,
    Context,
    InvalidSend,
    MessageTooLarge,
    UnknownActorType,
    UnknownMessageType,
)
from tests.actors import Add, CounterState, Note, counter


class Other(BaseModel):
    x: int = 0


def test_two_handlers_for_one_message_type_is_rejected_at_registration() -> None:
    actor = ActorType("twice", state=CounterState)

    @actor.handler
    def first(ctx: Context[CounterState], msg: Add) -> None: ...

    with pytest.raises(ConfigError, match="already has a handler for Add"):

        @actor.handler
        def second(ctx: Context[CounterState], msg: Add) -> None: ...


def test_handler_without_message_annotation_is_rejected() -> None:
    actor = ActorType("bare", state=CounterState)
    with pytest.raises(ConfigError, match="needs a message annotation"):

        @actor.handler
        def h(ctx, msg) -> None: ...

    with pytest.raises(ConfigError, match="not a pydantic model"):

        @actor.handler
        def g(ctx: Context[CounterState], msg: int) -> None: ...

    with pytest.raises(ConfigError, match="exactly two parameters"):

        @actor.handler
        def k(msg: Add) -> None: ...


def test_state_model_needs_defaults_and_names_are_checked() -> None:
    class Needy(BaseModel):
        x: int

    with pytest.raises(ConfigError, match="constructible with no arguments"):
        ActorType("needy", state=Needy)
    with pytest.raises(ConfigError, match="actor type name"):
        ActorType("has space", state=CounterState)
    with pytest.raises(ConfigError, match="registered twice"):
        ActorSystem.from_url("fakeredis://", actors=[counter, counter])


def test_unknown_url_scheme_fails_at_start() -> None:
    with pytest.raises(ConfigError, match=r"unknown URL scheme 'redsi'.*expected redis://"):
        ActorSystem.from_url("redsi://localhost", actors=[counter])
    with pytest.raises(ConfigError, match="state URL 'gs://b/p' is not supported"):
        ActorSystem.from_url("fakeredis://", actors=[counter], state="gs://b/p")
    with pytest.raises(ConfigError, match="delay URL 'kafka://t' is not supported"):
        ActorSystem.from_url("fakeredis://", actors=[counter], delay="kafka://t")
    with pytest.raises(ConfigError, match=r"lacks|missing role"):
        ActorSystem.from_url("fakeredis://", actors=[counter], delay="scheduler://g?target=a")
    with pytest.raises(ConfigError, match="unknown parameter"):
        ActorSystem.from_url("fakeredis://", actors=[counter], delay="sqs://q?naer=5")
    with pytest.raises(ConfigError, match="not a number"):
        ActorSystem.from_url("fakeredis://", actors=[counter], delay="sqs://q?near=soon")
    with pytest.raises(ConfigError, match="unknown option"):
        ActorSystem.from_url("fakeredis://", actors=[counter], bacth=3)
    with pytest.raises(ConfigError, match="batch=0 must be a positive number"):
        ActorSystem.from_url("fakeredis://", actors=[counter], batch=0)


def test_url_password_is_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        ActorSystem.from_url("redsi://user:s3cret@host:6379", actors=[counter])
    assert "s3cret" not in str(info.value)


def test_from_env_reads_url_and_options_and_rejects_typos() -> None:
    env = {"ACTOR_SYSTEM_REDIS_URL": "fakeredis://", "ACTOR_SYSTEM_BATCH": "7"}
    system = ActorSystem.from_env(actors=[counter], environ=env)
    assert system.options.batch == 7
    with pytest.raises(ConfigError, match="ACTOR_SYSTEM_REDIS_URL is not set"):
        ActorSystem.from_env(actors=[counter], environ={})
    with pytest.raises(ConfigError, match="unknown setting ACTOR_SYSTEM_BACTH"):
        ActorSystem.from_env(actors=[counter], environ={**env, "ACTOR_SYSTEM_BACTH": "1"})
    with pytest.raises(ConfigError, match="ACTOR_SYSTEM_BATCH='x' is not a valid int"):
        ActorSystem.from_env(actors=[counter], environ={**env, "ACTOR_SYSTEM_BATCH": "x"})


@pytest.fixture
def system() -> ActorSystem:
    return ActorSystem.from_url("fakeredis://", actors=[counter], max_message_bytes=500)


def test_bad_send_arguments_raise_and_store_nothing(system: ActorSystem) -> None:
    ref = counter.ref("a")
    with pytest.raises(UnknownActorType, match="'ghost' is not registered"):
        system.send(ActorType("ghost", state=CounterState).ref("1"), Add(n=1))
    with pytest.raises(UnknownMessageType, match="no handler for message type 'Note'"):
        system.send(ref, Note(text="x"))
    with pytest.raises(InvalidSend, match="finite number of seconds >= 0"):
        system.send(ref, Add(n=1), delay=-1)
    with pytest.raises(InvalidSend, match="naive datetime"):
        system.send(ref, Add(n=1), at=datetime(2030, 1, 1))
    with pytest.raises(InvalidSend, match="either delay= or at="):
        system.send(ref, Add(n=1), delay=1, at=datetime(2030, 1, 1))
    with pytest.raises(InvalidSend, match="exceeds max_delay_s"):
        system.send(ref, Add(n=1), delay=10**9)
    with pytest.raises(InvalidSend, match="must be seconds"):
        system.send(ref, Add(n=1), delay="5")  # type: ignore[arg-type]
    with pytest.raises(InvalidSend, match="must be an ActorRef"):
        system.send("counter/a", Add(n=1))  # type: ignore[arg-type]
    with pytest.raises(InvalidSend, match="must not contain braces"):
        counter.ref("a{b}")
    with pytest.raises(InvalidSend, match="is not a message id"):
        system.cancel("nope")
    assert system.run_until_idle().messages == 0


def test_oversized_send_raises_message_too_large(system: ActorSystem) -> None:
    class Big(BaseModel):
        blob: str

    big = ActorType("big", state=CounterState)

    @big.handler
    def h(ctx: Context[CounterState], msg: Big) -> None: ...

    s = ActorSystem.from_url("fakeredis://", actors=[big], max_message_bytes=500)
    with pytest.raises(MessageTooLarge, match="message Big to big/1 encodes to"):
        s.send(big.ref("1"), Big(blob="x" * 600))
    s.send(big.ref("1"), Big(blob="x" * 100))
    assert s.run_until_idle().messages == 1


def test_from_env_picks_the_aws_stores_without_calling_aws() -> None:
    from actor_system.adapters.composite import CompositeBackend
    from actor_system.adapters.delay import SchedulerDelayQueue, SqsDelayQueue

    env = {
        "ACTOR_SYSTEM_REDIS_URL": "fakeredis://",
        "ACTOR_SYSTEM_STATE_URL": "s3://bucket/actors",
        "ACTOR_SYSTEM_DELAY_URL": "sqs://deferred?near=30&max_hop=600",
    }
    backend = ActorSystem.from_env(actors=[counter], environ=env).backend
    assert isinstance(backend, CompositeBackend)
    assert backend.state_store is not None
    assert backend.state_store.key("counter/a") == "actors/counter/a"
    assert isinstance(backend.delay, SqsDelayQueue)
    assert (backend.delay.near_s, backend.delay.max_hop_s) == (30.0, 600)
    assert backend.delay.delay_s(due_ms=1_000_000, now_ms=0) == 600  # capped hop
    assert backend.delay.delay_s(due_ms=100_000, now_ms=0) == 85  # ends near / 2 early
    env["ACTOR_SYSTEM_DELAY_URL"] = "scheduler://g?target=arn:t&role=arn:r&queue=q"
    backend = ActorSystem.from_env(actors=[counter], environ=env).backend
    assert isinstance(backend.delay, SchedulerDelayQueue)
    assert backend.delay.queue is not None
    assert SchedulerDelayQueue.expression(1_767_225_600_001) == "at(2026-01-01T00:00:01)"
    with pytest.raises(ConfigError, match="max_hop=901 must be between 0 and 900"):
        ActorSystem.from_url("fakeredis://", actors=[counter], delay="sqs://q?max_hop=901")
    with pytest.raises(ConfigError, match=r"is not s3://bucket\[/prefix\]"):
        ActorSystem.from_url("fakeredis://", actors=[counter], state="s3://")


def test_redis_connects_time_out_in_seconds_unless_the_url_says_otherwise() -> None:
    from actor_system.adapters.redis.backend import client_from_url

    client, _ = client_from_url("redis://10.255.255.1:6379/0")
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.0
    client, _ = client_from_url("redis://10.255.255.1:6379/0?socket_connect_timeout=7")
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 7.0


def test_a_redis_url_parameter_redis_py_does_not_know_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'sockettimeout' in the Redis URL"):
        ActorSystem.from_url("redis://127.0.0.1:1/0?sockettimeout=3", actors=[])
    system = ActorSystem.from_url("redis://127.0.0.1:1/0?socket_timeout=3&cluster=false", actors=[])
    assert system.backend.client.connection_pool.connection_kwargs["socket_timeout"] == 3.0  # type: ignore[attr-defined]
    system.close()
