"""Helpers for testing actors: the manual clock and a drain that advances it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actor_system.clock import ManualClock

if TYPE_CHECKING:
    from actor_system.runtime import DrainReport
    from actor_system.system import ActorSystem

__all__ = ["ManualClock", "advance_and_drain"]


def advance_and_drain(system: ActorSystem, clock: ManualClock, seconds: float) -> DrainReport:
    """Move the clock forward and deliver everything that fell due, without sleeping."""
    clock.advance(seconds)
    return system.run_until_idle()
