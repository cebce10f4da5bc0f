"""The TurnStore port's contract: ``begin`` takes an actor's lease (None while another token
holds it, the same claim again for the same token) and claims a batch in mailbox order;
``commit`` applies each outcome (DONE recorded for dedup, KEEP and Failed back to the head in
order, Failed counting attempts and keeping the first error, WITHDRAW re-sent through the
outbox), writes state, outbox, cancels and replies only while the lease is ours, and answers
a commit run again with the same version; ``renew`` extends only our own lease; an expired
lease lets another token take over the dead holder's claim; ``load_state``, ``reply`` and
``wait_reply`` read what commits wrote, on every store."""

from __future__ import annotations

from actor_system.envelope import new_id
from actor_system.ports import DONE, KEEP, WITHDRAW, Commit, Failed
from tests.actors import Add, counter
from tests.ports.harness import LEASE_MS, Ports, attempts, ids

# -- leases -------------------------------------------------------------------------------


def test_begin_takes_the_lease_and_another_token_gets_none(ports: Ports) -> None:
    ports.push(ports.message("a"))
    assert ports.begin("counter/a", "holder") is not None
    ports.advance_ms(LEASE_MS - 1)
    assert ports.begin("counter/a", "other") is None


def test_a_refused_begin_leaves_the_holders_turn_alone(ports: Ports) -> None:
    ports.push(ports.message("a"))
    claim = ports.begin("counter/a", "holder")
    assert claim is not None
    assert ports.begin("counter/a", "other") is None
    assert ports.commit(claim, "holder", [DONE], state=b"mine") == 1
    assert ports.backend.load_state("counter/a") == (b"mine", 1)


def test_begin_run_again_with_the_same_token_returns_the_same_claim(ports: Ports) -> None:
    """A begin whose answer was lost, run again, gets the claim back, not a second batch."""
    m1, m2, m3 = (ports.message("a", n) for n in range(3))
    ports.push(m1, m2, m3)
    first = ports.begin("counter/a", "holder", batch=2)
    again = ports.begin("counter/a", "holder", batch=2)
    assert first is not None
    assert again == first
    assert ids(again) == [m1.id, m2.id]
    assert ports.commit(again, "holder", [DONE, DONE], state=b"after a lost answer") == 1
    assert ports.backend.load_state("counter/a") == (b"after a lost answer", 1)


def test_begin_claims_up_to_batch_in_mailbox_order(ports: Ports) -> None:
    m1, m2, m3 = (ports.message("a", n) for n in range(3))
    ports.push(m1, m2, m3)
    claim = ports.begin("counter/a", "t1", batch=2)
    assert claim is not None
    assert claim.entries == [(m1.entry, 0), (m2.entry, 0)]
    assert (claim.actor, claim.state, claim.version, claim.recovered, claim.duplicates) == (
        "counter/a",
        None,
        0,
        0,
        0,
    )
    assert claim.first_errors == {}
    assert ports.commit(claim, "t1", [DONE, DONE]) == 0
    assert ids(ports.begin("counter/a", "t2")) == [m3.id]


def test_begin_on_an_empty_mailbox_claims_nothing(ports: Ports) -> None:
    claim = ports.begin("counter/nobody", "t")
    assert claim is not None
    assert claim.entries == []
    assert ports.begin("counter/nobody", "other") is None  # the lease is still taken


def test_renew_extends_our_lease_only(ports: Ports) -> None:
    ports.push(ports.message("a"))
    t0 = ports.now_ms()
    assert ports.begin("counter/a", "holder") is not None
    now = ports.advance_ms(800)
    assert ports.backend.renew("counter/a", "holder", LEASE_MS, now) is True
    assert ports.backend.renew("counter/a", "other", LEASE_MS, now) is False
    assert ports.backend.lease_expiry_ms() == t0 + 800 + LEASE_MS
    ports.advance_ms(LEASE_MS - 1)  # past the first expiry, within the renewed one
    assert ports.begin("counter/a", "other") is None
    ports.advance_ms(1)
    assert ports.begin("counter/a", "other") is not None


