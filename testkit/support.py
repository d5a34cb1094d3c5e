"""Real components for the tests: a mitmdump process with the addon, an HTTP upstream and an
OTLP/HTTP backend on loopback. Nothing here is mocked; every server is a real socket."""
from __future__ import annotations

import datetime
import gzip
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import taddons
from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData
from softprobe_gateway.proxy import gateway
from softprobe_gateway.proxy.memory import ALLOCATOR_ENV

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADDON = ROOT / "addon" / "softprobe_addon.py"
LOOPBACK = "127.0.0.1"


# -- the addons in mitmproxy's test context -------------------------------------------------

HOOKS = {"requestheaders": http_layer.HttpRequestHeadersHook, "request": http_layer.HttpRequestHook,
         "responseheaders": http_layer.HttpResponseHeadersHook, "response": http_layer.HttpResponseHook,
         "error": http_layer.HttpErrorHook}


class Addons:
    """The gateway's addons (`gateway.addons()`, as the entry script lists them) in mitmproxy's
    test context; a hook is dispatched by mitmproxy's own addon manager, to each in that order."""

    def __init__(self, tctx: taddons.context, addons: gateway.Addons) -> None:
        self.tctx, self.addons = tctx, addons
        self.lifecycle, self.flows = addons.lifecycle, addons.recorder.flows
        self.metrics = addons.lifecycle.metrics

    def configure(self, **options: Any) -> None:
        self.tctx.configure(self.lifecycle, **options)

    async def hook(self, name: str, flow: Any) -> None:
        await self.tctx.master.addons.handle_lifecycle(HOOKS[name](flow))

    async def through(self, flow: Any, *names: str) -> Any:
        for name in names:
            await self.hook(name, flow)
        return flow


@contextmanager
def started_addons(config_path: Path | str, *others: Any) -> Iterator[Addons]:
    """The addons configured with `config_path` and running (call within an event loop)."""
    addons = gateway.addons()
    with taddons.context(*addons, *others) as tctx:
        tctx.configure(addons.lifecycle, softprobe_config=str(config_path))
        addons.lifecycle.running()  # the runtime (export worker) starts once mitmproxy is up
        yield Addons(tctx, addons)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `condition()` is truthy; return its value or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def wait_port(port: int, timeout: float = 15.0) -> None:
    wait_for(lambda: connectable(port), timeout)


# -- HTTP servers ---------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, dict[str, str], bytes]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog of 5 stalls parallel clients on SYN retries


class HttpServer:
    """A threaded HTTP/1.1 server on loopback that records what it receives.

    `handle(received) -> (status, headers, body)` decides the answer; it may also sleep.
    """

    def __init__(self, handle: Callable[[Received], Reply]) -> None:
        self.received: list[Received] = []
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body in two writes cost 40 ms (delayed ACK)

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                got = Received(self.command, self.path,
                               {k.lower(): v for k, v in self.headers.items()}, body)
                outer.received.append(got)
                try:
                    status, headers, payload = handle(got)
                except ConnectionError:
                    self.close_connection = True
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "content-length" not in {k.lower() for k in headers}:
                    self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo_upstream() -> HttpServer:
    """An upstream whose answers depend on the path (see `upstream_reply`)."""
    return HttpServer(upstream_reply)


def upstream_reply(got: Received) -> Reply:
    path = got.path.split("?", 1)[0]
    if path == "/json":
        return 200, {"content-type": "application/json"}, b'{"ok": true, "items": [1, 2]}'
    if path == "/gzip":
        return 200, {"content-type": "application/json", "content-encoding": "gzip"}, \
            gzip.compress(b'{"zipped": "yes"}')
    if path == "/binary":
        return 200, {"content-type": "application/octet-stream"}, bytes(range(256))
    if path == "/empty":
        return 204, {}, b""
    if path == "/style.css":
        return 200, {"content-type": "text/css"}, b"body {}"
    if path == "/page":
        return 200, {"content-type": "text/html"}, b"<html></html>"
    if path.startswith("/big/"):
        return 200, {"content-type": "text/plain"}, b"x" * int(path.rsplit("/", 1)[1])
    if path == "/fail":
        return 503, {"content-type": "text/plain"}, b"upstream down"
    return 200, {"content-type": "text/plain", "x-upstream": "yes"}, \
        f"upstream saw {got.method} {got.path}".encode()


