"""Asynchronous export: a bounded queue in front of a worker thread that encodes and sends.

The proxy's hook only appends a reference to the queue (`submit`, O(1), never blocks). The
worker turns exchanges into spans, cuts batches by count and bytes, and sends them to a sink
(HTTP backend, JSON-lines file, or the embedded store), retrying transient failures with
backoff. When the backend is slow or down the queue fills, and further exchanges are dropped
and counted, so memory stays bounded by `queue_max_spans` and `queue_max_bytes`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

import httpx
from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData

from .capture import Capture, Exchange
from .config import ExportConfig
from .metrics import Metrics, RateLimitedLog
from .otlp import extract_span, traces_data

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class SendError(Exception):
    """A batch was not accepted. `retry_after` is set when trying again may succeed."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sink(Protocol):
    """Where batches go. `send` blocks (it runs on the worker thread) and raises SendError."""

    def send(self, batch: TracesData) -> int: ...

    def close(self) -> None: ...


class HttpSink:
    """`POST {base}/v1/traces` as OTLP protobuf, with the public key header."""

    def __init__(self, base_url: str, public_key: str, timeout_s: float) -> None:
        self.url = base_url.rstrip("/") + "/v1/traces"
        headers = {"content-type": "application/x-protobuf"}
        if public_key:
            headers["x-public-key"] = public_key
        # trust_env=False: the gateway's own export must never loop through a proxy (itself).
        self.client = httpx.Client(headers=headers, timeout=timeout_s, trust_env=False)

    def send(self, batch: TracesData) -> int:
        payload = batch.SerializeToString()
        try:
            response = self.client.post(self.url, content=payload)
        except httpx.HTTPError as e:
            raise SendError(f"{type(e).__name__} posting to {self.url}", retry_after=0.0) from None
        if response.is_success:
            return len(payload)
        retry = _retry_after(response) if response.status_code in RETRY_STATUSES else None
        raise SendError(f"{self.url} answered {response.status_code}", retry_after=retry)

    def close(self) -> None:
        self.client.close()


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(float(value), MAX_BACKOFF_S)
    except ValueError:
        pass
    try:
        return min(max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), MAX_BACKOFF_S)
    except (TypeError, ValueError):
        return 0.0


class FileSink:
    """Appends each batch as one line of OTLP JSON: useful with no backend at all."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")

    def send(self, batch: TracesData) -> int:
        line = MessageToJson(batch, indent=None) + "\n"
        try:
            self.file.write(line)
            self.file.flush()
        except OSError as e:
            raise SendError(f"cannot write {self.path}: {e.strerror}") from None
        return len(line)

    def close(self) -> None:
        self.file.close()


class Exporter:
    """The bounded queue and its worker thread."""

    def __init__(self, config: ExportConfig, capture: Capture, sink: Sink, public_key: str,
                 metrics: Metrics) -> None:
        self.config, self.capture, self.sink = config, capture, sink
        self.public_key, self.metrics = public_key, metrics
        self.losses = RateLimitedLog(log)
        self._queue: deque[Exchange] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        metrics.queue_spans.set_function(lambda: len(self._queue))
        metrics.queue_bytes.set_function(lambda: self._queued_bytes)
        self._worker = threading.Thread(target=self._run, name="softprobe-export", daemon=True)
        self._worker.start()

    # -- proxy side --------------------------------------------------------------------------

    def submit(self, exchange: Exchange) -> bool:
        """Queue an exchange for export; drop and count it when the queue is full."""
        size = exchange.size
        with self._cond:
            full = (len(self._queue) >= self.config.queue_max_spans
                    or self._queued_bytes + size > self.config.queue_max_bytes)
            if not full and not self._closing:
                self._queue.append(exchange)
                self._queued_bytes += size
                if len(self._queue) >= self.config.batch_max_spans:
                    self._cond.notify()
                return True
        self._drop("queue_full", 1, "export queue full (backend slow or down?)")
        return False

    def close(self) -> None:
        """Flush what is queued within `shutdown_timeout_s`, then stop; what is left is counted."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join(self.config.shutdown_timeout_s)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if left:
            self._drop("shutdown", left, "export did not finish before shutdown")
        if not self._worker.is_alive():
            self.sink.close()

    # -- worker side -------------------------------------------------------------------------

    def _run(self) -> None:
        deadline = None
        while True:
            batch = self._take()
            if batch is None:
                return
            if deadline is None and self._closing:
                deadline = time.monotonic() + self.config.shutdown_timeout_s
            try:
                self._export(batch, deadline)
            except Exception:  # never let the worker die: that would silently stop all export
                log.exception("softprobe export worker error")
                self._drop("worker_error", len(batch), "export worker error")

    def _take(self) -> list[Exchange] | None:
        """Wait for a full batch or the flush interval; None once closing with nothing left."""
        interval = self.config.flush_interval_ms / 1000
        with self._cond:
            if len(self._queue) < self.config.batch_max_spans and not self._closing:
                self._cond.wait(interval)
            if not self._queue:
                return None if self._closing else []
            batch, size = [], 0
            while self._queue and len(batch) < self.config.batch_max_spans:
                exchange = self._queue.popleft()
                size += exchange.size
                batch.append(exchange)
            self._queued_bytes -= size
            return batch

    def _export(self, exchanges: list[Exchange], deadline: float | None) -> None:
        """Encode, cut into batches bounded by bytes, and send each."""
        groups: dict[str, list[Span]] = {}
        size = 0
        for exchange in exchanges:
            try:
                span = self.span(exchange)
            except Exception:  # one unencodable exchange must not take its batch with it
                log.exception("softprobe: cannot encode an exchange")
                self._drop("encode_failed", 1, "an exchange could not be encoded")
                continue
            span_size = span.ByteSize()
            if groups and size + span_size > self.config.batch_max_bytes:
                self._send(groups, deadline)
                groups, size = {}, 0
            groups.setdefault(exchange.service_name, []).append(span)
            size += span_size
        if groups:
            self._send(groups, deadline)

    def span(self, ex: Exchange) -> Span:
        attributes = self.capture.exchange_attributes(ex)
        for key, value in attributes:
            if value is True and key.endswith(".body.truncated"):
                self.metrics.truncated.labels(key.split(".")[1]).inc()
        return extract_span(ex, attributes)

    def _send(self, groups: dict[str, list[Span]], deadline: float | None) -> None:
        batch = traces_data(groups.items(), self.public_key)
        count = sum(len(spans) for spans in groups.values())
        for attempt in range(self.config.max_retries + 1):
            try:
                sent = self.sink.send(batch)
            except SendError as e:
                retry = e.retry_after
                out_of_time = deadline is not None and time.monotonic() >= deadline
                if retry is None or attempt == self.config.max_retries or out_of_time:
                    self.metrics.batches.labels("failed").inc()
                    self._drop("send_failed", count, f"export failed: {e}")
                    return
                self.metrics.retries.inc()
                pause = max(retry, min(0.1 * 2 ** attempt, MAX_BACKOFF_S))
                if deadline is not None:
                    pause = min(pause, max(deadline - time.monotonic(), 0.0))
                time.sleep(pause)
                continue
            self.metrics.batches.labels("ok").inc()
            self.metrics.exported.inc(count)
            self.metrics.export_bytes.inc(sent)
            return

    def _drop(self, reason: str, count: int, message: str) -> None:
        self.metrics.dropped.labels(reason).inc(count)
        self.losses.warning(reason, f"softprobe: dropped {count} span(s): {message}")
