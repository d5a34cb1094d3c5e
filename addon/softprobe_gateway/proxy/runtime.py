"""Everything built from one config: compiled rules, capture, export and lookup.

A new config builds a new Runtime, swapped in whole between flows, so a flow never sees half
of one config and half of another. A replaced runtime is retired: it closes (flushing its export
queue) when the last flow that started with it ends, counted, not polled.
"""

from __future__ import annotations

import asyncio
import contextlib

from softprobe_gateway.backends.contract import Lookups
from softprobe_gateway.backends.select import backend_for
from softprobe_gateway.capture.encoding import Capture
from softprobe_gateway.config.schema import DEFAULT_SERVICE, Config, ConfigError, resolve_direction
from softprobe_gateway.decisions.interception import Passthrough
from softprobe_gateway.decisions.mocks import Mocks
from softprobe_gateway.decisions.rules import RecordingRules
from softprobe_gateway.decisions.sampling import Sampler
from softprobe_gateway.export.exporter import Exporter
from softprobe_gateway.metrics import Metrics
from softprobe_gateway.proxy.lookup import Lookup
from softprobe_gateway.proxy.routing import Address, Router


class Runtime:
    def __init__(self, config: Config, metrics: Metrics, listen: list[Address],
                 upstream_trust: str | None = None) -> None:
        self.config = config
        self.passthrough = Passthrough(config.tls.passthrough_hosts)
        self.upstream_trust = upstream_trust  # mitmproxy's ssl_verify_upstream_trusted_ca
        self.rules = RecordingRules(config.exemption_rules, config.collection_rules)
        self.sampler = Sampler(config.sampling)
        self.capture = Capture(config.capture, config.redaction)
        self.mocks = Mocks(config.mocks)
        self.router = Router(config.routing, listen)
        self._flows = 0  # flows started with this runtime that have not ended
        self._idle: asyncio.Event | None = None  # while retiring: set when no flow is left
        self.closed = False  # retired and closed: a flow ending later is exported by the current one
        self.backend = backend_for(config)
        # The exporter first: its worker is the store's one writer, and creates it.
        self.exporter = Exporter(config, metrics, self.backend)
        self._lookups: Lookups | None = None
        self.lookup: Lookup | None = None
        if config.enable_inject:
            try:
                self._lookups = self.backend.lookups(on_miss=self.exporter.record_miss)
            except ConfigError:
                self.exporter.close()
                raise
            self.lookup = Lookup(config.lookup, self._lookups.ask, metrics)

    @property
    def answers_locally(self) -> bool:
        """Whether some requests may be answered without an upstream connection."""
        return self.lookup is not None or bool(self.config.mocks)

    def service_name(self, header: str | None, caller: str | None) -> str:
        """Section 4: config, else the `x-sp-service-name` header, else the calling mesh
        workload, else the default."""
        configured = self.config.service_name
        if configured and configured != DEFAULT_SERVICE:
            return configured
        if header and header.strip():
            return header.strip()
        return caller or DEFAULT_SERVICE

    def direction(self, reverse_listener: bool) -> str:
        return resolve_direction(self.config.traffic_direction, reverse_listener)

    def describe(self, source: str, done: str = "loaded") -> str:
        """The start-up line (`loaded`), or a live reload's (`reloaded`)."""
        lookups = "on" if self.config.enable_inject else "off"
        return f"softprobe: config {source} {done}; exporting to {self.backend.describe()}; lookups {lookups}"

    @property
    def in_flight(self) -> int:
        """Flows started with this runtime that have not ended (a stop waits for them)."""
        return self._flows

    def hold(self) -> None:
        """A flow started with this runtime."""
        self._flows += 1

    def release(self) -> None:
        """A flow that started with this runtime ended (or was dropped)."""
        self._flows -= 1
        if self._flows == 0 and self._idle is not None:
            self._idle.set()

    async def retire(self, grace_s: float) -> None:
        """Close once the flows that started with this runtime have ended (it exports their
        exchanges), or after `grace_s`: a flow outliving that (a long WebSocket or event
        stream) is exported by the current runtime rather than lost."""
        self._idle = asyncio.Event()
        if self._flows:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        self.closed = True
        await self.aclose()

    def stop_waiting(self) -> None:
        """The proxy is stopping: no flow will end any more, close now."""
        if self._idle is not None:
            self._idle.set()

    async def aclose(self) -> None:
        """Close the lookup client and flush the export queue (off the event loop)."""
        if self._lookups is not None:
            await self._lookups.aclose()
        await asyncio.to_thread(self.exporter.close)
