"""The admin endpoint: `/healthz`, `/readyz` and the Prometheus `/metrics`, on a thread of its
own (`admin_listen`), so a scrape never waits on the proxy's event loop.

`/readyz` answers 503 while no export worker runs; its body's second line says the export
path's state (the worker, the backend and whether it could be reached). A backend that is down
does not make the gateway unready: traffic flows without it (fail open), and what cannot be
exported is counted."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from softprobe_gateway.metrics import Metrics

log = logging.getLogger(__name__)


class _AdminHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: tuple) -> None:
        """One line, not socketserver's traceback on the proxy's output; a probe that hung up
        before its answer was written is no error at all."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            log.warning(f"softprobe: admin endpoint: {type(error).__name__}: {error} (client {client_address[0]})")


class AdminServer:
    """`/healthz`, `/readyz` and `/metrics` on their own port, served from a daemon thread."""

    def __init__(self, listen: str, metrics: Metrics, ready: Callable[[], bool],
                 export_state: Callable[[], str]) -> None:
        host, _, port = listen.rpartition(":")
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok = ready()
                    body = f"{'ready' if ok else 'not ready'}\n{export_state()}\n"
                    self._send(200 if ok else 503, body.encode())
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # probes every few seconds would flood the proxy's log

        self.server = _AdminHttpServer((host.strip("[]"), int(port)), Handler)
        self.address = self.server.server_address
        threading.Thread(target=self.server.serve_forever, name="softprobe-admin",
                         daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
