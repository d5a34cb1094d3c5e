"""What stops and backend outages cost, under load from real clients with a unique path per
request (`testkit.load`), against a real mitmdump and a real OTLP backend: every path a client
was answered 200 for is looked up in the backend, and whatever is not there must be counted.

- SIGTERM to the process group with a slow backend: the stop drains (no new connection, the
  flows in flight finish and are exported), then flushes: nothing answered is lost.
- An outage the queue holds (4 s: a 503 phase, then connections reset; beyond the 1.5 s the old
  retry count lasted; a 10 s one is the same mechanism, measured in docs/safety-and-limits.md):
  nothing lost.
- An outage beyond the queue: answered = in the backend + counted, exactly.
- A stop during an outage: what it could not flush is counted in its last line.
- SIGKILL: only the last moments before the kill are lost (the documented bound).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
import pytest

from testkit.load import Load
from testkit.support import Gateway, HttpServer, OtlpBackend, connectable, free_port, upstream_reply, wait_for

SUMMARY = re.compile(r"softprobe: stopped in .*; export: (\d+) span\(s\) exported since start, (\d+) lost(?:: (.*))?$",
                     re.MULTILINE)
SIGKILL_BOUND_S = 1.0  # docs/safety-and-limits.md: a kill -9 loses about the last flush interval


def summary(output: str) -> tuple[int, dict[str, int]]:
    """The stop's last line: (spans exported, {reason: spans lost})."""
    match = SUMMARY.search(output)
    assert match, output[-3000:]
    lost = {reason: int(n) for n, reason in re.findall(r"(\d+) (\w+) \(", match[3] or "")}
    assert sum(lost.values()) == int(match[2])
    return int(match[1]), lost


class Outage:
    """A backend's export answers: 200, or during `start(seconds)` 503 for the first half and
    connections reset without an answer for the second (`forever`: until the end)."""

    def __init__(self) -> None:
        self.until = self.reset_from = 0.0

    def start(self, seconds: float) -> None:
        now = time.monotonic()
        self.reset_from, self.until = now + seconds / 2, now + seconds

    def forever(self) -> None:
        self.reset_from = self.until = float("inf")

    def __call__(self, attempt: int) -> int:
        now = time.monotonic()
        if now >= self.until:
            return 200
        if now >= self.reset_from:
            raise ConnectionResetError("backend outage")
        return 503


def names(backend: OtlpBackend) -> list[str]:
    return [span.name for _, span in backend.spans()]


def dropped(gw: Gateway, admin: int) -> dict[str, float]:
    reasons = ("queue_full", "send_failed", "shutdown", "worker_died", "encode_failed", "worker_error")
    return {r: n for r in reasons if (n := gw.metric(admin, f'softprobe_export_dropped_spans_total{{reason="{r}"}}'))}


def test_sigterm_under_load_with_a_slow_backend_loses_no_answered_exchange(tmp_path):
    def slow_export(attempt: int) -> int:
        time.sleep(1.0)  # a backend taking a second per export (the case)
        return 200

    def reply(got):
        if got.path.startswith("/slow"):
            time.sleep(1.5)
        return upstream_reply(got)

    admin = free_port()
    with HttpServer(reply) as upstream, OtlpBackend(export_status=slow_export) as backend:
        config = {"sp_backend_url": backend.url, "admin_listen": f"127.0.0.1:{admin}"}
        gw = Gateway(config, tmp_path, own_group=True)
        try:
            load = Load(gw.port, upstream.url, clients=4).start()
            load.wait_answered(300)
            slow: list[int] = []
            with httpx.Client(proxy=gw.proxy, trust_env=False, timeout=10) as client:
                in_flight = threading.Thread(target=lambda: slow.append(
                    client.get(f"{upstream.url}/slow/1").status_code))
                in_flight.start()
                wait_for(lambda: any(r.path == "/slow/1" for r in upstream.received))
                signalled = time.time()
                os.killpg(gw.process.pid, signal.SIGTERM)   # a rolling update, systemd, kill -- -PGID
                wait_for(lambda: not connectable(gw.port), 2)  # no new connection while it drains
                ready = httpx.get(f"http://127.0.0.1:{admin}/readyz", trust_env=False).status_code
                in_flight.join(10)
            code = gw.process.wait(30)
            stopped = time.time() - signalled
            load.join()
        finally:
            gw.stop()
        output = gw.log_path.read_text()
        exported = names(backend)
    answered = set(load.answered)
    after = sum(at > signalled for at in load.answered_at)
    print(f"SIGTERM, backend 1 s per export: {len(answered)} answered ({after} after the signal, and the "
          f"1.5 s request in flight), {len(answered - set(exported))} missing; stopped in {stopped:.1f} s")
    assert code == 0 and ready == 503 and slow == [200]
    assert answered | {"/slow/1"} <= set(exported), output[-3000:]
    assert summary(output) == (len(exported), {})


