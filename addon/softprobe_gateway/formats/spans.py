"""OTLP in and out of the backend: extract spans to exchanges, an inject span to a lookup request,
an exchange to a lookup answer (protocol sections 1 and 2), and OTLP JSON to `TracesData`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

from google.protobuf import json_format
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status, TracesData

from softprobe_gateway.otlp import (
    DEFAULT_SERVICE,
    REQUEST_HEADER,
    RESPONSE_HEADER,
    RESPONSE_TRAILER,
    Attributes,
    add_scope_spans,
    field_attributes,
    fill_span,
    values_prefix,
)
from softprobe_gateway.store.model import Fields, LookupRequest, Recording

_KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client"}


class BadTraces(ValueError):
    """A payload that is not OTLP traces."""


def _text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return ""


# A field's values apart (`http.response.header_values.<name>`) are a tuple; everything else text.
Attrs = dict[str, "str | tuple[str, ...]"]


def _spans(traces: TracesData) -> Iterator[tuple[Resource, Span]]:
    for rs in traces.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield rs.resource, span


def _attributes(resource: Resource, span: Span) -> Attrs:
    attrs: Attrs = {kv.key: tuple(map(_text, kv.value.array_value.values))
                    if "_values." in kv.key and kv.value.HasField("array_value") else _text(kv.value)
                    for kv in span.attributes}
    service = next((_text(kv.value) for kv in resource.attributes if kv.key == "service.name"), "")
    attrs.setdefault("sp.service.name", service or DEFAULT_SERVICE)
    return attrs


def _fields(attrs: Attrs, prefix: str) -> Fields:
    """The fields under `prefix`, a repeated one's values apart when the span has them so."""
    apart = values_prefix(prefix)
    fields = []
    for key, value in attrs.items():
        if key.startswith(prefix) and isinstance(value, str):
            name = key.removeprefix(prefix)
            values = attrs.get(apart + name)
            fields += [(name, v) for v in values] if isinstance(values, tuple) and values else [(name, value)]
    return Fields(fields)


def _request_target(attrs: dict[str, str]) -> tuple[str, str, str]:
    """Method, host (port kept) and path with query, as the backend keys on them: from the
    pseudo-headers this gateway records, else from the attributes Softprobe's case profile
    guarantees (`http.request.method`, `url.path` and `url.query`), so cases written by other
    Softprobe tools match too."""
    method = attrs.get(REQUEST_HEADER + ":method") or attrs.get("http.request.method", "")
    path = attrs.get(REQUEST_HEADER + ":path")
    if not path:
        path = attrs.get("url.path", "")
        if (query := attrs.get("url.query")) and "?" not in path:
            path = f"{path}?{query}"
    host = (attrs.get("url.host") or attrs.get(REQUEST_HEADER + ":authority")
            or attrs.get(REQUEST_HEADER + "host", ""))
    return method.upper(), host, path


def extract_exchanges(traces: TracesData, *, answered_lookups: bool = False) -> list[Recording]:
    """Every extract span (`sp.span.type == "extract"`) as an exchange; with `answered_lookups`
    also every other span that carries a response, as Softprobe's own case files mark their
    recorded answers `inject`."""
    exchanges = []
    for resource, span in _spans(traces):
        attrs = _attributes(resource, span)
        if attrs.get("sp.span.type") != "extract" and not (answered_lookups and _has_response(attrs)):
            continue
        method, host, path = _request_target(attrs)
        status_text = attrs.get("http.response.status_code") or attrs.get(RESPONSE_HEADER + ":status", "")
        status = int(status_text) if status_text.isdigit() else 0
        exchanges.append(Recording(
            session_id=attrs.get("sp.session.id", ""), trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
            service=attrs["sp.service.name"], direction=attrs.get("sp.traffic.direction", ""),
            kind=_KINDS.get(span.kind, "internal"), method=method, host=host, path=path,
            status=status, error=span.status.code == Status.STATUS_CODE_ERROR or status >= 500,
            start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
            request_headers=_fields(attrs, REQUEST_HEADER),
            response_headers=_fields(attrs, RESPONSE_HEADER),
            request_body=attrs.get("http.request.body", ""),
            response_body=attrs.get("http.response.body", ""),
            answered_by=_answered_by(attrs),
            error_message=attrs.get("error.message", ""),
            request_original_size=_original_size(attrs, "http.request.body"),
            response_original_size=_original_size(attrs, "http.response.body"),
            response_trailers=_fields(attrs, RESPONSE_TRAILER),
        ))
    return exchanges


def _has_response(attrs: dict[str, str]) -> bool:
    return "http.response.status_code" in attrs or "http.response.body" in attrs


def _answered_by(attrs: dict[str, str]) -> str:
    """Who answered when the gateway did; `sp.injected` alone is an earlier gateway's mark."""
    return attrs.get("sp.answered_by") or ("injected" if attrs.get("sp.injected") == "true" else "")


