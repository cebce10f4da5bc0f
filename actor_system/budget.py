"""The time budget of a drain: unlimited for a worker, the remaining time on Lambda."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

from actor_system.clock import SystemClock

if TYPE_CHECKING:
    from actor_system.ports import Clock


class _LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class Budget:
    """How long a drain may keep starting turns.

    The loop starts a turn only if the remaining time exceeds the safety margin plus the
    longest turn seen so far (doubled), so it never starts a turn it cannot finish.
    """

    def __init__(self, deadline_s: float, *, clock: Clock, margin_s: float = 0.0) -> None:
        self.deadline_s = deadline_s
        self.margin_s = margin_s
        self._clock = clock
        self._longest_turn_s = 0.0

    @classmethod
    def unlimited(cls, clock: Clock | None = None) -> Budget:
        return cls(math.inf, clock=clock or SystemClock())

    @classmethod
    def seconds(
        cls, seconds: float, *, clock: Clock | None = None, margin_s: float = 0.0
    ) -> Budget:
        clock = clock or SystemClock()
        return cls(clock.now() + seconds, clock=clock, margin_s=margin_s)

    @classmethod
    def from_context(
        cls, context: Any, *, margin_s: float = 1.0, clock: Clock | None = None
    ) -> Budget:
        """A budget ending at the Lambda invocation's deadline minus ``margin_s``."""
        clock = clock or SystemClock()
        remaining_ms = context.get_remaining_time_in_millis()
        return cls(clock.now() + remaining_ms / 1000, clock=clock, margin_s=margin_s)

    def remaining_s(self) -> float:
        return self.deadline_s - self._clock.now()

    def can_start_turn(self) -> bool:
        return self.remaining_s() > self.margin_s + 2 * self._longest_turn_s

    def observe_turn(self, seconds: float) -> None:
        self._longest_turn_s = max(self._longest_turn_s, seconds)
