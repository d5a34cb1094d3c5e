"""The export sinks against real servers: errors name their cause, TLS trusts SSL_CERT_FILE."""

from __future__ import annotations

import socket
import threading

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from softprobe_gateway.backends.contract import SendError
from softprobe_gateway.backends.http import HttpSink

from testkit.support import LOOPBACK, OtlpBackend, server_tls


def test_https_export_names_the_tls_failure_and_trusts_ssl_cert_file(tmp_path, monkeypatch):
    ca, tls = server_tls(tmp_path, LOOPBACK)
    batch = TracesData()
    batch.resource_spans.add().scope_spans.add().spans.add().name = "/x"
    with OtlpBackend() as backend:
        backend.server.socket = tls.wrap_socket(backend.server.socket, server_side=True)
        url = f"https://{LOOPBACK}:{backend.port}"
        with pytest.raises(SendError, match=r"^SSLCertVerificationError: \[SSL: CERTIFICATE_VERIFY_FAILED\] .* posting to"):
            HttpSink(url, "", 2.0).send(batch)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))   # a private CA, as a pod would configure it
        sink = HttpSink(url, "", 2.0)
        assert sink.send(batch) == batch.ByteSize()
        sink.close()
    assert [span.name for _, span in backend.spans()] == ["/x"]


def test_a_kept_alive_connection_the_backend_closed_is_replaced_and_the_batch_delivered():
    """The backend answers each request and then closes without saying so (as servers do when
    an idle keep-alive connection times out): the next batch goes out on a new connection."""
    listener = socket.create_server((LOOPBACK, 0))
    received, closed = [], threading.Semaphore(0)

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                received.append(TracesData.FromString(body).resource_spans[0].scope_spans[0].spans[0].name)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            closed.release()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    sink = HttpSink(f"http://{LOOPBACK}:{listener.getsockname()[1]}/prefix", "", 2.0)
    for name in ("/first", "/second"):
        batch = TracesData()
        batch.resource_spans.add().scope_spans.add().spans.add().name = name
        assert sink.send(batch) == batch.ByteSize()
        assert closed.acquire(timeout=5)  # the server has closed its end
    sink.close()
    server.join(5)
    listener.close()
    assert received == ["/first", "/second"]
