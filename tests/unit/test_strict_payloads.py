"""Payloads typed by people are strict: an unknown field is named, not silently dropped."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pydantic
import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, RootModel

from actor_system import ActorSystem, ActorType, Context, InvalidSend
from actor_system.payloads import InvalidPayload, parse_payload, unknown_fields


class PayWithin(BaseModel):
    pay_within_s: int


class CamelPay(BaseModel):
    pay_within_s: int = Field(alias="payWithin")


class CamelOrName(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    pay_within_s: int = Field(alias="payWithin")


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")
    a: int = 0


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # set on purpose: the model opts out
    a: int = 0


class Line(BaseModel):
    sku: str
    qty: int = 1


class Order(BaseModel):
    lines: list[Line] = Field(default_factory=list)
    by_sku: dict[str, Line] = Field(default_factory=dict)
    main: Line | None = None
    tagged: Annotated[Line, "a note"] | None = None
    pair: tuple[Line, ...] = ()
    either: Line | Open | None = None  # ambiguous: left to pydantic
    extra_open: Open | None = None


class InvoiceState(BaseModel):
    pay_within_s: int = 0
    received: int = 0


invoice = ActorType("invoice", state=InvoiceState)


@invoice.handler
def set_terms(ctx: Context[InvoiceState], msg: PayWithin) -> None:
    ctx.state.pay_within_s = msg.pay_within_s
    ctx.state.received += 1


def test_an_unknown_field_is_named_with_the_known_ones() -> None:
    with pytest.raises(InvalidSend) as info:
        parse_payload(PayWithin, {"pay_within": 30})
    expected = "unknown field 'pay_within' for message PayWithin; known: pay_within_s"
    assert str(info.value) == expected
    assert isinstance(info.value, InvalidPayload)
    assert info.value.details[0]["type"] == "extra_forbidden"
    assert info.value.details[0]["loc"] == ["pay_within"]


def test_several_unknown_fields_are_all_named() -> None:
    with pytest.raises(InvalidPayload, match="unknown fields 'a', 'b' for message PayWithin"):
        parse_payload(PayWithin, {"pay_within_s": 1, "a": 1, "b": 2})


def test_lenient_parse_ignores_unknown_fields_as_pydantic_does() -> None:
    assert parse_payload(PayWithin, {"pay_within_s": 5, "x": 1}, strict=False).pay_within_s == 5


def test_aliases_are_accepted_and_names_only_with_populate_by_name() -> None:
    assert parse_payload(CamelPay, {"payWithin": 3}).pay_within_s == 3
    # Without populate_by_name pydantic would ignore the field name: that is a typo too.
    with pytest.raises(InvalidPayload, match=r"unknown field 'pay_within_s'.*known: payWithin"):
        parse_payload(CamelPay, {"pay_within_s": 3})
    assert parse_payload(CamelOrName, {"payWithin": 3}).pay_within_s == 3
    assert parse_payload(CamelOrName, {"pay_within_s": 4}).pay_within_s == 4


def test_alias_choices_are_each_accepted() -> None:
    class Choice(BaseModel):
        x: int = Field(0, validation_alias=AliasChoices("ex", "why"))

    assert parse_payload(Choice, {"why": 2}).x == 2
    with pytest.raises(InvalidPayload, match="known: ex, why"):
        parse_payload(Choice, {"x": 2})


def test_a_model_that_sets_extra_gets_what_it_asked_for() -> None:
    kept = parse_payload(Open, {"a": 1, "b": 2})
    assert kept.model_extra == {"b": 2}
    assert parse_payload(Lenient, {"a": 1, "b": 2}).a == 1


def test_unknown_fields_of_nested_models_are_named_with_their_path() -> None:
    payload = {
        "lines": [{"sku": "s"}, {"sku": "t", "qyt": 2}],
        "by_sku": {"s": {"sku": "s", "bad": 1}},
        "main": {"sku": "m", "q": 1},
        "tagged": {"sku": "t", "n": 1},
        "pair": [{"sku": "p", "p": 1}],
    }
    paths = [u.path for u in unknown_fields(Order, payload)]
    assert paths == ["lines.1.qyt", "by_sku.s.bad", "main.q", "tagged.n", "pair.0.p"]
    with pytest.raises(InvalidPayload) as info:
        parse_payload(Order, {"lines": [{"sku": "s", "qyt": 2}], "note": 1})
    assert str(info.value) == (
        "unknown fields 'note', 'lines.0.qyt' for message Order; "
        "known: lines, by_sku, main, tagged, pair, either, extra_open; known in Line: sku, qty"
    )


def test_nested_models_that_allow_extras_or_are_ambiguous_are_left_alone() -> None:
    payload = {"extra_open": {"a": 1, "z": 2}, "either": {"sku": "s", "zz": 1}}
    assert unknown_fields(Order, payload) == []
    kept = parse_payload(Order, payload).extra_open
    assert kept is not None
    assert kept.model_extra == {"z": 2}


def test_self_referencing_models_are_checked_as_deep_as_the_data_goes() -> None:
    class Tree(BaseModel):
        children: list[Tree] = Field(default_factory=list)

    deep: dict[str, Any] = {"oops": 1}
    for _ in range(3000):  # deeper than the interpreter's recursion limit
        deep = {"children": [deep]}
    [unknown] = unknown_fields(Tree, deep)
    assert unknown.loc[-1] == "oops"
    assert len(unknown.loc) == 2 * 3000 + 1


def test_root_models_are_not_mistaken_for_objects_of_fields() -> None:
    class Tags(RootModel[dict[str, int]]):
        pass

    class Tagged(BaseModel):
        tags: Tags

    assert parse_payload(Tagged, {"tags": {"any": 1}}).tags.root == {"any": 1}


def test_a_validation_error_is_one_line_and_keeps_pydantic_details() -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_payload(Order, {"lines": [{"qty": "x"}]})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid Order payload: lines.0.sku: Field required")
    assert "lines.0.qty: Input should be a valid integer" in message
    assert [d["loc"] for d in info.value.details] == [("lines", 0, "sku"), ("lines", 0, "qty")]


@pytest.mark.parametrize(
    ("payload", "kind"), [([1], "an array"), ("x", "a string"), (None, "null"), (3, "a number")]
)
def test_a_payload_that_is_not_an_object_is_rejected(payload: object, kind: str) -> None:
    with pytest.raises(
        InvalidPayload, match=f"invalid PayWithin payload: must be a JSON object, got {kind}"
    ):
        parse_payload(PayWithin, payload)


@pytest.mark.skipif(
    tuple(int(p) for p in pydantic.VERSION.split(".")[:2]) < (2, 11),
    reason="needs pydantic's validate-time extra=",
)
@pytest.mark.parametrize(
    "payload",
    [
        {"lines": [{"sku": "a", "x": 1}], "main": {"sku": "b"}, "y": 2},
        {"by_sku": {"k": {"sku": "a", "z": 1}}, "pair": [{"sku": "p"}, {"sku": "q", "w": 0}]},
        {"tagged": {"sku": "t", "v": 1}},
        {"lines": []},
    ],
)
def test_the_check_agrees_with_pydantic_forbidding_extras(payload: dict[str, Any]) -> None:
    """pydantic's own extra="forbid" is the oracle, for models that do not allow extras."""
    try:
        Order.model_validate(payload, extra="forbid")  # type: ignore[call-arg,unused-ignore]
        expected: list[tuple[Any, ...]] = []
    except pydantic.ValidationError as e:
        expected = [tuple(d["loc"]) for d in e.errors() if d["type"] == "extra_forbidden"]
    assert sorted(map(str, (u.loc for u in unknown_fields(Order, payload)))) == sorted(
        map(str, expected)
    )


