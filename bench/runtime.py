"""`python -m bench.runtime [--quick]`: the store's ingest rate (`Store.ingest`) and lookup latency
(`Store.lookup`), in one process, for SQLite (a file) and PostgreSQL (a throwaway cluster,
testkit.postgres), at 1 KiB and 64 KiB bodies: what one `softprobe serve` replica's store costs,
before HTTP.

Batches of 100 spans, as gateways export them under load; a fresh file or database per figure.
The rate is exchanges per wall-clock second; the CPU is this process's (the PostgreSQL server's
own CPU is not in it: it runs on the other core). Lookups are a replay run's: each advances the
run's position (on PostgreSQL, in the database) and reads the recorded answer.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

from testkit.postgres import Cluster
from testkit.spans import extract_span, inject, traces

BATCH = 100


def ingest_rate(config: StoreConfig, exchanges: int, body_kib: int) -> tuple[float, float, list[float]]:
    """(exchanges per second, CPU microseconds per exchange) of ingesting into a new store, and
    the milliseconds each of as many lookups as a tenth of them took afterwards."""
    body = "x" * (body_kib * 1024)
    batches = [traces(*(extract_span("POST", path=f"/api/{b}/{i}", session=f"s{b}", body=body,
                                     content_type="text/plain", answer=body) for i in range(BATCH)))
               for b in range(exchanges // BATCH)]
    with Store(config) as store:
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            store.ingest(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        latencies = []
        for n in range(exchanges // 10):
            b, i = n % len(batches), n * 7 % BATCH
            request = inject("POST", path=f"/api/{b}/{i}", session=f"s{b}~bench", body=body, content_type="text/plain")
            started = time.perf_counter()
            assert store.lookup(request) is not None
            latencies.append((time.perf_counter() - started) * 1000)
    return exchanges / wall, cpu / exchanges * 1e6, latencies


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the exchanges")
    args = parser.parse_args()
    cluster = Cluster()
    try:
        for kib, count in ((1, 10_000), (64, 2_000)):
            count //= 10 if args.quick else 1
            with tempfile.TemporaryDirectory() as d:
                sqlite = ingest_rate(StoreConfig(path=str(Path(d) / "bench.db"), max_exchanges=10 * count),
                                     count, kib)
            postgres = ingest_rate(StoreConfig(url=cluster.database(migrated=True), max_exchanges=10 * count),
                                   count, kib)
            for name, (rate, cpu, lookups) in (("sqlite", sqlite), ("postgresql", postgres)):
                print(f"{kib:>3} KiB bodies  {name:<11} ingest {rate:7.0f} exchanges/s ({cpu:4.0f} us CPU each)  "
                      f"lookup p50 {percentile(lookups, 50):.2f} ms, p99 {percentile(lookups, 99):.2f} ms",
                      flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
