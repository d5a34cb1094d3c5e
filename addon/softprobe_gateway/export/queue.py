"""The export queue: bounded, in the proxy process, and the one place batches are cut.

`submit` (from the proxy's hooks) only appends a reference, O(1), never blocking. A feeder
thread per worker `take`s batches cut by count and by estimated bytes. A batch's bytes stay
counted until the worker reports on it (`acknowledge`), so when the backend is slow or down the
queue fills and further exchanges are refused (the caller counts them): memory stays bounded by
`queue_max_spans` and `queue_max_bytes`, batches in flight included.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass

from softprobe_gateway.capture.exchange import Exchange
from softprobe_gateway.config.schema import ExportConfig
from softprobe_gateway.export.messages import MAX_IN_FLIGHT, Batch
from softprobe_gateway.store.model import MissedLookup

MAX_PENDING_MISSES = 1000  # the store keeps no more than this many anyway


def wire_bytes(size: int) -> int:
    """The estimate batches are cut by: OTLP bytes for exchanges pinning `size` bytes (bodies
    dominate; base64 makes binary ones a third larger)."""
    return size * 4 // 3


SpanKey = tuple[bytes, bytes]  # an exchange's (trace id, span id): what the embedded store keys it by


@dataclass(slots=True)
class _InFlight:
    worker: int
    spans: list[SpanKey]  # what a dead worker's loss is checked against (`abandon`)
    size: int


class ExportQueue:
    """Exchanges waiting for export, and the batches handed to workers and not yet reported."""

    def __init__(self, config: ExportConfig) -> None:
        self.config = config
        self._exchanges: deque[Exchange] = deque()
        self._misses: deque[MissedLookup] = deque(maxlen=MAX_PENDING_MISSES)
        self._queued_size = 0  # queued only; in flight: the batches' sizes
        self._pinned = 0  # queued and in flight (`bytes`), kept rather than summed at each submit
        self._in_flight: dict[int, _InFlight] = {}
        self._seq = itertools.count(1)
        self._cond = threading.Condition()
        self._deadline: float | None = None  # wall clock, once closing

    @property
    def spans(self) -> int:
        return len(self._exchanges)

    @property
    def bytes(self) -> int:
        """Bytes pinned by exchanges queued and in flight (a worker holds at most MAX_IN_FLIGHT)."""
        return self._pinned

    @property
    def closing(self) -> bool:
        return self._deadline is not None

    @property
    def deadline(self) -> float:
        """When a closing queue gives up (wall clock); infinity while open."""
        return self._deadline if self._deadline is not None else float("inf")

    def submit(self, exchange: Exchange) -> bool:
        """Queue an exchange; False when the queue is full or closing."""
        size = exchange.size
        with self._cond:
            if (self.closing or len(self._exchanges) >= self.config.queue_max_spans
                    or self._pinned + size > self.config.queue_max_bytes):
                return False
            was_full = self._full()
            self._exchanges.append(exchange)
            self._queued_size += size
            self._pinned += size
            # Wake the feeder when there is news for it, not on every exchange: while it waits
            # for room in flight, each wake-up took the GIL from the event loop for nothing
            # (7% of the event loop's samples with 1 MiB bodies).
            if len(self._exchanges) == 1 or (not was_full and self._full()):
                self._cond.notify_all()
            return True

    def _full(self) -> bool:
        return (len(self._exchanges) >= self.config.batch_max_spans
                or wire_bytes(self._queued_size) >= self.config.batch_max_bytes)

    def add_miss(self, missed: MissedLookup) -> None:
        """A lookup the embedded store did not answer, for the worker to diagnose and write."""
        with self._cond:
            self._misses.append(missed)
            if len(self._misses) == 1:
                self._cond.notify_all()

    def take(self, worker: int, stop: threading.Event) -> Batch | None:
        """The next batch for `worker`: when a full one is queued, or the flush interval after
        the first item arrived, and the worker has room in flight. None once `stop` is set, or
        once closing with nothing left."""
        interval = self.config.flush_interval_ms / 1000
        due: float | None = None
        with self._cond:
            while not stop.is_set():
                pending = bool(self._exchanges or self._misses)
                if not pending and self.closing:
                    return None
                room = sum(b.worker == worker for b in self._in_flight.values()) < MAX_IN_FLIGHT
                now = time.monotonic()
                if pending and due is None:
                    due = now + interval
                if room and pending and (self.closing or now >= due or self._full()):
                    return self._cut(worker)
                self._cond.wait(due - now if room and pending else None)
        return None

    def _cut(self, worker: int) -> Batch:
        """Up to `batch_max_spans` exchanges within `batch_max_bytes` (at least one)."""
        exchanges, size = [], 0
        queue, limit = self._exchanges, self.config.batch_max_bytes
        while (queue and len(exchanges) < self.config.batch_max_spans
               and (not exchanges or wire_bytes(size + queue[0].size) <= limit)):
            exchange = queue.popleft()
            exchanges.append(exchange)
            size += exchange.size
        self._queued_size -= size
        misses = list(self._misses)
        self._misses.clear()
        seq = next(self._seq)
        self._in_flight[seq] = _InFlight(worker, [(ex.trace_id, ex.span_id) for ex in exchanges], size)
        return Batch(seq, exchanges, misses, self._deadline)

    def put_back(self, batch: Batch) -> None:
        """A batch the worker never received goes back to the head of the queue."""
        with self._cond:
            self._in_flight.pop(batch.seq)
            self._exchanges.extendleft(reversed(batch.exchanges))
            self._queued_size += sum(exchange.size for exchange in batch.exchanges)
            for missed in batch.misses:
                self._misses.append(missed)
            self._cond.notify_all()

    def acknowledge(self, seq: int) -> None:
        """The worker reported on the batch: its bytes leave the budget."""
        with self._cond:
            if (batch := self._in_flight.pop(seq, None)) is not None:
                self._pinned -= batch.size
            self._cond.notify_all()

    def abandon(self, worker: int) -> list[SpanKey]:
        """Forget the batches a dead worker held; the exchanges they carried (it may have
        delivered some of them before it could report)."""
        with self._cond:
            held = [seq for seq, batch in self._in_flight.items() if batch.worker == worker]
            batches = [self._in_flight.pop(seq) for seq in held]
            self._pinned -= sum(batch.size for batch in batches)
            spans = [key for batch in batches for key in batch.spans]
            self._cond.notify_all()
            return spans

    def close(self, deadline: float) -> None:
        """Refuse new exchanges; what is queued is handed out at once, with `deadline`."""
        with self._cond:
            self._deadline = deadline
            self._cond.notify_all()

    def clear(self) -> int:
        """Empty the queue at the end; how many exchanges were still in it."""
        with self._cond:
            left = len(self._exchanges)
            self._exchanges.clear()
            self._misses.clear()
            self._pinned -= self._queued_size
            self._queued_size = 0
            return left

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
