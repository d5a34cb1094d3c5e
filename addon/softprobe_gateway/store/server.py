"""The store over HTTP, speaking the protocol's backend side, so several gateways share one store.

`POST /v1/traces` (OTLP protobuf or JSON, optionally gzip), `POST /v1/inject` (protocol section 2),
`GET /api/sessions` and `GET /api/sessions/{id}` (section 6), and Softprobe's test control API
(`GET /health`, `/v1/meta`, `/v1/sessions...`: `control_api`), whose sessions' rules, cases and
policy answer lookups made under them first (`session_answers`). The standard library's threading
server is enough: every request is a short SQLite call, and the store is thread-safe.

It holds every recorded body and answers lookups, so with a key every route but `/health`
requires it: the `x-public-key` header the gateway already sends, or `authorization: Bearer KEY`,
compared in constant time. `softprobe serve` refuses to listen beyond loopback without one. The
control routes answer as Softprobe's runtime does: 401 `missing_bearer_token` without a key,
403 `invalid_bearer_token` with a wrong one.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import zlib
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from softprobe_gateway.formats.spans import (
    BadTraces,
    traces_from_json,
    traces_from_protobuf,
)
from softprobe_gateway.store.captures import CaptureCases
from softprobe_gateway.store.control import Sessions
from softprobe_gateway.store.control_api import ControlApi, error, health
from softprobe_gateway.store.model import SessionSummary
from softprobe_gateway.store.session_answers import SessionAnswers
from softprobe_gateway.store.store import Store, StoreError

MAX_BODY = 64 * 1024 * 1024  # the OTLP exporter's own request cap
MAX_SESSION_EXCHANGES = 10_000


class BadRequest(ValueError):
    """A client error, answered 4xx with this message."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def serve(store: Store, host: str, port: int, key: str = "",
          captures: CaptureCases | None = None) -> ThreadingHTTPServer:
    """A bound server (port 0: any free one); call `serve_forever()` on it. With a `key`,
    every request must present it. A capture session's case is written on close where `captures`
    says."""
    sessions = Sessions(store)
    answers = SessionAnswers(store, sessions)
    control = ControlApi(sessions, answers.forget, captures)
    handler = type("Handler", (_Handler,), {"store": store, "key": key.encode(), "sessions": sessions,
                                            "answers": answers, "control": control})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def loopback_only(host: str) -> bool:
    """Whether every address `host` stands for is a loopback one (127.0.0.0/8, ::1): then only
    this machine (or this network namespace) can connect. "", 0.0.0.0 and :: are every interface."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP) if host else []
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


class _Handler(BaseHTTPRequestHandler):
    store: Store
    key: bytes  # empty: no key required (loopback only)
    sessions: Sessions
    answers: SessionAnswers
    control: ControlApi
    protocol_version = "HTTP/1.1"  # keep-alive: gateways post batches back to back
    disable_nagle_algorithm = True  # else head and body, two writes, wait 40 ms for a delayed ACK
    server_version = "softprobe-backend"

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_PUT(self) -> None:
        self._dispatch(self._post)

    do_DELETE = do_PATCH = do_PUT

    def _dispatch(self, handle: Callable[[SplitResult], None]) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            self._send_json(*((HTTPStatus.OK, health()) if self.command == "GET" else
                              (HTTPStatus.METHOD_NOT_ALLOWED, error("method_not_allowed", "GET only"))))
            return
        if url.path == "/v1/meta" or url.path == "/v1/sessions" or url.path.startswith("/v1/sessions/"):
            self._control(url)
            return
        if self.command not in ("GET", "POST"):
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.command} not allowed"},
                            {"connection": "close"})
            self.close_connection = True
            return
        if self.key and not self._authorized():
            self.close_connection = True  # the unread body must not be taken for a request
            self._send_json(HTTPStatus.UNAUTHORIZED,
                            {"error": "a key is required: x-public-key or authorization: Bearer"},
                            {"www-authenticate": "Bearer", "connection": "close"})
            return
        try:
            handle(url)
        except BadRequest as e:
            self._send_json(e.status, {"error": str(e)})
        except StoreError as e:
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(e)})

    def _post(self, url: SplitResult) -> None:
        if url.path not in ("/v1/traces", "/v1/inject"):
            raise BadRequest(f"no such endpoint: POST {url.path}", HTTPStatus.NOT_FOUND)
        body = self._body()
        content_type = self.headers.get("content-type", "application/x-protobuf").lower()
        try:
            traces = (traces_from_json(body) if content_type.startswith("application/json")
                      else traces_from_protobuf(body))
        except BadTraces as e:
            raise BadRequest(str(e)) from None
        if url.path == "/v1/traces":
            self.sessions.ingest(traces)
            self._send_json(HTTPStatus.OK, {"message": "Traces ingested successfully"})
            return
        answer = self.answers.lookup(traces)
        if answer.strict_miss:
            status, headers, refusal = answer.refusal()
            self._send(status, refusal, "", dict(headers))
        elif answer.traces is None:
            self._send(HTTPStatus.NOT_FOUND, b"", "")
        else:
            self._send(HTTPStatus.OK, answer.traces.SerializeToString(), "application/x-protobuf")

    def _get(self, url: SplitResult) -> None:
        if url.path == "/api/sessions":
            self._list_sessions(parse_qs(url.query))
        elif url.path.startswith("/api/sessions/") and url.path.count("/") == 3:
            self._show_session(unquote(url.path.removeprefix("/api/sessions/")))
        else:
            raise BadRequest(f"no such endpoint: GET {url.path}", HTTPStatus.NOT_FOUND)

    def _list_sessions(self, query: dict[str, list[str]]) -> None:
        def arg(name: str) -> str:
            return query.get(name, [""])[0]
        try:
            page = self.store.sessions(
                size=int(arg("size") or 20), service=arg("serviceName"),
                status=int(arg("httpStatusCode") or 0), start_from_ns=_time_ns(arg("startTimeFrom")),
                start_to_ns=_time_ns(arg("startTimeTo")), cursor=arg("cursor"))
        except ValueError as e:
            raise BadRequest(f"bad query: {e}") from None
        self._send_json(HTTPStatus.OK, {"sessions": [_session_json(s) for s in page.sessions],
                                        "nextCursor": page.next_cursor})

    def _show_session(self, session_id: str) -> None:
        summary, exchanges = self.store.session(session_id, MAX_SESSION_EXCHANGES)
        if summary is None:
            raise BadRequest(f"no session {session_id!r}", HTTPStatus.NOT_FOUND)
        self._send_json(HTTPStatus.OK, {**_session_json(summary),
                                        "exchanges": [asdict(ex) for ex in exchanges]})

    def _control(self, url: SplitResult) -> None:
        """A control API route: its own errors (the spec's envelope and codes)."""
        scheme, _, token = (self.headers.get("authorization") or "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else self.headers.get("x-public-key")
        status, document = HTTPStatus.OK, {}
        if self.key and not presented:
            status, document = HTTPStatus.UNAUTHORIZED, error("missing_bearer_token", "authorization: Bearer required")
        elif self.key and not hmac.compare_digest((presented or "").encode("utf-8", "replace"), self.key):
            status, document = HTTPStatus.FORBIDDEN, error("invalid_bearer_token", "the bearer token is not valid")
        if status != HTTPStatus.OK:
            self.close_connection = True  # the unread body must not be taken for a request
            self._send_json(status, document, {"www-authenticate": "Bearer", "connection": "close"})
            return
        try:
            body = self._body() if self.headers.get("content-length") else b""
        except BadRequest as e:
            self._send_json(e.status, error("invalid_request", str(e)))
            return
        try:
            status, document = self.control.handle(self.command, url.path, body, url.query)
        except StoreError as e:
            status, document = HTTPStatus.INTERNAL_SERVER_ERROR, error("internal", str(e))
        self._send_json(status, document)

    def _authorized(self) -> bool:
        """Either header carries the key; both are compared in constant time, whichever is sent."""
        scheme, _, token = (self.headers.get("authorization") or "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        presented = [self.headers.get("x-public-key") or "", bearer]
        return any([hmac.compare_digest(p.encode("utf-8", "replace"), self.key) for p in presented])

    def _body(self) -> bytes:
        """The request body, gunzipped when sent with `content-encoding: gzip`, both bounded."""
        length = self.headers.get("content-length")
        if length is None or not length.isdigit():
            raise BadRequest("content-length required", HTTPStatus.LENGTH_REQUIRED)
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise BadRequest(f"body over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = self.rfile.read(int(length))
        encoding = self.headers.get("content-encoding", "identity").lower()
        if encoding == "identity":
            return body
        if encoding != "gzip":
            raise BadRequest(f"unsupported content-encoding {encoding!r}",
                             HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, MAX_BODY + 1)
        except zlib.error as e:
            raise BadRequest(f"bad gzip body: {e}") from None
        if len(data) > MAX_BODY:
            raise BadRequest(f"body over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return data

    def _send_json(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(document).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("content-type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a gateway posts many batches; errors are answered, not logged per request."""


def _time_ns(value: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time; 0 when empty."""
    if not value:
        return 0
    if value.isdigit():
        return int(value) * 1_000_000
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)


def _session_json(s: SessionSummary) -> dict[str, Any]:
    return {"id": s.id, "serviceName": s.service, "startTimeUnixNano": s.first_ns,
            "endTimeUnixNano": s.last_ns, "exchangeCount": s.exchanges, "errorCount": s.errors}
