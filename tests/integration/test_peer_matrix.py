"""A matrix of real peers no one on the team wrote, recorded through the gateway, then replayed
strictly with the servers stopped: every client must see the same answer both times.

Servers: a Flask app (werkzeug's threaded server, its own process) over plain HTTP and HTTPS,
and a grpcio server over TLS (HTTP/2, generic handlers with raw-bytes serializers). Clients:
curl (HTTP/1.1, and --http2 over HTTPS), requests, httpx (http2=True over HTTPS), aiohttp,
urllib, Node's `http` module (absolute-form through the proxy, `Host:` naming the proxy) and
a grpcio client over TLS using the gateway as its HTTPS proxy.

Procedure: a recording gateway (explicit proxy) on a fresh store; each client sends its calls
in its own session (`x-softprobe-session-id: <client>`); wait until the store holds what the
gateway recorded; stop the servers; a fresh gateway on the same store with
`softprobe_lookups=on softprobe_strict=on` answers the same calls; compare what each client
observed (status, body as the client decoded it, content-type, location, repeated headers as
separate fields; gRPC: messages, status code, details). Each (client, call) is its own test.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
import requests
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.peers import flask_app, grpc_peer
from testkit.recording import recorded_count
from testkit.support import (
    BIN,
    LOOPBACK,
    Gateway,
    connectable,
    free_port,
    make_test_ca,
    start_server,
    stop_server,
    wait_for,
    wait_port,
)

PEERS = Path(__file__).resolve().parents[2] / "testkit" / "peers"
SESSION_HEADER = "x-softprobe-session-id"
NODE = shutil.which("node")
CURL = shutil.which("curl")

# -- the calls ------------------------------------------------------------------------------

JSON_PAYLOAD = {"name": "ada", "tags": ["x", "y"], "n": 3}
FORM = {"name": "ada lovelace", "lang": "en&fr"}
UPLOAD_FIELDS = {"title": "report"}
UPLOAD_FILE = ("doc", "notes.txt", b"line one\nline two\n" * 20, "text/plain")
PUT_PAYLOAD = {"colour": "blue", "size": 2}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    form: dict[str, str] | None = None
    upload: bool = False
    follow: bool = False
    expect: dict[str, Any] = field(default_factory=dict)  # what the live server answers (a subset)


HTML = "text/html; charset=utf-8"  # Flask's default content-type, on its pages and on `return "", 204`


CALLS: dict[str, Call] = {
    "json_get": Call("GET", "/json?b=2&a=one&a=two", expect={
        "status": 200, "json": {"method": "GET", "args": {"a": ["one", "two"], "b": ["2"]}}}),
    "json_post": Call("POST", "/json", json=JSON_PAYLOAD, expect={
        "status": 200, "json": {"method": "POST", "got": JSON_PAYLOAD}}),
    "form_post": Call("POST", "/form", form=FORM, expect={
        "status": 200, "json": {"form": {k: [v] for k, v in FORM.items()},
                                "content_type": "application/x-www-form-urlencoded"}}),
    "upload": Call("POST", "/upload", upload=True, expect={
        "status": 200, "json": {"fields": {"title": ["report"]}, "files": {"doc": {
            "filename": "notes.txt", "content_type": "text/plain", "size": len(UPLOAD_FILE[2]),
            "sha256": hashlib.sha256(UPLOAD_FILE[2]).hexdigest()}}}}),
    "redirect": Call("GET", "/redirect", expect={"status": 302, "location": ["/json?from=redirect"],
                                                 "content-type": [HTML]}),
    "redirect_followed": Call("GET", "/redirect", follow=True, expect={
        "status": 200, "json": {"method": "GET", "args": {"from": ["redirect"]}}}),
    "empty": Call("GET", "/empty", expect={"status": 204, "body": b"", "content-type": [HTML]}),
    "not_found": Call("GET", "/missing", expect={"status": 404, "content-type": [HTML]}),
    "error": Call("GET", "/boom", expect={"status": 500, "content-type": [HTML]}),
    "multi_header": Call("GET", "/multi", expect={
        "status": 200, "json": {"multi": True}, "x-multi": ["one", "two"],
        "link": ['</json?page=1>; rel="first"', '</json?page=9>; rel="last"']}),
    "gzip": Call("GET", "/gzip", expect={"status": 200, "content-encoding": ["gzip"],  # sent compressed
                                         "json": {"zipped": True, "words": ["alpha"] * 50}}),
    "binary": Call("GET", "/binary", expect={"status": 200, "body": flask_app.BINARY,
                                             "content-type": ["application/octet-stream"]}),
    "stream": Call("GET", "/stream", expect={"status": 200, "body": "".join(flask_app.STREAM_CHUNKS).encode()}),
    "head": Call("HEAD", "/json?a=head", expect={"status": 200, "body": b"",
                                                 "content-type": ["application/json"]}),
    "put": Call("PUT", "/items/7", json=PUT_PAYLOAD, expect={"status": 200, "json": {"put": 7, "got": PUT_PAYLOAD}}),
    "delete": Call("DELETE", "/items/7", expect={"status": 200, "json": {"deleted": 7}}),
}
HTTP_CALLS = list(CALLS)
NOT_FOLLOWING = [name for name in HTTP_CALLS if name != "redirect_followed"]  # Node never follows

# Headers a client observes and a replay can reproduce (never Date or Server).
COMPARED_HEADERS = ("content-type", "location", "link", "x-multi")
HEAD_HEADERS = COMPARED_HEADERS + ("content-length",)  # what a HEAD is sent for
# Also collected: content-encoding (the live gzip answer is compressed), the strict gateway's refusal.
COLLECTED = HEAD_HEADERS + ("content-encoding", "x-softprobe-lookup")


def compared_headers(call: str) -> tuple[str, ...]:
    return HEAD_HEADERS if call == "head" else COMPARED_HEADERS


GRPC_CALLS = {"unary": ("/peer.Echo/Say", b"ada"), "unary_not_found": ("/peer.Echo/Missing", b"42"),
              "server_stream": ("/peer.Echo/Count", b"tick")}
GRPC_EXPECT = {
    "unary": {"messages": [b"hello, ada"], "code": "OK", "details": None},
    "unary_not_found": {"messages": [], "code": "NOT_FOUND", "details": grpc_peer.NOT_FOUND_DETAILS},
    "server_stream": {"messages": [b"tick #1", b"tick #2", b"tick #3"], "code": "OK", "details": None},
}


# -- what a client saw ----------------------------------------------------------------------


@dataclass
class Seen:
    """One client's view of one answer: status, headers by name (each field separately, as the
    client's own API lists them), the body after the client's decoding; or why it failed."""

    status: int = 0
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    http_version: str = ""
    error: str = ""
    grpc: dict[str, Any] | None = None  # messages, code, details

    def observed(self, call: str) -> dict[str, Any]:
        """What is compared between recording and replay."""
        if self.error:
            return {"error": self.error}
        if self.grpc is not None:
            return dict(self.grpc)
        return {"status": self.status, "body": self.body,
                **{name: self.headers.get(name, []) for name in compared_headers(call)}}


def failed(e: BaseException) -> Seen:
    return Seen(error=f"{type(e).__name__}: {e}")


@dataclass
class Target:
    """Where a phase's clients send: the gateway, the Flask app (http and https), the gRPC server."""

    proxy_port: int
    http_base: str
    https_base: str
    grpc_port: int
    mitm_ca: Path
    workdir: Path

    @property
    def proxy(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy_port}"


