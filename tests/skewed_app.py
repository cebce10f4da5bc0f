"""The test actors in a process whose wall clock is off by ``CLOCK_SKEW_S`` seconds."""

from __future__ import annotations

import os
import time

_real_time = time.time
_SKEW_S = float(os.environ.get("CLOCK_SKEW_S", "0"))


def _skewed() -> float:
    return _real_time() + _SKEW_S


time.time = _skewed

from tests.actors import actors  # noqa: E402

__all__ = ["actors"]
