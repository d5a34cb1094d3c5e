"""Hostile input against a real `softprobe serve` process (issue 28, items 1-5 and 7-9): deep
JSON, NaN, chunked bodies and smuggling, bursts of clients, idle and slow connections under a low
descriptor limit, odd methods, over-long file names, and requests looser than the schemas."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.serve import KEY, Backend, validate
from testkit.support import LOOPBACK


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Backend]:
    with Backend(tmp_path / "sp.db", KEY, args=("--capture-dir", str(tmp_path))) as server:
        yield server


def strict(text: str) -> object:
    """JSON as RFC 8259 has it: NaN and Infinity are not."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def raw(backend: Backend, request: bytes, wait: float = 5.0) -> bytes:
    """What the server sends back to `request` on one connection until it closes it (or `wait`)."""
    with socket.create_connection((LOOPBACK, backend.port), timeout=wait) as conn:
        conn.sendall(request)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def closed_within(conn: socket.socket, seconds: float) -> float:
    """Seconds until the server closed `conn` (reading and dropping what it sends); fails past `seconds`."""
    started = time.monotonic()
    conn.settimeout(seconds)
    while conn.recv(65536):
        pass
    return time.monotonic() - started


def test_deep_json_is_400_invalid_request_and_no_traceback(runtime: Backend) -> None:
    session = runtime.session()
    deep = "[" * 100_000
    nested_rules = ('{"version": 1, "rules": [{"when": {"host": "a.test"}, "then": {"action": "mock", '
                    '"response": {"status": 200, "body": ' + "[" * 3_000 + "]" * 3_000 + "}}}]}")
    for path, body in (("/v1/sessions", deep), (f"/v1/sessions/{session}/rules", nested_rules),
                       (f"/v1/sessions/{session}/policy", deep)):
        reply = runtime.client.post(path, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request", reply.text
    for path in ("/v1/traces", "/v1/inject"):
        reply = runtime.client.post(path, content=deep, headers={"content-type": "application/json"})
        assert reply.status_code == 400 and "nested too deeply" in reply.json()["error"]
    assert runtime.client.get("/health").status_code == 200
    assert "Traceback" not in runtime.log.read_text()


def test_nan_and_infinity_are_refused_and_state_is_strict_json(runtime: Backend) -> None:
    session = runtime.session()
    for bad in ('{"externalHttp": "allow", "x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', '{"x": 1e999}'):
        reply = runtime.client.post(f"/v1/sessions/{session}/policy", content=bad)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request", bad
    assert runtime.client.post(f"/v1/sessions/{session}/policy", content='{"x": 1.5e300}').status_code == 200
    state = runtime.client.get(f"/v1/sessions/{session}/state")
    assert strict(state.text)["policy"] == {"x": 1.5e300}


def test_a_chunked_body_is_decoded(runtime: Backend) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"mode": '
        yield b'"capture"}'
    reply = runtime.client.post("/v1/sessions", content=chunks())  # an iterator: sent chunked
    assert reply.request.headers["transfer-encoding"] == "chunked"
    assert reply.status_code == 200 and reply.json()["sessionId"]
    listed = runtime.client.get("/v1/sessions").json()["sessions"]
    assert [s["mode"] for s in listed] == ["capture"]


HIDDEN = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
          + b"\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{\"mode\": \"capture\"}")


