"""The gateway under the Deployment's own limits with 1 MiB bodies at saturation (issue 10).

Each case starts a gateway (default config, the export worker included) inside a cgroup v1 child
group whose memory and CPU limits are read from `k8s/base/deployment.yaml`, drives 1 MiB uploads
or downloads through it with wrk for a fixed time, and samples the group's RSS. A case passes
when the gateway was not OOM-killed, wrk saw no failed request, the group's peak stayed below
the limit, and the RSS of the last third of the run is not above the first third's plus a margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from testkit.cgroup import Cgroup, Limits, RssSampler

from . import wrk
from .procs import prometheus
from .scenarios import BY_NAME, Rig, start

BODY = 1024 * 1024
FLAT_MARGIN_MB = 32.0  # allowed growth of the last third's highest RSS over the first third's


@dataclass(frozen=True)
class Case:
    direction: str  # "upload" (1 MiB request, small answer) or "download" (1 MiB answer)
    blackhole: bool  # the backend accepts connections and never answers

    @property
    def name(self) -> str:
        return f"{self.direction}, backend {'black-holed' if self.blackhole else 'healthy'}"


CASES = [Case(d, b) for b in (False, True) for d in ("upload", "download")]


@dataclass
class Outcome:
    case: str
    seconds: int
    connections: int
    limits: str
    limit_mb: float
    requests: int
    errors: int
    rps: float
    p99_ms: float
    peak_mb: float  # the group's peak charge (memory.max_usage_in_bytes)
    thirds_mb: tuple[float, float, float]  # highest RSS of each third of the run
    oom_kills: int
    alive: bool
    throttled_s: float
    exported: int
    dropped: int
    cpu_ms_per_req: float

    def failures(self) -> list[str]:
        out = []
        if self.oom_kills or not self.alive:
            out.append(f"killed (oom_kill {self.oom_kills}, gateway alive: {self.alive})")
        if self.errors:
            out.append(f"{self.errors} failed client requests")
        if self.peak_mb >= self.limit_mb:
            out.append(f"peak {self.peak_mb:.0f} MiB reached the limit")
        first, _, last = self.thirds_mb
        if last > first + FLAT_MARGIN_MB:
            out.append(f"RSS grew: last third {last:.0f} MiB > first third {first:.0f} + {FLAT_MARGIN_MB:.0f} MiB")
        return out


def upload_script(tmp: Path, body: int = BODY) -> Path:
    """A wrk script POSTing a JSON document of `body` bytes."""
    path = tmp / f"upload-{body}.lua"
    path.write_text('wrk.method = "POST"\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.body = \'{{"data":"\' .. string.rep("x", {body - 11}) .. \'"}}\'\n')
    return path


def run_case(case: Case, rig: Rig, tmp: Path, limits: Limits, seconds: int, connections: int = 8,
             warmup_s: int = 3) -> Outcome:
    """One case: gateway in a fresh limited group, `warmup_s` of load that fills the export
    queue, then `seconds` of load with RSS sampled; the group is removed after. The peak
    covers the warm-up too."""
    scenario = BY_NAME["blackhole" if case.blackhole else "record"]
    with Cgroup(limits) as group:
        answer = 1024 if case.direction == "upload" else BODY
        target = start(scenario, rig, answer, tmp, launcher=group.wrap([]))
        try:
            script = upload_script(tmp) if case.direction == "upload" else None
            wrk.run(target.url, wrk.Load(1, connections, warmup_s), script)
            cpu_before = target.proc.cpu_seconds()
            with RssSampler(group.rss_bytes) as sampler:
                result = wrk.run(target.url, wrk.Load(1, connections, seconds), script)
            cpu = target.proc.cpu_seconds() - cpu_before
            alive = target.proc.process.poll() is None
            metrics = prometheus(target.admin_port) if alive else {}
            return Outcome(
                case=case.name, seconds=seconds, connections=connections, limits=str(limits),
                limit_mb=limits.memory_bytes / 2**20, requests=result.requests,
                errors=result.errors, rps=result.rps, p99_ms=result.p99_ms,
                peak_mb=round(group.peak_bytes() / 2**20, 1),
                thirds_mb=tuple(round(v, 1) for v in sampler.thirds_mb()),
                oom_kills=group.oom_kills(), alive=alive, throttled_s=round(group.throttled_s(), 1),
                exported=int(metrics.get("softprobe_export_spans_total", 0)),
                dropped=int(metrics.get("softprobe_export_dropped_spans_total", 0)),
                cpu_ms_per_req=round(cpu * 1000 / result.requests, 2) if result.requests else 0.0,
            )
        finally:
            target.stop()


def markdown(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return ""
    first = outcomes[0]
    lines = [f"Under the Deployment's limits ({first.limits}, a cgroup), 1 MiB bodies, "
             f"wrk with {first.connections} connections for {first.seconds} s per case "
             "(after a warm-up that fills the export queue):", "",
             "| case | rps | CPU ms/req | p99 ms | failed | peak MiB | RSS MiB by third | "
             "exported / dropped | OOM kills | verdict |",
             "|---|--:|--:|--:|--:|--:|---|---|--:|---|"]
    for o in outcomes:
        verdict = "; ".join(o.failures()) or "ok"
        lines.append(f"| {o.case} | {o.rps:.1f} | {o.cpu_ms_per_req:.2f} | {o.p99_ms:.1f} | {o.errors} "
                     f"| {o.peak_mb:.0f} | {' / '.join(f'{v:.0f}' for v in o.thirds_mb)} "
                     f"| {o.exported} / {o.dropped} | {o.oom_kills} | {verdict} |")
    return "\n".join(lines) + "\n"


def as_dicts(outcomes: list[Outcome]) -> list[dict]:
    return [{**asdict(o), "failures": o.failures()} for o in outcomes]
