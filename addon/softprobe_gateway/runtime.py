"""Everything built from one config: compiled rules, capture, export and lookup.

A new config builds a new Runtime, swapped in whole between flows, so a flow never sees half
of one config and half of another.
"""

from __future__ import annotations

import asyncio

from .backend.store import Store
from .capture import Capture
from .config import DEFAULT_SERVICE, Config, ConfigError, resolve_direction
from .export import Exporter
from .export.sinks import open_store
from .httpclient import PostClient
from .interception import Passthrough
from .lookup import Lookup, Transport, http_transport, store_transport
from .metrics import Metrics
from .mocks import Mocks
from .routing import Address, Router
from .rules import RecordingRules


class Runtime:
    def __init__(self, config: Config, metrics: Metrics, listen: list[Address],
                 upstream_trust: str | None = None) -> None:
        self.config = config
        self.passthrough = Passthrough(config.tls.passthrough_hosts)
        self.upstream_trust = upstream_trust  # mitmproxy's ssl_verify_upstream_trusted_ca
        self.rules = RecordingRules(config.exemption_rules, config.collection_rules)
        self.capture = Capture(config.capture, config.redaction)
        self.mocks = Mocks(config.mocks)
        self.router = Router(config.routing, listen)
        self._http_client: PostClient | None = None
        self._store: Store | None = None
        # The exporter first: its worker is the store's one writer, and creates it.
        self.exporter = Exporter(config, metrics)
        try:
            self.lookup = Lookup(config.lookup, self._transport(config), metrics) if config.enable_inject else None
        except ConfigError:
            self.exporter.close()
            raise

    def _transport(self, config: Config) -> Transport:
        max_body = config.capture.max_body_bytes
        if config.backend_kind == "http":
            transport, self._http_client = http_transport(config.sp_backend_url, config.public_key, max_body)
            return transport
        if config.backend_kind == "file":
            raise ConfigError("key 'enable_inject': a file: backend cannot answer lookups")
        # Lookups only read; their misses are diagnosed and written by the worker.
        self._store = open_store(config, read_only=True, on_miss=self.exporter.record_miss)
        return store_transport(self._store.lookup, max_body)

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
        if self._store is not None:
            self._store.close()