def http_event(body: dict[str, Any], path: str = "/actors/invoice/i1/messages") -> dict[str, Any]:
    return {
        "version": "2.0",
        "rawPath": path,
        "body": json.dumps(body),
        "isBase64Encoded": False,
        "requestContext": {"http": {"method": "POST", "path": path}},
    }


@pytest.fixture
def system() -> ActorSystem:
    return ActorSystem.from_url("fakeredis://", actors=[invoice])


def stored_keys(system: ActorSystem) -> int:
    return int(system.backend.client.dbsize())  # type: ignore[attr-defined]


def test_ingress_answers_400_naming_the_unknown_field_and_stores_nothing(
    system: ActorSystem,
) -> None:
    handler = system.lambda_handler(environ={})
    answer = handler(http_event({"type": "PayWithin", "payload": {"pay_within": 30}}), None)
    assert answer["statusCode"] == 400
    body = json.loads(answer["body"])
    assert body["error"] == "unknown field 'pay_within' for message PayWithin; known: pay_within_s"
    assert body["details"][0]["loc"] == ["pay_within"]
    assert stored_keys(system) == 0
    assert system.run_until_idle().messages == 0


def test_ingress_rejects_unknown_keys_of_the_body_itself(system: ActorSystem) -> None:
    handler = system.lambda_handler(environ={})
    event = http_event({"type": "PayWithin", "payload": {"pay_within_s": 1}, "dealy": 60})
    answer = handler(event, None)
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["error"] == (
        "unknown body field 'dealy'; known: delay, idempotency_key, payload, type"
    )
    assert stored_keys(system) == 0


