"""Sessions as HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/), to and from browser
devtools: a recorded session out for a browser to show, a browser's capture in as a session."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway import __version__
from softprobe_gateway.capture import exchange as capture
from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.capture.exchange import Message
from softprobe_gateway.decisions.rules import is_framework_internal, is_static
from softprobe_gateway.otlp import add_scope_spans, base64_or_raw, fill_extract_span, is_text
from softprobe_gateway.store.model import Fields, Recording

CREATOR = {"name": "softprobe", "version": __version__}
# Each entry's custom field (HAR's start with `_`) with what HAR has no field for: the exchange's
# direction, service, session, ids and exact times, read back on import so a round trip keeps them.
MARKER = "_softprobe"


def har(exchanges: list[Recording]) -> dict[str, Any]:
    return {"log": {"version": "1.2", "creator": CREATOR, "entries": [_entry(ex) for ex in exchanges]}}


def _entry(ex: Recording) -> dict[str, Any]:
    scheme = ex.request_headers.get(":scheme", "http")
    started = datetime.fromtimestamp(ex.start_ns / 1e9, tz=timezone.utc)
    sent = body_bytes(ex.request_body, ex.request_headers)
    request: dict[str, Any] = {
        "method": ex.method, "url": f"{scheme}://{ex.host}{ex.path}", "httpVersion": "HTTP/1.1",
        "cookies": [], "headers": _headers(ex.request_headers),
        "queryString": [{"name": k, "value": v}
                        for k, v in parse_qsl(ex.path.partition("?")[2], keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": ex.request_original_size or len(sent),
    }
    if ex.request_body:
        request["postData"] = {"mimeType": ex.request_headers.get("content-type", ""),
                               "text": _content(ex.request_body, sent, ex.request_headers)["text"],
                               **_truncated(ex.request_original_size, len(sent))}
    body = body_bytes(ex.response_body, ex.response_headers)
    size = ex.response_original_size or len(body)
    try:
        reason = HTTPStatus(ex.status).phrase
    except ValueError:
        reason = ""
    entry = {
        "startedDateTime": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "time": ex.duration_ms,
        "request": request,
        "response": {
            "status": ex.status, "statusText": reason, "httpVersion": "HTTP/1.1", "cookies": [],
            "headers": _headers(ex.response_headers),
            "content": {"size": size, "mimeType": ex.response_headers.get("content-type", ""),
                        **_content(ex.response_body, body, ex.response_headers),
                        **_truncated(ex.response_original_size, len(body))},
            "redirectURL": ex.response_headers.get("location", ""),
            "headersSize": -1, "bodySize": size,
            **({"_error": ex.error_message} if ex.error_message else {}),
            # HAR has no trailers (HTTP/2's, e.g. gRPC's grpc-status): a custom field keeps them.
            **({"_trailers": _headers(ex.response_trailers)} if ex.response_trailers else {}),
        },
        "cache": {},
        "timings": {"send": 0, "wait": ex.duration_ms, "receive": 0},
        "comment": f"{ex.direction} {ex.service}, span {ex.span_id}"
                   + (f"; failed: {ex.error_message}" if ex.error_message else ""),
    }
    if ex.answered_by:  # HAR's custom fields start with `_`
        entry["_answeredBy"] = ex.answered_by
        entry["comment"] += f"; answered by the gateway ({ex.answered_by}), not by the upstream"
    entry[MARKER] = {"direction": ex.direction, "service": ex.service, "sessionId": ex.session_id,
                     "traceId": ex.trace_id, "spanId": ex.span_id, "parentSpanId": ex.parent_span_id,
                     "startNs": ex.start_ns, "endNs": ex.end_ns,
                     "requestOriginalSize": ex.request_original_size,
                     "responseOriginalSize": ex.response_original_size}
    return entry


def _truncated(original_size: int, kept: int) -> dict[str, str]:
    """HAR's `comment` on a body cut at capture.max_body_bytes (`size` is the size on the wire)."""
    if not original_size:
        return {}
    return {"comment": f"truncated: the first {kept} of {original_size} bytes were recorded"}


