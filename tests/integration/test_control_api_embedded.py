"""A control session answered by a gateway on the embedded store (`store.path`, no `serve` between
it and the store), as `softprobe serve` answers it; and `consume` as Softprobe's v1 defines it,
through gateways sharing one serve. Real processes: `softprobe serve` (the control API, on the same
store file) and mitmdump with the addon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.recording import FAST_EXPORT
from testkit.serve import KEY, Backend, case_for
from testkit.support import Gateway, HttpServer, echo_upstream, free_port, wait_for

RULES = {"version": 1, "rules": [
    {"id": "pay-ok", "when": {"method": "POST", "path": "/pay"},
     "then": {"action": "mock", "response": {"status": 201, "body": {"paid": True}}}},
    {"id": "stock-down", "when": {"pathPrefix": "/stock"},
     "then": {"action": "error", "error": {"status": 503, "body": "down"}}}]}


@pytest.fixture
def upstream():
    with echo_upstream() as server:
        yield server


def embedded(db: Path, tmp: Path, admin: int | None = None) -> Gateway:
    config = {"store": {"path": str(db)}, "enable_inject": True, "export": FAST_EXPORT}
    if admin:
        config["admin_listen"] = f"127.0.0.1:{admin}"
    return Gateway(config, tmp)


def test_an_embedded_gateway_answers_a_control_session(tmp_path: Path, upstream: HttpServer) -> None:
    """Its rules, its strict policy (599, the upstream never asked), its counters: as serve does."""
    db, admin = tmp_path / "store.db", free_port()
    with Backend(db, KEY) as runtime:  # the control API only: the gateway asks no serve
        http = runtime.client
        sid = runtime.session()
        assert http.post(f"/v1/sessions/{sid}/rules", json=RULES).status_code == 200
        assert http.post(f"/v1/sessions/{sid}/policy", json={"externalHttp": "strict"}).status_code == 200
        with embedded(db, tmp_path, admin) as gw, gw.client(headers={"x-softprobe-session-id": sid}) as client:
            paid = client.post(f"{upstream.url}/pay", json={"amount": 1})
            assert (paid.status_code, paid.json()) == (201, {"paid": True})
            down = client.get(f"{upstream.url}/stock/sku-1")
            assert (down.status_code, down.text) == (503, "down")
            miss = client.get(f"{upstream.url}/unmocked")
            assert miss.status_code == 599 and miss.headers["x-softprobe-strict-miss"] == "1"
            assert "strict miss" in miss.json()["error"]
            assert gw.metric(admin, 'softprobe_lookups_total{outcome="strict_miss"}') == 1
            stats = http.get(f"/v1/sessions/{sid}/stats").json()["stats"]
            assert (stats["injectedSpans"], stats["strictMisses"]) == (2, 1)
            # closed through serve, the session no longer answers: the gateway forwards (no recording)
            assert http.post(f"/v1/sessions/{sid}/close").status_code == 200
            assert client.get(f"{upstream.url}/json").json() == {"ok": True, "items": [1, 2]}
    assert [r.path for r in upstream.received] == ["/json"]  # only after the close


def test_an_embedded_gateway_replays_a_loaded_case(tmp_path: Path, upstream: HttpServer) -> None:
    """The loaded case's recorded answers and its embedded rules, from the store's own copy."""
    db = tmp_path / "store.db"
    host = upstream.url.removeprefix("http://")
    with Backend(db, KEY) as runtime:
        sid = runtime.session()
        assert runtime.client.post(f"/v1/sessions/{sid}/load-case", json=case_for(host)).status_code == 200
        with embedded(db, tmp_path) as gw, gw.client(headers={"x-softprobe-session-id": sid}) as client:
            assert client.get(f"{upstream.url}/price").json() == {"price": 42}
            assert client.get("http://partner.test/quote").text == "partner from case"
    assert not upstream.received


ONCE_RULES = {"version": 1, "rules": [  # Softprobe's "Consume: once vs. many" example, as written there
    {"id": "first-call-returns-503", "consume": "once", "priority": 200, "when": {"path": "/flaky"},
     "then": {"action": "error", "error": {"status": 503, "body": {"reason": "simulated outage"}}}},
    {"id": "subsequent-calls-succeed", "consume": "many", "priority": 100, "when": {"path": "/flaky"},
     "then": {"action": "mock", "response": {"status": 200, "body": {"ok": True}}}}]}


def test_consume_once_is_not_dequeued_in_v1_across_two_gateways(tmp_path: Path, upstream: HttpServer) -> None:
    """Softprobe's rule schema: "v1 inject does not dequeue rules from the session document. Treat
    `consume` as documentation of author intent, not as a runtime-enforced flag" (its SDKs remove
    a once-rule after its match). So the once-rule keeps winning, through either gateway, and an
    SDK's way -- the rules posted again without it -- falls through to the next rule at once."""
    config_of = lambda runtime: {"sp_backend_url": runtime.url, "enable_inject": True,  # noqa: E731
                                 "export": FAST_EXPORT}
    with Backend(tmp_path / "runtime.db", KEY) as runtime, \
            Gateway(config_of(runtime), tmp_path, env={"SOFTPROBE_PUBLIC_KEY": KEY}) as gw1, \
            Gateway(config_of(runtime), tmp_path, env={"SOFTPROBE_PUBLIC_KEY": KEY}) as gw2:
        sid = runtime.session()
        assert runtime.client.post(f"/v1/sessions/{sid}/rules", json=ONCE_RULES).status_code == 200
        with gw1.client(headers={"x-softprobe-session-id": sid}) as c1, \
                gw2.client(headers={"x-softprobe-session-id": sid}) as c2:
            assert [c.get(f"{upstream.url}/flaky").status_code for c in (c1, c2, c1, c2)] == [503] * 4
            runtime.client.post(f"/v1/sessions/{sid}/rules", json={**ONCE_RULES, "rules": ONCE_RULES["rules"][1:]})
            assert [c.get(f"{upstream.url}/flaky").json() for c in (c2, c1)] == [{"ok": True}] * 2
    assert not upstream.received


