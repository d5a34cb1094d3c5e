"""The pure parts, without a proxy: rules, trace context, capture encoding, hit decoding, breaker,
config errors, and the addon's hooks through mitmproxy's own test helpers."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import typing
import zlib

import brotli
import pytest
import zstandard
from mitmproxy.test import tflow
from softprobe_gateway.capture.encoding import Capture, decode_body, encode_body, is_text
from softprobe_gateway.capture.exchange import Exchange, Message
from softprobe_gateway.config import schema as cfg
from softprobe_gateway.config.loader import load_config
from softprobe_gateway.config.validate import parse_size
from softprobe_gateway.decisions.rules import STATIC, RecordingRules, is_static
from softprobe_gateway.decisions.tracecontext import (
    SpanContext,
    new_context,
    parse_traceparent,
    parse_tracestate,
    propagated_headers,
    session_id,
)
from softprobe_gateway.metrics import Metrics
from softprobe_gateway.otlp import BadAnswer, hit_body, hit_from_traces, key_value, make_span, traces_data
from softprobe_gateway.proxy.lookup import Breaker

TP = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


def headers(d: dict[str, str]):
    lower = {k.lower(): v for k, v in d.items()}
    return lambda name: lower.get(name)


# -- rules --------------------------------------------------------------------------------


def rules(**kw) -> RecordingRules:
    c = cfg.Config(**kw)
    return RecordingRules(c.exemption_rules, c.collection_rules)


@pytest.mark.parametrize("path, hdrs, reason", [
    ("/v1/traces", {}, "exempt"), ("/otlp/v1/logs", {}, "exempt"), ("/v1/tracesx", {}, None),
    ("/page?_rsc=abc", {}, "framework"), ("/_next/static/x", {}, "framework"),
    ("/a", {"accept": "text/x-component"}, "framework"), ("/a", {"RSC": "1"}, "framework"),
    ("/a", {"sec-purpose": "Prefetch"}, "framework"), ("/a", {"purpose": "prefetchx"}, None),
    ("/app.JS?v=1", {}, None), ("/api/js", {}, None),  # static or not depends on the answer too
])
def test_skip_reasons_in_protocol_order(path, hdrs, reason):
    assert rules().skip_request("h", path, headers(hdrs)) == reason


def test_exemption_and_collection_rules():
    r = rules(exemption_rules=(cfg.ExemptionRule(hostPatterns=("^internal",), pathPatterns=("^/x",)),),
              collection_rules=cfg.CollectionRules(cfg.HttpCollection(
                  server=(cfg.ServerRule("^/api/"),),
                  client=(cfg.ClientRule("pay\\.example", ("^/v1/",)), cfg.ClientRule("any\\.host", ())))))
    h = headers({})
    assert r.skip_request("internal.svc", "/x/1", h) == "exempt"
    assert r.skip_request("other", "/x/1", h) == "not_collected"   # host pattern did not match
    assert r.skip_request("other", "/api/orders?x=1", h) is None      # server rule
    assert r.skip_request("pay.example.com", "/v1/charge", h) is None
    assert r.skip_request("pay.example.com", "/v2/charge", h) == "not_collected"
    assert r.skip_request("any.host", "/whatever", h) is None         # no paths: any path
    # Custom exemptions replace the defaults: OTLP paths are then recordable.
    assert r.skip_request("h", "/v1/traces", h) == "not_collected"


def test_exemption_paths_searched_as_one_pattern_or_one_by_one():
    """An exemption's path patterns are joined into one search; one with flags of its own
    (`(?i)` must start a pattern) cannot join, and they are searched one by one, alike."""
    for patterns in (("^/a$", "b"), ("(?i)^/A$", "b")):
        r = rules(exemption_rules=(cfg.ExemptionRule(pathPatterns=patterns),))
        h = headers({})
        assert [r.skip_request("h", p, h) for p in ("/a", "/xbx", "/c", "/a/")] == ["exempt", "exempt", None, None]


@pytest.mark.parametrize("ctype, static", [
    ("text/html; charset=utf-8", True), ("IMAGE/png", True), ("font/woff2", True),
    ("application/javascript", True), ("text/css", True), ("application/json", False),
    (None, False), ("text/plain", False),
])
def test_static_response_types(ctype, static):
    assert is_static("GET", 200, "/a", ctype, 10) is static


@pytest.mark.parametrize("method, status, path, ctype, size, static", [
    ("GET", 200, "/app.JS?v=1", "application/json", 10, True),    # an asset path
    ("GET", 200, "/font.woff2", None, 10, True),
    ("GET", 206, "/movie.png", "image/png", 10, True),             # a range of an asset
    ("GET", 204, "/", "text/html; charset=utf-8", 0, False),       # Flask's empty answer
    ("GET", 200, "/", "text/html", 0, False),                      # empty
    ("GET", 302, "/login", "text/html; charset=utf-8", 189, False),  # Flask/Django/Express redirects
    ("GET", 304, "/app.js", None, 0, False),
    ("GET", 404, "/missing", "text/html; charset=utf-8", 207, False),  # framework error pages
    ("GET", 500, "/app.js", "text/html", 265, False),
    ("POST", 200, "/form", "text/html", 50, False),                # another method's answer
    ("HEAD", 200, "/index.html", "text/html", 0, False),
    ("GET", 101, "/ws", None, 0, False),
])
def test_only_a_successful_get_of_a_page_or_asset_is_static(method, status, path, ctype, size, static):
    assert is_static(method, status, path, ctype, size) is static


# -- trace context -------------------------------------------------------------------------


@pytest.mark.parametrize("value, ok", [
    (TP, True), ("00-" + "A" * 32 + "-" + "b" * 16 + "-01", False), ("00-" + "0" * 32 + "-" + "2" * 16 + "-01", False),
    ("01-" + "1" * 32 + "-" + "2" * 16 + "-01", False), ("garbage", False), ("", False), (None, False),
])
def test_parse_traceparent(value, ok):
    assert (parse_traceparent(value) is not None) is ok


def test_context_prefers_sp_traceparent_then_w3c_then_new():
    other = "00-" + "3" * 32 + "-" + "4" * 16 + "-01"
    ctx = new_context(parse_tracestate(f"a=1, x-sp-traceparent={other}"), TP)
    assert ctx.trace_id.hex() == "3" * 32 and ctx.parent_span_id.hex() == "4" * 16
    ctx = new_context(parse_tracestate("x-sp-traceparent=bad"), TP)
    assert ctx.trace_id.hex() == "1" * 32 and ctx.parent_span_id.hex() == "2" * 16
    fresh = {new_context([], None).trace_id for _ in range(50)}
    assert len(fresh) == 50 and all(len(t) == 16 for t in fresh)


def test_session_id_precedence():
    state = parse_tracestate("x-sp-session-id=from-state")
    assert session_id(headers({"x-session-id": "c", "sp_session_id": "b"}), state) == "b"
    assert session_id(headers({"x-sp-session-id": " ", "x-session-id": "c"}), state) == "c"
    assert session_id(headers({}), state) == "from-state"
    softprobe = headers({"x-softprobe-session-id": "a", "x-sp-session-id": "b", "x-session-id": "c"})
    assert session_id(softprobe, state) == "a"
    assert session_id(headers({"x-softprobe-session-id": "a,b", "x-sp-session-id": "b"}), state) == "b"
    assert session_id(headers({}), []).startswith("sp-session-")
    assert len(session_id(headers({"x-sp-session-id": "s" * 10_000}), [])) == 256


def test_propagated_headers_rewrite_tracestate_and_count_hops():
    ctx = SpanContext(bytes.fromhex("a" * 32), bytes.fromhex("b" * 16))
    state = parse_tracestate("k1=v1,x-sp-traceparent=old,k2=v2")
    out = propagated_headers(ctx, "s1", state, has_traceparent=False, sp_num="7")
    both = "x-softprobe-session-id=s1,x-sp-session-id=s1"  # both kinds of proxy find it
    assert out["tracestate"] == f"x-sp-traceparent={ctx.traceparent},{both},k1=v1,k2=v2"
    assert out["traceparent"] == ctx.traceparent and out["x-sp-num"] == "8"
    state = parse_tracestate("x-sp-session-id=keep")
    out = propagated_headers(ctx, "keep", state, has_traceparent=True, sp_num="nan")
    assert out["tracestate"] == f"x-sp-traceparent={ctx.traceparent},x-softprobe-session-id=keep,x-sp-session-id=keep"
    assert "traceparent" not in out and out["x-sp-num"] == "0"


# -- capture encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("ctype, text", [
    ("text/plain", True), ("Application/JSON; charset=utf-8", True), ("application/xml", True),
    ("application/x-www-form-urlencoded", True), ("application/problem+json", True),
    ("application/atom+xml;q=1", True), ("application/octet-stream", False), (None, False),
    ("image/png", False),
])
def test_text_rule(ctype, text):
    assert is_text(ctype) is text


def test_encode_body_text_and_base64():
    assert encode_body(b"caf\xc3\xa9 \xff", "text/plain") == "café \ufffd"
    assert encode_body(b"\x00\x01", None) == "AAE="


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some servers send
    ("br", brotli.compress), ("zstd", zstandard.ZstdCompressor().compress),
])
def test_decode_body_is_bounded(encoding, compress):
    body = b"0123456789" * 1000
    assert decode_body(compress(body), encoding, 1_000_000) == (body, True)
    bomb = compress(b"\0" * 50_000_000)            # 50 MB of zeros: a few KiB compressed
    partial, complete = decode_body(bomb, encoding, 1000)
    assert not complete and len(partial) == 1001


def test_decode_body_keeps_unknown_stacked_or_corrupt_encodings_raw():
    raw = gzip.compress(b"x")
    assert decode_body(raw, "gzip, br", 100) == (raw, True)
    assert decode_body(b"not gzip", "gzip", 100) == (b"not gzip", True)
    assert decode_body(b"abc", "compress", 100) == (b"abc", True)


def exchange(req_headers, req_body=None, resp=None, **kw) -> Exchange:
    return Exchange(trace_id=b"\1" * 16, span_id=b"\2" * 8, parent_span_id=b"", session_id="s",
                    service_name="svc", direction="outbound", path="/p?q=1", host="h:80",
                    start_ns=1, request=Message(req_headers, req_body, ((":method", "GET"),)),
                    response=resp, **kw)


def test_headers_joined_dropped_and_masked():
    cap = Capture(cfg.CaptureConfig(drop_headers=("X-Internal",), mask_headers=("x-user",)))
    ex = exchange([(b"Accept", b"a"), (b"accept", b"b"), (b"Authorization", b"Bearer s"),
                   (b"X-Internal", b"1"), (b"x-user", b"ada"), (b"Cookie", b"c")])
    attrs = dict(cap.request_attributes(ex))
    assert attrs["http.request.header.accept"] == "a, b"
    assert attrs["http.request.header.x-user"] == "[REDACTED]"
    assert attrs["http.request.header.:method"] == "GET"
    for gone in ("authorization", "x-internal", "cookie"):
        assert f"http.request.header.{gone}" not in attrs


def test_truncation_marks_both_bodies():
    cap = Capture(cfg.CaptureConfig(max_body_bytes=4))
    resp = Message([(b"content-type", b"text/plain"), (b"content-encoding", b"gzip")],
                   gzip.compress(b"abcdefgh"))
    ex = exchange([(b"content-type", b"application/json")], b'{"a":1}', resp, status_code=200)
    attrs = dict(cap.exchange_attributes(ex))
    assert attrs["http.request.body"] == '{"a"' and attrs["http.request.body.truncated"] is True
    assert attrs["http.request.body.original_size"] == 7
    assert attrs["http.response.body"] == "abcd" and attrs["http.response.body.truncated"] is True
    assert attrs["sp.span.type"] == "extract"


def test_repeated_fields_are_exported_joined_and_apart():
    """The protocol's one attribute per name (joined by `, `), and each value apart, in order."""
    cap = Capture(cfg.CaptureConfig())
    message = Message([(b"Link", b"</a>; rel=a"), (b"X-One", b"1"), (b"link", b"</b>; rel=b"),
                       (b"Content-Type", b"application/json"), (b"content-type", b"application/json")],
                      b"{}", ((":status", "200"),), trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"")])
    headers, body = cap.message_attributes("response", message)
    attrs = dict(headers)
    assert attrs["http.response.header.link"] == "</a>; rel=a, </b>; rel=b"
    assert attrs["http.response.header_values.link"] == ("</a>; rel=a", "</b>; rel=b")
    assert attrs["http.response.header_values.content-type"] == ("application/json",) * 2
    assert "http.response.header_values.x-one" not in attrs and attrs["http.response.header.x-one"] == "1"
    assert attrs["http.response.trailer.grpc-status"] == "0" and "http.response.header.grpc-status" not in attrs
    assert dict(body)["http.response.body"] == "{}"


