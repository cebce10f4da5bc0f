"""The operations dashboard: ``actor-system dashboard``, or ``app(system)`` to mount the same
ASGI app in a server of one's own (needs the ``dashboard`` extra)."""

from actor_system.dashboard.app import app

__all__ = ["app"]
