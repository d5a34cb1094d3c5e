"""The gateway's YAML configuration: schema, loading and validation.

The schema is a tree of frozen dataclasses. A YAML mapping is checked against it field by
field, so an unknown key, a wrong type, an invalid regex or a malformed URL stops start-up
with one line naming the key and the file. There are no silent fallbacks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from .otlp import DEFAULT_SERVICE

PUBLIC_KEY_ENV = "SOFTPROBE_PUBLIC_KEY"
CONFIG_ENV = "SOFTPROBE_CONFIG"
HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


class ConfigError(ValueError):
    """A configuration value is wrong. The message is one line naming the key (and file)."""


def _key(name: str) -> dict[str, str]:
    """Field metadata giving the YAML spelling of a key (the original agent's camelCase)."""
    return {"key": name}


def _regex(metadata: str = "regex") -> dict[str, str]:
    return {"check": metadata}


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

    max_body_bytes: int = field(default=1024 * 1024, metadata={"min": 0})
    # Bodies longer than this, or of unknown length, stream through (never held whole in memory);
    # the span keeps their first max_body_bytes.
    stream_threshold_bytes: int = field(default=1024 * 1024, metadata={"min": 0})
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
    batch_max_bytes: int = field(default=2 * 1024 * 1024, metadata={"min": 1024})
    flush_interval_ms: int = field(default=200, metadata={"min": 1})
    queue_max_spans: int = field(default=10_000, metadata={"min": 1})
    queue_max_bytes: int = field(default=32 * 1024 * 1024, metadata={"min": 1024})
    timeout_s: float = field(default=5.0, metadata={"min": 0.001})
    max_retries: int = field(default=4, metadata={"min": 0})
    shutdown_timeout_s: float = field(default=5.0, metadata={"min": 0})


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
    """The embedded SQLite backend (used when `sp_backend_url` is empty or `sqlite:`)."""

    path: str = "softprobe.db"
    max_exchanges: int = field(default=100_000, metadata={"min": 1})
    max_age_hours: float = field(default=0.0, metadata={"min": 0})
    ignore_fields: tuple[str, ...] = ()
    session_scope: Literal["prefer", "only", "any"] = "prefer"
    # A lookup session idle this long replays its repeated requests from the first answer again,
    # so re-running a recorded session replays it from the start (0: never start over).
    sequence_reset_s: float = field(default=60.0, metadata={"min": 0})


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
        return dataclasses.replace(self.store, path=self.local_path)

    @property
    def local_path(self) -> str:
        """The file behind a `file:` or `sqlite:` backend URL (or the store path when unset)."""
        if not self.sp_backend_url:
            return self.store.path
        parts = urlsplit(self.sp_backend_url)
        return parts.netloc + parts.path if parts.netloc not in ("", "localhost") else parts.path


# -- loading --------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] | None, environ: typing.Mapping[str, str] = os.environ) -> Config:
    """Read and validate the YAML at `path` (None: all defaults); env overrides the public key."""
    return ConfigFile(str(path) if path else None).load(environ)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML would keep the last
    silently (a second `store:` once pruned the first one's recordings). Merge keys (`<<`) still
    override as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


class ConfigFile:
    """A config file as loaded: its content digest, and its identity on disk to notice edits
    (an in-place write, or a Kubernetes ConfigMap update swapping the `..data` symlink)."""

    def __init__(self, path: str | None, overrides: typing.Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.overrides = dict(overrides or {})  # {dotted key: value}, from mitmproxy options
        self.source = path or "<defaults>"
        self.digest = ""
        self._signature = self._stat()

    def load(self, environ: typing.Mapping[str, str] = os.environ) -> Config:
        data: Any = {}
        if self.path:
            try:
                raw = Path(self.path).read_bytes()
            except OSError as e:
                raise ConfigError(f"{self.source}: cannot read config file: {e.strerror or e}") from None
            self.digest = hashlib.sha256(raw).hexdigest()[:16]
            try:
                data = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)
            except UnicodeDecodeError:
                raise ConfigError(f"{self.source}: config file is not UTF-8") from None
            except RecursionError:
                raise ConfigError(f"{self.source}: config file is nested too deeply") from None
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                line = f" (line {mark.line + 1})" if mark else ""
                raise ConfigError(f"{self.source}: invalid YAML{line}: {getattr(e, 'problem', e)}") from None
            if data is None:
                data = {}
        if self.overrides and isinstance(data, dict):
            data = _merge(data, _nest(self.overrides))
        try:
            config = _build(Config, data, "")
        except ConfigError as e:
            raise ConfigError(f"{self.source}: {e}") from None
        except RecursionError:
            raise ConfigError(f"{self.source}: config file is nested too deeply") from None
        key = environ.get(PUBLIC_KEY_ENV, "")
        return dataclasses.replace(config, public_key=key) if key else config

    def changed(self) -> bool:
        """True once per change of the file on disk since the last call (or since loading)."""
        current = self._stat()
        if current == self._signature:
            return False
        self._signature = current
        return True

    def _stat(self) -> tuple[int, ...] | None:
        if not self.path:
            return None
        try:
            st = os.stat(self.path)  # follows symlinks: a swapped ConfigMap is a new inode
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def check_override(key: str, value: Any) -> None:
    """Validate one dotted key's value on its own (ConfigError naming the key)."""
    _build(Config, _nest({key: value}), "")


def _nest(flat: typing.Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, mapping by mapping; a section of `base` that is not a mapping is kept,
    so that its error is still reported."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, dict) and below is not None:
            merged[key] = _merge(below, value) if isinstance(below, dict) else below
        else:
            merged[key] = value
    return merged


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = f"{prefix}{key}"
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"key '{name}': unknown key (known here: {known})")
        value = _coerce(hints[f.name], raw, name)
        _check(f.metadata, value, name)
        values[f.name] = value
    return cls(**values)


def _coerce(tp: Any, raw: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, raw, f"{name}.")
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ConfigError(f"key '{name}': expected a list, got {_kind(raw)}")
        return tuple(_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise ConfigError(f"key '{name}': expected a mapping of strings to strings")
        return dict(raw)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if raw is None and "" in allowed:
            return ""
        if raw not in allowed:
            shown = ", ".join(repr(a) for a in allowed if a)
            raise ConfigError(f"key '{name}': must be one of {shown}, got {raw!r}")
        return raw
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported schema type at {name}")
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"key '{name}': expected true or false, got {_kind(raw)}")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"key '{name}': expected an integer, got {_kind(raw)}")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"key '{name}': expected a number, got {_kind(raw)}")
        return float(raw)
    if tp is str:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise ConfigError(f"key '{name}': expected a string, got {_kind(raw)}")
        return raw
    raise TypeError(f"unsupported schema type {tp!r} at {name}")


