"""The proxy side of the export: the queue, the threads that feed a worker process and apply
its reports, and the supervision that restarts the worker when it dies."""

from __future__ import annotations

import logging
import threading
import time

from softprobe_gateway.backends.contract import Backend
from softprobe_gateway.capture.exchange import Exchange
from softprobe_gateway.config.schema import Config, ConfigError
from softprobe_gateway.export.launch import WorkerProcess
from softprobe_gateway.export.messages import Report, Retrying, Stop
from softprobe_gateway.export.queue import ExportQueue
from softprobe_gateway.metrics import Metrics, RateLimitedLog
from softprobe_gateway.store.model import MissedLookup

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = (0.1, 10.0)  # first and longest pause before a restart
HEALTHY_AFTER_S = 10.0  # a worker that ran this long restarts after the shortest pause
WORKER = 0  # the queue's name for this exporter's one worker


class Exporter:
    """Exchanges in, OTLP out of a supervised worker process; every loss counted."""

    def __init__(self, config: Config, metrics: Metrics, backend: Backend) -> None:
        self.backend = backend  # asked what a dead worker delivered
        self.config, self.metrics = config, metrics
        self.losses = RateLimitedLog(log, "span(s) dropped")
        self.queue = ExportQueue(config.export)
        self._stopping = threading.Event()
        self._failing_since: float | None = None  # monotonic, while sends fail and are retried
        self._worker: WorkerProcess | None = _start_worker(config)  # ConfigError: not started
        self._supervisor = threading.Thread(target=self._supervise, name="softprobe-export-supervisor",
                                            daemon=True)
        self._supervisor.start()

    @property
    def running(self) -> bool:
        """Whether a worker process is up (readiness)."""
        return self._worker is not None

    def publish(self) -> None:
        """Show this exporter's queue and worker in the gauges: called when its runtime becomes
        the current one, not when it is built (a runtime rejected after that never shows)."""
        self.metrics.queue_spans.set_function(lambda: self.queue.spans)
        self.metrics.queue_bytes.set_function(lambda: self.queue.bytes)
        self.metrics.worker_up.set_function(lambda: int(self.running))

    def submit(self, exchange: Exchange) -> bool:
        """Queue an exchange for export (never blocks); drop and count it when the queue is full
        or closed."""
        if self.queue.submit(exchange):
            return True
        if self.queue.closing:  # a flow that ended after the stop began: not the backend's fault
            self._drop("shutdown", 1, "an exchange ended after the export was closed")
        else:
            self._drop("queue_full", 1, "export queue full (backend slow or down?)")
        return False

    def record_miss(self, missed: MissedLookup) -> None:
        """Hand a miss of the embedded store to the worker, which diagnoses and writes it."""
        self.queue.add_miss(missed)

    def close(self) -> None:
        """Flush what is queued within `shutdown_timeout_s`, then stop; what is left is counted.
        The worker starts no send after that deadline and counts what it gave up; a send started
        before it may take `timeout_s` more, and is waited for, so that its report counts it."""
        timeout = self.config.export.shutdown_timeout_s
        self.queue.close(time.time() + timeout)
        self._stopping.set()
        self._supervisor.join(timeout + self.config.export.timeout_s + 1)
        if self._supervisor.is_alive() and (worker := self._worker) is not None:
            worker.kill()  # stuck past the deadline: what it held is counted as a shutdown loss
            self._supervisor.join(5)
        if left := self.queue.clear():
            self._drop("shutdown", left, "export did not finish before shutdown")
        self.losses.flush()

    # -- supervision ---------------------------------------------------------------------

    def _supervise(self) -> None:
        """Serve the worker until it exits; restart it with backoff if it died."""
        pause = RESTART_BACKOFF_S[0]
        while True:
            started = time.monotonic()
            status = self._serve(self._worker)
            self._worker = None
            lost = self.backend.missing(self.queue.abandon(WORKER))
            if time.monotonic() - started > HEALTHY_AFTER_S:
                pause = RESTART_BACKOFF_S[0]
            if self._stopping.is_set():
                if status == "stopped":
                    return
                self._drop("shutdown", lost, f"the export worker process ended at shutdown ({status})")
            else:
                self._drop("worker_died", lost, f"the export worker process died ({status})")
                log.error(f"softprobe: the export worker process died ({status}); "
                          f"{lost} exchange(s) in it lost; restarting in {pause:.1f} s")
            self._worker = self._restart(pause)
            if self._worker is None:
                return
            pause = min(pause * 2, RESTART_BACKOFF_S[1])

    def _restart(self, pause: float) -> WorkerProcess | None:
        """A new worker after `pause` (at once when stopping, to flush); None when stopping and
        no worker could be started."""
        while True:
            if not self._stopping.is_set():
                self._stopping.wait(pause)
            if self.queue.closing and (not self.queue.spans or time.time() >= self.queue.deadline):
                return None
            try:
                worker = _start_worker(self.config)
            except ConfigError as e:
                log.error(f"softprobe: the export worker process could not be restarted: {e}")
                if self._stopping.is_set():
                    return None
                pause = min(pause * 2, RESTART_BACKOFF_S[1])
                continue
            self.metrics.worker_restarts.inc()
            log.info("softprobe: the export worker process is running again")
            return worker

    def _serve(self, worker: WorkerProcess) -> str:
        """Feed the worker from a thread and apply its reports here until it exits; 'stopped'
        when it exited after `Stop`, else how it died."""
        gone, stopped = threading.Event(), threading.Event()
        feeder = threading.Thread(target=self._feed, args=(worker, gone, stopped),
                                  name="softprobe-export-feed", daemon=True)
        feeder.start()
        try:
            while True:
                report = worker.receive()
                if isinstance(report, Retrying):
                    self._failing(report.error)
                    continue
                self.queue.acknowledge(report.seq)
                self._apply(report)
        except (EOFError, OSError):
            pass
        gone.set()
        self.queue.wake()
        feeder.join()
        status = worker.close()
        return "stopped" if status == "exit code 0" and stopped.is_set() else status

    def _feed(self, worker: WorkerProcess, gone: threading.Event, stopped: threading.Event) -> None:
        """Hand batches to the worker until closing leaves none, then `Stop` it."""
        while (batch := self.queue.take(WORKER, gone)) is not None:
            try:
                worker.send(batch)
            except OSError:  # it died before reading the whole batch: nothing of it was sent
                self.queue.put_back(batch)
                return
        if not gone.is_set():
            try:
                worker.send(Stop(self.queue.deadline))
                stopped.set()
            except OSError:
                pass

    def _failing(self, error: str) -> None:
        """Said once when the backend starts failing, and once when it takes batches again."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            c = self.config.export
            log.warning(f"softprobe: export failing, retrying for up to export.max_retry_age_s "
                        f"({c.max_retry_age_s:g} s) while the queue holds new exchanges (up to "
                        f"{c.queue_max_spans} spans, {c.queue_max_bytes // 2**20} MiB): {error}")

    def _apply(self, report: Report) -> None:
        if report.exported and self._failing_since is not None:
            log.info(f"softprobe: export recovered: the backend took batches again after "
                     f"{time.monotonic() - self._failing_since:.1f} s")
            self._failing_since = None
        m = self.metrics
        m.exported.inc(report.exported)
        m.export_bytes.inc(report.sent_bytes)
        m.retries.inc(report.retries)
        if report.exported or report.failed:
            m.batches.labels("failed" if report.failed else "ok").inc()
        m.truncated.labels("request").inc(report.truncated_requests)
        m.truncated.labels("response").inc(report.truncated_responses)
        for drop in report.drops:
            self._drop(drop.reason, drop.count, drop.message)

    def _drop(self, reason: str, count: int, message: str) -> None:
        if count:
            self.metrics.dropped.labels(reason).inc(count)
            self.losses.warning(reason, f"softprobe: dropped {count} span(s): {message}", count)


def _start_worker(config: Config) -> WorkerProcess:
    """A running worker; ConfigError (one line) when its sink cannot be opened, or when the
    process itself cannot be (no memory, no processes left): at start-up that is one line, not
    a traceback, and the supervisor keeps retrying rather than its thread dying."""
    try:
        return WorkerProcess(config)
    except OSError as e:
        raise ConfigError(f"the export worker process could not be started: {e}") from None
