"""Softprobe case files and HAR files in and out of the store, replayed through real gateways.

The case schema is Softprobe's own, vendored unchanged under tests/schemas/ (see its README).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.cli import run
from testkit.recording import config, flow, recorded_count
from testkit.support import Gateway

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
IDENTITY = ("sp.session.id", "sp.traffic.direction", "sp.span.type", "url.host", "url.path",
            "http.request.method")


def case_validator() -> Draft202012Validator:
    schemas = [json.loads((SCHEMAS / name).read_text()) for name in ("case.schema.json", "case-trace.schema.json")]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    return Draft202012Validator(schemas[0], registry=registry)


def spans(case: dict) -> list[dict]:
    return [span for trace in case["traces"] for rs in trace["resourceSpans"]
            for ss in rs["scopeSpans"] for span in ss["spans"]]


def attrs(span: dict) -> dict:
    return {kv["key"]: next(iter(kv["value"].values())) for kv in span["attributes"]}


def strict(db: Path) -> dict:
    return config(db, enable_inject=True, lookup={"on_miss": "reject", "timeout_ms": 2000})  # a loaded CI machine


def test_case_round_trip_record_export_validate_import_replay(recording, tmp_path: Path, capsys) -> None:
    recorded, upstream, original = recording
    imported, case_file = tmp_path / "imported.db", tmp_path / "shop.case.json"

    code, out, err = run(capsys, "case", "export", "shop", "--db", recorded, "-o", case_file)  # an id prefix
    assert code == 0 and "6 exchanges" in out and not err
    case = json.loads(case_file.read_text())
    case_validator().validate(case)
    assert (case["version"], case["caseId"], case["rules"], case["fixtures"]) == ("1.0.0", "shop-1", [], [])
    assert case["createdAt"].endswith("Z") and len(spans(case)) == 6
    for span in spans(case):
        a = attrs(span)
        assert set(IDENTITY) <= a.keys() and a["http.request.method"] == a["http.request.header.:method"]
        assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16 and span["kind"] == 3  # CLIENT

    code, out, _ = run(capsys, "case", "import", case_file, "--db", imported)
    assert code == 0 and "6 exchanges imported" in out and "sessions: shop-1" in out
    code, out, _ = run(capsys, "case", "import", case_file, "--db", imported)
    assert "0 exchanges imported" in out and "(6 were already there)" in out

    calls = len(upstream.received)  # still up: a forwarded request would show up here
    with Gateway(strict(imported), tmp_path) as gw, gw.client(headers={"x-sp-session-id": "shop-1"}) as c:
        assert flow(c, upstream.url) == original
    assert len(upstream.received) == calls


# Softprobe's profile in its minimal form, as its own tools write it: identity attributes,
# `http.request.method`, a status and a body; no pseudo-headers, no response headers, recorded
# answers typed `inject`, a SERVER kind for outbound calls, intValue as a JSON number.
def softprobe_span(span_id: str, method: str, path: str, status: int, answer: str | None = None,
                   body: str | None = None) -> dict:
    attributes = {"sp.session.id": "sess_fragment_001", "sp.traffic.direction": "outbound",
                  "sp.span.type": "inject", "url.host": "softprobe-proxy:8084", "url.path": path,
                  "http.request.method": method}
    if body is not None:
        attributes["http.request.body"] = body
    kvs = [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()]
    kvs.append({"key": "http.response.status_code", "value": {"intValue": status}})
    if answer is not None:
        kvs.append({"key": "http.response.body", "value": {"stringValue": answer}})
    return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": f"HTTP {method}",
            "kind": 2, "attributes": kvs}


MINIMAL_CASE = {
    "version": "1.0.0", "caseId": "fragment-happy-path", "suite": "dependencies", "mode": "replay",
    "createdAt": "2026-04-05T12:00:00Z", "rules": [], "fixtures": [],
    "traces": [{"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
        "scopeSpans": [{"spans": [
            softprobe_span("051581bf3cb55c13", "GET", "/fragment", 200, '{"dep":"ok"}\n'),
            softprobe_span("051581bf3cb55c14", "POST", "/v1/payment_intents", 201, '{"id":"pi_1"}',
                           body='{"amount":1000,"currency":"usd"}'),
            softprobe_span("051581bf3cb55c15", "DELETE", "/v1/sessions/7", 204),
            # no request body recorded: answers whatever the body
            softprobe_span("051581bf3cb55c17", "POST", "/v1/refunds", 200, '{"refund":"re_1"}'),
            # a lookup without an answer is no recording
            {**softprobe_span("051581bf3cb55c16", "GET", "/unanswered", 200), "attributes": []},
        ]}],
    }]}],
}


def test_minimal_softprobe_case_replays_under_the_softprobe_session_header(tmp_path: Path, capsys) -> None:
    case_file, db = tmp_path / "fragment.case.json", tmp_path / "cases.db"
    case_file.write_text(json.dumps(MINIMAL_CASE))
    case_validator().validate(MINIMAL_CASE)
    code, out, _ = run(capsys, "case", "import", case_file, "--db", db)
    assert code == 0 and "4 exchanges imported" in out and "sessions: sess_fragment_001" in out

    session = {"x-softprobe-session-id": "sess_fragment_001"}
    with Gateway(strict(db), tmp_path) as gw, gw.client(headers=session) as client:
        fragment = client.get("http://softprobe-proxy:8084/fragment")
        # the same JSON, keys in another order: matched structurally
        payment = client.post("http://softprobe-proxy:8084/v1/payment_intents",
                              content=b'{"currency": "usd", "amount": 1000}',
                              headers={"content-type": "application/json"})
        deleted = client.delete("http://softprobe-proxy:8084/v1/sessions/7")
        other = client.post("http://softprobe-proxy:8084/v1/payment_intents", json={"amount": 5})
        refund = client.post("http://softprobe-proxy:8084/v1/refunds", json={"payment": "pi_1"})
    assert (fragment.status_code, fragment.text) == (200, '{"dep":"ok"}\n')
    assert (payment.status_code, payment.text) == (201, '{"id":"pi_1"}')
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert other.status_code == 404  # strict: a different body is no match, and nothing went upstream
    assert (refund.status_code, refund.text) == (200, '{"refund":"re_1"}')


def test_case_import_refuses_what_is_not_a_case_and_imports_nothing(tmp_path: Path, capsys) -> None:
    good, bad, db = tmp_path / "good.case.json", tmp_path / "bad.case.json", tmp_path / "cases.db"
    good.write_text(json.dumps(MINIMAL_CASE))
    bad.write_text(json.dumps({"version": "1.0.0", "caseId": "x", "traces": [{"resourceSpans": [
        {"scopeSpans": [{"spans": [{"traceId": "not-hex", "spanId": "00", "attributes": []}]}]}]}]}))
    code, out, err = run(capsys, "case", "import", good, bad, "--db", db)
    assert code == 5 and err.startswith(f"softprobe: {bad}: traces[0]: not OTLP JSON traces") and not out
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "case", "import", tmp_path / "missing.json", "--db", db)
    assert code == 1 and "No such file" in err
    assert recorded_count(db) == 0


def har_entry(method: str, url: str, status: int, mime: str, text: str, encoding: str | None = None,
              headers: list | None = None, post: str | None = None) -> dict:
    request = {"method": method, "url": url, "httpVersion": "HTTP/2", "headers": headers or [],
               "queryString": [], "cookies": [], "headersSize": -1, "bodySize": 0}
    if post is not None:
        request["postData"] = {"mimeType": "application/json", "text": post}
    content = {"size": len(text), "mimeType": mime, "text": text, **({"encoding": encoding} if encoding else {})}
    return {"startedDateTime": "2026-11-25T10:00:00.000Z", "time": 12.5, "request": request,
            "response": {"status": status, "statusText": "", "httpVersion": "HTTP/2", "cookies": [],
                         "headers": [{"name": "content-type", "value": mime},
                                     {"name": "content-encoding", "value": "gzip"}],
                         "content": content, "redirectURL": "", "headersSize": -1, "bodySize": -1},
            "cache": {}, "timings": {"send": 0, "wait": 12.5, "receive": 0}}


def test_har_import_from_browser_devtools_replays(tmp_path: Path, capsys) -> None:
    har, db = tmp_path / "devtools.har", tmp_path / "har.db"
    secrets = [{"name": ":authority", "value": "shop.test"}, {"name": "Authorization", "value": "Bearer s3cret"},
               {"name": "Cookie", "value": "sid=s3cret"}, {"name": "accept", "value": "application/json"}]
    pdf = bytes(range(200))
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"},
                                       "entries": [
        har_entry("GET", "http://shop.test/api/cart?user=7", 200, "application/json", '{"items": 2}',
                  headers=secrets),
        har_entry("POST", "http://shop.test/api/pay", 201, "application/json", '{"paid": true}',
                  post='{"amount": 10}'),
        har_entry("GET", "http://shop.test/api/invoice", 200, "application/pdf", base64.b64encode(pdf).decode(), "base64"),
        har_entry("GET", "http://shop.test/app.js", 200, "application/javascript", "x()"),
        har_entry("GET", "http://shop.test/blocked", 0, "", ""),
    ]}}))
    code, out, _ = run(capsys, "har", "import", har, "--db", db, "--session", "browser-1")
    assert code == 0 and "3 exchanges imported" in out and "2 entries skipped" in out
    code, out, _ = run(capsys, "har", "import", har, "--db", db, "--session", "browser-1")
    assert "0 exchanges imported" in out  # same ids: a second import stores nothing twice

    with Store(StoreConfig(path=str(db)), read_only=True) as store:
        _, exchanges = store.session("browser-1")
    assert [(e.method, e.path, e.direction, e.service) for e in exchanges] == [
        ("GET", "/api/cart?user=7", "inbound", "shop.test"), ("POST", "/api/pay", "inbound", "shop.test"),
        ("GET", "/api/invoice", "inbound", "shop.test")]
    assert not {"authorization", "cookie"} & {name for name, _ in exchanges[0].request_headers}
    assert "s3cret" not in db.read_bytes().decode("latin-1")

    with Gateway(strict(db), tmp_path) as gw, gw.client(headers={"x-softprobe-session-id": "browser-1"}) as c:
        cart = c.get("http://shop.test/api/cart?user=7")
        paid = c.post("http://shop.test/api/pay", json={"amount": 10})
        invoice = c.get("http://shop.test/api/invoice")
    assert (cart.status_code, cart.text, cart.headers.get("content-encoding")) == (200, "{\"items\": 2}", None), cart.text
    assert (paid.status_code, paid.text) == (201, "{\"paid\": true}"), paid.text
    assert (invoice.headers["content-type"], invoice.content) == ("application/pdf", pdf)


def test_har_import_refuses_a_file_that_is_not_har(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x.har"
    path.write_text('{"log": {}}')
    code, _, err = run(capsys, "har", "import", path, "--db", tmp_path / "x.db")
    assert code == 5 and err.strip() == f"softprobe: {path}: not a HAR file: no log.entries list"


@pytest.mark.parametrize("argv, error, exit_code", [  # Softprobe's exit codes: 4 no such session, 2 a bad argument
    (["case", "export", "nope"], "no session 'nope'", 4),
    (["replay", "nope", "--target", "http://127.0.0.1:9"], "no session 'nope'", 4),
    (["replay", "s", "--target", "nope:8080"], "--target: expected http(s)://", 2),
    (["replay", "s", "--target", "http://a", "--ignore", "$"], "--ignore: no field in '$'", 2),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys, argv: list[str], error: str,
                                           exit_code: int) -> None:
    db = tmp_path / "empty.db"
    Store(StoreConfig(path=str(db))).close()
    code, _, err = run(capsys, *argv, "--db", db)
    assert code == exit_code and error in err and len(err.strip().splitlines()) == 1


def test_lookups_answer_from_an_imported_case_in_the_store_the_gateway_uses(tmp_path: Path, capsys) -> None:
    """`case import` into the store a running gateway records into: its next lookup answers."""
    db = tmp_path / "live.db"
    with Gateway(strict(db), tmp_path) as gw, gw.client(headers={"x-softprobe-session-id": "sess_fragment_001"}) as c:
        assert c.get("http://softprobe-proxy:8084/fragment").status_code == 404
        case_file = tmp_path / "fragment.case.json"
        case_file.write_text(json.dumps(MINIMAL_CASE))
        assert run(capsys, "case", "import", case_file, "--db", db)[0] == 0
        assert c.get("http://softprobe-proxy:8084/fragment").text == '{"dep":"ok"}\n'
