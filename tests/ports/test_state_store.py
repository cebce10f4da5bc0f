"""The StateStore port's contract: ``read`` of an actor never written is an empty object;
``write`` creates an object only where there is none (etag None) and replaces one only at the
etag it was read with, raising WriteConflict otherwise and leaving the object as it was;
``read`` gives back what was written (state, version, commits) with the etag of that write;
``remove`` takes an object only at its current etag and never raises; ``actors`` lists the
actor keys written under the store and nothing else; ``check`` passes for a store that exists
and names one that does not. Then ``StateObject`` itself: ``successor`` keeps a commit's sends
one window and its ids two, and ``encode`` / ``decode`` round-trip.

Every adapter runs the same tests against the moto server (S3): a new adapter is one more
entry of ``ADAPTERS``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
import msgpack
import pytest

from actor_system.adapters.aws import AwsError
from actor_system.adapters.s3 import S3StateStore
from actor_system.adapters.s3 import WriteConflict as S3WriteConflict
from actor_system.envelope import Envelope, Outgoing, encode, new_id
from actor_system.errors import DecodeError
from actor_system.ports import FORMAT_VERSION, Retained, StateObject, StateStore, WriteConflict

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.aws import AwsResources

pytestmark = pytest.mark.integration

WINDOW_MS = 1_000  # the window of the successor tests

# The port's members, read off the Protocol itself: a member added to the port is checked on
# every adapter without touching this file.
PORT_MEMBERS = frozenset(
    {n for n in vars(StateStore) if not n.startswith("_")} | set(StateStore.__annotations__)
)


@dataclass(frozen=True)
class Adapter:
    """How to build one StateStore adapter over a test's AWS resources, and what it says."""

    build: Callable[[AwsResources, str], StateStore]  # over the test's resources, a prefix
    missing: Callable[[AwsResources], StateStore]  # over a resource that does not exist
    name: Callable[[AwsResources], str]  # its name, built with the prefix "actors"
    where: Callable[[AwsResources, str], str]  # where an actor's object lives ("actors")
    missing_error: Callable[[AwsResources], str]  # regex of check()'s error for ``missing``
    put_raw: Callable[[AwsResources, str, bytes], None]  # bytes as an actor's object ("actors")


def _s3(aws: AwsResources, prefix: str) -> StateStore:
    # Typed as the port: mypy checks here that S3StateStore satisfies StateStore.
    return S3StateStore(bucket=aws.bucket, prefix=prefix)


def _s3_missing(aws: AwsResources) -> StateStore:
    return S3StateStore(bucket=f"{aws.bucket}-missing", prefix="actors")


def _s3_put_raw(aws: AwsResources, actor: str, raw: bytes) -> None:
    boto3.client("s3").put_object(Bucket=aws.bucket, Key=f"actors/{actor}", Body=raw)


ADAPTERS = {
    "s3": Adapter(
        build=_s3,
        missing=_s3_missing,
        name=lambda aws: f"s3://{aws.bucket}/actors",
        where=lambda aws, actor: f"s3://{aws.bucket}/actors/{actor}",
        missing_error=lambda aws: (
            rf"HeadBucket on s3://{aws.bucket}-missing failed: 404: .*does not exist"
        ),
        put_raw=_s3_put_raw,
    ),
}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Adapter:
    return ADAPTERS[str(request.param)]


@pytest.fixture
def store(adapter: Adapter, aws: AwsResources) -> StateStore:
    return adapter.build(aws, "actors")


def _conforms(store: StateStore) -> StateStore:
    """Accepts only what mypy sees as a StateStore."""
    return store


def message(target: str, n: int, due_ms: int | None = None) -> Outgoing:
    """A message to ``target`` encoded as the runtime encodes it."""
    mid = new_id(target)
    env = Envelope(mid, target, "Add", {"n": n}, 1, 1_767_225_600_000, due_ms)
    return Outgoing(mid, target, encode(env), due_ms)


def commit(version: int, at_ms: int, *, sends: int = 2) -> Retained:
    """A commit that processed two messages and sent ``sends`` (the last one deferred),
    cancelled one and replied to one."""
    done = [new_id("counter/a"), new_id("counter/a")]
    outbox = [
        message("counter/b", n, None if n < sends - 1 else at_ms + 60_000) for n in range(sends)
    ]
    return Retained(
        version,
        at_ms,
        done,
        outbox,
        cancels=[new_id("counter/c")],
        replies=[(done[0], b"\x92\xa2ok\x07")],
    )


