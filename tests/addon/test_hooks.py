"""The addons' hooks through mitmproxy's own addon manager: a recorded exchange with its trace
context propagated, a static resource skipped and counted."""

from __future__ import annotations

import asyncio

from mitmproxy import http
from mitmproxy.test import tflow

from testkit.support import started_addons


def test_addon_hooks_record_and_propagate(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text(f"sp_backend_url: 'file:{tmp_path / 'out.jsonl'}'\nadmin_listen: ''\n")
    asyncio.run(drive_addon(str(config)))
    assert (tmp_path / "out.jsonl").read_text().count('"extract"') == 1


async def drive_addon(config: str) -> None:
    with started_addons(config) as gw:
        flow = tflow.tflow()
        await gw.through(flow, "requestheaders", "request")
        exchange = gw.flows.get(flow).exchange
        assert flow.request.headers["traceparent"] == f"00-{exchange.trace_id.hex()}-{exchange.span_id.hex()}-01"
        assert flow.request.headers["x-sp-num"] == "0"
        flow.response = tflow.tresp(headers=http.Headers(content_type="application/json"))
        await gw.hook("response", flow)
        assert flow not in gw.flows and exchange.status_code == 200 and not flow.metadata
        assert gw.metrics.registry.get_sample_value("softprobe_exchanges_recorded_total") == 1

        static = tflow.tflow()
        static.request.path = "/logo.png"
        await gw.through(static, "requestheaders", "request")
        static.response = tflow.tresp()  # the upstream's answer: a successful GET of an asset
        await gw.hook("response", static)
        assert not gw.flows
        assert gw.metrics.registry.get_sample_value("softprobe_exchanges_skipped_total", {"reason": "static"}) == 1
        await gw.lifecycle.done()
