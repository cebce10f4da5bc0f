"""Waiting on conditions instead of sleeping: tests must pass on a busy 2-core CI machine.

The bounds here are generous on purpose. They only decide how long a broken test hangs
before it fails; a passing test never waits longer than its condition takes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

# Long enough for a subprocess to import the package and start on a loaded machine, and for
# a few seconds of real work to finish there several times over.
GENEROUS_S = 60.0


def wait_until(
    predicate: Callable[[], T], timeout_s: float = GENEROUS_S, what: str = "", every_s: float = 0.02
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail with
    ``what`` (or the predicate's name) after ``timeout_s``. The predicate is always tried
    once more at the deadline, so a slow poll cannot fail a condition that became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            result = predicate()
            if result:
                return result
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {name}")
        time.sleep(every_s)
