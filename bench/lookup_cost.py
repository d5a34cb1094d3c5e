"""`python -m bench.lookup_cost [--quick]`: the proxy's CPU per lookup, stage by stage, for
request bodies of 1 KiB, 64 KiB and 1 MiB (JSON, redaction on, as configured by default).

The stages are the gateway's own code, in one process, against the benchmark's backend
(`bench.servers`, its own process): build the inject span (capture and redaction of the request,
then the protobuf), serialize it, POST it and read a miss, POST it and read a hit of the same
size, decode that hit. Building runs on a worker thread for bodies over 4 KiB and decoding for
answers over 64 KiB, but both hold the GIL, so all of it is CPU taken from the proxy's process.
The figures are `time.process_time` per lookup, medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from softprobe_gateway.backends.httpclient import PostClient
from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.capture.exchange import Exchange, Message
from softprobe_gateway.config.schema import Config
from softprobe_gateway.otlp import decode_hit, inject_request

from testkit.support import LOOPBACK

from .procs import backend
from .servers import body_of

SIZES = {1024: 2000, 64 * 1024: 400, 1024 * 1024: 40}  # request body size: lookups per round
STAGES = ("build inject span", "serialize", "POST, read a miss", "POST, read a hit", "decode the hit")


def exchange(size: int) -> Exchange:
    headers = ((b"host", b"api:80"), (b"content-type", b"application/json"),
               (b"content-length", str(size).encode()))
    return Exchange(trace_id=b"t" * 16, span_id=b"s" * 8, parent_span_id=b"", session_id="session",
                    service_name="svc", direction="outbound", path="/api", host="api:80", start_ns=1,
                    request=Message(headers, body_of(size), ((":method", "POST"), (":path", "/api"))))


async def measure(port: int, size: int, count: int) -> list[float]:
    """CPU milliseconds per lookup for each stage."""
    config = Config()
    capture, max_body = Capture(config.capture, config.redaction), config.capture.max_body_bytes
    ex, limit = exchange(size), 2 * max_body + 64 * 1024
    headers = {"content-type": "application/x-protobuf"}
    miss = PostClient(f"http://{LOOPBACK}:{port}/miss/v1/inject", headers)
    hit = PostClient(f"http://{LOOPBACK}:{port}/hit/{size}/v1/inject", headers)
    totals = [0.0] * len(STAGES)
    try:
        for i in range(count + 5):  # 5 to connect and warm up
            marks = [time.process_time()]
            request = inject_request(ex, capture.request_attributes(ex), "")
            marks.append(time.process_time())
            payload = request.SerializeToString()
            marks.append(time.process_time())
            assert (await miss.post(payload, limit))[0] == 404
            marks.append(time.process_time())
            status, answer = await hit.post(payload, limit)
            marks.append(time.process_time())
            assert status == 200 and len(decode_hit(answer, max_body).body) == size
            marks.append(time.process_time())
            if i >= 5:
                for stage in range(len(STAGES)):
                    totals[stage] += marks[stage + 1] - marks[stage]
    finally:
        await miss.aclose()
        await hit.aclose()
    return [1000 * t / count for t in totals]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lookup_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: few lookups, one round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    with backend() as port:
        print(f"| request body | {' | '.join(STAGES)} | lookup that misses |")
        print(f"|---|{'--:|' * (len(STAGES) + 1)}")
        for size, count in SIZES.items():
            count = max(5, count // 40) if args.quick else count
            runs = [asyncio.run(measure(port, size, count)) for _ in range(rounds)]
            stages = [statistics.median(run[s] for run in runs) for s in range(len(STAGES))]
            missing = sum(stages[:3])
            print(f"| {size // 1024} KiB | {' | '.join(f'{ms:.3f}' for ms in stages)} | {missing:.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
