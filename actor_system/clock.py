"""Clocks: the system clock for production, a manual one for tests and simulations."""

from __future__ import annotations

import threading
import time


class SystemClock:
    """Real time."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """Time that moves only when told to: ``advance(seconds)`` or ``set(epoch_seconds)``.

    ``sleep`` advances the clock instead of waiting, so a drain never blocks on it.
    """

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a manual clock only moves forward")
        with self._lock:
            self._now += seconds

    def set(self, epoch_seconds: float) -> None:
        if epoch_seconds < self._now:
            raise ValueError("a manual clock only moves forward")
        with self._lock:
            self._now = float(epoch_seconds)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
