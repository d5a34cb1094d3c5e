"""Agent lookup against real backends that hit, miss, fail, hang or answer garbage."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from testkit.lookups import BINARY, inject_by_path, lookup_config, lookups
from testkit.support import Gateway, OtlpBackend, attributes, free_port, wait_for


def test_hits_are_answered_without_touching_the_upstream(tmp_path, upstream):
    admin = free_port()
    with OtlpBackend(inject=inject_by_path) as backend, \
            Gateway(lookup_config(backend.url, admin), tmp_path, mode=f"reverse:{upstream.url}") as gw, \
            gw.client() as client:
        text = client.post("/hit-text?x=1", json={"q": 1}, headers={"x-sp-session-id": "s-1"})
        binary = client.get("/hit-binary")
        assert upstream.received == [] and upstream.connections == 0
        spans = {s.name: attributes(s.attributes) for _, s in backend.wait_spans(2)}
        lookup = backend.lookups[0]
        assert lookups(gw, admin, "hit") == 2

    assert text.status_code == 201 and text.text == "hello from the recording"
    assert text.headers["x-custom"] == "yes" and text.headers["x-softprobe-injected"] == "true"
    assert text.headers["content-length"] == str(len("hello from the recording"))
    assert "transfer-encoding" not in text.headers
    assert binary.status_code == 200 and binary.content == BINARY
    assert binary.headers["content-type"] == "image/png"
    assert spans["/hit-text"]["sp.injected"] is True
    assert spans["/hit-text"]["http.response.body"] == "hello from the recording"

    # The lookup body: one CLIENT inject span with the request half of the attributes.
    (rs,) = lookup.resource_spans
    (span,) = rs.scope_spans[0].spans
    a = attributes(span.attributes)
    assert span.kind == Span.SPAN_KIND_CLIENT and span.name == "/hit-text"
    assert a["sp.span.type"] == "inject" and a["sp.public.key"] == "pk-test"
    assert a["sp.session.id"] == "s-1" and a["sp.traffic.direction"] == "inbound"
    assert a["http.request.header.:method"] == "POST" and a["http.request.header.:path"] == "/hit-text?x=1"
    assert a["url.path"] == "/hit-text?x=1" and a["http.request.body"] == '{"q":1}'
    assert not any(k.startswith("http.response.") for k in a)
    assert attributes(rs.resource.attributes)["sp.resource.type"] == "sp-envoy-proxy"


@pytest.mark.parametrize("path, outcome", [
    ("/miss", "miss"), ("/error", "bad_status"), ("/garbage", "bad_answer"),
    ("/empty-answer", "bad_answer"), ("/no-response-attrs", "bad_answer"), ("/slow", "timeout"),
])
def test_misses_and_failures_go_upstream(tmp_path, upstream, path, outcome):
    admin = free_port()
    config = lookup_config("", admin, timeout_ms=300)
    with OtlpBackend(inject=inject_by_path) as backend:
        config["sp_backend_url"] = backend.url
        with Gateway(config, tmp_path, mode=f"reverse:{upstream.url}") as gw, gw.client() as client:
            started = time.monotonic()
            r = client.get(path)
            elapsed = time.monotonic() - started
            assert lookups(gw, admin, outcome) == 1
    assert r.status_code == 200 and r.text == f"upstream saw GET {path}"
    assert "x-softprobe-injected" not in r.headers
    assert elapsed < 1.5, f"{path} took {elapsed:.2f}s: the lookup timeout is 0.3s"


def test_closed_port_and_blackhole_fail_open_then_the_breaker_makes_them_cheap(tmp_path, upstream):
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1000)
    try:
        for url, outcome in ((f"http://127.0.0.1:{free_port()}", "connect_error"),
                             (f"http://127.0.0.1:{hole.getsockname()[1]}", "timeout")):
            admin = free_port()
            config = lookup_config(url, admin, timeout_ms=300, breaker_failures=3,
                                   breaker_cooldown_s=60)
            with Gateway(config, tmp_path, mode=f"reverse:{upstream.url}") as gw, gw.client(timeout=5) as client:
                durations = []
                for i in range(40):
                    started = time.monotonic()
                    assert client.get(f"/n{i}").status_code == 200
                    durations.append(time.monotonic() - started)
                assert lookups(gw, admin, outcome) == 3
                assert lookups(gw, admin, "breaker_open") == 37
            worst, later = max(durations[:3]), sorted(durations[3:])
            print(f"{outcome}: first 3 worst {worst * 1000:.0f} ms, later p50 "
                  f"{later[len(later) // 2] * 1000:.1f} ms, max {later[-1] * 1000:.1f} ms")
            assert worst < 0.3 + 0.5                       # bounded by the timeout
            # Breaker open: no lookup at all, so never a timeout's wait (0.3 s), typically ~2 ms.
            assert later[len(later) * 9 // 10] < 0.1 and later[-1] < 0.3
    finally:
        hole.close()


def test_breaker_half_open_probe_closes_on_success(tmp_path, upstream):
    healthy = {"on": False}

    def inject(request, got):
        if not healthy["on"]:
            return 500, {}, b""
        return 404, {}, b""

    admin = free_port()
    with OtlpBackend(inject=inject) as backend:
        config = lookup_config(backend.url, admin, breaker_failures=2, breaker_cooldown_s=0.5)
        with Gateway(config, tmp_path, mode=f"reverse:{upstream.url}") as gw, gw.client() as client:
            for _ in range(4):
                client.get("/x")
            assert lookups(gw, admin, "bad_status") == 2 and lookups(gw, admin, "breaker_open") == 2
            healthy["on"] = True

            def probe_then_miss() -> bool:
                client.get("/x")
                return lookups(gw, admin, "miss") >= 2
            wait_for(probe_then_miss, timeout=5, interval=0.1)   # probe closes it; next lookups flow
            assert lookups(gw, admin, "bad_status") == 2


def test_parallel_lookups_wait_concurrently(tmp_path, upstream):
    admin = free_port()
    with OtlpBackend(inject=inject_by_path) as backend, \
            Gateway(lookup_config(backend.url, admin, timeout_ms=3000), tmp_path,
                    mode=f"reverse:{upstream.url}") as gw:
        def one(i: int) -> int:
            with gw.client(timeout=10) as client:
                return client.get(f"/one-second?i={i}").status_code
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(one, range(20)))
        elapsed = time.monotonic() - started
    print(f"20 parallel requests behind 1 s lookups: {elapsed:.2f} s")
    assert statuses == [200] * 20
    assert elapsed < 3.0, f"{elapsed:.2f}s: lookups ran one after another (serial: 20 s)"


def test_strict_replay_never_reaches_upstream(tmp_path, upstream):
    with OtlpBackend(inject=inject_by_path) as backend, \
            Gateway(lookup_config(backend.url, free_port(), on_miss="reject"), tmp_path,
                    mode=f"reverse:{upstream.url}") as gw, gw.client() as client:
        miss = client.get("/miss")
        failed = client.get("/error")
        hit = client.get("/hit-text")
    assert miss.status_code == 404 and "no recorded answer" in miss.text
    assert failed.status_code == 503
    assert hit.status_code == 201
    assert upstream.received == []
