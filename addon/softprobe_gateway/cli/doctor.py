"""`softprobe doctor`: is everything a test run needs there? Softprobe's checks of the runtime
(`GET /health` answers; `/v1/meta`'s spec and schema versions are the ones this CLI speaks), and
instead of its check for the Envoy WASM binary, the gateway's own: its admin port's `/readyz`,
and with `--proxy` a request sent through the gateway to an echo server of this command's, which
must arrive carrying the session as the gateway passes it on (`tracestate`'s `x-sp-session-id`).

Exit 0 when no check failed, 10 when one did (warnings do not count), as Softprobe's CLI.
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

import httpx

from softprobe_gateway import __version__
from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.browse import DEFAULT_ADMIN
from softprobe_gateway.cli.common import Settings
from softprobe_gateway.cli.session import Runtime, runtime_options
from softprobe_gateway.decisions.tracecontext import SESSION_HEADERS, SP_SESSION
from softprobe_gateway.server.control_api import SCHEMA_VERSION, SPEC_VERSION

SUPPORTED_SCHEMAS = (SCHEMA_VERSION,)
MARKS = {"ok": "✓", "warn": "⚠", "fail": "✗", "skip": "·"}
TIMEOUT = 5.0


def register(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser("doctor", parents=[runtime_options()], help="check the runtime and the gateway",
                                 description=__doc__.split("\n\n")[0])
    doctor.add_argument("--config", help="gateway config YAML whose admin_listen is checked (default: $SOFTPROBE_CONFIG)")
    doctor.add_argument("--admin", metavar="HOST:PORT",
                        help=f"the gateway's admin address (default: the config's admin_listen, else {DEFAULT_ADMIN}, "
                             "where nothing answering is only a warning)")
    doctor.add_argument("--proxy", metavar="URL",
                        help="the gateway as an explicit proxy (http://HOST:PORT): check that a request through it "
                             "arrives with the session passed on")
    doctor.set_defaults(command=cmd_doctor, db=None)


@dataclass
class Check:
    name: str
    status: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)
    code: str = ""  # the envelope's error code when this check is the one that failed

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, **({"details": self.details} if self.details else {})}


def cmd_doctor(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    runtime = Runtime(args.runtime_url)
    meta: dict[str, Any] = {}
    health = _runtime_health(runtime)
    checks = [health]
    if health.status == "ok":
        meta, version_checks = _versions(runtime)
        checks += version_checks
    else:
        checks += [Check("version-drift", "skip"), Check("schema-version", "skip")]
    checks.append(_gateway_ready(args.admin or settings.config.admin_listen, explicit=bool(
        args.admin or settings.config.admin_listen)))
    checks.append(_header_echo(args.proxy) if args.proxy else Check(
        "header-echo", "skip", {"message": "--proxy URL sends a request through the gateway"}))
    cli_version = f"{__version__} (spec {SPEC_VERSION})"
    envelope.report(out, cliVersion=cli_version, runtimeVersion=meta.get("runtimeVersion", ""),
                    specVersion=meta.get("specVersion", ""), schemaVersion=meta.get("schemaVersion", ""),
                    checks=[c.json() for c in checks])
    print(f"softprobe {cli_version}", file=out)
    print(f"runtime healthy: {'ok' if health.status == 'ok' else 'no'}", file=out)
    for key in ("runtimeVersion", "specVersion", "schemaVersion"):
        if key in meta:
            print(f"{key}: {meta[key]}", file=out)
    for check in checks:
        message = check.details.get("message")
        print(f"{MARKS[check.status]} {check.name}" + (f": {message}" if message else ""), file=out)
    failed = [c for c in checks if c.status == "fail"]
    if not failed:
        return envelope.EXIT_OK
    first = failed[0]
    envelope.outcome(out, "drift" if first.code == "runtime_drift" else "", first.code,
                     first.details.get("message", first.name))
    return envelope.EXIT_DOCTOR


def _runtime_health(runtime: Runtime) -> Check:
    check = Check("runtime-reachable", details={"url": runtime.url}, code="runtime_unreachable")
    started = time.monotonic()
    try:
        answer = runtime.client.get("/health", timeout=TIMEOUT)
    except httpx.HTTPError as e:
        check.status, check.details["message"] = "fail", f"runtime {runtime.url} unreachable: {e}"
        return check
    check.details["latencyMs"] = round((time.monotonic() - started) * 1000, 1)
    if answer.status_code != 200:
        check.status, check.details["message"] = "fail", f"GET /health answered {answer.status_code}"
    return check


def _versions(runtime: Runtime) -> tuple[dict[str, Any], list[Check]]:
    """`/v1/meta` against the versions this CLI speaks: another spec or an unsupported schema is drift."""
    try:
        answer = runtime.client.get("/v1/meta", timeout=TIMEOUT)
        meta = answer.json() if answer.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as e:
        answer, meta = None, {"error": str(e)}
    if not isinstance(meta, dict) or answer is None or answer.status_code != 200:
        status = answer.status_code if answer is not None else "no answer"
        hint = "; set SOFTPROBE_API_TOKEN" if status in (401, 403) else ""
        failed = Check("version-drift", "fail", {"message": f"GET /v1/meta: {status}{hint}"},
                       "auth_required" if hint else "runtime_meta_unavailable")
        return {}, [failed, Check("schema-version", "skip")]
    spec, schema = str(meta.get("specVersion", "")), str(meta.get("schemaVersion", ""))
    drift = Check("version-drift", details={"cli": __version__, "runtime": meta.get("runtimeVersion", ""),
                                            "expected": SPEC_VERSION, "got": spec}, code="runtime_drift")
    if spec != SPEC_VERSION:
        drift.status = "fail"
        drift.details["message"] = f"the runtime speaks {spec or 'no spec'}, this CLI {SPEC_VERSION}"
    schema_check = Check("schema-version", details={"expected": SCHEMA_VERSION, "got": schema},
                         code="runtime_drift")
    if schema not in SUPPORTED_SCHEMAS:
        schema_check.status = "fail"
        schema_check.details["message"] = f"schema {schema or 'none'} is not one of {', '.join(SUPPORTED_SCHEMAS)}"
    return meta, [drift, schema_check]


def _gateway_ready(address: str, explicit: bool) -> Check:
    """The gateway's `/readyz`. Nothing answering at the default address is a warning: a runtime
    is often checked without a gateway on this machine."""
    address = address or DEFAULT_ADMIN
    url = f"http://{address}/readyz"
    check = Check("gateway-ready", details={"url": url}, code="gateway_not_ready")
    started = time.monotonic()
    try:
        answer = httpx.get(url, timeout=TIMEOUT, trust_env=False)
    except httpx.HTTPError as e:
        check.status = "fail" if explicit else "warn"
        check.details["message"] = f"no gateway admin port answering at {address} ({type(e).__name__})" + (
            "" if explicit else "; --admin HOST:PORT names one")
        return check
    check.details["latencyMs"] = round((time.monotonic() - started) * 1000, 1)
    if answer.status_code != 200:
        check.status = "fail"
        check.details["message"] = f"{url} answered {answer.status_code}: {answer.text.strip()[:200]}"
    return check


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with the header fields it arrived with, as JSON."""

    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _header_echo(proxy: str) -> Check:
    """A request through the gateway to a loopback echo server, in a session of its own
    (`softprobe-doctor-...`, which the gateway records like any other): it must arrive with the
    session header and the gateway's `tracestate` entry for it."""
    session = f"softprobe-doctor-{secrets.token_hex(4)}"
    check = Check("header-echo", details={"proxyURL": proxy, "sessionId": session}, code="header_not_echoed")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = f"http://127.0.0.1:{server.server_address[1]}/softprobe-doctor"
        with httpx.Client(proxy=proxy, trust_env=False, timeout=TIMEOUT) as client:
            answer = client.get(target, headers={SESSION_HEADERS[0]: session})
    except (httpx.HTTPError, ValueError) as e:
        check.status, check.details["message"] = "fail", f"proxy {proxy} unreachable: {e}"
        return check
    finally:
        server.shutdown()
        server.server_close()
    check.details["httpStatus"] = answer.status_code
    try:
        seen = answer.json() if answer.status_code == 200 else {}
    except ValueError:
        seen = {}
    passed_on = f"{SP_SESSION}={session}" in seen.get("tracestate", "")
    if not (isinstance(seen, dict) and seen.get(SESSION_HEADERS[0]) == session and passed_on):
        check.status = "fail"
        check.details["message"] = (f"the request through {proxy} arrived without the session passed on "
                                    f"(answer {answer.status_code}, tracestate {seen.get('tracestate')!r})"
                                    if isinstance(seen, dict) else "not the echo's answer")
    return check
