"""The gateway's configuration schema: a tree of frozen dataclasses, every key optional.

Field metadata drives validation (`validate`): the YAML spelling of a key, bounds, and checks
(`regex`, `host`, `backend_url`, `listen`). `loader` reads the YAML file into it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from softprobe_gateway.otlp import DEFAULT_SERVICE

PUBLIC_KEY_ENV = "SOFTPROBE_PUBLIC_KEY"  # the public key comes from the environment, never a file



class ConfigError(ValueError):
    """A configuration value is wrong. The message is one line naming the key (and file)."""


def _key(name: str) -> dict[str, str]:
    """Field metadata giving the YAML spelling of a key (the original agent's camelCase)."""
    return {"key": name}


def _regex(metadata: str = "regex") -> dict[str, str]:
    return {"check": metadata}


def _size(minimum: int) -> dict[str, Any]:
    """A byte size: an integer or a string as mitmproxy spells sizes (`64k`, `1m`)."""
    return {"min": minimum, "size": True}


# -- recording rules (section 5 of the protocol) ---------------------------------------------


@dataclass(frozen=True)
class ExemptionRule:
    hostPatterns: tuple[str, ...] = field(default=(), metadata=_regex())
    pathPatterns: tuple[str, ...] = field(default=(), metadata=_regex())


DEFAULT_EXEMPT_PATHS = (
    "/v1/traces", "/api/traces", "/v1/metrics", "/api/metrics", "/v1/logs", "/api/logs",
    "/otlp/v1/traces", "/otlp/v1/metrics", "/otlp/v1/logs",
)
DEFAULT_EXEMPTIONS = (
    ExemptionRule(pathPatterns=tuple(f"^{re.escape(p)}$" for p in DEFAULT_EXEMPT_PATHS)),
)


@dataclass(frozen=True)
class ServerRule:
    path: str = field(default="", metadata=_regex())


@dataclass(frozen=True)
class ClientRule:
    host: str = field(default="", metadata=_regex())
    paths: tuple[str, ...] = field(default=(), metadata=_regex())


@dataclass(frozen=True)
class HttpCollection:
    server: tuple[ServerRule, ...] = ()
    client: tuple[ClientRule, ...] = ()


@dataclass(frozen=True)
class CollectionRules:
    http: HttpCollection = HttpCollection()


# -- new sections -------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureConfig:
    """What is kept of each exchange."""

    max_body_bytes: int = field(default=1024 * 1024, metadata=_size(0))
    # Bodies longer than this, or of unknown length, stream through (never held whole in memory);
    # the span keeps their first max_body_bytes.
    stream_threshold_bytes: int = field(default=1024 * 1024, metadata=_size(0))
    drop_headers: tuple[str, ...] = ()
    mask_headers: tuple[str, ...] = ()
    # WebSocket messages recorded as span events, per connection (0: none); later ones are counted.
    websocket_messages: int = field(default=0, metadata={"min": 0})


# Matched case-insensitively, ignoring `_` and `-` (so `card_number` is also `cardNumber`);
# `*` is any run of characters; a dotted entry is a path from the body's root.
DEFAULT_REDACT_FIELDS = (
    "*password", "passwd", "pwd", "*secret", "token", "access_token", "refresh_token",
    "id_token", "auth_token", "api_key", "private_key",
    "card_number", "pan", "cvv", "cvv2", "cvc", "cvc2", "*card.number",
)


@dataclass(frozen=True)
class RedactionConfig:
    """Secrets masked (or hashed) in what is recorded; proxied traffic is never changed."""

    enabled: bool = True
    mode: Literal["mask", "hash"] = "mask"
    mask: str = "[REDACTED]"
    fields: tuple[str, ...] = DEFAULT_REDACT_FIELDS
    extra_fields: tuple[str, ...] = ()
    patterns: tuple[str, ...] = field(default=(), metadata=_regex())
    luhn_cards: bool = True
    bearer_tokens: bool = True
    salt: str = field(default="", repr=False)


@dataclass(frozen=True)
class ExportConfig:
    """Batching, bounds and retries of the asynchronous export."""

    batch_max_spans: int = field(default=512, metadata={"min": 1})
    # Both byte bounds measured under the Deployment's limits (docs/performance.md, "Memory").
    batch_max_bytes: int = field(default=2 * 1024 * 1024, metadata=_size(1024))
    flush_interval_ms: int = field(default=200, metadata={"min": 1})
    queue_max_spans: int = field(default=10_000, metadata={"min": 1})
    queue_max_bytes: int = field(default=64 * 1024 * 1024, metadata=_size(1024))
    timeout_s: float = field(default=5.0, metadata={"min": 0.001})
    # A batch the backend fails (429, 502, 503, 504, no connection) is retried, with backoff, until
    # it is this old; newer exchanges wait in the queue meanwhile, or are dropped when it is full.
    max_retry_age_s: float = field(default=300.0, metadata={"min": 0})
    # A stop waits this long at most for the flows in flight to end, then flushes the queue.
    drain_timeout_s: float = field(default=10.0, metadata={"min": 0})
    shutdown_timeout_s: float = field(default=5.0, metadata={"min": 0})


# Keys a config may no longer set, and what to do instead (a config naming one does not load).
REMOVED_KEYS = {
    "export.max_retries": "no longer used: a failed batch is retried until export.max_retry_age_s "
                          "(default 300 s), bounded by the queue, not by a count; remove the key",
}


@dataclass(frozen=True)
class LookupConfig:
    """The agent lookup (`POST /v1/inject`) and its circuit breaker."""

    timeout_ms: int = field(default=300, metadata={"min": 1})
    breaker_failures: int = field(default=5, metadata={"min": 1})
    breaker_cooldown_s: float = field(default=10.0, metadata={"min": 0})
    on_miss: Literal["forward", "reject"] = "forward"
    debug_header: bool = False


@dataclass(frozen=True)
class StoreConfig:
    """The embedded SQLite backend (used when `sp_backend_url` is empty or `sqlite:`), or the
    PostgreSQL database `softprobe serve` shares between replicas (`url`)."""

    path: str = "softprobe.db"
    # postgresql://USER[:PASS]@HOST:PORT/DB (`--store`, $SOFTPROBE_STORE_URL); empty: the file at `path`.
    url: str = field(default="", repr=False)
    max_exchanges: int = field(default=100_000, metadata={"min": 1})
    max_age_hours: float = field(default=0.0, metadata={"min": 0})
    ignore_fields: tuple[str, ...] = ()
    session_scope: Literal["prefer", "only", "any"] = "prefer"
    # A lookup session idle this long replays its repeated requests from the first answer again,
    # so re-running a recorded session replays it from the start (0: never start over).
    sequence_reset_s: float = field(default=60.0, metadata={"min": 0})


@dataclass(frozen=True)
class SamplingRule:
    """A route's own rate: the first rule whose host and path patterns match (empty: any) decides."""

    host: str = field(default="", metadata=_regex())
    path: str = field(default="", metadata=_regex())
    rate: float = field(default=1.0, metadata={"min": 0, "max": 1})


@dataclass(frozen=True)
class SamplingConfig:
    """Which sessions are recorded (`decisions/sampling.py`): everything by default."""

    rate: float = field(default=1.0, metadata={"min": 0, "max": 1})
    parent_based: bool = True
    rules: tuple[SamplingRule, ...] = ()
    max_exchanges_per_s: float = field(default=0.0, metadata={"min": 0})  # 0: no budget
    max_bytes_per_s: int = field(default=0, metadata=_size(0))  # bodies included; 0: no budget


@dataclass(frozen=True)
class MockRule:
    """A static answer from config, matched before any lookup."""

    method: str = ""
    host: str = field(default="", metadata=_regex())
    path: str = field(default="", metadata=_regex())
    status: int = field(default=200, metadata={"min": 100, "max": 599})
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay_ms: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True)
class TlsUpstream:
    """Hosts whose plain-HTTP mesh traffic the gateway sends upstream over verified TLS."""

    host: str = field(default="", metadata=_regex())
    port: int = field(default=443, metadata={"min": 1, "max": 65535})
    # Like curl --resolve: open the TCP connection here while SNI and the certificate check
    # still use the request's host (a local stand-in for an external API, tests).
    connect_address: str = field(default="", metadata={"check": "listen"})


