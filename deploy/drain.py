"""The Lambda module of the reference deployment: the example actors, configured from the
function's environment (serverless.yml). Copy it and import your own actor types."""

from __future__ import annotations

from actor_system import ActorSystem
from examples.counter import counter
from examples.order_timeout import orders
from examples.reminder import reminders

ACTORS = [counter, orders, reminders]  # also the long-work worker's (ACTOR_SYSTEM_APP)
system = ActorSystem.from_env(actors=ACTORS)
handler = system.lambda_handler()
dashboard = system.dashboard_handler()  # the optional dashboard function