def test_renew_fails_once_the_lease_is_taken_over(ports: Ports) -> None:
    ports.push(ports.message("a"))
    assert ports.begin("counter/a", "dead") is not None
    now = ports.advance_ms(LEASE_MS)
    assert ports.begin("counter/a", "next") is not None
    assert ports.backend.renew("counter/a", "dead", LEASE_MS, now) is False
    assert ports.backend.renew("counter/a", "next", LEASE_MS, now) is True


def test_renew_fails_after_the_commit_released_the_lease(ports: Ports) -> None:
    ports.push(ports.message("a"))
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert ports.commit(claim, "t", [DONE]) == 0
    assert ports.backend.renew("counter/a", "t", LEASE_MS, ports.now_ms()) is False


def test_an_expired_lease_hands_the_dead_holders_claim_to_the_next_token(
    ports: Ports,
) -> None:
    m1, m2, m3 = (ports.message("a", n) for n in range(3))
    ports.push(m1, m2, m3)
    dead = ports.begin("counter/a", "dead", batch=2)
    assert dead is not None
    ports.advance_ms(LEASE_MS)
    claim = ports.begin("counter/a", "next")
    assert claim is not None
    assert claim.recovered == 2
    assert ids(claim) == [m1.id, m2.id, m3.id]  # back at the head, in order
    assert attempts(claim) == [1, 1, 0]  # the dead holder's try counts
    assert claim.fence > dead.fence
    assert ports.commit(claim, "next", [DONE, DONE, DONE]) == 0
    assert ports.commit(dead, "dead", [DONE, DONE]) is None


def test_an_expired_lease_makes_the_actor_ready_for_poll(ports: Ports) -> None:
    ports.push(ports.message("a"))
    assert ports.begin("counter/a", "dead") is not None
    now = ports.advance_ms(LEASE_MS - 1)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
    now = ports.advance_ms(1)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 0)


# -- commit -------------------------------------------------------------------------------


def test_done_records_the_id_so_a_copy_pushed_again_is_dropped(ports: Ports) -> None:
    item = ports.message("a")
    ports.push(item)
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert ports.commit(claim, "t", [DONE]) == 0
    assert ports.push(item) == 0
    assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == ([], 0)
    again = ports.begin("counter/a", "t2")
    assert again is not None
    assert (again.entries, again.duplicates) == ([], 0)  # dropped at push, never queued


def test_a_copy_already_queued_is_dropped_at_claim(ports: Ports) -> None:
    item = ports.message("a")
    assert ports.push(item) == 1
    assert ports.push(item) == 1  # not processed yet: both copies are queued
    claim = ports.begin("counter/a", "t", batch=1)
    assert claim is not None
    assert ports.commit(claim, "t", [DONE]) == 0
    again = ports.begin("counter/a", "t2")
    assert again is not None
    assert again.entries == []
    assert again.duplicates == 1


def test_keep_puts_the_entries_back_at_the_head_in_order(ports: Ports) -> None:
    m1, m2, m3 = (ports.message("a", n) for n in range(3))
    ports.push(m1, m2, m3)
    claim = ports.begin("counter/a", "t1", batch=2)
    assert claim is not None
    assert ports.commit(claim, "t1", [KEEP, KEEP]) == 0
    again = ports.begin("counter/a", "t2")
    assert again is not None
    assert again.entries == [(m1.entry, 0), (m2.entry, 0), (m3.entry, 0)]


def test_done_then_keep_leaves_the_kept_entry_first(ports: Ports) -> None:
    m1, m2, m3 = (ports.message("a", n) for n in range(3))
    ports.push(m1, m2, m3)
    claim = ports.begin("counter/a", "t1", batch=2)
    assert claim is not None
    assert ports.commit(claim, "t1", [DONE, KEEP]) == 0
    assert ids(ports.begin("counter/a", "t2")) == [m2.id, m3.id]


