"""The load generator: wrk, closed loop with a fixed number of connections, and its report."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class Load:
    threads: int = 1
    connections: int = 8
    duration_s: int = 10  # wrk takes whole seconds


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx answers


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk not found: run `make bench` (it installs it) or `apt-get install wrk`")
    return path


def run(url: str, load: Load, script: Path | None = None) -> WrkResult:
    """One closed-loop run of `load.duration_s` seconds (a Lua `script` sets method and body)."""
    argv = [wrk_binary(), f"-t{load.threads}", f"-c{load.connections}",
            f"-d{max(load.duration_s, 1)}s", "--timeout", "5s", "--latency",
            *(["-s", str(script)] if script else []), url]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout)


def parse(out: str) -> WrkResult:
    def latency(pct: str) -> float:
        value, unit = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M).groups()
        return float(value) * _UNITS[unit]

    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = sum(map(int, socket_errors.groups())) if socket_errors else 0
    return WrkResult(
        requests=int(re.search(r"(\d+) requests in", out).group(1)),
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50_ms=latency("50"), p99_ms=latency("99"),
        errors=errors + (int(non_2xx.group(1)) if non_2xx else 0),
    )
