"""The dashboard as a Lambda function behind the HTTP API: the same app as ``actor-system
dashboard``, under ``/dashboard``, through Mangum (API Gateway events to ASGI and back).

serverless.yml's optional ``dashboard`` function runs ``system.dashboard_handler()``. API
Gateway authorizes each request (IAM or a JWT authorizer, like the ingress); the dashboard's
own token, when ``ACTOR_SYSTEM_DASHBOARD_TOKEN`` is set, is checked as well."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.routing import Mount

from actor_system.dashboard.app import app

if TYPE_CHECKING:
    from actor_system.system import ActorSystem

PREFIX = "/dashboard"


def make_handler(
    system: ActorSystem, *, token: str | None, read_only: bool, prefix: str = PREFIX
) -> Any:
    """``handler(event, context)`` serving the dashboard of ``system`` under ``prefix``."""
    from mangum import Mangum

    inner = app(system, token=token, read_only=read_only)
    # Mounted, as in a server of one's own: its links and redirects start with the prefix.
    mounted = Starlette(routes=[Mount(prefix, app=inner)])

    async def served(scope: Any, receive: Any, send: Any) -> None:
        # The overview is linked as the prefix itself (an HTTP API route of its own): served
        # as the mount's root, not redirected to "<prefix>/", which no route may match.
        if scope["type"] == "http" and scope["path"] == prefix:
            scope = {**scope, "path": prefix + "/", "raw_path": (prefix + "/").encode()}
        await mounted(scope, receive, send)

    return Mangum(served, lifespan="off")
