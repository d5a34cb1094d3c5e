"""The outputs: ratios to the mitmdump baselines, the issue's targets, Markdown, JSON and a chart."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import memory
from .memory import Outcome
from .scenarios import BY_NAME

KIB, MIB = 1024, 1024 * 1024
DPI = 110
RSS_LIMIT_MB = 250.0
# The performance targets (issues 15 and 27), each against bare mitmdump (or the lean floor:
# mitmdump with only the addons in use) in the same run.
CPU_VS_MITMDUMP = {KIB: 0.90, 64 * KIB: 1.00, MIB: 1.50}  # CPU per recorded exchange, export worker included
RECORD_VS_MITMDUMP = {KIB: 1.05, 64 * KIB: 1.00, MIB: 0.85}  # record throughput, by body size
SAMPLED_CPU_VS_MITMDUMP = {KIB: 0.75}  # CPU per request, sampled at 1%
LOOKUP_MISS_VS_MITMDUMP = 0.80  # throughput with every lookup missing, at every size
LOOKUP_MISS_CPU_VS_MITMDUMP = {KIB: 1.05}  # CPU per request, every request asking the backend
RECORD_CPU_VS_LEAN = {KIB: 1.35}  # the gateway's own work: CPU per recorded exchange over the lean floor


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    ok: bool
    performance: bool = False  # one of the performance targets, printed in their own table


def size(body: int) -> str:
    return f"{body // MIB} MiB" if body >= MIB else f"{body // KIB} KiB" if body >= KIB else f"{body} B"


def index(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["name"], r["body_bytes"]): r for r in rows}


def ratio(rows: dict, name: str, base: str, body: int) -> float | None:
    a, b = rows.get((name, body)), rows.get((base, body))
    return a["rps"] / b["rps"] if a and b and b["rps"] else None


def cpu_ratio(rows: dict, name: str, base: str, body: int) -> float | None:
    a, b = rows.get((name, body)), rows.get((base, body))
    return a["cpu_ms_per_req"] / b["cpu_ms_per_req"] if a and b and a["cpu_ms_per_req"] and b["cpu_ms_per_req"] else None


def performance_targets(at: dict[tuple[str, int], dict]) -> list[Check]:
    """The performance targets in the issue's order: CPU per recorded exchange, record and
    lookup-miss throughput, nothing lost; each judged on this run's medians."""
    bodies = sorted({b for _, b in at})
    sized = [b for b in bodies if b in RECORD_VS_MITMDUMP]
    out: list[Check] = []

    def cpu(name: str, base: str, limits: dict[int, float], what: str, base_label: str) -> None:
        for body in bodies:
            if body in limits and (r := cpu_ratio(at, name, base, body)) is not None:
                out.append(Check(
                    f"{what}: CPU per request <= {limits[body]:.2f} x {base_label} at {size(body)}",
                    f"{at[name, body]['cpu_ms_per_req']:.2f} vs {at[base, body]['cpu_ms_per_req']:.2f} ms: "
                    f"{r:.2f}", r <= limits[body], True))

    cpu("record", "mitmdump", CPU_VS_MITMDUMP, "recording everything", "bare mitmdump's")
    cpu("sampled", "mitmdump", SAMPLED_CPU_VS_MITMDUMP, "sampled out (rate 0.01)", "bare mitmdump's")
    cpu("lookup-miss", "mitmdump", LOOKUP_MISS_CPU_VS_MITMDUMP, "lookups missing", "bare mitmdump's")
    cpu("record", "lean", RECORD_CPU_VS_LEAN, "recording everything", "the lean floor's")
    for body in sized:
        if (r := ratio(at, "record", "mitmdump", body)) is not None:
            minimum = RECORD_VS_MITMDUMP[body]
            out.append(Check(f"record throughput >= {minimum:.2f} x bare mitmdump at {size(body)}",
                             f"{r:.2f}", r >= minimum, True))
    for body in bodies:
        if (r := ratio(at, "lookup-miss", "mitmdump", body)) is not None:
            out.append(Check(f"lookups missing >= {LOOKUP_MISS_VS_MITMDUMP:.2f} x bare mitmdump at {size(body)}",
                             f"{r:.2f}", r >= LOOKUP_MISS_VS_MITMDUMP, True))
    for body in sized:
        if rec := at.get(("record", body)):
            # Every request wrk completed is exported; `seen` also counts requests wrk cut when it
            # stopped, which the gateway may or may not record.
            out.append(Check(f"zero exchanges lost at {size(body)} (record, healthy backend)",
                             f"exported {rec['exported']} of {rec['sent']} sent "
                             f"({rec['seen']} seen), dropped {rec['dropped']}",
                             rec["exported"] >= rec["sent"] and rec["dropped"] == 0, True))
    return out


