"""The time budget of a drain: unlimited for a worker, the remaining time on Lambda."""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from actor_system.clock import SystemClock
from actor_system.errors import BudgetExhausted, TimeLimitExceeded

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

    from actor_system.ports import Clock


class _LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class Budget:
    """How long a drain may keep starting turns.

    The loop starts a handler only if the remaining time exceeds the safety margin plus twice
    the longest handler seen so far; a turn stops between two messages when the next one
    might not fit, and commits what it has done.
    """

    def __init__(self, deadline_s: float, *, clock: Clock, margin_s: float = 0.0) -> None:
        self.deadline_s = deadline_s
        self.margin_s = margin_s
        self._clock = clock
        self._longest_handler_s = 0.0

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
        if self.deadline_s == math.inf:  # a worker's budget: no clock reading per message
            return math.inf
        return self.deadline_s - self._clock.now()

    def can_start_turn(self) -> bool:
        return self.remaining_s() > self.margin_s + 2 * self._longest_handler_s

    def observe_handler(self, seconds: float) -> None:
        self._longest_handler_s = max(self._longest_handler_s, seconds)

    @property
    def limited(self) -> bool:
        return math.isfinite(self.deadline_s)

    def handler_time_s(self) -> float:
        """How long a handler may run before the guard interrupts it."""
        return self.remaining_s() - self.margin_s


@contextmanager
def timeout_guard(seconds: float, limit_s: float | None = None) -> Iterator[None]:
    """Raise BudgetExhausted inside the block after ``seconds`` (the budget), or
    TimeLimitExceeded after ``limit_s`` (the handler's own limit) if that comes first
    (SIGALRM, main thread only).

    The only signal or timer the runtime arms, and only while a handler runs; it is disarmed
    in ``finally`` and never delivers a message.
    """
    budget_first = limit_s is None or seconds <= limit_s
    wait_s = seconds if budget_first or limit_s is None else limit_s
    if not math.isfinite(wait_s) or threading.current_thread() is not threading.main_thread():
        yield
        return
    if wait_s <= 0:
        raise BudgetExhausted("no time left in the budget to run a handler")

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if budget_first:
            raise BudgetExhausted(f"handler interrupted after {wait_s:.3f}s: the budget ran out")
        raise TimeLimitExceeded(f"the handler ran longer than its time_limit_s={wait_s:g}")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, wait_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
