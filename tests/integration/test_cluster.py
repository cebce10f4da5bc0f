"""Pointed at a Redis Cluster, which the key layout does not support yet, the system says so
before it writes anything: a real three-master cluster (tests/cluster.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from actor_system import ActorSystem, ConfigError
from actor_system.cli import main
from tests.actors import Add, actors, counter
from tests.cluster import RedisCluster, available

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    if not available():
        if os.environ.get("CI"):
            pytest.fail("redis-server or redis-cli is missing; .ci/run installs them")
        pytest.skip("redis-server or redis-cli is not installed")
    c = RedisCluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


def test_a_cluster_node_is_refused_before_anything_is_written(cluster: RedisCluster) -> None:
    for url in cluster.urls:
        system = ActorSystem.from_url(url, actors=actors)
        with pytest.raises(ConfigError, match=r"Redis Cluster is not supported yet.*enabled:1"):
            system.send(counter.ref("a"), Add(n=1))
        with pytest.raises(ConfigError, match="cluster mode disabled"):
            system.worker().run()
        system.close()
    assert cluster.keys() == 0


def test_cluster_true_in_the_url_is_refused_at_once(cluster: RedisCluster) -> None:
    with pytest.raises(ConfigError, match="Redis Cluster is not supported yet"):
        ActorSystem.from_url(cluster.urls[0] + "?cluster=true", actors=actors)
    with pytest.raises(ConfigError, match="takes true or false"):
        ActorSystem.from_url(cluster.urls[0] + "?cluster=maybe", actors=actors)
    with pytest.raises(ConfigError, match="unknown parameter 'clustered'"):
        ActorSystem.from_url(cluster.urls[0] + "?clustered=1", actors=actors)


def test_the_worker_command_exits_with_one_line(cluster: RedisCluster) -> None:
    done = CliRunner().invoke(main, ["--url", cluster.urls[1], "--app", "tests.actors", "worker"])
    assert done.exit_code == 2, done.output
    assert "Redis Cluster is not supported yet" in done.output
    assert "Traceback" not in done.output
    assert cluster.keys() == 0
