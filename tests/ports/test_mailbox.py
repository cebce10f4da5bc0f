"""The Mailbox port's contract: ``push`` delivers immediate messages to per-actor FIFO
mailboxes and marks the actor ready; ``poll`` pops ready actors (at most ``max_actors``),
reserves them for ``lease_ms`` and gives a retried round (same token) the same actors;
``rest``, ``claim_drain``, ``drop_wake``, ``lease_expiry_ms`` and ``wait_ready`` report and
claim the drain that runs, on every store."""

from __future__ import annotations

from actor_system.ports import DONE
from tests.ports.harness import LEASE_MS, Ports, attempts, ids


def test_push_delivers_and_poll_returns_the_actor_ready(ports: Ports) -> None:
    item = ports.message("a")
    assert ports.push(item) == 1
    assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == (["counter/a"], 0)
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert claim.entries == [(item.entry, 0)]


def test_poll_pops_a_ready_actor_once(ports: Ports) -> None:
    ports.push(ports.message("a"), ports.message("a"))
    now = ports.now_ms()
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 0)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)


def test_poll_pops_at_most_max_actors(ports: Ports) -> None:
    ports.push(ports.message("a"), ports.message("b"), ports.message("c"))
    now = ports.now_ms()
    first, _ = ports.backend.poll(now, 2, LEASE_MS)
    second, _ = ports.backend.poll(now, 2, LEASE_MS)
    assert len(first) == 2
    assert len(second) == 1
    assert sorted(first + second) == ["counter/a", "counter/b", "counter/c"]


def test_poll_with_nothing_ready_returns_nothing(ports: Ports) -> None:
    assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == ([], 0)


def test_mailbox_is_fifo_across_pushes(ports: Ports) -> None:
    m1, m2, m3, m4 = (ports.message("a", n) for n in range(4))
    assert ports.push(m1) == 1
    assert ports.push(m2, m3) == 2
    assert ports.push(m4) == 1
    claim = ports.begin("counter/a", "t")
    assert ids(claim) == [m1.id, m2.id, m3.id, m4.id]
    assert attempts(claim) == [0, 0, 0, 0]


def test_push_counts_every_accepted_message(ports: Ports) -> None:
    items = [ports.message(f"a{n % 3}", n) for n in range(7)]
    assert ports.push(*items) == 7


def test_poll_run_again_under_its_token_returns_the_same_actors(ports: Ports) -> None:
    """A poll whose answer was lost, run again with the round's token, gets the same actors;
    another round's token does not."""
    ports.push(ports.message("a"))
    now = ports.now_ms()
    assert ports.backend.poll(now, 10, LEASE_MS, token="round-1") == (["counter/a"], 0)
    assert ports.backend.poll(now, 10, LEASE_MS, token="round-1") == (["counter/a"], 0)
    assert ports.backend.poll(now, 10, LEASE_MS, token="round-2") == ([], 0)


def test_an_actor_popped_but_never_begun_is_ready_again_after_its_reservation(
    ports: Ports,
) -> None:
    ports.push(ports.message("a"))
    assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == (["counter/a"], 0)
    now = ports.advance_ms(LEASE_MS - 1)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)  # still reserved
    now = ports.advance_ms(1)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 0)


def test_rest_is_refused_while_an_actor_is_ready(ports: Ports) -> None:
    assert ports.backend.rest() is True
    ports.push(ports.message("a"))
    assert ports.backend.rest() is False
    ports.backend.poll(ports.now_ms(), 10, LEASE_MS)
    assert ports.backend.rest() is True


def test_claim_drain_is_granted_once_until_dropped(ports: Ports) -> None:
    assert ports.backend.claim_drain(60_000) is False  # nothing ready: no drain needed
    ports.push(ports.message("a"))
    assert ports.backend.claim_drain(60_000) is True
    assert ports.backend.claim_drain(60_000) is False  # one is on its way
    ports.backend.drop_wake()
    assert ports.backend.claim_drain(60_000) is True


def test_push_with_wake_ms_claims_the_drain_once(ports: Ports) -> None:
    now = ports.now_ms()
    assert ports.backend.push([ports.message("a")], now, 60_000) == (1, True)
    assert ports.backend.push([ports.message("b")], now, 60_000) == (1, False)
    assert ports.backend.claim_drain(60_000) is False


def test_rest_lets_the_next_push_claim_a_drain(ports: Ports) -> None:
    now = ports.now_ms()
    assert ports.backend.push([ports.message("a")], now, 60_000) == (1, True)
    ports.backend.poll(now, 10, LEASE_MS)
    assert ports.backend.rest() is True  # the drain ends: nothing ready
    assert ports.backend.push([ports.message("b")], now, 60_000) == (1, True)


def test_a_deferred_push_claims_no_drain(ports: Ports) -> None:
    """Only ready actors need a drain: a message due later makes none ready."""
    now = ports.now_ms()
    assert ports.backend.push([ports.message("a", delay=10)], now, 60_000) == (1, False)
    assert ports.backend.rest() is True


def test_lease_expiry_ms_reports_the_earliest_lease(ports: Ports) -> None:
    assert ports.backend.lease_expiry_ms() is None
    ports.push(ports.message("a"), ports.message("b"))
    t0 = ports.now_ms()
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert ports.backend.lease_expiry_ms() == t0 + LEASE_MS
    ports.advance_ms(100)
    assert ports.begin("counter/b", "u") is not None
    assert ports.backend.lease_expiry_ms() == t0 + LEASE_MS
    assert ports.commit(claim, "t", [DONE]) == 0
    assert ports.backend.lease_expiry_ms() == t0 + 100 + LEASE_MS


def test_wait_ready_without_work_is_not_woken(ports: Ports) -> None:
    assert ports.backend.wait_ready(0.05) is False
