"""The scenarios: what sits between wrk and the upstream, and how each is started.

Every mitmdump variant runs in reverse mode with `connection_strategy=lazy` and the same
flags, so the only difference between them is the capture being measured.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from softprobe_gateway.proxy.memory import ALLOCATOR_ENV

from testkit.support import ADDON, BIN, LOOPBACK, free_port

from .procs import Proc


@dataclass(frozen=True)
class Rig:
    """What every scenario of a run shares: the servers' ports and the addon code measured."""

    upstream: int
    backend: int
    blackhole: int
    addon: Path  # a snapshot of addon/, so commits landing during a run do not change it

    @property
    def lean(self) -> Path:
        """The lean floor's script, beside the snapshot's entry script (see `snapshot_addon`)."""
        return self.addon.parent / LEAN_SCRIPT


# mitmdump with the gateway's dispatch of the addons in use (`proxy.addon_chain`), no gateway.
LEAN_SCRIPT = "lean_floor.py"
LEAN = ("from softprobe_gateway.proxy.addon_chain import AddonChain\n\n"
        "addons = [AddonChain()]\n")


def snapshot_addon(tmp: Path) -> Path:
    """Copy addon/ (mitmdump imports `softprobe_gateway` from next to the script), and write the
    lean floor's script beside the entry script."""
    copy = tmp / "addon"
    shutil.copytree(ADDON.parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (copy / LEAN_SCRIPT).write_text(LEAN)
    return copy / ADDON.name


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    kind: str  # "direct", "envoy", "mitmdump" (no addon) or "gateway"
    mitm_args: tuple[str, ...] = ()
    # The gateway's backend: a URL prefix on the counting backend, or the black hole.
    backend_path: str = ""
    blackhole: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def exports(self) -> bool:
        return self.kind == "gateway"

    def backend_url(self, rig: Rig, body_bytes: int) -> str:
        if self.blackhole:
            return f"http://{LOOPBACK}:{rig.blackhole}"
        return f"http://{LOOPBACK}:{rig.backend}{self.backend_path.format(body=body_bytes)}"


LOOKUPS = {"enable_inject": True}
# Stopping a gateway whose backend hangs must not wait out the default flush timeout.
SHUTDOWN = {"export": {"shutdown_timeout_s": 1.0}}

SCENARIOS = [
    Scenario("direct", "direct to upstream", "direct"),
    Scenario("envoy", "Envoy pass-through", "envoy"),
    Scenario("mitmdump", "bare mitmdump", "mitmdump"),
    Scenario("mitmdump-w", "mitmdump -w (own capture)", "mitmdump", mitm_args=("-w", "{tmp}/flows.mitm")),
    Scenario("lean", "lean floor: mitmdump, addons in use only", "mitmdump", mitm_args=("-s", "{lean}")),
    Scenario("record", "gateway: record + export", "gateway", backend_path="/record", config=SHUTDOWN),
    # wrk sends no session header: every request is a session of its own, 1 in 100 recorded.
    Scenario("sampled", "gateway: sampled at 1%", "gateway", backend_path="/record",
             config={**SHUTDOWN, "sampling": {"rate": 0.01}}),
    Scenario("lookup-miss", "gateway: lookups missing", "gateway", backend_path="/miss",
             config={**LOOKUPS, **SHUTDOWN}),
    Scenario("lookup-hit", "gateway: lookups hitting", "gateway", backend_path="/hit/{body}",
             config={**LOOKUPS, **SHUTDOWN}),
    Scenario("blackhole", "gateway: backend black-holed", "gateway", blackhole=True,
             config={**LOOKUPS, **SHUTDOWN}),
]
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Target:
    """A started scenario: where wrk points, and the process measured (None for direct)."""

    url: str
    proc: Proc | None
    admin_port: int | None = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def start(scenario: Scenario, rig: Rig, body_bytes: int, tmp: Path,
          launcher: Sequence[str] = ()) -> Target:
    """Start a scenario's process (`launcher` prefixed to its command)."""
    path = f"/body/{body_bytes}"
    if scenario.kind == "direct":
        return Target(f"http://{LOOPBACK}:{rig.upstream}{path}", None)
    port = free_port()
    log = tmp / f"{scenario.name}-{body_bytes}-{port}.log"
    if scenario.kind == "envoy":
        config = tmp / f"envoy-{port}.yaml"
        config.write_text(envoy_config(port, rig.upstream))
        argv = [str(BIN / "envoy"), "-c", str(config), "--concurrency", "1",
                "--base-id", str(port), "--log-level", "warn"]
        return Target(f"http://{LOOPBACK}:{port}{path}", Proc("envoy", argv, port, log, tmp))
    argv = [*launcher, str(BIN / "mitmdump"), "--mode", f"reverse:http://{LOOPBACK}:{rig.upstream}",
            "--listen-host", LOOPBACK, "--listen-port", str(port),
            "--set", "connection_strategy=lazy", "--set", "flow_detail=0",
            "--set", f"confdir={tmp / 'mitmproxy'}",
            *(a.format(tmp=tmp, lean=rig.lean) for a in scenario.mitm_args)]
    admin, env = None, None
    if scenario.exports:
        admin = free_port()
        config = {**scenario.config, "sp_backend_url": scenario.backend_url(rig, body_bytes),
                  "admin_listen": f"{LOOPBACK}:{admin}"}
        config_path = tmp / f"gateway-{port}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        argv += ["-s", str(rig.addon), "--set", f"softprobe_config={config_path}"]
        env = ALLOCATOR_ENV  # as the gateway is started everywhere
    return Target(f"http://{LOOPBACK}:{port}{path}", Proc(scenario.name, argv, port, log, tmp, env), admin)


def envoy_config(port: int, upstream: int) -> str:
    """One listener, one route, one cluster: the smallest real Envoy HTTP pass-through."""
    return yaml.safe_dump({
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions."
                                                      "filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": LOOPBACK, "port_value": upstream}}},
                }]}]},
            }],
        },
    })
