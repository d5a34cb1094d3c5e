"""Everything built from one config: compiled rules, capture, export and lookup.

A new config builds a new Runtime, swapped in whole between flows, so a flow never sees half
of one config and half of another.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from .capture import Capture
from .config import DEFAULT_SERVICE, Config, resolve_direction
from .export import Exporter, FileSink, HttpSink, Sink
from .lookup import Lookup, http_transport
from .metrics import Metrics
from .rules import RecordingRules

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.public_key = config.public_key
        self.rules = RecordingRules(config.exemption_rules, config.collection_rules)
        self.capture = Capture(config.capture)
        self._http_client = None
        sink: Sink
        kind = config.backend_kind
        if kind == "http":
            sink = HttpSink(config.sp_backend_url, self.public_key, config.export.timeout_s)
        elif kind == "file":
            sink = FileSink(config.local_path)
        else:
            raise NotImplementedError("embedded store")
        self.lookup: Lookup | None = None
        if config.enable_inject:
            transport, self._http_client = http_transport(
                config.sp_backend_url, self.public_key, config.capture.max_body_bytes)
            self.lookup = Lookup(config.lookup, transport, metrics)
        self.exporter = Exporter(config.export, self.capture, sink, self.public_key, metrics)

    @property
    def answers_locally(self) -> bool:
        """Whether some requests may be answered without an upstream connection."""
        return self.lookup is not None

    def service_name(self, header: str | None) -> str:
        """Section 4: config, else the `x-sp-service-name` header, else the default."""
        configured = self.config.service_name
        if configured and configured != DEFAULT_SERVICE:
            return configured
        return header.strip() if header and header.strip() else DEFAULT_SERVICE

    def direction(self, reverse_listener: bool) -> str:
        return resolve_direction(self.config.traffic_direction, reverse_listener)

    def describe(self, source: str) -> str:
        c = self.config
        where = {"http": c.sp_backend_url, "file": f"OTLP JSON lines in {c.local_path}",
                 "store": f"embedded store {c.local_path}"}[c.backend_kind]
        lookups = "on" if c.enable_inject else "off"
        return f"softprobe: config {source} loaded; exporting to {where}; lookups {lookups}"

    def close(self) -> None:
        """Retire a runtime replaced by a reload: flush its queue off the event loop."""
        threading.Thread(target=self.exporter.close, name="softprobe-retire", daemon=True).start()

    async def aclose(self) -> None:
        if self._http_client is not None:
            await self._http_client.aclose()
        await asyncio.to_thread(self.exporter.close)
