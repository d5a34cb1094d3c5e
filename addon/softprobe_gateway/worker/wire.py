"""An OTLP request serialized with its large text bodies spliced in, not copied through protobuf.

With 1 MiB bodies most of the worker's CPU was copies of each body: decoded to a `str`, copied
into the protobuf message and copied again by `SerializeToString`. Here a span whose body attribute is given as its bytes
(`Capture.exchange_attributes(text_as_bytes=True)`: ASCII text nothing redacts, so its UTF-8 is
the bytes themselves) is serialized around a placeholder, and the body goes out as a piece of
its own, beside the serialized parts (`Pieces`, sent by the sink without joining them).

The bytes are exactly `TracesData.SerializeToString()`'s for the same message (protobuf writes
fields in field-number order, each repeated element framed on its own), so the wire is the
protocol's as before; tests/unit/test_export_wire.py compares the two.
"""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData

from softprobe_gateway.otlp import Attributes

SPLICE_BYTES = 16 * 1024  # smaller bodies cost less through protobuf than as pieces of their own
JOIN_BYTES = 64 * 1024  # smaller pieces are gathered into one buffer, so a send is a few syscalls

Piece = bytes | memoryview
# Protobuf tags (field number << 3 | 2, length-delimited) of the messages framed here.
_RESOURCE_SPANS, _SCOPE_SPANS, _SPANS, _ATTRIBUTES, _VALUE, _STRING_VALUE = 0x0A, 0x12, 0x12, 0x4A, 0x12, 0x0A
_SPAN_ATTRIBUTES = 9  # Span.attributes: fields above it (events, status...) come after them


class Pieces:
    """A serialized OTLP request as pieces to send one after the other: large ones (the bodies)
    as they are, the small ones between them gathered into one buffer."""

    def __init__(self) -> None:
        self.parts: list[Piece] = []
        self.size = 0

    def add(self, piece: Piece) -> None:
        if not piece:
            return
        if len(piece) >= JOIN_BYTES:
            self.parts.append(piece)
        elif self.parts and isinstance(last := self.parts[-1], bytearray):
            last += piece
        else:
            self.parts.append(bytearray(piece))
        self.size += len(piece)

    def extend(self, other: Pieces) -> None:
        for piece in other.parts:
            self.add(piece)


def placeholders(attributes: Attributes) -> tuple[Attributes, dict[int, bytes]]:
    """The attributes with each large bytes value (text given as its bytes) emptied, and those
    values by attribute index, to be spliced back by `serialize`."""
    spliced = {i: value for i, (_, value) in enumerate(attributes)
               if isinstance(value, bytes) and len(value) >= SPLICE_BYTES}
    if not spliced:
        return attributes, spliced
    return [(key, b"" if i in spliced else value) for i, (key, value) in enumerate(attributes)], spliced


def serialize(data: TracesData, splices: dict[tuple[int, int, int], dict[int, bytes]]) -> Pieces:
    """`data` serialized, the values `splices` holds (by resource, scope and span index, then
    attribute index) in place of their placeholders."""
    out = Pieces()
    for r, resource_spans in enumerate(data.resource_spans):
        if not any(key[0] == r for key in splices):
            out.add(_frame(_RESOURCE_SPANS, resource_spans.SerializeToString()))
            continue
        head = ResourceSpans()
        head.resource.CopyFrom(resource_spans.resource)
        body = Pieces()
        body.add(head.SerializeToString())
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            body.extend(_framed(_SCOPE_SPANS, _scope_spans(scope_spans, {
                key[2]: values for key, values in splices.items() if key[:2] == (r, s)})))
        body.add(_schema_url(resource_spans.schema_url, 3))
        out.extend(_framed(_RESOURCE_SPANS, body))
    return out


def _scope_spans(scope_spans: ScopeSpans, splices: dict[int, dict[int, bytes]]) -> Pieces:
    out = Pieces()
    head = ScopeSpans()
    head.scope.CopyFrom(scope_spans.scope)
    out.add(head.SerializeToString())
    for i, span in enumerate(scope_spans.spans):
        if i in splices:
            out.extend(_framed(_SPANS, _span(span, splices[i])))
        else:
            out.add(_frame(_SPANS, span.SerializeToString()))
    out.add(_schema_url(scope_spans.schema_url, 3))
    return out


def _span(span: Span, values: dict[int, bytes]) -> Pieces:
    """A span's fields in order: those below its attributes, the attributes (each spliced one
    framed here around its value), then the rest."""
    bare = Span()
    bare.CopyFrom(span)
    del bare.attributes[:]
    whole = bare.SerializeToString()
    cut = _fields_end(whole, _SPAN_ATTRIBUTES)
    out = Pieces()
    out.add(whole[:cut])
    for i, kv in enumerate(span.attributes):
        if i not in values:
            out.add(_frame(_ATTRIBUTES, kv.SerializeToString()))
            continue
        value = values[i]
        any_value = Pieces()
        any_value.add(_tag_length(_STRING_VALUE, len(value)))
        any_value.add(value)
        key_value = Pieces()
        key_value.add(KeyValue(key=kv.key).SerializeToString())
        key_value.extend(_framed(_VALUE, any_value))
        out.extend(_framed(_ATTRIBUTES, key_value))
    out.add(whole[cut:])
    return out


def _schema_url(url: str, number: int) -> bytes:
    return _frame(number << 3 | 2, url.encode()) if url else b""


def _framed(tag: int, inner: Pieces) -> Pieces:
    out = Pieces()
    out.add(_tag_length(tag, inner.size))
    out.extend(inner)
    return out


def _frame(tag: int, inner: bytes) -> bytes:
    return _tag_length(tag, len(inner)) + inner


def _tag_length(tag: int, length: int) -> bytes:
    return bytes((tag,)) + _varint(length)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fields_end(data: bytes, number: int) -> int:
    """Where the first top-level field numbered above `number` starts (the end when none is)."""
    pos = 0
    while pos < len(data):
        tag, after = _read_varint(data, pos)
        if tag >> 3 > number:
            return pos
        kind = tag & 7
        if kind == 0:
            _, after = _read_varint(data, after)
        elif kind == 1:
            after += 8
        elif kind == 2:
            length, after = _read_varint(data, after)
            after += length
        elif kind == 5:
            after += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {kind}")
        pos = after
    return pos


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
