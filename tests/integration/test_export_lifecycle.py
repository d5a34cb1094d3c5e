"""The export worker's life with a real mitmdump: stops by signal lose nothing, a killed worker
is restarted and its loss counted, and lookups against the embedded store never wait for its
writes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.model import LookupRequest
from softprobe_gateway.store.store import Store

from testkit.support import Gateway, free_port, wait_for

UPLOADS = """
import os, sys, httpx
body = os.urandom(256 * 1024)
with httpx.Client(proxy=sys.argv[1], trust_env=False, timeout=10) as client:
    for i in range(100_000):
        client.post(f"{sys.argv[2]}{i}", content=body, headers={"content-type": "application/octet-stream"})
"""
STOPS = {"sigterm-group": (signal.SIGTERM, True), "sigterm-pid": (signal.SIGTERM, False),
         "sigint-group": (signal.SIGINT, True)}


def stored_paths(db: Path) -> list[str]:
    with sqlite3.connect(db) as store:
        return [path for (path,) in store.execute("SELECT path FROM exchanges")]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def readyz(admin: int) -> int:
    return httpx.get(f"http://127.0.0.1:{admin}/readyz", trust_env=False).status_code


@pytest.mark.parametrize("sink", ["otlp", "store"])
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_by_signal_flushes_every_queued_exchange(tmp_path, upstream, backend, stop, sink):
    signum, group = STOPS[stop]
    db = tmp_path / "sp.db"
    config = {"sp_backend_url": backend.url if sink == "otlp" else "", "store": {"path": str(db)},
              "export": {"flush_interval_ms": 60_000, "batch_max_spans": 1000}}
    gw = Gateway(config, tmp_path, own_group=True)
    try:
        worker = wait_for(gw.worker_pid)
        with gw.client() as client:
            for i in range(20):
                assert client.get(f"{upstream.url}/n{i}").status_code == 200
        assert backend.spans() == []                 # queued: the flush interval is a minute
        if group:                                     # systemd, `kill -- -PGID`, Ctrl-C in a terminal
            os.killpg(gw.process.pid, signum)
        else:
            gw.process.send_signal(signum)
        gw.process.wait(20)
        wait_for(lambda: not alive(worker))
    finally:
        gw.stop()
    exported = [span.name for _, span in backend.spans()] if sink == "otlp" else stored_paths(db)
    assert sorted(exported) == sorted(f"/n{i}" for i in range(20)), gw.log_path.read_text()


def test_the_worker_exits_when_the_gateway_is_killed(tmp_path, backend):
    with Gateway({"sp_backend_url": backend.url}, tmp_path) as gw:
        worker = wait_for(gw.worker_pid)
        gw.process.kill()
        gw.process.wait()
        wait_for(lambda: not alive(worker))


def test_a_killed_worker_is_restarted_and_its_loss_counted(tmp_path, upstream):
    admin, db = free_port(), tmp_path / "sp.db"
    config = {"store": {"path": str(db)}, "admin_listen": f"127.0.0.1:{admin}",
              "export": {"flush_interval_ms": 10, "batch_max_spans": 8}}
    sent, failed, done = [], [], threading.Event()
    body = os.urandom(128 * 1024)  # base64 and a redaction scan: the worker is busy, batches in flight

    def traffic(gw: Gateway, k: int) -> None:
        with gw.client(timeout=10) as client:
            for i in range(100_000):
                if done.is_set():
                    return
                path = f"/load/{k}/{i}"
                ok = client.post(f"{upstream.url}{path}", content=body).status_code == 200
                (sent if ok else failed).append(path)

    with Gateway(config, tmp_path) as gw:
        first = wait_for(gw.worker_pid)
        wait_for(lambda: readyz(admin) == 200)
        clients = [threading.Thread(target=traffic, args=(gw, k)) for k in range(2)]
        for thread in clients:
            thread.start()
        try:
            wait_for(lambda: len(sent) >= 100)
            os.kill(first, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: readyz(admin) == 503, interval=0.005)
            wait_for(lambda: readyz(admin) == 200, 30)
            restarted = time.monotonic() - killed
            assert gw.worker_pid() not in (None, first)
            during = len(sent)
            wait_for(lambda: len(sent) >= during + 100)  # traffic kept flowing, and keeps flowing
        finally:
            done.set()
            for thread in clients:
                thread.join()
        # What the dead worker held, and what the queue refused while no worker took batches
        # (it fills within the restart when the proxy runs fast): both lost, both counted.
        lost = sum(gw.metric(admin, f'softprobe_export_dropped_spans_total{{reason="{reason}"}}')
                   for reason in ("worker_died", "queue_full"))
        restarts = gw.metric(admin, "softprobe_export_worker_restarts_total")
        assert gw.stop() == 0
    missing = set(sent) - set(stored_paths(db))
    print(f"restart: ready again {restarted:.2f} s after kill -9; proxied {len(sent)}, "
          f"lost {lost:.0f} (counted), missing {len(missing)}")
    assert failed == [] and restarts == 1
    assert len(missing) == lost, gw.log_path.read_text()


def test_misses_are_answered_quickly_while_the_worker_ingests_large_batches(tmp_path, upstream):
    admin, db = free_port(), tmp_path / "sp.db"
    config = {"store": {"path": str(db)}, "enable_inject": True, "admin_listen": f"127.0.0.1:{admin}",
              "lookup": {"timeout_ms": 300}, "export": {"flush_interval_ms": 20}}

    def miss(store: Store, i: int) -> float:
        started = time.perf_counter()
        assert store.replay(LookupRequest(f"s{i}", "GET", "nowhere", f"/direct/{i}", "", "")) is None
        return time.perf_counter() - started

    with Gateway(config, tmp_path) as gw, gw.client() as client:
        exported = lambda: gw.metric(admin, "softprobe_export_spans_total")
        # A steady stream of large recorded exchanges, from other processes (not this one's GIL).
        uploads = subprocess.Popen([sys.executable, "-c", UPLOADS, gw.proxy, f"{upstream.url}/upload/"])
        try:
            wait_for(lambda: exported() >= 8, 30)
            before = exported()
            # The store as the proxy opens it (read-only, misses handed on), in this process.
            with Store(StoreConfig(path=str(db)), read_only=True, on_miss=lambda m: None) as store:
                direct = sorted(miss(store, i) for i in range(300))
            proxied = []
            for i in range(60):
                started = time.perf_counter()
                assert client.get(f"{upstream.url}/miss/{i}").status_code == 200
                proxied.append(time.perf_counter() - started)
            ingested = exported() - before
        finally:
            uploads.kill()
            uploads.wait()
        # The gateway's misses are diagnosed and written by its worker, off the lookup path.
        wait_for(lambda: any(m.path == "/miss/59" for m in Store(StoreConfig(path=str(db)), read_only=True).misses()))
    proxied.sort()
    print(f"store misses while {ingested:.0f} x 256 KiB exchanges were ingested: p50 "
          f"{direct[150] * 1000:.2f} ms, p99 {direct[297] * 1000:.2f} ms, max {direct[-1] * 1000:.2f} ms; "
          f"proxied small requests (a miss each) p50 {proxied[30] * 1000:.1f} ms, max {proxied[-1] * 1000:.1f} ms")
    assert ingested > 0
    assert direct[297] < 0.05      # before: a lookup waited up to 2 s behind the worker's write