def _chunked(head_extra: bytes, body: bytes) -> bytes:
    return (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n" + head_extra + b"\r\n" + body)


@pytest.mark.parametrize("request_bytes", [
    # the hidden request as the chunk's content: the body, never a request
    _chunked(b"", b"%x\r\n" % len(HIDDEN) + HIDDEN + b"\r\n0\r\n\r\n"),
    # Content-Length and chunked at once: chunked frames it (or it is refused), never the length
    _chunked(b"Content-Length: 0\r\n", b"%x\r\n" % len(HIDDEN) + HIDDEN + b"\r\n0\r\n\r\n"),
    # a chunk's data not ended by CRLF (CVE-2025-43859): refused, not taken as a body nor a request
    _chunked(b"", b'13\r\n{"mode": "capture"}XX0\r\n\r\n'),
], ids=["in-a-chunk", "length-and-chunked", "bad-chunk-end"])
def test_a_request_hidden_in_a_body_is_never_executed(runtime: Backend, request_bytes: bytes) -> None:
    answer = raw(runtime, request_bytes + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert runtime.client.get("/v1/sessions").json()["sessions"] == []  # no capture session was created


def test_100_clients_creating_500_sessions_at_once_are_all_answered(runtime: Backend) -> None:
    start, failures = threading.Barrier(100), []

    def client() -> None:
        start.wait()
        for _ in range(5):  # a new connection each time: the listen backlog takes the burst
            try:
                with httpx.Client(base_url=runtime.url, trust_env=False, timeout=30,
                                  headers={"authorization": f"Bearer {KEY}"}) as http:
                    reply = http.post("/v1/sessions", json={"mode": "replay"})
                    if reply.status_code != 200:
                        failures.append(str(reply.status_code))
            except httpx.HTTPError as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(runtime.client.get("/v1/sessions").json()["sessions"]) == 500


def test_idle_and_slow_connections_are_closed_after_the_timeout(tmp_path: Path) -> None:
    with Backend(tmp_path / "sp.db", args=("--timeout", "1", "--keep-alive", "1")) as runtime:
        silent = socket.create_connection((LOOPBACK, runtime.port))
        assert closed_within(silent, 5) < 3
        slow = socket.create_connection((LOOPBACK, runtime.port))
        head, started = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for byte in head:  # a byte every 50 ms: the whole head would take 5 s
                slow.send(bytes([byte]))
                time.sleep(0.05)
        assert time.monotonic() - started < 3
        kept = socket.create_connection((LOOPBACK, runtime.port))
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_within(kept, 5) < 3  # idle after its answer: closed by the keep-alive timeout
        body = raw(runtime, b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789", wait=6)
        assert body.startswith(b"HTTP/1.1 408")
        for conn in (silent, slow, kept):
            conn.close()


def test_health_is_answered_with_100_idle_connections_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    with Backend(tmp_path / "sp.db", nofile=128) as runtime:  # leaves 64 for connections
        idle = [socket.create_connection((LOOPBACK, runtime.port)) for _ in range(100)]
        started = time.monotonic()
        reply = httpx.get(f"{runtime.url}/health", timeout=5, trust_env=False)
        assert reply.status_code == 200 and time.monotonic() - started < 2
        for conn in idle:
            conn.setblocking(False)
        time.sleep(0.2)
        closed = sum(1 for conn in idle if _closed(conn))
        assert closed >= 100 - 64  # the oldest idle ones made room
        for conn in idle:
            conn.close()


def _closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
def test_options_and_trace_on_control_routes_are_405_with_the_envelope(runtime: Backend, method: str) -> None:
    session = runtime.session()
    for path in ("/health", "/v1/meta", "/v1/sessions", f"/v1/sessions/{session}/state",
                 f"/v1/sessions/{session}/close"):
        reply = runtime.client.request(method, path)
        assert reply.status_code == 405 and reply.headers["content-type"] == "application/json", path
        assert reply.json()["error"]["code"] == "method_not_allowed"
        validate(reply.json(), "#APIError")


def test_close_with_an_over_long_file_name_is_400_and_the_session_stays_open(runtime: Backend) -> None:
    session = runtime.session("capture")
    reply = runtime.client.post(f"/v1/sessions/{session}/close", params={"out": "c" * 300 + ".case.json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request"
    assert "300" in reply.json()["error"]["message"] or "bytes" in reply.json()["error"]["message"]
    assert runtime.client.get(f"/v1/sessions/{session}/state").status_code == 200
    assert runtime.client.post(f"/v1/sessions/{session}/close", params={"out": "ok.case.json"}).status_code == 200


@pytest.mark.parametrize("action, body", [
    ("fixtures/auth", {"metadata": {"tenant": {"id": 1}}}),
    ("fixtures/auth", {"metadata": {"tenant": None}}),
    ("fixtures/auth", {"metadata": {"tenants": ["a"]}}),
    ("fixtures/auth", None),
    ("policy", None),
])
def test_requests_the_schemas_refuse_are_refused(runtime: Backend, action: str, body: dict | None) -> None:
    session = runtime.session()
    reply = runtime.client.post(f"/v1/sessions/{session}/{action}", content=b"" if body is None else json.dumps(body))
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request", reply.text


def test_what_the_fixtures_schema_takes_is_taken(runtime: Backend) -> None:
    session = runtime.session()
    fixtures = {"tokens": ["t"], "metadata": {"tenant": "a", "seats": 3, "trial": False}}
    validate(fixtures, "session-fixtures-auth.request.schema.json")
    reply = runtime.client.post(f"/v1/sessions/{session}/fixtures/auth", json=fixtures)
    assert reply.status_code == 200
    validate(reply.json(), "session-fixtures-auth.response.schema.json")


def test_bodies_over_64_mib_are_413_however_they_come(runtime: Backend) -> None:
    over = 64 * 1024 * 1024 + 1
    head_only = raw(runtime, b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                    + b"\r\nContent-Length: %d\r\n\r\n" % over)  # refused before the body is sent
    assert head_only.startswith(b"HTTP/1.1 413") and b"connection: close" in head_only.lower()

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"\0" * (1024 * 1024)
        yield b"\0"  # the last byte over: all of it is sent before the answer
    assert runtime.client.post("/v1/traces", content=chunks()).status_code == 413  # chunked: counted as read
    bomb = gzip.compress(b"\0" * over)
    reply = runtime.client.post("/v1/traces", content=bomb, headers={"content-encoding": "gzip"})
    assert reply.status_code == 413
    assert runtime.client.get("/health").status_code == 200
