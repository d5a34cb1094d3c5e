"""A test harness in the style of Softprobe's guides, against a real `softprobe serve` and real
gateways (mitmdump with the addon) over HTTP: a replay session, a case loaded, a mock rule and an
error rule, a strict policy; requests through the gateways; stats; close."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from testkit.recording import FAST_EXPORT
from testkit.serve import KEY, Backend, case_for, validate
from testkit.support import BIN, LOOPBACK, Gateway, HttpServer, OtlpBackend, echo_upstream, free_port, wait_for

LATENCY_MS = 150


def gateway(runtime: Backend, tmp: Path, admin: int | None = None) -> Gateway:
    config = {"sp_backend_url": runtime.url, "enable_inject": True, "export": FAST_EXPORT}
    if admin:
        config["admin_listen"] = f"{LOOPBACK}:{admin}"
    return Gateway(config, tmp, env={"SOFTPROBE_PUBLIC_KEY": KEY})


@pytest.fixture
def upstream():
    with echo_upstream() as server:
        yield server


def test_a_guide_style_harness_through_two_gateways(tmp_path: Path, upstream: HttpServer) -> None:
    host, admin = upstream.url.removeprefix("http://"), free_port()
    with Backend(tmp_path / "runtime.db", KEY) as runtime, gateway(runtime, tmp_path, admin) as gw1, \
            gateway(runtime, tmp_path) as gw2:
        http = runtime.client
        sid = http.post("/v1/sessions", json={"mode": "replay"}).json()["sessionId"]
        assert http.post(f"/v1/sessions/{sid}/load-case", json=case_for(host)).status_code == 200
        rules = {"version": 1, "rules": [
            {"id": "pay-ok", "priority": 100, "when": {"direction": "outbound", "method": "POST", "path": "/pay"},
             "then": {"action": "mock", "response": {"status": 200, "headers": {"content-type": "application/json"},
                                                     "body": '{"paid": true}'}}},
            {"id": "inventory-down", "priority": 100, "when": {"pathPrefix": "/inventory"},
             "then": {"action": "error", "error": {"status": 503, "body": {"error": "down"}, "latencyMs": LATENCY_MS}}},
            {"id": "real-json", "priority": 500, "when": {"path": "/json"}, "then": {"action": "passthrough"}}]}
        assert http.post(f"/v1/sessions/{sid}/rules", json=rules).json()["sessionRevision"] == 2
        assert http.post(f"/v1/sessions/{sid}/policy", json={"externalHttp": "strict"}).status_code == 200

        with gw1.client(headers={"x-softprobe-session-id": sid}) as c1, \
                gw2.client(headers={"x-softprobe-session-id": sid}) as c2:
            assert c1.get(f"{upstream.url}/price").json() == {"price": 42}  # from the loaded case
            assert c2.post(f"{upstream.url}/pay", json={"amount": 1}).json() == {"paid": True}  # session rule
            assert c2.get("http://partner.test/quote").text == "partner from case"  # case-embedded rule
            started = time.perf_counter()
            down = c1.get(f"{upstream.url}/inventory/sku-1")
            elapsed_ms = (time.perf_counter() - started) * 1000
            assert (down.status_code, down.json()) == (503, {"error": "down"})
            assert elapsed_ms >= LATENCY_MS
            before = upstream.connections
            miss = c1.get(f"{upstream.url}/unmocked")
            assert miss.status_code == 599 and miss.headers["x-softprobe-strict-miss"] == "1"
            assert "strict miss" in miss.json()["error"]
            assert upstream.connections == before and not upstream.received  # nothing reached the upstream
            assert gw1.metric(admin, 'softprobe_lookups_total{outcome="strict_miss"}') == 1
            real = c2.get(f"{upstream.url}/json")  # passthrough beats the strict policy
            assert real.json() == {"ok": True, "items": [1, 2]} and len(upstream.received) == 1
        # the passthrough forwarded the session in tracestate, under both proxies' keys
        state = dict(item.split("=", 1) for item in upstream.received[0].headers["tracestate"].split(","))
        assert state["x-softprobe-session-id"] == state["x-sp-session-id"] == sid

        stats = http.get(f"/v1/sessions/{sid}/stats").json()["stats"]
        assert (stats["injectedSpans"], stats["strictMisses"]) == (4, 1)
        wait_for(lambda: http.get(f"/v1/sessions/{sid}/stats").json()["stats"]["extractedSpans"] >= 6)
        assert http.post(f"/v1/sessions/{sid}/close").json() == {"sessionId": sid, "closed": True}
        assert http.get(f"/v1/sessions/{sid}/stats").status_code == 404
    print(f"\nerror rule with latencyMs={LATENCY_MS}: answered in {elapsed_ms:.0f} ms through the gateway")


def test_latency_is_the_rules_own(tmp_path: Path, upstream: HttpServer) -> None:
    """A rule's latency adds to the answer; without one a mock comes back at lookup speed."""
    with Backend(tmp_path / "runtime.db", KEY) as runtime, gateway(runtime, tmp_path) as gw:
        sid = runtime.session()
        runtime.client.post(f"/v1/sessions/{sid}/rules", json={"rules": [
            {"when": {"path": "/slow"}, "then": {"action": "mock", "response": {"body": "slow", "latencyMs": 300}}},
            {"when": {"path": "/fast"}, "then": {"action": "mock", "response": {"body": "fast"}}}]})
        timings = {}
        with gw.client(headers={"x-softprobe-session-id": sid}) as client:
            client.get(f"{upstream.url}/fast")  # warm: the gateway's lookup connection
            for path in ("fast", "slow"):
                started = time.perf_counter()
                assert client.get(f"{upstream.url}/{path}").text == path
                timings[path] = (time.perf_counter() - started) * 1000
    assert timings["slow"] >= 300 and timings["fast"] < 100, timings
    assert not upstream.received
    print(f"\nmock without latency: {timings['fast']:.1f} ms; with latencyMs=300: {timings['slow']:.1f} ms")


