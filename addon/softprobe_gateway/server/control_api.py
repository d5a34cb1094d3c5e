"""The control API's routes (Softprobe's `spec/protocol/http-control-api.md`, the schemas under
`spec/schemas/` and its runtime's `openapi.yaml`): a request in, (status, JSON document) out, so
`app` only carries bytes. Errors are the spec's envelope `{"error": {"code", "message"}}`.

Requests are checked against the published request schemas by hand (the gateway does not ship a
schema validator), beside the rule fields Softprobe's own docs and SDKs send (`name`,
`hostSuffix`, `headerMatch`, `bodyJsonPathEquals`, `traceTagEquals`, `latencyMs`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from softprobe_gateway import __version__
from softprobe_gateway.decisions.session_rules import ACTIONS
from softprobe_gateway.formats.casefile import CaseError, case_exchanges
from softprobe_gateway.server.strict_json import loads
from softprobe_gateway.store.captures import CaptureCases, write_capture
from softprobe_gateway.store.control import MODES, ControlSession, Sessions

SPEC_VERSION, SCHEMA_VERSION = "http-control-api@v1", "1"
NAME_MAX = 255  # bytes in one file name, on every file system a case is written to
Reply = tuple[HTTPStatus, dict[str, Any]]
_RULE_KEYS = {"id", "name", "priority", "consume", "when", "then"}
# Each `when` field and the JSON types it takes.
_WHEN_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("direction", "service", "host", "method", "path", "pathPrefix", "bodyJsonPath"), (str,)),
    "hostSuffix": (str, list), "notHostSuffix": (list,),
    **dict.fromkeys(("headers", "headerMatch", "bodyJsonPathEquals", "traceTags", "traceTagEquals"), (dict,))}


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def reply(self) -> Reply:
        return self.status, error(self.code, str(self))


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def invalid(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "invalid_request", message)


def health() -> dict[str, str]:
    return {"status": "ok", "specVersion": SPEC_VERSION, "schemaVersion": SCHEMA_VERSION}


class ControlApi:
    """`/v1/meta` and `/v1/sessions...` over the store's control sessions. A capture session's
    close writes its case where `captures` says."""

    def __init__(self, sessions: Sessions, on_close: Callable[[str], None],
                 captures: CaptureCases | None = None) -> None:
        self.sessions, self.on_close, self.captures = sessions, on_close, captures or CaptureCases()

    def handle(self, method: str, path: str, body: bytes, query: str = "") -> Reply:
        try:
            return self._route(method, path.rstrip("/") or "/", body, query)
        except ApiError as e:
            return e.reply()

    def _route(self, method: str, path: str, body: bytes, query: str = "") -> Reply:
        if path == "/v1/meta":
            _allow(method, "GET")
            return HTTPStatus.OK, {"runtimeVersion": f"softprobe-gateway {__version__}",
                                   "specVersion": SPEC_VERSION, "schemaVersion": SCHEMA_VERSION}
        if path == "/v1/sessions":
            _allow(method, "GET", "POST")
            if method == "GET":
                return HTTPStatus.OK, {"sessions": [{"sessionId": s.id, "mode": s.mode, "sessionRevision": s.revision}
                                                    for s in self.sessions.open_sessions()]}
            return self._create(_json(body))
        parts = path.split("/")  # "", "v1", "sessions", id, action...
        action = "/".join(parts[4:])
        if len(parts) < 5 or action not in _ACTIONS:
            raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no such endpoint: {method} {path}")
        _allow(method, _ACTIONS[action])
        session_id = parts[3]
        if method == "GET":
            return self._read(session_id, action)
        if self.sessions.revision(session_id) is None:  # before the body: an unknown id is 404 whatever it holds
            raise _unknown(session_id)
        if action == "close":
            if body.strip() and _json(body):
                raise invalid("close takes no fields")
            return self._close(session_id, parse_qs(query).get("out", [""])[-1].strip())
        if not body.strip():
            raise invalid(f"{action}: a JSON object body is required")
        name, value = _CHECKS[action](_json(body))
        session = self.sessions.replace(session_id, name, value)
        if session is None:
            raise _unknown(session_id)
        return HTTPStatus.OK, _operation(session)

    def _close(self, session_id: str, out: str) -> Reply:
        """Close the session; a capture session's case is written first (a failure leaves it open)."""
        now = datetime.now(timezone.utc)
        try:
            path = self.captures.path(out, session_id, now)
        except ValueError as e:
            raise invalid(f"out: {e}") from None
        if path is not None and (long := _long_name(path)):
            raise invalid(f"out: a file name of {len(long.encode())} bytes (at most {NAME_MAX})")
        reply = {"sessionId": session_id, "closed": True}
        # The database decides which of two closes at once (two replicas) closes, and writes the case.
        session = self.sessions.get(session_id)
        if session is None or not self.sessions.close(session_id):
            raise _unknown(session_id)
        if session.mode == "capture" and path is not None:
            try:
                write_capture(self.sessions.store, session_id, path, now)
            except OSError as e:
                self.sessions.reopen(session_id)  # a failed write leaves the session open
                raise ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error",
                               f"the captured case could not be written: {e}") from None
            reply["capturePath"] = str(path)
        self.on_close(session_id)
        return HTTPStatus.OK, reply

    def _create(self, document: dict[str, Any]) -> Reply:
        extra = set(document) - {"mode", "policy"}
        if extra:
            raise invalid(f"unknown field {min(extra)!r}")
        if document.get("mode") not in MODES:
            raise invalid(f"mode: one of {', '.join(MODES)} required")
        policy = _check_policy(document.get("policy", {}))[1]
        return HTTPStatus.OK, _operation(self.sessions.create(document["mode"], policy))

    def _read(self, session_id: str, action: str) -> Reply:
        session = self.sessions.get(session_id)
        if session is None:
            raise _unknown(session_id)
        reply = {**_operation(session), "mode": session.mode, "stats": session.stats()}
        if action == "state":
            traces = session.case.get("traces")
            reply.update(policy=session.policy, rules=session.rules, fixtures=session.fixtures,
                         caseSummary={"caseId": str(session.case.get("caseId", "")),
                                      "traceCount": len(traces) if isinstance(traces, list) else 0})
        return HTTPStatus.OK, reply


