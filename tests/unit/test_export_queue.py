"""The export queue as plain data: where batches are cut, what stays counted, what a dead
worker's batches cost. No proxy, no process."""

from __future__ import annotations

import threading
import time

from softprobe_gateway.capture.exchange import Exchange, Message
from softprobe_gateway.config.schema import ExportConfig
from softprobe_gateway.export.queue import MAX_IN_FLIGHT, ExportQueue, wire_bytes
from softprobe_gateway.store.model import LookupRequest, MissedLookup

NEVER = threading.Event()


def exchange(n: int, body: int = 0) -> Exchange:
    return Exchange(trace_id=b"t" * 16, span_id=n.to_bytes(8, "big"), parent_span_id=b"", session_id="s",
                    service_name="svc", direction="outbound", path=f"/{n}", host="h", start_ns=n,
                    request=Message((), b"x" * body))


def paths(batch) -> list[str]:
    return [e.path for e in batch.exchanges]


def test_batches_are_cut_by_count_then_by_the_flush_interval():
    # An interval long against a loaded machine's scheduling delays, so "at once" cannot flake.
    queue = ExportQueue(ExportConfig(batch_max_spans=3, flush_interval_ms=300))
    for n in range(7):
        assert queue.submit(exchange(n))
    started = time.monotonic()
    assert paths(queue.take(0, NEVER)) == ["/0", "/1", "/2"]
    assert paths(queue.take(0, NEVER)) == ["/3", "/4", "/5"]
    assert time.monotonic() - started < 0.3           # full batches go at once
    assert paths(queue.take(0, NEVER)) == ["/6"]
    assert time.monotonic() - started >= 0.3          # a partial one waits for the interval


def test_batches_are_cut_by_estimated_bytes_and_a_big_exchange_goes_alone():
    size = exchange(0, 3000).size
    queue = ExportQueue(ExportConfig(batch_max_bytes=wire_bytes(2 * size), flush_interval_ms=10_000))
    for n in range(3):
        queue.submit(exchange(n, 3000))
    queue.submit(exchange(3, 100_000))
    # Two fill a batch by bytes: cut at once, without waiting for the 10 s interval.
    assert paths(queue.take(0, NEVER)) == ["/0", "/1"]
    assert paths(queue.take(0, NEVER)) == ["/2"]
    assert paths(queue.take(0, NEVER)) == ["/3"]


def test_bytes_stay_counted_until_acknowledged_and_the_bound_holds():
    one = exchange(0, 1000).size
    queue = ExportQueue(ExportConfig(queue_max_bytes=3 * one, queue_max_spans=100, flush_interval_ms=1))
    assert all(queue.submit(exchange(n, 1000)) for n in range(3))
    assert not queue.submit(exchange(3, 1000))        # full by bytes
    batch = queue.take(0, NEVER)
    assert queue.spans == 0 and queue.bytes == 3 * one and not queue.submit(exchange(4, 1000))
    queue.acknowledge(batch.seq)
    assert queue.bytes == 0 and queue.submit(exchange(5, 1000))


def test_put_back_keeps_order_and_abandon_names_a_dead_workers_exchanges():
    queue = ExportQueue(ExportConfig(batch_max_spans=2, flush_interval_ms=1))
    for n in range(5):
        queue.submit(exchange(n))
    queue.add_miss(MissedLookup(1, LookupRequest("s", "GET", "h", "/m", "", "")))
    first, second = queue.take(0, NEVER), queue.take(0, NEVER)
    assert [m.request.path for m in first.misses] == ["/m"] and second.misses == []
    queue.put_back(second)                           # never reached the worker: sent again, in order
    assert queue.abandon(0) == [(e.trace_id, e.span_id) for e in first.exchanges]  # in the worker when it died
    assert paths(queue.take(0, NEVER)) == ["/2", "/3"]
    assert queue.bytes == sum(exchange(n).size for n in (2, 3, 4))
    assert queue.clear() == 1 and queue.bytes == sum(exchange(n).size for n in (2, 3))  # in flight stays


def test_a_worker_has_at_most_max_in_flight_batches_and_stop_wakes_the_feeder():
    queue = ExportQueue(ExportConfig(batch_max_spans=1, flush_interval_ms=1))
    for n in range(MAX_IN_FLIGHT + 1):
        queue.submit(exchange(n))
    taken = [queue.take(0, NEVER) for _ in range(MAX_IN_FLIGHT)]
    stop, result = threading.Event(), []
    feeder = threading.Thread(target=lambda: result.append(queue.take(0, stop)))
    feeder.start()
    feeder.join(0.1)
    assert feeder.is_alive()                          # waits for room
    queue.acknowledge(taken[0].seq)
    feeder.join(2)
    assert paths(result[0]) == [f"/{MAX_IN_FLIGHT}"]
    feeder = threading.Thread(target=lambda: result.append(queue.take(0, stop)))
    feeder.start()
    stop.set()
    queue.wake()
    feeder.join(2)
    assert result[-1] is None


def test_closing_hands_out_the_rest_at_once_with_a_deadline_then_ends():
    queue = ExportQueue(ExportConfig(flush_interval_ms=60_000))
    queue.submit(exchange(0))
    queue.close(deadline=123.0)
    assert not queue.submit(exchange(1))
    batch = queue.take(0, NEVER)
    assert paths(batch) == ["/0"] and batch.deadline == 123.0
    assert queue.take(0, NEVER) is None
