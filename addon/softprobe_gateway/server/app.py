"""The runtime's routes as one ASGI app: the protocol's backend side and Softprobe's control API.

`POST /v1/traces` (OTLP protobuf or JSON, optionally gzip), `POST /v1/inject` (protocol section 2),
`GET /api/sessions` and `GET /api/sessions/{id}` (section 6), Softprobe's test control API
(`GET /health`, `/v1/meta`, `/v1/sessions...`: `control_api`), whose sessions' rules, cases and
policy answer lookups made under them first (`session_answers`), and `GET /ready`, which asks the
database. Every store call runs in the app's thread pool (`loop.run_in_executor`, cheaper per
call than anyio's `run_in_threadpool`): the event loop only carries bytes.

It holds every recorded body and answers lookups, so with a key every route but `/health` and
`/ready` requires it: the `x-public-key` header the gateway already sends, or `authorization:
Bearer KEY`, compared in constant time. The control routes answer as Softprobe's runtime does:
401 `missing_bearer_token` without a key, 403 `invalid_bearer_token` with a wrong one.

One app per process; paths are dispatched by hand (a dozen routes, each with its own refusals)
on Starlette's request and response, without its router's plain-text 404 and 405.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from softprobe_gateway.formats.spans import BadTraces, traces_from_document, traces_from_protobuf
from softprobe_gateway.server import bodies
from softprobe_gateway.server.bodies import BadRequest
from softprobe_gateway.server.control_api import ControlApi, error, health
from softprobe_gateway.server.strict_json import dumps, loads
from softprobe_gateway.store.captures import CaptureCases
from softprobe_gateway.store.control import Sessions
from softprobe_gateway.store.model import SessionSummary
from softprobe_gateway.store.session_answers import SessionAnswers
from softprobe_gateway.store.store import Store, StoreError

log = logging.getLogger(__name__)

MAX_SESSION_EXCHANGES = 10_000
THREADS = 32  # store calls at once per worker (SQLite's readers, PostgreSQL's pool wait beyond theirs)
T = TypeVar("T")
_CLOSE = {"connection": "close"}  # the unread body must not be taken for a request


class App:
    """The ASGI app over one store. With a `key`, every request but the probes must present it;
    a body must arrive within `body_timeout` seconds."""

    def __init__(self, store: Store, key: str = "", captures: CaptureCases | None = None,
                 body_timeout: float = 30.0) -> None:
        self.store, self.key, self.body_timeout = store, key.encode(), body_timeout
        self.sessions = Sessions(store)
        self.answers = SessionAnswers(store, self.sessions)
        self.control = ControlApi(self.sessions, self.answers.forget, captures)
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="softprobe-store")

    async def _blocking(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on a thread of the pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the process opens and closes the store itself
            return
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        path, method = request.scope["path"], request.method
        if path in ("/health", "/ready"):
            if method != "GET":
                return _json(HTTPStatus.METHOD_NOT_ALLOWED, error("method_not_allowed", "GET only"))
            return _json(HTTPStatus.OK, health()) if path == "/health" else await self._blocking(self._ready)
        if path == "/v1/meta" or path == "/v1/sessions" or path.startswith("/v1/sessions/"):
            return await self._control(request, path)
        if method not in ("GET", "POST"):
            return _json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} not allowed"}, _CLOSE)
        if self.key and not any(hmac.compare_digest(p.encode("utf-8", "replace"), self.key)
                                for p in _presented(request)):  # both compared, whichever is sent
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "a key is required: x-public-key or authorization: Bearer"},
                         {"www-authenticate": "Bearer", **_CLOSE})
        try:
            if method == "POST":
                return await self._post(request, path)
            return await self._blocking(self._get, path, request.scope["query_string"].decode("latin-1"))
        except BadRequest as e:
            return _json(e.status, {"error": str(e)}, _CLOSE if e.close else None)
        except StoreError as e:
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(e)})

    async def _post(self, request: Request, path: str) -> Response:
        if path not in ("/v1/traces", "/v1/inject"):
            raise BadRequest(f"no such endpoint: POST {path}", HTTPStatus.NOT_FOUND)
        body = await bodies.read(request, self.body_timeout)
        content_type = request.headers.get("content-type", "application/x-protobuf").lower()
        try:
            if content_type.startswith("application/json"):
                try:
                    document = loads(body)
                except ValueError as e:
                    raise BadTraces(f"not OTLP JSON traces: {e}") from None
                traces = traces_from_document(document)
            else:
                traces = traces_from_protobuf(body)
        except BadTraces as e:
            raise BadRequest(str(e)) from None
        if path == "/v1/traces":
            await self._blocking(self.sessions.ingest, traces)
            return _json(HTTPStatus.OK, {"message": "Traces ingested successfully"})
        answer = await self._blocking(self.answers.lookup, traces)
        if answer.strict_miss:
            status, headers, refusal = answer.refusal()
            return Response(refusal, status, dict(headers))
        if answer.traces is None:
            return Response(b"", HTTPStatus.NOT_FOUND)
        return Response(answer.traces.SerializeToString(), HTTPStatus.OK, media_type="application/x-protobuf")

    def _get(self, path: str, query: str) -> Response:
        if path == "/api/sessions":
            return self._list_sessions(parse_qs(query))
        if path.startswith("/api/sessions/") and path.count("/") == 3:
            return self._show_session(unquote(path.removeprefix("/api/sessions/")))
        raise BadRequest(f"no such endpoint: GET {path}", HTTPStatus.NOT_FOUND)

    def _list_sessions(self, query: dict[str, list[str]]) -> Response:
        def arg(name: str) -> str:
            return query.get(name, [""])[0]
        try:
            page = self.store.sessions(
                size=int(arg("size") or 20), service=arg("serviceName"),
                status=int(arg("httpStatusCode") or 0), start_from_ns=_time_ns(arg("startTimeFrom")),
                start_to_ns=_time_ns(arg("startTimeTo")), cursor=arg("cursor"))
        except ValueError as e:
            raise BadRequest(f"bad query: {e}") from None
        return _json(HTTPStatus.OK, {"sessions": [_session_json(s) for s in page.sessions],
                                     "nextCursor": page.next_cursor})

    def _show_session(self, session_id: str) -> Response:
        summary, exchanges = self.store.session(session_id, MAX_SESSION_EXCHANGES)
        if summary is None:
            raise BadRequest(f"no session {session_id!r}", HTTPStatus.NOT_FOUND)
        return _json(HTTPStatus.OK, {**_session_json(summary), "exchanges": [asdict(ex) for ex in exchanges]})

    async def _control(self, request: Request, path: str) -> Response:
        """A control API route: its own errors (the spec's envelope and codes)."""
        public, bearer = _presented(request)
        presented = bearer or public
        if self.key and not presented:
            return _json(HTTPStatus.UNAUTHORIZED, error("missing_bearer_token", "authorization: Bearer required"),
                         {"www-authenticate": "Bearer", **_CLOSE})
        if self.key and not hmac.compare_digest(presented.encode("utf-8", "replace"), self.key):
            return _json(HTTPStatus.FORBIDDEN, error("invalid_bearer_token", "the bearer token is not valid"),
                         {"www-authenticate": "Bearer", **_CLOSE})
        try:
            body = await bodies.read(request, self.body_timeout)
        except BadRequest as e:
            return _json(e.status, error("invalid_request", str(e)), _CLOSE if e.close else None)
        try:
            status, document = await self._blocking(
                self.control.handle, request.method, path, body, request.scope["query_string"].decode("latin-1"))
        except StoreError as e:
            status, document = HTTPStatus.INTERNAL_SERVER_ERROR, error("internal", str(e))
        return _json(status, document)

    def _ready(self) -> Response:
        """Ready when the database answers a query (the readiness probe: no key needed)."""
        try:
            with self.store.reader() as db:
                db.execute("SELECT 1").fetchone()
        except Exception as e:  # any failure of the database: not ready, said so (the detail in the log:
            # the route is open to anyone, and a driver's message names hosts and users)
            log.warning("softprobe serve: not ready: %s: %s", type(e).__name__, e)
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "error": type(e).__name__})
        return _json(HTTPStatus.OK, {"status": "ready", "store": self.store.engine.kind})


def _presented(request: Request) -> tuple[str, str]:
    """The key as sent: (the x-public-key header, the bearer token), each empty when not sent."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    return request.headers.get("x-public-key") or "", token.strip() if scheme.lower() == "bearer" else ""


def _json(status: int, document: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(document), status, headers, media_type="application/json")


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
