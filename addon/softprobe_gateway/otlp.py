"""OTLP encoding and decoding with the opentelemetry-proto classes directly: the protocol
(`/work/shared/softprobe-protocol.md`, sections 1 and 2) and nothing else of the gateway, so the
backend's readers import it without capture, redaction or decompression.

The SDK's per-span machinery (processors, limits, resource merging) costs more CPU than the
protobuf itself and evicts attributes beyond 128; the gateway already has every value at hand,
so it builds `TracesData` messages itself.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status, TracesData

# A tuple is an array of strings; bytes are text given as its UTF-8 (a body not decoded).
AttrValue = str | bytes | int | bool | tuple[str, ...]
Attributes = list[tuple[str, AttrValue]]
HeaderPairs = Iterable[tuple[str, str]]

DEFAULT_SERVICE = "default-service"  # section 1's `service.name` when unknown
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-www-form-urlencoded")
RESOURCE_TYPE = "sp-envoy-proxy"
SCOPE = InstrumentationScope(name="softprobe-gateway", version="0.1.0")
HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                        "proxy-connection", "upgrade", "te", "trailer"})
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_UNSAFE_VALUE = re.compile(r"[\r\n\0]")


# Messages are filled in place (`.add()`, field assignment): passing a message to a constructor
# or to `extend` deep-copies it, which cost 3 ms per copy of a 1 MiB body attribute.


def key_value(key: str, value: AttrValue) -> KeyValue:
    kv = KeyValue(key=utf8(key))
    set_value(kv.value, value)
    return kv


def set_value(target: AnyValue, value: AttrValue) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, tuple):
        array = target.array_value.values
        for item in value:
            set_value(array.add(), item)
    else:
        try:
            target.string_value = value
        except UnicodeEncodeError:  # lone surrogates: mitmproxy's decoding of non-UTF-8 wire bytes
            target.string_value = utf8(value)


def add_attributes(repeated, attributes: Attributes) -> None:
    for key, value in attributes:
        kv = repeated.add()
        kv.key = utf8(key)
        set_value(kv.value, value)


def utf8(text: str) -> str:
    """Text protobuf accepts: lone surrogates replaced by U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def values_prefix(prefix: str) -> str:
    """Where a field's separate values go: `http.response.header.` -> `http.response.header_values.`."""
    return prefix[:-1] + "_values."


def field_attributes(prefix: str, fields: HeaderPairs) -> Attributes:
    """Header (or trailer) fields as attributes: `<prefix><name>` once per name, its values joined
    by `, ` (section 1), and for a name that occurs more than once also `<values prefix><name>`,
    an array of its values apart and in order (an addition), so that fields a join would corrupt
    (`set-cookie`, `www-authenticate`, two `content-type`) come back as they were sent."""
    grouped: dict[str, list[str]] = {}
    for name, value in fields:
        grouped.setdefault(name, []).append(value)
    attrs: Attributes = [(prefix + name, ", ".join(values)) for name, values in grouped.items()]
    apart = values_prefix(prefix)
    attrs += [(apart + name, tuple(values)) for name, values in grouped.items() if len(values) > 1]
    return attrs


def fill_span(span: Span, name: str, trace_id: bytes, span_id: bytes, parent_span_id: bytes,
              kind: int, start_ns: int, end_ns: int, attributes: Attributes, error: bool,
              events: Iterable[tuple[int, str, Attributes]] = ()) -> Span:
    """One span, written into `span`; `name` is the URL path without query (`unknown_path` when
    empty)."""
    span.name = utf8(name) or "unknown_path"
    span.trace_id, span.span_id, span.parent_span_id = trace_id, span_id, parent_span_id
    span.kind, span.start_time_unix_nano, span.end_time_unix_nano = kind, start_ns, end_ns
    add_attributes(span.attributes, attributes)
    for time_ns, event_name, event_attributes in events:
        event = span.events.add(time_unix_nano=time_ns, name=event_name)
        add_attributes(event.attributes, event_attributes)
    span.status.code = Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET
    return span


def make_span(*args, **kwargs) -> Span:
    """A new span filled by `fill_span`."""
    return fill_span(Span(), *args, **kwargs)


