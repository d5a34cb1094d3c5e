"""Agent lookup (protocol section 2): ask the backend for a recorded answer, failing open.

Every lookup is bounded by `lookup.timeout_ms` end to end, and a circuit breaker stops asking
a backend that keeps failing, so a dead or black-holed backend costs a few timeouts, not one
per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.backends.contract import BAD_ANSWER, LookupFailure, Transport
from softprobe_gateway.config.schema import LookupConfig
from softprobe_gateway.metrics import Metrics, RateLimitedLog
from softprobe_gateway.otlp import Hit

log = logging.getLogger(__name__)

# Outcomes (metric labels), with the backends' failures (`contract`). Failures trip the
# breaker; hits and misses close it.
HIT, MISS, SKIPPED, TIMEOUT = "hit", "miss", "breaker_open", "timeout"
STRICT_MISS = "strict_miss"  # the backend refused it (a control session's strict policy): no failure


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


class Lookup:
    """Time-bounded, breaker-guarded lookups, counted by outcome."""

    def __init__(self, config: LookupConfig, transport: Transport, metrics: Metrics) -> None:
        self.timeout = config.timeout_ms / 1000
        self.transport, self.metrics = transport, metrics
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_s)
        self.losses = RateLimitedLog(log, "lookup(s) failed")
        self._opened: float | None = None  # when the breaker last opened (monotonic), while open

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
        if self.breaker.open:
            self._closed()
        self.breaker.success()
        outcome = MISS if hit is None else STRICT_MISS if hit.refusal else HIT
        self.metrics.lookups.labels(outcome).inc()
        return outcome, hit

    def _failed(self, outcome: str, detail: str) -> None:
        was_open = self.breaker.open
        self.breaker.failure()
        self.metrics.lookups.labels(outcome).inc()
        self.losses.warning(outcome, f"softprobe: lookup failed, forwarding upstream: {detail}")
        if self.breaker.open and not was_open:
            self._opened = time.monotonic()
            self.metrics.lookup_breaker_open.set(1)
            log.warning(f"softprobe: lookup circuit breaker opened after {self.breaker.failures} failures "
                        f"in a row (the last: {outcome}): lookups paused, requests go upstream; one "
                        f"probe every {self.breaker.cooldown_s:g} s until one succeeds")

    def _closed(self) -> None:
        """A probe succeeded: said once, like the opening."""
        paused = time.monotonic() - self._opened if self._opened is not None else 0.0
        self._opened = None
        self.metrics.lookup_breaker_open.set(0)
        log.info(f"softprobe: lookup circuit breaker closed: the backend answered again, lookups "
                 f"resume after {paused:.1f} s paused")