# -- lookup answers -------------------------------------------------------------------------


def answer(*attrs):
    span = make_span("/", b"\1" * 16, b"\2" * 8, b"", 3, 1, 2, list(attrs), False)
    return traces_data([("svc", [span])], "")


def test_hit_takes_first_usable_span_and_filters_headers():
    data = answer(("sp.span.type", "inject"))
    span2 = make_span("/", b"\1" * 16, b"\3" * 8, b"", 3, 1, 2, [
        ("http.response.status_code", 418), ("http.response.header.:status", "418"),
        ("http.response.header.x-a", "1"), ("http.response.header.content-length", "99"),
        ("http.response.header.bad name", "x"), ("http.response.body", "tea")], False)
    data.resource_spans[0].scope_spans[0].spans.append(span2)
    hit = hit_from_traces(data, 100)
    assert (hit.status, hit.headers, hit.body) == (418, [("x-a", "1")], b"tea")


def test_hit_status_defaults_and_bounds():
    assert hit_from_traces(answer(("http.response.body", "x")), 10).status == 200
    assert hit_from_traces(answer(("http.response.body", "x"), ("http.response.status_code", 99)), 10).status == 200
    with pytest.raises(BadAnswer):
        hit_from_traces(answer(("sp.session.id", "s")), 10)
    with pytest.raises(BadAnswer):
        hit_from_traces(answer(("http.response.body", "x" * 11)), 10)


