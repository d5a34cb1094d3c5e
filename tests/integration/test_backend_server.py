"""The standalone backend as a real process (`softprobe serve`), spoken to over loopback HTTP."""

from __future__ import annotations

import base64
import gzip
import os
import signal
import socket
import statistics
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from testkit.serve import Backend
from testkit.spans import answer_of, extract_span, inject, traces
from testkit.support import BIN, LOOPBACK, free_port, wait_for

PROTOBUF = {"content-type": "application/x-protobuf"}




@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    server = Backend(tmp_path / "sp.db")
    yield server
    if server.process.poll() is None:
        server.stop()


def to_otlp_json(data: TracesData) -> dict:
    """OTLP JSON as exporters write it: protobuf's JSON mapping, but ids in hex."""
    document = json_format.MessageToDict(data)
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def stored_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM exchanges ORDER BY trace_id").fetchall()
    return [tuple(v for k, v in dict(r).items() if k not in ("id", "ingested_ns")) for r in rows]


def test_ingest_then_lookup_hit_and_miss(backend: Backend) -> None:
    payload = traces(extract_span("POST", path="/pay", body='{"a": 1, "b": 2}', content_type="application/json",
                                  answer='{"paid": true}', status=201)).SerializeToString()
    reply = backend.client.post("/v1/traces", content=gzip.compress(payload),
                                headers={**PROTOBUF, "content-encoding": "gzip", "x-public-key": "k"})
    assert (reply.status_code, reply.json()) == (200, {"message": "Traces ingested successfully"})

    hit = backend.client.post("/v1/inject", headers=PROTOBUF, content=inject(
        "POST", path="/pay", body='{"b": 2, "a": 1}', content_type="application/json").SerializeToString())
    assert hit.status_code == 200 and hit.headers["content-type"] == "application/x-protobuf"
    assert answer_of(TracesData.FromString(hit.content)) == (201, '{"paid": true}')

    miss = backend.client.post("/v1/inject", headers=PROTOBUF,
                               content=inject("POST", path="/refund").SerializeToString())
    assert (miss.status_code, miss.content) == (404, b"")


def test_otlp_json_and_protobuf_store_the_same_rows(tmp_path: Path) -> None:
    data = traces(extract_span(path="/a?x=1", session="j"),
                  extract_span("PUT", path="/b", session="j", body='{"k": [1, 2]}',
                               content_type="application/json", status=503, answer="down"))
    data.resource_spans[0].scope_spans[0].spans[1].parent_span_id = bytes.fromhex("00000000000000aa")
    as_protobuf, as_json = Backend(tmp_path / "pb.db"), Backend(tmp_path / "json.db")
    try:
        assert as_protobuf.client.post("/v1/traces", headers=PROTOBUF,
                                       content=data.SerializeToString()).status_code == 200
        assert as_json.client.post("/v1/traces", json=to_otlp_json(data)).status_code == 200
    finally:
        assert as_protobuf.stop() == 0 and as_json.stop() == 0
    rows = stored_rows(tmp_path / "pb.db")
    assert len(rows) == 2 and rows == stored_rows(tmp_path / "json.db")
    assert "00000000000000aa" in rows[1]


def test_session_api_lists_pages_filters_and_shows(backend: Backend) -> None:
    batch = [extract_span(path=f"/s{n}", session=f"sess-{n}", status=500 if n == 3 else 200) for n in range(5)]
    backend.client.post("/v1/traces", headers=PROTOBUF, content=traces(*batch).SerializeToString())

    first = backend.client.get("/api/sessions", params={"size": 2}).json()
    assert [s["id"] for s in first["sessions"]] == ["sess-4", "sess-3"]
    rest = backend.client.get("/api/sessions", params={"size": 10, "cursor": first["nextCursor"]}).json()
    assert [s["id"] for s in rest["sessions"]] == ["sess-2", "sess-1", "sess-0"] and rest["nextCursor"] == ""

    errors = backend.client.get("/api/sessions", params={"httpStatusCode": 500}).json()["sessions"]
    assert [(s["id"], s["errorCount"]) for s in errors] == [("sess-3", 1)]
    assert backend.client.get("/api/sessions", params={"serviceName": "nobody"}).json()["sessions"] == []
    later = batch[2].start_time_unix_nano // 1_000_000
    assert len(backend.client.get("/api/sessions", params={"startTimeFrom": later}).json()["sessions"]) == 3

    one = backend.client.get("/api/sessions/sess-3").json()
    assert one["exchangeCount"] == 1 and one["exchanges"][0]["path"] == "/s3"
    assert [":method", "GET"] in one["exchanges"][0]["request_headers"]  # fields in order, as pairs
    assert backend.client.get("/api/sessions/nope").status_code == 404
    assert backend.client.get("/api/sessions", params={"cursor": "garbage"}).status_code == 400


def test_bad_requests_are_answered_not_fatal(backend: Backend) -> None:
    assert backend.client.post("/v1/traces", headers=PROTOBUF, content=b"\xff\xff\xff").status_code == 400
    assert backend.client.post("/v1/traces", content=b"{nope", headers={"content-type": "application/json"}
                               ).status_code == 400
    assert backend.client.post("/v1/traces", headers={**PROTOBUF, "content-encoding": "gzip"},
                               content=b"not gzip").status_code == 400
    assert backend.client.get("/v2/whatever").status_code == 404
    assert backend.client.get("/api/sessions").status_code == 200


