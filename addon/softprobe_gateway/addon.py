"""The mitmproxy addon: its hooks are the data path, in order.

request:  decide -> propagate context -> (mock | lookup: hit answers, miss forwards)
response: finish the exchange -> queue it for export (never waits on the backend)
error:    export the failed exchange
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode

from .capture import Exchange, Message
from .config import CONFIG_ENV, ConfigError, MockRule, load_config
from .metrics import AdminServer, Metrics
from .otlp import Hit, inject_request
from .rules import STATIC, is_static_response
from .routing import listen_addresses
from .runtime import Runtime
from .tracecontext import new_context, parse_tracestate, propagated_headers, session_id

log = logging.getLogger(__name__)
# httpx logs every request at INFO: one line per export and lookup would flood the proxy's log.
logging.getLogger("httpx").setLevel(logging.WARNING)
EXCHANGE = "softprobe.exchange"  # flow.metadata key
DEBUG_HEADER = "x-softprobe-injected"
# Lookup bodies above this are encoded on a thread rather than the event loop.
INLINE_ENCODE_BYTES = 64 * 1024


class SoftprobeAddon:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.runtime: Runtime | None = None
        self.admin: AdminServer | None = None
        self.ready = False

    def load(self, loader) -> None:
        loader.add_option(
            "softprobe_config", str, "",
            f"Path of the Softprobe gateway YAML config (default: ${CONFIG_ENV}, else built-in defaults).",
        )

    def configure(self, updated: set[str]) -> None:
        if "softprobe_config" not in updated and self.runtime is not None:
            return
        path = ctx.options.softprobe_config or os.environ.get(CONFIG_ENV, "")
        try:
            config = load_config(path or None)
            listen = listen_addresses(ctx.options.mode, ctx.options.listen_host, ctx.options.listen_port)
            runtime = Runtime(config, self.metrics, listen)
        except ConfigError as e:
            if self.ready:
                raise exceptions.OptionsError(str(e)) from None
            # At start-up, one error line is enough: mitmproxy's start-up check exits non-zero on it.
            log.error(str(e))
            return
        old, self.runtime = self.runtime, runtime
        self.metrics.config_version.inc()
        if old is not None:
            old.close()
        self._serve_admin(config.admin_listen)
        if runtime.answers_locally and ctx.options.connection_strategy != "lazy":
            # A hit must not open an upstream connection: connect only when a request goes upstream.
            ctx.options.update(connection_strategy="lazy")
        log.info(runtime.describe(path or "<defaults>"))

    def _serve_admin(self, listen: str) -> None:
        current = self.admin.address if self.admin else None
        if self.admin and (not listen or listen != f"{current[0]}:{current[1]}"):
            self.admin.close()
            self.admin = None
        if listen and self.admin is None:
            try:
                self.admin = AdminServer(listen, self.metrics, lambda: self.ready)
            except OSError as e:
                raise exceptions.OptionsError(f"admin_listen: cannot listen on {listen}: {e.strerror}")

    def running(self) -> None:
        self.ready = True

    def server_connect(self, data) -> None:
        """Honour a TLS upstream's `connect_address` (SNI and verification keep the real host)."""
        if self.runtime is not None and data.server.address is not None:
            if address := self.runtime.router.connect_address(data.server.address):
                data.server.address = address

    async def request(self, flow: http.HTTPFlow) -> None:
        rt = self.runtime
        if rt is None:  # start-up with a bad config: about to exit, and traffic fails open
            return
        request = flow.request
        self.metrics.seen.inc()
        caller = rt.router.caller(request.headers)
        authority = request.host_header or f"{request.host}:{request.port}"
        if refusal := rt.router.route(request):
            flow.response = http.Response.make(508, f"softprobe gateway: {refusal}\n",
                                               {"content-type": "text/plain; charset=utf-8"})
            return
        client_headers = request.headers.fields  # immutable snapshot, before propagation
        tracestate = parse_tracestate(request.headers.get("tracestate"))
        span = new_context(tracestate, request.headers.get("traceparent"))
        session = session_id(request.headers.get, tracestate)
        for name, value in propagated_headers(span, session, tracestate,
                                              "traceparent" in request.headers,
                                              request.headers.get("x-sp-num")).items():
            request.headers[name] = value
        exchange = None
        if skip := rt.rules.skip_request(request.pretty_host, request.path, request.headers.get):
            self.metrics.skipped.labels(skip).inc()
        else:
            exchange = Exchange(
                trace_id=span.trace_id, span_id=span.span_id, parent_span_id=span.parent_span_id,
                session_id=session,
                service_name=rt.service_name(request.headers.get("x-sp-service-name"), caller),
                direction=rt.direction(isinstance(flow.client_conn.proxy_mode, ReverseMode)),
                path=request.path, host=authority, start_ns=int(request.timestamp_start * 1e9),
                request=Message(client_headers, request.raw_content, (
                    (":method", request.method), (":path", request.path),
                    (":authority", authority), (":scheme", request.scheme))),
            )
            flow.metadata[EXCHANGE] = exchange
        if mock := rt.mocks.match(request.method, request.pretty_host, request.path):
            await self._mock(flow, mock, exchange)
        elif exchange is not None and rt.lookup is not None:
            await self._lookup(flow, exchange, rt)

    @staticmethod
    async def _mock(flow: http.HTTPFlow, mock: MockRule, exchange: Exchange | None) -> None:
        if mock.delay_ms:
            await asyncio.sleep(mock.delay_ms / 1000)
        flow.response = http.Response.make(mock.status, mock.body, mock.headers)
        if exchange is not None:
            exchange.injected = True

    async def _lookup(self, flow: http.HTTPFlow, exchange: Exchange, rt: Runtime) -> None:
        """Ask the backend; answer the client on a hit, forward on anything else (or refuse in strict mode)."""
        def build():
            return inject_request(exchange, rt.capture.request_attributes(exchange), rt.public_key)

        small = len(exchange.request.body or b"") <= INLINE_ENCODE_BYTES
        lookup_body = build() if small else await asyncio.to_thread(build)
        outcome, hit = await rt.lookup(lookup_body)
        if hit is not None:
            self._answer(flow, exchange, hit, rt.config.lookup.debug_header)
        elif rt.config.lookup.on_miss == "reject":
            flow.response = http.Response.make(
                404 if outcome == "miss" else 503,
                f"softprobe strict replay: no recorded answer for {flow.request.method} "
                f"{exchange.host}{flow.request.path} (lookup {outcome})\n",
                {"content-type": "text/plain; charset=utf-8", "x-softprobe-lookup": outcome})

    @staticmethod
    def _answer(flow: http.HTTPFlow, exchange: Exchange, hit: Hit, debug: bool) -> None:
        headers = [(k.encode(), v.encode()) for k, v in hit.headers if k != "content-encoding"]
        if debug:
            headers.append((DEBUG_HEADER.encode(), b"true"))
        response = http.Response.make(hit.status, b"", headers)
        response.raw_content = hit.body  # recorded bodies are decoded: send them as they are
        response.headers["content-length"] = str(len(hit.body))
        flow.response = response
        exchange.injected = True

    def response(self, flow: http.HTTPFlow) -> None:
        exchange: Exchange | None = flow.metadata.pop(EXCHANGE, None)
        if exchange is None:
            return
        response = flow.response
        if not exchange.injected and is_static_response(response.headers.get("content-type")):
            self.metrics.skipped.labels(STATIC).inc()
            return
        exchange.response = Message(response.headers.fields, response.raw_content,
                                    ((":status", str(response.status_code)),))
        exchange.status_code = response.status_code
        exchange.end_ns = int((response.timestamp_end or time.time()) * 1e9)
        self._record(exchange)

    def error(self, flow: http.HTTPFlow) -> None:
        exchange: Exchange | None = flow.metadata.pop(EXCHANGE, None)
        if exchange is None:
            return
        exchange.error = flow.error.msg if flow.error else "exchange failed"
        exchange.end_ns = time.time_ns()
        self._record(exchange)

    def _record(self, exchange: Exchange) -> None:
        if self.runtime.exporter.submit(exchange):
            self.metrics.recorded.inc()

    async def done(self) -> None:
        if self.runtime is not None:
            await self.runtime.aclose()
        if self.admin is not None:
            self.admin.close()
