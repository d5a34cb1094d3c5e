"""A stop that drains (SIGTERM, SIGINT, a rolling update): mitmproxy 11 runs the addons' `done`
while it still serves every connection and keeps its listeners open until the process exits, so
the gateway's `done` does the draining itself: it closes the proxy server's listeners (no new
connection), asks HTTP/1 clients to close their connection after each answer (`Connection:
close`; HTTP/2 has no such header and mitmproxy sends no GOAWAY from an addon), and waits for the
flows in flight to end, so that their exchanges are queued before the export is flushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mitmproxy import ctx, http

POLL_S = 0.02
# Connections that stay open and idle this long after the last flow ended are a client's pool
# (an Envoy sidecar keeps them for an hour): the drain does not wait for them.
QUIET_S = 0.5


async def stop_listening() -> None:
    """Close mitmproxy's listeners; the connections they accepted keep being served."""
    proxyserver = ctx.master.addons.get("proxyserver")
    if proxyserver is not None and len(proxyserver.servers):
        await proxyserver.servers.update([])


def open_connections() -> int:
    """Client connections mitmproxy still serves."""
    proxyserver = ctx.master.addons.get("proxyserver")
    return len(proxyserver.connections) if proxyserver is not None else 0


def drained(in_flight: int, connections: int, quiet_s: float) -> bool:
    """Whether the drain is over: no flow in flight, and no client connection open or none that
    started a flow for QUIET_S."""
    return in_flight == 0 and (connections == 0 or quiet_s >= QUIET_S)


async def wait_drained(in_flight: Callable[[], int], timeout_s: float) -> int:
    """Wait until `drained` or `timeout_s`; the flows still in flight then (they are not waited
    for: an exchange that ends later is counted as lost at shutdown, if its client is answered)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    quiet_since: float | None = None
    while True:
        flows, now = in_flight(), loop.time()
        quiet_since = None if flows else quiet_since if quiet_since is not None else now
        if now >= deadline or drained(flows, open_connections(), now - quiet_since if flows == 0 else 0.0):
            return flows
        await asyncio.sleep(POLL_S)


def close_after(flow: http.HTTPFlow) -> None:
    """Ask an HTTP/1 client to close its connection once this answer is sent (its next request
    would find no listener, and go to another replica)."""
    if flow.response is not None and not (flow.request.is_http2 or flow.request.is_http3):
        flow.response.headers["connection"] = "close"
