"""An upstream for the HTTPS tests, runnable as a process (inside a test's network namespace):
plain HTTP and HTTPS listeners answering JSON that says what arrived.

    python tls_upstream.py HOST HTTP_PORT HTTPS_PORT NAME=CERT:KEY [NAME=CERT:KEY ...]

Each server name has its own certificate, picked by SNI (the first is the default).
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"host": self.headers.get("host"), "path": self.path,
                           "tls": isinstance(self.connection, ssl.SSLSocket),
                           "via": self.headers.get("via")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def contexts(identities: list[str]) -> ssl.SSLContext:
    by_name = {}
    for identity in identities:
        name, _, files = identity.partition("=")
        cert, _, key = files.partition(":")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        by_name[name] = ctx
    default = next(iter(by_name.values()))

    def pick(sock: ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        sock.context = by_name.get(server_name or "", default)

    default.sni_callback = pick
    return default


def main(host: str, http_port: str, https_port: str, *identities: str) -> None:
    plain = ThreadingHTTPServer((host, int(http_port)), Handler)
    secure = ThreadingHTTPServer((host, int(https_port)), Handler)
    secure.socket = contexts(list(identities)).wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or dies)


if __name__ == "__main__":
    main(*sys.argv[1:])