def test_ingress_keeps_its_other_answers(system: ActorSystem) -> None:
    handler = system.lambda_handler(environ={})
    invalid = handler(http_event({"type": "PayWithin", "payload": {"pay_within_s": "x"}}), None)
    assert invalid["statusCode"] == 400
    assert json.loads(invalid["body"])["details"][0]["loc"] == ["pay_within_s"]
    not_object = handler(http_event({"type": "PayWithin", "payload": [1]}), None)
    assert not_object["statusCode"] == 400
    assert "must be a JSON object" in json.loads(not_object["body"])["error"]
    unknown_type = handler(http_event({"type": "Nope", "payload": {}}), None)
    assert unknown_type["statusCode"] == 404
    assert stored_keys(system) == 0


def test_ingress_accepts_a_valid_payload_which_is_then_processed(system: ActorSystem) -> None:
    handler = system.lambda_handler(environ={})
    answer = handler(http_event({"type": "PayWithin", "payload": {"pay_within_s": 30}}), None)
    assert answer["statusCode"] == 202
    assert json.loads(answer["body"])["id"]
    assert system.run_until_idle().messages == 0  # processed in the ingress's invocation
    state = system.state(invoice.ref("i1"))
    assert isinstance(state, InvoiceState)
    assert (state.pay_within_s, state.received) == (30, 1)


def test_messages_between_actors_stay_lenient_across_a_rolling_deploy() -> None:
    """A newer deploy sends PayWithin with a field the running one does not know yet: the
    older code processes it, ignoring the field, instead of dead-lettering it."""
    import fakeredis

    from actor_system.adapters.redis import RedisBackend
    from actor_system.options import Options

    class PayWithin(BaseModel):  # the next version of the message: one field more
        pay_within_s: int
        currency: str = "EUR"

    newer = ActorType("invoice", state=InvoiceState)

    @newer.handler
    def set_terms_v2(ctx: Context[InvoiceState], msg: PayWithin) -> None: ...

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())

    def deploy(actor: ActorType[Any]) -> ActorSystem:
        backend = RedisBackend(client=client, options=Options(), blocking=False)
        return ActorSystem(backend, actors=[actor])

    deploy(newer).send(invoice.ref("i2"), PayWithin(pay_within_s=45, currency="USD"))
    older = deploy(invoice)
    report = older.run_until_idle()
    assert (report.messages, report.dead_letters) == (1, 0)
    assert older.state(invoice.ref("i2")) == InvoiceState(pay_within_s=45, received=1)
