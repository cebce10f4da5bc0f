"""The drain (and ingress) function of the wake tests, configured from its environment."""

from __future__ import annotations

from actor_system import ActorSystem
from tests.wake_actors import actors

system = ActorSystem.from_env(actors=actors)
handler = system.lambda_handler()
