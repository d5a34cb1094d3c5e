"""The gateway's addons, in the order mitmproxy calls them for each hook."""

from __future__ import annotations

from typing import NamedTuple

from softprobe_gateway.proxy.addon_chain import AddonChain
from softprobe_gateway.proxy.answerer import Answerer
from softprobe_gateway.proxy.connections import Connections
from softprobe_gateway.proxy.flows import Flows
from softprobe_gateway.proxy.lifecycle import Lifecycle
from softprobe_gateway.proxy.memory import Reclaim
from softprobe_gateway.proxy.recorder import Recorder


class Addons(NamedTuple):
    """`Reclaim` first: its `load` sets the worker's allocator environment. The recorder's
    `request` hook before the answerer's: a mock or a lookup needs the request's body. `chain`
    keeps mitmproxy's addons that have nothing to do out of each flow's dispatch."""

    reclaim: Reclaim
    lifecycle: Lifecycle
    connections: Connections
    recorder: Recorder
    answerer: Answerer
    chain: AddonChain


def addons() -> Addons:
    lifecycle, flows = Lifecycle(), Flows()
    return Addons(Reclaim(), lifecycle, Connections(lifecycle), Recorder(lifecycle, flows), Answerer(flows),
                  AddonChain())