def obj(version: int, state: bytes | None = b"\x81\xa5count\x03") -> StateObject:
    """An object at ``version`` holding one commit of that version."""
    return StateObject(state, version, [commit(version, 1_767_225_600_000 + version)])


def now_ms() -> int:
    return int(time.time() * 1000)


# -- the adapter ----------------------------------------------------------------------------


def test_the_adapter_satisfies_the_port(
    store: StateStore, adapter: Adapter, aws: AwsResources
) -> None:
    assert _conforms(store) is store
    assert {"window_ms", "name", "where", "read", "write", "remove", "actors", "check"} <= (
        PORT_MEMBERS
    )
    for member in PORT_MEMBERS - {"window_ms", "name"}:
        assert callable(getattr(store, member)), member
    assert store.window_ms == 60_000  # the default replay window: 60 s
    assert store.name == adapter.name(aws)
    assert store.where("counter/a") == adapter.where(aws, "counter/a")


def test_write_conflict_is_one_class_wherever_it_is_imported_from() -> None:
    assert S3WriteConflict is WriteConflict


# -- read and write -------------------------------------------------------------------------


def test_read_of_an_actor_never_written_is_empty(store: StateStore) -> None:
    got = store.read("counter/never")
    assert (got.state, got.version, got.commits, got.etag) == (None, 0, [], None)
    assert (got.done, got.outbox) == ([], [])


@pytest.mark.parametrize(
    "state", [b"\x81\xa5count\x03", b"", None], ids=["state", "empty", "tombstone"]
)
def test_write_creates_the_object_and_read_returns_it(
    store: StateStore, state: bytes | None
) -> None:
    written = StateObject(state, 3, [commit(2, 1_000), commit(3, 1_500, sends=3)])
    etag = store.write("counter/a", written, None)
    assert isinstance(etag, str)
    assert etag
    got = store.read("counter/a")
    assert got.state == state
    assert got.version == 3
    assert got.commits == written.commits  # ids, outbox, cancels and replies of each
    assert [c.version for c in got.commits] == [2, 3]
    assert got.commits[1].outbox[2].due_ms == 1_500 + 60_000
    assert got.commits[0].replies == written.commits[0].replies
    assert got.done == written.done
    assert got.etag == etag
    assert written.etag is None  # write does not touch the object it was given


def test_actors_are_separate_objects(store: StateStore) -> None:
    store.write("counter/a", obj(1, b"a"), None)
    store.write("counter/b", obj(7, b"b"), None)
    assert (store.read("counter/a").state, store.read("counter/a").version) == (b"a", 1)
    assert (store.read("counter/b").state, store.read("counter/b").version) == (b"b", 7)


def test_a_second_create_conflicts_and_leaves_the_object(store: StateStore) -> None:
    first = store.write("counter/a", obj(1, b"first"), None)
    with pytest.raises(WriteConflict) as conflict:
        store.write("counter/a", obj(1, b"second"), None)
    assert store.where("counter/a") in str(conflict.value)
    got = store.read("counter/a")
    assert (got.state, got.version, got.etag) == (b"first", 1, first)


def test_a_write_over_a_stale_etag_conflicts_and_leaves_the_object(store: StateStore) -> None:
    stale = store.write("counter/a", obj(1, b"one"), None)
    current = store.write("counter/a", obj(2, b"two"), stale)
    with pytest.raises(WriteConflict):
        store.write("counter/a", obj(3, b"lost update"), stale)
    got = store.read("counter/a")
    assert (got.state, got.version, got.etag) == (b"two", 2, current)


def test_a_write_over_the_current_etag_succeeds_with_a_new_etag(store: StateStore) -> None:
    first = store.write("counter/a", obj(1, b"one"), None)
    second = store.write("counter/a", obj(2, b"two"), first)
    assert second != first
    third = store.write("counter/a", obj(3, b"three"), second)
    assert third not in (first, second)
    got = store.read("counter/a")
    assert (got.state, got.version, got.etag) == (b"three", 3, third)


def test_a_write_over_a_removed_object_does_not_bring_it_back(store: StateStore) -> None:
    """Another holder ended the actor since our read: our write must not resurrect it, and
    is a lost race like any other (S3 answers If-Match on a missing key with 404)."""
    etag = store.write("counter/a", obj(1), None)
    assert store.remove("counter/a", etag) is True
    with pytest.raises(WriteConflict):
        store.write("counter/a", obj(2), etag)
    assert store.read("counter/a") == StateObject()


