"""State that evolves: versions and migrations, unknown fields carried along, stored state
that does not validate kept and readable (``system.raw_state``, ``actor-system state --raw``).

The codec tests need no store; the system and CLI tests run on fakeredis and a real
redis-server (the CLI shares data with a system only through the real one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
)

from actor_system import ActorSystem, ActorType, Context
from actor_system import stored_state as ss
from actor_system.actor import ActorRef
from actor_system.cli import main
from actor_system.errors import DecodeError
from actor_system.stored_state import StateInvalid, StateTooNew

# -- state models and actor types of these tests ------------------------------------------


class WalletV1(BaseModel):
    amount: int = 0  # whole euros
    note: str = ""


class WalletV2(BaseModel):
    cents: int = 0
    note: str = ""


class Deposit(BaseModel):
    euros: int


def euros_to_cents(m: dict[str, Any]) -> dict[str, Any]:
    m["cents"] = m.pop("amount", 0) * 100
    return m


wallet_v1: ActorType[WalletV1] = ActorType("wallet", state=WalletV1)
wallet_v2: ActorType[WalletV2] = ActorType(
    "wallet", state=WalletV2, version=2, migrations={1: euros_to_cents}
)


@wallet_v1.handler
def deposit_v1(ctx: Context[WalletV1], msg: Deposit) -> None:
    ctx.state.amount += msg.euros


@wallet_v2.handler
def deposit_v2(ctx: Context[WalletV2], msg: Deposit) -> None:
    ctx.state.cents += msg.euros * 100


class ProfileOld(BaseModel):
    name: str = ""


class ProfileNew(BaseModel):  # `name` renamed to `title`, no migration: a plain deploy
    title: str = ""
    visits: int = 0


class Visit(BaseModel):
    name: str = ""


profile_old: ActorType[ProfileOld] = ActorType("profile", state=ProfileOld)
profile_new: ActorType[ProfileNew] = ActorType("profile", state=ProfileNew)


@profile_old.handler
def visit_old(ctx: Context[ProfileOld], msg: Visit) -> None:
    ctx.state.name = msg.name or ctx.state.name


@profile_new.handler
def visit_new(ctx: Context[ProfileNew], msg: Visit) -> None:
    ctx.state.visits += 1


class Count(BaseModel):
    count: int = 0


class Bump(BaseModel):
    n: int = 1


counter: ActorType[Count] = ActorType("tally", state=Count)


@counter.handler
def bump(ctx: Context[Count], msg: Bump) -> None:
    ctx.state.count += msg.n


cli_actors = [counter]


def v1_bytes(state: BaseModel) -> bytes:
    """State as every deploy stored it before versions existed."""
    return bytes(msgpack.packb(state.model_dump(mode="json"), use_bin_type=True))


def pack(mapping: Any) -> bytes:
    return bytes(msgpack.packb(mapping, use_bin_type=True))


def plant(system: ActorSystem, ref: ActorRef, data: bytes) -> None:
    """Store state bytes straight into Redis, as another deploy (or a bug) would have."""
    key = system.backend.keys.actor(ref.key, "state")  # type: ignore[attr-defined]
    system.backend.client.hset(key, mapping={"d": data, "v": 1})  # type: ignore[attr-defined]


# -- the codec ------------------------------------------------------------------------------


def test_v1_bytes_as_stored_today_migrate_to_v2() -> None:
    old = v1_bytes(WalletV1(amount=3, note="rent"))
    loaded = ss.decode(wallet_v2, old)
    assert loaded.state == WalletV2(cents=300, note="rent")
    assert loaded.version == 1  # what was stored; encode writes the current one
    assert loaded.unknown == {}
    assert ss.raw(ss.encode(wallet_v2, loaded.state, loaded.unknown)) == {
        "cents": 300,
        "note": "rent",
        "_v": 2,
    }


def test_migrations_run_in_order_from_the_stored_version() -> None:
    seen: list[int] = []

    def step(n: int) -> Any:
        def migrate(m: dict[str, Any]) -> dict[str, Any]:
            seen.append(n)
            m["count"] = m.get("count", 0) * 10 + n
            return m

        return migrate

    v3 = ActorType("tally", state=Count, version=3, migrations={1: step(1), 2: step(2)})
    assert ss.decode(v3, v1_bytes(Count(count=0))).state.count == 12
    assert seen == [1, 2]
    seen.clear()
    assert ss.decode(v3, pack({"count": 5, "_v": 2})).state.count == 52
    assert seen == [2]
    assert ss.decode(v3, pack({"count": 5, "_v": 3})).state.count == 5


def test_a_rename_without_migration_keeps_the_old_field_for_a_rollback() -> None:
    stored = v1_bytes(ProfileOld(name="ada"))
    new = ss.decode(profile_new, stored)
    assert new.state == ProfileNew()  # the new field starts at its default ...
    assert new.unknown == {"name": "ada"}  # ... and the old one is carried along
    written = ss.encode(profile_new, ProfileNew(title="Dr", visits=2), new.unknown)
    assert ss.raw(written) == {"title": "Dr", "visits": 2, "name": "ada", "_v": 1}
    rolled_back = ss.decode(profile_old, written)
    assert rolled_back.state == ProfileOld(name="ada")
    assert rolled_back.unknown == {"title": "Dr", "visits": 2}
    again = ss.encode(profile_old, rolled_back.state, rolled_back.unknown)
    assert ss.decode(profile_new, again).state == ProfileNew(title="Dr", visits=2)


def test_a_migration_that_deletes_a_field_drops_it() -> None:
    def drop_legacy(m: dict[str, Any]) -> dict[str, Any]:
        del m["legacy"]
        return m

    v2 = ActorType("tally", state=Count, version=2, migrations={1: drop_legacy})
    loaded = ss.decode(v2, pack({"count": 4, "legacy": [1, 2], "other": "kept"}))
    assert loaded.state == Count(count=4)
    assert loaded.unknown == {"other": "kept"}
    assert ss.raw(ss.encode(v2, loaded.state, loaded.unknown)) == {
        "count": 4,
        "other": "kept",
        "_v": 2,
    }


def test_a_newer_stored_version_is_a_precise_error() -> None:
    data = pack({"cents": 5, "_v": 3})
    with pytest.raises(StateTooNew) as info:
        ss.decode(wallet_v2, data)
    assert str(info.value) == (
        "stored state of actor type 'wallet' is version 3; this deploy knows versions up to 2"
    )
    assert isinstance(info.value, StateInvalid)
    assert (info.value.raw, info.value.actor, info.value.version) == (data, "wallet", 3)


def test_a_missing_or_failing_migration_is_a_precise_error() -> None:
    gap = ActorType("tally", state=Count, version=3, migrations={2: lambda m: m})
    with pytest.raises(StateInvalid, match=r"is version 1 but there is no migration 1 -> 2"):
        ss.decode(gap, v1_bytes(Count()))

    def broken(m: dict[str, Any]) -> dict[str, Any]:
        return {"count": m["missing"]}

    failing = ActorType("tally", state=Count, version=2, migrations={1: broken})
    with pytest.raises(StateInvalid, match=r"migration 1 -> 2 .* failed .*KeyError") as info:
        ss.decode(failing, v1_bytes(Count()))
    assert isinstance(info.value.__cause__, KeyError)
    no_return: Any = lambda m: None  # noqa: E731 - a migration that forgot its return
    forgot_return = ActorType("tally", state=Count, version=2, migrations={1: no_return})
    with pytest.raises(StateInvalid, match=r"migration 1 -> 2 .* returned a NoneType, not a dict"):
        ss.decode(forgot_return, v1_bytes(Count()))


def test_a_mapping_that_fails_validation_is_state_invalid_with_the_raw_bytes() -> None:
    data = pack({"cents": "lots", "note": "x", "_v": 2})
    with pytest.raises(StateInvalid) as info:
        ss.decode(wallet_v2, data)
    e = info.value
    assert e.raw == data
    assert (e.actor, e.version) == ("wallet", 2)
    assert str(e) == (
        "stored state of actor type 'wallet' (version 2) does not validate against WalletV2: "
        "cents: Input should be a valid integer, unable to parse string as an integer "
        "(input 'lots')"
    )
    assert [err["loc"] for err in e.errors] == [("cents",)]
    assert isinstance(e, DecodeError)


class Picky(BaseModel):
    n: int = 0

    @field_validator("n")
    @classmethod
    def not_13(cls, v: int) -> int:
        if v == 13:
            raise KeyError("unlucky")  # not a ValueError: pydantic lets it through
        return v


def test_a_validator_that_raises_anything_is_state_invalid() -> None:
    picky = ActorType("picky", state=Picky)
    with pytest.raises(StateInvalid, match=r"against Picky: KeyError: 'unlucky'") as info:
        ss.decode(picky, pack({"n": 13}))
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("version", ["2", 0, True, None])
def test_a_stored_version_that_is_not_a_version_is_state_invalid(version: object) -> None:
    with pytest.raises(StateInvalid, match=r"has version .* under '_v', not an int >= 1"):
        ss.decode(wallet_v2, pack({"cents": 1, "_v": version}))


def test_corrupt_bytes_are_a_decode_error_keeping_the_bytes() -> None:
    for data, problem in ((b"\xc1", "corrupt: "), (pack([1, 2]), "a list, not a map")):
        with pytest.raises(DecodeError, match=problem) as info:
            ss.decode(counter, data)
        assert not isinstance(info.value, StateInvalid)
        assert info.value.raw == data
        assert "actor type 'tally'" in str(info.value)
        with pytest.raises(DecodeError, match=problem):
            ss.raw(data)


def test_no_stored_state_is_the_defaults_at_the_current_version() -> None:
    loaded = ss.decode(wallet_v2, None)
    assert (loaded.state, loaded.unknown, loaded.version) == (WalletV2(), {}, 2)
    assert ss.raw(None) is None


def test_encode_of_an_int_beyond_64_bits_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"Count of actor type 'tally' cannot be stored") as info:
        ss.encode(counter, Count(count=2**64), {})
    assert isinstance(info.value.__cause__, OverflowError)
    # nothing of the failed pack is left behind for the next one
    assert ss.raw(ss.encode(counter, Count(count=1), {})) == {"count": 1, "_v": 1}


def test_encode_from_many_threads_at_once() -> None:
    def work(n: int) -> bool:
        return all(
            ss.raw(ss.encode(counter, Count(count=n * 1000 + i), {}))
            == {"count": n * 1000 + i, "_v": 1}
            for i in range(500)
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))


def test_round_trips_keep_the_version() -> None:
    data = ss.encode(wallet_v2, WalletV2(cents=7), {})
    assert ss.raw(data) == {"cents": 7, "note": "", "_v": 2}
    loaded = ss.decode(wallet_v2, data)
    assert (loaded.state, loaded.unknown, loaded.version) == (WalletV2(cents=7), {}, 2)
    assert ss.encode(wallet_v2, loaded.state, loaded.unknown) == data
    assert ss.raw(ss.encode(counter, Count(count=1), {}))["_v"] == 1  # type: ignore[index]


def test_a_current_field_wins_over_an_unknown_one_of_the_same_name() -> None:
    data = ss.encode(counter, Count(count=2), {"count": 99, "old": 1})
    assert ss.raw(data) == {"count": 2, "old": 1, "_v": 1}


class Aliased(BaseModel):
    user_id: int = Field(0, alias="userId")
    tag: str = Field("", validation_alias=AliasChoices("label", "tagName"))


def test_fields_stored_by_name_or_alias_are_known_and_keep_their_value() -> None:
    aliased = ActorType("aliased", state=Aliased)
    # model_dump stores by field name; validation by alias alone would default them.
    by_name = ss.decode(aliased, pack({"user_id": 5, "tag": "x"}))
    assert (by_name.state.user_id, by_name.state.tag, by_name.unknown) == (5, "x", {})
    by_alias = ss.decode(aliased, pack({"userId": 6, "tagName": "y"}))
    assert (by_alias.state.user_id, by_alias.state.tag, by_alias.unknown) == (6, "y", {})
    data = ss.encode(aliased, by_name.state, by_name.unknown)
    assert ss.decode(aliased, data).state == by_name.state


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")
    a: int = 0


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        return 2 * self.a


def test_extra_allow_keeps_extras_itself_and_extra_forbid_still_loads() -> None:
    open_ = ActorType("open", state=Open)
    loaded = ss.decode(open_, pack({"a": 1, "b": 2}))
    assert loaded.unknown == {}
    assert ss.raw(ss.encode(open_, loaded.state, loaded.unknown)) == {"a": 1, "b": 2, "_v": 1}
    closed = ActorType("closed", state=Closed)
    # "double" is dumped (a computed field) but never an input: neither unknown nor an error.
    strict = ss.decode(closed, pack({"a": 1, "double": 2, "b": 3}))
    assert (strict.state.a, strict.unknown) == (1, {"b": 3})
    assert ss.raw(ss.encode(closed, strict.state, strict.unknown)) == {
        "a": 1,
        "double": 2,
        "b": 3,
        "_v": 1,
    }


# -- the system -----------------------------------------------------------------------------


@pytest.fixture
def system(url: str) -> Iterator[ActorSystem]:
    s = ActorSystem.from_url(url, actors=[counter, wallet_v2])
    yield s
    s.close()


def test_system_state_migrates_and_raw_state_shows_what_is_stored(system: ActorSystem) -> None:
    ref = wallet_v2.ref("a")
    assert system.raw_state(ref) is None
    plant(system, ref, v1_bytes(WalletV1(amount=2)))
    assert system.state(ref) == WalletV2(cents=200)
    assert system.raw_state(ref) == {"amount": 2, "note": ""}
    unregistered = ActorRef("elsewhere", "x")  # raw reads need no actor type
    plant(system, unregistered, pack({"k": b"\x00\x01", "_v": 4}))
    assert system.raw_state(unregistered) == {"k": b"\x00\x01", "_v": 4}


def test_system_state_that_does_not_validate_stays_readable_raw(system: ActorSystem) -> None:
    ref = counter.ref("bad")
    data = pack({"count": "many", "_v": 1})
    plant(system, ref, data)
    with pytest.raises(StateInvalid) as info:
        system.state(ref)
    assert info.value.raw == data
    assert system.raw_state(ref) == {"count": "many", "_v": 1}


def test_a_committed_state_reads_back_raw(system: ActorSystem) -> None:
    ref = counter.ref("ok")
    system.send(ref, Bump(n=3))
    system.run_until_idle()
    raw = system.raw_state(ref)
    assert raw is not None
    assert raw.pop("_v", 1) == 1  # written with or without a version: both are version 1
    assert raw == {"count": 3}
    assert system.state(ref) == Count(count=3)


def test_a_state_that_fails_validation_is_kept_after_its_messages_are_dead_lettered(
    system: ActorSystem,
) -> None:
    ref = counter.ref("kept")
    data = pack({"count": "many"})
    plant(system, ref, data)
    system.send(ref, Bump())
    system.run_until_idle()
    [dead] = system.dead_letters()
    assert "count" in dead.reason
    assert "Count" in dead.reason
    assert system.raw_state(ref) == {"count": "many"}
    with pytest.raises(StateInvalid):
        system.state(ref)


# -- through the runtime ---------------------------------------------------------------------


@pytest.fixture
def deploy(url: str) -> Iterator[Callable[..., ActorSystem]]:
    """Successive deploys of one application: different actor types over one store."""
    made: list[ActorSystem] = []

    def make(*actors: ActorType[Any]) -> ActorSystem:
        if made:
            first = made[0]
            made.append(ActorSystem(first.backend, actors=actors, clock=first.clock))
        else:
            made.append(ActorSystem.from_url(url, actors=actors))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_v1_state_of_an_older_deploy_is_migrated_on_the_next_turn(
    deploy: Callable[..., ActorSystem],
) -> None:
    old, new = deploy(wallet_v1), deploy(wallet_v2)
    ref = wallet_v1.ref("m")
    old.send(ref, Deposit(euros=2))
    old.run_until_idle()
    new.send(ref, Deposit(euros=1))
    new.run_until_idle()
    assert new.state(ref) == WalletV2(cents=300)
    assert new.raw_state(ref) == {"cents": 300, "note": "", "_v": 2}


def test_a_renamed_field_survives_a_deploy_and_its_rollback(
    deploy: Callable[..., ActorSystem],
) -> None:
    old, new = deploy(profile_old), deploy(profile_new)
    ref = profile_old.ref("r")
    old.send(ref, Visit(name="ada"))
    old.run_until_idle()
    new.send(ref, Visit())
    new.run_until_idle()
    assert new.raw_state(ref) == {"title": "", "visits": 1, "name": "ada", "_v": 1}
    old.send(ref, Visit())  # rolled back
    old.run_until_idle()
    assert old.state(ref) == ProfileOld(name="ada")
    assert old.raw_state(ref) == {"title": "", "visits": 1, "name": "ada", "_v": 1}


# -- the CLI --------------------------------------------------------------------------------

APP = f"{__name__}:cli_actors"


def run_cli(redis_url: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["--url", redis_url, "--app", APP, *args])


def test_cli_state_prints_the_state_or_a_one_line_error(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=cli_actors)
    good, bad, corrupt = counter.ref("good"), counter.ref("bad"), counter.ref("corrupt")
    plant(system, good, v1_bytes(Count(count=4)))
    plant(system, bad, pack({"count": [1], "_v": 1}))
    plant(system, corrupt, b"\xc1")
    done = run_cli(redis_url, "state", "tally", "good")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"count": 4}
    for ref, message in (
        (bad, "stored state of actor type 'tally' (version 1) does not validate against Count"),
        (corrupt, "stored state of actor type 'tally' is corrupt"),
    ):
        done = run_cli(redis_url, "state", "tally", ref.id)
        assert done.exit_code == 2
        assert done.stdout == ""
        assert done.stderr.startswith(f"actor-system: {message}")
        assert len(done.stderr.strip().splitlines()) == 1
        assert done.exception is None or isinstance(done.exception, SystemExit)
    system.close()


def test_cli_state_raw_prints_the_stored_mapping_even_when_invalid(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=cli_actors)
    bad = counter.ref("bad")
    plant(system, bad, pack({"count": [1], "old": b"\x00\xff", "_v": 1}))
    done = run_cli(redis_url, "state", "--raw", "tally", "bad")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"count": [1], "old": "base64:AP8=", "_v": 1}
    # no --app needed, and an actor without state is null
    bare = CliRunner().invoke(main, ["--url", redis_url, "state", "--raw", "other", "x"])
    assert bare.exit_code == 0, bare.output
    assert bare.stdout.strip() == "null"
    plant(system, counter.ref("corrupt"), b"\xc1")
    done = run_cli(redis_url, "state", "--raw", "tally", "corrupt")
    assert done.exit_code == 2
    assert done.stderr.startswith("actor-system: stored state is corrupt")
    assert len(done.stderr.strip().splitlines()) == 1
    system.close()


def test_a_state_stored_by_a_newer_deploy_makes_the_older_one_wait(
    deploy: Callable[..., ActorSystem],
) -> None:
    new, old = deploy(wallet_v2), deploy(wallet_v1)
    ref = wallet_v2.ref("w")
    new.send(ref, Deposit(euros=1))
    new.run_until_idle()
    old.send(ref, Deposit(euros=5))  # a rolling deploy: an old worker takes the next turn
    report = old.run_until_idle()
    assert (report.messages, report.dead_letters) == (0, 0)
    assert old.dead_letters() == []
    assert new.raw_state(ref) == {"cents": 100, "note": "", "_v": 2}  # not overwritten
    assert old.backend.next_due_ms() is not None  # the actor rests, then is tried again
    paused = old.backend.keys.paused(old.backend.keys.part_of(ref.key))
    assert old.backend.client.zscore(paused, ref.key) is not None
    old.backend.client.zadd(paused, {ref.key: 0})  # the wait ends (the new deploy is up)
    # Pollers look at a partition when hinted, or once a poll interval.
    client, keys = old.backend.client, old.backend.keys
    client.hset(keys.hints, keys.part_of(ref.key), client.incr(keys.gen))
    new.run_until_idle()
    assert new.state(ref) == WalletV2(cents=600)


class Text(BaseModel):
    amount: str = ""


class Number(BaseModel):
    amount: int = 0


class SetText(BaseModel):
    text: str


texts: ActorType[Text] = ActorType("ledger-text", state=Text)
numbers: ActorType[Number] = ActorType("ledger-text", state=Number)
waiting_numbers: ActorType[Number] = ActorType("ledger-text", state=Number, invalid_state="wait")


@texts.handler
def set_text(ctx: Context[Text], msg: SetText) -> None:
    ctx.state.amount = msg.text


@numbers.handler
def set_number(ctx: Context[Number], msg: SetText) -> None:
    ctx.state.amount = int(msg.text)


@waiting_numbers.handler
def set_number_later(ctx: Context[Number], msg: SetText) -> None:
    ctx.state.amount = int(msg.text)


@pytest.mark.parametrize("policy", ["dead_letter", "wait"])
def test_a_state_that_fails_validation_stays_stored_on_every_store(
    make_system: Callable[..., ActorSystem], policy: str
) -> None:
    old = make_system(texts)
    ref = texts.ref("t")
    old.send(ref, SetText(text="many"))
    old.run_until_idle()
    # A deploy changes the field's type without a migration, over the same stores.
    new_type = numbers if policy == "dead_letter" else waiting_numbers
    new = ActorSystem(old.backend, actors=[new_type], clock=old.clock)
    new.send(ref, SetText(text="5"))
    report = new.run_until_idle()
    assert new.raw_state(ref) == {"amount": "many", "_v": 1}  # never overwritten
    if policy == "dead_letter":
        assert report.dead_letters == 1
        [dead] = new.dead_letters()
        assert "does not validate against Number" in dead.reason
    else:
        assert (report.dead_letters, report.messages) == (0, 0)
        assert new.dead_letters() == []
        assert new.stats()["mailbox_messages"] == 1  # waits for a deploy that can read it
