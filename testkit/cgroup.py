"""The pod's declared limits applied to a process tree: a cgroup v1 child group per run.

`k8s/base/deployment.yaml` is read for the gateway container's memory and CPU limits; a child
group of the memory and cpu controllers enforces them on whatever is started inside it (the
mitmdump process, its threads and the export worker process it spawns). Shared by the memory
tests and `make bench`'s memory mode.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

DEPLOYMENT = Path(__file__).resolve().parent.parent / "k8s" / "base" / "deployment.yaml"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
_MEMORY_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3,
                 "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


@dataclass(frozen=True)
class Limits:
    """A container's resource limits: bytes of memory and thousandths of a CPU."""

    memory_bytes: int
    cpu_millis: int

    def __str__(self) -> str:
        return f"{self.memory_bytes / 2**20:.0f} MiB, {self.cpu_millis / 1000:g} CPU"


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes memory quantity ("512Mi", "1G", "1048576") in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kMG]i?)?", str(value)).groups()
    return int(number) * _MEMORY_UNITS[unit or ""]


def quantity_millis(value: str | int | float) -> int:
    """A Kubernetes CPU quantity ("1", "500m", 0.5) in thousandths of a CPU."""
    text = str(value)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def deployment_limits(path: Path = DEPLOYMENT, container: str = "gateway") -> Limits:
    """The `resources.limits` of the gateway container as declared in the Deployment."""
    spec = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]
    limits = next(c for c in spec["containers"] if c["name"] == container)["resources"]["limits"]
    return Limits(quantity_bytes(limits["memory"]), quantity_millis(limits["cpu"]))


def unavailable() -> str | None:
    """Why a limited child group cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "creating a cgroup needs root"
    for controller in ("memory", "cpu"):
        if not (CGROUP_ROOT / controller / "cgroup.procs").exists():
            return f"cgroup v1 {controller} controller not mounted at {CGROUP_ROOT / controller}"
    return None


class Cgroup:
    """A child group of the memory and cpu controllers with the given limits.

    `wrap(argv)` starts a command inside it; `remove()` deletes both groups (stop the processes
    first; any left are killed)."""

    def __init__(self, limits: Limits, name: str = "") -> None:
        self.limits = limits
        self.name = name or f"softprobe-{uuid.uuid4().hex[:8]}"
        self.memory = CGROUP_ROOT / "memory" / self.name
        self.cpu = CGROUP_ROOT / "cpu" / self.name
        self.memory.mkdir()
        try:
            self.cpu.mkdir()
            (self.memory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
            (self.cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (self.cpu / "cpu.cfs_quota_us").write_text(str(limits.cpu_millis * CFS_PERIOD_US // 1000))
        except BaseException:
            self.remove()
            raise

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the group: the shell joins it, then execs the command (same PID)."""
        join = " && ".join(f"echo $$ > {group / 'cgroup.procs'}" for group in (self.memory, self.cpu))
        return ["sh", "-c", f'{join} && exec "$@"', "sh", *argv]

    def pids(self) -> list[int]:
        return [int(line) for line in (self.memory / "cgroup.procs").read_text().split()]

    def rss_bytes(self) -> int:
        """Resident memory of the group's processes, shared pages counted once (memory.stat's
        anonymous `rss` plus `mapped_file`)."""
        stat = dict(line.split() for line in (self.memory / "memory.stat").read_text().splitlines())
        return int(stat["rss"]) + int(stat["mapped_file"])

    def peak_bytes(self) -> int:
        """The group's peak charge (memory.max_usage_in_bytes): what the limit is enforced on."""
        return int((self.memory / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        """Processes the kernel killed for exceeding the limit (memory.oom_control's oom_kill)."""
        fields = dict(line.split() for line in (self.memory / "memory.oom_control").read_text().splitlines())
        return int(fields.get("oom_kill", 0))

    def throttled_s(self) -> float:
        """Time the CPU quota held the group back (cpu.stat's throttled_time)."""
        fields = dict(line.split() for line in (self.cpu / "cpu.stat").read_text().splitlines())
        return int(fields.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        for group in (self.memory, self.cpu):
            if not group.exists():
                continue
            for _ in range(50):
                left = [int(p) for p in (group / "cgroup.procs").read_text().split()]
                if not left:
                    break
                for pid in left:  # only processes this group's runs started
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            group.rmdir()

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class RssSampler:
    """Samples resident memory (`read()`, in bytes) on a thread every `interval` seconds while in a
    `with`, from a baseline taken at the start to a last sample taken at the end."""

    def __init__(self, read: Callable[[], int], interval: float = 0.25) -> None:
        self.read, self.interval = read, interval
        self.baseline = read()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _sample(self) -> None:
        self.samples.append((time.monotonic() - self._start, self.read()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak(self) -> int:
        """The highest sample (bytes), the baseline included."""
        return max([self.baseline, *(rss for _, rss in self.samples)])

    def thirds_mb(self) -> tuple[float, float, float]:
        """Highest RSS (MiB) in the first, middle and last third of the run."""
        n = len(self.samples)
        cuts = [self.samples[i * n // 3:(i + 1) * n // 3] for i in range(3)]
        return tuple(max((rss for _, rss in part), default=0) / 2**20 for part in cuts)