def span_name(attributes: Attributes) -> str:
    """The (redacted) URL path without its query."""
    return str(next((v for k, v in attributes if k == "url.path"), "")).split("?", 1)[0]


class SpanSource(Protocol):
    """What a span is made of besides its attributes (the gateway's `capture.Exchange`)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    service_name: str
    direction: str
    start_ns: int
    end_ns: int
    status_code: int
    error: str
    events: list[tuple[int, str, Attributes]]


def fill_extract_span(span: Span, ex: SpanSource, attributes: Attributes) -> Span:
    """The span of a recorded exchange: SERVER inbound, CLIENT outbound; ERROR on 5xx/failure."""
    kind = Span.SPAN_KIND_SERVER if ex.direction == "inbound" else Span.SPAN_KIND_CLIENT
    return fill_span(span, span_name(attributes), ex.trace_id, ex.span_id, ex.parent_span_id, kind,
                     ex.start_ns, ex.end_ns or ex.start_ns, attributes,
                     error=bool(ex.error) or ex.status_code >= 500, events=ex.events)


def inject_request(ex: SpanSource, attributes: Attributes, public_key: str) -> TracesData:
    """Section 2's lookup body: one CLIENT `inject` span with the request half of the attributes."""
    attrs = [*attributes[:2], ("sp.span.type", "inject"), *attributes[2:]]
    if public_key:
        attrs.append(("sp.public.key", public_key))
    data = TracesData()
    fill_span(add_scope_spans(data, ex.service_name, public_key).spans.add(), span_name(attrs),
              ex.trace_id, ex.span_id, ex.parent_span_id, Span.SPAN_KIND_CLIENT,
              ex.start_ns, ex.start_ns, attrs, error=False)
    return data


def resource(service_name: str, public_key: str) -> Resource:
    attrs = [key_value("service.name", service_name or DEFAULT_SERVICE)]
    if public_key:
        attrs.append(key_value("sp.public.key", public_key))
    attrs.append(key_value("sp.resource.type", RESOURCE_TYPE))
    return Resource(attributes=attrs)


def traces_data(groups: Iterable[tuple[str, list[Span]]], public_key: str) -> TracesData:
    """Spans grouped by service name, one ResourceSpans per service."""
    data = TracesData()
    for service, spans in groups:
        add_scope_spans(data, service, public_key).spans.extend(spans)
    return data


def add_scope_spans(data: TracesData, service_name: str, public_key: str) -> ScopeSpans:
    """A new ResourceSpans for one service in `data`; its (empty) ScopeSpans to fill."""
    resource_spans = data.resource_spans.add()
    resource_spans.resource.CopyFrom(resource(service_name, public_key))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.CopyFrom(SCOPE)
    return scope_spans


# -- lookup answers (section 2) -----------------------------------------------------------


REQUEST_HEADER = "http.request.header."
RESPONSE_HEADER = "http.response.header."
RESPONSE_TRAILER = "http.response.trailer."  # an addition: trailers recorded apart from headers
# A gRPC answer's status: trailers, unless the answer is trailers-only (no body).
GRPC_STATUS = frozenset({"grpc-status", "grpc-message", "grpc-status-details-bin"})


@dataclass(frozen=True)
class Hit:
    """The backend's answer to a lookup, ready to send to the client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)
    # The recorded content-length: an answer to a HEAD has no body to measure, and says the GET's.
    content_length: str | None = None
    delay_ms: int = 0  # a rule's latency (`DELAY_ATTRIBUTE`): waited before answering
    refusal: bool = False  # a strict miss the backend answered (`STRICT_MISS_HEADER`), not a recording


# A control-API session's answers (the runtime, `softprobe serve`): a rule's latency on a hit span,
# and the header of a strict miss's `599`, which the client gets instead of the upstream.
DELAY_ATTRIBUTE = "sp.answer.delay_ms"
STRICT_MISS_STATUS, STRICT_MISS_HEADER = 599, "x-softprobe-strict-miss"
MAX_DELAY_MS = 60_000


class BadAnswer(ValueError):
    """A 200 lookup answer that cannot be used (undecodable, or no response attributes)."""


def decode_hit(payload: bytes, max_body: int) -> Hit:
    """Parse a lookup answer's protobuf body, then take its hit."""
    try:
        data = TracesData.FromString(payload)
    except Exception as e:  # protobuf raises DecodeError, but also others on hostile bytes
        raise BadAnswer(f"undecodable TracesData: {type(e).__name__}") from None
    return hit_from_traces(data, max_body)