# -- remove ---------------------------------------------------------------------------------


def test_remove_over_a_stale_etag_answers_false_and_leaves_the_object(store: StateStore) -> None:
    stale = store.write("counter/a", obj(1, b"one"), None)
    current = store.write("counter/a", obj(2, b"two"), stale)
    assert store.remove("counter/a", stale) is False
    got = store.read("counter/a")
    assert (got.state, got.version, got.etag) == (b"two", 2, current)


def test_remove_over_the_current_etag_empties_the_actor(store: StateStore) -> None:
    etag = store.write("counter/a", obj(1), None)
    store.write("counter/b", obj(1), None)
    assert store.remove("counter/a", etag) is True
    assert store.read("counter/a") == StateObject()
    assert store.read("counter/b").version == 1  # only that actor's object went
    # Written again from scratch, as a new actor of that key would be.
    again = store.write("counter/a", obj(1, b"reborn"), None)
    assert store.read("counter/a").etag == again


def test_remove_never_raises(store: StateStore, adapter: Adapter, aws: AwsResources) -> None:
    etag = store.write("counter/a", obj(1), None)
    assert store.remove("counter/a", etag) is True
    assert store.remove("counter/a", etag) is False  # already removed
    assert store.remove("counter/never", etag) is False  # never written
    assert adapter.missing(aws).remove("counter/a", etag) is False  # the store is missing


# -- actors ---------------------------------------------------------------------------------


def test_actors_lists_the_keys_written_under_the_store_only(
    store: StateStore, adapter: Adapter, aws: AwsResources
) -> None:
    assert list(store.actors(0)) == []
    # "actors-2" starts with "actors": its objects are another store's all the same.
    other = adapter.build(aws, "actors-2")
    before = now_ms()
    for actor in ("counter/a", "counter/b", "logger/x"):
        store.write(actor, obj(1), None)
    other.write("counter/c", obj(1), None)
    after = now_ms()
    assert sorted(store.actors(0)) == ["counter/a", "counter/b", "logger/x"]
    assert sorted(other.actors(0)) == ["counter/c"]
    assert sorted(store.actors(before - 60_000)) == ["counter/a", "counter/b", "logger/x"]
    assert list(store.actors(after + 3_600_000)) == []  # nothing written since


def test_actors_leaves_out_removed_objects(store: StateStore) -> None:
    etag = store.write("counter/a", obj(1), None)
    store.write("counter/b", obj(1), None)
    assert store.remove("counter/a", etag) is True
    assert list(store.actors(0)) == ["counter/b"]


# -- check ----------------------------------------------------------------------------------


def test_check_passes_for_the_store_and_names_a_missing_one(
    store: StateStore, adapter: Adapter, aws: AwsResources
) -> None:
    store.check()  # no error
    missing = adapter.missing(aws)
    with pytest.raises(AwsError, match=adapter.missing_error(aws)):
        missing.check()


def test_a_missing_store_is_an_error_not_an_empty_actor(
    adapter: Adapter, aws: AwsResources
) -> None:
    """Reading a store that is not there must fail, never read as a fresh actor."""
    missing = adapter.missing(aws)
    with pytest.raises(AwsError, match="does not exist"):
        missing.read("counter/a")
    with pytest.raises(AwsError, match="does not exist"):
        missing.write("counter/a", obj(1), None)
    with pytest.raises(AwsError, match="does not exist"):
        list(missing.actors(0))


# -- StateObject ----------------------------------------------------------------------------


def test_successor_keeps_sends_one_window_and_ids_two() -> None:
    dropped = commit(1, -1)  # 2001 ms before the new commit: over two windows
    ids_only = commit(2, 0)  # exactly two windows: its ids stay, its sends go
    whole = commit(3, 1_000)  # exactly one window: kept as it is
    recent = commit(4, 1_500)
    new = commit(5, 2_000)
    before = StateObject(b"old", 4, [dropped, ids_only, whole, recent], etag='"tag"')
    after = before.successor(b"new", new, WINDOW_MS)
    assert (after.state, after.version, after.etag) == (b"new", 5, None)
    assert [c.version for c in after.commits] == [2, 3, 4, 5]
    trimmed = after.commits[0]
    assert (trimmed.version, trimmed.at_ms, trimmed.done) == (2, 0, ids_only.done)
    assert (trimmed.outbox, trimmed.cancels, trimmed.replies) == ([], [], [])
    assert after.commits[1:] == [whole, recent, new]
    assert after.done == ids_only.done + whole.done + recent.done + new.done
    assert after.outbox == new.outbox  # what the last commit sent
    assert before.commits == [dropped, ids_only, whole, recent]  # the old one is unchanged