def test_hit_body_base64_rule():
    b64 = base64.b64encode(b"\x00\xff" * 60).decode()
    assert hit_body(b64, "application/octet-stream") == b"\x00\xff" * 60
    assert hit_body(b64, "text/plain") == b64.encode()           # text types are never decoded
    assert hit_body(b64, None) == b"\x00\xff" * 60               # no type: > 100 base64 chars
    assert hit_body("aGk=", None) == b"aGk="                     # short: kept (original heuristic)
    assert hit_body("not base64!", "image/png") == b"not base64!"


def test_key_value_types():
    assert key_value("b", True).value.bool_value is True
    assert key_value("i", 3).value.int_value == 3
    assert key_value("s", "x").value.string_value == "x"


# -- breaker --------------------------------------------------------------------------------


def test_breaker_opens_half_opens_and_closes():
    now = [0.0]
    b = Breaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    b.failure()
    assert b.allow()
    b.failure()
    assert not b.allow()                  # open
    now[0] = 10.0
    assert b.allow() and not b.allow()    # one probe only
    b.failure()                           # probe failed: open again for a full cool-down
    now[0] = 15.0
    assert not b.allow()
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.allow() and b.allow() and not b.open


# -- config ---------------------------------------------------------------------------------


def test_public_key_from_env_overrides_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("public_key: from-file\n")
    assert load_config(p, {}).public_key == "from-file"
    assert load_config(p, {"SOFTPROBE_PUBLIC_KEY": "from-env"}).public_key == "from-env"
    assert "from-env" not in repr(load_config(p, {"SOFTPROBE_PUBLIC_KEY": "from-env"}))