def test_consume_once_is_not_dequeued_on_the_embedded_store_either(tmp_path: Path, upstream: HttpServer) -> None:
    db = tmp_path / "store.db"
    with Backend(db, KEY) as runtime:
        sid = runtime.session()
        assert runtime.client.post(f"/v1/sessions/{sid}/rules", json=ONCE_RULES).status_code == 200
        with embedded(db, tmp_path) as gw1, embedded(db, tmp_path) as gw2, \
                gw1.client(headers={"x-softprobe-session-id": sid}) as c1, \
                gw2.client(headers={"x-softprobe-session-id": sid}) as c2:
            assert [c.get(f"{upstream.url}/flaky").status_code for c in (c1, c2, c1)] == [503] * 3
        assert runtime.client.get(f"/v1/sessions/{sid}/stats").json()["stats"]["injectedSpans"] == 3
    assert not upstream.received


def test_an_embedded_gateways_exports_count_under_its_capture_session(tmp_path: Path, upstream: HttpServer) -> None:
    """`extractedSpans` counts what the embedded store's writer ingested, as serve counts its
    `/v1/traces`: a test waits on it before closing, and the closed session's case holds them."""
    db = tmp_path / "store.db"
    with Backend(db, KEY, cwd=tmp_path) as runtime:
        http = runtime.client
        sid = runtime.session("capture")
        with embedded(db, tmp_path) as gw, gw.client(headers={"x-softprobe-session-id": sid}) as client:
            for page in (1, 2, 3):
                assert client.get(f"{upstream.url}/json?page={page}").status_code == 200
            wait_for(lambda: http.get(f"/v1/sessions/{sid}/stats").json()["stats"]["extractedSpans"] == 3, 30)
        closed = http.post(f"/v1/sessions/{sid}/close", params={"out": "capture.case.json"}).json()
    case = json.loads(Path(closed["capturePath"]).read_text())
    assert sum(len(ss["spans"]) for trace in case["traces"] for rs in trace["resourceSpans"]
               for ss in rs["scopeSpans"]) == 3
