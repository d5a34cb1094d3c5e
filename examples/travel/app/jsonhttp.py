"""The little the demo services share: a threaded JSON-over-HTTP server with a route table."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# (method, path regex) -> handler(request) -> (status, JSON document)
Handler = Callable[["Request"], tuple[int, Any]]
Routes = dict[tuple[str, str], Handler]


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, match: re.Match[str]) -> None:
        url = urlsplit(handler.path)
        self.path = url.path
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.params = match.groupdict()
        self.headers = handler.headers
        length = int(handler.headers.get("content-length") or 0)
        self.json = json.loads(handler.rfile.read(length) or b"null") if length else None


def serve(port: int, routes: Routes, host: str = "0.0.0.0") -> None:
    """Answer `routes` on `host:port` until interrupted."""
    compiled = [(method, re.compile(pattern), fn) for (method, pattern), fn in routes.items()]

    class JsonHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _dispatch(self) -> None:
            path = urlsplit(self.path).path
            for method, pattern, fn in compiled:
                if method == self.command and (match := pattern.fullmatch(path)):
                    try:
                        status, document = fn(Request(self, match))
                    except (ValueError, KeyError, TypeError) as e:
                        status, document = 400, {"error": f"bad request: {e}"}
                    return self._send(status, document)
            self._send(404, {"error": f"no route for {self.command} {path}"})

        do_GET = do_POST = _dispatch

        def _send(self, status: int, document: Any) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), JsonHandler)
    server.daemon_threads = True
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def main(description: str, routes: Routes) -> None:
    """Command line of a demo service: `--host`, `--port`, then serve `routes`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    serve(args.port, routes, args.host)
