"""The rest of Softprobe's CLI surface (its `docs-site/reference/cli.md`) against a real `softprobe
serve` and a real gateway: doctor, inspect, capture run, replay run, export otlp, and the session
commands' `--json` envelopes, each with the exit codes and stable fields of cli.md's tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.cli import run
from testkit.recording import FAST_EXPORT
from testkit.serve import KEY, Backend, case_for
from testkit.support import BIN, LOOPBACK, Gateway, HttpServer, echo_upstream, free_port

ENVELOPE = {"status", "exitCode", "error"}
DOCTOR_CHECKS = ["runtime-reachable", "version-drift", "schema-version", "gateway-ready", "header-echo"]


def cli(capsys, *argv: object) -> tuple[int, dict[str, Any], str]:
    """`softprobe ARGV --json` in-process: the exit code, the envelope (checked against it), stderr."""
    code, out, err = run(capsys, *argv, "--json")
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # one envelope, nothing else on stdout
    document = json.loads(lines[0])
    assert ENVELOPE <= set(document) and document["exitCode"] == code, document
    assert document["status"] in ("ok", "fail", "drift")
    assert (document["error"] is None) == (code == 0), document
    if code:
        assert set(document["error"]) == {"code", "message"} and document["error"]["code"], document
    return code, document, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("surface")


@pytest.fixture(scope="module")
def runtime(workdir: Path) -> Iterator[Backend]:
    """The runtime, writing capture cases under `workdir` (its --capture-dir)."""
    with Backend(workdir / "runtime.db", cwd=workdir) as backend:
        yield backend


@pytest.fixture(scope="module")
def app() -> Iterator[HttpServer]:
    with echo_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(runtime: Backend, workdir: Path) -> Iterator[tuple[Gateway, str]]:
    """A gateway recording into the runtime, and its admin address."""
    admin = f"{LOOPBACK}:{free_port()}"
    config = {"sp_backend_url": runtime.url, "admin_listen": admin, "export": FAST_EXPORT}
    with Gateway(config, workdir) as gw:
        yield gw, admin


def test_doctor_all_green_against_serve_and_a_gateway(capsys, runtime: Backend, gateway) -> None:
    gw, admin = gateway
    code, doc, _ = cli(capsys, "doctor", "--runtime-url", runtime.url, "--admin", admin, "--proxy", gw.proxy)
    assert code == 0 and doc["status"] == "ok", doc
    assert doc["specVersion"] == "http-control-api@v1" and doc["schemaVersion"] == "1"
    assert doc["cliVersion"].endswith("(spec http-control-api@v1)") and doc["runtimeVersion"]
    assert [c["name"] for c in doc["checks"]] == DOCTOR_CHECKS
    assert all(c["status"] == "ok" for c in doc["checks"]), doc["checks"]
    echo = doc["checks"][-1]["details"]
    assert echo["sessionId"].startswith("softprobe-doctor-") and echo["httpStatus"] == 200
    code, out, _ = run(capsys, "doctor", "--runtime-url", runtime.url, "--admin", admin)
    assert code == 0 and out.startswith("softprobe 0.") and "✓ gateway-ready" in out
    assert "· header-echo: --proxy URL" in out  # not asked for: skipped, not failed
    verbose = softprobe("-v", "doctor", "--runtime-url", runtime.url, "--admin", admin)
    assert verbose.returncode == 0 and f'HTTP Request: GET {runtime.url}/health "HTTP/1.1 200 OK"' in verbose.stderr


def test_doctor_failures_exit_10(capsys, runtime: Backend, app: HttpServer) -> None:
    closed = f"http://{LOOPBACK}:{free_port()}"
    code, doc, _ = cli(capsys, "doctor", "--runtime-url", closed)
    assert (code, doc["status"], doc["error"]["code"]) == (10, "fail", "runtime_unreachable")
    assert [c["status"] for c in doc["checks"][:3]] == ["fail", "skip", "skip"]
    # Nothing on the default admin port: a warning, not a failure; an admin port named and closed fails.
    code, doc, _ = cli(capsys, "doctor", "--runtime-url", runtime.url, "--admin", f"{LOOPBACK}:{free_port()}")
    assert (code, doc["error"]["code"]) == (10, "gateway_not_ready")
    # No proxy there, and a proxy that does not pass the session on (the app answers itself: no gateway).
    for proxy in (closed, app.url):
        code, doc, _ = cli(capsys, "doctor", "--runtime-url", runtime.url, "--proxy", proxy)
        assert (code, doc["error"]["code"], doc["checks"][-1]["status"]) == (10, "header_not_echoed", "fail")


def test_doctor_detects_drift_and_a_missing_token(capsys, tmp_path: Path) -> None:
    """A runtime speaking another spec is `drift` (exit 10, runtime_drift); a keyed one without the token says so."""
    def other_runtime(got) -> tuple[int, dict[str, str], bytes]:
        meta = {"runtimeVersion": "9.9.9", "specVersion": "http-control-api@v2", "schemaVersion": "7"}
        body = {"status": "ok"} if got.path == "/health" else meta
        return 200, {"content-type": "application/json"}, json.dumps(body).encode()

    with HttpServer(other_runtime) as newer:
        code, doc, _ = cli(capsys, "doctor", "--runtime-url", newer.url)
    assert (code, doc["status"], doc["error"]["code"]) == (10, "drift", "runtime_drift")
    assert doc["specVersion"] == "http-control-api@v2"
    assert {c["name"]: c["status"] for c in doc["checks"]}["schema-version"] == "fail"
    with Backend(tmp_path / "keyed.db", KEY) as keyed:
        code, doc, _ = cli(capsys, "doctor", "--runtime-url", keyed.url)
        assert (code, doc["error"]["code"]) == (10, "auth_required")
        os.environ["SOFTPROBE_API_TOKEN"] = KEY
        try:
            assert cli(capsys, "doctor", "--runtime-url", keyed.url)[0] == 0
        finally:
            del os.environ["SOFTPROBE_API_TOKEN"]


def test_session_commands_stable_fields(capsys, runtime: Backend, tmp_path: Path) -> None:
    """cli.md's per-command stable fields of `session start|load-case|rules apply|policy set|stats|close`."""
    url = ("--runtime-url", runtime.url)
    case, rules = tmp_path / "checkout.case.json", tmp_path / "rules.yaml"
    case.write_text(json.dumps(case_for("prices.test")))
    rules.write_text("rules:\n  - when: {host: a.test}\n    then: {action: passthrough}\n")
    code, started, _ = cli(capsys, "session", "start", "--mode", "replay", *url)
    assert code == 0 and {"sessionId", "sessionRevision", "mode", "specVersion", "schemaVersion"} <= set(started)
    sid = started["sessionId"]
    fields = {
        ("load-case", "--file", str(case)): {"sessionId", "sessionRevision", "caseId", "traceCount"},
        ("rules", "apply", "--file", str(rules)): {"sessionId", "sessionRevision", "ruleCount"},
        ("policy", "set", "--strict"): {"sessionId", "sessionRevision"},
        ("stats",): {"sessionId", "sessionRevision", "stats"},
    }
    for argv, stable in fields.items():
        code, doc, _ = cli(capsys, "session", *argv, "--session", sid, *url)
        assert code == 0 and stable <= set(doc), (argv, doc)
    assert (doc["stats"], doc["injectedSpans"]) == ({"extractedSpans": 0, "injectedSpans": 0, "strictMisses": 0}, 0)
    code, closed, _ = cli(capsys, "session", "close", "--session", sid, *url)
    assert code == 0 and closed["sessionId"] == sid and set(closed["stats"]) == {
        "extractedSpans", "injectedSpans", "strictMisses"}
    code, doc, _ = cli(capsys, "session", "stats", "--session", sid, *url)
    assert (code, doc["error"]["code"]) == (4, "unknown_session")
    bad = tmp_path / "bad.yaml"
    bad.write_text('{"rules": [{"when": {}, "then": {"action": "explode"}}]}')
    sid = cli(capsys, "session", "start", "--mode", "replay", *url)[1]["sessionId"]
    code, doc, _ = cli(capsys, "session", "rules", "apply", "--session", sid, "--file", str(bad), *url)
    assert (code, doc["error"]["code"]) == (5, "invalid_request")