def _original_size(attrs: dict[str, str], body: str) -> int:
    """A truncated body's size on the wire (`*.body.original_size`); 0 when it was kept whole."""
    size = attrs.get(f"{body}.original_size", "") if attrs.get(f"{body}.truncated") == "true" else ""
    return int(size) if size.isdigit() else 0


def lookup_request(traces: TracesData) -> LookupRequest | None:
    """The request half of the first inject span (or untyped span); None when there is none."""
    attrs = inject_attributes(traces)
    return None if attrs is None else request_of(attrs)


def inject_attributes(traces: TracesData) -> Attrs | None:
    """The attributes of the first inject span (or untyped span), `sp.service.name` filled in."""
    for resource, span in _spans(traces):
        attrs = _attributes(resource, span)
        if attrs.get("sp.span.type", "inject") == "inject":
            return attrs
    return None


def request_of(attrs: Attrs) -> LookupRequest:
    """The request half of an inject span's attributes."""
    method, host, path = _request_target(attrs)
    return LookupRequest(session_id=attrs.get("sp.session.id", ""), method=method, host=host, path=path,
                         content_type=attrs.get(REQUEST_HEADER + "content-type", ""),
                         body=attrs.get("http.request.body", ""))


def request_headers(attrs: Attrs) -> Fields:
    """The request's header fields of an inject span's attributes."""
    return _fields(attrs, REQUEST_HEADER)


def answer(exchange: Recording) -> TracesData:
    """A lookup hit: one span carrying the recorded response exactly as it was recorded."""
    attrs: Attributes = [
        ("sp.span.type", "extract"), ("sp.session.id", exchange.session_id),
        ("sp.service.name", exchange.service), ("sp.traffic.direction", exchange.direction),
        ("http.response.status_code", exchange.status),
        *field_attributes(RESPONSE_HEADER, exchange.response_headers),
        *field_attributes(RESPONSE_TRAILER, exchange.response_trailers),
        # Always present, empty or not: a case may record a status alone (no headers, no body),
        # and a span without any response attribute is no answer at all (protocol section 2).
        ("http.response.body", exchange.response_body),
    ]
    data = TracesData()  # filled in place: constructors would deep-copy the body each time
    fill_span(add_scope_spans(data, exchange.service, "").spans.add(), exchange.route,
              bytes.fromhex(exchange.trace_id), bytes.fromhex(exchange.span_id),
              bytes.fromhex(exchange.parent_span_id),
              Span.SPAN_KIND_CLIENT if exchange.kind == "client" else Span.SPAN_KIND_SERVER,
              exchange.start_ns, exchange.end_ns, attrs, error=False)
    return data


# -- OTLP JSON ------------------------------------------------------------------------------

_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def traces_from_json(payload: bytes) -> TracesData:
    """OTLP JSON, whose trace and span ids are hex (protobuf's JSON mapping would want base64)."""
    try:
        document = json.loads(payload)
    except ValueError as e:
        raise BadTraces(f"not OTLP JSON traces: {e}") from None
    return traces_from_document(document)


def traces_from_document(document: dict) -> TracesData:
    """A parsed OTLP JSON document (changed in place: its hex ids become base64)."""
    try:
        _convert_all_ids(document, _hex_to_base64)
        return json_format.ParseDict(document, TracesData(), ignore_unknown_fields=True)
    except (ValueError, TypeError, AttributeError, json_format.ParseError) as e:
        raise BadTraces(f"not OTLP JSON traces: {e}") from None


def traces_to_document(traces: TracesData) -> dict:
    """OTLP JSON (`ExportTraceServiceRequest`): camelCase keys, hex ids, enums as integers."""
    document = json_format.MessageToDict(traces, use_integers_for_enums=True)
    _convert_all_ids(document, _base64_to_hex)
    return document


def _json_spans(document: dict) -> Iterator[dict]:
    for rs in _list(document, "resourceSpans", "resource_spans"):
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            yield from _list(ss, "spans")


def _list(obj: dict, *keys: str) -> list:
    return next((obj[k] for k in keys if k in obj), None) or []


def _hex_to_base64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _convert_all_ids(document: dict, convert: Callable[[str], str]) -> None:
    """Every span's ids and its links' ids, in place."""
    for span in _json_spans(document):
        _convert_ids(span, convert)
        for link in _list(span, "links"):
            _convert_ids(link, convert)


def _convert_ids(obj: dict, convert: Callable[[str], str]) -> None:
    for key in _ID_KEYS:
        if obj.get(key):
            obj[key] = convert(obj[key])


def traces_from_protobuf(payload: bytes) -> TracesData:
    try:
        return TracesData.FromString(payload)
    except Exception as e:  # DecodeError, and others on hostile bytes
        raise BadTraces(f"not OTLP protobuf traces: {type(e).__name__}") from None
