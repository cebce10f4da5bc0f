"""The DelayQueue port's contract: a message pushed with a due time is never delivered before
it and is delivered (promoted by ``poll``, in due order) once it is due; ``pending`` counts
the messages waiting and ``next_due_ms`` says when the first is due; ``cancel`` removes one
not yet delivered (True, and True again when repeated) and answers False for one unknown or
already delivered; ``accept_deferred`` lands bodies coming back from another delay queue
once, not before their time, dead-lettering malformed ones, on every store."""

from __future__ import annotations

import json
from dataclasses import replace

from actor_system.adapters.delay import encode_body
from actor_system.envelope import Outgoing
from actor_system.ports import DONE, DeadLetter
from tests.ports.harness import EXTERNAL_DELAY, LEASE_MS, Ports, ids


def test_a_deferred_message_is_delivered_at_its_due_time_not_before(ports: Ports) -> None:
    t0 = ports.now_ms()
    item = ports.message("a", delay=10)
    assert item.due_ms == t0 + 10_000
    assert ports.push(item) == 1
    assert ports.backend.poll(t0, 10, LEASE_MS) == ([], 0)
    now = ports.advance_ms(9_999)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
    now = ports.advance_ms(1)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 1)
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert claim.entries == [(item.entry, 0)]


def test_due_messages_are_promoted_in_due_order(ports: Ports) -> None:
    late = ports.message("a", 1, delay=20)
    early = ports.message("a", 2, delay=10)
    assert ports.push(late, early) == 2
    now = ports.advance_ms(20_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 2)
    assert ids(ports.begin("counter/a", "t")) == [early.id, late.id]


def test_a_deferred_copy_of_a_processed_message_is_dropped_when_due(ports: Ports) -> None:
    later = ports.message("a", delay=10)
    now_copy = Outgoing(later.id, later.target, later.entry, None)
    assert ports.push(later) == 1
    assert ports.push(now_copy) == 1
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert ports.commit(claim, "t", [DONE]) == 0
    now = ports.advance_ms(10_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)


def test_pending_counts_the_deferred_messages_waiting(ports: Ports) -> None:
    assert ports.backend.pending() == 0
    ports.push(ports.message("a", 1, delay=10), ports.message("b", 2, delay=20))
    ports.push(ports.message("c", 3))  # immediate: not deferred
    assert ports.backend.pending() == 2
    now = ports.advance_ms(10_000)
    ports.backend.poll(now, 10, LEASE_MS)
    assert ports.backend.pending() == 1
    now = ports.advance_ms(10_000)
    ports.backend.poll(now, 10, LEASE_MS)
    assert ports.backend.pending() == 0


def test_a_cancelled_message_is_no_longer_pending(ports: Ports) -> None:
    cancelled, kept = ports.message("a", 1, delay=10), ports.message("b", 2, delay=10)
    ports.push(cancelled, kept)
    assert ports.backend.cancel(cancelled.id) is True
    # As documented: SQS cannot delete a message by id, so a cancelled one counts until it
    # lands at its due time and its tombstone drops it.
    assert ports.backend.pending() == (2 if ports.store == "sqs" else 1)


def test_next_due_ms_reports_the_earliest_due_time(ports: Ports) -> None:
    t0 = ports.now_ms()
    ports.push(ports.message("a", 1, delay=20), ports.message("b", 2, delay=5))
    # As documented: what an external delay queue holds comes back by itself near its due
    # time; only what Redis delivers itself counts here.
    expected = None if ports.store in EXTERNAL_DELAY else t0 + 5_000
    assert ports.backend.next_due_ms() == expected


def test_next_due_ms_is_none_when_nothing_is_deferred(ports: Ports) -> None:
    assert ports.backend.next_due_ms() is None
    ports.push(ports.message("a"))
    assert ports.backend.next_due_ms() is None


def test_next_due_ms_is_none_once_everything_was_delivered(ports: Ports) -> None:
    ports.push(ports.message("a", delay=5))
    now = ports.advance_ms(5_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 1)
    assert ports.backend.next_due_ms() is None


