"""The export worker: a process that turns exchanges into OTLP spans (decoding, redaction,
encoding), sends them to a sink and retries transient failures with backoff.

A process, not a thread: encoding holds the GIL, and every millisecond of it was a millisecond
the proxy's event loop could not run (measured: a thread cost 0.16 to 0.2 of the gateway's
throughput). It is started with `subprocess` over a socket pair rather than `multiprocessing`:
it must ignore the SIGTERM and SIGINT meant for the gateway from its first instruction (they
are blocked while it starts; multiprocessing's resource tracker unblocks them), it exits when
the gateway goes away (end of file on its socket), and no interpreter-exit hook joins it.

Inside, the main thread receives and encodes batches and sending threads deliver them and
report: the next batch is encoded while the backend answers the last one.

The proxy starts it and talks to it through `export.launch.WorkerProcess`; nothing here assumes
there is only one (the queue cuts batches for any number of feeders). It never imports the
proxy's modules (an import contract).
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.backends.contract import SendError, Sink
from softprobe_gateway.backends.select import backend_for
from softprobe_gateway.capture.encoding import Attributes, Capture
from softprobe_gateway.capture.exchange import Exchange
from softprobe_gateway.config.schema import Config, ConfigError
from softprobe_gateway.export.handoff import RingReader
from softprobe_gateway.export.messages import GATEWAY_SIGNALS, Batch, Drop, Ready, Report, Retrying, Start, StartFailed
from softprobe_gateway.otlp import add_scope_spans, fill_extract_span
from softprobe_gateway.store.model import MissedLookup
from softprobe_gateway.store.store import StoreError
from softprobe_gateway.worker.wire import Pieces, placeholders, serialize

log = logging.getLogger(__name__)
PIPELINE = 1  # batches encoded and waiting while one is sent
# The first and the longest pause between retries: the longest bounds how late a backend that
# is back gets the batches that waited for it.
RETRY_BACKOFF_S = (0.1, 5.0)


@dataclass(slots=True)
class Outgoing:
    """An encoded batch on its way to the sink, with the report that will say what became of it."""

    report: Report
    data: TracesData | Pieces | None = None  # Pieces: serialized, large bodies spliced in
    count: int = 0  # spans in `data`
    deadline: float | None = None
    misses: list[MissedLookup] = field(default_factory=list)


class Encoder:
    """One batch to one OTLP request (`encode`), sent with retries (`deliver`); reports what
    happened. Encoding touches no sink, so the next batch is encoded while one is sent."""

    def __init__(self, config: Config, sink: Sink) -> None:
        self.config, self.sink = config.export, sink
        self.capture = Capture(config.capture, config.redaction)
        self.public_key = config.public_key
        # A sink that sends serialized pieces gets large text bodies spliced in (`wire`).
        self.splice = hasattr(sink, "send_pieces")
        self.stop_deadline = math.inf  # wall clock, once `Stop` came
        self.stopping = threading.Event()  # set then: a pause between retries ends at once
        self.on_retry: Callable[[Retrying], None] = lambda retrying: None  # the gateway is told

    def encode(self, batch: Batch) -> Outgoing:
        report = Report(batch.seq)
        data, scopes, count = TracesData(), {}, 0
        splices: dict[tuple[int, int, int], dict[int, bytes]] = {}
        for exchange in batch.exchanges:
            try:
                attributes, values = placeholders(self.attributes(exchange, report))
            except Exception as e:  # one unencodable exchange must not take its batch with it
                _drop(report, "encode_failed", 1, f"an exchange could not be encoded: {e!r}")
                continue
            if exchange.service_name not in scopes:
                scopes[exchange.service_name] = (len(data.resource_spans), add_scope_spans(
                    data, exchange.service_name, self.public_key))
            resource, scope = scopes[exchange.service_name]
            if values:
                splices[(resource, 0, len(scope.spans))] = values
            fill_extract_span(scope.spans.add(), exchange, attributes)
            count += 1
        payload = serialize(data, splices) if splices else data
        return Outgoing(report, payload, count, batch.deadline, batch.misses)

    def deliver(self, outgoing: Outgoing) -> Report:
        """Write the misses (a diagnostic, never at the cost of the batch) and send the spans."""
        if outgoing.misses:
            try:
                self.sink.explain_misses(outgoing.misses)
            except StoreError as e:
                log.warning("softprobe: misses not written: %s", e)
        if outgoing.count:
            self.send(outgoing.data, outgoing.count, outgoing.deadline, outgoing.report)
        return outgoing.report

    def settle(self) -> None:
        """Work left after the batch was reported (the store's checkpoint), so a worker that dies
        in it loses nothing that was counted as lost."""
        try:
            self.sink.settle()
        except StoreError as e:  # the next commit still works: SQLite keeps the WAL
            log.warning("softprobe: %s", e)

    def attributes(self, ex: Exchange, report: Report) -> Attributes:
        attributes = self.capture.exchange_attributes(ex, text_as_bytes=self.splice)
        for key, value in attributes:
            if value is True and key == "http.request.body.truncated":
                report.truncated_requests += 1
            elif value is True and key == "http.response.body.truncated":
                report.truncated_responses += 1
        return attributes

    def send(self, data: TracesData | Pieces, count: int, deadline: float | None, report: Report) -> None:
        """Send, retrying what may succeed later until the batch is `max_retry_age_s` old or the
        stop's deadline (the batch's, or the one `Stop` brought) passes: while the backend is
        down, batches wait here and newer exchanges in the proxy's bounded queue."""
        first = time.monotonic()
        for attempt in itertools.count():
            stop = min(deadline or math.inf, self.stop_deadline)
            if time.time() >= stop:  # a send started now would outlast the stop: counted here, exactly
                report.failed = True
                _drop(report, "shutdown", count, "export did not finish before the stop's deadline")
                return
            try:
                report.sent_bytes = (self.sink.send(data) if isinstance(data, TracesData)
                                     else self.sink.send_pieces(data.parts, data.size))
                report.exported = count
                return
            except SendError as e:
                pause = retry_pause(e.retry_after, attempt, time.monotonic() - first,
                                    self.config.max_retry_age_s, stop - time.time(), random.random())
                if pause is None:
                    report.failed = True
                    if time.time() >= stop:
                        _drop(report, "shutdown", count, f"export did not finish before the stop's deadline: {e}")
                    elif e.retry_after is None:
                        _drop(report, "send_failed", count, f"export failed: {e}")
                    else:
                        _drop(report, "send_failed", count, f"export failed for {time.monotonic() - first:.0f} s "
                              f"(export.max_retry_age_s): {e}")
                    return
                if not report.retries:
                    self.on_retry(Retrying(str(e)))
                report.retries += 1
                self.stopping.wait(pause)

    def stop(self, deadline: float) -> None:
        """The gateway is stopping: retries end at `deadline` (wall clock)."""
        self.stop_deadline = deadline
        self.stopping.set()


