"""The recorder addon: the data path from a request's head to its exchange queued for export.

requestheaders:  route -> sample -> propagate context -> decide -> start the exchange
request:         the request's body into the exchange
responseheaders: ask the client to close when a stop drains; stream big or endless responses
                 through a bounded tee
response/error:  finish the exchange -> queue it for export (never waits on the backend)
websocket_*:     optional message events, bounded per connection; export at the end

The answerer (mocks, lookups, strict refusals) runs between `request` and the upstream.
"""

from __future__ import annotations

import time

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from softprobe_gateway.capture.exchange import ADDON, BodyTee, Exchange, Message, should_stream
from softprobe_gateway.decisions.head import header_map
from softprobe_gateway.decisions.rules import STATIC, is_static
from softprobe_gateway.decisions.sampling import OVER_BUDGET, SAMPLED_OUT
from softprobe_gateway.decisions.tracecontext import new_context, parse_tracestate, propagated_headers, with_sampled
from softprobe_gateway.decisions.tracecontext import session as session_of
from softprobe_gateway.proxy import drain, flow_notes
from softprobe_gateway.proxy.flows import Flows, FlowState
from softprobe_gateway.proxy.lifecycle import Lifecycle
from softprobe_gateway.proxy.routing import authority_host, request_authority


class Recorder:
    def __init__(self, lifecycle: Lifecycle, flows: Flows) -> None:
        self.lifecycle, self.flows, self.metrics = lifecycle, flows, lifecycle.metrics

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        rt = self.lifecycle.runtime
        if rt is None:  # start-up with a bad config: about to exit, and traffic fails open
            return
        request = flow.request
        self.metrics.seen.inc()
        arrived = request.headers.fields  # the client's fields: a tuple, which routing replaces, never changes
        head = header_map(arrived)  # what every decision below reads, in one pass
        authority = request_authority(request, flow.client_conn.proxy_mode, head)
        if refusal := rt.router.route(request, head):
            flow.response = http.Response.make(508, f"softprobe gateway: {refusal}\n",
                                               {"content-type": "text/plain; charset=utf-8"})
            flow_notes.note(flow, f"refused: {refusal}")
            return
        state = self.flows.start(flow, rt, authority_host(authority))
        path = request.path  # decoded at each read
        tracestate = parse_tracestate(head.get("tracestate"))
        span = new_context(tracestate, head.get("traceparent"))
        session, explicit = session_of(head.get, tracestate)
        sampled = rt.sampler.sampled(state.host, path, session, explicit, span.parent_sampled)
        span = with_sampled(span, sampled)  # passed on: the next gateway decides the same
        request.headers.fields = rt.router.forwarded(request.headers.fields, propagated_headers(
            span, session, tracestate, "traceparent" in head, head.get("x-sp-num")), request.http_version)
        streamed = should_stream(head, rt.config.capture.stream_threshold_bytes, response=False)
        skip = rt.rules.skip_request(state.host, path, head.get)
        if skip is None and not sampled:
            skip = SAMPLED_OUT
        elif skip is None and not rt.sampler.admit():
            skip = OVER_BUDGET
        if skip:
            self._skip(flow, skip)
            request.stream = streamed
            return
        state.exchange = Exchange(
            trace_id=span.trace_id, span_id=span.span_id, parent_span_id=span.parent_span_id,
            session_id=session,
            service_name=rt.service_name(head.get("x-sp-service-name"), rt.router.caller(head)),
            direction=rt.direction(isinstance(flow.client_conn.proxy_mode, ReverseMode)),
            path=path, host=authority, start_ns=int(request.timestamp_start * 1e9),
            request=Message(rt.router.client_fields(arrived), None, (
                (":method", request.method), (":path", path),
                (":authority", authority), (":scheme", request.scheme))),
        )
        if streamed:
            request.stream = state.request_tee = BodyTee(rt.config.capture.max_body_bytes)

    def request(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        if state is None or state.exchange is None:
            return
        exchange = state.exchange
        if state.request_tee is not None:
            exchange.request = state.request_tee.message(exchange.request.headers, exchange.request.pseudo)
            state.request_tee = None
        elif not flow.request.stream:
            exchange.request.body = flow.request.raw_content
        if flow.response is not None:  # another addon answered before us (e.g. server playback)
            exchange.answered_by = ADDON

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.lifecycle.draining:  # every flow, recorded or not: its client is asked to close
            drain.close_after(flow)
        state = self.flows.get(flow)
        if state is None or flow.response.stream:
            return
        capture = state.runtime.config.capture
        if should_stream(header_map(flow.response.headers.fields), capture.stream_threshold_bytes, response=True):
            if state.exchange is None:
                flow.response.stream = True
            else:
                flow.response.stream = state.response_tee = BodyTee(capture.max_body_bytes)

    def response(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        if state is None or state.exchange is None:
            self.flows.end(flow)
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
            self.flows.end(flow)
            self._skip(flow, STATIC, content_type)
            return
        if not exchange.answered_by and not state.runtime.sampler.admit_bytes(exchange.size):
            self.flows.end(flow)
            self._skip(flow, OVER_BUDGET)
            return
        exchange.status_code = response.status_code
        exchange.end_ns = int((response.timestamp_end or time.time()) * 1e9)
        if flow.websocket is None:  # a WebSocket's exchange is exported when it closes
            self._record(flow, self.flows.end(flow))

    def error(self, flow: http.HTTPFlow) -> None:
        state = self.flows.end(flow)
        if state is None or state.exchange is None:
            return
        state.exchange.error = flow.error.msg if flow.error else "exchange failed"
        state.exchange.end_ns = time.time_ns()
        self._record(flow, state)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        messages = flow.websocket.messages
        state = self.flows.get(flow)
        if state is not None and state.exchange is not None:
            state.runtime.capture.websocket_event(state.exchange, messages[-1])
        messages.clear()  # mitmproxy would keep every message for the connection's life

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        state = self.flows.end(flow)
        if state is not None and state.exchange is not None:
            state.exchange.end_ns = int((flow.websocket.timestamp_end or time.time()) * 1e9)
            self._record(flow, state)

    def _skip(self, flow: http.HTTPFlow, reason: str, content_type: str | None = None) -> None:
        self.metrics.skip(reason, flow.request, content_type)
        flow_notes.note(flow, flow_notes.skipped(reason))

    def _record(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Queue the exchange on the exporter of the runtime the flow started with (the current
        one when that has retired and closed)."""
        runtime = self.lifecycle.runtime if state.runtime.closed else state.runtime
        if runtime.exporter.submit(state.exchange):
            self.metrics.recorded.inc()
            flow_notes.note(flow, flow_notes.recorded(state.exchange))
        else:
            flow_notes.note(flow, flow_notes.lost(state.exchange))
