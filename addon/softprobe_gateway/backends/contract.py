"""What a backend is to the gateway: where the worker sends export batches (a `Sink`), what
answers the proxy's lookups (a `Transport`), what a dead worker delivered, and how it is named.

One object per backend kind (`http`, `file`, `embedded`), chosen once by `select.backend_for`.
Backends never import the proxy's modules: the worker process uses them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.otlp import Hit
from softprobe_gateway.store.model import MissedLookup

MAX_BACKOFF_S = 30.0
# How a lookup failed (metric labels, with the proxy's own: hit, miss, timeout, breaker_open).
CONNECT_ERROR, BAD_STATUS, BAD_ANSWER = "connect_error", "bad_status", "bad_answer"
# A transport takes the lookup request and returns the answer (None for a miss).
Transport = Callable[[TracesData], Awaitable["Hit | None"]]
SpanKeys = Iterable[tuple[bytes, bytes]]  # (trace id, span id) of exchanges handed to a worker


class SendError(Exception):
    """A batch was not accepted. `retry_after` is set when trying again may succeed."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LookupFailure(Exception):
    """A lookup that got no usable answer: forwarded upstream (or refused in strict replay)."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class Sink(Protocol):
    """Where the worker sends batches; `send` blocks (it runs in the worker process)."""

    concurrency: int  # batches `send` may be called with at once, from as many threads

    def send(self, batch: TracesData) -> int:
        """Deliver the batch; the bytes delivered. SendError when it was not accepted."""

    def settle(self) -> None:
        """Work left after a batch was reported (the store's checkpoint)."""

    def explain_misses(self, missed: list[MissedLookup]) -> None:
        """Write the lookups nothing answered, with their diagnosis (the embedded store)."""

    def close(self) -> None: ...


class Lookups(Protocol):
    """The proxy's side of lookups against one backend."""

    ask: Transport

    async def aclose(self) -> None: ...


class Backend(Protocol):
    def describe(self) -> str:
        """Where exports go, for the start-up line."""

    def sink(self) -> Sink:
        """The worker's sink; ConfigError naming the key when it cannot be opened."""

    def lookups(self, on_miss: Callable[[MissedLookup], None]) -> Lookups:
        """What answers lookups; ConfigError when this backend cannot (`file:`)."""

    def missing(self, spans: list[tuple[bytes, bytes]]) -> int:
        """How many of a dead worker's exchanges the backend does not have."""


def cause(e: BaseException) -> str:
    """`SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] ...`, not a bare class name."""
    detail = str(e) or str(e.__cause__ or e.__context__ or "")
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__
