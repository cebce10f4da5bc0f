"""The Redis server's clock: the one time authority of every process of a system.

Due times, the check that a deferred message is due and lease expiries are compared across
processes, so they must come from one clock: a worker whose own clock runs ahead would
otherwise deliver early, or take a lease that is still live. ``RedisClock`` reads ``TIME``
and advances it with the local monotonic clock in between (no round trip per reading),
reading again every ``resync_s``, so a wall clock that is wrong or steps does not matter.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from actor_system.errors import BackendError

if TYPE_CHECKING:
    import redis

log = logging.getLogger("actor_system")

_TRIES = 3  # readings of TIME per sync at most
_TIGHT_S = 0.002  # a round trip this short is tight enough to stop at


class RedisClock:
    """Redis ``TIME`` as a lower bound: never ahead of the server, so never early.

    A reading of ``TIME`` happened somewhere inside its round trip, so at the moment the
    answer arrives the server's time is at least the value read; extrapolating from that
    moment keeps every reading at or behind the server. Readings never go backwards.
    """

    def __init__(self, client: redis.Redis, *, resync_s: float = 10.0) -> None:
        self._client = client
        self._resync_s = resync_s
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._base_s: float | None = None  # server time read ...
        self._at = 0.0  # ... at this monotonic time (when the answer arrived)
        self._tried = -float("inf")  # monotonic time of the last attempt to read
        self._last = 0.0

    def now(self) -> float:
        if self._base_s is None or time.monotonic() - self._tried >= self._resync_s:
            self._sync()
        with self._lock:
            assert self._base_s is not None  # _sync raised otherwise
            self._last = max(self._last, self._base_s + (time.monotonic() - self._at))
            return self._last

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def _sync(self) -> None:
        with self._sync_lock:  # one reading at a time; the others use what it read
            if self._base_s is not None and time.monotonic() - self._tried < self._resync_s:
                return
            try:
                base_s, at = self._read()
            except RedisError as e:
                if self._base_s is None:  # nothing to go on: every call tries again
                    raise BackendError(f"Redis TIME failed: {type(e).__name__}: {e}") from e
                # The monotonic extrapolation stays a lower bound; read again in a second.
                self._tried = time.monotonic() + 1.0 - self._resync_s
                log.warning("Redis TIME failed, the clock goes on from its last reading: %s", e)
                return
            with self._lock:
                self._base_s, self._at = base_s, at
            self._tried = at

    def _read(self) -> tuple[float, float]:
        """(server time, monotonic time its answer arrived), the tightest of up to
        ``_TRIES`` readings: a slow answer (a busy machine) lags by its round trip."""
        best: tuple[float, float] | None = None
        for _ in range(_TRIES):
            sent = time.monotonic()
            seconds, micros = self._client.time()
            arrived = time.monotonic()
            sample = (int(seconds) + int(micros) / 1e6, arrived)
            # Both are lower bounds; the one ahead at a common instant is the tighter.
            if best is None or sample[0] - sample[1] > best[0] - best[1]:
                best = sample
            if arrived - sent < _TIGHT_S:
                break
        assert best is not None
        return best