def test_failed_counts_attempts_and_keeps_the_first_error(ports: Ports) -> None:
    m1, m2 = ports.message("a", 1), ports.message("a", 2)
    ports.push(m1, m2)
    claim = ports.begin("counter/a", "t1", batch=1)
    assert claim is not None
    assert ports.commit(claim, "t1", [Failed("first failure")]) == 0
    claim = ports.begin("counter/a", "t2")
    assert claim is not None
    assert claim.entries == [(m1.entry, 1), (m2.entry, 0)]  # back at the head
    assert claim.first_errors == {m1.id: "first failure"}
    assert ports.commit(claim, "t2", [Failed("second failure"), KEEP]) == 0
    claim = ports.begin("counter/a", "t3")
    assert claim is not None
    assert attempts(claim) == [2, 0]
    assert claim.first_errors == {m1.id: "first failure"}


def test_done_after_failures_forgets_the_attempts(ports: Ports) -> None:
    item = ports.message("a")
    ports.push(item)
    claim = ports.begin("counter/a", "t1")
    assert claim is not None
    ports.commit(claim, "t1", [Failed("boom")])
    claim = ports.begin("counter/a", "t2")
    assert claim is not None
    assert ports.commit(claim, "t2", [DONE]) == 0
    assert ports.push(item) == 0  # recorded as processed


def test_pause_keeps_the_actor_from_being_taken_before_its_time(ports: Ports) -> None:
    ports.push(ports.message("a"))
    t0 = ports.now_ms()
    claim = ports.begin("counter/a", "t1")
    assert claim is not None
    assert ports.commit(claim, "t1", [Failed("boom")], pause_ms=t0 + 5_000) == 0
    assert ports.backend.next_due_ms() == t0 + 5_000
    now = ports.advance_ms(4_999)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
    assert ports.begin("counter/a", "t2") is None
    now = ports.advance_ms(1)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 0)
    assert attempts(ports.begin("counter/a", "t2")) == [1]


