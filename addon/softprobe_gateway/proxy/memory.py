"""The gateway's process memory: finished flows freed promptly, and the allocator's settings.

mitmproxy 11's HTTP stream layer refers to itself (its state is a bound method of itself), so a
finished flow, bodies included, is freed only by Python's cyclic garbage collector, never by
reference counting. A flow still in flight when a young collection runs is promoted; the oldest
generation is collected only once it has grown by a quarter of all long-lived objects (about
80 000 after start-up). With 1 MiB bodies that is hundreds of MiB of dead flows: bare mitmdump
grew from about 200 to 330 MiB in 14 s of 1 MiB uploads, 190 dead flows still alive (measured),
and the gateway was OOM-killed within 20 s inside the Deployment's 512 MiB.
"""

from __future__ import annotations

import gc
import os

from mitmproxy import http

from softprobe_gateway.capture.exchange import BodyTee

# glibc reads these when a process starts (setting them from inside Python is too late for
# that process): one arena per two threads at most instead of eight per core, so memory freed
# by one thread (a lookup encoded on a worker thread) is reused by the others rather than kept
# in an arena of its own. The image, `make run` and the README's command lines set the same.
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "2"}
COLLECT_EVERY_BYTES = 32 * 1024 * 1024


class Reclaim:
    """A mitmproxy addon beside the gateway's own (it sees every flow, recorded or not).

    Once the proxy runs it collects, then freezes what start-up left (modules, config: never
    garbage; no longer scanned, nor counted towards that quarter), and collects again after
    every `every_bytes` of bodies held by finished flows, streamed ones included. A collection
    then scans a few thousand objects; most of its time is freeing the bodies, which costs the
    same whenever it happens."""

    def __init__(self, every_bytes: int = COLLECT_EVERY_BYTES) -> None:
        self.every_bytes = every_bytes
        self.pending = 0  # body bytes of flows finished since the last collection

    def load(self, loader) -> None:
        # Processes started from here on (the export worker) get the allocator settings at
        # exec even when the proxy itself was started without them.
        for name, value in ALLOCATOR_ENV.items():
            os.environ.setdefault(name, value)

    def running(self) -> None:
        gc.collect()
        gc.freeze()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self.pending += held(flow.request) + (held(flow.response) if flow.response else 0)
        if self.pending >= self.every_bytes:
            self.pending = 0
            gc.collect()


def held(message: http.Message) -> int:
    """Body bytes a finished message may still pin: its body, or for a streamed one what the
    gateway's tee kept of it for the span (the chunks themselves are not kept)."""
    if message.raw_content is not None:
        return len(message.raw_content)
    return len(message.stream.kept) if isinstance(message.stream, BodyTee) else 0
