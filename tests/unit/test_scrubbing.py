"""`capture.scrubbing`: the gateway's redaction over spans already recorded (OTLP JSON), as a pure
function: what a live exchange would lose is what a scrubbed span loses."""

from __future__ import annotations

from typing import Any

from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.capture.scrubbing import scrub_case, scrub_span
from softprobe_gateway.config.schema import CaptureConfig, RedactionConfig


def kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def values(span: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for item in span["attributes"]:
        value = item["value"]
        out[item["key"]] = value.get("stringValue", [v["stringValue"] for v in value.get("arrayValue", {}).get("values", [])])
    return out


CAPTURE = Capture(CaptureConfig(mask_headers=("x-account",)), RedactionConfig())


def test_headers_dropped_masked_and_redacted_as_capture_would() -> None:
    span = {"attributes": [kv("http.request.header.Cookie", "a=1"), kv("http.request.header_values.cookie", ["a=1", "b=2"]),
                           kv("http.request.header.x-account", "acct-42"), kv("http.request.header.x-access-token", "t0k"),
                           kv("http.request.header.:path", "/a?password=pw&x=1"), kv("http.response.trailer.grpc-status", "0"),
                           kv("http.request.header_values.x-note", ["Bearer abcdefghijklmnopqrstuvwxyz", "plain"])]}
    changes = scrub_span(span, CAPTURE)
    assert (changes.redacted, changes.dropped) == (4, 2)
    assert values(span) == {"http.request.header.x-account": "[REDACTED]", "http.request.header.x-access-token": "[REDACTED]",
                            "http.request.header.:path": "/a?password=[REDACTED]&x=1",
                            "http.response.trailer.grpc-status": "0",
                            "http.request.header_values.x-note": ["Bearer [REDACTED]", "plain"]}


def test_bodies_by_their_content_type_and_websocket_text_messages() -> None:
    json_body = '{"card_number": "4111111111111111", "ok": true}'
    span = {"attributes": [kv("http.request.header.content-type", "application/json"), kv("http.request.body", json_body),
                           kv("http.response.header.content-type", "application/octet-stream"),
                           kv("http.response.body", "eyJwYXNzd29yZCI6ICJ4In0=")],  # base64: never parsed as text
            "events": [{"name": "websocket.message", "attributes": [kv("websocket.type", "text"),
                                                                     kv("websocket.data", '{"token": "abc"}')]},
                       {"name": "websocket.message", "attributes": [kv("websocket.type", "binary"),
                                                                     kv("websocket.data", "dG9rZW4=")]}]}
    assert scrub_case({"traces": [{"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}]}, CAPTURE).redacted == 2
    assert values(span)["http.request.body"] == '{"card_number":"[REDACTED]","ok":true}'
    assert values(span)["http.response.body"] == "eyJwYXNzd29yZCI6ICJ4In0="
    assert span["events"][0]["attributes"][1]["value"]["stringValue"] == '{"token":"[REDACTED]"}'
    assert span["events"][1]["attributes"][1]["value"]["stringValue"] == "dG9rZW4="


def test_redaction_off_changes_nothing_but_the_dropped_headers() -> None:
    capture = Capture(CaptureConfig(), RedactionConfig(enabled=False))
    span = {"attributes": [kv("http.request.header.authorization", "Basic eA=="), kv("url.query", "password=pw")]}
    changes = scrub_span(span, capture)
    assert (changes.redacted, changes.dropped, values(span)) == (0, 1, {"url.query": "password=pw"})
