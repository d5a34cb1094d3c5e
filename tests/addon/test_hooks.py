"""The addons' hooks through mitmproxy's own addon manager: a recorded exchange with its trace
context propagated, a static resource skipped and counted, each flow's comment saying which."""

from __future__ import annotations

import asyncio

from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import tflow

from testkit.support import started_addons


def test_addon_hooks_record_and_propagate(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text(f"sp_backend_url: 'file:{tmp_path / 'out.jsonl'}'\nadmin_listen: ''\n"
                      "mocks: [{path: '^/mocked$', body: from a mock}]\n")
    asyncio.run(drive_addon(str(config)))
    assert (tmp_path / "out.jsonl").read_text().count('"extract"') == 2


async def drive_addon(config: str) -> None:
    with started_addons(config, Proxyserver()) as gw:  # its options: a mock sets connection_strategy
        flow = tflow.tflow()
        await gw.through(flow, "requestheaders", "request")
        exchange = gw.flows.get(flow).exchange
        assert flow.request.headers["traceparent"] == f"00-{exchange.trace_id.hex()}-{exchange.span_id.hex()}-01"
        assert flow.request.headers["x-sp-num"] == "0"
        flow.response = tflow.tresp(headers=http.Headers(content_type="application/json"))
        await gw.hook("response", flow)
        assert flow not in gw.flows and exchange.status_code == 200 and not flow.metadata
        assert gw.metrics.registry.get_sample_value("softprobe_exchanges_recorded_total") == 1
        assert flow.comment == (f"softprobe: recorded · session {exchange.session_id} · "
                                f"exchange {exchange.span_id.hex()}")  # as mitmweb shows it

        static = tflow.tflow()
        static.request.path = "/logo.png"
        await gw.through(static, "requestheaders", "request")
        static.response = tflow.tresp()  # the upstream's answer: a successful GET of an asset
        await gw.hook("response", static)
        assert not gw.flows
        assert gw.metrics.registry.get_sample_value("softprobe_exchanges_skipped_total", {"reason": "static"}) == 1
        assert static.comment == "softprobe: not recorded (static)"

        mocked = tflow.tflow()
        mocked.request.path, mocked.comment = "/mocked", "the user's own note"
        await gw.hook("requestheaders", mocked)
        exchange = gw.flows.get(mocked).exchange
        await gw.through(mocked, "request", "response")
        assert mocked.response.text == "from a mock"
        assert mocked.comment.splitlines() == [
            "the user's own note",
            f"softprobe: answered by the gateway (mock), not a recording · session {exchange.session_id} · "
            f"exchange {exchange.span_id.hex()}"]
        await gw.lifecycle.done()
