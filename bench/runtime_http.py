"""`python -m bench.runtime_http [--quick]`: the runtime over HTTP, as gateways and test harnesses
use it: real `softprobe serve` processes behind a real nginx round robin (testkit.replicas), on
SQLite (one replica, a file) and on PostgreSQL (one replica and two, one database), at 1 KiB and
64 KiB bodies.

- ingest: exchanges per second that `CLIENTS` concurrent exporters get recorded (`POST /v1/traces`,
  batches of 100 spans, as gateways export under load), and the CPU each exchange cost the serve
  processes (all replicas together) and the PostgreSQL server: what sizing rests on.
- lookup: p50/p99 of one client's replay lookups one after another (`POST /v1/inject`, each
  advances the run's position), then lookups per second from `CLIENTS` at once.

Everything runs on this machine: the clients, nginx, the replicas and PostgreSQL share its cores,
so two replicas can be no faster than the cores left to them (the CPU figures say what a replica
costs on a machine with cores to spare).
"""

from __future__ import annotations

import argparse
import http.client
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bench.runtime import BATCH, percentile
from testkit.postgres import Cluster
from testkit.replicas import PROTOBUF, Replicas
from testkit.serve import KEY
from testkit.spans import extract_span, inject, traces

CLIENTS = 4
_TICK = os.sysconf("SC_CLK_TCK")
_HEADERS = {**PROTOBUF, "x-public-key": KEY}


def cpu_s(pids: list[int]) -> float:
    """User and system CPU seconds the processes (and their waited-for children) have used."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited
        total += sum(int(f) for f in fields[11:15])
    return total / _TICK


def postgres_pids(cluster: Cluster) -> list[int]:
    """The PostgreSQL server's processes: the postmaster and its children (one per connection)."""
    postmaster = int((cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return [postmaster, *children]


def post_all(url: str, bodies: list[bytes], path: str, clients: int, expect: int = 200) -> list[float]:
    """POST each body once, spread over `clients` keep-alive connections; each call's milliseconds."""
    address = urlsplit(url)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        mine = []
        for body in bodies[k::clients]:
            started = time.perf_counter()
            connection.request("POST", path, body, _HEADERS)
            reply = connection.getresponse()
            reply.read()
            mine.append((time.perf_counter() - started) * 1000)
            assert reply.status == expect, (reply.status, path)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(latencies) == len(bodies), "a client failed"
    return latencies


def measure(replicas: Replicas, db_pids: Callable[[], list[int]], exchanges: int, kib: int,
            asked: int) -> dict[str, float]:
    body = "x" * (kib * 1024)
    batches = [traces(*(extract_span("POST", path=f"/api/{b}/{i}", session=f"s{b}", body=body,
                                     content_type="text/plain", answer=body) for i in range(BATCH))).SerializeToString()
               for b in range(exchanges // BATCH)]
    serve = [b.process.pid for b in replicas.backends]
    cpu_before, db_before, wall = cpu_s(serve), cpu_s(db_pids()), time.perf_counter()
    post_all(replicas.lb.url, batches, "/v1/traces", CLIENTS)
    wall = time.perf_counter() - wall
    serve_cpu, db_cpu = cpu_s(serve) - cpu_before, cpu_s(db_pids()) - db_before
    lookups = [inject("POST", path=f"/api/{n % len(batches)}/{n * 7 % BATCH}", session=f"s{n % len(batches)}~bench",
                      body=body, content_type="text/plain").SerializeToString() for n in range(asked)]
    alone = post_all(replicas.lb.url, lookups[: len(lookups) // 2], "/v1/inject", 1)
    started = time.perf_counter()
    post_all(replicas.lb.url, lookups[len(lookups) // 2:], "/v1/inject", CLIENTS)
    rate = (len(lookups) - len(lookups) // 2) / (time.perf_counter() - started)
    return {"ingest": exchanges / wall, "serve_us": serve_cpu / exchanges * 1e6, "db_us": db_cpu / exchanges * 1e6,
            "p50": percentile(alone, 50), "p99": percentile(alone, 99), "lookups": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the exchanges")
    args = parser.parse_args()
    print("| case | ingest exchanges/s | serve CPU us/exchange | PostgreSQL CPU us/exchange | lookup p50 ms | "
          "lookup p99 ms | lookups/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cluster = Cluster()
    try:
        scale = 10 if args.quick else 1
        for kib, count in ((1, 10_000 // scale), (64, 1_000 // scale)):
            for engine, replicas in (("sqlite", 1), ("postgresql", 1), ("postgresql", 2)):
                with tempfile.TemporaryDirectory() as d:
                    url = cluster.database(migrated=True) if engine == "postgresql" else ""
                    with Replicas(Path(d), url, count=replicas) as running:
                        pids = (lambda: postgres_pids(cluster)) if url else (lambda: [])
                        got = measure(running, pids, count, kib, 2_000 // scale)
                name = f"{engine}, {replicas} replica{'s' if replicas > 1 else ''}, {kib} KiB"
                print(f"| {name} | {got['ingest']:.0f} | {got['serve_us']:.0f} | {got['db_us']:.0f} | "
                      f"{got['p50']:.2f} | {got['p99']:.2f} | {got['lookups']:.0f} |", flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