def _headers(headers: Fields) -> list[dict[str, str]]:
    """Each field as it came (repeats apart); pseudo-headers (`:method`, `:status`...) are not
    HTTP/1.1 headers: devtools show them apart."""
    return [{"name": k, "value": v} for k, v in headers if not k.startswith(":")]


def body_bytes(body: str, headers: Fields) -> bytes:
    raw = body.encode("utf-8")
    return raw if is_text(headers.get("content-type")) or not body else base64_or_raw(raw)


def _content(body: str, raw: bytes, headers: Fields) -> dict[str, str]:
    """Text as text; a binary body as HAR's base64 `encoding`, decoded when it is UTF-8 after all."""
    text = readable(body, raw, headers)
    return {"text": text} if text is not None else {"text": body, "encoding": "base64"}


def readable(body: str, raw: bytes, headers: Fields) -> str | None:
    """A recorded body as text: as recorded when its content-type is textual, else its decoded
    bytes when they are UTF-8 (a mock's text without a content-type); None for binary."""
    if not body or is_text(headers.get("content-type")):
        return body
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- import ---------------------------------------------------------------------------------


class HarError(ValueError):
    """A file that is not a usable HAR; the message says where."""


def har_session(document: Any) -> str | None:
    """The session a file this project exported came from: the one its every entry's marker
    names; None for another tool's HAR (or a mix)."""
    log = document.get("log") if isinstance(document, dict) else None
    entries = log.get("entries") if isinstance(log, dict) else None
    sessions = {s if isinstance(s := _marker(entry).get("sessionId"), str) else None
                for entry in entries} if isinstance(entries, list) else set()
    session = sessions.pop() if len(sessions) == 1 else None
    return session or None


def har_traces(document: Any, recorder: Capture, session: str, direction: str | None,
               service: str | None, keep_all: bool = False) -> tuple[TracesData, int, int]:
    """A HAR's entries as extract spans of `session`, through `recorder` (the config's capture and
    redaction rules, exactly as live traffic). An entry this project exported keeps what its
    marker says (direction, service, ids, exact times); any other is one trace of its own, with
    ids derived from the session and the entry's position, so importing a file twice stores it
    once. `direction` and `service`, when given, apply to every entry; else an unmarked entry
    is inbound, of its request's host.

    Returns the spans, how many entries they hold, and how many were skipped: failed requests
    (but for failures the gateway recorded, with their reason) and, unless `keep_all`, static
    resources and framework internals (never recorded live).
    """
    entries = document.get("log", {}).get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise HarError("not a HAR file: no log.entries list")
    data, scopes, skipped = TracesData(), {}, 0
    for index, entry in enumerate(entries):
        try:
            ex = _exchange(entry, session, direction, service, index)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise HarError(f"log.entries[{index}]: {type(e).__name__}: {e}") from None
        if ex is None or (not keep_all and _never_recorded(ex)):
            skipped += 1
            continue
        if ex.service_name not in scopes:
            scopes[ex.service_name] = add_scope_spans(data, ex.service_name, "")
        fill_extract_span(scopes[ex.service_name].spans.add(), ex, recorder.exchange_attributes(ex))
    return data, len(entries) - skipped, skipped