def multipart_by_hand() -> tuple[bytes, str]:
    """What urllib code does for an upload (urllib has no multipart): a random boundary."""
    boundary = uuid.uuid4().hex
    name, filename, data, ctype = UPLOAD_FILE
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in UPLOAD_FIELDS.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f'Content-Type: {ctype}\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def body_of(call: Call) -> tuple[bytes | None, str | None]:
    """A request body and content-type for clients that take bytes (urllib, Node); None for none."""
    if call.json is not None:
        return json.dumps(call.json).encode(), "application/json"
    if call.form is not None:
        return urllib.parse.urlencode(call.form).encode(), "application/x-www-form-urlencoded"
    if call.upload:
        return multipart_by_hand()
    return None, None


# -- the clients ----------------------------------------------------------------------------
# Each takes (target, [call names]) and returns {call name: Seen}. A client's calls each open
# their own connection, so that one broken answer cannot spoil the next case.


def curl_client(http2: bool) -> Callable[[Target, list[str]], dict[str, Seen]]:
    name = "curl-h2" if http2 else "curl"

    def run(target: Target, calls: list[str]) -> dict[str, Seen]:
        out = {}
        work = target.workdir / name
        work.mkdir(exist_ok=True)
        upload = work / UPLOAD_FILE[1]
        upload.write_bytes(UPLOAD_FILE[2])
        for call_name in calls:
            call = CALLS[call_name]
            base = target.https_base if http2 else target.http_base
            headers_file, body_file = work / f"{call_name}.headers", work / f"{call_name}.body"
            args = [CURL, "-sS", "--compressed", "-x", target.proxy, "-H", f"{SESSION_HEADER}: {name}",
                    "-D", str(headers_file), "-o", str(body_file), "-w", "%{http_code} %{http_version}",
                    "--max-time", "15"]
            args += ["--http2", "--cacert", str(target.mitm_ca)] if http2 else ["--http1.1"]
            if call.method == "HEAD":
                args.append("--head")
            elif call.method != "GET" or call.json is not None:
                args += ["-X", call.method]
            if call.json is not None:
                args += ["-H", "content-type: application/json", "--data-binary", json.dumps(call.json)]
            for k, v in (call.form or {}).items():
                args += ["--data-urlencode", f"{k}={v}"]
            if call.upload:
                args += [arg for k, v in UPLOAD_FIELDS.items() for arg in ("-F", f"{k}={v}")]
                field_name, filename, _, ctype = UPLOAD_FILE
                args += ["-F", f"{field_name}=@{upload};type={ctype};filename={filename}"]
            if call.follow:
                args.append("-L")
            args.append(base + call.path)
            done = subprocess.run(args, capture_output=True, timeout=30, env=clean_env(), check=False)
            if done.returncode != 0:
                out[call_name] = Seen(error=f"curl exit {done.returncode}: {done.stderr.decode().strip()}")
                continue
            code, version = done.stdout.decode().split()
            out[call_name] = Seen(status=int(code), headers=last_header_block(headers_file.read_bytes()),
                                  body=b"" if call.method == "HEAD" else body_file.read_bytes(),
                                  http_version=version)
        return out
    return run


