"""The export sinks against real servers: errors name their cause, TLS trusts SSL_CERT_FILE."""

from __future__ import annotations

import ssl

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.export.sinks import HttpSink, SendError
from support import LOOPBACK, OtlpBackend, make_test_ca


def test_https_export_names_the_tls_failure_and_trusts_ssl_cert_file(tmp_path, monkeypatch):
    ca, cert, key = make_test_ca(tmp_path, LOOPBACK)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    batch = TracesData()
    batch.resource_spans.add().scope_spans.add().spans.add().name = "/x"
    with OtlpBackend() as backend:
        backend.server.socket = tls.wrap_socket(backend.server.socket, server_side=True)
        url = f"https://{LOOPBACK}:{backend.port}"
        with pytest.raises(SendError, match=r"^ConnectError: \[SSL: CERTIFICATE_VERIFY_FAILED\] .* posting to"):
            HttpSink(url, "", 2.0).send(batch)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))   # a private CA, as a pod would configure it
        sink = HttpSink(url, "", 2.0)
        assert sink.send(batch) == batch.ByteSize()
        sink.close()
    assert [span.name for _, span in backend.spans()] == ["/x"]