class OtlpBackend(HttpServer):
    """A Softprobe-compatible backend on loopback: decodes exported protobuf for the tests.

    `export_status` answers `/v1/traces` (a callable of the attempt number, so a test can fail
    the first attempts); `inject` answers `/v1/inject` from the decoded lookup request.
    """

    def __init__(self, export_status: Callable[[int], int] = lambda n: 200,
                 inject: Callable[[TracesData, Received], Reply] | None = None) -> None:
        self.batches: list[TracesData] = []
        self.lookups: list[TracesData] = []
        self.attempts = 0
        self.lock = threading.Lock()

        def handle(got: Received) -> Reply:
            if got.path == "/v1/traces":
                with self.lock:
                    self.attempts += 1
                    status = export_status(self.attempts)
                    if status == 200:
                        self.batches.append(TracesData.FromString(got.body))
                return status, {"content-type": "application/json"}, \
                    b'{"message":"Traces ingested successfully"}' if status == 200 else b"{}"
            if got.path == "/v1/inject" and inject is not None:
                request = TracesData.FromString(got.body)
                with self.lock:
                    self.lookups.append(request)
                return inject(request, got)
            return 404, {}, b""

        super().__init__(handle)

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every exported span with its resource attributes."""
        with self.lock:
            return [(attributes(rs.resource.attributes), span)
                    for batch in self.batches for rs in batch.resource_spans
                    for ss in rs.scope_spans for span in ss.spans]

    def wait_spans(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, Any], Span]]:
        return wait_for(lambda: len(s := self.spans()) >= count and s, timeout)


def attributes(kvs: Any) -> dict[str, Any]:
    """OTLP KeyValues as a plain dict of Python values."""
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def make_test_ca(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for `host` (a name or an IP) it signed: (ca, cert, key) PEMs."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5),
                 not_valid_after=now + datetime.timedelta(days=1))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "softprobe test CA")])
    ca = (x509.CertificateBuilder(**valid).subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    cert = (x509.CertificateBuilder(**valid).subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def server_tls(directory: Path, host: str) -> tuple[Path, ssl.SSLContext]:
    """A server's TLS context, its certificate for `host` signed by a new test CA; and the CA's PEM
    (for the client to trust)."""
    ca, cert, key = make_test_ca(directory, host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return ca, context


# -- the gateway ----------------------------------------------------------------------------


@dataclass
class Gateway:
    """`mitmdump -s addon/softprobe_addon.py` as a real process on a loopback port."""

    config: dict[str, Any] | Path  # a dict is written to a file; a Path is used as it is
    tmp: Path
    mode: str = "regular"
    options: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    own_group: bool = False  # in a process group of its own, so a test can signal the group

    def __post_init__(self) -> None:
        if isinstance(self.config, Path):
            self.config_path = self.config
        else:
            self.config_path = self.tmp / f"gateway-{self.port}.yaml"
            self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.tmp / f"mitmdump-{self.port}.log"
        args = [str(BIN / "mitmdump"), "-s", str(ADDON), "--mode", self.mode,
                "--listen-host", LOOPBACK, "--listen-port", str(self.port),
                "--set", f"softprobe_config={self.config_path}",
                "--set", f"confdir={self.tmp / 'mitmproxy'}", "--set", "flow_detail=0"]
        for k, v in self.options.items():
            args += ["--set", f"{k}={v}"]
        self.process, self.log = start_server(args, self.port, self.log_path, self.tmp,
                                              {**ALLOCATOR_ENV, **self.env}, new_session=self.own_group)
        # mitmproxy binds its listeners before the addon's `running` hook starts the export
        # worker: wait for the runtime too, so that no test times its first request with it.
        wait_for(lambda: self.process.poll() is not None
                 or b"softprobe: config " in self.log_path.read_bytes(), 30)

    @property
    def proxy(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client sending through the gateway (as a proxy in regular mode, else directly)."""
        if self.mode == "regular":
            return httpx.Client(proxy=self.proxy, trust_env=False, **kwargs)
        return httpx.Client(base_url=self.proxy, trust_env=False, **kwargs)

    def metric(self, admin_port: int, sample: str) -> float:
        """A sample from the gateway's /metrics (0 when absent), e.g. 'softprobe_export_spans_total'."""
        text = httpx.get(f"http://{LOOPBACK}:{admin_port}/metrics", trust_env=False).text
        prefix = sample + " "
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith(prefix)), 0.0)

    def peak_rss_mb(self) -> float:
        """The mitmdump process's peak resident memory (VmHWM), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return kb / 1024

    def worker_pid(self) -> int | None:
        """The export worker process's PID (a child of mitmdump), or None while none runs."""
        for entry in Path("/proc").iterdir():
            try:
                if (entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                        == self.process.pid and b"softprobe_gateway.worker.process" in (entry / "cmdline").read_bytes()):
                    return int(entry.name)
            except (OSError, IndexError):
                continue  # exited while we looked
        return None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        return stop_server(self.process, self.log, timeout)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(argv: list[str], port: int, log_path: Path, cwd: Path, env: dict[str, str] | None = None,
                 new_session: bool = False) -> tuple[subprocess.Popen, BinaryIO]:
    """Start a server process (output to `log_path`, no proxy from the environment) and wait
    until it accepts connections on `port`, or fail with its output if it exits first."""
    full_env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    full_env.update(PYTHONUNBUFFERED="1", **(env or {}))
    log = log_path.open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                               start_new_session=new_session)
    try:
        wait_for(lambda: process.poll() is not None or connectable(port), 30)
    except AssertionError:
        stop_server(process, log)
        raise
    if process.poll() is not None:
        log.close()
        output = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{Path(argv[0]).name} exited {process.returncode}:\n{output}")
    return process, log


def stop_server(process: subprocess.Popen, log: BinaryIO, timeout: float = 15.0) -> int:
    """Stop like Kubernetes does (SIGTERM, then SIGKILL), so a graceful shutdown runs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log.close()
    return process.returncode


def connectable(port: int, host: str = LOOPBACK) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def run_mitmdump_config(tmp: Path, config_text: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Start mitmdump with a config file and wait for it to exit (for bad-config tests)."""
    path = tmp / "bad.yaml"
    path.write_text(config_text)
    return subprocess.run(
        [str(BIN / "mitmdump"), "-s", str(ADDON), "--listen-host", LOOPBACK,
         "--listen-port", str(free_port()), "--set", f"softprobe_config={path}",
         "--set", f"confdir={tmp / 'mitmproxy'}"],
        capture_output=True, text=True, timeout=timeout, cwd=tmp)


def write_atomically(path: Path, config: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)
