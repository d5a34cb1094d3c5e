"""`python -m bench [--quick]`: run the scenarios, write bench/results/latest.{md,json,png}.

Run from the repository root with the venv's python (`make bench` does both)."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from testkit import cgroup

from . import harness, memory, report, wrk
from .scenarios import BY_NAME, SCENARIOS

RESULTS = Path(__file__).resolve().parent / "results"
BODIES = [1024, 64 * 1024, 1024 * 1024]
QUICK_SCENARIOS = ["direct", "mitmdump", "lean", "record", "lookup-miss", "blackhole"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 KiB, a few scenarios, one short round, no RSS check")
    p.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    p.add_argument("--scenarios", nargs="+", choices=list(BY_NAME), help="subset of scenarios")
    p.add_argument("--bodies", nargs="+", type=int, help="response body sizes in bytes")
    p.add_argument("--rounds", type=int, help="interleaved rounds (medians are reported)")
    p.add_argument("--duration", type=int, help="seconds of load per scenario and round")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (closed loop)")
    p.add_argument("--warmup", type=int, help="seconds of load before measuring")
    p.add_argument("--memory-seconds", type=int,
                   help="seconds per case of 1 MiB bodies under the Deployment's limits in a cgroup "
                        "(default 60, 0 with --quick; 0: skip)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Stopped from outside (kill, make interrupted): unwind so every child process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    names = args.scenarios or (QUICK_SCENARIOS if quick else list(BY_NAME))
    load = wrk.Load(1, args.connections, args.duration or (2 if quick else 10))
    plan = harness.Plan(
        scenarios=[s for s in SCENARIOS if s.name in names],
        bodies=args.bodies or ([1024] if quick else BODIES),
        rounds=args.rounds or (1 if quick else 3),
        load=load, warmup_s=args.warmup or 1)
    memory_seconds = args.memory_seconds if args.memory_seconds is not None else (0 if quick else 60)
    with tempfile.TemporaryDirectory(prefix="softprobe-bench-") as tmp:
        tmp_path = Path(tmp)
        servers = harness.Servers(tmp_path)
        try:
            samples = harness.run(plan, servers, tmp_path, lambda line: print(line, flush=True))
            outcomes = []
            if memory_seconds and (why := cgroup.unavailable()):
                print(f"memory under the Deployment's limits: skipped ({why})", flush=True)
            elif memory_seconds:
                limits = cgroup.deployment_limits()
                for case in memory.CASES:
                    print(f"memory under the Deployment's limits ({limits}): {case.name}, "
                          f"{memory_seconds} s ...", flush=True)
                    outcomes.append(memory.run_case(case, servers.rig, tmp_path, limits,
                                                    memory_seconds, args.connections))
        finally:
            servers.close()
    rows = harness.medians(samples)
    meta = {**report.machine(), "threads": load.threads, "connections": load.connections,
            "duration_s": load.duration_s, "rounds": plan.rounds, "quick": quick}
    results = report.write(args.out, rows, harness.as_dicts(samples), outcomes, meta)
    print()
    print((args.out / "latest.md").read_text())
    met = sum(c.ok for c in results)
    print(f"targets met: {met} of {len(results)}; wrote {args.out}/latest.md, latest.json, latest.png")
    return 0  # unmet targets are results, not harness failures


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
