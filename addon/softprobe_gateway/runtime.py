"""Everything built from one config: compiled rules, capture, export and lookup.

A new config builds a new Runtime, swapped in whole between flows, so a flow never sees half
of one config and half of another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from .backend.store import Store, StoreError
from .capture import Capture
from .config import DEFAULT_SERVICE, Config, ConfigError, resolve_direction
from .export import Exporter, FileSink, HttpSink, SendError, Sink
from .lookup import Lookup, Transport, http_transport, store_transport
from .metrics import Metrics
from .mocks import Mocks
from .routing import Address, Router
from .rules import RecordingRules

log = logging.getLogger(__name__)


class StoreSink:
    """The embedded backend: batches go straight into the SQLite store (on the export thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def send(self, batch: TracesData) -> int:
        try:
            self.store.ingest(batch)
        except StoreError as e:
            raise SendError(str(e)) from None
        return batch.ByteSize()

    def close(self) -> None:
        self.store.close()


class Runtime:
    def __init__(self, config: Config, metrics: Metrics, listen: list[Address]) -> None:
        self.config = config
        self.public_key = config.public_key
        self.rules = RecordingRules(config.exemption_rules, config.collection_rules)
        self.capture = Capture(config.capture, config.redaction)
        self.mocks = Mocks(config.mocks)
        self.router = Router(config.routing, listen)
        self._http_client = None
        max_body = config.capture.max_body_bytes
        sink: Sink
        transport: Transport | None = None
        kind = config.backend_kind
        if kind == "http":
            sink = HttpSink(config.sp_backend_url, self.public_key, config.export.timeout_s)
            if config.enable_inject:
                transport, self._http_client = http_transport(
                    config.sp_backend_url, self.public_key, max_body)
        elif kind == "file":
            try:
                sink = FileSink(config.local_path)
            except OSError as e:
                raise ConfigError(f"key 'sp_backend_url': cannot open {config.local_path}: {e.strerror}") from None
            if config.enable_inject:
                raise ConfigError("key 'enable_inject': a file: backend cannot answer lookups")
        else:
            try:
                store = Store(dataclasses.replace(config.store, path=config.local_path))
            except StoreError as e:
                raise ConfigError(f"key 'store.path': {e}") from None
            sink = StoreSink(store)
            if config.enable_inject:
                transport = store_transport(store.lookup, max_body)
        self.lookup = Lookup(config.lookup, transport, metrics) if transport else None
        self.exporter = Exporter(config.export, self.capture, sink, self.public_key, metrics)

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

    def describe(self, source: str) -> str:
        c = self.config
        where = {"http": c.sp_backend_url, "file": f"OTLP JSON lines in {c.local_path}",
                 "store": f"embedded store {c.local_path}"}[c.backend_kind]
        lookups = "on" if c.enable_inject else "off"
        return f"softprobe: config {source} loaded; exporting to {where}; lookups {lookups}"

    async def aclose(self) -> None:
        """Close the lookup client and flush the export queue (off the event loop)."""
        if self._http_client is not None:
            await self._http_client.aclose()
        await asyncio.to_thread(self.exporter.close)
