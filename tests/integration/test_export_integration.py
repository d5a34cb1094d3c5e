"""A real mitmdump with the addon, a real upstream and a real OTLP backend, all on loopback."""

from __future__ import annotations

import base64
import re
import socket
import time

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from testkit.recording import FAST_EXPORT
from testkit.support import Gateway, OtlpBackend, attributes, free_port, run_mitmdump_config, wait_for


def by_path(spans):
    return {span.name: (resource, span, attributes(span.attributes)) for resource, span in spans}


def test_regular_mode_exports_each_exchange_key_by_key(tmp_path, upstream, backend):
    config = {"sp_backend_url": backend.url, "public_key": "pk-123", "export": FAST_EXPORT,
              "capture": {"max_body_bytes": 1000}}
    with Gateway(config, tmp_path) as gw, gw.client() as client:
        r = client.post(f"{upstream.url}/json?q=1&q=2", json={"a": 1},
                        headers={"x-sp-session-id": "sess-1", "authorization": "Bearer secret",
                                 "cookie": "c=1", "x-api-key": "k", "x-multi": "one",
                                 "x-sp-service-name": "checkout"})
        assert r.status_code == 200 and r.json() == {"ok": True, "items": [1, 2]}
        # Repeated header: sent twice on the wire, exported once, joined.
        client.get(f"{upstream.url}/gzip", headers=[("x-rep", "a"), ("x-rep", "b")])
        client.post(f"{upstream.url}/binary", content=b"\x00\x01\xff",
                    headers={"content-type": "application/octet-stream"})
        client.post(f"{upstream.url}/form", data={"name": "ada lovelace"})
        client.get(f"{upstream.url}/empty")
        client.get(f"{upstream.url}/big/5000")
        client.get(f"{upstream.url}/style.css")        # static by path: not recorded
        client.get(f"{upstream.url}/page")             # static by response type: not recorded
        client.get(f"{upstream.url}/v1/traces")        # exempt by default rule
        client.get(f"{upstream.url}/_next/data/x.json")  # framework internal
        spans = by_path(backend.wait_spans(6))
        gw_log = gw.output()

    assert set(spans) == {"/json", "/gzip", "/binary", "/form", "/empty", "/big/5000"}, gw_log
    resource, span, a = spans["/json"]
    assert resource == {"service.name": "checkout", "sp.public.key": "pk-123",
                        "sp.resource.type": "sp-envoy-proxy"}
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert len(span.trace_id) == 16 and len(span.span_id) == 8 and span.parent_span_id == b""
    assert span.status.code == Status.STATUS_CODE_UNSET
    assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
    host = f"127.0.0.1:{upstream.port}"
    expected = {
        "sp.service.name": "checkout", "sp.traffic.direction": "outbound",
        "sp.span.type": "extract", "sp.session.id": "sess-1",
        "http.request.header.:method": "POST", "http.request.header.:path": "/json?q=1&q=2",
        "http.request.header.:authority": host, "http.request.header.:scheme": "http",
        "url.path": "/json?q=1&q=2", "url.host": host,
        "http.request.body": '{"a":1}',
        "http.response.header.:status": "200",
        "http.response.header.content-type": "application/json",
        "http.response.status_code": 200,
        "http.response.body": '{"ok": true, "items": [1, 2]}',
    }
    assert {k: a.get(k) for k in expected} == expected
    assert a["http.request.header.x-multi"] == "one"
    assert a["http.request.header.x-sp-service-name"] == "checkout"
    for secret in ("authorization", "cookie", "x-api-key"):
        assert f"http.request.header.{secret}" not in a
    assert "Bearer secret" not in repr(a) and "pk-123" not in repr(a)
    # Request headers are recorded as the client sent them, not with the propagated context.
    assert "http.request.header.tracestate" not in a

    _, _, gz = spans["/gzip"]
    assert gz["http.response.body"] == '{"zipped": "yes"}'          # decoded from gzip
    assert gz["http.response.header.content-encoding"] == "gzip"
    assert gz["http.request.header.x-rep"] == "a, b"
    assert "http.request.body" not in gz                           # empty body: no attribute

    _, _, binary = spans["/binary"]
    assert base64.b64decode(binary["http.request.body"]) == b"\x00\x01\xff"
    assert base64.b64decode(binary["http.response.body"]) == bytes(range(256))

    _, _, form = spans["/form"]
    assert form["http.request.body"] == "name=ada+lovelace"          # form is text

    _, _, empty = spans["/empty"]
    assert empty["http.response.status_code"] == 204 and "http.response.body" not in empty

    _, _, big = spans["/big/5000"]
    assert big["http.response.body"] == "x" * 1000
    assert big["http.response.body.truncated"] is True
    assert big["http.response.body.original_size"] == 5000
    assert "http.request.body.truncated" not in big


