"""The benchmark's own servers, each run as its own process so it never shares a GIL with the
process being measured or with the harness.

    python -m bench.servers upstream PORT             fixed bodies: GET /body/<bytes>
    python -m bench.servers backend PORT BLACKHOLE    OTLP backend + a black hole

The upstream and backend speak just enough HTTP/1.1 (keep-alive, content-length) to be far
cheaper than the proxy under test. The backend counts exported spans (decoded, not guessed)
and answers lookups by the URL prefix the gateway keeps in front of `/v1/inject`:
`/miss/...` answers 404, `/hit/<bytes>/...` answers 200 with a recorded answer of that size.
The black hole accepts connections and never answers anything.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData

LOOPBACK = "127.0.0.1"
# (method, path, body) -> (status, content-type, body)
Handler = Callable[[bytes, str, bytes], tuple[int, str, bytes]]


@functools.cache
def body_of(size: int) -> bytes:
    """A JSON document of exactly `size` bytes (a typical API payload, exported as text)."""
    filler = size - len(b'{"data":""}')
    return b'{"data":"' + b"x" * max(filler, 0) + b'"}'


def response_head(status: int, content_type: str, length: int) -> bytes:
    return (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
            f"content-type: {content_type}\r\ncontent-length: {length}\r\n\r\n").encode()


class HttpProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 requests with optional content-length bodies, answered in order."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            length = next((int(line.split(":", 1)[1]) for line in head[1:]
                           if line.lower().startswith("content-length:")), 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            method, path, _ = head[0].split(" ", 2)
            status, content_type, answer = self.handle(method.encode(), path, body)
            self.transport.write(response_head(status, content_type, len(answer)))
            self.transport.write(answer)  # not concatenated: no copy of a large body


def upstream(method: bytes, path: str, body: bytes) -> tuple[int, str, bytes]:
    """`GET /body/<bytes>` answers that many bytes of JSON (built once per size)."""
    if not path.startswith("/body/"):
        return 404, "text/plain", b""
    return 200, "application/json", body_of(int(path.rsplit("/", 1)[1]))


@functools.cache
def hit_answer(size: int) -> bytes:
    """A lookup hit (protocol section 2): one span carrying the http.response.* attributes."""
    attrs = [KeyValue(key="http.response.status_code", value=AnyValue(int_value=200)),
             KeyValue(key="http.response.header.content-type",
                      value=AnyValue(string_value="application/json")),
             KeyValue(key="http.response.body", value=AnyValue(string_value=body_of(size).decode()))]
    span = Span(name="/hit", attributes=attrs)
    return TracesData(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
                      ).SerializeToString()


class Backend:
    """Counts exported spans; answers lookups as the URL prefix says."""

    def __init__(self) -> None:
        self.spans = 0
        self.batches = 0

    def __call__(self, method: bytes, path: str, body: bytes) -> tuple[int, str, bytes]:
        if path.endswith("/v1/traces"):
            data = TracesData.FromString(body)
            self.spans += sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)
            self.batches += 1
            return 200, "application/json", b'{"message":"Traces ingested successfully"}'
        if path.endswith("/v1/inject") and path.startswith("/hit/"):
            return 200, "application/x-protobuf", hit_answer(int(path.split("/")[2]))
        if path == "/count":
            return 200, "application/json", json.dumps(
                {"spans": self.spans, "batches": self.batches}).encode()
        return 404, "text/plain", b""


class BlackHole(asyncio.Protocol):
    """Accepts, reads and discards, never answers: a backend that hangs."""

    def data_received(self, data: bytes) -> None:
        pass


async def serve(role: str, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    if role == "upstream":
        servers = [await loop.create_server(lambda: HttpProtocol(upstream), LOOPBACK, ports[0])]
    else:
        backend = Backend()
        servers = [await loop.create_server(lambda: HttpProtocol(backend), LOOPBACK, ports[0]),
                   await loop.create_server(BlackHole, LOOPBACK, ports[1])]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], [int(p) for p in sys.argv[2:]]))
