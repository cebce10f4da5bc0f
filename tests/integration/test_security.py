"""TLS, ACL credentials from the URL, secrets kept out of errors and logs, no pickle."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from actor_system import ActorSystem, BackendError
from tests.actors import Add, counter
from tests.conftest import RedisServer, engine, tls_cert
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_no_pickle_or_eval_anywhere_in_the_package() -> None:
    sources = list((ROOT / "actor_system").rglob("*.py")) + list((ROOT / "adapters").rglob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text()
        assert not re.search(r"\b(pickle|marshal|shelve|dill)\b", text), path
        assert not re.search(r"\b(eval|exec)\(", text), path


@pytest.fixture
def acl_server(tmp_path: Path):
    server = RedisServer(
        tmp_path,
        "--user",
        "default",
        "off",
        "--user",
        "actors",
        "on",
        ">s3cret-pass",
        "~*",
        "&*",
        "+@all",
        "--user",
        "app",
        "on",
        ">app-pass",
        "~*",
        "&*",
        "+@all",
        "-@dangerous",  # a common application user: no INFO, CONFIG, KEYS, DEBUG, ...
    )
    server.proc = subprocess.Popen(server.args, stdout=subprocess.DEVNULL)
    yield server
    server.stop()


def wait_up(url: str) -> None:
    import redis

    def answers() -> bool:
        try:
            with redis.Redis.from_url(url) as client:
                client.ping()
        except redis.AuthenticationError:
            return True  # up, and refusing the default user as configured
        except redis.ConnectionError:
            return False
        return True

    wait_until(answers, what=f"redis-server at {url.split('@')[-1]}")


def test_acl_user_and_password_come_from_the_url(
    acl_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    good = f"redis://actors:s3cret-pass@127.0.0.1:{acl_server.port}/0"
    wait_up(good)
    system = ActorSystem.from_url(good, actors=[counter])
    system.send(counter.ref("acl"), Add(n=2))
    system.run_until_idle()
    assert system.state(counter.ref("acl")).count == 2  # type: ignore[attr-defined]
    caplog.set_level(logging.DEBUG)
    bad = ActorSystem.from_url(
        f"redis://actors:wrong-pass@127.0.0.1:{acl_server.port}/0", actors=[counter]
    )
    with pytest.raises(BackendError) as info:
        bad.send(counter.ref("acl"), Add(n=1))
    assert "wrong-pass" not in str(info.value)
    assert "s3cret-pass" not in caplog.text
    assert "wrong-pass" not in caplog.text
    # A user denied INFO (and the rest of @dangerous) runs the system all the same: the
    # cluster check is skipped for it, nothing else needs those commands.
    app = ActorSystem.from_url(
        f"redis://app:app-pass@127.0.0.1:{acl_server.port}/0", actors=[counter]
    )
    app.send(counter.ref("app"), Add(n=3))
    app.send(counter.ref("app"), Add(n=1), delay=0.01)
    wait_until(
        lambda: app.run_until_idle().messages == 0 and app.state(counter.ref("app")).count == 4
    )  # type: ignore[attr-defined]
    assert app.stats()["dead_letters"] == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a cert")
@pytest.mark.skipif(engine() == "valkey", reason="the valkey-server used here is built without TLS")
def test_rediss_url_connects_over_tls(tmp_path: Path) -> None:
    key, cert = tls_cert(tmp_path)
    server = RedisServer(
        tmp_path,
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
    )
    tls_port = server.port
    server.args[server.args.index("--port") + 1] = "0"
    server.args += ["--tls-port", str(tls_port)]
    server.proc = subprocess.Popen(server.args, stdout=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    try:
        wait_up(url)
        system = ActorSystem.from_url(url, actors=[counter])
        system.send(counter.ref("tls"), Add(n=3))
        system.run_until_idle()
        assert system.state(counter.ref("tls")).count == 3  # type: ignore[attr-defined]
        plain = ActorSystem.from_url(f"redis://127.0.0.1:{tls_port}/0", actors=[counter])
        with pytest.raises(BackendError):
            plain.send(counter.ref("tls"), Add(n=1))
    finally:
        server.stop()
