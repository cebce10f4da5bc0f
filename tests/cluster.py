"""A real Redis Cluster for tests: three masters on free loopback ports, joined by
``redis-cli --cluster create`` (``valkey-cli`` beside a valkey-server)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import redis

from tests.conftest import SERVER, RedisServer
from tests.waiting import GENEROUS_S

if TYPE_CHECKING:
    from pathlib import Path


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    while True:
        port = random.randint(20_000, 45_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def cli_binary() -> str:
    """The CLI of the server the tests run on: valkey-cli beside valkey-server."""
    if "valkey" in os.path.basename(SERVER):
        return os.path.join(os.path.dirname(SERVER), "valkey-cli")
    return "redis-cli"


class RedisCluster:
    """Three ``--cluster-enabled yes`` masters, no replicas, every slot assigned."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = []
        for i in range(masters):
            node_dir = workdir / f"node{i}"
            node_dir.mkdir()
            node = RedisServer(
                node_dir,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            )
            node.port = cluster_port()
            node.args[node.args.index("--port") + 1] = str(node.port)
            self.nodes.append(node)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli_binary(), "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=GENEROUS_S,
        )  # fmt: skip
        deadline = time.monotonic() + GENEROUS_S
        while not all(self._ok(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        with redis.Redis(port=node.port) as client:
            return client.cluster("info").get("cluster_state") == "ok"

    def keys(self) -> int:
        """How many keys the whole cluster holds."""
        total = 0
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                total += int(client.dbsize())
        return total

    def flush(self) -> None:
        """Every key of every master gone (scripts stay loaded)."""
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def available() -> bool:
    return shutil.which(SERVER) is not None and shutil.which(cli_binary()) is not None
