"""Where a gateway's CPU goes under load: `python -m bench.profile [--scenario record] [--body 1024]`.

Two independent measurements of one loaded gateway process:
- exact CPU per thread from /proc/PID/task/*/stat (the event loop is the main thread; the
  export worker is the busiest other thread),
- py-spy samples (needs `pip install py-spy`; non-idle stacks only, so samples ~ CPU), split
  into the addon's hooks versus mitmproxy/asyncio on the event loop, and the export worker's
  stages, with the heaviest functions inclusive of callees.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.support import BIN

from . import wrk
from .harness import Servers
from .procs import CLOCK_TICKS
from .scenarios import BY_NAME, start

ADDON_CODE = "softprobe_gateway/"
# Export worker stages, first match in the stack wins (by function name).
STAGES = [("encode: attributes (capture.py)", "exchange_attributes"),
          ("encode: protobuf messages (otlp.py)", "fill_extract_span"),
          ("send: serialize + HTTP POST", "send"),
          ("encode: batch assembly", "_export")]


def thread_cpu(pid: int) -> dict[int, float]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) stacks: `thread (TID): name;outer;...;leaf count`."""
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples.append((stack.split(";"), int(count)))
    return samples


def function(frame: str) -> str:
    """`Class.name (path/to/file.py:123)` -> `Class.name (file.py)`."""
    m = re.match(r"(.*) \((?:.*/)?([^/:]+):\d+\)$", frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def summarize(samples: list[tuple[list[str], int]]) -> str:
    """Event-loop samples split addon/mitmproxy, worker samples by stage, top functions."""
    loop, worker, other = Counter(), Counter(), 0
    loop_funcs, worker_funcs = Counter(), Counter()
    for stack, n in samples:
        thread, frames = stack[0], stack[1:]
        names = [f.split(" (", 1)[0].rsplit(".", 1)[-1] for f in frames]
        addon = {function(f) for f in frames if ADDON_CODE in f}
        if thread.endswith("softprobe-export"):
            worker[next((s for s, fn in STAGES if fn in names), "worker: waiting/other")] += n
            worker_funcs.update(dict.fromkeys(addon, n))
        elif thread.endswith("MainThread"):
            loop["addon hooks" if addon else "mitmproxy + asyncio"] += n
            loop_funcs.update(dict.fromkeys(addon, n))
        else:
            other += n
    total = sum(loop.values()) + sum(worker.values()) + other
    lines = [f"py-spy: {total} non-idle samples"]

    def share(label: str, n: int) -> None:
        lines.append(f"  {label:42} {n:6}  {100 * n / total:5.1f}%")

    for label, n in loop.most_common():
        share(f"event loop: {label}", n)
    for label, n in worker.most_common():
        share(f"export worker: {label}", n)
    share("other threads", other)
    for title, funcs in (("event loop", loop_funcs), ("export worker", worker_funcs)):
        lines.append(f"heaviest addon functions on the {title} (inclusive):")
        lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in funcs.most_common(12)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--scenario", default="record", choices=[s for s, v in BY_NAME.items() if v.exports])
    p.add_argument("--body", type=int, default=1024)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="softprobe-profile-") as tmp:
        tmp_path = Path(tmp)
        servers = Servers(tmp_path)
        target = start(BY_NAME[args.scenario], servers.rig, args.body, tmp_path)
        try:
            load = wrk.Load(1, args.connections, args.seconds)
            wrk.run(target.url, wrk.Load(1, args.connections, 1))
            before = thread_cpu(target.proc.pid)
            raw = args.raw or tmp_path / "profile.txt"
            spy = subprocess.Popen([str(BIN / "py-spy"), "record", "-p", str(target.proc.pid), "-r", "200",
                                    "-d", str(args.seconds), "-t", "--nonblocking", "-f", "raw", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = wrk.run(target.url, load)
            spy.wait(args.seconds + 30)
            after = thread_cpu(target.proc.pid)
        finally:
            target.stop()
            servers.close()
        cpu = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
        main_cpu = cpu.pop(target.proc.pid)
        print(f"{args.scenario} {args.body} B: {result.rps:.1f} rps, {result.requests} requests")
        print(f"CPU per request: event loop {1000 * main_cpu / result.requests:.3f} ms, "
              f"other threads {', '.join(f'{1000 * c / result.requests:.3f}' for c in sorted(cpu.values(), reverse=True) if c > 0)} ms")
        print(summarize(parse_raw(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
