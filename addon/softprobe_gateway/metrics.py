"""The gateway's counters and loss logging, for the proxy and its side of the export (the
admin endpoint serves them: `proxy.admin`).

Losses are never silent: every drop is counted here and logged at a bounded rate.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from softprobe_gateway.decisions.rules import REASONS

if TYPE_CHECKING:
    from mitmproxy import http

log = logging.getLogger(__name__)


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

    def config_loaded(self, source: str, digest: str) -> None:
        self.config_version.inc()
        self.config.info({"path": source, "sha256": digest})

    def config_rejected(self, message: str) -> None:
        self.config_reload_errors.inc()
        self.config_reload_error.info({"error": message[:500]})



class RateLimitedLog:
    """Logs the first event of a kind, then at most one summary line per interval."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger, self.interval = logger, interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self.interval) < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        more = f" ({suppressed} more like this since the last report)" if suppressed else ""
        self.logger.warning(f"{message}{more}")
