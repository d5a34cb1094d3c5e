"""Softprobe's test control API on `softprobe serve`: every route and error, against the published
schemas (tests/schemas/, see its README), with a real `serve` process on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.serve import KEY, Backend, validate

CASE = {"version": "1.0.0", "caseId": "checkout", "traces": [{"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
    "scopeSpans": [{"spans": [{
        "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "GET /price",
        "kind": 3, "startTimeUnixNano": "1", "endTimeUnixNano": "2",
        "attributes": [{"key": k, "value": v} for k, v in (
            ("sp.span.type", {"stringValue": "inject"}), ("sp.traffic.direction", {"stringValue": "outbound"}),
            ("url.host", {"stringValue": "prices.test"}), ("url.path", {"stringValue": "/price"}),
            ("http.request.method", {"stringValue": "GET"}), ("http.response.status_code", {"intValue": "200"}),
            ("http.response.header.content-type", {"stringValue": "application/json"}),
            ("http.response.body", {"stringValue": '{"price": 42}'}))]}]}]}]}],
    "rules": [{"id": "case-partner", "priority": 1, "when": {"host": "partner.test"},
               "then": {"action": "mock", "response": {"status": 200, "body": "from case"}}}]}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Backend]:
    with Backend(tmp_path / "store.db", KEY) as rt:
        yield rt


def test_health_answers_anyone_and_meta_requires_the_key(runtime: Backend) -> None:
    anonymous = httpx.Client(base_url=runtime.url, trust_env=False)
    health = anonymous.get("/health")
    assert health.status_code == 200
    validate(health.json(), "#HealthResponse")
    assert anonymous.post("/health").status_code == 405
    validate(anonymous.post("/health").json(), "#APIError")
    meta = runtime.client.get("/v1/meta")
    validate(meta.json(), "#MetaResponse")
    missing, wrong = anonymous.get("/v1/meta"), anonymous.get("/v1/meta", headers={"authorization": "Bearer nope"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_bearer_token")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "invalid_bearer_token")
    for reply in (missing, wrong):
        validate(reply.json(), "#APIError")
    # the gateway's own header is accepted too, on the control routes as on the OTLP ones
    assert anonymous.get("/v1/meta", headers={"x-public-key": KEY}).status_code == 200


def test_every_route_as_published(runtime: Backend) -> None:
    http = runtime.client
    create = {"mode": "replay", "policy": {"externalHttp": "strict"}}
    validate(create, "session-create.request.schema.json")
    created = http.post("/v1/sessions", json=create).json()
    validate(created, "session-create.response.schema.json")
    sid = created["sessionId"]
    assert created["sessionRevision"] == 0

    validate(CASE, "session-load-case.request.schema.json")
    rules = {"version": 1, "rules": [
        {"id": "pay", "priority": 10, "when": {"direction": "outbound", "host": "pay.test", "method": "POST"},
         "then": {"action": "mock", "response": {"status": 200, "body": {"ok": True}}}},
        {"id": "down", "when": {"pathPrefix": "/down"}, "then": {"action": "error", "error": {"status": 503}}}]}
    validate(rules, "session-rules.request.schema.json")
    policy = {"externalHttp": "strict", "defaultOnMiss": "error", "allowHosts": ["localhost"]}
    validate(policy, "session-policy.request.schema.json")
    fixtures = {"tokens": ["t-1"], "cookies": [{"name": "sid", "value": "c"}], "metadata": {"user": "u", "n": 1}}
    validate(fixtures, "session-fixtures-auth.request.schema.json")
    revisions = []
    for route, body, schema in (("load-case", CASE, "session-load-case.response.schema.json"),
                                ("rules", rules, "session-rules.response.schema.json"),
                                ("policy", policy, "session-policy.response.schema.json"),
                                ("fixtures/auth", fixtures, "session-fixtures-auth.response.schema.json")):
        reply = http.post(f"/v1/sessions/{sid}/{route}", json=body)
        assert reply.status_code == 200, (route, reply.text)
        validate(reply.json(), schema)
        revisions.append(reply.json()["sessionRevision"])
    assert revisions == [1, 2, 3, 4]  # every change bumps the revision

    stats = http.get(f"/v1/sessions/{sid}/stats").json()
    validate(stats, "#SessionStatsResponse")
    assert stats["stats"] == {"injectedSpans": 0, "extractedSpans": 0, "strictMisses": 0}
    state = http.get(f"/v1/sessions/{sid}/state").json()
    validate(state, "#SessionStateResponse")
    assert state["caseSummary"] == {"caseId": "checkout", "traceCount": 1}
    assert state["policy"] == policy and state["rules"] == rules and state["sessionRevision"] == 4
    listed = http.get("/v1/sessions").json()
    validate(listed, "#ListSessionsResponse")
    assert {"sessionId": sid, "mode": "replay", "sessionRevision": 4} in listed["sessions"]

    validate({}, "session-close.request.schema.json")
    closed = http.post(f"/v1/sessions/{sid}/close", json={})
    validate(closed.json(), "session-close.response.schema.json")
    # a closed session's id is refused afterwards, on every route
    for method, route in (("POST", "load-case"), ("POST", "rules"), ("POST", "policy"), ("POST", "fixtures/auth"),
                          ("POST", "close"), ("GET", "stats"), ("GET", "state")):
        reply = http.request(method, f"/v1/sessions/{sid}/{route}", json={} if method == "POST" else None)
        assert reply.status_code == 404, route
        validate(reply.json(), "session-error.response.schema.json")


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("POST", "/v1/sessions", {"mode": "record"}, 400, "invalid_request"),
    ("POST", "/v1/sessions", {"mode": "replay", "extra": 1}, 400, "invalid_request"),
    ("POST", "/v1/sessions", b"{not json", 400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/rules", {"rules": [{"when": {}, "then": {"action": "explode"}}]}, 400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/rules", {"rules": [{"when": {"hots": "x"}, "then": {"action": "mock"}}]}, 400,
     "invalid_request"),
    ("POST", "/v1/sessions/{sid}/rules", {"rules": [{"when": {}, "then": {"action": "error"}}]}, 400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/rules", {"rules": [{"when": {"headers": "x"}, "then": {"action": "mock"}}]}, 400,
     "invalid_request"),
    ("POST", "/v1/sessions/{sid}/rules", {"rules": [{"when": {}, "then": {"action": "mock", "response": {"status": "x"}}}]},
     400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/load-case", {"version": "1", "caseId": "x", "traces": ["x"]}, 400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/policy", {"externalHttp": "sometimes"}, 400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/load-case", {"caseId": "x"}, 400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/fixtures/auth", {"cookies": [{"name": "a"}]}, 400, "invalid_request"),
    ("POST", "/v1/sessions/{sid}/close", {"force": True}, 400, "invalid_request"),
    ("POST", "/v1/sessions/sess_nobody/rules", {"rules": []}, 404, "unknown_session"),
    ("GET", "/v1/sessions/sess_nobody/stats", None, 404, "unknown_session"),
    ("GET", "/v1/sessions/{sid}/close", None, 405, "method_not_allowed"),
    ("POST", "/v1/sessions/{sid}/stats", {}, 405, "method_not_allowed"),
    ("DELETE", "/v1/sessions", None, 405, "method_not_allowed"),
    ("POST", "/v1/meta", {}, 405, "method_not_allowed"),
])
def test_errors_carry_the_spec_envelope(runtime: Backend, method: str, path: str, body: Any,
                                        status: int, code: str) -> None:
    sid = runtime.session()
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    reply = runtime.client.request(method, path.format(sid=sid), **kwargs)
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), reply.text
    validate(reply.json(), "session-error.response.schema.json" if code == "unknown_session" else "#APIError")
    assert runtime.client.get(f"/v1/sessions/{sid}/stats").json()["sessionRevision"] == 0  # nothing changed


def test_sessions_outlive_a_restart_and_closed_ids_stay_refused(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with Backend(db) as first:
        kept, closed = first.session(), first.session("capture")
        first.client.post(f"/v1/sessions/{kept}/policy", json={"externalHttp": "strict"})
        first.client.post(f"/v1/sessions/{closed}/close")
    with Backend(db) as second:
        state = second.client.get(f"/v1/sessions/{kept}/state").json()
        assert (state["sessionRevision"], state["policy"]) == (1, {"externalHttp": "strict"})
        assert second.client.get(f"/v1/sessions/{closed}/stats").status_code == 404
