"""The dashboard as a Lambda function (``system.dashboard_handler()``, serverless.yml's
optional ``dashboard`` function): API Gateway HTTP API v2 events in, responses out, under
``/dashboard``, against a real redis-server. The same rules as the served app: links and
redirects under the prefix, the token when one is set, CSRF and read-only."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest

from actor_system import ActorSystem
from actor_system.errors import ConfigError
from tests.actors import Add, Boom, counter, logger

pytestmark = pytest.mark.integration

HOST = "abc123.execute-api.us-east-1.amazonaws.com"
TOKEN = "dashboard-token-for-tests"


def http_event(
    method: str,
    path: str,
    *,
    query: str = "",
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    cookies: list[str] | None = None,
) -> dict[str, Any]:
    """An HTTP API (payload 2.0) request as API Gateway hands it to the function."""
    body = None if form is None else urllib.parse.urlencode(form)
    head = {"host": HOST, "user-agent": "test", **(headers or {})}
    if body is not None:
        head["content-type"] = "application/x-www-form-urlencoded"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": head,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "abc123",
            "domainName": HOST,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "test",
            },
            "requestId": "r1",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = body
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = dict(urllib.parse.parse_qsl(query))
    return event


@pytest.fixture
def system(redis_system: ActorSystem) -> ActorSystem:
    return redis_system


def text(response: dict[str, Any]) -> str:
    body = response.get("body") or ""
    return base64.b64decode(body).decode() if response.get("isBase64Encoded") else str(body)


def test_pages_links_and_actions_live_under_the_prefix(system: ActorSystem) -> None:
    handler = system.dashboard_handler(environ={})
    mid = system.send(counter.ref("later"), Add(n=1), delay=600)
    # The overview is the prefix itself (GET /dashboard, a route of its own), not a
    # redirect to /dashboard/, which the API's greedy route may not match.
    page = handler(http_event("GET", "/dashboard"), None)
    assert page["statusCode"] == 200
    html = text(page)
    assert html == text(handler(http_event("GET", "/dashboard/"), None))
    assert 'href="/dashboard" id="nav-overview"' in html
    assert 'href="/dashboard/deferred"' in html
    assert 'href="/dashboard/static/dashboard.css"' in html
    assert 'data-refresh="/dashboard/api/overview"' in html
    css = handler(http_event("GET", "/dashboard/static/dashboard.css"), None)
    assert css["statusCode"] == 200
    assert css["headers"]["content-type"].startswith("text/css")
    live = handler(http_event("GET", "/dashboard/api/overview"), None)
    assert live["statusCode"] == 200
    assert json.loads(text(live))["summary"]["deferred"] == 1
    # Cancel, through the page's own form: back to the list, under the prefix.
    listed = text(handler(http_event("GET", "/dashboard/deferred"), None))
    assert 'action="/dashboard/deferred/cancel"' in listed
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', listed)
    assert csrf is not None
    cancel = http_event(
        "POST",
        "/dashboard/deferred/cancel",
        form={"id": mid, "csrf": csrf.group(1)},
        headers={"origin": f"https://{HOST}"},
    )
    done = handler(cancel, None)
    assert done["statusCode"] == 303, text(done)
    assert done["headers"]["location"] == "/dashboard/deferred?done=cancelled"
    assert system.deferred() == []
    # Without the form's token, or from another origin: refused.
    mid = system.send(counter.ref("later"), Add(n=2), delay=600)
    forged = http_event(
        "POST",
        "/dashboard/deferred/cancel",
        form={"id": mid},
        headers={"origin": f"https://{HOST}"},
    )
    assert handler(forged, None)["statusCode"] == 403
    evil = http_event(
        "POST",
        "/dashboard/deferred/cancel",
        form={"id": mid, "csrf": csrf.group(1)},
        headers={"origin": "https://evil.example"},
    )
    assert handler(evil, None)["statusCode"] == 403
    assert [d.id for d in system.deferred()] == [mid]


def off_prefix(html: str) -> list[str]:
    """Links, forms and sources of a page that leave /dashboard."""
    return re.findall(r'(?:href|action|src|data-refresh)="(/(?!dashboard\b)[^"]*)"', html)


def test_every_page_and_the_redrive_stay_under_the_prefix(system: ActorSystem) -> None:
    system.send(logger.ref("x"), Boom(times=1))
    system.send(counter.ref("later"), Add(n=1), delay=600)
    system.run_until_idle()
    [dead] = system.dead_letters()
    handler = system.dashboard_handler(environ={})
    paths = [
        ("/dashboard", ""),
        ("/dashboard/deferred", "range=week"),
        ("/dashboard/actor", "type=logger&id=x"),
        ("/dashboard/dead-letters", ""),
        ("/dashboard/dead-letters/show", f"id={dead.id}"),
    ]
    pages = {}
    for path, query in paths:
        answer = handler(http_event("GET", path, query=query), None)
        assert answer["statusCode"] == 200, (path, answer)
        pages[path] = text(answer)
        assert off_prefix(pages[path]) == [], path
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', pages["/dashboard/dead-letters/show"])
    assert csrf is not None
    form = {"action": "redrive", "id": dead.id, "csrf": csrf.group(1)}
    same_origin = {"origin": f"https://{HOST}"}
    # Another container (the secret is the system's, kept in Redis) takes the form too.
    other = system.dashboard_handler(environ={})
    asked = other(
        http_event("POST", "/dashboard/dead-letters/act", form=form, headers=same_origin), None
    )
    assert asked["statusCode"] == 200, text(asked)
    assert off_prefix(text(asked)) == []
    form["confirm"] = "yes"
    done = other(
        http_event("POST", "/dashboard/dead-letters/act", form=form, headers=same_origin), None
    )
    assert done["statusCode"] == 303, text(done)
    assert (
        done["headers"]["location"]
        == "/dashboard/dead-letters?reason=&actor=&type=&done=redrive%3A1"
    )
    assert system.dead_letters() == []
    # Through a proxy that passes the browser's host on (X-Forwarded-Host), a form from the
    # page the browser saw is accepted; a back link off the dashboard is not followed.
    mid = system.deferred()[0].id
    proxied = http_event(
        "POST",
        "/dashboard/deferred/cancel",
        form={"id": mid, "csrf": csrf.group(1), "back": "/\\evil.example/"},
        headers={"origin": "http://localhost:8080", "x-forwarded-host": "localhost:8080"},
    )
    cancelled = handler(proxied, None)
    assert cancelled["statusCode"] == 303, text(cancelled)
    assert cancelled["headers"]["location"] == "/dashboard/deferred?done=cancelled"


def test_the_token_when_set_and_read_only(system: ActorSystem) -> None:
    handler = system.dashboard_handler(environ={"ACTOR_SYSTEM_DASHBOARD_TOKEN": TOKEN})
    assert handler(http_event("GET", "/dashboard/"), None)["statusCode"] == 401
    wrong = http_event("GET", "/dashboard/", query="token=wrong")
    assert handler(wrong, None)["statusCode"] == 401
    entered = handler(http_event("GET", "/dashboard/deferred", query=f"token={TOKEN}"), None)
    assert entered["statusCode"] == 303
    assert entered["headers"]["location"] == "/dashboard/deferred"  # the token leaves the URL
    [cookie] = entered["cookies"]
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie
    assert "Path=/dashboard/" in cookie  # not sent to the ingress's routes
    assert "Secure" in cookie  # API Gateway serves HTTPS
    session = cookie.split(";")[0]
    with_cookie = http_event("GET", "/dashboard/deferred", cookies=[session])
    assert handler(with_cookie, None)["statusCode"] == 200
    bearer = http_event("GET", "/dashboard/", headers={"authorization": f"Bearer {TOKEN}"})
    assert handler(bearer, None)["statusCode"] == 200

    mid = system.send(counter.ref("later"), Add(n=1), delay=600)
    read_only = system.dashboard_handler(environ={"ACTOR_SYSTEM_DASHBOARD_READ_ONLY": "true"})
    page = text(read_only(http_event("GET", "/dashboard/deferred"), None))
    assert "/dashboard/deferred/cancel" not in page  # no buttons
    post = http_event(
        "POST", "/dashboard/deferred/cancel", form={"id": mid, "csrf": "x"},
        headers={"origin": f"https://{HOST}"},
    )  # fmt: skip
    assert read_only(post, None)["statusCode"] == 403
    assert [d.id for d in system.deferred()] == [mid]
    with pytest.raises(ConfigError, match="ACTOR_SYSTEM_DASHBOARD_READ_ONLY='maybe'"):
        system.dashboard_handler(environ={"ACTOR_SYSTEM_DASHBOARD_READ_ONLY": "maybe"})


def test_the_other_functions_never_load_the_dashboards_libraries(redis_url: str) -> None:
    """The drain and ingress share the module with the dashboard function: building both
    handlers imports neither Starlette, Jinja2 nor Mangum (a drain's cold start stays as
    it was)."""
    code = (
        "import sys\n"
        "from actor_system import ActorSystem\n"
        "from tests.actors import actors\n"
        f"system = ActorSystem.from_url({redis_url!r}, actors=actors)\n"
        "handler = system.lambda_handler()\n"
        "dashboard = system.dashboard_handler()\n"
        "loaded = sorted(m for m in ('starlette', 'jinja2', 'mangum') if m in sys.modules)\n"
        "print(','.join(loaded) or 'none')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"
