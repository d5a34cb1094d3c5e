"""Where a gateway's CPU goes under load: `python -m bench.profile [--scenario record] [--body 1024]`.

Two independent measurements of one loaded gateway (the mitmdump process and its export
worker process):
- exact CPU per thread, user and system, from /proc/PID/task/*/stat (the event loop is the
  main thread; the export feeder and acknowledger are threads; the worker is a child process),
- py-spy samples of both processes (needs `pip install py-spy`; non-idle stacks only, so
  samples ~ user CPU), split into the addon's hooks versus mitmproxy/asyncio on the event loop,
  and the export worker's stages, with the heaviest functions inclusive of callees.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from testkit.support import BIN

from . import wrk
from .harness import Servers
from .procs import CLOCK_TICKS
from .scenarios import BY_NAME, start

ADDON_CODE = "softprobe_gateway/"
# Export worker stages, first match in the stack wins (by function name).
STAGES = [("encode: attributes (capture.py)", "exchange_attributes"),
          ("encode: protobuf messages (otlp.py)", "fill_extract_span"),
          ("send: serialize + HTTP POST", "send"),
          ("receive batch from the proxy", "recv"),
          ("encode: batch assembly", "export")]


@dataclass(frozen=True)
class Task:
    """One thread: which process it is in (the proxy's or a child's), its name, CPU seconds."""

    process: str
    name: str
    user: float
    system: float


def family_cpu(pid: int) -> dict[int, Task]:
    """Every thread of the process and of its children (the export worker), by thread id."""
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir()
                    if p.name.isdigit() and _ppid(int(p.name)) == pid]
    out = {}
    for process in pids:
        label = "proxy" if process == pid else "worker"
        try:
            tasks = list(Path(f"/proc/{process}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = (task / "comm").read_text().strip()
            except OSError:
                continue  # exited meanwhile
            out[int(task.name)] = Task(label, name, int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)
    return out


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None


def cpu_table(before: dict[int, Task], after: dict[int, Task], requests: int, names: dict[int, str]) -> str:
    """CPU ms per request of each busy thread, user and system, and the total; threads named as
    py-spy saw them (`names`), else by id."""
    lines = [f"CPU per request (ms), {requests} requests:", f"  {'process':10} {'thread':24} {'user':>7} {'system':>7}"]
    total = 0.0
    for tid, t in sorted(after.items(), key=lambda kv: kv[1].user + kv[1].system - _cpu(before.get(kv[0])),
                         reverse=True):
        old = before.get(tid)
        user, system = t.user - (old.user if old else 0), t.system - (old.system if old else 0)
        total += user + system
        if user + system > 0:
            name = names.get(tid) or f"{t.name} {tid}"
            lines.append(f"  {t.process:10} {name:24} {1000 * user / requests:7.3f} {1000 * system / requests:7.3f}")
    lines.append(f"  total {1000 * total / requests:.3f} ms per request (threads that ended meanwhile not counted)")
    return "\n".join(lines)


def _cpu(task: Task | None) -> float:
    return task.user + task.system if task else 0.0


def thread_names(samples: list[tuple[list[str], int]]) -> dict[int, str]:
    """Thread id -> name from py-spy's `thread (TID): name` frames."""
    names = {}
    for stack, _ in samples:
        for frame in stack:
            if m := re.match(r"thread \((\d+)\): (.*)", frame):
                names[int(m.group(1))] = m.group(2)
    return names


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) stacks: `process PID:"cmd";[process PID:"cmd";]thread (TID): name;
    outer;...;leaf count` with --subprocesses; the second `process` marks the export worker."""
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
    loop, worker, other = Counter(), Counter(), Counter()
    loop_funcs, worker_funcs, other_funcs = Counter(), Counter(), Counter()
    for stack, n in samples:
        processes = sum(1 for f in stack if f.startswith("process "))
        thread, frames = stack[processes], stack[processes + 1:]
        names = [f.split(" (", 1)[0].rsplit(".", 1)[-1] for f in frames]
        addon = {function(f) for f in frames if ADDON_CODE in f}
        if processes > 1:
            worker[next((s for s, fn in STAGES if fn in names), "other")] += n
            worker_funcs.update(dict.fromkeys({function(f) for f in frames}, n))
        elif thread.endswith("MainThread"):
            loop["addon hooks" if addon else "mitmproxy + asyncio"] += n
            loop_funcs.update(dict.fromkeys(addon, n))
        else:
            other[thread.split(": ", 1)[-1]] += n
            other_funcs.update(dict.fromkeys(addon, n))
    total = sum(loop.values()) + sum(worker.values()) + sum(other.values())
    lines = [f"py-spy: {total} non-idle samples"]

    def share(label: str, n: int) -> None:
        lines.append(f"  {label:48} {n:6}  {100 * n / total:5.1f}%")

    for label, n in loop.most_common():
        share(f"event loop: {label}", n)
    for label, n in other.most_common():
        share(f"proxy thread {label}", n)
    for label, n in worker.most_common():
        share(f"export worker process: {label}", n)
    for title, funcs in (("event loop", loop_funcs), ("proxy's other threads", other_funcs),
                         ("export worker process", worker_funcs)):
        lines.append(f"heaviest functions on the {title} (inclusive):")
        lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in funcs.most_common(16)
                  if "<module>" not in f and "spawn" not in f and "process.py" not in f]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--scenario", default="record", choices=[s for s, v in BY_NAME.items() if v.kind in ("mitmdump", "gateway")])
    p.add_argument("--body", type=int, default=1024)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--no-spy", action="store_true", help="thread CPU only (py-spy's sampling costs CPU too)")
    p.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="softprobe-profile-") as tmp:
        tmp_path = Path(tmp)
        servers = Servers(tmp_path)
        target = start(BY_NAME[args.scenario], servers.rig, args.body, tmp_path)
        try:
            load = wrk.Load(1, args.connections, args.seconds)
            wrk.run(target.url, wrk.Load(1, args.connections, 1))
            before = family_cpu(target.proc.pid)
            raw = args.raw or tmp_path / "profile.txt"
            spy = None if args.no_spy else subprocess.Popen(
                [str(BIN / "py-spy"), "record", "-p", str(target.proc.pid), "-r", "200", "-d", str(args.seconds),
                 "-t", "--subprocesses", "--nonblocking", "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = wrk.run(target.url, load)
            if spy is not None:
                spy.wait(args.seconds + 30)
            after = family_cpu(target.proc.pid)
        finally:
            target.stop()
            servers.close()
        print(f"{args.scenario} {args.body} B: {result.rps:.1f} rps, {result.requests} requests")
        samples = parse_raw(raw) if spy is not None else []
        print(cpu_table(before, after, result.requests, thread_names(samples)))
        if samples:
            print(summarize(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