def last_header_block(dump: bytes) -> dict[str, list[str]]:
    """The last answer's header fields from `curl -D` (which also holds CONNECT and redirects)."""
    blocks = [b for b in dump.decode("latin-1").replace("\r\n", "\n").split("\n\n") if b.startswith("HTTP/")]
    headers: dict[str, list[str]] = {}
    for line in blocks[-1].split("\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    return headers


def requests_client(target: Target, calls: list[str]) -> dict[str, Seen]:
    out = {}
    for call_name in calls:
        call = CALLS[call_name]
        with requests.Session() as s:
            s.trust_env = False
            s.proxies = {"http": target.proxy, "https": target.proxy}
            kwargs: dict[str, Any] = {"headers": {SESSION_HEADER: "requests"}, "timeout": 15,
                                      "allow_redirects": call.follow, **payload(call)}
            try:
                r = s.request(call.method, target.http_base + call.path, **kwargs)
                out[call_name] = Seen(status=r.status_code, body=r.content, http_version=f"HTTP/{r.raw.version / 10}",
                                      headers={n: r.raw.headers.getlist(n) for n in COLLECTED})
            except Exception as e:  # noqa: BLE001 - what the client raised is the observation
                out[call_name] = failed(e)
    return out


def payload(call: Call) -> dict[str, Any]:
    """A call's body as requests and httpx both take it: json=, data= (a form), files= (an upload)."""
    if call.upload:
        return {"data": UPLOAD_FIELDS, "files": {UPLOAD_FILE[0]: UPLOAD_FILE[1:]}}
    if call.json is not None:
        return {"json": call.json}
    return {"data": call.form} if call.form is not None else {}


def httpx_client(target: Target, calls: list[str]) -> dict[str, Seen]:
    out = {}
    for call_name in calls:
        call = CALLS[call_name]
        kwargs: dict[str, Any] = {"headers": {SESSION_HEADER: "httpx-h2"}, "follow_redirects": call.follow,
                                  **payload(call)}
        try:
            trust = ssl.create_default_context(cafile=target.mitm_ca)  # the gateway's CA
            with httpx.Client(http2=True, proxy=target.proxy, verify=trust, trust_env=False, timeout=15) as client:
                r = client.request(call.method, target.https_base + call.path, **kwargs)
            out[call_name] = Seen(status=r.status_code, body=r.content, http_version=r.http_version,
                                  headers={n: r.headers.get_list(n) for n in COLLECTED})
        except Exception as e:  # noqa: BLE001
            out[call_name] = failed(e)
    return out


def aiohttp_client(target: Target, calls: list[str]) -> dict[str, Seen]:
    async def one(call: Call) -> Seen:
        kwargs: dict[str, Any] = {"headers": {SESSION_HEADER: "aiohttp"}, "proxy": target.proxy,
                                  "allow_redirects": call.follow}
        if call.json is not None:
            kwargs["json"] = call.json
        if call.form is not None:
            kwargs["data"] = call.form
        if call.upload:
            form = aiohttp.FormData()
            for k, v in UPLOAD_FIELDS.items():
                form.add_field(k, v)
            field_name, filename, data, ctype = UPLOAD_FILE
            form.add_field(field_name, data, filename=filename, content_type=ctype)
            kwargs["data"] = form
        async with aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=15)) as session, \
                session.request(call.method, target.http_base + call.path, **kwargs) as r:
            body = await r.read()
            return Seen(status=r.status, body=body, http_version=f"HTTP/{r.version.major}.{r.version.minor}",
                        headers={n: r.headers.getall(n, []) for n in COLLECTED})

    out = {}
    for call_name in calls:
        try:
            out[call_name] = asyncio.run(one(CALLS[call_name]))
        except Exception as e:  # noqa: BLE001
            out[call_name] = failed(e)
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as an HTTPError, which is the answer


