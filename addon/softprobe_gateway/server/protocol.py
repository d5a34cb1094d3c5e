"""uvicorn's HTTP/1.1 protocol with what it lacks against hostile clients: a deadline for a
request's head, and a cap on connections that closes the oldest idle one first.

The parser is httptools (llhttp, Node's): strict about framing (a chunk's data must end with CRLF,
CVE-2025-43859, which h11 0.14 accepts and mitmproxy pins) and cheaper per request than h11.

uvicorn closes a keep-alive connection idle after a response (`timeout_keep_alive`), but not one
that never sends a request, nor one that sends its head a byte at a time (slowloris): each would
hold a descriptor for ever. Here a request's head must be complete within `head_timeout` seconds
of the connection opening or of its first byte, however the bytes trickle in. Beyond
`max_connections`, a new connection closes the connection idle the longest (no request in
progress), so `/health` is answered however many idle ones are open; the request bodies' own
deadline is the app's (`bodies.read`).
"""

from __future__ import annotations

import asyncio
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DESCRIPTORS_KEPT = 64  # for the store's files, the thread pool, logs and the listen socket


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered to what the process's descriptor limit leaves for connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - DESCRIPTORS_KEPT))


def guarded(head_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn is given (`Config(http=...)`), with these limits."""
    return type("GuardedProtocol", (_Guarded,), {"head_timeout": head_timeout, "max_connections": max_connections})


class _Guarded(HttpToolsProtocol):
    head_timeout: float
    max_connections: int
    _head_deadline: asyncio.TimerHandle | None = None
    _idle_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        open_ = [c for c in self.connections if isinstance(c, _Guarded) and not c.transport.is_closing()]
        if len(open_) > self.max_connections:
            oldest = min((c for c in open_ if c is not self and c._idle()), key=lambda c: c._idle_since, default=self)
            oldest.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and self._idle():
            self._await_head()
        super().data_received(data)
        if not self._idle() and self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """No request in progress: none yet, or the last one answered."""
        return self.cycle is None or self.cycle.response_complete

    def _await_head(self) -> None:
        self._idle_since = self._idle_since or self.loop.time()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_deadline = None
        if self._idle() and not self.transport.is_closing():
            self.transport.close()
