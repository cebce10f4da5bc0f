"""Tunable limits and timings, with their documented defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from actor_system.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Options:
    """Limits and timings of one ActorSystem; every field has a default.

    batch: messages claimed per actor turn. actors_per_round: ready actors taken per round trip.
    lease_ms: how long a turn owns its actor before another drainer may recover it.
    partitions: how many partitions actors are spread over (a power of two; each is one slot
    of a Redis Cluster), fixed per deployment.
    done_window_s / done_max: how long and how many processed ids each actor keeps for dedup
    (at least: both are kept, in two generations, so up to about twice).
    poll_interval_s: the longest blocking wait of an idle worker.
    reply_ttl_s: how long a handler's reply (and a dead-lettered message's error) is kept
    for ``ask`` and ``reply``. process_s: how long ``send(..., process=True)`` may run the
    actor's turns in the caller. linger_s: how long a Lambda drain that had work waits for
    more before it ends (a burst of sends then costs one wake, not one per gap).
    long_after: interruptions (a handler stopped because a limited budget, a Lambda
    invocation, ran out) after which the actor goes to the long-work lane, which only workers
    without a time limit drain (``actor-system worker --lane long``); 0: no lane, the message
    is retried up to max_attempts.
    """

    prefix: str = "as"
    batch: int = 100
    actors_per_round: int = 16
    max_attempts: int = 5
    lease_ms: int = 30_000
    max_message_bytes: int = 256 * 1024
    max_delay_s: float = 366 * 24 * 3600.0
    max_outbox: int = 1_000
    partitions: int = 64
    done_window_s: float = 24 * 3600.0
    done_max: int = 10_000
    poll_interval_s: float = 1.0
    redis_hz: int = 10
    lambda_margin_s: float = 0.25
    max_chain: int = 100
    reply_ttl_s: float = 300.0
    process_s: float = 1.0
    linger_s: float = 0.5
    long_after: int = 0

    def __post_init__(self) -> None:
        positive = (
            "batch",
            "actors_per_round",
            "max_attempts",
            "lease_ms",
            "max_message_bytes",
            "max_delay_s",
            "max_outbox",
            "partitions",
            "done_window_s",
            "done_max",
            "poll_interval_s",
            "redis_hz",
            "reply_ttl_s",
            "process_s",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"option {name}={value!r} must be a positive number")
        for name in ("lambda_margin_s", "linger_s", "long_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"option {name}={value!r} must be a number >= 0")
        if self.long_after > self.max_attempts:
            raise ConfigError(
                f"option long_after={self.long_after!r} must be at most "
                f"max_attempts={self.max_attempts!r}: the message would be dead-lettered first"
            )
        if self.partitions > 16384 or self.partitions & (self.partitions - 1):
            raise ConfigError(
                f"option partitions={self.partitions!r} must be a power of two up to 16384"
            )
        if not self.prefix or any(c in self.prefix for c in "{}: \n"):
            raise ConfigError(f"option prefix={self.prefix!r} must be non-empty without {{}}: ")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Options:
        """Build options from keyword values, rejecting unknown names."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**values)
