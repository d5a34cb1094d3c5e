"""`python -m bench.hook_cost [--quick]`: the proxy process's CPU per request, hook by hook, for
a request that is not recorded (sampled out) and for one that is.

The gateway's addons (`gateway.addons()`, as mitmdump loads them), configured and running in
mitmproxy's test context, each hook called directly on prepared flows shaped as wrk sends them
(reverse mode, `Host` only; a 1 KiB answer). No sockets and no mitmproxy dispatch: what remains
is the addons' own work on the event loop, plus, for a recorded request, the export feeder
thread's copy of the exchange (`time.process_time` counts every thread of the process; the
export worker is another process, not counted here: `python -m bench` counts everything).
Microseconds per flow, medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from testkit.support import started_addons

HOOKS = ("requestheaders", "request", "responseheaders", "response")
CASES = {"sampled out": "sampling: {rate: 0.0}\n", "recorded": ""}
MODE = ProxyMode.parse("reverse:http://127.0.0.1:9")


def prepared(count: int) -> list[http.HTTPFlow]:
    flows = []
    for _ in range(count):
        flow = tflow.tflow()
        flow.client_conn.proxy_mode = MODE
        flow.request.headers = http.Headers([(b"Host", b"127.0.0.1:8080")])
        flow.request.path = "/body/1024"
        flow.response = None
        flows.append(flow)
    return flows


def answer() -> http.Response:
    return http.Response.make(200, b"x" * 1024, {"content-type": "application/json"})


async def measure(config: Path, count: int, rounds: int) -> dict[str, float]:
    """Microseconds of CPU per flow for each hook (the answerer's async `request` awaited)."""
    per_hook: dict[str, list[float]] = {hook: [] for hook in HOOKS}
    with started_addons(config) as gateway:
        for _ in range(rounds + 1):  # the first round warms up
            flows, answers = prepared(count), [answer() for _ in range(count)]
            gc.collect()
            for hook in HOOKS:
                handlers = [getattr(a, hook) for a in gateway.addons if hasattr(a, hook)]
                if hook == "responseheaders":
                    for flow, response in zip(flows, answers):
                        flow.response = response
                start = time.process_time()
                for flow in flows:
                    for handler in handlers:
                        if asyncio.iscoroutine(result := handler(flow)):
                            await result
                per_hook[hook].append((time.process_time() - start) / count * 1e6)
        await gateway.lifecycle.done()
    return {hook: statistics.median(times[1:]) for hook, times in per_hook.items()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hook_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: few flows, one round")
    args = p.parse_args(argv)
    count, rounds = (200, 1) if args.quick else (5000, 5)
    print(f"| request | {' | '.join(HOOKS)} | all hooks, us per request |")
    print(f"|---|{'--:|' * (len(HOOKS) + 1)}")
    with tempfile.TemporaryDirectory(prefix="softprobe-hooks-") as tmp:
        for case, extra in CASES.items():
            config = Path(tmp) / "gateway.yaml"
            config.write_text(f"sp_backend_url: 'file:{Path(tmp) / 'out.jsonl'}'\nadmin_listen: ''\n{extra}")
            costs = asyncio.run(measure(config, count, rounds))
            cells = " | ".join(f"{costs[hook]:.1f}" for hook in HOOKS)
            print(f"| {case} | {cells} | {sum(costs.values()):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
