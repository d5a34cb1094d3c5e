"""The gateway's counters and loss logging, for the proxy and its side of the export (the
admin endpoint serves them: `proxy.admin`).

Losses are never silent: every drop is counted here and logged at a bounded rate.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from softprobe_gateway.decisions.rules import REASONS

if TYPE_CHECKING:
    from mitmproxy import http

log = logging.getLogger(__name__)
# Why spans were lost (`softprobe_export_dropped_spans_total{reason}`), as the stop's last line says it.
LOSS_REASONS = {
    "queue_full": "the export queue was full: the backend was slow or down for longer than it holds",
    "send_failed": "the backend refused them, or kept failing for export.max_retry_age_s",
    "shutdown": "the stop's deadline, export.shutdown_timeout_s, passed before they were exported",
    "worker_died": "the export worker process died holding them",
    "encode_failed": "they could not be encoded",
    "worker_error": "an error in the export worker",
}


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own (one per addon instance)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.seen = Counter("softprobe_exchanges_seen", "HTTP exchanges seen by the gateway.",
                            registry=r)
        self.recorded = Counter("softprobe_exchanges_recorded",
                                "Exchanges recorded (queued for export).", registry=r)
        self.skipped = Counter("softprobe_exchanges_skipped",
                               "Exchanges not recorded, by reason.", ["reason"], registry=r)
        self.truncated = Counter("softprobe_bodies_truncated",
                                 "Bodies cut at capture.max_body_bytes.", ["part"], registry=r)
        self.exported = Counter("softprobe_export_spans", "Spans accepted by the backend.",
                                registry=r)
        self.batches = Counter("softprobe_export_batches", "Export requests, by result.",
                               ["result"], registry=r)
        self.export_bytes = Counter("softprobe_export_bytes",
                                    "Bytes of OTLP payload accepted by the backend.", registry=r)
        self.retries = Counter("softprobe_export_retries", "Export attempts retried.", registry=r)
        self.dropped = Counter("softprobe_export_dropped_spans", "Spans lost, by reason.",
                               ["reason"], registry=r)
        self.queue_spans = Gauge("softprobe_export_queue_spans", "Spans waiting for export.",
                                 registry=r)
        self.queue_bytes = Gauge("softprobe_export_queue_bytes",
                                 "Bytes pinned by spans waiting for export.", registry=r)
        self.worker_up = Gauge("softprobe_export_worker_up",
                               "1 while an export worker process runs (readiness requires it).",
                               registry=r)
        self.worker_restarts = Counter("softprobe_export_worker_restarts",
                                       "Export worker processes restarted after one died.",
                                       registry=r)
        self.lookup_breaker_open = Gauge(
            "softprobe_lookup_breaker_open",
            "1 while the lookup circuit breaker is open (lookups paused, requests go upstream).",
            registry=r)
        self.lookups = Counter("softprobe_lookups", "Agent lookups, by outcome.", ["outcome"],
                               registry=r)
        self.lookup_seconds = Histogram(
            "softprobe_lookup_seconds", "Latency of agent lookups that were sent.", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.config_version = Gauge("softprobe_config_version",
                                    "Version of the config in force (1 at start, +1 per reload).",
                                    registry=r)
        self.config = Info("softprobe_config", "The config in force: file and content digest.",
                           registry=r)
        self.config_reload_errors = Counter("softprobe_config_reload_errors",
                                            "Config edits rejected as invalid.", registry=r)
        self.config_reload_error = Info("softprobe_config_reload_error",
                                        "The last rejected config edit.", registry=r)
        # Each reason's child counter, kept: `labels()` takes a lock and a lookup, once per request.
        self._skips: dict[str, Counter] = {}

    def skip(self, reason: str, request: http.Request, content_type: str | None = None) -> None:
        """Count an exchange not recorded; the first of each reason is logged, saying why."""
        counter = self._skips.get(reason)
        if counter is None:
            counter = self._skips[reason] = self.skipped.labels(reason)
            why = f"{REASONS[reason]} ({content_type})" if content_type else REASONS[reason]
            # Without the query: it may carry a token (a presigned URL for a static file).
            url = request.pretty_url.partition("?")[0]
            log.info(f"softprobe: not recording {request.method} {url}: {why}. "
                     "Exchanges skipped for this reason "
                     f"are counted in softprobe_exchanges_skipped_total{{reason=\"{reason}\"}}, "
                     "not logged again (docs/protocol.md, 'What is recorded')")
        counter.inc()

    def export_summary(self) -> str:
        """For the stop's last line: what was exported since start and every loss, by reason."""
        r = self.registry
        exported = r.get_sample_value("softprobe_export_spans_total") or 0
        lost = {sample.labels["reason"]: sample.value for metric in self.dropped.collect()
                for sample in metric.samples if sample.name.endswith("_total") and sample.value}
        line = f"export: {exported:.0f} span(s) exported since start, {sum(lost.values()):.0f} lost"
        if lost:
            line += ": " + "; ".join(f"{n:.0f} {reason} ({LOSS_REASONS.get(reason, reason)})"
                                     for reason, n in sorted(lost.items()))
        return line

    def config_loaded(self, source: str, digest: str) -> None:
        self.config_version.inc()
        self.config.info({"path": source, "sha256": digest})

    def config_rejected(self, message: str) -> None:
        self.config_reload_errors.inc()
        self.config_reload_error.info({"error": message[:500]})



class RateLimitedLog:
    """Logs the first event of a kind at once; what follows within `interval_s` is added up (the
    events and the items they carried, e.g. spans, not batches) and told in one line when the
    interval ends, and by `flush` at exit: nothing it swallows goes untold."""

    def __init__(self, logger: logging.Logger, unit: str, interval_s: float = 10.0) -> None:
        self.logger, self.unit, self.interval = logger, unit, interval_s
        self._last: dict[str, float] = {}
        self._swallowed: dict[str, _Swallowed] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, count: int = 1) -> None:
        """`message` (about `count` items of `kind`) now, or added to the interval's summary."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is None or now - last >= self.interval:
                self._last[kind] = now
            else:
                swallowed = self._swallowed.get(kind)
                if swallowed is None:
                    swallowed = self._swallowed[kind] = _Swallowed(now)
                    timer = threading.Timer(last + self.interval - now, self._tell, (kind,))
                    timer.daemon = True
                    swallowed.timer = timer
                    timer.start()
                swallowed.add(count, message)
                return
        self.logger.warning(message)

    def flush(self) -> None:
        """Tell every summary still pending (at exit)."""
        for kind in list(self._swallowed):
            self._tell(kind)

    def _tell(self, kind: str) -> None:
        with self._lock:
            swallowed = self._swallowed.pop(kind, None)
            if swallowed is None:
                return
            self._last[kind] = time.monotonic()
        if swallowed.timer is not None:
            swallowed.timer.cancel()
        last = swallowed.message.removeprefix("softprobe: ")
        self.logger.warning(f"softprobe: {swallowed.count} more {self.unit} ({kind}) in "
                            f"{swallowed.events} event(s) over {time.monotonic() - swallowed.since:.1f} s "
                            f"not logged one by one; the last: {last}")


@dataclass(slots=True)
class _Swallowed:
    """What a `RateLimitedLog` held back for one kind since `since`."""

    since: float
    events: int = 0
    count: int = 0
    message: str = ""
    timer: threading.Timer | None = None

    def add(self, count: int, message: str) -> None:
        self.events += 1
        self.count += count
        self.message = message
