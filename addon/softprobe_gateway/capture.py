"""Capture and encoding: an exchange as plain data, and its span attributes (protocol section 1).

The proxy's hooks only take references (header tuples, body bytes, timestamps) into an
`Exchange`; decoding, capping, base64 and attribute building happen here, off the event loop,
in the export worker.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import brotlicffi  # 1.2+: an output limit, which mitmproxy's pinned Brotli 1.1 lacks
import zstandard

from .config import CaptureConfig, RedactionConfig
from .otlp import Attributes, field_attributes, is_text
from .redaction import Redactor

if TYPE_CHECKING:  # the export worker process imports this module: keep mitmproxy out of it
    from mitmproxy.websocket import WebSocketMessage

HeaderFields = Sequence[tuple[bytes, bytes]]

# Dropped whatever the config says (case-insensitive); the config adds to this list.
SENSITIVE_HEADERS = frozenset({
    "authorization", "cookie", "set-cookie", "x-public-key", "x-auth-token", "bearer",
    "proxy-authorization", "x-api-key",
})
# Who answered an exchange the gateway answered itself (`Exchange.answered_by`, span attribute
# `sp.answered_by`): such an exchange is exported and visible, but never replayed as a recording.
# ADDON: another addon of the same mitmproxy (server playback, map local, a script).
HIT, MOCK, REFUSAL, ADDON = "hit", "mock", "refusal", "addon"


@dataclass(slots=True)
class Message:
    """One side of an exchange as it crossed the proxy: header fields and body as on the wire.

    `size` is the body's full length on the wire when only its beginning was kept (streamed).
    `trailers` are the fields that came after the body (HTTP/2, e.g. gRPC's `grpc-status`).
    """

    headers: HeaderFields
    body: bytes | None
    pseudo: tuple[tuple[str, str], ...] = ()
    size: int | None = None
    trailers: HeaderFields = ()


class BodyTee:
    """A mitmproxy stream callable: passes every chunk on untouched, keeps the first `cap`
    bytes for the span and counts the rest, so a streamed body costs at most `cap` bytes."""

    __slots__ = ("cap", "kept", "size")

    def __init__(self, cap: int) -> None:
        self.cap, self.kept, self.size = cap, bytearray(), 0

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        return chunk

    def message(self, headers: HeaderFields, pseudo: tuple[tuple[str, str], ...],
                trailers: HeaderFields = ()) -> Message:
        return Message(headers, bytes(self.kept), pseudo, self.size, trailers)


def should_stream(headers: Mapping[str, str], threshold: int, response: bool) -> bool:
    """Stream event streams, bodies over the threshold, and bodies of unknown length (a
    response without content-length, a chunked request) rather than buffer them whole."""
    if response and headers.get("content-type", "").lower().startswith("text/event-stream"):
        return True
    length = headers.get("content-length")
    if length is not None:
        return not length.isdigit() or int(length) > threshold
    return response or "chunked" in headers.get("transfer-encoding", "").lower()


@dataclass(slots=True)
class Exchange:
    """Everything the export needs about one HTTP exchange, as references to the proxy's data."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    session_id: str
    service_name: str
    direction: str
    path: str
    host: str
    start_ns: int
    request: Message
    end_ns: int = 0
    response: Message | None = None
    status_code: int = 0
    error: str = ""
    answered_by: str = ""  # HIT, MOCK or REFUSAL when the gateway answered, not the upstream
    events: list[tuple[int, str, Attributes]] = field(default_factory=list)
    events_dropped: int = 0

    @property
    def size(self) -> int:
        """Bytes this exchange pins in memory (bodies dominate), for the export queue's bound."""
        total = 512 + len(self.request.body or b"")
        if self.response is not None:
            total += len(self.response.body or b"")
        return total


class Capture:
    """Turns exchanges into span attributes under one `capture` config section."""

    def __init__(self, config: CaptureConfig, redaction: RedactionConfig = RedactionConfig()) -> None:
        self.redactor = Redactor(redaction)
        self.max_body = config.max_body_bytes
        self.websocket_messages = config.websocket_messages
        self.drop = SENSITIVE_HEADERS | {h.lower() for h in config.drop_headers}
        self.mask = frozenset(h.lower() for h in config.mask_headers) - self.drop

    def request_attributes(self, ex: Exchange) -> Attributes:
        """The request half (also the body of a lookup, section 2)."""
        attrs: Attributes = [
            ("sp.service.name", ex.service_name),
            ("sp.traffic.direction", ex.direction),
            ("sp.session.id", ex.session_id),
        ]
        headers, body = self.message_attributes("request", ex.request)
        return attrs + headers + [("url.path", self.redactor.query(ex.path)), ("url.host", ex.host)] + body

    def exchange_attributes(self, ex: Exchange) -> Attributes:
        """All attributes of the extract span of a recorded exchange."""
        attrs = self.request_attributes(ex)
        attrs.insert(2, ("sp.span.type", "extract"))
        if ex.response is not None:
            headers, body = self.message_attributes("response", ex.response)
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

    def message_attributes(self, side: str, message: Message) -> tuple[Attributes, Attributes]:
        """(header and trailer, body) attributes of the `request` or `response` side."""
        headers = decoded_fields(message.headers)
        attrs = self._field_attributes(f"http.{side}.header.", headers, message.pseudo)
        if message.trailers:
            attrs += self._field_attributes(f"http.{side}.trailer.", decoded_fields(message.trailers))
        return attrs, self._body_attributes(f"http.{side}.body", message, headers)

    def _field_attributes(self, prefix: str, fields: list[tuple[str, str]],
                          pseudo: tuple[tuple[str, str], ...] = ()) -> Attributes:
        """Pseudo-headers first, then the fields (each repeated one also apart), secrets removed."""
        redact = self.redactor.header
        attrs: Attributes = [(prefix + k, redact(k, v)) for k, v in pseudo]
        kept = [(name, self.redactor.secret(value) if name in self.mask else redact(name, value))
                for name, value in fields if name not in self.drop]
        return attrs + field_attributes(prefix, kept)

    def _body_attributes(self, key: str, message: Message, headers: list[tuple[str, str]]) -> Attributes:
        """The body, decoded and capped, as text or base64; marked when truncated."""
        raw = message.body
        if not raw:
            return []
        body, complete = decode_body(raw, field_value(headers, "content-encoding") or "", self.max_body)
        content_type = field_value(headers, "content-type")
        kept = body[: self.max_body]
        value = encode_body(kept, content_type)
        if is_text(content_type) and self.redactor.may_redact(kept):
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

