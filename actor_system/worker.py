"""The long-running drain loop for containers and local development."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

from actor_system.budget import Budget
from actor_system.errors import BackendError, ConfigError
from actor_system.runtime import PRESENT_MS, DrainReport, Runtime

if TYPE_CHECKING:
    from types import FrameType

log = logging.getLogger("actor_system")

_MAX_BACKOFF_S = 5.0
# How long one poll marks a drain as running (P:awake): senders with a waker start no drain
# meanwhile. Polls come at least every poll_interval_s, or after each round of turns.
AWAKE_MS = 30_000


class Worker:
    """Drains until stopped; SIGTERM or SIGINT stops it after the current round.

    When idle it blocks on Redis until new work arrives or shortly before the next deferred
    message is due, then waits out the last stretch live: Redis checks blocking timeouts
    only ``hz`` times a second, so a blocking wait alone would deliver up to 100 ms late.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        budget: Budget | None = None,
        exit_when_idle: bool = False,
        lane: Literal["", "long"] = "",
        idle_exit_s: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.exit_when_idle = exit_when_idle
        # "long": it drains the long-work lane only, and ends once the lane has held no
        # actor for idle_exit_s (None: never).
        self.lane = lane
        self.idle_exit_s = idle_exit_s
        self.idle_at_exit = False  # True when it stopped because nothing was left to do soon
        self.budget = budget or Budget.unlimited(runtime.clock)
        self.report = DrainReport()
        self._stop = threading.Event()
        self._busy_at = -math.inf  # monotonic time of the last round that found work
        self._rested = False  # ended idle, having told senders that no drain runs
        self._failing = False  # the last round failed on the backend

    def stop(self) -> None:
        """Ask the loop to stop after the current round (safe from any thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> DrainReport:
        """Drain until stopped or the budget ends; returns what was done."""
        restore = self._install_signals()
        try:
            self._loop()
            if self.exit_when_idle and not (self._rested or self._failing):
                self._end()
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            if self.lane == "long":
                self._present(0)
            # What this drain did, for the dashboard's charts: a frozen Lambda writes nothing.
            self.runtime.flush_history()
        return self.report

    def _long_lane_round(self, idle_since: float) -> float:
        """One round of a long-work worker; it stops once the lane has held no actor for
        ``idle_exit_s``. Returns since when the lane has been empty."""
        self._present(PRESENT_MS)
        done = self.runtime.round(self.budget, lane="long")
        self.report.add(done)
        self.idle_at_exit = done.idle
        if not done.idle or done.lane_waiting:
            # Work, or actors in the lane it cannot take yet: a retry's backoff, or reserved
            # to a worker that may have died (their lease then ends).
            idle_since = time.monotonic()
        if not done.idle:
            return idle_since
        if self.idle_exit_s is not None and time.monotonic() - idle_since >= self.idle_exit_s:
            # No longer present first, then a last look: work handed over meanwhile either
            # is seen here or finds no worker present, and its drain starts one.
            self._present(0)
            if self.runtime.backend.lane_size() == 0:
                log.info("the long-work lane stayed empty %.0f s: stopping", self.idle_exit_s)
                self._stop.set()
                return idle_since
            return time.monotonic()
        self._stop.wait(self.runtime.options.poll_interval_s)
        return idle_since

    def _present(self, ttl_ms: int) -> None:
        """Tell drains that a long-work worker runs (``ttl_ms`` > 0) or has ended."""
        try:
            self.runtime.present(ttl_ms)
        except BackendError as e:
            log.warning("could not mark this long-work worker present: %s", e)

    def _loop(self) -> None:
        backoff_s = 0.1
        long_lane = self.lane == "long"
        idle_since = time.monotonic()
        while not self._stop.is_set() and self.budget.can_start_turn():
            try:
                if long_lane:
                    idle_since = self._long_lane_round(idle_since)
                    backoff_s = 0.1
                    self._failing = False
                    continue
                done = self.runtime.round(self.budget, awake_ms=self._awake_ms())
                self.report.add(done)
                self.idle_at_exit = done.idle
                if done.idle:
                    self._wait_idle()
                else:
                    self._busy_at = time.monotonic()
                backoff_s = 0.1
                self._failing = False
            except BackendError as e:
                self._failing = True
                log.warning("backend unavailable, retrying in %.1fs: %s", backoff_s, e)
                backoff_s = self._back_off(backoff_s)
            except ConfigError:
                raise  # no retry can fix it (a Redis Cluster, say): stop, saying why
            except Exception:
                # Turns turn their own failures into retries and dead letters; this is for a
                # defect anywhere else: the process stays up, its leases expire and another
                # round (or another worker) takes the work again.
                log.exception("drain round failed, retrying in %.1fs", backoff_s)
                backoff_s = self._back_off(backoff_s)

    def _end(self) -> None:
        """The budget ended (or the loop was stopped) without the idle exit: whether work is
        left is what Redis says now, not what the last round saw, and if none is, senders
        learn that no drain runs (else they would not wake one while the mark lives)."""
        try:
            self.idle_at_exit = self.runtime.backend.rest()
        except BackendError as e:
            log.warning("could not tell senders that this drain ends: %s", e)

    def _awake_ms(self) -> int:
        """How long this poll marks a drain as running: never past this drain's budget."""
        if not self.budget.limited:
            return AWAKE_MS
        return max(1, min(AWAKE_MS, int(self.budget.remaining_s() * 1000)))

    def _back_off(self, backoff_s: float) -> float:
        """Wait before the next try, never past the budget (a Lambda invocation must answer
        before its deadline); the next wait is longer."""
        budget = self.budget
        self._stop.wait(max(min(backoff_s, budget.remaining_s() - budget.margin_s), 0))
        return min(backoff_s * 2, _MAX_BACKOFF_S)

    def _wait_idle(self) -> None:
        rt = self.runtime
        opts = rt.options
        next_due = rt.backend.next_due_ms()
        now = rt.clock.now()
        if self.exit_when_idle and (
            next_due is None or next_due / 1000 - now > self.budget.handler_time_s()
        ):
            # Nothing due inside the budget. A drain that just had work lingers a little for
            # more (a burst of sends then wakes one drain, not one per gap between sends),
            # woken at once by a send; then it returns and lets a waker start the next one.
            lingered_s = time.monotonic() - self._busy_at
            if lingered_s < opts.linger_s:
                wait_s = min(opts.linger_s - lingered_s, self.budget.handler_time_s())
                if wait_s > 0:
                    rt.backend.wait_ready(wait_s)
                    return
            # Only if nothing became ready since the poll, atomically with telling senders
            # that no drain runs any more: a message sent meanwhile is never stranded.
            if rt.backend.rest():
                self.idle_at_exit = self._rested = True
                self._stop.set()
            return
        wait_s = opts.poll_interval_s if next_due is None else next_due / 1000 - now
        wait_s = min(wait_s, opts.poll_interval_s, max(self.budget.remaining_s(), 0))
        slack_s = 1 / opts.redis_hz + 0.01
        if wait_s > slack_s:
            rt.backend.wait_ready(wait_s - slack_s)
        elif wait_s > 0:
            rt.clock.sleep(wait_s)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        restore: dict[int, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, stopping after the current round", signal.Signals(signum).name)
            self._stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            restore[sig] = signal.signal(sig, on_signal)
        return restore
