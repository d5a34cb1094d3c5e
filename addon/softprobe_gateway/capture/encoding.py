"""An exchange's span attributes (protocol section 1): decoding, capping, base64, redaction.

The proxy's hooks only take references into an `exchange.Exchange`; the work happens here, off
the event loop, in the export worker (and for a lookup's request, on a thread when it is big).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import brotlicffi  # 1.2+: an output limit, which mitmproxy's pinned Brotli 1.1 lacks
import zstandard

from softprobe_gateway.capture.exchange import REFUSAL, Exchange, Message
from softprobe_gateway.capture.redaction import Redactor
from softprobe_gateway.config.schema import CaptureConfig, RedactionConfig
from softprobe_gateway.otlp import Attributes, field_attributes, is_text

if TYPE_CHECKING:  # the export worker process imports this module: keep mitmproxy out of it
    from mitmproxy.websocket import WebSocketMessage

# Header values the redaction left as they were, remembered by (name, value) so the same field
# on the next exchange (a host, a content type, a method) skips the pattern scans: a set of
# values exported verbatim anyway, never a secret; emptied when full (unique values churn it).
CLEAN_FIELDS_MAX = 4096
# Dropped whatever the config says (case-insensitive); the config adds to this list.
SENSITIVE_HEADERS = frozenset({
    "authorization", "cookie", "set-cookie", "x-public-key", "x-auth-token", "bearer",
    "proxy-authorization", "x-api-key",
})


class Capture:
    """Turns exchanges into span attributes under one `capture` config section."""

    def __init__(self, config: CaptureConfig, redaction: RedactionConfig = RedactionConfig()) -> None:
        self.redactor = Redactor(redaction)
        self.max_body = config.max_body_bytes
        self.websocket_messages = config.websocket_messages
        self.drop = SENSITIVE_HEADERS | {h.lower() for h in config.drop_headers}
        self.mask = frozenset(h.lower() for h in config.mask_headers) - self.drop
        self._clean: set[tuple[str, str]] = set()  # CLEAN_FIELDS_MAX

    def request_attributes(self, ex: Exchange, text_as_bytes: bool = False) -> Attributes:
        """The request half (also the body of a lookup, section 2). With `text_as_bytes`, a
        text body that is ASCII and has nothing to redact is its bytes, not decoded (its UTF-8
        is the bytes themselves): the export worker splices it into the request (`worker.wire`)."""
        attrs: Attributes = [
            ("sp.service.name", ex.service_name),
            ("sp.traffic.direction", ex.direction),
            ("sp.session.id", ex.session_id),
        ]
        headers, body = self.message_attributes("request", ex.request, text_as_bytes)
        return attrs + headers + [("url.path", self.redactor.query(ex.path)), ("url.host", ex.host)] + body

    def exchange_attributes(self, ex: Exchange, text_as_bytes: bool = False) -> Attributes:
        """All attributes of the extract span of a recorded exchange (`text_as_bytes`: as in
        `request_attributes`)."""
        attrs = self.request_attributes(ex, text_as_bytes)
        attrs.insert(2, ("sp.span.type", "extract"))
        if ex.response is not None:
            headers, body = self.message_attributes("response", ex.response, text_as_bytes)
            attrs += headers + [("http.response.status_code", ex.status_code)] + body
        if ex.error:
            attrs.append(("error.message", ex.error))
        if ex.answered_by:
            attrs.append(("sp.answered_by", ex.answered_by))
            if ex.answered_by != REFUSAL:  # as before: a recorded or mocked answer was injected
                attrs.append(("sp.injected", True))
        if ex.events_dropped:
            attrs.append(("websocket.messages.dropped", ex.events_dropped))
        return attrs

    def websocket_event(self, ex: Exchange, message: WebSocketMessage) -> None:
        """One WebSocket message as a span event, up to `websocket_messages` per connection;
        beyond that they are only counted, so a long-lived connection costs bounded memory."""
        if len(ex.events) >= self.websocket_messages:
            ex.events_dropped += self.websocket_messages > 0
            return
        content = message.content[: self.max_body]
        data = (self.redactor.body(content.decode("utf-8", "replace"), None) if message.is_text
                else base64.b64encode(content).decode())
        ex.events.append((int(message.timestamp * 1e9), "websocket.message", [
            ("websocket.direction", "client" if message.from_client else "server"),
            ("websocket.type", "text" if message.is_text else "binary"),
            ("websocket.data", data), ("websocket.size", len(message.content)),
        ]))

    def message_attributes(self, side: str, message: Message,
                           text_as_bytes: bool = False) -> tuple[Attributes, Attributes]:
        """(header and trailer, body) attributes of the `request` or `response` side."""
        headers = decoded_fields(message.headers)
        attrs = self._field_attributes(f"http.{side}.header.", headers, message.pseudo)
        if message.trailers:
            attrs += self._field_attributes(f"http.{side}.trailer.", decoded_fields(message.trailers))
        return attrs, self._body_attributes(f"http.{side}.body", message, headers, text_as_bytes)

    def _field_attributes(self, prefix: str, fields: list[tuple[str, str]],
                          pseudo: tuple[tuple[str, str], ...] = ()) -> Attributes:
        """Pseudo-headers first, then the fields (each repeated one also apart), secrets removed."""
        redact = self._header
        attrs: Attributes = [(prefix + k, redact(k, v)) for k, v in pseudo]
        kept = [(name, self.redactor.secret(value) if name in self.mask else redact(name, value))
                for name, value in fields if name not in self.drop]
        return attrs + field_attributes(prefix, kept)

    def _header(self, name: str, value: str) -> str:
        """`Redactor.header`, remembering the fields it leaves as they are (CLEAN_FIELDS_MAX):
        scanning every header of every exchange was a third of the export worker's encoding."""
        if (name, value) in self._clean:
            return value
        recorded = self.redactor.header(name, value)
        if recorded == value:
            if len(self._clean) >= CLEAN_FIELDS_MAX:
                self._clean.clear()
            self._clean.add((name, value))
        return recorded

    def _body_attributes(self, key: str, message: Message, headers: list[tuple[str, str]],
                         text_as_bytes: bool = False) -> Attributes:
        """The body, decoded and capped, as text or base64; marked when truncated."""
        raw = message.body
        if not raw:
            return []
        body, complete = decode_body(raw, field_value(headers, "content-encoding") or "", self.max_body)
        content_type = field_value(headers, "content-type")
        kept = body[: self.max_body]
        text = is_text(content_type)
        value: str | bytes
        redact = text and self.redactor.may_redact(kept)  # a scan of the body: once
        if text and text_as_bytes and not redact and kept.isascii():
            value = kept  # what encode_body's decoding would give, as UTF-8: the bytes themselves
        else:
            value = encode_body(kept, content_type)
            if redact:
                value = self.redactor.body(value, content_type)
        attrs: Attributes = [(key, value)]
        wire_size = message.size if message.size is not None else len(raw)
        if not complete or len(body) > self.max_body or wire_size > len(raw):
            attrs += [(f"{key}.truncated", True), (f"{key}.original_size", wire_size)]
        return attrs