def test_inspect_case_and_session(capsys, runtime: Backend, tmp_path: Path) -> None:
    case = tmp_path / "checkout.case.json"
    case.write_text(json.dumps(case_for("prices.test")))
    code, doc, _ = cli(capsys, "inspect", "case", case)
    assert code == 0 and (doc["caseId"], doc["version"], doc["traceCount"]) == ("checkout", "1.0.0", 1)
    summary = doc["spanSummary"]
    assert [{k: s[k] for k in ("direction", "method", "host", "path", "status")} for s in summary] == [
        {"direction": "outbound", "method": "GET", "host": "prices.test", "path": "/price", "status": 200}]
    code, out, _ = run(capsys, "inspect", "case", case)
    assert out.splitlines()[1].split() == ["DIRECTION", "METHOD", "URL", "STATUS", "BODY"]
    assert out.splitlines()[2].split() == ["outbound", "GET", "prices.test/price", "200", "13", "B"]
    broken = tmp_path / "broken.case.json"
    broken.write_text('{"traces": "no"}')
    assert cli(capsys, "inspect", "case", broken)[0] == 5
    assert cli(capsys, "inspect", "case", tmp_path / "missing.json")[0] == 1

    sid = runtime.session()
    assert runtime.client.post(f"/v1/sessions/{sid}/load-case", json=case_for("prices.test")).status_code == 200
    assert runtime.client.post(f"/v1/sessions/{sid}/policy", json={"externalHttp": "strict"}).status_code == 200
    code, doc, _ = cli(capsys, "inspect", "session", sid, "--runtime-url", runtime.url)
    assert code == 0 and {"sessionId", "sessionRevision", "mode", "stats", "policy", "rules", "caseSummary"} <= set(doc)
    assert doc["caseSummary"] == {"caseId": "checkout", "traceCount": 1} and doc["policy"] == {"externalHttp": "strict"}
    assert cli(capsys, "inspect", "session", "--session", sid, "--runtime-url", runtime.url)[1]["sessionId"] == sid
    assert cli(capsys, "inspect", "session", "nope", "--runtime-url", runtime.url)[0] == 4
    assert cli(capsys, "inspect", "session", sid, "--runtime-url", f"http://{LOOPBACK}:{free_port()}")[0] == 3


