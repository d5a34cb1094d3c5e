"""Streams, WebSockets and live config reload, against a real mitmdump on loopback."""

from __future__ import annotations

import base64
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import yaml
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from testkit.support import (
    LOOPBACK,
    Gateway,
    OtlpBackend,
    attributes,
    free_port,
    wait_for,
    write_atomically,  # noqa: F401
)

MIB = 1024 * 1024


class StreamingUpstream:
    """Bodies an ordinary test server cannot make: SSE paced by the test, and 200 MiB generated."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.uploaded = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/events":
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    self._chunk(b"data: first\n\n")
                    outer.release.wait(10)           # the test holds the stream open here
                    self._chunk(b"data: second\n\n")
                    self._chunk(b"")
                elif self.path.startswith("/bytes/"):
                    total = int(self.path.rsplit("/", 1)[1])
                    self.send_response(200)
                    self.send_header("content-type", "application/octet-stream")
                    self.send_header("content-length", str(total))
                    self.end_headers()
                    block = b"\xab" * MIB
                    for start in range(0, total, MIB):
                        self.wfile.write(block[: min(MIB, total - start)])

            def do_POST(self) -> None:  # noqa: N802
                remaining = int(self.headers["content-length"])
                while remaining:
                    remaining -= len(self.rfile.read(min(MIB, remaining)))
                    outer.uploaded = int(self.headers["content-length"]) - remaining
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def streaming():
    upstream = StreamingUpstream()
    yield upstream
    upstream.close()


def spans_by_name(backend: OtlpBackend, count: int) -> dict[str, dict]:
    return {s.name: attributes(s.attributes) for _, s in backend.wait_spans(count)}


def test_sse_reaches_the_client_before_the_upstream_finishes(tmp_path, streaming, backend):
    config = {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20}}
    with Gateway(config, tmp_path, mode=f"reverse:{streaming.url}") as gw, gw.client(timeout=10) as client:
        with client.stream("GET", "/events") as response:
            lines = response.iter_lines()
            first = next(lines)
            assert first == "data: first"
            assert not streaming.release.is_set()   # the upstream has not sent the rest yet
            streaming.release.set()
            rest = list(lines)
        assert "data: second" in rest
        attrs = spans_by_name(backend, 1)["/events"]
    assert attrs["http.response.body"] == "data: first\n\ndata: second\n\n"
    assert attrs["http.response.header.content-type"] == "text/event-stream"


def test_200_mib_streams_through_with_flat_memory(tmp_path, streaming, backend):
    size = 200 * MIB
    config = {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20},
              "capture": {"max_body_bytes": 4096, "stream_threshold_bytes": MIB}}
    with Gateway(config, tmp_path, mode=f"reverse:{streaming.url}") as gw, gw.client(timeout=60) as client:
        baseline = gw.peak_rss_mb()
        received = 0
        with client.stream("GET", f"/bytes/{size}") as response:
            for chunk in response.iter_raw(MIB):
                received += len(chunk)
        upload = client.post("/upload", content=iter([b"\xcd" * MIB] * 50),
                             headers={"content-length": str(50 * MIB)})
        peak = gw.peak_rss_mb()
        spans = spans_by_name(backend, 2)
    print(f"RSS: {baseline:.0f} MiB at start, peak {peak:.0f} MiB after 200 MiB down and 50 MiB up")
    assert received == size and upload.text == "ok" and streaming.uploaded == 50 * MIB
    assert peak - baseline < 60, f"memory grew by {peak - baseline:.0f} MiB while streaming"
    down = spans["/bytes/209715200"]
    assert down["http.response.body.truncated"] is True
    assert down["http.response.body.original_size"] == size
    assert base64.b64decode(down["http.response.body"]) == b"\xab" * 4096
    up = spans["/upload"]
    assert up["http.request.body.truncated"] is True and up["http.request.body.original_size"] == 50 * MIB


def test_websocket_passes_untouched_and_recording_is_bounded(tmp_path, backend):
    def echo(ws):
        for message in ws:
            ws.send(message)

    with ws_serve(echo, LOOPBACK, 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        admin = free_port()
        config = {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20},
                  "capture": {"websocket_messages": 5}, "admin_listen": f"{LOOPBACK}:{admin}"}
        with Gateway(config, tmp_path, mode=f"reverse:http://{LOOPBACK}:{port}") as gw:
            with ws_connect(f"ws://{LOOPBACK}:{gw.port}/chat") as ws:
                for i in range(50):
                    ws.send(f"hello {i}")
                    assert ws.recv(timeout=5) == f"hello {i}"
                ws.send(b"\x00\x01")
                assert ws.recv(timeout=5) == b"\x00\x01"
            (_, span), = backend.wait_spans(1)
        server.shutdown()
    a = attributes(span.attributes)
    assert a["http.response.status_code"] == 101
    assert len(span.events) == 5 and a["websocket.messages.dropped"] == 102 - 5
    first = attributes(span.events[0].attributes)
    assert first == {"websocket.direction": "client", "websocket.type": "text",
                     "websocket.data": "hello 0", "websocket.size": 7}
    assert attributes(span.events[1].attributes)["websocket.direction"] == "server"




def test_config_edits_apply_live_and_invalid_ones_are_rejected(tmp_path, backend, upstream):
    admin = free_port()
    base = {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20},
            "admin_listen": f"{LOOPBACK}:{admin}"}
    path = tmp_path / "gateway.yaml"
    write_atomically(path, {**base, "service_name": "alpha"})
    with Gateway(path, tmp_path, mode=f"reverse:{upstream.url}") as gw, gw.client() as client:
        client.get("/one")
        write_atomically(path, {**base, "service_name": "beta"})
        wait_for(lambda: gw.metric(admin, "softprobe_config_version") == 2)
        client.get("/two")
        path.write_text("capture: {max_body_bytes: lots}\n")        # an invalid edit
        wait_for(lambda: gw.metric(admin, "softprobe_config_reload_errors_total") == 1)
        client.get("/three")
        spans = spans_by_name(backend, 3)
        rejected = [l for l in gw.output().splitlines() if "config reload rejected" in l]
        error_info = httpx.get(f"http://{LOOPBACK}:{admin}/metrics", trust_env=False).text
    assert spans["/one"]["sp.service.name"] == "alpha"
    assert spans["/two"]["sp.service.name"] == "beta"
    assert spans["/three"]["sp.service.name"] == "beta"            # the previous config stays
    assert len(rejected) == 1 and "'capture.max_body_bytes'" in rejected[0]
    assert "softprobe_config_reload_error_info{error=" in error_info


def test_kubelet_style_symlink_swap_is_noticed(tmp_path, backend, upstream):
    """A ConfigMap volume: gateway.yaml -> ..data/gateway.yaml, ..data -> ..<timestamp>/."""
    admin = free_port()
    mount = tmp_path / "mount"
    mount.mkdir()
    base = {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20},
            "admin_listen": f"{LOOPBACK}:{admin}"}

    def publish(version: str, config: dict) -> None:
        (mount / version).mkdir()
        (mount / version / "gateway.yaml").write_text(yaml.safe_dump(config))
        (mount / "..data_tmp").symlink_to(version)
        os.replace(mount / "..data_tmp", mount / "..data")       # atomic, like the kubelet

    publish("..2026_11_25_1", {**base, "service_name": "first"})
    (mount / "gateway.yaml").symlink_to("..data/gateway.yaml")
    with Gateway(mount / "gateway.yaml", tmp_path, mode=f"reverse:{upstream.url}") as gw, \
            gw.client() as client:
        client.get("/before")
        publish("..2026_11_25_2", {**base, "service_name": "second"})
        wait_for(lambda: gw.metric(admin, "softprobe_config_version") == 2)
        client.get("/after")
        spans = spans_by_name(backend, 2)
    assert spans["/before"]["sp.service.name"] == "first"
    assert spans["/after"]["sp.service.name"] == "second"