def checks(rows: list[dict], outcomes: list[Outcome]) -> list[Check]:
    """The performance targets, then the other checks, each judged on the medians of this run
    (absent scenarios skipped)."""
    at = index(rows)
    out = performance_targets(at)

    def rps_ratio(name: str, base: str, body: int, minimum: float) -> None:
        r = ratio(at, name, base, body)
        if r is not None:
            out.append(Check(f"{name} >= {minimum:.2f} x {base} rps at {size(body)}",
                             f"{r:.2f}", r >= minimum))

    for body in sorted({b for _, b in at}):
        rps_ratio("record", "mitmdump-w", body, 1.0)
        hole, healthy = at.get(("blackhole", body)), at.get(("record", body))
        if hole and healthy:
            # The healthy run is the recording one: once its breaker opens, a black-holed gateway
            # with lookups on does what a recording gateway does, minus the export.
            limit = 1.25 * healthy["p99_ms"]
            out.append(Check(f"blackhole p99 <= 1.25 x healthy (record) p99 at {size(body)}",
                             f"{hole['p99_ms']:.2f} ms vs limit {limit:.2f} ms", hole["p99_ms"] <= limit))
        if hole:
            out.append(Check(f"blackhole: no client errors at {size(body)}",
                             f"{hole['errors']} errors", hole["errors"] == 0))
    for o in outcomes:
        failures = o.failures()
        out.append(Check(f"within {o.limits} for {o.seconds} s: {o.case}, 1 MiB",
                         "; ".join(failures) or f"peak {o.peak_mb:.0f} MiB, 0 failed, flat", not failures))
    if holes := [o for o in outcomes if "black-holed" in o.case]:
        peak = max(o.peak_mb for o in holes)
        out.append(Check(f"blackhole peak RSS < {RSS_LIMIT_MB:.0f} MiB with 1 MiB bodies",
                         f"{peak:.0f} MiB", peak < RSS_LIMIT_MB))
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(rows: list[dict], results: list[Check], outcomes: list[Outcome], meta: dict) -> str:
    at = index(rows)
    lines = [
        f"Machine: {meta['nproc']} CPUs, {meta['cpu']}; Python {meta['python']}; code {meta['git']}. "
        f"Load: wrk -t{meta['threads']} -c{meta['connections']} -d{meta['duration_s']:g}s, "
        f"{meta['rounds']} interleaved round(s), medians. CPU and RSS are the measured process's "
        "(Envoy, or mitmdump with every thread and child process, the export worker included); "
        "exported/seen are summed over the rounds.",
        "",
        "| scenario | body | rps | x mitmdump | x mitmdump -w | x lean | p50 ms | p99 ms | CPU ms/req "
        "| CPU x mitmdump | CPU x lean | peak RSS MiB | exported / seen (wrk sent) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        body = r["body_bytes"]
        exported = (f"{r['exported']} / {r['seen']} ({r['sent']})" if BY_NAME[r["name"]].exports
                    else f"- ({r['sent']})")
        lines.append(
            f"| {BY_NAME[r['name']].label} | {size(body)} | {fmt(r['rps'])} "
            f"| {fmt(ratio(at, r['name'], 'mitmdump', body), 2)} "
            f"| {fmt(ratio(at, r['name'], 'mitmdump-w', body), 2)} "
            f"| {fmt(ratio(at, r['name'], 'lean', body), 2)} "
            f"| {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['cpu_ms_per_req'], 2)} "
            f"| {fmt(cpu_ratio(at, r['name'], 'mitmdump', body), 2)} "
            f"| {fmt(cpu_ratio(at, r['name'], 'lean', body), 2)} | {fmt(r['rss_mb'])} | {exported} |")
    if outcomes:
        lines += ["", memory.markdown(outcomes).rstrip("\n")]
    for title, performance in (("target", True), ("other check", False)):
        if group := [c for c in results if c.performance == performance]:
            lines += ["", f"| {title} | measured | met |", "|---|---|---|"]
            lines += [f"| {c.target} | {c.measured} | {'yes' if c.ok else '**no**'} |" for c in group]
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(rows)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def figure(rows: list[dict]):  # -> matplotlib.figure.Figure (matplotlib is the bench extra's)
    """Requests per second per scenario, one panel per body size, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bodies = sorted({r["body_bytes"] for r in rows})
    fig, axes = plt.subplots(1, len(bodies), figsize=(5 * len(bodies), 4), squeeze=False)
    for ax, body in zip(axes[0], bodies):
        group = [r for r in rows if r["body_bytes"] == body]
        names = [BY_NAME[r["name"]].label for r in group]
        colors = ["tab:blue" if BY_NAME[r["name"]].exports else "tab:gray" for r in group]
        ax.barh(names, [r["rps"] for r in group], color=colors)
        log_axis(ax, min(r["rps"] for r in group), max(r["rps"] for r in group))
        ax.invert_yaxis()
        ax.set_title(f"{size(body)} responses")
        ax.set_xlabel("requests/s (median, log scale)")
        for i, r in enumerate(group):
            ax.text(r["rps"], i, f" {r['rps']:,.0f}", va="center", fontsize=8)
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    return fig


def log_axis(ax, low: float, high: float) -> None:
    """A log x axis from `low` to `high` with room for the value printed after each bar, and
    labels that cannot collide: matplotlib labels minor ticks (2x10^2, 3x10^2...) on a range
    under about a decade, where they overlap; here only ticks at 1, 2, 5 (or fewer, the wider
    the range) per decade, written out as numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    left, right = max(low, 1e-3) / 2, max(high, 1e-3) * 3  # a scenario that failed: 0 rps
    decades = math.log10(right / left)
    subs = (1.0, 2.0, 5.0) if decades <= 1.6 else (1.0, 3.0) if decades <= 3.2 else (1.0,)
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=6))  # a wide range skips decades
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: rate(value)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def rate(value: float) -> str:
    """A tick's requests/s, short: 0.5, 300, 3,000, 30k, 3M."""
    if value >= 1e6:
        return f"{value / 1e6:,.0f}M"
    if value >= 1e4:
        return f"{value / 1e3:,.0f}k"
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def render(results: Path, path: Path) -> None:
    """The chart again from a run's latest.json, without running the benchmark."""
    chart(json.loads(results.read_text())["scenarios"], path)


def write(out: Path, rows: list[dict], samples: list[dict], outcomes: list[Outcome],
          meta: dict) -> list[Check]:
    """latest.md, latest.json and latest.png in `out`; returns the target checks."""
    out.mkdir(parents=True, exist_ok=True)
    results = checks(rows, outcomes)
    (out / "latest.md").write_text(markdown(rows, results, outcomes, meta))
    (out / "latest.json").write_text(json.dumps({
        "meta": meta, "scenarios": rows, "memory": memory.as_dicts(outcomes),
        "targets": [c.__dict__ for c in results], "samples": samples}, indent=2) + "\n")
    chart(rows, out / "latest.png")
    return results


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "git": git}


if __name__ == "__main__":  # python -m bench.report [RESULTS_DIR]: latest.png again from latest.json
    import sys
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    render(out / "latest.json", out / "latest.png")