def urllib_client(target: Target, calls: list[str]) -> dict[str, Seen]:
    out = {}
    for call_name in calls:
        call = CALLS[call_name]
        handlers: list[Any] = [urllib.request.ProxyHandler({"http": target.proxy, "https": target.proxy})]
        if not call.follow:
            handlers.append(_NoRedirect())
        opener = urllib.request.build_opener(*handlers)
        body, ctype = body_of(call)
        # urllib never decompresses: code that wants gzip asks for it and decodes it itself
        headers = {SESSION_HEADER: "urllib", "accept-encoding": "gzip", **({"content-type": ctype} if ctype else {})}
        request = urllib.request.Request(target.http_base + call.path, data=body, method=call.method,
                                         headers=headers)
        try:
            try:
                response = opener.open(request, timeout=15)
            except urllib.error.HTTPError as e:  # 3xx (not followed), 4xx, 5xx: still an answer
                response = e
            with response:
                data = response.read()
                if response.headers.get("content-encoding") == "gzip":
                    data = gzip.decompress(data)
                out[call_name] = Seen(status=response.status, body=data, http_version="HTTP/1.1",
                                      headers={n: response.headers.get_all(n) or [] for n in COLLECTED})
        except Exception as e:  # noqa: BLE001
            out[call_name] = failed(e)
    return out


def node_client(target: Target, calls: list[str]) -> dict[str, Seen]:
    specs = []
    for call_name in calls:
        call = CALLS[call_name]
        body, ctype = body_of(call)
        headers = {SESSION_HEADER: "node", "accept-encoding": "gzip",
                   **({"content-type": ctype} if ctype else {})}
        specs.append({"name": call_name, "method": call.method, "url": target.http_base + call.path,
                      "headers": headers, "body_b64": base64.b64encode(body).decode() if body else None})
    spec = {"proxyHost": LOOPBACK, "proxyPort": target.proxy_port, "calls": specs}
    done = subprocess.run([NODE, str(PEERS / "node_client.js")], input=json.dumps(spec).encode(),
                          capture_output=True, timeout=120, env=clean_env(), check=False)
    if done.returncode != 0:
        return {c: Seen(error=f"node exit {done.returncode}: {done.stderr.decode()[-2000:]}") for c in calls}
    out = {}
    for result in json.loads(done.stdout):
        if result.get("error"):
            out[result["name"]] = Seen(error=result["error"])
            continue
        headers: dict[str, list[str]] = {}
        raw = result["rawHeaders"]
        for k, v in zip(raw[::2], raw[1::2]):
            headers.setdefault(k.lower(), []).append(v)
        out[result["name"]] = Seen(status=result["status"], headers=headers, http_version=result["httpVersion"],
                                   body=base64.b64decode(result["body_b64"]))
    return out


