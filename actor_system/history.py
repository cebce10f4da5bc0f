"""Per-minute history of what the drains did, for the dashboard's charts: turns, messages,
retries, dead letters and a histogram of deferred lateness, summed over every process.

Each process adds up its committed turns in memory and writes the sums at most every
``FLUSH_S`` seconds (and when it stops) in one pipelined round trip: a few HINCRBY on the hash
of each minute, kept two hours. A turn costs a dict update, not a Redis command.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actor_system.metrics import TurnMetrics

FLUSH_S = 5.0
KEEP_MS = 2 * 3600_000
# Lateness buckets: b0 on time or early (<= 0), bN late by up to 2**(N-1) ms (N <= 20), b21
# later than that (about 9 minutes).
BUCKETS = 22


def bucket(lateness_s: float) -> int:
    ms = lateness_s * 1000
    if ms <= 0:
        return 0
    return min(BUCKETS - 1, 1 + max(0, math.ceil(math.log2(ms))))


def bucket_ms(index: int) -> float:
    """The upper bound (ms) a bucket stands for."""
    return 0.0 if index == 0 else float(2 ** (index - 1))


def percentile(counts: dict[int, int], q: float) -> float | None:
    """The q-quantile of a bucketed histogram (the bucket's upper bound); None if empty."""
    total = sum(counts.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            return bucket_ms(index)
    return bucket_ms(max(counts))


class History:
    """The sums of one process, per minute, waiting to be written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, dict[str, int]] = {}
        self.flushed_at = time.monotonic()

    def record(self, metrics: TurnMetrics, now_s: float) -> None:
        minute = int(now_s // 60) * 60_000
        with self._lock:
            row = self._rows.setdefault(minute, {})
            row["t"] = row.get("t", 0) + 1
            for key, n in (
                ("m", metrics.messages),
                ("r", metrics.retries),
                ("d", metrics.dead_letters),
            ):
                if n:
                    row[key] = row.get(key, 0) + n
            for late in metrics.lateness_s:
                field = f"b{bucket(late)}"
                row[field] = row.get(field, 0) + 1

    def due(self) -> bool:
        return bool(self._rows) and time.monotonic() - self.flushed_at >= FLUSH_S

    def take(self) -> dict[int, dict[str, int]]:
        with self._lock:
            rows, self._rows = self._rows, {}
        self.flushed_at = time.monotonic()
        return rows

    def give_back(self, rows: dict[int, dict[str, int]]) -> None:
        """Rows whose write failed: added to the next flush (those older than the history
        keeps are dropped, so that an outage cannot grow them without bound)."""
        with self._lock:
            newest = max([*rows, *self._rows])
            for minute, row in rows.items():
                if newest - minute > KEEP_MS:
                    continue
                mine = self._rows.setdefault(minute, {})
                for key, n in row.items():
                    mine[key] = mine.get(key, 0) + n