def retry_pause(retry_after: float | None, attempt: int, age_s: float, max_age_s: float,
                left_s: float, jitter: float) -> float | None:
    """Seconds to wait before retrying a failed send, or None to give the batch up: not worth
    retrying (`retry_after` None), `max_age_s` old, or no time left before the stop (`left_s`).
    The backoff doubles from RETRY_BACKOFF_S[0] to RETRY_BACKOFF_S[1], each pause drawn between
    half and all of it (`jitter` in [0, 1)), so gateways that lost the backend together do not
    come back in step; a `Retry-After` is a floor."""
    if retry_after is None or age_s >= max_age_s or left_s <= 0:
        return None
    backoff = min(RETRY_BACKOFF_S[0] * 2 ** min(attempt, 32), RETRY_BACKOFF_S[1])
    return min(max(retry_after, backoff * (1 + jitter) / 2), max_age_s - age_s, left_s)


def _drop(report: Report, reason: str, count: int, message: str) -> None:
    report.drops.append(Drop(reason, count, message))


def main(fd: int) -> None:
    """The worker process: open the sink, then encode and send each batch it is handed, until
    `Stop` or until the gateway is gone."""
    for signum in GATEWAY_SIGNALS:  # the gateway decides when its worker stops
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GATEWAY_SIGNALS)
    threading.current_thread().name = "softprobe-export"  # how profiles (bench/profile.py) find it
    conn = Connection(fd)
    start: Start = conn.recv()
    try:
        encoder = Encoder(start.config, backend_for(start.config).sink())
    except ConfigError as e:
        conn.send(StartFailed(str(e)))
        return
    reader = RingReader(start.ring)
    conn.send(Ready())
    outbox: queue.Queue[Outgoing | None] = queue.Queue(PIPELINE)
    reporter = _Reporter(conn)
    encoder.on_retry = reporter.send
    senders = [threading.Thread(target=_deliver_all, args=(encoder, outbox, reporter),
                                name="softprobe-export-send", daemon=True)
               for _ in range(encoder.sink.concurrency)]
    for sender in senders:
        sender.start()
    try:
        while isinstance(message := conn.recv(), Batch):
            try:
                reader.unpack(message)
                outgoing = encoder.encode(message)
            except Exception as e:  # never let the worker die: the batch is lost, counted
                outgoing = Outgoing(Report(message.seq, failed=True, drops=[Drop(
                    "worker_error", len(message.exchanges), f"export worker error: {e!r}")]))
            outbox.put(outgoing)
        encoder.stop(message.deadline)
    except (EOFError, OSError):  # the gateway is gone (killed): what is encoded is still sent,
        encoder.stop(time.time() + start.config.export.shutdown_timeout_s)  # nobody counts it
    finally:
        for sender in senders:
            outbox.put(None)
        for sender in senders:
            sender.join()
        encoder.sink.close()


class _Reporter:
    """Reports from the sending threads, one at a time on the socket, until the gateway is gone."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.lock, self.gone = conn, threading.Lock(), False

    def send(self, report: Report | Retrying) -> None:
        with self.lock:
            if not self.gone:
                try:
                    self.conn.send(report)
                except OSError:
                    self.gone = True


def _deliver_all(encoder: Encoder, outbox: queue.Queue[Outgoing | None], reporter: _Reporter) -> None:
    """A sending thread: deliver encoded batches and report on each. It waits on the backend
    with the GIL released, while the main thread encodes the next batch (with 1 MiB bodies on a
    busy machine the backend's answer took longer than the encoding); the sink says how many
    may be on their way at once (`Sink.concurrency`), so reports may come out of order."""
    while (outgoing := outbox.get()) is not None:
        try:
            report = encoder.deliver(outgoing)
        except Exception as e:  # never let the worker die: the batch is lost, counted
            report = outgoing.report
            report.failed = True
            _drop(report, "worker_error", outgoing.count, f"export worker error: {e!r}")
        reporter.send(report)
        encoder.settle()
