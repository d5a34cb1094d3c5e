"""HTTP/2 over TLS and gRPC through the gateway: a real h2 upstream, an httpx HTTP/2 client."""

from __future__ import annotations

import asyncio
import base64
import ssl
import struct
import threading

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from testkit.support import LOOPBACK, Gateway, OtlpBackend, attributes, server_tls


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: flag byte, 4-byte big-endian length, payload."""
    return struct.pack(">BI", 0, len(message)) + message


class H2Upstream:
    """An HTTP/2-only TLS server: JSON on most paths, a gRPC answer with trailers on /grpc.*."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.protocols: list[str] = []
        context.set_alpn_protocols(["h2"])
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, LOOPBACK, 0, ssl=context)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        ready.wait(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.protocols.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        headers: dict[int, dict[str, str]] = {}
        while data := await reader.read(65535):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers[event.stream_id] = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self._respond(conn, event.stream_id, headers.pop(event.stream_id))
            writer.write(conn.data_to_send())
            await writer.drain()
        writer.close()

    @staticmethod
    def _respond(conn: h2.connection.H2Connection, stream: int, request: dict[str, str]) -> None:
        if request[":path"].startswith("/grpc."):
            conn.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
            conn.send_data(stream, grpc_frame(b"\x0a\x05hello"))
            conn.send_headers(stream, [("grpc-status", "0"), ("grpc-message", "all good")],
                              end_stream=True)
        else:
            body = b'{"h2": true}'
            conn.send_headers(stream, [(":status", "200"), ("content-type", "application/json"),
                                       ("content-length", str(len(body)))])
            conn.send_data(stream, body, end_stream=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def setup(tmp_path):
    ca, context = server_tls(tmp_path, LOOPBACK)
    upstream = H2Upstream(context)
    backend = OtlpBackend()
    gateway = Gateway({"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20}}, tmp_path,
                      mode=f"reverse:https://{LOOPBACK}:{upstream.port}",
                      options={"ssl_verify_upstream_trusted_ca": str(ca)})
    client = httpx.Client(http2=True, trust_env=False, base_url=f"https://{LOOPBACK}:{gateway.port}",
                          verify=str(tmp_path / "mitmproxy" / "mitmproxy-ca-cert.pem"))
    yield client, upstream, backend
    client.close()
    gateway.stop()
    upstream.close()
    backend.close()


def test_http2_client_over_tls_is_proxied_and_recorded(setup):
    client, upstream, backend = setup
    response = client.get("/flights", headers={"x-sp-session-id": "h2-session"})
    assert response.http_version == "HTTP/2" and response.json() == {"h2": True}
    assert upstream.protocols == ["h2"]
    (_, span), = backend.wait_spans(1)
    a = attributes(span.attributes)
    assert a["http.request.header.:scheme"] == "https" and a["http.request.header.:path"] == "/flights"
    assert a["sp.session.id"] == "h2-session" and a["http.response.body"] == '{"h2": true}'


def test_grpc_is_recorded_with_trailers_and_base64_frames(setup):
    client, upstream, backend = setup
    request = grpc_frame(b"\x0a\x03ada")
    response = client.post("/grpc.test.Greeter/SayHello", content=request,
                           headers={"content-type": "application/grpc", "te": "trailers"})
    assert response.status_code == 200 and response.content == grpc_frame(b"\x0a\x05hello")
    (_, span), = backend.wait_spans(1)
    a = attributes(span.attributes)
    assert a["http.response.trailer.grpc-status"] == "0"  # trailers recorded apart from the headers
    assert "http.response.header.grpc-status" not in a
    assert a["http.response.trailer.grpc-message"] == "all good"
    assert base64.b64decode(a["http.request.body"]) == request
    assert base64.b64decode(a["http.response.body"]) == grpc_frame(b"\x0a\x05hello")
    assert span.name == "/grpc.test.Greeter/SayHello"
