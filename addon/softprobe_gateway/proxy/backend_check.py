"""One look at an HTTP backend when a config is loaded: its name resolved, a TCP connection
opened and, for https, the TLS handshake done as the export does it. A backend that is down or
mistyped is named in one log line at start-up rather than at the first export, and `/readyz`
says so. Only a look: nothing is sent (an export or lookup the backend would count), start-up is
never stopped (traffic does not wait on the backend), and it runs on a thread of its own."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from softprobe_gateway.backends.contract import cause
from softprobe_gateway.tls import client_context

log = logging.getLogger(__name__)
UNCHECKED = "not checked yet"
REACHABLE = "reachable"


def reach(url: str, timeout_s: float) -> str:
    """REACHABLE, or why `url`'s host cannot be reached (`gaierror: ...`, `ConnectionRefusedError:
    ...`, `SSLCertVerificationError: ...`)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s) as connection:
            if parts.scheme == "https":
                client_context().wrap_socket(connection, server_hostname=parts.hostname).close()
    except (OSError, ValueError) as e:
        return f"not reachable ({cause(e)})"
    return REACHABLE


def check_in_background(url: str, timeout_s: float, report: Callable[[str], None]) -> None:
    """`reach(url)` on a daemon thread; `report` gets the outcome, and one warning line is logged
    when the backend cannot be reached."""

    def run() -> None:
        state = reach(url, timeout_s)
        if state != REACHABLE:
            log.warning(f"softprobe: backend {url} is {state}: the gateway runs on, exchanges wait "
                        "in the export queue and are retried, then dropped and counted "
                        "(softprobe_export_dropped_spans_total)")
        report(state)

    threading.Thread(target=run, name="softprobe-backend-check", daemon=True).start()
