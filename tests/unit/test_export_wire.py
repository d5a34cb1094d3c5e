"""The worker's spliced serialization (`worker.wire`): the same bytes as protobuf's, large text
bodies sent as pieces of their own."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from softprobe_gateway.backends.http import HttpSink
from softprobe_gateway.capture.exchange import Exchange, Message
from softprobe_gateway.config.schema import Config
from softprobe_gateway.export.messages import Batch
from softprobe_gateway.worker.process import Encoder
from softprobe_gateway.worker.wire import SPLICE_BYTES, Pieces

from testkit.support import LOOPBACK, OtlpBackend


class _PiecesSink:
    """Stands for a sink that takes serialized pieces (HttpSink); nothing is sent."""

    concurrency = 1

    def send_pieces(self, pieces, size):
        return size


class _MessagesSink:
    """Stands for a sink that takes `TracesData` (the file and embedded sinks)."""

    concurrency = 1


BODIES = st.one_of(
    st.just(b""), st.binary(max_size=64),
    st.builds(lambda n: b"[" + b"1," * n + b"2]", st.integers(SPLICE_BYTES // 2, SPLICE_BYTES)),  # spliced
    st.builds(lambda n, c: b'{"data":"' + c * n + b'"}', st.integers(SPLICE_BYTES - 16, 3 * SPLICE_BYTES),
              st.sampled_from([b"x", b"\xc3\xa9", b"\xff"])),
    st.builds(lambda n: b'{"password":"' + b"p" * n + b'","card":"4111 1111 1111 1111"}',
              st.integers(SPLICE_BYTES, 2 * SPLICE_BYTES)),
)
TYPES = st.sampled_from([b"application/json", b"text/plain; charset=utf-8", b"application/octet-stream", b""])


@st.composite
def exchanges(draw, i: int) -> Exchange:
    request_type, response_type = draw(TYPES), draw(TYPES)
    return Exchange(
        bytes([i + 1]) * 16, bytes([i + 1]) * 8, draw(st.sampled_from([b"", b"\x07" * 8])), "session",
        draw(st.sampled_from(["checkout", "payments"])), draw(st.sampled_from(["inbound", "outbound"])),
        "/orders?token=secret", "api.test:8080", 1_000 + i,
        Message([(b"host", b"api.test"), (b"content-type", request_type)], draw(BODIES),
                ((":method", "POST"), (":path", "/orders?token=secret"))),
        2_000 + i,
        Message([(b"content-type", response_type), (b"set-cookie", b"a=1"), (b"x-many", b"1"), (b"x-many", b"2")],
                draw(BODIES), ((":status", "200"),), size=draw(st.sampled_from([None, 10 * SPLICE_BYTES]))),
        draw(st.sampled_from([200, 503])), error=draw(st.sampled_from(["", "upstream reset"])),
        events=draw(st.sampled_from([[], [(3_000, "websocket.message", [("websocket.data", "hi")])]])))


@st.composite
def batches(draw) -> list[Exchange]:
    return [draw(exchanges(i)) for i in range(draw(st.integers(1, 4)))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_the_spliced_request_is_byte_for_byte_what_protobuf_serializes(exchanges):
    """Whatever the bodies (text, binary, non-ASCII, invalid UTF-8, secrets to redact,
    truncated), services, events and errors: the pieces joined are protobuf's bytes."""
    config = Config()
    spliced = Encoder(config, _PiecesSink()).encode(Batch(1, exchanges))
    reference = Encoder(config, _MessagesSink()).encode(Batch(1, exchanges))
    expected = reference.data.SerializeToString()
    if isinstance(spliced.data, Pieces):
        assert b"".join(spliced.data.parts) == expected
        assert spliced.data.size == len(expected)
    else:  # no body large enough to splice: the batch goes as a message, as before
        assert spliced.data.SerializeToString() == expected
    assert spliced.count == reference.count == len(exchanges)


def test_a_large_text_body_is_its_own_piece_and_reaches_the_backend_whole():
    body = b'{"data":"' + b"x" * (1024 * 1024 - 11) + b'"}'
    exchange = Exchange(b"\x01" * 16, b"\x02" * 8, b"", "s", "checkout", "outbound", "/big", "api.test", 1,
                        Message([(b"host", b"api.test")], b"", ((":method", "GET"),)), 2,
                        Message([(b"content-type", b"application/json")], body, ((":status", "200"),)), 200)
    outgoing = Encoder(Config(), _PiecesSink()).encode(Batch(1, [exchange]))
    assert isinstance(outgoing.data, Pieces)
    assert any(piece is body for piece in outgoing.data.parts)  # not copied
    with OtlpBackend() as backend:
        sink = HttpSink(f"http://{LOOPBACK}:{backend.port}", "", 5.0)
        assert sink.send_pieces(outgoing.data.parts, outgoing.data.size) == outgoing.data.size
        sink.close()
        (_, span), = backend.wait_spans(1)
    reference = Encoder(Config(), _MessagesSink()).encode(Batch(1, [exchange])).data.SerializeToString()
    assert backend.received[-1].body == reference
    attributes = {kv.key: kv.value.string_value for kv in span.attributes}
    assert attributes["http.response.body"] == body.decode()
