"""The DeadLetters port's contract: a commit's ``Dead`` outcome stores the letter's record
(newest first, counted by ``dead_letter_count``), which ``DeadLetter.from_record`` reads back
exactly and which records the id as processed; ``redrive`` moves that exact record back to
its actor's mailbox to run again (once); ``remove_dead_letter`` deletes it (once), on every
store."""

from __future__ import annotations

from dataclasses import replace

from actor_system.envelope import Outgoing
from actor_system.ports import DONE, Dead, DeadLetter
from tests.ports.harness import LEASE_MS, Ports, attempts, ids


def bury(ports: Ports, actor_id: str, reason: str = "failed 3 times") -> DeadLetter:
    """Push a message to ``counter/<actor_id>`` and dead-letter it in a turn; the letter."""
    item = ports.message(actor_id)
    ports.push(item)
    claim = ports.begin(item.target, "undertaker")
    assert claim is not None
    letter = DeadLetter(
        item.id,
        item.target,
        reason,
        3,
        ports.now_ms(),
        "Traceback ... RuntimeError: third",
        item.entry,
        first_error="Traceback ... RuntimeError: first",
    )
    assert ports.commit(claim, "undertaker", [Dead(letter)]) == 0
    return letter


def test_dead_stores_a_record_that_round_trips(ports: Ports) -> None:
    assert ports.backend.dead_letters(10) == []
    assert ports.backend.dead_letter_count() == 0
    letter = bury(ports, "a")
    [record] = ports.backend.dead_letters(10)
    assert record == letter.encode()
    assert DeadLetter.from_record(record) == replace(letter, record=record)
    assert ports.backend.dead_letter_count() == 1


def test_dead_letters_come_newest_first_up_to_the_limit(ports: Ports) -> None:
    first = bury(ports, "a", "first")
    second = bury(ports, "b", "second")
    third = bury(ports, "c", "third")
    assert ports.backend.dead_letters(10) == [third.encode(), second.encode(), first.encode()]
    assert ports.backend.dead_letters(2) == [third.encode(), second.encode()]
    assert ports.backend.dead_letter_count() == 3


def test_a_dead_lettered_id_counts_as_processed(ports: Ports) -> None:
    letter = bury(ports, "a")
    copy = Outgoing(letter.id, letter.actor, letter.entry, None)
    assert ports.push(copy) == 0
    assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == ([], 0)


def test_dead_takes_the_entry_out_of_the_mailbox(ports: Ports) -> None:
    bury(ports, "a")
    after = ports.message("a", 2)
    ports.push(after)
    claim = ports.begin("counter/a", "t")
    assert ids(claim) == [after.id]  # not the dead letter's


def test_redrive_puts_the_message_back_to_run_again(ports: Ports) -> None:
    letter = bury(ports, "a")
    [record] = ports.backend.dead_letters(10)
    now = ports.now_ms()
    assert ports.backend.redrive(record, letter.actor, letter.id, letter.entry, now) is True
    assert ports.backend.dead_letter_count() == 0
    assert ports.backend.dead_letters(10) == []
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 0)
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert claim.entries == [(letter.entry, 0)]  # its id and attempts are forgotten
    assert claim.duplicates == 0
    assert ports.commit(claim, "t", [DONE]) == 0


def test_redrive_moves_a_record_once(ports: Ports) -> None:
    letter = bury(ports, "a")
    record = letter.encode()
    now = ports.now_ms()
    assert ports.backend.redrive(record, letter.actor, letter.id, letter.entry, now) is True
    assert ports.backend.redrive(record, letter.actor, letter.id, letter.entry, now) is False
    assert attempts(ports.begin("counter/a", "t")) == [0]  # one copy in the mailbox


def test_redrive_of_an_unknown_record_does_nothing(ports: Ports) -> None:
    letter = bury(ports, "a")
    other = replace(letter, reason="another reason").encode()
    now = ports.now_ms()
    assert ports.backend.redrive(other, letter.actor, letter.id, letter.entry, now) is False
    assert ports.backend.dead_letter_count() == 1
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)


def test_remove_dead_letter_deletes_it_once(ports: Ports) -> None:
    kept = bury(ports, "a", "kept")
    gone = bury(ports, "b", "gone")
    assert ports.backend.remove_dead_letter(gone.encode()) is True
    assert ports.backend.remove_dead_letter(gone.encode()) is False
    assert ports.backend.dead_letters(10) == [kept.encode()]
    assert ports.backend.dead_letter_count() == 1
    now = ports.now_ms()
    assert ports.backend.redrive(gone.encode(), gone.actor, gone.id, gone.entry, now) is False
