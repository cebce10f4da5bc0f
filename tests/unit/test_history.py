"""The per-minute history behind the dashboard's charts."""

from __future__ import annotations

from actor_system import ActorSystem, ManualClock
from actor_system.history import History, bucket, bucket_ms, percentile
from actor_system.metrics import TurnMetrics
from tests.actors import Add, Boom, actors, counter, logger


def test_lateness_buckets_double_and_percentiles_read_their_upper_bounds() -> None:
    assert [bucket(s) for s in (-0.5, 0.0, 0.0004, 0.001, 0.0015, 0.003, 1.0, 10**6)] == [
        0,
        0,
        1,
        1,
        2,
        3,
        11,
        21,
    ]
    assert [bucket_ms(i) for i in (0, 1, 2, 11)] == [0.0, 1.0, 2.0, 1024.0]
    counts = {1: 98, 5: 1, 11: 1}  # 98 within 1 ms, one within 16 ms, one within 1024 ms
    assert percentile(counts, 0.5) == 1.0
    assert percentile(counts, 0.99) == 16.0
    assert percentile(counts, 1.0) == 1024.0
    assert percentile({}, 0.5) is None


def test_turns_are_summed_in_memory_per_minute() -> None:
    history = History()
    turn = TurnMetrics("counter", "counter/a", 3, 0.001, 1, 0, (0.002,))
    history.record(turn, 120.5)
    history.record(turn, 179.9)
    history.record(TurnMetrics("counter", "counter/a", 1, 0.001, 0, 1, ()), 180.0)
    assert history.take() == {
        120_000: {"t": 2, "m": 6, "r": 2, "b2": 2},
        180_000: {"t": 1, "m": 1, "d": 1},
    }
    assert history.take() == {}


def test_a_drain_writes_its_sums_and_the_store_adds_up_every_process() -> None:
    clock = ManualClock()
    system = ActorSystem.from_url("fakeredis://", actors=actors, clock=clock, max_attempts=1)
    other = ActorSystem(system.backend, actors=actors, clock=clock)  # a second process
    for i in range(5):
        system.send(counter.ref(f"a{i}"), Add(n=1))
    system.send(counter.ref("late"), Add(n=1), delay=10)
    system.send(logger.ref("x"), Boom(times=1))
    system.run_until_idle()  # written when the drain ends
    clock.advance(10.002)
    other.run_until_idle()
    minute = int(clock.now() // 60) * 60_000
    [row] = system.backend.history(minute, 1)
    assert row["t"] == 7  # seven actors' turns
    assert row["m"] == 6  # six messages processed, one dead-lettered
    assert row["d"] == 1
    assert sum(v for k, v in row.items() if k.startswith("b")) == 1  # one deferred message
    assert system.backend.history(minute - 60_000, 1) == [{}]
    other.close()
    system.close()
