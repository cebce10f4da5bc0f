"""How a failing message is retried: one small options object per actor type or handler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actor_system.errors import ConfigError

if TYPE_CHECKING:
    import random


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of a message whose handler raised, as deferred re-deliveries (never a sleep).

    ``max_attempts``: deliveries before the dead letters (None: the system's option).
    ``backoff_s``: the first retry comes about this long after the failure, each next one
    ``backoff_factor`` times later, at most ``max_backoff_s``; ``jitter`` spreads each delay
    by up to that fraction either way, so that actors failing together do not retry together.
    ``never_retry``: exception types that go straight to the dead letters.
    ``keep_order``: True, the actor waits for the retried message (the messages behind it stay
    queued, in order); False, the message is deferred through the delay queue and the
    messages behind it proceed.
    ``time_limit_s``: a handler running longer fails (and is retried like any failure);
    enforced in the main thread of a worker or a Lambda invocation.
    """

    max_attempts: int | None = None
    backoff_s: float = 1.0
    backoff_factor: float = 2.0
    max_backoff_s: float = 300.0
    jitter: float = 0.2
    never_retry: tuple[type[BaseException], ...] = ()
    keep_order: bool = True
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ConfigError(f"max_attempts={self.max_attempts!r} must be an int >= 1")
        for name in ("backoff_s", "max_backoff_s"):
            _check_number(name, getattr(self, name), minimum=0.0)
        _check_number("backoff_factor", self.backoff_factor, minimum=1.0)
        _check_number("jitter", self.jitter, minimum=0.0)
        if self.jitter >= 1:
            raise ConfigError(f"jitter={self.jitter!r} must be below 1 (a fraction)")
        if self.time_limit_s is not None:
            _check_number("time_limit_s", self.time_limit_s, minimum=0.0)
            if self.time_limit_s == 0:
                raise ConfigError("time_limit_s=0: pass None for no limit")
        bad = [
            t
            for t in self.never_retry
            if not (isinstance(t, type) and issubclass(t, BaseException))
        ]
        if bad or not isinstance(self.never_retry, tuple):
            raise ConfigError(f"never_retry must be a tuple of exception types, got {bad!r}")

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """How long after its ``failures``-th failure a message is delivered again."""
        try:
            grown = self.backoff_s * self.backoff_factor ** max(failures - 1, 0)
        except OverflowError:  # thousands of attempts: long past the cap
            grown = self.max_backoff_s
        base = min(grown, self.max_backoff_s)
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


def _check_number(name: str, value: object, *, minimum: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ConfigError(f"{name}={value!r} must be a finite number >= {minimum:g}")