def _exchange(entry: dict, session: str, direction: str | None, service: str | None,
              index: int) -> capture.Exchange | None:
    request, response = entry["request"], entry.get("response") or {}
    status, mark = int(response.get("status") or 0), _marker(entry)
    if not status and not (mark and response.get("_error")):  # blocked or failed in the browser
        return None  # (a failure the gateway recorded, with its reason, is kept as recorded)
    url = urlsplit(request["url"])
    host = url.netloc.rpartition("@")[2]
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    trace_id, span_id, parent_span_id = _ids(mark, session, index)
    start_ns = int(mark.get("startNs") or datetime.fromisoformat(entry["startedDateTime"]).timestamp() * 1e9)
    end_ns = int(mark.get("endNs") or start_ns + float(entry.get("time") or 0) * 1e6)
    post = request.get("postData") or {}
    content = response.get("content") or {}
    return capture.Exchange(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent_span_id, session_id=session,
        service_name=service or str(mark.get("service") or url.hostname or "default-service"),
        direction=direction or _direction(mark.get("direction", "inbound")), path=path,
        host=host, start_ns=start_ns, end_ns=end_ns,
        request=Message(_fields(request.get("headers"), (), post.get("mimeType")),
                        _body(post.get("text", ""), post.get("encoding")), (
            (":method", request["method"].upper()), (":path", path), (":authority", host),
            (":scheme", url.scheme or "http")), size=mark.get("requestOriginalSize") or None),
        # A browser shows the body decoded: its content-encoding no longer applies.
        response=Message(_fields(response.get("headers"), ("content-encoding",), content.get("mimeType")),
                         _body(content.get("text", ""), content.get("encoding")), ((":status", str(status)),),
                         size=mark.get("responseOriginalSize") or None,
                         trailers=_fields(response.get("_trailers"))) if status else None,
        status_code=status, error=str(response.get("_error") or ""),
        answered_by=_answered_by(entry.get("_answeredBy")),
    )


def _marker(entry: Any) -> dict:
    """This project's custom field on an entry it exported; {} on another tool's."""
    mark = entry.get(MARKER) if isinstance(entry, dict) else None
    return mark if isinstance(mark, dict) else {}


def _ids(mark: dict, session: str, index: int) -> tuple[bytes, bytes, bytes]:
    """(trace, span, parent span) ids: the marker's, or, imported as another session (the store
    holds a span once), derived from them, so calls stay nested under the request that made
    them; without a marker, derived from the session and the entry's position."""
    if not mark.get("spanId"):
        ids = hashlib.sha256(f"{session}\0{index}".encode()).digest()
        return ids[:16], ids[16:24], b""
    own = mark.get("sessionId") == session

    def one(key: str, size: int) -> bytes:
        value = bytes.fromhex(str(mark.get(key) or ""))
        if len(value) != size and (value or key != "parentSpanId"):  # a root has no parent
            raise ValueError(f"{MARKER}.{key}: expected {2 * size} hex digits")
        return value if own or not value else hashlib.sha256(f"{session}\0".encode() + value).digest()[:size]
    return one("traceId", 16), one("spanId", 8), one("parentSpanId", 8)


def _direction(value: Any) -> str:
    if value not in ("inbound", "outbound"):
        raise ValueError(f"{MARKER}.direction: expected inbound or outbound, not {value!r}")
    return value


def _answered_by(value: Any) -> str:
    """Who answered (`_answeredBy`): such an exchange is shown, never replayed, after import too."""
    if value in (None, ""):
        return ""
    if value not in (capture.HIT, capture.MOCK, capture.REFUSAL, capture.ADDON):
        raise ValueError(f"_answeredBy: unknown {value!r}")
    return value


def _fields(headers: list | None, leave_out: tuple[str, ...] = (),
            mime_type: str | None = None) -> list[tuple[bytes, bytes]]:
    """HTTP/1.1 header fields (HTTP/2 pseudo-headers are set from the entry itself), with the
    body's `mimeType` as content-type when the headers lack one."""
    fields = [(h["name"].encode("latin-1", "replace"), str(h["value"]).encode())
              for h in headers or ()
              if not h["name"].startswith(":") and h["name"].lower() not in leave_out]
    if mime_type and not any(name.lower() == b"content-type" for name, _ in fields):
        fields.append((b"content-type", mime_type.encode()))
    return fields


def _body(text: str, encoding: str | None) -> bytes:
    return base64.b64decode(text) if encoding == "base64" else text.encode()


def _never_recorded(ex: capture.Exchange) -> bool:
    """Section 5's static-resource and framework rules, as the live gateway applies them."""
    headers = {k.decode().lower(): v.decode() for k, v in ex.request.headers}
    response = ex.response or Message((), None)  # none: a failure the gateway recorded
    content_type = next((v.decode() for k, v in response.headers if k.lower() == b"content-type"), None)
    method = dict(ex.request.pseudo).get(":method", "")
    return (is_static(method, ex.status_code, ex.path, content_type, len(response.body or b""))
            or is_framework_internal(ex.path, headers.get))