@pytest.mark.parametrize("text, message", [
    ("- a\n", "'<root>': expected a mapping"),
    ("export: {timeout_s: true}\n", "'export.timeout_s': expected a number"),
    ("enable_inject: 'yes'\n", "'enable_inject': expected true or false"),
    ("lookup: {on_miss: drop}\n", "'lookup.on_miss': must be one of"),
    ("mocks: [{headers: {a: 1}}]\n", "'mocks[0].headers': expected a mapping of strings"),
    ("capture: {max_body_bytes: -1}\n", "'capture.max_body_bytes': must be at least 0"),
    ("export: {max_retries: 4}\n", "'export.max_retries': no longer used: a failed batch is retried until"),
    ("a: [\n", "invalid YAML (line"),
    ("sp_backend_url: 'https://user:secret@o.softprobe.ai'\n", "'sp_backend_url': 'https://o.softprobe.ai' "
     "has credentials, which do not belong in it (use public_key or $SOFTPROBE_PUBLIC_KEY)"),
    # A secret-bearing value is never shown: errors reach the log and a rejected reload's /metrics.
    ("public_key: [SECRET]\n", "'public_key': expected a string, got list (its value is not shown"),
    ("redaction: {salt: {SECRET: 1}}\n", "'redaction.salt': expected a string, got dict"),
    ("sp_backend_url: 'https://o.softprobe.ai/SECRET/v1?token=SECRET'\n",
     "'https://o.softprobe.ai/...?...' has a query or fragment"),
    ("sp_backend_url: 'https://o.softprobe.ai:SECRET'\n",
     "'https://o.softprobe.ai:...' has a port that is not a number in 1-65535"),
    ("sp_backend_url: 'http://o.softprobe.ai:0'\n", "'http://o.softprobe.ai:0' has a port that is not a number in 1-65535"),
    ("sp_backend_url: 'http://[SECRET'\n", "a value of 14 characters is not a URL (a malformed host)"),
    ("sp_backend_url: [SECRET]\n", "'sp_backend_url': expected a string, got list"),
    ("sp_backend_url: SECRET\n", "expected an http(s)://, sqlite: or file: URL, got a value of 6 characters"),
    ("sp_backend_url: 'tok123:x@host'\n", "got a value of 13 characters"),  # `tok123` parses as a scheme
    # The first hour (issue 28): a size as the option spells it, the closest key, a plain URL error.
    ("capture: {max_body_bytes: 64kb}\n", "'capture.max_body_bytes': expected a size such as 64k or 1m, got '64kb'"),
    ("export: {queue_max_bytes: 1k, batch_max_bytes: 1b}\n", "'export.batch_max_bytes': must be at least 1024, got 1"),
    ("lookups: {on_miss: reject}\n", "'lookups': unknown key, did you mean 'lookup'? (known here: admin_listen,"),
    ("capture: {max_body: 1}\n", "'capture.max_body': unknown key, did you mean 'max_body_bytes'?"),
    ("sp_backend_url: 'http://'\n",
     "key 'sp_backend_url': 'http://' has no host; expected http(s)://HOST[:PORT][/PREFIX]"),
    ("sp_backend_url: 'https:///SECRET?token=SECRET'\n", "key 'sp_backend_url': 'https://...?...' has no host"),
])
def test_config_errors_name_the_key_in_one_line_and_never_a_secret(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(cfg.ConfigError) as e:
        load_config(p, {})
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value)
    assert "\n" not in str(e.value) and "SECRET" not in str(e.value), str(e.value)


