"""Memory: the gateway inside the pod's own limits (a cgroup with the Deployment's memory and CPU
limits) under 1 MiB uploads and downloads at saturation, with a healthy and a black-holed
backend; the Reclaim addon that frees finished flows; the allocator settings everywhere.

The short version of `make bench`'s memory mode (60 s per case there): each case runs
`SECONDS` of wrk with 8 connections. Asserted per case: not OOM-killed, no failed client
request, the group's peak below the limit, and the RSS of the last third of the run not above
the first third's plus `bench.memory.FLAT_MARGIN_MB`.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import weakref
from pathlib import Path

import pytest
from mitmproxy.test import tflow
from softprobe_gateway.capture.exchange import BodyTee
from softprobe_gateway.proxy.memory import ALLOCATOR_ENV, Reclaim

from bench import harness, memory
from testkit.cgroup import deployment_limits, quantity_bytes, quantity_millis, unavailable
from testkit.support import ADDON, BIN, LOOPBACK, ROOT, free_port, wait_for, wait_port

SECONDS = 10
WARMUP_S = 2

needs_cgroup = pytest.mark.skipif(bool(unavailable()), reason=f"no limited cgroup: {unavailable()}")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (make test installs it)")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The benchmark's upstream and backend (with its black hole), each its own process."""
    servers = harness.Servers(tmp_path_factory.mktemp("memory"))
    yield servers
    servers.close()


def test_kubernetes_quantities():
    assert [quantity_bytes(q) for q in ("512Mi", "1Gi", "300M", "1048576")] == [
        512 * 2**20, 2**30, 300 * 10**6, 2**20]
    assert [quantity_millis(q) for q in ("1", "500m", "1.5", 2)] == [1000, 500, 1500, 2000]


@needs_cgroup
@needs_wrk
@pytest.mark.timeout(SECONDS + 45)
@pytest.mark.parametrize("case", memory.CASES, ids=lambda c: c.name.replace(", backend ", "-"))
def test_1mib_bodies_at_saturation_stay_within_the_deployments_limits(case, servers, tmp_path):
    outcome = memory.run_case(case, servers.rig, tmp_path, deployment_limits(), SECONDS,
                               warmup_s=WARMUP_S)
    assert outcome.requests > SECONDS * 10, outcome  # saturation: at least 10 MiB/s went through
    assert outcome.failures() == [], outcome
    assert (outcome.exported > 0) != case.blackhole, outcome


class Cycle:
    """Stands for a finished flow: garbage that only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.parametrize("streamed", [False, True])
def test_finished_bodies_trigger_a_collection(streamed):
    reclaim = Reclaim(every_bytes=3 * 2**20)
    flow = tflow.tflow(resp=True)
    if streamed:  # the body went through; the gateway's tee kept 2 MiB of it for the span
        tee = BodyTee(2 * 2**20)
        tee(b"x" * (5 * 2**20))
        flow.response.stream, flow.response.raw_content = tee, None
    else:
        flow.response.raw_content = b"x" * (2 * 2**20)
    gc.disable()  # only Reclaim collects here
    try:
        garbage = Cycle()
        dead = weakref.ref(garbage)
        del garbage
        reclaim.response(flow)  # 2 MiB of 3: not yet
        assert dead() is not None
        reclaim.error(flow)  # 4 MiB: collected, and the count starts again
        assert dead() is None and reclaim.pending == 0
    finally:
        gc.enable()


def test_every_way_of_starting_the_gateway_sets_the_allocator(tmp_path):
    """The image, `make run` and the docs' command lines carry ALLOCATOR_ENV (glibc reads it at
    exec); a gateway started without it still starts its export worker with it."""
    settings = " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
    assert f"GATEWAY_ENV := {settings}" in (ROOT / "Makefile").read_text()
    assert "env $(GATEWAY_ENV) $(BIN)/mitmdump" in (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert all(f"    {k}={v} \\" in dockerfile for k, v in ALLOCATOR_ENV.items())
    readme_lines = [line for page in (ROOT / "README.md", *(ROOT / "docs").glob("*.md"))
                    for line in page.read_text().splitlines() if "mitmdump -s" in line and "`" in line]
    assert readme_lines and all(settings in line for line in readme_lines), readme_lines

    port = free_port()
    argv = [str(BIN / "mitmdump"), "-s", str(ADDON), "--listen-host", LOOPBACK, "--listen-port", str(port),
            "--set", f"confdir={tmp_path / 'mitmproxy'}", "--set", f"softprobe_config={tmp_path / 'g.yaml'}"]
    (tmp_path / "g.yaml").write_text(f"sp_backend_url: 'file:{tmp_path / 'spans.jsonl'}'\nadmin_listen: ''\n")
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    process = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        children = wait_for(lambda: [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()])
        assert settings.encode() not in Path(f"/proc/{process.pid}/environ").read_bytes()
        for child in children:
            assert settings.encode() + b"\0" in Path(f"/proc/{child}/environ").read_bytes()
    finally:
        process.terminate()
        process.wait(15)