def grpc_client(target: Target, calls: list[str]) -> dict[str, Seen]:
    """grpcio over TLS through the gateway as its HTTPS proxy (CONNECT), trusting its CA."""
    credentials = grpc.ssl_channel_credentials(root_certificates=target.mitm_ca.read_bytes())
    metadata = [(SESSION_HEADER, "grpc")]
    out = {}
    for call_name in calls:
        method, request = GRPC_CALLS[call_name]
        with grpc.secure_channel(f"{LOOPBACK}:{target.grpc_port}", credentials,
                                 options=[("grpc.http_proxy", target.proxy), ("grpc.enable_retries", 0)]) as channel:
            try:
                if call_name == "server_stream":
                    answers = channel.unary_stream(method)(request, metadata=metadata, timeout=15)
                    messages = list(answers)
                    code, details = answers.code(), answers.details()
                else:
                    message, answer = channel.unary_unary(method).with_call(request, metadata=metadata, timeout=15)
                    messages, code, details = [message], answer.code(), answer.details()
            except grpc.RpcError as e:
                messages, code, details = [], e.code(), e.details()
            except Exception as e:  # noqa: BLE001
                out[call_name] = failed(e)
                continue
        out[call_name] = Seen(grpc={"messages": messages, "code": code.name, "details": details or None})
    return out


