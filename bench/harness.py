"""One benchmark run: start the shared servers, run every scenario x body size interleaved
for several rounds, and reduce the rounds to medians."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from testkit.support import free_port, wait_for

from . import wrk
from .procs import Proc, get, prometheus
from .scenarios import Rig, Scenario, Target, snapshot_addon, start


@dataclass
class Sample:
    """One scenario at one body size, one round."""

    name: str
    body_bytes: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_req: float | None
    rss_mb: float | None
    sent: int       # requests wrk completed (warm-up included)
    errors: int     # wrk's socket errors, timeouts and non-2xx answers
    exported: int   # spans the backend decoded for this process
    seen: int       # exchanges the gateway saw (includes requests cut in flight when wrk stopped)
    dropped: int    # spans the gateway counted as lost


@dataclass(frozen=True)
class Plan:
    scenarios: list[Scenario]
    bodies: list[int]
    rounds: int
    load: wrk.Load
    warmup_s: int
    settle_s: float = 60.0


class Servers:
    """The upstream and the backend (with its black hole), each in its own process."""

    def __init__(self, tmp: Path) -> None:
        self.rig = Rig(free_port(), free_port(), free_port(), snapshot_addon(tmp))
        python = [sys.executable, "-m", "bench.servers"]
        root = Path(__file__).resolve().parent.parent
        self.upstream = Proc("upstream", [*python, "upstream", str(self.rig.upstream)],
                             self.rig.upstream, tmp / "upstream.log", root)
        self.backend = Proc("backend", [*python, "backend", str(self.rig.backend),
                                        str(self.rig.blackhole)],
                            self.rig.backend, tmp / "backend.log", root)

    def exported_spans(self) -> int:
        return json.loads(get(self.rig.backend, "/count"))["spans"]

    def close(self) -> None:
        self.backend.stop()
        self.upstream.stop()


def measure(scenario: Scenario, body: int, plan: Plan, servers: Servers, tmp: Path) -> Sample:
    """Start, warm up, load, let the export settle, read the counters, stop."""
    exported_before = servers.exported_spans()
    target = start(scenario, servers.rig, body, tmp)
    try:
        warm = wrk.run(target.url, wrk.Load(1, plan.load.connections, plan.warmup_s))
        settle(target, scenario, plan)
        cpu_before = target.proc.cpu_seconds() if target.proc else 0.0
        result = wrk.run(target.url, plan.load)
        gateway = settle(target, scenario, plan)
        cpu = target.proc.cpu_seconds() - cpu_before if target.proc else None
        return Sample(
            name=scenario.name, body_bytes=body, rps=result.rps, p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            cpu_ms_per_req=cpu * 1000 / result.requests if cpu is not None and result.requests else None,
            rss_mb=target.proc.peak_rss_mb() if target.proc else None,
            sent=warm.requests + result.requests, errors=warm.errors + result.errors,
            exported=servers.exported_spans() - exported_before if scenario.exports else 0,
            seen=int(gateway.get("softprobe_exchanges_seen_total", 0)),
            dropped=int(gateway.get("softprobe_export_dropped_spans_total", 0)),
        )
    finally:
        target.stop()


def settle(target: Target, scenario: Scenario, plan: Plan) -> dict[str, float]:
    """Wait until the gateway has exported (or counted as lost) every exchange it recorded.

    A black-holed backend never settles within a run; its queue is left as it is."""
    if target.admin_port is None:
        return {}

    def flushed() -> dict[str, float] | None:
        m = prometheus(target.admin_port)
        done = m.get("softprobe_export_spans_total", 0) + m.get("softprobe_export_dropped_spans_total", 0)
        empty = m.get("softprobe_export_queue_spans", 0) == 0
        return m if done >= m.get("softprobe_exchanges_recorded_total", 0) and empty else None

    if scenario.blackhole:
        return prometheus(target.admin_port)
    return wait_for(flushed, plan.settle_s, interval=0.05)


def run(plan: Plan, servers: Servers, tmp: Path, progress: Callable[[str], None]) -> list[Sample]:
    """Every round runs each body size's scenarios back to back, rotating their order per round
    so no scenario always follows the same neighbour."""
    samples: list[Sample] = []
    for r in range(plan.rounds):
        for body in plan.bodies:
            shift = r % len(plan.scenarios)
            for scenario in plan.scenarios[shift:] + plan.scenarios[:shift]:
                started = time.monotonic()
                sample = measure(scenario, body, plan, servers, tmp)
                samples.append(sample)
                progress(f"round {r + 1}/{plan.rounds} {scenario.name:12} {body:>8} B: "
                         f"{sample.rps:9.1f} rps  p99 {sample.p99_ms:8.2f} ms  "
                         f"({time.monotonic() - started:.1f} s)")
    return samples


def medians(samples: list[Sample]) -> list[dict]:
    """Per scenario and body size: medians of the rates and times, totals of the counts."""
    groups: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.name, s.body_bytes), []).append(s)
    rows = []
    for (name, body), group in groups.items():
        row = {"name": name, "body_bytes": body, "rounds": len(group)}
        for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "rss_mb"):
            values = [getattr(s, key) for s in group if getattr(s, key) is not None]
            row[key] = round(statistics.median(values), 3) if values else None
        for key in ("exported", "sent", "seen", "dropped", "errors"):
            row[key] = sum(getattr(s, key) for s in group)
        rows.append(row)
    return rows


def as_dicts(samples: list[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]
