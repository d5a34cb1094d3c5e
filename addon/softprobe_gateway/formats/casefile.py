"""Softprobe case files (`*.case.json`): a recorded session out as a case, cases in as exchanges.

The format is Softprobe's (the public `softprobe/hybrid` repository: `spec/schemas/case.schema.json`
and the OTLP JSON profile `spec/protocol/case-otlp-json.md`): `traces[]` holds OTLP JSON
`ExportTraceServiceRequest` documents, here one per trace. Every span carries the profile's
identity attributes (`sp.session.id`, `sp.traffic.direction`, `sp.span.type`, `url.host`,
`url.path`, `http.request.method`) beside this gateway's own (the `:method` and `:path`
pseudo-headers), so Softprobe's tools and this backend read each other's cases.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData

from softprobe_gateway.formats.spans import (
    BadTraces,
    extract_exchanges,
    traces_from_document,
    traces_to_document,
)
from softprobe_gateway.otlp import (
    REQUEST_HEADER,
    RESPONSE_HEADER,
    RESPONSE_TRAILER,
    Attributes,
    add_scope_spans,
    field_attributes,
    fill_span,
)
from softprobe_gateway.store.model import Recording

VERSION = "1.0.0"
# The profile's recommended limits for v1 tooling: larger cases are written, with a warning.
MAX_SPANS, MAX_VALUE_BYTES, MAX_TRACE_BYTES = 100, 64 * 1024, 1024 * 1024


class CaseError(ValueError):
    """A file that is not a usable Softprobe case; the message says where."""


def case_document(case_id: str, exchanges: Iterable[Recording], created: datetime) -> dict[str, Any]:
    """A case holding `exchanges` (in recorded order), one trace document per trace id."""
    traces: dict[str, list[Recording]] = {}
    for ex in exchanges:
        traces.setdefault(ex.trace_id, []).append(ex)
    return {
        "version": VERSION, "caseId": case_id, "mode": "capture",
        "createdAt": created.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "traces": [traces_to_document(_traces(group)) for group in traces.values()],
        "rules": [], "fixtures": [],
    }


def _traces(exchanges: list[Recording]) -> TracesData:
    data = TracesData()
    services: dict[str, list[Recording]] = {}
    for ex in exchanges:
        services.setdefault(ex.service, []).append(ex)
    for service, group in services.items():
        scope = add_scope_spans(data, service, "")
        for ex in group:
            fill_span(scope.spans.add(), ex.route, bytes.fromhex(ex.trace_id), bytes.fromhex(ex.span_id),
                      bytes.fromhex(ex.parent_span_id),
                      Span.SPAN_KIND_SERVER if ex.kind == "server" else Span.SPAN_KIND_CLIENT,
                      ex.start_ns, ex.end_ns or ex.start_ns, span_attributes(ex), error=ex.error)
    return data


def span_attributes(ex: Recording) -> Attributes:
    """The profile's identity attributes first, then the recorded request and response."""
    route, _, query = ex.path.partition("?")
    attrs: Attributes = [
        ("sp.session.id", ex.session_id), ("sp.traffic.direction", ex.direction),
        ("sp.span.type", "extract"), ("sp.service.name", ex.service),
        ("url.host", ex.host), ("url.path", route), *([("url.query", query)] if query else []),
        ("http.request.method", ex.method),
        *field_attributes(REQUEST_HEADER, ex.request_headers),
    ]
    if ex.request_body:
        attrs.append(("http.request.body", ex.request_body))
    if ex.status:
        attrs.append(("http.response.status_code", ex.status))
    attrs += field_attributes(RESPONSE_HEADER, ex.response_headers)
    attrs += field_attributes(RESPONSE_TRAILER, ex.response_trailers)
    if ex.response_body:
        attrs.append(("http.response.body", ex.response_body))
    return attrs


def profile_warnings(case: dict[str, Any]) -> list[str]:
    """Where a case exceeds the profile's recommended limits."""
    warnings = []
    spans = [span for trace in case["traces"] for rs in trace.get("resourceSpans", [])
             for ss in rs.get("scopeSpans", []) for span in ss.get("spans", [])]
    if len(spans) > MAX_SPANS:
        warnings.append(f"{len(spans)} spans (the profile recommends at most {MAX_SPANS} per case)")
    longest = max((len(kv["value"].get("stringValue", "").encode()) for span in spans
                   for kv in span.get("attributes", [])), default=0)
    if longest > MAX_VALUE_BYTES:
        warnings.append(f"an attribute of {longest} bytes (recommended: at most {MAX_VALUE_BYTES})")
    biggest = max((len(json.dumps(trace)) for trace in case["traces"]), default=0)
    if biggest > MAX_TRACE_BYTES:
        warnings.append(f"a trace document of {biggest} bytes (recommended: at most {MAX_TRACE_BYTES})")
    return warnings


def case_exchanges(case: Any) -> list[Recording]:
    """The recorded exchanges of a parsed case file (changed in place). A span counts when it
    is an extract span or carries a response (Softprobe's tools mark recorded answers `inject`);
    a span without a session belongs to the case's own id."""
    if not isinstance(case, dict) or not isinstance(case.get("traces"), list):
        raise CaseError("not a Softprobe case: no traces[] list")
    case_id = str(case.get("caseId") or "")
    exchanges: list[Recording] = []
    for i, trace in enumerate(case["traces"]):
        try:
            exchanges += extract_exchanges(traces_from_document(trace), answered_lookups=True)
        except BadTraces as e:
            raise CaseError(f"traces[{i}]: {e}") from None
    return [ex if ex.session_id else dataclasses.replace(ex, session_id=case_id) for ex in exchanges]
