"""Agent lookup (protocol section 2): ask the backend for a recorded answer, failing open.

Every lookup is bounded by `lookup.timeout_ms` end to end, and a circuit breaker stops asking
a backend that keeps failing, so a dead or black-holed backend costs a few timeouts, not one
per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from .config import LookupConfig
from .httpclient import AnswerTooLarge, PostClient, ProtocolError
from .metrics import Metrics, RateLimitedLog
from .otlp import BadAnswer, Hit, decode_hit, hit_from_traces

log = logging.getLogger(__name__)

# Outcomes (metric labels). Failures trip the breaker; hits and misses close it.
HIT, MISS, SKIPPED = "hit", "miss", "breaker_open"
TIMEOUT, CONNECT_ERROR, BAD_STATUS, BAD_ANSWER = "timeout", "connect_error", "bad_status", "bad_answer"
# Answers above this are decoded on a thread rather than the event loop.
INLINE_DECODE_BYTES = 64 * 1024


@dataclass
class Breaker:
    """Closed until `failures` consecutive failures; then open for `cooldown_s`; then one probe
    (half-open) whose result closes or re-opens it."""

    failures: int
    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    _consecutive: int = 0
    _opened_at: float | None = None
    _probing: bool = False

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._probing or self.clock() - self._opened_at < self.cooldown_s:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._consecutive, self._opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at, self._probing = self.clock(), False

    @property
    def open(self) -> bool:
        return self._opened_at is not None


class LookupFailure(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


# A transport takes the lookup request and returns the answer (None for a miss).
Transport = Callable[[TracesData], Awaitable["Hit | None"]]


def http_transport(base_url: str, public_key: str, max_body: int) -> tuple[Transport, PostClient]:
    """`POST {base}/v1/inject` over one shared keep-alive client (no proxy from the env).

    An answer larger than a hit within `max_body` can be (base64 and attributes included) is
    refused without being read, so a huge answer is never buffered whole.
    """
    url = base_url.rstrip("/") + "/v1/inject"
    limit = 2 * max_body + 64 * 1024
    headers = {"content-type": "application/x-protobuf", "accept-encoding": "identity"}
    if public_key:
        headers["x-public-key"] = public_key
    client = PostClient(url, headers)

    async def ask(request: TracesData) -> Hit | None:
        try:
            status, payload = await client.post(request.SerializeToString(), limit)
        except OSError as e:  # the cause in the log line: refused, reset, certificate not trusted...
            raise LookupFailure(CONNECT_ERROR, f"{url}: {type(e).__name__}: {e}") from None
        except (ProtocolError, AnswerTooLarge) as e:
            raise LookupFailure(BAD_ANSWER, f"{url}: {e}") from None
        if status == 404:
            return None
        if status != 200:
            raise LookupFailure(BAD_STATUS, f"{url} answered {status}")
        if not payload:
            raise LookupFailure(BAD_ANSWER, f"{url} answered 200 with an empty body")
        try:
            if len(payload) > INLINE_DECODE_BYTES:
                return await asyncio.to_thread(decode_hit, payload, max_body)
            return decode_hit(payload, max_body)
        except BadAnswer as e:
            raise LookupFailure(BAD_ANSWER, f"{url}: {e}") from None

    return ask, client


def store_transport(lookup: Callable[[TracesData], TracesData | None], max_body: int) -> Transport:
    """The embedded store's lookup, run on a thread: SQLite must not block the event loop."""

    async def ask(request: TracesData) -> Hit | None:
        answer = await asyncio.to_thread(lookup, request)
        if answer is None:
            return None
        try:
            return hit_from_traces(answer, max_body)
        except BadAnswer as e:
            raise LookupFailure(BAD_ANSWER, f"embedded store: {e}") from None

    return ask


class Lookup:
    """Time-bounded, breaker-guarded lookups, counted by outcome."""

    def __init__(self, config: LookupConfig, transport: Transport, metrics: Metrics) -> None:
        self.timeout = config.timeout_ms / 1000
        self.transport, self.metrics = transport, metrics
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_s)
        self.losses = RateLimitedLog(log)

    async def __call__(self, request: TracesData) -> tuple[str, Hit | None]:
        """(outcome, hit). Never raises for backend trouble: the caller forwards on anything but a hit."""
        if not self.breaker.allow():
            self.metrics.lookups.labels(SKIPPED).inc()
            return SKIPPED, None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                hit = await self.transport(request)
        except (TimeoutError, LookupFailure) as e:
            outcome = e.outcome if isinstance(e, LookupFailure) else TIMEOUT
            detail = str(e) or f"no answer within {self.timeout * 1000:.0f} ms"
            self._failed(outcome, detail)
            return outcome, None
        except Exception as e:  # a bug or a hostile answer must not break the proxied request
            self._failed(BAD_ANSWER, f"{type(e).__name__}: {e}")
            return BAD_ANSWER, None
        finally:
            self.metrics.lookup_seconds.observe(time.perf_counter() - started)
        self.breaker.success()
        outcome = MISS if hit is None else HIT
        self.metrics.lookups.labels(outcome).inc()
        return outcome, hit

    def _failed(self, outcome: str, detail: str) -> None:
        was_open = self.breaker.open
        self.breaker.failure()
        self.metrics.lookups.labels(outcome).inc()
        state = " (circuit breaker open: lookups paused)" if self.breaker.open and not was_open else ""
        self.losses.warning(outcome, f"softprobe: lookup failed, forwarding upstream: {detail}{state}")