def test_trace_context_reaches_upstream(tmp_path, upstream, backend):
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    config = {"sp_backend_url": backend.url, "export": FAST_EXPORT}
    with Gateway(config, tmp_path) as gw, gw.client() as client:
        client.get(f"{upstream.url}/a", headers={"traceparent": parent, "x-sp-num": "4",
                                                 "tracestate": "vendor=1,x-sp-traceparent=junk"})
        client.get(f"{upstream.url}/b")
        spans = by_path(backend.wait_spans(2))
    first, second = upstream.received[-2:]
    _, span_a, attrs_a = spans["/a"]
    assert span_a.trace_id.hex() == "ab" * 16 and span_a.parent_span_id.hex() == "cd" * 8
    own = f"00-{'ab' * 16}-{span_a.span_id.hex()}-01"
    assert first.headers["traceparent"] == parent          # kept when the client sent one
    session = attrs_a["sp.session.id"]
    assert re.fullmatch(r"sp-session-[0-9a-f-]{36}", session)
    assert first.headers["tracestate"] == \
        f"x-sp-traceparent={own},x-softprobe-session-id={session},x-sp-session-id={session},vendor=1"
    assert first.headers["x-sp-num"] == "5"
    _, span_b, _ = spans["/b"]
    assert second.headers["traceparent"] == f"00-{span_b.trace_id.hex()}-{span_b.span_id.hex()}-01"
    assert second.headers["x-sp-num"] == "0"
    assert span_b.trace_id != span_a.trace_id and span_b.parent_span_id == b""


def test_reverse_mode_records_inbound_server_spans(tmp_path, upstream, backend):
    config = {"sp_backend_url": backend.url, "export": FAST_EXPORT, "service_name": "orders"}
    with Gateway(config, tmp_path, mode=f"reverse:{upstream.url}") as gw, gw.client() as client:
        assert client.get("/fail").status_code == 503
        (resource, span), = backend.wait_spans(1)
    a = attributes(span.attributes)
    assert span.kind == Span.SPAN_KIND_SERVER and a["sp.traffic.direction"] == "inbound"
    assert span.status.code == Status.STATUS_CODE_ERROR               # 5xx
    assert resource["service.name"] == a["sp.service.name"] == "orders"


def test_failed_exchange_is_exported_as_error(tmp_path, backend):
    config = {"sp_backend_url": backend.url, "export": FAST_EXPORT}
    with Gateway(config, tmp_path) as gw, gw.client() as client:
        assert client.get(f"http://127.0.0.1:{free_port()}/gone").status_code == 502
        (_, span), = backend.wait_spans(1)
    a = attributes(span.attributes)
    assert span.status.code == Status.STATUS_CODE_ERROR and "connect call failed" in a["error.message"].lower()
    assert "http.response.status_code" not in a


def test_collection_rules_are_enforced(tmp_path, upstream, backend):
    config = {"sp_backend_url": backend.url, "export": FAST_EXPORT,
              "collectionRules": {"http": {"client": [{"host": r"^127\.0\.0\.1$", "paths": ["^/keep"]}]}}}
    with Gateway(config, tmp_path) as gw, gw.client() as client:
        client.get(f"{upstream.url}/drop")
        client.get(f"{upstream.url}/keep/1")
        assert len(upstream.received) == 2                 # not recorded is still proxied
        # One queue, one worker, batches in order: had /drop been recorded, it would have reached
        # the backend no later than /keep/1, which came after it.
        backend.wait_spans(1)
    assert [s.name for _, s in backend.spans()] == ["/keep/1"]


