"""Fixtures: a real redis-server on a free port, and a system over each Redis flavour."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from actor_system import ActorSystem, ActorType, ManualClock
from tests.waiting import GENEROUS_S

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _package_logger() -> Iterator[None]:
    """Each test starts with the package's logger as importing it leaves it: a Lambda
    handler run in-process configures it (a handler of its own, propagation off), which
    would hide the next tests' records from caplog."""
    logger = logging.getLogger("actor_system")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The server the integration tests start: redis-server, or valkey-server (ElastiCache's
# default engine) when this names it (.ci/run runs the Redis suites on both).
SERVER = os.environ.get("TEST_REDIS_SERVER", "redis-server")


# The stores that the tests parametrized over them run on (a comma-separated subset of
# STORES below; all by default): .ci/run's runs on a second engine or client version repeat
# only those that differ there.
ONLY_STORES = set(filter(None, os.environ.get("TEST_STORES", "").split(",")))


def skip_unless_selected(store: str) -> None:
    if ONLY_STORES and store not in ONLY_STORES:
        pytest.skip(f"TEST_STORES={','.join(sorted(ONLY_STORES))}")


def engine() -> str:
    """The engine the integration tests run on: "valkey" or "redis"."""
    return "valkey" if "valkey" in os.path.basename(SERVER) else "redis"


def tls_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed key and certificate for 127.0.0.1 (openssl), for a TLS redis-server."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    new = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*new, *subject, *files],
        check=True,
        capture_output=True,
    )
    return key, cert


class RedisServer:
    """A redis-server (or valkey-server) process of our own, on a free loopback port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.args = [
            SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + GENEROUS_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(GENEROUS_S)


class Snapshots(RedisServer):
    """A redis-server that can be crashed (SIGKILL) and restarted from its last SAVE: Redis
    losing the writes made since, as after a failover to a lagging replica."""

    def restore(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.start()  # same port and --dir: loads dump.rdb

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture
def snapshots(tmp_path: Path) -> Iterator[Snapshots]:
    """A redis-server of the test's own, for tests that roll it back to a snapshot."""
    s = Snapshots(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which(SERVER) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{SERVER} is missing; .ci/run installs it")
        pytest.skip(f"{SERVER} is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    info = redis.Redis(port=server.port).info("server")
    # The run is on the engine it says it is on (valkey-server also reports redis_version).
    assert ("valkey_version" in info) == (engine() == "valkey"), info
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A flushed database on the session's real redis-server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_system(redis_url: str) -> Iterator[ActorSystem]:
    """The test actors (tests/actors.py) on the real redis-server, one attempt per message."""
    from tests.actors import actors

    system = ActorSystem.from_url(redis_url, actors=actors, max_attempts=1)
    yield system
    system.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real three-master Redis Cluster on free loopback ports (tests/cluster.py)."""
    from tests.cluster import RedisCluster, available

    if not available():
        if os.environ.get("CI"):
            pytest.fail("redis-server or redis-cli is missing; .ci/run installs them")
        pytest.skip("redis-server or redis-cli is not installed")
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: Any) -> str:
    """A flushed cluster, named by one of its nodes (the client finds the others)."""
    redis_cluster.flush()
    return str(redis_cluster.urls[0])


# The cluster runs with the slow suites: every test again, on three more processes.
SLOW_CLUSTER = pytest.param("cluster", marks=pytest.mark.slow)


@pytest.fixture(params=["fakeredis", "redis", SLOW_CLUSTER])
def url(request: pytest.FixtureRequest) -> str:
    """Each behaviour test runs on the embedded fakeredis, on a real redis-server and on a
    real Redis Cluster."""
    skip_unless_selected(request.param)
    if request.param == "fakeredis":
        return "fakeredis://"
    if request.param == "cluster":
        return str(request.getfixturevalue("cluster_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


STORES: list[Any] = ["fakeredis", "redis", SLOW_CLUSTER, "s3", "sqs", "scheduler"]


@pytest.fixture(params=STORES)
def stores(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The store combinations every behaviour test runs on: the embedded fakeredis, a real
    redis-server, and each AWS adapter (on fakeredis) against the moto server."""
    kind = request.param
    skip_unless_selected(kind)
    if kind == "fakeredis":
        yield {"url": "fakeredis://"}
        return
    if kind == "redis":
        yield {"url": request.getfixturevalue("redis_url")}
        return
    if kind == "cluster":
        yield {"url": request.getfixturevalue("cluster_url")}
        return
    request.getfixturevalue("aws_env")
    from tests.aws import AwsResources

    aws = AwsResources.create(request.node.name)
    yield {"url": "fakeredis://", **aws.urls(kind), "aws": aws, "kind": kind}
    aws.cleanup()


@pytest.fixture
def make_system(stores: dict[str, Any], clock: ManualClock) -> Iterator[Any]:
    systems: list[ActorSystem] = []

    def make(*actors: ActorType[Any], **options: Any) -> ActorSystem:
        urls = {k: stores[k] for k in ("state", "delay") if k in stores}
        system = ActorSystem.from_url(stores["url"], actors=actors, clock=clock, **urls, **options)
        if "aws" in stores:
            stores["aws"].attach(system, clock, stores["kind"])
        systems.append(system)
        return system

    yield make
    for s in systems:
        s.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's HTTP server on a free port: AWS APIs reached through boto3's endpoint_url."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + GENEROUS_S  # importing moto takes seconds on a busy machine
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def aws(aws_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Any]:
    """A bucket, a queue and a schedule group of the test's own on the moto server."""
    from tests.aws import AwsResources

    resources = AwsResources.create(request.node.name)
    yield resources
    resources.cleanup()
