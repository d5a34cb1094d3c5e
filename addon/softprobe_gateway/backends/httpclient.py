"""The lookup's HTTP/1.1 client: keep-alive POSTs on mitmproxy's event loop, strict about framing.

An HTTP/1.1 connection carries answers back to back with nothing but framing to tell them apart,
so a framing mistake hands one request's answer to the next request. This client therefore reads
strictly: interim `1xx` answers are skipped, a body ends where its content-length, its chunked
framing (sizes of hex digits only, CRLF checked after every chunk, trailers read) or the
connection's close says, and anything ambiguous (conflicting lengths, content-length beside
transfer-encoding, a malformed head) is refused and the connection closed. A connection goes
back to the pool only when its answer ended exactly at the framing's end, the request was fully
sent, and nothing arrived unasked; one that received bytes or closed while idle is dropped.

Why not h11 (a mitmproxy dependency) or httpx: mitmproxy 11 pins h11 <= 0.14.0, which discards the
two bytes after each chunk without checking they are CRLF (CVE-2025-43859, fixed in h11 0.16), and
`python -m bench.lookup_client` measures this client at less CPU per lookup than h11 over asyncio
streams and far less than httpx (docs/lookups-and-replay.md, "The lookup client"). Every lookup
runs on the proxy's one event loop, where that CPU is taken from proxied requests.

One bounded pool per client: at most `max_connections` connections, idle or busy; a lookup waits
for a free one (within its caller's timeout). A request is retried once, on a new connection,
only when a reused connection closed before any byte of its answer arrived.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from softprobe_gateway.tls import client_context

MAX_HEAD = 64 * 1024  # status line and headers of an answer, interim answers and trailers included
MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n\x00]*)?")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n\x00]*?)[ \t]*")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n\x00]*)?")

HeaderFields = dict[bytes, list[bytes]]  # by lower-case name


class AnswerTooLarge(Exception):
    """The answer's body exceeds the caller's limit."""


class ProtocolError(Exception):
    """The peer's answer is not well-formed HTTP/1.1 (or closed before its end)."""


class ClosedBeforeAnswer(ConnectionError):
    """The connection closed before any byte of the answer arrived."""


