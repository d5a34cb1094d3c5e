"""Asynchronous export: a bounded queue in the proxy process, encoding and sending in another.

The proxy's hook only appends a reference to the queue (`submit`, O(1), never blocks). A feeder
thread hands batches (cut by count and bytes) to a worker PROCESS, which turns exchanges into
spans (decoding, redaction, OTLP encoding), sends them to a sink (HTTP backend, JSON-lines file,
or the embedded store) and retries transient failures with backoff. A process, not a thread:
encoding holds the GIL, and every millisecond of it was a millisecond the proxy's event loop
could not run (measured: a thread cost 0.16 to 0.2 of the gateway's throughput).

One batch is in the worker at a time and its bytes stay counted until it is acknowledged, so
when the backend is slow or down the queue fills, further exchanges are dropped and counted,
and memory stays bounded by `queue_max_spans` and `queue_max_bytes` (plus one batch).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections import Counter, deque
from email.utils import parsedate_to_datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

import httpx
from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from .backend.store import Store, StoreError
from .capture import Attributes, Capture, Exchange
from .config import Config, ConfigError
from .metrics import Metrics, RateLimitedLog
from .otlp import add_scope_spans, fill_extract_span
from .tls import client_context

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
        self.client = httpx.Client(headers=headers, timeout=timeout_s, trust_env=False, verify=client_context())

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


class StoreSink:
    """The embedded backend: batches go straight into the SQLite store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def send(self, batch: TracesData) -> int:
        try:
            self.store.ingest(batch)
        except StoreError as e:
            raise SendError(str(e)) from None
        return batch.ByteSize()

    def close(self) -> None:
        self.store.close()


def open_sink(config: Config) -> Sink:
    """The sink for `sp_backend_url`; ConfigError when it cannot be opened."""
    kind = config.backend_kind
    if kind == "http":
        return HttpSink(config.sp_backend_url, config.public_key, config.export.timeout_s)
    if kind == "file":
        try:
            return FileSink(config.local_path)
        except OSError as e:
            raise ConfigError(f"key 'sp_backend_url': cannot open {config.local_path}: {e.strerror}") from None
    try:
        return StoreSink(Store(config.store_config))
    except StoreError as e:
        raise ConfigError(f"key 'store.path': {e}") from None


# -- the worker process ----------------------------------------------------------------------


class Encoder:
    """Exchanges to OTLP batches bounded by bytes, sent with retries; counts what happened."""

    def __init__(self, config: Config, sink: Sink) -> None:
        self.config, self.sink = config.export, sink
        self.capture = Capture(config.capture, config.redaction)
        self.public_key = config.public_key
        self.stats: Counter[str] = Counter()
        self.drops: dict[str, str] = {}  # reason -> last message

    def export(self, exchanges: list[Exchange], deadline: float | None) -> None:
        """Encode into batches cut before `batch_max_bytes` (estimated from the bodies, base64
        included), and send each."""
        data, scopes, size, count = TracesData(), {}, 0, 0
        for exchange in exchanges:
            estimate = exchange.size * 4 // 3
            if count and size + estimate > self.config.batch_max_bytes:
                self.send(data, count, deadline)
                data, scopes, size, count = TracesData(), {}, 0, 0
            try:
                attributes = self.attributes(exchange)
            except Exception as e:  # one unencodable exchange must not take its batch with it
                self.drop("encode_failed", 1, f"an exchange could not be encoded: {e!r}")
                continue
            scope = scopes.get(exchange.service_name)
            if scope is None:
                scope = scopes[exchange.service_name] = add_scope_spans(
                    data, exchange.service_name, self.public_key)
            fill_extract_span(scope.spans.add(), exchange, attributes)
            size += estimate
            count += 1
        if count:
            self.send(data, count, deadline)

    def attributes(self, ex: Exchange) -> Attributes:
        attributes = self.capture.exchange_attributes(ex)
        for key, value in attributes:
            if value is True and key.endswith(".body.truncated"):
                self.stats[f"truncated.{key.split('.')[1]}"] += 1
        return attributes

    def send(self, batch: TracesData, count: int, deadline: float | None) -> None:
        for attempt in range(self.config.max_retries + 1):
            try:
                sent = self.sink.send(batch)
            except SendError as e:
                retry = e.retry_after
                out_of_time = deadline is not None and time.monotonic() >= deadline
                if retry is None or attempt == self.config.max_retries or out_of_time:
                    self.stats["batches.failed"] += 1
                    self.drop("send_failed", count, f"export failed: {e}")
                    return
                self.stats["retries"] += 1
                pause = max(retry, min(0.1 * 2 ** attempt, MAX_BACKOFF_S))
                if deadline is not None:
                    pause = min(pause, max(deadline - time.monotonic(), 0.0))
                time.sleep(pause)
                continue
            self.stats["batches.ok"] += 1
            self.stats["exported"] += count
            self.stats["bytes"] += sent
            return

    def drop(self, reason: str, count: int, message: str) -> None:
        self.stats[f"dropped.{reason}"] += count
        self.drops[reason] = message

    def report(self) -> tuple[dict[str, int], dict[str, str]]:
        """What happened since the last report."""
        report = dict(self.stats), self.drops
        self.stats, self.drops = Counter(), {}
        return report