def _check(meta: typing.Mapping[str, Any], value: Any, name: str) -> None:
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"key '{name}': must be at least {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"key '{name}': must be at most {meta['max']}, got {value}")
    check = meta.get("check")
    if check == "regex":
        for i, pattern in enumerate(value if isinstance(value, tuple) else (value,)):
            try:
                re.compile(pattern)
            except re.error as e:
                where = f"{name}[{i}]" if isinstance(value, tuple) else name
                raise ConfigError(f"key '{where}': invalid regular expression {pattern!r}: {e}") from None
    elif check == "host":
        for i, host in enumerate(value):
            if not _is_host(host):
                raise ConfigError(f"key '{name}[{i}]': expected a host name, *.domain or an IP address, "
                                  f"got {host!r}")
    elif check == "backend_url" and value:
        _check_backend_url(value, name)
    elif check == "listen" and value:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"key '{name}': expected HOST:PORT, got {value!r}")


def _is_host(entry: str) -> bool:
    try:
        ipaddress.ip_address(entry)
        return True
    except ValueError:
        return bool(HOST_NAME.fullmatch(entry)) and ".." not in entry


def _check_backend_url(value: str, name: str) -> None:
    parts = urlsplit(value)
    if "@" in parts.netloc:  # credentials would be logged and committed: use public_key
        raise ConfigError(f"key '{name}': credentials do not belong in the URL "
                          f"(use public_key or ${PUBLIC_KEY_ENV})")
    if parts.scheme in ("http", "https"):
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ConfigError(f"key '{name}': malformed port in URL {value!r}") from None
        if not parts.hostname:
            raise ConfigError(f"key '{name}': URL {value!r} has no host")
        if parts.query or parts.fragment:
            raise ConfigError(f"key '{name}': URL {value!r} must not have a query or fragment")
    elif parts.scheme in ("file", "sqlite"):
        if not (parts.netloc + parts.path):
            raise ConfigError(f"key '{name}': URL {value!r} names no file")
    else:
        raise ConfigError(
            f"key '{name}': expected an http(s)://, sqlite: or file: URL, got {value!r}")


def _kind(value: Any) -> str:
    """The offending value, briefly (reprlib: a YAML alias bomb must not be expanded to print it)."""
    return "nothing" if value is None else f"{type(value).__name__} {reprlib.repr(value)}"[:80]


def resolve_direction(configured: str, reverse_listener: bool) -> str:
    """Section 4: map the configured direction, or derive it from the listener the flow came in on."""
    if configured == "server":
        return "inbound"
    if configured == "client":
        return "outbound"
    if configured:
        return configured
    return "inbound" if reverse_listener else "outbound"