class _Connection(asyncio.Protocol):
    """One connection with its own receive buffer: idle data and closes are seen, never missed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False          # end of stream or connection lost
        self.reset: Exception | None = None
        self.busy = False            # an exchange is in progress
        self.received = 0            # bytes received during the current exchange
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # unasked bytes on an idle connection: never let them answer a request
            self.close()
            return
        self.buffer += data
        self.received += len(data)
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.reset = True, exc
        self._wake()

    # -- reading
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _more(self) -> None:
        """Wait for more bytes; raise when the peer has closed instead."""
        if self.closed:
            if self.received == 0:
                raise ClosedBeforeAnswer("connection closed before an answer")
            raise ProtocolError(f"connection closed after {self.received} bytes, mid-answer")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def until(self, delimiter: bytes, max_len: int, what: str) -> bytes:
        """Bytes up to `delimiter` (consumed, not returned), at most `max_len` of them."""
        while (end := self.buffer.find(delimiter, 0, max_len + len(delimiter))) < 0:
            if len(self.buffer) >= max_len + len(delimiter):
                raise ProtocolError(f"{what} over {max_len} bytes")
            await self._more()
        data = bytes(self.buffer[:end])
        del self.buffer[:end + len(delimiter)]
        return data

    async def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._more()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def to_close(self, limit: int) -> bytes:
        """The rest of the stream, up to the peer's close, refused past `limit` bytes."""
        while not self.closed:
            if len(self.buffer) > limit:
                raise AnswerTooLarge(f"answer over the {limit}-byte cap")
            await self._more()
        if self.reset is not None:
            raise ProtocolError(f"connection reset before the end of a close-delimited answer: {self.reset}")
        if len(self.buffer) > limit:
            raise AnswerTooLarge(f"answer over the {limit}-byte cap")
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    @property
    def reusable(self) -> bool:
        """Idle, open, nothing received unasked, and the last request fully sent."""
        return (not self.closed and not self.buffer and self.transport is not None
                and not self.transport.is_closing() and self.transport.get_write_buffer_size() == 0)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PostClient:
    """POSTs to one URL over one bounded pool of keep-alive connections (no proxy from the env)."""

    def __init__(self, url: str, headers: Mapping[str, str], max_connections: int = 32) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.tls = client_context() if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        authority = parts.netloc.rpartition("@")[2]
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"host: {authority}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: list[_Connection] = []  # LIFO: the most recently used is the least likely closed

    async def post(self, body: bytes, limit: int) -> tuple[int, bytes]:
        """(status, body) of one POST; raises OSError, ProtocolError or AnswerTooLarge."""
        status, answer, _ = await self.post_answer(body, limit)
        return status, answer

    async def post_answer(self, body: bytes, limit: int) -> tuple[int, bytes, HeaderFields]:
        """(status, body, header fields) of one POST, as `post`."""
        async with self.slots:
            while self.idle:
                connection = self.idle.pop()
                if not connection.reusable:
                    connection.close()
                    continue
                try:
                    return await self._exchange(connection, body, limit)
                except ClosedBeforeAnswer:
                    self._drop_idle()  # the server closed its idle connections: the rest are stale too
                    break              # retry once, on a new connection
            return await self._exchange(await self._connect(), body, limit)

    async def _connect(self) -> _Connection:
        _, connection = await asyncio.get_running_loop().create_connection(
            _Connection, self.host, self.port, ssl=self.tls,
            server_hostname=self.host if self.tls else None)
        return connection

    async def _exchange(self, connection: _Connection, body: bytes, limit: int) -> tuple[int, bytes, HeaderFields]:
        keep = False
        connection.busy, connection.received = True, 0
        try:
            assert connection.transport is not None
            connection.transport.write(self.head + b"content-length: %d\r\n\r\n" % len(body) + body)
            status, answer, keep, headers = await _read_answer(connection, limit)
            return status, answer, headers
        finally:  # also on cancellation (the lookup timeout): a half-read connection is closed
            connection.busy = False
            if keep and connection.reusable:
                self.idle.append(connection)
            else:
                connection.close()

    def _drop_idle(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()

    async def aclose(self) -> None:
        self._drop_idle()


async def _read_answer(connection: _Connection, limit: int) -> tuple[int, bytes, bool, HeaderFields]:
    """(status, body, keep-alive, header fields) of the final answer, interim `1xx` answers skipped."""
    head_budget = MAX_HEAD
    while True:
        head = await connection.until(b"\r\n\r\n", head_budget, "answer head")
        head_budget -= len(head) + 4
        status_line, *header_lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        minor, status = match[1], int(match[2])
        headers = _parse_fields(header_lines)
        if status >= 200:
            break
        if status == 101:
            raise ProtocolError("101 Switching Protocols to a request that asked for no upgrade")
        # 100 Continue, 103 Early Hints...: an interim answer; the final one follows.

    tokens = {t.strip().lower() for v in headers.get(b"connection", []) for t in v.split(b",")}
    keep_alive = b"close" not in tokens and (minor == b"1" or b"keep-alive" in tokens)
    lengths = {v.strip() for value in headers.get(b"content-length", []) for v in value.split(b",")}
    codings = headers.get(b"transfer-encoding")
    if status in (204, 304):
        return status, b"", keep_alive, headers
    if codings is not None:
        if lengths:
            raise ProtocolError("both transfer-encoding and content-length")
        if minor == b"0" or b",".join(codings).strip().lower() != b"chunked":
            raise ProtocolError(f"unsupported transfer-encoding {b','.join(codings)[:40]!r}")
        return status, await _read_chunked(connection, limit, head_budget), keep_alive, headers
    if lengths:
        if len(lengths) > 1:
            raise ProtocolError(f"conflicting content-length values {sorted(lengths)[:4]!r}")
        (length,) = lengths
        if not length.isdigit() or len(length) > 18:
            raise ProtocolError(f"bad content-length {length[:20]!r}")
        if int(length) > limit:
            raise AnswerTooLarge(f"answer of {int(length)} bytes, over the {limit}-byte cap")
        return status, await connection.exactly(int(length)), keep_alive, headers
    return status, await connection.to_close(limit), False, headers  # delimited by the connection's end


def _parse_fields(lines: list[bytes]) -> HeaderFields:
    """Header (or trailer) fields by lower-case name; obs-fold and malformed lines refused."""
    fields: HeaderFields = {}
    for line in lines:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        fields.setdefault(match[1].lower(), []).append(match[2])
    return fields


async def _read_chunked(connection: _Connection, limit: int, trailer_budget: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await connection.until(b"\r\n", MAX_CHUNK_LINE, "chunk-size line")
        match = _CHUNK_LINE.fullmatch(size_line)
        if match is None:
            raise ProtocolError(f"bad chunk-size line {size_line[:40]!r}")
        size = int(match[1], 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise AnswerTooLarge(f"chunked answer over the {limit}-byte cap")
        chunk = await connection.exactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ProtocolError(f"chunk data not followed by CRLF but {chunk[-2:]!r}")
        body += memoryview(chunk)[:-2]
    while line := await connection.until(b"\r\n", trailer_budget, "trailers"):
        trailer_budget -= len(line) + 2
        _parse_fields([line])
    return bytes(body)