def decoded_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Wire fields as text, names lower-cased, in order (a repeated field stays repeated)."""
    return [(name.decode("latin-1").lower(), value.decode("utf-8", "replace")) for name, value in fields]


def field_value(fields: list[tuple[str, str]], name: str) -> str | None:
    """A field's value, a repeated field's values joined by `, ` (RFC 9110, section 5.3)."""
    values = [value for key, value in fields if key == name]
    return ", ".join(values) if values else None


def encode_body(body: bytes, content_type: str | None) -> str:
    """Text (invalid UTF-8 replaced) for textual types, else standard padded base64."""
    if is_text(content_type):
        return body.decode("utf-8", "replace")
    return base64.b64encode(body).decode("ascii")


def decode_body(raw: bytes, content_encoding: str, limit: int) -> tuple[bytes, bool]:
    """Undo one content-encoding, producing at most `limit + 1` bytes (no zip bombs).

    Returns the (possibly partial) body and whether it is complete. Unknown, stacked or
    corrupt encodings give the raw bytes back, recorded as they came (then base64 by type).
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw, True
    try:
        if encoding in ("gzip", "x-gzip", "deflate"):
            return _inflate(raw, encoding, limit + 1)
        if encoding == "br":
            body = brotlicffi.Decompressor().process(raw, output_buffer_limit=limit + 1)
            return body[: limit + 1], len(body) <= limit
        if encoding == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            body = reader.read(limit + 1)
            return body, len(body) <= limit
    except (zlib.error, brotlicffi.error, zstandard.ZstdError):
        pass
    return raw, True


def _inflate(raw: bytes, encoding: str, cap: int) -> tuple[bytes, bool]:
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
    try:
        d = zlib.decompressobj(wbits)
        body = d.decompress(raw, cap)
    except zlib.error:
        if "gzip" in encoding:
            raise
        d = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send it
        body = d.decompress(raw, cap)
    return body, len(body) < cap and not d.unconsumed_tail

