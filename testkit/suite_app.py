"""The app of Softprobe's suite example (its `e2e/app/main.go`), ours: `/hello` calls `/fragment`
through the egress gateway, passing `traceparent` and `tracestate` on as an OpenTelemetry
propagator does (the session travels in `tracestate`, never as a header the app copies), and
answers `{"message": "hello", "dep": <the fragment's dep>}`; and the live upstream behind the
egress gateway, whose `/fragment` says `{"dep": "ok"}`: what a case sees when its mock did not apply.
"""

from __future__ import annotations

import json
import random

import httpx

from testkit.support import HttpServer, Received, Reply


def fragment_upstream() -> HttpServer:
    return HttpServer(lambda got: (200, {"content-type": "application/json"}, b'{"dep":"ok"}\n'))


def hello_app(egress_url: str, message: str = "hello") -> HttpServer:
    """The app; `message` other than "hello" makes it a broken version."""
    client = httpx.Client(trust_env=False, timeout=10)

    def handle(got: Received) -> Reply:
        path = got.path.split("?", 1)[0]
        if path == "/health":
            return 200, {"content-type": "application/json"}, b'{"status":"ok"}\n'
        if path != "/hello":
            return 404, {"content-type": "text/plain"}, b"not found"
        try:
            answer = client.get(f"{egress_url}/fragment", headers=_propagated(got.headers))
        except httpx.HTTPError as e:
            return 502, {"content-type": "text/plain"}, str(e).encode()
        try:
            dep = answer.json().get("dep", "")
        except ValueError:
            dep = ""
        body = json.dumps({"message": message, "dep": dep}).encode() + b"\n"
        return 200, {"content-type": "application/json"}, body

    return HttpServer(handle)


def _propagated(headers: dict[str, str]) -> dict[str, str]:
    """W3C trace context for the outgoing call: the same trace, this hop's own span, tracestate as it came."""
    out = {}
    parts = headers.get("traceparent", "").split("-")
    if len(parts) == 4:
        out["traceparent"] = f"{parts[0]}-{parts[1]}-{random.getrandbits(64):016x}-{parts[3]}"
    if "tracestate" in headers:
        out["tracestate"] = headers["tracestate"]
    return out
