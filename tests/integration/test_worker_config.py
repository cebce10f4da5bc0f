"""``actor-system worker`` fails fast on configuration no retry fixes: credentials Redis
refuses, a database it lacks, TLS on one side only. One line, exit status 2, within seconds.
A Redis that does not answer yet is waited for. ``worker --check`` is the health check, and
the worker logs one start-up line without the password (real redis-servers, one with a
password, one serving TLS only)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GENEROUS_S, SERVER, engine, free_port, tls_cert

pytestmark = pytest.mark.integration

EXE = [sys.executable, "-m", "actor_system.cli"]
PASSWORD = "s3cret-pw"


def serve(tmp_path: Path, *args: str) -> Iterator[int]:
    """A redis-server with ``args`` on a free port, once it accepts connections."""
    port = free_port()
    proc = subprocess.Popen(
        [SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        + [a.replace("{port}", str(port)) for a in args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + GENEROUS_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"{SERVER} {' '.join(args)} did not start")
            time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait(GENEROUS_S)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[int]:
    """The port of a redis-server that wants a password."""
    yield from serve(tmp_path, "--port", "{port}", "--requirepass", PASSWORD)


@pytest.fixture
def tls_only(tmp_path: Path) -> Iterator[int]:
    """The port of a redis-server that speaks TLS only."""
    if engine() != "redis" or shutil.which("openssl") is None:
        pytest.skip("needs a redis-server built with TLS and openssl")
    key, cert = tls_cert(tmp_path)
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    yield from serve(tmp_path, "--port", "0", "--tls-port", "{port}", *tls)


def worker(url: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [*EXE, "--url", url, "--app", "tests.actors", "worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - start


def refused(url: str, *args: str) -> str:
    """The one line of a worker that refused to start: exit 2, within seconds."""
    done, took = worker(url, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("actor-system: Redis at "), lines[0]
    assert took < 10, f"took {took:.1f} s"
    return lines[0]


def test_a_wrong_password_ends_the_worker_with_one_line(secured: int) -> None:
    line = refused(f"redis://:wrong-pw@127.0.0.1:{secured}/0")
    assert f"redis://:***@127.0.0.1:{secured}/0" in line
    assert "refused the credentials" in line
    assert "wrong-pw" not in line
    assert PASSWORD not in line


def test_no_password_where_one_is_wanted_ends_the_worker(secured: int) -> None:
    line = refused(f"redis://127.0.0.1:{secured}/0")
    assert "refused the credentials" in line


def test_a_database_redis_lacks_ends_the_worker(redis_url: str) -> None:
    line = refused(redis_url.rsplit("/", 1)[0] + "/99")
    assert "no such database" in line
    assert "DB index is out of range" in line


def test_rediss_to_a_server_without_tls_ends_the_worker(redis_url: str) -> None:
    line = refused(redis_url.replace("redis://", "rediss://", 1) + "?ssl_cert_reqs=none")
    assert "answers without TLS: use redis://" in line


def test_redis_to_a_server_with_tls_only_ends_the_worker(tls_only: int) -> None:
    line = refused(f"redis://127.0.0.1:{tls_only}/0")
    assert "speaks TLS" in line
    assert "use rediss://" in line
    # The same server through rediss:// is fine.
    ok, _ = worker(f"rediss://127.0.0.1:{tls_only}/0?ssl_cert_reqs=none", "--check")
    assert ok.returncode == 0, ok.stderr


def test_check_answers_whether_redis_is_reachable(secured: int, redis_url: str) -> None:
    ok, _ = worker(f"redis://:{PASSWORD}@127.0.0.1:{secured}/0", "--check")
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    assert PASSWORD not in ok.stdout
    as_json = subprocess.run(
        [*EXE, "--json", "--url", redis_url, "worker", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"ok": True, "redis": redis_url}
    assert "refused the credentials" in refused(f"redis://127.0.0.1:{secured}/0", "--check")
    down = f"redis://127.0.0.1:{free_port()}/0"
    line = refused(down, "--check")
    assert "cannot be reached" in line
    assert "Connection refused" in line


def test_the_worker_logs_one_start_line_and_waits_for_a_redis_not_up_yet() -> None:
    # Nothing listens on the port: the worker says so once and waits, as for an outage
    # later, until it is stopped.
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    proc = subprocess.Popen(
        [*EXE, "--url", url, "--app", "tests.actors", "worker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=GENEROUS_S)
    assert proc.returncode == 0, err
    assert PASSWORD not in err
    lines = err.splitlines()
    start = [line for line in lines if "worker starting" in line]
    assert len(start) == 1, err
    redacted = url.replace(PASSWORD, "***")
    assert redacted in start[0]
    assert "actor types counter" in start[0]
    assert "1 process(es)" in start[0]
    waiting = [line for line in lines if "cannot be reached" in line and "waiting for it" in line]
    assert len(waiting) == 1, err


def test_check_and_start_over_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    for _ in serve(tmp_path, "--port", "{port}", "--unixsocket", str(sock)):
        ok, took = worker(f"unix://{sock}", "--check")
        assert ok.returncode == 0, ok.stderr
        assert took < 10
        assert f"unix://{sock}" in ok.stdout


def test_a_url_no_client_takes_is_one_line_not_a_traceback(redis_url: str) -> None:
    for url, says in (
        (redis_url + "?foo=bar", "unknown parameter 'foo'"),
        ("http://127.0.0.1:1/0", "unknown URL scheme 'http'"),
    ):
        for args in ((), ("--check",)):
            done, took = worker(url, *args)
            assert done.returncode == 2, (done.stdout, done.stderr)
            assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
            assert says in done.stderr
            assert took < 10


def test_a_password_given_as_a_parameter_is_not_shown(secured: int) -> None:
    url = f"redis://127.0.0.1:{secured}/0?password=wrong-pw"
    line = refused(url)
    assert "refused the credentials" in line
    assert "wrong-pw" not in line
    assert "?password=***" in line
