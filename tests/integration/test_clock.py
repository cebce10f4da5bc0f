"""One time authority: Redis TIME. A worker whose wall clock is wrong is never early and
never takes a live lease."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
import redis

from actor_system import ActorSystem
from actor_system.adapters.redis.clock import RedisClock
from actor_system.ports import KEEP, Commit
from tests.actors import Note, Slow, actors, logger, probe
from tests.integration.workers import worker_args

pytestmark = pytest.mark.integration


def skewed_worker(url: str, skew_s: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLOCK_SKEW_S": str(skew_s)}
    return subprocess.Popen(
        worker_args(url, app="tests.skewed_app"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err.decode(errors="replace")


def test_redis_clock_is_never_ahead_of_the_server_and_ignores_the_local_clock(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(redis_url)
    clock = RedisClock(client, resync_s=0.05)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # a wall clock an hour off
    readings = []
    for _ in range(200):
        before = clock.now()
        sec, usec = client.time()
        server = sec + usec / 1e6
        readings.append(before)
        assert before <= server  # never ahead of the server: never early
        assert server - before < 0.5  # and not far behind it (a busy machine: generous)
    assert readings == sorted(readings)  # never backwards, across re-reads of TIME


def test_a_worker_with_a_fast_clock_delivers_nothing_early(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    ref = logger.ref(f"skew-{uuid.uuid4().hex[:6]}")
    worker = skewed_worker(redis_url, skew_s=5.0)
    try:
        system.send(ref, Note(text="warm-up"))
        deadline = time.monotonic() + 60
        while system.state(ref).log != ["warm-up"]:  # the worker is up and draining
            assert time.monotonic() < deadline, "worker never drained"
            time.sleep(0.02)
        sent = time.monotonic()
        system.send(ref, Note(text="deferred"), delay=1.0)
        while "deferred" not in system.state(ref).log:
            assert time.monotonic() < deadline, "deferred message never delivered"
            time.sleep(0.005)
        waited = time.monotonic() - sent
    finally:
        err = stop(worker)
    # A worker trusting its own clock (5 s ahead) delivers the 1 s message at once.
    assert waited >= 1.0, f"delivered {1.0 - waited:.3f}s early\n{err}"


def test_a_worker_with_a_fast_clock_does_not_take_a_live_lease(redis_url: str, tmp_path) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    ref = probe.ref(f"lease-{uuid.uuid4().hex[:6]}")
    # This process holds the actor's lease (30 s) as a turn in progress would.
    holder = system.backend
    now_ms = int(system.clock.now() * 1000)
    [claim] = holder.begin([ref.key], "held-by-test", 30_000, 1, now_ms)
    assert claim is not None
    marker = tmp_path / "ran"
    system.send(ref, Slow(path=str(marker), seconds=0))
    worker = skewed_worker(redis_url, skew_s=120.0)  # its clock says the lease is long over
    try:
        other = logger.ref(f"lease-other-{uuid.uuid4().hex[:6]}")
        system.send(other, Note(text="proof of life"))
        deadline = time.monotonic() + 60
        while system.state(other).log != ["proof of life"]:
            assert time.monotonic() < deadline, "worker never drained"
            time.sleep(0.02)
        # The worker has polled (it drained the other actor) and must leave ours alone.
        for _ in range(50):
            assert not marker.exists(), "the worker took a live lease"
            time.sleep(0.02)
        [version] = holder.commit(
            [Commit(ref.key, "held-by-test", claim.fence, None, [KEEP] * len(claim.entries))],
            int(system.clock.now() * 1000),
        )
        assert version is not None
        while system.state(ref).count != 1:  # released: the worker takes it now
            assert time.monotonic() < deadline, "never processed after release"
            time.sleep(0.02)
    finally:
        stop(worker)
    assert marker.exists()


def test_the_default_clock_of_a_redis_system_is_the_servers(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    assert isinstance(system.clock, RedisClock)
    local = ActorSystem.from_url("fakeredis://", actors=actors)
    assert not isinstance(local.clock, RedisClock)  # fakeredis: this process's clock


def test_redis_clock_survives_a_failed_first_reading_and_concurrent_first_calls(
    redis_url: str,
) -> None:
    import threading

    from actor_system import BackendError

    down = RedisClock(redis.Redis(port=1, socket_connect_timeout=0.2))
    for _ in range(2):  # each call tries again, each fails clearly
        with pytest.raises(BackendError, match="Redis TIME failed"):
            down.now()
    clock = RedisClock(redis.Redis.from_url(redis_url))
    got: list[object] = []

    def read() -> None:
        try:
            got.append(clock.now())
        except Exception as e:  # an AssertionError here was the defect
            got.append(e)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(x, float) for x in got), got