def hit_from_traces(data: TracesData, max_body: int) -> Hit:
    """The first span carrying a response body or response headers is the answer."""
    for rs in data.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                hit = _span_hit(span, max_body)
                if hit is not None:
                    return hit
    raise BadAnswer("no span with response attributes")


def _span_hit(span: Span, max_body: int) -> Hit | None:
    status, body, usable, delay = 200, None, False, 0
    joined: dict[str, list[tuple[str, str]]] = {RESPONSE_HEADER: [], RESPONSE_TRAILER: []}
    apart: dict[str, list[str]] = {}  # values prefix + name -> the field's values, apart
    for kv in span.attributes:
        key, value = kv.key, kv.value
        if key == "http.response.body":
            body, usable = value.string_value, True
        elif key == DELAY_ATTRIBUTE:
            delay = min(max(value.int_value, 0), MAX_DELAY_MS)
        elif key == "http.response.status_code":
            code = value.string_value
            if value.HasField("int_value") and 100 <= value.int_value <= 599:
                status = value.int_value
            elif len(code) == 3 and code.isascii() and code.isdigit() and 100 <= int(code) <= 599:
                status = int(code)
        else:
            for prefix, fields in joined.items():
                if key.startswith(prefix):
                    usable |= prefix == RESPONSE_HEADER
                    fields.append((key.removeprefix(prefix).lower(), value.string_value))
                elif key.startswith(values_prefix(prefix)):
                    apart[key.lower()] = [v.string_value for v in value.array_value.values]
    if not usable:
        return None
    length = next((v.strip() for k, v in joined[RESPONSE_HEADER] if k == "content-length"), None)
    headers, trailers = (_sendable(fields, apart, values_prefix(prefix)) for prefix, fields in joined.items())
    content_type = next((v for k, v in headers if k == "content-type"), None)
    decoded = hit_body(body or "", content_type)
    if len(decoded) > max_body:
        raise BadAnswer(f"answer body of {len(decoded)} bytes exceeds the cap")
    if decoded and not trailers and (content_type or "").lower().startswith("application/grpc"):
        # Recorded before trailers were kept apart: its status fields were stored as headers.
        trailers = [(k, v) for k, v in headers if k in GRPC_STATUS]
        headers = [(k, v) for k, v in headers if k not in GRPC_STATUS]
    return Hit(status, headers, decoded, trailers, length if length and length.isdigit() else None, delay)


def _sendable(fields: list[tuple[str, str]], apart: dict[str, list[str]],
              apart_prefix: str) -> list[tuple[str, str]]:
    """Fields a client may be sent, each repeated field's values apart when they were recorded so:
    no pseudo-headers, no hop-by-hop fields, no CR/LF that would split the client's response."""
    sendable = []
    for name, joined_value in fields:
        if name and not name.startswith(":") and name not in HOP_BY_HOP and _token(name):
            values = apart.get(apart_prefix + name) or [joined_value]
            sendable += [(name, v) for v in values if not _UNSAFE_VALUE.search(v)]
    return sendable


def _token(name: str) -> bool:
    return name.isascii() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


def is_text(content_type: str | None) -> bool:
    """Section 1's text rule, with the gateway's case-insensitivity and +json/+xml types."""
    if not content_type:
        return False
    ct = content_type.strip().lower()
    if ct.startswith(TEXT_TYPES):
        return True
    mime = ct.split(";", 1)[0].strip()
    return mime.endswith(("+json", "+xml"))


def hit_body(body: str, content_type: str | None) -> bytes:
    """Gateway rule: base64 exactly when section 1 would have sent base64 for this content-type;
    with no content-type, the original's heuristic (over 100 base64 characters)."""
    raw = body.encode("utf-8")
    if content_type:
        return raw if is_text(content_type) else base64_or_raw(raw)
    if len(raw) > 100 and _BASE64.fullmatch(raw):
        return base64_or_raw(raw)
    return raw


def base64_or_raw(raw: bytes) -> bytes:
    """Decode base64, or keep the bytes as they are when they are not base64 after all."""
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return raw
