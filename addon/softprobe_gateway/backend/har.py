"""A session as HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/), for browser devtools."""

from __future__ import annotations

from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from ..capture import is_text
from ..otlp import base64_or_raw
from .model import Exchange

CREATOR = {"name": "softprobe", "version": "0.1.0"}


def har(exchanges: list[Exchange]) -> dict[str, Any]:
    return {"log": {"version": "1.2", "creator": CREATOR, "entries": [_entry(ex) for ex in exchanges]}}


def _entry(ex: Exchange) -> dict[str, Any]:
    scheme = ex.request_headers.get(":scheme", "http")
    started = datetime.fromtimestamp(ex.start_ns / 1e9, tz=timezone.utc)
    request: dict[str, Any] = {
        "method": ex.method, "url": f"{scheme}://{ex.host}{ex.path}", "httpVersion": "HTTP/1.1",
        "cookies": [], "headers": _headers(ex.request_headers),
        "queryString": [{"name": k, "value": v}
                        for k, v in parse_qsl(ex.path.partition("?")[2], keep_blank_values=True)],
        "headersSize": -1, "bodySize": len(sent := _bytes(ex.request_body, ex.request_headers)),
    }
    if ex.request_body:
        request["postData"] = {"mimeType": ex.request_headers.get("content-type", ""),
                               "text": _content(ex.request_body, sent, ex.request_headers)["text"]}
    body = _bytes(ex.response_body, ex.response_headers)
    try:
        reason = HTTPStatus(ex.status).phrase
    except ValueError:
        reason = ""
    return {
        "startedDateTime": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "time": ex.duration_ms,
        "request": request,
        "response": {
            "status": ex.status, "statusText": reason, "httpVersion": "HTTP/1.1", "cookies": [],
            "headers": _headers(ex.response_headers),
            "content": {"size": len(body), "mimeType": ex.response_headers.get("content-type", ""),
                        **_content(ex.response_body, body, ex.response_headers)},
            "redirectURL": ex.response_headers.get("location", ""),
            "headersSize": -1, "bodySize": len(body),
        },
        "cache": {},
        "timings": {"send": 0, "wait": ex.duration_ms, "receive": 0},
        "comment": f"{ex.direction} {ex.service}, span {ex.span_id}",
    }


def _headers(headers: dict[str, str]) -> list[dict[str, str]]:
    """Pseudo-headers (`:method`, `:status`...) are not HTTP/1.1 headers: devtools show them apart."""
    return [{"name": k, "value": v} for k, v in headers.items() if not k.startswith(":")]


def _bytes(body: str, headers: dict[str, str]) -> bytes:
    raw = body.encode("utf-8")
    return raw if is_text(headers.get("content-type")) or not body else base64_or_raw(raw)


def _content(body: str, raw: bytes, headers: dict[str, str]) -> dict[str, str]:
    """Text as text; a binary body as HAR's base64 `encoding`, decoded when it is UTF-8 after all."""
    if not body or is_text(headers.get("content-type")):
        return {"text": body}
    try:
        return {"text": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": body, "encoding": "base64"}