def test_withdraw_drops_the_entry_for_the_copy_sent_through_the_outbox(ports: Ports) -> None:
    item = ports.message("a")
    ports.push(item)
    claim = ports.begin("counter/a", "t1")
    assert claim is not None
    resent = ports.system.registry.prepare(
        counter.ref("a"), Add(n=1), now_s=ports.clock.now(), delay=5, message_id=item.id, attempt=2
    )
    assert ports.commit(claim, "t1", [WITHDRAW], outbox=[resent]) == 0
    assert ports.backend.pending() == 1
    claim = ports.begin("counter/a", "t2")
    assert claim is not None
    assert claim.entries == []  # gone from the mailbox until the copy is due
    assert ports.commit(claim, "t2", []) == 0
    now = ports.advance_ms(5_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == (["counter/a"], 1)
    claim = ports.begin("counter/a", "t3")
    assert claim is not None
    assert claim.entries == [(resent.entry, 0)]  # the attempt travels in the envelope


def test_commit_delivers_its_outbox(ports: Ports) -> None:
    ports.push(ports.message("a"))
    claim = ports.begin("counter/a", "t1")
    assert claim is not None
    sent = ports.message("b", 7)
    assert ports.commit(claim, "t1", [DONE], outbox=[sent]) == 0
    assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == (["counter/b"], 0)
    claim = ports.begin("counter/b", "t2")
    assert claim is not None
    assert claim.entries == [(sent.entry, 0)]


def test_commit_cancels_a_deferred_message(ports: Ports) -> None:
    later = ports.message("b", delay=10)
    ports.push(ports.message("a"), later)
    claim = ports.begin("counter/a", "t1")
    assert claim is not None
    assert ports.commit(claim, "t1", [DONE], cancels=[later.id]) == 0
    now = ports.advance_ms(10_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)
    now = ports.advance_ms(10_000)
    assert ports.backend.poll(now, 10, LEASE_MS) == ([], 0)


def test_commit_with_a_lost_lease_writes_nothing(ports: Ports) -> None:
    item = ports.message("a")
    ports.push(item)
    stale = ports.begin("counter/a", "stale")
    assert stale is not None
    ports.advance_ms(LEASE_MS)
    claim = ports.begin("counter/a", "next")
    assert claim is not None
    sent = ports.message("b")
    version = ports.commit(
        stale, "stale", [DONE], state=b"stale", outbox=[sent], replies=[(item.id, b"stale")]
    )
    assert version is None
    assert ports.backend.reply(item.id) is None
    assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == ([], 0)  # nothing sent
    if ports.store == "s3":
        # As documented for S3 state: the object is the commit point, written before Redis
        # refused the lease. It is now ahead of Redis, and the next holder's read finds
        # the message processed and what the late commit sent to deliver again.
        assert ports.backend.load_state("counter/a") == (b"stale", 1)
        again = ports.begin("counter/a", "next")
        assert again is not None
        assert (again.entries, again.state, again.duplicates) == ([], b"stale", 1)
        assert ports.commit(again, "next", []) == 1  # Redis acknowledges: the sends go out
        assert ports.backend.poll(ports.now_ms(), 10, LEASE_MS) == (["counter/b"], 0)
        return
    assert ports.backend.load_state("counter/a") == (None, 0)
    assert ids(ports.begin("counter/a", "next")) == [item.id]  # still the holder's to run


def test_commit_under_a_token_that_never_began_writes_nothing(ports: Ports) -> None:
    item = ports.message("a")
    ports.push(item)
    claim = ports.begin("counter/a", "holder")
    assert claim is not None
    assert ports.commit(claim, "impostor", [DONE], state=b"x") is None
    assert ports.backend.load_state("counter/a") == (None, 0)
    assert ports.commit(claim, "holder", [DONE], state=b"mine") == 1
    assert ports.backend.load_state("counter/a") == (b"mine", 1)


def test_commit_run_again_answers_the_same_version_and_writes_nothing(ports: Ports) -> None:
    """A commit whose answer was lost, run again, finds it was applied."""
    ports.push(ports.message("a"))
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert ports.commit(claim, "t", [DONE], state=b"one") == 1
    assert ports.commit(claim, "t", [DONE], state=b"one") == 1
    assert ports.backend.load_state("counter/a") == (b"one", 1)


def test_holders_of_different_actors_commit_independently(ports: Ports) -> None:
    """Two turns under their own tokens, interleaved on one backend, each write their
    actor's state."""
    ports.push(ports.message("a"), ports.message("b"))
    a = ports.begin("counter/a", "ta")
    b = ports.begin("counter/b", "tb")
    assert a is not None
    assert b is not None
    assert ports.commit(a, "ta", [DONE], state=b"A") == 1
    assert ports.commit(b, "tb", [DONE], state=b"B") == 1
    assert ports.backend.load_state("counter/a") == (b"A", 1)
    assert ports.backend.load_state("counter/b") == (b"B", 1)


def test_commits_of_several_actors_in_one_call(ports: Ports) -> None:
    ports.push(ports.message("a"), ports.message("b"))
    claims = ports.backend.begin(["counter/a", "counter/b"], "t", LEASE_MS, 10, ports.now_ms())
    assert [c is not None for c in claims] == [True, True]
    commits = [
        Commit(c.actor, "t", c.fence, c.actor.encode(), [DONE]) for c in claims if c is not None
    ]
    assert ports.backend.commit(commits, ports.now_ms()) == [1, 1]
    assert ports.backend.load_state("counter/a") == (b"counter/a", 1)
    assert ports.backend.load_state("counter/b") == (b"counter/b", 1)


# -- state --------------------------------------------------------------------------------


def test_load_state_returns_what_commits_wrote_and_the_version_grows(ports: Ports) -> None:
    assert ports.backend.load_state("counter/a") == (None, 0)
    ports.push(ports.message("a", 1), ports.message("a", 2), ports.message("a", 3))
    claim = ports.begin("counter/a", "t1", batch=1)
    assert claim is not None
    assert ports.commit(claim, "t1", [DONE], state=b"\x01state one") == 1
    assert ports.backend.load_state("counter/a") == (b"\x01state one", 1)
    claim = ports.begin("counter/a", "t2", batch=1)
    assert claim is not None
    assert (claim.state, claim.version) == (b"\x01state one", 1)
    assert ports.commit(claim, "t2", [DONE], state=b"\x02state two") == 2
    assert ports.backend.load_state("counter/a") == (b"\x02state two", 2)


def test_a_commit_without_state_leaves_it_unchanged(ports: Ports) -> None:
    ports.push(ports.message("a", 1), ports.message("a", 2))
    claim = ports.begin("counter/a", "t1", batch=1)
    assert claim is not None
    assert ports.commit(claim, "t1", [DONE], state=b"kept") == 1
    claim = ports.begin("counter/a", "t2", batch=1)
    assert claim is not None
    assert ports.commit(claim, "t2", [DONE]) == 1
    assert ports.backend.load_state("counter/a") == (b"kept", 1)


def test_a_commit_that_ends_the_actor_drops_its_state(ports: Ports) -> None:
    ports.push(ports.message("a", 1), ports.message("a", 2))
    claim = ports.begin("counter/a", "t1", batch=1)
    assert claim is not None
    assert ports.commit(claim, "t1", [DONE], state=b"alive") == 1
    claim = ports.begin("counter/a", "t2", batch=1)
    assert claim is not None
    assert ports.commit(claim, "t2", [DONE], delete=True) is not None
    state, _ = ports.backend.load_state("counter/a")
    assert state is None


# -- replies ------------------------------------------------------------------------------


def test_a_commit_with_replies_makes_reply_return_the_record(ports: Ports) -> None:
    item = ports.message("a")
    ports.push(item)
    claim = ports.begin("counter/a", "t")
    assert claim is not None
    assert ports.backend.reply(item.id) is None
    assert ports.commit(claim, "t", [DONE], replies=[(item.id, b'{"ok":1}')]) == 0
    assert ports.backend.reply(item.id) == b'{"ok":1}'
    assert ports.backend.wait_reply(item.id, 1.0) == b'{"ok":1}'
    assert ports.backend.reply(item.id) == b'{"ok":1}'  # reading leaves it for others


def test_the_first_reply_of_an_id_stays(ports: Ports) -> None:
    ports.push(ports.message("a", 1), ports.message("a", 2))
    mid = new_id("counter/a")  # a reply is kept in the partition of its message's target
    claim = ports.begin("counter/a", "t1", batch=1)
    assert claim is not None
    ports.commit(claim, "t1", [DONE], replies=[(mid, b"first")])
    claim = ports.begin("counter/a", "t2", batch=1)
    assert claim is not None
    ports.commit(claim, "t2", [DONE], replies=[(mid, b"second")])
    assert ports.backend.reply(mid) == b"first"


def test_wait_reply_for_an_unknown_id_times_out_with_none(ports: Ports) -> None:
    assert ports.backend.wait_reply("f" * 32, 0.05) is None


def test_a_batch_of_copies_is_followed_by_the_next(ports: Ports) -> None:
    """Copies of a processed message at the head of the mailbox do not make a turn claim
    nothing while a new message waits behind them."""
    first, new = ports.message("a", 1), ports.message("a", 2)
    ports.push(first, first, first)  # three copies before any is processed
    claim = ports.begin("counter/a", "t1", batch=1)
    assert ids(claim) == [first.id]
    assert claim is not None
    assert ports.commit(claim, "t1", [DONE]) is not None
    ports.push(new)
    again = ports.begin("counter/a", "t2", batch=1)
    assert ids(again) == [new.id]
    assert again is not None
    assert again.duplicates == 2
