"""Lookups against a backend that answers by path: the gateway config and the answers."""

from __future__ import annotations

import base64
import time

from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData
from softprobe_gateway.otlp import make_span, traces_data

from testkit.support import Gateway, Received, attributes

BINARY = bytes(range(256)) * 4


def answer(status: int | None, headers: dict[str, str], body: str | None) -> bytes:
    attrs: list = [(f"http.response.header.{k}", v) for k, v in headers.items()]
    if status is not None:
        attrs.append(("http.response.status_code", status))
    if body is not None:
        attrs.append(("http.response.body", body))
    span = make_span("/x", b"\x01" * 16, b"\x02" * 8, b"", Span.SPAN_KIND_SERVER, 1, 2, attrs, False)
    return traces_data([("svc", [span])], "").SerializeToString()


def inject_by_path(request: TracesData, got: Received):
    """The test backend's `/v1/inject`: the answer depends on the looked-up request's path."""
    path = attributes(request.resource_spans[0].scope_spans[0].spans[0].attributes)["url.path"].split("?")[0]
    proto = {"content-type": "application/x-protobuf"}
    if path == "/hit-text":
        return 200, proto, answer(201, {"content-type": "text/plain", "x-custom": "yes",
                                        "content-length": "999", "transfer-encoding": "chunked",
                                        ":status": "201"}, "hello from the recording")
    if path == "/hit-binary":
        return 200, proto, answer(None, {"content-type": "image/png"}, base64.b64encode(BINARY).decode())
    if path == "/error":
        return 500, {}, b"oops"
    if path == "/garbage":
        return 200, proto, b"\xff\x00garbage\x12\x34"
    if path == "/empty-answer":
        return 200, proto, b""
    if path == "/no-response-attrs":
        return 200, proto, answer(None, {}, None)
    if path == "/slow":
        time.sleep(5)
        return 404, {}, b""
    if path == "/one-second":
        time.sleep(1.0)
        return 404, {}, b""
    return 404, {}, b""


def lookup_config(url: str, admin: int, **lookup) -> dict:
    return {"sp_backend_url": url, "enable_inject": True, "public_key": "pk-test",
            "admin_listen": f"127.0.0.1:{admin}", "export": {"flush_interval_ms": 20},
            "lookup": {"timeout_ms": 1000, "breaker_failures": 100, "debug_header": True, **lookup}}


def lookups(gw: Gateway, admin: int, outcome: str) -> float:
    return gw.metric(admin, f'softprobe_lookups_total{{outcome="{outcome}"}}')