def test_a_backend_outage_the_queue_holds_loses_nothing(tmp_path, upstream):
    outage, admin = Outage(), free_port()
    with OtlpBackend(export_status=outage) as backend:
        config = {"sp_backend_url": backend.url, "admin_listen": f"127.0.0.1:{admin}"}
        with Gateway(config, tmp_path) as gw:
            load = Load(gw.port, upstream.url, clients=2, pause_s=0.005).start()
            load.wait_answered(100)
            outage.start(4.0)
            before = len(load.answered)
            wait_for(lambda: time.monotonic() >= outage.until, 10)
            during = len(load.answered) - before
            load.wait_answered(len(load.answered) + 100)
            load.stop()
            answered = set(load.answered)
            wait_for(lambda: answered <= set(names(backend)), 30)
            retries = gw.metric(admin, "softprobe_export_retries_total")
            lost = dropped(gw, admin)
    print(f"4 s outage (503, then resets): {len(answered)} answered, {during} during it, "
          f"{retries:.0f} retries, lost {lost}")
    assert load.failed == 0 and during > 100 and retries > 0
    assert lost == {} and len(names(backend)) == len(answered)  # nothing lost, nothing twice


def test_an_outage_beyond_the_queue_counts_its_loss_exactly(tmp_path, upstream):
    outage, admin = Outage(), free_port()
    with OtlpBackend(export_status=outage) as backend:
        config = {"sp_backend_url": backend.url, "admin_listen": f"127.0.0.1:{admin}",
                  "export": {"queue_max_spans": 50, "batch_max_spans": 10}}
        with Gateway(config, tmp_path) as gw:
            load = Load(gw.port, upstream.url, clients=2, pause_s=0.005).start()
            load.wait_answered(50)
            outage.start(3.0)
            wait_for(lambda: time.monotonic() >= outage.until, 10)
            load.wait_answered(len(load.answered) + 50)
            load.stop()
            sent = len(load.answered)
            wait_for(lambda: len(names(backend)) + sum(dropped(gw, admin).values()) >= sent, 30)
            lost = dropped(gw, admin)
        output = gw.log_path.read_text()
    recorded = names(backend)
    print(f"3 s outage, queue of 50: sent {sent}, recorded {len(recorded)}, counted {lost}")
    assert set(recorded) <= set(load.answered) and len(set(recorded)) == len(recorded)
    assert lost.get("queue_full", 0) > 0
    assert sent == len(recorded) + sum(lost.values())
    assert summary(output) == (len(recorded), {r: int(n) for r, n in lost.items()})


def test_a_stop_during_an_outage_counts_what_it_could_not_flush(tmp_path, upstream):
    outage = Outage()
    with OtlpBackend(export_status=outage) as backend:
        config = {"sp_backend_url": backend.url, "export": {"shutdown_timeout_s": 1.0, "timeout_s": 1.0}}
        gw = Gateway(config, tmp_path, own_group=True)
        try:
            load = Load(gw.port, upstream.url, clients=2, pause_s=0.005).start()
            load.wait_answered(50)
            outage.forever()
            load.wait_answered(len(load.answered) + 100)
            os.killpg(gw.process.pid, signal.SIGTERM)
            code = gw.process.wait(30)
            load.join()
        finally:
            gw.stop()
        output = gw.log_path.read_text()
    exported, lost = summary(output)
    print(f"SIGTERM during an outage: {len(load.answered)} answered, {exported} exported, lost {lost}")
    assert code == 0 and exported == len(names(backend))
    assert set(lost) == {"shutdown"} and len(load.answered) == exported + lost["shutdown"]


def test_sigkill_loses_only_the_last_moments_before_the_kill(tmp_path, upstream, backend):
    gw = Gateway({"sp_backend_url": backend.url}, tmp_path)
    try:
        worker = wait_for(gw.worker_pid)
        load = Load(gw.port, upstream.url, clients=4).start()
        load.wait_answered(500)
        gw.process.kill()
        killed = time.time()
        load.join()
        # The orphaned worker still sends what it holds, then exits (end of file on its socket).
        wait_for(lambda: not os.path.exists(f"/proc/{worker}") or
                 open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", 15)
    finally:
        gw.stop()
    answered_at = dict(zip(load.answered, load.answered_at))
    missing = set(answered_at) - set(names(backend))
    oldest = max((killed - answered_at[path] for path in missing), default=0.0)
    print(f"SIGKILL under load: {len(answered_at)} answered, {len(missing)} lost, the oldest answered "
          f"{oldest * 1000:.0f} ms before the kill")
    assert oldest < SIGKILL_BOUND_S