def test_concurrent_clients_record_and_replay(backend: Backend) -> None:
    backend.client.post("/v1/traces", headers=PROTOBUF,
                        content=traces(extract_span(path="/shared", session="c", answer='"x"')).SerializeToString())
    failures: list[str] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=backend.url, trust_env=False, timeout=10) as http:
            for i in range(15):
                posted = http.post("/v1/traces", headers=PROTOBUF, content=traces(
                    extract_span(path=f"/w{n}/{i}", session=f"w{n}")).SerializeToString())
                looked = http.post("/v1/inject", headers=PROTOBUF,
                                   content=inject(path="/shared", session="c").SerializeToString())
                if posted.status_code != 200 or looked.status_code != 200:
                    failures.append(f"{posted.status_code} {looked.status_code}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    sessions = backend.client.get("/api/sessions", params={"size": 100}).json()["sessions"]
    assert sum(s["exchangeCount"] for s in sessions) == 8 * 15 + 1


def test_sigterm_stops_cleanly_and_a_restart_serves_the_data(tmp_path: Path) -> None:
    first = Backend(tmp_path / "sp.db")
    first.client.post("/v1/traces", headers=PROTOBUF,
                      content=traces(extract_span(path="/kept", session="r", answer='"kept"')).SerializeToString())
    assert first.stop() == 0
    second = Backend(tmp_path / "sp.db")
    try:
        hit = second.client.post("/v1/inject", headers=PROTOBUF,
                                 content=inject(path="/kept", session="r").SerializeToString())
        assert answer_of(TracesData.FromString(hit.content)) == (200, '"kept"')
    finally:
        assert second.stop() == 0


def test_serve_reports_a_corrupt_store_and_exits(tmp_path: Path) -> None:
    db = tmp_path / "sp.db"
    db.write_bytes(b"garbage " * 1000)
    done = subprocess.run([str(BIN / "softprobe"), "serve", "--listen", f"{LOOPBACK}:{free_port()}",
                           "--db", str(db)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1  # a store that cannot be opened (cli/envelope.py's classify)
    assert done.stderr.strip().count("\n") == 0 and f"{db}" in done.stderr and "not a database" in done.stderr


def test_sigterm_finishes_the_request_in_flight_then_exits_0(tmp_path: Path) -> None:
    server = Backend(tmp_path / "sp.db")
    body = traces(extract_span(path="/in-flight", session="g", answer='"done"')).SerializeToString()
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as conn:
        conn.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        wait_for(lambda: server.client.get("/health").status_code == 200)  # the head is in
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: not connectable(server.port))  # it stopped accepting
        assert server.process.poll() is None  # and still serves what it had
        conn.sendall(body[10:])
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    assert server.process.wait(timeout=10) == 0
    with sqlite3.connect(tmp_path / "sp.db") as db:
        assert db.execute("SELECT count(*) FROM exchanges WHERE path = '/in-flight'").fetchone() == (1,)


def connectable(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_several_workers_need_the_postgresql_store(tmp_path: Path) -> None:
    done = subprocess.run([str(BIN / "softprobe"), "serve", "--listen", f"{LOOPBACK}:{free_port()}",
                           "--db", str(tmp_path / "sp.db"), "--workers", "2"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--workers 2" in done.stderr, done.stderr
    assert "postgresql://" in done.stderr



@pytest.mark.parametrize("listen", ["127.0.0.1:80800", "127.0.0.1", ":8090", "127.0.0.1:http"])
def test_a_bad_listen_address_is_one_line(tmp_path: Path, listen: str) -> None:
    done = subprocess.run([str(BIN / "softprobe"), "serve", "--listen", listen, "--db", str(tmp_path / "sp.db")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr == f"softprobe: --listen: expected HOST:PORT, got {listen!r}\n"

def test_two_workers_on_postgresql_share_sessions_and_ready_asks_the_database(tmp_path: Path, postgres) -> None:
    url = postgres.database()
    server = Backend(tmp_path / "unused.db", store=url, args=("--workers", "2"))
    try:
        workers = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        assert len(workers) == 2
        created = set()
        for _ in range(10):  # a new connection each: the kernel hands them to either worker
            with httpx.Client(base_url=server.url, trust_env=False) as http:
                created.add(http.post("/v1/sessions", json={"mode": "replay"}).json()["sessionId"])
        listed = {s["sessionId"] for s in server.client.get("/v1/sessions").json()["sessions"]}
        assert listed == created and len(created) == 10
        os.kill(int(workers[0]), signal.SIGKILL)  # a worker lost: another takes its place
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        wait_for(lambda: len(children.read_text().split()) == 2 and workers[0] not in children.read_text().split())
        workers = children.read_text().split()
        assert server.client.get("/ready").json() == {"status": "ready", "store": "postgresql"}
        name = url.rsplit("/", 1)[1]
        postgres.sql(f"DROP DATABASE {name} WITH (FORCE)")
        unready = server.client.get("/ready")
        assert unready.status_code == 503 and unready.json()["status"] == "unavailable"
        assert name not in unready.text and "127.0.0.1" not in unready.text  # open to anyone: no detail
        assert server.client.get("/health").status_code == 200  # alive, not ready
        postgres.sql(f"CREATE DATABASE {name}")
        wait_for(lambda: server.client.get("/ready").status_code == 200)  # ready again, as the database is
    finally:
        assert server.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_answers_on_a_kept_alive_connection_are_not_held_by_delayed_acks(backend: Backend) -> None:
    """An answer's head and body are two writes: without TCP_NODELAY each waited 40 ms."""
    took = []
    for _ in range(21):
        started = time.perf_counter()
        assert backend.client.get("/health").status_code == 200
        took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.02, took
