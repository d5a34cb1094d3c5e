"""The gateway's state for each flow: one object per flow, held by its addons, never in
`flow.metadata` (mitmproxy serializes that: `mitmdump -w` would fail on an object)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from mitmproxy import http

from softprobe_gateway.capture.exchange import BodyTee, Exchange
from softprobe_gateway.proxy import flow_notes
from softprobe_gateway.proxy.runtime import Runtime

ANSWERED_BY = "softprobe.answered_by"  # flow.metadata key (a plain string: `mitmdump -w` saves it)


@dataclass(slots=True, eq=False)
class FlowState:
    """One flow: the runtime it started with, so a reload never splits a flow across two
    configs; where it was addressed; its exchange (None when not recorded); its body tees."""

    runtime: Runtime
    host: str  # where the request was addressed, without port (see `routing.request_authority`)
    release: weakref.finalize  # ends the flow's hold on its runtime, once (also when it is dropped)
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
        else:  # a recorded one says so when it is recorded
            flow_notes.note(flow, flow_notes.answered(answered_by))


class Flows:
    """The flows in progress, held weakly: a flow mitmproxy drops without a final hook takes its
    state with it. Each holds its runtime open (`Runtime.hold`) until it ends or is dropped."""

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()

    def start(self, flow: http.HTTPFlow, runtime: Runtime, host: str) -> FlowState:
        runtime.hold()
        state = self._states[flow] = FlowState(runtime, host, weakref.finalize(flow, runtime.release))
        return state

    def get(self, flow: http.HTTPFlow) -> FlowState | None:
        return self._states.get(flow)

    def end(self, flow: http.HTTPFlow) -> FlowState | None:
        state = self._states.pop(flow, None)
        if state is not None:
            state.release()
        return state

    def __contains__(self, flow: http.HTTPFlow) -> bool:
        return flow in self._states

    def __len__(self) -> int:
        return len(self._states)
