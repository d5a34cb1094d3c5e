"""What a case sends: its mocks as control-API rules and its request to the app, each with the hook
the suite names (`mocks[].hook`, a MockResponseHook; `request.transform`, a RequestHook), with the
payload shapes of Softprobe's "Write a hook" guide."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from softprobe_gateway.suite.caseview import CaseFile, CaseLookupError, request_of, response_of
from softprobe_gateway.suite.hooks import HookError, Hooks
from softprobe_gateway.suite.results import HttpMessage, MockUsed

_MOCK_KEYS = {"name", "match", "source", "response", "hook", "priority", "consume", "latencyMs"}
_REQUEST_KEYS = {"source", "transform", "url", "method", "path", "headers", "body"}
# In every hook's payload beside its own fields; the rest of the context (caseId, sessionId) is `ctx`.
_SHARED = ("case", "env", "caseFile")


class PlanError(ValueError):
    """A case that cannot be built (a mock findInCase cannot resolve, a hook failed, no target)."""


def mocks(plan_mocks: list[dict[str, Any]], case: CaseFile, hooks: Hooks | None,
          context: dict[str, Any]) -> list[MockUsed]:
    """Each mock resolved to the response its rule answers with, in suite order."""
    used = []
    for index, mock in enumerate(plan_mocks):
        label = f"mocks[{index}] {json.dumps(mock.get('name') or '')}"
        unknown = sorted(set(mock) - _MOCK_KEYS)
        if unknown:
            raise PlanError(f"{label}: unknown key {unknown[0]!r}")
        source = mock.get("source") or ("inline" if "response" in mock else "case")
        match = dict(mock.get("match") or {})
        span: dict[str, Any] | None = None
        if source == "case":
            try:
                hit = case.find(match)
            except CaseLookupError as e:
                raise PlanError(f"{label}: {e}") from None
            response, span = response_of(hit), case.span(hit)
        elif source == "inline":
            if not isinstance(mock.get("response"), dict):
                raise PlanError(f"{label}: source inline needs a response: {{status, headers, body}}")
            response = inline_response(mock["response"])
        else:
            raise PlanError(f"{label}: source {source!r}: `case` or `inline` expected")
        if mock.get("hook"):
            payload = {"capturedResponse": as_payload(response), "capturedSpan": span,
                       "mockName": mock.get("name") or "", "ctx": {"mockName": mock.get("name") or ""}}
            response = overlay(response, _hook(hooks, mock["hook"], "mock_response", payload, context, label))
            source += f"+hook {mock['hook']}"
        used.append(MockUsed(str(mock.get("name") or ""), match, source, response, mock.get("priority"),
                             mock.get("consume"), mock.get("latencyMs")))
    return used


def rule(mock: MockUsed) -> dict[str, Any]:
    """The control-API rule a mock registers (the shape Softprobe's CLI and SDKs send)."""
    then: dict[str, Any] = {"action": "mock", "response": {
        "status": mock.response.status or 200, "headers": dict(mock.response.headers), "body": mock.response.body}}
    if mock.latency_ms:
        then["latencyMs"] = mock.latency_ms
    built: dict[str, Any] = {"when": dict(mock.match), "then": then}
    if mock.name:
        built["id"] = mock.name
    if mock.priority is not None:
        built["priority"] = mock.priority
    if mock.consume:
        built["consume"] = mock.consume
    return built


def request(spec: dict[str, Any] | None, case: CaseFile, app_url: str, hooks: Hooks | None,
            context: dict[str, Any]) -> HttpMessage:
    """The request to send: the recorded ingress (`source: case.ingress`, the default when the
    suite gives no method or path) or the inline fields over it; its URL from `request.url`,
    else the app's; then the `transform` hook."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - _REQUEST_KEYS)
    if unknown:
        raise PlanError(f"request: unknown key {unknown[0]!r}")
    source = spec.get("source")
    if isinstance(source, dict):  # an inline object as `source` replaces the recorded request
        spec, source = {**spec, **source}, "inline"
    ingress = case.ingress()
    built = HttpMessage(method="GET", url="")
    if source == "case.ingress" or (source is None and not spec.get("method") and not spec.get("path")):
        if ingress is None:
            if source == "case.ingress":
                raise PlanError("request: source case.ingress, and the case records no inbound request")
            raise PlanError("request: no method/path given and the case records no inbound request")
        built = request_of(ingress)
    elif source not in (None, "inline"):
        raise PlanError(f"request.source {source!r}: `case.ingress` or an inline request expected")
    headers = {**built.headers, **{str(k).lower(): str(v) for k, v in (spec.get("headers") or {}).items()}}
    body = spec.get("body", built.body)
    built = replace(built, method=str(spec.get("method") or built.method).upper(),
                    url=str(spec.get("path") or built.url or "/"), headers=headers,
                    body=body if isinstance(body, str) else json.dumps(body))
    if spec.get("transform"):
        payload = {"request": {"method": built.method, "path": built.url, "headers": built.headers, "body": built.body}}
        patch = _hook(hooks, spec["transform"], "request", payload, context, "request.transform")
        if patch is not None and not isinstance(patch, dict):
            raise PlanError(f'request.transform: hook "{spec["transform"]}" returned {type(patch).__name__}, an object expected')
        patch = patch or {}
        built = replace(built, method=str(patch.get("method") or built.method),
                        url=str(patch.get("path") or built.url),
                        headers={**built.headers, **{str(k).lower(): str(v) for k, v in (patch.get("headers") or {}).items()}},
                        body=str(patch["body"]) if patch.get("body") is not None else built.body)
    return replace(built, url=target(str(spec.get("url") or ""), app_url, built.url))


def target(url: str, app_url: str, path: str) -> str:
    """The URL to call: `request.url` (the path appended unless it holds it already) else the app's."""
    base = url or app_url
    if not base:
        raise PlanError("no target URL: pass --app-url (or $APP_URL) or set request.url in the suite")
    if path and path not in base:
        return base.rstrip("/") + "/" + path.lstrip("/")
    return base


def inline_response(response: dict[str, Any]) -> HttpMessage:
    body = response.get("body", "")
    headers = {str(k).lower(): str(v) for k, v in (response.get("headers") or {}).items()}
    if not isinstance(body, str):
        body = json.dumps(body)
        headers.setdefault("content-type", "application/json")
    return HttpMessage(status=int(response.get("status") or 200), headers=headers, body=body)


def overlay(response: HttpMessage, patch: Any) -> HttpMessage:
    """A MockResponseHook's partial answer over the response: the fields it returned replace, its
    headers added to the recorded ones."""
    if patch is None:
        return response
    if not isinstance(patch, dict):
        raise PlanError(f"mock hook returned {type(patch).__name__}, an object expected")
    body = patch.get("body", response.body)
    return replace(response, status=int(patch.get("status") or response.status or 200),
                   headers={**response.headers, **{str(k).lower(): str(v) for k, v in (patch.get("headers") or {}).items()}},
                   body=body if isinstance(body, str) else json.dumps(body))


def as_payload(message: HttpMessage) -> dict[str, Any]:
    return {"status": message.status, "headers": dict(message.headers), "body": message.body}


def _hook(hooks: Hooks | None, name: str, kind: str, payload: dict[str, Any], context: dict[str, Any],
          label: str) -> Any:
    if hooks is None:
        raise PlanError(f'{label}: hook "{name}" not found: no --hooks file was given')
    ids = {k: v for k, v in context.items() if k not in _SHARED}
    full = {**payload, **{k: context.get(k) for k in _SHARED}, "ctx": {**ids, **payload.get("ctx", {})}}
    try:
        return hooks.call(name, kind, full)
    except HookError as e:
        raise PlanError(f"{label}: {e}") from None
