"""Large bodies reach the export worker through the shared ring: its arithmetic as plain data,
then a real worker process writing what it was handed to a file sink."""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle

from softprobe_gateway.capture.exchange import Exchange, Message
from softprobe_gateway.config.schema import Config, ExportConfig
from softprobe_gateway.export.handoff import MIN_SHARED_BYTES, BodyRing, RingReader, ring_size
from softprobe_gateway.export.launch import WorkerProcess
from softprobe_gateway.export.messages import Batch

BIG = MIN_SHARED_BYTES


def exchange(n: int, request: bytes | None, response: bytes | None = None) -> Exchange:
    return Exchange(trace_id=b"t" * 16, span_id=n.to_bytes(8, "big"), parent_span_id=b"", session_id="s",
                    service_name="svc", direction="outbound", path=f"/{n}", host="h", start_ns=n,
                    request=Message((), request), end_ns=n + 1, status_code=200,
                    response=None if response is None else Message(
                        ((b"content-type", b"application/octet-stream"),), response))


def test_an_exchange_crosses_the_pipe_whole() -> None:
    """Pickled as a constructor call (`exchange.pickled_as_constructed`): every field, none left
    at its default, comes back in its place."""
    sent = dataclasses.replace(
        exchange(7, b"req", b"resp"), parent_span_id=b"p" * 8, error="reset", answered_by="hit",
        events=[(1, "websocket.message", [("websocket.size", 3)])], events_dropped=2,
        response=Message(((b"a", b"b"),), b"resp", ((":status", "200"),), 99, ((b"grpc-status", b"0"),)))
    assert pickle.loads(pickle.dumps(sent, pickle.HIGHEST_PROTOCOL)) == sent
    assert {f.name for f in dataclasses.fields(sent) if getattr(sent, f.name) == (
        f.default if f.default_factory is dataclasses.MISSING else f.default_factory())} == set()


def test_large_bodies_travel_in_the_ring_and_come_back_whole_small_ones_stay_inline():
    ring = BodyRing(4 * BIG)
    original = [exchange(0, b"a" * BIG, b"b" * (BIG + 7)), exchange(1, b"small", None)]
    packed = ring.pack(Batch(1, original))
    assert [(s.exchange, s.side, s.length) for s in packed.shared] == [(0, "request", BIG), (0, "response", BIG + 7)]
    assert packed.exchanges[0].request.body is None and packed.exchanges[0].response.body is None
    assert packed.exchanges[1] is original[1]
    assert original[0].request.body == b"a" * BIG  # what the queue may put back is untouched
    RingReader(ring.spec).unpack(packed)
    assert packed.exchanges[0].request.body == b"a" * BIG
    assert packed.exchanges[0].response.body == b"b" * (BIG + 7) and packed.shared == []


def test_the_ring_is_a_fifo_that_wraps_and_falls_back_to_the_socket_when_full():
    ring = BodyRing(3 * BIG)
    first = ring.pack(Batch(1, [exchange(0, b"1" * BIG)]))
    second = ring.pack(Batch(2, [exchange(1, b"2" * BIG)]))
    assert [b.shared[0].offset for b in (first, second)] == [0, BIG]
    no_room = Batch(3, [exchange(2, b"3" * (2 * BIG))])
    assert ring.pack(no_room) is no_room                # no room: sent inline, nothing lost
    ring.release(1)
    wrapped = ring.pack(Batch(4, [exchange(3, b"4" * BIG)]))
    assert wrapped.shared[0].offset == 2 * BIG          # the end first
    ring.release(2)
    assert ring.pack(Batch(5, [exchange(4, b"5" * BIG)])).shared[0].offset == 0  # then the start
    assert ring.pack(Batch(6, [exchange(5, b"6" * BIG)])).shared[0].offset == BIG  # up to the oldest
    full = Batch(7, [exchange(6, b"7" * BIG)])
    assert ring.pack(full) is full                      # head met tail: full
    for seq in (4, 5, 6):
        ring.release(seq)
    too_big = Batch(8, [exchange(7, b"8" * (4 * BIG))])
    assert ring.pack(too_big) is too_big                # larger than the ring: always inline
    assert ring.pack(Batch(9, [exchange(8, b"9" * BIG)])).shared[0].offset == 0  # empty: from 0


def test_the_ring_holds_every_batch_in_flight_within_the_queue_bound():
    assert ring_size(ExportConfig(batch_max_bytes=4 << 20, queue_max_bytes=64 << 20)) == 12 << 20
    assert ring_size(ExportConfig(batch_max_bytes=4 << 20, queue_max_bytes=8 << 20)) == 8 << 20


def test_a_worker_process_exports_bodies_handed_over_in_the_ring_and_inline(tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    config = Config(sp_backend_url=f"file:{spans_file}")
    bodies = {n: bytes(range(256)) * (n * 300 + 1) for n in range(4)}  # 256 B to 230 KiB
    worker = WorkerProcess(config)
    try:
        for seq in (1, 2):  # the second batch reuses the ring's space
            worker.send(Batch(seq, [exchange(n, bodies[n][::-1], bodies[n]) for n in bodies]))
            report = worker.receive()
            assert report.seq == seq and report.exported == len(bodies) and not report.drops
    finally:
        worker.kill()
    for line in spans_file.read_text().splitlines():
        spans = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]
        for span in spans:
            n = int(span["name"].lstrip("/"))
            attrs = {a["key"]: a["value"].get("stringValue") for a in span["attributes"]}
            assert base64.b64decode(attrs["http.response.body"]) == bodies[n]
            assert base64.b64decode(attrs["http.request.body"]) == bodies[n][::-1]


def test_regions_released_out_of_order_are_reused_once_the_oldest_is_released():
    ring = BodyRing(3 * BIG)
    for seq in (1, 2, 3):
        ring.pack(Batch(seq, [exchange(seq, b"x" * BIG)]))
    ring.release(2)  # two batches on their way at once: the newer one reported first
    blocked = Batch(4, [exchange(4, b"4" * BIG)])
    assert ring.pack(blocked) is blocked       # batch 1 still holds the oldest region
    ring.release(1)
    assert ring.pack(Batch(5, [exchange(5, b"5" * BIG)])).shared[0].offset == 0


def test_without_memfd_the_ring_is_an_unlinked_temporary_file(monkeypatch):
    monkeypatch.delattr("os.memfd_create")  # macOS
    ring = BodyRing(2 * BIG)
    packed = ring.pack(Batch(1, [exchange(0, b"m" * BIG)]))
    RingReader(ring.spec).unpack(packed)
    assert packed.exchanges[0].request.body == b"m" * BIG
