"""Per-flow state through mitmproxy's test context: flows held weakly, a replaced runtime retired
when its last flow ends (or after the grace), `done` waiting for it, gauges after a rejected reload."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import tflow
from softprobe_gateway.proxy import lifecycle

from testkit.support import Addons, OtlpBackend, started_addons


def gateway_yaml(path: Path, backend_url: str, **settings) -> Path:
    path.write_text(json.dumps({"sp_backend_url": backend_url, "admin_listen": "", **settings}))
    return path


async def recorded(gw: Addons, path: str) -> tflow.HTTPFlow:
    """A flow through the request hooks only (it stays open), then answered by the upstream."""
    flow = tflow.tflow()
    flow.request.path = path
    await gw.through(flow, "requestheaders", "request")
    flow.response = tflow.tresp()
    return flow


def test_a_flow_that_ends_without_a_final_hook_leaves_no_state(tmp_path: Path) -> None:
    """A flow mitmproxy drops without `response`/`error` (e.g. killed by another addon) takes its
    state with it: the addon holds flows weakly."""
    config_path = gateway_yaml(tmp_path / "g.yaml", f"file:{tmp_path / 'out.jsonl'}")

    async def drive() -> None:
        with started_addons(config_path) as gw:
            flow = tflow.tflow()
            await gw.hook("requestheaders", flow)
            runtime = gw.flows.get(flow).runtime
            assert gw.flows.get(flow).exchange is not None and not flow.metadata
            del flow
            gc.collect()
            assert not gw.flows and runtime._flows == 0  # its hold on the runtime went with it
            await gw.lifecycle.done()

    asyncio.run(drive())


def test_a_flow_outliving_its_retired_runtime_is_exported_by_the_current_one(tmp_path: Path,
                                                                             monkeypatch) -> None:
    """A replaced runtime waits for its flows at most RETIRE_GRACE_S; a flow ending later (a long
    WebSocket or event stream) is exported by the current runtime instead of being dropped."""
    monkeypatch.setattr(lifecycle, "RETIRE_GRACE_S", 0.2)
    first, second = (gateway_yaml(tmp_path / f"{name}.yaml", f"file:{tmp_path / name}.jsonl")
                     for name in ("first", "second"))

    async def drive() -> None:
        with started_addons(first) as gw:
            short, long = await recorded(gw, "/short"), await recorded(gw, "/long")
            gw.configure(softprobe_config=str(second))
            await gw.hook("response", short)  # within the grace: the runtime it started with
            await asyncio.wait(set(gw.lifecycle._retiring))
            await gw.hook("response", long)
            await gw.lifecycle.done()

    asyncio.run(drive())
    assert '"/short"' in first.with_suffix(".jsonl").read_text()
    assert '"/long"' in second.with_suffix(".jsonl").read_text()


def test_done_waits_for_a_replaced_runtime_still_flushing(tmp_path: Path) -> None:
    """A reload, then a stop while the replaced runtime still exports its queue to a slow
    backend: `done` returns only once that runtime's exchange has been accepted."""
    def slow_to_accept(attempt: int) -> int:
        time.sleep(0.5)  # the backend's own slowness, not a wait of the test
        return 200

    with OtlpBackend(export_status=slow_to_accept) as old, OtlpBackend() as new:
        first = gateway_yaml(tmp_path / "first.yaml", old.url, export={"flush_interval_ms": 60_000})
        second = gateway_yaml(tmp_path / "second.yaml", new.url)

        async def drive() -> None:
            with started_addons(first) as gw:
                await gw.hook("response", await recorded(gw, "/queued"))  # queued for a minute
                gw.configure(softprobe_config=str(second))
                await gw.lifecycle.done()
                # not `spans()`: it would wait for the backend's lock, held while it accepts
                assert len(old.batches) == 1

        asyncio.run(drive())
    assert [span.name for _, span in old.spans()] == ["/queued"]


def test_a_reload_rejected_after_its_worker_started_leaves_the_gauges_on_the_current_runtime(
        tmp_path: Path) -> None:
    """A runtime that fails after its exporter was built (lookups against a `file:` backend) is
    rejected; `softprobe_export_worker_up` keeps showing the runtime still in force."""
    good = gateway_yaml(tmp_path / "good.yaml", f"file:{tmp_path / 'out.jsonl'}")
    bad = gateway_yaml(tmp_path / "bad.yaml", f"file:{tmp_path / 'out.jsonl'}", enable_inject=True)

    async def drive() -> None:
        with started_addons(good) as gw:
            worker_up = lambda: gw.metrics.registry.get_sample_value("softprobe_export_worker_up")
            assert worker_up() == 1
            with pytest.raises(exceptions.OptionsError, match="a file: backend cannot answer lookups"):
                gw.configure(softprobe_config=str(bad))
            assert worker_up() == 1 and gw.lifecycle.ready()
            await gw.lifecycle.done()

    asyncio.run(drive())
