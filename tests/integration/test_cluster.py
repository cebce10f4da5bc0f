"""On a real three-master Redis Cluster (tests/cluster.py): found from any node's URL,
every script in one slot, actors spread over every master, and the operator commands
reading all of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from click.testing import CliRunner

from actor_system import ActorSystem, ConfigError
from actor_system.cli import main
from tests.actors import Add, Boom, actors, counter, logger
from tests.integration.workers import worker_args
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.cluster import RedisCluster

pytestmark = pytest.mark.integration


def test_any_node_url_finds_the_cluster_and_spreads_actors_over_every_master(
    redis_cluster: RedisCluster,
) -> None:
    redis_cluster.flush()
    for url in (redis_cluster.urls[1], redis_cluster.urls[2] + "?cluster=true"):
        system = ActorSystem.from_url(url, actors=actors)
        for i in range(60):
            system.send(counter.ref(f"c{i}"), Add(n=1))
        assert system.run_until_idle().messages == 60
        backend: Any = system.backend
        assert type(backend.client).__name__ == "RedisCluster"
        system.close()
    per_node = []
    for node in redis_cluster.nodes:
        with redis.Redis(port=node.port) as client:
            per_node.append(sum(1 for _ in client.scan_iter(match="as:{p*}:counter/*:state")))
    assert sum(per_node) == 60
    assert all(n > 0 for n in per_node), per_node
    system = ActorSystem.from_url(redis_cluster.urls[0], actors=actors)
    assert [system.state(counter.ref(f"c{i}")).count for i in range(60)] == [2] * 60
    system.close()


def test_a_different_partition_count_is_refused(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    system = ActorSystem.from_url(redis_cluster.urls[0], actors=actors)
    system.send(counter.ref("a"), Add(n=1))
    system.close()
    other = ActorSystem.from_url(redis_cluster.urls[0], actors=actors, partitions=128)
    with pytest.raises(ConfigError, match=r"written with 64 partitions.*128"):
        other.send(counter.ref("a"), Add(n=1))
    other.close()


def test_bad_cluster_parameters_are_refused_at_once(redis_cluster: RedisCluster) -> None:
    with pytest.raises(ConfigError, match="takes true or false"):
        ActorSystem.from_url(redis_cluster.urls[0] + "?cluster=maybe", actors=actors)
    with pytest.raises(ConfigError, match="unknown parameter 'clustered'"):
        ActorSystem.from_url(redis_cluster.urls[0] + "?clustered=1", actors=actors)


def test_operator_commands_read_every_master(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    url = redis_cluster.urls[0]
    system = ActorSystem.from_url(url, actors=actors)
    for i in range(20):
        system.send(counter.ref(f"s{i}"), Add(n=1))
        system.send(counter.ref(f"s{i}"), Add(n=1), delay=3600)
    for i in range(4):
        system.send(logger.ref(f"bad{i}"), Boom())
    system.close()
    run = CliRunner().invoke
    stats = json.loads(run(main, ["--url", url, "--app", "tests.actors", "--json", "stats"]).output)
    assert (stats["mailbox_messages"], stats["pending_deferred"]) == (24, 20)
    assert stats["ready_actors"] == 24
    listed = run(main, ["--url", url, "--app", "tests.actors", "--json", "deferred", "list"])
    assert len(json.loads(listed.output)) == 20, listed.output
    worker = ActorSystem.from_url(url, actors=actors, max_attempts=1)
    worker.run_until_idle()
    worker.close()
    dlq = run(main, ["--url", url, "--app", "tests.actors", "--json", "dlq", "list"])
    assert len(json.loads(dlq.output)) == 4, dlq.output
    state = run(main, ["--url", url, "--app", "tests.actors", "--json", "state", "counter", "s7"])
    assert json.loads(state.output)["state"]["count"] == 1, state.output


def test_an_idle_worker_wakes_on_hints_not_on_its_sweep(redis_cluster: RedisCluster) -> None:
    """With a 30 s poll interval, only the hints a send leaves can wake the idle worker in
    time: an immediate send to each of many partitions, and a deferred one, run in seconds,
    the deferred one never early."""
    redis_cluster.flush()
    url = redis_cluster.urls[2]
    worker = subprocess.Popen(
        worker_args(url, app="tests.actors"),
        env={**os.environ, "ACTOR_SYSTEM_POLL_INTERVAL_S": "30"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    system = ActorSystem.from_url(url, actors=actors)
    try:
        time.sleep(1.0)  # its first sweep is done: it idles on the wake list
        refs = [counter.ref(f"w{i}") for i in range(12)]
        parts = {system.backend.keys.part_of(r.key) for r in refs}  # type: ignore[attr-defined]
        assert len(parts) > 6
        for ref in refs:
            system.send(ref, Add(n=1))
        wait_until(
            lambda: all(system.state(r).count == 1 for r in refs),  # type: ignore[attr-defined]
            timeout_s=10,
            what="the sends to run",
        )
        sent = time.time()
        system.send(counter.ref("late"), Add(n=1), delay=1.0)
        wait_until(
            lambda: system.state(counter.ref("late")).count == 1,  # type: ignore[attr-defined]
            timeout_s=10,
            what="the deferred send to run",
        )
        assert time.time() - sent >= 1.0
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        system.close()
    assert worker.returncode == 0, err.decode()


def test_a_drain_rests_only_when_nothing_is_ready(redis_cluster: RedisCluster) -> None:
    """The drain claim of Lambda wakes on a cluster: one wake per idle-to-busy change, and a
    drain may end only when no actor of any partition is ready."""
    redis_cluster.flush()
    system = ActorSystem.from_url(redis_cluster.urls[0], actors=actors)
    backend: Any = system.backend
    now_ms = int(time.time() * 1000)

    def item(key: str) -> Any:
        return system.registry.prepare(counter.ref(key), Add(n=1), now_s=now_ms / 1000)

    assert backend.push([item("r1")], now_ms, 30_000) == (1, True)  # wake a drain
    assert backend.push([item("r2")], now_ms, 30_000) == (1, False)  # one is on its way
    assert backend.claim_drain(30_000) is False
    assert backend.rest() is False  # actors are ready: look again
    system.run_until_idle()
    assert backend.rest() is True  # nothing ready: it may end, and the next send wakes one
    assert backend.claim_drain(30_000) is False  # nothing ready
    assert backend.push([item("r3")], now_ms, 30_000) == (1, True)
    system.close()


def test_a_node_that_lost_its_scripts_gets_them_again_and_scripts_go_straight_to_their_node(
    redis_cluster: RedisCluster,
) -> None:
    """SCRIPT FLUSH on one master (a restarted or promoted node): the calls it refused are
    loaded and run again, nothing fails. No script call costs a COMMAND GETKEYS first."""
    redis_cluster.flush()
    for node in redis_cluster.nodes:
        with redis.Redis(port=node.port) as client:
            client.config_resetstat()
    system = ActorSystem.from_url(redis_cluster.urls[0], actors=actors)
    refs = [counter.ref(f"n{i}") for i in range(30)]
    for ref in refs:
        system.send(ref, Add(n=1))
    assert system.run_until_idle().messages == 30
    with redis.Redis(port=redis_cluster.nodes[1].port) as client:
        client.script_flush()
    system.send_many([(ref, Add(n=1)) for ref in refs])
    assert system.run_until_idle().messages == 30
    assert [system.state(r).count for r in refs] == [2] * 30  # type: ignore[attr-defined]
    system.close()
    lookups = 0
    for node in redis_cluster.nodes:
        with redis.Redis(port=node.port) as client:
            stats = client.info("commandstats")
            lookups += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
    assert lookups == 0
