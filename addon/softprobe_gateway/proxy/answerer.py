"""The answerer addon: a request the gateway answers itself, never the upstream: a mock, a
lookup hit (a control session's rule's, after its latency), or a strict replay's refusal (the
gateway's own, or a control session's strict miss the backend answered). It runs after the
recorder's `request` hook, once the request's body is in its exchange; anything it answers is
marked (`FlowState.answer`)."""

from __future__ import annotations

import asyncio

from mitmproxy import http

from softprobe_gateway.capture.exchange import HIT, MOCK, REFUSAL
from softprobe_gateway.config.schema import MockRule
from softprobe_gateway.otlp import Hit, inject_request
from softprobe_gateway.proxy.flows import Flows, FlowState

DEBUG_HEADER = "x-softprobe-injected"
# Lookup requests with bodies above this are encoded (decoded, redacted) on a thread.
INLINE_ENCODE_BYTES = 4 * 1024


class Answerer:
    def __init__(self, flows: Flows) -> None:
        self.flows = flows

    async def request(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        if state is None or flow.response is not None:  # not ours, or another addon answered
            return
        if flow.request.stream:
            return  # already on its way upstream: too late to answer it from a mock or lookup
        rt, request = state.runtime, flow.request
        if mock := rt.mocks.match(request.method, state.host, request.path):
            await self._mock(flow, state, mock)
        elif state.exchange is not None and rt.lookup is not None:
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
            if hit.delay_ms:
                await asyncio.sleep(hit.delay_ms / 1000)
            response = self._hit_response(hit, rt.config.lookup.debug_header, flow.request)
            state.answer(flow, response, REFUSAL if hit.refusal else HIT)
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