def test_successor_with_no_state_is_a_tombstone_keeping_the_commits() -> None:
    first = commit(1, 0)
    last = commit(2, 500)
    after = StateObject(b"s", 1, [first]).successor(None, last, WINDOW_MS)
    assert (after.state, after.version) == (None, 2)
    assert after.commits == [first, last]


def test_successor_of_an_empty_object_holds_the_one_commit() -> None:
    new = commit(1, 5_000)
    after = StateObject().successor(b"s", new, WINDOW_MS)
    assert after == StateObject(b"s", 1, [new], None)


def test_encode_and_decode_round_trip() -> None:
    first, second = commit(6, 1_000), commit(7, 2_000, sends=3)
    first.done.append("not-a-hex-id")  # any other id reads back unchanged
    second.replies = []
    original = StateObject(b"\x81\xa5count\x03", 7, [first, second], etag=None)
    got = StateObject.decode(original.encode(), '"etag"', "s3://b/k", 0)
    assert got == StateObject(original.state, 7, [first, second], '"etag"')
    assert got.commits[0].done[-1] == "not-a-hex-id"
    assert msgpack.unpackb(original.encode(), raw=False)["f"] == FORMAT_VERSION


def test_decode_reads_format_1_as_one_commit_dated_by_last_modified() -> None:
    sent = message("counter/b", 1, 9_000)
    done = [new_id("counter/a"), new_id("counter/a")]
    raw = msgpack.packb(
        {
            "f": 1,
            "version": 4,
            "state": b"s",
            "done": [bytes.fromhex(i) for i in done],
            "outbox": [[sent.target, sent.id, sent.due_ms, sent.entry]],
            "cancels": ["c" * 32],
        },
        use_bin_type=True,
    )
    got = StateObject.decode(raw, '"e"', "s3://b/k", 123_456)
    assert got == StateObject(b"s", 4, [Retained(4, 123_456, done, [sent], ["c" * 32])], '"e"')


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x93junk",
        msgpack.packb(["not", "a", "map"]),
        msgpack.packb({"f": FORMAT_VERSION, "version": 1, "state": None}),  # fields missing
        # One id that no commit row accounts for.
        msgpack.packb(
            {"f": FORMAT_VERSION, "version": 1, "state": None, "done": [b"i" * 16], "commits": []}
        ),
    ],
    ids=["empty", "reserved-byte", "truncated", "array", "partial", "stray-id"],
)
def test_decode_of_garbage_raises_decode_error_keeping_the_bytes(raw: bytes) -> None:
    with pytest.raises(
        DecodeError, match=r"^S3 object s3://b/k is not a valid state object"
    ) as info:
        StateObject.decode(raw, '"e"', "s3://b/k", 0)
    assert info.value.raw == raw


def test_decode_of_a_newer_format_says_so_keeping_the_bytes() -> None:
    """A rolling deploy: its messages wait rather than being dead-lettered (StateObjectTooNew
    is a DecodeError the backend tells apart)."""
    from actor_system.ports import StateObjectTooNew

    raw = msgpack.packb({"f": 99, "version": 1, "state": None, "done": [], "commits": []})
    with pytest.raises(StateObjectTooNew, match=r"^S3 object s3://b/k has format version 99"):
        StateObject.decode(raw, '"e"', "s3://b/k", 0)
    with pytest.raises(DecodeError) as info:
        StateObject.decode(raw, '"e"', "s3://b/k", 0)
    assert info.value.raw == raw


def test_a_garbage_object_in_the_store_raises_decode_error(
    store: StateStore, adapter: Adapter, aws: AwsResources
) -> None:
    adapter.put_raw(aws, "counter/bad", b"\x93junk")
    with pytest.raises(DecodeError, match="not a valid state object") as info:
        store.read("counter/bad")
    assert info.value.raw == b"\x93junk"
