"""Redis backend: mailboxes, leases, state, delay queue and dead letters in one Redis."""

from actor_system.adapters.redis.backend import RedisBackend, client_from_url
from actor_system.adapters.redis.keys import Keys

__all__ = ["Keys", "RedisBackend", "client_from_url"]