def clean_env() -> dict[str, str]:
    """The environment without proxy settings (curl's NO_PROXY would bypass even -x)."""
    return {k: v for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")}


CLIENTS: dict[str, tuple[Callable[[Target, list[str]], dict[str, Seen]], list[str]]] = {
    "curl": (curl_client(http2=False), HTTP_CALLS),
    "curl-h2": (curl_client(http2=True), HTTP_CALLS),
    "requests": (requests_client, HTTP_CALLS),
    "httpx-h2": (httpx_client, HTTP_CALLS),
    "aiohttp": (aiohttp_client, HTTP_CALLS),
    "urllib": (urllib_client, HTTP_CALLS),
    "node": (node_client, NOT_FOLLOWING),
    "grpc": (grpc_client, list(GRPC_CALLS)),
}
AVAILABLE = {name: c for name, c in CLIENTS.items()
             if not (name == "node" and NODE is None) and not (name.startswith("curl") and CURL is None)}
CASES = [pytest.param(client, call, id=f"{client}.{call}", marks=pytest.mark.skipif(
              client not in AVAILABLE, reason=f"{client.split('-')[0]} is not on PATH"))
         for client, (_, calls) in CLIENTS.items() for call in calls]


def run_clients(target: Target) -> dict[tuple[str, str], Seen]:
    return {(client, call): seen for client, (run, calls) in AVAILABLE.items()
            for call, seen in run(target, calls).items()}


# -- the servers and the gateways -----------------------------------------------------------


class Peers:
    """The Flask app (HTTP and HTTPS) and the gRPC server, each a process of its own."""

    def __init__(self, tmp: Path) -> None:
        self.ca, cert, key = make_test_ca(tmp, LOOPBACK)
        self.http_port, self.https_port, self.grpc_port = free_port(), free_port(), free_port()
        self.flask = start_server(
            [sys.executable, str(PEERS / "flask_app.py"), "--http-port", str(self.http_port),
             "--https-port", str(self.https_port), "--cert", str(cert), "--key", str(key)],
            self.http_port, tmp / "flask.log", tmp)
        wait_port(self.https_port)
        self.grpc = start_server(
            [sys.executable, str(PEERS / "grpc_peer.py"), "--port", str(self.grpc_port),
             "--cert", str(cert), "--key", str(key)], self.grpc_port, tmp / "grpc.log", tmp)

    def stop(self) -> None:
        for process, log in (self.flask, self.grpc):
            stop_server(process, log)


def gateway(tmp: Path, db: Path, peers: Peers, strict: bool) -> tuple[Gateway, int]:
    admin = free_port()
    config = {"store": {"path": str(db)}, "export": {"flush_interval_ms": 20},
              "admin_listen": f"{LOOPBACK}:{admin}",
              "lookup": {"timeout_ms": 2000}}  # generous: a slow machine is no difference
    options = {"ssl_verify_upstream_trusted_ca": str(peers.ca)}  # trust the peers' test CA
    if strict:
        options.update(softprobe_lookups="on", softprobe_strict="on")
    return Gateway(config, tmp, options=options), admin


def metrics(admin: int) -> dict[str, float]:
    text = httpx.get(f"http://{LOOPBACK}:{admin}/metrics", trust_env=False).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def settled(admin: int, db: Path) -> dict[str, float] | None:
    """The gateway has decided about every exchange it saw, and the store holds all it recorded."""
    m = metrics(admin)
    seen, recorded = m.get("softprobe_exchanges_seen_total", 0), m.get("softprobe_exchanges_recorded_total", 0)
    skipped = sum(v for k, v in m.items() if k.startswith("softprobe_exchanges_skipped_total"))
    return m if (recorded + skipped >= seen > 0 and m.get("softprobe_export_queue_spans", 0) == 0
                 and recorded_count(db) >= recorded) else None


@dataclass
class Phase:
    seen: dict[tuple[str, str], Seen]
    gateway: Gateway
    target: Target


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peer-matrix")
    db = tmp / "store.db"
    peers = Peers(tmp)
    try:
        gw, admin = gateway(tmp, db, peers, strict=False)
        target = Target(gw.port, f"http://{LOOPBACK}:{peers.http_port}", f"https://{LOOPBACK}:{peers.https_port}",
                        peers.grpc_port, tmp / "mitmproxy" / "mitmproxy-ca-cert.pem", tmp)
        try:
            seen = run_clients(target)
            try:
                wait_for(lambda: settled(admin, db), 20)
            except AssertionError:
                raise AssertionError(f"the recording did not settle: {metrics(admin)}\n{gw.output()[-3000:]}")
        finally:
            gw.stop()
        yield {"tmp": tmp, "db": db, "peers": peers, "recorded": Phase(seen, gw, target)}
    finally:
        peers.stop()


@pytest.fixture(scope="module")
def replayed(matrix):
    """The same calls through a fresh strict gateway on the same store, the servers stopped."""
    peers = matrix["peers"]
    peers.stop()
    assert not any(connectable(port) for port in (peers.http_port, peers.https_port, peers.grpc_port))
    gw, _ = gateway(matrix["tmp"], matrix["db"], matrix["peers"], strict=True)
    recorded = matrix["recorded"].target
    target = Target(gw.port, recorded.http_base, recorded.https_base, recorded.grpc_port, recorded.mitm_ca,
                    recorded.workdir)
    try:
        yield Phase(run_clients(target), gw, target)
    finally:
        gw.stop()


# -- the tests ------------------------------------------------------------------------------


def expected_subset(call: str, seen: Seen) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the live server should have answered, the same keys of what the client saw)."""
    want = dict(CALLS[call].expect)
    got: dict[str, Any] = {}
    if "json" in want:
        try:
            got["json"] = json.loads(seen.body)
        except ValueError:
            got["json"] = seen.body
    for key in want:
        if key == "status":
            got[key] = seen.status
        elif key == "body":
            got[key] = seen.body
        elif key != "json":
            got[key] = seen.headers.get(key, [])
    return want, got


@pytest.mark.parametrize(("client", "call"), CASES)
def test_recording_gets_the_servers_answer(matrix, client: str, call: str) -> None:
    """Through the recording gateway, each client gets what the live server answers."""
    seen = matrix["recorded"].seen[(client, call)]
    assert not seen.error, f"{client} {call} failed through the recording gateway: {seen.error}"
    if client == "grpc":
        assert seen.grpc == GRPC_EXPECT[call]
        return
    want, got = expected_subset(call, seen)
    assert got == want


@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
def test_node_absolute_form_is_recorded_under_the_request_target(matrix) -> None:
    """Node sends `Host: <the proxy>` with an absolute-form target: the exchange belongs to the
    target's host:port (the Flask app), not to the proxy's address."""
    flask = f"{LOOPBACK}:{matrix['peers'].http_port}"
    proxy = f"{LOOPBACK}:{matrix['recorded'].target.proxy_port}"
    done = subprocess.run([str(BIN / "softprobe"), "show", "node", "--db", str(matrix["db"])],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert f" {flask}/json?b=2&a=one&a=two " in done.stdout, done.stdout
    assert proxy not in done.stdout, done.stdout
    with Store(StoreConfig(path=str(matrix["db"])), read_only=True) as store:
        _, exchanges = store.session("node")
    recorded = [ex for ex in exchanges if not ex.answered_by]
    assert recorded and {ex.host for ex in recorded} == {flask}


@pytest.mark.parametrize(("client", "call"), CASES)
def test_strict_replay_gives_what_was_recorded(matrix, replayed, client: str, call: str) -> None:
    """With the servers stopped, a strict gateway on the store answers each call as recorded."""
    recorded = matrix["recorded"].seen[(client, call)]
    assert not recorded.error, f"nothing to compare: the recording itself failed: {recorded.error}"
    again = replayed.seen[(client, call)]
    assert again.observed(call) == recorded.observed(call), diagnosis(matrix, replayed, client, call, again)


def diagnosis(matrix: dict[str, Any], replayed: Phase, client: str, call: str, again: Seen) -> str:
    """Why the replay differs, as far as the gateways and the store tell: what the strict gateway
    answered, whether the recording holds the exchange, the closest recording, what was logged."""
    if client == "grpc":
        method, path = "POST", GRPC_CALLS[call][0]
    else:
        method, path = CALLS[call].method, CALLS[call].path
    route = path.split("?")[0]
    lines = [(f"{client} {call}: the replay differs from the recording "
              f"(recorded over {matrix['recorded'].seen[(client, call)].http_version or '-'}, "
              f"replayed over {again.http_version or '-'})")]
    if again.headers.get("x-softprobe-lookup"):
        text = again.body.decode(errors="replace").strip()
        lines.append(f"the strict gateway refused it ({again.status}, lookup "
                     f"{again.headers['x-softprobe-lookup'][0]})" + (f": {text}" if text else ""))
    with Store(StoreConfig(path=str(matrix["db"])), read_only=True) as store:
        _, exchanges = store.session(client)
        held = [ex for ex in exchanges if not ex.answered_by and ex.method == method and ex.route == route]
        lines.append(f"recorded in session {client}: " + ("; ".join(
            f"{ex.method} {ex.host}{ex.path} -> {ex.status}" for ex in held) or f"no {method} {route}"))
        for miss in store.misses(limit=200):
            if miss.session_id == client and miss.method == method and miss.path.split("?")[0] == route:
                lines.append(f"store miss {miss.method} {miss.host}{miss.path}; closest {miss.closest or '-'}: "
                             + "; ".join(miss.diff))
    for name, log in (("recording", matrix["recorded"].gateway.log_path), ("strict", replayed.gateway.log_path)):
        lines += [f"{name} gateway log: {line}" for line in log.read_text(errors="replace").splitlines()
                  if route in line or "Traceback" in line][:5]
    return "\n".join(lines)

def test_the_har_shows_each_exchange_as_its_client_saw_it(matrix, tmp_path: Path) -> None:
    """`softprobe har export`: the request target's host, the client's own headers (no gateway `via`),
    each repeated response field apart and in order, a gRPC status among the trailers."""
    flask = f"{LOOPBACK}:{matrix['peers'].http_port}"
    har_path = tmp_path / "node.har"
    done = subprocess.run([str(BIN / "softprobe"), "har", "export", "node", "--db", str(matrix["db"]),
                           "-o", str(har_path)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    entries = json.loads(har_path.read_text())["log"]["entries"]
    multi = next(e for e in entries if e["request"]["url"] == f"http://{flask}/multi")
    assert [h["value"] for h in multi["response"]["headers"] if h["name"] == "x-multi"] == ["one", "two"]
    assert all(h["name"] != "via" for e in entries for h in e["request"]["headers"])
    grpc_har = tmp_path / "grpc.har"
    subprocess.run([str(BIN / "softprobe"), "har", "export", "grpc", "--db", str(matrix["db"]),
                    "-o", str(grpc_har)], capture_output=True, text=True, timeout=30, check=True)
    unary = next(e for e in json.loads(grpc_har.read_text())["log"]["entries"]
                 if e["request"]["url"].endswith(GRPC_CALLS["unary"][0]))
    assert {h["name"]: h["value"] for h in unary["response"]["_trailers"]}["grpc-status"] == "0"
    assert all(h["name"] != "grpc-status" for h in unary["response"]["headers"])
