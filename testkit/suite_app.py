"""The app of Softprobe's suite example (its `e2e/app/main.go`), ours: `/hello` calls `/fragment`
through the egress gateway, passing `traceparent` and `tracestate` on as an OpenTelemetry
propagator does (the session travels in `tracestate`, never as a header the app copies), and
answers `{"message": "hello", "dep": <the fragment's dep>}`; and the live upstream behind the
egress gateway, whose `/fragment` says `{"dep": "ok"}`: what a case sees when its mock did not apply.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx

from softprobe_gateway.formats.casefile import case_document
from softprobe_gateway.store.model import Fields, Recording
from testkit.recording import FAST_EXPORT
from testkit.serve import Backend
from testkit.support import Gateway, HttpServer, Received, Reply


@dataclass
class FragmentStack:
    runtime: Backend
    ingress: Gateway
    upstream: HttpServer


@contextmanager
def fragment_stack(tmp: Path, message: str = "hello", egress: dict | None = None,
                   ingress: dict | None = None) -> Iterator[FragmentStack]:
    """`softprobe serve` as the runtime; the live upstream behind an egress gateway; the app behind
    an ingress gateway (both gateways look up in serve; `egress` and `ingress` are their configs,
    `{runtime}` in a value the runtime's URL). On the way out: no session left open."""
    egress = egress or {"sp_backend_url": "{runtime}", "enable_inject": True, "traffic_direction": "outbound",
                        "lookup": {"timeout_ms": 2000}}  # a loaded machine must not show as a difference
    ingress = ingress or {**egress, "traffic_direction": "inbound"}
    with Backend(tmp / "runtime.db") as runtime, fragment_upstream() as upstream:
        def config(c: dict) -> dict:
            return {**{k: v.replace("{runtime}", runtime.url) if isinstance(v, str) else v for k, v in c.items()},
                    "export": FAST_EXPORT}
        with Gateway(config(egress), tmp, mode=f"reverse:{upstream.url}") as out, \
                hello_app(out.proxy, message) as app, \
                Gateway(config(ingress), tmp, mode=f"reverse:{app.url}") as into:
            yield FragmentStack(runtime, into, upstream)
            assert runtime.client.get("/v1/sessions").json()["sessions"] == []  # every case closed its own


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


def ingress_case(path: Path, case_id: str, method: str, target: str, status: int, response: object,
                 request_body: str = "", request_headers: dict[str, str] | None = None,
                 response_headers: dict[str, str] | None = None) -> Path:
    """A case file recording one inbound exchange (what `request.source: case.ingress` sends again
    and what the answer is compared with), written as `softprobe case export` writes cases."""
    body = response if isinstance(response, str) else json.dumps(response)
    exchange = Recording(
        session_id=case_id, trace_id="ab" * 16, span_id="cd" * 8, parent_span_id="", service="orders",
        direction="inbound", kind="server", method=method, host="orders.test", path=target, status=status,
        error=status >= 500, start_ns=1, end_ns=2,
        request_headers=Fields([(":method", method), (":path", target), *(request_headers or {}).items()]),
        response_headers=Fields([(":status", str(status)), ("content-type", "application/json"),
                                 *(response_headers or {}).items()]),
        request_body=request_body, response_body=body)
    path.write_text(json.dumps(case_document(case_id, [exchange], datetime.now(timezone.utc))))
    return path
