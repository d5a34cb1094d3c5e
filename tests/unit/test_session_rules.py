"""A control session's rules and policy as pure decisions (`decisions.session_rules`), and the
session in `tracestate` under both proxies' keys (`decisions.tracecontext`)."""

from __future__ import annotations

import json
import uuid

import pytest
from softprobe_gateway.decisions.session_rules import Request, decide, matches, strict_miss
from softprobe_gateway.decisions.tracecontext import (
    SpanContext,
    new_session,
    parse_tracestate,
    propagated_headers,
    session,
)

PAY = Request("POST", "api.stripe.com:443", "/v1/payment_intents?x=1", "outbound", "shop",
              {"authorization": ["Bearer t"], "x-tenant": ["acme"]}, json.dumps({"amount": 10, "items": [{"sku": "a"}]}),
              {"sp.service.name": "shop"})


def mock(status: int, priority: int = 0, **when: object) -> dict:
    return {"id": f"m{status}", "priority": priority, "when": when,
            "then": {"action": "mock", "response": {"status": status, "body": "x"}}}


@pytest.mark.parametrize(("when", "expected"), [
    ({}, True),
    ({"direction": "outbound", "host": "API.stripe.com", "method": "post"}, True),
    ({"host": "api.stripe.com:443"}, True),
    ({"direction": "inbound"}, False),
    ({"hostSuffix": "stripe.com"}, True), ({"hostSuffix": ["nope.com", "stripe.com"]}, True),
    ({"notHostSuffix": [".internal", "localhost"]}, True), ({"notHostSuffix": ["stripe.com"]}, False),
    ({"path": "/v1/payment_intents"}, True), ({"path": "/v1"}, False), ({"pathPrefix": "/v1/pay"}, True),
    ({"headers": {"X-Tenant": "acme"}}, True), ({"headers": {"x-tenant": ["acme", "other"]}}, False),
    ({"headerMatch": {"authorization": "^Bearer "}}, True), ({"headerMatch": {"authorization": "^Basic"}}, False),
    ({"bodyJsonPath": "$.amount"}, True), ({"bodyJsonPath": "$.missing"}, False),
    ({"bodyJsonPathEquals": {"$.amount": 10, "$.items[0].sku": "a"}}, True),
    ({"bodyJsonPathEquals": {"$.amount": 11}}, False),
    ({"service": "shop"}, True), ({"traceTags": {"sp.service.name": "shop"}}, True),
    ({"headerMatch": {"authorization": "("}}, False),  # a bad pattern matches nothing, never raises
])
def test_predicates_and_together(when: dict, expected: bool) -> None:
    assert matches(when, PAY) is expected


def test_priority_then_layer_then_later_entry() -> None:
    case = [mock(201, 5), mock(202, 1)]
    assert decide(PAY, [mock(200, 1)], case).status == 201  # priority first, whatever the layer
    assert decide(PAY, [mock(200, 5)], case).layer == "session"  # a tie: the session's rule
    assert decide(PAY, [mock(200), mock(204)]).status == 204  # a tie in one layer: the later entry
    assert decide(PAY, [mock(200, host="other.test")]) is None


def test_actions_and_their_answers() -> None:
    error = {"when": {}, "then": {"action": "error", "error": {"status": 503, "body": {"e": "down"}, "latencyMs": 120}}}
    decision = decide(PAY, [error])
    assert (decision.action, decision.status, decision.latency_ms, decision.answers) == ("error", 503, 120, True)
    assert json.loads(decision.body) == {"e": "down"} and ("content-type", "application/json") in decision.headers
    for action in ("passthrough", "capture_only"):
        assert not decide(PAY, [{"when": {}, "then": {"action": action}}]).answers
    plain = decide(PAY, [{"when": {}, "then": {"action": "mock", "latencyMs": 50,
                                                "response": {"headers": {"a": "1"}, "body": "ok"}}}])
    assert (plain.status, plain.headers, plain.body, plain.latency_ms) == (200, (("a", "1"),), "ok", 50)


def test_policy_strict_miss() -> None:
    assert not strict_miss(PAY, {})
    assert strict_miss(PAY, {"externalHttp": "strict"})
    assert not strict_miss(PAY, {"externalHttp": "strict", "allowHosts": ["stripe.com"]})
    inbound = Request("GET", "app.test", "/", "inbound")
    assert not strict_miss(inbound, {"externalHttp": "strict"})
    assert strict_miss(inbound, {"defaultOnMiss": "error"})
    assert strict_miss(PAY, {"blockHosts": [".stripe.com"]})


def test_tracestate_session_read_under_either_key_and_written_under_both() -> None:
    def no_header(name: str) -> None:
        return None
    assert session(no_header, parse_tracestate("x-softprobe-session-id=sess_a,k=v")) == ("sess_a", False)
    assert session(no_header, parse_tracestate("x-sp-session-id=old")) == ("old", False)
    both = parse_tracestate("x-sp-session-id=old,x-softprobe-session-id=new")
    assert session(no_header, both)[0] == "new"  # Softprobe's current key first
    ctx = SpanContext(bytes.fromhex("a" * 32), bytes.fromhex("b" * 16))
    state = parse_tracestate("x-softprobe-session-id=sess_a,k=v")
    out = propagated_headers(ctx, "sess_a", state, has_traceparent=True, sp_num=None)["tracestate"]
    assert parse_tracestate(out) == [("x-sp-traceparent", ctx.traceparent), ("x-sp-session-id", "sess_a"),
                                     ("x-softprobe-session-id", "sess_a"), ("k", "v")]


def test_a_new_session_is_a_random_version_4_uuid() -> None:
    ids = [new_session() for _ in range(200)]
    assert len(set(ids)) == 200
    for value in ids:
        parsed = uuid.UUID(value.removeprefix("sp-session-"))
        assert (parsed.version, parsed.variant, f"sp-session-{parsed}") == (4, uuid.RFC_4122, value)
