"""`python -m bench.lookup_client [--quick]`: CPU per lookup of the gateway's lookup client
(`softprobe_gateway.backends.httpclient`), of h11 over asyncio streams and of httpx, on loopback.

Each client POSTs request bodies of 1 KiB, 64 KiB and 1 MiB, one after another over one
keep-alive connection, to the benchmark's backend (`bench.servers`, its own process), which
answers a recorded hit of the same size. The figure is the client process's CPU time
(`time.process_time`) per lookup, the median of the rounds: on the gateway that CPU is taken
from the one event loop that proxies every request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import h11
import httpx
from softprobe_gateway.backends.httpclient import PostClient

from testkit.support import LOOPBACK

from .procs import backend

SIZES = {1024: 3000, 64 * 1024: 1000, 1024 * 1024: 100}  # body size: lookups per round
Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]


class H11Client:
    """The same keep-alive POST with h11 doing the HTTP/1.1 parsing (interim answers skipped)."""

    def __init__(self, url: str) -> None:
        self.url = httpx.URL(url)
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.h11 = h11.Connection(h11.CLIENT)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.url.host, self.url.port)
        else:
            self.h11.start_next_cycle()
        reader, writer = self.streams
        headers = [("host", f"{self.url.host}:{self.url.port}"), ("content-type", "application/x-protobuf"),
                   ("content-length", str(len(body)))]
        writer.write(self.h11.send(h11.Request(method="POST", target=self.url.raw_path, headers=headers)))
        writer.write(self.h11.send(h11.Data(data=body)))
        writer.write(self.h11.send(h11.EndOfMessage()))
        status, chunks = 0, []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await reader.read(256 * 1024))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif not isinstance(event, h11.InformationalResponse):
                raise RuntimeError(f"unexpected {event!r}")

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


async def measure(name: str, url: str, size: int, count: int) -> float:
    """CPU milliseconds per lookup of `count` sequential POSTs of `size` bytes."""
    body = b"x" * size
    if name == "softprobe":
        client = PostClient(url, {"content-type": "application/x-protobuf"})
        post: Post = lambda b: client.post(b, 2 * size + 65536)
        close = client.aclose
    elif name == "h11":
        h11_client = H11Client(url)
        post, close = h11_client.post, h11_client.aclose
    else:
        http = httpx.AsyncClient(trust_env=False, headers={"content-type": "application/x-protobuf"})

        async def post(b: bytes) -> tuple[int, bytes]:
            answer = await http.post(url, content=b)
            return answer.status_code, answer.content
        close = http.aclose
    try:
        for _ in range(min(20, count)):  # connect and warm up
            status, answer = await post(body)
            assert status == 200 and len(answer) > size, (name, status, len(answer))
        started = time.process_time()
        for _ in range(count):
            await post(body)
        return (time.process_time() - started) * 1000 / count
    finally:
        await close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lookup_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: few lookups, one round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    with backend() as port:
        print("| client | request body | CPU ms per lookup |\n|---|---|---|")
        for size, count in SIZES.items():
            count = max(10, count // 30) if args.quick else count
            url = f"http://{LOOPBACK}:{port}/hit/{size}/v1/inject"
            for name in ("softprobe", "h11", "httpx"):
                cpu = statistics.median(asyncio.run(measure(name, url, size, count)) for _ in range(rounds))
                print(f"| {name} | {size // 1024} KiB | {cpu:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
