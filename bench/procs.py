"""Child processes of the benchmark and what the kernel says about them (CPU, peak RSS)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testkit.support import LOOPBACK, free_port, start_server, stop_server

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """A child process on a loopback port, its output kept in a log file."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    cwd: Path
    env: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.process, self._log = start_server(self.argv, self.port, self.log_path, self.cwd, self.env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU so far of the process and its children (the gateway's export
        worker process is part of its cost): every thread, and children already reaped."""
        total = 0
        for pid in self._family():
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == self.pid:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped children
        return total / CLOCK_TICKS

    def peak_rss_mb(self) -> float:
        """VmHWM summed over the process and its children: an upper bound of their joint peak."""
        total = 0
        for pid in self._family():
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
        return total / 1024

    def _family(self) -> list[int]:
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int(_stat(int(entry.name))[1]) == self.pid:  # ppid
                        children.append(int(entry.name))
                except (OSError, IndexError):
                    continue  # exited meanwhile
        return [self.pid, *children]

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        stop_server(self.process, self._log, timeout)


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name (field 3, the state, is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def get(port: int, path: str) -> str:
    """A plain GET on loopback (no proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{LOOPBACK}:{port}{path}", timeout=5) as response:
        return response.read().decode()


def prometheus(port: int) -> dict[str, float]:
    """The admin endpoint's metrics, labelled series summed by metric name."""
    totals: dict[str, float] = {}
    for line in get(port, "/metrics").splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            name = name.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


@contextmanager
def backend() -> Iterator[int]:
    """The benchmark's backend (`bench.servers`) in its own process, for benchmarks of one
    client: its port, the process stopped on exit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="softprobe-bench-") as tmp:
        server, log = start_server([sys.executable, "-m", "bench.servers", "backend", str(port), str(free_port())],
                                   port, Path(tmp) / "backend.log", Path.cwd())
        try:
            yield port
        finally:
            stop_server(server, log)