def softprobe(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "softprobe"), *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_capture_run_through_the_gateway(runtime: Backend, gateway, app: HttpServer, workdir: Path) -> None:
    """The driver's traffic, sent through the gateway in `$SOFTPROBE_SESSION_ID`, is the case written on close."""
    gw, _ = gateway
    driver = (f"{sys.executable} -c \"import os, httpx; c = httpx.Client(proxy='{gw.proxy}', trust_env=False); "
              f"h = {{'x-softprobe-session-id': os.environ['SOFTPROBE_SESSION_ID']}}; "
              f"[c.get('{app.url}/json?n=%d' % i, headers=h).raise_for_status() for i in range(3)]; print('drove')\"")
    target = workdir / "cases" / "driven.case.json"
    done = softprobe("capture", "run", "--runtime-url", runtime.url, "--driver", driver, "--out", str(target), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # the driver's own output went to stderr: stdout is the envelope's
    assert "drove" in done.stderr and doc["status"] == "ok" and doc["driverExitCode"] == 0
    assert {"sessionId", "exitCode", "stats", "capturePath"} <= set(doc) and doc["capturePath"] == str(target)
    assert doc["stats"]["extractedSpans"] == 3
    case = json.loads(target.read_text())
    assert case["caseId"] == doc["sessionId"] and len(case["traces"]) == 3
    assert runtime.client.get(f"/v1/sessions/{doc['sessionId']}/stats").status_code == 404  # closed

    failed = softprobe("capture", "run", "--runtime-url", runtime.url, "--driver", "exit 7", "--settle", "0s")
    assert failed.returncode == 7  # the driver's exit code; its session closed all the same
    slow = softprobe("capture", "run", "--runtime-url", runtime.url, "--driver", "sleep 30", "--timeout", "300ms",
                     "--settle", "0s", "--json")
    assert slow.returncode == 1 and json.loads(slow.stdout)["error"]["code"] == "driver_timeout"
    sessions = runtime.client.get("/v1/sessions").json()["sessions"]
    assert not [s for s in sessions if s["mode"] == "capture"]  # every capture session was closed
    unreachable = softprobe("capture", "run", "--runtime-url", f"http://{LOOPBACK}:{free_port()}", "--driver", "true")
    assert unreachable.returncode == 3


def inbound_case(app: HttpServer) -> dict[str, Any]:
    """A case recording one inbound GET /json of the echo app, as the app answers it."""
    host = app.url.removeprefix("http://")
    attributes = {"sp.span.type": "extract", "sp.traffic.direction": "inbound", "sp.session.id": "inbound-1",
                  "url.host": host, "url.path": "/json", "http.request.method": "GET",
                  "http.response.header.content-type": "application/json",
                  "http.response.body": '{"ok": true, "items": [1, 2]}'}
    span = {"traceId": "5af7651916cd43dd8448eb211c80319c", "spanId": "c7ad6b7169203331", "name": "/json", "kind": 2,
            "startTimeUnixNano": "1000", "endTimeUnixNano": "2000",
            "attributes": [*({"key": k, "value": {"stringValue": v}} for k, v in attributes.items()),
                           {"key": "http.response.status_code", "value": {"intValue": "200"}}]}
    return {"version": "1.0.0", "caseId": "inbound-1", "traces": [{"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}]}


def test_replay_run_is_replay_and_reports_a_live_session(capsys, runtime: Backend, app: HttpServer,
                                                         tmp_path: Path) -> None:
    case = tmp_path / "inbound.case.json"
    case.write_text(json.dumps(inbound_case(app)))
    code, doc, _ = cli(capsys, "replay", "run", case, "--target", app.url, "--db", tmp_path / "none.db")
    assert code == 0 and (doc["total"], doc["passed"], doc["differed"]) == (1, 1, 0), doc
    assert doc["cases"][0]["results"][0]["status"] == 200
    same = cli(capsys, "replay", case, "--target", app.url, "--db", tmp_path / "none.db")[1]
    assert {k: same[k] for k in ("total", "passed")} == {"total": 1, "passed": 1}  # one command, two names

    sid = runtime.session()
    assert runtime.client.post(f"/v1/sessions/{sid}/load-case", json=case_for("prices.test")).status_code == 200
    code, doc, _ = cli(capsys, "replay", "run", "--session", sid, "--runtime-url", runtime.url)
    assert code == 0 and doc["sessionId"] == sid and {"hits", "misses"} <= set(doc["stats"])
    assert doc["caseLoaded"] is True and doc["errorType"] == "case_staleness"  # loaded, nothing answered yet
    assert cli(capsys, "replay", "run", "--session", "nope", "--runtime-url", runtime.url)[0] == 4
    assert cli(capsys, "replay", "run", case)[0] == 2  # no --target: an invalid argument


def test_export_otlp_into_serve(capsys, runtime: Backend, app: HttpServer, tmp_path: Path) -> None:
    """Each trace document is one POST; what serve's /v1/traces stores is the case's session, JSON or protobuf."""
    for name, session in (("a", "export-json"), ("b", "export-proto")):
        document = inbound_case(app)
        span = document["traces"][0]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        span["attributes"][2]["value"]["stringValue"] = session
        span["spanId"] = f"{name * 2}ad6b7169203331"  # a span is stored once: each case its own
        (tmp_path / f"{name}.case.json").write_text(json.dumps(document))
    code, doc, _ = cli(capsys, "export", "otlp", "--case", tmp_path / "a.case.json", "--endpoint",
                       f"{runtime.url}/v1/traces")
    assert code == 0 and (doc["sent"], doc["failed"], doc["protocol"]) == (1, 0, "json")
    code, doc, _ = cli(capsys, "export", "otlp", "--case", tmp_path / "b.*.json", "--endpoint",
                       f"{runtime.url}/v1/traces", "--protocol", "protobuf")
    assert code == 0 and doc["sent"] == 1
    for session in ("export-json", "export-proto"):
        stored = runtime.client.get(f"/api/sessions/{session}").json()
        assert [(ex["method"], ex["path"], ex["status"]) for ex in stored["exchanges"]] == [("GET", "/json", 200)]
    bad = tmp_path / "c.case.json"
    bad.write_text(json.dumps({"version": "1.0.0", "caseId": "c", "traces": [{"resourceSpans": [{"scopeSpans": [
        {"spans": [{"traceId": "not-hex", "spanId": "00"}]}]}]}]}))
    code, doc, _ = cli(capsys, "export", "otlp", "--case", str(tmp_path / "*.case.json"), "--endpoint",
                       f"http://{LOOPBACK}:{free_port()}/v1/traces")
    assert (code, doc["sent"], doc["failed"], doc["error"]["code"]) == (1, 0, 3, "export_failed")
    assert "not OTLP JSON traces" in " ".join(doc["files"][2]["errors"])  # decoded first: never sent
    assert cli(capsys, "export", "otlp", "--case", tmp_path / "none-*.json", "--endpoint", runtime.url)[0] == 1