def test_every_byte_size_key_takes_the_size_syntax_of_the_option(tmp_path):
    """`64k` / `1m` as `softprobe_max_body` takes them, in every *_bytes key, nested or not."""
    hints = {}
    def walk(cls, prefix=""):
        for name, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{name}.")
            elif "bytes" in name:
                hints[f"{prefix}{name}"] = tp
    walk(cfg.Config)
    assert {"capture.max_body_bytes", "capture.stream_threshold_bytes", "export.batch_max_bytes",
            "export.queue_max_bytes", "sampling.max_bytes_per_s"} <= set(hints)
    for key in hints:
        section, name = key.split(".")
        p = tmp_path / "c.yaml"
        p.write_text(f"{section}: {{{name}: 64k}}\n")
        assert getattr(getattr(load_config(p, {}), section), name) == 64 * 1024, key
        p.write_text(f"{section}: {{{name}: 2m}}\n")
        assert getattr(getattr(load_config(p, {}), section), name) == 2 * 1024 * 1024, key
    assert parse_size("1048576") == 1024 * 1024 and parse_size(" 1g ") == 1024 ** 3


def test_backend_kinds():
    assert cfg.Config().backend_kind == "store" and cfg.Config().local_path == "softprobe.db"
    c = cfg.Config(sp_backend_url="sqlite:/data/x.db")
    assert c.backend_kind == "store" and c.local_path == "/data/x.db"
    assert cfg.Config(sp_backend_url="file:out.jsonl").local_path == "out.jsonl"
    assert cfg.Config(sp_backend_url="https://o.softprobe.ai").backend_kind == "http"


# -- the skip log ---------------------------------------------------------------------------


def test_the_skipped_exchange_log_line_leaves_out_the_query(caplog):
    """A presigned URL's signature is a credential: it must not reach the proxy's log."""
    flow = tflow.tflow()
    flow.request.path = "/logo.png?X-Amz-Signature=s3cr3t&token=t0k3n"
    with caplog.at_level("INFO"):
        Metrics().skip(STATIC, flow.request, "image/png")
    assert "not recording GET http://address:22/logo.png: " in caplog.text
    assert "s3cr3t" not in caplog.text and "t0k3n" not in caplog.text