def blackhole() -> tuple[socket.socket, str]:
    """A socket that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1000)
    return s, f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["down", "hanging"])
def test_backend_outage_never_slows_traffic_and_drops_are_counted(tmp_path, upstream, kind):
    hole, url = blackhole() if kind == "hanging" else (None, f"http://127.0.0.1:{free_port()}")
    admin = free_port()
    config = {"sp_backend_url": url, "admin_listen": f"127.0.0.1:{admin}",
              "export": {"flush_interval_ms": 10, "timeout_s": 5.0,
                         "queue_max_spans": 20, "batch_max_spans": 5,
                         "shutdown_timeout_s": 1.0}}
    try:
        with Gateway(config, tmp_path) as gw, gw.client(timeout=5) as client:
            started = time.monotonic()
            for i in range(60):
                assert client.get(f"{upstream.url}/big/2000?i={i}").status_code == 200
            elapsed = time.monotonic() - started
            dropped = wait_for(lambda: gw.metric(admin, 'softprobe_export_dropped_spans_total{reason="queue_full"}')
                               + gw.metric(admin, 'softprobe_export_dropped_spans_total{reason="send_failed"}'))
            queued = gw.metric(admin, "softprobe_export_queue_spans")
            output = gw.output()
    finally:
        if hole:
            hole.close()
    assert elapsed < 6, f"60 proxied requests took {elapsed:.1f}s with the backend {kind}"
    assert dropped > 0 and queued <= 20
    assert output.count("softprobe: dropped") <= 3, "loss logging must be rate-limited"


def test_transient_export_failures_are_retried(tmp_path, upstream):
    statuses = {1: 503, 3: 500}  # attempt 2 is the retry of the first batch
    with OtlpBackend(export_status=lambda n: statuses.get(n, 200)) as backend:
        config = {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20},
                  "admin_listen": f"127.0.0.1:{(admin := free_port())}"}
        with Gateway(config, tmp_path) as gw, gw.client() as client:
            client.get(f"{upstream.url}/first")            # 503 then 200: retried, delivered
            backend.wait_spans(1)
            client.get(f"{upstream.url}/second")           # 500: not retried, counted as dropped
            wait_for(lambda: gw.metric(admin, 'softprobe_export_dropped_spans_total{reason="send_failed"}') == 1)
            client.get(f"{upstream.url}/third")
            backend.wait_spans(2)
            assert gw.metric(admin, "softprobe_export_retries_total") == 1
    assert [s.name for _, s in backend.spans()] == ["/first", "/third"]


def test_shutdown_flushes_the_queue(tmp_path, upstream, backend):
    config = {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 60_000, "batch_max_spans": 1000}}
    gw = Gateway(config, tmp_path)
    with gw.client() as client:
        for i in range(5):
            client.get(f"{upstream.url}/n{i}")
    assert backend.spans() == []                 # nothing sent yet: the interval is a minute
    assert gw.stop() == 0
    assert len(backend.spans()) == 5


def test_readiness_and_health(tmp_path, backend):
    admin = free_port()
    with Gateway({"sp_backend_url": backend.url, "admin_listen": f"127.0.0.1:{admin}"}, tmp_path):
        base = f"http://127.0.0.1:{admin}"
        assert httpx.get(f"{base}/healthz", trust_env=False).status_code == 200
        wait_for(lambda: httpx.get(f"{base}/readyz", trust_env=False).status_code == 200)


@pytest.mark.parametrize("text, key", [
    ("bogus: 1\n", "'bogus': unknown key"),
    ("capture: {max_body_bytes: lots}\n", "'capture.max_body_bytes': expected a size such as 64k or 1m, got 'lots'"),
    ("lookups: {on_miss: reject}\n", "'lookups': unknown key, did you mean 'lookup'?"),
    ("exemptionRules: [{pathPatterns: ['(']}]\n", "'exemptionRules[0].pathPatterns[0]': invalid regular expression"),
    ("sp_backend_url: 'http://host:port'\n", "'sp_backend_url': 'http://host:...' has a port that is not a number"),
    ("sp_backend_url: 'ftp://x'\n", "'sp_backend_url': expected an http(s)://"),
    ("collectionRules: {http: {client: [{host: '[a'}]}}\n", "'collectionRules.http.client[0].host': invalid"),
])
def test_bad_config_stops_startup_with_one_line(tmp_path, text, key):
    result = run_mitmdump_config(tmp_path, text)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "bad.yaml" in line]
    assert len(lines) == 1 and key in lines[0], result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
