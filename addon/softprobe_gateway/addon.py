"""The mitmproxy addon: its hooks are the data path, in order.

requestheaders:  route -> propagate context -> decide -> start the exchange (stream big bodies)
request:         mock | lookup: a hit answers the client, a miss goes upstream (or is refused)
responseheaders: stream big or endless responses through a bounded tee
response/error:  finish the exchange -> queue it for export (never waits on the backend)
websocket_*:     optional message events, bounded per connection; export at the end
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from dataclasses import dataclass

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.proxy.mode_specs import ReverseMode

from . import options
from .capture import ADDON, HIT, MOCK, REFUSAL, BodyTee, Exchange, Message, should_stream
from .config import CONFIG_ENV, Config, ConfigError, ConfigFile, MockRule
from .interception import upstream_trust
from .metrics import AdminServer, Metrics
from .otlp import Hit, inject_request
from .routing import authority_host, listen_addresses, request_authority
from .rules import STATIC, is_static
from .runtime import Runtime
from .tracecontext import new_context, parse_tracestate, propagated_headers, session_id

log = logging.getLogger(__name__)
ANSWERED_BY = "softprobe.answered_by"  # flow.metadata key (a plain string: `mitmdump -w` saves it)
DEBUG_HEADER = "x-softprobe-injected"
# Lookup requests with bodies above this are encoded (decoded, redacted) on a thread.
INLINE_ENCODE_BYTES = 4 * 1024
RELOAD_POLL_S = 1.0
OPTIONS = options.NAMES | {"softprobe_config"}
# A replaced runtime stays open until the flows that started with it end, at most this long.
RETIRE_GRACE_S = 30.0
RETIRE_WAIT_S = 30.0  # done() waits at most this long for replaced runtimes to flush


@dataclass(slots=True, eq=False)
class FlowState:
    """The addon's state for one flow, kept by the addon (never in `flow.metadata`, which
    mitmproxy serializes): the runtime the flow started with, so a reload never splits a flow
    across two configs; its exchange (None when not recorded); its body tees while streaming."""

    runtime: Runtime
    host: str  # where the request was addressed, without port (see `routing.request_authority`)
    exchange: Exchange | None = None
    request_tee: BodyTee | None = None
    response_tee: BodyTee | None = None

    def answer(self, flow: http.HTTPFlow, response: http.Response, answered_by: str) -> None:
        """Answer the client from the gateway: marked so nothing takes it for an upstream's answer
        (mitmproxy's `is_replay`, as its server playback sets it; the exported span). The answer
        to a HEAD has no body: bytes after its head would corrupt the client's connection."""
        if flow.request.method == "HEAD":
            response.raw_content = b""  # its content-length stays: what a GET would get
        flow.response = response
        flow.is_replay = "response"
        flow.metadata[ANSWERED_BY] = answered_by
        if self.exchange is not None:
            self.exchange.answered_by = answered_by


class SoftprobeAddon:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.runtime: Runtime | None = None
        self.admin: AdminServer | None = None
        self.config_file: ConfigFile | None = None
        self.ready = False
        self.flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()
        self._watcher: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()  # replaced runtimes finishing their flows
        self._retired: weakref.WeakSet[Runtime] = weakref.WeakSet()  # closed: their exporters too
        self.stopping = False  # done() was called: no flow will finish any more

    def load(self, loader) -> None:
        loader.add_option(
            "softprobe_config", str, "",
            f"Path of the Softprobe gateway YAML config (default: ${CONFIG_ENV}, else built-in "
            "defaults). The file is watched: a valid edit is applied live, an invalid one rejected.",
        )
        options.declare(loader)

    # -- configuration -------------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        """Before `running`, only check the config: a bad one stops start-up with one line. Once
        running, a change of any softprobe option builds a new runtime, like a config reload."""
        if not updated & OPTIONS:
            return
        path = ctx.options.softprobe_config or os.environ.get(CONFIG_ENV, "")
        try:
            config_file = ConfigFile(path or None, options.overrides(ctx.options))
            current = self.config_file
            if self.ready and (config_file.path, config_file.overrides) == (current.path, current.overrides):
                return  # e.g. mitmproxy rolling back a rejected change: nothing changed
            if not self.ready:
                config_file.load()
                self.config_file = config_file
                return
            runtime = self._start(config_file.load())
        except (ConfigError, exceptions.OptionsError) as e:
            if self.ready:
                raise exceptions.OptionsError(str(e)) from None
            # At start-up, one error line is enough: mitmproxy's start-up check exits non-zero on it.
            self.config_file = None
            log.error(str(e))
            return
        self.config_file = config_file
        self._install(runtime)

    def running(self) -> None:
        """Start what has side effects (the admin port, then the export worker) only now that
        mitmproxy's listeners are bound: a start-up failure is one line, and `done` follows."""
        if self.config_file is None:  # the config was rejected: mitmproxy is exiting
            return
        try:
            runtime = self._start(self.config_file.load())
        except (ConfigError, exceptions.OptionsError) as e:
            log.error(str(e))
            return
        self._install(runtime)
        self.ready = True
        if self.config_file.path and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _start(self, config: Config) -> Runtime:
        """The admin port first: when it is taken, no worker process was started for nothing."""
        self._serve_admin(config.admin_listen)
        return self._build(config)

    def _build(self, config: Config) -> Runtime:
        listen = listen_addresses(ctx.options.mode, ctx.options.listen_host, ctx.options.listen_port)
        trust = upstream_trust(config.tls.upstream_ca, ctx.options.ssl_verify_upstream_trusted_ca)
        return Runtime(config, self.metrics, listen, trust)

    def _install(self, runtime: Runtime) -> None:
        """Swap the whole runtime for new flows; the old one retires in the background."""
        old, self.runtime = self.runtime, runtime
        runtime.exporter.publish()
        if ctx.options.ssl_verify_upstream_trusted_ca != runtime.upstream_trust:
            ctx.options.update(ssl_verify_upstream_trusted_ca=runtime.upstream_trust)
        self.metrics.config_loaded(self.config_file.source, self.config_file.digest)
        if old is not None:
            self._retiring.add(task := asyncio.get_running_loop().create_task(self._retire(old)))
            task.add_done_callback(self._retiring.discard)
        described = runtime.describe(self.config_file.source)
        if self.config_file.overrides:
            described += f"; options: {options.describe(self.config_file.overrides)}"
        log.info(described)
        if runtime.answers_locally and ctx.options.connection_strategy != "lazy":
            # A hit must not open an upstream connection: connect only when a request goes upstream.
            ctx.options.update(connection_strategy="lazy")

    async def _retire(self, old: Runtime) -> None:
        """Close a replaced runtime once the flows that started with it have ended (their
        exchanges are exported by it), or after RETIRE_GRACE_S: a flow outliving that (a long
        WebSocket or event stream) is exported by the current runtime rather than lost."""
        deadline = time.monotonic() + RETIRE_GRACE_S
        while (not self.stopping and time.monotonic() < deadline
               and any(s.runtime is old for s in list(self.flows.values()))):
            await asyncio.sleep(0.1)
        self._retired.add(old)
        await old.aclose()

    def _serve_admin(self, listen: str) -> None:
        current = f"{self.admin.address[0]}:{self.admin.address[1]}" if self.admin else ""
        if self.admin and listen != current:
            self.admin.close()
            self.admin = None
        if listen and self.admin is None:
            try:
                self.admin = AdminServer(listen, self.metrics, self._is_ready)
            except OSError as e:
                if current:  # a refused move at runtime is rolled back: keep serving where it was
                    with contextlib.suppress(OSError):
                        self.admin = AdminServer(current, self.metrics, self._is_ready)
                raise exceptions.OptionsError(
                    f"softprobe: admin_listen: cannot listen on {listen}: {e.strerror} (another "
                    "gateway running? choose another address with --set softprobe_admin=HOST:PORT)"
                ) from None

    def _is_ready(self) -> bool:
        """Started, and an export worker runs (not while a dead one is being restarted)."""
        return self.ready and self.runtime.exporter.running

    async def _watch(self) -> None:
        """Apply edits of the config file (a ConfigMap update swaps a symlink) without a restart."""
        while True:
            await asyncio.sleep(RELOAD_POLL_S)
            config_file = self.config_file
            if not await asyncio.to_thread(config_file.changed):
                continue
            try:
                fresh = ConfigFile(config_file.path, config_file.overrides)
                runtime = await asyncio.to_thread(lambda: self._build(fresh.load()))
            except ConfigError as e:
                self.metrics.config_rejected(str(e))
                log.error(f"softprobe: config reload rejected, the previous config stays in force: {e}")
                continue
            if runtime.config.admin_listen != self.runtime.config.admin_listen:
                log.warning("softprobe: admin_listen changes take effect on restart")
            self.config_file = fresh
            self._install(runtime)

    # -- the data path -------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        rt = self.runtime
        if rt is None:  # start-up with a bad config: about to exit, and traffic fails open
            return
        request = flow.request
        self.metrics.seen.inc()
        client_headers = rt.router.client_fields(request.headers.fields)
        authority = request_authority(request, flow.client_conn.proxy_mode)
        caller = rt.router.caller(request.headers)
        if refusal := rt.router.route(request):
            flow.response = http.Response.make(508, f"softprobe gateway: {refusal}\n",
                                               {"content-type": "text/plain; charset=utf-8"})
            return
        state = self.flows[flow] = FlowState(rt, authority_host(authority))
        tracestate = parse_tracestate(request.headers.get("tracestate"))
        span = new_context(tracestate, request.headers.get("traceparent"))
        session = session_id(request.headers.get, tracestate)
        for name, value in propagated_headers(span, session, tracestate,
                                              "traceparent" in request.headers,
                                              request.headers.get("x-sp-num")).items():
            request.headers[name] = value
        streamed = should_stream(request.headers, rt.config.capture.stream_threshold_bytes, response=False)
        if skip := rt.rules.skip_request(state.host, request.path, request.headers.get):
            self.metrics.skip(skip, request)
            request.stream = streamed
            return
        state.exchange = Exchange(
            trace_id=span.trace_id, span_id=span.span_id, parent_span_id=span.parent_span_id,
            session_id=session,
            service_name=rt.service_name(request.headers.get("x-sp-service-name"), caller),
            direction=rt.direction(isinstance(flow.client_conn.proxy_mode, ReverseMode)),
            path=request.path, host=authority, start_ns=int(request.timestamp_start * 1e9),
            request=Message(client_headers, None, (
                (":method", request.method), (":path", request.path),
                (":authority", authority), (":scheme", request.scheme))),
        )
        if streamed:
            request.stream = state.request_tee = BodyTee(rt.config.capture.max_body_bytes)

    async def request(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        if state is None:
            return
        rt, exchange, request = state.runtime, state.exchange, flow.request
        if state.request_tee is not None:
            exchange.request = state.request_tee.message(exchange.request.headers, exchange.request.pseudo)
            state.request_tee = None
        if exchange is not None and not request.stream:
            exchange.request.body = request.raw_content
        if flow.response is not None:  # another addon answered before us (e.g. server playback)
            if exchange is not None:
                exchange.answered_by = ADDON
            return
        if request.stream:
            return  # already on its way upstream: too late to answer it from a mock or lookup
        if mock := rt.mocks.match(request.method, state.host, request.path):
            await self._mock(flow, state, mock)
        elif exchange is not None and rt.lookup is not None:
            await self._lookup(flow, state)

    @staticmethod
    async def _mock(flow: http.HTTPFlow, state: FlowState, mock: MockRule) -> None:
        if mock.delay_ms:
            await asyncio.sleep(mock.delay_ms / 1000)
        state.answer(flow, http.Response.make(mock.status, mock.body, mock.headers), MOCK)

    async def _lookup(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Ask the backend; answer the client on a hit, forward on anything else (or refuse in strict mode)."""
        rt, exchange = state.runtime, state.exchange

        def build():
            return inject_request(exchange, rt.capture.request_attributes(exchange), rt.config.public_key)

        small = len(exchange.request.body or b"") <= INLINE_ENCODE_BYTES
        lookup_body = build() if small else await asyncio.to_thread(build)
        outcome, hit = await rt.lookup(lookup_body)
        if hit is not None:
            state.answer(flow, self._hit_response(hit, rt.config.lookup.debug_header, flow.request), HIT)
        elif rt.config.lookup.on_miss == "reject":
            state.answer(flow, http.Response.make(
                404 if outcome == "miss" else 503,
                f"softprobe strict replay: no recorded answer for {flow.request.method} "
                f"{exchange.host}{flow.request.path} (lookup {outcome})\n",
                {"content-type": "text/plain; charset=utf-8", "x-softprobe-lookup": outcome}), REFUSAL)

    @staticmethod
    def _hit_response(hit: Hit, debug: bool, request: http.Request) -> http.Response:
        """The recorded answer, its fields as they were sent; its trailers to an HTTP/2 client
        (mitmproxy 11 has no HTTP/1 trailers: an HTTP/1 client gets the answer without them).
        Recorded bodies are decoded: sent as they are, without their content-encoding, except to
        a HEAD, which gets the recorded head whole (no body to decode, the GET's length)."""
        head = request.method == "HEAD"
        headers = [(k.encode(), v.encode()) for k, v in hit.headers if head or k != "content-encoding"]
        if debug:
            headers.append((DEBUG_HEADER.encode(), b"true"))
        response = http.Response.make(hit.status, b"", headers)
        response.raw_content = hit.body
        response.headers["content-length"] = (hit.content_length or "0") if head else str(len(hit.body))
        if request.is_http2 and hit.trailers:
            response.trailers = http.Headers([(k.encode(), v.encode()) for k, v in hit.trailers])
        return response

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """`tls.passthrough_hosts` (pinned, mutual TLS) keep their own TLS: relayed, not recorded."""
        if self.runtime is not None and self.runtime.passthrough(data.client_hello.sni,
                                                                 data.context.server.address):
            data.ignore_connection = True

    def server_connect(self, data) -> None:
        """Honour a TLS upstream's `connect_address` (SNI and verification keep the real host)."""
        if self.runtime is not None and data.server.address is not None:
            if address := self.runtime.router.connect_address(data.server.address):
                data.server.address = address

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        if state is None or flow.response.stream:
            return
        capture = state.runtime.config.capture
        if should_stream(flow.response.headers, capture.stream_threshold_bytes, response=True):
            if state.exchange is None:
                flow.response.stream = True
            else:
                flow.response.stream = state.response_tee = BodyTee(capture.max_body_bytes)

    def response(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        if state is None or state.exchange is None:
            self.flows.pop(flow, None)
            return
        exchange, response = state.exchange, flow.response
        if flow.is_replay == "response" and not exchange.answered_by:  # one answering after us
            exchange.answered_by = ADDON
        pseudo = ((":status", str(response.status_code)),)
        trailers = response.trailers.fields if response.trailers else ()
        tee = state.response_tee
        exchange.response = (tee.message(response.headers.fields, pseudo, trailers) if tee is not None
                             else Message(response.headers.fields, response.raw_content, pseudo,
                                          trailers=trailers))
        content_type = response.headers.get("content-type")
        if not exchange.answered_by and is_static(flow.request.method, response.status_code,
                                                  flow.request.path, content_type,
                                                  exchange.response.size or len(exchange.response.body or b"")):
            del self.flows[flow]
            self.metrics.skip(STATIC, flow.request, content_type)
            return
        exchange.status_code = response.status_code
        exchange.end_ns = int((response.timestamp_end or time.time()) * 1e9)
        if flow.websocket is None:  # a WebSocket's exchange is exported when it closes
            self._record(self.flows.pop(flow))

    def error(self, flow: http.HTTPFlow) -> None:
        state = self.flows.pop(flow, None)
        if state is None or state.exchange is None:
            return
        state.exchange.error = flow.error.msg if flow.error else "exchange failed"
        state.exchange.end_ns = time.time_ns()
        self._record(state)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        messages = flow.websocket.messages
        state = self.flows.get(flow)
        if state is not None and state.exchange is not None:
            state.runtime.capture.websocket_event(state.exchange, messages[-1])
        messages.clear()  # mitmproxy would keep every message for the connection's life

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        state = self.flows.pop(flow, None)
        if state is not None and state.exchange is not None:
            state.exchange.end_ns = int((flow.websocket.timestamp_end or time.time()) * 1e9)
            self._record(state)

    def _record(self, state: FlowState) -> None:
        """Queue the exchange on the exporter of the runtime the flow started with (the current
        one when that has retired)."""
        runtime = self.runtime if state.runtime in self._retired else state.runtime
        if runtime.exporter.submit(state.exchange):
            self.metrics.recorded.inc()

    async def done(self) -> None:
        self.stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self.runtime is not None:
            await self.runtime.aclose()
        if self._retiring:  # replaced runtimes still flushing: each is bounded by its own timeout
            await asyncio.wait(self._retiring, timeout=RETIRE_WAIT_S)
        if self.admin is not None:
            self.admin.close()
