"""The dashboard over real HTTP against a real redis-server: the token rule, CSRF, read-only,
escaping of what senders control, and no password in any page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import redis

from actor_system import ActorSystem
from actor_system.dashboard import app
from tests.actors import Add, Boom, Note, actors, counter, logger
from tests.conftest import RedisServer, free_port
from tests.dashboard_server import serving

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-tests"
EXE = shutil.which("actor-system") or "actor-system"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http(
    url: str,
    *,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    body = None if data is None else urllib.parse.urlencode(data, doseq=True).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found.group(1)


@pytest.fixture
def system(redis_system: ActorSystem) -> ActorSystem:
    return redis_system


def test_a_token_is_needed_once_then_the_session_cookie_carries_it(system: ActorSystem) -> None:
    with serving(app(system, token=TOKEN)) as base:
        status, _, body = http(f"{base}/")
        assert status == 401
        assert "token" in body
        assert http(f"{base}/", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http(f"{base}/?token=wrong")[0] == 401
        assert http(f"{base}/", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, headers, _ = http(f"{base}/dead-letters?token={TOKEN}&reason=x")
        assert status == 303
        assert headers["location"] == "/dead-letters?reason=x"  # the token leaves the URL
        cookie = headers["set-cookie"].split(";")[0]
        assert TOKEN not in cookie
        assert "HttpOnly" in headers["set-cookie"]
        assert http(f"{base}/dead-letters?reason=x", headers={"Cookie": cookie})[0] == 200
        forged = cookie.split("=")[0] + "=" + "0" * 64
        assert http(f"{base}/", headers={"Cookie": forged})[0] == 401
        # Static assets need no token (they hold nothing of the system).
        assert http(f"{base}/static/dashboard.css")[0] == 200


def test_every_action_needs_the_forms_csrf_token_and_its_own_origin(
    system: ActorSystem,
) -> None:
    mid = system.send(counter.ref("later"), Add(n=1), delay=600)
    with serving(app(system)) as base:
        page = http(f"{base}/deferred")[2]
        token = csrf_of(page)
        # A forged POST from another origin, without the form's token: refused.
        evil = {"Origin": "http://evil.example"}
        assert http(f"{base}/deferred/cancel", data={"id": mid}, headers=evil)[0] == 403
        # With the token but from another origin: refused as well.
        status = http(f"{base}/deferred/cancel", data={"id": mid, "csrf": token}, headers=evil)[0]
        assert status == 403
        # Same origin, no token: refused.
        assert http(f"{base}/deferred/cancel", data={"id": mid})[0] == 403
        assert http(f"{base}/deferred/cancel", data={"id": mid, "csrf": "0" * 64})[0] == 403
        assert [d.id for d in system.deferred()] == [mid]
        # The page's own form: done.
        status, headers, _ = http(
            f"{base}/deferred/cancel", data={"id": mid, "csrf": token}, headers={"Origin": base}
        )
        assert status == 303
        assert headers["location"] == "/deferred?done=cancelled"
        assert system.deferred() == []
        # The page to go back to is one of the dashboard's, never another site.
        mid = system.send(counter.ref("later"), Add(n=2), delay=600)
        for back in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
            form = {"id": mid, "csrf": token, "back": back}
            status, headers, _ = http(
                f"{base}/deferred/cancel", data=form, headers={"Origin": base}
            )
            assert status == 303
            assert headers["location"].startswith("/deferred?done="), back


def test_read_only_refuses_every_action_and_shows_no_buttons(system: ActorSystem) -> None:
    system.send(logger.ref("x"), Boom(times=1))
    system.run_until_idle()
    [dead] = system.dead_letters()
    with serving(app(system, read_only=True)) as base:
        status, _, page = http(f"{base}/dead-letters/show?id={dead.id}")
        assert status == 200
        assert "read-only" in page
        assert 'id="redrive"' not in page
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', http(f"{base}/")[2])
        data = {"id": dead.id, "action": "redrive", "confirm": "yes", "csrf": "x"}
        assert token is None  # no form carries one
        assert http(f"{base}/dead-letters/act", data=data)[0] == 403
    assert [d.id for d in system.dead_letters()] == [dead.id]


def test_what_senders_control_is_escaped(system: ActorSystem) -> None:
    hostile = "<script>alert(1)</script>"
    ref = logger.ref(hostile)
    system.send(ref, Note(text=hostile))
    system.send(ref, Note(text=hostile), delay=600)
    system.send(ref, Boom(times=1))
    system.run_until_idle()
    [dead] = system.dead_letters()
    with serving(app(system)) as base:
        actor_url = f"{base}/actor?" + urllib.parse.urlencode({"type": "logger", "id": hostile})
        pages = [
            http(f"{base}/")[2],
            http(f"{base}/deferred")[2],
            http(actor_url)[2],
            http(f"{base}/dead-letters")[2],
            http(f"{base}/dead-letters/show?id={dead.id}")[2],
        ]
    for page in pages:
        assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[2]  # shown, as text
    assert "&lt;script&gt;" in pages[3]


def test_the_redis_password_never_appears(tmp_path: Path) -> None:
    password = "pa55-word-never-shown"
    server = RedisServer(tmp_path)
    server.start()
    server_client = redis.Redis(port=server.port)
    server_client.config_set("requirepass", password)
    server_client.close()
    try:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        system = ActorSystem.from_url(url, actors=actors, max_attempts=1)
        system.send(counter.ref("a"), Add(n=1))
        system.run_until_idle()
        with serving(app(system)) as base:
            for path in ("/", "/deferred", "/actor?type=counter&id=a", "/dead-letters"):
                status, headers, page = http(f"{base}{path}")
                assert status == 200
                assert password not in page
                assert all(password not in v for v in headers.values())
                assert f"127.0.0.1:{server.port}" in page or path != "/"
        system.close()
    finally:
        server.stop()


def test_the_command_refuses_to_bind_beyond_loopback_without_a_token(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACTOR_SYSTEM_DASHBOARD_TOKEN"}
    done = subprocess.run(
        [EXE, "--url", redis_url, "dashboard", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "actor-system: --host 0.0.0.0 reaches beyond this machine: give a token (--token or "
        "ACTOR_SYSTEM_DASHBOARD_TOKEN), or bind 127.0.0.1"
    )
    # With the token in the environment it starts, and asks for it.
    port = free_port()
    proc = subprocess.Popen(
        [
            EXE,
            "--url",
            redis_url,
            "--app",
            "tests.actors",
            "dashboard",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--read-only",
        ],
        env={**env, "ACTOR_SYSTEM_DASHBOARD_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                status = http(f"{base}/")[0]
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, proc.stderr
                time.sleep(0.1)
        assert status == 401
        assert http(f"{base}/", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"actor-system dashboard on http://0.0.0.0:{port}/ (read-only)" in err


@pytest.mark.slow
def test_every_page_reads_a_redis_cluster(cluster_url: str) -> None:
    system = ActorSystem.from_url(cluster_url, actors=actors, max_attempts=1)
    for i in range(20):
        system.send(counter.ref(f"c{i}"), Add(n=1))
        system.send(counter.ref(f"c{i}"), Add(n=1), delay=60 + i)
    system.send(logger.ref("x"), Boom(times=1))
    system.run_until_idle()
    system.send(counter.ref("c1"), Add(n=1))
    with serving(app(system)) as base:
        status, _, overview = http(f"{base}/")
        assert status == 200
        assert 'data-key="deferred">20<' in overview
        assert 'data-key="dead_letters">1<' in overview
        deferred = http(f"{base}/deferred?range=hour&message_type=Add")[2]
        assert deferred.count("<td>Add</td>") == 20
        actor = http(f"{base}/actor?type=counter&id=c1")[2]
        assert "&#34;count&#34;: 1" in actor or '"count": 1' in actor
        assert "counter/c1" in http(f"{base}/")[2]  # its mailbox among the top
        assert "boom on attempt 1" in http(f"{base}/dead-letters")[2]
    system.close()
