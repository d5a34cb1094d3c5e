"""`softprobe serve` beyond loopback requires a key on every route.

"Beyond loopback" is the listen address: anything but 127.0.0.0/8 and ::1 (0.0.0.0 included).
The honest test is a peer on another host: serve runs in its own network namespace, bound to its
veth address, and is reached over the veth pair from the host, by httpx and by a real gateway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from testkit.serve import OVERLAY_ARGS
from testkit.spans import answer_of, extract_span, inject, traces
from testkit.support import BIN, LOOPBACK, Gateway, connectable, free_port, wait_for

KEY = "k-3f9a2c7d1e"
PROTOBUF = {"content-type": "application/x-protobuf"}
SERVE = [str(BIN / "softprobe"), "serve"]


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (namespace, host address, its address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    n = os.getpid() % 10000
    name, outside, inside = f"spwire{n}", f"spwh{n}", f"spwn{n}"
    host_ip, ns_ip = f"10.253.{n % 250}.1", f"10.253.{n % 250}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)
    ip("netns", "add", name)
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", name)
        ip("addr", "add", f"{host_ip}/30", "dev", outside)
        ip("link", "set", outside, "up")
        for args in (("addr", "add", f"{ns_ip}/30", "dev", inside), ("link", "set", inside, "up"),
                     ("link", "set", "lo", "up")):
            ip("netns", "exec", name, "ip", *args)
        yield name, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # takes the veth pair along
        subprocess.run(["ip", "link", "del", outside], capture_output=True)


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "SOFTPROBE_PUBLIC_KEY" and not k.lower().endswith("_proxy")}
    return {**base, **extra}


class Serve:
    """`softprobe serve ARGS` (optionally inside a namespace) until it listens on host:port."""

    def __init__(self, args: list[str], host: str, port: int, environ: dict[str, str], ns: str = "") -> None:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        self.process = subprocess.Popen([*prefix, *SERVE, *args], env=environ, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: self.process.poll() is not None or connectable(port, host), 20)
        assert self.process.poll() is None, self.process.communicate()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def refused(args: list[str], environ: dict[str, str], ns: str = "") -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run([*prefix, *SERVE, *args], env=environ, capture_output=True, text=True, timeout=30)


def test_every_route_requires_the_key_beyond_loopback(netns, tmp_path: Path, upstream) -> None:
    ns, _, ns_ip = netns
    listen = [arg.replace("/data/softprobe.db", str(tmp_path / "sp.db")) for arg in OVERLAY_ARGS[1:]]
    done = refused(listen, env(), ns)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "beyond loopback" in done.stderr and "SOFTPROBE_PUBLIC_KEY" in done.stderr

    server = Serve(listen, ns_ip, 8090, env(SOFTPROBE_PUBLIC_KEY=KEY), ns)
    recorded = traces(extract_span("POST", path="/pay", body='{"a": 1}', content_type="application/json",
                                   answer='{"paid": true}', session="s-auth")).SerializeToString()
    stolen = traces(extract_span(path="/stolen", session="s-stolen")).SerializeToString()
    lookup = inject("POST", path="/pay", body='{"a": 1}', content_type="application/json",
                    session="s-auth").SerializeToString()
    routes = [("POST", "/v1/traces", recorded, 200), ("POST", "/v1/inject", lookup, 200),
              ("GET", "/api/sessions", b"", 200), ("GET", "/api/sessions/s-auth", b"", 200),
              ("GET", "/no-such-route", b"", 404)]
    refusals = {"no key": {}, "wrong x-public-key": {"x-public-key": KEY + "x"},
                "wrong bearer": {"authorization": f"Bearer {KEY[:-1]}"},
                "key as basic": {"authorization": f"Basic {KEY}"}, "empty key": {"x-public-key": ""}}
    right = {"x-public-key": {"x-public-key": KEY}, "bearer": {"authorization": f"Bearer {KEY}"}}
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as http:
            def status(method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
                sent = {**PROTOBUF, **headers} if method == "POST" else headers
                return http.request(method, path, content=body or None, headers=sent).status_code

            assert http.post("/v1/traces", content=stolen, headers=PROTOBUF).status_code == 401
            for label, headers in refusals.items():
                got = [status(m, p, b, headers) for m, p, b, _ in routes]
                assert got == [401] * len(routes), label
            for label, headers in right.items():
                got = [status(m, p, b, headers) for m, p, b, _ in routes]
                assert got == [expected for *_, expected in routes], label
            hit = http.post("/v1/inject", content=lookup, headers={**PROTOBUF, "x-public-key": KEY})
            unauthorized = http.get("/api/sessions")
            assert answer_of(TracesData.FromString(hit.content)) == (200, '{"paid": true}')
            assert unauthorized.headers["www-authenticate"] == "Bearer" and "s-auth" not in unauthorized.text

            # The embedded-backend overlay's pairing: the gateway sends the key serve requires,
            # both read from one Secret as SOFTPROBE_PUBLIC_KEY. It records, then replays.
            config = {"sp_backend_url": server.url, "enable_inject": True,
                      "export": {"flush_interval_ms": 20}, "lookup": {"timeout_ms": 2000}}
            with Gateway(config, tmp_path, mode=f"reverse:{upstream.url}",
                         env={"SOFTPROBE_PUBLIC_KEY": KEY}) as gw, gw.client(timeout=10) as client:
                first = client.get("/flights?from=SFO", headers={"x-sp-session-id": "s-gw"})
                wait_for(lambda: http.get("/api/sessions/s-gw", headers={"x-public-key": KEY}).status_code == 200)
                second = client.get("/flights?from=SFO", headers={"x-sp-session-id": "s-gw"})
            sessions = http.get("/api/sessions", headers={"x-public-key": KEY}).json()["sessions"]
    finally:
        server.stop()
    assert first.text == second.text == "upstream saw GET /flights?from=SFO"
    assert len(upstream.received) == 1                       # the second was answered by the lookup
    assert {s["id"] for s in sessions} == {"s-auth", "s-gw"}  # the unauthorized write stored nothing


def test_loopback_needs_no_key_and_a_key_file_is_honoured(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "empty").write_text("\n")
    done = refused(["--listen", f"0.0.0.0:{port}", "--key-file", str(tmp_path / "empty")], env())
    assert done.returncode == 2 and "is empty" in done.stderr

    other_loopback = "127.0.0.2"  # loopback, though not 127.0.0.1: only this host can connect
    server = Serve(["--listen", f"{other_loopback}:{port}", "--db", str(tmp_path / "sp.db")],
                   other_loopback, port, env())
    try:
        assert httpx.get(f"{server.url}/api/sessions", trust_env=False).status_code == 200
    finally:
        server.stop()

    (tmp_path / "key").write_text(KEY + "\n")                # as a mounted Secret file
    server = Serve(["--listen", f"{LOOPBACK}:{port}", "--key-file", str(tmp_path / "key"),
                    "--db", str(tmp_path / "sp.db")], LOOPBACK, port, env(SOFTPROBE_PUBLIC_KEY="other"))
    try:
        with httpx.Client(base_url=server.url, trust_env=False) as http:
            assert http.get("/api/sessions").status_code == 401
            assert http.get("/api/sessions", headers={"x-public-key": "other"}).status_code == 401
            assert http.get("/api/sessions", headers={"authorization": f"bearer {KEY}"}).status_code == 200
    finally:
        server.stop()
