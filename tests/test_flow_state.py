"""Per-flow state through a real mitmdump: flow files written by mitmproxy's own save addon, and
a config reload in the middle of a flow."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mitmproxy import exceptions, io
from mitmproxy.test import tflow
from softprobe_gateway.config.loader import ConfigFile
from softprobe_gateway.config.schema import ConfigError
from softprobe_gateway.proxy import lifecycle
from support import (
    Addons,
    Gateway,
    HttpServer,
    OtlpBackend,
    Received,
    Reply,
    free_port,
    run_mitmdump_config,
    started_addons,
    upstream_reply,
    wait_for,
)
from test_hardening import write_atomically
from test_replay_e2e import config, recorded_count

STREAM_THRESHOLD = 1024


def test_flow_file_holds_every_flow_and_marks_gateway_answers(tmp_path: Path) -> None:
    """`mitmdump -w` beside the addon: recorded, skipped, streamed, hit and mocked flows all saved
    and readable back; what the gateway answered itself is `is_replay`, as server playback marks it."""
    db, saved = tmp_path / "sp.db", tmp_path / "flows.mitm"

    def reply(got: Received) -> Reply:
        if got.path == "/big.css":  # streamed, then skipped as a static response
            return 200, {"content-type": "text/css"}, b"x" * (4 * STREAM_THRESHOLD)
        return upstream_reply(got)

    settings = config(db, enable_inject=True, capture={"stream_threshold_bytes": STREAM_THRESHOLD},
                      mocks=[{"path": "^/mocked$", "body": "from a mock"}],
                      exemptionRules=[{"pathPatterns": ["^/exempt"]}])
    with HttpServer(reply) as upstream:
        with Gateway(settings, tmp_path, options={"save_stream_file": str(saved)}) as gw, \
                gw.client(headers={"x-sp-session-id": "w-1"}) as client:
            paths = ["/json", "/exempt", f"/big/{4 * STREAM_THRESHOLD}", "/big.css", "/mocked"]
            answers = {p: client.get(upstream.url + p) for p in paths}
            wait_for(lambda: recorded_count(db) == 3)  # /json, /big/N and the mock
            hit = client.get(upstream.url + "/json")
            assert gw.stop() == 0
    assert all(r.status_code == 200 for r in answers.values())
    assert hit.text == answers["/json"].text and len(upstream.received) == 4
    with saved.open("rb") as f:
        flows = list(io.FlowReader(f).stream())
    by_path = [(f.request.path, f.is_replay, f.metadata.get("softprobe.answered_by"), f.response.status_code)
               for f in flows]
    assert sorted(by_path, key=str) == sorted([
        ("/json", None, None, 200), ("/exempt", None, None, 200),
        (f"/big/{4 * STREAM_THRESHOLD}", None, None, 200), ("/big.css", None, None, 200),
        ("/mocked", "response", "mock", 200), ("/json", "response", "hit", 200)], key=str)


def test_a_flow_is_recorded_per_the_config_it_started_with(tmp_path: Path) -> None:
    """A reload between a flow's request and its response: the flow stays on the config (here:
    the export backend) it started with; flows after the reload use the new one."""
    admin = free_port()
    release = threading.Event()

    def reply(got: Received) -> Reply:
        if got.path == "/slow":
            release.wait(20)
        return upstream_reply(got)

    path = tmp_path / "gateway.yaml"
    with HttpServer(reply) as upstream, OtlpBackend() as first, OtlpBackend() as second:
        def settings(backend: OtlpBackend) -> dict:
            return {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20},
                    "admin_listen": f"127.0.0.1:{admin}"}

        write_atomically(path, settings(first))
        with Gateway(path, tmp_path) as gw, ThreadPoolExecutor(1) as pool:
            with gw.client() as slow_client:
                slow = pool.submit(slow_client.get, upstream.url + "/slow")
                wait_for(lambda: any(r.path == "/slow" for r in upstream.received))
                write_atomically(path, settings(second))
                wait_for(lambda: gw.metric(admin, "softprobe_config_version") == 2)
                release.set()
                assert slow.result(10).status_code == 200
            with gw.client() as client:
                assert client.get(upstream.url + "/after").status_code == 200
            first.wait_spans(1)
            second.wait_spans(1)
    assert [s.name for _, s in first.spans()] == ["/slow"]
    assert [s.name for _, s in second.spans()] == ["/after"]


def test_duplicate_yaml_key_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """At start-up one line and a non-zero exit; a reload is rejected the same way (ConfigError)."""
    text = "service_name: a\nstore:\n  path: a.db\nstore:\n  path: b.db\n"
    done = run_mitmdump_config(tmp_path, text)
    errors = [line for line in done.stdout.splitlines() if "given twice" in line]
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    assert len(errors) == 1 and "(line 4): key 'store' given twice" in errors[0]
    nested = tmp_path / "nested.yaml"
    nested.write_text("capture:\n  max_body_bytes: 5\n  max_body_bytes: 6\n")
    with pytest.raises(ConfigError, match="line 3.*'max_body_bytes' given twice"):
        ConfigFile(str(nested)).load()


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