def test_a_cancelled_message_is_never_delivered_and_cancel_repeats_true(ports: Ports) -> None:
    item = ports.message("a", delay=10)
    ports.push(item)
    assert ports.backend.cancel(item.id) is True
    assert ports.backend.cancel(item.id) is True  # a retried cancel gets the same answer
    now = ports.advance_ms(10_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
    now = ports.advance_ms(60_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
    assert ports.backend.pending() == 0
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert claim.entries == []


def test_cancel_leaves_other_deferred_messages(ports: Ports) -> None:
    cancelled, kept = ports.message("a", 1, delay=10), ports.message("a", 2, delay=10)
    ports.push(cancelled, kept)
    assert ports.backend.cancel(cancelled.id) is True
    now = ports.advance_ms(10_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 1)
    assert ids(ports.begin("counter/a", "t")) == [kept.id]


def test_cancel_of_an_unknown_id_answers_false(ports: Ports) -> None:
    # As documented: SQS cannot look a message up, so an id it cannot rule out answers True
    # (the message, if it is there, is dropped when it lands).
    assert ports.backend.cancel(ports.message("a").id) is (ports.store == "sqs")


def test_cancel_after_delivery_answers_false_and_leaves_the_message(ports: Ports) -> None:
    item = ports.message("a", delay=5)
    ports.push(item)
    now = ports.advance_ms(5_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 1)
    assert ports.backend.cancel(item.id) is False
    assert ids(ports.begin("counter/a", "t")) == [item.id]


def test_accept_deferred_lands_a_due_body_in_its_mailbox(ports: Ports) -> None:
    now = ports.now_ms()
    item = replace(ports.message("a"), due_ms=now)  # due now
    assert ports.backend.accept_deferred([encode_body(item)], now) == 1
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 0)
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert claim.entries == [(item.entry, 0)]


def test_accept_deferred_takes_a_decoded_body_too(ports: Ports) -> None:
    now = ports.now_ms()
    item = replace(ports.message("a"), due_ms=now)
    assert ports.backend.accept_deferred([json.loads(encode_body(item))], now) == 1
    assert ids(ports.begin("counter/a", "t")) == [item.id]


def test_accept_deferred_lands_a_copy_once(ports: Ports) -> None:
    now = ports.now_ms()
    item = replace(ports.message("a"), due_ms=now)
    body = encode_body(item)
    assert ports.backend.accept_deferred([body, body], now) == 1
    assert ports.backend.accept_deferred([body], now) == 0
    assert ids(ports.begin("counter/a", "t")) == [item.id]


def test_accept_deferred_holds_a_body_until_its_due_time(ports: Ports) -> None:
    t0 = ports.now_ms()
    item = replace(ports.message("a"), due_ms=t0 + 10_000)
    assert ports.backend.accept_deferred([encode_body(item)], t0) == 0
    assert ports.backend.pending() == 1
    now = ports.advance_ms(9_999)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
    now = ports.advance_ms(1)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 1)
    assert ids(ports.begin("counter/a", "t")) == [item.id]


def test_accept_deferred_dead_letters_a_malformed_body(ports: Ports) -> None:
    now = ports.now_ms()
    assert ports.backend.accept_deferred(["{not json"], now) == 0
    [record] = ports.backend.dead_letters(10)
    letter = DeadLetter.from_record(record)
    assert (letter.id, letter.actor, letter.attempts, letter.at_ms) == ("", "", 0, now)
    assert letter.reason.startswith("delay-queue message is not JSON")
    assert letter.entry == b"{not json"
    assert ports.backend.dead_letter_count() == 1


def test_accept_deferred_skips_wakes_without_a_dead_letter(ports: Ports) -> None:
    now = ports.now_ms()
    assert ports.backend.accept_deferred(['{"actor_system":"wake"}'], now) == 0
    assert ports.backend.dead_letter_count() == 0
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