@dataclass(frozen=True)
class RoutingConfig:
    tls_upstreams: tuple[TlsUpstream, ...] = ()
    strip_header_prefixes: tuple[str, ...] = ("x-envoy-",)
    # Names that only ever mean this gateway (its Service's DNS names): a request for one of
    # them, on any port, would loop back into the gateway and is refused.
    self_hosts: tuple[str, ...] = ()


# Hosts whose TLS is never intercepted: their clients refuse any certificate but the real one.
DEFAULT_PASSTHROUGH_HOSTS = (
    "*.push.apple.com",  # APNs authenticates the sender with a client certificate
    "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",  # clients pin the cluster CA
)


@dataclass(frozen=True)
class TlsConfig:
    """HTTPS interception (transparent and explicit-proxy modes)."""

    # Relayed untouched and never recorded: a name, `*.domain` (the names below it), an IP.
    passthrough_hosts: tuple[str, ...] = field(default=DEFAULT_PASSTHROUGH_HOSTS, metadata={"check": "host"})
    # PEM file of private CAs trusted for upstreams IN ADDITION to the default roots.
    upstream_ca: str = ""


@dataclass(frozen=True)
class Config:
    sp_backend_url: str = field(default="", metadata={"check": "backend_url"})
    public_key: str = field(default="", repr=False)
    service_name: str = DEFAULT_SERVICE
    traffic_direction: Literal["", "server", "client", "inbound", "outbound", "auto"] = ""
    enable_inject: bool = False
    collection_rules: CollectionRules = field(
        default=CollectionRules(), metadata=_key("collectionRules"))
    exemption_rules: tuple[ExemptionRule, ...] = field(
        default=DEFAULT_EXEMPTIONS, metadata=_key("exemptionRules"))
    capture: CaptureConfig = CaptureConfig()
    sampling: SamplingConfig = SamplingConfig()
    redaction: RedactionConfig = RedactionConfig()
    export: ExportConfig = ExportConfig()
    lookup: LookupConfig = LookupConfig()
    store: StoreConfig = StoreConfig()
    mocks: tuple[MockRule, ...] = ()
    routing: RoutingConfig = RoutingConfig()
    tls: TlsConfig = TlsConfig()
    admin_listen: str = field(default="", metadata={"check": "listen"})

    @property
    def backend_kind(self) -> Literal["store", "http", "file"]:
        """Where exports go: the embedded SQLite store, an HTTP backend, or a JSON-lines file."""
        scheme = urlsplit(self.sp_backend_url).scheme
        if scheme in ("http", "https"):
            return "http"
        if scheme == "file":
            return "file"
        return "store"

    @property
    def store_config(self) -> StoreConfig:
        """The embedded store's settings, at the path `sp_backend_url` names (if any)."""
        return dataclasses.replace(self.store, path=self.local_path,
                                   url=self.store.url if not self.sp_backend_url else "")

    @property
    def local_path(self) -> str:
        """The file behind a `file:` or `sqlite:` backend URL (or the store path when unset)."""
        if not self.sp_backend_url:
            return self.store.path
        parts = urlsplit(self.sp_backend_url)
        return parts.netloc + parts.path if parts.netloc not in ("", "localhost") else parts.path


def resolve_direction(configured: str, reverse_listener: bool) -> str:
    """Section 4: map the configured direction, or derive it from the listener the flow came in on."""
    if configured == "server":
        return "inbound"
    if configured == "client":
        return "outbound"
    if configured:
        return configured
    return "inbound" if reverse_listener else "outbound"