def _worker(conn: Connection, config: Config) -> None:
    """The worker process: open the sink, then encode and send each batch it is handed."""
    # Ctrl-C reaches the whole process group: the proxy process decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        encoder = Encoder(config, open_sink(config))
    except ConfigError as e:
        conn.send(("error", str(e)))
        return
    conn.send(("ready", None))
    deadline = None
    while (message := conn.recv()) is not None:
        exchanges, closing = message
        if closing and deadline is None:
            deadline = time.monotonic() + config.export.shutdown_timeout_s
        try:
            encoder.export(exchanges, deadline)
        except Exception as e:  # never let the worker die: that would silently stop all export
            encoder.drop("worker_error", len(exchanges), f"export worker error: {e!r}")
        conn.send(("done", encoder.report()))
    encoder.sink.close()


# -- the proxy side --------------------------------------------------------------------------

MAX_IN_FLIGHT = 4  # batches handed to the worker and not yet acknowledged


class Exporter:
    """The bounded queue, the threads that feed the worker process and read its reports."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config, self.metrics = config.export, metrics
        self.losses = RateLimitedLog(log)
        self._queue: deque[Exchange] = deque()
        self._queued_bytes = 0  # queued and in the worker, until acknowledged
        self._in_flight: deque[int] = deque()  # sizes of the batches handed over, oldest first
        self._cond = threading.Condition()
        self._closing = False
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker, args=(child, config),
                                        name="softprobe-export", daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(60):
            self._process.kill()
            raise ConfigError("the export worker process did not start within 60 s")
        kind, error = self._conn.recv()
        if kind == "error":
            self._process.join(5)
            raise ConfigError(error)
        metrics.queue_spans.set_function(lambda: len(self._queue))
        metrics.queue_bytes.set_function(lambda: self._queued_bytes)
        self._threads = [threading.Thread(target=target, name=name, daemon=True) for target, name in
                         ((self._feed, "softprobe-export-feed"), (self._acknowledge, "softprobe-export-ack"))]
        for thread in self._threads:
            thread.start()

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
                    self._cond.notify_all()
                return True
        self._drop("queue_full", 1, "export queue full (backend slow or down?)")
        return False

    def close(self) -> None:
        """Flush what is queued within `shutdown_timeout_s`, then stop; what is left is counted."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + self.config.shutdown_timeout_s + 1
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if left:
            self._drop("shutdown", left, "export did not finish before shutdown")
        self._process.join(1)
        if self._process.is_alive():
            self._process.kill()

    def _feed(self) -> None:
        """Hand batches to the worker, up to MAX_IN_FLIGHT unacknowledged, so it never idles
        waiting for the next one; then tell it to finish."""
        try:
            while (batch := self._take()) is not None:
                if batch:
                    self._conn.send((batch, self._closing))
            self._conn.send(None)
        except OSError:
            pass  # the worker is gone: _acknowledge reports it

    def _acknowledge(self) -> None:
        """Apply the worker's reports; a batch's bytes leave the queue's budget only here."""
        try:
            while True:
                _, (stats, drops) = self._conn.recv()
                with self._cond:
                    self._queued_bytes -= self._in_flight.popleft()
                    self._cond.notify_all()
                self._apply(stats, drops)
        except (EOFError, OSError):
            if not self._closing:
                log.error("softprobe: the export worker process died; exchanges are no longer exported")

    def _take(self) -> list[Exchange] | None:
        """Wait for a full batch or the flush interval (and for room in flight); None once
        closing with nothing left."""
        interval = self.config.flush_interval_ms / 1000
        with self._cond:
            if len(self._queue) < self.config.batch_max_spans and not self._closing:
                self._cond.wait(interval)
            while len(self._in_flight) >= MAX_IN_FLIGHT:
                self._cond.wait()
            if not self._queue:
                return None if self._closing else []
            batch, size = [], 0
            while (self._queue and len(batch) < self.config.batch_max_spans
                   and (not batch or size + self._queue[0].size <= self.config.batch_max_bytes)):
                exchange = self._queue.popleft()
                size += exchange.size
                batch.append(exchange)
            self._in_flight.append(size)
            return batch

    def _apply(self, stats: dict[str, int], drops: dict[str, str]) -> None:
        m = self.metrics
        m.exported.inc(stats.get("exported", 0))
        m.export_bytes.inc(stats.get("bytes", 0))
        m.retries.inc(stats.get("retries", 0))
        for result in ("ok", "failed"):
            m.batches.labels(result).inc(stats.get(f"batches.{result}", 0))
        for part in ("request", "response"):
            m.truncated.labels(part).inc(stats.get(f"truncated.{part}", 0))
        for reason, message in drops.items():
            self._drop(reason, stats[f"dropped.{reason}"], message)

    def _drop(self, reason: str, count: int, message: str) -> None:
        self.metrics.dropped.labels(reason).inc(count)
        self.losses.warning(reason, f"softprobe: dropped {count} span(s): {message}")
