"""The Inspector port's contract: ``stats`` counts ready actors, leases, queued and
in-flight messages (per mailbox too) and dead letters as they are; ``deferred`` lists the
pending deferred messages as (id, actor key, due ms), earliest first, by actor if asked, on
every store."""

from __future__ import annotations

from actor_system.ports import Dead, DeadLetter
from tests.ports.harness import EXTERNAL_DELAY, LEASE_MS, Ports


def test_stats_count_queued_messages_and_ready_actors(ports: Ports) -> None:
    ports.push(ports.message("a", 1), ports.message("a", 2), ports.message("b", 3))
    stats = ports.backend.stats()
    assert stats["ready_actors"] == 2
    assert stats["leases_held"] == 0
    assert stats["mailbox_messages"] == 3
    assert stats["in_flight_messages"] == 0
    assert stats["mailboxes"] == {"counter/a": 2, "counter/b": 1}
    assert stats["dead_letters"] == 0


def test_stats_count_leases_and_in_flight_messages(ports: Ports) -> None:
    ports.push(ports.message("a", 1), ports.message("a", 2), ports.message("b", 3))
    assert ports.begin("counter/a", "t", batch=1) is not None
    stats = ports.backend.stats()
    assert stats["ready_actors"] == 1
    assert stats["leases_held"] == 1
    assert stats["mailbox_messages"] == 2
    assert stats["in_flight_messages"] == 1
    assert stats["mailboxes"] == {"counter/a": 1, "counter/b": 1}


def test_stats_count_dead_letters(ports: Ports) -> None:
    item = ports.message("a")
    ports.push(item)
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    letter = DeadLetter(item.id, item.target, "why", 1, ports.now_ms(), "", item.entry)
    ports.commit(claim, "t", [Dead(letter)])
    stats = ports.backend.stats()
    assert stats["dead_letters"] == 1
    assert stats["mailbox_messages"] == 0
    assert stats["leases_held"] == 0


def test_deferred_lists_pending_messages_earliest_first(ports: Ports) -> None:
    t0 = ports.now_ms()
    late, early = ports.message("a", 1, delay=20), ports.message("b", 2, delay=10)
    ports.push(late, early)
    if ports.store in EXTERNAL_DELAY:
        # As documented: an external delay queue's messages are counted, not listed.
        assert ports.backend.deferred() == []
        assert ports.backend.stats()["deferred_elsewhere"] == 2
        return
    assert ports.backend.deferred() == [
        (early.id, "counter/b", t0 + 10_000, "Add"),
        (late.id, "counter/a", t0 + 20_000, "Add"),
    ]
    assert ports.backend.deferred(limit=1) == [(early.id, "counter/b", t0 + 10_000, "Add")]
    assert ports.backend.deferred(actor="counter/a") == [(late.id, "counter/a", t0 + 20_000, "Add")]


def test_deferred_is_empty_once_delivered_or_cancelled(ports: Ports) -> None:
    delivered, cancelled = ports.message("a", 1, delay=5), ports.message("b", 2, delay=10)
    ports.push(delivered, cancelled)
    assert ports.backend.cancel(cancelled.id) is True
    now = ports.advance_ms(5_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 1)
    assert ports.backend.deferred() == []
