"""The gateway's redaction applied to spans recorded elsewhere or earlier (a case file's OTLP
JSON, `softprobe scrub`), with the same rules a live exchange goes through in `encoding.Capture`:
headers the config drops are removed, headers it masks are masked, every other header, the URL
and text bodies are redacted by `redaction.Redactor`. The spans are changed in place."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.otlp import is_text

_FIELD_PREFIXES = tuple(f"http.{side}.{kind}{suffix}." for side in ("request", "response")
                        for kind in ("header", "trailer") for suffix in ("", "_values"))
_BODIES = {"http.request.body": "http.request.header.content-type",
           "http.response.body": "http.response.header.content-type"}


@dataclass
class Changes:
    """What a scrub did: values replaced, header attributes removed."""

    redacted: int = 0
    dropped: int = 0

    def __iadd__(self, other: Changes) -> Changes:
        self.redacted += other.redacted
        self.dropped += other.dropped
        return self


def scrub_case(case: dict[str, Any], capture: Capture) -> Changes:
    """Every span of a case (`traces[].resourceSpans[].scopeSpans[].spans[]`), in place."""
    changes = Changes()
    for span in _spans(case):
        changes += scrub_span(span, capture)
    return changes


def scrub_span(span: dict[str, Any], capture: Capture) -> Changes:
    changes = Changes()
    attributes = span.get("attributes")
    if isinstance(attributes, list):
        types = {kv.get("key"): _string(kv.get("value")) for kv in attributes if isinstance(kv, dict)}
        kept = []
        for kv in attributes:
            redact = _rule(kv.get("key", "") if isinstance(kv, dict) else "", types, capture)
            if redact is None:
                changes.dropped += 1
                continue
            changes.redacted += _apply(kv.get("value"), redact) if isinstance(kv, dict) else 0
            kept.append(kv)
        attributes[:] = kept
    for event in span.get("events") or []:
        if isinstance(event, dict) and isinstance(event.get("attributes"), list):
            for kv in event["attributes"]:
                if isinstance(kv, dict) and kv.get("key") == "websocket.data" and _text_message(event):
                    changes.redacted += _apply(kv.get("value"), lambda v: capture.redactor.body(v, None))
    return changes


def _rule(key: str, types: dict[Any, str | None], capture: Capture) -> Callable[[str], str] | None:
    """How one attribute's string values are redacted; None: the attribute is dropped."""
    redactor = capture.redactor
    prefix = next((p for p in _FIELD_PREFIXES if key.startswith(p)), None)
    if prefix is not None:
        name = key[len(prefix):].lower()
        if name in capture.drop:
            return None
        if name in capture.mask:
            return redactor.secret
        return lambda value: redactor.header(name, value)
    if key in _BODIES:
        content_type = types.get(_BODIES[key])
        return (lambda value: redactor.body(value, content_type)) if is_text(content_type) else _same
    if key in ("url.path", "url.full"):
        return redactor.query
    if key == "url.query":
        return lambda value: redactor.query(f"?{value}")[1:]
    return _same


def _same(value: str) -> str:
    return value


def _apply(value: Any, redact: Callable[[str], str]) -> int:
    """Redact a string value or an array's strings in place; how many changed."""
    if not isinstance(value, dict):
        return 0
    if isinstance(value.get("stringValue"), str):
        new = redact(value["stringValue"])
        changed = new != value["stringValue"]
        value["stringValue"] = new
        return int(changed)
    array = value.get("arrayValue")
    values = array.get("values") if isinstance(array, dict) else None
    return sum(_apply(item, redact) for item in values) if isinstance(values, list) else 0


def _string(value: Any) -> str | None:
    return value.get("stringValue") if isinstance(value, dict) else None


def _text_message(event: dict[str, Any]) -> bool:
    return any(isinstance(kv, dict) and kv.get("key") == "websocket.type" and _string(kv.get("value")) == "text"
               for kv in event["attributes"])


def _spans(case: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for trace in case.get("traces") or []:
        for rs in (trace.get("resourceSpans") or []) if isinstance(trace, dict) else []:
            for ss in (rs.get("scopeSpans") or []) if isinstance(rs, dict) else []:
                for span in (ss.get("spans") or []) if isinstance(ss, dict) else []:
                    if isinstance(span, dict):
                        yield span