def _operation(session: ControlSession) -> dict[str, Any]:
    return {"sessionId": session.id, "sessionRevision": session.revision}


def _unknown(session_id: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "unknown_session", f"unknown session {session_id!r} (never created, or closed)")


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                       f"{method} not allowed here (allowed: {', '.join(allowed)})")


def _long_name(path: Path) -> str:
    """The first part of `path` longer than a file system takes, else empty."""
    return next((part for part in path.parts if len(part.encode()) > NAME_MAX), "")


def _json(body: bytes) -> dict[str, Any]:
    try:
        document = loads(body or b"null")
    except ValueError as e:
        raise invalid(f"body is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise invalid("body must be a JSON object")
    return document


def _check_case(document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    traces = document.get("traces")
    if (not isinstance(document.get("caseId"), str) or not isinstance(document.get("version"), str)
            or not isinstance(traces, list) or not all(isinstance(t, dict) for t in traces)):
        raise invalid("a case needs version and caseId strings, and traces[] of objects (case.schema.json)")
    try:
        case_exchanges(json.loads(json.dumps(document)))  # parsed on a copy: it changes it in place
    except CaseError as e:
        raise invalid(f"case: {e}") from None
    rules = document.get("rules", [])
    if not isinstance(rules, list):
        raise invalid("case rules: an array expected")
    for i, rule in enumerate(rules):
        _check_rule(f"case rules[{i}]", rule)
    return "case", document


def _check_rules(document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    extra = set(document) - {"version", "rules"}
    if extra or not isinstance(document.get("rules"), list):
        raise invalid("a rules document is {version, rules: [...]} (session-rules.request.schema.json)")
    if "version" in document and (not isinstance(document["version"], int) or isinstance(document["version"], bool)):
        raise invalid("version: an integer expected")
    for i, rule in enumerate(document["rules"]):
        _check_rule(f"rules[{i}]", rule)
    return "rules", document


def _check_rule(where: str, rule: Any) -> None:
    if not isinstance(rule, dict) or not isinstance(rule.get("when"), dict) or not isinstance(rule.get("then"), dict):
        raise invalid(f"{where}: a rule needs when and then objects")
    if extra := set(rule) - _RULE_KEYS:
        raise invalid(f"{where}: unknown field {min(extra)!r}")
    for key, value in rule["when"].items():
        if key not in _WHEN_TYPES:
            raise invalid(f"{where}.when: unknown field {key!r}")
        if not isinstance(value, _WHEN_TYPES[key]):
            names = {str: "a string", list: "an array", dict: "an object"}
            raise invalid(f"{where}.when.{key}: {' or '.join(names[t] for t in _WHEN_TYPES[key])} expected")
    if "priority" in rule and (not isinstance(rule["priority"], int) or isinstance(rule["priority"], bool)):
        raise invalid(f"{where}.priority: an integer expected")
    if rule.get("consume", "many") not in ("once", "many"):
        raise invalid(f"{where}.consume: once or many")
    then = rule["then"]
    if then.get("action") not in ACTIONS:
        raise invalid(f"{where}.then.action: one of {', '.join(ACTIONS)}")
    answer = then.get("response" if then["action"] == "mock" else "error", {})
    if not isinstance(answer, dict) or not isinstance(answer.get("status", 200), int):
        raise invalid(f"{where}.then: the answer must be an object, its status an integer")
    if then["action"] == "error" and "status" not in answer:
        raise invalid(f"{where}.then.error.status: an integer required")


def _check_policy(document: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(document, dict):
        raise invalid("policy: an object expected")
    for key, allowed in (("externalHttp", ("strict", "allow")), ("defaultOnMiss", ("error", "passthrough"))):
        if key in document and document[key] not in allowed:
            raise invalid(f"policy {key}: one of {', '.join(allowed)}")
    for key in ("allowHosts", "blockHosts"):
        if key in document and not (isinstance(document[key], list) and all(isinstance(h, str) for h in document[key])):
            raise invalid(f"policy {key}: an array of strings expected")
    return "policy", document


def _check_fixtures(document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if extra := set(document) - {"tokens", "cookies", "metadata"}:
        raise invalid(f"auth fixtures: unknown field {min(extra)!r}")
    tokens, cookies = document.get("tokens", []), document.get("cookies", [])
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise invalid("auth fixtures tokens: an array of strings expected")
    if not (isinstance(cookies, list) and all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                              and isinstance(c.get("value"), str) for c in cookies)):
        raise invalid("auth fixtures cookies: objects with name and value strings expected")
    metadata = document.get("metadata", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str | int | float) for v in metadata.values())):
        raise invalid("auth fixtures metadata: an object of strings, numbers and booleans expected")
    return "fixtures", document


_ACTIONS = {"load-case": "POST", "rules": "POST", "policy": "POST", "fixtures/auth": "POST",
            "close": "POST", "stats": "GET", "state": "GET"}
_CHECKS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "load-case": _check_case, "rules": _check_rules, "policy": _check_policy, "fixtures/auth": _check_fixtures}


def refusal(action: str, document: Any) -> str:
    """Why `POST /v1/sessions/{id}/{action}` (`rules`, `policy`, `load-case`) would refuse
    `document`, empty when it takes it: `suite validate` checks a suite's mocks and policy with the
    runtime's own checks before any session is opened."""
    if not isinstance(document, dict):
        return f"{action}: an object expected"
    try:
        _CHECKS[action](document)
    except ApiError as e:
        return str(e)
    return ""
