"""Data of the key layout before partitions is refused at start, naming the command that
moves it, and ``actor-system migrate`` moves all of it: states, mailboxes, the ready set,
deferred messages and dead letters (a real redis-server)."""

from __future__ import annotations

import json
import re
import time

import pytest
import redis
from click.testing import CliRunner

from actor_system import ActorSystem, ConfigError
from actor_system.cli import main
from tests.actors import Add, Boom, actors, counter, logger

pytestmark = pytest.mark.integration

_NEW_ACTOR_KEY = re.compile(r"^as:\{p\d+\}:(?P<actor>[^:]+/[^:]*):(?P<suffix>[a-z]+)$")


def to_old_layout(client: redis.Redis) -> None:
    """Lay the data out as the version before partitions did (the inverse of migrate)."""
    for name in list(client.scan_iter(match="as:{p*}:*", count=1000)):
        key = name.decode()
        found = _NEW_ACTOR_KEY.match(key)
        if found and found["suffix"] in ("doneold", "donetime"):
            pass  # joined into the done set below
        elif found and found["suffix"] == "done":
            # processed ids were a sorted set of commit times
            old = f"as:{{{found['actor']}}}:done"
            ids = client.smembers(key) | client.smembers(key + "old")
            client.zadd(old, {i: int(time.time() * 1000) for i in ids})
            client.delete(key, key + "old", key + "time")
        elif found:
            client.rename(key, f"as:{{{found['actor']}}}:{found['suffix']}")
        elif key.endswith(":ready"):
            client.zunionstore("as:ready", ["as:ready", key])
            client.delete(key)
        elif key.endswith(":dlq"):
            client.rpush("as:dlq", *client.lrange(key, 0, -1))
            client.delete(key)
        elif key.endswith(":due"):
            for mid, due in client.zrange(key, 0, -1, withscores=True):
                shard = int(mid[16:20], 16) % 16
                client.zadd(f"as:{{dq{shard}}}:due", {mid: due})
            client.delete(key)
        elif re.search(r":m\d+$", key):
            for mid, body in client.hgetall(key).items():
                shard, bucket = int(mid[16:20], 16) % 16, int(mid[20:23], 16) % 1024
                client.hset(f"as:{{dq{shard}}}:m{bucket}", mid, body)
            client.delete(key)
    client.delete("as:{g}:partitions", "as:{g}:hints", "as:{g}:wake")


def test_a_start_on_the_old_layout_is_refused_and_migrate_moves_everything(
    redis_url: str,
) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors, max_attempts=1)
    for i in range(30):
        system.send(counter.ref(f"c{i}"), Add(n=1), idempotency_key="first")
    system.send(logger.ref("bad"), Boom())
    system.run_until_idle()  # states at rest, one dead letter
    for i in range(30):
        system.send(counter.ref(f"c{i}"), Add(n=10))  # in mailboxes, ready
    later = [system.send(counter.ref(f"d{i}"), Add(n=5), delay=0.3) for i in range(10)]
    system.close()
    client = redis.Redis.from_url(redis_url)
    to_old_layout(client)
    assert client.exists("as:ready", "as:{counter/c0}:state", "as:{counter/c0}:mb") == 3

    again = ActorSystem.from_url(redis_url, actors=actors)
    with pytest.raises(ConfigError, match="actor-system migrate"):
        again.run_until_idle()
    again.close()
    assert client.exists("as:{g}:partitions") == 0  # nothing written by the refused start

    done = CliRunner().invoke(main, ["--url", redis_url, "--json", "migrate"])
    assert done.exit_code == 0, done.output
    moved = json.loads(done.output)
    assert moved["migrated"] is True
    assert moved["deferred"] == 10
    assert moved["ready"] >= 30
    assert client.exists("as:ready", "as:{counter/c0}:state") == 0

    after = ActorSystem.from_url(redis_url, actors=actors, max_attempts=1)
    after.run_until_idle()
    assert [after.state(counter.ref(f"c{i}")).count for i in range(30)] == [11] * 30
    # the processed ids came along: a late copy of the first message is dropped
    after.send(counter.ref("c0"), Add(n=1), idempotency_key="first")
    after.run_until_idle()
    assert after.state(counter.ref("c0")).count == 11
    assert {d.id for d in after.deferred()} == set(later)
    after.clock.sleep(0.35)
    after.run_until_idle()
    assert [after.state(counter.ref(f"d{i}")).count for i in range(10)] == [5] * 10
    assert [d.actor for d in after.dead_letters()] == ["logger/bad"]
    after.close()
    again = CliRunner().invoke(main, ["--url", redis_url, "--json", "migrate"])
    assert json.loads(again.output)["migrated"] is False