def test_session_read_from_tracestate_alone(tmp_path: Path, upstream: HttpServer) -> None:
    """A hop inside the mesh carries the session in tracestate only, under Softprobe's key or ours."""
    with Backend(tmp_path / "runtime.db", KEY) as runtime, gateway(runtime, tmp_path) as gw:
        sid = runtime.session()
        runtime.client.post(f"/v1/sessions/{sid}/rules", json={"rules": [
            {"when": {"path": "/who"}, "then": {"action": "mock", "response": {"body": "session rule"}}}]})
        with gw.client() as client:
            for key in ("x-softprobe-session-id", "x-sp-session-id"):
                got = client.get(f"{upstream.url}/who", headers={"tracestate": f"{key}={sid},vendor=1"})
                assert got.text == "session rule", key
    assert not upstream.received


def test_the_key_travels_as_a_bearer_token_too(tmp_path: Path, upstream: HttpServer) -> None:
    """Softprobe's runtime reads `Authorization: Bearer`; its backends read `x-public-key`: both sent."""
    with OtlpBackend() as backend, Gateway({"sp_backend_url": backend.url, "enable_inject": True,
                                            "export": FAST_EXPORT}, tmp_path, env={"SOFTPROBE_PUBLIC_KEY": KEY}) as gw:
        with gw.client() as client:
            client.get(f"{upstream.url}/json")
        wait_for(lambda: {r.path for r in backend.received} >= {"/v1/inject", "/v1/traces"})
    for received in backend.received:
        assert received.headers["authorization"] == f"Bearer {KEY}" and received.headers["x-public-key"] == KEY


def test_any_other_backend_status_still_fails_open(tmp_path: Path, upstream: HttpServer) -> None:
    """A 599 without the strict-miss header is a backend failure like any other: forwarded."""
    def handle(got):
        if got.path == "/v1/inject":
            return 599, {"content-type": "application/json"}, json.dumps({"error": "x"}).encode()
        return 200, {}, b""
    with HttpServer(handle) as backend, Gateway({"sp_backend_url": backend.url, "enable_inject": True,
                                                 "export": FAST_EXPORT}, tmp_path) as gw, gw.client() as client:
        assert client.get(f"{upstream.url}/json").json() == {"ok": True, "items": [1, 2]}
    assert len(upstream.received) == 1


def test_capture_session_exported_as_a_case_then_replayed(tmp_path: Path, upstream: HttpServer) -> None:
    """Softprobe's loop: capture a session through the gateway, export its recording as a case,
    load it into a strict replay session: the same answers, the upstream never asked."""
    case_file = tmp_path / "captured.case.json"
    with Backend(tmp_path / "runtime.db", KEY) as runtime, gateway(runtime, tmp_path) as gw:
        http = runtime.client
        capture = runtime.session("capture")
        with gw.client(headers={"x-softprobe-session-id": capture}) as client:
            original = [client.get(f"{upstream.url}/json").json(), client.get(f"{upstream.url}/json?page=2").json()]
        wait_for(lambda: http.get(f"/v1/sessions/{capture}/stats").json()["stats"]["extractedSpans"] >= 2)
        assert http.post(f"/v1/sessions/{capture}/close").json()["closed"] is True
        exported = subprocess.run([str(BIN / "softprobe"), "case", "export", capture, "--db", str(runtime.db),
                                   "-o", str(case_file)], capture_output=True, text=True, timeout=30)
        assert exported.returncode == 0, exported.stderr
        case = json.loads(case_file.read_text())
        validate(case, "session-load-case.request.schema.json")

        replay = runtime.session()
        assert http.post(f"/v1/sessions/{replay}/load-case", json=case).status_code == 200
        http.post(f"/v1/sessions/{replay}/policy", json={"externalHttp": "strict"})
        calls = len(upstream.received)
        with gw.client(headers={"x-softprobe-session-id": replay}) as client:
            assert [client.get(f"{upstream.url}/json").json(), client.get(f"{upstream.url}/json?page=2").json()] == original
            assert client.get(f"{upstream.url}/other").status_code == 599
        assert len(upstream.received) == calls
        assert http.get(f"/v1/sessions/{replay}/stats").json()["stats"]["injectedSpans"] == 2
